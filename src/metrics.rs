//! Counters and gauges, rendered as Prometheus text at `GET /metrics`.
//!
//! Every metric is declared once, in the [`metrics!`] table below: its field, kind, Prometheus name and help
//! text. The struct and the rendering both come from that table, so adding a counter is one line.
//!
//! Plain atomics, read without locks at scrape time (the hub keeps its two gauges here too, so a scrape
//! never waits for the hub). The two counters bumped on every write to a stream, `events_delivered` and
//! `bytes_written`, are [`Sharded`]: each thread adds to its own cache line and a scrape sums the lines, so
//! workers writing to streams at the same time do not fight over one line.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Declares the metrics: `/// doc` then `field: kind Type = "name", "help";` per metric, in output order.
macro_rules! metrics {
    ($( $(#[doc = $doc:literal])+ $field:ident: $kind:ident $ty:ty = $name:literal, $help:literal; )+) => {
        /// Node-wide counters and gauges; see the module docs.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $( $(#[doc = $doc])+ pub $field: $ty, )+
        }

        impl Metrics {
            /// Renders the Prometheus text exposition.
            pub fn render(&self) -> String {
                let mut out = String::with_capacity(4096);
                $( render_one(&mut out, $name, $help, stringify!($kind), Value::value(&self.$field)); )+
                out
            }
        }
    };
}

metrics! {
    /// Event streams open now.
    connections_open: gauge AtomicU64 = "herald_connections_open", "Event streams open now.";
    /// Topics with at least one local subscriber (kept by the hub).
    topics_active: gauge AtomicU64 = "herald_topics_active", "Topics with at least one subscriber on this node.";
    /// Connection-topic pairs (kept by the hub).
    subscriptions_active: gauge AtomicU64 =
        "herald_subscriptions_active", "Subscriptions (connection and topic pairs) on this node.";
    /// Bytes of event history held in this process (the memory backend; 0 with Redis).
    history_bytes: gauge AtomicU64 =
        "herald_history_bytes", "Bytes of event history held in this process (memory backend; 0 with Redis).";
    /// Events accepted by `POST /publish` on this node.
    events_published: counter AtomicU64 = "herald_events_published_total", "Events published through this node.";
    /// Events written to streams (one per event per connection).
    events_delivered: counter Sharded = "herald_events_delivered_total", "Events written to streams.";
    /// Bytes of SSE written to streams.
    bytes_written: counter Sharded = "herald_bytes_written_total", "Bytes of event stream written.";
    /// Streams that started from a last event id.
    replays: counter AtomicU64 = "herald_replays_total", "Streams that resumed from a last event id.";
    /// `herald.reset` events sent.
    resets: counter AtomicU64 = "herald_resets_total", "herald.reset events sent.";
    /// Times a connection's queue overflowed.
    lagged: counter AtomicU64 = "herald_lagged_total", "Times a connection's queue overflowed.";
    /// Lagging connections brought back up to date from history.
    lagging_caught_up: counter AtomicU64 =
        "herald_lagging_caught_up_total", "Lagging connections caught up from history.";
    /// Lagging connections closed (history could not cover them); they resume with their last id.
    lagging_dropped: counter AtomicU64 =
        "herald_lagging_dropped_total", "Lagging connections closed so that they resume with their last id.";
    /// Streams closed because the client accepted no bytes for the send timeout.
    stalled_dropped: counter AtomicU64 =
        "herald_stalled_dropped_total", "Streams closed because the client accepted no bytes for the send timeout.";
    /// Streams refused because their client address had `--max-connections-per-ip` streams open.
    per_ip_refused: counter AtomicU64 = "herald_connections_per_ip_refused_total",
        "Streams refused because their client address had --max-connections-per-ip streams open.";
    /// Heartbeat comments sent.
    heartbeats: counter AtomicU64 = "herald_heartbeats_total", "Heartbeat comments sent.";
    /// Reconnections of the backend's live feed.
    backend_reconnects: counter AtomicU64 =
        "herald_backend_reconnects_total", "Reconnections of the backend's live feed.";
    /// Reads of the backend's history made to catch up after the live feed reconnected.
    backend_catchup_reads: counter AtomicU64 =
        "herald_backend_catchup_reads_total", "History reads made to catch up after the live feed reconnected.";
    /// Events found by those reads that the live feed had missed.
    backend_events_caught_up: counter AtomicU64 =
        "herald_backend_events_caught_up_total", "Events the live feed missed and catch-up reads delivered.";
    /// Backend commands that failed or timed out.
    backend_errors: counter AtomicU64 = "herald_backend_errors_total", "Backend commands that failed or timed out.";
    /// Events read from the backend (Redis) that a publish over HTTP could not have sent (a bad type or
    /// topic, a malformed id or message), dropped instead of delivered.
    backend_invalid_events: counter AtomicU64 = "herald_backend_invalid_events_total",
        "Events read from the backend that were not valid (bad type, topic or id) and were dropped.";
    /// Requests refused with 401 (no valid token where one was needed).
    unauthorized: counter AtomicU64 =
        "herald_unauthorized_total", "Requests refused with 401: no valid token where one was needed.";
    /// Requests refused with 403 (a token that does not allow a topic).
    forbidden: counter AtomicU64 =
        "herald_forbidden_total", "Requests refused with 403: a token that does not allow one of the topics.";
    /// Publishes whose reply was lost and whose outcome was then settled (published or cancelled).
    publishes_settled: counter AtomicU64 =
        "herald_backend_publishes_settled_total", "Publishes whose reply was lost, then found published or cancelled.";
    /// Publishes whose reply was lost and whose outcome could not be settled.
    publishes_unsettled: counter AtomicU64 =
        "herald_backend_publishes_unsettled_total", "Publishes whose reply was lost and whose outcome stayed unknown.";
    /// HTTP/2 connections open now (each carries any number of streams).
    http2_connections: gauge AtomicU64 = "herald_http2_connections_open",
        "HTTP/2 connections open now (their streams are in herald_connections_open).";
    /// Publishes answered before `--redis-wait-replicas` replicas acknowledged them (`"replicated": false`).
    publishes_unreplicated: counter AtomicU64 = "herald_backend_publishes_unreplicated_total",
        "Publishes answered before --redis-wait-replicas replicas acknowledged them.";
    /// Publishes that repeated an `Idempotency-Key` and published nothing (`"duplicate": true`).
    publishes_duplicate: counter AtomicU64 = "herald_publishes_duplicate_total",
        "Publishes that repeated an Idempotency-Key and published nothing.";
    /// Times the node moved to another Redis primary (a Sentinel failover).
    backend_primary_changes: counter AtomicU64 = "herald_backend_primary_changes_total",
        "Times this node moved to another Redis primary (a Sentinel failover).";
}

fn render_one(out: &mut String, name: &str, help: &str, kind: &str, value: u64) {
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n");
}

/// What a metric's field reads as at scrape time.
trait Value {
    fn value(&self) -> u64;
}

impl Value for AtomicU64 {
    fn value(&self) -> u64 {
        self.load(Relaxed)
    }
}

/// Lines of a [`Sharded`] counter: threads are spread over them round-robin.
const COUNTER_LINES: usize = 16;

/// One cache line (two, for CPUs that fetch lines in pairs) holding one part of a [`Sharded`] counter.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Line(AtomicU64);

/// A counter bumped by many threads at once: each thread adds to a line of its own (threads are numbered
/// round-robin over [`COUNTER_LINES`] lines), and reading sums the lines.
#[derive(Debug, Default)]
pub struct Sharded {
    lines: [Line; COUNTER_LINES],
}

/// This thread's line of every [`Sharded`] counter.
fn line_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Relaxed) % COUNTER_LINES;
    }
    INDEX.with(|i| *i)
}

impl Sharded {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.add_at(line_index(), n);
    }

    fn add_at(&self, line: usize, n: u64) {
        self.lines[line].0.fetch_add(n, Relaxed);
    }

    /// The total so far.
    pub fn value(&self) -> u64 {
        self.lines.iter().map(|l| l.0.load(Relaxed)).sum()
    }
}

impl Value for Sharded {
    fn value(&self) -> u64 {
        Sharded::value(self)
    }
}

/// Gauges owned by the hub, as it last set them.
#[derive(Debug, Default, Clone, Copy)]
pub struct HubGauges {
    /// Topics with at least one local subscriber.
    pub topics_active: usize,
    /// Connection-topic pairs.
    pub subscriptions_active: usize,
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Counts one write to a stream: `events` events delivered (0 for a heartbeat or a stream's head) in
    /// `bytes` bytes. One thread-local look-up for both counters.
    pub fn wrote(&self, events: u64, bytes: u64) {
        let line = line_index();
        if events > 0 {
            self.events_delivered.add_at(line, events);
        }
        self.bytes_written.add_at(line, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table renders every metric with its help and kind, in declaration order.
    #[test]
    fn renders_the_table() {
        let m = Metrics::default();
        m.connections_open.store(3, Relaxed);
        m.wrote(2, 100);
        std::thread::scope(|s| {
            s.spawn(|| m.wrote(1, 50));
        });
        Metrics::inc(&m.publishes_unsettled);
        let text = m.render();
        assert!(text.starts_with(
            "# HELP herald_connections_open Event streams open now.\n# TYPE herald_connections_open gauge\n\
             herald_connections_open 3\n# HELP herald_topics_active "
        ));
        assert!(text.contains("# TYPE herald_events_delivered_total counter\nherald_events_delivered_total 3\n"));
        assert!(text.contains("\nherald_bytes_written_total 150\n"));
        assert!(text.contains(
            "# TYPE herald_backend_publishes_unsettled_total counter\nherald_backend_publishes_unsettled_total 1\n"
        ));
        assert!(text.ends_with("herald_backend_primary_changes_total 0\n"));
        assert_eq!(text.matches("# HELP ").count(), 28);
    }
}
