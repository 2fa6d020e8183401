//! Reading history for a resuming client: a small snapshot first, then pages merged by id.
//!
//! A resume used to be one script call that read every topic's stream after the client's id in one reply,
//! built the whole replay in memory before the stream started, and did it on the connection that publishes
//! share: a client resuming over 9 MB of history held ~285 MiB, publishes waited behind the reply for over a
//! second, and eight resumes at once timed out (503). Now:
//!
//! - **Snapshot.** One short script call ([`SNAPSHOT`]) reads the facts the reset decision needs, all at one
//!   instant: `herald:last-id`, `herald:epoch` and each topic's `max-deleted-entry-id`. No events.
//! - **Pages.** The events are then read in pages ([`PAGE`]: `XRANGE … COUNT n` per topic, from each topic's
//!   cursor up to the snapshot's last id: anything newer reaches the stream live, because it subscribed
//!   before the snapshot), merged by id across topics (an event on several topics is yielded once) and
//!   yielded lazily as the client takes them: a [`Pager`] holds at most about [`PAGE_BYTES`] of events.
//! - **Off the publish path, bounded.** History reads go over a connection of their own, and at most
//!   [`CONCURRENT_READS`] calls run at once; more resumes queue (up to [`QUEUE_TIMEOUT`]) instead of failing.
//! - **Still one snapshot.** Between two pages, events are published (and land after every cursor: ids only
//!   rise) and old ones trimmed. A page call checks, atomically with its reads, that nothing the client still
//!   needs was deleted since the snapshot (a topic's `max-deleted-entry-id` moved past its cursor) and that
//!   history was not lost (`herald:epoch` changed); otherwise the pager fails and the stream ends, so that the
//!   client resumes with its last id and is told (`herald.reset`) instead of silently missing events.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use redis::{Script, Value};
use tokio::sync::Semaphore;

use super::primary::Primary;
use super::scripts::{decode_entry, id_of, stream_key, EPOCH_KEY, LAST_ID_KEY};
use super::COMMAND_TIMEOUT;
use crate::id::EventId;
use crate::metrics::Metrics;
use crate::sse::Event;
use crate::topic::Topic;

/// Events per page yielded to the stream.
pub(super) const PAGE_EVENTS: usize = 256;
/// Entries one read asks for across all of a resume's topics: Redis runs a script to the end before any
/// other command, publishes included, so each read is kept short (about a millisecond).
const READ_ENTRIES: usize = 512;
/// What one resume buffers at most, once the size of its events is known: the per-topic `COUNT` is also
/// chosen so that all its topics' buffers together stay under this.
pub(super) const PAGE_BYTES: usize = 1 << 20;
/// The largest `COUNT` of one topic's read.
const MAX_COUNT: usize = 256;
/// History script calls running at once on a node; the others wait their turn. Redis runs one command
/// at a time anyway: more would only queue there, behind and in front of everyone's publishes.
pub(super) const CONCURRENT_READS: usize = 4;
/// How long a history read waits for its turn before the resume fails (503 when the stream is opening).
pub(super) const QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the facts a resume is judged by, at one instant.
///
/// `KEYS`: `herald:last-id`, `herald:epoch`, then the topics' stream keys; `ARGV[1]`: the history age limit
/// in milliseconds (`0` for none): older entries are deleted first, as the publish script would have, so that
/// a topic nobody publishes to still expires and reports it. Returns
/// `[last-id or nil, epoch or nil, Redis's clock as '<ms>-0', then per topic its max-deleted-entry-id ('0-0'
/// for none)]`.
pub(super) const SNAPSHOT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local out = {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2]), string.format('%d-0', now)}
local ttl = tonumber(ARGV[1])
local cutoff = nil
if ttl > 0 then
  cutoff = string.format('%d-0', math.max(0, now - ttl))
end
for i = 3, #KEYS do
  local deleted = '0-0'
  if cutoff and redis.call('EXISTS', KEYS[i]) == 1 then
    for _, entry in ipairs(redis.call('XRANGE', KEYS[i], '-', '(' .. cutoff)) do
      redis.call('XDEL', KEYS[i], entry[1])
    end
  end
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local info = redis.call('XINFO', 'STREAM', KEYS[i])
    for j = 1, #info, 2 do
      if info[j] == 'max-deleted-entry-id' then deleted = info[j + 1] end
    end
  end
  out[#out + 1] = deleted
end
return out
";

/// Reads one page: up to a count of entries of each topic, from its cursor up to an end id.
///
/// `KEYS`: `herald:epoch`, then stream keys; `ARGV[1]`: the last id to read (inclusive), then per stream the
/// first id to read (inclusive) and the count. Returns `[epoch or nil, then per stream its
/// max-deleted-entry-id and the entries]`, all at one instant, so the caller can tell whether an entry it
/// has not read yet was deleted.
pub(super) const PAGE: &str = r"
local out = {redis.call('GET', KEYS[1])}
for i = 2, #KEYS do
  local deleted = '0-0'
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local info = redis.call('XINFO', 'STREAM', KEYS[i])
    for j = 1, #info, 2 do
      if info[j] == 'max-deleted-entry-id' then deleted = info[j + 1] end
    end
  end
  out[#out + 1] = deleted
  out[#out + 1] = redis.call('XRANGE', KEYS[i], ARGV[2 * i - 2], ARGV[1], 'COUNT', ARGV[2 * i - 1])
end
return out
";

/// Why history could not be read.
#[derive(Debug)]
pub(super) enum ReadError {
    /// Redis failed, timed out, or the read waited too long for its turn.
    Failed(String),
    /// Events not yet read were trimmed (by count or age) since the snapshot.
    Overtaken,
    /// Redis lost its history since the snapshot (`herald:epoch` changed).
    HistoryLost,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Failed(cause) => f.write_str(cause),
            ReadError::Overtaken => f.write_str("events not yet replayed were trimmed"),
            ReadError::HistoryLost => f.write_str("redis lost its history during the replay"),
        }
    }
}

/// What [`SNAPSHOT`] found.
#[derive(Debug)]
pub(super) struct Snapshot {
    /// `herald:last-id`.
    pub(super) last_issued: Option<EventId>,
    /// `herald:epoch`.
    pub(super) epoch: Option<EventId>,
    /// Redis's clock at the snapshot, as the id `<ms>-0`.
    pub(super) now: EventId,
    /// Each topic's `max-deleted-entry-id` (zero when none), in the order of the topics asked for.
    pub(super) deleted: Vec<EventId>,
}

impl Snapshot {
    /// The topics that lost an event newer than `after` (trimmed by count or by age).
    pub(super) fn trimmed_after(&self, topics: &[Topic], after: EventId) -> Vec<Topic> {
        topics.iter().zip(&self.deleted).filter(|(_, deleted)| **deleted > after).map(|(t, _)| t.clone()).collect()
    }
}

/// The node's history reads: their own connection (the primary's link's), a bound on how many run at once,
/// and the scripts.
#[derive(Debug)]
pub(super) struct HistoryReader {
    primary: Arc<Primary>,
    reads: Semaphore,
    snapshot: Script,
    page: Script,
    ttl_ms: u64,
    metrics: Arc<Metrics>,
}

/// The id after `id`, if there is one.
fn successor(id: EventId) -> Option<EventId> {
    match (id.ms, id.seq) {
        (u64::MAX, u64::MAX) => None,
        (ms, u64::MAX) => Some(EventId::new(ms + 1, 0)),
        (ms, seq) => Some(EventId::new(ms, seq + 1)),
    }
}

impl HistoryReader {
    /// Reads over the primary's reads connection, expiring entries older than `ttl_ms` (0: none).
    pub(super) fn new(primary: Arc<Primary>, ttl_ms: u64, metrics: Arc<Metrics>) -> Self {
        HistoryReader {
            primary,
            reads: Semaphore::new(CONCURRENT_READS),
            snapshot: Script::new(SNAPSHOT),
            page: Script::new(PAGE),
            ttl_ms,
            metrics,
        }
    }

    /// Runs a script invocation: after waiting for a turn unless `queued` is false (the node's own
    /// catch-up, which must not wait behind clients), within [`COMMAND_TIMEOUT`].
    async fn run(&self, invocation: redis::ScriptInvocation<'_>, queued: bool) -> Result<Vec<Value>, ReadError> {
        let _turn = if queued {
            match tokio::time::timeout(QUEUE_TIMEOUT, self.reads.acquire()).await {
                Ok(Ok(permit)) => Some(permit),
                // The semaphore is never closed.
                Ok(Err(_)) | Err(_) => {
                    return Err(ReadError::Failed(format!("history reads busy for {QUEUE_TIMEOUT:?}")));
                }
            }
        } else {
            None
        };
        let Some(link) = self.primary.link() else {
            return Err(ReadError::Failed("redis: no primary known (failing over?)".into()));
        };
        let mut con = link.reads.clone();
        match tokio::time::timeout(COMMAND_TIMEOUT, invocation.invoke_async::<Vec<Value>>(&mut con)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => {
                Metrics::inc(&self.metrics.backend_errors);
                if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
                    self.primary.suspect();
                }
                Err(ReadError::Failed(format!("redis: {e}")))
            }
            Err(_) => {
                Metrics::inc(&self.metrics.backend_errors);
                Err(ReadError::Failed(format!("redis: no answer within {COMMAND_TIMEOUT:?}")))
            }
        }
    }

    /// Reads the snapshot of `topics` (see [`SNAPSHOT`]).
    pub(super) async fn snapshot(&self, topics: &[Topic], queued: bool) -> Result<Snapshot, ReadError> {
        let mut invocation = self.snapshot.prepare_invoke();
        invocation.key(LAST_ID_KEY).key(EPOCH_KEY);
        for topic in topics {
            invocation.key(stream_key(topic));
        }
        invocation.arg(self.ttl_ms);
        let reply = self.run(invocation, queued).await?;
        Ok(Snapshot {
            last_issued: reply.first().and_then(id_of),
            epoch: reply.get(1).and_then(id_of),
            now: reply.get(2).and_then(id_of).unwrap_or(EventId::ZERO),
            deleted: (0..topics.len()).map(|i| reply.get(3 + i).and_then(id_of).unwrap_or(EventId::ZERO)).collect(),
        })
    }

    /// A pager over the events of `topics` after `after`, up to the snapshot's last id (to the end of each
    /// stream when `herald:last-id` is missing: the streams may still hold events, and the client is told
    /// of the loss anyway).
    pub(super) fn pager(
        self: &Arc<Self>,
        topics: &[Topic],
        after: EventId,
        snapshot: &Snapshot,
        queued: bool,
    ) -> Pager {
        let end = snapshot.last_issued.unwrap_or(EventId::new(u64::MAX, u64::MAX));
        let next = successor(after).filter(|next| *next <= end);
        let cursors = topics
            .iter()
            .zip(&snapshot.deleted)
            .map(|(topic, deleted)| Cursor { key: stream_key(topic), next, deleted: *deleted, buffer: VecDeque::new() })
            .collect();
        Pager {
            reader: self.clone(),
            cursors,
            end,
            epoch: snapshot.epoch,
            last: after,
            queued,
            event_size: None,
            done: false,
        }
    }
}

/// One topic's position in a [`Pager`].
#[derive(Debug)]
struct Cursor {
    key: String,
    /// The first id still to read; `None` once the topic has nothing more up to the end.
    next: Option<EventId>,
    /// `max-deleted-entry-id` at the snapshot.
    deleted: EventId,
    /// Read, not yet yielded, in id order.
    buffer: VecDeque<Event>,
}

/// Yields a resume's events page by page, in id order, each once. See the module docs.
#[derive(Debug)]
pub(super) struct Pager {
    reader: Arc<HistoryReader>,
    cursors: Vec<Cursor>,
    /// The last id to read (the snapshot's `herald:last-id`).
    end: EventId,
    epoch: Option<EventId>,
    /// The last id yielded.
    last: EventId,
    queued: bool,
    /// The average size of the events read so far, once known.
    event_size: Option<usize>,
    done: bool,
}

impl Pager {
    /// The next page (at most [`PAGE_EVENTS`] events), `None` at the end. After an error the pager is done.
    pub(super) async fn next_page(&mut self) -> Result<Option<Vec<Arc<Event>>>, ReadError> {
        while !self.done {
            if let Err(e) = self.refill().await {
                self.done = true;
                return Err(e);
            }
            let page = self.merge();
            if !page.is_empty() {
                return Ok(Some(page));
            }
            self.done = self.cursors.iter().all(|c| c.next.is_none() && c.buffer.is_empty());
        }
        Ok(None)
    }

    /// Entries to read per topic: [`READ_ENTRIES`] across all topics, and no more than keep all buffers
    /// together under [`PAGE_BYTES`] once the size of the events is known.
    fn count(&self) -> usize {
        let topics = self.cursors.len().max(1);
        let by_bytes = self.event_size.map_or(usize::MAX, |size| PAGE_BYTES / (topics * size.max(1)));
        (READ_ENTRIES / topics).min(by_bytes).clamp(1, MAX_COUNT)
    }

    /// Reads more for every topic whose buffer is empty (and, in the same call, for those running low).
    async fn refill(&mut self) -> Result<(), ReadError> {
        let count = self.count();
        let needed = |c: &Cursor| c.next.is_some() && c.buffer.len() < count.div_ceil(2);
        if !self.cursors.iter().any(|c| c.next.is_some() && c.buffer.is_empty()) {
            return Ok(());
        }
        let refill: Vec<usize> = (0..self.cursors.len()).filter(|&i| needed(&self.cursors[i])).collect();
        let mut invocation = self.reader.page.prepare_invoke();
        invocation.key(EPOCH_KEY);
        invocation.arg(self.end.to_string());
        for &i in &refill {
            let cursor = &self.cursors[i];
            invocation.key(&cursor.key);
            invocation.arg(cursor.next.unwrap_or(self.end).to_string()).arg(count);
        }
        let reply = self.reader.run(invocation, self.queued).await?;
        if reply.first().and_then(id_of) != self.epoch {
            return Err(ReadError::HistoryLost);
        }
        let (mut bytes, mut events, mut invalid) = (0, 0, 0u64);
        for (n, &i) in refill.iter().enumerate() {
            let cursor = &mut self.cursors[i];
            let Some(next) = cursor.next else { continue };
            let deleted = reply.get(1 + 2 * n).and_then(id_of).unwrap_or(EventId::ZERO);
            if deleted >= next && deleted != cursor.deleted {
                return Err(ReadError::Overtaken);
            }
            let entries = match reply.get(2 + 2 * n) {
                Some(Value::Array(entries)) => entries.as_slice(),
                _ => &[],
            };
            for entry in entries {
                match decode_entry(entry) {
                    Some(event) if event.id >= next => {
                        bytes += event.chunk.wire().len();
                        events += 1;
                        cursor.buffer.push_back(event);
                    }
                    Some(_) => {}
                    None => invalid += 1,
                }
            }
            // Move past the last entry read, valid or not; fewer than asked for means the topic is done.
            let last_read = entries.last().and_then(|e| match e {
                Value::Array(parts) => parts.first().and_then(id_of),
                _ => None,
            });
            cursor.next = match last_read {
                Some(last) if entries.len() >= count => successor(last.max(next)).filter(|n| *n <= self.end),
                _ => None,
            };
        }
        if invalid > 0 {
            Metrics::add(&self.reader.metrics.backend_invalid_events, invalid);
            tracing::warn!(entries = invalid, "ignoring stream entries that are not valid herald events");
        }
        if let Some(average) = bytes.checked_div(events) {
            const OVERHEAD: usize = 128; // the event's own struct, its topics and the buffer slot
            let size = average + OVERHEAD;
            self.event_size = Some(self.event_size.map_or(size, |old| (old + size) / 2));
        }
        Ok(())
    }

    /// Yields buffered events in id order while every topic that may still have events has some buffered
    /// (else the next event could be one not read yet), up to [`PAGE_EVENTS`].
    fn merge(&mut self) -> Vec<Arc<Event>> {
        let mut page = Vec::new();
        while page.len() < PAGE_EVENTS {
            if self.cursors.iter().any(|c| c.next.is_some() && c.buffer.is_empty()) {
                break;
            }
            let Some(cursor) =
                self.cursors.iter_mut().filter(|c| !c.buffer.is_empty()).min_by_key(|c| c.buffer.front().map(|e| e.id))
            else {
                break;
            };
            let Some(event) = cursor.buffer.pop_front() else { break };
            // The same event from another of the client's topics is yielded once.
            if event.id > self.last {
                self.last = event.id;
                page.push(Arc::new(event));
            }
        }
        page
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successor_never_overflows() {
        assert_eq!(successor(EventId::new(5, 7)), Some(EventId::new(5, 8)));
        assert_eq!(successor(EventId::new(5, u64::MAX)), Some(EventId::new(6, 0)));
        assert_eq!(successor(EventId::new(u64::MAX, u64::MAX)), None);
    }
}
