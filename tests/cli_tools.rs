// The keys in tests/fixtures/ are test-only keys, generated for these tests: they protect nothing.

//! The command-line tools of API.md ("Command-line tools"), driven as a user would: `herald token`'s tokens
//! verify against the keys and carry the claims; `herald publish` and `herald tail` work against a real
//! server with such a token; `tail` resumes across a dropped connection and across a server restart without
//! missing or repeating an event; refusals exit non-zero with the server's message; nonsense is refused with
//! status 2.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use support::*;

const T: Duration = Duration::from_secs(10);
const SECRET: &str = "herald-test-secret-not-for-production";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

// ---------------------------------------------------------------------------------------------
// Running the tools
// ---------------------------------------------------------------------------------------------

/// `herald ARGS` with `stdin` as its standard input, run to its end: `(status, stdout, stderr)`.
/// `HERALD_*` variables of the test's own environment are removed, so only `env` counts.
fn tool(args: &[&str], env: &[(&str, &str)], stdin: &str) -> (ExitStatus, String, String) {
    let mut cmd = tool_command(args, env);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn herald");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = rx
        .recv_timeout(T)
        .unwrap_or_else(|_| panic!("herald {args:?} still running after {T:?}"))
        .expect("wait for herald");
    let _ = writer.join();
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn tool_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("HERALD_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd
}

/// Runs a tool that must succeed and returns its stdout, trimmed.
fn tool_ok(args: &[&str], env: &[(&str, &str)], stdin: &str) -> String {
    let (status, stdout, stderr) = tool(args, env, stdin);
    assert!(status.success(), "herald {args:?}: {status}\nstdout: {stdout}\nstderr: {stderr}");
    stdout.trim().to_owned()
}

/// Runs a tool that must fail with `code`; returns its stderr.
fn tool_fails(args: &[&str], env: &[(&str, &str)], code: i32) -> String {
    let (status, stdout, stderr) = tool(args, env, "");
    assert_eq!(status.code(), Some(code), "herald {args:?}: {status}\nstdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.is_empty(), "herald {args:?} failed but printed on stdout: {stdout}");
    stderr
}

/// `herald token --jwt-secret SECRET …`.
fn token(grants: &[&str]) -> String {
    let mut args = vec!["token", "--jwt-secret", SECRET];
    args.extend_from_slice(grants);
    tool_ok(&args, &[], "")
}

/// A running `herald tail`, its stdout and stderr read line by line; killed on drop.
struct Tail {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
}

impl Tail {
    fn start(args: &[&str]) -> Tail {
        let mut all = vec!["tail"];
        all.extend_from_slice(args);
        let mut cmd = tool_command(&all, &[]);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn herald tail");
        let stdout = lines(child.stdout.take().expect("stdout"));
        let stderr = lines(child.stderr.take().expect("stderr"));
        Tail { child, stdout, stderr, stderr_seen: Vec::new() }
    }

    /// The next line on stdout.
    fn line(&mut self) -> String {
        match self.stdout.recv_timeout(T) {
            Ok(line) => line,
            Err(_) => panic!("herald tail printed no line within {T:?}; stderr:\n{}", self.drain_stderr()),
        }
    }

    /// Asserts that nothing more is printed on stdout for `wait`.
    fn no_line(&mut self, wait: Duration) {
        if let Ok(line) = self.stdout.recv_timeout(wait) {
            panic!("unexpected line from herald tail: {line}");
        }
    }

    /// Waits for a stderr line containing `text`.
    fn wait_stderr(&mut self, text: &str) -> String {
        let deadline = Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.stderr_seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!("herald tail did not print {text:?} on stderr within {T:?}:\n{}", self.drain_stderr()),
            }
        }
    }

    /// Waits for `herald tail: connected …`: from then on, every published event reaches it.
    fn wait_connected(&mut self) -> String {
        self.wait_stderr("herald tail: connected")
    }

    fn drain_stderr(&mut self) -> String {
        while let Ok(line) = self.stderr.try_recv() {
            self.stderr_seen.push(line);
        }
        self.stderr_seen.join("\n")
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + T;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "herald tail still running; stderr:\n{}", self.drain_stderr());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// `ID TYPE DATA` of a text line.
fn text_line(id: &str, kind: &str, data: &str) -> String {
    format!("{id} {kind} {data}")
}

// ---------------------------------------------------------------------------------------------
// herald token
// ---------------------------------------------------------------------------------------------

fn decode(token: &str, key: &DecodingKey, alg: Algorithm) -> Value {
    let mut validation = Validation::new(alg);
    validation.validate_aud = false;
    let data = jsonwebtoken::decode::<Value>(token, key, &validation)
        .unwrap_or_else(|e| panic!("token {token} does not verify as {alg:?}: {e}"));
    assert_eq!(data.header.alg, alg);
    data.claims
}

fn assert_times(claims: &Value, ttl: u64) {
    let (iat, exp) = (claims["iat"].as_u64().expect("iat"), claims["exp"].as_u64().expect("exp"));
    assert!(iat.abs_diff(now()) <= 60, "iat {iat} is not now ({})", now());
    assert_eq!(exp - iat, ttl, "exp - iat in {claims}");
}

#[test]
fn token_with_a_secret_verifies_and_carries_the_claims() {
    let token = token(&["--subscribe", "doc/*,user/7", "--subscribe", "news", "--publish", "doc/*", "--sub", "alice"]);
    let claims = decode(&token, &DecodingKey::from_secret(SECRET.as_bytes()), Algorithm::HS256);
    assert_eq!(claims["herald"], json!({"subscribe": ["doc/*", "user/7", "news"], "publish": ["doc/*"]}));
    assert_eq!(claims["sub"], "alice");
    assert_times(&claims, 3600);
    let keys: Vec<&String> = claims.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["herald", "sub", "iat", "exp"]);

    // The secret from the environment, like the server's; a token for subscribing only; every --ttl form.
    for (ttl, secs) in [("30s", 30), ("15m", 900), ("2h", 7200), ("7d", 604_800), ("90", 90)] {
        let token = tool_ok(&["token", "--subscribe", "*", "--ttl", ttl], &[("HERALD_JWT_SECRET", SECRET)], "");
        let claims = decode(&token, &DecodingKey::from_secret(SECRET.as_bytes()), Algorithm::HS256);
        assert_eq!(claims["herald"], json!({"subscribe": ["*"], "publish": []}));
        assert!(claims.get("sub").is_none(), "{claims}");
        assert_times(&claims, secs);
    }
}

#[test]
fn token_with_a_private_key_verifies_against_the_public_key() {
    for (private, public, alg) in
        [("rsa_private.pem", "rsa_public.pem", Algorithm::RS256), ("ec_private.pem", "ec_public.pem", Algorithm::ES256)]
    {
        let pem = std::fs::read(fixture(public)).expect("public key");
        let key = match alg {
            Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
            _ => DecodingKey::from_ec_pem(&pem),
        }
        .expect("decoding key");
        let by_flag =
            tool_ok(&["token", "--jwt-private-key", &fixture(private), "--publish", "a", "--ttl", "10m"], &[], "");
        let claims = decode(&by_flag, &key, alg);
        assert_eq!(claims["herald"], json!({"subscribe": [], "publish": ["a"]}));
        assert_times(&claims, 600);
        let by_env = tool_ok(&["token", "--publish", "a"], &[("HERALD_JWT_PRIVATE_KEY", &fixture(private))], "");
        decode(&by_env, &key, alg);
    }
}

#[tokio::test]
async fn a_server_with_the_public_key_accepts_the_token() {
    let server = TestServer::start(&["--jwt-public-key", &fixture("ec_public.pem")]);
    let token = tool_ok(&["token", "--jwt-private-key", &fixture("ec_private.pem"), "--publish", "doc/*"], &[], "");
    let id = tool_ok(&["publish", "--url", &server.url("/"), "--token", &token, "doc/1", "x"], &[], "");
    assert!(id.contains('-'), "not an id: {id}");
}

#[test]
fn token_refuses_nonsense_with_status_2() {
    let secret = ["--jwt-secret", SECRET];
    let cases: Vec<(Vec<&str>, Vec<&str>, &str)> = vec![
        (vec!["--subscribe", "a", "--ttl", "soon"], secret.to_vec(), "--ttl"),
        (vec!["--subscribe", "a", "--ttl", "0"], secret.to_vec(), "--ttl"),
        (vec!["--subscribe", "a", "--ttl", "-1h"], secret.to_vec(), "--ttl"),
        (vec!["--subscribe", "a", "--ttl", "1w"], secret.to_vec(), "--ttl"),
        (vec!["--subscribe", "a"], vec![], "--jwt-secret"),
        (vec!["--subscribe", "a", "--jwt-private-key", "/nonexistent.pem"], secret.to_vec(), "not both"),
        (vec!["--subscribe", "a", "--jwt-private-key", "/nonexistent.pem"], vec![], "/nonexistent.pem"),
        (vec!["--subscribe", "a", "--jwt-secret", ""], vec![], "empty"),
        (vec![], secret.to_vec(), "--subscribe"),
        (vec!["--subscribe", "a*b"], secret.to_vec(), "a*b"),
        (vec!["--publish", "a b"], secret.to_vec(), "a b"),
    ];
    for (args, key, says) in cases {
        let mut all = vec!["token"];
        all.extend(&args);
        all.extend(&key);
        let stderr = tool_fails(&all, &[], 2);
        assert!(stderr.contains(says), "herald {all:?} must mention {says:?}: {stderr}");
    }
    // A public key is not a signing key.
    let public = fixture("rsa_public.pem");
    let stderr = tool_fails(&["token", "--subscribe", "a", "--jwt-private-key", &public], &[], 2);
    assert!(stderr.contains("private key"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// herald publish and herald tail
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn publish_and_tail_with_a_token() {
    let server = TestServer::start(&["--jwt-secret", SECRET]);
    let url = server.url("");
    let token = token(&["--subscribe", "doc/*", "--publish", "doc/*"]);
    let mut tail = Tail::start(&["--url", &url, "--token", &token, "doc/1,doc/2", "doc/3"]);
    tail.wait_connected();
    let publish = |args: &[&str], stdin: &str| {
        let mut all = vec!["publish", "--url", &url];
        all.extend_from_slice(args);
        tool_ok(&all, &[("HERALD_TOKEN", &token)], stdin)
    };
    let a = publish(&["doc/1", "hello"], "");
    let b = publish(&["--type", "doc.updated", "doc/2,doc/1", "{\"title\": \"New\"}"], "");
    let c = publish(&["doc/3", "-"], "line 1\r\nline 2\n");
    let d = publish(&["doc/1", "--", "-5"], "");
    let e = publish(&["doc/1", ""], "");
    assert_eq!(tail.line(), text_line(&a, "message", "hello"));
    assert_eq!(tail.line(), text_line(&b, "doc.updated", "{\"title\": \"New\"}"));
    assert_eq!(tail.line(), text_line(&c, "message", "line 1\\nline 2\\n"));
    assert_eq!(tail.line(), text_line(&d, "message", "-5"));
    assert_eq!(tail.line(), text_line(&e, "message", ""));
    tail.no_line(Duration::from_millis(200));

    // --format json, from a given id: the retained events after it, then live.
    let mut json_tail =
        Tail::start(&["--url", &url, "--token", &token, "--format", "json", "--last-event-id", &b, "doc/3"]);
    let f = publish(&["--type", "t", "doc/3", "escape \u{1b}[31m"], "");
    let parse = |line: String| serde_json::from_str::<Value>(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(parse(json_tail.line()), json!({"id": c, "type": "message", "data": "line 1\nline 2\n"}));
    assert_eq!(parse(json_tail.line()), json!({"id": f, "type": "t", "data": "escape \u{1b}[31m"}));
    assert_eq!(tail.line(), text_line(&f, "t", "escape \\u001b[31m"));
}

#[tokio::test]
async fn publish_errors_exit_non_zero_with_the_servers_message() {
    let server = TestServer::start(&["--jwt-secret", SECRET]);
    let url = server.url("/publish");
    let token = token(&["--publish", "doc/*"]);
    let cases = [
        (vec!["--token", &token, "bad topic", "x"], "400 bad_topic"),
        (vec!["--token", &token, "doc/1,other", "x"], "403 forbidden"),
        (vec!["--token", &token, "--type", "herald.reset", "doc/1", "x"], "400 bad_type"),
        (vec!["doc/1", "x"], "401 unauthorized"),
        (vec!["--token", "not.a.jwt", "doc/1", "x"], "401 unauthorized"),
    ];
    for (args, says) in cases {
        let mut all = vec!["publish", "--url", &url];
        all.extend(&args);
        let stderr = tool_fails(&all, &[], 1);
        assert!(stderr.contains(says), "herald {all:?} must say {says:?}: {stderr}");
    }
    // Nothing listens there.
    let closed = format!("http://{}", closed_addr());
    let stderr = tool_fails(&["publish", "--url", &closed, "doc/1", "x"], &[], 1);
    assert!(stderr.contains("cannot connect"), "{stderr}");
    // Not an http:// or https:// URL: a usage error.
    let stderr = tool_fails(&["publish", "--url", "ftp://127.0.0.1:1/", "doc/1", "x"], &[], 2);
    assert!(stderr.contains("https://"), "{stderr}");
}

#[tokio::test]
async fn tail_refused_for_good_exits_non_zero() {
    let server = TestServer::start(&["--jwt-secret", SECRET]);
    let url = server.url("");
    let token = token(&["--subscribe", "doc/*"]);
    let cases = [
        (vec!["--token", &token, "doc/1,secret"], "403 forbidden"),
        (vec!["doc/1"], "401 unauthorized"),
        (vec!["--token", &token, "bad topic"], "400 bad_topic"),
    ];
    for (args, says) in cases {
        let mut all = vec!["tail", "--url", &url];
        all.extend(&args);
        let stderr = tool_fails(&all, &[], 1);
        assert!(stderr.contains(says), "herald {all:?} must say {says:?}: {stderr}");
    }
}

#[test]
fn tail_gives_up_after_max_retries() {
    let url = format!("http://{}", closed_addr());
    let started = Instant::now();
    let stderr = tool_fails(&["tail", "--url", &url, "--max-retries", "1", "a"], &[], 1);
    assert!(stderr.contains("giving up after 2 failed attempts"), "{stderr}");
    assert_eq!(stderr.matches("reconnecting in").count(), 1, "{stderr}");
    assert!(started.elapsed() < T);
}

#[tokio::test]
async fn tail_stops_quietly_when_its_reader_goes() {
    let server = TestServer::start(&[]);
    let mut tail = Tail::start(&["--url", &server.url(""), "a"]);
    tail.wait_connected();
    let first = publish(server.addr(), &["a"], None, "1").await;
    assert_eq!(tail.line(), text_line(&first, "message", "1"));
    // `herald tail a | head -1`: the reader closes the pipe (our reader thread does when it next has a line
    // to hand over and finds its receiver gone).
    tail.stdout = mpsc::channel().1;
    let deadline = Instant::now() + T;
    while tail.child.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "herald tail kept running with nobody reading");
        publish(server.addr(), &["a"], None, "more").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = tail.wait_exit();
    assert!(status.success(), "{status}; stderr:\n{}", tail.drain_stderr());
}

/// An address where nothing listens.
fn closed_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

// ---------------------------------------------------------------------------------------------
// Resuming
// ---------------------------------------------------------------------------------------------

/// A TCP proxy in front of a server whose connections can be cut, and which can refuse new ones.
struct Proxy {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    async fn start(to: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let open = Arc::new(AtomicBool::new(true));
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let accepting = open.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !accepting.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees its connection closed
                }
                let mut cuts = cuts.clone();
                cuts.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(to).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, open, cut }
    }

    /// Closes every open connection and refuses new ones until [`Proxy::reopen`].
    fn cut_and_close(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn reopen(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_resumes_across_a_dropped_connection() {
    let server = TestServer::start(&["--retry", "100"]);
    let addr = server.addr();
    let proxy = Proxy::start(addr).await;
    let mut tail = Tail::start(&["--url", &format!("http://{}", proxy.addr), "a,b"]);
    tail.wait_connected();
    let e1 = publish(addr, &["a"], None, "1").await;
    assert_eq!(tail.line(), text_line(&e1, "message", "1"));
    proxy.cut_and_close();
    tail.wait_stderr("reconnecting in");
    // Published while the tail cannot reach the server.
    let e2 = publish(addr, &["b"], None, "2").await;
    let e3 = publish(addr, &["a", "b"], Some("t"), "3").await;
    proxy.reopen();
    let resumed = tail.wait_connected();
    assert!(resumed.contains(&format!("resuming after {e1}")), "{resumed}");
    assert_eq!(tail.line(), text_line(&e2, "message", "2"));
    assert_eq!(tail.line(), text_line(&e3, "t", "3"));
    let e4 = publish(addr, &["a"], None, "4").await;
    assert_eq!(tail.line(), text_line(&e4, "message", "4"));
    tail.no_line(Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_resumes_across_a_server_restart_on_redis() {
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let port = closed_addr().port();
    let listen = format!("127.0.0.1:{port}");
    let node_a = || TestServer::start(&["--redis-url", &redis_url, "--listen", &listen, "--retry", "100"]);
    let mut a = node_a();
    let b = TestServer::start(&["--redis-url", &redis_url]);
    let mut tail = Tail::start(&["--url", &a.url(""), "--format", "json", "r"]);
    tail.wait_connected();
    let data = |line: String| serde_json::from_str::<Value>(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let e1 = publish(b.addr(), &["r"], None, "1").await;
    assert_eq!(data(tail.line()), json!({"id": e1, "type": "message", "data": "1"}));
    a.signal("KILL");
    a.wait_exit(T);
    tail.wait_stderr("reconnecting in");
    let e2 = publish(b.addr(), &["r"], None, "2").await;
    let e3 = publish(b.addr(), &["r"], None, "3").await;
    let _a = {
        drop(a);
        node_a()
    };
    let resumed = tail.wait_connected();
    assert!(resumed.contains(&format!("resuming after {e1}")), "{resumed}");
    assert_eq!(data(tail.line()), json!({"id": e2, "type": "message", "data": "2"}));
    assert_eq!(data(tail.line()), json!({"id": e3, "type": "message", "data": "3"}));
    let e4 = publish(b.addr(), &["r"], None, "4").await;
    assert_eq!(data(tail.line()), json!({"id": e4, "type": "message", "data": "4"}));
    tail.no_line(Duration::from_millis(300));
}

// ---------------------------------------------------------------------------------------------
// HTTPS
// ---------------------------------------------------------------------------------------------

/// A TLS-terminating front for `to` (as a proxy would be), with the test certificate for 127.0.0.1 and
/// localhost in tests/fixtures/redis-tls, signed by the test CA `ca.pem` there.
async fn tls_front(to: SocketAddr) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |name: &str| std::fs::read(fixture(&format!("redis-tls/{name}"))).expect("TLS fixture");
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&read("server.pem")).collect::<Result<_, _>>().expect("certificate");
    let key = PrivateKeyDer::from_pem_slice(&read("server.key")).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind TLS front");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut client) = acceptor.accept(client).await else { return };
                let Ok(mut server) = tokio::net::TcpStream::connect(to).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_tail_over_https() {
    let server = TestServer::start(&["--jwt-secret", SECRET]);
    let front = tls_front(server.addr()).await;
    let token = token(&["--subscribe", "s", "--publish", "s"]);
    let ca = fixture("redis-tls/ca.pem");
    for host in ["127.0.0.1", "localhost"] {
        let url = format!("https://{host}:{}", front.port());
        let mut tail = Tail::start(&["--url", &url, "--ca-cert", &ca, "--token", &token, "s"]);
        tail.wait_connected();
        let id = tool_ok(&["publish", "--url", &url, "--token", &token, "s", host], &[("HERALD_CA_CERT", &ca)], "");
        assert_eq!(tail.line(), text_line(&id, "message", host));
    }
    // A certificate the client does not trust.
    let url = format!("https://127.0.0.1:{}", front.port());
    let other = fixture("redis-tls/other-ca.pem");
    let stderr = tool_fails(&["publish", "--url", &url, "--ca-cert", &other, "--token", &token, "s", "x"], &[], 1);
    assert!(stderr.contains("certificate"), "{stderr}");
    let stderr = tool_fails(&["tail", "--url", &url, "--ca-cert", &other, "s"], &[], 1);
    assert!(stderr.contains("certificate") && !stderr.contains("reconnecting"), "not final: {stderr}");
}

// ---------------------------------------------------------------------------------------------
// The command line
// ---------------------------------------------------------------------------------------------

#[test]
fn help_lists_the_tools_and_each_tool_only_its_own_flags() {
    let help = tool_ok(&["--help"], &[], "");
    for name in ["serve", "token", "publish", "tail"] {
        assert!(help.contains(name), "herald --help does not list {name}:\n{help}");
    }
    for (name, flags) in [
        ("token", &["--subscribe", "--publish", "--sub", "--ttl", "--jwt-secret", "--jwt-private-key"][..]),
        ("publish", &["--url", "--token", "--type"][..]),
        ("tail", &["--url", "--token", "--last-event-id", "--format", "--max-retries"][..]),
    ] {
        let help = tool_ok(&[name, "--help"], &[], "");
        for flag in flags {
            assert!(help.contains(flag), "herald {name} --help does not list {flag}:\n{help}");
        }
        assert!(!help.contains("--listen"), "herald {name} --help lists the server's flags:\n{help}");
    }
}

/// The tests of this file that depend on the backend, against Redis.
mod on_redis {
    super::support::on_redis!(publish_and_tail_with_a_token, tail_resumes_across_a_dropped_connection);
}
