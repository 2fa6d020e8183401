//! The in-memory backend: one process, history kept in memory, nothing to install.
//!
//! Publishing takes one lock: the id is made, the event stored in each topic's history and dispatched to
//! the hub before the lock is released. A subscriber registers with the hub before reading history, so
//! every event is either in the history it reads or in its mailbox (often both; the id filter drops the
//! copy).
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
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last_issued: Option<EventId>,
    topics: HashMap<Topic, TopicHistory>,
}

#[derive(Debug, Default)]
struct TopicHistory {
    events: VecDeque<Arc<Event>>,
    /// The newest id trimmed away; a client whose last id is older has a gap.
    trimmed_through: Option<EventId>,
}

impl TopicHistory {
    /// Drops the oldest events beyond `limits.size`, and those older than `cutoff`.
    fn trim(&mut self, limits: &HistoryLimits, cutoff: Option<EventId>) {
        while let Some(oldest) = self.events.front() {
            let expired = cutoff.is_some_and(|cutoff| oldest.id < cutoff);
            if self.events.len() <= limits.size && !expired {
                break;
            }
            self.trimmed_through = Some(oldest.id);
            self.events.pop_front();
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl MemoryBackend {
    /// Makes a backend keeping `history` per topic, feeding a new hub.
    pub fn new(history: HistoryLimits, queue_size: usize, metrics: Arc<Metrics>) -> Self {
        MemoryBackend {
            hub: Arc::new(Hub::new(queue_size, metrics)),
            history: HistoryLimits { size: history.size.max(1), ..history },
            epoch: EventId::new(now_ms(), 0),
            state: Mutex::default(),
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
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = now_ms();
        let id = state.last_issued.unwrap_or(self.epoch).next(now);
        let cutoff = self.history.cutoff(now);
        state.last_issued = Some(id);
        let event = Arc::new(Event::new(id, event.topics.into(), event.kind.as_deref(), &event.data));
        for topic in event.topics.iter() {
            let history = state.topics.entry(topic.clone()).or_default();
            history.events.push_back(event.clone());
            history.trim(&self.history, cutoff);
        }
        self.hub.dispatch(&event);
        Ok(id)
    }

    async fn subscribe(&self, topics: &[Topic]) -> Result<Registration, Error> {
        self.hub.register(topics).map(|(registration, _)| registration)
    }

    async fn replay(&self, topics: &[Topic], last: LastEventId) -> Result<Replay, Error> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (after, mut reset) = judge_last_id(last, self.epoch, state.last_issued, topics);
        let cutoff = self.history.cutoff(now_ms());
        let mut events = Vec::new();
        let mut trimmed = Vec::new();
        for topic in topics {
            let Some(history) = state.topics.get_mut(topic) else { continue };
            // Expire by age here too: a topic nobody publishes to is trimmed only when read.
            history.trim(&self.history, cutoff);
            if history.trimmed_through.is_some_and(|t| t > after) {
                trimmed.push(topic.clone());
            }
            let start = history.events.partition_point(|e| e.id <= after);
            events.extend(history.events.range(start..).cloned());
        }
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
    async fn fresh_backend_knows_no_id() {
        let b = backend(2);
        let r = b.replay(&["a".into()], LastEventId::Id(EventId::new(b.epoch.ms, 0))).await.unwrap();
        assert_eq!(r.reset.map(|r| r.reason), Some("unknown_id"));
    }
}
