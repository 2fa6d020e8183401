//! Redis-only behaviour: several nodes sharing one Redis, history lost in Redis, and faults (a killed
//! pub/sub connection, Redis stopping and coming back, Redis unreachable at start-up). Each test starts
//! its own `redis-server` on a free port.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

const T: Duration = Duration::from_secs(10);

fn node(redis: &RedisServer, extra: &[&str]) -> TestServer {
    let url = redis.url();
    let mut args = vec!["--redis-url", url.as_str()];
    args.extend_from_slice(extra);
    TestServer::start(&args)
}

fn ids(events: &[SseEvent]) -> Vec<String> {
    events.iter().map(|e| e.id().to_string()).collect()
}

/// Reads events until one with id `last` arrives; panics on a reset, the end, or a timeout.
async fn read_through(c: &mut SseClient, last: &str, timeout: Duration) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.try_next_event(left).await {
            Ok(Some(e)) => {
                assert_ne!(
                    e.event.as_deref(),
                    Some("herald.reset"),
                    "unexpected reset after {} events: {e:?}",
                    got.len()
                );
                got.push(e.id().to_string());
                if e.id() == last {
                    return got;
                }
            }
            Ok(None) => panic!("{last} not received within {timeout:?}; got {} events", got.len()),
            Err(end) => panic!("stream ended {end:?} after {} events", got.len()),
        }
    }
}

#[tokio::test]
async fn resume_on_a_second_node_gets_exactly_what_was_missed() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis, &[]), node(&redis, &[]));
    let mut c = SseClient::subscribe(a.addr(), &["x", "y"]).await;
    let first = vec![
        publish(a.addr(), &["x"], None, "1").await,
        publish(b.addr(), &["y"], Some("t.y"), "2").await,
        publish(b.addr(), &["x", "y"], None, "3").await,
    ];
    assert_eq!(ids(&c.next_events(3, T).await), first, "live on node A, published on A and B");
    c.abort();
    let missed = vec![
        publish(b.addr(), &["x"], None, "4").await,
        publish(a.addr(), &["y", "z"], None, "5").await,
        publish(b.addr(), &["x", "y"], None, "6").await,
    ];
    publish(b.addr(), &["z"], None, "not subscribed").await;
    let mut c = SseClient::open(b.addr(), "/events?topics=x,y", &[("Last-Event-ID", &first[2])]).await;
    let got = c.next_events(3, T).await;
    assert_eq!(ids(&got), missed);
    assert_eq!(got[1].data, "5");
    c.assert_no_event(Duration::from_millis(300)).await;
    let live = publish(a.addr(), &["x"], None, "live").await;
    assert_eq!(c.next_event(T).await.id(), live);
}

/// The live position of a tagged stream (`: live <id>`) on Redis: none while nothing was ever published
/// in the deployment; once another node has published (on a topic this node never saw), the position is
/// that id, and resuming from it on any node gets exactly what came after.
#[tokio::test]
async fn live_position_comes_from_the_whole_deployment() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis, &[]), node(&redis, &[]));
    let (_conn, opening) = open_raw_stream(a.addr(), "/events?topics=x&tagTopics=1", &[]).await;
    assert_eq!(opening, "retry: 3000\n: herald\n\n", "no position before anything was published");
    let elsewhere = publish(b.addr(), &["elsewhere"], None, "on node B").await;
    let (conn, opening) = open_raw_stream(a.addr(), "/events?topics=x&tagTopics=1", &[]).await;
    assert_eq!(live_position(&opening).as_deref(), Some(elsewhere.as_str()), "{opening:?}");
    drop(conn);
    let missed = vec![publish(b.addr(), &["x"], None, "1").await, publish(a.addr(), &["x"], None, "2").await];
    for node in [&a, &b] {
        let mut c = SseClient::open(node.addr(), "/events?topics=x", &[("Last-Event-ID", &elsewhere)]).await;
        assert_eq!(ids(&c.next_events(2, T).await), missed);
        c.assert_no_event(Duration::from_millis(300)).await;
    }
}

/// An event's id and topics.
type Published = (String, Vec<String>);

/// Three nodes, one Redis; clients and publishers on every node. Every client receives every event of
/// its topics exactly once, in id order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_every_client_gets_every_event_once_in_order() {
    const PER_PUBLISHER: usize = 150;
    let redis = RedisServer::start();
    let nodes: Vec<TestServer> = (0..3).map(|_| node(&redis, &[])).collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(TestServer::addr).collect();
    let topic_sets: [&[&str]; 4] = [&["t0"], &["t1", "t2"], &["t0", "t1", "t2", "t3"], &["t3"]];
    let mut clients = Vec::new();
    for (n, addr) in addrs.iter().enumerate() {
        for (s, topics) in topic_sets.iter().enumerate() {
            if (n + s) % 3 != 2 {
                clients.push((topics.to_vec(), SseClient::subscribe(*addr, topics).await));
            }
        }
    }
    // Publishers on every node, each to a changing set of topics.
    let published: Arc<Mutex<Vec<Published>>> = Arc::default();
    let publishers: Vec<_> = addrs
        .iter()
        .enumerate()
        .map(|(n, addr)| {
            let (addr, published) = (*addr, published.clone());
            tokio::spawn(async move {
                for i in 0..PER_PUBLISHER {
                    let topics: Vec<String> = match (i + n) % 5 {
                        0 => vec!["t0".into()],
                        1 => vec!["t1".into(), "t3".into()],
                        2 => vec!["t2".into()],
                        3 => vec!["t0".into(), "t1".into(), "t2".into()],
                        _ => vec!["t3".into(), "nobody".into()],
                    };
                    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
                    let id = publish(addr, &refs, None, &format!("node {n} event {i}")).await;
                    published.lock().expect("lock").push((id, topics));
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.expect("publisher");
    }
    let mut published = published.lock().expect("lock").clone();
    published.sort_by_key(|(id, _)| id_key(id));
    assert_strictly_increasing(&published.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>());
    for (i, (topics, c)) in clients.iter_mut().enumerate() {
        let expected: Vec<String> = published
            .iter()
            .filter(|(_, ts)| ts.iter().any(|t| topics.contains(&t.as_str())))
            .map(|(id, _)| id.clone())
            .collect();
        let got = ids(&c.next_events(expected.len(), T).await);
        assert_eq!(got, expected, "client {i} ({topics:?})");
        c.assert_no_event(Duration::from_millis(200)).await;
    }
}

/// Redis loses its data: ids keep rising, and a client resuming with an id from before gets
/// `herald.reset` (`history_lost`), then what is retained, then live.
#[tokio::test]
async fn history_lost_in_redis_resets_and_ids_keep_rising() {
    let redis = RedisServer::start();
    let server = node(&redis, &[]);
    let addr = server.addr();
    let old = publish(addr, &["a"], None, "before").await;
    redis.command(&["FLUSHALL"]);
    let new = publish(addr, &["a"], None, "after").await;
    assert!(id_key(&new) > id_key(&old), "ids must keep rising after Redis lost its data: {old} then {new}");
    let mut c = SseClient::open(addr, "/events?topics=a", &[("Last-Event-ID", &old)]).await;
    let (topics, reason) = reset_payload(&c.next_event(T).await);
    assert_eq!((topics, reason.as_str()), (vec!["a".to_string()], "history_lost"));
    let e = c.next_event(T).await;
    assert_eq!((e.id(), e.data.as_str()), (new.as_str(), "after"));
    let live = publish(addr, &["a"], None, "live").await;
    assert_eq!(c.next_event(T).await.id(), live);
}

/// The keys, streams and channel messages are the documented layout, so other programs can use them.
#[tokio::test]
async fn key_layout_is_as_documented() {
    let redis = RedisServer::start();
    let server = node(&redis, &["--history-size", "2"]);
    let addr = server.addr();
    let first = publish(addr, &["a", "b"], Some("t.x"), "one").await;
    let reply = redis.command(&["GET", "herald:epoch"]);
    assert!(reply.contains(&first), "herald:epoch {reply:?}");
    for i in 0..3 {
        publish(addr, &["a"], None, &format!("more {i}")).await;
    }
    let last = publish(addr, &["a"], None, "last").await;
    assert!(redis.command(&["GET", "herald:last-id"]).contains(&last));
    assert!(redis.command(&["XLEN", "herald:stream:a"]).starts_with(":2\r\n"), "trimmed to --history-size");
    let entry = redis.command(&["XRANGE", "herald:stream:b", "-", "+"]);
    for part in [first.as_str(), "topics", "a,b", "type", "t.x", "data", "one", "nonce"] {
        assert!(entry.contains(part), "stream entry lacks {part:?}: {entry:?}");
    }
    let info = redis.command(&["XINFO", "STREAM", "herald:stream:a"]);
    assert!(info.contains("max-deleted-entry-id"), "{info:?}");
}

/// Kills the node's pub/sub connection twice while events flow: every subscriber still gets every
/// event exactly once, in order, and the node counts the reconnects and catch-up reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_pubsub_connection_loses_nothing() {
    const EVENTS: usize = 600;
    let redis = RedisServer::start();
    let server = node(&redis, &[]);
    let addr = server.addr();
    let topics = ["k1", "k2"];
    let mut clients = [
        SseClient::subscribe(addr, &topics).await,
        SseClient::subscribe(addr, &["k1"]).await,
        SseClient::subscribe(addr, &["k2"]).await,
    ];
    let done = Arc::new(AtomicBool::new(false));
    let publisher = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut published: Vec<(String, &str)> = Vec::new();
            for i in 0..EVENTS {
                let topic = topics[i % 2];
                published.push((publish(addr, &[topic], None, &format!("{i}")).await, topic));
                if i.is_multiple_of(10) {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            done.store(true, Ordering::Relaxed);
            published
        })
    };
    for kill in 1..=2 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let reply = redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        assert!(!reply.starts_with(":0"), "no pub/sub connection to kill: {reply:?}");
        wait_metric(addr, "herald_backend_reconnects_total", T, |v| v >= f64::from(kill)).await;
    }
    let published = publisher.await.expect("publisher");
    assert!(done.load(Ordering::Relaxed));
    let last = published.last().map(|(id, _)| id.clone()).expect("published");
    let wanted: [&[&str]; 3] = [&topics, &["k1"], &["k2"]];
    for (c, want) in clients.iter_mut().zip(wanted) {
        let expected: Vec<String> =
            published.iter().filter(|(_, t)| want.contains(t)).map(|(id, _)| id.clone()).collect();
        let last_of_mine = expected.last().cloned().unwrap_or_else(|| last.clone());
        let got = read_through(c, &last_of_mine, T).await;
        assert_eq!(got.len(), expected.len(), "{want:?}: missing or duplicate events");
        assert_eq!(got, expected, "{want:?}");
        c.assert_no_event(Duration::from_millis(200)).await;
    }
    let m = metrics(addr).await;
    eprintln!(
        "pub/sub killed twice: {} catch-up reads, {} events caught up",
        m["herald_backend_catchup_reads_total"], m["herald_backend_events_caught_up_total"]
    );
    assert!(m["herald_backend_reconnects_total"] >= 2.0, "reconnects: {m:?}");
    assert!(m["herald_backend_catchup_reads_total"] >= 2.0, "catch-up reads: {m:?}");
    assert!(m.contains_key("herald_backend_events_caught_up_total"));
    assert!(m.contains_key("herald_backend_errors_total"));
}

/// Redis stops: publishes answer 503 promptly, open streams stay open with heartbeats, `/readyz` and
/// new subscriptions are 503. Redis comes back empty: the node recovers by itself; a stream open
/// through the outage is closed, and resuming with its last id gets `herald.reset`, then new events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_and_return_empty() {
    let mut redis = RedisServer::start();
    let server = node(&redis, &["--heartbeat", "0.5"]);
    let addr = server.addr();
    let mut c = SseClient::subscribe(addr, &["o"]).await;
    let before = publish(addr, &["o"], None, "before").await;
    assert_eq!(c.next_event(T).await.id(), before);

    redis.stop();
    let start = Instant::now();
    let err = try_publish(addr, &["o"], "during").await.expect_err("publish while Redis is down");
    assert!(err.starts_with("status 503"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5), "publish took {:?}", start.elapsed());
    assert_eq!(get(addr, "/readyz").await.status, 503);
    let refused = get(addr, "/events?topics=new").await;
    assert_error(&refused, 503, Some("backend_unavailable"));
    // The open stream stays open: heartbeats keep coming.
    let mut heartbeats = 0;
    while heartbeats < 2 {
        match c.next_item(Duration::from_secs(3)).await {
            Some(SseItem::Comment(_)) => heartbeats += 1,
            other => panic!("expected heartbeats while Redis is down, got {other:?}"),
        }
    }

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(addr, "/readyz").await.status != 200 {
        assert!(Instant::now() < deadline, "node not ready again 15 s after Redis came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = publish(addr, &["o"], None, "after").await;
    assert!(id_key(&after) > id_key(&before), "ids keep rising: {before} then {after}");
    // The open stream: Redis lost whatever came after `before`, which the node cannot know, so the
    // stream ends (as a lagging one whose history is gone does) and the client resumes with its
    // last id: `herald.reset`, then the new event.
    let end = c.read_until_end(T).await;
    assert!(
        matches!(end.last(), Some(SseItem::End { .. })) && !end.iter().any(|i| matches!(i, SseItem::Event(_))),
        "the open stream must end without events: {end:?}"
    );
    let mut c = SseClient::open(addr, "/events?topics=o", &[("Last-Event-ID", &before)]).await;
    let (topics, reason) = reset_payload(&c.next_event(T).await);
    assert_eq!((topics, reason.as_str()), (vec!["o".to_string()], "history_lost"));
    assert_eq!(c.next_event(T).await.id(), after);
    // New subscriptions and live delivery work again.
    let mut n = SseClient::subscribe(addr, &["new"]).await;
    let live = publish(addr, &["new", "o"], None, "live").await;
    assert_eq!(n.next_event(T).await.id(), live);
    assert_eq!(c.next_event(T).await.id(), live);
}

/// Redis unreachable at start-up: the node logs why, serves with `/readyz` 503, keeps retrying, and
/// becomes ready once Redis is up.
#[tokio::test]
async fn redis_unreachable_at_start_up() {
    let mut redis = RedisServer::start();
    redis.stop();
    let server = node(&redis, &[]);
    let addr = server.addr();
    assert_eq!(get(addr, "/readyz").await.status, 503);
    let err = try_publish(addr, &["s"], "x").await.expect_err("publish without Redis");
    assert!(err.starts_with("status 503"), "{err}");
    let log = server.stderr();
    assert!(log.contains("cannot reach redis"), "no clear log line about Redis:\n{log}");
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(addr, "/readyz").await.status != 200 {
        assert!(Instant::now() < deadline, "not ready 15 s after Redis started; stderr:\n{}", server.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut c = SseClient::subscribe(addr, &["s"]).await;
    let id = publish(addr, &["s"], None, "x").await;
    assert_eq!(c.next_event(T).await.id(), id);
    let retries = server.stderr().matches("cannot reach redis").count();
    assert!(retries >= 1, "expected retry log lines");
}

/// A node is killed with SIGKILL while events flow: its clients resume on another node with their
/// last id and lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_clients_resume_elsewhere_losing_nothing() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis, &[]), node(&redis, &[]));
    let mut c = SseClient::subscribe(a.addr(), &["n1", "n2"]).await;
    let publisher = {
        let addr = b.addr();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..300 {
                ids.push(publish(addr, &[["n1", "n2"][i % 2]], None, &format!("{i}")).await);
                if i.is_multiple_of(10) {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            ids
        })
    };
    let mut got = Vec::new();
    while got.len() < 50 {
        got.push(c.next_event(T).await.id().to_string());
    }
    a.signal("KILL");
    // Whatever was already on the wire is read until the stream breaks.
    loop {
        match c.try_next_event(T).await {
            Ok(Some(e)) => got.push(e.id().to_string()),
            Ok(None) => panic!("the stream of a killed node did not end"),
            Err(_) => break,
        }
    }
    let last = got.last().cloned().expect("events before the kill");
    let mut c = SseClient::open(b.addr(), "/events?topics=n1,n2", &[("Last-Event-ID", &last)]).await;
    let published = publisher.await.expect("publisher");
    let last_published = published.last().cloned().expect("published");
    got.extend(read_through(&mut c, &last_published, T).await);
    assert_eq!(got, published, "missing or duplicate events after resuming on another node");
    c.assert_no_event(Duration::from_millis(200)).await;
}

/// A topic's channel is subscribed while the node has a local subscriber for it, once per node, and
/// unsubscribed when the last one leaves.
#[tokio::test]
async fn channel_subscribed_while_wanted() {
    let redis = RedisServer::start();
    let server = node(&redis, &[]);
    let addr = server.addr();
    let numsub = |topic: &str| redis.command(&["PUBSUB", "NUMSUB", &format!("herald:channel:{topic}")]);
    let count = |reply: String| reply.rsplit("\r\n").nth(1).and_then(|n| n.trim_start_matches(':').parse::<u32>().ok());
    assert_eq!(count(numsub("w")), Some(0));
    let c1 = SseClient::subscribe(addr, &["w"]).await;
    let c2 = SseClient::subscribe(addr, &["w", "v"]).await;
    assert_eq!(count(numsub("w")), Some(1), "one subscription per node, confirmed before the head");
    assert_eq!(count(numsub("v")), Some(1));
    c1.abort();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(count(numsub("w")), Some(1), "still wanted by the second client");
    c2.abort();
    let deadline = Instant::now() + T;
    while count(numsub("w")) != Some(0) || count(numsub("v")) != Some(0) {
        assert!(Instant::now() < deadline, "channels still subscribed after the last client left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Replays everything stored after `after` on `topic` (a fresh client resuming), up to `sentinel`.
async fn stored_after(addr: SocketAddr, topic: &str, after: &str, sentinel: &str) -> Vec<SseEvent> {
    let mut c = SseClient::open(addr, &events_path(&[topic], ""), &[("Last-Event-ID", after)]).await;
    let mut events = Vec::new();
    loop {
        let e = c.next_event(T).await;
        assert_ne!(e.event.as_deref(), Some("herald.reset"), "unexpected reset: {e:?}");
        if e.id() == sentinel {
            return events;
        }
        events.push(e);
    }
}

/// Publishes whose script reply is delayed past the command timeout (Redis paused for writes): each one
/// is settled, and the publisher's answer is the truth: `200` exactly when the event was stored (once,
/// under that id, and delivered once), `503` exactly when it was not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_whose_reply_is_late_is_settled_truthfully() {
    const K: usize = 5;
    let redis = RedisServer::start();
    let server = node(&redis, &[]);
    let addr = server.addr();
    let warm = publish(addr, &["p"], None, "warm-up").await; // loads the script
    let mut live = SseClient::subscribe(addr, &["p"]).await;

    redis.command(&["CLIENT", "PAUSE", "2600", "WRITE"]);
    let started = Instant::now();
    let publishes: Vec<_> = (0..K)
        .map(|i| tokio::spawn(async move { (i, try_publish(addr, &["p"], &format!("late {i}")).await) }))
        .collect();
    let mut answered = Vec::new();
    for p in publishes {
        answered.push(p.await.expect("publish task"));
    }
    eprintln!("answers after {:?}: {answered:?}", started.elapsed());
    let sentinel = publish(addr, &["p"], None, "sentinel").await;

    let stored = stored_after(addr, "p", &warm, &sentinel).await;
    for (i, answer) in &answered {
        let data = format!("late {i}");
        let copies: Vec<&SseEvent> = stored.iter().filter(|e| e.data == data).collect();
        match answer {
            Ok(id) => assert!(copies.len() == 1 && copies[0].id() == id, "{data}: 200 {id} but stored {copies:?}"),
            Err(e) => {
                assert!(e.starts_with("status 503"), "{data}: {e}");
                assert!(copies.is_empty(), "{data}: 503 but stored {copies:?}");
            }
        }
    }
    let delivered = read_through(&mut live, &sentinel, T).await;
    assert_eq!(delivered, stored.iter().map(|e| e.id().to_string()).chain([sentinel]).collect::<Vec<_>>());
    let m = metrics(addr).await;
    assert!(m["herald_backend_publishes_settled_total"] >= 1.0, "no publish went through settling: {answered:?}");
}

/// The command connection is killed while a publish waits in Redis (paused for writes), so the publish
/// never runs: the node settles it as not published and answers 503, and the event never appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_lost_with_its_connection_is_settled_as_not_published() {
    let redis = RedisServer::start();
    let server = node(&redis, &[]);
    let addr = server.addr();
    let warm = publish(addr, &["q"], None, "warm-up").await;

    redis.command(&["CLIENT", "PAUSE", "1500", "WRITE"]);
    let publishing = tokio::spawn(async move { try_publish(addr, &["q"], "lost").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Normal clients: the node's command connection (not its pub/sub one, nor this one).
    redis.command(&["CLIENT", "KILL", "TYPE", "normal"]);
    let answer = publishing.await.expect("publish task");
    let err = answer.expect_err("a publish that never ran must not be answered 200");
    assert!(err.starts_with("status 503") && err.contains("backend_unavailable"), "{err}");
    assert!(!err.contains("may or may not"), "the outcome was settled, so the answer must say so: {err}");

    let sentinel = publish(addr, &["q"], None, "sentinel").await;
    let stored = stored_after(addr, "q", &warm, &sentinel).await;
    assert!(stored.is_empty(), "stored although answered 503: {stored:?}");
    assert!(metrics(addr).await["herald_backend_publishes_settled_total"] >= 1.0);
}

/// The publish script as documented, read from the source, for publishing as another program would.
fn publish_script() -> String {
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/backend/redis/scripts.rs"))
        .expect("read scripts.rs");
    let start = source.find("pub(super) const PUBLISH: &str = r\"").expect("PUBLISH script") + 35;
    let len = source[start..].find("\";").expect("end of the PUBLISH script");
    source[start..start + len].to_string()
}

/// Publishes through the documented script with `redis-cli`-style `EVAL`, bypassing Herald's checks.
fn eval_publish(redis: &RedisServer, topics: &[&str], kind: &str, data: &str) -> String {
    let script = publish_script();
    let keys: Vec<String> = topics.iter().map(|t| format!("herald:stream:{t}")).collect();
    let count = (2 + topics.len()).to_string();
    let mut args = vec!["EVAL", script.as_str(), count.as_str(), "herald:last-id", "herald:epoch"];
    args.extend(keys.iter().map(String::as_str));
    args.extend(["1000", "0", kind, data, "0-0"]);
    args.extend(topics);
    redis.command(&args)
}

/// Reads items up to the event with id `sentinel`; asserts that nothing forged is among them.
async fn read_unforged_until(c: &mut SseClient, sentinel: &str, what: &str) -> Vec<SseEvent> {
    let mut events = Vec::new();
    loop {
        let item = c.next_item(T).await.unwrap_or_else(|| panic!("{what}: no item within {T:?}"));
        match item {
            SseItem::Event(e) => {
                assert!(e.id.is_some(), "{what}: an event without its own id: line: {e:?}");
                assert!(!e.data.contains("forged") && e.last_event_id != "999-0", "{what}: forged event {e:?}");
                let done = e.id() == sentinel;
                events.push(e);
                if done {
                    return events;
                }
            }
            SseItem::Retry(ms) => assert_eq!(ms, 3000, "{what}: a forged retry: field"),
            SseItem::Comment(_) => {}
            end @ SseItem::End { .. } => panic!("{what}: stream ended: {end:?}"),
        }
    }
}

/// Events written to Redis by another program through the documented publish script are held to the same
/// rules as a publish over HTTP: a type with a line break (which would forge `retry:` and `id:` fields and a
/// second event), a `herald.` type or a bad topic is dropped, live and on replay, and counted.
#[tokio::test]
async fn invalid_events_written_to_redis_are_dropped_and_counted() {
    let redis = RedisServer::start();
    let server = node(&redis, &[]);
    let addr = server.addr();
    let mut live = SseClient::subscribe(addr, &["f"]).await;
    let before = publish(addr, &["f"], None, "before").await;
    let forged_type = "t\nretry: 1\nid: 999-0\n\ndata: forged";
    eval_publish(&redis, &["f"], forged_type, "d");
    eval_publish(&redis, &["f"], "herald.reset", "{\"topics\":[\"f\"],\"reason\":\"forged\"}");
    eval_publish(&redis, &["f", "bad topic\r\nid: 999-0"], "t", "forged");
    let fine = eval_publish(&redis, &["f"], "t.ok", "fine\nlines");
    let fine = fine.lines().nth(1).expect("a bulk reply: the id").to_string();
    let sentinel = publish(addr, &["f"], None, "sentinel").await;

    for (what, c) in [
        ("live", &mut live),
        ("replay", &mut SseClient::open(addr, "/events?topics=f", &[("Last-Event-ID", &before)]).await),
    ] {
        let events = read_unforged_until(c, &sentinel, what).await;
        let events = events.iter().filter(|e| e.id() != before);
        let got: Vec<(&str, Option<&str>, &str)> =
            events.map(|e| (e.id(), e.event.as_deref(), e.data.as_str())).collect();
        assert_eq!(
            got,
            vec![(fine.as_str(), Some("t.ok"), "fine\nlines"), (sentinel.as_str(), None, "sentinel")],
            "{what}"
        );
    }
    let counted = metrics(addr).await["herald_backend_invalid_events_total"];
    assert!(counted >= 6.0, "3 invalid events, live and on replay: counted {counted}");
}

fn tls_fixture(name: &str) -> String {
    format!("{}/tests/fixtures/redis-tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// `rediss://` with `--redis-ca-cert`: the whole path (publish script, pub/sub, history reads) runs over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_private_ca() {
    let redis = RedisServer::start_tls();
    let url = redis.tls_url();
    let ca = tls_fixture("ca.pem");
    let server = TestServer::start(&["--redis-url", &url, "--redis-ca-cert", &ca]);
    let addr = server.addr();
    assert!(server.startup_line().contains("backend=redis"), "{}", server.startup_line());
    assert_eq!(get(addr, "/readyz").await.status, 200);
    let mut c = SseClient::subscribe(addr, &["tls"]).await;
    let first = publish(addr, &["tls"], None, "over tls").await;
    let e = c.next_event(T).await;
    assert_eq!((e.id(), e.data.as_str()), (first.as_str(), "over tls"));
    let second = publish(addr, &["tls"], None, "second").await;
    assert_eq!(c.next_event(T).await.id(), second);
    // History reads too: resume after the first event.
    let mut again = SseClient::open(addr, "/events?topics=tls", &[("Last-Event-ID", &first)]).await;
    let replayed = again.next_event(T).await;
    assert_eq!(replayed.id(), second, "{replayed:?}");
    // And the events really are in this Redis (reached over its plain port by the test).
    assert!(redis.command(&["XRANGE", "herald:stream:tls", "-", "+"]).contains("over tls"));
}

/// A certificate the node cannot verify is not trusted: the node never becomes ready and publishes
/// answer 503, nothing reaches Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_tls_certificate_from_another_ca_is_refused() {
    let redis = RedisServer::start_tls();
    let url = redis.tls_url();
    let other = tls_fixture("other-ca.pem");
    let server = TestServer::start(&["--redis-url", &url, "--redis-ca-cert", &other]);
    let addr = server.addr();
    assert_eq!(get(addr, "/readyz").await.status, 503);
    let err = try_publish(addr, &["tls"], "must not arrive").await.expect_err("untrusted Redis");
    assert!(err.starts_with("status 503"), "{err}");
    assert!(redis.command(&["EXISTS", "herald:stream:tls"]).starts_with(":0"), "something reached Redis");
}

/// `--redis-ca-cert` is checked at start-up: only with `rediss://`, and only a file holding a certificate.
#[test]
fn redis_ca_cert_is_checked_at_start_up() {
    let ca = tls_fixture("ca.pem");
    let key = tls_fixture("server.key");
    for (args, expected) in [
        (vec!["--redis-ca-cert", ca.as_str()], "rediss://"),
        (vec!["--redis-url", "redis://127.0.0.1:1", "--redis-ca-cert", ca.as_str()], "rediss://"),
        (vec!["--redis-url", "rediss://127.0.0.1:1", "--redis-ca-cert", "/nonexistent/ca.pem"], "cannot read"),
        (vec!["--redis-url", "rediss://127.0.0.1:1", "--redis-ca-cert", key.as_str()], "no PEM certificate"),
    ] {
        let (status, _stdout, stderr) = run_to_exit(&args, &[], Duration::from_secs(10));
        assert_eq!(status.code(), Some(2), "{args:?}: {status:?}\n{stderr}");
        assert!(stderr.contains(expected), "{args:?}: stderr lacks {expected:?}:\n{stderr}");
    }
}
