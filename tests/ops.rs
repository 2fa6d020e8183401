//! Operations endpoints: health, readiness, metrics, the demo page and unknown paths.

mod support;

use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(5);

const METRICS: &[&str] = &[
    "herald_connections_open",
    "herald_topics_active",
    "herald_subscriptions_active",
    "herald_history_bytes",
    "herald_events_published_total",
    "herald_events_delivered_total",
    "herald_bytes_written_total",
    "herald_replays_total",
    "herald_resets_total",
    "herald_lagged_total",
    "herald_lagging_caught_up_total",
    "herald_lagging_dropped_total",
    "herald_stalled_dropped_total",
    "herald_heartbeats_total",
    "herald_backend_reconnects_total",
];

#[tokio::test]
async fn healthz_and_readyz() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    assert_eq!(get(addr, "/healthz").await.status, 200);
    assert_eq!(get(addr, "/readyz").await.status, 200);
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_every_metric() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let resp = get(addr, "/metrics").await;
    assert_eq!(resp.status, 200);
    let ct = media_type(resp.header("content-type").unwrap_or(""));
    assert!(ct == "text/plain" || ct == "application/openmetrics-text", "metrics content type {ct:?}");
    let m = parse_prometheus(&resp.text());
    for name in METRICS {
        assert!(m.contains_key(*name), "metric {name} missing from:\n{}", resp.text());
    }
}

#[tokio::test]
async fn metrics_counters_move() {
    let server = TestServer::start(&["--heartbeat", "0.3"]);
    let addr = server.addr();
    let m0 = metrics(addr).await;
    let open0 = m0["herald_connections_open"];

    let mut c = SseClient::subscribe(addr, &["m/a", "m/b"]).await;
    wait_metric(addr, "herald_connections_open", T, |v| v >= open0 + 1.0).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(publish(addr, &["m/a"], None, &format!("event {i}")).await);
    }
    let got: Vec<String> = c.next_events(3, T).await.iter().map(|e| e.id().to_string()).collect();
    assert_eq!(got, ids);
    // Let a heartbeat go out too.
    tokio::time::sleep(Duration::from_millis(700)).await;

    let m1 = metrics(addr).await;
    let delta = |name: &str| m1[name] - m0.get(name).copied().unwrap_or(0.0);
    assert_eq!(delta("herald_events_published_total"), 3.0, "published");
    assert!(delta("herald_events_delivered_total") >= 3.0, "delivered");
    assert!(delta("herald_bytes_written_total") > 0.0, "bytes written");
    assert!(delta("herald_heartbeats_total") >= 1.0, "heartbeats");
    assert!(m1["herald_topics_active"] >= 2.0, "topics active");
    assert!(m1["herald_subscriptions_active"] >= 2.0, "subscriptions active");
    assert!(m1["herald_connections_open"] >= open0 + 1.0, "connections open");

    // A replay counts as a replay.
    let mut r = SseClient::open(addr, "/events?topics=m/a", &[("Last-Event-ID", &ids[0])]).await;
    assert_eq!(r.next_events(2, T).await.len(), 2);
    let m2 = metrics(addr).await;
    assert!(m2["herald_replays_total"] >= m1["herald_replays_total"] + 1.0, "herald_replays_total did not move");

    drop(r);
    drop(c);
    wait_metric(addr, "herald_connections_open", T, |v| v == open0).await;
    wait_metric(addr, "herald_subscriptions_active", T, |v| v == m0["herald_subscriptions_active"]).await;
}

#[tokio::test]
async fn index_page() {
    let server = TestServer::start(&[]);
    let resp = get(server.addr(), "/").await;
    assert_eq!(resp.status, 200);
    let ct = media_type(resp.header("content-type").unwrap_or(""));
    assert_eq!(ct, "text/html");
    assert!(resp.text().contains("Herald"), "index page does not mention Herald");
}

#[tokio::test]
async fn unknown_path_is_404_json() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    for path in ["/nope", "/events/extra", "/static/../Cargo.toml", "/%2e%2e/Cargo.toml"] {
        let resp = get(addr, path).await;
        assert_error(&resp, 404, Some("not_found"));
    }
}

/// The same tests against Redis.
mod on_redis {
    super::support::on_redis!(
        healthz_and_readyz,
        metrics_are_prometheus_text_with_every_metric,
        metrics_counters_move,
        index_page,
        unknown_path_is_404_json,
    );
}
