//! The one error type of request handling: what can go wrong, its HTTP status and its stable code. The
//! response itself (JSON body, headers) is made in one place of the HTTP layer (`http::error_response`).

use http::StatusCode;

/// Everything a request can fail with: the status, a stable snake_case `code` and a message meant for humans.
/// `Error::into_response` (in the HTTP layer) is the only place that turns an error into a response.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No topic was given.
    #[error("at least one topic is required")]
    NoTopic,
    /// A topic is empty, too long or has a forbidden character.
    #[error("bad topic {0:?}: a topic is 1 to 256 bytes of printable ASCII other than space , * ? #")]
    BadTopic(String),
    /// More distinct topics than allowed.
    #[error("more than {max} distinct topics given, at most {max} allowed")]
    TooManyTopics {
        /// Distinct topics counted when the request was refused: `max + 1`, as reading stops there.
        count: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The request body could not be read as the content type says.
    #[error("malformed request body: {0}")]
    BadRequest(String),
    /// A request head that is not HTTP/1.1 (or that HTTP/1.1 does not allow: a bad header line, an invalid
    /// `Content-Length`...).
    #[error("malformed request head")]
    MalformedHead,
    /// A request target too long for the head buffer (64 KiB).
    #[error("the request target (URI) is too long")]
    UriTooLong,
    /// A request head over 64 KiB, or with more than 100 header fields.
    #[error("the request head is too large (at most 64 KiB and 100 header fields)")]
    HeadTooLarge,
    /// The event type is not allowed.
    #[error("bad event type {0:?}: 1 to 64 bytes of A-Z a-z 0-9 . _ : - not starting with \"herald.\"")]
    BadType(String),
    /// `data` is missing or null.
    #[error("data is required (null counts as missing)")]
    MissingData,
    /// The event's data is over `--max-event-size`.
    #[error("event data is {size} bytes, over the limit of {max}")]
    EventTooLarge {
        /// Size of the data.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The request body is over `--max-body-size`.
    #[error("request body is over the limit of {max} bytes")]
    BodyTooLarge {
        /// The configured maximum.
        max: usize,
    },
    /// `/publish` got a content type other than JSON or a form.
    #[error("content type must be application/json or application/x-www-form-urlencoded")]
    UnsupportedMediaType,
    /// Authentication is on and no valid token was given where one is needed.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid token that does not allow one of the topics.
    #[error("{0}")]
    Forbidden(String),
    /// A publish authenticated by the `herald_token` cookie from a page that may not use it (another
    /// site's form, say): cross-site request forgery.
    #[error("{0}")]
    CrossSiteRequest(String),
    /// The method is not served on this path.
    #[error("method not allowed; allowed: {allow}")]
    MethodNotAllowed {
        /// The value of the `Allow` header.
        allow: &'static str,
    },
    /// The client did not send the request body within `--request-timeout`.
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// Nothing is served at this path.
    #[error("not found")]
    NotFound,
    /// The server is draining before exit.
    #[error("the server is shutting down; reconnect to another node")]
    ShuttingDown,
    /// `--max-connections` streams are open.
    #[error("too many open streams on this node; retry later")]
    TooManyConnections,
    /// `--max-connections-per-ip` streams are open from the client's address.
    #[error("too many open streams from this address (at most {max}); retry later")]
    TooManyConnectionsFromAddress {
        /// The configured maximum.
        max: u32,
    },
    /// The backend cannot be reached; nothing was done.
    #[error("the backend is unavailable; retry later")]
    BackendUnavailable(String),
    /// `/readyz`: the backend cannot be reached now. (Not logged: probes ask often, and the backend logs
    /// why itself.)
    #[error("the backend is unavailable")]
    NotReady,
    /// The backend stopped answering after a publish was sent, and whether it ran could not be found out.
    #[error("the backend stopped answering while publishing: the event may or may not have been published")]
    PublishOutcomeUnknown,
}

impl Error {
    /// The HTTP status API.md gives for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::NoTopic
            | Error::BadTopic(_)
            | Error::TooManyTopics { .. }
            | Error::BadRequest(_)
            | Error::MalformedHead
            | Error::BadType(_)
            | Error::MissingData => StatusCode::BAD_REQUEST,
            Error::UriTooLong => StatusCode::URI_TOO_LONG,
            Error::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Error::EventTooLarge { .. } | Error::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) | Error::CrossSiteRequest(_) => StatusCode::FORBIDDEN,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Error::NotFound => StatusCode::NOT_FOUND,
            Error::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Error::ShuttingDown
            | Error::TooManyConnections
            | Error::TooManyConnectionsFromAddress { .. }
            | Error::BackendUnavailable(_)
            | Error::NotReady
            | Error::PublishOutcomeUnknown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable machine-readable code sent in the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NoTopic => "no_topic",
            Error::BadTopic(_) => "bad_topic",
            Error::TooManyTopics { .. } => "too_many_topics",
            Error::BadRequest(_) | Error::MalformedHead => "bad_request",
            Error::UriTooLong => "uri_too_long",
            Error::HeadTooLarge => "request_header_fields_too_large",
            Error::BadType(_) => "bad_type",
            Error::MissingData => "missing_data",
            Error::EventTooLarge { .. } => "event_too_large",
            Error::BodyTooLarge { .. } => "body_too_large",
            Error::UnsupportedMediaType => "unsupported_media_type",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::CrossSiteRequest(_) => "cross_site_request",
            Error::MethodNotAllowed { .. } => "method_not_allowed",
            Error::NotFound => "not_found",
            Error::RequestTimeout => "request_timeout",
            Error::ShuttingDown => "shutting_down",
            Error::TooManyConnections => "too_many_connections",
            Error::TooManyConnectionsFromAddress { .. } => "too_many_connections_per_ip",
            Error::BackendUnavailable(_) | Error::NotReady | Error::PublishOutcomeUnknown => "backend_unavailable",
        }
    }
}

/// Result with Herald's request [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
