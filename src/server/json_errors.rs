//! JSON for the answers hyper gives by itself.
//!
//! Every error Herald sends is JSON (`{"error":{"code","message"}}`, made in `error.rs`). But a request
//! head hyper cannot parse never reaches Herald's service: hyper answers it itself — `400`, `414` or `431`
//! with an empty body and `Connection: close` — and offers no hook to change that. The event-stream front
//! answers the first head of every connection itself; this wrapper covers the later requests of a
//! keep-alive connection, which hyper parses: it watches what hyper writes, and when a response begins as
//! one of those answers (one of those statuses with no `Content-Type`: every response of Herald's own has
//! one), it writes Herald's JSON error in its place (with `Connection: close`, as hyper closes the
//! connection after it) and tells hyper its bytes were written.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::front::encode_error;
use crate::error::Error;

/// `inner`, with hyper's own error answers replaced by JSON ones.
#[derive(Debug)]
pub(crate) struct JsonErrors<T> {
    inner: T,
    /// A replacement being written, and how many bytes hyper asked to write.
    replacing: Option<(Bytes, usize)>,
}

impl<T> JsonErrors<T> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: T) -> Self {
        JsonErrors { inner, replacing: None }
    }
}

/// The error hyper's own answer starting `buf` stands for, if `buf` is the whole of such an answer.
fn hyper_answer(buf: &[u8]) -> Option<Error> {
    let status = buf.strip_prefix(b"HTTP/1.1 ").or_else(|| buf.strip_prefix(b"HTTP/1.0 "))?;
    let error = match status.get(..4)? {
        b"400 " => Error::MalformedHead,
        b"414 " => Error::UriTooLong,
        b"431 " => Error::HeadTooLarge,
        _ => return None,
    };
    let end = memchr::memmem::find(buf, b"\r\n\r\n")?;
    let head = buf[..end].to_ascii_lowercase();
    let own = memchr::memmem::find(&head, b"\r\ncontent-type:").is_some();
    let empty = memchr::memmem::find(&head, b"\r\ncontent-length: 0").is_some() && end + 4 == buf.len();
    (!own && empty).then_some(error)
}

impl<T: AsyncWrite + Unpin> JsonErrors<T> {
    /// Writes the replacement under way; `Ok(n)` (what hyper asked to write) once all of it is out.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some((bytes, asked)) = &mut self.replacing else { return Poll::Ready(Ok(0)) };
        while bytes.has_remaining() {
            match Pin::new(&mut self.inner).poll_write(cx, bytes) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => bytes.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let asked = *asked;
        self.replacing = None;
        Poll::Ready(Ok(asked))
    }

    /// Starts replacing when `first` (all hyper is writing now: `total` bytes) is one of its own answers.
    fn replaces(&mut self, first: &[u8], total: usize) -> bool {
        if self.replacing.is_none() && first.len() == total {
            if let Some(error) = hyper_answer(first) {
                tracing::debug!(code = error.code(), "answering a malformed request head");
                self.replacing = Some((encode_error(error), total));
            }
        }
        self.replacing.is_some()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrors<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrors<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.replaces(buf, buf.len()) {
            return self.poll_replacement(cx);
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total = bufs.iter().map(|b| b.len()).sum();
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
        if self.replaces(first, total) {
            return self.poll_replacement(cx);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const DATE: &str = "date: Tue, 01 Dec 2026 15:12:09 GMT\r\n";

    #[test]
    fn recognises_only_hyper_s_own_answers() {
        let hyper = |status: &str| format!("HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: 0\r\n{DATE}\r\n");
        assert!(matches!(hyper_answer(hyper("400 Bad Request").as_bytes()), Some(Error::MalformedHead)));
        assert!(matches!(hyper_answer(hyper("414 URI Too Long").as_bytes()), Some(Error::UriTooLong)));
        let large = hyper("431 Request Header Fields Too Large");
        assert!(matches!(hyper_answer(large.as_bytes()), Some(Error::HeadTooLarge)));
        for not in [
            hyper("404 Not Found"),
            hyper("200 OK"),
            format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n{DATE}\r\n{{}}"
            ),
            format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n{DATE}"),
            "4\r\ndata\r\n".to_string(),
        ] {
            assert!(hyper_answer(not.as_bytes()).is_none(), "{not:?}");
        }
    }

    #[tokio::test]
    async fn writes_the_json_error_in_its_place() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut io = JsonErrors::new(client);
        let own = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
        let answer = format!("HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n{DATE}\r\n");
        let writer = tokio::spawn(async move {
            io.write_all(own).await.expect("write");
            io.write_all(answer.as_bytes()).await.expect("write");
            io.shutdown().await.expect("shutdown");
        });
        let mut out = String::new();
        server.read_to_string(&mut out).await.expect("read");
        writer.await.expect("writer");
        let replaced = String::from_utf8(encode_error(Error::MalformedHead).to_vec()).expect("utf-8");
        assert_eq!(out, format!("{}{replaced}", std::str::from_utf8(own).expect("utf-8")));
        assert!(replaced.ends_with(r#"{"error":{"code":"bad_request","message":"malformed request head"}}"#));
    }
}
