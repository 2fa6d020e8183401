//! HTTP/2: connections that open with the HTTP/2 preface (cleartext with prior knowledge, as proxies
//! speak it) or that chose `h2` by ALPN are served by hyper's HTTP/2 server, through the same tower
//! service as every other request.
//!
//! An `/events` stream is then one HTTP/2 stream, and many share a connection. Each stream has its own
//! flow-control window, so a client that stops reading one stream never delays the others, but then the
//! socket-level send timeout ([`super::deadline`]) cannot see it: the connection keeps flowing. Nor can
//! a timer in the body: hyper stops polling a body while the chunk it yielded waits for window. So the
//! send timeout of a stream sits in the task that runs it. hyper runs each stream as a task of its own,
//! spawned through the executor given to it; [`StreamTasks`] spawns each inside a [`StallDeadline`],
//! and the stream's body ([`Watched`]) marks when it has yielded a chunk that has not yet been taken
//! (hyper has not polled it again). A stream that stays so for `--send-timeout` is dropped: h2 then resets
//! it (`RST_STREAM` with `CANCEL`), the subscription ends, the other streams go on, and the stall is
//! counted in `herald_stalled_dropped_total` as on HTTP/1. The client resumes with its last event id.
//!
//! Like the deadline on sockets, the timer exists only while a chunk waits: an idle or flowing stream
//! carries none.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::server::conn::http2;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::deadline::Serving;
use super::{Connections, Service, MAX_CONNECTION_BUFFER};
use crate::http::client::Peer;
use crate::http::ResponseBody;
use crate::metrics::Metrics;

tokio::task_local! {
    /// The state of the HTTP/2 stream whose task is being polled, for its body to report to.
    static STREAM: Arc<StreamState>;
}

/// What a stream's body tells the task that runs it.
#[derive(Debug, Default)]
struct StreamState {
    /// Bit 0: the body yielded a chunk and has not been polled since (hyper waits for flow-control
    /// window to send it). The other bits count yields, so that a new wait is told from an old one.
    waiting: AtomicU64,
    /// Whether the response is an event stream (a stall is counted only for those, as on HTTP/1).
    event_stream: AtomicBool,
}

impl StreamState {
    /// The body is being polled: what it yielded before has been taken.
    fn polled(&self) {
        let v = self.waiting.load(Relaxed);
        if v & 1 == 1 {
            self.waiting.store(v & !1, Relaxed);
        }
    }

    /// The body yielded a chunk.
    fn yielded(&self) {
        let v = self.waiting.load(Relaxed);
        self.waiting.store((v | 1).wrapping_add(2), Relaxed);
    }
}

/// A response body on an HTTP/2 stream, reporting to its [`StallDeadline`].
#[derive(Debug)]
pub(crate) struct Watched {
    body: ResponseBody,
    /// `None` outside a stream task (never, with [`StreamTasks`]).
    state: Option<Arc<StreamState>>,
}

impl Watched {
    /// Wraps `body`, made inside the task of the stream it answers.
    fn new(body: ResponseBody) -> Self {
        let state = STREAM.try_with(Arc::clone).ok();
        if let (Some(state), ResponseBody::Stream(_)) = (&state, &body) {
            state.event_stream.store(true, Relaxed);
        }
        Watched { body, state }
    }
}

impl Body for Watched {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(state) = &this.state {
            state.polled();
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let (Some(state), Poll::Ready(Some(Ok(_)))) = (&this.state, &frame) {
            state.yielded();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// What every stream's deadline shares: the send timeout and the counters.
#[derive(Debug)]
struct StallPolicy {
    limit: Duration,
    metrics: Arc<Metrics>,
}

/// hyper's executor for the tasks of HTTP/2 streams: each runs under a [`StallDeadline`].
#[derive(Debug, Clone)]
pub(crate) struct StreamTasks {
    policy: Arc<StallPolicy>,
}

impl StreamTasks {
    /// Streams whose client takes nothing for `limit` are reset.
    pub(crate) fn new(limit: Duration, metrics: Arc<Metrics>) -> Self {
        StreamTasks { policy: Arc::new(StallPolicy { limit, metrics }) }
    }
}

impl<F> hyper::rt::Executor<F> for StreamTasks
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let state = Arc::new(StreamState::default());
        tokio::spawn(StallDeadline {
            stream: STREAM.scope(state.clone(), fut),
            state,
            policy: self.policy.clone(),
            seen: 0,
            timer: None,
        });
    }
}

pin_project_lite::pin_project! {
    /// A stream's task: ends it (dropping it, which resets the stream) once its body's last chunk has
    /// waited `--send-timeout` for the client's window.
    struct StallDeadline<F> {
        #[pin]
        stream: F,
        state: Arc<StreamState>,
        policy: Arc<StallPolicy>,
        // The body's `waiting` when the timer was armed.
        seen: u64,
        // Armed while a chunk waits; boxed so that it never sizes an idle stream's task.
        timer: Option<Pin<Box<Sleep>>>,
    }
}

impl<F: Future<Output = ()>> Future for StallDeadline<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.stream.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let waiting = this.state.waiting.load(Relaxed);
        if waiting & 1 == 0 {
            *this.timer = None;
            return Poll::Pending;
        }
        if *this.seen != waiting || this.timer.is_none() {
            // A new chunk waits from now.
            *this.seen = waiting;
            let due = Instant::now() + this.policy.limit;
            match this.timer {
                Some(timer) => timer.as_mut().reset(due),
                None => *this.timer = Some(Box::pin(tokio::time::sleep_until(due))),
            }
        }
        let fired = this.timer.as_mut().is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
        if !fired {
            return Poll::Pending;
        }
        if this.state.event_stream.load(Relaxed) {
            Metrics::inc(&this.policy.metrics.stalled_dropped);
            tracing::debug!("resetting an HTTP/2 stream whose client accepts no bytes");
        }
        Poll::Ready(())
    }
}

/// hyper's HTTP/2 settings for every connection.
pub(crate) fn builder(max_streams: u32, send_timeout: Duration, metrics: Arc<Metrics>) -> http2::Builder<StreamTasks> {
    let mut builder = http2::Builder::new(StreamTasks::new(send_timeout, metrics));
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(max_streams)
        // As for HTTP/1 heads: a request's header fields may take up to the connection buffer.
        .max_header_list_size(u32::try_from(MAX_CONNECTION_BUFFER).unwrap_or(u32::MAX));
    builder
}

/// Serves one HTTP/2 connection until it ends; on `closing`, sends GOAWAY and lets the open streams
/// finish (they end by themselves when the node drains). Every request carries the connection's [`Peer`].
pub(crate) async fn serve<T>(conns: Arc<Connections>, io: T, peer: Peer, service: Service, closing: CancellationToken)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _open = OpenConnection::new(&conns.metrics);
    let streaming = Arc::new(AtomicBool::new(false));
    let io = conns.deadline(io, Serving::Flag(streaming.clone()));
    let service = tower::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(peer);
        let head = request.method() == http::Method::HEAD;
        let (response, streaming) = (service.clone().oneshot(request), streaming.clone());
        async move {
            let response = response.await?;
            if matches!(response.body(), ResponseBody::Stream(_)) {
                streaming.store(true, Relaxed);
            }
            Ok::<_, std::convert::Infallible>(if head { without_body(response) } else { response }.map(Watched::new))
        }
    });
    let connection = conns.h2.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = closing.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(cause = %e, "HTTP/2 connection ended with an error");
    }
}

/// The answer to a `HEAD` request: the `GET` answer's head (its `Content-Length` included) without its
/// body. hyper's HTTP/1 server leaves a `HEAD` answer's body out by itself; its HTTP/2 server would send
/// it, which clients take as a protocol error.
fn without_body(response: http::Response<ResponseBody>) -> http::Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    if let (false, Some(length)) = (parts.headers.contains_key(http::header::CONTENT_LENGTH), body.size_hint().exact())
    {
        parts.headers.insert(http::header::CONTENT_LENGTH, length.into());
    }
    http::Response::from_parts(parts, ResponseBody::default())
}

/// Counts an HTTP/2 connection in `herald_http2_connections_open` while it lives.
struct OpenConnection(Arc<Metrics>);

impl OpenConnection {
    fn new(metrics: &Arc<Metrics>) -> Self {
        Metrics::inc(&metrics.http2_connections);
        OpenConnection(metrics.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.http2_connections.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body's marks: a yield sets the wait and a new count, a poll clears the wait.
    #[test]
    fn waits_are_told_apart() {
        let state = StreamState::default();
        state.yielded();
        let first = state.waiting.load(Relaxed);
        assert_eq!(first & 1, 1);
        state.polled();
        assert_eq!(state.waiting.load(Relaxed) & 1, 0);
        state.yielded();
        let second = state.waiting.load(Relaxed);
        assert_eq!(second & 1, 1);
        assert_ne!(first, second);
    }

    /// A task whose body's chunk waits longer than the limit ends (and counts a stall); one whose chunks
    /// keep being taken, however slowly, does not.
    #[tokio::test]
    async fn a_chunk_waiting_longer_than_the_limit_ends_the_stream() {
        let metrics = Arc::new(Metrics::default());
        let policy = Arc::new(StallPolicy { limit: Duration::from_secs(1), metrics: metrics.clone() });
        let state = Arc::new(StreamState::default());
        state.event_stream.store(true, Relaxed);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
        let body_state = state.clone();
        // A stand-in for hyper's stream task: each message is "yielded a chunk" (true) or "polled" (false).
        let stream = async move {
            while let Some(yielded) = rx.recv().await {
                if yielded {
                    body_state.yielded();
                } else {
                    body_state.polled();
                }
            }
        };
        let task = tokio::spawn(StallDeadline { stream, state, policy, seen: 0, timer: None });
        for _ in 0..4 {
            tx.send(true).expect("send");
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx.send(false).expect("send");
        }
        assert!(!task.is_finished(), "slow but taken: not stalled");
        assert_eq!(metrics.stalled_dropped.load(Relaxed), 0);
        tx.send(true).expect("send");
        tokio::time::timeout(Duration::from_secs(10), task).await.expect("ended").expect("task");
        assert_eq!(metrics.stalled_dropped.load(Relaxed), 1);
    }
}
