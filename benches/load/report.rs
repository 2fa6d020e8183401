//! The parent: validation, orchestration of the phases, aggregation and the report.

use super::*;

/// Figures of one URL (node) of `--url`.
#[derive(Serialize, Debug, Default)]
pub(crate) struct UrlReport {
    pub(crate) url: String,
    pub(crate) conns_open: u64,
    /// Publishers sending to this URL (publisher j goes to URL j % n).
    pub(crate) publishers: usize,
    /// Measured events delivered on the connections to this URL.
    pub(crate) delivered: u64,
}

/// Figures of one process of `--server-pid`.
#[derive(Serialize, Debug, Default)]
pub(crate) struct ServerReport {
    pub(crate) pid: u32,
    /// The URL this server is taken to serve (PID k ↔ URL k, when there are as many PIDs as URLs).
    pub(crate) url: Option<String>,
    pub(crate) before: ProcSample,
    pub(crate) connected: ProcSample,
    pub(crate) end: ProcSample,
    pub(crate) rss_growth_kib: Option<f64>,
    /// Open connections to its URL (when the URL is known).
    pub(crate) conns_open: Option<u64>,
    pub(crate) rss_per_conn_kib: Option<f64>,
    pub(crate) cpu_publish_secs: Option<f64>,
    /// Deliveries on the connections to its URL (when the URL is known).
    pub(crate) delivered: Option<u64>,
    pub(crate) cpu_us_per_delivery: Option<f64>,
}

#[derive(Serialize, Debug, Default)]
pub(crate) struct Report {
    pub(crate) url: String,
    pub(crate) per_url: Vec<UrlReport>,
    pub(crate) conns_requested: u64,
    pub(crate) conns_open: u64,
    pub(crate) conns_failed: u64,
    pub(crate) conns_closed_early: u64,
    pub(crate) connect_secs: f64,
    pub(crate) connect_latency: Latency,
    pub(crate) procs: usize,
    pub(crate) topics: usize,
    pub(crate) topics_per_conn: usize,
    pub(crate) payload_bytes: usize,
    pub(crate) publishers: usize,
    pub(crate) target_rate: f64,
    pub(crate) duration_secs: f64,
    pub(crate) warmup_events_ok: u64,
    pub(crate) warmup_deliveries: u64,
    pub(crate) events_planned: u64,
    pub(crate) events_published_ok: u64,
    pub(crate) events_publish_failed: u64,
    pub(crate) events_skipped: u64,
    pub(crate) publish_secs: f64,
    pub(crate) publish_achieved_rate: f64,
    pub(crate) publish_behind_max_ms: f64,
    pub(crate) publish_rtt: Latency,
    /// Round trips of `--probe-rate`'s publishes to a quiet topic (absent without it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) probe_rtt: Option<Latency>,
    pub(crate) expected_deliveries: u64,
    pub(crate) delivered: u64,
    pub(crate) delivered_per_sec: Option<f64>,
    pub(crate) delivery_span_secs: Option<f64>,
    pub(crate) missing: u64,
    pub(crate) unexpected: u64,
    pub(crate) duplicates: u64,
    pub(crate) out_of_order: u64,
    pub(crate) resets: u64,
    pub(crate) foreign: u64,
    pub(crate) unparsed: u64,
    pub(crate) latency: Latency,
    pub(crate) clk_tck: f64,
    pub(crate) clk_tck_assumed: bool,
    /// `--server-pid`, one or several; the `server_*` figures below are sums over them.
    pub(crate) server_pids: Vec<u32>,
    pub(crate) server_before: Option<ProcSample>,
    pub(crate) server_connected: Option<ProcSample>,
    pub(crate) server_end: Option<ProcSample>,
    /// Total RSS growth of the servers / total open connections.
    pub(crate) server_rss_per_conn_kib: Option<f64>,
    pub(crate) server_cpu_publish_secs: Option<f64>,
    /// Total CPU of the servers / total deliveries.
    pub(crate) server_cpu_us_per_delivery: Option<f64>,
    /// Each server's own figures (with several `--server-pid`s).
    pub(crate) servers: Vec<ServerReport>,
    pub(crate) loadgen_cpu_publish_secs: Option<f64>,
    pub(crate) loadgen_rss_kib: Option<u64>,
    pub(crate) connect_errors: BTreeMap<String, u64>,
    pub(crate) stream_errors: BTreeMap<String, u64>,
    pub(crate) publish_errors: BTreeMap<String, u64>,
}

pub(crate) fn validate(a: &Args) -> Result<(), String> {
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

pub(crate) async fn parent_main(args: Args) -> Result<(), String> {
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
    let probe =
        (args.probe_rate > 0.0).then(|| tokio::spawn(probe_phase(pcfg.clone(), args.probe_rate, args.duration)));
    let p = publish_phase(pcfg, "", args.duration).await;
    if let Some(probe) = probe {
        rep.probe_rtt = probe.await.ok();
    }
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

pub(crate) fn print_report(r: &Report) {
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
    if let Some(probe) = &r.probe_rtt {
        println!(
            "probe (quiet topic): {} publishes, request p50 {} p99 {} max {} ms",
            probe.count,
            fmt_ms(probe.p50_ms),
            fmt_ms(probe.p99_ms),
            fmt_ms(probe.max_ms)
        );
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
