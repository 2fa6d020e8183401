//! Redis high availability (issue 10, API.md "Redis high availability"), against real processes: a primary, a
//! replica and three Sentinels on loopback, two Herald nodes following the primary through the Sentinels,
//! subscribers on both, a publisher running throughout, and the primary killed with SIGKILL. Also: a server
//! that has become a replica (it still answers `PING`) makes a node unready.
//!
//! The failover tests print what they measured (time to the first publish accepted again on each node,
//! to `/readyz` 200, to each subscriber's first new event; events lost), which the README reports.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

const T: Duration = Duration::from_secs(15);
/// Sentinels call a primary down after this long without an answer.
const DOWN_AFTER: Duration = Duration::from_millis(1000);
/// Pause between two publishes of the publisher that runs throughout.
const PUBLISH_EVERY: Duration = Duration::from_millis(5);

/// A primary, its replica, and three Sentinels that know both and each other.
struct Cluster {
    primary: RedisServer,
    replica: RedisServer,
    sentinels: Vec<SentinelServer>,
}

fn cluster() -> Cluster {
    let primary = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]);
    let replica = RedisServer::start_replica_of(&primary);
    let sentinels: Vec<SentinelServer> = (0..3).map(|_| SentinelServer::start(primary.port(), DOWN_AFTER)).collect();
    for sentinel in &sentinels {
        sentinel.wait_until_monitoring(1, 2);
    }
    Cluster { primary, replica, sentinels }
}

async fn wait_ready(addr: SocketAddr, within: Duration, what: &str) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        if try_http(addr, "GET", "/readyz", &[], b"").await.is_ok_and(|r| r.status == 200) {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "{what}: /readyz not 200 within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One publish of the publisher.
#[derive(Debug, Clone)]
struct Attempt {
    started: Instant,
    answered: Instant,
    node: usize,
    topic: &'static str,
    /// The id, and whether the answer said `"replicated": false`.
    outcome: Result<(String, bool), String>,
}

/// Publishes `{"topic", "data"}`; the id and whether the answer said `"replicated": false`.
async fn publish_once(addr: SocketAddr, topic: &str, data: &str) -> Result<(String, bool), String> {
    let body = serde_json::json!({ "topic": topic, "data": data }).to_string();
    let resp = try_http(addr, "POST", "/publish", &[("Content-Type", "application/json")], body.as_bytes()).await?;
    if resp.status != 200 {
        return Err(format!("status {} {}", resp.status, resp.text()));
    }
    let v = resp.json();
    let id = v["id"].as_str().ok_or_else(|| format!("no id in {v}"))?.to_string();
    Ok((id, v.get("replicated") == Some(&serde_json::Value::Bool(false))))
}

/// Publishes one event after another, alternating nodes and topics, until `stop`; records each attempt.
fn spawn_publisher(
    nodes: [SocketAddr; 2],
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let (node, topic) = (i % 2, ["f1", "f2"][(i / 2) % 2]);
            let started = Instant::now();
            let outcome = publish_once(nodes[node], topic, &i.to_string()).await;
            let attempt = Attempt { started, answered: Instant::now(), node, topic, outcome };
            attempts.lock().expect("attempts").push(attempt);
            i += 1;
            tokio::time::sleep(PUBLISH_EVERY).await;
        }
    })
}

/// Kills the primary under two nodes, subscribers and a publisher; checks and reports what API.md promises.
/// `wait_args`: the nodes' `--redis-wait-*` flags.
async fn failover_under_load(wait_args: &[&str]) {
    let mut cluster = cluster();
    let url = sentinel_url(&cluster.sentinels);
    let mut args = vec!["--redis-url", url.as_str(), "--history-size", "100000"];
    args.extend_from_slice(wait_args);
    let nodes = [TestServer::start(&args), TestServer::start(&args)];
    let addrs = [nodes[0].addr(), nodes[1].addr()];
    for (n, addr) in addrs.iter().enumerate() {
        wait_ready(*addr, T, &format!("node {n} at start")).await;
    }
    let wanted: [(usize, &[&str]); 4] = [(0, &["f1"]), (0, &["f1", "f2"]), (1, &["f2"]), (1, &["f1", "f2"])];
    let mut subscribers = Vec::new();
    for (node, topics) in wanted {
        subscribers.push((node, topics, Resuming::start(addrs[node], topics).await));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let publisher = spawn_publisher(addrs, stop.clone(), attempts.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A client that goes away for a while, and comes back after the failover.
    let mut away = SseClient::subscribe(addrs[0], &["f1", "f2"]).await;
    let away_last = away.next_event(T).await.id().to_string();
    away.abort();

    // The replica stops replicating (its link to the primary down: it cannot authenticate), so that the
    // failover loses what is acknowledged from now on, as asynchronous replication can.
    cluster.replica.command(&["CONFIG", "SET", "masterauth", "not-the-password"]);
    cluster.replica.command(&["CLIENT", "KILL", "TYPE", "master"]);
    let deadline = Instant::now() + T;
    while !cluster.replica.command(&["INFO", "replication"]).contains("master_link_status:down") {
        assert!(Instant::now() < deadline, "the replica's link stays up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;

    cluster.primary.stop();
    let killed = Instant::now();
    // Publishing resumes on both nodes, and /readyz recovers, without a restart.
    let (mut resumed, mut ready): ([Option<Instant>; 2], [Option<Instant>; 2]) = ([None, None], [None, None]);
    let deadline = killed + T;
    while ready.iter().chain(&resumed).any(Option::is_none) {
        for (n, addr) in addrs.iter().enumerate() {
            if ready[n].is_none() && try_http(*addr, "GET", "/readyz", &[], b"").await.is_ok_and(|r| r.status == 200) {
                ready[n] = Some(Instant::now());
            }
            if resumed[n].is_none() {
                let attempts = attempts.lock().expect("attempts");
                let first = attempts.iter().find(|a| a.node == n && a.started > killed && a.outcome.is_ok());
                resumed[n] = first.map(|a| a.answered);
            }
        }
        if Instant::now() >= deadline {
            let attempts = attempts.lock().expect("attempts");
            let tail: Vec<_> = attempts.iter().filter(|a| a.started > killed).collect();
            panic!("within {T:?} of the kill: /readyz 200 at {ready:?}, publishes accepted at {resumed:?}; {tail:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let promoted = cluster.sentinels[0].primary_port();
    assert_eq!(promoted, Some(cluster.replica.port()), "the sentinels promoted the replica");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    publisher.await.expect("publisher");
    let attempts = attempts.lock().expect("attempts").clone();
    let end = publish(addrs[0], &["f1"], None, "end").await;
    let end2 = publish(addrs[1], &["f2"], None, "end").await;

    // Ids keep rising: every acknowledged id is greater than those acknowledged before it, across the kill.
    let acked: Vec<(&Attempt, &str, bool)> = attempts
        .iter()
        .filter_map(|a| a.outcome.as_ref().ok().map(|(id, unreplicated)| (a, id.as_str(), !*unreplicated)))
        .collect();
    let ids: Vec<String> = acked.iter().map(|(_, id, _)| id.to_string()).collect();
    assert_strictly_increasing(&ids);
    let after: Vec<&(&Attempt, &str, bool)> = acked.iter().filter(|(a, _, _)| a.started > killed).collect();
    assert!(!after.is_empty());

    let mut lost_somewhere = std::collections::BTreeSet::new();
    let mut report = Vec::new();
    for (node, topics, subscriber) in &subscribers {
        // The markers were published after everything else: once a subscriber has them, it has all it gets.
        if topics.contains(&"f1") {
            subscriber.wait_for(&end, T).await;
        }
        let seen = if topics.contains(&"f2") { subscriber.wait_for(&end2, T).await } else { subscriber.seen() };
        let got = seen.ids();
        let mine = |a: &Attempt| topics.contains(&a.topic);
        // Every event acknowledged after the failover: exactly once, in order.
        let new: Vec<&str> = after.iter().filter(|(a, _, _)| mine(a)).map(|(_, id, _)| *id).collect();
        let received: Vec<&str> = got.iter().map(String::as_str).filter(|id| new.contains(id)).collect();
        assert_eq!(received, new, "node {node} {topics:?}: the events acknowledged after the failover, each once");
        // Every acknowledged event it never got: it was told.
        let missed: Vec<&str> =
            acked.iter().filter(|(a, id, _)| mine(a) && !got.iter().any(|g| g == id)).map(|(_, id, _)| *id).collect();
        if !missed.is_empty() {
            assert!(
                seen.resets.iter().any(|(_, _, reason)| reason == "history_lost"),
                "node {node} {topics:?} missed {missed:?} without herald.reset; resets {:?}",
                seen.resets
            );
        }
        lost_somewhere.extend(missed.iter().map(|id| id.to_string()));
        // With --redis-wait-replicas, an event acknowledged as replicated is never lost.
        if !wait_args.is_empty() {
            let replicated_missed: Vec<&str> = acked
                .iter()
                .filter(|(a, id, replicated)| *replicated && mine(a) && !got.iter().any(|g| g == id))
                .map(|(_, id, _)| *id)
                .collect();
            assert!(
                replicated_missed.is_empty(),
                "node {node} {topics:?}: replicated events lost: {replicated_missed:?}"
            );
        }
        let first_new =
            seen.events.iter().zip(&seen.received_at).find(|(e, _)| new.contains(&e.id())).map(|(_, at)| *at - killed);
        report.push(format!(
            "node {node} {topics:?}: first new event {first_new:?} after the kill, {} resets, {} streams",
            seen.resets.len(),
            seen.streams
        ));
    }
    // What the new primary holds: every event acknowledged as replicated, when publishes wait for it.
    // The client that was away is told that history was lost, then gets what is retained, and everything
    // acknowledged after the failover once.
    let mut back = SseClient::open(addrs[1], "/events?topics=f1,f2", &[("Last-Event-ID", &away_last)]).await;
    let (topics, reason) = reset_payload(&back.next_event(T).await);
    assert_eq!((topics.len(), reason.as_str()), (2, "history_lost"), "the client that was away");
    let mut replayed = Vec::new();
    while replayed.last() != Some(&end2) {
        replayed.push(back.next_event(T).await.id().to_string());
    }
    let new: Vec<String> = after.iter().map(|(_, id, _)| id.to_string()).collect();
    let got: Vec<&String> = replayed.iter().filter(|id| new.contains(id)).collect();
    assert_eq!(got, new.iter().collect::<Vec<_>>(), "the client that was away: the events after the failover");

    // Resuming from before the first event: a reset if the failover lost events, then all that is retained.
    let mut history = SseClient::open(addrs[1], "/events?topics=f1,f2", &[("Last-Event-ID", "0-1")]).await;
    let mut retained = Vec::new();
    while retained.last() != Some(&end2) {
        let e = history.next_event(T).await;
        if e.event.as_deref() != Some("herald.reset") {
            retained.push(e.id().to_string());
        }
    }
    let lost = acked.iter().filter(|(_, id, _)| !retained.iter().any(|r| r == id)).count();
    if !wait_args.is_empty() {
        let lost: Vec<&str> = acked
            .iter()
            .filter(|(_, id, replicated)| *replicated && !retained.iter().any(|r| r == id))
            .map(|(_, id, _)| *id)
            .collect();
        assert!(lost.is_empty(), "replicated events missing from the new primary: {lost:?}");
    }
    assert!(lost > 0, "the failover was meant to lose the events acknowledged while the replica was cut off");
    let failed = attempts.iter().filter(|a| a.outcome.is_err()).count();
    let unreplicated = acked.iter().filter(|(_, _, replicated)| !replicated).count();
    eprintln!(
        "failover {wait_args:?}: {} publishes, {} acknowledged ({} before the kill, {unreplicated} \"replicated\": false), \
         {failed} refused; first publish accepted again after {:?} on node 0 and {:?} on node 1; /readyz 200 again \
         after {:?} and {:?}; acknowledged events missing from the new primary: {lost} (missed by subscribers: {})",
        attempts.len(),
        acked.len(),
        acked.len() - after.len(),
        resumed[0].map(|t| t - killed),
        resumed[1].map(|t| t - killed),
        ready[0].map(|t| t - killed),
        ready[1].map(|t| t - killed),
        lost_somewhere.len(),
    );
    for line in report {
        eprintln!("  {line}");
    }
    let refused: Vec<&Attempt> = attempts.iter().filter(|a| a.outcome.is_err()).collect();
    let slowest = refused.iter().map(|a| a.answered - a.started).max();
    let unknown = refused.iter().filter(|a| a.outcome.as_ref().is_err_and(|e| e.contains("may or may not"))).count();
    eprintln!(
        "  refused publishes: {}, the slowest answered in {slowest:?}, {unknown} with an unknown outcome",
        refused.len()
    );
}

/// The primary is killed under load: both nodes follow the promoted replica without a restart, publishing
/// and `/readyz` recover within 15 s, every event acknowledged after the failover reaches every subscriber
/// exactly once, every subscriber that missed an acknowledged event (asynchronous replication can lose
/// the newest) was told with `herald.reset`, and ids keep rising.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_under_load_loses_nothing_silently() {
    failover_under_load(&[]).await;
}

/// The same with `--redis-wait-replicas 1`: no event acknowledged as replicated is lost at all. (After the
/// failover the new primary has no replica left, so its publishes answer `"replicated": false` once the
/// wait times out.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_waiting_for_a_replica_loses_no_acknowledged_event() {
    failover_under_load(&["--redis-wait-replicas", "1", "--redis-wait-timeout", "300"]).await;
}

/// A server that answers `PING` but has become a replica (`ROLE`) refuses every write: the node is unready
/// while it is one (it used to answer `/readyz` 200 while every publish got 503), and ready again once the
/// server is a primary again, with ids still rising.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_became_a_replica_makes_the_node_unready() {
    let redis = RedisServer::start();
    let other = RedisServer::start();
    let node = TestServer::start(&["--redis-url", &redis.url()]);
    let addr = node.addr();
    wait_ready(addr, T, "at start").await;
    let before = publish(addr, &["r"], None, "before").await;

    redis.command(&["REPLICAOF", "127.0.0.1", &other.port().to_string()]);
    let deadline = Instant::now() + T;
    while get(addr, "/readyz").await.status != 503 {
        assert!(Instant::now() < deadline, "/readyz still 200 {T:?} after Redis became a replica");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = try_publish(addr, &["r"], "to a replica").await.expect_err("a publish to a replica");
    assert!(refused.starts_with("status 503"), "{refused}");
    assert_eq!(get(addr, "/readyz").await.status, 503, "still unready");

    redis.command(&["REPLICAOF", "NO", "ONE"]);
    wait_ready(addr, T, "once the server is a primary again").await;
    let mut c = SseClient::subscribe(addr, &["r"]).await;
    let after = publish(addr, &["r"], None, "after").await;
    assert!(id_key(&after) > id_key(&before), "ids keep rising: {before} then {after}");
    assert_eq!(c.next_event(T).await.id(), after);
}

/// `--redis-wait-replicas 1`: a publish answers once the replica has the event; while the replica is frozen,
/// publishes answer `"replicated": false` after `--redis-wait-timeout` (counted), all waiting at once, each
/// on a connection of its own (`WAIT` blocks the connection it runs on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_wait_for_replicas_on_connections_of_their_own() {
    const WAITING: usize = 8;
    let primary = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]);
    let replica = RedisServer::start_replica_of(&primary);
    let url = primary.url();
    let node = TestServer::start(&["--redis-url", &url, "--redis-wait-replicas", "1", "--redis-wait-timeout", "1500"]);
    let addr = node.addr();
    let mut c = SseClient::subscribe(addr, &["w"]).await;
    let (id, unreplicated) = publish_once(addr, "w", "replicated").await.expect("publish");
    assert!(!unreplicated, "the replica acknowledged it");
    let on_replica = replica.command(&["XRANGE", "herald:stream:w", "-", "+"]);
    assert!(on_replica.contains(&id), "on the replica by the time the publisher hears of it: {on_replica:?}");

    replica.signal("STOP");
    let tasks: Vec<_> = (0..WAITING)
        .map(|i| tokio::spawn(async move { publish_once(addr, "w", &format!("waiting {i}")).await }))
        .collect();
    let deadline = Instant::now() + T;
    loop {
        let waits = primary.command(&["CLIENT", "LIST"]).matches("cmd=wait").count();
        if waits >= WAITING {
            break;
        }
        assert!(Instant::now() < deadline, "{waits} publishes waiting at once, expected {WAITING}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ids = Vec::new();
    for task in tasks {
        let (id, unreplicated) = task.await.expect("publish task").expect("a publish while the replica is frozen");
        assert!(unreplicated, "answered \"replicated\": false");
        ids.push(id);
    }
    replica.signal("CONT");
    assert!(metrics(addr).await["herald_backend_publishes_unreplicated_total"] >= WAITING as f64);
    let deadline = Instant::now() + T;
    while publish_once(addr, "w", "after").await.expect("publish").1 {
        assert!(Instant::now() < deadline, "publishes still unreplicated after the replica came back");
    }
    let delivered: Vec<String> = c.next_events(WAITING + 1, T).await.iter().map(|e| e.id().to_string()).collect();
    ids.sort_by_key(|id| id_key(id));
    assert_eq!(delivered[1..], ids[..], "published (and delivered) although not replicated in time");
}
