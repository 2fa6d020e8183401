//! The event-stream front: serves long-lived `GET /events` connections without hyper's per-connection
//! buffers.
//!
//! hyper keeps two 8 KiB buffers (read and header-write) for the life of every connection, which is most
//! of the memory of an idle SSE client (DESIGN.md measured ~10 KB per connection). The front reads the
//! first request head into a small buffer that is freed once parsed. A `GET /events` request is built into
//! an `http::Request` and given to the same tower service as everything else (so routing, validation,
//! CORS and errors stay in one place); the front then writes the response head itself and pumps the
//! body's pre-encoded frames straight to the socket as HTTP/1.1 chunks (or close-delimited for HTTP/1.0).
//! Any other request goes to hyper, which first re-reads the bytes already taken (see [`super::rewind`]).
//! A head that cannot be served (not HTTP/1, over 64 KiB, over 100 header fields) is answered here with
//! Herald's JSON error and the connection closed; hyper's own answers to later heads are made JSON by
//! [`super::json_errors`].
//!
//! While waiting for events the front also watches the socket for the peer closing, so a departed client
//! is unsubscribed at once. Its writes, like hyper's, go through [`super::deadline`] for `--send-timeout`.

use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, Version};
use http_body::Body;
use http_body_util::Empty;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;

use super::deadline::WriteDeadline;
use crate::error::Error;
use crate::http::ResponseBody;

/// First allocation for a request head; browsers' heads are usually smaller.
const INITIAL_HEAD_BUFFER: usize = 1024;
/// The largest request head: a longer one is answered 414 (`uri_too_long`) when the request line alone
/// does not fit, else 431. hyper, which serves later requests of a connection, has the same buffer limit.
const MAX_HEAD: usize = super::MAX_CONNECTION_BUFFER;
/// Header fields in one request head, as hyper's default; more is answered 431.
const MAX_HEADERS: usize = 100;
/// How an HTTP/2 connection with prior knowledge starts (RFC 9113, 3.4): handed to hyper's HTTP/2 server.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Reads of unexpected client bytes per wake-up while streaming; bounds the work a chatty client causes.
const MAX_DISCARD_READS: usize = 16;

/// What the first request on a connection turned out to be.
#[derive(Debug)]
pub(crate) enum Sniffed {
    /// A `GET /events` request without a body.
    Events(Request<Empty<Bytes>>),
    /// Anything else: hyper serves the connection, starting with these bytes.
    Other(Bytes),
    /// The HTTP/2 preface: hyper's HTTP/2 server serves the connection, starting with these bytes.
    Http2(Bytes),
    /// A head that cannot be served (malformed, or too large): answered with this error and closed.
    Refused(Error),
    /// The peer closed, failed or timed out before sending a complete head.
    Gone,
}

#[allow(clippy::large_enum_variant)] // short-lived, and the large variant is the common one
pub(crate) enum Parsed {
    Events(Request<Empty<Bytes>>),
    Other,
    Http2,
    Bad(Error),
    Partial,
}

/// Reads the first request head, which must arrive within `timeout` (`--request-timeout`; hyper applies the
/// same to later requests).
pub(crate) async fn read_head(stream: &mut TcpStream, timeout: Duration) -> Sniffed {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = BytesMut::with_capacity(INITIAL_HEAD_BUFFER);
    loop {
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) if buf.is_empty() => return Sniffed::Gone,
            Ok(Ok(0)) => return Sniffed::Other(buf.freeze()),
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return Sniffed::Gone,
        }
        match parse_head(&buf) {
            Parsed::Events(request) => return Sniffed::Events(request),
            Parsed::Other => return Sniffed::Other(buf.freeze()),
            Parsed::Http2 => return Sniffed::Http2(buf.freeze()),
            Parsed::Bad(error) => return Sniffed::Refused(error),
            Parsed::Partial if buf.len() >= MAX_HEAD => return Sniffed::Refused(too_large(&buf)),
            Parsed::Partial => buf.reserve(buf.len().min(MAX_HEAD)),
        }
    }
}

/// Why a head that did not fit in [`MAX_HEAD`] is refused: its request line alone did not fit (414), or
/// its header fields did not (431).
pub(crate) fn too_large(buf: &[u8]) -> Error {
    if memchr::memchr(b'\n', buf).is_none() {
        Error::UriTooLong
    } else {
        Error::HeadTooLarge
    }
}

/// Parses a head; only a body-less `GET /events` becomes a request. The HTTP/2 preface is told apart
/// first (waiting for all of its 24 bytes); any other head that is not HTTP/1 is refused (400, or 431 with
/// too many header fields).
pub(crate) fn parse_head(buf: &[u8]) -> Parsed {
    if buf.starts_with(H2_PREFACE) {
        return Parsed::Http2;
    }
    if H2_PREFACE.starts_with(buf) {
        return Parsed::Partial;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    match head.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Bad(Error::HeadTooLarge),
        Err(_) => return Parsed::Bad(Error::MalformedHead),
    }
    let (Some("GET"), Some(path), Some(version)) = (head.method, head.path, head.version) else {
        return Parsed::Other;
    };
    if path.split('?').next() != Some("/events") {
        return Parsed::Other;
    }
    let mut builder = Request::builder().method(http::Method::GET).uri(path).version(if version == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    });
    for header in head.headers.iter() {
        let name = header.name;
        let has_body = (name.eq_ignore_ascii_case("content-length") && header.value != b"0")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade");
        if has_body {
            return Parsed::Other;
        }
        builder = builder.header(name, header.value);
    }
    match builder.body(Empty::new()) {
        Ok(request) => Parsed::Events(request),
        Err(_) => Parsed::Other,
    }
}

/// A response ready to be written by [`stream`].
#[derive(Debug)]
pub(crate) struct Ready {
    head: Bytes,
    body: ResponseBody,
    chunked: bool,
}

impl Ready {
    /// Whether the response is an event stream (rather than an error).
    pub(crate) fn is_stream(&self) -> bool {
        matches!(self.body, ResponseBody::Stream(_))
    }

    /// The JSON answer to a request refused before it reached the service (see [`Sniffed::Refused`]).
    fn refusal(error: Error) -> Self {
        let (parts, body) = error.into_response().into_parts();
        let length = match &body {
            ResponseBody::Full(bytes) => bytes.as_ref().map_or(0, Bytes::len),
            ResponseBody::Stream(_) | ResponseBody::File(_) => 0,
        };
        Ready { head: Bytes::from(encode_head(&parts, Framing::Length(length))), body, chunked: false }
    }
}

/// How long a refused connection is read from (and what it sends dropped) after its answer.
const LINGER: Duration = Duration::from_secs(1);
/// What a refused connection may send meanwhile before it is closed anyway.
const LINGER_BYTES: usize = 256 * 1024;

/// Answers a head refused before it reached the service, then closes. The client may still be sending
/// (the rest of an oversized head, a body): closing with unread bytes would reset the connection and could
/// lose the answer, so what it sends is read and dropped first, for a moment ([`LINGER`]).
pub(crate) async fn refuse(mut stream: WriteDeadline<TcpStream>, error: Error) {
    if stream.write_all(&encode_error(error)).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut scratch = vec![0u8; 4096];
        let mut read = 0;
        while read < LINGER_BYTES {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// `error`'s complete response (`Connection: close`), as bytes.
pub(crate) fn encode_error(error: Error) -> Bytes {
    let Ready { head, body, .. } = Ready::refusal(error);
    let mut bytes = BytesMut::from(&head[..]);
    if let ResponseBody::Full(Some(body)) = body {
        bytes.extend_from_slice(&body);
    }
    bytes.freeze()
}

/// Calls `service` with a `GET /events` request and encodes the response head. Short-lived: callers box
/// it, so that the request, the service and the response's header map never size the connection's task.
pub(crate) async fn respond<S>(request: Request<Empty<Bytes>>, service: S) -> Option<Ready>
where
    S: tower::Service<Request<Empty<Bytes>>, Response = Response<ResponseBody>> + Send,
    S::Future: Send,
    S::Error: std::fmt::Display,
{
    let chunked = request.version() != Version::HTTP_10;
    let response = match service.oneshot(request).await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(cause = %e, "service failed");
            return None;
        }
    };
    let (parts, mut body) = response.into_parts();
    if let (ResponseBody::Stream(events), true) = (&mut body, chunked) {
        events.use_chunked_framing();
    }
    let framing = match &body {
        ResponseBody::Full(bytes) => Framing::Length(bytes.as_ref().map_or(0, Bytes::len)),
        ResponseBody::File(file) => Framing::Length(usize::try_from(file.remaining()).unwrap_or(usize::MAX)),
        ResponseBody::Stream(_) if chunked => Framing::Chunked,
        ResponseBody::Stream(_) => Framing::Close,
    };
    Some(Ready { head: Bytes::from(encode_head(&parts, framing)), body, chunked })
}

/// Writes a response from [`respond`] to the socket, then closes the connection. For an event stream
/// this lasts as long as the stream: this future is the long-lived state of every SSE client, so it
/// holds little more than the socket and the body. The socket's writes carry the send timeout (see
/// [`super::deadline`]), which also counts a stall.
pub(crate) async fn stream(mut stream: WriteDeadline<TcpStream>, ready: Ready) {
    let Ready { head, mut body, chunked } = ready;
    match pump(&mut stream, head, &mut body, chunked).await {
        Ok(()) => {}
        // The client is not reading: a graceful shutdown would wait behind the unsent bytes.
        Err(e) if e.kind() == io::ErrorKind::TimedOut => return,
        Err(e) => tracing::debug!(cause = %e, "event stream ended with an error"),
    }
    let _ = stream.shutdown().await;
}

enum Framing {
    Chunked,
    Close,
    Length(usize),
}

/// Writes the status line and headers; the connection is not reused after the response.
fn encode_head(parts: &http::response::Parts, framing: Framing) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Close => {}
        Framing::Length(n) => head.extend_from_slice(format!("content-length: {n}\r\n").as_bytes()),
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    head
}

enum Next {
    Chunk(Bytes),
    End,
    PeerGone,
}

/// Writes `head`, then a file body as it is read.
async fn write_file(stream: &mut WriteDeadline<TcpStream>, head: Bytes, body: &mut ResponseBody) -> io::Result<()> {
    stream.write_all(&head).await?;
    while let Some(Ok(frame)) = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
        if let Ok(data) = frame.into_data() {
            stream.write_all(&data).await?;
        }
    }
    Ok(())
}

/// Writes `head`, then the body's frames until it ends (shutdown, a lagging client closed) or the peer
/// goes away. A complete body is written as it is; an event stream as chunks when `chunked`.
async fn pump(
    stream: &mut WriteDeadline<TcpStream>,
    head: Bytes,
    body: &mut ResponseBody,
    chunked: bool,
) -> io::Result<()> {
    match body {
        ResponseBody::Full(bytes) => {
            stream.write_all(&head).await?;
            return match bytes.take() {
                Some(bytes) => stream.write_all(&bytes).await,
                None => Ok(()),
            };
        }
        // Not a response of `/events`, which is all the front serves; written as it comes, for completeness.
        // Boxed, so that its state does not size the long-lived task of every stream.
        ResponseBody::File(_) => return Box::pin(write_file(stream, head, body)).await,
        ResponseBody::Stream(_) => {}
    }
    stream.write_all(&head).await?;
    drop(head);
    let events = body;
    // The last peer check left this task registered for the socket's read readiness: until that readiness
    // comes there is nothing new to learn about the peer, and a look at tokio's readiness flags (no system
    // call, no lock) stands in for registering again.
    let mut watching = false;
    loop {
        // The peer is checked only when there is nothing to write: once per wake-up rather than twice per
        // delivery (a write to a peer that has gone fails anyway).
        let next = std::future::poll_fn(|cx| match Pin::new(&mut *events).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => Poll::Ready(Next::Chunk(data)),
                Err(_) => Poll::Ready(Next::End),
            },
            Poll::Ready(Some(Err(never))) => match never {},
            Poll::Ready(None) => Poll::Ready(Next::End),
            Poll::Pending if watching && nothing_to_read(stream.get_ref()) => Poll::Pending,
            Poll::Pending if peer_gone(stream.get_ref(), cx) => Poll::Ready(Next::PeerGone),
            Poll::Pending => {
                watching = true;
                Poll::Pending
            }
        })
        .await;
        match next {
            // Already framed by the stream (see `EventStream::use_chunked_framing`): one buffer, one `send`.
            Next::Chunk(data) => write_chunk(stream, &data).await?,
            Next::End if chunked => return stream.write_all(b"0\r\n\r\n").await,
            Next::End | Next::PeerGone => return Ok(()),
        }
    }
}

/// Writes a chunk: first straight to the socket, the usual case of a socket with room (one `send`, without
/// the write machinery's readiness polling); whatever it does not take then waits under the send timeout.
async fn write_chunk(stream: &mut WriteDeadline<TcpStream>, data: &[u8]) -> io::Result<()> {
    let sent = match stream.get_ref().try_write(data) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    if sent < data.len() {
        stream.write_all(&data[sent..]).await?;
    }
    Ok(())
}

/// Whether tokio has seen no read readiness on the socket since it was last found empty (a read with an empty
/// buffer fails with `WouldBlock` before any system call then; otherwise it may read 0 bytes, and the caller
/// does the full [`peer_gone`] check).
fn nothing_to_read(stream: &TcpStream) -> bool {
    matches!(stream.try_read(&mut []), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Whether the peer has closed its side (or the socket failed); discards anything it sends meanwhile
/// and leaves the task registered for the next read readiness.
fn peer_gone(stream: &TcpStream, cx: &mut std::task::Context<'_>) -> bool {
    let mut scratch = [0u8; 64];
    for _ in 0..MAX_DISCARD_READS {
        match stream.poll_read_ready(cx) {
            Poll::Pending => return false,
            Poll::Ready(Err(_)) => return true,
            Poll::Ready(Ok(())) => match stream.try_read(&mut scratch) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return true,
            },
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bodyless_get_events_is_taken() {
        let events = b"GET /events?topics=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 1-2\r\n\r\n";
        match parse_head(events) {
            Parsed::Events(req) => {
                assert_eq!(req.uri().query(), Some("topics=a"));
                assert_eq!(req.headers()["last-event-id"], "1-2");
            }
            _ => panic!("not taken"),
        }
        for other in [
            &b"POST /publish HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET /metrics HTTP/1.1\r\n\r\n",
            b"GET /eventsx HTTP/1.1\r\n\r\n",
            b"GET /events HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        ] {
            assert!(matches!(parse_head(other), Parsed::Other));
        }
        assert!(matches!(parse_head(b"GET /events HTTP/1.1\r\nHost"), Parsed::Partial));
    }

    /// The HTTP/2 preface goes to hyper's HTTP/2 server, however it is split across reads; a head that only
    /// starts like it is HTTP/1's to judge.
    #[test]
    fn the_http2_preface_is_told_apart() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00";
        assert!(matches!(parse_head(preface), Parsed::Http2));
        assert!(matches!(parse_head(&preface[..24]), Parsed::Http2));
        for cut in 1..24 {
            assert!(matches!(parse_head(&preface[..cut]), Parsed::Partial), "{cut} bytes");
        }
        assert!(matches!(parse_head(b"PRI * HTTP/1.1\r\n\r\n"), Parsed::Other), "an HTTP/1.1 request for hyper");
        assert!(matches!(parse_head(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"), Parsed::Bad(Error::MalformedHead)));
    }

    #[test]
    fn heads_that_are_not_http_1_are_refused() {
        for bad in [&b"\x16\x03\x01 garbage\r\n\r\n"[..], b"GET /events HTTP/1.1\r\nBad Header\r\n\r\n", b"GET\r\n\r\n"]
        {
            assert!(matches!(parse_head(bad), Parsed::Bad(Error::MalformedHead)), "{bad:?}");
        }
        let many = format!("GET /events HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(MAX_HEADERS + 1));
        assert!(matches!(parse_head(many.as_bytes()), Parsed::Bad(Error::HeadTooLarge)));
        assert!(matches!(too_large(b"GET /aaaa"), Error::UriTooLong));
        assert!(matches!(too_large(b"GET /a HTTP/1.1\r\nX: aaaa"), Error::HeadTooLarge));
        let answer = encode_error(Error::UriTooLong);
        let text = std::str::from_utf8(&answer).expect("utf-8");
        assert!(text.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{text}");
        assert!(text.contains("connection: close\r\n") && text.contains("content-type: application/json\r\n"));
        assert!(text.ends_with(r#"{"error":{"code":"uri_too_long","message":"the request target (URI) is too long"}}"#));
    }
}
