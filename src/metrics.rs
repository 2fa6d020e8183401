//! Counters and gauges, rendered as Prometheus text at `GET /metrics`.
//!
//! Plain atomics: a delivery costs one relaxed add, and rendering reads them without locks (the hub's
//! gauges are read under its lock, once per scrape).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Node-wide counters. Every field is monotonic except `connections_open`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Event streams open now.
    pub connections_open: AtomicU64,
    /// Events accepted by `POST /publish` on this node.
    pub events_published: AtomicU64,
    /// Events written to streams (one per event per connection).
    pub events_delivered: AtomicU64,
    /// Bytes of SSE written to streams.
    pub bytes_written: AtomicU64,
    /// Streams that started from a last event id.
    pub replays: AtomicU64,
    /// `herald.reset` events sent.
    pub resets: AtomicU64,
    /// Times a connection's queue overflowed.
    pub lagged: AtomicU64,
    /// Lagging connections brought back up to date from history.
    pub lagging_caught_up: AtomicU64,
    /// Lagging connections closed (history could not cover them); they resume with their last id.
    pub lagging_dropped: AtomicU64,
    /// Streams closed because the client accepted no bytes for the send timeout.
    pub stalled_dropped: AtomicU64,
    /// Streams refused because their client address had `--max-connections-per-ip` streams open.
    pub per_ip_refused: AtomicU64,
    /// Heartbeat comments sent.
    pub heartbeats: AtomicU64,
    /// Reconnections of the backend's live feed.
    pub backend_reconnects: AtomicU64,
    /// Reads of the backend's history made to catch up after the live feed reconnected.
    pub backend_catchup_reads: AtomicU64,
    /// Events found by those reads that the live feed had missed.
    pub backend_events_caught_up: AtomicU64,
    /// Backend commands that failed or timed out.
    pub backend_errors: AtomicU64,
    /// Events read from the backend (Redis) that a publish over HTTP could not have sent (a bad type or
    /// topic, a malformed id or message), dropped instead of delivered.
    pub backend_invalid_events: AtomicU64,
    /// Bytes of event history held in this process (the memory backend; 0 with Redis).
    pub history_bytes: AtomicU64,
    /// Requests refused with 401 (no valid token where one was needed).
    pub unauthorized: AtomicU64,
    /// Requests refused with 403 (a token that does not allow a topic).
    pub forbidden: AtomicU64,
    /// Publishes whose reply was lost and whose outcome was then settled (published or cancelled).
    pub publishes_settled: AtomicU64,
    /// Publishes whose reply was lost and whose outcome could not be settled.
    pub publishes_unsettled: AtomicU64,
    /// HTTP/2 connections open now (each carries any number of streams).
    pub http2_connections: AtomicU64,
    /// Publishes answered before `--redis-wait-replicas` replicas acknowledged them (`"replicated": false`).
    pub publishes_unreplicated: AtomicU64,
    /// Publishes that repeated an `Idempotency-Key` and published nothing (`"duplicate": true`).
    pub publishes_duplicate: AtomicU64,
    /// Times the node moved to another Redis primary (a Sentinel failover).
    pub backend_primary_changes: AtomicU64,
}

/// Gauges owned by the hub, sampled at scrape time.
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

    /// Renders the Prometheus text exposition.
    pub fn render(&self, hub: HubGauges) -> String {
        let mut out = String::with_capacity(2048);
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n");
        };
        let counter = |out: &mut String, name: &str, help: &str, c: &AtomicU64| {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n", c.load(Relaxed));
        };
        gauge(&mut out, "herald_connections_open", "Event streams open now.", self.connections_open.load(Relaxed));
        gauge(
            &mut out,
            "herald_topics_active",
            "Topics with at least one subscriber on this node.",
            hub.topics_active as u64,
        );
        gauge(
            &mut out,
            "herald_subscriptions_active",
            "Subscriptions (connection and topic pairs) on this node.",
            hub.subscriptions_active as u64,
        );
        gauge(
            &mut out,
            "herald_history_bytes",
            "Bytes of event history held in this process (memory backend; 0 with Redis).",
            self.history_bytes.load(Relaxed),
        );
        counter(
            &mut out,
            "herald_events_published_total",
            "Events published through this node.",
            &self.events_published,
        );
        counter(&mut out, "herald_events_delivered_total", "Events written to streams.", &self.events_delivered);
        counter(&mut out, "herald_bytes_written_total", "Bytes of event stream written.", &self.bytes_written);
        counter(&mut out, "herald_replays_total", "Streams that resumed from a last event id.", &self.replays);
        counter(&mut out, "herald_resets_total", "herald.reset events sent.", &self.resets);
        counter(&mut out, "herald_lagged_total", "Times a connection's queue overflowed.", &self.lagged);
        counter(
            &mut out,
            "herald_lagging_caught_up_total",
            "Lagging connections caught up from history.",
            &self.lagging_caught_up,
        );
        counter(
            &mut out,
            "herald_lagging_dropped_total",
            "Lagging connections closed so that they resume with their last id.",
            &self.lagging_dropped,
        );
        counter(
            &mut out,
            "herald_stalled_dropped_total",
            "Streams closed because the client accepted no bytes for the send timeout.",
            &self.stalled_dropped,
        );
        counter(
            &mut out,
            "herald_connections_per_ip_refused_total",
            "Streams refused because their client address had --max-connections-per-ip streams open.",
            &self.per_ip_refused,
        );
        counter(&mut out, "herald_heartbeats_total", "Heartbeat comments sent.", &self.heartbeats);
        counter(
            &mut out,
            "herald_backend_reconnects_total",
            "Reconnections of the backend's live feed.",
            &self.backend_reconnects,
        );
        counter(
            &mut out,
            "herald_backend_catchup_reads_total",
            "History reads made to catch up after the live feed reconnected.",
            &self.backend_catchup_reads,
        );
        counter(
            &mut out,
            "herald_backend_events_caught_up_total",
            "Events the live feed missed and catch-up reads delivered.",
            &self.backend_events_caught_up,
        );
        counter(
            &mut out,
            "herald_backend_errors_total",
            "Backend commands that failed or timed out.",
            &self.backend_errors,
        );
        counter(
            &mut out,
            "herald_backend_invalid_events_total",
            "Events read from the backend that were not valid (bad type, topic or id) and were dropped.",
            &self.backend_invalid_events,
        );
        counter(
            &mut out,
            "herald_unauthorized_total",
            "Requests refused with 401: no valid token where one was needed.",
            &self.unauthorized,
        );
        counter(
            &mut out,
            "herald_forbidden_total",
            "Requests refused with 403: a token that does not allow one of the topics.",
            &self.forbidden,
        );
        counter(
            &mut out,
            "herald_backend_publishes_settled_total",
            "Publishes whose reply was lost, then found published or cancelled.",
            &self.publishes_settled,
        );
        counter(
            &mut out,
            "herald_backend_publishes_unsettled_total",
            "Publishes whose reply was lost and whose outcome stayed unknown.",
            &self.publishes_unsettled,
        );
        gauge(
            &mut out,
            "herald_http2_connections_open",
            "HTTP/2 connections open now (their streams are in herald_connections_open).",
            self.http2_connections.load(Relaxed),
        );
        counter(
            &mut out,
            "herald_backend_publishes_unreplicated_total",
            "Publishes answered before --redis-wait-replicas replicas acknowledged them.",
            &self.publishes_unreplicated,
        );
        counter(
            &mut out,
            "herald_publishes_duplicate_total",
            "Publishes that repeated an Idempotency-Key and published nothing.",
            &self.publishes_duplicate,
        );
        counter(
            &mut out,
            "herald_backend_primary_changes_total",
            "Times this node moved to another Redis primary (a Sentinel failover).",
            &self.backend_primary_changes,
        );
        out
    }
}
