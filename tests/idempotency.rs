//! `Idempotency-Key` on `POST /publish` (API.md): a publish repeated with a key already used in the last ten
//! minutes publishes nothing and answers the first id with `"duplicate": true`; concurrent repeats publish
//! once; a malformed key is a 400. On both backends (`mod on_redis`), and with Redis across nodes and across
//! the settling of a publish whose reply Redis did not send in time.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(10);

/// `POST /publish` `{"topics", "data"}` with `Idempotency-Key: key`.
async fn publish_keyed(addr: SocketAddr, key: &str, topics: &[&str], data: &str) -> HttpResponse {
    let body = serde_json::json!({ "topics": topics, "data": data }).to_string();
    http(addr, "POST", "/publish", &[("Content-Type", "application/json"), ("Idempotency-Key", key)], body.as_bytes())
        .await
}

/// The answer's id and whether it says `"duplicate": true`; asserts a 200.
fn answer(resp: &HttpResponse) -> (String, bool) {
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = resp.json();
    let id = v["id"].as_str().unwrap_or_else(|| panic!("no id in {v}")).to_string();
    match v.get("duplicate") {
        None => (id, false),
        Some(serde_json::Value::Bool(true)) => (id, true),
        Some(other) => panic!("\"duplicate\" is {other}, expected true or absent"),
    }
}

/// Reads events up to the one with id `sentinel`; returns their data.
async fn data_until(c: &mut SseClient, sentinel: &str) -> Vec<String> {
    let mut data = Vec::new();
    loop {
        let e = c.next_event(T).await;
        if e.id() == sentinel {
            return data;
        }
        data.push(e.data);
    }
}

#[tokio::test]
async fn a_repeated_key_publishes_once() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let mut c = SseClient::subscribe(addr, &["k"]).await;
    let first = publish_keyed(addr, "order-17/a", &["k"], "one").await;
    let (id, duplicate) = answer(&first);
    assert!(!duplicate);
    assert_eq!(first.json(), serde_json::json!({ "id": id }), "a first publish answers as without a key");
    // A repeat (the publisher retrying, even with other data or topics) publishes nothing.
    let repeat = publish_keyed(addr, "order-17/a", &["k", "other"], "one, retried").await;
    assert_eq!(repeat.json(), serde_json::json!({ "id": id, "duplicate": true }));
    let other = answer(&publish_keyed(addr, "order-17/b", &["k"], "two").await);
    assert!(!other.1 && id_key(&other.0) > id_key(&id));
    let sentinel = publish(addr, &["k"], None, "sentinel").await;
    assert_eq!(c.next_event(T).await.id(), id);
    assert_eq!(data_until(&mut c, &sentinel).await, ["two"], "the repeat was not delivered");
    let m = metrics(addr).await;
    assert_eq!(m["herald_publishes_duplicate_total"], 1.0);
    assert_eq!(m["herald_events_published_total"], 3.0, "a duplicate is not a published event");
}

#[tokio::test]
async fn malformed_keys_are_refused() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let mut c = SseClient::subscribe(addr, &["m"]).await;
    let long = "k".repeat(129);
    for key in ["", "a b", "a\tb", "caf\u{e9}", long.as_str()] {
        let resp = publish_keyed(addr, key, &["m"], "bad key").await;
        assert_error(&resp, 400, Some("bad_request"));
        assert!(resp.text().contains("Idempotency-Key"), "{key:?}: {}", resp.text());
    }
    let body = br#"{"topic":"m","data":"two keys"}"#;
    let headers = [("Content-Type", "application/json"), ("Idempotency-Key", "a"), ("Idempotency-Key", "b")];
    assert_error(&http(addr, "POST", "/publish", &headers, body).await, 400, Some("bad_request"));
    // The limits themselves are fine: 128 characters, every visible ASCII character.
    let visible: String = ('!'..='~').collect();
    for key in ["k".repeat(128), visible[..94].to_string()] {
        assert!(!answer(&publish_keyed(addr, &key, &["m"], "good key").await).1);
    }
    let sentinel = publish(addr, &["m"], None, "sentinel").await;
    assert_eq!(data_until(&mut c, &sentinel).await, ["good key", "good key"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_repeats_publish_once() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let mut c = SseClient::subscribe(addr, &["c"]).await;
    let tasks: Vec<_> = (0..20)
        .map(|i| tokio::spawn(async move { answer(&publish_keyed(addr, "same", &["c"], &format!("try {i}")).await) }))
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("publish task"));
    }
    let id = answers[0].0.clone();
    assert!(answers.iter().all(|(other, _)| *other == id), "every repeat answers the first id: {answers:?}");
    assert_eq!(answers.iter().filter(|(_, duplicate)| !duplicate).count(), 1, "published once: {answers:?}");
    let sentinel = publish(addr, &["c"], None, "sentinel").await;
    assert_eq!(data_until(&mut c, &sentinel).await.len(), 1);
}

/// A publisher whose connection drops before the answer arrives does not know whether its publish went
/// through; repeating it with the same key never makes two events.
#[tokio::test]
async fn a_repeat_after_the_answer_was_lost_publishes_once() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let mut c = SseClient::subscribe(addr, &["l"]).await;
    let body = br#"{"topic":"l","data":"once"}"#;
    let mut conn = HttpConn::connect(addr).await.expect("connect");
    let headers = [("Content-Type", "application/json"), ("Idempotency-Key", "lost-answer"), ("Connection", "close")];
    conn.send_request("POST", "/publish", &headers, body).await.expect("send");
    conn.abort();
    let (id, _) = answer(&publish_keyed(addr, "lost-answer", &["l"], "once").await);
    let sentinel = publish(addr, &["l"], None, "sentinel").await;
    let got = data_until(&mut c, &sentinel).await;
    assert_eq!(got, ["once"], "one event, whichever publish made it");
    let mut r = SseClient::open(addr, "/events?topics=l", &[("Last-Event-ID", &id)]).await;
    assert_eq!(r.next_event(T).await.id(), sentinel, "the answer's id is the event's");
}

mod on_redis {
    super::support::on_redis!(
        a_repeated_key_publishes_once,
        malformed_keys_are_refused,
        concurrent_repeats_publish_once,
        a_repeat_after_the_answer_was_lost_publishes_once
    );
}

/// With Redis the key holds across the nodes of a deployment: a repeat on another node, and concurrent
/// repeats spread over two nodes, publish once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_on_two_nodes_publishes_once() {
    let redis = RedisServer::start();
    let (a, b) = (TestServer::start(&["--redis-url", &redis.url()]), TestServer::start(&["--redis-url", &redis.url()]));
    let mut c = SseClient::subscribe(b.addr(), &["n"]).await;
    let (id, _) = answer(&publish_keyed(a.addr(), "two-nodes", &["n"], "first").await);
    assert_eq!(answer(&publish_keyed(b.addr(), "two-nodes", &["n"], "again").await), (id.clone(), true));
    let addrs = [a.addr(), b.addr()];
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let addr = addrs[i % 2];
            tokio::spawn(async move { answer(&publish_keyed(addr, "spread", &["n"], &format!("try {i}")).await) })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("publish task"));
    }
    assert_eq!(answers.iter().filter(|(_, duplicate)| !duplicate).count(), 1, "published once: {answers:?}");
    assert!(answers.iter().all(|(other, _)| *other == answers[0].0), "{answers:?}");
    let sentinel = publish(a.addr(), &["n"], None, "sentinel").await;
    assert_eq!(data_until(&mut c, &sentinel).await.len(), 2, "one event per key");
    let key = redis.command(&["GET", "herald:idempotency:two-nodes"]);
    assert!(key.contains(&id), "the key is remembered in Redis, with the first id: {key:?}");
    let ttl: u64 =
        redis.command(&["PTTL", "herald:idempotency:two-nodes"]).trim_start_matches(':').trim().parse().unwrap();
    assert!(ttl > 590_000 && ttl <= 600_000, "remembered for ten minutes: {ttl} ms left");
}

/// Publishes whose script reply Redis delays past the command timeout are settled (published or
/// cancelled); repeating each with its key afterwards leaves exactly one event per key, under the id the
/// repeat answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_after_a_settled_publish_publishes_once() {
    const K: usize = 4;
    let redis = RedisServer::start();
    let server = TestServer::start(&["--redis-url", &redis.url()]);
    let addr = server.addr();
    let warm = publish(addr, &["s"], None, "warm-up").await;
    redis.command(&["CLIENT", "PAUSE", "2600", "WRITE"]);
    let tasks: Vec<_> = (0..K)
        .map(|i| {
            tokio::spawn(async move {
                let resp = publish_keyed(addr, &format!("settled-{i}"), &["s"], &format!("late {i}")).await;
                (resp.status, resp.text())
            })
        })
        .collect();
    let mut first = Vec::new();
    for task in tasks {
        first.push(task.await.expect("publish task"));
    }
    eprintln!("first answers: {first:?}");
    let mut repeats = Vec::new();
    for i in 0..K {
        repeats.push(answer(&publish_keyed(addr, &format!("settled-{i}"), &["s"], &format!("late {i}")).await));
    }
    let sentinel = publish(addr, &["s"], None, "sentinel").await;
    let mut c = SseClient::open(addr, "/events?topics=s", &[("Last-Event-ID", &warm)]).await;
    let mut stored = Vec::new();
    loop {
        let e = c.next_event(T).await;
        if e.id() == sentinel {
            break;
        }
        stored.push((e.id().to_string(), e.data));
    }
    for (i, ((status, text), (id, duplicate))) in first.iter().zip(&repeats).enumerate() {
        let data = format!("late {i}");
        let copies: Vec<&(String, String)> = stored.iter().filter(|(_, d)| *d == data).collect();
        assert_eq!(copies.len(), 1, "{data}: first {status} {text}, repeat {id} duplicate={duplicate}: {stored:?}");
        assert_eq!(&copies[0].0, id, "{data}: the repeat answers the stored event's id");
        if *status == 200 {
            assert!(*duplicate && text.contains(id.as_str()), "{data}: 200 {text} first, then {id} {duplicate}");
        }
    }
    assert!(metrics(addr).await["herald_backend_publishes_settled_total"] >= 1.0, "nothing was settled: {first:?}");
}

/// A publish whose connection is killed while it waits in Redis never runs: it is settled as not
/// published (503), and its key stays free, so the publisher's repeat publishes it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_after_a_cancelled_publish_publishes_it() {
    let redis = RedisServer::start();
    let server = TestServer::start(&["--redis-url", &redis.url()]);
    let addr = server.addr();
    let warm = publish(addr, &["q"], None, "warm-up").await;
    redis.command(&["CLIENT", "PAUSE", "1500", "WRITE"]);
    let publishing = tokio::spawn(async move { publish_keyed(addr, "cancelled", &["q"], "lost").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Normal clients: the node's command connection (not its pub/sub one, nor this one).
    redis.command(&["CLIENT", "KILL", "TYPE", "normal"]);
    let first = publishing.await.expect("publish task");
    assert_error(&first, 503, Some("backend_unavailable"));
    assert!(!first.text().contains("may or may not"), "settled as not published: {}", first.text());
    let (id, duplicate) = answer(&publish_keyed(addr, "cancelled", &["q"], "lost").await);
    assert!(!duplicate, "the first publish was cancelled: the repeat publishes");
    assert_eq!(answer(&publish_keyed(addr, "cancelled", &["q"], "lost").await), (id.clone(), true));
    let sentinel = publish(addr, &["q"], None, "sentinel").await;
    let mut c = SseClient::open(addr, "/events?topics=q", &[("Last-Event-ID", &warm)]).await;
    assert_eq!(c.next_event(T).await.id(), id);
    assert_eq!(c.next_event(T).await.id(), sentinel, "one event");
}

/// `herald publish --idempotency-key KEY`: running the same command twice publishes once and prints the
/// same id both times.
#[test]
fn herald_publish_takes_an_idempotency_key() {
    let server = TestServer::start(&[]);
    let url = server.url("/");
    let args = ["publish", "--url", url.as_str(), "--idempotency-key", "cli-1", "t", "x"];
    let (status, first, _) = run_to_exit(&args, &[], T);
    assert!(status.success(), "{status}");
    let (status, again, stderr) = run_to_exit(&args, &[], T);
    assert!(status.success(), "{status}");
    assert_eq!((first.trim(), first.contains('-')), (again.trim(), true), "the first id, twice");
    assert!(stderr.contains("already published"), "{stderr}");
    let (status, _, stderr) = run_to_exit(&["publish", "--url", &url, "--idempotency-key", "a b", "t", "x"], &[], T);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Idempotency-Key"), "the server's message: {stderr}");
}
