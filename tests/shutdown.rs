//! Graceful shutdown on SIGTERM / SIGINT: streams end cleanly, new work is refused, exit 0.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

const T: Duration = Duration::from_secs(5);

/// Reads a stream to its end; asserts a clean end (chunked terminator) and ordered ids.
async fn expect_clean_end(mut c: SseClient, which: usize) -> usize {
    let items = c.read_until_end(Duration::from_secs(6)).await;
    let ids: Vec<String> = items
        .iter()
        .filter_map(|i| match i {
            SseItem::Event(e) => Some(e.id().to_string()),
            _ => None,
        })
        .collect();
    assert_strictly_increasing(&ids);
    match items.last() {
        Some(SseItem::End { clean: true, .. }) => {}
        Some(SseItem::End { clean: false, reason }) => {
            panic!("stream {which} was cut, not ended cleanly: {reason}")
        }
        other => panic!("stream {which} did not end within 6 s after SIGTERM (last item {other:?})"),
    }
    ids.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_cleanly_and_exits_zero() {
    let mut server = TestServer::start(&["--shutdown-grace", "5"]);
    let addr = server.addr();
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(SseClient::subscribe(addr, &["s/a", "s/b"]).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut ok = 0usize;
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) && i < 10_000 {
                let topic = if i.is_multiple_of(2) { "s/a" } else { "s/b" };
                if try_publish(addr, &[topic], &format!("{i}")).await.is_ok() {
                    ok += 1;
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            ok
        })
    };
    // Make sure events are flowing before the signal.
    for s in streams.iter_mut() {
        s.next_event(T).await;
    }

    server.sigterm();
    let signalled = Instant::now();
    let readers: Vec<_> = streams.into_iter().enumerate().map(|(i, s)| tokio::spawn(expect_clean_end(s, i))).collect();
    for r in readers {
        r.await.expect("stream reader");
    }
    let status = tokio::task::spawn_blocking(move || {
        let status = server.wait_exit(Duration::from_secs(8));
        (status, server)
    })
    .await
    .expect("wait");
    let took = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    let published = publisher.await.expect("publisher");
    assert!(published > 0);
    assert!(status.0.success(), "exit status {:?}; stderr:\n{}", status.0, status.1.stderr());
    assert!(took < Duration::from_secs(4), "exit took {took:?} with --shutdown-grace 5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_behaves_like_sigterm() {
    let mut server = TestServer::start(&["--shutdown-grace", "5"]);
    let addr = server.addr();
    let s = SseClient::subscribe(addr, &["a"]).await;
    server.signal("INT");
    expect_clean_end(s, 0).await;
    let status = tokio::task::spawn_blocking(move || server.wait_exit(Duration::from_secs(8))).await.expect("wait");
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn idle_server_exits_zero_on_sigterm() {
    let mut server = TestServer::start(&[]);
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "exit status {status:?}");
}

/// Starts a publish whose body is only half sent: an in-flight publish.
async fn start_partial_publish(addr: std::net::SocketAddr) -> (HttpConn, Vec<u8>) {
    let body = serde_json::json!({"topic": "inflight", "data": "x".repeat(500)}).to_string().into_bytes();
    let mut conn = HttpConn::connect(addr).await.expect("connect");
    let head = format!(
        "POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.expect("write head");
    conn.write_all(&body[..100]).await.expect("write part");
    (conn, body[100..].to_vec())
}

/// Waits until the server has taken the signal (a request sent right after `kill` may still be served as
/// one that came before it): `/readyz` no longer answers 200.
async fn wait_until_draining(addr: std::net::SocketAddr) {
    let deadline = Instant::now() + T;
    while try_http(addr, "GET", "/readyz", &[], b"").await.is_ok_and(|r| r.status == 200) {
        assert!(Instant::now() < deadline, "/readyz still 200 {T:?} after the signal");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// After SIGTERM, nothing new is served: a connection is refused or closed, or gets 503
/// (`shutting_down` for a subscription). An in-flight publish keeps the process up meanwhile,
/// and then completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigterm_new_work_is_refused_and_in_flight_publish_finishes() {
    let mut server = TestServer::start(&["--shutdown-grace", "5"]);
    let addr = server.addr();
    let sub = SseClient::subscribe(addr, &["inflight"]).await;
    let (mut conn, rest) = start_partial_publish(addr).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.sigterm();
    let signalled = Instant::now();
    wait_until_draining(addr).await;
    let mut probes = 0;
    let mut answered_503 = 0;
    while signalled.elapsed() < Duration::from_millis(700) && server.try_exit_status().is_none() {
        probes += 1;
        for (path, is_events) in [("/events?topics=b", true), ("/readyz", false)] {
            match SseClient::try_connect(addr, path, &[], None).await {
                Err(_) => {} // refused, reset or closed without a response
                Ok(c) => {
                    assert_eq!(c.status, 503, "GET {path} after SIGTERM answered {}", c.status);
                    answered_503 += 1;
                    let resp = c.into_response_lenient().await;
                    if let (true, Some(resp)) = (is_events, resp) {
                        assert_error(&resp, 503, Some("shutting_down"));
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("{probes} probes after SIGTERM, {answered_503} answered 503");
    assert!(
        server.try_exit_status().is_none(),
        "the process exited while a publish was in flight (before its body was complete)"
    );
    // The in-flight publish completes.
    conn.write_all(&rest).await.expect("write rest of the publish body");
    let (status, _) = tokio::time::timeout(T, conn.read_head("POST")).await.expect("publish answer").expect("head");
    let body = tokio::time::timeout(T, conn.read_body_to_end()).await.expect("body").expect("body");
    assert_eq!(status, 200, "in-flight publish after SIGTERM: {}", String::from_utf8_lossy(&body));
    // The open stream ended cleanly (possibly after delivering that event).
    expect_clean_end(sub, 0).await;
    let status = tokio::task::spawn_blocking(move || server.wait_exit(Duration::from_secs(8))).await.expect("wait");
    assert!(status.success(), "exit status {status:?}");
}

/// After SIGTERM, while the node drains (here it waits for a stream whose client does not read), the
/// listener still accepts, and new requests see the promised answers: `/readyz`, `GET /events` and
/// `POST /publish` all 503 with the JSON error `shutting_down`, `Retry-After` and `Connection: close`.
/// The process still exits 0 within `--shutdown-grace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_draining_new_requests_get_503_json() {
    const GRACE: Duration = Duration::from_secs(3);
    let mut server = TestServer::start(&["--shutdown-grace", "3"]);
    let addr = server.addr();
    // A stream whose client stops reading: its last bytes cannot be written, so the node stays draining.
    let stalled = SseClient::try_connect(addr, "/events?topics=stall", &[], Some(4096)).await.expect("connect");
    assert_eq!(stalled.status, 200);
    let data = "z".repeat(16 * 1024);
    for _ in 0..400 {
        publish(addr, &["stall"], None, &data).await;
    }
    server.sigterm();
    let signalled = Instant::now();
    wait_until_draining(addr).await;
    let body = serde_json::json!({"topic": "t", "data": "after SIGTERM"}).to_string();
    for (method, path, body) in
        [("GET", "/readyz", &b""[..]), ("GET", "/events?topics=t", b""), ("POST", "/publish", body.as_bytes())]
    {
        let resp = try_http(addr, method, path, &[("Content-Type", "application/json")], body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path} while draining: {e}"));
        assert_error(&resp, 503, Some("shutting_down"));
        assert!(resp.header("retry-after").is_some(), "{method} {path}: no Retry-After");
        assert_eq!(resp.header("connection").map(str::to_ascii_lowercase).as_deref(), Some("close"), "{method} {path}");
    }
    // A keep-alive connection opened while draining is answered once, then closed.
    let mut conn = HttpConn::connect(addr).await.expect("connect while draining");
    conn.send_request("GET", "/healthz", &[], b"").await.expect("send");
    let (status, headers) = tokio::time::timeout(T, conn.read_head("GET")).await.expect("answer").expect("head");
    assert_eq!(status, 200);
    assert_eq!(find_header(&headers, "connection").map(str::to_ascii_lowercase).as_deref(), Some("close"));
    assert!(server.try_exit_status().is_none(), "exited before the stalled stream was given up");
    let status =
        tokio::task::spawn_blocking(move || server.wait_exit(GRACE + Duration::from_secs(5))).await.expect("wait");
    let took = signalled.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(took < GRACE + Duration::from_secs(2), "exit took {took:?} with --shutdown-grace 3");
    drop(stalled);
}

/// The same tests against Redis.
mod on_redis {
    super::support::on_redis!(
        sigterm_ends_streams_cleanly_and_exits_zero,
        sigint_behaves_like_sigterm,
        idle_server_exits_zero_on_sigterm,
        after_sigterm_new_work_is_refused_and_in_flight_publish_finishes,
        while_draining_new_requests_get_503_json,
    );
}
