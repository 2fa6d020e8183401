//! The one mapping of [`Error`] to an HTTP response: the status, the JSON body of API.md and the headers that
//! go with some statuses. It lives in the HTTP layer, so that `error.rs` (what can go wrong) does not depend
//! on response bodies; `status()` and `code()` stay with the error.

use http::{header, HeaderValue, Response, StatusCode};

use super::ResponseBody;
use crate::error::Error;

impl Error {
    /// Turns the error into the response API.md describes: `{"error":{"code":…,"message":…}}`.
    ///
    /// Backend details are logged here and never sent to the client.
    pub fn into_response(self) -> Response<ResponseBody> {
        if let Error::BackendUnavailable(cause) = &self {
            tracing::warn!(%cause, "backend unavailable");
        }
        let body = serde_json::json!({ "error": { "code": self.code(), "message": self.to_string() } });
        let mut response = Response::new(ResponseBody::full(body.to_string()));
        let status = self.status();
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Error::MethodNotAllowed { allow } = self {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"herald\""));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
