//! The latency histogram.

use super::*;

/// Fixed-bucket histogram shared by many tasks (8 MB, whatever the number of samples).
pub(crate) struct Hist {
    pub(crate) buckets: Box<[AtomicU64]>,
    pub(crate) max_ns: AtomicU64,
}

impl Hist {
    pub(crate) fn new() -> Self {
        Self { buckets: (0..=HIST_BUCKETS).map(|_| AtomicU64::new(0)).collect(), max_ns: AtomicU64::new(0) }
    }
    pub(crate) fn record(&self, ns: u64) {
        let b = ((ns / BUCKET_NS) as usize).min(HIST_BUCKETS);
        self.buckets[b].fetch_add(1, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
    }
    pub(crate) fn sparse(&self) -> Vec<(u32, u64)> {
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
pub(crate) struct DenseHist {
    pub(crate) counts: Vec<u64>,
    pub(crate) max_ns: u64,
}

impl DenseHist {
    pub(crate) fn new() -> Self {
        Self { counts: vec![0; HIST_BUCKETS + 1], max_ns: 0 }
    }
    pub(crate) fn add_sparse(&mut self, sparse: &[(u32, u64)], max_ns: u64) {
        for &(b, c) in sparse {
            if let Some(slot) = self.counts.get_mut(b as usize) {
                *slot += c;
            }
        }
        self.max_ns = self.max_ns.max(max_ns);
    }
    pub(crate) fn summary(&self) -> Latency {
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
pub(crate) struct Latency {
    pub(crate) count: u64,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p90_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    pub(crate) p999_ms: Option<f64>,
    pub(crate) max_ms: Option<f64>,
}

pub(crate) fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"))
}
