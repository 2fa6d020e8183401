//! # Herald load generator
//!
//! Opens many Server-Sent Events subscriptions to a running Herald (or, with `--target nchan`, an nginx
//! with Nchan: see below), publishes events at a fixed rate through `POST /publish`, and reports what
//! arrived: delivered / missing / duplicated / out-of-order events, end-to-end latency percentiles, and
//! (with `--server-pid`) the server's memory per connection and CPU per delivered event. It is a
//! `harness = false` bench target:
//!
//! ```text
//! cargo build --release
//! ./target/release/herald --listen 127.0.0.1:18080 &
//! cargo bench --bench load -- --url http://127.0.0.1:18080 --server-pid $! \
//!     --conns 1000 --topics 10 --rate 200 --duration 5
//! cargo bench --bench load -- --url http://127.0.0.1:18080 --server-pid $! \
//!     --conns 10000 --topics 1 --rate 10 --duration 10
//! # beyond one process's socket limit (the server needs `ulimit -n` above 40000 too):
//! # 4 child processes, 2 source addresses
//! cargo bench --bench load -- --url http://127.0.0.1:18080 --server-pid $! \
//!     --conns 40000 --procs 4 --sources 127.0.0.1,127.0.0.2 --topics 1 --rate 10 --duration 10
//! # two nodes sharing a Redis: connections and publishers alternate between them
//! cargo bench --bench load -- --url http://127.0.0.1:18090,http://127.0.0.1:18091 \
//!     --server-pid $PID1,$PID2 --conns 10000 --topics 1 --rate 10 --duration 10
//! ```
//! With no arguments (as `cargo test --benches` and a plain `cargo bench` run it) it does nothing, so
//! that it never loads a server by accident; give at least one option (`--url` defaults to
//! `http://127.0.0.1:8080`). A probe of `GET /healthz` fails the run early when nothing answers.
//!
//! ## What it does
//! 1. Checks that every `--url` target and every `--sources` address are loopback (127.0.0.0/8 or ::1)
//!    and refuses anything else; probes `GET /healthz` at each URL.
//! 2. Opens `--conns` subscriptions, at most `--connect-concurrency` in flight. Connection `i` goes to
//!    URL `i % n` of the `--url` list (n URLs; with `--procs` each child opens its share `i` of the same
//!    global numbering, so the spread is the same), binds its socket to source `i % S` (one source
//!    address has only ~28k ephemeral ports) and subscribes to
//!    `--topics-per-conn` K topics `load/{(i*K + j) % T}`, `j < K` (K = 1: `load/{i % T}`). Each client is
//!    a raw `TcpStream` with one small buffer: it parses the response head, decodes chunked (or
//!    close-delimited) bodies and the SSE fields in place.
//! 3. Waits `--idle` seconds and samples the server's `VmRSS` (`/proc/PID/status`); RSS per connection is
//!    `(rss_connected - rss_before) / open connections`.
//! 4. Publishes `--warmup` seconds of events that are not counted, then `--duration` seconds at `--rate`
//!    events/s over `--publishers` keep-alive HTTP/1.1 connections, publisher `j` to URL `j % n` (each
//!    takes the next due event whichever URL it uses; give at least n publishers). Event `seq` goes to topic
//!    `load/{seq % T}`; its data is `"<seq> <send_unix_nanos> "` padded with `x` to `--payload` bytes
//!    (warm-up events have a `w` before the seq). The schedule is computed (event k is due at
//!    `start + k/rate`); a late publisher sends at once to catch up, and publishing stops at
//!    `1.2 × duration + 1 s` at the latest (unsent events are reported as `skipped`).
//! 5. Waits `--drain` seconds for stragglers (less when everything has arrived and the connections are
//!    in this process), samples the server again, and closes the subscriptions, by default with a
//!    reset (SO_LINGER 0) so that back-to-back runs do not find their ports in TIME_WAIT
//!    (`--graceful-close` sends FIN instead). Then it reports.
//!
//! For memory figures, start a fresh server for each run: an allocator rarely gives memory back, so
//! a second run's "before" already includes the first run's connections.
//!
//! ## Figures
//! * expected deliveries = Σ over successfully published events of the open subscribers of its topic
//!   (counted when the connections were up, before publishing began);
//! * delivered = unique events received per connection; missing = expected − delivered;
//!   duplicates = an event (same seq, hence same id) received twice by one connection;
//!   out-of-order = an `id:` lower than an earlier one on the same connection, compared naturally
//!   (digit runs as numbers, so `1700000000000-12` > `1700000000000-9`), warm-up events included;
//!   resets = `herald.reset` events (there should be none: no client sends a last event id);
//! * latency = receive time − send time in the data (both wall clock, so valid across processes),
//!   kept in a fixed histogram of 10 µs buckets up to 10 s (percentiles are bucket upper bounds);
//! * server CPU = utime + stime (`/proc/PID/stat`, `getconf CLK_TCK`, 100 if that fails) from the start
//!   of the measured publishing to the end of the drain, and per delivered event.
//!
//! ## Several nodes
//! `--url` takes a comma-separated list of base URLs (nodes sharing a backend, e.g. Herald with
//! `--redis-url`), `--server-pid` a comma-separated list of PIDs. The accounting does not change:
//! expected deliveries come from the generator's own seq numbers and subscriber counts, whichever node
//! an event was published through or delivered by (so nodes that do not share a backend show up as
//! missing events). With several PIDs, RSS and CPU are summed: RSS per connection = total growth /
//! total open connections, CPU per delivery = total CPU / total deliveries (`server_*` in RESULT).
//! Each server's own figures are printed and kept in `servers`; with as many PIDs as URLs, PID k is
//! taken as the server of URL k, and its per-connection and per-delivery figures count only the
//! connections to that URL. `per_url` holds each URL's open connections, publishers and deliveries.
//!
//! The last line of output is `RESULT {json}` with every figure.
//!
//! ## Many connections
//! Each process needs one file descriptor per connection: check `ulimit -n` (the soft limit is not raised
//! here). With `--procs N` the parent starts N copies of this binary (hidden flag `--child-index`), each
//! opening its share of the connections; only the parent publishes. Children talk to the parent over
//! stdin/stdout: `READY {json}` once connected, then `MARK` / `STOP` from the parent, then `RESULT {json}`.
//! Add source addresses (`--sources 127.0.0.1,127.0.0.2,…`) when connections exceed ~28k per address.
//!
//! ## Caveats
//! * The generator shares the machine with the server: it spends roughly 7 µs of CPU per received
//!   event here, and its own CPU during publishing is reported. On a 2-core machine pin them apart for
//!   cleaner CPU figures: `taskset -c 0 herald …` and `taskset -c 1 cargo bench --bench load -- --threads 1 …`.
//! * An accept backlog smaller than `--connect-concurrency` (tokio's `TcpListener::bind` uses 128)
//!   overflows during the connect burst; the dropped SYNs are retried by the kernel after 1 s, which
//!   shows up as a ~1000 ms connect-time tail.
//! * CPU times come in clock ticks (10 ms): short runs give coarse CPU figures.
//!
//! ## Nchan
//! `--target nchan` loads nginx's Nchan module instead, for side-by-side figures (benches/compare.sh,
//! config in benches/nchan/nginx.conf): connection `i` subscribes with `GET /sub/load/N` (several
//! topics: `GET /sub/load/N,load/M`, which needs `nchan_channel_id_split_delimiter ","`) and
//! `Accept: text/event-stream`; events are published with `POST /pub/load/N`, the data as a
//! `text/plain` body (any 2xx counts as published: Nchan answers 201, or 202 when nobody listens).
//! Nchan's stream is close-delimited, starts with a `: hi` comment and sends `id:` + `data:` lines. Its
//! one-channel ids (`1795843508:0`, seconds and index) order naturally like Herald's; multiplexed ids
//! (`1795843508:[0],-`) do not order across channels, so for those out-of-order is checked on the seq
//! in the data instead (warm-up events first), which also counts publisher races between the
//! connection's topics. The health probe asks `GET /healthz` (the config answers it). Sample the nginx
//! *worker* with `--server-pid`, not the master.
//!
//! `cargo bench --bench load -- --self-test` checks the HTTP/SSE parsers without a server.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout};

/// Width of one latency histogram bucket.
const BUCKET_NS: u64 = 10_000;
/// Buckets up to 10 s; one more bucket holds everything slower.
const HIST_BUCKETS: usize = 1_000_000;
/// A response head larger than this is refused.
const MAX_HEAD: usize = 16 * 1024;
/// One SSE line (or unparsed chunk framing) larger than this ends the connection.
const MAX_LINE: usize = 4 << 20;
/// Bytes of an event's first `data:` line that are kept (seq and timestamp are at its start).
const DATA_PREFIX: usize = 64;
/// Ids longer than this are truncated for ordering checks (API.md: ids are at most 64 bytes).
const ID_MAX: usize = 128;
/// Bound on the per-connection "seen" bitmap window (64 events per word): 512 KiB per connection.
const SEEN_MAX_WORDS: usize = 1 << 16;
/// Distinct error messages kept; later new ones are counted under "other".
const ERROR_KINDS_MAX: usize = 64;
/// Hard cap on the time a child process lives if its parent never says STOP.
const CHILD_MAX_SECS_DEFAULT: f64 = 3600.0;

/// Which server protocol to speak.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum TargetKind {
    /// Herald: `GET /events?topics=…`, `POST /publish` (JSON).
    Herald,
    /// Nchan (nginx): `GET /sub/{topic}` (EventSource), `POST /pub/{topic}` (raw body).
    Nchan,
}

impl TargetKind {
    fn name(self) -> &'static str {
        match self {
            TargetKind::Herald => "herald",
            TargetKind::Nchan => "nchan",
        }
    }
}

/// Herald load generator: SSE subscribers + paced publishers (loopback only).
#[derive(Parser, Debug, Clone)]
#[command(name = "load", version)]
struct Args {
    /// Base URL of the server, or a comma-separated list of base URLs (several nodes): connection i goes
    /// to URL i % n and publisher j to URL j % n. Only loopback addresses are accepted.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Server protocol: herald, or nchan (nginx's pub/sub module, for comparisons).
    #[arg(long, value_enum, default_value_t = TargetKind::Herald)]
    target: TargetKind,
    /// Number of SSE connections.
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Number of topics, named load/0 .. load/T-1.
    #[arg(long, default_value_t = 10)]
    topics: usize,
    /// Topics per connection: connection i subscribes to load/((i*K + j) % T) for j < K.
    #[arg(long, default_value_t = 1)]
    topics_per_conn: usize,
    /// Comma-separated loopback addresses to bind client sockets to, round-robin.
    #[arg(long, default_value = "127.0.0.1")]
    sources: String,
    /// Events per second, in total, published round-robin over the topics.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds of measured publishing (after all connections are open).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of publishing before the measured phase; those events are not counted.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Concurrent keep-alive HTTP connections used for POST /publish.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Size in bytes of each event's data (at least the seq and timestamp are sent).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// PID of the server, to sample its RSS and CPU time from /proc; a comma-separated list for several
    /// servers (figures are summed; with as many PIDs as URLs, PID k is taken as the server of URL k).
    #[arg(long)]
    server_pid: Option<String>,
    /// Seconds to wait after publishing for events still in flight.
    #[arg(long, default_value_t = 3.0)]
    drain: f64,
    /// Seconds to wait, connected and idle, before sampling the server's RSS.
    #[arg(long, default_value_t = 2.0)]
    idle: f64,
    /// Connection attempts in flight at once (in total: split among the --procs children).
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Seconds allowed for one connection to get its response head.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Seconds allowed for one publish request.
    #[arg(long, default_value_t = 5.0)]
    publish_timeout: f64,
    /// Initial read buffer per connection, in bytes (it grows for large events and shrinks back).
    #[arg(long, default_value_t = 2048)]
    read_buf: usize,
    /// Close subscriptions with FIN at the end. By default they are reset (SO_LINGER 0), so that
    /// runs in a row do not leave their ephemeral ports in TIME_WAIT for a minute.
    #[arg(long)]
    graceful_close: bool,
    /// Runtime threads per process: 1 runs everything on one thread (cheapest per event),
    /// 0 uses one per core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Child processes that hold the connections (1: everything in this process).
    #[arg(long, default_value_t = 1)]
    procs: usize,
    /// Check the HTTP/SSE parsers and exit (no server needed).
    #[arg(long)]
    self_test: bool,
    /// Internal: run as child number k of --procs.
    #[arg(long, hide = true)]
    child_index: Option<usize>,
    /// Internal: a child exits after this many seconds whatever happens.
    #[arg(long, hide = true)]
    child_max_secs: Option<f64>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

// ---------------------------------------------------------------------------------------------------
// Small helpers

fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u64::from(b - b'0');
    }
    Some(v)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Natural order of ids: digit runs compare as numbers, everything else bytewise.
fn id_cmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    use std::cmp::Ordering::Equal;
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].is_ascii_digit() && b[j].is_ascii_digit() {
            let (si, sj) = (i, j);
            while i < a.len() && a[i].is_ascii_digit() {
                i += 1;
            }
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            let na = trim_zeros(&a[si..i]);
            let nb = trim_zeros(&b[sj..j]);
            let o = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
            if o != Equal {
                return o;
            }
        } else {
            if a[i] != b[j] {
                return a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
    }
    (a.len() - i).cmp(&(b.len() - j))
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let n = d.iter().take_while(|&&c| c == b'0').count();
    &d[n..]
}

fn secs(d: f64) -> Duration {
    Duration::from_secs_f64(d.max(0.0))
}

/// Error messages, counted by kind, bounded in number.
#[derive(Default)]
struct ErrCounts(Mutex<BTreeMap<String, u64>>);

impl ErrCounts {
    fn add(&self, msg: &str) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = m.get_mut(msg) {
            *c += 1;
        } else if m.len() < ERROR_KINDS_MAX {
            m.insert(msg.to_string(), 1);
        } else {
            *m.entry("other".to_string()).or_insert(0) += 1;
        }
    }
    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn merge_errors(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_insert(0) += v;
    }
}

// ---------------------------------------------------------------------------------------------------
// Latency histogram

/// Fixed-bucket histogram shared by many tasks (8 MB, whatever the number of samples).
struct Hist {
    buckets: Box<[AtomicU64]>,
    max_ns: AtomicU64,
}

impl Hist {
    fn new() -> Self {
        Self { buckets: (0..=HIST_BUCKETS).map(|_| AtomicU64::new(0)).collect(), max_ns: AtomicU64::new(0) }
    }
    fn record(&self, ns: u64) {
        let b = ((ns / BUCKET_NS) as usize).min(HIST_BUCKETS);
        self.buckets[b].fetch_add(1, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
    }
    fn sparse(&self) -> Vec<(u32, u64)> {
        self.buckets
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let c = c.load(Ordering::Relaxed);
                (c > 0).then_some((i as u32, c))
            })
            .collect()
    }
}

/// Dense histogram used for merging and percentiles.
struct DenseHist {
    counts: Vec<u64>,
    max_ns: u64,
}

impl DenseHist {
    fn new() -> Self {
        Self { counts: vec![0; HIST_BUCKETS + 1], max_ns: 0 }
    }
    fn add_sparse(&mut self, sparse: &[(u32, u64)], max_ns: u64) {
        for &(b, c) in sparse {
            if let Some(slot) = self.counts.get_mut(b as usize) {
                *slot += c;
            }
        }
        self.max_ns = self.max_ns.max(max_ns);
    }
    fn summary(&self) -> Latency {
        let count: u64 = self.counts.iter().sum();
        let max_ns = self.max_ns;
        let pct = |q: f64| -> Option<f64> {
            if count == 0 {
                return None;
            }
            let target = ((q * count as f64).ceil() as u64).clamp(1, count);
            let mut cum = 0u64;
            for (b, &c) in self.counts.iter().enumerate() {
                cum += c;
                if cum >= target {
                    let upper = if b >= HIST_BUCKETS { max_ns } else { ((b as u64 + 1) * BUCKET_NS).min(max_ns) };
                    return Some(upper as f64 / 1e6);
                }
            }
            Some(max_ns as f64 / 1e6)
        };
        Latency {
            count,
            p50_ms: pct(0.50),
            p90_ms: pct(0.90),
            p99_ms: pct(0.99),
            p999_ms: pct(0.999),
            max_ms: (count > 0).then(|| max_ns as f64 / 1e6),
        }
    }
}

#[derive(Serialize, Debug, Default, Clone)]
struct Latency {
    count: u64,
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    p99_ms: Option<f64>,
    p999_ms: Option<f64>,
    max_ms: Option<f64>,
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"))
}

// ---------------------------------------------------------------------------------------------------
// Target, sources, /proc

/// Where the server is.
struct Target {
    /// The URL as given.
    url: String,
    addr: SocketAddr,
    host: String,
    base: String,
}

fn parse_target(url: &str) -> Result<Target, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("--url must start with http:// (got {url})"))?;
    let (authority, path) = match rest.find('/') {
        Some(p) => (&rest[..p], &rest[p..]),
        None => (rest, ""),
    };
    let (host, port) = if let Some(h) = authority.strip_prefix('[') {
        let end = h.find(']').ok_or("bad IPv6 literal in --url")?;
        let port = h[end + 1..].strip_prefix(':').unwrap_or("80");
        (&h[..end], port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p),
            None => (authority, "80"),
        }
    };
    let port: u16 = port.parse().map_err(|_| format!("bad port in --url: {port}"))?;
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse().map_err(|_| format!("--url host must be a loopback IP or localhost (got {host})"))?
    };
    if !ip.is_loopback() {
        return Err(format!("refusing non-loopback target {ip}: load is only sent to 127.0.0.0/8 or ::1"));
    }
    Ok(Target {
        url: url.to_string(),
        addr: SocketAddr::new(ip, port),
        host: authority.to_string(),
        base: path.trim_end_matches('/').to_string(),
    })
}

/// `--url`: one base URL or a comma-separated list of them (one per node).
fn parse_targets(s: &str) -> Result<Vec<Target>, String> {
    let out: Vec<Target> =
        s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(parse_target).collect::<Result<_, _>>()?;
    if out.is_empty() {
        return Err("--url is empty".into());
    }
    Ok(out)
}

/// `--server-pid`: one PID or a comma-separated list of them.
fn parse_pids(s: Option<&str>) -> Result<Vec<u32>, String> {
    let Some(s) = s else { return Ok(Vec::new()) };
    let out: Vec<u32> = s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().map_err(|_| format!("bad --server-pid {p}")))
        .collect::<Result<_, _>>()?;
    if out.is_empty() {
        return Err("--server-pid is empty".into());
    }
    Ok(out)
}

fn parse_sources(s: &str, targets: &[Target]) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let ip: IpAddr = part.parse().map_err(|_| format!("bad source address {part}"))?;
        if !ip.is_loopback() {
            return Err(format!("refusing non-loopback source address {ip}"));
        }
        if let Some(t) = targets.iter().find(|t| t.addr.is_ipv4() != ip.is_ipv4()) {
            return Err(format!("source {ip} is not of the same family as the target {}", t.url));
        }
        out.push(ip);
    }
    if out.is_empty() {
        return Err("--sources is empty".into());
    }
    Ok(out)
}

/// One look at a process in /proc.
#[derive(Serialize, Deserialize, Debug, Default, Clone, Copy)]
struct ProcSample {
    rss_kib: Option<u64>,
    cpu_ticks: Option<u64>,
}

fn sample_proc(pid: &str) -> ProcSample {
    let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
    });
    let cpu_ticks = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| {
        // Fields after the command name (which may contain spaces and parentheses): state is field 3,
        // utime field 14, stime field 15.
        let after = &s[s.rfind(')')? + 1..];
        let f: Vec<&str> = after.split_whitespace().collect();
        let ut: u64 = f.get(11)?.parse().ok()?;
        let st: u64 = f.get(12)?.parse().ok()?;
        Some(ut + st)
    });
    ProcSample { rss_kib, cpu_ticks }
}

/// The sum of several processes' samples (`None` for a figure when any of them lacks it; `None` when
/// there are no samples at all).
fn sum_samples(v: &[ProcSample]) -> Option<ProcSample> {
    if v.is_empty() {
        return None;
    }
    let sum = |f: fn(&ProcSample) -> Option<u64>| v.iter().map(f).sum::<Option<u64>>();
    Some(ProcSample { rss_kib: sum(|s| s.rss_kib), cpu_ticks: sum(|s| s.cpu_ticks) })
}

fn cpu_delta(a: ProcSample, b: ProcSample, tck: f64) -> Option<f64> {
    Some(b.cpu_ticks?.checked_sub(a.cpu_ticks?)? as f64 / tck)
}

/// Clock ticks per second for /proc CPU times; `None` when `getconf` fails (then 100 is assumed).
fn clk_tck() -> Option<f64> {
    let out = std::process::Command::new("getconf").arg("CLK_TCK").output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn nofile_soft_limit() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    let l = s.lines().find(|l| l.starts_with("Max open files"))?;
    l.split_whitespace().nth(3)?.parse().ok()
}

fn ephemeral_ports() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_whitespace().map(|v| v.parse::<u64>());
    let (lo, hi) = (it.next()?.ok()?, it.next()?.ok()?);
    Some(hi.saturating_sub(lo) + 1)
}

// ---------------------------------------------------------------------------------------------------
// HTTP/1.1 response heads and chunked framing

struct Head {
    status: u16,
    chunked: bool,
    content_length: Option<usize>,
    close: bool,
}

/// Reads until the end of a response head; leaves the bytes after it in `buf`.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Head, String> {
    loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            let head = parse_head(&buf[..p])?;
            buf.drain(..p + 4);
            return Ok(head);
        }
        if buf.len() > MAX_HEAD {
            return Err("response head too large".into());
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(1024);
        }
        match s.read_buf(buf).await {
            Ok(0) => return Err("connection closed before the response head".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

fn parse_head(h: &[u8]) -> Result<Head, String> {
    let text = std::str::from_utf8(h).map_err(|_| "response head is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line: {status_line:.60}"));
    }
    let status: u16 =
        parts.next().and_then(|c| c.parse().ok()).ok_or_else(|| format!("bad status line: {status_line:.60}"))?;
    let mut head = Head { status, chunked: false, content_length: None, close: version == "HTTP/1.0" };
    for l in lines {
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.parse().ok();
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                head.close = true;
            } else if v.contains("keep-alive") {
                head.close = false;
            }
        }
    }
    Ok(head)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Chunk {
    /// No framing: the body runs until the connection closes.
    Identity,
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// The last (zero-size) chunk was seen.
    Done,
}

/// One buffer: `buf[..dec]` is decoded body not yet consumed, `buf[dec..]` raw bytes not yet decoded.
/// Chunk framing is removed in place.
struct Framing {
    buf: Vec<u8>,
    dec: usize,
    chunk: Chunk,
}

impl Framing {
    fn decode(&mut self) -> Result<(), String> {
        loop {
            match self.chunk {
                Chunk::Identity => {
                    self.dec = self.buf.len();
                    return Ok(());
                }
                Chunk::Done => return Ok(()),
                Chunk::Size => {
                    let raw = &self.buf[self.dec..];
                    let Some(nl) = raw.iter().position(|&b| b == b'\n') else {
                        if raw.len() > 1024 {
                            return Err("chunk size line too long".into());
                        }
                        return Ok(());
                    };
                    let line = &raw[..nl];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let hex = line.split(|&b| b == b';').next().unwrap_or(b"");
                    let hex = std::str::from_utf8(hex).map_err(|_| "bad chunk size".to_string())?;
                    let size =
                        u64::from_str_radix(hex.trim(), 16).map_err(|_| format!("bad chunk size {:.20}", hex))?;
                    self.buf.drain(self.dec..self.dec + nl + 1);
                    self.chunk = if size == 0 { Chunk::Done } else { Chunk::Data(size) };
                }
                Chunk::Data(rem) => {
                    let avail = (self.buf.len() - self.dec) as u64;
                    if avail == 0 {
                        return Ok(());
                    }
                    let n = rem.min(avail);
                    self.dec += n as usize;
                    self.chunk = if n == rem { Chunk::DataEnd } else { Chunk::Data(rem - n) };
                }
                Chunk::DataEnd => {
                    let raw = &self.buf[self.dec..];
                    let cut = match raw {
                        [b'\r', b'\n', ..] => 2,
                        [b'\n', ..] => 1,
                        [] | [b'\r'] => return Ok(()),
                        _ => return Err("missing CRLF after chunk data".into()),
                    };
                    self.buf.drain(self.dec..self.dec + cut);
                    self.chunk = Chunk::Size;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// SSE clients

/// Counters shared by all connections of one process.
struct Shared {
    ready: AtomicUsize,
    open: AtomicUsize,
    failed: AtomicUsize,
    closed_early: AtomicUsize,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    out_of_order: AtomicU64,
    resets: AtomicU64,
    warmup: AtomicU64,
    foreign: AtomicU64,
    unparsed: AtomicU64,
    last_delivery_ns: AtomicU64,
    subs: Vec<AtomicU64>,
    /// Open connections per URL (index into `ClientCfg::targets`).
    open_by_url: Vec<AtomicU64>,
    /// Delivered (measured, unique) events per URL of the receiving connection.
    delivered_by_url: Vec<AtomicU64>,
    /// End-to-end latency of measured events.
    hist: Hist,
    /// Time from starting a connection attempt to its response head (successful ones).
    connect_hist: Hist,
    errors: ErrCounts,
}

impl Shared {
    fn new(topics: usize, urls: usize) -> Self {
        Self {
            ready: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            closed_early: AtomicUsize::new(0),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            warmup: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            unparsed: AtomicU64::new(0),
            last_delivery_ns: AtomicU64::new(0),
            subs: (0..topics).map(|_| AtomicU64::new(0)).collect(),
            open_by_url: (0..urls).map(|_| AtomicU64::new(0)).collect(),
            delivered_by_url: (0..urls).map(|_| AtomicU64::new(0)).collect(),
            hist: Hist::new(),
            connect_hist: Hist::new(),
            errors: ErrCounts::default(),
        }
    }
}

struct ClientCfg {
    kind: TargetKind,
    /// The servers (nodes): connection i goes to `targets[i % n]`, publisher j to `targets[j % n]`.
    targets: Vec<Target>,
    sources: Vec<IpAddr>,
    topics: usize,
    per_conn: usize,
    connect_timeout: Duration,
    read_buf: usize,
    graceful_close: bool,
}

impl ClientCfg {
    fn first_topic(&self, i: usize) -> usize {
        (i * self.per_conn) % self.topics
    }
    /// Index of the URL that connection (or publisher) `i` uses: round-robin.
    fn url_of(&self, i: usize) -> usize {
        i % self.targets.len()
    }
}

/// Set of local event indexes already received: everything below `base` plus a bitmap window.
/// Events arrive nearly in order, so the window stays a word or two.
#[derive(Default)]
struct SeenSet {
    base: u64,
    words: VecDeque<u64>,
}

impl SeenSet {
    /// Returns false when `i` was already there.
    fn insert(&mut self, i: u64) -> bool {
        if i < self.base {
            return false;
        }
        let mut w = ((i - self.base) / 64) as usize;
        if w >= SEEN_MAX_WORDS {
            // Give up exactness for very old holes rather than grow without bound.
            let shift = w + 1 - SEEN_MAX_WORDS;
            if shift >= self.words.len() {
                self.words.clear();
            } else {
                self.words.drain(..shift);
            }
            self.base += shift as u64 * 64;
            w = ((i - self.base) / 64) as usize;
        }
        while self.words.len() <= w {
            self.words.push_back(0);
        }
        let bit = 1u64 << ((i - self.base) % 64);
        if self.words[w] & bit != 0 {
            return false;
        }
        self.words[w] |= bit;
        while self.words.front() == Some(&u64::MAX) {
            self.words.pop_front();
            self.base += 64;
        }
        true
    }
}

/// What one connection needs to classify an event.
struct Ctx<'a> {
    sh: &'a Shared,
    topics: u64,
    per_conn: u64,
    first: u64,
    /// Index of the connection's URL (for per-URL delivery counts).
    url: usize,
    /// Nchan ids: a multiplexed id (`1795843508:[0],-`) does not order across channels, so events
    /// with one (or with no id) are ordered by the seq in their data instead.
    nchan_ids: bool,
}

/// SSE field state of one connection.
#[derive(Default)]
struct SseState {
    id: Vec<u8>,
    has_id: bool,
    data: Vec<u8>,
    has_data: bool,
    is_reset: bool,
    last_id: Vec<u8>,
    /// Highest (measured?, seq) seen, when ordering by seq.
    last_seq: Option<(bool, u64)>,
    seen: SeenSet,
}

impl SseState {
    fn line(&mut self, line: &[u8], ctx: &Ctx<'_>) {
        if line.is_empty() {
            self.dispatch(ctx);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"id" if !value.contains(&0) => {
                self.id.clear();
                self.id.extend_from_slice(&value[..value.len().min(ID_MAX)]);
                self.has_id = true;
            }
            b"data" if !self.has_data => {
                self.data.clear();
                self.data.extend_from_slice(&value[..value.len().min(DATA_PREFIX)]);
                self.has_data = true;
            }
            b"event" => self.is_reset = value == b"herald.reset",
            _ => {}
        }
    }

    fn dispatch(&mut self, ctx: &Ctx<'_>) {
        let (has_data, has_id, reset) = (self.has_data, self.has_id, self.is_reset);
        self.has_data = false;
        self.has_id = false;
        self.is_reset = false;
        if !has_data {
            return;
        }
        let sh = ctx.sh;
        let by_id =
            has_id && !self.id.is_empty() && !(ctx.nchan_ids && self.id.iter().any(|&b| b == b',' || b == b'['));
        if by_id {
            match id_cmp(&self.id, &self.last_id) {
                std::cmp::Ordering::Greater => {
                    self.last_id.clear();
                    self.last_id.extend_from_slice(&self.id);
                }
                std::cmp::Ordering::Less => {
                    sh.out_of_order.fetch_add(1, Ordering::Relaxed);
                }
                std::cmp::Ordering::Equal => {}
            }
        }
        if reset {
            sh.resets.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut it = self.data.split(|&b| b == b' ');
        let seq_tok = it.next().unwrap_or(b"");
        let ns_tok = it.next().unwrap_or(b"");
        if ctx.nchan_ids && !by_id {
            // Warm-up events (seq "wN") come before every measured one.
            let key = match seq_tok.strip_prefix(b"w") {
                Some(w) => parse_u64(w).map(|n| (false, n)),
                None => parse_u64(seq_tok).map(|n| (true, n)),
            };
            if let Some(key) = key {
                match self.last_seq {
                    Some(last) if key < last => {
                        sh.out_of_order.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => self.last_seq = Some(key),
                }
            }
        }
        if seq_tok.first() == Some(&b'w') {
            sh.warmup.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let (Some(seq), Some(sent)) = (parse_u64(seq_tok), parse_u64(ns_tok)) else {
            sh.unparsed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let t = seq % ctx.topics;
        let pos = (t + ctx.topics - ctx.first) % ctx.topics;
        if pos >= ctx.per_conn {
            sh.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.seen.insert((seq / ctx.topics) * ctx.per_conn + pos) {
            let now = unix_nanos();
            sh.delivered.fetch_add(1, Ordering::Relaxed);
            if let Some(d) = sh.delivered_by_url.get(ctx.url) {
                d.fetch_add(1, Ordering::Relaxed);
            }
            sh.hist.record(now.saturating_sub(sent));
            sh.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
        } else {
            sh.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Transport framing plus SSE state of one subscription.
struct SseConn {
    f: Framing,
    st: SseState,
}

impl SseConn {
    /// Decodes what is buffered and handles every complete line. Errors end the connection.
    fn process(&mut self, ctx: &Ctx<'_>, eof: bool) -> Result<(), String> {
        self.f.decode()?;
        let done = self.f.chunk == Chunk::Done;
        let dec = self.f.dec;
        let mut pos = 0usize;
        while pos < dec {
            let rest = &self.f.buf[pos..dec];
            let Some(i) = rest.iter().position(|&b| b == b'\n' || b == b'\r') else {
                break;
            };
            let adv = if rest[i] == b'\n' {
                1
            } else if i + 1 < rest.len() {
                if rest[i + 1] == b'\n' {
                    2
                } else {
                    1
                }
            } else if eof || done {
                1
            } else {
                break; // a CR at the end: wait to see whether LF follows
            };
            self.st.line(&rest[..i], ctx);
            pos += i + adv;
        }
        if pos > 0 {
            self.f.buf.drain(..pos);
            self.f.dec -= pos;
        }
        if done {
            return Err("server ended the stream (last chunk)".into());
        }
        if self.f.buf.len() > MAX_LINE {
            return Err("SSE line too long".into());
        }
        Ok(())
    }
}

/// Connects, sends the subscription request, and reads the response head.
async fn open_stream(cfg: &ClientCfg, i: usize) -> Result<(TcpStream, Vec<u8>, bool), String> {
    let src = cfg.sources[i % cfg.sources.len()];
    let target = &cfg.targets[cfg.url_of(i)];
    let sock = if target.addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
        .map_err(|e| format!("socket: {e}"))?;
    sock.bind(SocketAddr::new(src, 0)).map_err(|e| format!("bind {src}: {e}"))?;
    let mut s = sock.connect(target.addr).await.map_err(|e| format!("connect: {e}"))?;
    let first = cfg.first_topic(i);
    let path = match cfg.kind {
        TargetKind::Herald => {
            let topics: Vec<String> =
                (0..cfg.per_conn).map(|j| format!("load%2F{}", (first + j) % cfg.topics)).collect();
            format!("{}/events?topics={}", target.base, topics.join(","))
        }
        // Several channels need `nchan_channel_id_split_delimiter ","` (benches/nchan/nginx.conf).
        TargetKind::Nchan => {
            let topics: Vec<String> = (0..cfg.per_conn).map(|j| format!("load/{}", (first + j) % cfg.topics)).collect();
            format!("{}/sub/{}", target.base, topics.join(","))
        }
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n", target.host);
    s.write_all(req.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(cfg.read_buf);
    let head = read_head(&mut s, &mut buf).await?;
    if head.status != 200 {
        return Err(format!("subscribe: HTTP {}", head.status));
    }
    Ok((s, buf, head.chunked))
}

async fn run_conn(i: usize, cfg: Arc<ClientCfg>, sh: Arc<Shared>, sem: Arc<Semaphore>) {
    let opened = {
        let Ok(_permit) = sem.acquire().await else {
            return;
        };
        let t0 = Instant::now();
        let r = timeout(cfg.connect_timeout, open_stream(&cfg, i)).await;
        if matches!(r, Ok(Ok(_))) {
            sh.connect_hist.record(t0.elapsed().as_nanos() as u64);
        }
        r
    };
    let (mut stream, buf, chunked) = match opened {
        Ok(Ok(v)) => {
            if !cfg.graceful_close {
                // Closing (when the group is stopped) then resets instead of leaving TIME_WAIT.
                let _ = v.0.set_zero_linger();
            }
            v
        }
        Ok(Err(e)) => {
            sh.errors.add(&e);
            sh.failed.fetch_add(1, Ordering::SeqCst);
            sh.ready.fetch_add(1, Ordering::SeqCst);
            return;
        }
        Err(_) => {
            sh.errors.add("timeout waiting for the subscribe response head");
            sh.failed.fetch_add(1, Ordering::SeqCst);
            sh.ready.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    let first = cfg.first_topic(i);
    let url = cfg.url_of(i);
    for j in 0..cfg.per_conn {
        sh.subs[(first + j) % cfg.topics].fetch_add(1, Ordering::SeqCst);
    }
    sh.open_by_url[url].fetch_add(1, Ordering::SeqCst);
    sh.open.fetch_add(1, Ordering::SeqCst);
    sh.ready.fetch_add(1, Ordering::SeqCst);

    let ctx = Ctx {
        sh: &sh,
        topics: cfg.topics as u64,
        per_conn: cfg.per_conn as u64,
        first: first as u64,
        url,
        nchan_ids: cfg.kind == TargetKind::Nchan,
    };
    let mut conn = SseConn {
        f: Framing { buf, dec: 0, chunk: if chunked { Chunk::Size } else { Chunk::Identity } },
        st: SseState::default(),
    };
    // The group stops this task by aborting it (no per-read stop future to register and drop):
    // the loop below only returns when the stream ends early.
    let reason: String = match conn.process(&ctx, false) {
        Err(e) => e,
        Ok(()) => loop {
            let b = &mut conn.f.buf;
            if b.capacity() - b.len() < 256 {
                b.reserve(b.capacity().max(cfg.read_buf));
            }
            match stream.read_buf(&mut conn.f.buf).await {
                Ok(0) => {
                    let _ = conn.process(&ctx, true);
                    break "server closed the connection".to_string();
                }
                Ok(_) => {
                    if let Err(e) = conn.process(&ctx, false) {
                        break e;
                    }
                    let b = &mut conn.f.buf;
                    if b.is_empty() && b.capacity() > 4 * cfg.read_buf {
                        *b = Vec::with_capacity(cfg.read_buf);
                    }
                }
                Err(e) => break format!("read: {e}"),
            }
        },
    };
    sh.closed_early.fetch_add(1, Ordering::Relaxed);
    sh.errors.add(&format!("stream ended early: {reason}"));
}

/// Figures of one process's connections once they are all open (or failed).
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
struct GroupReady {
    requested: u64,
    open: u64,
    failed: u64,
    connect_secs: f64,
    subs: Vec<u64>,
    /// Open connections per URL.
    #[serde(default)]
    open_by_url: Vec<u64>,
    errors: BTreeMap<String, u64>,
    connect_hist: Vec<(u32, u64)>,
    connect_max_ns: u64,
}

/// Final figures of one process's connections.
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
struct GroupResult {
    requested: u64,
    open: u64,
    failed: u64,
    closed_early: u64,
    delivered: u64,
    duplicates: u64,
    out_of_order: u64,
    resets: u64,
    warmup: u64,
    foreign: u64,
    unparsed: u64,
    last_delivery_unix_ns: u64,
    /// Delivered events per URL of the receiving connection.
    #[serde(default)]
    delivered_by_url: Vec<u64>,
    hist: Vec<(u32, u64)>,
    hist_max_ns: u64,
    errors: BTreeMap<String, u64>,
    /// CPU seconds of this process since the parent's MARK (children only).
    cpu_secs_since_mark: Option<f64>,
    rss_kib: Option<u64>,
}

/// The connections held by one process.
struct Group {
    sh: Arc<Shared>,
    tasks: JoinSet<()>,
    n: usize,
    started: Instant,
    max_wait: Duration,
}

fn start_group(cfg: Arc<ClientCfg>, range: Range<usize>, concurrency: usize) -> Group {
    let sh = Arc::new(Shared::new(cfg.topics, cfg.targets.len()));
    let concurrency = concurrency.max(1);
    let sem = Arc::new(Semaphore::new(concurrency));
    let n = range.len();
    // Every attempt is bounded by connect_timeout once it holds a permit.
    let waves = n.div_ceil(concurrency) as u32;
    let max_wait = cfg.connect_timeout * waves.max(1) + Duration::from_secs(10);
    let mut tasks = JoinSet::new();
    for i in range {
        tasks.spawn(run_conn(i, cfg.clone(), sh.clone(), sem.clone()));
    }
    Group { sh, tasks, n, started: Instant::now(), max_wait }
}

impl Group {
    async fn wait_ready(&self, label: &str) -> GroupReady {
        let deadline = self.started + self.max_wait;
        let mut last_print = Instant::now();
        while self.sh.ready.load(Ordering::SeqCst) < self.n && Instant::now() < deadline {
            sleep(Duration::from_millis(10)).await;
            if last_print.elapsed() >= Duration::from_secs(2) {
                last_print = Instant::now();
                eprintln!(
                    "{label}connecting: {} open, {} failed of {}",
                    self.sh.open.load(Ordering::SeqCst),
                    self.sh.failed.load(Ordering::SeqCst),
                    self.n
                );
            }
        }
        let open = self.sh.open.load(Ordering::SeqCst) as u64;
        let failed = self.sh.failed.load(Ordering::SeqCst) as u64;
        let mut errors = self.sh.errors.snapshot();
        let pending = (self.n as u64).saturating_sub(open + failed);
        if pending > 0 {
            errors.insert("still connecting when the connect phase ended".into(), pending);
        }
        GroupReady {
            requested: self.n as u64,
            open,
            failed: failed + pending,
            connect_secs: self.started.elapsed().as_secs_f64(),
            subs: self.sh.subs.iter().map(|a| a.load(Ordering::SeqCst)).collect(),
            open_by_url: self.sh.open_by_url.iter().map(|a| a.load(Ordering::SeqCst)).collect(),
            errors,
            connect_hist: self.sh.connect_hist.sparse(),
            connect_max_ns: self.sh.connect_hist.max_ns.load(Ordering::SeqCst),
        }
    }

    async fn finish(mut self) -> GroupResult {
        // Stop every connection task; dropping its socket closes it (a reset unless
        // --graceful-close). Counters are all in `Shared`, so nothing is lost.
        self.tasks.abort_all();
        let tasks = &mut self.tasks;
        let _ = timeout(Duration::from_secs(15), async { while tasks.join_next().await.is_some() {} }).await;
        let sh = &self.sh;
        let r = |a: &AtomicU64| a.load(Ordering::SeqCst);
        let open = sh.open.load(Ordering::SeqCst) as u64;
        GroupResult {
            requested: self.n as u64,
            open,
            failed: (self.n as u64).saturating_sub(open),
            closed_early: sh.closed_early.load(Ordering::SeqCst) as u64,
            delivered: r(&sh.delivered),
            duplicates: r(&sh.duplicates),
            out_of_order: r(&sh.out_of_order),
            resets: r(&sh.resets),
            warmup: r(&sh.warmup),
            foreign: r(&sh.foreign),
            unparsed: r(&sh.unparsed),
            last_delivery_unix_ns: r(&sh.last_delivery_ns),
            delivered_by_url: sh.delivered_by_url.iter().map(r).collect(),
            hist: sh.hist.sparse(),
            hist_max_ns: r(&sh.hist.max_ns),
            errors: sh.errors.snapshot(),
            cpu_secs_since_mark: None,
            rss_kib: sample_proc("self").rss_kib,
        }
    }
}

fn child_range(conns: usize, procs: usize, k: usize) -> Range<usize> {
    (conns * k / procs)..(conns * (k + 1) / procs)
}

fn client_cfg(args: &Args) -> Result<Arc<ClientCfg>, String> {
    let targets = parse_targets(&args.url)?;
    let sources = parse_sources(&args.sources, &targets)?;
    Ok(Arc::new(ClientCfg {
        kind: args.target,
        targets,
        sources,
        topics: args.topics,
        per_conn: args.topics_per_conn,
        connect_timeout: secs(args.connect_timeout),
        read_buf: args.read_buf.max(256),
        graceful_close: args.graceful_close,
    }))
}

/// A child process: hold connections, report READY, wait for STOP, report RESULT.
async fn child_main(args: Args, k: usize) -> Result<(), String> {
    let cfg = client_cfg(&args)?;
    let tck = clk_tck().unwrap_or(100.0);
    let max_life = secs(args.child_max_secs.unwrap_or(CHILD_MAX_SECS_DEFAULT));
    let deadline = tokio::time::Instant::now() + max_life;
    let group = start_group(cfg, child_range(args.conns, args.procs, k), args.connect_concurrency);
    let ready = group.wait_ready(&format!("[child {k}] ")).await;
    emit("READY", &ready)?;
    let mut mark = sample_proc("self");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            l = lines.next_line() => match l {
                Ok(Some(l)) if l.trim() == "MARK" => mark = sample_proc("self"),
                Ok(Some(l)) if l.trim() != "STOP" => {}
                _ => break,
            },
            _ = sleep_until(deadline) => break,
        }
    }
    let end = sample_proc("self");
    let mut res = group.finish().await;
    res.cpu_secs_since_mark = cpu_delta(mark, end, tck);
    emit("RESULT", &res)
}

fn emit<T: Serialize>(tag: &str, v: &T) -> Result<(), String> {
    let json = serde_json::to_string(v).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{tag} {json}").and_then(|()| out.flush()).map_err(|e| e.to_string())
}

/// A child process seen from the parent.
struct ChildProc {
    k: usize,
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl ChildProc {
    /// Reads lines until one starts with `tag`, bounded by `limit`.
    async fn expect<T: for<'de> Deserialize<'de>>(&mut self, tag: &str, limit: Duration) -> Result<T, String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let line = match tokio::time::timeout_at(deadline, self.lines.next_line()).await {
                Err(_) => return Err(format!("child {}: no {tag} within {limit:?}", self.k)),
                Ok(Err(e)) => return Err(format!("child {}: {e}", self.k)),
                Ok(Ok(None)) => return Err(format!("child {} exited before {tag}", self.k)),
                Ok(Ok(Some(l))) => l,
            };
            if let Some(json) = line.strip_prefix(tag).map(str::trim_start) {
                return serde_json::from_str(json).map_err(|e| format!("child {}: bad {tag}: {e}", self.k));
            }
            eprintln!("[child {}] {line}", self.k);
        }
    }

    async fn say(&mut self, msg: &str) {
        if let Some(s) = self.stdin.as_mut() {
            let _ = s.write_all(format!("{msg}\n").as_bytes()).await;
            let _ = s.flush().await;
        }
    }
}

fn spawn_children(args: &Args, max_life: f64) -> Result<Vec<ChildProc>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let per_child_conc = (args.connect_concurrency / args.procs).max(1);
    let mut out = Vec::new();
    for k in 0..args.procs {
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(["--url", &args.url])
            .args(["--target", args.target.name()])
            .args(["--conns", &args.conns.to_string()])
            .args(["--topics", &args.topics.to_string()])
            .args(["--topics-per-conn", &args.topics_per_conn.to_string()])
            .args(["--sources", &args.sources])
            .args(["--connect-concurrency", &per_child_conc.to_string()])
            .args(["--connect-timeout", &args.connect_timeout.to_string()])
            .args(["--read-buf", &args.read_buf.to_string()])
            .args(["--procs", &args.procs.to_string()])
            .args(["--threads", &args.threads.to_string()])
            .args(args.graceful_close.then_some("--graceful-close"))
            .args(["--child-index", &k.to_string()])
            .args(["--child-max-secs", &format!("{max_life:.0}")])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| format!("spawning child {k}: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("child stdout")?;
        out.push(ChildProc { k, child, stdin, lines: BufReader::new(stdout).lines() });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------
// Publishing

struct PubCfg {
    target: Arc<ClientCfg>,
    topics: usize,
    payload: usize,
    rate: f64,
    publishers: usize,
    req_timeout: Duration,
}

struct PubShared {
    ok: AtomicU64,
    failed: AtomicU64,
    per_topic_ok: Vec<AtomicU64>,
    behind_max_ns: AtomicU64,
    last_done_ns: AtomicU64,
    rtt: Hist,
    errors: ErrCounts,
}

/// Outcome of one publishing phase.
struct PubOutcome {
    total: u64,
    ok: u64,
    failed: u64,
    skipped: u64,
    secs: f64,
    start_unix_ns: u64,
    behind_max_ms: f64,
    per_topic_ok: Vec<u64>,
    rtt: Latency,
    errors: BTreeMap<String, u64>,
}

async fn connect_pub(cfg: &PubCfg, target: &Target) -> Result<TcpStream, String> {
    let sock = if target.addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
        .map_err(|e| format!("socket: {e}"))?;
    sock.bind(SocketAddr::new(cfg.target.sources[0], 0)).map_err(|e| format!("bind: {e}"))?;
    let s = sock.connect(target.addr).await.map_err(|e| format!("publish connect: {e}"))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// Sends one request and reads the whole response; returns the status and whether the
/// connection can be reused.
async fn roundtrip(s: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> Result<(u16, bool), String> {
    s.write_all(req).await.map_err(|e| format!("publish write: {e}"))?;
    buf.clear();
    let head = read_head(s, buf).await?;
    if let Some(cl) = head.content_length {
        while buf.len() < cl {
            if s.read_buf(buf).await.map_err(|e| format!("publish read: {e}"))? == 0 {
                return Err("publish: connection closed inside the body".into());
            }
        }
        Ok((head.status, !head.close))
    } else if head.chunked {
        let mut f = Framing { buf: std::mem::take(buf), dec: 0, chunk: Chunk::Size };
        loop {
            f.decode()?;
            if f.chunk == Chunk::Done {
                break;
            }
            if f.buf.len() > MAX_HEAD * 64 {
                return Err("publish: response body too large".into());
            }
            if s.read_buf(&mut f.buf).await.map_err(|e| format!("publish read: {e}"))? == 0 {
                return Err("publish: connection closed inside the body".into());
            }
        }
        *buf = f.buf;
        Ok((head.status, !head.close))
    } else {
        while s.read_buf(buf).await.map_err(|e| format!("publish read: {e}"))? > 0 {
            if buf.len() > MAX_HEAD * 64 {
                break;
            }
            buf.clear();
        }
        Ok((head.status, false))
    }
}

/// One publishing phase, shared by its publisher tasks.
struct PubRun {
    cfg: Arc<PubCfg>,
    /// "w" for warm-up events, "" for measured ones.
    prefix: &'static str,
    total: u64,
    /// Next event number to send; each publisher takes the next one when it is free.
    next: AtomicU64,
    start: tokio::time::Instant,
    deadline: tokio::time::Instant,
    sh: PubShared,
    padding: String,
}

/// Publisher `j` sends every event it takes to URL `j % n`.
async fn publisher_loop(run: Arc<PubRun>, j: usize) {
    let PubRun { cfg, prefix, total, next, start, deadline, sh, padding } = &*run;
    let (prefix, total, start, deadline) = (*prefix, *total, *start, *deadline);
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(1024);
    let kind = cfg.target.kind;
    let target = &cfg.target.targets[cfg.target.url_of(j)];
    let base = &target.base;
    loop {
        let k = next.fetch_add(1, Ordering::Relaxed);
        if k >= total {
            break;
        }
        let due = start + Duration::from_secs_f64(k as f64 / cfg.rate);
        if due > deadline {
            break;
        }
        let now = tokio::time::Instant::now();
        if due > now {
            sleep_until(due).await;
        } else {
            sh.behind_max_ns.fetch_max((now - due).as_nanos() as u64, Ordering::Relaxed);
        }
        if tokio::time::Instant::now() > deadline {
            break;
        }
        if conn.is_none() {
            match timeout(cfg.req_timeout, connect_pub(cfg, target)).await {
                Ok(Ok(s)) => conn = Some(s),
                Ok(Err(e)) => {
                    sh.errors.add(&e);
                    sh.failed.fetch_add(1, Ordering::Relaxed);
                    sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Err(_) => {
                    sh.errors.add("publish connect timeout");
                    sh.failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        }
        let Some(s) = conn.as_mut() else { continue };
        let topic = (k % cfg.topics as u64) as usize;
        let sent = unix_nanos();
        let head = format!("{prefix}{k} {sent} ");
        let pad = cfg.payload.saturating_sub(head.len()).min(padding.len());
        let (path, ctype, body) = match kind {
            // The data holds only digits, spaces, 'w' and 'x', and topics are load/N: no JSON escaping.
            TargetKind::Herald => (
                format!("{base}/publish"),
                "application/json",
                format!(r#"{{"topic":"load/{topic}","data":"{head}{}"}}"#, &padding[..pad]),
            ),
            TargetKind::Nchan => {
                (format!("{base}/pub/load/{topic}"), "text/plain", format!("{head}{}", &padding[..pad]))
            }
        };
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
            target.host,
            body.len()
        );
        let t0 = Instant::now();
        match timeout(cfg.req_timeout, roundtrip(s, req.as_bytes(), &mut buf)).await {
            Ok(Ok((status, keep))) => {
                // Nchan answers 201 (subscribers present) or 202 (none).
                let ok = match kind {
                    TargetKind::Herald => status == 200,
                    TargetKind::Nchan => (200..300).contains(&status),
                };
                if ok {
                    sh.ok.fetch_add(1, Ordering::Relaxed);
                    sh.per_topic_ok[topic].fetch_add(1, Ordering::Relaxed);
                    sh.rtt.record(t0.elapsed().as_nanos() as u64);
                } else {
                    sh.failed.fetch_add(1, Ordering::Relaxed);
                    sh.errors.add(&format!("publish: HTTP {status}"));
                }
                if !keep {
                    conn = None;
                }
            }
            Ok(Err(e)) => {
                sh.failed.fetch_add(1, Ordering::Relaxed);
                sh.errors.add(&e);
                conn = None;
            }
            Err(_) => {
                sh.failed.fetch_add(1, Ordering::Relaxed);
                sh.errors.add("publish timeout");
                conn = None;
            }
        }
        sh.last_done_ns.fetch_max(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

async fn publish_phase(cfg: Arc<PubCfg>, prefix: &'static str, secs_: f64) -> PubOutcome {
    let total = (cfg.rate * secs_).round().max(0.0) as u64;
    let sh = PubShared {
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        per_topic_ok: (0..cfg.topics).map(|_| AtomicU64::new(0)).collect(),
        behind_max_ns: AtomicU64::new(0),
        last_done_ns: AtomicU64::new(0),
        rtt: Hist::new(),
        errors: ErrCounts::default(),
    };
    let start = tokio::time::Instant::now();
    let start_unix_ns = unix_nanos();
    let max_dur = secs(secs_ * 1.2 + 1.0);
    let run = Arc::new(PubRun {
        cfg: cfg.clone(),
        prefix,
        total,
        next: AtomicU64::new(0),
        start,
        deadline: start + max_dur,
        sh,
        padding: "x".repeat(cfg.payload),
    });
    let mut set = JoinSet::new();
    for j in 0..cfg.publishers.max(1) {
        set.spawn(publisher_loop(run.clone(), j));
    }
    let limit = max_dur + cfg.req_timeout * 2 + Duration::from_secs(5);
    if timeout(limit, async { while set.join_next().await.is_some() {} }).await.is_err() {
        set.abort_all();
    }
    let sh = &run.sh;
    let ok = sh.ok.load(Ordering::SeqCst);
    let failed = sh.failed.load(Ordering::SeqCst);
    let mut rtt = DenseHist::new();
    rtt.add_sparse(&sh.rtt.sparse(), sh.rtt.max_ns.load(Ordering::SeqCst));
    PubOutcome {
        total,
        ok,
        failed,
        skipped: total.saturating_sub(ok + failed),
        secs: sh.last_done_ns.load(Ordering::SeqCst) as f64 / 1e9,
        start_unix_ns,
        behind_max_ms: sh.behind_max_ns.load(Ordering::SeqCst) as f64 / 1e6,
        per_topic_ok: sh.per_topic_ok.iter().map(|a| a.load(Ordering::SeqCst)).collect(),
        rtt: rtt.summary(),
        errors: sh.errors.snapshot(),
    }
}

/// `GET /healthz`: is anything serving HTTP there?
async fn probe(target: &Target) -> Result<u16, String> {
    let mut s = timeout(Duration::from_secs(3), TcpStream::connect(target.addr))
        .await
        .map_err(|_| "connect timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let req = format!("GET {}/healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", target.base, target.host);
    s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(1024);
    let head =
        timeout(Duration::from_secs(3), read_head(&mut s, &mut buf)).await.map_err(|_| "timeout".to_string())??;
    Ok(head.status)
}

// ---------------------------------------------------------------------------------------------------
// Parent: orchestrate, aggregate, report

/// Figures of one URL (node) of `--url`.
#[derive(Serialize, Debug, Default)]
struct UrlReport {
    url: String,
    conns_open: u64,
    /// Publishers sending to this URL (publisher j goes to URL j % n).
    publishers: usize,
    /// Measured events delivered on the connections to this URL.
    delivered: u64,
}

/// Figures of one process of `--server-pid`.
#[derive(Serialize, Debug, Default)]
struct ServerReport {
    pid: u32,
    /// The URL this server is taken to serve (PID k ↔ URL k, when there are as many PIDs as URLs).
    url: Option<String>,
    before: ProcSample,
    connected: ProcSample,
    end: ProcSample,
    rss_growth_kib: Option<f64>,
    /// Open connections to its URL (when the URL is known).
    conns_open: Option<u64>,
    rss_per_conn_kib: Option<f64>,
    cpu_publish_secs: Option<f64>,
    /// Deliveries on the connections to its URL (when the URL is known).
    delivered: Option<u64>,
    cpu_us_per_delivery: Option<f64>,
}

#[derive(Serialize, Debug, Default)]
struct Report {
    url: String,
    per_url: Vec<UrlReport>,
    conns_requested: u64,
    conns_open: u64,
    conns_failed: u64,
    conns_closed_early: u64,
    connect_secs: f64,
    connect_latency: Latency,
    procs: usize,
    topics: usize,
    topics_per_conn: usize,
    payload_bytes: usize,
    publishers: usize,
    target_rate: f64,
    duration_secs: f64,
    warmup_events_ok: u64,
    warmup_deliveries: u64,
    events_planned: u64,
    events_published_ok: u64,
    events_publish_failed: u64,
    events_skipped: u64,
    publish_secs: f64,
    publish_achieved_rate: f64,
    publish_behind_max_ms: f64,
    publish_rtt: Latency,
    expected_deliveries: u64,
    delivered: u64,
    delivered_per_sec: Option<f64>,
    delivery_span_secs: Option<f64>,
    missing: u64,
    unexpected: u64,
    duplicates: u64,
    out_of_order: u64,
    resets: u64,
    foreign: u64,
    unparsed: u64,
    latency: Latency,
    clk_tck: f64,
    clk_tck_assumed: bool,
    /// `--server-pid`, one or several; the `server_*` figures below are sums over them.
    server_pids: Vec<u32>,
    server_before: Option<ProcSample>,
    server_connected: Option<ProcSample>,
    server_end: Option<ProcSample>,
    /// Total RSS growth of the servers / total open connections.
    server_rss_per_conn_kib: Option<f64>,
    server_cpu_publish_secs: Option<f64>,
    /// Total CPU of the servers / total deliveries.
    server_cpu_us_per_delivery: Option<f64>,
    /// Each server's own figures (with several `--server-pid`s).
    servers: Vec<ServerReport>,
    loadgen_cpu_publish_secs: Option<f64>,
    loadgen_rss_kib: Option<u64>,
    connect_errors: BTreeMap<String, u64>,
    stream_errors: BTreeMap<String, u64>,
    publish_errors: BTreeMap<String, u64>,
}

fn validate(a: &Args) -> Result<(), String> {
    if a.topics == 0 {
        return Err("--topics must be at least 1".into());
    }
    if a.topics_per_conn == 0 || a.topics_per_conn > a.topics {
        return Err("--topics-per-conn must be between 1 and --topics".into());
    }
    if !(a.rate > 0.0 && a.rate <= 1_000_000.0) {
        return Err("--rate must be in (0, 1e6]".into());
    }
    for (name, v) in [
        ("--duration", a.duration),
        ("--warmup", a.warmup),
        ("--drain", a.drain),
        ("--idle", a.idle),
        ("--connect-timeout", a.connect_timeout),
        ("--publish-timeout", a.publish_timeout),
    ] {
        if !(0.0..=3600.0).contains(&v) {
            return Err(format!("{name} must be between 0 and 3600 seconds"));
        }
    }
    if a.duration <= 0.0 || a.connect_timeout <= 0.0 || a.publish_timeout <= 0.0 {
        return Err("--duration, --connect-timeout and --publish-timeout must be positive".into());
    }
    if a.procs == 0 || a.procs > 64 {
        return Err("--procs must be between 1 and 64".into());
    }
    if a.publishers == 0 || a.publishers > 1024 {
        return Err("--publishers must be between 1 and 1024".into());
    }
    if a.payload > 1 << 20 {
        return Err("--payload must be at most 1 MiB".into());
    }
    if a.conns > 10_000_000 {
        return Err("--conns is unreasonably large".into());
    }
    Ok(())
}

async fn parent_main(args: Args) -> Result<(), String> {
    validate(&args)?;
    let cfg = client_cfg(&args)?;
    let tck_read = clk_tck();
    let tck = tck_read.unwrap_or(100.0);
    for t in &cfg.targets {
        match probe(t).await {
            Ok(200) => {}
            Ok(code) => eprintln!("note: GET /healthz at {} answered {code}; going on", t.url),
            Err(e) => return Err(format!("no server at {}: {e}", t.url)),
        }
    }
    let nurls = cfg.targets.len();
    if args.publishers < nurls {
        eprintln!("warning: {} publishers for {nurls} URLs: some URLs get no publisher", args.publishers);
    }
    let per_proc = args.conns.div_ceil(args.procs);
    if let Some(lim) = nofile_soft_limit() {
        if per_proc as u64 + 64 > lim {
            eprintln!("warning: {per_proc} connections per process but the open-files soft limit is {lim}: raise `ulimit -n` or use --procs");
        }
    }
    if let Some(ports) = ephemeral_ports() {
        let per_src = args.conns.div_ceil(cfg.sources.len()) as u64;
        if per_src + 64 > ports {
            eprintln!(
                "warning: {per_src} connections per source address but only {ports} ephemeral ports: add --sources"
            );
        }
    }
    let pids = parse_pids(args.server_pid.as_deref())?;
    // One sample per server PID.
    let sample = |label: &str| -> Vec<ProcSample> {
        pids.iter()
            .map(|p| {
                let s = sample_proc(&p.to_string());
                if s.rss_kib.is_none() {
                    eprintln!("warning: cannot read /proc/{p} ({label})");
                }
                s
            })
            .collect()
    };
    println!(
        "== {} load: {} conns ({} proc), {} topics x{}/conn, {} ev/s for {} s (+{} s warm-up), payload {} B, {} publishers, url {}",
        args.target.name(),
        args.conns, args.procs, args.topics, args.topics_per_conn, args.rate, args.duration, args.warmup,
        args.payload, args.publishers, args.url
    );
    let mut rep = Report {
        url: args.url.clone(),
        per_url: cfg
            .targets
            .iter()
            .enumerate()
            .map(|(k, t)| UrlReport {
                url: t.url.clone(),
                publishers: (0..args.publishers).filter(|j| j % nurls == k).count(),
                ..UrlReport::default()
            })
            .collect(),
        server_pids: pids.clone(),
        conns_requested: args.conns as u64,
        procs: args.procs,
        topics: args.topics,
        topics_per_conn: args.topics_per_conn,
        payload_bytes: args.payload,
        publishers: args.publishers,
        target_rate: args.rate,
        duration_secs: args.duration,
        clk_tck: tck,
        clk_tck_assumed: tck_read.is_none(),
        ..Report::default()
    };
    let srv_before = sample("before");
    rep.server_before = sum_samples(&srv_before);

    // Connect.
    let t0 = Instant::now();
    let mut group: Option<Group> = None;
    let mut children: Vec<ChildProc> = Vec::new();
    let mut subs = vec![0u64; args.topics];
    let mut connect_errors = BTreeMap::new();
    let mut connect_hist = DenseHist::new();
    if args.procs == 1 {
        let g = start_group(cfg.clone(), 0..args.conns, args.connect_concurrency);
        let r = g.wait_ready("").await;
        rep.conns_open = r.open;
        rep.conns_failed = r.failed;
        for (u, v) in rep.per_url.iter_mut().zip(&r.open_by_url) {
            u.conns_open += v;
        }
        subs = r.subs;
        connect_errors = r.errors;
        connect_hist.add_sparse(&r.connect_hist, r.connect_max_ns);
        group = Some(g);
    } else {
        let per_child_conc = (args.connect_concurrency / args.procs).max(1);
        let waves = per_proc.div_ceil(per_child_conc) as f64;
        let connect_limit = args.connect_timeout * waves.max(1.0) + 30.0;
        let life = connect_limit + args.idle + args.warmup * 1.2 + args.duration * 1.2 + args.drain + 120.0;
        children = spawn_children(&args, life)?;
        let deadline = Instant::now() + secs(connect_limit);
        for c in children.iter_mut() {
            let left = deadline.saturating_duration_since(Instant::now());
            match c.expect::<GroupReady>("READY", left).await {
                Ok(r) => {
                    rep.conns_open += r.open;
                    rep.conns_failed += r.failed;
                    for (s, v) in subs.iter_mut().zip(&r.subs) {
                        *s += v;
                    }
                    for (u, v) in rep.per_url.iter_mut().zip(&r.open_by_url) {
                        u.conns_open += v;
                    }
                    merge_errors(&mut connect_errors, &r.errors);
                    connect_hist.add_sparse(&r.connect_hist, r.connect_max_ns);
                }
                Err(e) => {
                    eprintln!("load: {e}");
                    let n = child_range(args.conns, args.procs, c.k).len() as u64;
                    rep.conns_failed += n;
                    *connect_errors.entry(e).or_insert(0) += n;
                }
            }
        }
    }
    rep.connect_secs = t0.elapsed().as_secs_f64();
    rep.connect_latency = connect_hist.summary();
    println!(
        "connect: {} open, {} failed of {} in {:.2} s; per connection p50 {} p99 {} max {} ms",
        rep.conns_open,
        rep.conns_failed,
        args.conns,
        rep.connect_secs,
        fmt_ms(rep.connect_latency.p50_ms),
        fmt_ms(rep.connect_latency.p99_ms),
        fmt_ms(rep.connect_latency.max_ms)
    );
    for (e, n) in &connect_errors {
        println!("  connect error x{n}: {e}");
    }
    sleep(secs(args.idle)).await;
    let srv_connected = sample("connected");
    rep.server_connected = sum_samples(&srv_connected);
    if let (Some(b), Some(c)) = (rep.server_before, rep.server_connected) {
        if let (Some(rb), Some(rc), true) = (b.rss_kib, c.rss_kib, rep.conns_open > 0) {
            rep.server_rss_per_conn_kib = Some((rc as f64 - rb as f64) / rep.conns_open as f64);
        }
    }

    // Publish.
    let pcfg = Arc::new(PubCfg {
        target: cfg.clone(),
        topics: args.topics,
        payload: args.payload,
        rate: args.rate,
        publishers: args.publishers,
        req_timeout: secs(args.publish_timeout),
    });
    if args.warmup > 0.0 {
        let w = publish_phase(pcfg.clone(), "w", args.warmup).await;
        rep.warmup_events_ok = w.ok;
        println!("warm-up: {} published, {} failed", w.ok, w.failed);
    }
    for c in children.iter_mut() {
        c.say("MARK").await;
    }
    let self_mark = sample_proc("self");
    let srv_mark_v = sample("publish start");
    let srv_mark = sum_samples(&srv_mark_v);
    let p = publish_phase(pcfg, "", args.duration).await;
    let expected: u64 = p.per_topic_ok.iter().zip(&subs).map(|(a, b)| a * b).sum();
    // Drain: in-process we can stop as soon as everything arrived.
    let drain_end = Instant::now() + secs(args.drain);
    while Instant::now() < drain_end {
        if let Some(g) = &group {
            if g.sh.delivered.load(Ordering::Relaxed) >= expected {
                break;
            }
        }
        sleep(Duration::from_millis(20)).await;
    }
    let srv_end_v = sample("end");
    let srv_end = sum_samples(&srv_end_v);
    let self_end = sample_proc("self");
    rep.server_end = srv_end;

    // Collect.
    let mut results: Vec<GroupResult> = Vec::new();
    if let Some(g) = group {
        results.push(g.finish().await);
    }
    for c in children.iter_mut() {
        c.say("STOP").await;
    }
    for c in children.iter_mut() {
        match c.expect::<GroupResult>("RESULT", Duration::from_secs(30)).await {
            Ok(r) => results.push(r),
            Err(e) => {
                eprintln!("load: {e}");
                merge_errors(&mut rep.stream_errors, &BTreeMap::from([(e, 1)]));
            }
        }
        c.stdin = None;
        if timeout(Duration::from_secs(10), c.child.wait()).await.is_err() {
            let _ = c.child.start_kill();
            let _ = c.child.wait().await;
        }
    }
    let mut hist = DenseHist::new();
    let mut last_delivery = 0u64;
    let mut loadgen_cpu = cpu_delta(self_mark, self_end, tck);
    let mut loadgen_rss = sample_proc("self").rss_kib;
    for r in &results {
        rep.conns_closed_early += r.closed_early;
        rep.delivered += r.delivered;
        rep.duplicates += r.duplicates;
        rep.out_of_order += r.out_of_order;
        rep.resets += r.resets;
        rep.warmup_deliveries += r.warmup;
        rep.foreign += r.foreign;
        rep.unparsed += r.unparsed;
        last_delivery = last_delivery.max(r.last_delivery_unix_ns);
        for (u, v) in rep.per_url.iter_mut().zip(&r.delivered_by_url) {
            u.delivered += v;
        }
        hist.add_sparse(&r.hist, r.hist_max_ns);
        merge_errors(&mut rep.stream_errors, &r.errors);
        if args.procs > 1 {
            loadgen_cpu = match (loadgen_cpu, r.cpu_secs_since_mark) {
                (Some(a), Some(b)) => Some(a + b),
                _ => None,
            };
            loadgen_rss = Some(loadgen_rss.unwrap_or(0) + r.rss_kib.unwrap_or(0));
        }
    }
    // Connect errors were reported already; keep only what happened afterwards.
    for (k, v) in &connect_errors {
        if let Some(c) = rep.stream_errors.get_mut(k) {
            *c = c.saturating_sub(*v);
        }
    }
    rep.stream_errors.retain(|_, v| *v > 0);
    rep.events_planned = p.total;
    rep.events_published_ok = p.ok;
    rep.events_publish_failed = p.failed;
    rep.events_skipped = p.skipped;
    rep.publish_secs = p.secs;
    // The last event is due at (total-1)/rate: never count less than the planned duration.
    let planned = p.total as f64 / args.rate;
    rep.publish_achieved_rate = if p.ok > 0 { p.ok as f64 / p.secs.max(planned) } else { 0.0 };
    rep.publish_behind_max_ms = p.behind_max_ms;
    rep.publish_rtt = p.rtt;
    rep.publish_errors = p.errors;
    rep.expected_deliveries = expected;
    rep.missing = expected.saturating_sub(rep.delivered);
    rep.unexpected = rep.delivered.saturating_sub(expected);
    if last_delivery > p.start_unix_ns {
        let span = (last_delivery - p.start_unix_ns) as f64 / 1e9;
        rep.delivery_span_secs = Some(span);
        rep.delivered_per_sec = Some(rep.delivered as f64 / span);
    }
    rep.latency = hist.summary();
    if let (Some(a), Some(b)) = (srv_mark, srv_end) {
        rep.server_cpu_publish_secs = cpu_delta(a, b, tck);
        if rep.delivered > 0 {
            rep.server_cpu_us_per_delivery = rep.server_cpu_publish_secs.map(|c| c * 1e6 / rep.delivered as f64);
        }
    }
    // Each server's own figures; with as many PIDs as URLs, PID k serves URL k.
    let mapped = pids.len() == nurls;
    for (k, &pid) in pids.iter().enumerate() {
        let (before, connected, mark, end) = (srv_before[k], srv_connected[k], srv_mark_v[k], srv_end_v[k]);
        let url = mapped.then(|| &rep.per_url[k]);
        let rss_growth_kib = match (before.rss_kib, connected.rss_kib) {
            (Some(b), Some(c)) => Some(c as f64 - b as f64),
            _ => None,
        };
        let conns_open = url.map(|u| u.conns_open);
        let delivered = url.map(|u| u.delivered);
        let cpu = cpu_delta(mark, end, tck);
        rep.servers.push(ServerReport {
            pid,
            url: url.map(|u| u.url.clone()),
            before,
            connected,
            end,
            rss_growth_kib,
            conns_open,
            rss_per_conn_kib: match (rss_growth_kib, conns_open) {
                (Some(g), Some(n)) if n > 0 => Some(g / n as f64),
                _ => None,
            },
            cpu_publish_secs: cpu,
            delivered,
            cpu_us_per_delivery: match (cpu, delivered) {
                (Some(c), Some(d)) if d > 0 => Some(c * 1e6 / d as f64),
                _ => None,
            },
        });
    }
    rep.loadgen_cpu_publish_secs = loadgen_cpu;
    rep.loadgen_rss_kib = loadgen_rss;
    print_report(&rep);
    emit("RESULT", &rep)
}

fn print_report(r: &Report) {
    let kib = |s: &Option<ProcSample>| {
        s.and_then(|s| s.rss_kib).map_or_else(|| "-".into(), |v| format!("{:.1} MiB", v as f64 / 1024.0))
    };
    if r.per_url.len() > 1 {
        for u in &r.per_url {
            println!(
                "url {}: {} connections open, {} publishers, {} delivered",
                u.url, u.conns_open, u.publishers, u.delivered
            );
        }
    }
    let servers =
        if r.server_pids.len() > 1 { format!(" (sum of {} servers)", r.server_pids.len()) } else { String::new() };
    if r.server_before.is_some() {
        println!(
            "server RSS{servers}: before {}, connected+idle {}, end {}; per connection {} KiB",
            kib(&r.server_before),
            kib(&r.server_connected),
            kib(&r.server_end),
            r.server_rss_per_conn_kib.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
        );
    }
    println!(
        "publish: {} ok, {} failed, {} skipped of {} in {:.2} s = {:.1} ev/s (target {}); max behind schedule {:.1} ms; request p50 {} p99 {} ms",
        r.events_published_ok,
        r.events_publish_failed,
        r.events_skipped,
        r.events_planned,
        r.publish_secs,
        r.publish_achieved_rate,
        r.target_rate,
        r.publish_behind_max_ms,
        fmt_ms(r.publish_rtt.p50_ms),
        fmt_ms(r.publish_rtt.p99_ms),
    );
    for (e, n) in &r.publish_errors {
        println!("  publish error x{n}: {e}");
    }
    println!(
        "delivery: expected {}, delivered {} ({}/s over {} s), missing {}, unexpected {}, duplicates {}, out-of-order {}, resets {}, closed early {}",
        r.expected_deliveries,
        r.delivered,
        r.delivered_per_sec.map_or_else(|| "-".into(), |v| format!("{v:.0}")),
        r.delivery_span_secs.map_or_else(|| "-".into(), |v| format!("{v:.2}")),
        r.missing,
        r.unexpected,
        r.duplicates,
        r.out_of_order,
        r.resets,
        r.conns_closed_early,
    );
    if r.foreign + r.unparsed > 0 {
        println!("  events of topics not subscribed: {}, unparseable data: {}", r.foreign, r.unparsed);
    }
    for (e, n) in &r.stream_errors {
        println!("  stream error x{n}: {e}");
    }
    println!(
        "latency ms: p50 {} p90 {} p99 {} p99.9 {} max {} ({} samples)",
        fmt_ms(r.latency.p50_ms),
        fmt_ms(r.latency.p90_ms),
        fmt_ms(r.latency.p99_ms),
        fmt_ms(r.latency.p999_ms),
        fmt_ms(r.latency.max_ms),
        r.latency.count
    );
    if let Some(c) = r.server_cpu_publish_secs {
        println!(
            "server CPU{servers} (publish + drain): {:.2} s = {} µs per delivered event{}",
            c,
            r.server_cpu_us_per_delivery.map_or_else(|| "-".into(), |v| format!("{v:.2}")),
            if r.clk_tck_assumed { " (CLK_TCK assumed 100)" } else { "" }
        );
    }
    if r.servers.len() > 1 {
        let opt = |v: Option<f64>, d: usize| v.map_or_else(|| "-".into(), |v| format!("{v:.d$}"));
        for s in &r.servers {
            println!(
                "  server {}{}: RSS +{} MiB = {} KiB per connection ({} open); CPU {} s = {} µs per delivered event ({} delivered)",
                s.pid,
                s.url.as_ref().map_or_else(String::new, |u| format!(" ({u})")),
                opt(s.rss_growth_kib.map(|g| g / 1024.0), 1),
                opt(s.rss_per_conn_kib, 2),
                s.conns_open.map_or_else(|| "-".into(), |n| n.to_string()),
                opt(s.cpu_publish_secs, 2),
                opt(s.cpu_us_per_delivery, 2),
                s.delivered.map_or_else(|| "-".into(), |n| n.to_string()),
            );
        }
    }
    if let Some(c) = r.loadgen_cpu_publish_secs {
        println!(
            "load generator CPU (publish + drain): {:.2} s; RSS {}",
            c,
            r.loadgen_rss_kib.map_or_else(|| "-".into(), |v| format!("{:.1} MiB", v as f64 / 1024.0))
        );
    }
}

fn main() {
    // `cargo test --benches` runs bench binaries with no arguments and `cargo bench` with only
    // `--bench`: neither should load whatever server happens to listen on the default port.
    if std::env::args().skip(1).all(|a| a == "--bench") {
        eprintln!(
            "herald load generator: nothing to do without arguments; \
             see `cargo bench --bench load -- --help`"
        );
        return;
    }
    let args = Args::parse();
    if args.self_test {
        if let Err(e) = self_test() {
            eprintln!("load: {e}");
            std::process::exit(1);
        }
        return;
    }
    let mut builder = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 1 {
                b.worker_threads(n);
            }
            b
        }
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("load: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let res = rt.block_on(async move {
        match args.child_index {
            Some(k) => child_main(args, k).await,
            None => parent_main(args).await,
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    if let Err(e) = res {
        eprintln!("load: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------------
// Self-test of the parsers (`--self-test`): no server needed, so CI can run it.

fn ensure(ok: bool, what: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("self-test failed: {what}"))
    }
}

/// Feeds `pieces` to one connection's parser as if they were successive reads.
fn feed(sh: &Shared, chunked: bool, pieces: &[&[u8]], topics: u64) -> Result<(), String> {
    feed_as(sh, chunked, pieces, topics, false)
}

fn feed_as(sh: &Shared, chunked: bool, pieces: &[&[u8]], topics: u64, nchan_ids: bool) -> Result<(), String> {
    let ctx = Ctx { sh, topics, per_conn: 1, first: 0, url: 0, nchan_ids };
    let chunk = if chunked { Chunk::Size } else { Chunk::Identity };
    let mut c = SseConn { f: Framing { buf: Vec::new(), dec: 0, chunk }, st: SseState::default() };
    for p in pieces {
        c.f.buf.extend_from_slice(p);
        c.process(&ctx, false)?;
    }
    Ok(())
}

fn self_test() -> Result<(), String> {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let chunk = |s: &str| format!("{:x}\r\n{s}\r\n", s.len()).into_bytes();
    let now = unix_nanos();
    let mut body = Vec::new();
    body.extend(chunk("retry: 3000\n: hi\n\n"));
    body.extend(chunk(&format!("id: 1-0\ndata: 0 {now} xxx\n\n")));
    body.extend(chunk(&format!("id: 1-1\r\ndata: 2 {now} xx\r\n\r\n")));
    body.extend(chunk(&format!("id: 1-1\ndata: 2 {now}\n\n"))); // duplicate
    body.extend(chunk(&format!("id: 1-0\ndata: 4 {now}\n\n"))); // out of order
    body.extend(chunk(&format!("id: 2-0\ndata: 1 {now}\n\n"))); // a topic not subscribed
    body.extend(chunk("event: herald.reset\ndata: {}\n\n"));
    body.extend(chunk(&format!("id: 10-0\ndata: w5 {now}\n\n"))); // warm-up
    for step in [1usize, 2, 3, 7, 1000] {
        let sh = Shared::new(2, 1);
        let pieces: Vec<&[u8]> = body.chunks(step).collect();
        feed(&sh, true, &pieces, 2)?;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let counts =
            [g(&sh.delivered), g(&sh.duplicates), g(&sh.out_of_order), g(&sh.foreign), g(&sh.resets), g(&sh.warmup)];
        ensure(counts == [3, 1, 1, 1, 1, 1], &format!("chunked SSE in {step}-byte reads: {counts:?}"))?;
    }
    // Nchan's EventSource framing: close-delimited body, `: hi` first, ids that do not order across
    // multiplexed channels (order is checked on the seq in the data for those).
    let mut nchan = Vec::new();
    nchan.extend(b": hi\n\n");
    nchan.extend(format!("id: 1795843508:-,[0]\ndata: w7 {now} xx\n\n").bytes()); // warm-up
    nchan.extend(format!("id: 1795843508:[0],0\ndata: 0 {now} xx\n\n").bytes());
    nchan.extend(format!("id: 1795843508:0,[1]\ndata: 2 {now}\n\n").bytes());
    nchan.extend(format!("id: 1795843508:0,[1]\ndata: 2 {now}\n\n").bytes()); // duplicate
    nchan.extend(format!("id: 1795843509:0,[0]\ndata: 4 {now}\n\n").bytes());
    nchan.extend(format!("id: 1795843509:[1],0\ndata: 1 {now}\n\n").bytes()); // foreign, out of order
    nchan.extend(format!("id: 1795843509:[0],0\ndata: 6 {now}\n\n").bytes());
    for step in [1usize, 5, 1000] {
        let sh = Shared::new(2, 1);
        let pieces: Vec<&[u8]> = nchan.chunks(step).collect();
        feed_as(&sh, false, &pieces, 2, true)?;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let counts = [g(&sh.delivered), g(&sh.duplicates), g(&sh.out_of_order), g(&sh.foreign), g(&sh.warmup)];
        ensure(counts == [4, 1, 1, 1, 1], &format!("Nchan SSE in {step}-byte reads: {counts:?}"))?;
    }
    // One channel: plain `time:index` ids give the order (a publisher race that swaps seqs is not
    // the server's doing).
    let sh = Shared::new(1, 1);
    let one = format!(
        ": hi\n\nid: 1795843508:9\ndata: 1 {now}\n\nid: 1795843508:10\ndata: 0 {now}\n\n\
         id: 1795843509:0\ndata: 2 {now}\n\nid: 1795843508:11\ndata: 3 {now}\n\n"
    );
    feed_as(&sh, false, &[one.as_bytes()], 1, true)?;
    let counts = [sh.delivered.load(Ordering::Relaxed), sh.out_of_order.load(Ordering::Relaxed)];
    ensure(counts == [4, 1], &format!("Nchan single-channel ids: {counts:?}"))?;
    let sh = Shared::new(1, 1);
    feed(&sh, false, &[b"data: 0 1\n\ndata: 1 1\n", b"\n"], 1)?;
    ensure(sh.delivered.load(Ordering::Relaxed) == 2, "close-delimited body")?;
    ensure(feed(&Shared::new(1, 1), true, &[b"0\r\n\r\n"], 1).is_err(), "last chunk ends the stream")?;
    ensure(id_cmp(b"1700000000000-12", b"1700000000000-9") == Greater, "id order 1")?;
    ensure(id_cmp(b"9", b"10") == Less, "id order 2")?;
    ensure(id_cmp(b"5-0", b"5-0") == Equal, "id order 3")?;
    let mut seen = SeenSet::default();
    ensure((0..1000).rev().all(|i| seen.insert(i)), "seen set inserts")?;
    ensure(!seen.insert(5) && seen.words.len() <= 1, "seen set compacts")?;
    ensure(seen.insert(5000) && !seen.insert(5000), "seen set duplicates")?;
    ensure(parse_target("http://127.0.0.1:8080").is_ok(), "target 1")?;
    ensure(parse_target("http://localhost:1/x/").is_ok_and(|t| t.base == "/x"), "target 2")?;
    ensure(parse_target("http://[::1]:80").is_ok(), "target 3")?;
    ensure(parse_target("http://10.0.0.1:80").is_err(), "non-loopback target refused")?;
    ensure(parse_target("http://example.com").is_err(), "host names refused")?;
    let ts = parse_targets("http://127.0.0.1:1, http://127.0.0.1:2/b")?;
    ensure(ts.len() == 2 && ts[1].addr.port() == 2 && ts[1].base == "/b", "URL list")?;
    ensure(parse_targets("http://127.0.0.1:1,http://10.0.0.1:2").is_err(), "non-loopback URL in a list refused")?;
    ensure(parse_targets(" , ").is_err(), "empty URL list refused")?;
    ensure(parse_sources("127.0.0.2", &ts).is_ok(), "sources for a URL list")?;
    ensure(parse_sources("::1", &ts).is_err(), "source family checked against every URL")?;
    ensure(parse_pids(Some("12, 34"))? == [12, 34] && parse_pids(None)?.is_empty(), "PID list")?;
    ensure(parse_pids(Some("12,x")).is_err(), "bad PID refused")?;
    let summed = sum_samples(&[
        ProcSample { rss_kib: Some(10), cpu_ticks: Some(1) },
        ProcSample { rss_kib: Some(5), cpu_ticks: None },
    ]);
    ensure(summed.is_some_and(|s| s.rss_kib == Some(15) && s.cpu_ticks.is_none()), "summed samples")?;
    // Deliveries are counted per URL of the receiving connection.
    let sh = Shared::new(1, 2);
    let ctx = Ctx { sh: &sh, topics: 1, per_conn: 1, first: 0, url: 1, nchan_ids: false };
    let mut c = SseConn { f: Framing { buf: Vec::new(), dec: 0, chunk: Chunk::Identity }, st: SseState::default() };
    c.f.buf.extend_from_slice(format!("id: 1\ndata: 0 {now}\n\nid: 2\ndata: 1 {now}\n\n").as_bytes());
    c.process(&ctx, false)?;
    let by_url: Vec<u64> = sh.delivered_by_url.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    ensure(by_url == [0, 2], &format!("deliveries per URL: {by_url:?}"))?;
    let mut h = DenseHist::new();
    h.add_sparse(&[(0, 50), (99, 50)], 995_000);
    let l = h.summary();
    ensure(l.p50_ms == Some(0.01) && l.p99_ms == Some(0.995), "percentiles")?;
    println!("self-test passed");
    Ok(())
}
