//! `--max-connections-per-ip`: streams open at once from one client address.
//!
//! Clients on different loopback source addresses (127.0.0.1, 127.0.0.2) are different addresses; the limit
//! holds whichever path serves the stream (the event-stream front or hyper, for a `GET /events` that is the
//! second request of a keep-alive connection), refusals are JSON 503s counted in `/metrics`, and a closed
//! stream frees its slot.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(5);

/// Opens `GET /events?topics=t` from `source` (optionally after a `GET /healthz` on the same keep-alive
/// connection, so that hyper serves it); returns the connection and the status.
async fn open_from(addr: SocketAddr, source: &str, after_healthz: bool) -> (HttpConn, u16, Vec<(String, String)>) {
    let source: IpAddr = source.parse().expect("address");
    let mut conn = HttpConn::connect_from(addr, source).await.expect("connect");
    if after_healthz {
        conn.send_request("GET", "/healthz", &[], b"").await.expect("write");
        let (status, _) = conn.read_head("GET").await.expect("head");
        assert_eq!(status, 200);
        conn.read_body_to_end().await.expect("body");
    }
    conn.send_request("GET", "/events?topics=t", &[("Accept", "text/event-stream")], b"").await.expect("write");
    let (status, headers) = tokio::time::timeout(T, conn.read_head("GET")).await.expect("in time").expect("head");
    (conn, status, headers)
}

async fn wait_open_streams(addr: SocketAddr, n: f64) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        if metrics(addr).await["herald_connections_open"] == n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "connections_open never reached {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn streams_are_limited_per_client_address() {
    let server = TestServer::start(&["--max-connections-per-ip", "2"]);
    let addr = server.addr();
    let (first, s1, _) = open_from(addr, "127.0.0.1", false).await;
    // The second through hyper: the limit is the service's, whichever path serves the stream.
    let (_second, s2, _) = open_from(addr, "127.0.0.1", true).await;
    assert_eq!((s1, s2), (200, 200));

    // A third from the same address is refused, on either path, with the JSON error shape.
    for after_healthz in [false, true] {
        let (mut third, status, headers) = open_from(addr, "127.0.0.1", after_healthz).await;
        let body = third.read_body_to_end().await.expect("error body");
        let resp = HttpResponse { status, headers, body };
        assert_error(&resp, 503, Some("too_many_connections_per_ip"));
        assert!(resp.header("retry-after").is_some(), "a 503 says when to retry");
    }
    assert_eq!(metrics(addr).await["herald_connections_per_ip_refused_total"], 2.0);

    // Another address is another client.
    let (_other, status, _) = open_from(addr, "127.0.0.2", false).await;
    assert_eq!(status, 200, "127.0.0.2 has slots of its own");
    wait_open_streams(addr, 3.0).await;

    // Closing a stream frees its address's slot.
    first.abort();
    wait_open_streams(addr, 2.0).await;
    let (_again, status, _) = open_from(addr, "127.0.0.1", false).await;
    assert_eq!(status, 200, "the slot was freed");
    assert_eq!(metrics(addr).await["herald_connections_per_ip_refused_total"], 2.0);
}

#[tokio::test]
async fn without_the_flag_one_address_may_open_many_streams() {
    let server = TestServer::start(&["--max-connections", "50"]);
    let addr = server.addr();
    let mut open = Vec::new();
    for _ in 0..20 {
        let (conn, status, _) = open_from(addr, "127.0.0.1", false).await;
        assert_eq!(status, 200);
        open.push(conn);
    }
    wait_open_streams(addr, 20.0).await;
    assert_eq!(metrics(addr).await["herald_connections_per_ip_refused_total"], 0.0);
}

#[test]
fn a_zero_limit_is_refused_at_start_up() {
    let (status, _, stderr) = run_to_exit(&["--max-connections-per-ip", "0"], &[], Duration::from_secs(10));
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("max-connections-per-ip"), "{stderr}");
}
