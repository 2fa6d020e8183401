//! The Redis backend: every node pointed at the same Redis is one deployment.
//!
//! Ids, history and live delivery all live in Redis, so a client may resume on any node, and any program
//! that speaks Redis can publish or consume the same events.
//!
//! ## Key layout
//!
//! | Key or channel | Type | Content |
//! |---|---|---|
//! | `herald:last-id` | string | the last id issued, `<ms>-<seq>` |
//! | `herald:epoch` | string | where complete history starts: the first id issued since Redis last had no `herald:last-id`, or since a node found it lacking ids the node had seen (a failover lost them) |
//! | `herald:stream:{topic}` | stream | one entry per event, entry id = event id; fields `topics` (the event's topics, comma-separated; topics never contain commas), `type` (omitted when none), `data`, `nonce` (the publish's nonce, when the publisher gave one) |
//! | `herald:cancel:{nonce}` | string, expires after 10 min | a publish settled as not published (see below) |
//! | `herald:idempotency:{key}` | string, expires after 10 min | the id of the publish that first used this `Idempotency-Key` |
//! | `herald:channel:{topic}` | pub/sub channel | one message per event: JSON `{"id":"…","topics":["…"],"type":"…" or null,"data":"…"}` |
//!
//! Each stream keeps the newest `--history-size` entries; older ones are deleted with `XDEL`, so that
//! `XINFO STREAM`'s `max-deleted-entry-id` says which ids were trimmed.
//!
//! ## Publishing
//!
//! One Lua script call per event (`EVALSHA`, loaded on first use), all or nothing: it reads `TIME`, makes
//! the id that follows `herald:last-id` (a new millisecond if the clock has moved past it, else the next
//! sequence number; never lower than a floor the node passes, so ids keep rising after Redis lost its
//! data), sets `herald:last-id` (and `herald:epoch` when `herald:last-id` was missing), `XADD`s the event
//! to each topic's stream with that explicit id, trims, and `PUBLISH`es it on each topic's channel. The
//! script text is `PUBLISH` in `src/backend/redis/scripts.rs`; any program may run it (`EVAL script 2+N herald:last-id
//! herald:epoch herald:stream:{t1}… history-size ttl-ms type data 0-0 t1…`) to publish without Herald. A Redis
//! Streams consumer group on `herald:stream:{topic}` sees every event of that topic.
//!
//! With an `Idempotency-Key` the script first looks the key up: a key used in the last ten minutes
//! publishes nothing and returns the first id (atomically, so it holds across nodes and for concurrent
//! repeats). With `--redis-wait-replicas N` the script runs on a connection of the node's small pool of
//! dedicated connections, followed by `WAIT N timeout` there (`WAIT` cannot run in a script, counts the
//! writes of the connection it runs on, and blocks that connection meanwhile); fewer than `N` replicas in
//! time is answered `"replicated": false` and counted.
//!
//! ## High availability
//!
//! The node finds the primary through `primary.rs` (a fixed URL, or Sentinels with `redis+sentinel://`),
//! and its feed task follows it: a server that is not a primary (`ROLE`) is never written to and makes the
//! node unready, and a failover moves every connection to the promoted replica. What asynchronous
//! replication lost is never lost silently: each node knows the newest id it has seen, records in Redis a
//! `herald:last-id` older than that as lost history (`scripts::REPAIR`, and the publish script itself), so
//! that clients resuming from before are told `history_lost` and ids keep rising past everything issued.
//!
//! ## Live delivery and resuming
//!
//! Each node has one pub/sub connection (`feed.rs`): a topic's channel is subscribed when the hub gets its
//! first local subscriber for it (the client's response head waits for Redis's confirmation) and
//! unsubscribed when the last one leaves. Publishes go over one multiplexed connection that reconnects by
//! itself. A resuming client's history is read from the streams after its last id over a second one: a
//! snapshot of the facts first, then pages merged by id as the stream is written (`history.rs`).
//! Every command has a [`COMMAND_TIMEOUT`]: when Redis is away, requests answer 503 promptly.
//!
//! ## A publish whose reply is lost
//!
//! When the publish script's reply does not come (a timeout, a dropped connection), the script may or may
//! not have run, and a 503 that the publisher retries could publish the event twice. So every publish
//! carries a nonce, and the node then runs the `SETTLE` script: it finds the nonce in the first topic's
//! stream (published: the publisher gets `200` and the id) or records the nonce as cancelled, so that the
//! publish script refuses it should it still arrive (not published: `503`, safe to retry). Only when Redis
//! cannot be reached to settle within [`SETTLE_TIME`] is the outcome unknown; the 503 then says so.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redis::{Script, ScriptInvocation, Value};
use tokio::sync::{mpsc, oneshot};

use self::feed::{Ensure, Feed, FeedState};
use self::history::{HistoryReader, Pager, ReadError};
use self::primary::{Link, Primary};
use self::scripts::{stream_key, EPOCH_KEY, LAST_ID_KEY};
use super::{
    judge_last_id, Backend, History, HistoryLimits, NewEvent, PageStream, PublishOptions, Published, Replay, Reset,
    Resume,
};
use crate::error::Error;
use crate::hub::{Hub, Registration};
use crate::id::{EventId, LastEventId};
use crate::metrics::Metrics;
use crate::topic::Topic;

mod feed;
mod history;
mod primary;
pub(crate) mod scripts;

pub use self::primary::{validate_url, SentinelUrl};

/// A prefix that no other node (nor this one before a restart) uses: process id and start time.
fn nonce_prefix() -> String {
    let started = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    format!("{:x}.{started:x}", std::process::id())
}

/// The longest any one Redis command may take before the request it serves answers 503.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a node keeps trying to settle a publish whose reply was lost.
pub const SETTLE_TIME: Duration = Duration::from_secs(2);
/// Pause between settle attempts.
const SETTLE_RETRY: Duration = Duration::from_millis(100);
/// How long `/readyz` waits for Redis to answer `ROLE`.
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a new subscription waits for the pub/sub connection (which may be reconnecting).
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How far past Redis's clock a resuming client's id may be and still count as one that may have been
/// issued (by a primary lost in a failover, whose clock ran a little ahead): such an id, newer than anything
/// Redis holds, is `history_lost`; one further in the future is `unknown_id`.
const CLOCK_SLACK_MS: u64 = 60_000;

/// How to reach Redis, and how publishes wait for replicas: the `--redis-*` flags.
#[derive(Clone, Default)]
pub struct RedisSettings {
    /// `--redis-url`: `redis://`, `rediss://` or `redis+sentinel://`.
    pub url: String,
    /// `--redis-ca-cert`'s PEM, for a `rediss://` URL.
    pub ca_cert: Option<Vec<u8>>,
    /// `--redis-sentinel-password`: for Sentinels that require one.
    pub sentinel_password: Option<String>,
    /// `--redis-wait-replicas` (0: publishes do not wait).
    pub wait_replicas: u32,
    /// `--redis-wait-timeout`: how long a publish waits for them.
    pub wait_timeout: Duration,
}

impl std::fmt::Debug for RedisSettings {
    /// Without the URL and the password, which may hold secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("wait_replicas", &self.wait_replicas)
            .field("wait_timeout", &self.wait_timeout)
            .finish_non_exhaustive()
    }
}

/// History, ids and live events in Redis, shared by every node using the same Redis.
#[derive(Debug)]
pub struct RedisBackend {
    hub: Arc<Hub>,
    limits: HistoryLimits,
    /// The primary and the connections to it (which the feed task moves to a new primary on failover).
    primary: Arc<Primary>,
    publish: Script,
    settle: Script,
    /// History reads for resuming clients, over a connection of their own (see `history.rs`).
    history: Arc<HistoryReader>,
    /// Makes each publish's nonce unique across nodes and restarts: this node's prefix, then a counter.
    nonce_prefix: String,
    nonces: AtomicU64,
    /// Replicas a publish waits for, and for how long (`None`: it does not wait).
    wait: Option<(u32, Duration)>,
    feed: mpsc::UnboundedSender<Ensure>,
    state: Arc<FeedState>,
    metrics: Arc<Metrics>,
}

/// How a publish script call ended.
enum Ran {
    /// Its reply: the id, or `[first id, "duplicate"]`.
    Replied(Value),
    /// It did not run: refused, or never sent.
    Refused(Error),
    /// Sent, but no reply: it may or may not have run.
    Lost,
}

impl RedisBackend {
    /// Makes a backend for the Redis of `settings` and starts its pub/sub task. Does not wait for Redis:
    /// the task connects (and keeps retrying with back-off, logging why) in the background, and `ready()`
    /// says when it is up. Must be called within a Tokio runtime.
    ///
    /// # Errors
    /// The URL is not a Redis URL.
    pub fn connect(
        settings: &RedisSettings,
        history: HistoryLimits,
        queue_size: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let primary = Arc::new(Primary::new(settings, metrics.clone())?);
        let (idle_tx, idle_rx) = mpsc::unbounded_channel();
        let hub = Arc::new(Hub::with_idle_notifier(queue_size, metrics.clone(), idle_tx));
        let (feed_tx, feed_rx) = mpsc::unbounded_channel();
        let state = Arc::new(FeedState::default());
        let limits = HistoryLimits { size: history.size.max(1), ..history };
        let history = Arc::new(HistoryReader::new(primary.clone(), limits.ttl_ms(), metrics.clone()));
        let feed =
            Feed::new(primary.clone(), history.clone(), hub.clone(), metrics.clone(), state.clone(), feed_rx, idle_rx);
        tokio::spawn(feed.run());
        let wait = (settings.wait_replicas > 0).then_some((settings.wait_replicas, settings.wait_timeout));
        Ok(RedisBackend {
            hub,
            limits,
            primary,
            publish: Script::new(scripts::PUBLISH),
            settle: Script::new(scripts::SETTLE),
            nonce_prefix: nonce_prefix(),
            nonces: AtomicU64::new(0),
            history,
            wait,
            feed: feed_tx,
            state,
            metrics,
        })
    }

    /// The current link to the primary, or 503 while none is known (a failover under way).
    fn link(&self) -> Result<Arc<Link>, Error> {
        self.primary.link().ok_or_else(|| Error::BackendUnavailable("no redis primary known (failing over?)".into()))
    }

    /// Runs the publish script over `con` within [`COMMAND_TIMEOUT`]. A reply that says the server cannot
    /// take writes (`READONLY`: a replica), or a lost connection, makes the feed check the primary at once.
    async fn run_script(
        &self,
        invocation: &ScriptInvocation<'_>,
        con: &mut (impl redis::aio::ConnectionLike + Send),
    ) -> Ran {
        match tokio::time::timeout(COMMAND_TIMEOUT, invocation.invoke_async::<Value>(con)).await {
            Ok(Ok(reply)) => Ran::Replied(reply),
            // Never sent, or answered with an error: the script did not run.
            Ok(Err(e))
                if e.is_connection_refusal() || !(e.is_io_error() || e.is_timeout() || e.is_connection_dropped()) =>
            {
                Metrics::inc(&self.metrics.backend_errors);
                if e.is_connection_refusal() || e.code() == Some("READONLY") || e.to_string().contains("READONLY") {
                    self.primary.suspect();
                }
                Ran::Refused(Error::BackendUnavailable(format!("redis: {e}")))
            }
            // Sent, but no reply: find out.
            Ok(Err(e)) => {
                Metrics::inc(&self.metrics.backend_errors);
                tracing::debug!(cause = %e, "a publish's reply was lost; settling it");
                self.primary.suspect();
                Ran::Lost
            }
            Err(_) => {
                Metrics::inc(&self.metrics.backend_errors);
                tracing::debug!("a publish's reply did not come in time; settling it");
                self.primary.suspect();
                Ran::Lost
            }
        }
    }

    /// Publishes `event` (see the module docs); with `key`, at most once per key in ten minutes; with
    /// `--redis-wait-replicas`, over a dedicated connection followed by `WAIT`.
    async fn publish_event(&self, event: &NewEvent, key: Option<&str>) -> Result<Published, Error> {
        let link = self.link()?;
        let floor = *self.state.newest.lock().unwrap_or_else(PoisonError::into_inner);
        let mut invocation = self.publish.prepare_invoke();
        invocation.key(LAST_ID_KEY).key(EPOCH_KEY);
        for topic in &event.topics {
            invocation.key(stream_key(topic));
        }
        invocation.arg(self.limits.size).arg(self.limits.ttl_ms());
        invocation.arg(event.kind.as_deref().unwrap_or("")).arg(&event.data);
        invocation.arg(floor.to_string());
        for topic in &event.topics {
            invocation.arg(&**topic);
        }
        let nonce = format!("{}.{:x}", self.nonce_prefix, self.nonces.fetch_add(1, Ordering::Relaxed));
        invocation.arg(&nonce);
        if let Some(key) = key {
            invocation.arg(key);
        }
        let first = event.topics.first().map(|t| &**t).unwrap_or_default();
        let Some((replicas, timeout)) = self.wait else {
            let mut con = link.commands.clone();
            let published = match self.run_script(&invocation, &mut con).await {
                Ran::Replied(reply) => outcome(&reply)?,
                Ran::Refused(e) => return Err(e),
                Ran::Lost => Published::new(self.settle(&link, &nonce, first, floor).await?),
            };
            self.state.saw(published.id);
            return Ok(published);
        };
        // A waited publish: its own connection, so that WAIT (which blocks the connection it runs on, and
        // counts the writes made on it) holds up no other publish.
        let mut lease = link.exclusive.take().await.map_err(|e| {
            Metrics::inc(&self.metrics.backend_errors);
            Error::BackendUnavailable(e)
        })?;
        let mut published = match self.run_script(&invocation, lease.con()).await {
            Ran::Replied(reply) => outcome(&reply)?,
            Ran::Refused(e) => return Err(e),
            Ran::Lost => {
                lease.discard();
                // Published or not, on a connection that is gone: whether replicas have it is unknown.
                let id = self.settle(&link, &nonce, first, floor).await?;
                self.state.saw(id);
                Metrics::inc(&self.metrics.publishes_unreplicated);
                return Ok(Published { id, duplicate: false, replicated: Some(false) });
            }
        };
        self.state.saw(published.id);
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(ms);
        let acknowledged =
            match tokio::time::timeout(timeout + COMMAND_TIMEOUT, wait.query_async::<i64>(lease.con())).await {
                Ok(Ok(count)) => Some(count),
                Ok(Err(e)) => {
                    Metrics::inc(&self.metrics.backend_errors);
                    tracing::warn!(cause = %e, "WAIT failed after a publish; answered as not replicated");
                    lease.discard();
                    None
                }
                Err(_) => {
                    Metrics::inc(&self.metrics.backend_errors);
                    lease.discard();
                    None
                }
            };
        let replicated = acknowledged.is_some_and(|count| count >= i64::from(replicas));
        if !replicated {
            Metrics::inc(&self.metrics.publishes_unreplicated);
            tracing::debug!(id = %published.id, ?acknowledged, replicas, "a publish was answered before enough replicas acknowledged it");
        }
        published.replicated = Some(replicated);
        Ok(published)
    }

    /// Decides a publish whose reply was lost (see "A publish whose reply is lost" above): `Ok(id)` when it
    /// was published, [`Error::BackendUnavailable`] when it now never will be, or when Redis could not be
    /// asked within [`SETTLE_TIME`] ([`Error::PublishOutcomeUnknown`]).
    ///
    /// It asks the server the publish was sent to (`link`'s), even if the node has moved to another primary
    /// meanwhile: only that server knows; another may lack an event that subscribers already received.
    async fn settle(&self, link: &Link, nonce: &str, topic: &str, floor: EventId) -> Result<EventId, Error> {
        let deadline = tokio::time::Instant::now() + SETTLE_TIME;
        loop {
            let mut invocation = self.settle.prepare_invoke();
            invocation.key(stream_key(topic)).arg(nonce).arg(floor.to_string());
            let mut con = link.commands.clone();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, invocation.invoke_async::<Option<String>>(&mut con)).await {
                Ok(Ok(Some(id))) => {
                    Metrics::inc(&self.metrics.publishes_settled);
                    tracing::info!(%id, "a publish whose reply was lost turned out published");
                    return id
                        .parse()
                        .map_err(|_| Error::BackendUnavailable(format!("the settle script returned {id:?}")));
                }
                Ok(Ok(None)) => {
                    Metrics::inc(&self.metrics.publishes_settled);
                    tracing::info!("a publish whose reply was lost is cancelled: nothing was published");
                    return Err(Error::BackendUnavailable(
                        "redis did not answer in time; nothing was published".into(),
                    ));
                }
                Ok(Err(e)) => tracing::debug!(cause = %e, "settling a publish failed; retrying"),
                Err(_) => {}
            }
            if tokio::time::Instant::now() + SETTLE_RETRY >= deadline {
                Metrics::inc(&self.metrics.publishes_unsettled);
                tracing::warn!("redis unreachable: whether a publish went through is unknown");
                return Err(Error::PublishOutcomeUnknown);
            }
            tokio::time::sleep(SETTLE_RETRY).await;
        }
    }

    /// Where a subscription confirmed just now went live (see [`Registration::live_from`]): the newest id
    /// this node has seen. Any event published later has a greater id (ids rise deployment-wide, and the
    /// channel is subscribed); one published earlier on another node that the channel missed has a greater
    /// id too, but it is in the history, so resuming from here still misses nothing. A node that has seen
    /// no id asks Redis for `herald:last-id` (a deployment where other nodes published); `None` when
    /// nothing was ever published, or Redis cannot say.
    async fn live_position(&self) -> Option<EventId> {
        let newest = *self.state.newest.lock().unwrap_or_else(PoisonError::into_inner);
        if newest > EventId::ZERO {
            return Some(newest);
        }
        let mut con = self.primary.link()?.commands.clone();
        let mut get = redis::cmd("GET");
        get.arg(LAST_ID_KEY);
        let last = match tokio::time::timeout(COMMAND_TIMEOUT, get.query_async::<redis::Value>(&mut con)).await {
            Ok(Ok(last)) => last,
            Ok(Err(_)) | Err(_) => {
                Metrics::inc(&self.metrics.backend_errors);
                return None;
            }
        };
        let last = scripts::id_of(&last)?;
        self.state.saw(last);
        Some(last)
    }

    /// Judges `last` against a snapshot of `topics` (see `history.rs`): the reset to report, and a pager
    /// over the events to replay.
    async fn start_resume(&self, topics: &[Topic], last: LastEventId) -> Result<(Option<Reset>, Pager), Error> {
        let snapshot =
            self.history.snapshot(topics, true).await.map_err(|e| Error::BackendUnavailable(e.to_string()))?;
        // Ids this node has seen were issued even if Redis has since lost them (and all history with
        // them): an id up to those is then `history_lost`, not `unknown_id`.
        let newest = *self.state.newest.lock().unwrap_or_else(PoisonError::into_inner);
        let (last_issued, history_start) = match snapshot.last_issued {
            Some(issued) => (issued.max(newest), snapshot.epoch.unwrap_or(EventId::ZERO)),
            None if newest > EventId::ZERO => (newest, EventId::new(newest.ms, newest.seq + 1)),
            None => (EventId::ZERO, EventId::ZERO),
        };
        // An id newer than anything issued that is not in the future was issued by a Redis that lost it (a
        // primary lost in a failover before its replica had it, or Redis restarted empty along with the
        // nodes that had seen it): that history is lost, whatever this Redis says.
        if let LastEventId::Id(id) = last {
            if id > last_issued && id.ms <= snapshot.now.ms.saturating_add(CLOCK_SLACK_MS) {
                let reset = Reset { topics: topics.to_vec(), reason: "history_lost" };
                return Ok((Some(reset), self.history.pager(topics, EventId::ZERO, &snapshot, true)));
            }
        }
        let last_issued = Some(last_issued).filter(|id| *id > EventId::ZERO);
        let (after, mut reset) = judge_last_id(last, history_start, last_issued, topics);
        let trimmed = snapshot.trimmed_after(topics, after);
        if reset.is_none() && !trimmed.is_empty() {
            reset = Some(Reset { topics: trimmed, reason: "trimmed" });
        }
        Ok((reset, self.history.pager(topics, after, &snapshot, true)))
    }
}

/// What the publish script's reply says: the id, or `[first id, "duplicate"]`.
///
/// # Errors
/// A reply of another shape.
fn outcome(reply: &Value) -> Result<Published, Error> {
    let (id, duplicate) = match reply {
        Value::Array(parts) => (parts.first().and_then(scripts::id_of), true),
        other => (scripts::id_of(other), false),
    };
    let id = id.ok_or_else(|| Error::BackendUnavailable(format!("the publish script returned {reply:?}")))?;
    Ok(Published { id, duplicate, replicated: None })
}

/// Turns a pager into the page stream of a resuming connection. A replay overtaken by trimming, or by
/// history lost in Redis, ends the stream: the client resumes with its last id and gets `herald.reset`
/// (counted as a lagging connection dropped, which is what it is).
fn page_stream(pager: Pager, metrics: Arc<Metrics>) -> PageStream {
    Box::pin(futures_util::stream::unfold((pager, metrics), |(mut pager, metrics)| async move {
        match pager.next_page().await {
            Ok(Some(page)) => Some((Ok(page), (pager, metrics))),
            Ok(None) => None,
            Err(e) => {
                if matches!(e, ReadError::Overtaken | ReadError::HistoryLost) {
                    Metrics::inc(&metrics.lagging_dropped);
                }
                tracing::info!(cause = %e, "replay stopped; the client resumes with its last id");
                Some((Err(Error::BackendUnavailable(e.to_string())), (pager, metrics)))
            }
        }
    }))
}

#[async_trait]
impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    async fn publish(&self, event: NewEvent) -> Result<EventId, Error> {
        self.publish_event(&event, None).await.map(|published| published.id)
    }

    async fn publish_with(&self, event: NewEvent, options: PublishOptions) -> Result<Published, Error> {
        self.publish_event(&event, options.idempotency_key.as_ref().map(|k| k.as_str())).await
    }

    async fn subscribe(&self, topics: &[Topic]) -> Result<Registration, Error> {
        let (registration, _) = self.hub.register(topics)?;
        let (done, confirmed) = oneshot::channel();
        self.feed
            .send(Ensure { topics: topics.to_vec(), done })
            .map_err(|_| Error::BackendUnavailable("redis pub/sub task stopped".into()))?;
        let mut registration = match tokio::time::timeout(SUBSCRIBE_TIMEOUT, confirmed).await {
            Ok(Ok(Ok(()))) => registration,
            Ok(Ok(Err(cause))) => return Err(Error::BackendUnavailable(cause)),
            Ok(Err(_)) => return Err(Error::BackendUnavailable("redis pub/sub task stopped".into())),
            Err(_) => return Err(Error::BackendUnavailable(format!("no subscription within {SUBSCRIBE_TIMEOUT:?}"))),
        };
        registration.set_live_from(self.live_position().await);
        Ok(registration)
    }

    async fn replay(&self, topics: &[Topic], last: LastEventId) -> Result<Replay, Error> {
        let (reset, mut pager) = self.start_resume(topics, last).await?;
        let mut events = Vec::new();
        while let Some(page) = pager.next_page().await.map_err(|e| Error::BackendUnavailable(e.to_string()))? {
            events.extend(page);
        }
        Ok(Replay { events, reset })
    }

    async fn resume(&self, topics: &[Topic], last: LastEventId) -> Result<Resume, Error> {
        let (reset, pager) = self.start_resume(topics, last).await?;
        let more = Some(page_stream(pager, self.metrics.clone()));
        Ok(Resume { reset, history: History { first: Vec::new(), more } })
    }

    /// Ready while the pub/sub connection is up and caught up and the server the node writes to answers
    /// `ROLE` as a primary: one that has become a replica (it answers `PING` but refuses every write)
    /// makes the node unready, and the feed looks for the primary again.
    async fn ready(&self) -> bool {
        if !self.state.up.load(Ordering::Acquire) {
            return false;
        }
        let Some(link) = self.primary.link() else { return false };
        match Primary::is_primary(&link, PING_TIMEOUT).await {
            Ok(true) => true,
            Ok(false) => {
                self.primary.suspect();
                false
            }
            Err(_) => false,
        }
    }
}
