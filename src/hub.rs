//! The broadcast hub: topic → local subscribers, and each connection's bounded mailbox.
//!
//! Backends feed the hub events in id order (the memory backend through its dispatch sequencer, the Redis
//! backend from its single pub/sub reader). The hub pushes the same `Arc<Event>` into the mailbox of every
//! connection subscribed to one of the event's topics; a connection drains its mailbox in order, so a
//! connection's topics are merged by id for free, and an event published to several of its topics is
//! dropped the second time by the "id not greater than the last one sent" filter.
//!
//! ## No global lock
//!
//! Topics live in [`SHARDS`] independently locked maps, and a fan-out holds none of them while it pushes:
//! it takes its topic's shard for reading only long enough to take the topic's subscriber list, an
//! `Arc`'d slice made on the first dispatch after a change and shared by every dispatch until the next
//! one, then pushes into each mailbox (one short mailbox lock each) and wakes the tasks in batches of
//! [`WAKE_BATCH`] with no lock held at all. So a registration, an unregistration, a scrape of the gauges or
//! a fan-out to another topic never waits for a 10k-subscriber fan-out, and a fan-out waits at most for a
//! registration's map insert. A registration that changes a list costs the next dispatch of that topic one
//! copy of the list (pointer clones), which is of the order of the fan-out itself.
//!
//! Mailboxes are bounded (`--queue-size`). A push into a full mailbox never waits: the mailbox is emptied
//! and marked lagged, which frees its memory at once; the connection then catches up from history or
//! closes so that the client resumes with its last id. A slow client therefore never delays the hub or
//! any other client, and never holds more than `queue_size` pointers.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::mpsc::UnboundedSender;

use crate::error::Error;
use crate::id::EventId;
use crate::metrics::{HubGauges, Metrics};
use crate::sse::Event;
use crate::topic::Topic;

/// Independently locked parts of the topic map: registrations and dispatches of topics in different
/// shards never touch the same lock.
pub const SHARDS: usize = 16;
/// Tasks woken together once their mailboxes have been filled: waking after the pushes keeps the push loop
/// on mailboxes and the wake loop on the scheduler, and no wake ever happens under a lock.
pub const WAKE_BATCH: usize = 64;

/// Fans events out to the local connections that want them.
#[derive(Debug)]
pub struct Hub {
    shards: Box<[RwLock<HashMap<Topic, TopicSubs>>]>,
    hasher: RandomState,
    closed: AtomicBool,
    next_conn: AtomicU64,
    queue_size: usize,
    metrics: Arc<Metrics>,
    /// Told each topic that loses its last local subscriber (a backend with a remote feed unsubscribes).
    idle: Option<UnboundedSender<Topic>>,
}

/// One topic's local subscribers.
#[derive(Debug, Default)]
struct TopicSubs {
    /// By connection number; changed under the shard's write lock.
    members: HashMap<u64, Arc<Mailbox>>,
    /// The members as a list for dispatch: made by the first dispatch after a change (under the shard's
    /// read lock, hence the mutex), dropped by the next change.
    list: Mutex<Option<Arc<[Arc<Mailbox>]>>>,
}

impl TopicSubs {
    fn changed(&mut self) {
        *self.list.get_mut().unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn list(&self) -> Arc<[Arc<Mailbox>]> {
        lock(&self.list).get_or_insert_with(|| self.members.values().cloned().collect()).clone()
    }
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves its data consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(PoisonError::into_inner)
}

/// Wakers collected during a fan-out, woken in batches with no lock held.
struct Wakes {
    wakers: [Option<Waker>; WAKE_BATCH],
    len: usize,
}

impl Wakes {
    fn new() -> Self {
        Wakes { wakers: [const { None }; WAKE_BATCH], len: 0 }
    }

    fn add(&mut self, waker: Waker) {
        self.wakers[self.len] = Some(waker);
        self.len += 1;
        if self.len == WAKE_BATCH {
            self.wake_all();
        }
    }

    fn wake_all(&mut self) {
        for waker in &mut self.wakers[..self.len] {
            if let Some(waker) = waker.take() {
                waker.wake();
            }
        }
        self.len = 0;
    }
}

impl Drop for Wakes {
    fn drop(&mut self) {
        self.wake_all();
    }
}

impl Hub {
    /// Makes a hub whose mailboxes hold at most `queue_size` events.
    pub fn new(queue_size: usize, metrics: Arc<Metrics>) -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            closed: AtomicBool::new(false),
            next_conn: AtomicU64::new(0),
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

    fn shard(&self, topic: &Topic) -> &RwLock<HashMap<Topic, TopicSubs>> {
        &self.shards[(self.hasher.hash_one(&**topic) as usize) % SHARDS]
    }

    /// Registers a connection for `topics`. Events dispatched after this returns reach the returned
    /// mailbox. Also returns the topics that had no local subscriber before (a backend with a remote
    /// feed subscribes to those).
    ///
    /// # Errors
    /// [`Error::ShuttingDown`] once [`Hub::close`] has been called.
    pub fn register(self: &Arc<Self>, topics: &[Topic]) -> Result<(Registration, Vec<Topic>), Error> {
        let mailbox = Arc::new(Mailbox::default());
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut newly_active = Vec::new();
        for (done, topic) in topics.iter().enumerate() {
            let mut shard = write(self.shard(topic));
            // Checked under each shard's lock: `close` sets the flag before it takes the shards, so a
            // mailbox inserted here is either seen and closed by `close`, or refused.
            if self.closed.load(Ordering::Acquire) {
                drop(shard);
                self.unregister(id, &topics[..done]);
                return Err(Error::ShuttingDown);
            }
            let subs = shard.entry(topic.clone()).or_insert_with(|| {
                newly_active.push(topic.clone());
                self.metrics.topics_active.fetch_add(1, Ordering::Relaxed);
                TopicSubs::default()
            });
            subs.members.insert(id, mailbox.clone());
            subs.changed();
            self.metrics.subscriptions_active.fetch_add(1, Ordering::Relaxed);
        }
        let registration =
            Registration { hub: self.clone(), id, topics: topics.into(), mailbox, live_from: EventId::ZERO };
        Ok((registration, newly_active))
    }

    fn unregister(&self, id: u64, topics: &[Topic]) {
        for topic in topics {
            let mut shard = write(self.shard(topic));
            let Some(subs) = shard.get_mut(topic) else { continue };
            if subs.members.remove(&id).is_none() {
                continue;
            }
            subs.changed();
            self.metrics.subscriptions_active.fetch_sub(1, Ordering::Relaxed);
            if subs.members.is_empty() {
                shard.remove(topic);
                self.metrics.topics_active.fetch_sub(1, Ordering::Relaxed);
                if let Some(idle) = &self.idle {
                    // Fails only when the backend's feed is gone (shutdown); nothing to tell then.
                    let _ = idle.send(topic.clone());
                }
            }
        }
    }

    /// The subscribers of `topic` now, if it has any.
    fn members(&self, topic: &Topic) -> Option<Arc<[Arc<Mailbox>]>> {
        read(self.shard(topic)).get(topic).map(TopicSubs::list)
    }

    /// Hands an event to every local connection subscribed to one of its topics. Never waits, and holds no
    /// lock of the hub while it pushes and wakes.
    ///
    /// Each connection must see events in id order: callers dispatch in id order, one event at a time (the
    /// memory backend's sequencer, the Redis feed's one task). Events of topics no connection shares could
    /// go concurrently, but a connection subscribed to two topics would then see them out of order and drop
    /// the older one as already sent.
    pub fn dispatch(&self, event: &Arc<Event>) {
        let mut wakes = Wakes::new();
        let mut lagged = 0;
        for topic in event.topics.iter() {
            let Some(members) = self.members(topic) else { continue };
            for mailbox in members.iter() {
                let (push, waker) = mailbox.push(event, self.queue_size);
                lagged += u64::from(push == Push::Overflowed);
                if let Some(waker) = waker {
                    wakes.add(waker);
                }
            }
        }
        wakes.wake_all();
        if lagged > 0 {
            Metrics::add(&self.metrics.lagged, lagged);
        }
    }

    /// Marks every connection subscribed to one of `topics` as lagging: its mailbox is emptied and the
    /// connection catches up from history (with `herald.reset` when history cannot cover it). Used when
    /// a backend's live feed missed events it cannot recover itself.
    pub fn lag_topics(&self, topics: &[Topic]) {
        let mut wakes = Wakes::new();
        for topic in topics {
            let Some(members) = self.members(topic) else { continue };
            for mailbox in members.iter() {
                if let Some(waker) = mailbox.mark_lagged() {
                    wakes.add(waker);
                }
            }
        }
    }

    /// Closes every mailbox and refuses new registrations: each open stream ends after what it has
    /// queued. Used at shutdown.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let mut wakes = Wakes::new();
        for shard in self.shards.iter() {
            let mailboxes: Vec<Arc<Mailbox>> =
                write(shard).values().flat_map(|subs| subs.members.values().cloned()).collect();
            for mailbox in mailboxes {
                if let Some(waker) = mailbox.close() {
                    wakes.add(waker);
                }
            }
        }
    }

    /// Current topic and subscription counts, as kept in the node's metrics (`herald_topics_active`,
    /// `herald_subscriptions_active`): a scrape never waits for the hub.
    pub fn gauges(&self) -> HubGauges {
        HubGauges {
            topics_active: self.metrics.topics_active.load(Ordering::Relaxed) as usize,
            subscriptions_active: self.metrics.subscriptions_active.load(Ordering::Relaxed) as usize,
        }
    }

    /// Whether `topic` has at least one local subscriber.
    pub fn is_active(&self, topic: &Topic) -> bool {
        read(self.shard(topic)).contains_key(topic)
    }

    /// Topics with at least one local subscriber.
    pub fn active_topics(&self) -> Vec<Topic> {
        self.shards.iter().flat_map(|shard| read(shard).keys().cloned().collect::<Vec<_>>()).collect()
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
    /// [`LAGGED`], [`CLOSED`] and [`NEWS`]: changed only under the lock, so the lock orders them like the
    /// queue; kept outside it so that [`Mailbox::has_news`] needs no lock (and the mailbox stays 64 bytes).
    flags: AtomicU8,
}

/// The queue overflowed (or the feed lost events) and was emptied; the connection catches up from history.
const LAGGED: u8 = 1;
/// The hub closed (shutdown).
const CLOSED: u8 = 2;
/// A push, a lag or the close took the registered waker since a drain last registered one. While it is
/// clear, the task's waker is in place and nothing happened since: see [`Mailbox::has_news`].
const NEWS: u8 = 4;

#[derive(Debug, Default)]
struct MailboxState {
    queue: VecDeque<Arc<Event>>,
    waker: Option<Waker>,
}

/// Keeps `cx`'s waker in `slot` (cloning it only when it is a different task's).
fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        slot => *slot = Some(cx.waker().clone()),
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
    fn is(&self, flags: u8) -> bool {
        self.flags.load(Ordering::Acquire) & flags != 0
    }

    fn set(&self, flags: u8) {
        self.flags.fetch_or(flags, Ordering::Release);
    }

    fn clear(&self, flags: u8) {
        self.flags.fetch_and(!flags, Ordering::Release);
    }

    /// Marks the connection lagging (and that there is news) and frees its queue at once; it catches up
    /// from history. Under the lock.
    fn lag(&self, state: &mut MailboxState) {
        self.set(LAGGED | NEWS);
        state.queue = VecDeque::new();
    }

    /// Queues `event`; returns what happened and the task to wake (the caller wakes it once no lock is
    /// held).
    fn push(&self, event: &Arc<Event>, capacity: usize) -> (Push, Option<Waker>) {
        let mut state = lock(&self.state);
        if self.is(CLOSED | LAGGED) {
            return (Push::Ignored, None);
        }
        // The same event, pushed again for a second topic of this connection before it was drained.
        if state.queue.back().is_some_and(|last| last.id == event.id) {
            return (Push::Ignored, None);
        }
        if state.queue.len() >= capacity {
            self.lag(&mut state);
            return (Push::Overflowed, state.waker.take());
        }
        state.queue.push_back(event.clone());
        self.set(NEWS);
        (Push::Queued, state.waker.take())
    }

    fn mark_lagged(&self) -> Option<Waker> {
        let mut state = lock(&self.state);
        if self.is(CLOSED | LAGGED) {
            return None;
        }
        self.lag(&mut state);
        state.waker.take()
    }

    fn close(&self) -> Option<Waker> {
        let mut state = lock(&self.state);
        self.set(CLOSED | NEWS);
        state.waker.take()
    }

    /// Registers the task for the next push, lag or close; from now on, [`Mailbox::has_news`] says whether
    /// one happened. Under the lock.
    fn watch(&self, state: &mut MailboxState, cx: &Context<'_>) {
        register(&mut state.waker, cx);
        self.clear(NEWS);
    }

    /// Moves up to `max` queued events into `out`, or reports lag or closure, or registers the task to be
    /// woken by the next push.
    ///
    /// A drain that leaves the queue empty (fewer than `max` events moved) also registers the task, so the
    /// caller, once it has written them, may return `Pending` without polling the mailbox again unless
    /// [`Mailbox::has_news`] says something happened since.
    pub fn poll_drain(&self, cx: &mut Context<'_>, out: &mut Vec<Arc<Event>>, max: usize) -> Poll<Drained> {
        let mut state = lock(&self.state);
        if self.is(LAGGED) {
            return Poll::Ready(Drained::Lagged);
        }
        if !state.queue.is_empty() {
            let n = state.queue.len().min(max);
            // Usually one event: popping is cheaper than a `Drain`.
            out.reserve(n);
            for _ in 0..n {
                out.extend(state.queue.pop_front());
            }
            if state.queue.is_empty() {
                if state.queue.capacity() > 64 {
                    state.queue = VecDeque::new();
                }
                self.watch(&mut state, cx);
            }
            return Poll::Ready(Drained::Events);
        }
        if self.is(CLOSED) {
            return Poll::Ready(Drained::Closed);
        }
        self.watch(&mut state, cx);
        Poll::Pending
    }

    /// Whether anything happened to the mailbox (an event, a lag, the close) since the last drain that
    /// registered the task. When nothing did, that registration is still in place, and a caller whose last
    /// drain registered it may return `Pending` without locking the mailbox. (A wake is not enough to know:
    /// the task may have spent it elsewhere, waiting for its socket, say.)
    pub fn has_news(&self) -> bool {
        self.is(NEWS)
    }

    /// Clears the lagged mark so that live events queue again; the caller then reads history from its
    /// last sent id (live before history, as at subscription).
    pub fn clear_lag(&self) {
        let _state = lock(&self.state);
        self.clear(LAGGED);
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

#[cfg(test)]
pub(crate) mod concurrency {
    use super::*;
    use std::sync::mpsc;
    use std::task::Wake;
    use std::time::Duration;

    /// A task waker that, when woken, says so and then blocks until released (at most 10 s): it holds a
    /// fan-out in the middle of its wakes for as long as a test needs.
    pub(crate) struct Gate {
        entered: Mutex<mpsc::Sender<()>>,
        release: Mutex<mpsc::Receiver<()>>,
    }

    impl Wake for Gate {
        fn wake(self: Arc<Self>) {
            let _ = lock(&self.entered).send(());
            let _ = lock(&self.release).recv_timeout(Duration::from_secs(10));
        }
    }

    /// A gate, the signal that a fan-out reached it, and the way to release it.
    pub(crate) fn gate() -> (Waker, mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (entered, reached) = mpsc::channel();
        let (release, released) = mpsc::channel();
        let gate = Arc::new(Gate { entered: Mutex::new(entered), release: Mutex::new(released) });
        (Waker::from(gate), reached, release)
    }

    /// Runs `work` on another thread; whether it finished within 5 s.
    pub(crate) fn finishes(work: impl FnOnce() + Send + 'static) -> bool {
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            work();
            let _ = done.send(());
        });
        finishes_by(&finished)
    }

    fn finishes_by(finished: &mpsc::Receiver<()>) -> bool {
        finished.recv_timeout(Duration::from_secs(5)).is_ok()
    }

    fn event(n: u64, topic: &str) -> Arc<Event> {
        Arc::new(Event::new(EventId::new(n, 0), vec![Topic::from(topic)].into(), None, "x"))
    }

    /// Issue 8: the hub held its one lock while it pushed into and woke every mailbox, so registering,
    /// unregistering, scraping and dispatching to any other topic all waited for a fan-out. A fan-out is
    /// held here in the middle of its wakes; all of those must still go through.
    #[test]
    fn nothing_waits_for_a_fan_out_in_progress() {
        let hub = Arc::new(Hub::new(16, Arc::default()));
        let (waker, reached, release) = gate();
        let (big, _) = hub.register(&["big".into()]).unwrap();
        let mut out = Vec::new();
        assert!(big.mailbox().poll_drain(&mut Context::from_waker(&waker), &mut out, 8).is_pending());
        let fan_out = {
            let hub = hub.clone();
            std::thread::spawn(move || hub.dispatch(&event(1, "big")))
        };
        reached.recv_timeout(Duration::from_secs(5)).expect("the fan-out reached the gate");
        let others = {
            let hub = hub.clone();
            finishes(move || {
                let (quiet, new) = hub.register(&["quiet".into()]).unwrap();
                assert_eq!(new, [Topic::from("quiet")]);
                let (also_big, _) = hub.register(&["big".into()]).unwrap();
                assert_eq!(hub.gauges().subscriptions_active, 3);
                assert!(hub.is_active(&"quiet".into()));
                hub.dispatch(&event(2, "quiet"));
                let mut cx = Context::from_waker(Waker::noop());
                let mut out = Vec::new();
                assert_eq!(quiet.mailbox().poll_drain(&mut cx, &mut out, 8), Poll::Ready(Drained::Events));
                drop(also_big);
                drop(quiet);
                assert_eq!(hub.active_topics(), [Topic::from("big")]);
            })
        };
        let _ = release.send(());
        fan_out.join().unwrap();
        assert!(others, "registration, scrape or another topic's dispatch waited for the fan-out");
    }
}
