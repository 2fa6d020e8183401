//! Backends: where ids are made, history is kept and live events come from.
//!
//! The HTTP layer sees only the [`Backend`] trait. `memory` keeps everything in this process; `redis`
//! shares topics, ids and history between nodes. Both feed the node's [`Hub`].

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::Stream;

use crate::error::Error;
use crate::hub::{Hub, Registration};
use crate::id::{EventId, LastEventId};
use crate::sse::Event;
use crate::topic::Topic;

pub mod idempotency;
pub mod memory;
pub mod redis;

pub use self::idempotency::IdempotencyKey;
pub use self::memory::MemoryBackend;
pub use self::redis::RedisBackend;

/// How much history each topic keeps: the newest `size` events, and with a `ttl` only those younger
/// than it. Ids carry their creation time in milliseconds, so an event's age is read off its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Events retained per topic (at least 1).
    pub size: usize,
    /// Maximum age of a retained event.
    pub ttl: Option<std::time::Duration>,
}

impl HistoryLimits {
    /// The smallest id not yet expired when the clock reads `now_ms`, if history is bounded by age.
    pub fn cutoff(&self, now_ms: u64) -> Option<EventId> {
        self.ttl.map(|_| EventId::new(now_ms.saturating_sub(self.ttl_ms()), 0))
    }

    /// The age bound in milliseconds, 0 for none (the form the Redis scripts take).
    pub fn ttl_ms(&self) -> u64 {
        self.ttl.map_or(0, |ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
    }
}

/// An event as a publisher gave it, validated, before it has an id.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Distinct, valid topics (at least one).
    pub topics: Vec<Topic>,
    /// Validated type, if any.
    pub kind: Option<String>,
    /// The data text.
    pub data: String,
}

/// How `POST /publish` asks for an event to be published, beyond the event itself.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// `Idempotency-Key`: a repeat within ten minutes publishes nothing and gets the first id.
    pub idempotency_key: Option<IdempotencyKey>,
}

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The event's id (for a duplicate, the first publish's).
    pub id: EventId,
    /// Nothing was published: the idempotency key was used already, by the publish of `id`.
    pub duplicate: bool,
    /// With `--redis-wait-replicas`: whether enough replicas acknowledged the event in time (`None` when
    /// the backend does not wait).
    pub replicated: Option<bool>,
}

impl Published {
    /// A new event, nothing waited for.
    pub fn new(id: EventId) -> Self {
        Published { id, duplicate: false, replicated: None }
    }
}

/// What a backend found in its history for a resuming client.
#[derive(Debug, Default)]
pub struct Replay {
    /// Retained events newer than the last id, in id order, each once.
    pub events: Vec<Arc<Event>>,
    /// Set when the history cannot cover the gap for some topics.
    pub reset: Option<Reset>,
}

/// Pages of history, read as a stream is written: each page in id order, after the previous one. An error
/// ends the replay (the stream then ends, and the client resumes with its last id).
pub type PageStream = Pin<Box<dyn Stream<Item = Result<Vec<Arc<Event>>, Error>> + Send>>;

/// The events a resuming stream replays: those already read, then, from a backend that reads history in
/// pages, the pages still to come.
pub struct History {
    /// Events already read, in id order, each once.
    pub first: Vec<Arc<Event>>,
    /// Further events, after `first`, read page by page as the client takes them.
    pub more: Option<PageStream>,
}

impl History {
    /// Nothing to replay.
    pub fn empty() -> Self {
        History { first: Vec::new(), more: None }
    }
}

impl From<Vec<Arc<Event>>> for History {
    fn from(first: Vec<Arc<Event>>) -> Self {
        History { first, more: None }
    }
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").field("first", &self.first.len()).field("more", &self.more.is_some()).finish()
    }
}

/// What a backend found for a client opening a stream with a last event id.
#[derive(Debug)]
pub struct Resume {
    /// Set when the history cannot cover the gap for some topics.
    pub reset: Option<Reset>,
    /// The retained events newer than the last id (after the reset, all retained events).
    pub history: History,
}

/// The topics whose history is incomplete, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reset {
    /// Topics whose history is incomplete.
    pub topics: Vec<Topic>,
    /// A short machine-readable reason (`trimmed`, `malformed_id`, `unknown_id`, `history_lost`).
    /// Events dropped for age (`--history-ttl`) count as `trimmed`.
    pub reason: &'static str,
}

/// Where events are stored and where live events come from.
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// A short name for logs (`memory`, `redis`).
    fn name(&self) -> &'static str;

    /// The hub this backend feeds.
    fn hub(&self) -> &Arc<Hub>;

    /// Assigns the event its id, stores it in every topic's history and hands it to live delivery, all or
    /// nothing.
    ///
    /// # Errors
    /// [`Error::BackendUnavailable`] when nothing could be published.
    async fn publish(&self, event: NewEvent) -> Result<EventId, Error>;

    /// Publishes as `POST /publish` asks: like [`Backend::publish`], honouring the options. By default
    /// (a backend that knows no idempotency keys) a publish with a key is refused rather than made twice.
    ///
    /// # Errors
    /// As [`Backend::publish`]; [`Error::BadRequest`] for a key the backend cannot honour.
    async fn publish_with(&self, event: NewEvent, options: PublishOptions) -> Result<Published, Error> {
        if options.idempotency_key.is_some() {
            return Err(Error::BadRequest(format!("the {} backend does not take Idempotency-Key", self.name())));
        }
        self.publish(event).await.map(Published::new)
    }

    /// Subscribes a connection to `topics`; once this returns, every event published later reaches the
    /// registration's mailbox.
    ///
    /// # Errors
    /// [`Error::ShuttingDown`], or [`Error::BackendUnavailable`] when the live feed cannot be subscribed.
    async fn subscribe(&self, topics: &[Topic]) -> Result<Registration, Error>;

    /// Reads the retained history of `topics` after `last`, and says which topics cannot be covered.
    ///
    /// # Errors
    /// [`Error::BackendUnavailable`] when the history cannot be read.
    async fn replay(&self, topics: &[Topic], last: LastEventId) -> Result<Replay, Error>;

    /// Like [`Backend::replay`], for a stream that is opening: the reset is decided now, the events may
    /// come in pages read as the stream is written (so that a resume over a long history holds only a page
    /// or so in memory). By default everything [`Backend::replay`] finds, at once.
    ///
    /// # Errors
    /// [`Error::BackendUnavailable`] when the history cannot be read.
    async fn resume(&self, topics: &[Topic], last: LastEventId) -> Result<Resume, Error> {
        let Replay { events, reset } = self.replay(topics, last).await?;
        Ok(Resume { reset, history: History::from(events) })
    }

    /// Whether the backend can serve now.
    async fn ready(&self) -> bool;
}

/// The history position to read after, and the reset to report, for a last event id judged against
/// `history_start` (the position before the first id this history could hold: the memory backend's epoch)
/// and `last_issued` (the newest id made so far).
///
/// An id equal to `history_start` means "before the first event" and is valid even when nothing was issued
/// yet: it is the position a stream that went live before the first event learns (see
/// [`Registration::live_from`]), and resuming from it must not be a reset.
pub(crate) fn judge_last_id(
    last: LastEventId,
    history_start: EventId,
    last_issued: Option<EventId>,
    topics: &[Topic],
) -> (EventId, Option<Reset>) {
    let everything = |reason| (EventId::ZERO, Some(Reset { topics: topics.to_vec(), reason }));
    match last {
        LastEventId::Malformed => everything("malformed_id"),
        LastEventId::Id(id) if id == history_start => (id, None),
        LastEventId::Id(id) if last_issued.is_none_or(|newest| id > newest) => everything("unknown_id"),
        LastEventId::Id(id) if id < history_start => everything("history_lost"),
        LastEventId::Id(id) => (id, None),
    }
}
