//! `GET /events`: response head, stream framing, injection safety, topics parsing, limits,
//! heartbeats and "live once the head is sent".

mod support;

use std::time::{Duration, Instant};

use support::*;

const T: Duration = Duration::from_secs(5);

/// Reads the opening `retry:` line and comment.
async fn read_opening(c: &mut SseClient, retry: u64) {
    let first = c.next_item(T).await;
    assert_eq!(first, Some(SseItem::Retry(retry)), "stream must open with `retry: {retry}`");
    let second = c.next_item(T).await;
    assert!(matches!(second, Some(SseItem::Comment(_))), "a comment line must follow the retry line, got {second:?}");
}

#[tokio::test]
async fn head_and_opening_bytes() {
    let server = TestServer::start(&[]);
    let mut c = SseClient::subscribe(server.addr(), &["a"]).await;
    assert_sse_head(&c);
    // The opening arrives at once, without any event being published.
    read_opening(&mut c, 3000).await;
}

#[tokio::test]
async fn retry_flag_sets_hint() {
    let server = TestServer::start(&["--retry", "1234"]);
    let mut c = SseClient::subscribe(server.addr(), &["a"]).await;
    assert_sse_head(&c);
    read_opening(&mut c, 1234).await;
}

#[tokio::test]
async fn event_framing_id_type_data() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let mut c = SseClient::subscribe(addr, &["a"]).await;
    read_opening(&mut c, 3000).await;
    let id1 = publish(addr, &["a"], Some("doc.updated"), "hello").await;
    let id2 = publish(addr, &["a"], None, "plain").await;
    let id3 = publish(addr, &["a"], Some(""), "empty type").await;
    let e1 = c.next_event(T).await;
    assert_eq!((e1.id(), e1.event.as_deref(), e1.data.as_str()), (id1.as_str(), Some("doc.updated"), "hello"));
    let e2 = c.next_event(T).await;
    assert_eq!((e2.id(), e2.event.as_deref(), e2.data.as_str()), (id2.as_str(), None, "plain"));
    let e3 = c.next_event(T).await;
    assert_eq!((e3.id(), e3.event.as_deref(), e3.data.as_str()), (id3.as_str(), None, "empty type"));
}

/// Also checks, on the raw bytes, that untyped events have no `event:` line at all.
#[tokio::test]
async fn untyped_event_has_no_event_line() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let mut conn = HttpConn::connect(addr).await.expect("connect");
    conn.send_request("GET", "/events?topics=a", &[], b"").await.expect("write");
    let (status, _) = conn.read_head("GET").await.expect("head");
    assert_eq!(status, 200);
    let id = publish(addr, &["a"], None, "x").await;
    let mut raw = Vec::new();
    let deadline = Instant::now() + T;
    while !String::from_utf8_lossy(&raw).contains("data: x") && !String::from_utf8_lossy(&raw).contains("data:x") {
        assert!(Instant::now() < deadline, "event not received; raw so far {:?}", String::from_utf8_lossy(&raw));
        match tokio::time::timeout(T, conn.next_body_data()).await {
            Ok(Ok(Some(d))) => raw.extend(d),
            other => panic!("stream broke: {other:?}"),
        }
    }
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains(&id), "raw stream lacks id {id}: {text:?}");
    assert!(
        !text.split(['\r', '\n']).any(|line| line.starts_with("event")),
        "untyped event must not have an event: line: {text:?}"
    );
}

#[tokio::test]
async fn injection_cases_round_trip() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let mut c = SseClient::subscribe(addr, &["inj"]).await;
    read_opening(&mut c, 3000).await;
    let cases: &[&str] = &[
        "a\rb",
        "a\nb",
        "a\r\nb",
        "ends with CR\r",
        "ends with LF\n",
        "ends with CRLF\r\n",
        "\n\nid: 99",
        "\n\nid: 99\n\ndata: forged\n\n",
        "\r\nevent: x",
        "\revent: x\rdata: y\r\r",
        "\rretry: 1",
        "\nretry: 1\n",
        " leading space",
        "  two leading spaces",
        "",
        "\n",
        "\n\n",
        "\r\r\r",
        "\r\n\r\n",
        "\n\r",
        ":not a comment",
        "\n: comment injection",
        "data: x",
        "id: 5",
        "event: herald.reset",
        "tab\there",
        "unicode é 漢字 😀",
        "a\r\n\rb\n\r\nc",
    ];
    let mut published = Vec::new();
    for (i, data) in cases.iter().enumerate() {
        let ty = if i.is_multiple_of(2) { Some("t.x") } else { None };
        let id = publish(addr, &["inj"], ty, data).await;
        published.push((id, ty, *data));
    }
    for (id, ty, data) in &published {
        // No retry field may appear: a forged `retry:` would be surfaced by the parser.
        let item = loop {
            match c.next_item(T).await {
                Some(SseItem::Comment(_)) => continue,
                other => break other,
            }
        };
        let Some(SseItem::Event(e)) = item else {
            panic!("published {data:?} (id {id}), expected an event, got {item:?}");
        };
        assert_eq!(e.data, normalize_newlines(data), "data of {data:?}");
        assert_eq!(e.id.as_deref(), Some(id.as_str()), "id of {data:?}");
        assert_eq!(e.event.as_deref(), *ty, "type of {data:?}");
    }
    c.assert_no_event(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn ids_strictly_increasing_across_topics() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let topics = ["a", "b", "c"];
    let mut c = SseClient::subscribe(addr, &topics).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(publish(addr, &[topics[i % 3]], None, &format!("{i}")).await);
    }
    assert_strictly_increasing(&ids);
    let got: Vec<String> = c.next_events(30, T).await.into_iter().map(|e| e.id().to_string()).collect();
    assert_eq!(got, ids);
}

#[tokio::test]
async fn event_to_several_topics_delivered_once() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let mut c = SseClient::subscribe(addr, &["a", "b", "c"]).await;
    let id1 = publish(addr, &["a", "b", "c"], None, "x").await;
    let id2 = publish(addr, &["b", "zzz"], None, "y").await;
    let marker = publish(addr, &["c"], None, "marker").await;
    let got: Vec<String> = c.next_events(3, T).await.into_iter().map(|e| e.id().to_string()).collect();
    assert_eq!(got, vec![id1, id2, marker]);
    c.assert_no_event(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn repeated_and_comma_separated_topics() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let mut c = SseClient::open(addr, "/events?topics=a&topics=b,c&topics=d", &[]).await;
    let mut ids = Vec::new();
    for t in ["a", "b", "c", "d"] {
        ids.push(publish(addr, &[t], None, t).await);
    }
    let got: Vec<String> = c.next_events(4, T).await.into_iter().map(|e| e.id().to_string()).collect();
    assert_eq!(got, ids);
}

#[tokio::test]
async fn percent_encoded_topics() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let url_topic = "https://example.com/books/1";
    let odd = "a%b&c=d+e";
    let path = format!("/events?topics={},doc/42&topics={}", enc(url_topic), enc(odd));
    let mut c = SseClient::open(addr, &path, &[]).await;
    let id1 = publish(addr, &[url_topic], None, "book").await;
    let id2 = publish(addr, &["doc/42"], None, "doc").await;
    let id3 = publish(addr, &[odd], None, "odd").await;
    let got = c.next_events(3, T).await;
    assert_eq!(
        got.iter().map(|e| (e.id(), e.data.as_str())).collect::<Vec<_>>(),
        vec![(id1.as_str(), "book"), (id2.as_str(), "doc"), (id3.as_str(), "odd")]
    );
}

#[tokio::test]
async fn topic_of_256_bytes_is_fine() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let topic = "t".repeat(256);
    let mut c = SseClient::subscribe(addr, &[&topic]).await;
    let id = publish(addr, &[&topic], None, "long").await;
    assert_eq!(c.next_event(T).await.id(), id);
}

#[tokio::test]
async fn bad_topics_are_400() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let long = "a".repeat(257);
    // Raw query values, already percent-encoded where needed.
    let bad: Vec<(&str, String)> = vec![
        ("space", "a%20b".into()),
        ("star", "a*".into()),
        ("star alone", "*".into()),
        ("question mark", "a%3Fb".into()),
        ("hash", "a%23b".into()),
        ("empty segment", "a,,b".into()),
        ("leading comma", ",a".into()),
        ("trailing comma", "a,".into()),
        ("257 bytes", long),
        ("non-ASCII", "caf%C3%A9".into()),
        ("not UTF-8", "caf%E9".into()),
        ("a lone byte that is not UTF-8", "%FF".into()),
        ("control char", "a%09b".into()),
        ("DEL", "a%7Fb".into()),
        ("NUL", "a%00b".into()),
    ];
    for (what, q) in bad {
        let resp = get(addr, &format!("/events?topics={q}")).await;
        assert_eq!(resp.status, 400, "{what}: topics={q} -> {} {}", resp.status, resp.text());
        assert_error(&resp, 400, Some("bad_topic"));
        // One bad topic among good ones refuses the whole request.
        let resp = get(addr, &format!("/events?topics=good&topics={q}")).await;
        assert_eq!(resp.status, 400, "{what} with a good topic: {}", resp.text());
    }
}

#[tokio::test]
async fn no_topics_is_400() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    for path in ["/events", "/events?foo=bar", "/events?lastEventId=1-0"] {
        let resp = get(addr, path).await;
        assert_error(&resp, 400, Some("no_topic"));
    }
    // An empty value: either "no topic" or "bad topic", but 400.
    let resp = get(addr, "/events?topics=").await;
    assert_error(&resp, 400, None);
    let code = resp.json()["error"]["code"].as_str().unwrap_or("").to_string();
    assert!(code == "no_topic" || code == "bad_topic", "topics= -> {code}");
}

#[tokio::test]
async fn max_topics_counted_after_merging_duplicates() {
    let server = TestServer::start(&["--max-topics", "3"]);
    let addr = server.addr();
    let resp = get(addr, "/events?topics=a,b,c,d").await;
    assert_error(&resp, 400, Some("too_many_topics"));
    let resp = get(addr, "/events?topics=a,b&topics=c&topics=d").await;
    assert_error(&resp, 400, Some("too_many_topics"));
    let c = SseClient::open(addr, "/events?topics=a,b,c,a&topics=b&topics=c,a", &[]).await;
    assert_sse_head(&c);
    let c3 = SseClient::open(addr, "/events?topics=a,b,c", &[]).await;
    assert_sse_head(&c3);
}

#[tokio::test]
async fn default_max_topics_is_64() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let t64: Vec<String> = (0..64).map(|i| format!("t{i}")).collect();
    let ok = SseClient::connect(addr, &format!("/events?topics={}", t64.join(",")), &[]).await;
    assert_eq!(ok.status, 200);
    let t65: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
    let resp = get(addr, &format!("/events?topics={}", t65.join(","))).await;
    assert_error(&resp, 400, Some("too_many_topics"));
}

#[tokio::test]
async fn other_methods_are_405() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let resp = http(addr, method, "/events?topics=a", &[], b"").await;
        assert_error(&resp, 405, Some("method_not_allowed"));
        let allow = resp.header("allow").unwrap_or_else(|| panic!("{method}: 405 without Allow"));
        assert!(allow.to_ascii_uppercase().contains("GET"), "{method}: Allow {allow:?}");
    }
}

#[tokio::test]
async fn heartbeat_on_idle_stream() {
    let server = TestServer::start(&["--heartbeat", "1"]);
    let mut c = SseClient::subscribe(server.addr(), &["a"]).await;
    read_opening(&mut c, 3000).await;
    let start = Instant::now();
    let item = c.next_item(Duration::from_millis(2500)).await;
    assert!(
        matches!(item, Some(SseItem::Comment(_))),
        "expected a heartbeat comment within 2.5 s, got {item:?} after {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn fractional_heartbeat() {
    let server = TestServer::start(&["--heartbeat", "0.5"]);
    let mut c = SseClient::subscribe(server.addr(), &["a"]).await;
    read_opening(&mut c, 3000).await;
    // A fractional interval is taken as such (each heartbeat within 2.5 s, where a whole-second rounding of
    // 0.5 s to 0 would flood and one to 1 s would still pass); the exact rhythm is checked on paused time by
    // the unit test `heartbeats_come_after_the_interval_of_silence` (src/http/body.rs), not by the wall clock.
    for n in 0..3 {
        match c.next_item(Duration::from_millis(2500)).await {
            Some(SseItem::Comment(_)) => {}
            other => panic!("expected heartbeat {n}, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_heartbeat_while_events_flow() {
    let server = TestServer::start(&["--heartbeat", "1"]);
    let addr = server.addr();
    let mut c = SseClient::subscribe(addr, &["busy"]).await;
    read_opening(&mut c, 3000).await;
    let publisher = tokio::spawn(async move {
        let start = Instant::now();
        let mut ids = Vec::new();
        while start.elapsed() < Duration::from_secs(3) {
            ids.push(publish(addr, &["busy"], None, "tick").await);
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        ids
    });
    let start = Instant::now();
    let mut events = Vec::new();
    while start.elapsed() < Duration::from_millis(3200) {
        match c.next_item(Duration::from_millis(100)).await {
            None => {}
            Some(SseItem::Event(e)) => events.push(e.id().to_string()),
            Some(other) => panic!("unexpected {other:?} at {:?} while events flow every 0.4 s", start.elapsed()),
        }
        if publisher.is_finished() {
            break;
        }
    }
    let ids = publisher.await.expect("publisher");
    while events.len() < ids.len() {
        events.push(c.next_event(T).await.id().to_string());
    }
    assert_eq!(events, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_once_head_is_sent() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let mut last: Option<String> = None;
    for round in 0..200 {
        let topic = format!("live/{}", round % 7);
        // Every other round resumes from the newest id (an empty replay): the same promise holds.
        let resume = match &last {
            Some(id) if round % 2 == 1 => vec![("Last-Event-ID", id.as_str())],
            _ => vec![],
        };
        let mut c = SseClient::open(addr, &events_path(&[&topic], ""), &resume).await;
        let id = publish(addr, &[&topic], None, &format!("round {round}")).await;
        last = Some(id.clone());
        match c.try_next_event(T).await {
            Ok(Some(e)) => {
                assert_eq!((e.id(), e.data.as_str()), (id.as_str(), format!("round {round}").as_str()), "round {round}")
            }
            Ok(None) => panic!("round {round}: event published after the head did not arrive within {T:?}"),
            Err(end) => panic!("round {round}: stream ended {end:?}"),
        }
    }
}

/// `tagTopics=1`: each event names the event's topics this stream subscribed to — never the others — in
/// the order of the event's own topic list; untagged streams on the same topics see no such line.
#[tokio::test]
async fn tagged_stream_names_the_subscribed_topics_of_each_event() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let mut tagged = SseClient::open(addr, &events_path(&["a", "b"], "tagTopics=1"), &[]).await;
    assert_sse_head(&tagged);
    let mut plain = SseClient::subscribe(addr, &["a", "b"]).await;
    let cases: &[(&[&str], &str)] = &[
        (&["a", "c"], "a"),
        (&["b", "a"], "b,a"),
        (&["b"], "b"),
        (&["c", "b", "x", "a"], "b,a"),
        (&["a", "b"], "a,b"),
    ];
    let mut ids = Vec::new();
    for (i, (topics, _)) in cases.iter().enumerate() {
        ids.push(publish(addr, topics, (i == 1).then_some("doc.updated"), &format!("event {i}")).await);
    }
    for (i, (topics, expected)) in cases.iter().enumerate() {
        let e = tagged.next_event(T).await;
        assert_eq!(e.id(), ids[i], "published to {topics:?}");
        assert_eq!(e.topics.as_deref(), Some(*expected), "published to {topics:?}");
        assert_eq!(e.data, format!("event {i}"));
        assert_eq!(e.event.as_deref(), (i == 1).then_some("doc.updated"));
        let p = plain.next_event(T).await;
        assert_eq!((p.id(), p.topics.as_deref()), (ids[i].as_str(), None), "untagged stream");
    }
}

/// The exact bytes of a tagged stream: the opening carries the live position, and the `topics:` line
/// sits after `event:` and before `data:`. Data cannot forge a `topics:` line.
#[tokio::test]
async fn tagged_stream_bytes() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let before = publish(addr, &["elsewhere"], None, "x").await;
    let (mut conn, opening) = open_raw_stream(addr, "/events?topics=a&tagTopics=1", &[]).await;
    assert_eq!(opening, format!("retry: 3000\n: herald\n: live {before}\n\n"));
    let id = publish(addr, &["x", "a"], Some("t.x"), "d1\ntopics: forged\r\nd2").await;
    let raw = read_raw_until(&mut conn, "d2\n\n").await;
    assert_eq!(raw, format!("id: {id}\nevent: t.x\ntopics: a\ndata: d1\ndata: topics: forged\ndata: d2\n\n"));
    let id = publish(addr, &["a"], None, "").await;
    let raw = read_raw_until(&mut conn, "data: \n\n").await;
    assert_eq!(raw, format!("id: {id}\ntopics: a\ndata: \n\n"));
}

/// Without `tagTopics=1` (absent, `0`, or any other value) the stream is byte for byte what it was.
#[tokio::test]
async fn untagged_streams_are_unchanged() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    publish(addr, &["elsewhere"], None, "x").await;
    for extra in ["", "&tagTopics=0", "&tagTopics=true", "&tagTopics="] {
        let (mut conn, opening) = open_raw_stream(addr, &format!("/events?topics=a,b{extra}"), &[]).await;
        assert_eq!(opening, "retry: 3000\n: herald\n\n", "{extra:?}");
        let id = publish(addr, &["b", "a"], Some("t.y"), "hello").await;
        let raw = read_raw_until(&mut conn, "hello\n\n").await;
        assert_eq!(raw, format!("id: {id}\nevent: t.y\ndata: hello\n\n"), "{extra:?}");
    }
}

/// Replayed events are tagged too; `herald.reset` carries no `topics:` line.
#[tokio::test]
async fn tagged_replay_and_reset() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let first = publish(addr, &["a"], None, "0").await;
    let published = [
        (publish(addr, &["c", "b"], None, "1").await, "b"),
        (publish(addr, &["z"], None, "not mine").await, ""),
        (publish(addr, &["a", "b", "c"], None, "2").await, "a,b"),
    ];
    let expected: Vec<(&str, &str)> =
        published.iter().filter(|(_, t)| !t.is_empty()).map(|(id, t)| (id.as_str(), *t)).collect();
    let path = events_path(&["a", "b"], "tagTopics=1");
    let mut c = SseClient::open(addr, &path, &[("Last-Event-ID", &first)]).await;
    for (id, topics) in &expected {
        let e = c.next_event(T).await;
        assert_eq!((e.id(), e.topics.as_deref()), (*id, Some(*topics)));
    }
    let mut c = SseClient::open(addr, &path, &[("Last-Event-ID", "garbage")]).await;
    let reset = c.next_event(T).await;
    assert_eq!(reset_payload(&reset), (vec!["a".to_string(), "b".to_string()], "malformed_id".to_string()));
    assert_eq!(reset.topics, None, "herald.reset has no topics line");
    let e = c.next_event(T).await;
    assert_eq!((e.id(), e.topics.as_deref()), (first.as_str(), Some("a")));
    for (id, topics) in &expected {
        let e = c.next_event(T).await;
        assert_eq!((e.id(), e.topics.as_deref()), (*id, Some(*topics)));
    }
}

/// The same tests against Redis.
mod on_redis {
    super::support::on_redis!(
        head_and_opening_bytes,
        retry_flag_sets_hint,
        event_framing_id_type_data,
        untyped_event_has_no_event_line,
        injection_cases_round_trip,
        ids_strictly_increasing_across_topics,
        event_to_several_topics_delivered_once,
        repeated_and_comma_separated_topics,
        percent_encoded_topics,
        topic_of_256_bytes_is_fine,
        bad_topics_are_400,
        no_topics_is_400,
        max_topics_counted_after_merging_duplicates,
        default_max_topics_is_64,
        other_methods_are_405,
        heartbeat_on_idle_stream,
        fractional_heartbeat,
        no_heartbeat_while_events_flow,
        live_once_head_is_sent,
        tagged_stream_names_the_subscribed_topics_of_each_event,
        tagged_stream_bytes,
        untagged_streams_are_unchanged,
        tagged_replay_and_reset,
    );
}
