//! Event canonical encode + hash: `NewEvent::seal` of a `key.used` event (what the appender
//! does per event), and its parts.
//!
//! `cargo bench --bench event_seal`
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use criterion::{BatchSize, Criterion, Throughput, black_box, criterion_group, criterion_main};
use keyward_events::{Hash32, canonical};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("event");
    g.throughput(Throughput::Elements(1));
    let e = common::key_used(7, 42);
    let ne = common::new_event(&e, 42);
    g.bench_function("key.used/canonical_encode", |b| {
        b.iter(|| canonical::to_string(black_box(&ne.data)))
    });
    g.bench_function("key.used/seal (encode + hash)", |b| {
        b.iter_batched(
            || ne.clone(),
            |ne| ne.seal(1, 1, Hash32::ZERO),
            BatchSize::SmallInput,
        )
    });
    let env = ne.clone().seal(1, 1, Hash32::ZERO);
    g.bench_function("key.used/compute_hash (verify)", |b| {
        b.iter(|| black_box(&env).compute_hash())
    });
    g.bench_function("key.used/build NewEvent (Event -> Value)", |b| {
        b.iter(|| common::new_event(black_box(&e), 42))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

/// The service's allocator, so that this measures what runs.
#[global_allocator]
static GLOBAL: keyward::Allocator = keyward::ALLOCATOR;
