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
//!
//! While waiting for events the front also watches the socket for the peer closing, so a departed client
//! is unsubscribed at once.

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

use crate::http::ResponseBody;

/// First allocation for a request head; browsers' heads are usually smaller.
const INITIAL_HEAD_BUFFER: usize = 1024;
/// Heads larger than this are left to hyper, which answers them as it sees fit.
const MAX_HEAD: usize = 16 * 1024;
/// Headers parsed by the front; a request with more goes to hyper.
const MAX_HEADERS: usize = 64;
/// Reads of unexpected client bytes per wake-up while streaming; bounds the work a chatty client causes.
const MAX_DISCARD_READS: usize = 16;

/// What the first request on a connection turned out to be.
#[derive(Debug)]
pub(crate) enum Sniffed {
    /// A `GET /events` request without a body.
    Events(Request<Empty<Bytes>>),
    /// Anything else: hyper serves the connection, starting with these bytes.
    Other(Bytes),
    /// The peer closed, failed or timed out before sending a complete head.
    Gone,
}

#[allow(clippy::large_enum_variant)] // short-lived, and the large variant is the common one
pub(crate) enum Parsed {
    Events(Request<Empty<Bytes>>),
    Other,
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
            Parsed::Partial if buf.len() >= MAX_HEAD => return Sniffed::Other(buf.freeze()),
            Parsed::Partial => buf.reserve(buf.len()),
        }
    }
}

/// Parses a head; only a body-less `GET /events` becomes a request.
pub(crate) fn parse_head(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    match head.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
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
/// holds little more than the socket and the body.
pub(crate) async fn stream(mut stream: TcpStream, ready: Ready) {
    let Ready { head, mut body, chunked } = ready;
    match pump(&mut stream, head, &mut body, chunked).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            tracing::debug!("closing a stream whose client accepts no bytes");
            if let ResponseBody::Stream(events) = &body {
                events.note_stalled();
            }
            // The client is not reading: a graceful shutdown would wait behind the unsent bytes.
            return;
        }
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

/// Writes `head`, then the body's frames until it ends (shutdown, a lagging client closed) or the peer
/// goes away. A complete body is written as it is; an event stream as chunks when `chunked`.
async fn pump(stream: &mut TcpStream, head: Bytes, body: &mut ResponseBody, chunked: bool) -> io::Result<()> {
    let limit = match body {
        ResponseBody::Full(bytes) => {
            stream.write_all(&head).await?;
            return match bytes.take() {
                Some(bytes) => stream.write_all(&bytes).await,
                None => Ok(()),
            };
        }
        ResponseBody::Stream(events) => events.send_timeout(),
        // Not a response of `/events`, which is all the front serves; written as it comes, for completeness.
        ResponseBody::File(_) => {
            stream.write_all(&head).await?;
            while let Some(Ok(frame)) = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
                if let Ok(data) = frame.into_data() {
                    stream.write_all(&data).await?;
                }
            }
            return Ok(());
        }
    };
    write_within(stream, &head, limit).await?;
    drop(head);
    let events = body;
    loop {
        let next = std::future::poll_fn(|cx| {
            if peer_gone(stream, cx) {
                return Poll::Ready(Next::PeerGone);
            }
            match Pin::new(&mut *events).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => Poll::Ready(Next::Chunk(data)),
                    Err(_) => Poll::Ready(Next::End),
                },
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(Next::End),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match next {
            // Already framed by the stream (see `EventStream::use_chunked_framing`): one buffer, one `send`.
            Next::Chunk(data) => write_within(stream, &data, limit).await?,
            Next::End if chunked => return write_within(stream, b"0\r\n\r\n", limit).await,
            Next::End | Next::PeerGone => return Ok(()),
        }
    }
}

/// Writes all of `data`, failing with `TimedOut` when the client accepts none of it for `limit` (it has
/// stopped reading and the socket's buffers are full). The usual case, a socket with room, is one `send`
/// and no timer; the timer is boxed so that it never sizes the long-lived task.
async fn write_within(stream: &mut TcpStream, data: &[u8], limit: Duration) -> io::Result<()> {
    let mut written = match stream.try_write(data) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    while written < data.len() {
        let progress = Box::pin(tokio::time::timeout(limit, stream.write(&data[written..])));
        match progress.await {
            Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => written += n,
            Ok(Err(e)) => return Err(e),
            Err(_elapsed) => return Err(io::ErrorKind::TimedOut.into()),
        }
    }
    Ok(())
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
            b"\x16\x03\x01 garbage\r\n\r\n",
        ] {
            assert!(matches!(parse_head(other), Parsed::Other));
        }
        assert!(matches!(parse_head(b"GET /events HTTP/1.1\r\nHost"), Parsed::Partial));
    }
}
