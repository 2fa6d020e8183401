//! `--send-timeout` for every connection, whichever code serves it: a write deadline on the connection's
//! I/O.
//!
//! A client that stops reading fills the socket's buffers, and from then on every write waits. The event
//! stream's own policies (heartbeats, lag, shutdown, token expiry) live in its body, but a body cannot see
//! this: the writer simply stops asking it for more (hyper stops polling a body while its write buffer is
//! full). So the deadline sits where the waiting happens, under whatever writes: [`WriteDeadline`] wraps the
//! socket of every connection (the event-stream front's and hyper's alike, and so any future transport
//! over them) and fails a write that has made no progress for the send timeout with `TimedOut`, which ends
//! the connection. As Pushpin does. A stream closed that way is counted in `herald_stalled_dropped_total`.
//!
//! The timer exists only while a write is waiting: an idle or flowing connection carries no timer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::metrics::Metrics;

/// Whether the connection is serving an event stream, for counting a stall.
#[derive(Debug)]
pub(crate) enum Serving {
    /// It is.
    EventStream,
    /// It is not (the front answering with an error).
    Response,
    /// It is once the flag is set (hyper's connections: set when a response is an event stream).
    Flag(Arc<AtomicBool>),
}

/// `inner`, whose writes fail with `TimedOut` once one has waited `limit` without any byte accepted.
#[derive(Debug)]
pub(crate) struct WriteDeadline<T> {
    inner: T,
    limit: Duration,
    /// Armed when a write first has to wait; boxed so that it never sizes an idle connection's state.
    timer: Option<Pin<Box<Sleep>>>,
    serving: Serving,
    metrics: Arc<Metrics>,
}

impl<T> WriteDeadline<T> {
    /// Wraps `inner` with the send timeout `limit`.
    pub(crate) fn new(inner: T, limit: Duration, serving: Serving, metrics: Arc<Metrics>) -> Self {
        WriteDeadline { inner, limit, timer: None, serving, metrics }
    }

    /// The wrapped I/O.
    pub(crate) fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Passes on a write's result; when it has to wait, arms the timer (once) and fails when it fires.
    fn within<R>(&mut self, cx: &mut Context<'_>, result: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if result.is_ready() {
            self.timer = None;
            return result;
        }
        let limit = self.limit;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.timer = None;
        let streaming = match &self.serving {
            Serving::EventStream => true,
            Serving::Response => false,
            Serving::Flag(flag) => flag.load(Ordering::Relaxed),
        };
        if streaming {
            Metrics::inc(&self.metrics.stalled_dropped);
            tracing::debug!("closing a stream whose client accepts no bytes");
        }
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client accepted no bytes within --send-timeout")))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.within(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.within(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.within(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.within(cx, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A write that cannot progress fails after the limit and counts a stall; one that progresses does not.
    #[tokio::test]
    async fn a_write_waiting_longer_than_the_limit_fails() {
        let metrics = Arc::new(Metrics::default());
        let (client, _server) = tokio::io::duplex(16);
        let mut io = WriteDeadline::new(client, Duration::from_millis(300), Serving::EventStream, metrics.clone());
        io.write_all(&[0; 16]).await.expect("room for 16 bytes");
        let err = io.write_all(&[0; 16]).await.expect_err("no reader: the write waits, then fails");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(metrics.stalled_dropped.load(Ordering::Relaxed), 1);

        let flag = Arc::new(AtomicBool::new(false));
        let (client, mut server) = tokio::io::duplex(16);
        let mut io = WriteDeadline::new(client, Duration::from_secs(2), Serving::Flag(flag), metrics.clone());
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                tokio::io::AsyncReadExt::read_exact(&mut server, &mut buf).await.expect("read");
            }
            server
        });
        // Each write waits a little, well under the limit: slow, but never stalled.
        io.write_all(&[0; 128]).await.expect("a slow reader is not a stalled one");
        let mut server = reader.await.expect("reader");
        drop(io);
        let mut rest = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut server, &mut rest).await.expect("read");
        assert_eq!(metrics.stalled_dropped.load(Ordering::Relaxed), 1);
    }
}
