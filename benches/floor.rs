//! # The floor: the least a server can do to fan events out over SSE
//!
//! A reference for `benches/compare.sh`, driven by the same load generator as Herald (it speaks the part
//! of Herald's protocol the generator uses): `GET /events?topics=a,b` gets an event-stream head and is
//! then only a socket in a list per topic (close-delimited body, no preamble, no heartbeats, no history,
//! no ids beyond a counter); `POST /publish` with a JSON `{"topic": …, "data": …}` writes
//! `id: N\ndata: …\n\n` to every subscriber of the topic with one non-blocking `write` each, right there,
//! and answers `200 {"id":"N"}`; `GET /healthz` answers 200. A write that would block or is partial drops
//! that subscriber (counted on stderr): nothing is queued. One thread (a current-thread runtime), like a
//! server pinned to one core.
//!
//! ```text
//! cargo bench --bench floor --no-run
//! taskset -c 0 target/release/deps/floor-… --listen 127.0.0.1:18170 &
//! taskset -c 1 cargo bench --bench load -- --url http://127.0.0.1:18170 --server-pid $! --threads 1 \
//!     --conns 10000 --topics 1 --rate 10 --duration 10
//! ```
//!
//! With no arguments (as `cargo test --benches` and a plain `cargo bench` run it) it does nothing. It
//! listens on loopback only.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Subscribers per topic, and the last id.
#[derive(Default)]
struct Floor {
    topics: HashMap<String, Vec<std::net::TcpStream>>,
    last_id: u64,
    dropped: u64,
}

/// A request head read from a connection: the request line, `Content-Length`, and what follows the head.
struct Head {
    line: String,
    length: usize,
    rest: Vec<u8>,
}

async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Head> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let rest = buf[end + 4..].to_vec();
            buf.clear();
            let mut lines = head.split("\r\n");
            let line = lines.next()?.to_owned();
            let length = lines
                .filter_map(|l| l.split_once(':'))
                .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            return Some(Head { line, length, rest });
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The value of `"key":"…"` in a JSON object whose strings have no escapes (the load generator's).
fn json_str<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    let start = body.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let len = body[start..].find('"')?;
    Some(&body[start..start + len])
}

async fn serve(floor: Rc<RefCell<Floor>>, mut s: TcpStream) {
    let mut buf = Vec::with_capacity(1024);
    while let Some(head) = read_head(&mut s, &mut buf).await {
        let mut body = head.rest;
        while body.len() < head.length {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        buf.extend_from_slice(&body[head.length..]);
        let mut parts = head.line.split(' ');
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        match (method, path) {
            ("GET", "/events") => {
                let topics = query
                    .split('&')
                    .filter_map(|kv| kv.strip_prefix("topics="))
                    .flat_map(|v| v.split(','))
                    .map(|t| t.replace("%2F", "/").replace("%2f", "/"))
                    .collect::<Vec<_>>();
                let ok = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
                           connection: close\r\n\r\n";
                if s.write_all(ok).await.is_err() {
                    return;
                }
                let Ok(std) = s.into_std() else { return };
                let mut floor = floor.borrow_mut();
                for topic in topics {
                    if let Ok(clone) = std.try_clone() {
                        floor.topics.entry(topic).or_default().push(clone);
                    }
                }
                return;
            }
            ("GET", "/healthz") => {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n").await;
                return;
            }
            ("POST", "/publish") => {
                let body = String::from_utf8_lossy(&body[..head.length]);
                let (Some(topic), Some(data)) = (json_str(&body, "topic"), json_str(&body, "data")) else {
                    let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").await;
                    continue;
                };
                let id = publish(&mut floor.borrow_mut(), topic, data);
                let answer = format!("{{\"id\":\"{id}\"}}");
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                    answer.len()
                );
                if s.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
            _ => {
                let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
                return;
            }
        }
    }
}

/// One non-blocking write of the frame to each subscriber of `topic`; nothing else.
fn publish(floor: &mut Floor, topic: &str, data: &str) -> u64 {
    floor.last_id += 1;
    let id = floor.last_id;
    let frame = format!("id: {id}\ndata: {data}\n\n");
    let mut dropped = 0;
    if let Some(subscribers) = floor.topics.get_mut(topic) {
        subscribers.retain(|mut s| {
            let kept = matches!(s.write(frame.as_bytes()), Ok(n) if n == frame.len());
            dropped += u64::from(!kept);
            kept
        });
    }
    if dropped > 0 {
        floor.dropped += dropped;
        eprintln!("floor: dropped {dropped} subscribers whose socket was full or gone ({} in all)", floor.dropped);
    }
    id
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if args.is_empty() {
        eprintln!("floor: nothing to do without arguments; `--listen 127.0.0.1:PORT` serves");
        return;
    }
    let addr: SocketAddr = match args.as_slice() {
        [flag, addr] if flag == "--listen" => match addr.parse() {
            Ok(a) => a,
            Err(e) => return eprintln!("floor: bad address {addr}: {e}"),
        },
        _ => return eprintln!("floor: usage: floor --listen 127.0.0.1:PORT"),
    };
    if !addr.ip().is_loopback() {
        return eprintln!("floor: loopback addresses only");
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return eprintln!("floor: runtime: {e}"),
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let socket = match tokio::net::TcpSocket::new_v4() {
            Ok(s) => s,
            Err(e) => return eprintln!("floor: socket: {e}"),
        };
        let _ = socket.set_reuseaddr(true);
        let listener: TcpListener = match socket.bind(addr).and_then(|()| socket.listen(4096)) {
            Ok(l) => l,
            Err(e) => return eprintln!("floor: listen on {addr}: {e}"),
        };
        eprintln!("floor listening on {addr}");
        let floor = Rc::new(RefCell::new(Floor::default()));
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    let _ = s.set_nodelay(true);
                    tokio::task::spawn_local(serve(floor.clone(), s));
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
    });
}
