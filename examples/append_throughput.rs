//! Durable append throughput through the appender: N `key.used` events recorded by a few
//! producer tasks until shutdown has committed the last one. The events are built before
//! the clock starts, so the figure is the appender's and the store's; with
//! `KEYWARD_BUILD_IN_PRODUCERS=1` the producers build them as they go, as proxy requests
//! would, sharing the cores with the appender.
//!
//! ```text
//! cargo run --release --example append_throughput -- [events] [producers] [keys] [max_batch]
//!     [--database-url URL] [--nodes N] [--no-lock] [--no-tree]
//! ```
//!
//! - Without `--database-url`: a fresh SQLite file (WAL, synchronous=FULL).
//! - `--database-url postgres://…`: a scratch database `kw_bench_<ulid>` created on that
//!   server (the URL's user must be allowed to) and dropped afterwards. Commits are as
//!   durable as the server is configured to make them (`synchronous_commit`, `fsync`).
//! - `--nodes N` (PostgreSQL): N stores with an appender each, as N nodes would, sharing
//!   the events between them and contending for the append lock.
//! - `--no-lock` (PostgreSQL, one node only): appends without the advisory lock, to
//!   measure what the lock costs.
//! - `--no-tree` (SQLite): appends without maintaining the Merkle tree, to measure what
//!   the tree costs per event.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use async_trait::async_trait;
use keyward::store::EventStore;
use keyward::store::appender::{Appender, AppenderConfig, CommitSink};
use keyward::store::postgres::PostgresStore;
use keyward::store::sqlite::SqliteStore;
use keyward_events::{Envelope, Event, ExpectedVersion, KeyUsed, NewEvent, UsageOutcome, chain};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Executor};

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

struct Args {
    events: usize,
    producers: usize,
    keys: usize,
    max_batch: Option<usize>,
    database_url: Option<String>,
    nodes: usize,
    lock: bool,
    tree: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut numbers = Vec::new();
    let mut database_url = None;
    let mut nodes = 1;
    let mut lock = true;
    let mut tree = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--database-url" => database_url = Some(args.next().context("--database-url URL")?),
            "--nodes" => nodes = args.next().context("--nodes N")?.parse()?,
            "--no-lock" => lock = false,
            "--no-tree" => tree = false,
            _ => numbers.push(a.parse::<usize>().with_context(|| format!("{a:?}"))?),
        }
    }
    let n = |i: usize| numbers.get(i).copied();
    let args = Args {
        events: n(0).unwrap_or(100_000),
        producers: n(1).unwrap_or(4).max(1),
        keys: n(2).unwrap_or(100).max(1),
        max_batch: n(3),
        database_url,
        nodes: nodes.max(1),
        lock,
        tree,
    };
    let postgres = args
        .database_url
        .as_deref()
        .is_some_and(keyward::store::is_postgres);
    if !postgres && (args.nodes > 1 || !args.lock) {
        bail!("--nodes and --no-lock are for PostgreSQL");
    }
    if postgres && !args.tree {
        bail!("--no-tree is for SQLite");
    }
    if !args.lock && args.nodes > 1 {
        bail!("--no-lock with several nodes would fork the chain");
    }
    Ok(args)
}

/// A database created for the run and dropped after it.
struct Scratch {
    server: PgConnectOptions,
    name: String,
}

impl Scratch {
    async fn create(url: &str) -> anyhow::Result<(Scratch, PgConnectOptions)> {
        let server = PgConnectOptions::from_str(url)?;
        let name = format!("kw_bench_{}", ulid::Ulid::new().to_string().to_lowercase());
        let mut conn = server.connect().await?;
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await?;
        let options = server.clone().database(&name);
        Ok((Scratch { server, name }, options))
    }

    async fn drop_it(self) -> anyhow::Result<()> {
        let mut conn = self.server.connect().await?;
        conn.execute(format!("DROP DATABASE {} WITH (FORCE)", self.name).as_str())
            .await?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let mut cfg = AppenderConfig::default();
    cfg.max_batch = args.max_batch.unwrap_or(cfg.max_batch);

    let dir = tempfile::tempdir()?;
    let mut scratch = None;
    let mut pg_stores: Vec<Arc<PostgresStore>> = Vec::new();
    let stores: Vec<Arc<dyn EventStore>> = match args.database_url.as_deref() {
        Some(url) if keyward::store::is_postgres(url) => {
            let (s, options) = Scratch::create(url).await?;
            scratch = Some(s);
            for _ in 0..args.nodes {
                let mut store = PostgresStore::connect_with(options.clone()).await?;
                if !args.lock {
                    store = store.without_append_lock_for_benchmarks();
                }
                pg_stores.push(Arc::new(store));
            }
            pg_stores
                .iter()
                .map(|s| s.clone() as Arc<dyn EventStore>)
                .collect()
        }
        Some(url) => vec![Arc::new(sqlite(
            SqliteStore::open_url(url).await?,
            args.tree,
        ))],
        None => vec![Arc::new(sqlite(
            SqliteStore::open(&dir.path().join("events.db")).await?,
            args.tree,
        ))],
    };
    let sink = Arc::new(Counter::default());
    let (appenders, handles): (Vec<Appender>, Vec<_>) = stores
        .iter()
        .map(|s| Appender::spawn(s.clone(), sink.clone(), cfg))
        .unzip();

    let (events, producers, keys) = (args.events, args.producers, args.keys);
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
            // Producers are spread over the nodes, as a load balancer would spread requests.
            let a = appenders[p % appenders.len()].clone();
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
    futures::future::join_all(handles.into_iter().map(|h| h.shutdown())).await;
    let elapsed = start.elapsed();

    let head = stores[0].head().await?;
    let committed = sink.events.load(Ordering::Relaxed);
    let batches = sink.batches.load(Ordering::Relaxed);
    ensure!(
        committed == events && head.seq == events as u64,
        "committed {committed}, head {}",
        head.seq
    );
    let log = stores[0].read_from(0, usize::MAX).await?;
    chain::verify(&log).context("the chain does not verify")?;

    let backend = match (&args.database_url, args.nodes, args.lock) {
        (None, ..) if !args.tree => "SQLite (WAL, synchronous=FULL), NO Merkle tree".to_owned(),
        (None, ..) => "SQLite (WAL, synchronous=FULL), Merkle tree maintained".to_owned(),
        (Some(u), ..) if !keyward::store::is_postgres(u) => "SQLite".to_owned(),
        (Some(_), 1, true) => "PostgreSQL, 1 node, advisory lock".to_owned(),
        (Some(_), 1, false) => "PostgreSQL, 1 node, NO advisory lock".to_owned(),
        (Some(_), n, _) => format!("PostgreSQL, {n} nodes contending for the advisory lock"),
    };
    println!(
        "{backend}: {events} key.used events ({}), {producers} producers, {keys} keys, queue {} / batch {}",
        if build_in_producers {
            "built by the producers"
        } else {
            "prebuilt"
        },
        cfg.queue_capacity,
        cfg.max_batch
    );
    println!(
        "all queued after {:.3} s; all durable after {:.3} s in {batches} batches (mean {:.0} events, {:.2} ms per batch)",
        queued.as_secs_f64(),
        elapsed.as_secs_f64(),
        events as f64 / batches.max(1) as f64,
        elapsed.as_secs_f64() * 1000.0 / batches.max(1) as f64
    );
    println!(
        "{:.0} durable events/s; the chain verifies",
        events as f64 / elapsed.as_secs_f64()
    );
    for s in &pg_stores {
        s.close().await;
    }
    if let Some(s) = scratch {
        s.drop_it().await?;
    }
    Ok(())
}

fn sqlite(store: SqliteStore, tree: bool) -> SqliteStore {
    if tree {
        store
    } else {
        store.without_tree_for_benchmarks()
    }
}

/// The service's allocator, so that this measures what runs.
#[global_allocator]
static GLOBAL: keyward::Allocator = keyward::ALLOCATOR;
