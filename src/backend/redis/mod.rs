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
//! | `herald:epoch` | string | the first id issued since Redis last had no `herald:last-id` (since history was lost) |
//! | `herald:stream:{topic}` | stream | one entry per event, entry id = event id; fields `topics` (the event's topics, comma-separated; topics never contain commas), `type` (omitted when none), `data`, `nonce` (the publish's nonce, when the publisher gave one) |
//! | `herald:cancel:{nonce}` | string, expires after 10 min | a publish settled as not published (see below) |
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
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, TlsCertificates};
use tokio::sync::{mpsc, oneshot};

use self::feed::{Ensure, Feed, FeedState};
use self::history::{HistoryReader, Pager, ReadError};
use self::scripts::{stream_key, EPOCH_KEY, LAST_ID_KEY};
use super::{judge_last_id, Backend, History, HistoryLimits, NewEvent, PageStream, Replay, Reset, Resume};
use crate::error::Error;
use crate::hub::{Hub, Registration};
use crate::id::{EventId, LastEventId};
use crate::metrics::Metrics;
use crate::topic::Topic;

mod feed;
mod history;
pub(crate) mod scripts;

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
/// How long `/readyz` waits for Redis to answer `PING`.
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a new subscription waits for the pub/sub connection (which may be reconnecting).
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// History, ids and live events in Redis, shared by every node using the same Redis.
#[derive(Debug)]
pub struct RedisBackend {
    hub: Arc<Hub>,
    limits: HistoryLimits,
    commands: ConnectionManager,
    publish: Script,
    settle: Script,
    /// History reads for resuming clients, over a connection of their own (see `history.rs`).
    history: Arc<HistoryReader>,
    /// Makes each publish's nonce unique across nodes and restarts: this node's prefix, then a counter.
    nonce_prefix: String,
    nonces: AtomicU64,
    feed: mpsc::UnboundedSender<Ensure>,
    state: Arc<FeedState>,
    metrics: Arc<Metrics>,
}

impl RedisBackend {
    /// Makes a backend for the Redis at `url` and starts its pub/sub task. Does not wait for Redis: the
    /// task connects (and keeps retrying with back-off, logging why) in the background, and `ready()`
    /// says when it is up. Must be called within a Tokio runtime. `ca_cert`, for a `rediss://` URL, is a PEM
    /// certificate authority to trust instead of the system's roots.
    ///
    /// # Errors
    /// The URL is not a Redis URL.
    pub fn connect(
        url: &str,
        ca_cert: Option<Vec<u8>>,
        history: HistoryLimits,
        queue_size: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let client = match ca_cert {
            // rediss:// trusting this authority rather than the system's roots.
            Some(pem) => redis::Client::build_with_tls(url, TlsCertificates { client_tls: None, root_cert: Some(pem) }),
            None => redis::Client::open(url),
        }
        .map_err(|e| format!("bad --redis-url: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let commands = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .map_err(|e| format!("redis: {e}"))?;
        // History reads get their own connection: a resume's replies never queue in front of publishes.
        let reads =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(|e| format!("redis: {e}"))?;
        let (idle_tx, idle_rx) = mpsc::unbounded_channel();
        let hub = Arc::new(Hub::with_idle_notifier(queue_size, metrics.clone(), idle_tx));
        let (feed_tx, feed_rx) = mpsc::unbounded_channel();
        let state = Arc::new(FeedState::default());
        let limits = HistoryLimits { size: history.size.max(1), ..history };
        let history = Arc::new(HistoryReader::new(reads, limits.ttl_ms(), metrics.clone()));
        let feed = Feed::new(
            client,
            commands.clone(),
            history.clone(),
            hub.clone(),
            metrics.clone(),
            state.clone(),
            feed_rx,
            idle_rx,
        );
        tokio::spawn(feed.run());
        Ok(RedisBackend {
            hub,
            limits,
            commands,
            publish: Script::new(scripts::PUBLISH),
            settle: Script::new(scripts::SETTLE),
            nonce_prefix: nonce_prefix(),
            nonces: AtomicU64::new(0),
            history,
            feed: feed_tx,
            state,
            metrics,
        })
    }

    /// Decides a publish whose reply was lost (see "A publish whose reply is lost" above): `Ok(id)` when it
    /// was published, [`Error::BackendUnavailable`] when it now never will be, or when Redis could not be
    /// asked within [`SETTLE_TIME`] ([`Error::PublishOutcomeUnknown`]).
    async fn settle(&self, nonce: &str, topic: &str, floor: EventId) -> Result<String, Error> {
        let deadline = tokio::time::Instant::now() + SETTLE_TIME;
        loop {
            let mut invocation = self.settle.prepare_invoke();
            invocation.key(stream_key(topic)).arg(nonce).arg(floor.to_string());
            let mut con = self.commands.clone();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, invocation.invoke_async::<Option<String>>(&mut con)).await {
                Ok(Ok(Some(id))) => {
                    Metrics::inc(&self.metrics.publishes_settled);
                    tracing::info!(%id, "a publish whose reply was lost turned out published");
                    return Ok(id);
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
        let mut con = self.commands.clone();
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
        let last_issued = Some(last_issued).filter(|id| *id > EventId::ZERO);
        let (after, mut reset) = judge_last_id(last, history_start, last_issued, topics);
        let trimmed = snapshot.trimmed_after(topics, after);
        if reset.is_none() && !trimmed.is_empty() {
            reset = Some(Reset { topics: trimmed, reason: "trimmed" });
        }
        Ok((reset, self.history.pager(topics, after, &snapshot, true)))
    }
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
        let mut con = self.commands.clone();
        let id: String = match tokio::time::timeout(COMMAND_TIMEOUT, invocation.invoke_async(&mut con)).await {
            Ok(Ok(id)) => id,
            // Never sent, or answered with an error: the script did not run.
            Ok(Err(e))
                if e.is_connection_refusal() || !(e.is_io_error() || e.is_timeout() || e.is_connection_dropped()) =>
            {
                Metrics::inc(&self.metrics.backend_errors);
                return Err(Error::BackendUnavailable(format!("redis: {e}")));
            }
            // Sent, but no reply: find out.
            Ok(Err(_)) | Err(_) => {
                Metrics::inc(&self.metrics.backend_errors);
                let first = event.topics.first().map(|t| &**t).unwrap_or_default();
                self.settle(&nonce, first, floor).await?
            }
        };
        let id: EventId =
            id.parse().map_err(|_| Error::BackendUnavailable(format!("publish script returned {id:?}")))?;
        self.state.saw(id);
        Ok(id)
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

    async fn ready(&self) -> bool {
        if !self.state.up.load(Ordering::Acquire) {
            return false;
        }
        let mut con = self.commands.clone();
        let ping = redis::cmd("PING");
        matches!(tokio::time::timeout(PING_TIMEOUT, ping.query_async::<String>(&mut con)).await, Ok(Ok(_)))
    }
}
