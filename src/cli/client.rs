//! The tools' HTTP client: one HTTP/1.1 connection per request (hyper's client connection over a tokio
//! `TcpStream`), to an `http://` or `https://` URL.
//!
//! HTTPS is rustls (with ring, as for Redis): the server's certificate is checked against the system's root
//! certificates, or against `--ca-cert FILE` only when given (a private certificate authority, as curl's
//! `--cacert`). ALPN offers `http/1.1` alone.
//!
//! `--url` is the server's base URL (`http://127.0.0.1:8080`, or with a path prefix behind a proxy,
//! `http://example.com/herald`) or the endpoint's own URL (`…/publish`, `…/events`): the endpoint's name is
//! appended unless the path already ends with it, so one URL serves both tools.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Most of an error response's body that is read for its message.
const ERROR_BODY_MAX: usize = 64 * 1024;
/// Time given to read an error response's body.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request got no answer.
#[derive(Debug)]
pub(crate) struct SendError {
    /// What failed, for the user.
    pub(crate) message: String,
    /// Trying again cannot help: the server's certificate is not trusted.
    pub(crate) permanent: bool,
}

impl SendError {
    fn transient(message: String) -> SendError {
        SendError { message, permanent: false }
    }
}

/// Where a tool sends its request: the server's address and the endpoint's path.
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
    /// For `https://`: the TLS client and the name the certificate must carry.
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Endpoint {
    /// The endpoint `name` (`publish`, `events`) of the server at `url`; `ca_cert` is `--ca-cert`.
    ///
    /// # Errors
    /// A message for the user when `url` is not an `http://` or `https://` URL, or `ca_cert` cannot be used.
    pub(crate) fn parse(url: &str, name: &str, ca_cert: Option<&Path>) -> Result<Endpoint, String> {
        let uri: Uri = url.trim().parse().map_err(|e| format!("--url {url:?} is not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => {
                return Err(format!("--url {url:?}: the scheme must be http:// or https://, not {other}://"))
            }
            None => return Err(format!("--url {url:?} must be an absolute URL such as http://127.0.0.1:8080")),
        };
        if ca_cert.is_some() && !https {
            return Err("--ca-cert applies to an https:// --url only".into());
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
        let tls = if https {
            let name = ServerName::try_from(host.clone()).map_err(|e| format!("--url {url:?}: {e}"))?;
            Some((tls_connector(ca_cert)?, name))
        } else {
            None
        };
        Ok(Endpoint {
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            host,
            authority: authority.as_str().to_owned(),
            path,
            query: uri.query().filter(|q| !q.is_empty()).map(str::to_owned),
            tls,
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

    /// `http://authority/path` (or `https://`), for messages.
    pub(crate) fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{}", self.authority, self.path)
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
    /// What failed: connecting, TLS, or the exchange.
    pub(crate) async fn send(&self, request: Request<Full<Bytes>>) -> Result<Response<Incoming>, SendError> {
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| SendError::transient(format!("cannot connect to {}: {e}", self.authority)))?;
        let _ = stream.set_nodelay(true);
        match &self.tls {
            None => self.exchange(TokioIo::new(stream), request).await,
            Some((connector, name)) => {
                let stream = connector.connect(name.clone(), stream).await.map_err(|e| {
                    let rustls_error = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
                    SendError {
                        message: format!("TLS with {}: {e}", self.authority),
                        permanent: matches!(rustls_error, Some(rustls::Error::InvalidCertificate(_))),
                    }
                })?;
                self.exchange(TokioIo::new(stream), request).await
            }
        }
    }

    async fn exchange<T>(&self, io: T, request: Request<Full<Bytes>>) -> Result<Response<Incoming>, SendError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| SendError::transient(format!("{}: {e}", self.authority)))?;
        // The connection task reads the response, body included; it ends when both halves are dropped.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        sender.send_request(request).await.map_err(|e| SendError::transient(format!("{}: {e}", self.url())))
    }
}

/// The TLS client: trusting `ca_cert` alone when given, else the system's root certificates.
fn tls_connector(ca_cert: Option<&Path>) -> Result<TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_cert {
        Some(path) => {
            let shown = path.display();
            let pem = std::fs::read(path).map_err(|e| format!("--ca-cert {shown}: cannot read: {e}"))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("--ca-cert {shown}: {e}"))?;
                roots.add(cert).map_err(|e| format!("--ca-cert {shown}: {e}"))?;
            }
            if roots.is_empty() {
                return Err(format!("--ca-cert {shown}: no PEM certificate (BEGIN CERTIFICATE) in it"));
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if roots.is_empty() {
                return Err("https://: no root certificates found on this system; give --ca-cert FILE".into());
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
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
        let e = Endpoint::parse(url, name, None).unwrap_or_else(|e| panic!("{url}: {e}"));
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
        assert_eq!(Endpoint::parse("http://h:1", "events", None).map(|e| e.target(None)), Ok("/events".into()));
    }

    #[test]
    fn https_urls() {
        let e = Endpoint::parse("https://example.com/herald", "events", None);
        // Without system roots (a bare container) the URL is refused with a way out.
        match e {
            Ok(e) => assert_eq!((e.url(), e.port), ("https://example.com/herald/events".into(), 443)),
            Err(e) => assert!(e.contains("--ca-cert"), "{e}"),
        }
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/redis-tls/ca.pem");
        let e = Endpoint::parse("https://127.0.0.1:9/", "publish", Some(Path::new(ca))).expect("with the test CA");
        assert_eq!((e.url(), e.port), ("https://127.0.0.1:9/publish".into(), 9));
        let not_pem = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let e = Endpoint::parse("https://h/", "events", Some(Path::new(not_pem))).err().expect("refused");
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = Endpoint::parse("http://h/", "events", Some(Path::new(ca))).err().expect("refused");
        assert!(e.contains("https://"), "{e}");
    }

    #[test]
    fn other_urls_are_refused_clearly() {
        for (url, says) in [
            ("ftp://h/", "http://"),
            ("127.0.0.1:8080", "http://"),
            ("/events", "absolute URL"),
            ("http://u:p@h/", "--token"),
            ("http://h h/", "not a URL"),
        ] {
            match Endpoint::parse(url, "events", None) {
                Ok(e) => panic!("{url} accepted: {}", e.url()),
                Err(e) => assert!(e.contains(says), "{url}: {e}"),
            }
        }
    }
}
