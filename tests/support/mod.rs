//! Shared helpers for Herald's black-box integration tests.
//!
//! Everything here drives the real `herald` binary as a user would: [`TestServer`] starts it on
//! `127.0.0.1:0`, reads the bound address from its start-up log line and keeps draining its stderr;
//! [`http`] speaks raw HTTP/1.1 over a `tokio::net::TcpStream`; [`SseClient`] opens `GET /events`,
//! decodes the body (chunked, Content-Length or close-delimited) incrementally and feeds it to
//! [`SseParser`], a line-by-line implementation of WHATWG HTML's "event stream interpretation".
//!
//! Every wait is bounded: helpers take a timeout or use [`IO_TIMEOUT`].
//!
//! Each `tests/*.rs` file compiles this module separately and uses only part of it, hence the
//! `dead_code` allowance.
#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

pub mod h2;
pub mod proxy;
pub mod scratch;

/// Bound for one plain HTTP exchange (connect, write, read the whole response).
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound for the server to print its start-up line.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------------

/// A running `herald` child process, killed (SIGKILL) on drop if still running.
pub struct TestServer {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
    startup_line: String,
}

impl TestServer {
    /// Starts `herald ARGS --listen 127.0.0.1:0` (the `--listen` is only added when `args` has
    /// none) with `RUST_LOG=info`, and waits for the start-up line.
    ///
    /// # Panics
    /// When the process cannot be spawned or does not log `herald listening ... addr=...` within
    /// [`START_TIMEOUT`]; the message includes everything it wrote to stderr.
    pub fn start(args: &[&str]) -> TestServer {
        Self::start_with_env(args, &[])
    }

    /// Like [`TestServer::start`], with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> TestServer {
        let mut cmd = herald_command(args, env);
        let mut child = cmd.spawn().expect("spawn herald");
        let stderr_pipe = child.stderr.take().expect("stderr piped");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        {
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                // Drains stderr for the whole life of the process, so the pipe never fills.
                let mut reader = BufReader::new(stderr_pipe);
                let mut raw = Vec::new();
                loop {
                    raw.clear();
                    match reader.read_until(b'\n', &mut raw) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let line = String::from_utf8_lossy(&raw).trim_end().to_string();
                            stderr.lock().expect("stderr lock").push(line.clone());
                            let _ = tx.send(line);
                        }
                    }
                }
            });
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(line) => {
                    if let Some(addr) = parse_startup_line(&line) {
                        if BACKEND_REDIS_URL.with(|u| u.borrow().is_some()) && !args.contains(&"--redis-url") {
                            assert!(line.contains("redis"), "expected the redis backend: {line}");
                        }
                        return TestServer { child, addr, stderr, startup_line: line };
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().ok();
                    panic!(
                        "herald {:?} exited ({:?}) before logging `herald listening`; stderr:\n{}",
                        args,
                        status,
                        stderr.lock().expect("stderr lock").join("\n")
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "herald {:?} did not log `herald listening addr=...` within {:?}; stderr:\n{}",
                    args,
                    START_TIMEOUT,
                    stderr.lock().expect("stderr lock").join("\n")
                );
            }
        }
    }

    /// The address to connect to (a wildcard bind address is mapped to 127.0.0.1).
    pub fn addr(&self) -> SocketAddr {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip([127, 0, 0, 1].into());
        }
        addr
    }

    /// The address exactly as the start-up line reported it.
    pub fn logged_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The start-up log line.
    pub fn startup_line(&self) -> &str {
        &self.startup_line
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://ADDR/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }

    /// Every stderr line seen so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").join("\n")
    }

    /// Sends SIGTERM (via `kill -TERM`).
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`...) via `kill`.
    pub fn signal(&self, name: &str) {
        let status =
            Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status().expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// Has the process exited?
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits for the process to exit.
    ///
    /// # Panics
    /// When it is still running after `timeout` (it is then killed).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "herald (pid {}) still running {:?} after being asked to stop; stderr:\n{}",
                    self.pid(),
                    timeout,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// VmRSS of the process in bytes, from /proc/PID/status.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read /proc/PID/status");
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
        let kb: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS value");
        kb * 1024
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn herald_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(args);
    if !args.iter().any(|a| *a == "--redis-url" || a.starts_with("--redis-url=")) {
        if let Some(url) = BACKEND_REDIS_URL.with(|u| u.borrow().clone()) {
            cmd.args(["--redis-url", &url]);
        }
    }
    if !args.iter().any(|a| *a == "--listen" || a.starts_with("--listen=")) {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    cmd.env("RUST_LOG", "info").env("NO_COLOR", "1").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `herald ARGS` (nothing added) to completion: `(status, stdout, stderr)`.
///
/// # Panics
/// When it has not exited after `timeout` (it is then killed).
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn herald");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err_t.join().unwrap_or_default();
            panic!("herald {args:?} still running after {timeout:?}; stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    (status, stdout, stderr)
}

/// Removes ANSI escape sequences (`ESC [ ... letter`), in case the log is coloured.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The bound address from a start-up line: text format (`... herald listening addr=IP:PORT ...`)
/// or JSON (`"addr"` at top level or under `"fields"`). `None` for other lines.
pub fn parse_startup_line(line: &str) -> Option<SocketAddr> {
    let line = strip_ansi(line);
    if !line.contains("herald listening") {
        return None;
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line.trim()) {
        let addr = v.get("addr").or_else(|| v.get("fields").and_then(|f| f.get("addr"))).and_then(|a| a.as_str())?;
        return addr.trim_matches('"').parse().ok();
    }
    let rest = &line[line.find("addr=")? + "addr=".len()..];
    let token: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
    token.trim_matches('"').parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Backends: one behaviour suite, run against memory and against Redis
// ---------------------------------------------------------------------------------------------

thread_local! {
    /// When set, [`TestServer::start`] on this thread adds `--redis-url` with this URL.
    static BACKEND_REDIS_URL: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Clears [`BACKEND_REDIS_URL`] even when the test panics.
struct ClearBackend;

impl Drop for ClearBackend {
    fn drop(&mut self) {
        BACKEND_REDIS_URL.with(|u| *u.borrow_mut() = None);
    }
}

/// Runs a behaviour test with every `herald` it starts on this thread pointed at a fresh
/// `redis-server` of its own. (`#[tokio::test]` runs the test body on the calling thread.)
pub fn with_redis(test: fn()) {
    let redis = RedisServer::start();
    BACKEND_REDIS_URL.with(|u| *u.borrow_mut() = Some(redis.url()));
    let _clear = ClearBackend;
    test();
    drop(redis);
}

/// For each named test of the enclosing file, a test of the same name that runs it against Redis
/// (see [`with_redis`]). Use inside a `mod on_redis { ... }`.
#[allow(unused_macros)]
macro_rules! on_redis {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::support::with_redis(super::$name);
            }
        )*
    };
}
#[allow(unused_imports)]
pub(crate) use on_redis;

/// A `redis-server` child process of its own, on a free port, without persistence; killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    /// A TLS port besides the plain one (which the test's own commands use).
    tls_port: Option<u16>,
    /// More `redis-server` arguments (a replica's `--replicaof`, say).
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts `redis-server` (from PATH) on a free port and waits until it answers `PING`.
    ///
    /// # Panics
    /// When `redis-server` is not installed (the Redis half of the suite needs it: install Debian's
    /// `redis-server` package) or does not answer within [`START_TIMEOUT`].
    pub fn start() -> RedisServer {
        // A free port may be taken by someone else before redis-server binds it: try a few.
        let mut last_error = String::new();
        for _ in 0..5 {
            let mut server = RedisServer { child: None, port: free_port(), tls_port: None, extra: Vec::new() };
            match server.try_restart() {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("{last_error}");
    }

    /// Like [`RedisServer::start`], also serving TLS on a second port with the certificate in
    /// `tests/fixtures/redis-tls/` (signed by the test CA `ca.pem` there, for `127.0.0.1`).
    ///
    /// # Panics
    /// As [`RedisServer::start`].
    pub fn start_tls() -> RedisServer {
        let mut last_error = String::new();
        for _ in 0..5 {
            let mut server =
                RedisServer { child: None, port: free_port(), tls_port: Some(free_port()), extra: Vec::new() };
            match server.try_restart() {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("{last_error}");
    }

    /// Like [`RedisServer::start`], with more `redis-server` arguments (kept across restarts).
    ///
    /// # Panics
    /// As [`RedisServer::start`].
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let mut last_error = String::new();
        for _ in 0..5 {
            let extra = extra.iter().map(|a| a.to_string()).collect();
            let mut server = RedisServer { child: None, port: free_port(), tls_port: None, extra };
            match server.try_restart() {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("{last_error}");
    }

    /// A replica of `primary` (full sync at once: the primary should run with
    /// `--repl-diskless-sync-delay 0`), waited for until its link to the primary is up.
    ///
    /// # Panics
    /// As [`RedisServer::start`], or when the replica is not in sync within [`START_TIMEOUT`].
    pub fn start_replica_of(primary: &RedisServer) -> RedisServer {
        let port = primary.port().to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port, "--repl-diskless-sync-delay", "0"]);
        let deadline = Instant::now() + START_TIMEOUT;
        while !replica.command(&["INFO", "replication"]).contains("master_link_status:up") {
            assert!(Instant::now() < deadline, "replica on {} not in sync within {START_TIMEOUT:?}", replica.port());
            std::thread::sleep(Duration::from_millis(20));
        }
        replica
    }

    /// The process id (0 when stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// Sends a signal by name (`STOP`, `CONT`...) via `kill`.
    pub fn signal(&self, name: &str) {
        let status =
            Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status().expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// `rediss://127.0.0.1:TLS_PORT`, for a server from [`RedisServer::start_tls`].
    ///
    /// # Panics
    /// When the server has no TLS port.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port.expect("started with start_tls"))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL) and waits for it to exit; its data is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty), after [`RedisServer::stop`].
    ///
    /// # Panics
    /// As [`RedisServer::start`].
    pub fn restart(&mut self) {
        if let Err(e) = self.try_restart() {
            panic!("{e}");
        }
    }

    fn try_restart(&mut self) -> Result<(), String> {
        self.stop();
        let port = self.port.to_string();
        let mut args: Vec<String> =
            ["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"].map(String::from).to_vec();
        // A replica's full sync goes through an RDB file: keep it out of the working directory.
        let dir = std::env::temp_dir().display().to_string();
        args.extend(["--dir".to_string(), dir, "--dbfilename".to_string(), self.rdb_name()]);
        args.extend(self.extra.iter().cloned());
        if let Some(tls_port) = self.tls_port {
            let dir = format!("{}/tests/fixtures/redis-tls", env!("CARGO_MANIFEST_DIR"));
            args.extend([
                "--tls-port".to_string(),
                tls_port.to_string(),
                "--tls-cert-file".to_string(),
                format!("{dir}/server.pem"),
                "--tls-key-file".to_string(),
                format!("{dir}/server.key"),
                "--tls-ca-cert-file".to_string(),
                format!("{dir}/ca.pem"),
                "--tls-auth-clients".to_string(),
                "no".to_string(),
            ]);
        }
        let child = Command::new("redis-server")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `redis-server` ({e}): the Redis half of this suite needs it on PATH \
                     (Debian: apt-get install -y redis-server)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Err(format!("redis-server on port {port} exited at start ({status}); is the port taken?"));
            }
            if let Ok(reply) = self.try_command(&["INFO", "server"]) {
                // Another test's redis-server may hold the port: make sure this one answered.
                let pid = self.child.as_ref().map(Child::id).unwrap_or_default();
                if reply.contains(&format!("process_id:{pid}\r\n")) {
                    return Ok(());
                }
                if reply.contains("process_id:") {
                    self.stop();
                    return Err(format!("port {port} is taken by another redis-server"));
                }
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(format!("redis-server on port {port} did not answer PING within {START_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The RDB file name of this server (in the temporary directory; see `try_restart`).
    fn rdb_name(&self) -> String {
        format!("herald-test-{}-{}.rdb", std::process::id(), self.port)
    }

    /// Sends one command and returns the raw RESP reply (for simple replies: `+OK\r\n`, `:1\r\n`...).
    ///
    /// # Errors
    /// Connection or I/O failure.
    pub fn try_command(&self, args: &[&str]) -> std::io::Result<String> {
        redis_command(self.port, args)
    }

    /// Sends one command.
    ///
    /// # Panics
    /// When it fails or Redis answers an error.
    pub fn command(&self, args: &[&str]) -> String {
        let reply = self.try_command(args).unwrap_or_else(|e| panic!("redis {args:?}: {e}"));
        assert!(!reply.starts_with('-'), "redis {args:?}: {reply}");
        reply
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(std::env::temp_dir().join(self.rdb_name()));
    }
}

/// Sends one command to the Redis (or Sentinel) on `127.0.0.1:port` and returns the raw RESP reply.
///
/// # Errors
/// Connection or I/O failure.
pub fn redis_command(port: u16, args: &[&str]) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(req.as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = stream.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A `redis-sentinel` child process on a free port, monitoring one primary as `herald` with a quorum of
/// 2, with short timeouts (a primary is down after `down_after` ms of silence); killed on drop, its
/// configuration file (which Sentinel rewrites) removed.
pub struct SentinelServer {
    child: Option<Child>,
    port: u16,
    config: std::path::PathBuf,
}

impl SentinelServer {
    /// The name the sentinels monitor the primary under.
    pub const MASTER: &'static str = "herald";

    /// Starts a Sentinel for the primary on `primary_port` and waits until it answers `PING`.
    ///
    /// # Panics
    /// When `redis-sentinel` is not installed (Debian's `redis-sentinel` package) or does not answer
    /// within [`START_TIMEOUT`].
    pub fn start(primary_port: u16, down_after: Duration) -> SentinelServer {
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            let config = std::env::temp_dir().join(format!("herald-sentinel-{}-{port}.conf", std::process::id()));
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\nlogfile \"\"\ndir {dir}\n\
                 sentinel monitor {name} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {name} {down}\n\
                 sentinel failover-timeout {name} 10000\n\
                 sentinel parallel-syncs {name} 1\n",
                dir = std::env::temp_dir().display(),
                name = Self::MASTER,
                down = down_after.as_millis(),
            );
            std::fs::write(&config, text).expect("write the sentinel configuration");
            let child = Command::new("redis-sentinel")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run `redis-sentinel` ({e}): the failover tests need it on PATH \
                         (Debian: apt-get install -y redis-sentinel)"
                    )
                });
            let mut sentinel = SentinelServer { child: Some(child), port, config };
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Some(status) = sentinel.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    sentinel.child = None;
                    last_error = format!("redis-sentinel on port {port} exited at start ({status})");
                    break;
                }
                if let Ok(reply) = redis_command(port, &["ROLE"]) {
                    if reply.contains("sentinel") {
                        return sentinel;
                    }
                }
                if Instant::now() >= deadline {
                    last_error = format!("redis-sentinel on port {port} did not answer within {START_TIMEOUT:?}");
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("{last_error}");
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A field of `SENTINEL MASTER herald` (`num-slaves`, `num-other-sentinels`, `flags`...).
    pub fn master_field(&self, field: &str) -> Option<String> {
        let reply = redis_command(self.port, &["SENTINEL", "MASTER", Self::MASTER]).ok()?;
        let values: Vec<&str> = reply.split("\r\n").filter(|l| !l.is_empty() && !l.starts_with(['*', '$'])).collect();
        let at = values.iter().position(|v| *v == field)?;
        values.get(at + 1).map(|v| v.to_string())
    }

    /// Waits until this Sentinel knows `replicas` replicas of the primary and `others` other Sentinels
    /// (they find each other through the primary within a few seconds): only then can they agree on a
    /// failover.
    ///
    /// # Panics
    /// When that takes longer than 20 s.
    pub fn wait_until_monitoring(&self, replicas: usize, others: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let slaves = self.master_field("num-slaves").and_then(|v| v.parse::<usize>().ok());
            let sentinels = self.master_field("num-other-sentinels").and_then(|v| v.parse::<usize>().ok());
            if slaves == Some(replicas) && sentinels == Some(others) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sentinel on {} knows {slaves:?} replicas and {sentinels:?} other sentinels after 20 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `ip:port` this Sentinel names as the primary now.
    pub fn primary_port(&self) -> Option<u16> {
        let reply = redis_command(self.port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::MASTER]).ok()?;
        reply.lines().filter(|l| !l.starts_with(['*', '$'])).nth(1)?.trim().parse().ok()
    }
}

impl Drop for SentinelServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.config);
    }
}

/// `redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,…/herald`.
pub fn sentinel_url(sentinels: &[SentinelServer]) -> String {
    let hosts: Vec<String> = sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port())).collect();
    format!("redis+sentinel://{}/{}", hosts.join(","), SentinelServer::MASTER)
}

/// A port nobody listens on now, below the kernel's ephemeral range (32768 and up by default), so
/// that no `herald` on port 0 and no outgoing connection takes it while its `redis-server` is stopped
/// for a restart. Picked pseudo-randomly, so that test processes running at once rarely collide.
fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u64(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Ids
// ---------------------------------------------------------------------------------------------

/// Ordering key of an id `<ms>-<seq>`; ids are otherwise opaque.
///
/// # Panics
/// When the id does not have that shape.
pub fn id_key(id: &str) -> (u64, u64) {
    let mut parts = id.split('-');
    let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
        panic!("id {id:?} is not <ms>-<seq>");
    };
    (
        a.parse().unwrap_or_else(|_| panic!("id {id:?}: bad ms part")),
        b.parse().unwrap_or_else(|_| panic!("id {id:?}: bad seq part")),
    )
}

/// Asserts that `ids` are strictly increasing by [`id_key`].
pub fn assert_strictly_increasing(ids: &[String]) {
    for w in ids.windows(2) {
        assert!(id_key(&w[0]) < id_key(&w[1]), "ids not strictly increasing: {:?} then {:?}", w[0], w[1]);
    }
}

// ---------------------------------------------------------------------------------------------
// Percent-encoding
// ---------------------------------------------------------------------------------------------

/// Percent-encodes everything but unreserved characters (RFC 3986), for query values.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `/events?topics=a&topics=b` with each topic percent-encoded, plus `extra` (already encoded,
/// without the leading `&`) when not empty.
pub fn events_path(topics: &[&str], extra: &str) -> String {
    let mut q: Vec<String> = topics.iter().map(|t| format!("topics={}", enc(t))).collect();
    if !extra.is_empty() {
        q.push(extra.to_string());
    }
    format!("/events?{}", q.join("&"))
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1
// ---------------------------------------------------------------------------------------------

/// A complete HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header (lower-case name, value) pairs, in order.
    pub headers: Vec<(String, String)>,
    /// The decoded body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    ///
    /// # Panics
    /// When it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("status {} body is not JSON ({e}): {:?}", self.status, self.text()))
    }
}

/// The first header of that name (case-insensitive) in a list.
pub fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// The media type of a Content-Type value, lower-cased, without parameters.
pub fn media_type(value: &str) -> String {
    value.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// Asserts a Herald error response: `status`, JSON content type and
/// `{"error":{"code":CODE,"message":"..."}}`. `code` `None` checks only the shape.
pub fn assert_error(resp: &HttpResponse, status: u16, code: Option<&str>) {
    assert_eq!(
        resp.status,
        status,
        "expected status {status} (code {code:?}), got {} with body {:?}",
        resp.status,
        resp.text()
    );
    let ct = resp.header("content-type").unwrap_or("");
    assert_eq!(media_type(ct), "application/json", "error content type: {ct:?}");
    let v = resp.json();
    let err = v.get("error").unwrap_or_else(|| panic!("no `error` object in {v}"));
    let got = err.get("code").and_then(|c| c.as_str()).unwrap_or_else(|| panic!("no string error.code in {v}"));
    assert!(err.get("message").map(|m| m.is_string()).unwrap_or(false), "no string error.message in {v}");
    if let Some(code) = code {
        assert_eq!(got, code, "error code for status {status}; body {v}");
    }
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    /// Chunked: waiting for a chunk-size line.
    ChunkSize,
    /// Chunked: this many data bytes left in the current chunk.
    ChunkData(usize),
    /// Chunked: the CRLF after a chunk's data.
    ChunkDataEnd,
    /// Chunked: trailer lines after the last chunk.
    Trailers,
    /// Content-Length: this many bytes left.
    Length(usize),
    /// Read until EOF.
    Close,
    /// The body ended (cleanly).
    Done,
}

/// An HTTP/1.1 client connection with incremental body decoding.
pub struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
    state: BodyState,
}

/// Why [`HttpConn::next_body_data`] failed.
#[derive(Debug)]
pub enum BodyError {
    /// EOF or an error before the body's end.
    Abrupt(String),
}

impl HttpConn {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> std::io::Result<HttpConn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConn { stream, buf: Vec::new(), state: BodyState::Done })
    }

    /// Connects from the loopback source address `source` (127.0.0.2, say: another client).
    pub async fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> std::io::Result<HttpConn> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConn { stream, buf: Vec::new(), state: BodyState::Done })
    }

    /// Connects with a small receive buffer (`SO_RCVBUF`), so the server's writes block sooner.
    pub async fn connect_with_recv_buffer(addr: SocketAddr, size: u32) -> std::io::Result<HttpConn> {
        let socket = TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(size)?;
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConn { stream, buf: Vec::new(), state: BodyState::Done })
    }

    /// Writes raw bytes.
    pub async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Sends a request with `Host` and, when there is a body or the method is POST/PUT,
    /// `Content-Length`. `headers` are added as given.
    pub async fn send_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<()> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        let has_len = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding"));
        if !has_len && (!body.is_empty() || method == "POST" || method == "PUT") {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.stream.write_all(&bytes).await?;
        self.stream.flush().await
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        // Reads straight into the heap buffer: a stack array here would make every future
        // that awaits this one huge.
        self.buf.reserve(64 * 1024);
        self.stream.read_buf(&mut self.buf).await
    }

    /// Reads the status line and headers; sets up body decoding for `method`.
    pub async fn read_head(&mut self, method: &str) -> std::io::Result<(u16, Vec<(String, String)>)> {
        loop {
            if let Some(pos) = find_subslice(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
                self.buf.drain(..pos + 4);
                let mut lines = head.split("\r\n");
                let status_line = lines.next().unwrap_or("");
                let status: u16 =
                    status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| {
                        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad status line {status_line:?}"))
                    })?;
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    })
                    .collect();
                if (100..200).contains(&status) {
                    continue; // 1xx: another head follows
                }
                let chunked = find_header(&headers, "transfer-encoding")
                    .map(|v| v.to_ascii_lowercase().contains("chunked"))
                    .unwrap_or(false);
                let length = find_header(&headers, "content-length").and_then(|v| v.parse().ok());
                self.state = if method == "HEAD" || status == 204 || status == 304 {
                    BodyState::Done
                } else if chunked {
                    BodyState::ChunkSize
                } else if let Some(n) = length {
                    if n == 0 {
                        BodyState::Done
                    } else {
                        BodyState::Length(n)
                    }
                } else {
                    BodyState::Close
                };
                return Ok((status, headers));
            }
            if self.fill().await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed before the response head ({} bytes: {:?})",
                        self.buf.len(),
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        }
    }

    /// Decodes what is buffered: `Some(data)` (possibly empty when the state moved on) or `None`
    /// when more input is needed.
    fn decode_buffered(&mut self) -> Result<Option<Vec<u8>>, BodyError> {
        match self.state {
            BodyState::Done => Ok(Some(Vec::new())),
            BodyState::Close => {
                if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Ok(Some(std::mem::take(&mut self.buf)))
                }
            }
            BodyState::Length(left) => {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let n = left.min(self.buf.len());
                let data: Vec<u8> = self.buf.drain(..n).collect();
                self.state = if left == n { BodyState::Done } else { BodyState::Length(left - n) };
                Ok(Some(data))
            }
            BodyState::ChunkSize => {
                let Some(pos) = find_subslice(&self.buf, b"\r\n") else {
                    return Ok(None);
                };
                let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
                self.buf.drain(..pos + 2);
                let hex = line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(hex, 16)
                    .map_err(|_| BodyError::Abrupt(format!("bad chunk size line {line:?}")))?;
                self.state = if size == 0 { BodyState::Trailers } else { BodyState::ChunkData(size) };
                Ok(Some(Vec::new()))
            }
            BodyState::ChunkData(left) => {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let n = left.min(self.buf.len());
                let data: Vec<u8> = self.buf.drain(..n).collect();
                self.state = if left == n { BodyState::ChunkDataEnd } else { BodyState::ChunkData(left - n) };
                Ok(Some(data))
            }
            BodyState::ChunkDataEnd => {
                if self.buf.len() < 2 {
                    return Ok(None);
                }
                if &self.buf[..2] != b"\r\n" {
                    return Err(BodyError::Abrupt(format!(
                        "chunk data not followed by CRLF: {:?}",
                        String::from_utf8_lossy(&self.buf[..self.buf.len().min(20)])
                    )));
                }
                self.buf.drain(..2);
                self.state = BodyState::ChunkSize;
                Ok(Some(Vec::new()))
            }
            BodyState::Trailers => {
                let Some(pos) = find_subslice(&self.buf, b"\r\n") else {
                    return Ok(None);
                };
                self.buf.drain(..pos + 2);
                if pos == 0 {
                    self.state = BodyState::Done;
                }
                Ok(Some(Vec::new()))
            }
        }
    }

    /// The next piece of body data: `Ok(Some(bytes))` (non-empty), `Ok(None)` when the body ended
    /// cleanly (chunked terminator, Content-Length reached, or EOF of a close-delimited body),
    /// `Err` when the connection ended or broke before that. Cancel-safe.
    pub async fn next_body_data(&mut self) -> Result<Option<Vec<u8>>, BodyError> {
        loop {
            if self.state == BodyState::Done {
                return Ok(None);
            }
            while let Some(data) = self.decode_buffered()? {
                if self.state == BodyState::Done && data.is_empty() {
                    return Ok(None);
                }
                if !data.is_empty() {
                    return Ok(Some(data));
                }
            }
            match self.fill().await {
                Ok(0) => {
                    if self.state == BodyState::Close {
                        self.state = BodyState::Done;
                        return Ok(None);
                    }
                    return Err(BodyError::Abrupt(format!("EOF in body state {:?}", self.state)));
                }
                Ok(_) => {}
                Err(e) => return Err(BodyError::Abrupt(format!("read error: {e}"))),
            }
        }
    }

    /// Reads the rest of the body.
    pub async fn read_body_to_end(&mut self) -> Result<Vec<u8>, BodyError> {
        let mut body = Vec::new();
        while let Some(data) = self.next_body_data().await? {
            body.extend_from_slice(&data);
        }
        Ok(body)
    }

    /// Closes the connection with a RST (SO_LINGER 0), as a crashed or killed client would.
    pub fn abort(self) {
        let _ = self.stream.set_zero_linger();
        drop(self.stream);
    }
}

fn find_subslice(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One request on a fresh connection (`Connection: close`), bounded by [`IO_TIMEOUT`].
///
/// # Panics
/// On any I/O error or timeout.
pub async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    match try_http(addr, method, path, headers, body).await {
        Ok(r) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

/// Like [`http`], returning errors instead of panicking.
pub async fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse, String> {
    let fut = async {
        let mut conn = HttpConn::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("connection")) {
            all.push(("Connection", "close"));
        }
        conn.send_request(method, path, &all, body).await.map_err(|e| format!("write: {e}"))?;
        let (status, headers) = conn.read_head(method).await.map_err(|e| format!("head: {e}"))?;
        let body = conn.read_body_to_end().await.map_err(|e| format!("body: {e:?}"))?;
        Ok(HttpResponse { status, headers, body })
    };
    match tokio::time::timeout(IO_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("{method} {path}: timed out after {IO_TIMEOUT:?}")),
    }
}

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    http(addr, "GET", path, &[], b"").await
}

/// `POST /publish` with a JSON body: `(status, parsed JSON body or Null)`.
pub async fn publish_json(addr: SocketAddr, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let resp = publish_raw(addr, "application/json", body.to_string().as_bytes()).await;
    let json = serde_json::from_slice(&resp.body).unwrap_or(serde_json::Value::Null);
    (resp.status, json)
}

/// `POST /publish` with a raw body and content type.
pub async fn publish_raw(addr: SocketAddr, content_type: &str, body: &[u8]) -> HttpResponse {
    http(addr, "POST", "/publish", &[("Content-Type", content_type)], body).await
}

/// Publishes `data` (a JSON string) with an optional type; returns the id.
///
/// # Panics
/// Unless the server answers 200 `{"id":"..."}`.
pub async fn publish(addr: SocketAddr, topics: &[&str], ty: Option<&str>, data: &str) -> String {
    let mut body = serde_json::json!({ "topics": topics, "data": data });
    if let Some(ty) = ty {
        body["type"] = serde_json::Value::String(ty.to_string());
    }
    let (status, json) = publish_json(addr, &body).await;
    assert_eq!(status, 200, "publish {body} -> {status} {json}");
    json.get("id")
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("publish response without string id: {json}"))
        .to_string()
}

/// Like [`publish`] but returns errors (for publishers that run while the server stops).
pub async fn try_publish(addr: SocketAddr, topics: &[&str], data: &str) -> Result<String, String> {
    let body = serde_json::json!({ "topics": topics, "data": data }).to_string();
    let resp = try_http(addr, "POST", "/publish", &[("Content-Type", "application/json")], body.as_bytes()).await?;
    if resp.status != 200 {
        return Err(format!("status {} {}", resp.status, resp.text()));
    }
    let v: serde_json::Value = serde_json::from_slice(&resp.body).map_err(|e| e.to_string())?;
    v.get("id").and_then(|v| v.as_str()).map(str::to_string).ok_or_else(|| format!("no id in {v}"))
}

/// `GET /metrics`, parsed from the Prometheus text format.
///
/// Keys: every sample under its full series name as written (`name{label="v",...}`, or just
/// `name` when unlabelled), plus, for every metric name, the bare `name` holding the SUM over
/// all of its label sets. So `m["herald_connections_open"]` is the total whatever labels the
/// server uses. Comment lines and unparsable values are skipped.
///
/// # Panics
/// Unless the server answers 200.
pub async fn metrics(addr: SocketAddr) -> HashMap<String, f64> {
    let resp = get(addr, "/metrics").await;
    assert_eq!(resp.status, 200, "GET /metrics: {}", resp.text());
    parse_prometheus(&resp.text())
}

/// The parser behind [`metrics`].
pub fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut series = HashMap::new();
    let mut sums: HashMap<String, f64> = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find('{') {
            Some(open) => {
                // Find the closing brace outside quoted label values.
                let mut in_quotes = false;
                let mut escaped = false;
                let mut close = None;
                for (i, c) in line[open..].char_indices() {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        in_quotes = !in_quotes;
                    } else if c == '}' && !in_quotes {
                        close = Some(open + i);
                        break;
                    }
                }
                let Some(close) = close else { continue };
                (&line[..=close], &line[close + 1..])
            }
            None => match line.split_once(char::is_whitespace) {
                Some((n, r)) => (n, r),
                None => continue,
            },
        };
        let Some(value) = rest.split_whitespace().next() else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let base = name.split('{').next().unwrap_or(name).to_string();
        series.insert(name.to_string(), value);
        *sums.entry(base).or_insert(0.0) += value;
    }
    series.extend(sums);
    series
}

/// Polls [`metrics`] until `pred(value of name)` holds; returns the last value.
///
/// # Panics
/// When it does not hold within `timeout`.
pub async fn wait_metric(addr: SocketAddr, name: &str, timeout: Duration, pred: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + timeout;
    loop {
        let m = metrics(addr).await;
        let v = m.get(name).copied();
        if let Some(v) = v {
            if pred(v) {
                return v;
            }
        }
        if Instant::now() >= deadline {
            panic!("metric {name} = {v:?}: condition not met within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// SSE
// ---------------------------------------------------------------------------------------------

/// A dispatched SSE event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The value of the `id:` field seen in this event's own block, if any.
    pub id: Option<String>,
    /// The WHATWG "last event ID" buffer at dispatch (persists across events).
    pub last_event_id: String,
    /// The `event:` field; `None` when absent or empty (WHATWG type "message").
    pub event: Option<String>,
    /// The data, lines joined with LF.
    pub data: String,
    /// The `topics:` field of this event's block (tagged streams, `tagTopics=1`), if any. Not part of
    /// the WHATWG algorithm, which ignores unknown fields; recorded so that tests can read it.
    pub topics: Option<String>,
}

impl SseEvent {
    /// The id; panics when the event had no `id:` line.
    pub fn id(&self) -> &str {
        self.id.as_deref().unwrap_or_else(|| panic!("event without id: line: {self:?}"))
    }
}

/// What the parser and the client yield.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// A dispatched event.
    Event(SseEvent),
    /// A comment line: the text after the `:`, as sent.
    Comment(String),
    /// A valid `retry:` field (ASCII digits only).
    Retry(u64),
    /// The body ended: `true` if cleanly (chunked terminator / EOF of a close-delimited body),
    /// `false` with the reason when the connection broke before that.
    End { clean: bool, reason: String },
}

/// WHATWG "event stream interpretation", fed with arbitrary byte slices.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the current incomplete line.
    line: Vec<u8>,
    /// The previous byte was a CR that ended a line (an LF right after it is part of that end).
    after_cr: bool,
    /// Whether the first bytes (where a BOM is stripped) have been seen.
    started: bool,
    /// The first bytes, until it is known whether they are a BOM.
    bom: Vec<u8>,
    data: String,
    event_type: String,
    last_event_id: String,
    block_id: Option<String>,
    block_topics: Option<String>,
}

impl SseParser {
    /// A fresh parser.
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Feeds bytes; returns the items completed by them.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseItem> {
        let mut out = Vec::new();
        let joined;
        let mut bytes = bytes;
        if !self.started {
            // One leading U+FEFF BOM is stripped, only at the very start of the stream.
            self.bom.extend_from_slice(bytes);
            if self.bom.len() < 3 && b"\xEF\xBB\xBF".starts_with(&self.bom) {
                return out;
            }
            self.started = true;
            joined = std::mem::take(&mut self.bom);
            bytes = joined.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&joined);
        }
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(&mut out);
                }
                b'\n' => self.end_line(&mut out),
                _ => self.line.push(b),
            }
        }
        out
    }

    fn end_line(&mut self, out: &mut Vec<SseItem>) {
        let raw = std::mem::take(&mut self.line);
        let line = String::from_utf8_lossy(&raw).into_owned();
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            out.push(SseItem::Comment(comment.to_string()));
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f.to_string(), v.strip_prefix(' ').unwrap_or(v).to_string()),
            None => (line.clone(), String::new()),
        };
        match field.as_str() {
            "event" => self.event_type = value,
            "data" => {
                self.data.push_str(&value);
                self.data.push('\n');
            }
            // An id containing NUL is ignored.
            "id" if !value.contains('\0') => {
                self.last_event_id = value.clone();
                self.block_id = Some(value);
            }
            "topics" => self.block_topics = Some(value),
            // Only ASCII digits make a valid retry.
            "retry" if !value.is_empty() && value.bytes().all(|c| c.is_ascii_digit()) => {
                if let Ok(ms) = value.parse() {
                    out.push(SseItem::Retry(ms));
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseItem>) {
        let block_id = self.block_id.take();
        let block_topics = self.block_topics.take();
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }
        let ty = std::mem::take(&mut self.event_type);
        out.push(SseItem::Event(SseEvent {
            id: block_id,
            last_event_id: self.last_event_id.clone(),
            event: if ty.is_empty() { None } else { Some(ty) },
            data,
            topics: block_topics,
        }));
    }
}

/// Parses a complete stream (pending data at the end is discarded, as at EOF).
pub fn parse_sse(bytes: &[u8]) -> Vec<SseItem> {
    SseParser::new().feed(bytes)
}

/// Line ends normalised as an SSE client sees them: CRLF and lone CR become LF.
pub fn normalize_newlines(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\r', "\n")
}

/// A `GET /events` stream.
pub struct SseClient {
    conn: HttpConn,
    /// Response status.
    pub status: u16,
    /// Response headers (lower-case names).
    pub headers: Vec<(String, String)>,
    parser: SseParser,
    pending: VecDeque<SseItem>,
    end: Option<(bool, String)>,
}

impl SseClient {
    /// Connects, sends `GET path` with `headers`, and reads the response head (bounded by
    /// [`IO_TIMEOUT`]). Returns for any status; see [`SseClient::body_text`] for error bodies.
    ///
    /// # Panics
    /// On I/O errors or timeout.
    pub async fn connect(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseClient {
        match Self::try_connect(addr, path, headers, None).await {
            Ok(c) => c,
            Err(e) => panic!("GET {path}: {e}"),
        }
    }

    /// Like [`SseClient::connect`], asserting status 200.
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseClient {
        let mut c = Self::connect(addr, path, headers).await;
        if c.status != 200 {
            let body = c.body_text().await;
            panic!("GET {path}: expected 200, got {} {body}", c.status);
        }
        c
    }

    /// Opens `/events` for these topics (200 asserted).
    pub async fn subscribe(addr: SocketAddr, topics: &[&str]) -> SseClient {
        Self::open(addr, &events_path(topics, ""), &[]).await
    }

    /// Like [`SseClient::connect`] but returning errors; `recv_buffer` sets SO_RCVBUF.
    pub async fn try_connect(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        recv_buffer: Option<u32>,
    ) -> Result<SseClient, String> {
        let fut = async {
            let mut conn = match recv_buffer {
                Some(size) => HttpConn::connect_with_recv_buffer(addr, size).await,
                None => HttpConn::connect(addr).await,
            }
            .map_err(|e| format!("connect: {e}"))?;
            let mut all: Vec<(&str, &str)> = vec![("Accept", "text/event-stream")];
            all.extend_from_slice(headers);
            conn.send_request("GET", path, &all, b"").await.map_err(|e| format!("write: {e}"))?;
            let (status, headers) = conn.read_head("GET").await.map_err(|e| format!("head: {e}"))?;
            Ok(SseClient { conn, status, headers, parser: SseParser::new(), pending: VecDeque::new(), end: None })
        };
        match tokio::time::timeout(IO_TIMEOUT, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {IO_TIMEOUT:?}")),
        }
    }

    /// A response header.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Reads the whole body as text (for error responses), bounded by [`IO_TIMEOUT`].
    pub async fn body_text(&mut self) -> String {
        match tokio::time::timeout(IO_TIMEOUT, self.conn.read_body_to_end()).await {
            Ok(Ok(b)) => String::from_utf8_lossy(&b).into_owned(),
            Ok(Err(e)) => format!("<body error {e:?}>"),
            Err(_) => "<body timed out>".to_string(),
        }
    }

    /// The whole body as an [`HttpResponse`] (for error responses).
    pub async fn into_response(mut self) -> HttpResponse {
        let body = match tokio::time::timeout(IO_TIMEOUT, self.conn.read_body_to_end()).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => panic!("error body: {e:?}"),
            Err(_) => panic!("error body timed out"),
        };
        HttpResponse { status: self.status, headers: self.headers, body }
    }

    /// The whole body as an [`HttpResponse`], or `None` if the body cannot be read in full.
    pub async fn into_response_lenient(mut self) -> Option<HttpResponse> {
        match tokio::time::timeout(IO_TIMEOUT, self.conn.read_body_to_end()).await {
            Ok(Ok(body)) => Some(HttpResponse { status: self.status, headers: self.headers, body }),
            _ => None,
        }
    }

    async fn next_inner(&mut self) -> SseItem {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return item;
            }
            if let Some((clean, reason)) = &self.end {
                return SseItem::End { clean: *clean, reason: reason.clone() };
            }
            match self.conn.next_body_data().await {
                Ok(Some(data)) => {
                    let items = self.parser.feed(&data);
                    self.pending.extend(items);
                }
                Ok(None) => self.end = Some((true, "body ended".to_string())),
                Err(BodyError::Abrupt(reason)) => self.end = Some((false, reason)),
            }
        }
    }

    /// The next item, or `None` after `timeout`. After the end, keeps returning `End`.
    pub async fn next_item(&mut self, timeout: Duration) -> Option<SseItem> {
        tokio::time::timeout(timeout, self.next_inner()).await.ok()
    }

    /// The next event (skipping comments and retry fields), `Err(item)` at the end of the
    /// stream, `Ok(None)` on timeout.
    pub async fn try_next_event(&mut self, timeout: Duration) -> Result<Option<SseEvent>, SseItem> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_item(left).await {
                None => return Ok(None),
                Some(SseItem::Event(e)) => return Ok(Some(e)),
                Some(end @ SseItem::End { .. }) => return Err(end),
                Some(_) => {}
            }
        }
    }

    /// The next event.
    ///
    /// # Panics
    /// On timeout or end of stream.
    pub async fn next_event(&mut self, timeout: Duration) -> SseEvent {
        match self.try_next_event(timeout).await {
            Ok(Some(e)) => e,
            Ok(None) => panic!("no event within {timeout:?}"),
            Err(end) => panic!("stream ended while waiting for an event: {end:?}"),
        }
    }

    /// `n` events, each within `timeout`.
    pub async fn next_events(&mut self, n: usize, timeout: Duration) -> Vec<SseEvent> {
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            match self.try_next_event(timeout).await {
                Ok(Some(e)) => v.push(e),
                Ok(None) => panic!("event {} of {n}: none within {timeout:?}; got {v:?}", i + 1),
                Err(end) => panic!("event {} of {n}: stream ended {end:?}; got {v:?}", i + 1),
            }
        }
        v
    }

    /// Reads items until the stream ends or `timeout` passes; returns the items (the `End`
    /// included when reached).
    pub async fn read_until_end(&mut self, timeout: Duration) -> Vec<SseItem> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut items = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_item(left).await {
                None => return items,
                Some(end @ SseItem::End { .. }) => {
                    items.push(end);
                    return items;
                }
                Some(item) => items.push(item),
            }
        }
    }

    /// Asserts that nothing but comments and retry fields arrives during `wait` (and the stream does not end).
    pub async fn assert_no_event(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match self.next_item(left).await {
                None => return,
                Some(SseItem::Comment(_) | SseItem::Retry(_)) => {}
                Some(other) => panic!("expected no event, got {other:?}"),
            }
        }
    }

    /// Drops the connection with a RST.
    pub fn abort(self) {
        self.conn.abort();
    }
}

/// Reads raw body bytes from `conn` until they contain `needle` (bounded by [`IO_TIMEOUT`]); returns
/// everything read, as text.
///
/// # Panics
/// When the stream ends or `needle` does not arrive in time.
pub async fn read_raw_until(conn: &mut HttpConn, needle: &str) -> String {
    let mut raw = Vec::new();
    let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
    while !String::from_utf8_lossy(&raw).contains(needle) {
        match tokio::time::timeout_at(deadline, conn.next_body_data()).await {
            Ok(Ok(Some(data))) => raw.extend(data),
            other => panic!("waiting for {needle:?}: {other:?}; raw so far {:?}", String::from_utf8_lossy(&raw)),
        }
    }
    String::from_utf8_lossy(&raw).into_owned()
}

/// Opens `GET path` on a raw connection (200 asserted) and reads the stream's opening, up to and
/// including its first blank line: `(connection, opening text)`.
pub async fn open_raw_stream(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (HttpConn, String) {
    let mut conn = HttpConn::connect(addr).await.expect("connect");
    conn.send_request("GET", path, headers, b"").await.expect("write");
    let (status, _) =
        tokio::time::timeout(IO_TIMEOUT, conn.read_head("GET")).await.expect("head in time").expect("head");
    assert_eq!(status, 200, "GET {path}");
    let opening = read_raw_until(&mut conn, "\n\n").await;
    (conn, opening)
}

/// The position of a tagged stream's `: live <id>` comment in its opening, if any.
pub fn live_position(opening: &str) -> Option<String> {
    opening.lines().find_map(|line| line.strip_prefix(": live ")).map(str::to_string)
}

/// Asserts the SSE response head of a successful `/events` request.
pub fn assert_sse_head(c: &SseClient) {
    assert_eq!(c.status, 200);
    let ct = c.header("content-type").unwrap_or("");
    assert_eq!(media_type(ct), "text/event-stream", "Content-Type {ct:?}");
    assert_eq!(c.header("cache-control"), Some("no-cache"), "Cache-Control");
    assert_eq!(c.header("x-accel-buffering"), Some("no"), "X-Accel-Buffering");
}

/// The decoded `herald.reset` payload: (sorted topics, reason).
///
/// # Panics
/// When `e` is not a well-formed reset event.
pub fn reset_payload(e: &SseEvent) -> (Vec<String>, String) {
    assert_eq!(e.event.as_deref(), Some("herald.reset"), "not a reset: {e:?}");
    assert_eq!(e.id, None, "herald.reset must not carry an id: line: {e:?}");
    let v: serde_json::Value =
        serde_json::from_str(&e.data).unwrap_or_else(|err| panic!("reset data is not JSON ({err}): {:?}", e.data));
    let mut topics: Vec<String> = v
        .get("topics")
        .and_then(|t| t.as_array())
        .unwrap_or_else(|| panic!("reset data without topics array: {v}"))
        .iter()
        .map(|t| t.as_str().unwrap_or_else(|| panic!("non-string topic in {v}")).to_string())
        .collect();
    topics.sort();
    let reason = v
        .get("reason")
        .and_then(|r| r.as_str())
        .unwrap_or_else(|| panic!("reset data without string reason: {v}"))
        .to_string();
    (topics, reason)
}

// ---------------------------------------------------------------------------------------------
// A subscriber that resumes, as the browser client does
// ---------------------------------------------------------------------------------------------

/// What a [`Resuming`] subscriber has received so far.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Every event with an id, in the order received, across reconnections.
    pub events: Vec<SseEvent>,
    /// When each of `events` was received.
    pub received_at: Vec<Instant>,
    /// Each `herald.reset`: how many events had been received before it, its topics and its reason.
    pub resets: Vec<(usize, Vec<String>, String)>,
    /// Streams opened (the first one included) and refusals (non-200 answers, connection errors).
    pub streams: usize,
    /// Answers other than 200, and connection failures.
    pub refusals: usize,
}

impl Seen {
    /// The ids received, in order.
    pub fn ids(&self) -> Vec<String> {
        self.events.iter().map(|e| e.id().to_string()).collect()
    }
}

/// A subscriber on one node that, like `herald.js`, reopens its stream whenever it ends or is refused
/// (after 100 ms), resuming with the last id it received; it records everything in a [`Seen`]. Runs until
/// dropped.
pub struct Resuming {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Resuming {
    /// Starts it and waits until its first stream is open (200 asserted).
    pub async fn start(addr: SocketAddr, topics: &[&str]) -> Resuming {
        let path = events_path(topics, "");
        let first = SseClient::open(addr, &path, &[]).await;
        let seen = Arc::new(Mutex::new(Seen { streams: 1, ..Seen::default() }));
        let task = tokio::spawn(Self::run(addr, path, first, seen.clone()));
        Resuming { seen, task }
    }

    async fn run(addr: SocketAddr, path: String, first: SseClient, seen: Arc<Mutex<Seen>>) {
        let mut client = Some(first);
        let mut last: Option<String> = None;
        loop {
            if let Some(mut c) = client.take() {
                while let Ok(Some(e)) = c.try_next_event(Duration::from_secs(3600)).await {
                    let mut seen = seen.lock().expect("seen lock");
                    if e.event.as_deref() == Some("herald.reset") {
                        let (topics, reason) = reset_payload(&e);
                        let at = seen.events.len();
                        seen.resets.push((at, topics, reason));
                    } else {
                        last = Some(e.id().to_string());
                        seen.events.push(e);
                        seen.received_at.push(Instant::now());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let headers: Vec<(&str, &str)> = last.iter().map(|l| ("Last-Event-ID", l.as_str())).collect();
            match SseClient::try_connect(addr, &path, &headers, None).await {
                Ok(c) if c.status == 200 => {
                    seen.lock().expect("seen lock").streams += 1;
                    client = Some(c);
                }
                Ok(_) | Err(_) => seen.lock().expect("seen lock").refusals += 1,
            }
        }
    }

    /// What it has received so far.
    pub fn seen(&self) -> Seen {
        self.seen.lock().expect("seen lock").clone()
    }

    /// Waits until it has received the event with id `id`; returns what it has seen then.
    ///
    /// # Panics
    /// When `id` does not arrive within `timeout`.
    pub async fn wait_for(&self, id: &str, timeout: Duration) -> Seen {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.seen();
            if seen.events.iter().any(|e| e.id.as_deref() == Some(id)) {
                return seen;
            }
            if Instant::now() >= deadline {
                let ids = seen.ids();
                panic!(
                    "{id} not received within {timeout:?}; {} events, the last {:?}; resets {:?}; {} streams, {} \
                     refusals",
                    ids.len(),
                    &ids[ids.len().saturating_sub(5)..],
                    seen.resets,
                    seen.streams,
                    seen.refusals
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Resuming {
    fn drop(&mut self) {
        self.task.abort();
    }
}
