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

use super::client::AddressPermit;
use crate::backend::{Backend, History, PageStream, Reset, Resume};
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
    /// A static file, read as it is sent.
    File(Box<super::static_files::FileBody>),
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
            ResponseBody::File(file) => file.poll_chunk(cx).map(|c| c.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(bytes) => bytes.is_none(),
            ResponseBody::Stream(_) => false,
            ResponseBody::File(file) => file.remaining() == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ResponseBody::Full(None) => SizeHint::with_exact(0),
            ResponseBody::Stream(_) => SizeHint::default(),
            ResponseBody::File(file) => SizeHint::with_exact(file.remaining()),
        }
    }
}

/// Holds one slot of the node's stream limit (and of its client address's, with
/// `--max-connections-per-ip`) and keeps `herald_connections_open` true.
#[derive(Debug)]
pub struct StreamPermit {
    metrics: Arc<Metrics>,
    /// Boxed: most nodes set no per-address limit, and every stream carries this.
    _address: Option<Box<AddressPermit>>,
}

impl StreamPermit {
    /// Takes a slot if fewer than `max` streams are open, keeping `address` (the client address's slot, if
    /// any) with it.
    ///
    /// # Errors
    /// [`Error::TooManyConnections`] at the limit.
    pub fn acquire(metrics: &Arc<Metrics>, max: usize, address: Option<AddressPermit>) -> Result<Self, Error> {
        let before = metrics.connections_open.fetch_add(1, Relaxed);
        let permit = StreamPermit { metrics: metrics.clone(), _address: address.map(Box::new) };
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

type CatchUp = Pin<Box<dyn Future<Output = Result<Resume, Error>> + Send>>;

enum Phase {
    /// Replayed events still to write, newest first: they are taken from the end. (A `Vec` rather than
    /// an iterator keeps this enum, and so every stream, 16 bytes smaller.)
    Replay(Vec<Arc<Event>>),
    /// A resume whose history comes in pages: the page being written, then the pages still to read.
    Paged(Box<(std::vec::IntoIter<Arc<Event>>, PageStream)>),
    /// Live events from the mailbox.
    Live,
    /// The mailbox overflowed; history is being read from the last id sent.
    CatchUp(CatchUp),
    /// Nothing more will be written.
    Done,
}

impl Phase {
    /// Writing `history`: at once when it came whole, page by page when it comes in pages.
    fn replaying(history: History) -> Phase {
        match history.more {
            None => {
                let mut first = history.first;
                first.reverse();
                Phase::Replay(first)
            }
            Some(pages) => Phase::Paged(Box::new((history.first.into_iter(), pages))),
        }
    }
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
    /// Whether events carry a `topics:` line (`tagTopics=1`).
    tagged: bool,
    /// The heartbeat timer's last poll was `Pending`: it is registered with [`EventStream::parked_with`],
    /// and until its deadline there is nothing to ask it (saves a timer poll per delivery).
    timer_armed: bool,
    /// The last drain emptied the mailbox and registered [`EventStream::parked_with`] for the next push:
    /// unless the mailbox has news since, there is nothing to ask it (saves a lock per delivery).
    drained: bool,
    /// The waker the mailbox and the timer were last registered with: the two shortcuts above hold only
    /// for a poll by the same task.
    parked_with: Option<std::task::Waker>,
    _permit: StreamPermit,
}

impl EventStream {
    /// Makes the stream of a subscribed connection. `head` is written first; `replay` (in id order, read
    /// page by page as the client takes it) follows, then live events newer than both `last_sent` and the
    /// replay.
    ///
    /// `last_sent` is the position the client already has (its valid last event id), or `ZERO` when it
    /// has none (a lagging stream that has sent no id catches up from where its subscription went live).
    pub fn new(
        settings: Arc<StreamSettings>,
        registration: Registration,
        permit: StreamPermit,
        head: Bytes,
        replay: History,
        last_sent: EventId,
    ) -> Self {
        let now = Instant::now();
        EventStream {
            heartbeat: Box::pin(tokio::time::sleep_until(idle_deadline(now, &registration, &settings))),
            settings,
            registration,
            head: Some(head),
            phase: Phase::replaying(replay),
            last_sent,
            last_activity: now,
            ends_at: None,
            batch: Vec::new(),
            chunked: false,
            tagged: false,
            timer_armed: false,
            drained: false,
            parked_with: None,
            _permit: permit,
        }
    }

    /// Makes every chunk this stream yields a complete HTTP/1.1 chunk (size line, bytes, CRLF), for a
    /// writer that frames nothing itself.
    pub fn use_chunked_framing(&mut self) {
        self.chunked = true;
    }

    /// Gives every event a `topics:` line naming the event's topics that this stream subscribed to
    /// (`tagTopics=1`), from the event's shared tagged frames ([`Event::tagged`]).
    pub fn tag_topics(&mut self) {
        self.tagged = true;
    }

    /// Ends the stream cleanly at `at` (when the token it was opened with expires), so that the client
    /// reconnects with whatever token it has by then.
    pub fn end_at(&mut self, at: Instant) {
        self.ends_at = Some(at);
        let wake = self.next_wake(self.last_activity);
        self.heartbeat.as_mut().reset(wake);
        self.timer_armed = false;
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

    /// The next bytes to write.
    ///
    /// A connection whose mailbox overflowed catches up from history: from the last id it sent, or, when it
    /// has sent none, from where its subscription went live ([`Registration::live_from`]), so that a burst
    /// that arrives before the first event is written is replayed rather than lost. When history cannot
    /// cover the gap, a stream that has sent an id is closed (the client resumes with that id and is told
    /// what it lost, with `herald.reset`); one that has sent none has no id to resume with, so it is told in
    /// the stream (`herald.reset`), then gets what history still holds, then goes on live. Never a silent gap.
    fn poll_next_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        loop {
            if let Some(head) = self.head.take() {
                let head = if self.chunked {
                    sse::chunk_with(head.len(), |b| b.extend_from_slice(&head)).wire().clone()
                } else {
                    head
                };
                return Poll::Ready(Some(self.written(head, 0)));
            }
            if !self.batch.is_empty() {
                if let Some(chunk) = self.encode_batch() {
                    return Poll::Ready(Some(chunk));
                }
            }
            match &mut self.phase {
                Phase::Done => return Poll::Ready(None),
                Phase::Replay(events) => {
                    let rest = events.len().saturating_sub(MAX_BATCH_EVENTS);
                    self.batch.extend(events.drain(rest..).rev());
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
                    let metrics = &self.settings.metrics;
                    let never_sent = self.last_sent == EventId::ZERO;
                    match result {
                        Ok(Resume { history, reset: None }) => {
                            Metrics::inc(&metrics.lagging_caught_up);
                            self.phase = Phase::replaying(history);
                        }
                        Ok(Resume { reset: Some(_), .. }) | Err(_) if !never_sent => {
                            // History cannot cover this connection: close it; the client resumes with its
                            // last id and is told what it lost.
                            Metrics::inc(&metrics.lagging_dropped);
                            self.phase = Phase::Done;
                        }
                        Ok(Resume { history, reset: Some(reset) }) => {
                            Metrics::inc(&metrics.lagging_caught_up);
                            Metrics::inc(&metrics.resets);
                            self.head = Some(sse::reset_event(&reset.topics, reset.reason));
                            self.phase = Phase::replaying(history);
                        }
                        Err(e) => {
                            // Nothing to replay from: say so, and go on live.
                            tracing::debug!(cause = %e, "catching up a lagging stream failed");
                            Metrics::inc(&metrics.lagging_caught_up);
                            Metrics::inc(&metrics.resets);
                            let reset = Reset { topics: self.registration.topics().to_vec(), reason: "history_lost" };
                            self.head = Some(sse::reset_event(&reset.topics, reset.reason));
                            self.phase = Phase::Live;
                        }
                    }
                }
                Phase::Live => {
                    if self.has_expired() {
                        self.phase = Phase::Done;
                        continue;
                    }
                    let drained = std::mem::take(&mut self.drained);
                    let mailbox = self.registration.mailbox();
                    if drained && self.same_task(cx) && !mailbox.has_news() {
                        // Emptied by the previous poll, which registered this task, and untouched since.
                        return self.poll_heartbeat(cx);
                    }
                    // Whatever `poll_drain` finds, the mailbox ends up registered with `cx` only if it is
                    // left empty; `remember` is right for the cases that rely on it (empty, or pending).
                    self.remember(cx);
                    let mailbox = self.registration.mailbox();
                    match mailbox.poll_drain(cx, &mut self.batch, MAX_BATCH_EVENTS) {
                        Poll::Ready(Drained::Events) => {
                            self.drained = self.batch.len() < MAX_BATCH_EVENTS;
                            if let Some(chunk) = self.encode_batch() {
                                return Poll::Ready(Some(chunk));
                            }
                        }
                        Poll::Ready(Drained::Lagged) => {
                            mailbox.clear_lag();
                            let backend = self.settings.backend.clone();
                            let topics = self.registration.topics().to_vec();
                            let from = self.last_sent.max(self.registration.live_from().unwrap_or(EventId::ZERO));
                            let last = LastEventId::Id(from);
                            // Read like a resume: in pages with Redis, so that a long catch-up holds a page at a time.
                            self.phase = Phase::CatchUp(Box::pin(async move { backend.resume(&topics, last).await }));
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
        if self.batch.len() == 1 && !self.tagged {
            // The common case at low rates: one event, its shared bytes as they are.
            let event = self.batch.pop()?;
            if event.id <= self.last_sent {
                return None;
            }
            self.last_sent = event.id;
            let chunk = if self.chunked { event.chunk.wire().clone() } else { event.chunk.payload() };
            return Some(self.written(chunk, 1));
        }
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
        let chunk = if self.tagged {
            Self::encode_tagged(fresh, count, bytes, self.registration.topics(), self.chunked)
        } else {
            match (count, self.chunked) {
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
            }
        };
        self.batch.drain(..consumed);
        Some(self.written(chunk?, count as u64))
    }

    /// [`EventStream::encode_batch`] for a tagged stream: each event's tagged frame for this stream's
    /// topics, shared with every stream that picks the same topics of it; several are copied into one
    /// write. `bytes` (the untagged size) only sizes the buffer.
    fn encode_tagged<'a>(
        mut fresh: impl Iterator<Item = &'a Arc<Event>>,
        count: usize,
        bytes: usize,
        topics: &[crate::topic::Topic],
        chunked: bool,
    ) -> Option<Bytes> {
        match (count, chunked) {
            (0, _) => None,
            (1, true) => fresh.next().map(|e| e.tagged(topics).wire().clone()),
            (1, false) => fresh.next().map(|e| e.tagged(topics).payload()),
            (_, true) => Some(
                sse::chunk_with(bytes, |buf| {
                    fresh.for_each(|e| buf.extend_from_slice(e.tagged(topics).payload_slice()));
                })
                .wire()
                .clone(),
            ),
            (_, false) => {
                let mut buf = BytesMut::with_capacity(bytes);
                fresh.for_each(|e| buf.extend_from_slice(e.tagged(topics).payload_slice()));
                Some(buf.freeze())
            }
        }
    }

    fn written(&mut self, chunk: Bytes, events: u64) -> Bytes {
        self.settings.metrics.wrote(events, chunk.len() as u64);
        self.last_activity = Instant::now();
        chunk
    }

    /// Whether `cx` is the task the mailbox and the timer were last registered with.
    fn same_task(&self, cx: &Context<'_>) -> bool {
        self.parked_with.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
    }

    /// Notes that registrations are about to be made with `cx`; when it is another task's, those made with
    /// the previous one no longer count.
    fn remember(&mut self, cx: &Context<'_>) {
        if !self.same_task(cx) {
            self.parked_with = Some(cx.waker().clone());
            self.drained = false;
            self.timer_armed = false;
        }
    }

    /// Sends a comment when the stream has been idle for the heartbeat interval. The timer is not reset
    /// on every write (that would cost a timer update per event); when it fires early it is re-armed
    /// from the last write.
    fn poll_heartbeat(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.timer_armed && self.same_task(cx) && Instant::now() < self.heartbeat.deadline() {
            // Registered with this task and not due: polling it again would change nothing.
            return Poll::Pending;
        }
        loop {
            self.timer_armed = self.heartbeat.as_mut().poll(cx).is_pending();
            if self.timer_armed {
                return Poll::Pending;
            }
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
    use crate::backend::{HistoryLimits, MemoryBackend, NewEvent};
    use crate::topic::Topic;

    struct Node {
        backend: Arc<MemoryBackend>,
        settings: Arc<StreamSettings>,
        metrics: Arc<Metrics>,
    }

    fn node(history: usize, queue: usize) -> Node {
        let metrics = Arc::new(Metrics::default());
        let backend = Arc::new(MemoryBackend::new(HistoryLimits { size: history, ttl: None }, queue, metrics.clone()));
        let settings = Arc::new(StreamSettings {
            backend: backend.clone(),
            metrics: metrics.clone(),
            heartbeat: Duration::from_secs(15),
        });
        Node { backend, settings, metrics }
    }

    fn names(topics: &[&str]) -> Vec<Topic> {
        topics.iter().map(|t| Topic::from(*t)).collect()
    }

    impl Node {
        /// A stream opened without a last event id, as `GET /events` makes it.
        async fn open(&self, topics: &[&str], tagged: bool) -> EventStream {
            let registration = self.backend.subscribe(&names(topics)).await.expect("subscribe");
            let permit = StreamPermit::acquire(&self.metrics, 100, None).expect("permit");
            let head = sse::preamble(1000);
            let mut stream =
                EventStream::new(self.settings.clone(), registration, permit, head, History::empty(), EventId::ZERO);
            if tagged {
                stream.tag_topics();
            }
            stream
        }

        async fn publish(&self, topics: &[&str], data: &str) -> EventId {
            let event = NewEvent { topics: names(topics), kind: None, data: data.into() };
            self.backend.publish(event).await.expect("publish")
        }
    }

    /// Everything the stream has to write now, and whether it ended.
    fn ready_chunks(stream: &mut EventStream) -> (Vec<Bytes>, bool) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut chunks = Vec::new();
        loop {
            match stream.poll_next_chunk(&mut cx) {
                Poll::Ready(Some(chunk)) => chunks.push(chunk),
                Poll::Ready(None) => return (chunks, true),
                Poll::Pending => return (chunks, false),
            }
        }
    }

    fn text(chunks: &[Bytes]) -> String {
        chunks.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect()
    }

    /// Encode once, also for tagged streams: streams that pick the same topics of an event write the
    /// same bytes; others get their own encoding; untagged streams are untouched.
    #[tokio::test]
    async fn tagged_streams_with_the_same_topics_share_one_encoding() {
        let node = node(10, 16);
        let mut ab = node.open(&["a", "b"], true).await;
        let mut bax = node.open(&["b", "a", "x"], true).await;
        let mut c = node.open(&["c"], true).await;
        let mut plain = node.open(&["a"], false).await;
        for stream in [&mut ab, &mut bax, &mut c, &mut plain] {
            let (head, ended) = ready_chunks(stream);
            assert_eq!((text(&head).as_str(), ended), ("retry: 1000\n: herald\n\n", false));
        }
        let id = node.publish(&["a", "c"], "hi").await;
        let one = |stream: &mut EventStream| {
            let (mut chunks, _) = ready_chunks(stream);
            assert_eq!(chunks.len(), 1);
            chunks.remove(0)
        };
        let (ab, bax, c, plain) = (one(&mut ab), one(&mut bax), one(&mut c), one(&mut plain));
        assert_eq!(&ab[..], format!("id: {id}\ntopics: a\ndata: hi\n\n").as_bytes());
        assert_eq!(ab.as_ptr(), bax.as_ptr(), "the same subset {{a}}: one shared encoding");
        assert_eq!(&c[..], format!("id: {id}\ntopics: c\ndata: hi\n\n").as_bytes());
        assert_ne!(c.as_ptr(), ab.as_ptr());
        assert_eq!(&plain[..], format!("id: {id}\ndata: hi\n\n").as_bytes());
    }

    /// Several waiting events still go out in one write on a tagged stream.
    #[tokio::test]
    async fn tagged_streams_batch() {
        let node = node(10, 16);
        let mut stream = node.open(&["a", "b"], true).await;
        stream.use_chunked_framing();
        ready_chunks(&mut stream);
        let first = node.publish(&["b", "a"], "1").await;
        let second = node.publish(&["a", "z"], "2").await;
        let (chunks, _) = ready_chunks(&mut stream);
        assert_eq!(chunks.len(), 1, "one write for both");
        let payload = format!("id: {first}\ntopics: b,a\ndata: 1\n\nid: {second}\ntopics: a\ndata: 2\n\n");
        assert_eq!(text(&chunks), format!("{:x}\r\n{payload}\r\n", payload.len()));
    }

    /// Issue 7, defect 2: a stream opened without a last event id whose mailbox overflows before it has
    /// written an event caught up from 0-0, was judged `history_lost` and closed; its client had no id to
    /// resume with, so the burst was lost without a `herald.reset`. It now catches up from where it went
    /// live.
    #[tokio::test]
    async fn lag_before_the_first_event_catches_up_from_where_the_stream_went_live() {
        for published_before in [false, true] {
            let node = node(100, 4);
            if published_before {
                node.publish(&["other"], "x").await;
            }
            let mut stream = node.open(&["a"], false).await;
            ready_chunks(&mut stream);
            let mut burst = Vec::new();
            for i in 0..10 {
                burst.push(node.publish(&["a"], &i.to_string()).await);
            }
            let (chunks, ended) = ready_chunks(&mut stream);
            assert!(!ended, "closed instead of caught up (published before: {published_before})");
            let expected: String = burst.iter().enumerate().map(|(i, id)| format!("id: {id}\ndata: {i}\n\n")).collect();
            assert_eq!(text(&chunks), expected);
            assert_eq!(node.metrics.lagging_caught_up.load(Relaxed), 1);
            assert_eq!(node.metrics.resets.load(Relaxed), 0);
            // And on live.
            let after = node.publish(&["a"], "live").await;
            assert_eq!(text(&ready_chunks(&mut stream).0), format!("id: {after}\ndata: live\n\n"));
        }
    }

    /// When history cannot cover a stream that has sent no id, it is told in the stream and goes on; one
    /// that has sent an id is closed (its client resumes with that id and is told then).
    #[tokio::test]
    async fn lag_past_history_resets_in_the_stream_until_an_id_was_sent() {
        let node = node(3, 4);
        let mut fresh = node.open(&["a"], true).await;
        let mut sent = node.open(&["a"], false).await;
        ready_chunks(&mut fresh);
        ready_chunks(&mut sent);
        let first = node.publish(&["a"], "first").await;
        assert!(text(&ready_chunks(&mut sent).0).contains(&first.to_string()));
        let mut burst = Vec::new();
        for i in 0..10 {
            burst.push(node.publish(&["a"], if i < 5 { "old" } else { "new" }).await);
        }
        let (chunks, ended) = ready_chunks(&mut fresh);
        assert!(!ended);
        let kept: String = burst[7..].iter().map(|id| format!("id: {id}\ntopics: a\ndata: new\n\n")).collect();
        let reset = "event: herald.reset\ndata: {\"topics\":[\"a\"],\"reason\":\"trimmed\"}\n\n";
        assert_eq!(text(&chunks), format!("{reset}{kept}"), "a reset (no topics line), what is left, then live");
        let (chunks, ended) = ready_chunks(&mut sent);
        assert!(chunks.is_empty() && ended, "a stream with an id is closed");
        assert_eq!(node.metrics.lagging_dropped.load(Relaxed), 1);
        assert_eq!(node.metrics.resets.load(Relaxed), 1);
        let after = node.publish(&["a"], "live").await;
        assert!(text(&ready_chunks(&mut fresh).0).contains(&after.to_string()));
    }

    /// Wakes counted, for a task that is never really polled.
    struct CountWakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Relaxed);
        }
    }

    /// A drain that empties the mailbox registers the task, so the stream may return `Pending` without asking
    /// the mailbox again (issue 8). An event pushed after that drain must wake the task, and the very next
    /// poll must find it: the wake may have been spent elsewhere (the front waiting for the socket to take
    /// the previous write), so nothing else will come to poll again. Before the mailbox said it had news,
    /// that next poll returned `Pending` and the event waited for the heartbeat timer.
    #[tokio::test]
    async fn an_event_pushed_after_a_drain_is_found_by_the_next_poll() {
        let node = node(10, 16);
        let mut stream = node.open(&["a"], false).await;
        let wakes = Arc::new(CountWakes(std::sync::atomic::AtomicUsize::new(0)));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(stream.poll_next_chunk(&mut cx), Poll::Ready(Some(_))), "the head");
        assert!(stream.poll_next_chunk(&mut cx).is_pending());
        let first = node.publish(&["a"], "1").await;
        assert_eq!(wakes.0.load(Relaxed), 1);
        let Poll::Ready(Some(chunk)) = stream.poll_next_chunk(&mut cx) else { panic!("the first event") };
        assert!(text(&[chunk]).contains(&first.to_string()));
        // Pushed after the drain that emptied the mailbox, while the first write is (say) waiting.
        let second = node.publish(&["a"], "2").await;
        assert_eq!(wakes.0.load(Relaxed), 2, "the push did not wake the stream");
        let Poll::Ready(Some(chunk)) = stream.poll_next_chunk(&mut cx) else { panic!("the second event waits") };
        assert!(text(&[chunk]).contains(&second.to_string()));
        // Nothing new: the shortcut, then the mailbox again.
        assert!(stream.poll_next_chunk(&mut cx).is_pending());
        assert!(stream.poll_next_chunk(&mut cx).is_pending());
        let third = node.publish(&["a"], "3").await;
        assert_eq!(wakes.0.load(Relaxed), 3);
        let Poll::Ready(Some(chunk)) = stream.poll_next_chunk(&mut cx) else { panic!("the third event") };
        assert!(text(&[chunk]).contains(&third.to_string()));
    }

    /// Connections registered together get heartbeat offsets spread over 0–10% of the interval.
    /// Heartbeat timing, on paused time (deterministic, no wall clock): the first comment comes after the
    /// interval of silence plus this stream's fixed spread (at most 10 %), never earlier; an event restarts
    /// the silence; an event waiting in the mailbox goes out at once.
    #[tokio::test(start_paused = true)]
    async fn heartbeats_come_after_the_interval_of_silence() {
        let node = node(10, 16);
        let mut stream = node.open(&["t"], false).await;
        let (opening, ended) = ready_chunks(&mut stream);
        assert_eq!((opening.len(), ended), (1, false), "the preamble, then nothing");
        async fn next(stream: &mut EventStream) -> Bytes {
            std::future::poll_fn(|cx| stream.poll_next_chunk(cx)).await.expect("the stream goes on")
        }
        let interval = Duration::from_secs(15);
        let silent_since = Instant::now();
        assert_eq!(&next(&mut stream).await[..], sse::HEARTBEAT);
        let waited = silent_since.elapsed();
        assert!(waited >= interval && waited <= interval.mul_f64(1.1), "first heartbeat after {waited:?}");

        tokio::time::advance(Duration::from_secs(10)).await;
        node.publish(&["t"], "x").await;
        let published = Instant::now();
        assert!(next(&mut stream).await.starts_with(b"id: "), "the event first");
        assert_eq!(published.elapsed(), Duration::ZERO, "an event waiting in the mailbox is written at once");
        assert_eq!(&next(&mut stream).await[..], sse::HEARTBEAT);
        let waited = published.elapsed();
        assert!(waited >= interval && waited <= interval.mul_f64(1.1), "heartbeat {waited:?} after the event");
        assert_eq!(node.metrics.heartbeats.load(Relaxed), 2);
    }

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
