//! Scenario (issue 7, defect 1): a request naming a huge number of distinct topics. Topics used to be
//! de-duplicated with a linear search per topic, all of them before `--max-topics` was checked: one 1 MB
//! publish with 167k topics held a worker for 23 s before its `400 too_many_topics`, two at once stalled
//! `/healthz`, and `GET /events` did the same before authentication. Now topics are counted as they are
//! read, and the request is refused at the first distinct topic past the maximum: nothing after it is
//! looked at (so a bad topic after it is not what gets reported).

mod support;

use serde_json::json;
use support::*;

const FORM: &str = "application/x-www-form-urlencoded";

/// `n` distinct valid topics.
fn topics(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("t{i}")).collect()
}

#[tokio::test]
async fn too_many_topics_is_refused_before_the_rest_is_read() {
    let server = TestServer::start(&["--max-topics", "3"]);
    let addr = server.addr();
    // The fourth distinct topic is refused; the bad topic after it is never reached.
    let resp = get(addr, "/events?topics=a,b,a,c,d,not%20valid").await;
    assert_error(&resp, 400, Some("too_many_topics"));
    let resp = get(addr, "/events?topics=a,b,c&topics=d&topics=not%20valid").await;
    assert_error(&resp, 400, Some("too_many_topics"));
    let (status, body) =
        publish_json(addr, &json!({"topics": ["a", "b", "a", "c", "d", "not valid"], "data": "x"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("too_many_topics")), "{body}");
    let resp = publish_raw(addr, FORM, b"topic=a&topic=b&topic=c&topic=d&topic=not%20valid&data=x").await;
    assert_error(&resp, 400, Some("too_many_topics"));
    // Up to the maximum, with duplicates merged, is still fine.
    let (status, body) = publish_json(addr, &json!({"topics": ["a", "b", "a", "c", "b"], "data": "x"})).await;
    assert_eq!(status, 200, "{body}");
}

/// Two publishes of 200k distinct topics each, at once, and `/healthz` meanwhile: every answer comes
/// within the helpers' bounded wait (before the fix the publishes took minutes and the health check
/// waited behind them).
#[tokio::test]
async fn a_huge_topic_list_is_refused_and_the_node_keeps_answering() {
    let server = TestServer::start(&["--max-body-size", "4000000"]);
    let addr = server.addr();
    let many = topics(200_000);
    let json_body = json!({ "topics": many, "data": "x" }).to_string();
    let form_body: String = many.iter().map(|t| format!("topic={t}&")).collect::<String>() + "data=x";
    assert!(json_body.len() < 4_000_000 && form_body.len() < 4_000_000);
    let publishes = [("application/json", json_body), (FORM, form_body)].map(|(content_type, body)| {
        tokio::spawn(async move {
            try_http(addr, "POST", "/publish", &[("Content-Type", content_type)], body.as_bytes()).await
        })
    });
    let health = try_http(addr, "GET", "/healthz", &[], b"").await;
    assert_eq!(health.map(|r| r.status), Ok(200), "/healthz while two huge publishes are parsed");
    for publish in publishes {
        let resp = publish.await.expect("publish task").expect("a huge publish is answered");
        assert_error(&resp, 400, Some("too_many_topics"));
    }
    // As many topics as fit in a request head (64 KiB) on `GET /events`, without a token.
    let query = topics(9_000).join(",");
    assert!(query.len() < 60_000);
    let resp = try_http(addr, "GET", &format!("/events?topics={query}"), &[], b"").await;
    let resp = resp.expect("a huge subscription is answered");
    assert_error(&resp, 400, Some("too_many_topics"));
    assert_eq!(get(addr, "/healthz").await.status, 200);
}

/// The same tests against Redis.
mod on_redis {
    super::support::on_redis!(too_many_topics_is_refused_before_the_rest_is_read);
}
