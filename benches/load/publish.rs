//! Publishing: paced publishers over keep-alive connections, and the health probe.

use super::*;

pub(crate) struct PubCfg {
    pub(crate) target: Arc<ClientCfg>,
    pub(crate) topics: usize,
    pub(crate) payload: usize,
    pub(crate) rate: f64,
    pub(crate) publishers: usize,
    pub(crate) req_timeout: Duration,
}

pub(crate) struct PubShared {
    pub(crate) ok: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) per_topic_ok: Vec<AtomicU64>,
    pub(crate) behind_max_ns: AtomicU64,
    pub(crate) last_done_ns: AtomicU64,
    pub(crate) rtt: Hist,
    pub(crate) errors: ErrCounts,
}

/// Outcome of one publishing phase.
pub(crate) struct PubOutcome {
    pub(crate) total: u64,
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) skipped: u64,
    pub(crate) secs: f64,
    pub(crate) start_unix_ns: u64,
    pub(crate) behind_max_ms: f64,
    pub(crate) per_topic_ok: Vec<u64>,
    pub(crate) rtt: Latency,
    pub(crate) errors: BTreeMap<String, u64>,
}

pub(crate) async fn connect_pub(cfg: &PubCfg, target: &Target) -> Result<TcpStream, String> {
    let sock = if target.addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
        .map_err(|e| format!("socket: {e}"))?;
    sock.bind(SocketAddr::new(cfg.target.sources[0], 0)).map_err(|e| format!("bind: {e}"))?;
    let s = sock.connect(target.addr).await.map_err(|e| format!("publish connect: {e}"))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// Sends one request and reads the whole response; returns the status and whether the
/// connection can be reused.
pub(crate) async fn roundtrip(s: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> Result<(u16, bool), String> {
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
pub(crate) struct PubRun {
    pub(crate) cfg: Arc<PubCfg>,
    /// "w" for warm-up events, "" for measured ones.
    pub(crate) prefix: &'static str,
    pub(crate) total: u64,
    /// Next event number to send; each publisher takes the next one when it is free.
    pub(crate) next: AtomicU64,
    pub(crate) start: tokio::time::Instant,
    pub(crate) deadline: tokio::time::Instant,
    pub(crate) sh: PubShared,
    pub(crate) padding: String,
}

/// Publisher `j` sends every event it takes to URL `j % n`.
pub(crate) async fn publisher_loop(run: Arc<PubRun>, j: usize) {
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

pub(crate) async fn publish_phase(cfg: Arc<PubCfg>, prefix: &'static str, secs_: f64) -> PubOutcome {
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
pub(crate) async fn probe(target: &Target) -> Result<u16, String> {
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

/// Publishes `rate` events/s for `secs_` seconds to `probe/0`, a topic no connection subscribes to, one
/// request at a time over one keep-alive connection to the first URL (`--probe-rate`); returns the round
/// trips of those that succeeded.
pub(crate) async fn probe_phase(cfg: Arc<PubCfg>, rate: f64, secs_: f64) -> Latency {
    let target = &cfg.target.targets[0];
    let base = &target.base;
    let rtt = Hist::new();
    let start = tokio::time::Instant::now();
    let total = (rate * secs_).round().max(0.0) as u64;
    let deadline = start + secs(secs_ * 1.2 + 1.0);
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(1024);
    for k in 0..total {
        let due = start + Duration::from_secs_f64(k as f64 / rate);
        if due > deadline {
            break;
        }
        sleep_until(due).await;
        if conn.is_none() {
            conn = timeout(cfg.req_timeout, connect_pub(&cfg, target)).await.ok().and_then(Result::ok);
        }
        let Some(s) = conn.as_mut() else { continue };
        let (path, ctype, body) = match cfg.target.kind {
            TargetKind::Herald => {
                (format!("{base}/publish"), "application/json", format!(r#"{{"topic":"probe/0","data":"probe {k}"}}"#))
            }
            TargetKind::Nchan => (format!("{base}/pub/probe/0"), "text/plain", format!("probe {k}")),
        };
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
            target.host,
            body.len()
        );
        let t0 = Instant::now();
        match timeout(cfg.req_timeout, roundtrip(s, req.as_bytes(), &mut buf)).await {
            Ok(Ok((status, keep))) => {
                if (200..300).contains(&status) {
                    rtt.record(t0.elapsed().as_nanos() as u64);
                }
                if !keep {
                    conn = None;
                }
            }
            _ => conn = None,
        }
    }
    let mut dense = DenseHist::new();
    dense.add_sparse(&rtt.sparse(), rtt.max_ns.load(Ordering::SeqCst));
    dense.summary()
}
