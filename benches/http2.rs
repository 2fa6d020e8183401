//! # HTTP/2 and proxy figures
//!
//! A small load generator beside `benches/load.rs` for what HTTP/2 changes: it opens `--streams` event
//! streams to a running Herald, either each on an HTTP/1.1 connection of its own (`--proto h1`) or
//! `--per-conn` of them on each HTTP/2 cleartext connection (`--proto h2`), directly or through a proxy
//! (`--via URL`: the subscriptions go there, metrics and publishes to `--url`), and reports:
//! - the server's memory per idle stream (`VmRSS` growth / streams, with `--server-pid`);
//! - how many HTTP/2 and TCP connections reach Herald (`herald_http2_connections_open`, and established
//!   connections to its port in `/proc/net/tcp`): behind a proxy, the upstream connection count;
//! - with `--rate`: events published at that rate for `--duration` seconds to the one topic every stream
//!   reads, events delivered and missing, and the server's CPU (utime + stime) per delivery.
//!
//! `benches/http2.sh` runs the README's figures (a fresh server per run, pinned to core 0). By hand:
//!
//! ```text
//! cargo build --release && cargo bench --bench http2 --no-run
//! ./target/release/herald --listen 127.0.0.1:18100 &
//! cargo bench --bench http2 -- --url http://127.0.0.1:18100 --server-pid $! --proto h2 --streams 10000
//! ```
//!
//! Loopback only (the URLs are checked), every loop bounded; with no arguments (as `cargo bench` and
//! `cargo test --benches` run it) it does nothing. The last line of output is `RESULT {json}`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound for opening all the streams.
const OPEN_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound for the last deliveries after publishing stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Subscriptions being opened at once.
const CONNECT_CONCURRENCY: usize = 200;

#[derive(Debug, Clone)]
struct Args {
    url: SocketAddr,
    via: SocketAddr,
    server_pid: Option<u32>,
    h2: bool,
    streams: usize,
    per_conn: usize,
    idle: Duration,
    rate: f64,
    duration: Duration,
}

fn parse_url(url: &str) -> Result<SocketAddr, String> {
    let host = url.strip_prefix("http://").ok_or_else(|| format!("{url}: only http:// URLs"))?;
    let addr: SocketAddr = host.trim_end_matches('/').parse().map_err(|_| format!("{url}: give http://IP:PORT"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("{url}: loopback addresses only"));
    }
    Ok(addr)
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: parse_url("http://127.0.0.1:8080")?,
        via: parse_url("http://127.0.0.1:8080")?,
        server_pid: None,
        h2: true,
        streams: 1000,
        per_conn: 1000,
        idle: Duration::from_secs(3),
        rate: 0.0,
        duration: Duration::from_secs(10),
    };
    let mut via = None;
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| v.parse::<f64>().map_err(|_| format!("{v:?} is not a number"));
        match flag.as_str() {
            "--url" => args.url = parse_url(&value()?)?,
            "--via" => via = Some(parse_url(&value()?)?),
            "--server-pid" => args.server_pid = Some(value()?.parse().map_err(|_| "bad --server-pid")?),
            "--proto" => args.h2 = value()? == "h2",
            "--streams" => args.streams = number(value()?)? as usize,
            "--per-conn" => args.per_conn = (number(value()?)? as usize).max(1),
            "--idle" => args.idle = Duration::from_secs_f64(number(value()?)?),
            "--rate" => args.rate = number(value()?)?,
            "--duration" => args.duration = Duration::from_secs_f64(number(value()?)?),
            other => return Err(format!("unknown flag {other}; see the header of benches/http2.rs")),
        }
    }
    args.via = via.unwrap_or(args.url);
    Ok(args)
}

/// Lines starting with `id:` seen across all streams: one per event delivered.
static DELIVERED: AtomicU64 = AtomicU64::new(0);

/// Counts `id:` lines in a byte stream cut anywhere.
#[derive(Default)]
struct IdCounter {
    /// Bytes of the current line seen so far (at most 3 are needed).
    line: usize,
    start: [u8; 3],
}

impl IdCounter {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.line = 0;
                continue;
            }
            if self.line < 3 {
                self.start[self.line] = b;
                if self.line == 2 && &self.start == b"id:" {
                    DELIVERED.fetch_add(1, Relaxed);
                }
            }
            self.line += 1;
        }
    }
}

/// A stream being opened: holds one of the [`CONNECT_CONCURRENCY`] slots until its head arrives.
struct Opening {
    ready: tokio::sync::mpsc::Sender<()>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Opening {
    async fn opened(self) {
        let _ = self.ready.send(()).await;
    }
}

/// One HTTP/1.1 stream on a connection of its own, read until it ends.
async fn h1_stream(to: SocketAddr, ready: Opening) -> Result<(), String> {
    let mut tcp = TcpStream::connect(to).await.map_err(|e| format!("connect: {e}"))?;
    tcp.write_all(b"GET /events?topics=bench HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 2048];
    let mut counter = IdCounter::default();
    let mut head = Vec::new();
    loop {
        let n = tcp.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the head".into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            if !head.starts_with(b"HTTP/1.1 200") {
                return Err(String::from_utf8_lossy(&head[..end]).into_owned());
            }
            counter.feed(&head[end + 4..]);
            break;
        }
    }
    drop(head);
    ready.opened().await;
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => counter.feed(&buf[..n]),
        }
    }
}

/// One HTTP/2 stream on `sender`'s connection, read until it ends.
async fn h2_stream(mut sender: http2::SendRequest<Empty<Bytes>>, ready: Opening) -> Result<(), String> {
    let request =
        http::Request::get("http://127.0.0.1/events?topics=bench").body(Empty::new()).map_err(|e| e.to_string())?;
    sender.ready().await.map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!("status {}", response.status()));
    }
    ready.opened().await;
    let mut body = response.into_body();
    let mut counter = IdCounter::default();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            counter.feed(&data);
        }
    }
    Ok(())
}

/// Opens every stream; returns once all have their response head.
async fn open_streams(args: &Args) -> Result<(), String> {
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(args.streams.max(1));
    let gate = Arc::new(tokio::sync::Semaphore::new(CONNECT_CONCURRENCY));
    let mut senders = Vec::new();
    if args.h2 {
        for _ in 0..args.streams.div_ceil(args.per_conn) {
            let tcp = TcpStream::connect(args.via).await.map_err(|e| format!("connect: {e}"))?;
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
            tokio::spawn(connection);
            senders.push(sender);
        }
    }
    for i in 0..args.streams {
        let permit = gate.clone().acquire_owned().await.map_err(|e| e.to_string())?;
        let opening = Opening { ready: ready_tx.clone(), _permit: permit };
        let report = |result: Result<(), String>| {
            if let Err(e) = result {
                eprintln!("a stream failed: {e}");
            }
        };
        if args.h2 {
            let stream = h2_stream(senders[i / args.per_conn].clone(), opening);
            tokio::spawn(async move { report(stream.await) });
        } else {
            let stream = h1_stream(args.via, opening);
            tokio::spawn(async move { report(stream.await) });
        }
    }
    let deadline = tokio::time::Instant::now() + OPEN_TIMEOUT;
    for opened in 0..args.streams {
        if tokio::time::timeout_at(deadline, ready_rx.recv()).await.ok().flatten().is_none() {
            return Err(format!("only {opened} of {} streams opened within {OPEN_TIMEOUT:?}", args.streams));
        }
    }
    Ok(())
}

/// A keep-alive HTTP/1.1 client for `/metrics` and `/publish`.
struct Client(http1::SendRequest<Full<Bytes>>);

impl Client {
    async fn connect(to: SocketAddr) -> Result<Client, String> {
        let tcp = TcpStream::connect(to).await.map_err(|e| format!("connect: {e}"))?;
        let (sender, connection) = http1::handshake(TokioIo::new(tcp)).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        Ok(Client(sender))
    }

    async fn call(&mut self, method: &str, path: &str, body: &'static str) -> Result<String, String> {
        let mut request = http::Request::builder().method(method).uri(path).header("host", "127.0.0.1");
        if !body.is_empty() {
            request = request.header("content-type", "application/x-www-form-urlencoded");
        }
        let request = request.body(Full::new(Bytes::from_static(body.as_bytes()))).map_err(|e| e.to_string())?;
        self.0.ready().await.map_err(|e| e.to_string())?;
        let response = self.0.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        if status != 200 {
            return Err(format!("{method} {path}: {status} {text}"));
        }
        Ok(text)
    }

    async fn metric(&mut self, name: &str) -> Result<f64, String> {
        let text = self.call("GET", "/metrics", "").await?;
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
            .ok_or_else(|| format!("no {name} in /metrics"))
    }
}

/// VmRSS in bytes and utime + stime in seconds of `pid`.
fn sample(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let tck = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    Some((rss_kb * 1024, ticks / tck))
}

/// Established TCP connections whose local end is `port` (the server's side of its accepted connections).
fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&local) && f[3] == "01"
        })
        .count()
}

async fn run(args: Args) -> Result<serde_json::Value, String> {
    let mut client = Client::connect(args.url).await?;
    client.call("GET", "/healthz", "").await?;
    let before = args.server_pid.and_then(sample);
    let started = Instant::now();
    open_streams(&args).await?;
    let open_secs = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + OPEN_TIMEOUT;
    while client.metric("herald_connections_open").await? < args.streams as f64 {
        if Instant::now() > deadline {
            return Err("the server never counted every stream".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(args.idle).await;
    let idle = args.server_pid.and_then(sample);
    let h2_connections = client.metric("herald_http2_connections_open").await?;
    // Less the one this generator uses for metrics and publishes.
    let tcp_connections = established_to(args.url.port()).saturating_sub(1);
    let rss_per_stream = match (before, idle) {
        (Some((a, _)), Some((b, _))) => Some(b.saturating_sub(a) as f64 / args.streams as f64 / 1024.0),
        _ => None,
    };
    eprintln!(
        "{} streams ({}) open in {open_secs:.1} s over {tcp_connections} TCP connections to Herald, \
         {h2_connections} of them HTTP/2; server RSS per stream: {}",
        args.streams,
        if args.h2 { "h2c" } else { "HTTP/1.1" },
        rss_per_stream.map_or("-".into(), |k| format!("{k:.2} KiB")),
    );
    let mut result = serde_json::json!({
        "proto": if args.h2 { "h2" } else { "h1" },
        "streams": args.streams,
        "via_proxy": args.via != args.url,
        "tcp_connections_to_herald": tcp_connections,
        "http2_connections": h2_connections,
        "rss_per_stream_kib": rss_per_stream,
    });
    if args.rate <= 0.0 {
        return Ok(result);
    }
    let events = (args.rate * args.duration.as_secs_f64()).round() as u64;
    let delivered_before = DELIVERED.load(Relaxed);
    let cpu_before = args.server_pid.and_then(sample);
    let start = tokio::time::Instant::now();
    for k in 0..events {
        tokio::time::sleep_until(start + Duration::from_secs_f64(k as f64 / args.rate)).await;
        client.call("POST", "/publish", "topic=bench&data=0123456789012345678901234567890123456789").await?;
    }
    let expected = events * args.streams as u64;
    let drain = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while DELIVERED.load(Relaxed) - delivered_before < expected && tokio::time::Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu_after = args.server_pid.and_then(sample);
    let delivered = DELIVERED.load(Relaxed) - delivered_before;
    let cpu_us = match (cpu_before, cpu_after) {
        (Some((_, a)), Some((_, b))) if delivered > 0 => Some((b - a) * 1e6 / delivered as f64),
        _ => None,
    };
    eprintln!(
        "published {events} events at {}/s: delivered {delivered} of {expected}, server CPU per delivery {}",
        args.rate,
        cpu_us.map_or("-".into(), |c| format!("{c:.2} µs"))
    );
    result["events"] = events.into();
    result["delivered"] = delivered.into();
    result["missing"] = expected.saturating_sub(delivered).into();
    result["cpu_us_per_delivery"] = cpu_us.into();
    Ok(result)
}

fn main() {
    if std::env::args().skip(1).all(|a| a == "--bench") {
        eprintln!("http2 bench: nothing to do without arguments; see the header of benches/http2.rs");
        return;
    }
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("http2 bench: {e}");
            std::process::exit(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("http2 bench: {e}");
            std::process::exit(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(result) => println!("RESULT {result}"),
        Err(e) => {
            eprintln!("http2 bench: {e}");
            std::process::exit(1);
        }
    }
}
