//! The command line: open-mode safety, environment variables, `--help`, log formats, the
//! connection limit and the start-up line.

mod support;

use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(5);

#[test]
fn non_loopback_without_auth_is_refused() {
    let (status, stdout, stderr) = run_to_exit(&["--listen", "0.0.0.0:0"], &[], Duration::from_secs(10));
    assert!(!status.success(), "herald must refuse open mode on 0.0.0.0; stderr:\n{stderr}");
    assert!(
        stderr.contains("--allow-open") || stdout.contains("--allow-open"),
        "the refusal must mention --allow-open; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
}

#[tokio::test]
async fn non_loopback_with_allow_open_starts() {
    let server = TestServer::start(&["--listen", "0.0.0.0:0", "--allow-open"]);
    assert!(server.logged_addr().ip().is_unspecified(), "logged {}", server.logged_addr());
    assert_ne!(server.logged_addr().port(), 0, "the logged port must be the bound one");
    assert_eq!(get(server.addr(), "/healthz").await.status, 200);
}

#[tokio::test]
async fn serve_subcommand_serves() {
    let server = TestServer::start(&["serve"]);
    assert_eq!(get(server.addr(), "/healthz").await.status, 200);
}

#[tokio::test]
async fn startup_line_names_address_backend_and_auth() {
    let server = TestServer::start(&[]);
    let line = strip_ansi(server.startup_line());
    assert!(line.contains(&server.addr().to_string()), "{line}");
    assert!(line.contains("memory"), "start-up line must name the backend: {line}");
    assert!(line.contains("auth"), "start-up line must say whether auth is on: {line}");
}

/// With HERALD_HISTORY_SIZE=2 and 4 events, resuming from the first one finds a trimmed gap.
async fn resume_from_first_of_four(server: &TestServer) -> (Option<Vec<String>>, Vec<String>) {
    let addr = server.addr();
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(publish(addr, &["h"], None, &format!("{i}")).await);
    }
    let mut c = SseClient::open(addr, "/events?topics=h", &[("Last-Event-ID", &ids[0])]).await;
    let first = c.next_event(T).await;
    let (reset, mut rest) = if first.event.as_deref() == Some("herald.reset") {
        (Some(reset_payload(&first).0), Vec::new())
    } else {
        (None, vec![first.id().to_string()])
    };
    while rest.len() < if reset.is_some() { 2 } else { 3 } {
        rest.push(c.next_event(T).await.id().to_string());
    }
    assert!(rest.iter().all(|id| ids.contains(id)));
    (reset, rest)
}

#[tokio::test]
async fn history_size_env_var() {
    let server = TestServer::start_with_env(&[], &[("HERALD_HISTORY_SIZE", "2")]);
    let (reset, rest) = resume_from_first_of_four(&server).await;
    assert_eq!(reset, Some(vec!["h".to_string()]), "HERALD_HISTORY_SIZE=2 had no effect");
    assert_eq!(rest.len(), 2);
}

#[tokio::test]
async fn flag_beats_env_var() {
    let server = TestServer::start_with_env(&["--history-size", "1000"], &[("HERALD_HISTORY_SIZE", "2")]);
    let (reset, rest) = resume_from_first_of_four(&server).await;
    assert_eq!(reset, None, "--history-size must override HERALD_HISTORY_SIZE");
    assert_eq!(rest.len(), 3);
}

fn help_missing(flags: &[&str]) -> (Vec<String>, String) {
    let (status, stdout, stderr) = run_to_exit(&["--help"], &[], Duration::from_secs(10));
    assert!(status.success(), "--help exit {status:?}; stderr:\n{stderr}");
    let missing = flags.iter().filter(|f| !stdout.contains(*f)).map(|f| f.to_string()).collect();
    (missing, stdout)
}

/// The flags this suite drives.
#[test]
fn help_lists_core_flags() {
    let (missing, stdout) = help_missing(&[
        "--listen",
        "--redis-url",
        "--history-size",
        "--heartbeat",
        "--retry",
        "--max-topics",
        "--max-event-size",
        "--max-body-size",
        "--max-connections",
        "--shutdown-grace",
        "--log-format",
        "--queue-size",
        "--allow-open",
    ]);
    assert!(missing.is_empty(), "--help does not list {missing:?}:\n{stdout}");
}

/// The rest of API.md's Running table ("`herald --help` lists every flag").
#[test]
fn help_lists_auth_and_cors_flags() {
    let (missing, stdout) = help_missing(&["--jwt-secret", "--jwt-public-key", "--public-topic", "--cors-origin"]);
    assert!(missing.is_empty(), "--help does not list {missing:?}:\n{stdout}");
}

#[tokio::test]
async fn json_log_format() {
    let server = TestServer::start(&["--log-format", "json"]);
    let v: serde_json::Value = serde_json::from_str(server.startup_line().trim())
        .unwrap_or_else(|e| panic!("start-up line is not JSON ({e}): {}", server.startup_line()));
    assert!(v.is_object());
    // Make it log a bit more (a connection, a publish), then check every line.
    let addr = server.addr();
    let mut c = SseClient::subscribe(addr, &["a"]).await;
    publish(addr, &["a"], None, "x").await;
    c.next_event(T).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for line in server.stderr().lines().filter(|l| !l.trim().is_empty()) {
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
        assert!(matches!(parsed, Ok(serde_json::Value::Object(_))), "stderr line is not a JSON object: {line}");
    }
}

#[tokio::test]
async fn max_connections_limits_streams() {
    let server = TestServer::start(&["--max-connections", "2"]);
    let addr = server.addr();
    let s1 = SseClient::subscribe(addr, &["a"]).await;
    let _s2 = SseClient::subscribe(addr, &["b"]).await;
    let third = SseClient::connect(addr, "/events?topics=c", &[]).await;
    let resp = third.into_response().await;
    assert_error(&resp, 503, Some("too_many_connections"));
    // The limit is on streams: other requests still work.
    assert_eq!(get(addr, "/healthz").await.status, 200);
    publish(addr, &["a"], None, "x").await;
    // Closing a stream frees its slot.
    drop(s1);
    let deadline = std::time::Instant::now() + T;
    loop {
        let c = SseClient::connect(addr, "/events?topics=c", &[]).await;
        if c.status == 200 {
            break;
        }
        assert_eq!(c.status, 503);
        assert!(std::time::Instant::now() < deadline, "slot not freed after closing a stream");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The tests of this file that depend on the backend, against Redis.
mod on_redis {
    super::support::on_redis!(
        history_size_env_var,
        flag_beats_env_var,
        json_log_format,
        max_connections_limits_streams,
    );
}
