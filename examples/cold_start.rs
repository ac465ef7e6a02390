//! Cold start: time from `server::start` to the first answered proxy request on a large
//! log, without a projection snapshot (the whole log is read, verified and folded) and
//! with one (only the events after it are folded; the chain under it is verified in the
//! background, whose duration is reported too).
//!
//! ```sh
//! cargo run --release --example cold_start -- [events] [keys] [data dir]
//! ```
//!
//! Defaults: 10,000,000 events over 10,000 keys, in a temporary dir. Given a dir that
//! already holds a log of at least `events` events, it is reused (building 10M events
//! takes minutes). The log is written straight through the SQLite store in batches of
//! 20,000 sealed events: a bootstrap (an admin and their key), the keys, then `key.used`
//! round-robin over them. The builder folds what it appends and writes the snapshot of
//! the result, MACed under the data dir's keyring, as a shutdown would.
//!
//! The start without a snapshot (minutes on 10M events) is measured only with `--full`
//! as a fourth argument, or when the dir has a log but no snapshot.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use keyward::store::EventStore;
use keyward::store::sqlite::SqliteStore;
use keyward_events::*;

const BATCH: usize = 20_000;

fn key_created(k: usize, owner: &str) -> Event {
    Event::KeyCreated(KeyCreated {
        key_id: format!("key_{k:026}"),
        name: format!("key {k}"),
        owner_id: owner.to_owned(),
        provider_ids: vec!["prv_1".into()],
        secret_hash: blake3::hash(&k.to_le_bytes()).to_hex().to_string(),
        prefix: "kw_abcdefgh".into(),
        expires_at: Utc::now() + chrono::Duration::days(30),
        scopes: vec![Scope::Chat],
        models: vec![],
        rate_limit: None,
        quota: None,
        ip_allowlist: vec![],
        metadata: Default::default(),
        rotated_from: None,
    })
}

fn key_used(k: usize) -> Event {
    Event::KeyUsed(KeyUsed {
        key_id: format!("key_{k:026}"),
        provider_id: "prv_1".into(),
        model: Some("gpt-4o-mini".into()),
        endpoint: "/v1/chat/completions".into(),
        outcome: UsageOutcome::Success,
        status: 200,
        latency_us: 1234,
        upstream_latency_us: Some(1100),
        prompt_tokens: 42,
        completion_tokens: 128,
        stream: false,
        client_ip: Some("10.1.2.3".into()),
    })
}

async fn build(dir: &Path, events: u64, keys: usize) -> anyhow::Result<()> {
    // The real bootstrap, so the admin key in the dir works.
    keyward::server::start(config(dir, 0))
        .await?
        .shutdown()
        .await;
    let store = SqliteStore::open(&dir.join("keyward.db")).await?;
    let mut state = keyward_projections::State::default();
    let owner = {
        let page = store.read_from(0, 10).await?;
        state.apply_all(&page)?;
        page.iter()
            .find(|e| e.event_type == "user.created")
            .map(|e| e.stream.trim_start_matches("user:").to_owned())
            .context("the bootstrap created no user")?
    };
    let started = Instant::now();
    let mut next_key = 0usize;
    let mut used = 0usize;
    loop {
        let head = store.head().await?.seq;
        if head >= events {
            break;
        }
        let n = BATCH.min((events - head) as usize);
        let unit: Vec<NewEvent> = (0..n)
            .map(|_| {
                let e = if next_key < keys {
                    next_key += 1;
                    key_created(next_key - 1, &owner)
                } else {
                    used += 1;
                    key_used(used % keys)
                };
                NewEvent::new(&e, ExpectedVersion::Any, Utc::now(), "system", None)
            })
            .collect();
        for r in store.append(vec![unit]).await? {
            state.apply_all(&r?)?;
        }
        if (head / BATCH as u64).is_multiple_of(50) {
            eprintln!(
                "  {head} events written, {:.0} events/s",
                head as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    eprintln!(
        "built {events} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let keys = keyward::server::load_keyring(&config(dir, 1))?.snapshot_mac_keys();
    let bytes = keyward::snapshot::write(dir, &state, &keys)?;
    eprintln!("wrote a {bytes}-byte snapshot at seq {}", state.head.seq);
    Ok(())
}

fn config(dir: &Path, snapshot_every: usize) -> keyward::config::Config {
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
    c.snapshot_every = snapshot_every;
    c
}

/// Starts, serves, and times the first authenticated `GET /api/v1/me` answered with 200. Returns the
/// running service and the time to that answer.
async fn first_request(
    dir: &Path,
    snapshot_every: usize,
) -> anyhow::Result<(
    keyward::server::Running,
    Duration,
    tokio::task::JoinHandle<()>,
)> {
    let secret = std::fs::read_to_string(dir.join("initial-admin-key"))?;
    let secret = secret.trim().to_owned();
    let t = Instant::now();
    let running = keyward::server::start(config(dir, snapshot_every)).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = keyward::app(running.state.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await;
    });
    let res = reqwest::Client::new()
        .get(format!("http://{addr}/api/v1/me"))
        .bearer_auth(&secret)
        .send()
        .await?;
    let elapsed = t.elapsed();
    anyhow::ensure!(
        res.status() == 200,
        "GET /api/v1/me answered {}",
        res.status()
    );
    eprintln!(
        "  rebuild: {} events folded in {:.2} s (snapshot at seq {:?})",
        running.report.events,
        running.report.elapsed.as_secs_f64(),
        running.report.snapshot.map(|h| h.seq)
    );
    Ok((running, elapsed, server))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let events: u64 = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000_000);
    let keys: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    let tmp;
    let dir = match args.next() {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let full_wanted = args.next().as_deref() == Some("--full");
    let have = if dir.join("keyward.db").exists() {
        SqliteStore::open(&dir.join("keyward.db"))
            .await?
            .head()
            .await?
            .seq
    } else {
        0
    };
    if have < events {
        eprintln!(
            "building a log of {events} events over {keys} keys in {}…",
            dir.display()
        );
        build(&dir, events, keys).await?;
    }
    let snap = keyward::snapshot::path(&dir);
    let mut full = None;
    if full_wanted || !snap.exists() {
        let _ = std::fs::remove_file(&snap);
        eprintln!("start without a snapshot (read + verify + fold the whole log)…");
        let (running, elapsed, server) = first_request(&dir, 1_000_000_000).await?;
        println!(
            "first request without a snapshot: {:.2} s ({} events)",
            elapsed.as_secs_f64(),
            running.report.events
        );
        full = Some(elapsed);
        let t = Instant::now();
        running.shutdown().await;
        server.abort();
        eprintln!(
            "  shutdown wrote the snapshot in {:.2} s",
            t.elapsed().as_secs_f64()
        );
    }
    let written = std::fs::metadata(&snap).map(|m| m.len()).unwrap_or(0);

    eprintln!("start from the snapshot…");
    let (running, fast, server) = first_request(&dir, 1_000_000_000).await?;
    println!(
        "first request from a snapshot: {:.3} s (log {} events, {keys} keys, snapshot {written} bytes)",
        fast.as_secs_f64(),
        running.report.head.seq
    );
    if let Some(full) = full {
        println!("speed-up: {:.0}x", full.as_secs_f64() / fast.as_secs_f64());
    }
    let live = running.state.0.live.clone();
    let t = Instant::now();
    while !live.is_verified() {
        anyhow::ensure!(running.state.0.is_ready(), "the background check failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "chain under the snapshot verified in the background {:.1} s after start",
        (t.elapsed() + fast).as_secs_f64()
    );
    running.shutdown().await;
    server.abort();
    Ok(())
}

/// The service's allocator, so that this measures what runs.
#[global_allocator]
static GLOBAL: keyward::Allocator = keyward::ALLOCATOR;
