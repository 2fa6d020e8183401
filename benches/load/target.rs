//! Targets (`--url`), source addresses, and `/proc` samples of the server and of this process.

use super::*;

/// Where the server is.
pub(crate) struct Target {
    /// The URL as given.
    pub(crate) url: String,
    pub(crate) addr: SocketAddr,
    pub(crate) host: String,
    pub(crate) base: String,
}

pub(crate) fn parse_target(url: &str) -> Result<Target, String> {
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
pub(crate) fn parse_targets(s: &str) -> Result<Vec<Target>, String> {
    let out: Vec<Target> =
        s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(parse_target).collect::<Result<_, _>>()?;
    if out.is_empty() {
        return Err("--url is empty".into());
    }
    Ok(out)
}

/// `--server-pid`: one PID or a comma-separated list of them.
pub(crate) fn parse_pids(s: Option<&str>) -> Result<Vec<u32>, String> {
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

pub(crate) fn parse_sources(s: &str, targets: &[Target]) -> Result<Vec<IpAddr>, String> {
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
pub(crate) struct ProcSample {
    pub(crate) rss_kib: Option<u64>,
    pub(crate) cpu_ticks: Option<u64>,
}

pub(crate) fn sample_proc(pid: &str) -> ProcSample {
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
pub(crate) fn sum_samples(v: &[ProcSample]) -> Option<ProcSample> {
    if v.is_empty() {
        return None;
    }
    let sum = |f: fn(&ProcSample) -> Option<u64>| v.iter().map(f).sum::<Option<u64>>();
    Some(ProcSample { rss_kib: sum(|s| s.rss_kib), cpu_ticks: sum(|s| s.cpu_ticks) })
}

pub(crate) fn cpu_delta(a: ProcSample, b: ProcSample, tck: f64) -> Option<f64> {
    Some(b.cpu_ticks?.checked_sub(a.cpu_ticks?)? as f64 / tck)
}

/// Clock ticks per second for /proc CPU times; `None` when `getconf` fails (then 100 is assumed).
pub(crate) fn clk_tck() -> Option<f64> {
    let out = std::process::Command::new("getconf").arg("CLK_TCK").output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

pub(crate) fn nofile_soft_limit() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    let l = s.lines().find(|l| l.starts_with("Max open files"))?;
    l.split_whitespace().nth(3)?.parse().ok()
}

pub(crate) fn ephemeral_ports() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_whitespace().map(|v| v.parse::<u64>());
    let (lo, hi) = (it.next()?.ok()?, it.next()?.ok()?);
    Some(hi.saturating_sub(lo) + 1)
}
