//! The in-memory backend: one process, history kept in memory, nothing to install.
//!
//! Publishing takes one lock: the id is made, the event stored in each topic's history and dispatched to
//! the hub before the lock is released. A subscriber registers with the hub before reading history, so
//! every event is either in the history it reads or in its mailbox (often both; the id filter drops the
//! copy).
//!
//! Memory is bounded twice: each topic keeps at most `--history-size` events (and none older than
//! `--history-ttl`), and all topics together at most `--max-history-bytes`: past that, the oldest events of
//! the whole node are evicted first, as if trimmed, and a topic left empty is forgotten. A client resuming on
//! a forgotten topic from before the newest eviction gets `herald.reset` (`trimmed`), so an eviction is never
//! silent (it may be spurious for a topic that never had events, which only costs that client a reload).
//!
//! Nothing survives a restart. Ids are `<ms>-<seq>` from the wall clock, and the first id a process may
//! issue is `<start ms>-0`: an id below that was issued before this process started, its history is gone,
//! and the client gets `herald.reset` instead of silence.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::{judge_last_id, Backend, HistoryLimits, NewEvent, Replay, Reset};
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
    /// The bound on all topics' history together, in (approximate) bytes.
    max_bytes: usize,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last_issued: Option<EventId>,
    topics: HashMap<Topic, TopicHistory>,
    /// Every retained (topic, id) in publish order, oldest first, for evicting the node's oldest events.
    /// Entries whose event a topic has already trimmed are stale and skipped; see [`State::compact`].
    order: VecDeque<(Topic, EventId)>,
    /// Events retained, counted once per topic.
    entries: usize,
    /// The history's size, as [`entry_bytes`] counts it.
    bytes: usize,
    /// The newest id evicted from a topic that was then forgotten.
    evicted_through: Option<EventId>,
}

/// What one retained event costs, counted once per topic: its encoded bytes plus bookkeeping.
fn entry_bytes(event: &Event) -> usize {
    const OVERHEAD: usize = 96;
    event.chunk.wire().len() + OVERHEAD
}

impl State {
    /// Counts the events `trim` removed from a topic.
    fn forget(&mut self, removed: &[Arc<Event>]) {
        self.entries -= removed.len();
        self.bytes -= removed.iter().map(|e| entry_bytes(e)).sum::<usize>();
    }

    /// Evicts the node's oldest events until the history fits in `max_bytes`.
    fn evict(&mut self, max_bytes: usize) {
        while self.bytes > max_bytes {
            let Some((topic, id)) = self.order.pop_front() else { break };
            let Some(history) = self.topics.get_mut(&topic) else { continue };
            if history.events.front().is_none_or(|e| e.id != id) {
                continue; // already trimmed by the topic's own limits
            }
            if let Some(event) = history.events.pop_front() {
                history.trimmed_through = Some(id);
                self.entries -= 1;
                self.bytes -= entry_bytes(&event);
            }
            if history.events.is_empty() {
                self.topics.remove(&topic);
                self.evicted_through = self.evicted_through.max(Some(id));
            }
        }
        self.compact();
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
    }
}

#[derive(Debug, Default)]
struct TopicHistory {
    events: VecDeque<Arc<Event>>,
    /// The newest id trimmed away; a client whose last id is older has a gap.
    trimmed_through: Option<EventId>,
}

impl TopicHistory {
    /// Drops the oldest events beyond `limits.size`, and those older than `cutoff`; returns them.
    fn trim(&mut self, limits: &HistoryLimits, cutoff: Option<EventId>) -> Vec<Arc<Event>> {
        let mut removed = Vec::new();
        while let Some(oldest) = self.events.front() {
            let expired = cutoff.is_some_and(|cutoff| oldest.id < cutoff);
            if self.events.len() <= limits.size && !expired {
                break;
            }
            self.trimmed_through = Some(oldest.id);
            removed.extend(self.events.pop_front());
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
            state: Mutex::default(),
        }
    }

    /// Bounds all topics' history together to about `max_bytes` (`--max-history-bytes`).
    #[must_use]
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
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
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = now_ms();
        let id = state.last_issued.unwrap_or(self.epoch).next(now);
        let cutoff = self.history.cutoff(now);
        state.last_issued = Some(id);
        let event = Arc::new(Event::new(id, event.topics.into(), event.kind.as_deref(), &event.data));
        let size = entry_bytes(&event);
        for topic in event.topics.iter() {
            // A topic forgotten after an eviction starts out "trimmed" through it: events may be missing.
            let evicted_through = state.evicted_through;
            let history = state
                .topics
                .entry(topic.clone())
                .or_insert_with(|| TopicHistory { trimmed_through: evicted_through, ..TopicHistory::default() });
            history.events.push_back(event.clone());
            let removed = history.trim(&self.history, cutoff);
            state.order.push_back((topic.clone(), id));
            state.entries += 1;
            state.bytes += size;
            state.forget(&removed);
        }
        state.evict(self.max_bytes);
        self.metrics.history_bytes.store(state.bytes as u64, std::sync::atomic::Ordering::Relaxed);
        self.hub.dispatch(&event);
        Ok(id)
    }

    async fn subscribe(&self, topics: &[Topic]) -> Result<Registration, Error> {
        let (mut registration, _) = self.hub.register(topics)?;
        // Publishing dispatches under this lock, so every id issued after this read reaches the mailbox.
        // Before the first event the position is the epoch, which no event has and which `replay` accepts.
        let issued = self.state.lock().unwrap_or_else(PoisonError::into_inner).last_issued;
        registration.set_live_from(Some(issued.unwrap_or(self.epoch)));
        Ok(registration)
    }

    async fn replay(&self, topics: &[Topic], last: LastEventId) -> Result<Replay, Error> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (after, mut reset) = judge_last_id(last, self.epoch, state.last_issued, topics);
        let cutoff = self.history.cutoff(now_ms());
        let mut events = Vec::new();
        let mut trimmed = Vec::new();
        for topic in topics {
            let Some(history) = state.topics.get_mut(topic) else {
                if state.evicted_through.is_some_and(|t| t > after) {
                    trimmed.push(topic.clone());
                }
                continue;
            };
            // Expire by age here too: a topic nobody publishes to is trimmed only when read.
            let removed = history.trim(&self.history, cutoff);
            if history.trimmed_through.is_some_and(|t| t > after) {
                trimmed.push(topic.clone());
            }
            let start = history.events.partition_point(|e| e.id <= after);
            events.extend(history.events.range(start..).cloned());
            state.forget(&removed);
        }
        self.metrics.history_bytes.store(state.bytes as u64, std::sync::atomic::Ordering::Relaxed);
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
        // The size of one event as published here (ids of today's length).
        let one = entry_bytes(&Event::new(EventId::new(now_ms(), 10), Box::new(["t".into()]), None, "d"));
        // Room for about ten events in all; each topic alone could keep a hundred.
        let b = MemoryBackend::new(HistoryLimits { size: 100, ttl: None }, 64, Arc::default()).with_max_bytes(10 * one);
        let mut published = Vec::new();
        for i in 0..40 {
            published.push(publish(&b, &[&format!("t{}", i % 4)]).await);
        }
        {
            let state = b.state.lock().unwrap();
            assert!(state.bytes <= 10 * one, "{} bytes retained, bound {}", state.bytes, 10 * one);
            assert!(state.entries >= 9, "evicted more than needed: {} left", state.entries);
            assert!(state.order.len() <= 2 * state.entries + 1024);
        }
        // t0's oldest events are gone: resuming from its first id is a reset; from the last id, nothing.
        let t0: Vec<Topic> = vec!["t0".into()];
        let r = b.replay(&t0, LastEventId::Id(published[0])).await.unwrap();
        assert_eq!(r.reset, Some(Reset { topics: t0.clone(), reason: "trimmed" }));
        let r = b.replay(&t0, LastEventId::Id(published[36])).await.unwrap();
        assert!(r.reset.is_none() && r.events.is_empty(), "{r:?}");
        // A topic evicted entirely is forgotten, and still reported to a client from before the eviction.
        let c = MemoryBackend::new(HistoryLimits { size: 100, ttl: None }, 64, Arc::default())
            .with_max_bytes(one + one / 2);
        let old = publish(&c, &["old"]).await;
        let before = publish(&c, &["x"]).await;
        let _ = publish(&c, &["y"]).await;
        assert!(!c.state.lock().unwrap().topics.contains_key("old"));
        let r = c.replay(&["old".into()], LastEventId::Id(old)).await.unwrap();
        assert_eq!(r.reset.map(|r| r.reason), Some("trimmed"));
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

    #[tokio::test]
    async fn stale_order_entries_stay_proportional() {
        let b = backend(3);
        for _ in 0..10_000 {
            publish(&b, &["hot"]).await;
        }
        let state = b.state.lock().unwrap();
        assert_eq!(state.entries, 3);
        assert!(state.order.len() <= 2 * state.entries + 1024, "order holds {}", state.order.len());
        assert_eq!(state.bytes, 3 * entry_bytes(&state.topics["hot"].events[0]));
    }
}
