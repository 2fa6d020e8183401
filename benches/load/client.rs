//! SSE clients: one task per connection, parsing the stream in place and counting what arrives.

use super::*;

/// Counters shared by all connections of one process.
pub(crate) struct Shared {
    pub(crate) ready: AtomicUsize,
    pub(crate) open: AtomicUsize,
    pub(crate) failed: AtomicUsize,
    pub(crate) closed_early: AtomicUsize,
    pub(crate) delivered: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) out_of_order: AtomicU64,
    pub(crate) resets: AtomicU64,
    pub(crate) warmup: AtomicU64,
    pub(crate) foreign: AtomicU64,
    pub(crate) unparsed: AtomicU64,
    pub(crate) last_delivery_ns: AtomicU64,
    pub(crate) subs: Vec<AtomicU64>,
    /// Open connections per URL (index into `ClientCfg::targets`).
    pub(crate) open_by_url: Vec<AtomicU64>,
    /// Delivered (measured, unique) events per URL of the receiving connection.
    pub(crate) delivered_by_url: Vec<AtomicU64>,
    /// End-to-end latency of measured events.
    pub(crate) hist: Hist,
    /// Time from starting a connection attempt to its response head (successful ones).
    pub(crate) connect_hist: Hist,
    pub(crate) errors: ErrCounts,
}

impl Shared {
    pub(crate) fn new(topics: usize, urls: usize) -> Self {
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

pub(crate) struct ClientCfg {
    pub(crate) kind: TargetKind,
    /// The servers (nodes): connection i goes to `targets[i % n]`, publisher j to `targets[j % n]`.
    pub(crate) targets: Vec<Target>,
    pub(crate) sources: Vec<IpAddr>,
    pub(crate) topics: usize,
    pub(crate) per_conn: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) read_buf: usize,
    pub(crate) graceful_close: bool,
}

impl ClientCfg {
    pub(crate) fn first_topic(&self, i: usize) -> usize {
        (i * self.per_conn) % self.topics
    }
    /// Index of the URL that connection (or publisher) `i` uses: round-robin.
    pub(crate) fn url_of(&self, i: usize) -> usize {
        i % self.targets.len()
    }
}

/// Set of local event indexes already received: everything below `base` plus a bitmap window.
/// Events arrive nearly in order, so the window stays a word or two.
#[derive(Default)]
pub(crate) struct SeenSet {
    pub(crate) base: u64,
    pub(crate) words: VecDeque<u64>,
}

impl SeenSet {
    /// Returns false when `i` was already there.
    pub(crate) fn insert(&mut self, i: u64) -> bool {
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
pub(crate) struct Ctx<'a> {
    pub(crate) sh: &'a Shared,
    pub(crate) topics: u64,
    pub(crate) per_conn: u64,
    pub(crate) first: u64,
    /// Index of the connection's URL (for per-URL delivery counts).
    pub(crate) url: usize,
    /// Nchan ids: a multiplexed id (`1795843508:[0],-`) does not order across channels, so events
    /// with one (or with no id) are ordered by the seq in their data instead.
    pub(crate) nchan_ids: bool,
}

/// SSE field state of one connection.
#[derive(Default)]
pub(crate) struct SseState {
    pub(crate) id: Vec<u8>,
    pub(crate) has_id: bool,
    pub(crate) data: Vec<u8>,
    pub(crate) has_data: bool,
    pub(crate) is_reset: bool,
    pub(crate) last_id: Vec<u8>,
    /// Highest (measured?, seq) seen, when ordering by seq.
    pub(crate) last_seq: Option<(bool, u64)>,
    pub(crate) seen: SeenSet,
}

impl SseState {
    pub(crate) fn line(&mut self, line: &[u8], ctx: &Ctx<'_>) {
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

    pub(crate) fn dispatch(&mut self, ctx: &Ctx<'_>) {
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
pub(crate) struct SseConn {
    pub(crate) f: Framing,
    pub(crate) st: SseState,
}

impl SseConn {
    /// Decodes what is buffered and handles every complete line. Errors end the connection.
    pub(crate) fn process(&mut self, ctx: &Ctx<'_>, eof: bool) -> Result<(), String> {
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
pub(crate) async fn open_stream(cfg: &ClientCfg, i: usize) -> Result<(TcpStream, Vec<u8>, bool), String> {
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

pub(crate) async fn run_conn(i: usize, cfg: Arc<ClientCfg>, sh: Arc<Shared>, sem: Arc<Semaphore>) {
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
