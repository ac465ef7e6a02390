//! Durable append throughput through the batched appender on SQLite (WAL,
//! synchronous=FULL): each iteration records `EVENTS` prebuilt `key.used` events from 4
//! producer tasks into a fresh database and stops the clock when shutdown has committed
//! the last one. The reported throughput is durable events/s.
//!
//! `cargo bench --bench append`; the longer run and PostgreSQL are in
//! `examples/append_throughput.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keyward::store::EventStore;
use keyward::store::appender::{Appender, AppenderConfig, CommitSink};
use keyward::store::sqlite::SqliteStore;
use keyward_events::{Envelope, NewEvent};

const EVENTS: usize = 20_000;
const PRODUCERS: usize = 4;

struct Nothing;

#[async_trait]
impl CommitSink for Nothing {
    async fn committed(&self, _: &[Envelope]) {}
}

async fn run(events: Vec<Vec<NewEvent>>) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(
        SqliteStore::open(&dir.path().join("events.db"))
            .await
            .unwrap(),
    );
    let (appender, handle) =
        Appender::spawn(store.clone(), Arc::new(Nothing), AppenderConfig::default());
    let start = Instant::now();
    let tasks: Vec<_> = events
        .into_iter()
        .map(|batch| {
            let a = appender.clone();
            tokio::spawn(async move {
                for e in batch {
                    a.record(e).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    drop(appender);
    handle.shutdown().await;
    let elapsed = start.elapsed();
    assert_eq!(store.head().await.unwrap().seq, EVENTS as u64);
    elapsed
}

fn prebuilt() -> Vec<Vec<NewEvent>> {
    (0..PRODUCERS)
        .map(|p| {
            (p..EVENTS)
                .step_by(PRODUCERS)
                .map(|n| common::new_event(&common::key_used(n % 100, n), n))
                .collect()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut g = c.benchmark_group("append");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.bench_function("sqlite_sync_full/key.used", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += rt.block_on(run(prebuilt()));
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
