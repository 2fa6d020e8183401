//! Criterion benchmarks of the hub's fan-out: one event dispatched to the mailboxes of N subscribers.
#![allow(missing_docs)] // criterion_group! generates undocumented functions
//!
//! - `fanout/tasks/N`: each subscriber is a real tokio task parked on its mailbox, as every event stream is
//!   in production, on a runtime with one worker thread (a node pinned to one core). Timed from the
//!   dispatch, made by a task on that worker as a publish is, until every task has been woken, polled and
//!   has drained the event: what a fan-out costs besides the socket writes.
//! - `fanout/noop/N`: the hub alone: pushes into N mailboxes whose wakers do nothing, then drains them
//!   inline.
//!
//! `cargo bench --bench fanout -- --warm-up-time 1 --measurement-time 3`

use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald::hub::{Drained, Hub};
use herald::id::EventId;
use herald::sse::Event;
use herald::topic::Topic;
use tokio::sync::Notify;

const SUBSCRIBERS: [usize; 2] = [100, 10_000];

fn event(topic: &Topic, seq: u64) -> Arc<Event> {
    Arc::new(Event::new(EventId::new(1, seq), vec![topic.clone()].into(), None, "hello"))
}

fn noop(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout/noop");
    for subscribers in SUBSCRIBERS {
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
                hub.dispatch(&event(&topic, seq));
                for registration in &registrations {
                    out.clear();
                    let _ = registration.mailbox().poll_drain(&mut cx, &mut out, 64);
                }
            });
        });
    }
    group.finish();
}

/// Counts drained deliveries; the one that completes a fan-out says so.
struct Progress {
    drained: AtomicUsize,
    target: AtomicUsize,
    done: Notify,
}

fn tasks(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout/tasks");
    for subscribers in SUBSCRIBERS {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let hub = Arc::new(Hub::new(512, Arc::default()));
        let topic: Topic = "doc/42".into();
        let progress =
            Arc::new(Progress { drained: AtomicUsize::new(0), target: AtomicUsize::new(0), done: Notify::new() });
        for _ in 0..subscribers {
            let (registration, _) = hub.register(std::slice::from_ref(&topic)).expect("hub is open");
            let progress = progress.clone();
            rt.spawn(async move {
                let mut out = Vec::with_capacity(8);
                loop {
                    let drained = poll_fn(|cx| registration.mailbox().poll_drain(cx, &mut out, 64)).await;
                    if drained != Drained::Events {
                        return;
                    }
                    let n = out.len();
                    out.clear();
                    let total = progress.drained.fetch_add(n, Ordering::Relaxed) + n;
                    if total == progress.target.load(Ordering::Relaxed) {
                        progress.done.notify_one();
                    }
                }
            });
        }
        let mut seq = 0u64;
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_function(BenchmarkId::from_parameter(subscribers), |b| {
            b.iter_custom(|iters| {
                let (hub, topic, progress) = (hub.clone(), topic.clone(), progress.clone());
                let first = seq;
                seq += iters;
                let timed = rt.spawn(async move {
                    let start = Instant::now();
                    for i in 0..iters {
                        let delivered = progress.drained.load(Ordering::Relaxed);
                        progress.target.store(delivered + subscribers, Ordering::Relaxed);
                        let done = progress.done.notified();
                        hub.dispatch(&event(&topic, first + i + 1));
                        done.await;
                    }
                    start.elapsed()
                });
                rt.block_on(timed).unwrap_or(Duration::ZERO)
            });
        });
        // Ends the subscriber tasks.
        drop(rt);
    }
    group.finish();
}

criterion_group!(benches, tasks, noop);
criterion_main!(benches);
