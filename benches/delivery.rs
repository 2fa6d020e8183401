//! # Instructions per delivery
//!
//! A repeatable measure of Herald's own (user-space) work per delivered event: starts the release binary
//! under `valgrind --tool=callgrind`, opens `--conns` subscriptions to one topic, publishes `--events`
//! events in lock step (the next event only once every subscriber has the previous one, so that each
//! delivery is one write: the 10 events/s regime; `--burst N` publishes N at a time, the batching regime),
//! stops the server with SIGTERM and reads callgrind's instruction count. It does this twice, with no
//! events and with `--events`, and reports the difference per delivery, so that start-up, connecting and
//! shutting down cancel out. Callgrind counts instructions, not time, so the figure barely moves between
//! runs or with the load on the machine (the kernel's work, the `send` itself, is not counted).
//!
//! ```text
//! cargo build --release
//! cargo bench --bench delivery -- --conns 1000 --events 200            # target/release/herald
//! cargo bench --bench delivery -- --herald /tmp/herald-old --conns 1000 --events 200
//! cargo bench --bench delivery -- --no-valgrind --conns 1000 --events 200   # just run it (a smoke test)
//! ```
//!
//! With no arguments (as `cargo test --benches` and a plain `cargo bench` run it) it does nothing. Only
//! loopback; every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

/// Herald's instructions per delivery, counted by callgrind.
#[derive(Parser, Debug)]
#[command(name = "delivery")]
struct Args {
    /// The herald binary to measure.
    #[arg(long, default_value = "target/release/herald")]
    herald: String,
    /// Subscriptions, all to one topic.
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Events published in the measured run.
    #[arg(long, default_value_t = 200)]
    events: usize,
    /// Events published at once before waiting for every subscriber to have them.
    #[arg(long, default_value_t = 1)]
    burst: usize,
    /// Run the server without valgrind (no instruction count; a smoke test of the harness).
    #[arg(long)]
    no_valgrind: bool,
    /// Keep the measured run's callgrind output (its path is printed), for `callgrind_annotate`.
    #[arg(long)]
    keep: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Longest wait for anything (the server runs ~50× slower under valgrind).
const PATIENCE: Duration = Duration::from_secs(120);

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + PATIENCE;
    while !ok() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// One HTTP/1.1 request on a keep-alive connection; returns the status.
fn request(stream: &mut BufReader<TcpStream>, req: &str) -> Result<u16, String> {
    stream.get_mut().write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut line = String::new();
    stream.read_line(&mut line).map_err(|e| e.to_string())?;
    let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or(format!("bad status line {line:?}"))?;
    let mut length = 0;
    loop {
        line.clear();
        stream.read_line(&mut line).map_err(|e| e.to_string())?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().map_err(|_| "bad content-length")?;
            }
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok(status)
}

/// Subscribers on one reader thread: counts the `data:` lines every connection receives.
fn subscribe(addr: SocketAddr, conns: usize, received: Arc<AtomicUsize>) -> Result<(), String> {
    let mut streams = Vec::with_capacity(conns);
    for _ in 0..conns {
        let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        s.write_all(b"GET /events?topics=bench HTTP/1.1\r\nHost: bench\r\n\r\n").map_err(|e| e.to_string())?;
        streams.push(s);
    }
    // Read each stream's head (and preamble) so that every subscription is live before publishing.
    for s in &mut streams {
        s.set_read_timeout(Some(PATIENCE)).map_err(|e| e.to_string())?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b": herald\n\n") {
            s.read_exact(&mut byte).map_err(|e| format!("reading a stream's head: {e}"))?;
            head.push(byte[0]);
        }
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
    }
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let deadline = Instant::now() + 4 * PATIENCE;
        while Instant::now() < deadline {
            let mut idle = true;
            for s in &mut streams {
                match s.read(&mut buf) {
                    Ok(0) => {}
                    Ok(n) => {
                        idle = false;
                        let events = buf[..n].windows(6).filter(|w| w == b"data: ").count();
                        received.fetch_add(events, Ordering::Relaxed);
                    }
                    Err(_) => {}
                }
            }
            if idle {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    });
    Ok(())
}

/// Runs the server once with `events` events; returns callgrind's instruction count (0 without valgrind)
/// and the deliveries seen.
fn run(args: &Args, events: usize) -> Result<(u64, usize), String> {
    let port = free_port()?;
    let out = std::env::temp_dir().join(format!("herald-delivery-{port}.callgrind"));
    let listen = format!("127.0.0.1:{port}");
    let herald_args = ["--listen", &listen, "--history-size", "16", "--queue-size", "4096"];
    let mut command = if args.no_valgrind {
        Command::new(&args.herald)
    } else {
        let mut c = Command::new("valgrind");
        c.args(["--tool=callgrind", "--quiet"]).arg(format!("--callgrind-out-file={}", out.display()));
        c.arg(&args.herald);
        c
    };
    let mut server: Child = command
        .args(herald_args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", args.herald))?;
    let result = (|| {
        let addr: SocketAddr = listen.parse().map_err(|_| "bad address")?;
        wait_until("the server to listen", || TcpStream::connect(addr).is_ok())?;
        let received = Arc::new(AtomicUsize::new(0));
        subscribe(addr, args.conns, received.clone())?;
        let mut publisher = BufReader::new(TcpStream::connect(addr).map_err(|e| e.to_string())?);
        let mut sent = 0;
        while sent < events {
            let burst = args.burst.max(1).min(events - sent);
            for _ in 0..burst {
                let body = format!("topic=bench&data=event+{sent:06}+xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
                let req = format!(
                    "POST /publish HTTP/1.1\r\nHost: bench\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let status = request(&mut publisher, &req)?;
                if status != 200 {
                    return Err(format!("publish answered {status}"));
                }
                sent += 1;
            }
            let want = sent * args.conns;
            wait_until("every subscriber to get the events", || received.load(Ordering::Relaxed) >= want)?;
        }
        Ok(received.load(Ordering::Relaxed))
    })();
    let _ = Command::new("kill").arg("-TERM").arg(server.id().to_string()).status();
    let deadline = Instant::now() + PATIENCE;
    while server.try_wait().map_err(|e| e.to_string())?.is_none() {
        if Instant::now() > deadline {
            let _ = server.kill();
            return Err("the server did not stop".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let delivered = result?;
    if args.no_valgrind {
        return Ok((0, delivered));
    }
    let text = std::fs::read_to_string(&out).map_err(|e| format!("reading {}: {e}", out.display()))?;
    if args.keep && events > 0 {
        println!("callgrind output: {}", out.display());
    } else {
        let _ = std::fs::remove_file(&out);
    }
    let total = text
        .lines()
        .find_map(|l| l.strip_prefix("summary: ").or_else(|| l.strip_prefix("totals: ")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or("no instruction total in callgrind's output")?;
    Ok((total, delivered))
}

fn main() {
    if std::env::args().skip(1).all(|a| a == "--bench") {
        eprintln!("delivery: nothing to do without arguments; see `cargo bench --bench delivery -- --help`");
        return;
    }
    let args = Args::parse();
    let measure = || -> Result<(), String> {
        let (base, _) = run(&args, 0)?;
        let (total, delivered) = run(&args, args.events)?;
        let expected = args.events * args.conns;
        if delivered != expected {
            return Err(format!("delivered {delivered} of {expected}"));
        }
        let per = (total.saturating_sub(base)) as f64 / expected as f64;
        println!(
            "herald {} conns {} events {} burst {}: {} instructions without events, {} with; {:.0} per delivery",
            args.herald, args.conns, args.events, args.burst, base, total, per
        );
        Ok(())
    };
    if let Err(e) = measure() {
        eprintln!("delivery: {e}");
        std::process::exit(1);
    }
}
