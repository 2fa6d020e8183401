//! Regression: event streams are framed correctly on every path a request can take.
//!
//! A first request of `GET /events` is served by the event-stream front, whose shared event bytes carry
//! their HTTP/1.1 chunk framing already. A `GET /events` that comes later on a keep-alive connection is
//! served by hyper, which frames chunks itself and must get the bare SSE bytes; an HTTP/1.0 client gets
//! a close-delimited body. In each case the client must parse exactly the published events.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(5);

/// Reads SSE items from `conn`'s body until an event arrives (bounded by `T`).
async fn next_event(conn: &mut HttpConn, parser: &mut SseParser) -> SseEvent {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let data = tokio::time::timeout_at(deadline, conn.next_body_data())
            .await
            .expect("an event within the timeout")
            .expect("body readable")
            .expect("body not ended");
        for item in parser.feed(&data) {
            if let SseItem::Event(e) = item {
                return e;
            }
        }
    }
}

#[tokio::test]
async fn events_after_another_request_on_a_keep_alive_connection() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let mut conn = HttpConn::connect(addr).await.expect("connect");
    conn.send_request("GET", "/healthz", &[], b"").await.expect("send");
    let (status, _) = conn.read_head("GET").await.expect("head");
    assert_eq!(status, 200);
    conn.read_body_to_end().await.expect("healthz body");

    conn.send_request("GET", "/events?topics=keepalive", &[], b"").await.expect("send");
    let (status, headers) = conn.read_head("GET").await.expect("head");
    assert_eq!(status, 200);
    assert_eq!(find_header(&headers, "content-type").map(media_type).as_deref(), Some("text/event-stream"));

    let mut parser = SseParser::new();
    for data in ["one", "two\nlines"] {
        let id = publish(addr, &["keepalive"], Some("t"), data).await;
        let event = next_event(&mut conn, &mut parser).await;
        assert_eq!(event.id(), id);
        assert_eq!(event.event.as_deref(), Some("t"));
        assert_eq!(event.data, data);
    }
}

#[tokio::test]
async fn http_1_0_gets_a_close_delimited_stream() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(b"GET /events?topics=old HTTP/1.0\r\nHost: x\r\n\r\n").await.expect("send");
    let mut received = Vec::new();
    let mut buf = vec![0u8; 4096];
    // The head and the opening bytes.
    while !String::from_utf8_lossy(&received).contains(": herald") {
        let n = tokio::time::timeout(T, stream.read(&mut buf)).await.expect("opening in time").expect("read");
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buf[..n]);
    }
    let id = publish(addr, &["old"], None, "hello").await;
    let expected = format!("id: {id}\ndata: hello\n\n");
    while !String::from_utf8_lossy(&received).contains(&expected) {
        let n = tokio::time::timeout(T, stream.read(&mut buf)).await.expect("event in time").expect("read");
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&received);
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("transfer-encoding"), "HTTP/1.0 cannot take chunks: {head}");
    assert_eq!(body, format!("retry: 3000\n: herald\n\n{expected}"), "the body is bare SSE");
}

/// Sends `raw` on `conn` (after `before`, a request answered first when given) and reads the answer.
async fn answer_to(addr: std::net::SocketAddr, before: Option<&str>, raw: &[u8]) -> HttpResponse {
    let mut conn = HttpConn::connect(addr).await.expect("connect");
    if let Some(path) = before {
        conn.send_request("GET", path, &[], b"").await.expect("send");
        let (status, _) = tokio::time::timeout(T, conn.read_head("GET")).await.expect("answer").expect("head");
        assert_eq!(status, 200);
        conn.read_body_to_end().await.expect("body");
    }
    conn.write_all(raw).await.expect("send");
    let (status, headers) = tokio::time::timeout(T, conn.read_head("GET")).await.expect("answer").expect("head");
    let body = tokio::time::timeout(T, conn.read_body_to_end()).await.expect("body in time").expect("body");
    HttpResponse { status, headers, body }
}

/// Every error is JSON, request heads that cannot be parsed included, whether the event-stream front reads
/// the head (the first request of a connection) or hyper does (a later one): 400 `bad_request`, 414
/// `uri_too_long`, 431 `request_header_fields_too_large`, each with `Connection: close`.
#[tokio::test]
async fn malformed_heads_get_json_errors() {
    const HEAD_LIMIT: usize = 64 * 1024;
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let many_headers = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{}\r\n", "X-Many: 1\r\n".repeat(101));
    // Exactly the limit, so that the server has read all of it when it answers.
    let long_uri = format!("GET /{}", "u".repeat(HEAD_LIMIT - 5));
    let long_head = {
        let start = "GET /healthz HTTP/1.1\r\nX-Pad: ";
        format!("{start}{}", "p".repeat(HEAD_LIMIT - start.len()))
    };
    // Far over the limit: answered all the same (what the client still sends is read and dropped first).
    let longer_uri = format!("GET /{}", "u".repeat(4 * HEAD_LIMIT));
    let cases: [(Option<&str>, &[u8], u16, &str); 10] = [
        (None, b"GET /events?topics=a HTTP/1.1\r\nBad Header\r\n\r\n", 400, "bad_request"),
        (None, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, "bad_request"),
        (None, b"GET /healthz HTTP/9.9\r\n\r\n", 400, "bad_request"),
        (None, long_uri.as_bytes(), 414, "uri_too_long"),
        (None, longer_uri.as_bytes(), 414, "uri_too_long"),
        (None, long_head.as_bytes(), 431, "request_header_fields_too_large"),
        (None, many_headers.as_bytes(), 431, "request_header_fields_too_large"),
        (Some("/healthz"), b"GET /events?topics=a HTTP/1.1\r\nBad Header\r\n\r\n", 400, "bad_request"),
        (Some("/healthz"), b"POST /publish HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400, "bad_request"),
        (Some("/healthz"), many_headers.as_bytes(), 431, "request_header_fields_too_large"),
    ];
    for (before, raw, status, code) in cases {
        let what = format!("{:?} after {before:?}", String::from_utf8_lossy(&raw[..raw.len().min(40)]));
        let resp = answer_to(addr, before, raw).await;
        assert_eq!(resp.status, status, "{what}: {}", resp.text());
        assert_error(&resp, status, Some(code));
        assert_eq!(resp.header("connection").map(str::to_ascii_lowercase).as_deref(), Some("close"), "{what}");
    }
    // The node still serves.
    assert_eq!(get(addr, "/healthz").await.status, 200);
}

/// The same tests against Redis.
mod on_redis {
    super::support::on_redis!(
        events_after_another_request_on_a_keep_alive_connection,
        http_1_0_gets_a_close_delimited_stream,
    );
}
