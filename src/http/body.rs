//! Response bodies: small fixed bodies, and the never-ending event stream of `GET /events`.
//!
//! [`EventStream`] is a hand-written `http_body::Body` rather than an `async` stream: it is the state of
//! every open connection, so it is kept small, and polling it does no more than drain the mailbox. It
//! ends by itself when the hub closes at shutdown (an SSE body never ends otherwise, and hyper's graceful
//! shutdown would wait for it forever: hyper#2787).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::backend::{Backend, History, PageStream, Replay};
use crate::error::Error;
use crate::hub::{Drained, Registration};
use crate::id::{EventId, LastEventId};
use crate::metrics::Metrics;
use crate::sse::{self, Event};

/// Events written together in one frame when several are waiting.
const MAX_BATCH_EVENTS: usize = 64;
/// Frames are not grown past this many bytes by batching.
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// The body of any Herald response.
#[derive(Debug)]
pub enum ResponseBody {
    /// A complete body (possibly empty).
    Full(Option<Bytes>),
    /// An event stream.
    Stream(Box<EventStream>),
}

impl ResponseBody {
    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody::Full(Some(bytes.into()))
    }
}

impl Default for ResponseBody {
    fn default() -> Self {
        ResponseBody::Full(None)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ResponseBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Stream(stream) => stream.poll_next_chunk(cx).map(|c| c.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, ResponseBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ResponseBody::Full(None) => SizeHint::with_exact(0),
            ResponseBody::Stream(_) => SizeHint::default(),
        }
    }
}

/// Holds one slot of the node's stream limit and keeps `herald_connections_open` true.
#[derive(Debug)]
pub struct StreamPermit {
    metrics: Arc<Metrics>,
}

impl StreamPermit {
    /// Takes a slot if fewer than `max` streams are open.
    ///
    /// # Errors
    /// [`Error::TooManyConnections`] at the limit.
    pub fn acquire(metrics: &Arc<Metrics>, max: usize) -> Result<Self, Error> {
        let before = metrics.connections_open.fetch_add(1, Relaxed);
        let permit = StreamPermit { metrics: metrics.clone() };
        if before >= max as u64 {
            return Err(Error::TooManyConnections);
        }
        Ok(permit)
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.metrics.connections_open.fetch_sub(1, Relaxed);
    }
}

type CatchUp = Pin<Box<dyn Future<Output = Result<Replay, Error>> + Send>>;

enum Phase {
    /// Replayed events still to write, in id order.
    Replay(std::vec::IntoIter<Arc<Event>>),
    /// A resume whose history comes in pages: the page being written, then the pages still to read.
    Paged(Box<(std::vec::IntoIter<Arc<Event>>, PageStream)>),
    /// Live events from the mailbox.
    Live,
    /// The mailbox overflowed; history is being read from the last id sent.
    CatchUp(CatchUp),
    /// Nothing more will be written.
    Done,
}

impl std::fmt::Debug for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Replay(_) => "Replay",
            Phase::Paged(_) => "Paged",
            Phase::Live => "Live",
            Phase::CatchUp(_) => "CatchUp",
            Phase::Done => "Done",
        })
    }
}

/// Everything an event stream needs besides its registration: the same for every stream of a node, so
/// streams share one copy.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// The backend, for catching up a lagging connection.
    pub backend: Arc<dyn Backend>,
    /// Node counters.
    pub metrics: Arc<Metrics>,
    /// Idle time before a heartbeat.
    pub heartbeat: Duration,
}

/// How much later than the heartbeat interval this stream's heartbeat timer fires: 0 to 10% of the
/// interval, fixed per connection. Connections opened together (or woken by the same event) would otherwise
/// all send their heartbeat in the same instant, tens of thousands of writes at once; spread, they go out
/// over a tenth of the interval. A heartbeat is still only sent after the interval of silence.
fn spread(registration: &Registration, settings: &StreamSettings) -> Duration {
    let slot = registration.id().wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54; // 0..1024, well mixed
    settings.heartbeat.mul_f64(slot as f64 / 10_240.0)
}

/// When the heartbeat timer of a stream silent since `from` fires: the interval, plus its [`spread`].
fn idle_deadline(from: Instant, registration: &Registration, settings: &StreamSettings) -> Instant {
    from + settings.heartbeat + spread(registration, settings)
}

/// One open `GET /events` stream: the opening bytes, then replay, then live events and heartbeats.
#[derive(Debug)]
pub struct EventStream {
    settings: Arc<StreamSettings>,
    registration: Registration,
    /// Bytes to write before anything else (preamble and any `herald.reset`).
    head: Option<Bytes>,
    phase: Phase,
    /// The id of the newest event written; anything not newer is a duplicate.
    last_sent: EventId,
    heartbeat: Pin<Box<Sleep>>,
    last_activity: Instant,
    /// When the stream ends by itself (its token expires then).
    ends_at: Option<Instant>,
    batch: Vec<Arc<Event>>,
    /// Whether chunks carry their HTTP/1.1 chunk framing (the event-stream front writes them as they are).
    chunked: bool,
    _permit: StreamPermit,
}

impl EventStream {
    /// Makes the stream of a subscribed connection. `head` is written first; `replay` (in id order, read
    /// page by page as the client takes it) follows, then live events newer than both `last_sent` and the
    /// replay.
    pub fn new(
        settings: Arc<StreamSettings>,
        registration: Registration,
        permit: StreamPermit,
        head: Bytes,
        replay: History,
        last_sent: EventId,
    ) -> Self {
        let now = Instant::now();
        let phase = match replay.more {
            None => Phase::Replay(replay.first.into_iter()),
            Some(pages) => Phase::Paged(Box::new((replay.first.into_iter(), pages))),
        };
        EventStream {
            heartbeat: Box::pin(tokio::time::sleep_until(idle_deadline(now, &registration, &settings))),
            settings,
            registration,
            head: Some(head),
            phase,
            last_sent,
            last_activity: now,
            ends_at: None,
            batch: Vec::new(),
            chunked: false,
            _permit: permit,
        }
    }

    /// Makes every chunk this stream yields a complete HTTP/1.1 chunk (size line, bytes, CRLF), for a
    /// writer that frames nothing itself.
    pub fn use_chunked_framing(&mut self) {
        self.chunked = true;
    }

    /// Ends the stream cleanly at `at` (when the token it was opened with expires), so that the client
    /// reconnects with whatever token it has by then.
    pub fn end_at(&mut self, at: Instant) {
        self.ends_at = Some(at);
        let wake = self.next_wake(self.last_activity);
        self.heartbeat.as_mut().reset(wake);
    }

    /// When the timer should next fire if the stream stays silent from `from`: the heartbeat's
    /// [`idle_deadline`], or the stream's end when that comes first.
    fn next_wake(&self, from: Instant) -> Instant {
        let heartbeat = idle_deadline(from, &self.registration, &self.settings);
        self.ends_at.map_or(heartbeat, |end| end.min(heartbeat))
    }

    fn has_expired(&self) -> bool {
        self.ends_at.is_some_and(|end| Instant::now() >= end)
    }

    fn poll_next_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if let Some(head) = self.head.take() {
            let head = if self.chunked {
                sse::chunk_with(head.len(), |b| b.extend_from_slice(&head)).wire().clone()
            } else {
                head
            };
            return Poll::Ready(Some(self.written(head, 0)));
        }
        loop {
            if !self.batch.is_empty() {
                if let Some(chunk) = self.encode_batch() {
                    return Poll::Ready(Some(chunk));
                }
            }
            match &mut self.phase {
                Phase::Done => return Poll::Ready(None),
                Phase::Replay(events) => {
                    self.batch.extend(events.by_ref().take(MAX_BATCH_EVENTS));
                    if self.batch.is_empty() {
                        self.phase = Phase::Live;
                        continue;
                    }
                    if let Some(chunk) = self.encode_batch() {
                        return Poll::Ready(Some(chunk));
                    }
                }
                Phase::Paged(paged) => {
                    let (page, pages) = &mut **paged;
                    self.batch.extend(page.by_ref().take(MAX_BATCH_EVENTS));
                    if self.batch.is_empty() {
                        match pages.as_mut().poll_next(cx) {
                            Poll::Ready(Some(Ok(next))) => *page = next.into_iter(),
                            Poll::Ready(None) => self.phase = Phase::Live,
                            // The rest of the history cannot be read as it was (see the backend's log and
                            // counters): end the stream, so that the client resumes with its last id.
                            Poll::Ready(Some(Err(_))) => self.phase = Phase::Done,
                            Poll::Pending => return self.poll_heartbeat(cx),
                        }
                        continue;
                    }
                    if let Some(chunk) = self.encode_batch() {
                        return Poll::Ready(Some(chunk));
                    }
                }
                Phase::CatchUp(future) => {
                    let result = ready!(future.as_mut().poll(cx));
                    match result {
                        Ok(Replay { events, reset: None }) => {
                            Metrics::inc(&self.settings.metrics.lagging_caught_up);
                            self.phase = Phase::Replay(events.into_iter());
                        }
                        Ok(Replay { reset: Some(_), .. }) | Err(_) => {
                            // History cannot cover this connection: close it; the client resumes with its
                            // last id and is told what it lost.
                            Metrics::inc(&self.settings.metrics.lagging_dropped);
                            self.phase = Phase::Done;
                        }
                    }
                }
                Phase::Live => {
                    if self.has_expired() {
                        self.phase = Phase::Done;
                        continue;
                    }
                    let mailbox = self.registration.mailbox();
                    match mailbox.poll_drain(cx, &mut self.batch, MAX_BATCH_EVENTS) {
                        Poll::Ready(Drained::Events) => {
                            if let Some(chunk) = self.encode_batch() {
                                return Poll::Ready(Some(chunk));
                            }
                        }
                        Poll::Ready(Drained::Lagged) => {
                            mailbox.clear_lag();
                            let backend = self.settings.backend.clone();
                            let topics = self.registration.topics().to_vec();
                            let last = LastEventId::Id(self.last_sent);
                            self.phase = Phase::CatchUp(Box::pin(async move { backend.replay(&topics, last).await }));
                        }
                        Poll::Ready(Drained::Closed) => {
                            self.phase = Phase::Done;
                        }
                        Poll::Pending => return self.poll_heartbeat(cx),
                    }
                }
            }
        }
    }

    /// Encodes the waiting batch into one write, dropping events already sent; `None` when all were
    /// duplicates. Stops at [`MAX_BATCH_BYTES`]; what is left goes first next time. A single event is
    /// written as its shared bytes; several are copied into one buffer.
    fn encode_batch(&mut self) -> Option<Bytes> {
        let before = self.last_sent;
        let (mut consumed, mut count, mut bytes) = (0, 0, 0);
        for event in &self.batch {
            consumed += 1;
            if event.id <= self.last_sent {
                continue;
            }
            self.last_sent = event.id;
            count += 1;
            bytes += event.chunk.payload_len();
            if bytes >= MAX_BATCH_BYTES {
                break;
            }
        }
        let mut fresh = {
            let mut threshold = before;
            self.batch[..consumed].iter().filter(move |e| {
                let keep = e.id > threshold;
                if keep {
                    threshold = e.id;
                }
                keep
            })
        };
        let chunk = match (count, self.chunked) {
            (0, _) => None,
            (1, true) => fresh.next().map(|e| e.chunk.wire().clone()),
            (1, false) => fresh.next().map(|e| e.chunk.payload()),
            (_, true) => Some(
                sse::chunk_with(bytes, |buf| fresh.for_each(|e| buf.extend_from_slice(e.chunk.payload_slice())))
                    .wire()
                    .clone(),
            ),
            (_, false) => {
                let mut buf = BytesMut::with_capacity(bytes);
                fresh.for_each(|e| buf.extend_from_slice(e.chunk.payload_slice()));
                Some(buf.freeze())
            }
        };
        self.batch.drain(..consumed);
        Some(self.written(chunk?, count as u64))
    }

    fn written(&mut self, chunk: Bytes, events: u64) -> Bytes {
        let metrics = &self.settings.metrics;
        if events > 0 {
            metrics.events_delivered.fetch_add(events, Relaxed);
        }
        metrics.bytes_written.fetch_add(chunk.len() as u64, Relaxed);
        self.last_activity = Instant::now();
        chunk
    }

    /// Sends a comment when the stream has been idle for the heartbeat interval. The timer is not reset
    /// on every write (that would cost a timer update per event); when it fires early it is re-armed
    /// from the last write.
    fn poll_heartbeat(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        loop {
            ready!(self.heartbeat.as_mut().poll(cx));
            if self.has_expired() {
                self.phase = Phase::Done;
                return Poll::Ready(None);
            }
            let due = self.last_activity + self.settings.heartbeat;
            let now = Instant::now();
            if now >= due {
                Metrics::inc(&self.settings.metrics.heartbeats);
                let next = self.next_wake(now);
                self.heartbeat.as_mut().reset(next);
                let comment = if self.chunked { sse::HEARTBEAT_CHUNK } else { sse::HEARTBEAT };
                return Poll::Ready(Some(self.written(Bytes::from_static(comment), 0)));
            }
            let next = self.next_wake(self.last_activity);
            self.heartbeat.as_mut().reset(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{HistoryLimits, MemoryBackend};

    /// Connections registered together get heartbeat offsets spread over 0–10% of the interval.
    #[test]
    fn heartbeats_of_connections_opened_together_are_spread() {
        let metrics = Arc::new(Metrics::default());
        let backend = Arc::new(MemoryBackend::new(HistoryLimits { size: 1, ttl: None }, 4, metrics.clone()));
        let settings = StreamSettings { backend: backend.clone(), metrics, heartbeat: Duration::from_secs(15) };
        let mut tenths = [0usize; 10];
        for _ in 0..1000 {
            let (registration, _) = backend.hub().register(&["t".into()]).expect("register");
            let offset = spread(&registration, &settings);
            assert!(offset < Duration::from_millis(1500), "offset {offset:?} over 10% of 15 s");
            tenths[(offset.as_secs_f64() / 0.15) as usize] += 1;
        }
        // Each tenth of the window gets a fair share: no burst left in one place.
        assert!(tenths.iter().all(|&n| (50..=150).contains(&n)), "{tenths:?}");
    }
}
