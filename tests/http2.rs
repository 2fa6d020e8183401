//! HTTP/2 cleartext with prior knowledge, on the same port as HTTP/1 (as HAProxy's `proto h2`, Caddy's
//! `h2c://`, Envoy and `curl --http2-prior-knowledge` speak it): every endpoint, many event streams on one
//! connection, per-stream flow control and the send timeout of one stream, resuming, heartbeats, limits,
//! and shutdown with GOAWAY.

mod support;

use std::time::Duration;

use support::h2::{H2Conn, H2Sse, Windows};
use support::*;

const WAIT: Duration = Duration::from_secs(10);

/// The events of `stream` until `n` have arrived.
async fn events(stream: &mut H2Sse, n: usize) -> Vec<SseEvent> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        got.push(stream.next_event(WAIT).await);
    }
    got
}

fn assert_sse_head_h2(stream: &H2Sse) {
    assert_eq!(stream.status, 200);
    assert_eq!(stream.header("content-type").map(media_type).as_deref(), Some("text/event-stream"));
    assert_eq!(stream.header("cache-control"), Some("no-cache"));
    assert_eq!(stream.header("x-accel-buffering"), Some("no"));
}

/// Every endpoint answers over h2c as over HTTP/1, errors as JSON; the event stream's body is the bare
/// event stream (no HTTP/1.1 chunk framing inside DATA frames).
#[tokio::test]
async fn every_endpoint_answers_over_h2c() {
    let server = TestServer::start(&[]);
    let conn = H2Conn::connect(server.addr()).await;
    for path in ["/healthz", "/readyz", "/", "/herald.js"] {
        let response = conn.get(path).await;
        assert_eq!(response.status, 200, "GET {path}: {}", response.text());
        assert!(!response.body.is_empty(), "GET {path}");
    }
    // HEAD: the GET answer's head, Content-Length included, and no body (hyper's HTTP/2 server would send
    // it, a protocol error for the client).
    for path in ["/herald.js", "/healthz"] {
        let (whole, head) = (conn.get(path).await, conn.http("HEAD", path, &[], b"").await);
        assert_eq!((head.status, head.body.len()), (200, 0), "HEAD {path}");
        assert_eq!(head.header("content-length"), Some(whole.body.len().to_string().as_str()), "HEAD {path}");
    }
    assert!(conn.get("/metrics").await.text().contains("herald_http2_connections_open 1\n"));
    assert_error(&conn.get("/nowhere").await, 404, Some("not_found"));
    assert_error(&conn.get("/events").await, 400, Some("no_topic"));
    assert_error(&conn.http("POST", "/events?topics=a", &[], b"").await, 405, Some("method_not_allowed"));
    assert_error(&conn.http("POST", "/publish", &[("content-type", "text/plain")], b"x").await, 415, None);

    let mut stream = conn.events(&events_path(&["h2/a", "h2/b"], ""), &[]).await;
    assert_sse_head_h2(&stream);
    let json = conn.publish(&["h2/a"], "line 1\nline 2").await;
    let form = conn
        .http("POST", "/publish", &[("content-type", "application/x-www-form-urlencoded")], b"topic=h2/b&data=form")
        .await;
    assert_eq!(form.status, 200, "{}", form.text());
    let form = form.json()["id"].as_str().expect("id").to_string();
    let got = events(&mut stream, 2).await;
    assert_eq!((got[0].id(), got[0].data.as_str()), (json.as_str(), "line 1\nline 2"));
    assert_eq!((got[1].id(), got[1].data.as_str()), (form.as_str(), "form"));
    let raw = String::from_utf8_lossy(&stream.raw).into_owned();
    assert!(raw.starts_with("retry: 3000\n: herald\n\n"), "{raw:?}");
    assert!(raw.contains(&format!("\n\nid: {json}\ndata: line 1\ndata: line 2\n\nid: {form}\n")), "{raw:?}");

    // The same port still speaks HTTP/1.
    assert_eq!(get(server.addr(), "/healthz").await.status, 200);
}

/// 150 event streams on one connection all receive every event, in order; they count as 150 streams and
/// one HTTP/2 connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_fifty_streams_share_one_connection() {
    const STREAMS: usize = 150;
    const EVENTS: usize = 5;
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let conn = H2Conn::connect(addr).await;
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let stream = conn.events(&events_path(&["many"], ""), &[]).await;
        assert_sse_head_h2(&stream);
        streams.push(stream);
    }
    let m = metrics(addr).await;
    assert_eq!(m["herald_connections_open"], STREAMS as f64);
    assert_eq!(m["herald_http2_connections_open"], 1.0);
    let mut ids = Vec::new();
    for i in 0..EVENTS {
        ids.push(publish(addr, &["many"], None, &format!("event {i}")).await);
    }
    let readers = streams.into_iter().map(|mut stream| {
        tokio::spawn(async move { events(&mut stream, EVENTS).await.iter().map(|e| e.id().to_string()).collect() })
    });
    for reader in readers {
        let got: Vec<String> = reader.await.expect("reader");
        assert_eq!(got, ids);
    }
}

/// `--h2-max-streams` is the connection's SETTINGS_MAX_CONCURRENT_STREAMS: the stream past it waits for
/// one to close.
#[tokio::test]
async fn h2_max_streams_bounds_the_streams_of_a_connection() {
    let server = TestServer::start(&["--h2-max-streams", "3"]);
    let conn = std::sync::Arc::new(H2Conn::connect(server.addr()).await);
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(conn.events(&events_path(&["max"], ""), &[]).await);
    }
    let fourth = {
        let conn = conn.clone();
        tokio::spawn(async move { conn.events(&events_path(&["max"], ""), &[]).await.status })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!fourth.is_finished(), "a fourth stream was opened past --h2-max-streams 3");
    assert_eq!(metrics(server.addr()).await["herald_connections_open"], 3.0);
    drop(open.pop());
    let status = tokio::time::timeout(WAIT, fourth).await.expect("opened once a stream closed").expect("task");
    assert_eq!(status, 200);
}

/// Resuming with `Last-Event-ID` is exact, a bad id gives `herald.reset`, heartbeats arrive: the event
/// stream behaves as on HTTP/1.
#[tokio::test]
async fn resume_reset_and_heartbeats_over_h2c() {
    let server = TestServer::start(&["--heartbeat", "0.3"]);
    let addr = server.addr();
    let conn = H2Conn::connect(addr).await;
    let ids: Vec<String> = futures_ids(&conn, 3).await;
    let mut resumed = conn.events(&events_path(&["resume"], ""), &[("last-event-id", &ids[0])]).await;
    let replayed = events(&mut resumed, 2).await;
    assert_eq!([replayed[0].id(), replayed[1].id()], [ids[1].as_str(), ids[2].as_str()]);
    let live = conn.publish(&["resume"], "live").await;
    assert_eq!(resumed.next_event(WAIT).await.id(), live);
    let heartbeat = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(SseItem::Comment(c)) = resumed.next_item(WAIT).await {
                return c;
            }
        }
    })
    .await
    .expect("a heartbeat");
    assert_eq!(heartbeat.trim(), "heartbeat");

    let mut reset = conn.events(&events_path(&["resume"], ""), &[("last-event-id", "nonsense")]).await;
    let first = reset.next_event(WAIT).await;
    assert_eq!(reset_payload(&first).0, ["resume"]);
}

async fn futures_ids(conn: &H2Conn, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(conn.publish(&["resume"], &i.to_string()).await);
    }
    ids
}

/// Authentication and `--max-connections` hold per stream, as on HTTP/1.
#[tokio::test]
async fn auth_and_stream_limits_hold_over_h2c() {
    let server = TestServer::start(&["--jwt-secret", "s3cret", "--public-topic", "pub/*", "--max-connections", "2"]);
    let conn = H2Conn::connect(server.addr()).await;
    let denied = conn.get(&events_path(&["private"], "")).await;
    assert_error(&denied, 401, Some("unauthorized"));
    assert!(denied.header("www-authenticate").is_some());
    assert_error(&conn.http("POST", "/publish", &[("content-type", "application/json")], b"{}").await, 401, None);
    let first = conn.events(&events_path(&["pub/a"], ""), &[]).await;
    let second = conn.events(&events_path(&["pub/b"], ""), &[]).await;
    assert_sse_head_h2(&first);
    assert_sse_head_h2(&second);
    let third = conn.events(&events_path(&["pub/c"], ""), &[]).await;
    assert_eq!(third.status, 503);
    assert!(third.body_text().await.contains("too_many_connections"));
}

/// A stream whose client stops reading (it never gives back flow-control window) does not delay the other
/// streams of its connection; after `--send-timeout` it alone is reset (`RST_STREAM`), counted as a
/// stalled stream, and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_does_not_delay_its_neighbours_and_is_reset_after_send_timeout() {
    const EVENTS: usize = 40;
    const NEIGHBOURS: usize = 3;
    let data = "x".repeat(8000);
    // As browsers do: a large window for the connection, the protocol's default for each stream.
    let windows = Windows { stream: 65_535, connection: 16 << 20 };
    for send_timeout in ["60", "1"] {
        let server = TestServer::start(&["--send-timeout", send_timeout]);
        let addr = server.addr();
        let conn = H2Conn::connect_with(addr, windows).await;
        let mut stalled = conn.events(&events_path(&["stall"], ""), &[]).await;
        let mut neighbours = Vec::new();
        for _ in 0..NEIGHBOURS {
            neighbours.push(conn.events(&events_path(&["stall"], ""), &[]).await);
        }
        // 320 KB for each stream: the stalled one's window is full after 8 events.
        let mut ids = Vec::new();
        for _ in 0..EVENTS {
            ids.push(publish(addr, &["stall"], None, &data).await);
        }
        for neighbour in &mut neighbours {
            let got = events(neighbour, EVENTS).await;
            assert_eq!(got.iter().map(|e| e.id()).collect::<Vec<_>>(), ids);
        }
        if send_timeout == "60" {
            // Everything reached the neighbours while the stalled stream still holds its slot.
            let m = metrics(addr).await;
            assert_eq!(m["herald_stalled_dropped_total"], 0.0);
            assert_eq!(m["herald_connections_open"], (NEIGHBOURS + 1) as f64);
            continue;
        }
        wait_metric(addr, "herald_stalled_dropped_total", WAIT, |n| n == 1.0).await;
        wait_metric(addr, "herald_connections_open", WAIT, |n| n == NEIGHBOURS as f64).await;
        // What the stalled stream holds is its window's worth, then the reset.
        let items = stalled.read_until_end(WAIT).await;
        match items.last() {
            Some(SseItem::End { clean: false, reason }) => assert!(reason.contains("CANCEL"), "{reason}"),
            other => panic!("expected a reset, got {other:?}"),
        }
        assert!(stalled.raw.len() <= 65_535, "{} bytes past the stream's window", stalled.raw.len());
        // The connection and its other streams go on.
        let after = publish(addr, &["stall"], None, "after").await;
        for neighbour in &mut neighbours {
            assert_eq!(neighbour.next_event(WAIT).await.id(), after);
        }
        assert_eq!(metrics(addr).await["herald_http2_connections_open"], 1.0);
    }
}

/// On SIGTERM the streams of an HTTP/2 connection end cleanly, the server says GOAWAY and closes the
/// connection, and exits 0.
#[tokio::test]
async fn shutdown_ends_h2_streams_and_sends_goaway() {
    let mut server = TestServer::start(&["--shutdown-grace", "5"]);
    let conn = H2Conn::connect(server.addr()).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(conn.events(&events_path(&["bye"], ""), &[]).await);
    }
    server.sigterm();
    for stream in &mut streams {
        let items = stream.read_until_end(WAIT).await;
        assert!(matches!(items.last(), Some(SseItem::End { clean: true, .. })), "{items:?}");
    }
    let driver = tokio::time::timeout(WAIT, conn.driver).await.expect("connection closed").expect("task");
    assert!(driver.is_ok(), "connection ended with {driver:?}");
    assert!(server.wait_exit(WAIT).success());
}

mod on_redis {
    super::support::on_redis!(
        every_endpoint_answers_over_h2c,
        one_hundred_fifty_streams_share_one_connection,
        resume_reset_and_heartbeats_over_h2c,
        a_stalled_stream_does_not_delay_its_neighbours_and_is_reset_after_send_timeout,
        shutdown_ends_h2_streams_and_sends_goaway,
    );
}
