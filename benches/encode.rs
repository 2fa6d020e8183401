//! Criterion benchmarks of the SSE encoder: the per-event cost paid once when an event enters a node.
#![allow(missing_docs)] // criterion_group! generates undocumented functions

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald::sse;

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    let cases = [
        ("small", "{\"doc\":42,\"title\":\"New\"}".to_owned()),
        ("1KiB-lines", "line of text\n".repeat(80)),
        ("64KiB", "x".repeat(64 * 1024)),
    ];
    for (name, data) in &cases {
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), data, |b, data| {
            b.iter(|| sse::encode(Some("1732770000000-17"), Some("doc.updated"), data));
        });
    }
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
