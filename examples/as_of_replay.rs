//! As-of replay at the middle of a large log: a fold of the whole log from seq 1 (what
//! `?as_of=` did before kept snapshots) against a start from the newest kept snapshot the
//! timeline allows (what it does now).
//!
//! ```sh
//! cargo run --release --example as_of_replay -- [events] [snapshot_every] [data dir]
//! ```
//!
//! Defaults: 1,000,000 events, a snapshot every 100,000 events (serve's default), a
//! temporary dir. A dir that already holds a log of at least `events` events is reused.
//! The log is written straight through the SQLite store in batches of 20,000 sealed
//! events: a bootstrap, then a key lifecycle (a key created every 1,000 events, one
//! expired and one deleted every 1,000, about 10,000 keys at 10M events) among
//! `key.used` events of the live keys. Times advance 10 ms per event, and every 50th
//! usage event is stamped 3 s early (a usage event that waited in the append queue), so
//! times are not in seq order. The builder folds what it appends and writes a kept
//! snapshot every `snapshot_every` events with its timeline, the newest 24 kept, as
//! `serve` does.
//!
//! It then measures replays as of three times: the middle event's (seq N/2), half a
//! snapshot interval later (the mean distance from a snapshot), and just before the next
//! snapshot (the worst case), each checked equal to the full fold at the middle.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use chrono::Utc;
use keyward::history::{self, Kept};
use keyward::store::EventStore;
use keyward::store::sqlite::SqliteStore;
use keyward::timeline::Timeline;
use keyward_events::*;
use keyward_projections::AsOf;

const BATCH: usize = 20_000;
/// 10 ms per event.
const STEP_US: i64 = 10_000;

fn key_id(k: usize) -> String {
    format!("key_{k:026}")
}

fn key_created(k: usize, owner: &str, at: chrono::DateTime<Utc>) -> Event {
    Event::KeyCreated(KeyCreated {
        key_id: key_id(k),
        name: format!("key {k}"),
        owner_id: owner.to_owned(),
        provider_ids: vec!["prv_1".into()],
        secret_hash: blake3::hash(&k.to_le_bytes()).to_hex().to_string(),
        prefix: "kw_abcdefgh".into(),
        expires_at: at + chrono::Duration::days(30),
        scopes: vec![Scope::Chat],
        models: vec![],
        rate_limit: None,
        quota: None,
        ip_allowlist: vec![],
        metadata: Default::default(),
        rotated_from: None,
    })
}

fn key_used(k: usize, i: u64) -> Event {
    Event::KeyUsed(KeyUsed {
        key_id: key_id(k),
        provider_id: "prv_1".into(),
        model: Some("gpt-4o-mini".into()),
        endpoint: "/v1/chat/completions".into(),
        outcome: UsageOutcome::Success,
        status: 200,
        latency_us: 1234,
        upstream_latency_us: Some(1100),
        prompt_tokens: 42 + i % 100,
        completion_tokens: 128,
        stream: false,
        client_ip: Some("10.1.2.3".into()),
    })
}

fn config(dir: &Path) -> keyward::config::Config {
    let g = keyward::config::GlobalArgs {
        data_dir: Some(dir.to_path_buf()),
        log: Some("warn".into()),
        ..Default::default()
    };
    let s = keyward::config::ServeArgs {
        listen: Some("127.0.0.1:0".into()),
        ..Default::default()
    };
    let mut c = keyward::config::Config::resolve(&g, &s).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    c.snapshot_every = 0;
    c
}

async fn build(dir: &Path, events: u64, every: u64, kept: &Kept) -> anyhow::Result<()> {
    keyward::server::start(config(dir)).await?.shutdown().await;
    let store = SqliteStore::open(&dir.join("keyward.db")).await?;
    let mut state = keyward_projections::State::default();
    let mut timeline = Timeline::default();
    let page = store.read_from(0, 10).await?;
    for e in &page {
        state.apply(e)?;
        timeline.record(e.seq, e.occurred_at);
    }
    let owner = page
        .iter()
        .find(|e| e.event_type == "user.created")
        .map(|e| e.stream.trim_start_matches("user:").to_owned())
        .context("the bootstrap created no user")?;
    // After the bootstrap's own events (stamped now): as in a real log, nothing in its
    // first block is later than the events that follow.
    let base = Utc::now().timestamp_micros();
    let started = Instant::now();
    let (mut created, mut expired, mut deleted) = (0usize, 0usize, 0usize);
    let mut last_snapshot = 0u64;
    let mut bytes_total = 0usize;
    let mut snaps = 0usize;
    loop {
        let head = store.head().await?.seq;
        if head >= events {
            break;
        }
        let n = BATCH.min((events - head) as usize);
        let unit: Vec<NewEvent> = (1..=n as u64)
            .map(|j| {
                let seq = head + j;
                let mut at = base + seq as i64 * STEP_US;
                let e = match seq % 1000 {
                    0 => {
                        created += 1;
                        key_created(
                            created - 1,
                            &owner,
                            keyward::time::from_micros(at).unwrap_or_default(),
                        )
                    }
                    500 if expired + 20 < created => {
                        expired += 1;
                        Event::KeyExpired(KeyExpired {
                            key_id: key_id(expired - 1),
                            reason: ExpireReason::Manual,
                        })
                    }
                    700 if deleted + 40 < created => {
                        deleted += 1;
                        Event::KeyDeleted(KeyDeleted {
                            key_id: key_id(deleted - 1),
                        })
                    }
                    _ => {
                        if seq % 50 == 0 {
                            at -= 3_000_000;
                        }
                        // One of the live keys (not yet expired), or key 0 before any.
                        let live = created.saturating_sub(expired).max(1);
                        key_used(expired + (seq as usize * 7919) % live, seq)
                    }
                };
                let at = keyward::time::from_micros(at).unwrap_or_default();
                NewEvent::new(&e, ExpectedVersion::Any, at, "system", None)
            })
            .collect();
        for r in store.append(vec![unit]).await? {
            for e in r? {
                state.apply(&e)?;
                timeline.record(e.seq, e.occurred_at);
            }
        }
        let head = state.head.seq;
        if every > 0 && head >= last_snapshot + every {
            let t = Instant::now();
            bytes_total = keyward::snapshot::write_kept(
                dir,
                &state,
                &timeline,
                &kept.keys,
                keyward::snapshot::KEEP_DEFAULT,
            )?;
            snaps += 1;
            last_snapshot = head;
            eprintln!(
                "  {head} events, {:.0} events/s; snapshot {bytes_total} bytes in {:.0} ms",
                head as f64 / started.elapsed().as_secs_f64(),
                t.elapsed().as_secs_f64() * 1000.0
            );
        }
    }
    eprintln!(
        "built {events} events in {:.1} s ({created} keys created, {expired} expired, {deleted} deleted); {snaps} snapshots written, the last {bytes_total} bytes",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let events: u64 = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let every: u64 = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(keyward::snapshot::EVERY_DEFAULT as u64);
    let tmp;
    let dir = match args.next() {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&dir)?;
    let kept = Kept {
        dir: dir.clone(),
        keys: keyward::server::load_keyring(&config(&dir))?.snapshot_mac_keys(),
    };
    let db = dir.join("keyward.db");
    let have = if db.exists() {
        SqliteStore::open(&db).await?.head().await?.seq
    } else {
        0
    };
    if have < events {
        build(&dir, events, every, &kept).await?;
    }
    let store = SqliteStore::open(&db).await?;
    let head = store.head().await?.seq;
    let kept_seqs = keyward::snapshot::kept(&dir);
    let disk: u64 = kept_seqs
        .iter()
        .map(|s| {
            std::fs::metadata(keyward::snapshot::kept_path(&dir, *s))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    eprintln!(
        "log: {head} events; {} kept snapshots ({:?} .. {:?}), {disk} bytes on disk",
        kept_seqs.len(),
        kept_seqs.first(),
        kept_seqs.last()
    );

    // The timeline the live projections would hold: rebuilt from the newest snapshot's
    // plus the events after it.
    let newest = history::newest_snapshot(&store, &kept, u64::MAX, false)
        .await?
        .context("no usable snapshot")?;
    let mut timeline = newest.timeline;
    let mut after = timeline.covered();
    loop {
        let page = store.read_from(after, 10_000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in &page {
            timeline.record(e.seq, e.occurred_at);
        }
    }
    drop(newest.state);

    let time_of = |seq: u64| {
        let store = &store;
        async move {
            anyhow::Ok(
                store
                    .read_from(seq - 1, 1)
                    .await?
                    .first()
                    .context("no such seq")?
                    .occurred_at,
            )
        }
    };
    let mid = head / 2;
    let points = [
        ("middle (seq N/2)", mid),
        ("middle + every/2 (mean)", (mid + every / 2).min(head)),
        (
            "just before the next snapshot (worst)",
            (mid + every - 2).min(head),
        ),
    ];

    let t = Instant::now();
    let at_mid = time_of(mid).await?;
    let full = history::replay(&store, AsOf::Time(at_mid)).await?;
    let full_s = t.elapsed().as_secs_f64();
    println!(
        "full fold from seq 1 as of the middle (seq {mid}): {full_s:.2} s, {} keys",
        full.keys.len()
    );
    for (name, seq) in points {
        let at = time_of(seq).await?;
        let t = Instant::now();
        let bounds = timeline.bounds(at);
        let r = history::replay_with(&store, Some(&kept), Some(bounds), AsOf::Time(at)).await?;
        let s = t.elapsed().as_secs_f64();
        println!(
            "as of {name}, seq {seq}: {:.3} s from the snapshot at {:?}, {} events read after it (timeline lo {} hi {})",
            s, r.from_snapshot, r.read, bounds.lo, bounds.hi
        );
        if seq == mid {
            anyhow::ensure!(
                r.state == full,
                "the replay from the snapshot differs from the full fold"
            );
            println!("  equal to the full fold: yes");
        }
    }
    Ok(())
}
