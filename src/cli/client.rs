//! The tools' HTTP client: one HTTP/1.1 connection per request (hyper's client connection over a tokio
//! `TcpStream`), to an `http://` URL.
//!
//! `--url` is the server's base URL (`http://127.0.0.1:8080`, or with a path prefix behind a proxy,
//! `http://example.com/herald`) or the endpoint's own URL (`…/publish`, `…/events`): the endpoint's name is
//! appended unless the path already ends with it, so one URL serves both tools.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Most of an error response's body that is read for its message.
const ERROR_BODY_MAX: usize = 64 * 1024;
/// Time given to read an error response's body.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a tool sends its request: the server's address and the endpoint's path.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// Host name or IP address to connect to (an IPv6 address without its brackets).
    host: String,
    port: u16,
    /// `host:port` as the URL gives it, for the `Host` header.
    authority: String,
    /// The endpoint's path, e.g. `/events`.
    path: String,
    /// The URL's own query, if any, kept in front of what the tool adds.
    query: Option<String>,
}

impl Endpoint {
    /// The endpoint `name` (`publish`, `events`) of the server at `url`.
    ///
    /// # Errors
    /// A message for the user when `url` is not an `http://` URL.
    pub(crate) fn parse(url: &str, name: &str) -> Result<Endpoint, String> {
        let uri: Uri = url.trim().parse().map_err(|e| format!("--url {url:?} is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "--url {url:?}: https:// is not supported yet by the tools; use http:// (for example to a \
                     local port of the server, or through a TLS-terminating proxy's plain-HTTP side)"
                ))
            }
            Some(other) => return Err(format!("--url {url:?}: the scheme must be http://, not {other}://")),
            None => return Err(format!("--url {url:?} must be an absolute URL such as http://127.0.0.1:8080")),
        }
        let authority = uri.authority().ok_or_else(|| format!("--url {url:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("--url {url:?}: user names and passwords in the URL are not supported; use --token"));
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        if host.is_empty() {
            return Err(format!("--url {url:?} has no host"));
        }
        let mut path = uri.path().to_owned();
        let suffix = format!("/{name}");
        if !path.ends_with(&suffix) {
            while path.ends_with('/') {
                path.pop();
            }
            path.push_str(&suffix);
        }
        Ok(Endpoint {
            host,
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_owned(),
            path,
            query: uri.query().filter(|q| !q.is_empty()).map(str::to_owned),
        })
    }

    /// The request target: the endpoint's path, with the URL's query and then `extra` (already encoded).
    pub(crate) fn target(&self, extra: Option<&str>) -> String {
        let query: Vec<&str> = self.query.as_deref().into_iter().chain(extra).collect();
        if query.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, query.join("&"))
        }
    }

    /// `http://authority/path`, for messages.
    pub(crate) fn url(&self) -> String {
        format!("http://{}{}", self.authority, self.path)
    }

    /// A request builder for `method` on `target`, with the `Host` header and, when given, the token as
    /// `Authorization: Bearer`.
    pub(crate) fn request(&self, method: http::Method, target: &str, token: Option<&str>) -> http::request::Builder {
        let mut builder = Request::builder()
            .method(method)
            .uri(target)
            .header(header::HOST, &self.authority)
            .header(header::USER_AGENT, concat!("herald/", env!("CARGO_PKG_VERSION")));
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        builder
    }

    /// Connects and sends `request`; the response's body streams from the connection as it is read.
    ///
    /// # Errors
    /// A message naming what failed: connecting, or the exchange.
    pub(crate) async fn send(&self, request: Request<Full<Bytes>>) -> Result<Response<Incoming>, String> {
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.authority))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("{}: {e}", self.authority))?;
        // The connection task reads the response, body included; it ends when both halves are dropped.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        sender.send_request(request).await.map_err(|e| format!("{}: {e}", self.url()))
    }
}

/// What a refused request says: `STATUS CODE: MESSAGE` from Herald's JSON error, else the status and the
/// start of the body.
pub(crate) async fn error_message(response: Response<Incoming>) -> String {
    let status = response.status();
    let body = tokio::time::timeout(ERROR_BODY_TIMEOUT, Limited::new(response.into_body(), ERROR_BODY_MAX).collect())
        .await
        .ok()
        .and_then(Result::ok)
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let error = json.as_ref().and_then(|v| v.get("error"));
    let field = |name: &str| error.and_then(|e| e.get(name)).and_then(|v| v.as_str());
    match (field("code"), field("message")) {
        (Some(code), Some(message)) => format!("{} {code}: {message}", status.as_u16()),
        _ => {
            let text = String::from_utf8_lossy(&body);
            let text: String = text.trim().chars().take(200).collect();
            if text.is_empty() {
                status.to_string()
            } else {
                format!("{status}: {text}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str, name: &str) -> String {
        let e = Endpoint::parse(url, name).unwrap_or_else(|e| panic!("{url}: {e}"));
        format!("{}:{} {}", e.host, e.port, e.target(Some("x=1")))
    }

    #[test]
    fn base_or_endpoint_urls() {
        assert_eq!(target("http://127.0.0.1:8080", "publish"), "127.0.0.1:8080 /publish?x=1");
        assert_eq!(target("http://127.0.0.1:8080/", "publish"), "127.0.0.1:8080 /publish?x=1");
        assert_eq!(target("http://127.0.0.1:8080/publish", "publish"), "127.0.0.1:8080 /publish?x=1");
        assert_eq!(target("http://h/herald/", "events"), "h:80 /herald/events?x=1");
        assert_eq!(target("http://h/herald/events?k=v", "events"), "h:80 /herald/events?k=v&x=1");
        assert_eq!(target("http://[::1]:9/", "events"), "::1:9 /events?x=1");
        assert_eq!(Endpoint::parse("http://h:1", "events").map(|e| e.target(None)), Ok("/events".into()));
    }

    #[test]
    fn other_urls_are_refused_clearly() {
        for (url, says) in [
            ("https://h/", "https:// is not supported"),
            ("ftp://h/", "http://"),
            ("127.0.0.1:8080", "http://"),
            ("/events", "absolute URL"),
            ("http://u:p@h/", "--token"),
            ("http://h h/", "not a URL"),
        ] {
            match Endpoint::parse(url, "events") {
                Ok(e) => panic!("{url} accepted: {e:?}"),
                Err(e) => assert!(e.contains(says), "{url}: {e}"),
            }
        }
    }
}
