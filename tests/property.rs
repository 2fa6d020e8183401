//! Property tests: whatever a publisher sends as data comes out of the real server, through a
//! WHATWG-conformant parser, as the same text with line ends normalised to LF; any valid topic
//! round-trips through `topics=` percent-encoding. Plus self-tests of the suite's SSE parser.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use support::*;

const T: Duration = Duration::from_secs(5);

/// Text rich in the characters and fragments that could break SSE framing.
fn data_strategy() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        3 => any::<String>(),
        3 => Just("\r".to_string()),
        3 => Just("\n".to_string()),
        3 => Just("\r\n".to_string()),
        1 => Just("\n\n".to_string()),
        1 => Just("\r\r".to_string()),
        1 => Just("data:".to_string()),
        1 => Just("data: x".to_string()),
        1 => Just("id:".to_string()),
        1 => Just("id: 1".to_string()),
        1 => Just("event: herald.reset".to_string()),
        1 => Just("retry: 1".to_string()),
        1 => Just(":".to_string()),
        1 => Just(" ".to_string()),
        1 => Just("\u{FEFF}".to_string()),
        1 => Just("é漢😀".to_string()),
    ];
    prop::collection::vec(fragment, 0..24).prop_map(|v| v.concat())
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() })
}

#[test]
fn published_data_round_trips() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    // One server for every case; each case uses a fresh stream on its own topic.
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let n = AtomicUsize::new(0);
    let result = runner(64).run(&data_strategy(), |data| {
        let topic = format!("prop/{}", n.fetch_add(1, Ordering::Relaxed));
        let (id, event) = rt.block_on(async {
            let mut c = SseClient::subscribe(addr, &[&topic]).await;
            let id = publish(addr, &[&topic], Some("prop"), &data).await;
            let event = c.next_event(T).await;
            (id, event)
        });
        prop_assert_eq!(event.id(), id.as_str());
        prop_assert_eq!(event.event.as_deref(), Some("prop"));
        prop_assert_eq!(&event.data, &normalize_newlines(&data));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\nserver stderr:\n{}", server.stderr());
    }
}

/// Any valid topic (printable ASCII but space , * ? #, 1 to 256 bytes) round-trips through a
/// percent-encoded `topics=` parameter; adding one forbidden character makes it a 400.
#[test]
fn valid_topics_round_trip_and_invalid_are_refused() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let topic = "[!-~&&[^,*?#]]{1,40}";
    let bad = prop_oneof![Just(' '), Just(','), Just('*'), Just('?'), Just('#'), Just('\u{7f}'), Just('é')];
    let result = runner(32).run(&(topic, bad, any::<prop::sample::Index>()), |(topic, bad, at)| {
        rt.block_on(async {
            let mut c = SseClient::subscribe(addr, &[&topic]).await;
            let id = publish(addr, &[&topic], None, "t").await;
            let e = c.next_event(T).await;
            prop_assert_eq!(e.id(), id.as_str());

            let mut chars: Vec<char> = topic.chars().collect();
            chars.insert(at.index(chars.len() + 1), bad);
            let bad_topic: String = chars.into_iter().collect();
            // A `,` splits into two topics, possibly with an empty one: only a 400 if a part is
            // empty; otherwise the request is fine.
            let resp = SseClient::connect(addr, &events_path(&[&bad_topic], ""), &[]).await;
            if bad == ',' && bad_topic.split(',').all(|p| !p.is_empty()) {
                prop_assert_eq!(resp.status, 200, "topics={:?}", bad_topic);
            } else {
                prop_assert_eq!(resp.status, 400, "topics={:?}", bad_topic);
            }
            Ok::<(), TestCaseError>(())
        })
    });
    if let Err(e) = result {
        panic!("{e}\nserver stderr:\n{}", server.stderr());
    }
}

/// The parser gives the same items however the stream is cut into pieces.
#[test]
fn parser_is_independent_of_chunking() {
    let stream = prop::collection::vec(
        prop_oneof![
            Just("data: a\n".to_string()),
            Just("data:b\r\n".to_string()),
            Just("\r".to_string()),
            Just("\n".to_string()),
            Just("\r\n".to_string()),
            Just("id: 7\n".to_string()),
            Just(":c\n".to_string()),
            Just("retry: 10\n".to_string()),
            Just("event: e\n".to_string()),
            Just("é".to_string()),
        ],
        0..30,
    )
    .prop_map(|v| v.concat());
    let result = runner(256).run(&(stream, prop::collection::vec(any::<prop::sample::Index>(), 0..5)), |(s, cuts)| {
        let bytes = s.as_bytes();
        let whole = parse_sse(bytes);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        cuts.sort();
        let mut p = SseParser::new();
        let mut items = Vec::new();
        let mut from = 0;
        for c in cuts.into_iter().chain([bytes.len()]) {
            items.extend(p.feed(&bytes[from..c]));
            from = c;
        }
        prop_assert_eq!(items, whole);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

fn events(items: Vec<SseItem>) -> Vec<SseEvent> {
    items
        .into_iter()
        .filter_map(|i| match i {
            SseItem::Event(e) => Some(e),
            _ => None,
        })
        .collect()
}

#[test]
fn parser_follows_whatwg() {
    let items = parse_sse(b"retry: 3000\n:hi\n\nid: 1\nevent: t\ndata: a\ndata:  b\n\n");
    assert_eq!(items[0], SseItem::Retry(3000));
    assert_eq!(items[1], SseItem::Comment("hi".into()));
    let ev = events(items);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].id.as_deref(), Some("1"));
    assert_eq!(ev[0].event.as_deref(), Some("t"));
    assert_eq!(ev[0].data, "a\n b");
}

#[test]
fn parser_line_ends_split_anywhere() {
    let stream = b"data: x\r\ndata: y\rdata:z\n\r\nid: 2\rdata\r\r";
    let whole = parse_sse(stream);
    for split in 0..stream.len() {
        let mut p = SseParser::new();
        let mut items = p.feed(&stream[..split]);
        items.extend(p.feed(&stream[split..]));
        assert_eq!(items, whole, "split at {split}");
    }
    let ev = events(whole);
    assert_eq!(ev[0].data, "x\ny\nz");
    assert_eq!(ev[1].data, "");
    assert_eq!(ev[1].id.as_deref(), Some("2"));
}

#[test]
fn parser_edge_cases() {
    // Empty data is not dispatched; id persists; NUL ids ignored; bad retry ignored.
    let ev = events(parse_sse(b"id: 5\n\ndata\n\nid: a\0b\nretry: 1x\ndata: q\n\ndata: pending"));
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[0].data, "");
    assert_eq!(ev[0].last_event_id, "5");
    assert_eq!(ev[0].id, None);
    assert_eq!(ev[1].last_event_id, "5");
    let items = parse_sse(b"\xEF\xBB\xBFretry: 7\n");
    assert_eq!(items, vec![SseItem::Retry(7)]);
}

#[test]
fn prometheus_parsing() {
    let m = parse_prometheus("# HELP x y\nherald_a 3\nherald_b{t=\"1 }\"} 2\nherald_b{t=\"2\"} 5 123\nbad\n");
    assert_eq!(m["herald_a"], 3.0);
    assert_eq!(m["herald_b"], 7.0);
    assert_eq!(m["herald_b{t=\"1 }\"}"], 2.0);
}

#[test]
fn startup_line_parsing() {
    let a = parse_startup_line(
        "2026-11-28T04:40:00Z  INFO herald::server: herald listening addr=127.0.0.1:41234 backend=memory auth=off",
    );
    assert_eq!(a, Some("127.0.0.1:41234".parse().unwrap()));
    let j = parse_startup_line(
        r#"{"timestamp":"x","level":"INFO","fields":{"message":"herald listening","addr":"127.0.0.1:5"}}"#,
    );
    assert_eq!(j, Some("127.0.0.1:5".parse().unwrap()));
    let c = parse_startup_line(
        "\u{1b}[32m INFO\u{1b}[0m herald listening \u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:9",
    );
    assert_eq!(c, Some("127.0.0.1:9".parse().unwrap()));
}

/// The round-trip properties against Redis.
mod on_redis {
    super::support::on_redis!(published_data_round_trips, valid_topics_round_trip_and_invalid_are_refused,);
}
