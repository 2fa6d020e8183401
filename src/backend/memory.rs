//! The in-memory backend: one process, history kept in memory, nothing to install.
//!
//! Publishing takes one lock to make the id, store the event in each topic's history and queue it for
//! dispatch; the fan-out to the hub happens after that lock is released, so a replay, a subscription or
//! another publish never waits for a 10k-subscriber fan-out. A subscriber registers with the hub before
//! reading history, so every event is either in the history it reads or in its mailbox (often both; the
//! id filter drops the copy).
//!
//! ## Dispatch in id order, without a lock held
//!
//! Every connection must receive events in id order, across all its topics: one that got event 2 before
//! event 1 would drop 1 as already sent. Ids are made under the state lock, and each event joins the
//! [`Sequencer`]'s queue under that same lock, so the queue is in id order. Whichever publisher finds
//! nobody dispatching becomes the dispatcher: it takes the whole queue, dispatches it in order with no lock
//! held, and goes on until the queue is empty; a publisher that finds someone dispatching leaves its event
//! to them and returns at once (its event is stored and queued for live delivery, which is what the `200`
//! promises). So two events can never be dispatched out of id order, and a publish to a quiet topic does
//! not wait behind a large fan-out.
//!
//! Memory is bounded twice: each topic keeps at most `--history-size` events (and none older than
//! `--history-ttl`), and all topics together at most `--max-history-bytes`: past that, the oldest events of
//! the whole node are evicted first, as if trimmed. Expiry also goes oldest first across the whole node, on
//! every publish and every read, from the same id-ordered queue, so it costs what it drops. A topic left
//! empty (evicted or expired) is forgotten: what stays is, per hash bucket of topic names, the newest id a
//! forgotten topic lost, so that a client resuming on one from before that id gets `herald.reset`
//! (`trimmed`) and an eviction or expiry is never silent (the reset may be spurious for a topic that
//! never had events or that shares the bucket, which only costs that client a reload).
//!
//! Nothing survives a restart. Ids are `<ms>-<seq>` from the wall clock, and the first id a process may
//! issue is `<start ms>-0`: an id below that was issued before this process started, its history is gone,
//! and the client gets `herald.reset` instead of silence.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::idempotency::{Claim, KeyTable};
use super::{judge_last_id, Backend, HistoryLimits, NewEvent, PublishOptions, Published, Replay, Reset};
use crate::error::Error;
use crate::hub::{Hub, Registration};
use crate::id::{EventId, LastEventId};
use crate::metrics::Metrics;
use crate::sse::Event;
use crate::topic::Topic;

/// History in this process's memory.
#[derive(Debug)]
pub struct MemoryBackend {
    hub: Arc<Hub>,
    history: HistoryLimits,
    /// The first id this process may issue; older ids are from before a restart.
    epoch: EventId,
    /// The bound on all topics' history together, in bytes as [`State::held`] counts them.
    max_bytes: usize,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    /// Events stored but not yet handed to the hub, in id order; see "Dispatch in id order" above.
    sequencer: Mutex<Sequencer>,
    /// `Idempotency-Key`s used in the last ten minutes.
    keys: KeyTable,
}

/// The dispatch queue of the memory backend.
#[derive(Debug, Default)]
struct Sequencer {
    /// Events waiting for the dispatcher, in id order (they join under the state lock that makes ids).
    queue: VecDeque<Arc<Event>>,
    /// A publisher is dispatching: it will take whatever joins the queue meanwhile.
    busy: bool,
}

/// Clears [`Sequencer::busy`] if the dispatcher unwinds, so that dispatch does not stop for good.
struct Dispatching<'a>(&'a Mutex<Sequencer>);

impl Drop for Dispatching<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.lock().unwrap_or_else(PoisonError::into_inner).busy = false;
        }
    }
}

/// Hash buckets of [`State::forgotten`] (64 KiB of ids).
const FORGOTTEN_BUCKETS: usize = 4096;

#[derive(Debug)]
struct State {
    last_issued: Option<EventId>,
    /// Topics that retain at least one event; a topic left empty is forgotten (see `forgotten`).
    topics: HashMap<Topic, TopicHistory>,
    /// Every retained (topic, id) in publish order, which is id order, oldest first: the queue of the
    /// node's oldest events, for eviction and for expiry. Entries whose event a topic has already trimmed
    /// are stale and skipped; see [`State::compact`].
    order: VecDeque<(Topic, EventId)>,
    /// Events retained, counted once per topic.
    entries: usize,
    /// What the retained events and the topics themselves hold, as [`entry_bytes`] and
    /// [`TopicHistory::own_bytes`] count it; [`State::held`] adds the tables.
    bytes: usize,
    /// What a resume needs of the topics forgotten once empty: per hash bucket of topic names, the newest
    /// id dropped from a forgotten topic of that bucket ([`EventId::ZERO`]: none). A topic absent from
    /// `topics` may have lost events up to its bucket's id. The bound is never short, and being shared by
    /// a bucket's topics it is sometimes long (a spurious `herald.reset`, which costs a client a reload),
    /// but it stays 64 KiB however many topics come and go.
    forgotten: Box<[EventId]>,
}

// What the history holds, counted as the allocator hands it out: `--max-history-bytes` bounds memory, so
// everything that grows with the history counts, with its real size. Topic names are interned (the map's
// key is the one copy, shared by the topic's events and `order` entries) and counted once per topic.

/// What the allocator takes for an `n`-byte allocation (glibc malloc: an 8-byte header, 16-byte
/// granules, 32 bytes at least).
fn heap(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    (n + 8).next_multiple_of(16).max(32)
}

/// Reference counts in front of the value of an `Arc`.
const ARC_HEADER: usize = 2 * std::mem::size_of::<usize>();
/// The `Shared` block `bytes` allocates for a buffer split after it was written (an `sse::Chunk`).
const BYTES_SHARED: usize = 5 * std::mem::size_of::<usize>();
/// Room a chunk's buffer keeps beyond its wire bytes: the unused part of the reserved chunk-size line.
const CHUNK_SLACK: usize = 8;

/// What one event holds, once however many topics retain it: the `Arc<Event>`, its topic list, and its
/// encoded bytes.
fn event_bytes(event: &Event) -> usize {
    heap(ARC_HEADER + std::mem::size_of::<Event>())
        + heap(std::mem::size_of_val::<[Topic]>(&event.topics))
        + heap(event.chunk.wire().len() + CHUNK_SLACK)
        + heap(BYTES_SHARED)
}

/// One topic's share of a retained event: [`event_bytes`] split between the event's topics, so that the
/// event is counted once in all (rounded up) and each topic's trim or eviction gives back its share.
fn entry_bytes(event: &Event) -> usize {
    event_bytes(event).div_ceil(event.topics.len().max(1))
}

/// The bucket of `topic` in [`State::forgotten`]. The hash is fixed, so the same topic always lands in
/// the same bucket.
fn forgotten_bucket(topic: &str) -> usize {
    let mut hasher = DefaultHasher::new();
    topic.hash(&mut hasher);
    (hasher.finish() % FORGOTTEN_BUCKETS as u64) as usize
}

impl State {
    fn new() -> Self {
        State {
            last_issued: None,
            topics: HashMap::new(),
            order: VecDeque::new(),
            entries: 0,
            bytes: 0,
            forgotten: vec![EventId::ZERO; FORGOTTEN_BUCKETS].into_boxed_slice(),
        }
    }

    /// The newest id a forgotten topic named `topic` may have lost, if any.
    fn forgotten_through(&self, topic: &str) -> Option<EventId> {
        Some(self.forgotten[forgotten_bucket(topic)]).filter(|id| *id != EventId::ZERO)
    }

    /// What the history holds in all: [`State::bytes`] plus the buffers of the topic map and the `order`
    /// queue, at their capacity. (The forgotten topics' buckets, a fixed 64 KiB, are not history.)
    fn held(&self) -> usize {
        let slot = std::mem::size_of::<(Topic, TopicHistory)>() + 1; // hashbrown: one control byte a slot
        let map = match self.topics.capacity() {
            0 => 0,
            capacity => heap((capacity * 8 / 7).next_power_of_two() * slot),
        };
        self.bytes + map + heap(self.order.capacity() * std::mem::size_of::<(Topic, EventId)>())
    }

    /// Counts the events `trim` removed from a topic.
    fn forget(&mut self, removed: &[Arc<Event>]) {
        self.entries -= removed.len();
        self.bytes -= removed.iter().map(|e| entry_bytes(e)).sum::<usize>();
    }

    /// Drops the entry `(topic, id)` taken from the front of `order`: the event leaves the topic's history
    /// if it is still its oldest (otherwise the topic's own limit trimmed it already and the entry was
    /// stale). A topic left empty is forgotten, its trimmed-through id folded into `forgotten`.
    fn drop_oldest(&mut self, topic: Topic, id: EventId) {
        let Some(history) = self.topics.get_mut(&topic) else { return };
        if history.events.front().is_none_or(|e| e.id != id) {
            return;
        }
        let own = history.own_bytes(&topic);
        if let Some(event) = history.events.pop_front() {
            history.trimmed_through = Some(id);
            self.entries -= 1;
            self.bytes -= entry_bytes(&event);
        }
        if history.events.is_empty() {
            self.bytes -= own;
            self.topics.remove(&topic);
            let through = &mut self.forgotten[forgotten_bucket(&topic)];
            *through = (*through).max(id);
            if self.topics.capacity() > 64 && self.topics.len() * 4 < self.topics.capacity() {
                self.topics.shrink_to(self.topics.len() * 2);
            }
        } else {
            history.shrink();
            self.bytes = self.bytes - own + history.own_bytes(&topic);
        }
    }

    /// Evicts the node's oldest events until the history fits in `max_bytes`.
    fn evict(&mut self, max_bytes: usize) {
        while self.held() > max_bytes {
            let Some((topic, id)) = self.order.pop_front() else { break };
            self.drop_oldest(topic, id);
            self.shrink_order();
        }
        self.compact();
    }

    /// Drops every event older than `cutoff` (`--history-ttl`), from every topic. `order` is in id order,
    /// so this reads only what it drops (and the stale entries before it), never all the topics.
    fn expire(&mut self, cutoff: Option<EventId>) {
        let Some(cutoff) = cutoff else { return };
        while self.order.front().is_some_and(|(_, id)| *id < cutoff) {
            if let Some((topic, id)) = self.order.pop_front() {
                self.drop_oldest(topic, id);
            }
        }
        self.shrink_order();
    }

    /// Drops stale entries from `order` once they outnumber the live ones, so that it stays proportional
    /// to what is retained.
    fn compact(&mut self) {
        if self.order.len() <= 2 * self.entries + 1024 {
            return;
        }
        let topics = &self.topics;
        self.order.retain(|(topic, id)| {
            topics.get(topic).is_some_and(|h| h.events.front().is_some_and(|front| front.id <= *id))
        });
        self.shrink_order();
    }

    /// Gives back most of `order`'s buffer once it is mostly empty (halving at most once per as many pops
    /// as it keeps, so shrinking costs O(1) a pop).
    fn shrink_order(&mut self) {
        if self.order.capacity() > 1024 && self.order.len() * 4 < self.order.capacity() {
            self.order.shrink_to(self.order.len() * 2);
        }
    }
}

#[derive(Debug, Default)]
struct TopicHistory {
    events: VecDeque<Arc<Event>>,
    /// The newest id trimmed away; a client whose last id is older has a gap.
    trimmed_through: Option<EventId>,
}

impl TopicHistory {
    /// What the topic holds besides its share of its events: its name (one copy, see
    /// [`MemoryBackend::publish`]) and its queue's buffer. (Its slot in the map is counted with the map.)
    fn own_bytes(&self, name: &str) -> usize {
        heap(ARC_HEADER + name.len()) + heap(self.events.capacity() * std::mem::size_of::<Arc<Event>>())
    }

    /// Gives back most of the queue's buffer once it is mostly empty.
    fn shrink(&mut self) {
        if self.events.capacity() > 16 && self.events.len() * 4 < self.events.capacity() {
            self.events.shrink_to(self.events.len() * 2);
        }
    }

    /// Drops the oldest events beyond `limits.size`; returns them. (Age is the node's business: see
    /// [`State::expire`].)
    fn trim(&mut self, limits: &HistoryLimits) -> Vec<Arc<Event>> {
        let mut removed = Vec::new();
        while self.events.len() > limits.size {
            let Some(oldest) = self.events.pop_front() else { break };
            self.trimmed_through = Some(oldest.id);
            removed.push(oldest);
        }
        removed
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl MemoryBackend {
    /// Makes a backend keeping `history` per topic, feeding a new hub; all topics together are unbounded
    /// until [`MemoryBackend::with_max_bytes`].
    pub fn new(history: HistoryLimits, queue_size: usize, metrics: Arc<Metrics>) -> Self {
        MemoryBackend {
            hub: Arc::new(Hub::new(queue_size, metrics.clone())),
            history: HistoryLimits { size: history.size.max(1), ..history },
            epoch: EventId::new(now_ms(), 0),
            max_bytes: usize::MAX,
            metrics,
            state: Mutex::new(State::new()),
            sequencer: Mutex::default(),
            keys: KeyTable::default(),
        }
    }

    /// Bounds all topics' history together to about `max_bytes` (`--max-history-bytes`).
    #[must_use]
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Dispatches the queued events in id order unless another publisher is doing so (it then takes ours
    /// too). Holds no lock while dispatching: the queue's lock only to take what is waiting.
    fn dispatch_queued(&self) {
        let mut batch = {
            let mut sequencer = self.sequencer.lock().unwrap_or_else(PoisonError::into_inner);
            if sequencer.busy {
                return;
            }
            sequencer.busy = true;
            VecDeque::new()
        };
        let _unwind = Dispatching(&self.sequencer);
        loop {
            {
                let mut sequencer = self.sequencer.lock().unwrap_or_else(PoisonError::into_inner);
                if sequencer.queue.is_empty() {
                    sequencer.busy = false;
                    return;
                }
                std::mem::swap(&mut batch, &mut sequencer.queue);
            }
            for event in batch.drain(..) {
                self.hub.dispatch(&event);
            }
        }
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    async fn publish(&self, event: NewEvent) -> Result<EventId, Error> {
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let state = &mut *guard;
        let now = now_ms();
        state.expire(self.history.cutoff(now));
        let id = state.last_issued.unwrap_or(self.epoch).next(now);
        state.last_issued = Some(id);
        // One copy of each topic name: a topic the map knows lends the event its key.
        let topics: Box<[Topic]> = event
            .topics
            .into_iter()
            .map(|t| state.topics.get_key_value(&t).map_or(t, |(key, _)| key.clone()))
            .collect();
        let event = Arc::new(Event::new(id, topics, event.kind.as_deref(), &event.data));
        let share = entry_bytes(&event);
        for topic in event.topics.iter() {
            // A topic forgotten before starts out "trimmed" through what it may have lost.
            let forgotten = state.forgotten_through(topic);
            let (history, own_before) = match state.topics.entry(topic.clone()) {
                Entry::Occupied(known) => {
                    let history = known.into_mut();
                    let own = history.own_bytes(topic);
                    (history, own)
                }
                Entry::Vacant(new) => {
                    (new.insert(TopicHistory { trimmed_through: forgotten, ..TopicHistory::default() }), 0)
                }
            };
            history.events.push_back(event.clone());
            let removed = history.trim(&self.history);
            let own_after = history.own_bytes(topic);
            state.order.push_back((topic.clone(), id));
            state.entries += 1;
            state.bytes = state.bytes + share + own_after - own_before;
            state.forget(&removed);
        }
        state.evict(self.max_bytes);
        self.metrics.history_bytes.store(state.held() as u64, std::sync::atomic::Ordering::Relaxed);
        // Queued under the state lock, so the queue is in id order.
        self.sequencer.lock().unwrap_or_else(PoisonError::into_inner).queue.push_back(event);
        drop(guard);
        self.dispatch_queued();
        Ok(id)
    }

    async fn publish_with(&self, event: NewEvent, options: PublishOptions) -> Result<Published, Error> {
        let Some(key) = &options.idempotency_key else { return self.publish(event).await.map(Published::new) };
        match self.keys.claim(key).await? {
            Claim::Done(id) => Ok(Published { id, duplicate: true, replicated: None }),
            Claim::Owner(owner) => {
                let id = self.publish(event).await?;
                owner.finish(id);
                Ok(Published::new(id))
            }
        }
    }

    async fn subscribe(&self, topics: &[Topic]) -> Result<Registration, Error> {
        let (mut registration, _) = self.hub.register(topics)?;
        // An id issued after this read is queued for dispatch after the registration: it reaches the mailbox.
        // Before the first event the position is the epoch, which no event has and which `replay` accepts.
        let issued = self.state.lock().unwrap_or_else(PoisonError::into_inner).last_issued;
        registration.set_live_from(Some(issued.unwrap_or(self.epoch)));
        Ok(registration)
    }

    async fn replay(&self, topics: &[Topic], last: LastEventId) -> Result<Replay, Error> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // Expire by age here too: a node nobody publishes to expires only when read.
        state.expire(self.history.cutoff(now_ms()));
        state.compact();
        let (after, mut reset) = judge_last_id(last, self.epoch, state.last_issued, topics);
        let mut events = Vec::new();
        let mut trimmed = Vec::new();
        for topic in topics {
            let Some(history) = state.topics.get(topic) else {
                if state.forgotten_through(topic).is_some_and(|t| t > after) {
                    trimmed.push(topic.clone());
                }
                continue;
            };
            if history.trimmed_through.is_some_and(|t| t > after) {
                trimmed.push(topic.clone());
            }
            let start = history.events.partition_point(|e| e.id <= after);
            events.extend(history.events.range(start..).cloned());
        }
        self.metrics.history_bytes.store(state.held() as u64, std::sync::atomic::Ordering::Relaxed);
        drop(state);
        if reset.is_none() && !trimmed.is_empty() {
            reset = Some(Reset { topics: trimmed, reason: "trimmed" });
        }
        if topics.len() > 1 {
            events.sort_unstable_by_key(|e| e.id);
            events.dedup_by_key(|e| e.id);
        }
        Ok(Replay { events, reset })
    }

    async fn ready(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(history: usize) -> MemoryBackend {
        MemoryBackend::new(HistoryLimits { size: history, ttl: None }, 64, Arc::default())
    }

    async fn publish(b: &MemoryBackend, topics: &[&str]) -> EventId {
        let topics = topics.iter().map(|t| Topic::from(*t)).collect();
        b.publish(NewEvent { topics, kind: None, data: "d".into() }).await.unwrap()
    }

    fn ids(replay: &Replay) -> Vec<EventId> {
        replay.events.iter().map(|e| e.id).collect()
    }

    #[tokio::test]
    async fn ids_rise_and_replay_merges_topics() {
        let b = backend(10);
        let a1 = publish(&b, &["a"]).await;
        let ab = publish(&b, &["a", "b"]).await;
        let b1 = publish(&b, &["b"]).await;
        assert!(a1 < ab && ab < b1 && a1 >= b.epoch);
        let topics: Vec<Topic> = vec!["a".into(), "b".into()];
        let r = b.replay(&topics, LastEventId::Id(a1)).await.unwrap();
        assert_eq!(ids(&r), [ab, b1]);
        assert_eq!(r.reset, None);
    }

    #[tokio::test]
    async fn resets() {
        let b = backend(2);
        let first = publish(&b, &["a"]).await;
        let second = publish(&b, &["a"]).await;
        let _ = publish(&b, &["a"]).await;
        let _ = publish(&b, &["a"]).await;
        let kept = publish(&b, &["b"]).await;
        let topics: Vec<Topic> = vec!["a".into(), "b".into()];
        let r = b.replay(&topics, LastEventId::Id(first)).await.unwrap();
        assert_eq!(r.reset, Some(Reset { topics: vec!["a".into()], reason: "trimmed" }));
        assert_eq!(r.events.len(), 3);
        let r = b.replay(&topics, LastEventId::Id(second)).await.unwrap();
        assert_eq!(r.reset, None, "only events up to the client's own id were trimmed");
        let r = b.replay(&topics, LastEventId::Id(kept)).await.unwrap();
        assert!(r.reset.is_none() && r.events.is_empty());
        for (last, reason) in [
            (LastEventId::Malformed, "malformed_id"),
            (LastEventId::Id(EventId::new(kept.ms + 10_000, 0)), "unknown_id"),
            (LastEventId::Id(EventId::new(b.epoch.ms - 1, 5)), "history_lost"),
        ] {
            let r = b.replay(&topics, last).await.unwrap();
            assert_eq!(r.reset.map(|r| r.reason), Some(reason));
            assert_eq!(r.events.len(), 3, "everything retained is replayed after a reset");
        }
    }

    #[tokio::test]
    async fn expired_events_count_as_trimmed() {
        let ttl = std::time::Duration::from_millis(50);
        let b = MemoryBackend::new(HistoryLimits { size: 10, ttl: Some(ttl) }, 64, Arc::default());
        let first = publish(&b, &["a"]).await;
        let second = publish(&b, &["a"]).await;
        tokio::time::sleep(ttl * 2).await;
        let topics: Vec<Topic> = vec!["a".into(), "b".into()];
        // Read without any publish in between: expiry happens on read too.
        let r = b.replay(&topics, LastEventId::Id(first)).await.unwrap();
        assert_eq!(r.reset, Some(Reset { topics: vec!["a".into()], reason: "trimmed" }));
        assert!(r.events.is_empty());
        let third = publish(&b, &["a"]).await;
        let r = b.replay(&topics, LastEventId::Id(second)).await.unwrap();
        assert_eq!(r.reset, None, "the client had seen everything that expired");
        assert_eq!(ids(&r), [third]);
    }

    /// Issue 7, defect 3: a topic whose events had all expired stayed in the map for ever.
    #[tokio::test]
    async fn expired_topics_are_forgotten_and_still_reported() {
        let ttl = std::time::Duration::from_millis(50);
        let b = MemoryBackend::new(HistoryLimits { size: 10, ttl: Some(ttl) }, 64, Arc::default());
        let names: Vec<Topic> = (0..1000).map(|i| Topic::from(format!("t{i}"))).collect();
        let mut sent = Vec::new();
        for topic in &names {
            sent.push(publish(&b, &[topic]).await);
        }
        tokio::time::sleep(ttl * 2).await;
        let fresh = publish(&b, &["fresh"]).await;
        {
            let state = b.state.lock().unwrap();
            assert_eq!(state.topics.len(), 1, "topics kept after their events expired");
            assert!(state.topics.contains_key("fresh"));
            assert_eq!((state.entries, state.order.len()), (1, 1));
            let fresh = &state.topics["fresh"];
            assert_eq!(state.bytes, entry_bytes(&fresh.events[0]) + fresh.own_bytes("fresh"));
        }
        // A client from before the expiry is told, on every topic that lost an event it had not seen...
        let r = b.replay(&names[1..], LastEventId::Id(sent[0])).await.unwrap();
        assert_eq!(r.reset, Some(Reset { topics: names[1..].to_vec(), reason: "trimmed" }));
        assert!(r.events.is_empty());
        // ...and a client that had seen them all lost nothing.
        let r = b.replay(&names, LastEventId::Id(sent[999])).await.unwrap();
        assert_eq!(r.reset, None);
        let mut all = names.clone();
        all.push("fresh".into());
        let r = b.replay(&all, LastEventId::Id(sent[999])).await.unwrap();
        assert_eq!((&r.reset, ids(&r)), (&None, vec![fresh]));
        // Reading sweeps too: with no publish, the last topic expires and is forgotten.
        tokio::time::sleep(ttl * 2).await;
        let r = b.replay(&["fresh".into()], LastEventId::Id(sent[999])).await.unwrap();
        assert_eq!(r.reset.map(|r| r.topics), Some(vec!["fresh".into()]));
        let state = b.state.lock().unwrap();
        assert!(state.topics.is_empty() && state.order.is_empty());
        assert_eq!((state.entries, state.bytes), (0, 0));
    }

    #[tokio::test]
    async fn fresh_backend_knows_no_id_but_its_epoch() {
        let b = backend(2);
        let r = b.replay(&["a".into()], LastEventId::Id(EventId::new(b.epoch.ms, 1))).await.unwrap();
        assert_eq!(r.reset.map(|r| r.reason), Some("unknown_id"));
        // The epoch is "before the first event": resuming from it is no reset, before or after events.
        let r = b.replay(&["a".into()], LastEventId::Id(b.epoch)).await.unwrap();
        assert!(r.reset.is_none() && r.events.is_empty(), "{r:?}");
        let first = publish(&b, &["a"]).await;
        let r = b.replay(&["a".into()], LastEventId::Id(b.epoch)).await.unwrap();
        assert!(r.reset.is_none(), "{r:?}");
        assert_eq!(ids(&r), [first]);
    }

    #[tokio::test]
    async fn subscriptions_learn_where_they_went_live() {
        let b = backend(10);
        let fresh = b.subscribe(&["a".into()]).await.unwrap();
        assert_eq!(fresh.live_from(), Some(b.epoch));
        let first = publish(&b, &["b"]).await;
        let later = b.subscribe(&["a".into()]).await.unwrap();
        assert_eq!(later.live_from(), Some(first));
        // Resuming from either position gives what came after it, without a reset.
        let second = publish(&b, &["a"]).await;
        for position in [fresh.live_from(), later.live_from()] {
            let r = b.replay(&["a".into()], LastEventId::Id(position.unwrap())).await.unwrap();
            assert!(r.reset.is_none(), "{r:?}");
            assert_eq!(ids(&r), [second]);
        }
    }

    #[tokio::test]
    async fn the_byte_bound_evicts_the_oldest_events_and_says_so() {
        // What ten events on four topics hold, counted on a backend without a bound.
        let unbounded = MemoryBackend::new(HistoryLimits { size: 100, ttl: None }, 64, Arc::default());
        for i in 0..10 {
            publish(&unbounded, &[&format!("t{}", i % 4)]).await;
        }
        let ten = unbounded.state.lock().unwrap().held();
        // Room for about ten events in all; each topic alone could keep a hundred.
        let b = MemoryBackend::new(HistoryLimits { size: 100, ttl: None }, 64, Arc::default()).with_max_bytes(ten);
        let mut published = Vec::new();
        for i in 0..40 {
            published.push(publish(&b, &[&format!("t{}", i % 4)]).await);
            assert!(counted(&b) <= ten as u64, "{} bytes held, bound {ten}", counted(&b));
        }
        {
            let state = b.state.lock().unwrap();
            assert_eq!(state.held() as u64, counted(&b));
            assert!(state.entries >= 8, "evicted more than needed: {} left", state.entries);
            assert!(state.order.len() <= 2 * state.entries + 1024);
        }
        // t0's oldest events are gone: resuming from its first id is a reset; from the last id, nothing.
        let t0: Vec<Topic> = vec!["t0".into()];
        let r = b.replay(&t0, LastEventId::Id(published[0])).await.unwrap();
        assert_eq!(r.reset, Some(Reset { topics: t0.clone(), reason: "trimmed" }));
        let r = b.replay(&t0, LastEventId::Id(published[36])).await.unwrap();
        assert!(r.reset.is_none() && r.events.is_empty(), "{r:?}");
        // A topic evicted entirely is forgotten, and still reported to a client from before the eviction.
        let unbounded = MemoryBackend::new(HistoryLimits { size: 100, ttl: None }, 64, Arc::default());
        publish(&unbounded, &["a"]).await;
        let one = unbounded.state.lock().unwrap().held();
        let c = MemoryBackend::new(HistoryLimits { size: 100, ttl: None }, 64, Arc::default())
            .with_max_bytes(one + one / 4);
        let first = publish(&c, &["first"]).await;
        let old = publish(&c, &["old"]).await;
        let before = publish(&c, &["x"]).await;
        let _ = publish(&c, &["y"]).await;
        assert!(!c.state.lock().unwrap().topics.contains_key("old"));
        let r = c.replay(&["old".into()], LastEventId::Id(first)).await.unwrap();
        assert_eq!(r.reset.map(|r| r.reason), Some("trimmed"));
        // A client that had seen all of it lost nothing (other forgotten topics do not count, unless their
        // names share a hash bucket).
        let r = c.replay(&["old".into()], LastEventId::Id(old)).await.unwrap();
        assert_eq!(r.reset, None);
        // ...also when it comes back with new events: `before` was evicted from it, unseen by a client at `old`.
        let again = publish(&c, &["x"]).await;
        let r = c.replay(&["x".into()], LastEventId::Id(old)).await.unwrap();
        assert_eq!(r.reset.as_ref().map(|r| r.reason), Some("trimmed"));
        assert_eq!(ids(&r), [again]);
        // A client that had seen `before` lost nothing.
        let r = c.replay(&["x".into()], LastEventId::Id(before)).await.unwrap();
        assert!(r.reset.is_none(), "{r:?}");
        assert_eq!(ids(&r), [again]);
    }

    /// What the backend reports as held (`herald_history_bytes`).
    fn counted(b: &MemoryBackend) -> u64 {
        b.metrics.history_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Issue 7, defect 9: topic names were not counted at all, and every event held its own copy of each.
    #[tokio::test]
    async fn topic_names_are_counted_and_shared() {
        let mut held = Vec::new();
        for width in [1, 256] {
            let b = backend(10);
            for i in 0..100 {
                publish(&b, &[&format!("{i:0>width$}")]).await;
            }
            held.push(counted(&b));
        }
        assert!(
            held[1] >= held[0] + 100 * 250,
            "100 topics of 256 bytes counted {} bytes, of 1-2 bytes {}",
            held[1],
            held[0]
        );
        // One copy of a name, however many events the topic keeps: the map's key, shared by every event
        // and entry of the topic. A second event costs as much on long names as on short ones.
        let mut second = Vec::new();
        for name in ["n".repeat(256), "n".into()] {
            let b = backend(10);
            publish(&b, &[&name, "other"]).await;
            let one = counted(&b);
            publish(&b, &[&name, "other"]).await;
            second.push(counted(&b) - one);
            let state = b.state.lock().unwrap();
            let (key, history) = state.topics.get_key_value(name.as_str()).unwrap();
            assert!(history.events.iter().all(|e| e.topics.iter().any(|t| Arc::ptr_eq(t, key))));
            assert!(state.order.iter().all(|(t, _)| Arc::ptr_eq(t, key) || &**t == "other"));
        }
        assert_eq!(second[0], second[1], "a second event on a long topic counted more than on a short one");
    }

    #[tokio::test]
    async fn stale_order_entries_stay_proportional() {
        let b = backend(3);
        for _ in 0..10_000 {
            publish(&b, &["hot"]).await;
        }
        let state = b.state.lock().unwrap();
        assert_eq!(state.entries, 3);
        assert!(state.order.len() <= 2 * state.entries + 1024, "order holds {}", state.order.len());
        let hot = &state.topics["hot"];
        assert_eq!(state.bytes, 3 * entry_bytes(&hot.events[0]) + hot.own_bytes("hot"));
    }
}

#[cfg(test)]
mod dispatch_order {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    use super::*;
    use crate::hub::concurrency::{finishes, gate};
    use crate::hub::Drained;

    fn event(topics: &[&str]) -> NewEvent {
        NewEvent { topics: topics.iter().map(|t| Topic::from(*t)).collect(), kind: None, data: "d".into() }
    }

    /// Issue 8: dispatch no longer happens under the state lock, so ids must still reach every connection
    /// in order. Eight publishers race on overlapping topic sets while every connection is drained
    /// concurrently; each connection must see strictly rising ids (a repeat of the same id, an event of
    /// two of its topics drained between the two pushes, is what the stream's id filter drops) and, in the
    /// end, exactly the events of its topics.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_publishers_keep_id_order_on_every_connection() {
        const PUBLISHERS: usize = 8;
        const EACH: usize = 300;
        let sets: [&[&str]; 5] = [&["a"], &["b"], &["a", "b"], &["c"], &["b", "c"]];
        let b = Arc::new(MemoryBackend::new(HistoryLimits { size: 10, ttl: None }, 100_000, Arc::default()));
        let subscriptions: [&[&str]; 5] = [&["a"], &["b"], &["a", "b"], &["a", "c"], &["a", "b", "c"]];
        let mut drainers = Vec::new();
        let stop = Arc::new(AtomicBool::new(false));
        for (k, topics) in subscriptions.iter().cycle().take(20).enumerate() {
            let topics: Vec<Topic> = topics.iter().map(|t| Topic::from(*t)).collect();
            let registration = b.subscribe(&topics).await.unwrap();
            let stop = stop.clone();
            drainers.push(tokio::task::spawn_blocking(move || {
                let mut cx = Context::from_waker(Waker::noop());
                let (mut seen, mut out, mut last) = (Vec::new(), Vec::new(), EventId::ZERO);
                loop {
                    let done = stop.load(Ordering::Acquire);
                    out.clear();
                    match registration.mailbox().poll_drain(&mut cx, &mut out, 1 + k % 7) {
                        Poll::Ready(Drained::Events) => {}
                        Poll::Ready(other) => panic!("connection {k}: {other:?}"),
                        Poll::Pending if done => return (topics, seen),
                        Poll::Pending => std::thread::yield_now(),
                    }
                    for e in &out {
                        assert!(e.id >= last, "connection {k} got {} after {last}", e.id);
                        if e.id > last {
                            seen.push(e.id);
                            last = e.id;
                        }
                    }
                }
            }));
        }
        let mut publishers = Vec::new();
        for p in 0..PUBLISHERS {
            let b = b.clone();
            publishers.push(tokio::spawn(async move {
                let mut sent = Vec::new();
                for i in 0..EACH {
                    let topics = sets[(p + i) % sets.len()];
                    sent.push((b.publish(event(topics)).await.unwrap(), topics));
                    if i % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                sent
            }));
        }
        let mut all = Vec::new();
        for p in publishers {
            all.extend(p.await.unwrap());
        }
        stop.store(true, Ordering::Release);
        for d in drainers {
            let (topics, seen) = d.await.unwrap();
            let mut expected: Vec<EventId> = all
                .iter()
                .filter(|(_, published)| published.iter().any(|t| topics.iter().any(|s| &**s == *t)))
                .map(|(id, _)| *id)
                .collect();
            expected.sort_unstable();
            assert_eq!(seen.len(), expected.len(), "{topics:?}: got {} of {}", seen.len(), expected.len());
            assert_eq!(seen, expected, "{topics:?}");
        }
        assert_eq!(all.iter().map(|(id, _)| *id).collect::<HashSet<_>>().len(), PUBLISHERS * EACH);
    }

    /// Issue 8: the backend dispatched under its state lock, so a subscription, a replay and a publish to
    /// a quiet topic all waited for a large fan-out. A fan-out is held here in the middle of its wakes.
    #[test]
    fn nothing_waits_for_another_topics_fan_out() {
        let b = Arc::new(MemoryBackend::new(HistoryLimits { size: 10, ttl: None }, 64, Arc::default()));
        let run = |f| tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f);
        let big = run(b.subscribe(&["big".into()])).unwrap();
        let (waker, reached, release) = gate();
        let mut out = Vec::new();
        assert!(big.mailbox().poll_drain(&mut Context::from_waker(&waker), &mut out, 8).is_pending());
        let fan_out = {
            let b = b.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                rt.block_on(b.publish(event(&["big"]))).unwrap()
            })
        };
        reached.recv_timeout(Duration::from_secs(5)).expect("the fan-out reached the gate");
        let quiet = {
            let b = b.clone();
            finishes(move || {
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let quiet = rt.block_on(b.subscribe(&["quiet".into()])).unwrap();
                let id = rt.block_on(b.publish(event(&["quiet"]))).unwrap();
                let replay = rt.block_on(b.replay(&["quiet".into()], LastEventId::Id(b.epoch))).unwrap();
                assert_eq!(replay.events.iter().map(|e| e.id).collect::<Vec<_>>(), [id]);
                drop(quiet);
            })
        };
        let _ = release.send(());
        let first = fan_out.join().unwrap();
        assert!(quiet, "a subscription, a publish or a replay waited for another topic's fan-out");
        // The event queued behind the held fan-out was dispatched once it finished, after it, in id order.
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        assert_eq!(big.mailbox().poll_drain(&mut cx, &mut out, 8), Poll::Ready(Drained::Events));
        assert_eq!(out.iter().map(|e| e.id).collect::<Vec<_>>(), [first]);
    }
}
