//! Durable append throughput through the appender: N `key.used` events recorded by a few
//! producer tasks into a fresh SQLite file (WAL, synchronous=FULL), until shutdown has
//! committed the last one. The events are built before the clock starts, so the figure is
//! the appender's and the store's; with `KEYWARD_BUILD_IN_PRODUCERS=1` the producers build
//! them as they go, as proxy requests would, sharing the two cores with the appender.
//!
//! `cargo run --release --example append_throughput -- [events] [producers] [keys] [max_batch]`

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use keyward::store::EventStore;
use keyward::store::appender::{Appender, AppenderConfig, CommitSink};
use keyward::store::sqlite::SqliteStore;
use keyward_events::{Envelope, Event, ExpectedVersion, KeyUsed, NewEvent, UsageOutcome};

#[derive(Default)]
struct Counter {
    events: AtomicUsize,
    batches: AtomicUsize,
}

#[async_trait]
impl CommitSink for Counter {
    async fn committed(&self, envs: &[Envelope]) {
        self.events.fetch_add(envs.len(), Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
    }
}

fn key_used(key: usize, n: usize) -> NewEvent {
    let key_id = format!("key_{key:026}");
    let e = Event::KeyUsed(KeyUsed {
        key_id: key_id.clone(),
        provider_id: "prv_01HF7YAT010000000000000001".into(),
        model: Some("gpt-4o-mini".into()),
        endpoint: "/v1/chat/completions".into(),
        outcome: UsageOutcome::Success,
        status: 200,
        latency_us: 1200 + (n % 997) as u64,
        upstream_latency_us: Some(1100),
        prompt_tokens: 42,
        completion_tokens: 128,
        stream: false,
        client_ip: Some("10.1.2.3".into()),
    });
    NewEvent::new(
        &e,
        ExpectedVersion::Any,
        chrono::Utc::now(),
        key_id,
        Some(format!("req-{n}")),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let events = args.next().transpose()?.unwrap_or(100_000);
    let producers = args.next().transpose()?.unwrap_or(4).max(1);
    let keys = args.next().transpose()?.unwrap_or(100).max(1);
    let mut cfg = AppenderConfig::default();
    cfg.max_batch = args.next().transpose()?.unwrap_or(cfg.max_batch);

    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open(&dir.path().join("events.db")).await?);
    let sink = Arc::new(Counter::default());
    let (appender, handle) = Appender::spawn(store.clone(), sink.clone(), cfg);

    let build_in_producers = std::env::var_os("KEYWARD_BUILD_IN_PRODUCERS").is_some();
    let mut prebuilt: Vec<Vec<NewEvent>> = (0..producers)
        .map(|p| {
            if build_in_producers {
                return Vec::new();
            }
            (p..events)
                .step_by(producers)
                .map(|n| key_used(n % keys, n))
                .collect()
        })
        .collect();

    let start = Instant::now();
    let tasks: Vec<_> = (0..producers)
        .map(|p| {
            let a = appender.clone();
            let ready = std::mem::take(&mut prebuilt[p]);
            tokio::spawn(async move {
                if build_in_producers {
                    for n in (p..events).step_by(producers) {
                        a.record(key_used(n % keys, n)).await?;
                    }
                } else {
                    for e in ready {
                        a.record(e).await?;
                    }
                }
                Ok::<_, keyward::store::AppendError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let queued = start.elapsed();
    handle.shutdown().await;
    let elapsed = start.elapsed();

    let head = store.head().await?;
    let committed = sink.events.load(Ordering::Relaxed);
    let batches = sink.batches.load(Ordering::Relaxed);
    anyhow::ensure!(
        committed == events && head.seq == events as u64,
        "committed {committed}, head {}",
        head.seq
    );
    println!(
        "{events} key.used events ({}), {producers} producers, {keys} keys, queue {} / batch {}",
        if build_in_producers {
            "built by the producers"
        } else {
            "prebuilt"
        },
        cfg.queue_capacity,
        cfg.max_batch
    );
    println!(
        "all queued after {:.3} s; all durable after {:.3} s in {batches} batches (mean {:.0} events)",
        queued.as_secs_f64(),
        elapsed.as_secs_f64(),
        events as f64 / batches.max(1) as f64
    );
    println!(
        "{:.0} durable events/s",
        events as f64 / elapsed.as_secs_f64()
    );
    store.close().await;
    Ok(())
}
