//! Criterion benchmarks of the hub's fan-out: one event pushed into the mailboxes of N subscribers, then
#![allow(missing_docs)] // criterion_group! generates undocumented functions
//! drained, as each connection's stream would drain it.

use std::sync::Arc;
use std::task::{Context, Waker};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald::hub::Hub;
use herald::id::EventId;
use herald::sse::Event;
use herald::topic::Topic;

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    for subscribers in [100usize, 10_000] {
        let hub = Arc::new(Hub::new(512, Arc::default()));
        let topic: Topic = "doc/42".into();
        let registrations: Vec<_> =
            (0..subscribers).map(|_| hub.register(std::slice::from_ref(&topic)).map(|(r, _)| r)).collect();
        let registrations: Vec<_> = registrations.into_iter().collect::<Result<_, _>>().expect("hub is open");
        let mut seq = 0;
        let mut out = Vec::with_capacity(8);
        let mut cx = Context::from_waker(Waker::noop());
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_function(BenchmarkId::from_parameter(subscribers), |b| {
            b.iter(|| {
                seq += 1;
                let event = Arc::new(Event::new(EventId::new(1, seq), vec![topic.clone()].into(), None, "hello"));
                hub.dispatch(&event);
                for registration in &registrations {
                    out.clear();
                    let _ = registration.mailbox().poll_drain(&mut cx, &mut out, 64);
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
