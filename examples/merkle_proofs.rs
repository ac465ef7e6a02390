//! Merkle proofs on a large SQLite log (issue 17): builds an N-event log through the
//! store in large batches (the tree maintained as the events commit), then measures,
//! over random requests, what the proof routes do: an inclusion proof (tree size, one
//! read of the tree, the event's hash, and a check of the proof), a consistency proof
//! and a root. With `--backfill`, it also deletes the tree and times the backfill a log
//! that predates the tree gets at open.
//!
//! ```text
//! cargo run --release --example merkle_proofs -- [events] [proofs] [--db PATH] [--backfill]
//! ```
//!
//! `--db PATH` reuses (or keeps) the log at PATH, so that the 10M-event log is built once.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use keyward::audit;
use keyward::store::EventStore;
use keyward::store::sqlite::SqliteStore;
use keyward_events::merkle::{verify_consistency, verify_inclusion};
use keyward_events::{Event, ExpectedVersion, KeyUsed, NewEvent, UsageOutcome};
use rand::Rng;

const BATCH: u64 = 20_000;

fn key_used(key: u64, n: u64) -> NewEvent {
    let key_id = format!("key_{key:026}");
    let e = Event::KeyUsed(KeyUsed {
        key_id: key_id.clone(),
        provider_id: "prv_01HF7YAT010000000000000001".into(),
        model: Some("gpt-4o-mini".into()),
        endpoint: "/v1/chat/completions".into(),
        outcome: UsageOutcome::Success,
        status: 200,
        latency_us: 1200 + n % 997,
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

struct Stats(Vec<Duration>);

impl Stats {
    fn line(&mut self, what: &str) {
        self.0.sort_unstable();
        let at = |q: f64| self.0[((self.0.len() - 1) as f64 * q).round() as usize];
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "{what:<34} median {:>7.1} µs   p99 {:>7.1} µs   max {:>8.1} µs   ({} requests)",
            us(at(0.5)),
            us(at(0.99)),
            us(at(1.0)),
            self.0.len()
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut numbers = Vec::new();
    let mut db: Option<PathBuf> = None;
    let mut backfill = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--db" => db = Some(args.next().context("--db PATH")?.into()),
            "--backfill" => backfill = true,
            _ => numbers.push(a.parse::<u64>().with_context(|| format!("{a:?}"))?),
        }
    }
    let events = numbers.first().copied().unwrap_or(1_000_000);
    let proofs = numbers.get(1).copied().unwrap_or(1_000) as usize;
    let dir = tempfile::tempdir()?;
    let path = db.unwrap_or_else(|| dir.path().join("events.db"));

    let store = SqliteStore::open(&path).await?;
    let have = store.head().await?.seq;
    if have < events {
        let started = Instant::now();
        let mut n = have;
        while n < events {
            let k = BATCH.min(events - n);
            let units = (n..n + k).map(|i| vec![key_used(i % 1000, i)]).collect();
            for r in store.append(units).await? {
                r?;
            }
            n += k;
            if n % 1_000_000 == 0 {
                eprintln!("{n} events, {:.1} s", started.elapsed().as_secs_f64());
            }
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "built {} events in {secs:.1} s ({:.0} events/s, batches of {BATCH}, synchronous=FULL, tree maintained)",
            events - have,
            (events - have) as f64 / secs
        );
    }
    let size = store.tree_size().await?;
    ensure!(size >= events, "the tree has {size} leaves");
    let rows: i64 = {
        use sqlx::ConnectOptions;
        let mut c = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .connect()
            .await?;
        sqlx::query_scalar("SELECT count(*) FROM merkle_nodes")
            .fetch_one(&mut c)
            .await?
    };
    println!(
        "log of {size} events; {rows} stored tree nodes ({:.4} per event, {} bytes of hashes)",
        rows as f64 / size as f64,
        rows * 32
    );

    let mut rng = rand::thread_rng();
    let root = audit::tree_root(&store, size).await?;
    // Warm the read pool and SQLite's page cache as a running server's would be.
    for _ in 0..100 {
        let seq = rng.gen_range(1..=size);
        audit::inclusion(&store, seq, size).await?;
    }

    let mut incl = Stats(Vec::with_capacity(proofs));
    let mut incl_old = Stats(Vec::with_capacity(proofs));
    let mut cons = Stats(Vec::with_capacity(proofs));
    let mut roots = Stats(Vec::with_capacity(proofs));
    for _ in 0..proofs {
        let seq = rng.gen_range(1..=size);
        let t = Instant::now();
        let p = audit::inclusion(&store, seq, size).await?;
        incl.0.push(t.elapsed());
        ensure!(p.root == root);
        verify_inclusion(&p.leaf_hash, seq - 1, size, &p.proof, &root)?;

        let older = rng.gen_range(1..=size);
        let seq = rng.gen_range(1..=older);
        let t = Instant::now();
        audit::inclusion(&store, seq, older).await?;
        incl_old.0.push(t.elapsed());

        let from = rng.gen_range(1..=size);
        let t = Instant::now();
        let c = audit::consistency(&store, from, size).await?;
        cons.0.push(t.elapsed());
        verify_consistency(from, size, &c.from_root, &c.to_root, &c.proof)?;

        let at = rng.gen_range(1..=size);
        let t = Instant::now();
        audit::tree_root(&store, at).await?;
        roots.0.push(t.elapsed());
    }
    println!("(each: tree size + one read of the tree; inclusion also reads the event)");
    incl.line("inclusion proof, tree = head");
    incl_old.line("inclusion proof, random tree size");
    cons.line("consistency proof, random -> head");
    roots.line("root of a random tree size");

    if backfill {
        store.close().await;
        {
            use sqlx::ConnectOptions;
            let mut c = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .connect()
                .await?;
            for sql in [
                "DROP TRIGGER merkle_nodes_no_delete",
                "DELETE FROM merkle_nodes",
                "CREATE TRIGGER merkle_nodes_no_delete BEFORE DELETE ON merkle_nodes \
                 BEGIN SELECT RAISE(ABORT, 'the Merkle tree is append-only'); END",
            ] {
                sqlx::query(sql).execute(&mut c).await?;
            }
        }
        let t = Instant::now();
        let store = SqliteStore::open(&path).await?;
        let secs = t.elapsed().as_secs_f64();
        ensure!(store.tree_size().await? == size);
        ensure!(audit::tree_root(&store, size).await? == root);
        println!(
            "backfill of the whole tree at open: {secs:.2} s ({:.0} events/s)",
            size as f64 / secs
        );
    }
    Ok(())
}

/// The service's allocator, so that this measures what runs.
#[global_allocator]
static GLOBAL: keyward::Allocator = keyward::ALLOCATOR;
