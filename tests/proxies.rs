//! Herald behind the reverse proxies people put in front of it, each the real program from Debian's
//! packages (`nginx`, `haproxy`, `caddy`; `tests/run.sh` installs them), started with the configuration
//! written here, which the README's "Behind a proxy" section shows as it is:
//! - nginx as installed (HTTP/1.0 to Herald, buffering on): `X-Accel-Buffering: no` makes events arrive
//!   at once; resuming with `Last-Event-ID` through it is exact;
//! - nginx as recommended (HTTP/1.1 and keep-alive to Herald, no buffering): the same, and an idle stream
//!   outlives a short `proxy_read_timeout` thanks to heartbeats (without them it is cut);
//! - HAProxy speaking HTTP/2 to Herald (`proto h2`) and Caddy (`h2c://`): 100 subscribers, each on a
//!   connection of its own to the proxy, reach Herald over a few connections, and all get every event.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::proxy::{established_to, free_port, Proxy};
use support::*;

const WAIT: Duration = Duration::from_secs(10);

/// nginx as installed: `proxy_pass` alone. It speaks HTTP/1.0 to Herald and buffers responses, except those
/// that say `X-Accel-Buffering: no`, as Herald's event streams do.
fn nginx_default(listen: u16, herald: SocketAddr) -> String {
    format!(
        "    server {{
        listen 127.0.0.1:{listen};
        location / {{
            proxy_pass http://{herald};
        }}
    }}"
    )
}

/// nginx as the README recommends: HTTP/1.1 with keep-alive to Herald, no buffering, the client's address
/// passed on, and a `proxy_read_timeout` longer than Herald's heartbeat interval.
fn nginx_recommended(listen: u16, herald: SocketAddr, read_timeout: &str) -> String {
    format!(
        "    upstream herald {{
        server {herald};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{listen};
        location / {{
            proxy_pass http://herald;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
            proxy_read_timeout {read_timeout};
        }}
    }}"
    )
}

/// HAProxy speaking HTTP/2 to Herald: `proto h2` on the server line; `http-reuse always` so that new
/// client connections share the open HTTP/2 connections (with the default, `safe`, each client
/// connection's first request gets a connection of its own); `tune.h2.max-concurrent-streams`, which in
/// HAProxy 2.6 also bounds the streams of a backend connection (100 by default: 10,000 subscribers took 100
/// connections); `option http-no-delay`, without which HAProxy holds each piece of a streamed response to an
/// HTTP/1.1 client for about 200 ms (it sends with `MSG_MORE`), so every event would arrive that much late.
fn haproxy_h2(listen: u16, herald: SocketAddr) -> String {
    format!(
        "global
    tune.h2.max-concurrent-streams 1000

defaults
    mode http
    timeout connect 5s
    timeout client 1m
    timeout server 1m
    http-reuse always
    option http-no-delay

frontend subscribers
    bind 127.0.0.1:{listen}
    default_backend herald

backend herald
    server herald1 {herald} proto h2
"
    )
}

/// Caddy speaking HTTP/2 cleartext to Herald (`h2c://`); it flushes `text/event-stream` responses at once
/// by itself.
fn caddy_h2c(listen: u16, herald: SocketAddr) -> String {
    format!(
        "{{
    admin off
    auto_https off
}}

http://:{listen} {{
    bind 127.0.0.1
    reverse_proxy h2c://{herald}
}}
"
    )
}

/// Through `proxy`: a small event reaches an open stream at once (a buffering proxy would hold it), and
/// resuming with `Last-Event-ID` replays exactly what came after that id, then goes on live.
async fn unbuffered_and_exact_resume(proxy: &Proxy) {
    let via = proxy.addr;
    let mut live = SseClient::subscribe(via, &["px/doc"]).await;
    assert_eq!(live.header("content-type"), Some("text/event-stream"), "{}", proxy.output());
    let first = publish(via, &["px/doc"], None, "small").await;
    assert_eq!(live.next_event(WAIT).await.id(), first, "{}", proxy.output());

    let mut ids = vec![first];
    for i in 0..4 {
        ids.push(publish(via, &["px/doc"], None, &format!("event {i}")).await);
    }
    let mut resumed = SseClient::open(via, &events_path(&["px/doc"], ""), &[("Last-Event-ID", &ids[1])]).await;
    let replayed = resumed.next_events(3, WAIT).await;
    assert_eq!(replayed.iter().map(SseEvent::id).collect::<Vec<_>>(), &ids[2..]);
    let after = publish(via, &["px/doc"], None, "live").await;
    assert_eq!(resumed.next_event(WAIT).await.id(), after);
    assert_eq!(live.next_events(5, WAIT).await.last().map(|e| e.id().to_string()), Some(after));
}

#[tokio::test]
async fn through_nginx_as_installed() {
    let herald = TestServer::start(&[]);
    let port = free_port();
    let nginx = Proxy::nginx(&nginx_default(port, herald.addr()), port);
    unbuffered_and_exact_resume(&nginx).await;
}

#[tokio::test]
async fn through_nginx_as_recommended() {
    let herald = TestServer::start(&["--heartbeat", "0.5"]);
    let port = free_port();
    let nginx = Proxy::nginx(&nginx_recommended(port, herald.addr(), "2s"), port);
    unbuffered_and_exact_resume(&nginx).await;

    // An idle stream outlives nginx's 2-second read timeout: heartbeats every half second keep it busy.
    let mut idle = SseClient::subscribe(nginx.addr, &["px/idle"]).await;
    let items = idle.read_until_end(Duration::from_secs(5)).await;
    assert!(!items.iter().any(|i| matches!(i, SseItem::End { .. })), "cut: {items:?}\n{}", nginx.output());
    assert!(items.iter().filter(|i| matches!(i, SseItem::Comment(c) if c.trim() == "heartbeat")).count() >= 4);
    let id = publish(nginx.addr, &["px/idle"], None, "still there").await;
    assert_eq!(idle.next_event(WAIT).await.id(), id);
}

/// Without heartbeats within `proxy_read_timeout`, nginx cuts an idle stream: what the test above relies on.
#[tokio::test]
async fn nginx_cuts_a_stream_silent_past_its_read_timeout() {
    let herald = TestServer::start(&["--heartbeat", "60"]);
    let port = free_port();
    let nginx = Proxy::nginx(&nginx_recommended(port, herald.addr(), "1s"), port);
    let mut idle = SseClient::subscribe(nginx.addr, &["px/silent"]).await;
    let items = idle.read_until_end(WAIT).await;
    assert!(matches!(items.last(), Some(SseItem::End { .. })), "not cut: {items:?}");
}

/// 100 subscribers, each on its own connection to `proxy`, reach Herald over a few HTTP/2 connections, and
/// every one gets every event.
async fn subscribers_share_upstream_connections(proxy: &Proxy, herald: &TestServer) {
    const SUBSCRIBERS: usize = 100;
    const EVENTS: usize = 3;
    let mut clients = Vec::new();
    for _ in 0..SUBSCRIBERS {
        clients.push(SseClient::subscribe(proxy.addr, &["px/many"]).await);
    }
    wait_metric(herald.addr(), "herald_connections_open", WAIT, |n| n == SUBSCRIBERS as f64).await;
    let h2 = metrics(herald.addr()).await["herald_http2_connections_open"];
    let tcp = established_to(herald.addr().port());
    eprintln!("{SUBSCRIBERS} subscribers over {h2} HTTP/2 connections ({tcp} TCP connections to Herald)");
    assert!((1.0..=8.0).contains(&h2), "{h2} HTTP/2 connections for {SUBSCRIBERS} subscribers\n{}", proxy.output());
    assert!(tcp <= h2 as usize + 2, "{tcp} TCP connections to Herald, {h2} of them HTTP/2");

    let mut ids = Vec::new();
    for i in 0..EVENTS {
        ids.push(publish(herald.addr(), &["px/many"], None, &format!("event {i}")).await);
    }
    let readers = clients.into_iter().map(|mut client| {
        tokio::spawn(async move { client.next_events(EVENTS, WAIT).await.iter().map(|e| e.id().to_string()).collect() })
    });
    for reader in readers {
        let got: Vec<String> = reader.await.expect("reader");
        assert_eq!(got, ids);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_haproxy_speaking_http2() {
    let herald = TestServer::start(&[]);
    let port = free_port();
    let haproxy = Proxy::haproxy(&haproxy_h2(port, herald.addr()), port);
    subscribers_share_upstream_connections(&haproxy, &herald).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_caddy_speaking_h2c() {
    let herald = TestServer::start(&[]);
    let port = free_port();
    let caddy = Proxy::caddy(&caddy_h2c(port, herald.addr()), port);
    subscribers_share_upstream_connections(&caddy, &herald).await;
}

/// Behind nginx (which appends the address it saw to `X-Forwarded-For`), with `--trusted-proxy` naming it,
/// `--max-connections-per-ip` counts each browser's address, not nginx's.
#[tokio::test]
async fn behind_nginx_the_forwarded_client_address_is_counted() {
    let herald = TestServer::start(&["--trusted-proxy", "127.0.0.1", "--max-connections-per-ip", "1"]);
    let port = free_port();
    let nginx = Proxy::nginx(&nginx_recommended(port, herald.addr(), "60s"), port);
    let open = |source: &'static str| async move {
        let mut conn = HttpConn::connect_from(nginx.addr, source.parse().expect("address")).await.expect("connect");
        conn.send_request("GET", "/events?topics=px/ip", &[], b"").await.expect("write");
        let (status, headers) =
            tokio::time::timeout(WAIT, conn.read_head("GET")).await.expect("in time").expect("head");
        let body = if status == 200 { Vec::new() } else { conn.read_body_to_end().await.expect("body") };
        (conn, HttpResponse { status, headers, body })
    };
    let (_a, first) = open("127.0.0.2").await;
    let (_b, other) = open("127.0.0.3").await;
    assert_eq!((first.status, other.status), (200, 200), "{}", other.text());
    let (_c, again) = open("127.0.0.2").await;
    assert_error(&again, 503, Some("too_many_connections_per_ip"));
}

mod on_redis {
    super::support::on_redis!(through_nginx_as_installed, through_haproxy_speaking_http2);
}
