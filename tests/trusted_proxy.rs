//! `--trusted-proxy`: the client address of per-address limits (`--max-connections-per-ip`) comes from
//! `X-Forwarded-For` / `Forwarded` only when the peer is a trusted proxy, the right-most address that is
//! not itself trusted; from any other peer those headers are ignored. Loopback source addresses
//! (127.0.0.1, 127.0.0.2) stand for a proxy and for a client that reaches Herald directly.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use support::h2::H2Conn;
use support::*;

const T: Duration = Duration::from_secs(5);

/// `GET /events` from `source` with these headers: the connection (kept open, so is the stream) and the
/// response (its body only when it is an error).
async fn open_from(addr: SocketAddr, source: &str, headers: &[(&str, &str)]) -> (HttpConn, HttpResponse) {
    let source: IpAddr = source.parse().expect("address");
    let mut conn = HttpConn::connect_from(addr, source).await.expect("connect");
    conn.send_request("GET", "/events?topics=t", headers, b"").await.expect("write");
    let (status, headers) = tokio::time::timeout(T, conn.read_head("GET")).await.expect("in time").expect("head");
    let body = if status == 200 { Vec::new() } else { conn.read_body_to_end().await.expect("error body") };
    (conn, HttpResponse { status, headers, body })
}

/// From a trusted peer, the forwarded address is the one counted: two clients behind the same proxy each
/// get their stream, the same client twice does not, and what the client wrote to the left of the address
/// the proxy appended changes nothing.
#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_counted() {
    let server = TestServer::start(&["--max-connections-per-ip", "1", "--trusted-proxy", "127.0.0.1,10.0.0.0/8"]);
    let addr = server.addr();
    let (_a, first) = open_from(addr, "127.0.0.1", &[("X-Forwarded-For", "192.0.2.1")]).await;
    assert_eq!(first.status, 200);
    let (_b, other) = open_from(addr, "127.0.0.1", &[("X-Forwarded-For", "192.0.2.2")]).await;
    assert_eq!(other.status, 200, "another client behind the same proxy: {}", other.text());
    let (_c, again) = open_from(addr, "127.0.0.1", &[("X-Forwarded-For", "192.0.2.1")]).await;
    assert_error(&again, 503, Some("too_many_connections_per_ip"));
    // The client wrote the left part; the proxy appended 192.0.2.2; 10.1.2.3 is a trusted proxy in between.
    let spoofed = [("X-Forwarded-For", "203.0.113.9, 192.0.2.2, 10.1.2.3")];
    let (_d, spoofed) = open_from(addr, "127.0.0.1", &spoofed).await;
    assert_error(&spoofed, 503, Some("too_many_connections_per_ip"));
    // `Forwarded`, for proxies that write it (and no X-Forwarded-For).
    let (_e, forwarded) = open_from(addr, "127.0.0.1", &[("Forwarded", "for=\"[2001:db8::7]:4711\";proto=http")]).await;
    assert_eq!(forwarded.status, 200);
    let (_f, forwarded) = open_from(addr, "127.0.0.1", &[("Forwarded", "for=\"[2001:db8::7]\"")]).await;
    assert_error(&forwarded, 503, Some("too_many_connections_per_ip"));
    // Over HTTP/2 too.
    let h2 = H2Conn::connect(addr).await;
    let stream = h2.events("/events?topics=t", &[("x-forwarded-for", "192.0.2.3")]).await;
    assert_eq!(stream.status, 200);
    let refused = h2.events("/events?topics=t", &[("x-forwarded-for", "192.0.2.3")]).await;
    assert_eq!(refused.status, 503);
    assert!(refused.body_text().await.contains("too_many_connections_per_ip"));
    assert_eq!(metrics(addr).await["herald_connections_per_ip_refused_total"], 4.0);
}

/// From a peer that is not trusted, the headers are ignored: it is counted under its own address whatever
/// it claims.
#[tokio::test]
async fn headers_from_an_untrusted_peer_are_ignored() {
    let server = TestServer::start(&["--max-connections-per-ip", "1", "--trusted-proxy", "127.0.0.1"]);
    let addr = server.addr();
    let (_a, first) = open_from(addr, "127.0.0.2", &[("X-Forwarded-For", "192.0.2.1")]).await;
    assert_eq!(first.status, 200);
    for claim in [("X-Forwarded-For", "192.0.2.2"), ("Forwarded", "for=192.0.2.3")] {
        let (_b, spoofed) = open_from(addr, "127.0.0.2", &[claim]).await;
        assert_error(&spoofed, 503, Some("too_many_connections_per_ip"));
    }
    // Without --trusted-proxy nobody is trusted, the loopback included.
    let server = TestServer::start(&["--max-connections-per-ip", "1"]);
    let (_c, first) = open_from(server.addr(), "127.0.0.1", &[("X-Forwarded-For", "192.0.2.1")]).await;
    assert_eq!(first.status, 200);
    let (_d, second) = open_from(server.addr(), "127.0.0.1", &[("X-Forwarded-For", "192.0.2.2")]).await;
    assert_error(&second, 503, Some("too_many_connections_per_ip"));
}

/// A range that is not one stops start-up with status 2.
#[test]
fn bad_ranges_are_refused_at_start_up() {
    for bad in ["10.0.0.0/33", "example.com", "10.0.0.1,nonsense"] {
        let (status, _, stderr) =
            run_to_exit(&["--trusted-proxy", bad, "--listen", "127.0.0.1:0"], &[], Duration::from_secs(10));
        assert_eq!(status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("--trusted-proxy"), "{bad}: {stderr}");
    }
}
