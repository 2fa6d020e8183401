//! The broadcast hub: topic → local subscribers, and each connection's bounded mailbox.
//!
//! Backends feed the hub events in id order (the memory backend under its publish lock, the Redis backend
//! from its single pub/sub reader). The hub pushes the same `Arc<Event>` into the mailbox of every
//! connection subscribed to one of the event's topics; a connection drains its mailbox in order, so a
//! connection's topics are merged by id for free, and an event published to several of its topics is
//! dropped the second time by the "id not greater than the last one sent" filter.
//!
//! Mailboxes are bounded (`--queue-size`). A push into a full mailbox never waits: the mailbox is emptied
//! and marked lagged, which frees its memory at once; the connection then catches up from history or
//! closes so that the client resumes with its last id. A slow client therefore never delays the hub or
//! any other client, and never holds more than `queue_size` pointers.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use tokio::sync::mpsc::UnboundedSender;

use crate::error::Error;
use crate::id::EventId;
use crate::metrics::{HubGauges, Metrics};
use crate::sse::Event;
use crate::topic::Topic;

/// Fans events out to the local connections that want them.
#[derive(Debug)]
pub struct Hub {
    state: Mutex<HubState>,
    closed: AtomicBool,
    queue_size: usize,
    metrics: Arc<Metrics>,
    /// Told each topic that loses its last local subscriber (a backend with a remote feed unsubscribes).
    idle: Option<UnboundedSender<Topic>>,
}

#[derive(Debug, Default)]
struct HubState {
    topics: HashMap<Topic, HashMap<u64, Arc<Mailbox>>>,
    next_conn: u64,
    subscriptions: usize,
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves its data consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hub {
    /// Makes a hub whose mailboxes hold at most `queue_size` events.
    pub fn new(queue_size: usize, metrics: Arc<Metrics>) -> Self {
        Hub {
            state: Mutex::default(),
            closed: AtomicBool::new(false),
            queue_size: queue_size.max(1),
            metrics,
            idle: None,
        }
    }

    /// Like [`Hub::new`], and sends every topic that loses its last local subscriber to `idle` (the topic
    /// may have a subscriber again by the time it is received: check [`Hub::is_active`]).
    pub fn with_idle_notifier(queue_size: usize, metrics: Arc<Metrics>, idle: UnboundedSender<Topic>) -> Self {
        Hub { idle: Some(idle), ..Hub::new(queue_size, metrics) }
    }

    /// Registers a connection for `topics`. Events dispatched after this returns reach the returned
    /// mailbox. Also returns the topics that had no local subscriber before (a backend with a remote
    /// feed subscribes to those).
    ///
    /// # Errors
    /// [`Error::ShuttingDown`] once [`Hub::close`] has been called.
    pub fn register(self: &Arc<Self>, topics: &[Topic]) -> Result<(Registration, Vec<Topic>), Error> {
        let mailbox = Arc::new(Mailbox::default());
        let mut newly_active = Vec::new();
        let mut state = lock(&self.state);
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        let id = state.next_conn;
        state.next_conn += 1;
        for topic in topics {
            let subs = state.topics.entry(topic.clone()).or_insert_with(|| {
                newly_active.push(topic.clone());
                HashMap::new()
            });
            subs.insert(id, mailbox.clone());
        }
        state.subscriptions += topics.len();
        drop(state);
        let registration =
            Registration { hub: self.clone(), id, topics: topics.into(), mailbox, live_from: EventId::ZERO };
        Ok((registration, newly_active))
    }

    fn unregister(&self, id: u64, topics: &[Topic]) {
        let mut state = lock(&self.state);
        for topic in topics {
            if let Some(subs) = state.topics.get_mut(topic) {
                subs.remove(&id);
                if subs.is_empty() {
                    state.topics.remove(topic);
                    if let Some(idle) = &self.idle {
                        // Fails only when the backend's feed is gone (shutdown); nothing to tell then.
                        let _ = idle.send(topic.clone());
                    }
                }
            }
        }
        state.subscriptions -= topics.len();
    }

    /// Hands an event to every local connection subscribed to one of its topics. Never waits.
    ///
    /// Callers dispatch in id order, one event at a time.
    pub fn dispatch(&self, event: &Arc<Event>) {
        let state = lock(&self.state);
        for topic in event.topics.iter() {
            let Some(subs) = state.topics.get(topic) else { continue };
            for mailbox in subs.values() {
                if mailbox.push(event, self.queue_size) == Push::Overflowed {
                    Metrics::inc(&self.metrics.lagged);
                }
            }
        }
    }

    /// Marks every connection subscribed to one of `topics` as lagging: its mailbox is emptied and the
    /// connection catches up from history (with `herald.reset` when history cannot cover it). Used when
    /// a backend's live feed missed events it cannot recover itself.
    pub fn lag_topics(&self, topics: &[Topic]) {
        let state = lock(&self.state);
        for topic in topics {
            let Some(subs) = state.topics.get(topic) else { continue };
            for mailbox in subs.values() {
                mailbox.mark_lagged();
            }
        }
    }

    /// Closes every mailbox and refuses new registrations: each open stream ends after what it has
    /// queued. Used at shutdown.
    pub fn close(&self) {
        let state = lock(&self.state);
        self.closed.store(true, Ordering::Release);
        for subs in state.topics.values() {
            for mailbox in subs.values() {
                mailbox.close();
            }
        }
    }

    /// Current topic and subscription counts.
    pub fn gauges(&self) -> HubGauges {
        let state = lock(&self.state);
        HubGauges { topics_active: state.topics.len(), subscriptions_active: state.subscriptions }
    }

    /// Whether `topic` has at least one local subscriber.
    pub fn is_active(&self, topic: &Topic) -> bool {
        lock(&self.state).topics.contains_key(topic)
    }

    /// Topics with at least one local subscriber.
    pub fn active_topics(&self) -> Vec<Topic> {
        lock(&self.state).topics.keys().cloned().collect()
    }
}

/// A connection's place in the hub; unregisters when dropped.
#[derive(Debug)]
pub struct Registration {
    hub: Arc<Hub>,
    id: u64,
    topics: Box<[Topic]>,
    mailbox: Arc<Mailbox>,
    /// See [`Registration::live_from`]; `ZERO` for none (no issued id is `ZERO`), which keeps the
    /// registration, part of every stream's long-lived state, 8 bytes smaller than an `Option`.
    live_from: EventId,
}

impl Registration {
    /// The position at which this subscription went live, as the backend learned it when subscribing:
    /// every event with a greater id reaches the mailbox (events up to it may or may not). `None` when the
    /// backend knows no position yet (a Redis deployment where nothing was ever published).
    ///
    /// Resuming from it misses nothing, and it is a position the backend's history judges valid, so a
    /// client that never got an event id can still catch up (or resume) without a spurious reset.
    pub fn live_from(&self) -> Option<EventId> {
        (self.live_from != EventId::ZERO).then_some(self.live_from)
    }

    /// Records the position at which the subscription went live (see [`Registration::live_from`]); for
    /// backends, once the subscription is live.
    pub fn set_live_from(&mut self, position: Option<EventId>) {
        self.live_from = position.unwrap_or(EventId::ZERO);
    }

    /// This connection's number in the hub, unique while it is registered.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The topics this connection is subscribed to.
    pub fn topics(&self) -> &[Topic] {
        &self.topics
    }

    /// The connection's mailbox.
    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(self.id, &self.topics);
    }
}

/// A connection's bounded queue of events waiting to be written.
#[derive(Debug, Default)]
pub struct Mailbox {
    state: Mutex<MailboxState>,
}

#[derive(Debug, Default)]
struct MailboxState {
    queue: VecDeque<Arc<Event>>,
    lagged: bool,
    closed: bool,
    waker: Option<Waker>,
}

impl MailboxState {
    /// Marks the connection lagging and frees its queue at once; it catches up from history.
    fn lag(&mut self) {
        self.lagged = true;
        self.queue = VecDeque::new();
    }
}

/// Wakes the mailbox's task, if it waits, after releasing the lock.
fn wake(mut state: MutexGuard<'_, MailboxState>) {
    let waker = state.waker.take();
    drop(state);
    if let Some(waker) = waker {
        waker.wake();
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Push {
    Queued,
    Overflowed,
    Ignored,
}

/// What [`Mailbox::poll_drain`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Events were moved into the caller's buffer.
    Events,
    /// The queue overflowed and was emptied; the connection must catch up from history.
    Lagged,
    /// The hub closed (shutdown) and nothing is left.
    Closed,
}

impl Mailbox {
    fn push(&self, event: &Arc<Event>, capacity: usize) -> Push {
        let mut state = lock(&self.state);
        if state.closed || state.lagged {
            return Push::Ignored;
        }
        // The same event, pushed again for a second topic of this connection before it was drained.
        if state.queue.back().is_some_and(|last| last.id == event.id) {
            return Push::Ignored;
        }
        if state.queue.len() >= capacity {
            state.lag();
            wake(state);
            return Push::Overflowed;
        }
        state.queue.push_back(event.clone());
        wake(state);
        Push::Queued
    }

    fn mark_lagged(&self) {
        let mut state = lock(&self.state);
        if !state.closed && !state.lagged {
            state.lag();
            wake(state);
        }
    }

    fn close(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        wake(state);
    }

    /// Moves up to `max` queued events into `out`, or reports lag or closure, or registers the task to be
    /// woken by the next push.
    pub fn poll_drain(&self, cx: &mut Context<'_>, out: &mut Vec<Arc<Event>>, max: usize) -> Poll<Drained> {
        let mut state = lock(&self.state);
        if state.lagged {
            return Poll::Ready(Drained::Lagged);
        }
        if !state.queue.is_empty() {
            let n = state.queue.len().min(max);
            out.extend(state.queue.drain(..n));
            if state.queue.is_empty() && state.queue.capacity() > 64 {
                state.queue = VecDeque::new();
            }
            return Poll::Ready(Drained::Events);
        }
        if state.closed {
            return Poll::Ready(Drained::Closed);
        }
        match &mut state.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Clears the lagged mark so that live events queue again; the caller then reads history from its
    /// last sent id (live before history, as at subscription).
    pub fn clear_lag(&self) {
        lock(&self.state).lagged = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn event(n: u64, topics: &[&str]) -> Arc<Event> {
        let topics: Vec<Topic> = topics.iter().map(|t| Topic::from(*t)).collect();
        Arc::new(Event::new(EventId::new(n, 0), topics.into(), None, "x"))
    }

    fn drain(mb: &Mailbox) -> (Poll<Drained>, Vec<u64>) {
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        let r = mb.poll_drain(&mut cx, &mut out, 100);
        (r, out.iter().map(|e| e.id.ms).collect())
    }

    #[test]
    fn fans_out_once_per_connection() {
        let hub = Arc::new(Hub::new(16, Arc::default()));
        let (a, new) = hub.register(&["t1".into(), "t2".into()]).unwrap();
        assert_eq!(new.len(), 2);
        let (b, new) = hub.register(&["t2".into()]).unwrap();
        assert!(new.is_empty());
        hub.dispatch(&event(1, &["t1", "t2"]));
        hub.dispatch(&event(2, &["t3"]));
        assert_eq!(drain(a.mailbox()).1, [1]);
        assert_eq!(drain(b.mailbox()).1, [1]);
        assert_eq!(hub.gauges().subscriptions_active, 3);
        drop(a);
        drop(b);
        assert_eq!(hub.gauges().topics_active, 0);
    }

    #[test]
    fn overflow_empties_and_marks_lagged() {
        let metrics = Arc::new(Metrics::default());
        let hub = Arc::new(Hub::new(2, metrics.clone()));
        let (a, _) = hub.register(&["t".into()]).unwrap();
        for n in 1..=5 {
            hub.dispatch(&event(n, &["t"]));
        }
        assert_eq!(drain(a.mailbox()).0, Poll::Ready(Drained::Lagged));
        assert_eq!(metrics.lagged.load(Ordering::Relaxed), 1);
        a.mailbox().clear_lag();
        hub.dispatch(&event(6, &["t"]));
        assert_eq!(drain(a.mailbox()).1, [6]);
    }

    #[test]
    fn close_ends_after_queued_events() {
        let hub = Arc::new(Hub::new(8, Arc::default()));
        let (a, _) = hub.register(&["t".into()]).unwrap();
        hub.dispatch(&event(1, &["t"]));
        hub.close();
        assert_eq!(drain(a.mailbox()).1, [1]);
        assert_eq!(drain(a.mailbox()).0, Poll::Ready(Drained::Closed));
        assert!(matches!(hub.register(&["t".into()]), Err(Error::ShuttingDown)));
    }
}
