//! Groups of connections, and the child processes (`--procs`) that hold them.

use super::*;

/// Figures of one process's connections once they are all open (or failed).
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub(crate) struct GroupReady {
    pub(crate) requested: u64,
    pub(crate) open: u64,
    pub(crate) failed: u64,
    pub(crate) connect_secs: f64,
    pub(crate) subs: Vec<u64>,
    /// Open connections per URL.
    #[serde(default)]
    pub(crate) open_by_url: Vec<u64>,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) connect_hist: Vec<(u32, u64)>,
    pub(crate) connect_max_ns: u64,
}

/// Final figures of one process's connections.
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub(crate) struct GroupResult {
    pub(crate) requested: u64,
    pub(crate) open: u64,
    pub(crate) failed: u64,
    pub(crate) closed_early: u64,
    pub(crate) delivered: u64,
    pub(crate) duplicates: u64,
    pub(crate) out_of_order: u64,
    pub(crate) resets: u64,
    pub(crate) warmup: u64,
    pub(crate) foreign: u64,
    pub(crate) unparsed: u64,
    pub(crate) last_delivery_unix_ns: u64,
    /// Delivered events per URL of the receiving connection.
    #[serde(default)]
    pub(crate) delivered_by_url: Vec<u64>,
    pub(crate) hist: Vec<(u32, u64)>,
    pub(crate) hist_max_ns: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    /// CPU seconds of this process since the parent's MARK (children only).
    pub(crate) cpu_secs_since_mark: Option<f64>,
    pub(crate) rss_kib: Option<u64>,
}

/// The connections held by one process.
pub(crate) struct Group {
    pub(crate) sh: Arc<Shared>,
    pub(crate) tasks: JoinSet<()>,
    pub(crate) n: usize,
    pub(crate) started: Instant,
    pub(crate) max_wait: Duration,
}

pub(crate) fn start_group(cfg: Arc<ClientCfg>, range: Range<usize>, concurrency: usize) -> Group {
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
    pub(crate) async fn wait_ready(&self, label: &str) -> GroupReady {
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

    pub(crate) async fn finish(mut self) -> GroupResult {
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

pub(crate) fn child_range(conns: usize, procs: usize, k: usize) -> Range<usize> {
    (conns * k / procs)..(conns * (k + 1) / procs)
}

pub(crate) fn client_cfg(args: &Args) -> Result<Arc<ClientCfg>, String> {
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
pub(crate) async fn child_main(args: Args, k: usize) -> Result<(), String> {
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

pub(crate) fn emit<T: Serialize>(tag: &str, v: &T) -> Result<(), String> {
    let json = serde_json::to_string(v).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{tag} {json}").and_then(|()| out.flush()).map_err(|e| e.to_string())
}

/// A child process seen from the parent.
pub(crate) struct ChildProc {
    pub(crate) k: usize,
    pub(crate) child: tokio::process::Child,
    pub(crate) stdin: Option<tokio::process::ChildStdin>,
    pub(crate) lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl ChildProc {
    /// Reads lines until one starts with `tag`, bounded by `limit`.
    pub(crate) async fn expect<T: for<'de> Deserialize<'de>>(
        &mut self,
        tag: &str,
        limit: Duration,
    ) -> Result<T, String> {
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

    pub(crate) async fn say(&mut self, msg: &str) {
        if let Some(s) = self.stdin.as_mut() {
            let _ = s.write_all(format!("{msg}\n").as_bytes()).await;
            let _ = s.flush().await;
        }
    }
}

pub(crate) fn spawn_children(args: &Args, max_life: f64) -> Result<Vec<ChildProc>, String> {
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
