//! CORS (`--cors-origin`): which origins get `Access-Control-Allow-*` headers, on streams (served by the
//! event-stream front) and on publishes and their preflights (served by hyper).

mod support;

use std::time::Duration;

use support::*;

const APP: &str = "http://app.example";

#[tokio::test]
async fn named_origin_is_allowed_with_credentials_on_streams_and_publishes() {
    let server = TestServer::start(&["--cors-origin", APP]);
    let addr = server.addr();

    let stream = SseClient::connect(addr, &events_path(&["doc/1"], ""), &[("Origin", APP)]).await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.header("access-control-allow-origin"), Some(APP));
    assert_eq!(stream.header("access-control-allow-credentials"), Some("true"));
    drop(stream);

    let preflight = http(
        addr,
        "OPTIONS",
        "/publish",
        &[
            ("Origin", APP),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "authorization, content-type"),
        ],
        b"",
    )
    .await;
    assert_eq!(preflight.status, 200, "preflight: {:?}", preflight.text());
    assert_eq!(preflight.header("access-control-allow-origin"), Some(APP));
    let methods = preflight.header("access-control-allow-methods").unwrap_or("").to_ascii_uppercase();
    assert!(methods.contains("POST"), "allow-methods {methods:?}");
    let headers = preflight.header("access-control-allow-headers").unwrap_or("").to_ascii_lowercase();
    assert!(headers.contains("authorization") && headers.contains("content-type"), "allow-headers {headers:?}");

    let body = br#"{"topic":"doc/1","data":"x"}"#;
    let published =
        http(addr, "POST", "/publish", &[("Origin", APP), ("Content-Type", "application/json")], body).await;
    assert_eq!(published.status, 200);
    assert_eq!(published.header("access-control-allow-origin"), Some(APP));
}

#[tokio::test]
async fn other_origins_get_no_allow_headers() {
    let server = TestServer::start(&["--cors-origin", APP]);
    let addr = server.addr();
    let stream = SseClient::connect(addr, &events_path(&["doc/1"], ""), &[("Origin", "http://evil.example")]).await;
    assert_eq!(stream.status, 200, "CORS is enforced by the browser; the server only withholds the headers");
    assert_eq!(stream.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn any_origin_is_allowed_without_credentials() {
    let server = TestServer::start(&["--cors-origin", "*"]);
    let addr = server.addr();
    let mut stream = SseClient::connect(addr, &events_path(&["doc/1"], ""), &[("Origin", APP)]).await;
    assert_eq!(stream.header("access-control-allow-origin"), Some("*"));
    assert_eq!(stream.header("access-control-allow-credentials"), None);
    // Still an ordinary stream.
    let id = publish(addr, &["doc/1"], None, "x").await;
    assert_eq!(stream.next_event(Duration::from_secs(5)).await.id(), id);
}

#[tokio::test]
async fn without_the_flag_there_are_no_cors_headers() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let stream = SseClient::connect(addr, &events_path(&["doc/1"], ""), &[("Origin", APP)]).await;
    assert_eq!(stream.header("access-control-allow-origin"), None);
    let preflight =
        http(addr, "OPTIONS", "/publish", &[("Origin", APP), ("Access-Control-Request-Method", "POST")], b"").await;
    assert_eq!(preflight.header("access-control-allow-origin"), None);
}
