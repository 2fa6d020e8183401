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
//!    With `--probe-rate R`, R events/s also go, one request at a time over one more connection, to
//!    `probe/0`, a topic nobody subscribes to; their round trips are reported apart (`probe_rtt`): what a
//!    publisher of a quiet topic sees while the fan-out runs.
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

mod client;
mod hist;
mod http;
mod procs;
mod publish;
mod report;
mod selftest;
mod target;
mod util;

use client::*;
use hist::*;
use http::*;
use procs::*;
use publish::*;
use report::*;
use selftest::*;
use target::*;
use util::*;

/// Width of one latency histogram bucket.
pub(crate) const BUCKET_NS: u64 = 10_000;
/// Buckets up to 10 s; one more bucket holds everything slower.
pub(crate) const HIST_BUCKETS: usize = 1_000_000;
/// A response head larger than this is refused.
pub(crate) const MAX_HEAD: usize = 16 * 1024;
/// One SSE line (or unparsed chunk framing) larger than this ends the connection.
pub(crate) const MAX_LINE: usize = 4 << 20;
/// Bytes of an event's first `data:` line that are kept (seq and timestamp are at its start).
pub(crate) const DATA_PREFIX: usize = 64;
/// Ids longer than this are truncated for ordering checks (API.md: ids are at most 64 bytes).
pub(crate) const ID_MAX: usize = 128;
/// Bound on the per-connection "seen" bitmap window (64 events per word): 512 KiB per connection.
pub(crate) const SEEN_MAX_WORDS: usize = 1 << 16;
/// Distinct error messages kept; later new ones are counted under "other".
pub(crate) const ERROR_KINDS_MAX: usize = 64;
/// Hard cap on the time a child process lives if its parent never says STOP.
pub(crate) const CHILD_MAX_SECS_DEFAULT: f64 = 3600.0;

/// Which server protocol to speak.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TargetKind {
    /// Herald: `GET /events?topics=…`, `POST /publish` (JSON).
    Herald,
    /// Nchan (nginx): `GET /sub/{topic}` (EventSource), `POST /pub/{topic}` (raw body).
    Nchan,
}

impl TargetKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            TargetKind::Herald => "herald",
            TargetKind::Nchan => "nchan",
        }
    }
}

/// Herald load generator: SSE subscribers + paced publishers (loopback only).
#[derive(Parser, Debug, Clone)]
#[command(name = "load", version)]
pub(crate) struct Args {
    /// Base URL of the server, or a comma-separated list of base URLs (several nodes): connection i goes
    /// to URL i % n and publisher j to URL j % n. Only loopback addresses are accepted.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub(crate) url: String,
    /// Server protocol: herald, or nchan (nginx's pub/sub module, for comparisons).
    #[arg(long, value_enum, default_value_t = TargetKind::Herald)]
    pub(crate) target: TargetKind,
    /// Number of SSE connections.
    #[arg(long, default_value_t = 1000)]
    pub(crate) conns: usize,
    /// Number of topics, named load/0 .. load/T-1.
    #[arg(long, default_value_t = 10)]
    pub(crate) topics: usize,
    /// Topics per connection: connection i subscribes to load/((i*K + j) % T) for j < K.
    #[arg(long, default_value_t = 1)]
    pub(crate) topics_per_conn: usize,
    /// Comma-separated loopback addresses to bind client sockets to, round-robin.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) sources: String,
    /// Events per second, in total, published round-robin over the topics.
    #[arg(long, default_value_t = 100.0)]
    pub(crate) rate: f64,
    /// Seconds of measured publishing (after all connections are open).
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Seconds of publishing before the measured phase; those events are not counted.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) warmup: f64,
    /// Concurrent keep-alive HTTP connections used for POST /publish.
    #[arg(long, default_value_t = 4)]
    pub(crate) publishers: usize,
    /// Also publish this many events/s, during the measured phase, to a topic no connection subscribes
    /// to (`probe/0`), one request at a time over one more keep-alive connection, and report their
    /// round trips apart (`probe_rtt`): what a publisher of a quiet topic sees while the fan-out runs.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) probe_rate: f64,
    /// Size in bytes of each event's data (at least the seq and timestamp are sent).
    #[arg(long, default_value_t = 64)]
    pub(crate) payload: usize,
    /// PID of the server, to sample its RSS and CPU time from /proc; a comma-separated list for several
    /// servers (figures are summed; with as many PIDs as URLs, PID k is taken as the server of URL k).
    #[arg(long)]
    pub(crate) server_pid: Option<String>,
    /// Seconds to wait after publishing for events still in flight.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) drain: f64,
    /// Seconds to wait, connected and idle, before sampling the server's RSS.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) idle: f64,
    /// Connection attempts in flight at once (in total: split among the --procs children).
    #[arg(long, default_value_t = 200)]
    pub(crate) connect_concurrency: usize,
    /// Seconds allowed for one connection to get its response head.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) connect_timeout: f64,
    /// Seconds allowed for one publish request.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) publish_timeout: f64,
    /// Initial read buffer per connection, in bytes (it grows for large events and shrinks back).
    #[arg(long, default_value_t = 2048)]
    pub(crate) read_buf: usize,
    /// Close subscriptions with FIN at the end. By default they are reset (SO_LINGER 0), so that
    /// runs in a row do not leave their ephemeral ports in TIME_WAIT for a minute.
    #[arg(long)]
    pub(crate) graceful_close: bool,
    /// Runtime threads per process: 1 runs everything on one thread (cheapest per event),
    /// 0 uses one per core.
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: usize,
    /// Child processes that hold the connections (1: everything in this process).
    #[arg(long, default_value_t = 1)]
    pub(crate) procs: usize,
    /// Check the HTTP/SSE parsers and exit (no server needed).
    #[arg(long)]
    pub(crate) self_test: bool,
    /// Internal: run as child number k of --procs.
    #[arg(long, hide = true)]
    pub(crate) child_index: Option<usize>,
    /// Internal: a child exits after this many seconds whatever happens.
    #[arg(long, hide = true)]
    pub(crate) child_max_secs: Option<f64>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    pub(crate) bench: bool,
}

// ---------------------------------------------------------------------------------------------------
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
