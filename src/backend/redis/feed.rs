//! The node's one pub/sub connection: counted interest, dispatch in id order, catch-up after a drop, and
//! following the Redis primary.
//!
//! One task owns the connection and everything about it, so no lock is needed: subscription requests
//! from `Backend::subscribe` and "topic idle" notices from the hub arrive on channels, messages on the
//! connection's stream. Messages arrive in publish order, which is id order, so one number (the last id
//! dispatched) drops both the second copy of an event published to several subscribed topics and anything
//! a catch-up read already delivered.
//!
//! Before each session the task finds the primary (`primary.rs`: the fixed server, or the one the
//! Sentinels name) and checks with `ROLE` that it takes writes; a replica is refused like an unreachable
//! server (the node stays unready and keeps looking). During a session it checks again every
//! [`ROLE_CHECK_INTERVAL`], asks the Sentinels every [`SENTINEL_POLL_INTERVAL`], and does both at once when
//! a request met a sign of change (`READONLY`, a lost connection) or a Sentinel announced `+switch-master`;
//! a primary that moved or was demoted ends the session, and the next one starts on the new primary.
//!
//! When a session starts, the task subscribes every active topic again, reads each active topic's stream
//! after the last dispatched id (a snapshot, then pages merged by id; see `history.rs`), dispatches what
//! was missed, and only then serves new subscriptions. If Redis lost history meanwhile — no
//! `herald:last-id`, a `herald:last-id` older than ids this node has seen (a replica promoted before it
//! had them: the task records that in Redis first, see `scripts::REPAIR`), or a `herald:epoch` newer than
//! the last id dispatched (Redis restarted empty, perhaps more than once) — the node cannot know what it
//! missed: every local connection is marked lagging, before anything read is dispatched, and catches up
//! from history itself, which sends `herald.reset` when it cannot be covered. (Dispatching first would let
//! a connection take an event from after the loss, then resume from that event's id and never learn of
//! the gap before it.)

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt as _;
use redis::aio::{PubSubSink, PubSubStream};
use redis::{Script, Value};
use tokio::sync::{mpsc, oneshot};

use super::history::{HistoryReader, ReadError};
use super::primary::{Link, Primary, ROLE_CHECK_INTERVAL, SENTINEL_POLL_INTERVAL};
use super::scripts::{channel, id_of, Message, Unreadable, EPOCH_KEY, LAST_ID_KEY, REPAIR};
use super::COMMAND_TIMEOUT;
use crate::hub::Hub;
use crate::id::EventId;
use crate::metrics::Metrics;
use crate::sse::Event;
use crate::topic::Topic;

/// First wait before reconnecting; doubled after each failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between connection attempts: short enough that a node recovers soon after Redis does.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// `ROLE` checks in a row that may go unanswered before the session is given up (the pub/sub connection
/// of a server that vanished without closing it would otherwise wait forever).
const ROLE_FAILURES: u32 = 3;

/// A request to the feed task: make sure these topics' channels are subscribed, then answer.
pub(super) struct Ensure {
    pub(super) topics: Vec<Topic>,
    pub(super) done: oneshot::Sender<Result<(), String>>,
}

/// What the feed shares with the backend.
#[derive(Debug, Default)]
pub(super) struct FeedState {
    /// The pub/sub connection is up and caught up.
    pub(super) up: AtomicBool,
    /// The newest id this node has seen (issued or dispatched): a floor for the next id, so that ids
    /// keep rising even if Redis's clock is behind, or Redis lost the newest ones.
    pub(super) newest: Mutex<EventId>,
}

impl FeedState {
    /// Raises the newest id seen to `id`.
    pub(super) fn saw(&self, id: EventId) {
        let mut newest = self.newest.lock().unwrap_or_else(PoisonError::into_inner);
        if id > *newest {
            *newest = id;
        }
    }
}

/// The pub/sub task.
pub(super) struct Feed {
    primary: Arc<Primary>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    state: Arc<FeedState>,
    requests: mpsc::UnboundedReceiver<Ensure>,
    idle: mpsc::UnboundedReceiver<Topic>,
    /// The last id dispatched to the hub; `None` until the first connection.
    last: Option<EventId>,
    subscribed: HashSet<Topic>,
    /// Reads the streams when catching up (without waiting behind clients' resumes).
    history: Arc<HistoryReader>,
    repair: Script,
    /// `ROLE` checks unanswered in a row.
    role_failures: u32,
}

/// Why a session ended.
enum End {
    /// The backend is gone: stop.
    Stop,
    /// The connection failed, or the server is not the primary any more: reconnect.
    Lost(String),
}

impl Feed {
    /// Makes the task's state.
    pub(super) fn new(
        primary: Arc<Primary>,
        history: Arc<HistoryReader>,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        state: Arc<FeedState>,
        requests: mpsc::UnboundedReceiver<Ensure>,
        idle: mpsc::UnboundedReceiver<Topic>,
    ) -> Self {
        Feed {
            primary,
            hub,
            metrics,
            state,
            requests,
            idle,
            last: None,
            subscribed: HashSet::new(),
            history,
            repair: Script::new(REPAIR),
            role_failures: 0,
        }
    }

    /// Runs until the backend is dropped.
    ///
    /// A lost connection is replaced at once; failures to connect (or to find a primary, or sessions that
    /// keep failing straight away) are retried after a back-off that doubles up to [`MAX_BACKOFF`].
    pub(super) async fn run(mut self) {
        let _switches = self.primary.spawn_switch_listener();
        let target = self.primary.describe_target();
        let mut backoff = MIN_BACKOFF;
        let mut sessions = 0u64;
        loop {
            let cause = match self.connect().await {
                Ok((link, pubsub)) => {
                    let (sink, stream) = pubsub.split();
                    if sessions > 0 {
                        Metrics::inc(&self.metrics.backend_reconnects);
                    }
                    sessions += 1;
                    let started = tokio::time::Instant::now();
                    let end = self.session(&link, sink, stream).await;
                    self.state.up.store(false, Ordering::Release);
                    self.subscribed.clear();
                    let End::Lost(cause) = end else { return };
                    tracing::warn!(redis = %link.addr, %cause, "redis pub/sub connection lost; reconnecting");
                    link.refresh().await;
                    // Reconnect at once after a session that lived, and once after one that did not;
                    // back off only when sessions keep failing straight away.
                    if started.elapsed() > MAX_BACKOFF {
                        backoff = MIN_BACKOFF;
                        continue;
                    }
                    if backoff == MIN_BACKOFF {
                        backoff *= 2;
                        continue;
                    }
                    cause
                }
                Err(cause) => {
                    Metrics::inc(&self.metrics.backend_errors);
                    cause
                }
            };
            if sessions == 0 {
                tracing::error!(redis = %target, %cause, retry_in = ?backoff, "cannot reach redis; retrying");
            } else {
                tracing::warn!(redis = %target, %cause, retry_in = ?backoff, "redis unavailable; retrying");
            }
            if !self.refuse_for(backoff).await {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Finds the primary, checks that it takes writes, and opens a pub/sub connection to it.
    async fn connect(&mut self) -> Result<(Arc<Link>, redis::aio::PubSub), String> {
        let link = self.primary.locate().await?;
        match Primary::is_primary(&link, COMMAND_TIMEOUT).await {
            Ok(true) => {}
            Ok(false) => {
                self.primary.forget(&link);
                return Err(format!(
                    "redis at {} is a replica (ROLE), not writable; looking for the primary",
                    link.addr
                ));
            }
            Err(cause) => return Err(cause),
        }
        match tokio::time::timeout(COMMAND_TIMEOUT, link.client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => Ok((link, pubsub)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no connection within {COMMAND_TIMEOUT:?}")),
        }
    }

    /// Answers subscription requests with an error for `wait`. `false` when the backend is gone.
    /// A Sentinel's announcement of a new primary ends the wait at once.
    async fn refuse_for(&mut self, wait: Duration) -> bool {
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        let primary = self.primary.clone();
        loop {
            tokio::select! {
                () = &mut sleep => return true,
                () = primary.switched() => return true,
                request = self.requests.recv() => match request {
                    Some(request) => {
                        let _ = request.done.send(Err("redis pub/sub connection is down".into()));
                    }
                    None => return false,
                },
                Some(_) = self.idle.recv() => {}
            }
        }
    }

    /// Serves one pub/sub connection until it fails, or its server is not the primary any more.
    async fn session(&mut self, link: &Arc<Link>, mut sink: PubSubSink, mut stream: PubSubStream) -> End {
        if let Err(cause) = self.resume(link, &mut sink).await {
            return End::Lost(cause);
        }
        self.state.up.store(true, Ordering::Release);
        self.role_failures = 0;
        tracing::info!(redis = %link.addr, topics = self.subscribed.len(), "redis pub/sub connection ready");
        let primary = self.primary.clone();
        let mut checks = tokio::time::interval(ROLE_CHECK_INTERVAL);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        checks.reset();
        let mut polled = tokio::time::Instant::now();
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) => self.on_message(message.get_payload_bytes()),
                    None => return End::Lost("connection closed".into()),
                },
                request = self.requests.recv() => match request {
                    Some(request) => {
                        let result = self.ensure(&mut sink, &request.topics).await;
                        let lost = result.clone().err();
                        let _ = request.done.send(result);
                        if let Some(cause) = lost {
                            return End::Lost(cause);
                        }
                    }
                    None => return End::Stop,
                },
                Some(topic) = self.idle.recv() => {
                    if !self.hub.is_active(&topic) && self.subscribed.remove(&topic) {
                        if let Err(cause) = self.command(sink.unsubscribe(channel(&topic))).await {
                            return End::Lost(cause);
                        }
                    }
                }
                _ = checks.tick() => {
                    let poll = polled.elapsed() >= SENTINEL_POLL_INTERVAL;
                    if poll {
                        polled = tokio::time::Instant::now();
                    }
                    if let Err(cause) = self.check_primary(link, poll).await {
                        return End::Lost(cause);
                    }
                }
                () = primary.suspected() => {
                    polled = tokio::time::Instant::now();
                    if let Err(cause) = self.check_primary(link, true).await {
                        return End::Lost(cause);
                    }
                }
                () = primary.switched() => {
                    polled = tokio::time::Instant::now();
                    if let Err(cause) = self.check_primary(link, true).await {
                        return End::Lost(cause);
                    }
                }
            }
        }
    }

    /// Checks that `link`'s server is still the primary: it answers `ROLE` as one, and (when `ask_sentinels`
    /// and the primary is found through Sentinels) it is the one they name. `Err` ends the session.
    async fn check_primary(&mut self, link: &Arc<Link>, ask_sentinels: bool) -> Result<(), String> {
        match Primary::is_primary(link, COMMAND_TIMEOUT).await {
            Ok(true) => self.role_failures = 0,
            Ok(false) => {
                self.primary.forget(link);
                return Err(format!("redis at {} is not a primary any more (ROLE)", link.addr));
            }
            Err(cause) => {
                Metrics::inc(&self.metrics.backend_errors);
                self.role_failures += 1;
                if self.role_failures >= ROLE_FAILURES {
                    return Err(format!("redis at {} did not answer ROLE {ROLE_FAILURES} times: {cause}", link.addr));
                }
            }
        }
        if ask_sentinels && self.primary.is_sentinel() {
            match self.primary.locate().await {
                Ok(located) if !Arc::ptr_eq(&located, link) => {
                    return Err(format!("the redis primary moved to {}", located.addr));
                }
                Ok(_) => {}
                Err(cause) => tracing::debug!(%cause, "asking the sentinels where the primary is failed"),
            }
        }
        Ok(())
    }

    /// On a new connection: learn where the deployment is (first time), record in Redis any history it
    /// lost that this node has seen, subscribe every active topic, then catch up from the streams.
    async fn resume(&mut self, link: &Link, sink: &mut PubSubSink) -> Result<(), String> {
        while self.idle.try_recv().is_ok() {}
        let mut con = link.commands.clone();
        if self.last.is_none() {
            let last: Value = self.command(redis::cmd("GET").arg(LAST_ID_KEY).query_async(&mut con)).await?;
            let last = id_of(&last).unwrap_or(EventId::ZERO);
            self.state.saw(last);
            self.last = Some(last);
        }
        let newest = *self.state.newest.lock().unwrap_or_else(PoisonError::into_inner);
        if newest > EventId::ZERO {
            let mut repair = self.repair.prepare_invoke();
            repair.key(LAST_ID_KEY).key(EPOCH_KEY).arg(newest.to_string());
            let repaired: i64 = self.command(repair.invoke_async(&mut con)).await?;
            if repaired == 1 {
                tracing::warn!(
                    redis = %link.addr, %newest,
                    "redis lacks events this node has seen (a failover lost them); clients resuming from before are told"
                );
            }
        }
        let active = self.hub.active_topics();
        if !active.is_empty() {
            let channels: Vec<String> = active.iter().map(|t| channel(t)).collect();
            self.command(sink.subscribe(channels)).await?;
        }
        self.subscribed = active.into_iter().collect();
        self.catch_up().await
    }

    /// Reads every subscribed topic's stream after the last dispatched id (one snapshot, then pages merged
    /// by id) and dispatches what the live feed missed. Connections on topics whose history has a gap are
    /// marked lagging first (see the module docs).
    async fn catch_up(&mut self) -> Result<(), String> {
        let Some(after) = self.last else { return Ok(()) };
        if self.subscribed.is_empty() {
            return Ok(());
        }
        let topics: Vec<Topic> = self.subscribed.iter().cloned().collect();
        let snapshot = self.history.snapshot(&topics, false).await.map_err(|e| e.to_string())?;
        Metrics::add(&self.metrics.backend_catchup_reads, topics.len() as u64);
        // Redis has no history, or it lacks ids this node dispatched, or its history starts after the last
        // event this node dispatched: Redis lost what came in between, if anything. Streams on those topics
        // catch up (or close, so that their clients resume and are told): the same when events were
        // trimmed while the node was away. They are marked lagging before anything read below is
        // dispatched: a stream that took one of those events first would resume from its id, which the
        // history covers, and never learn of the gap before it (issue 10: Redis restarted twice while the
        // node was stalled).
        let (last_issued, epoch) = (snapshot.last_issued, snapshot.epoch);
        let lost = after > EventId::ZERO
            && (last_issued.is_none_or(|issued| issued < after) || epoch.is_some_and(|epoch| epoch > after));
        let trimmed = snapshot.trimmed_after(&topics, after);
        if lost {
            tracing::warn!(%after, "redis lost history; local streams catch up from what is left");
            self.hub.lag_topics(&topics);
        } else if !trimmed.is_empty() {
            tracing::warn!(%after, topics = trimmed.len(), "events were trimmed while the pub/sub connection was down");
            self.hub.lag_topics(&trimmed);
        }
        let mut pager = self.history.pager(&topics, after, &snapshot, false);
        let mut caught_up = 0u64;
        loop {
            match pager.next_page().await {
                Ok(Some(page)) => {
                    for event in page {
                        if self.last.is_none_or(|last| event.id > last) {
                            self.dispatch(event);
                            caught_up += 1;
                        }
                    }
                }
                Ok(None) => break,
                Err(ReadError::Failed(cause)) => return Err(cause),
                // Trimmed or lost while reading: the local streams catch up (or are told) themselves.
                Err(ReadError::Overtaken | ReadError::HistoryLost) => {
                    self.hub.lag_topics(&topics);
                    break;
                }
            }
        }
        Metrics::add(&self.metrics.backend_events_caught_up, caught_up);
        if caught_up > 0 {
            tracing::info!(events = caught_up, "caught up from redis streams after reconnecting");
        }
        Ok(())
    }

    /// Subscribes the channels of `topics` not subscribed yet; answers once Redis has confirmed.
    async fn ensure(&mut self, sink: &mut PubSubSink, topics: &[Topic]) -> Result<(), String> {
        let missing: Vec<&Topic> = topics.iter().filter(|t| !self.subscribed.contains(*t)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let channels: Vec<String> = missing.iter().map(|t| channel(t)).collect();
        self.command(sink.subscribe(channels)).await?;
        self.subscribed.extend(missing.into_iter().cloned());
        Ok(())
    }

    /// Decodes a pub/sub message and dispatches it unless it was already dispatched. A message that is not a
    /// valid event (see [`Message::event`]) is dropped and counted; its id, if well-formed, still counts as
    /// seen, so that ids keep rising past it.
    fn on_message(&mut self, payload: &[u8]) {
        let (id, message) = match Message::read(payload) {
            Ok(read) => read,
            Err(Unreadable::MalformedId) => {
                Metrics::inc(&self.metrics.backend_invalid_events);
                tracing::warn!("ignoring a pub/sub message with a malformed id");
                return;
            }
            Err(cause) => {
                Metrics::inc(&self.metrics.backend_invalid_events);
                tracing::warn!(%cause, "ignoring a pub/sub message that is not a herald event");
                return;
            }
        };
        if self.last.is_some_and(|last| id <= last) {
            return;
        }
        match message.event(id) {
            Some(event) => self.dispatch(Arc::new(event)),
            None => {
                Metrics::inc(&self.metrics.backend_invalid_events);
                tracing::warn!(%id, "ignoring a pub/sub message that is not a valid herald event (bad type or topic)");
                self.last = Some(id);
                self.state.saw(id);
            }
        }
    }

    fn dispatch(&mut self, event: Arc<Event>) {
        self.last = Some(event.id);
        self.state.saw(event.id);
        self.hub.dispatch(&event);
    }

    /// Awaits a Redis command with [`COMMAND_TIMEOUT`], counting failures.
    async fn command<T>(&self, fut: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, String> {
        match tokio::time::timeout(COMMAND_TIMEOUT, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                Metrics::inc(&self.metrics.backend_errors);
                Err(e.to_string())
            }
            Err(_) => {
                Metrics::inc(&self.metrics.backend_errors);
                Err(format!("no answer within {COMMAND_TIMEOUT:?}"))
            }
        }
    }
}
