//! `POST /publish`: JSON and form bodies, data encoding, validation and limits.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use support::*;

const T: Duration = Duration::from_secs(5);
const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";

/// Publishes a raw JSON body, asserting 200 and `{"id":"..."}`; returns the id.
async fn publish_ok(addr: SocketAddr, content_type: &str, body: &str) -> String {
    let resp = publish_raw(addr, content_type, body.as_bytes()).await;
    assert_eq!(resp.status, 200, "publish {body:?}: {} {}", resp.status, resp.text());
    let ct = resp.header("content-type").unwrap_or("");
    assert_eq!(media_type(ct), "application/json", "publish response content type {ct:?}");
    let v = resp.json();
    let obj = v.as_object().unwrap_or_else(|| panic!("response not an object: {v}"));
    assert_eq!(obj.len(), 1, "response must be exactly {{\"id\":...}}: {v}");
    let id = obj["id"].as_str().unwrap_or_else(|| panic!("id not a string: {v}")).to_string();
    assert!(!id.is_empty() && id.len() <= 64, "id length: {id:?}");
    id
}

#[tokio::test]
async fn json_topic_type_and_string_data() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let mut c = SseClient::subscribe(addr, &["doc/42"]).await;
    let id = publish_ok(addr, JSON, r#"{"topic":"doc/42","type":"doc.updated","data":"New title"}"#).await;
    let e = c.next_event(T).await;
    assert_eq!(e.id(), id);
    assert_eq!(e.event.as_deref(), Some("doc.updated"));
    assert_eq!(e.data, "New title");
}

#[tokio::test]
async fn json_topics_and_topic_together_make_one_event() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let mut all = SseClient::subscribe(addr, &["a", "b", "c"]).await;
    let mut only_a = SseClient::subscribe(addr, &["a"]).await;
    let mut only_c = SseClient::subscribe(addr, &["c"]).await;
    let id1 = publish_ok(addr, JSON, r#"{"topics":["b","c"],"data":"plain text"}"#).await;
    let id2 = publish_ok(addr, JSON, r#"{"topic":"a","topics":["b","c"],"data":"both"}"#).await;
    let marker = publish_ok(addr, JSON, r#"{"topics":["a","c"],"data":"marker"}"#).await;
    let got: Vec<String> = all.next_events(3, T).await.iter().map(|e| e.id().to_string()).collect();
    assert_eq!(got, vec![id1.clone(), id2.clone(), marker.clone()]);
    let got: Vec<String> = only_a.next_events(2, T).await.iter().map(|e| e.id().to_string()).collect();
    assert_eq!(got, vec![id2.clone(), marker.clone()]);
    let got: Vec<String> = only_c.next_events(3, T).await.iter().map(|e| e.id().to_string()).collect();
    assert_eq!(got, vec![id1, id2, marker]);
}

#[tokio::test]
async fn data_values_are_sent_as_compact_json_text() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let mut c = SseClient::subscribe(addr, &["d"]).await;
    let cases: &[(&str, &str)] = &[
        (r#"{"b":1,"a":[1,2]}"#, r#"{"b":1,"a":[1,2]}"#),
        (
            r#" { "b" : 1 ,
              "a" : [ 1 , 2 ] } "#,
            r#"{"b":1,"a":[1,2]}"#,
        ),
        (r#"{"z":{"y":"x\ny","a":null},"a":true}"#, r#"{"z":{"y":"x\ny","a":null},"a":true}"#),
        ("42", "42"),
        ("-7", "-7"),
        ("1.5", "1.5"),
        ("true", "true"),
        ("false", "false"),
        (r#"[1,"x",null]"#, r#"[1,"x",null]"#),
        ("[]", "[]"),
        ("{}", "{}"),
        (r#""a\"b\\c\u00e9\n2""#, "a\"b\\cé\n2"),
        (r#""""#, ""),
    ];
    for (data_json, expected) in cases {
        let body = format!(r#"{{"topic":"d","data":{data_json}}}"#);
        let id = publish_ok(addr, JSON, &body).await;
        let e = c.next_event(T).await;
        assert_eq!(e.id(), id, "data {data_json}");
        assert_eq!(e.data, *expected, "data {data_json}");
    }
}

#[tokio::test]
async fn null_or_missing_data_is_400() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    for body in [r#"{"topic":"a","data":null}"#, r#"{"topic":"a"}"#, r#"{"topic":"a","type":"t"}"#] {
        let resp = publish_raw(addr, JSON, body.as_bytes()).await;
        assert_error(&resp, 400, Some("missing_data"));
    }
    let resp = publish_raw(addr, FORM, b"topic=a&type=t").await;
    assert_error(&resp, 400, Some("missing_data"));
}

#[tokio::test]
async fn form_body() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let mut ab = SseClient::subscribe(addr, &["a", "b"]).await;
    let mut b = SseClient::subscribe(addr, &["b"]).await;
    let id = publish_ok(addr, FORM, "topic=a&topic=b&type=t&data=x").await;
    let e = ab.next_event(T).await;
    assert_eq!((e.id(), e.event.as_deref(), e.data.as_str()), (id.as_str(), Some("t"), "x"));
    ab.assert_no_event(Duration::from_millis(200)).await;
    assert_eq!(b.next_event(T).await.id(), id);
    // Percent-encoding and `+` as in any form; a URL topic.
    let id = publish_ok(addr, FORM, "topic=b&data=line+1%0D%0Aline%202%26%3D").await;
    let e = b.next_event(T).await;
    assert_eq!((e.id(), e.event.as_deref(), e.data.as_str()), (id.as_str(), None, "line 1\nline 2&="));
    let mut url = SseClient::subscribe(addr, &["https://example.com/books/1"]).await;
    let id = publish_ok(addr, FORM, "topic=https%3A%2F%2Fexample.com%2Fbooks%2F1&data=").await;
    let e = url.next_event(T).await;
    assert_eq!((e.id(), e.data.as_str()), (id.as_str(), ""));
}

/// Issue 7, defect 10: a form value that is not UTF-8 was delivered with U+FFFD in it, while the same
/// bytes in JSON were refused. Both are 400 now, and nothing is delivered.
#[tokio::test]
async fn bodies_that_are_not_utf8_are_400() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let mut c = SseClient::subscribe(addr, &["a"]).await;
    for body in [&b"topic=a&data=caf%E9"[..], b"data=%FF&topic=a", b"topic=a&type=t%E9&data=x"] {
        let resp = publish_raw(addr, FORM, body).await;
        assert_error(&resp, 400, Some("bad_request"));
    }
    let resp = publish_raw(addr, FORM, b"topic=a&topic=caf%E9&data=x").await;
    assert_error(&resp, 400, Some("bad_topic"));
    let resp = publish_raw(addr, JSON, b"{\"topic\":\"a\",\"data\":\"caf\xe9\"}").await;
    assert_error(&resp, 400, Some("bad_request"));
    // UTF-8 escapes, and bytes that are not UTF-8 in a field Herald does not read, are fine.
    let id = publish_ok(addr, FORM, "topic=a&data=caf%C3%A9&other=%E9").await;
    let e = c.next_event(T).await;
    assert_eq!((e.id(), e.data.as_str()), (id.as_str(), "café"), "the first event delivered is the valid one");
}

#[tokio::test]
async fn malformed_json_is_400() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    for body in [
        r#"{"topic":"a","data":"x""#,
        "not json",
        "",
        r#""just a string""#,
        r#"{"topic":"a","data":"x"} trailing"#,
        "\u{FEFF}{\"topic\":\"a\",\"data\":\"x\"",
    ] {
        let resp = publish_raw(addr, JSON, body.as_bytes()).await;
        assert_eq!(resp.status, 400, "body {body:?} -> {} {}", resp.status, resp.text());
        let code = resp.json()["error"]["code"].as_str().unwrap_or("").to_string();
        assert_eq!(code, "bad_request", "body {body:?} -> {}", resp.text());
        assert_error(&resp, 400, Some("bad_request"));
    }
    // Wrong JSON types for known fields: a 400, whichever code.
    for body in [
        r#"{"topic":5,"data":"x"}"#,
        r#"{"topics":"a","data":"x"}"#,
        r#"{"topics":[1],"data":"x"}"#,
        r#"{"topic":"a","type":7,"data":"x"}"#,
    ] {
        let resp = publish_raw(addr, JSON, body.as_bytes()).await;
        assert_error(&resp, 400, None);
    }
    // Invalid UTF-8.
    let resp = publish_raw(addr, JSON, b"{\"topic\":\"a\",\"data\":\"\xff\"}").await;
    assert_error(&resp, 400, None);
}

/// A JSON array is not the documented object shape, even when serde could map it onto the
/// fields by position: it is a malformed body, and nothing is published.
#[tokio::test]
async fn array_bodies_are_malformed() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let mut c = SseClient::subscribe(addr, &["a", "b"]).await;
    let mut wrong = Vec::new();
    for body in [r#"["a",["b"],"t","x"]"#, r#"[null,["b"],null,"x"]"#, r#"["a"]"#, "[]"] {
        let resp = publish_raw(addr, JSON, body.as_bytes()).await;
        let code = serde_json::from_slice::<serde_json::Value>(&resp.body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
        if resp.status != 400 || code.as_deref() != Some("bad_request") {
            wrong.push(format!("{body} -> {} {}", resp.status, resp.text()));
        }
    }
    assert!(wrong.is_empty(), "expected 400 bad_request for:\n{}", wrong.join("\n"));
    c.assert_no_event(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn bad_types_are_400() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let t65 = "t".repeat(65);
    for ty in ["herald.x", "herald.reset", t65.as_str(), "a b", "é", "a/b", "a,b", "a\nb"] {
        let (status, body) = publish_json(addr, &json!({"topic": "a", "type": ty, "data": "x"})).await;
        assert_eq!(status, 400, "type {ty:?}: {body}");
        assert_eq!(body["error"]["code"], "bad_type", "type {ty:?}: {body}");
    }
    // The whole allowed alphabet, at the maximum length.
    let ok = format!("{}{}", "Az09._:-", "x".repeat(56));
    assert_eq!(ok.len(), 64);
    let mut c = SseClient::subscribe(addr, &["a"]).await;
    let id = publish(addr, &["a"], Some(&ok), "x").await;
    let e = c.next_event(T).await;
    assert_eq!((e.id(), e.event.as_deref()), (id.as_str(), Some(ok.as_str())));
    // "herald" without the dot is not reserved.
    publish(addr, &["a"], Some("heraldic"), "x").await;
}

#[tokio::test]
async fn bad_or_missing_topics_are_400() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let t257 = "t".repeat(257);
    for topic in ["a b", "a*", "a?", "a#", "a,b", "é", t257.as_str()] {
        let (status, body) = publish_json(addr, &json!({"topic": topic, "data": "x"})).await;
        assert_eq!(status, 400, "topic {topic:?}: {body}");
        assert_eq!(body["error"]["code"], "bad_topic", "topic {topic:?}: {body}");
        let (status, body) = publish_json(addr, &json!({"topics": ["ok", topic], "data": "x"})).await;
        assert_eq!(status, 400, "topics [ok, {topic:?}]: {body}");
    }
    // An empty topic: "no topic" or "bad topic", but 400.
    let (status, body) = publish_json(addr, &json!({"topic": "", "data": "x"})).await;
    assert_eq!(status, 400, "empty topic: {body}");
    let code = body["error"]["code"].as_str().unwrap_or("");
    assert!(code == "bad_topic" || code == "no_topic", "empty topic: {body}");
    for body in [json!({"data": "x"}), json!({"topics": [], "data": "x"})] {
        let (status, resp) = publish_json(addr, &body).await;
        assert_eq!(status, 400, "{body}: {resp}");
        assert_eq!(resp["error"]["code"], "no_topic", "{body}: {resp}");
    }
    let resp = publish_raw(addr, FORM, b"data=x").await;
    assert_error(&resp, 400, Some("no_topic"));
    // Nothing of a refused publish is delivered (all or nothing).
    let mut c = SseClient::subscribe(addr, &["ok"]).await;
    let (status, _) = publish_json(addr, &json!({"topics": ["ok", "a b"], "data": "x"})).await;
    assert_eq!(status, 400);
    c.assert_no_event(Duration::from_millis(300)).await;
}

/// Per the error-code list given with this suite, `too_many_topics` applies to `/publish` too.
#[tokio::test]
async fn too_many_topics_on_publish_is_400() {
    let server = TestServer::start(&["--max-topics", "3"]);
    let addr = server.addr();
    let (status, body) = publish_json(addr, &json!({"topics": ["a", "b", "c", "d"], "data": "x"})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "too_many_topics", "{body}");
    let (status, body) = publish_json(addr, &json!({"topics": ["a", "b", "c", "a"], "data": "x"})).await;
    assert_eq!(status, 200, "duplicates merged: {body}");
}

#[tokio::test]
async fn event_size_limit_is_413() {
    let server = TestServer::start(&["--max-event-size", "100"]);
    let addr = server.addr();
    let mut c = SseClient::subscribe(addr, &["a"]).await;
    let id = publish(addr, &["a"], None, &"x".repeat(100)).await;
    assert_eq!(c.next_event(T).await.id(), id);
    let (status, body) = publish_json(addr, &json!({"topic": "a", "data": "x".repeat(101)})).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "event_too_large");
    // Size counts bytes: 34 × 3-byte characters = 102 bytes.
    let (status, body) = publish_json(addr, &json!({"topic": "a", "data": "漢".repeat(34)})).await;
    assert_eq!(status, 413, "{body}");
    // A JSON value is measured by its compact text (here 111 bytes).
    let big = json!({"topic": "a", "data": {"k": "y".repeat(103)}});
    let (status, body) = publish_json(addr, &big).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "event_too_large");
    let resp = publish_raw(addr, FORM, format!("topic=a&data={}", "z".repeat(101)).as_bytes()).await;
    assert_error(&resp, 413, Some("event_too_large"));
    c.assert_no_event(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn default_event_size_limit_is_64_kib() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let mut c = SseClient::subscribe(addr, &["a"]).await;
    let data = "y".repeat(65536);
    let id = publish(addr, &["a"], None, &data).await;
    let e = c.next_event(T).await;
    assert_eq!(e.id(), id);
    assert!(e.data == data, "64 KiB event altered ({} bytes received)", e.data.len());
    let (status, body) = publish_json(addr, &json!({"topic": "a", "data": "y".repeat(65537)})).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "event_too_large");
}

#[tokio::test]
async fn body_size_limit_is_413() {
    let server = TestServer::start(&["--max-body-size", "1000"]);
    let addr = server.addr();
    let small = json!({"topic": "a", "data": "x".repeat(900)}).to_string();
    assert!(small.len() <= 1000);
    publish_ok(addr, JSON, &small).await;
    let big = json!({"topic": "a", "data": "x".repeat(1500)}).to_string();
    let resp = publish_raw(addr, JSON, big.as_bytes()).await;
    assert_error(&resp, 413, Some("body_too_large"));
    let huge = json!({"topic": "a", "data": "x".repeat(50_000)}).to_string();
    let resp = publish_raw(addr, JSON, huge.as_bytes()).await;
    assert_error(&resp, 413, Some("body_too_large"));
}

/// A chunked request body (no Content-Length) over the limit is refused as well.
#[tokio::test]
async fn chunked_body_over_limit_is_413() {
    let server = TestServer::start(&["--max-body-size", "1000"]);
    let addr = server.addr();
    let body = json!({"topic": "a", "data": "x".repeat(5000)}).to_string();
    let mut chunked = Vec::new();
    for part in body.as_bytes().chunks(700) {
        chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let resp =
        http(addr, "POST", "/publish", &[("Content-Type", JSON), ("Transfer-Encoding", "chunked")], &chunked).await;
    assert_error(&resp, 413, Some("body_too_large"));
}

#[tokio::test]
async fn other_content_types_are_415() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let body = br#"{"topic":"a","data":"x"}"#;
    for ct in ["text/plain", "application/xml", "multipart/form-data; boundary=x"] {
        let resp = publish_raw(addr, ct, body).await;
        assert_error(&resp, 415, Some("unsupported_media_type"));
    }
    let resp = http(addr, "POST", "/publish", &[], body).await;
    assert_error(&resp, 415, Some("unsupported_media_type"));
    // Parameters and case do not matter.
    publish_ok(addr, "application/json; charset=utf-8", r#"{"topic":"a","data":"x"}"#).await;
    publish_ok(addr, "Application/JSON", r#"{"topic":"a","data":"x"}"#).await;
    publish_ok(addr, "application/x-www-form-urlencoded; charset=UTF-8", "topic=a&data=x").await;
}

#[tokio::test]
async fn ids_increase() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let mut ids = Vec::new();
    for i in 0..50 {
        let body = json!({"topic": format!("t{}", i % 5), "data": i.to_string()}).to_string();
        ids.push(publish_ok(addr, JSON, &body).await);
    }
    assert_strictly_increasing(&ids);
}

#[tokio::test]
async fn other_methods_are_405() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    for method in ["GET", "PUT", "DELETE"] {
        let resp = http(addr, method, "/publish", &[], b"").await;
        assert_error(&resp, 405, Some("method_not_allowed"));
        let allow = resp.header("allow").unwrap_or_else(|| panic!("{method}: 405 without Allow"));
        assert!(allow.to_ascii_uppercase().contains("POST"), "{method}: Allow {allow:?}");
    }
}

/// `--request-timeout`: a publish body that does not arrive in time gets 408 `request_timeout`; a client
/// that sends nothing, or only part of a head, is disconnected. Nothing is published.
#[tokio::test]
async fn slow_requests_time_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start(&["--request-timeout", "1"]);
    let addr = server.addr();

    /// Sends `bytes`, then reads until the server closes; returns what it sent back and how long it took.
    async fn send_and_wait(addr: SocketAddr, bytes: &[u8]) -> (String, Duration) {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(bytes).await.expect("write");
        let start = std::time::Instant::now();
        let mut got = Vec::new();
        tokio::time::timeout(T, s.read_to_end(&mut got)).await.expect("server closes the connection").ok();
        (String::from_utf8_lossy(&got).into_owned(), start.elapsed())
    }

    let partial_body =
        b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"topic\"";
    let (reply, took) = send_and_wait(addr, partial_body).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply:?}");
    assert!(reply.contains(r#""code":"request_timeout""#), "{reply:?}");
    assert!(took < Duration::from_secs(4), "took {took:?} with --request-timeout 1");

    for head in [&b""[..], b"GET /events?topics=a HTTP/1.1\r\nHost", b"POST /publish HTTP/1.1\r\n"] {
        let (reply, took) = send_and_wait(addr, head).await;
        assert!(reply.is_empty() || reply.starts_with("HTTP/1.1 408"), "{head:?}: {reply:?}");
        assert!(took < Duration::from_secs(4), "{head:?}: closed after {took:?}");
    }
    assert_eq!(metrics(addr).await["herald_events_published_total"], 0.0);
}

/// The same tests against Redis.
mod on_redis {
    super::support::on_redis!(
        json_topic_type_and_string_data,
        json_topics_and_topic_together_make_one_event,
        data_values_are_sent_as_compact_json_text,
        null_or_missing_data_is_400,
        form_body,
        bodies_that_are_not_utf8_are_400,
        malformed_json_is_400,
        array_bodies_are_malformed,
        bad_types_are_400,
        bad_or_missing_topics_are_400,
        too_many_topics_on_publish_is_400,
        event_size_limit_is_413,
        default_event_size_limit_is_64_kib,
        body_size_limit_is_413,
        chunked_body_over_limit_is_413,
        other_content_types_are_415,
        ids_increase,
        other_methods_are_405,
    );
}
