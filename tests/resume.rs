//! Resuming with `Last-Event-ID` / `lastEventId`: exact replay then live, `herald.reset` when the
//! history cannot cover the gap, and the replay/live race under reconnects.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

const T: Duration = Duration::from_secs(5);

fn ids(events: &[SseEvent]) -> Vec<String> {
    events.iter().map(|e| e.id().to_string()).collect()
}

/// Publishes `n` events to `topic`, returning their ids.
async fn publish_n(addr: std::net::SocketAddr, topic: &str, n: usize) -> Vec<String> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(publish(addr, &[topic], None, &format!("{topic} {i}")).await);
    }
    v
}

#[tokio::test]
async fn last_event_id_header_replays_then_live() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let mut a = Vec::new();
    for i in 0..5 {
        a.push(publish(addr, &["a"], None, &format!("a{i}")).await);
        publish(addr, &["other"], None, "not subscribed").await;
    }
    let mut c = SseClient::open(addr, "/events?topics=a", &[("Last-Event-ID", &a[1])]).await;
    assert_sse_head(&c);
    let replay = c.next_events(3, T).await;
    assert_eq!(ids(&replay), a[2..].to_vec());
    assert_eq!(replay[0].data, "a2");
    let live = publish(addr, &["a"], None, "live").await;
    let e = c.next_event(T).await;
    assert_eq!((e.id(), e.data.as_str()), (live.as_str(), "live"));
    c.assert_no_event(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn last_event_id_query_param_replays_then_live() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let a = publish_n(addr, "a", 5).await;
    let b = publish_n(addr, "b", 2).await;
    let path = events_path(&["a", "b"], &format!("lastEventId={}", enc(&a[2])));
    let mut c = SseClient::open(addr, &path, &[]).await;
    let replay = c.next_events(4, T).await;
    assert_eq!(ids(&replay), vec![a[3].clone(), a[4].clone(), b[0].clone(), b[1].clone()]);
    let live = publish(addr, &["b"], None, "live").await;
    assert_eq!(c.next_event(T).await.id(), live);
}

#[tokio::test]
async fn header_wins_over_query_param() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let a = publish_n(addr, "a", 5).await;
    let path = events_path(&["a"], &format!("lastEventId={}", enc(&a[0])));
    let mut c = SseClient::open(addr, &path, &[("Last-Event-ID", &a[2])]).await;
    let replay = c.next_events(2, T).await;
    assert_eq!(ids(&replay), a[3..].to_vec());
    c.assert_no_event(Duration::from_millis(300)).await;
    // And a malformed query param does not matter when the header is good.
    let path = events_path(&["a"], "lastEventId=garbage");
    let mut c = SseClient::open(addr, &path, &[("Last-Event-ID", &a[3])]).await;
    let e = c.next_event(T).await;
    assert_eq!(e.id(), a[4], "expected plain replay after the header id, got {e:?}");
}

#[tokio::test]
async fn resume_from_first_event_and_from_latest() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let a = publish_n(addr, "a", 4).await;
    let mut c = SseClient::open(addr, "/events?topics=a", &[("Last-Event-ID", &a[0])]).await;
    assert_eq!(ids(&c.next_events(3, T).await), a[1..].to_vec());
    // From the newest id: nothing to replay, no reset, then live.
    let mut c = SseClient::open(addr, "/events?topics=a", &[("Last-Event-ID", &a[3])]).await;
    c.assert_no_event(Duration::from_millis(300)).await;
    let live = publish(addr, &["a"], None, "live").await;
    assert_eq!(c.next_event(T).await.id(), live);
}

/// An event published to several of the connection's topics is replayed once.
#[tokio::test]
async fn replay_delivers_multi_topic_events_once() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let e1 = publish(addr, &["a", "b"], None, "1").await;
    let e2 = publish(addr, &["a", "b", "c"], None, "2").await;
    let e3 = publish(addr, &["b"], None, "3").await;
    let e4 = publish(addr, &["c", "a"], None, "4").await;
    let mut c = SseClient::open(addr, "/events?topics=a,b,c", &[("Last-Event-ID", &e1)]).await;
    assert_eq!(ids(&c.next_events(3, T).await), vec![e2, e3, e4]);
    c.assert_no_event(Duration::from_millis(300)).await;
}

/// A well-formed id from before this deployment's history began (here the epoch) cannot be
/// covered: a reset naming the topic, then everything retained, then live.
#[tokio::test]
async fn wellformed_id_older_than_history_resets() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let a = publish_n(addr, "a", 3).await;
    let mut c = SseClient::open(addr, "/events?topics=a", &[("Last-Event-ID", "1-0")]).await;
    let first = c.next_event(T).await;
    let (topics, _) = reset_payload(&first);
    assert_eq!(topics, vec!["a".to_string()]);
    assert_eq!(ids(&c.next_events(3, T).await), a);
    let live = publish(addr, &["a"], None, "live").await;
    assert_eq!(c.next_event(T).await.id(), live);
}

#[tokio::test]
async fn trimmed_history_resets_only_incomplete_topics() {
    let server = TestServer::start(&["--history-size", "3"]);
    let addr = server.addr();
    let b = publish(addr, &["b"], None, "b0").await;
    let a = publish_n(addr, "a", 6).await;
    let m0 = metrics(addr).await;
    // a[1], a[2] (newer than a[0]) were trimmed: reset naming only `a`.
    let mut c = SseClient::open(addr, "/events?topics=a,b", &[("Last-Event-ID", &a[0])]).await;
    assert_sse_head(&c);
    let first = c.next_event(T).await;
    let (topics, reason) = reset_payload(&first);
    assert_eq!(topics, vec!["a".to_string()], "reset must name only the trimmed topic");
    assert!(!reason.is_empty(), "reset reason empty");
    assert_eq!(ids(&c.next_events(3, T).await), a[3..].to_vec());
    c.assert_no_event(Duration::from_millis(300)).await;
    let live = publish(addr, &["b"], None, "live").await;
    assert_eq!(c.next_event(T).await.id(), live);
    let m1 = metrics(addr).await;
    assert!(
        m1["herald_resets_total"] >= m0.get("herald_resets_total").copied().unwrap_or(0.0) + 1.0,
        "herald_resets_total did not move"
    );
    let _ = b;
}

/// `--history-ttl`: events older than the limit leave the history (even on a topic nobody publishes to any
/// more), and a client that had not seen them gets `herald.reset` naming only that topic; one that had
/// seen everything that expired resumes without a reset.
#[tokio::test]
async fn history_ttl_expires_events_and_resets() {
    let server = TestServer::start(&["--history-ttl", "1"]);
    let addr = server.addr();
    let old = publish_n(addr, "old", 2).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let fresh = publish(addr, &["fresh"], None, "f0").await;

    let mut c = SseClient::open(addr, "/events?topics=old,fresh", &[("Last-Event-ID", &old[0])]).await;
    let first = c.next_event(T).await;
    let (topics, reason) = reset_payload(&first);
    assert_eq!(topics, vec!["old".to_string()], "only the topic that lost events is named");
    assert_eq!(reason, "trimmed");
    assert_eq!(c.next_event(T).await.id(), fresh, "the expired event is not replayed; the fresh one is");
    c.assert_no_event(Duration::from_millis(300)).await;

    // A client that had seen the newest expired event lost nothing.
    let mut c = SseClient::open(addr, "/events?topics=old,fresh", &[("Last-Event-ID", &old[1])]).await;
    assert_eq!(c.next_event(T).await.id(), fresh, "no reset: nothing the client missed expired");
}

/// Resuming from the newest trimmed id: nothing newer was trimmed, so no reset.
#[tokio::test]
async fn trimmed_boundary_needs_no_reset() {
    let server = TestServer::start(&["--history-size", "3"]);
    let addr = server.addr();
    let a = publish_n(addr, "a", 6).await;
    let mut c = SseClient::open(addr, "/events?topics=a", &[("Last-Event-ID", &a[2])]).await;
    let got = c.next_events(3, T).await;
    assert_eq!(ids(&got), a[3..].to_vec(), "got {got:?}");
}

#[tokio::test]
async fn malformed_ids_reset_all_topics() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let a = publish(addr, &["a"], None, "a0").await;
    let b = publish(addr, &["b"], None, "b0").await;
    for bad in ["garbage", "1-2-3", "-1", "1-", "-", "abc-def", "1.5-2", "0x1-0"] {
        for via_query in [false, true] {
            let mut c = if via_query {
                let path = events_path(&["a", "b"], &format!("lastEventId={}", enc(bad)));
                SseClient::connect(addr, &path, &[]).await
            } else {
                SseClient::connect(addr, "/events?topics=a,b", &[("Last-Event-ID", bad)]).await
            };
            assert_eq!(c.status, 200, "{bad:?} (query: {via_query}) must not be an HTTP error");
            let first = c.next_event(T).await;
            let (topics, _) = reset_payload(&first);
            assert_eq!(topics, vec!["a".to_string(), "b".to_string()], "{bad:?}");
            // Then what is retained, then live.
            assert_eq!(ids(&c.next_events(2, T).await), vec![a.clone(), b.clone()], "{bad:?}");
        }
    }
}

/// An id newer than anything issued: reset, then (possibly) the retained events, then live.
/// The contract says "then it replays what is retained"; whether that means "all retained" or
/// "retained after the id" (none) is not pinned down for a future id, so both are accepted.
#[tokio::test]
async fn future_id_resets() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let a = publish_n(addr, "a", 2).await;
    let mut c = SseClient::open(addr, "/events?topics=a", &[("Last-Event-ID", "99999999999999-0")]).await;
    let first = c.next_event(T).await;
    let (topics, _) = reset_payload(&first);
    assert_eq!(topics, vec!["a".to_string()]);
    let live = publish(addr, &["a"], None, "live").await;
    let mut before_live = Vec::new();
    loop {
        let e = c.next_event(T).await;
        if e.id() == live {
            break;
        }
        before_live.push(e.id().to_string());
        assert!(before_live.len() <= a.len(), "unexpected events {before_live:?}");
    }
    assert!(before_live.is_empty() || before_live == a, "after reset got {before_live:?}");
}

/// Extreme but well-formed ids, and ids padded to the 64-byte limit and past it, are never an HTTP error: each
/// opens a stream, with `herald.reset` for the reason API.md gives, then what is retained, then live.
#[tokio::test]
async fn extreme_ids_open_a_stream_with_the_right_reset() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let max = u64::MAX;
    let now = id_key(&publish(addr, &["other"], None, "now").await).0;
    type Make = Box<dyn Fn(&str) -> String>;
    let cases: Vec<(Make, Option<&str>)> = vec![
        (Box::new(move |_| format!("{max}-{max}")), Some("unknown_id")),
        (Box::new(move |_| format!("{max}-0")), Some("unknown_id")),
        (Box::new(move |_| format!("{}-{max}", now + 1_000_000)), Some("unknown_id")),
        (Box::new(move |_| format!("0-{max}")), Some("history_lost")),
        (Box::new(move |_| format!("{}-{max}", now - 1_000_000)), Some("history_lost")),
        // The first retained id padded with zeros is not an id Herald wrote (ids count only as Herald writes
        // them: `01-2` is not `1-2`), within the 64-byte limit or past it.
        (Box::new(|first| pad(first, 64)), Some("malformed_id")),
        (Box::new(|first| pad(first, 65)), Some("malformed_id")),
        (Box::new(move |_| format!("{}-0", "9".repeat(62))), Some("malformed_id")),
    ];
    for (i, (last, reason)) in cases.into_iter().enumerate() {
        let topic = format!("extreme/{i}");
        let a = publish_n(addr, &topic, 2).await;
        let last = last(&a[0]);
        let mut c = SseClient::connect(addr, &events_path(&[&topic], ""), &[("Last-Event-ID", &last)]).await;
        assert_eq!(c.status, 200, "Last-Event-ID {last:?} answered {}", c.status);
        let mut first = c.next_event(T).await;
        if let Some(reason) = reason {
            let (topics, got) = reset_payload(&first);
            assert_eq!((topics, got.as_str()), (vec![topic.clone()], reason), "Last-Event-ID {last:?}");
            first = c.next_event(T).await;
            assert_eq!(first.id(), a[0], "Last-Event-ID {last:?}: everything retained follows the reset");
            first = c.next_event(T).await;
        }
        assert_eq!(first.id(), a[1], "Last-Event-ID {last:?}");
        let live = publish(addr, &[&topic], None, "live").await;
        assert_eq!(c.next_event(T).await.id(), live, "Last-Event-ID {last:?}: then live");
    }
}

/// `id` with its sequence number padded with leading zeros to `len` bytes.
fn pad(id: &str, len: usize) -> String {
    let (ms, seq) = id_key(id);
    let width = len - ms.to_string().len() - 1;
    format!("{ms}-{seq:0>width$}")
}

#[tokio::test]
async fn restart_loses_history_and_resets() {
    let old_id = {
        let server1 = TestServer::start(&[]);
        publish(server1.addr(), &["a"], None, "before restart").await
        // server1 is killed here
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let server2 = TestServer::start(&[]);
    let addr = server2.addr();
    let new_id = publish(addr, &["a"], None, "after restart").await;
    let mut c = SseClient::open(addr, "/events?topics=a", &[("Last-Event-ID", &old_id)]).await;
    let first = c.next_event(T).await;
    let (topics, _) = reset_payload(&first);
    assert_eq!(topics, vec!["a".to_string()]);
    let e = c.next_event(T).await;
    assert_eq!((e.id(), e.data.as_str()), (new_id.as_str(), "after restart"));
    let live = publish(addr, &["a"], None, "live").await;
    assert_eq!(c.next_event(T).await.id(), live);
}

/// Same as above with no event on the new server: the old id is then also newer than anything
/// the new server issued (or from a lost history): a reset either way.
#[tokio::test]
async fn restart_with_empty_history_resets() {
    let old_id = {
        let server1 = TestServer::start(&[]);
        publish(server1.addr(), &["a"], None, "before restart").await
    };
    let server2 = TestServer::start(&[]);
    let addr = server2.addr();
    let mut c = SseClient::open(addr, "/events?topics=a", &[("Last-Event-ID", &old_id)]).await;
    let first = c.next_event(T).await;
    let (topics, _) = reset_payload(&first);
    assert_eq!(topics, vec!["a".to_string()]);
    let live = publish(addr, &["a"], None, "live").await;
    assert_eq!(c.next_event(T).await.id(), live);
}

/// Many abrupt reconnects while a publisher runs: the concatenation of everything received must
/// be exactly the published sequence: no gap, no duplicate, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_race_no_gap_no_duplicate() {
    const ROUNDS: usize = 300;
    const TIME_BUDGET: Duration = Duration::from_secs(40);
    const MAX_PUBLISHED: usize = 150_000; // 75k per topic: under --history-size
    let server = TestServer::start(&["--history-size", "100000"]);
    let addr = server.addr();
    let topics = ["race/1", "race/2"];

    let published: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));

    // The first connection is live before anything is published.
    let mut client = Some(SseClient::subscribe(addr, &topics).await);

    // Two publishers, one per topic, racing each other and the reconnects. Each one's ids are
    // increasing; together they are the expected sequence once sorted.
    let publishers: Vec<_> = topics
        .into_iter()
        .map(|topic: &'static str| {
            let published = Arc::clone(&published);
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut own: Vec<String> = Vec::new();
                while !stop.load(Ordering::Relaxed) && own.len() < MAX_PUBLISHED / 2 {
                    let id = publish(addr, &[topic], None, &format!("{topic} {}", own.len())).await;
                    own.push(id.clone());
                    published.lock().expect("lock").push(id);
                    if own.len().is_multiple_of(8) {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                assert_strictly_increasing(&own);
            })
        })
        .collect();

    let mut received: Vec<String> = Vec::new();
    let start = Instant::now();
    let mut rounds = 0;
    while rounds < ROUNDS && start.elapsed() < TIME_BUDGET {
        let mut c = match client.take() {
            Some(c) => c,
            None => {
                let last = received.last().cloned();
                let headers: Vec<(&str, &str)> = match &last {
                    Some(id) => vec![("Last-Event-ID", id.as_str())],
                    None => vec![],
                };
                SseClient::open(addr, &events_path(&topics, ""), &headers).await
            }
        };
        // Vary where the connection is cut: right after the head, within the replay, exactly
        // when caught up with the publisher, or a little into the live part.
        let newest_at_start = published.lock().expect("lock").iter().max_by_key(|id| id_key(id)).cloned();
        let mode = rounds % 5;
        let mut read_in_round = 0usize;
        let mut caught_up_extra = None::<usize>;
        loop {
            let target = match mode {
                // Until one event is received there is no id to resume from: read one first.
                0 if received.is_empty() => 1,
                0 => 0,
                1 => 1 + rounds % 3,
                2 => 7,
                _ => usize::MAX,
            };
            if read_in_round >= target {
                break;
            }
            if let Some(0) = caught_up_extra {
                break;
            }
            let e = match c.try_next_event(T).await {
                Ok(Some(e)) => e,
                Ok(None) => panic!("round {rounds}: no event within {T:?} (received {})", received.len()),
                Err(end) => panic!("round {rounds}: stream ended {end:?}"),
            };
            assert_ne!(e.event.as_deref(), Some("herald.reset"), "round {rounds}: unexpected reset {e:?}");
            received.push(e.id().to_string());
            read_in_round += 1;
            if let Some(extra) = caught_up_extra.as_mut() {
                *extra -= 1;
            } else if mode >= 3 {
                let caught_up = match &newest_at_start {
                    None => true,
                    Some(newest) => id_key(e.id()) >= id_key(newest),
                };
                if caught_up {
                    caught_up_extra = Some(if mode == 3 { 0 } else { 2 });
                }
            }
        }
        c.abort();
        rounds += 1;
    }

    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.await.expect("publisher task");
    }
    let mut published = published.lock().expect("lock").clone();
    published.sort_by_key(|id| id_key(id));
    assert_strictly_increasing(&published);

    // Drain with one final resume.
    let last = received.last().cloned();
    let headers: Vec<(&str, &str)> = match &last {
        Some(id) => vec![("Last-Event-ID", id.as_str())],
        None => vec![],
    };
    let mut c = SseClient::open(addr, &events_path(&topics, ""), &headers).await;
    let drain_deadline = Instant::now() + Duration::from_secs(20);
    while received.len() < published.len() && Instant::now() < drain_deadline {
        match c.try_next_event(T).await {
            Ok(Some(e)) => {
                assert_ne!(e.event.as_deref(), Some("herald.reset"), "drain: unexpected reset");
                received.push(e.id().to_string());
            }
            Ok(None) => break,
            Err(end) => panic!("drain: stream ended {end:?}"),
        }
    }
    // Anything more would be a duplicate or an invented event.
    if let Ok(Some(e)) = c.try_next_event(Duration::from_millis(300)).await {
        received.push(e.id().to_string());
    }

    eprintln!("resume race: {rounds} rounds, {} published, {} received", published.len(), received.len());
    if received != published {
        let first_diff = received.iter().zip(&published).position(|(r, p)| r != p);
        let set: std::collections::HashSet<&String> = received.iter().collect();
        let missing = published.iter().filter(|p| !set.contains(p)).count();
        let dups = received.len() - set.len();
        panic!(
            "received != published: {} received, {} published, first difference at {:?}, \
             {missing} missing, {dups} duplicates",
            received.len(),
            published.len(),
            first_diff
        );
    }
}

/// Resuming over a long history of many topics, many clients at once: each gets every retained event once
/// (an event on several of its topics included), in id order, then live events; none is refused; publishes
/// keep answering meanwhile. (With Redis the history is read in pages, off the publish connection, a few
/// reads at a time: one read of it all per client used to time out into 503s and stall publishes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_resume_over_a_long_history_of_many_topics() {
    const TOPICS: usize = 64;
    const EVENTS: usize = 3000;
    const CLIENTS: usize = 16;
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let topics: Vec<String> = (0..TOPICS).map(|i| format!("long/{i}")).collect();
    let data = "x".repeat(1000);
    // Each event on 4 of the topics (each topic keeps all of its ~190 events).
    let mut fillers = Vec::new();
    for k in 0..4 {
        let (topics, data) = (topics.clone(), data.clone());
        fillers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in (k..EVENTS).step_by(4) {
                let on: Vec<&str> = (0..4).map(|j| topics[(i * 7 + j * 16) % TOPICS].as_str()).collect();
                ids.push(publish(addr, &on, None, &format!("{i} {data}")).await);
            }
            ids
        }));
    }
    let mut published = Vec::new();
    for f in fillers {
        published.extend(f.await.expect("filler"));
    }
    published.sort_by_key(|id| id_key(id));
    let (first, expected) = (published[0].clone(), published[1..].to_vec());

    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                answers.push(try_publish(addr, &["long/other"], "meanwhile").await);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            answers
        })
    };
    let path = events_path(&topics.iter().map(String::as_str).collect::<Vec<_>>(), "");
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let (path, first, expected) = (path.clone(), first.clone(), expected.clone());
            tokio::spawn(async move {
                let mut c = SseClient::try_connect(addr, &path, &[("Last-Event-ID", &first)], None)
                    .await
                    .unwrap_or_else(|e| panic!("client {n}: {e}"));
                if c.status != 200 {
                    panic!("client {n}: {:?}", c.into_response_lenient().await.map(|r| r.text()));
                }
                let mut got = Vec::with_capacity(expected.len());
                while got.len() < expected.len() {
                    match c.try_next_event(Duration::from_secs(30)).await {
                        Ok(Some(e)) => got.push(e.id().to_string()),
                        other => panic!("client {n}: {other:?} after {} events", got.len()),
                    }
                }
                assert!(got == expected, "client {n}: the replay is not every event once in id order");
                c
            })
        })
        .collect();
    let mut open = Vec::new();
    for c in clients {
        open.push(c.await.expect("client"));
    }
    stop.store(true, Ordering::Relaxed);
    let answers = publisher.await.expect("publisher");
    let refused: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(refused.is_empty(), "publishes refused during the resumes: {refused:?}");
    let live = publish(addr, &[&topics[5]], None, "live").await;
    for c in &mut open {
        assert_eq!(c.next_event(T).await.id(), live);
    }
}

/// A client that stops reading in the middle of a long replay while the history it has not read yet is
/// trimmed away: whatever it then receives has no silent gap. Either it gets every event, or its stream ends
/// and resuming with its last id starts with `herald.reset` (`trimmed`) before the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_overtaken_by_trimming_is_never_a_silent_gap() {
    const HISTORY: usize = 1000;
    let server = TestServer::start(&["--history-size", "1000"]);
    let addr = server.addr();
    let data = "y".repeat(8 * 1024);
    let mut published = Vec::new();
    for i in 0..HISTORY {
        published.push(publish(addr, &["o"], None, &format!("{i} {data}")).await);
    }
    // Resumes from the oldest event, and does not read: the replay stops when the socket buffers are full.
    let mut c = SseClient::try_connect(addr, "/events?topics=o", &[("Last-Event-ID", &published[0])], Some(4096))
        .await
        .expect("connect");
    assert_eq!(c.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A whole history's worth of new events trims every event the client has not read.
    for i in HISTORY..2 * HISTORY {
        published.push(publish(addr, &["o"], None, &format!("{i} {data}")).await);
    }
    let newest = published.last().cloned().expect("published");
    let mut received: Vec<String> = vec![published[0].clone()];
    let mut reset_before = Vec::new(); // positions in `received` where a reset came
    let mut resumes = 0;
    while received.last() != Some(&newest) {
        match c.try_next_event(Duration::from_secs(20)).await {
            Ok(Some(e)) if e.event.as_deref() == Some("herald.reset") => {
                assert_eq!(reset_payload(&e), (vec!["o".to_string()], "trimmed".to_string()));
                reset_before.push(received.len());
            }
            Ok(Some(e)) => received.push(e.id().to_string()),
            Ok(None) => panic!("no event within 20 s after {} events", received.len()),
            Err(_end) => {
                resumes += 1;
                assert!(resumes <= 5, "resumed {resumes} times");
                let last = received.last().cloned().expect("an id");
                c = SseClient::open(addr, "/events?topics=o", &[("Last-Event-ID", &last)]).await;
            }
        }
    }
    assert_strictly_increasing(&received);
    let position: std::collections::HashMap<&String, usize> =
        published.iter().enumerate().map(|(i, id)| (id, i)).collect();
    for (i, pair) in received.windows(2).enumerate() {
        let (a, b) = (position[&pair[0]], position[&pair[1]]);
        if b != a + 1 {
            assert!(reset_before.contains(&(i + 1)), "events {}..{b} missing without a reset", a + 1);
        }
    }
    eprintln!(
        "received {} of {} events, {resumes} resumes, resets at {reset_before:?}",
        received.len(),
        published.len()
    );
}

/// Memory backend, `--max-history-bytes`: the node's oldest events are evicted to stay within the bound
/// (whatever each topic's own limit), a client that missed evicted events gets `herald.reset`, and one that
/// had seen them resumes without one.
#[tokio::test]
async fn history_byte_bound_evicts_oldest_and_resets() {
    const BOUND: f64 = 40_000.0;
    let server = TestServer::start(&["--max-history-bytes", "40000", "--history-size", "1000"]);
    let addr = server.addr();
    let data = "x".repeat(1000);
    let mut ids = Vec::new();
    for i in 0..200 {
        ids.push(publish(addr, &[&format!("bound/{}", i % 5)], None, &data).await);
    }
    let held = metrics(addr).await["herald_history_bytes"];
    assert!(held > 0.0 && held <= BOUND, "herald_history_bytes = {held}");
    // bound/0's first event is long gone: resuming from just before it is a reset, then what is left.
    let mut c = SseClient::open(addr, "/events?topics=bound/0", &[("Last-Event-ID", &ids[0])]).await;
    let (topics, reason) = reset_payload(&c.next_event(T).await);
    assert_eq!((topics, reason.as_str()), (vec!["bound/0".to_string()], "trimmed"));
    let kept = c.next_event(T).await;
    assert!(id_key(kept.id()) > id_key(&ids[100]), "an old event survived: {kept:?}");
    // A client that had seen bound/0's newest event lost nothing.
    let mut d = SseClient::open(addr, "/events?topics=bound/0", &[("Last-Event-ID", &ids[195])]).await;
    d.assert_no_event(Duration::from_millis(300)).await;
}

/// A tagged stream's opening names where its subscription went live (`: live <id>`); a client that saw
/// no event can resume from there and gets exactly what it missed, without a reset.
#[tokio::test]
async fn resuming_from_the_live_position_misses_nothing() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let before = publish(addr, &["a"], None, "before").await;
    let (conn, opening) = open_raw_stream(addr, "/events?topics=a,b&tagTopics=1", &[]).await;
    let live = live_position(&opening).unwrap_or_else(|| panic!("no live position in {opening:?}"));
    assert!(id_key(&live) >= id_key(&before), "live {live} is older than an event published before it");
    drop(conn);
    let missed = [
        publish(addr, &["a"], None, "1").await,
        publish(addr, &["b", "c"], None, "2").await,
        publish(addr, &["c"], None, "not mine").await,
        publish(addr, &["a", "b"], None, "3").await,
    ];
    for path in ["/events?topics=a,b&tagTopics=1", "/events?topics=a,b"] {
        let mut c = SseClient::open(addr, path, &[("Last-Event-ID", &live)]).await;
        let got = c.next_events(3, T).await;
        assert_eq!(ids(&got), [missed[0].clone(), missed[1].clone(), missed[3].clone()], "{path}");
        c.assert_no_event(Duration::from_millis(200)).await;
    }
}

/// On a server where nothing was published yet, the live position (the memory backend's epoch) is a
/// valid position too: resuming from it is no reset, before and after the first events.
#[tokio::test]
async fn live_position_on_a_fresh_server() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let (conn, opening) = open_raw_stream(addr, "/events?topics=a&tagTopics=1", &[]).await;
    let live = live_position(&opening).unwrap_or_else(|| panic!("no live position in {opening:?}"));
    drop(conn);
    let mut early = SseClient::open(addr, "/events?topics=a&tagTopics=1", &[("Last-Event-ID", &live)]).await;
    early.assert_no_event(Duration::from_millis(200)).await;
    let missed = publish_n(addr, "a", 2).await;
    let got = early.next_events(2, T).await;
    assert_eq!(ids(&got), missed);
    let mut late = SseClient::open(addr, "/events?topics=a", &[("Last-Event-ID", &live)]).await;
    assert_eq!(ids(&late.next_events(2, T).await), missed);
    late.assert_no_event(Duration::from_millis(200)).await;
    assert_eq!(metrics(addr).await["herald_resets_total"], 0.0);
}

/// The same tests against Redis (the restart tests are about the memory backend: a Redis deployment
/// keeps its history when a node restarts; its own tests cover history lost in Redis).
mod on_redis {
    super::support::on_redis!(
        last_event_id_header_replays_then_live,
        last_event_id_query_param_replays_then_live,
        header_wins_over_query_param,
        resume_from_first_event_and_from_latest,
        replay_delivers_multi_topic_events_once,
        wellformed_id_older_than_history_resets,
        trimmed_history_resets_only_incomplete_topics,
        trimmed_boundary_needs_no_reset,
        history_ttl_expires_events_and_resets,
        malformed_ids_reset_all_topics,
        future_id_resets,
        extreme_ids_open_a_stream_with_the_right_reset,
        resume_race_no_gap_no_duplicate,
        resuming_from_the_live_position_misses_nothing,
        many_clients_resume_over_a_long_history_of_many_topics,
        replay_overtaken_by_trimming_is_never_a_silent_gap,
    );
}
