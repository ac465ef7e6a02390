//! Replay into the projections: decode + fold of a log of users, keys and mostly
//! `key.used` events, from memory. Each iteration folds `EVENTS` events into a fresh
//! `State`; criterion reports events/s, and the 1M-event time is 1,000,000 / that rate
//! (the fold is linear: one map update per event). `examples/replay_throughput.rs` folds
//! a full 1M-event log once, and also from SQLite through `Live::rebuild`.
//!
//! `cargo bench --bench replay` (`KEYWARD_BENCH_REPLAY=N` for another size)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keyward_projections::State;

fn bench(c: &mut Criterion) {
    let n: usize = std::env::var("KEYWARD_BENCH_REPLAY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let keys = 10_000;
    let log = common::usage_log(n, keys);
    let mut g = c.benchmark_group("replay");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(format!("{n}_events_{keys}_keys"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut state = State::default();
                let t = Instant::now();
                for env in &log {
                    state.apply(env).unwrap();
                }
                total += t.elapsed();
                // Dropping the state is not part of a replay.
                drop(state);
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

/// The service's allocator, so that this measures what runs.
#[global_allocator]
static GLOBAL: keyward::Allocator = keyward::ALLOCATOR;
