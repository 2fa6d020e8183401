//! Regression (issue 10, found by a soak test): Redis restarted twice within about a second while a node
//! was stalled. Events acknowledged by the short-lived middle instance never reached some open streams on
//! that node, and those streams got no `herald.reset`: one went from `…3487-0` straight to `…4809-0`,
//! skipping an acknowledged `…4326-0`.
//!
//! Scenario: a subscriber on node N; N frozen (SIGSTOP); Redis restarted (empty); events published through
//! node M; Redis restarted again (empty: those events are gone); more events published through M; N resumed
//! (SIGCONT). N's pub/sub connection comes back to the third Redis, whose history starts after everything N
//! had seen: N's streams must learn that history was lost. The node used to dispatch the third instance's
//! events to its streams first and mark them lagging after, so a stream that had already sent one of them
//! resumed from that event's id, which the third instance covers, and never heard of the gap before it.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// Publishes until Redis is back (the node answers 503 meanwhile), then `n - 1` more; returns the ids.
async fn publish_through_restart(addr: std::net::SocketAddr, topic: &str, what: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let first = loop {
        match try_publish(addr, &[topic], &format!("{what} 0")).await {
            Ok(id) => break id,
            Err(e) => assert!(Instant::now() < deadline, "no publish 15 s after Redis restarted: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut ids = vec![first];
    for i in 1..n {
        ids.push(publish(addr, &[topic], None, &format!("{what} {i}")).await);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_node_never_skips_a_lost_redis_lifetime_silently() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let stalled = TestServer::start(&["--redis-url", &url]);
    let other = TestServer::start(&["--redis-url", &url]);
    let subscriber = Resuming::start(stalled.addr(), &["s"]).await;
    let mut before = Vec::new();
    for i in 0..3 {
        before.push(publish(other.addr(), &["s"], None, &format!("before {i}")).await);
    }
    subscriber.wait_for(&before[2], Duration::from_secs(10)).await;

    stalled.signal("STOP");
    redis.restart();
    let middle = publish_through_restart(other.addr(), "s", "middle", 3).await;
    redis.restart();
    // More than one page of catch-up (256 events), so that the node's streams have time to take some of
    // them while it still reads the rest.
    let after = publish_through_restart(other.addr(), "s", "after", 600).await;
    stalled.signal("CONT");

    let last = after.last().expect("published");
    let seen = subscriber.wait_for(last, Duration::from_secs(30)).await;
    let ids = seen.ids();
    let first_after = ids.iter().position(|id| after.contains(id)).expect("an event of the third Redis");
    let had_middle = middle.iter().all(|id| ids.contains(id));
    let told = seen
        .resets
        .iter()
        .any(|(at, topics, reason)| *at <= first_after && topics == &["s".to_string()] && reason == "history_lost");
    assert!(
        had_middle || told,
        "the stream went from {} to {} without the middle Redis's events {middle:?} and without herald.reset \
         before them; resets: {:?}",
        ids[..first_after].last().map_or("(nothing)", |s| s.as_str()),
        ids[first_after],
        seen.resets
    );
    // Whatever was retained reaches the client, each event once, in order.
    let received: Vec<&String> = ids.iter().filter(|id| after.contains(id)).collect();
    assert_eq!(received, after.iter().collect::<Vec<_>>(), "every event of the third Redis, once, in order");
    assert_strictly_increasing(&ids[first_after..]);
}
