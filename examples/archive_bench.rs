//! The archive's figures (issue 18): builds a SQLite log of lifecycle events and N
//! `key.used` events shaped as the proxy writes them (examples/common/log_fixture.rs),
//! then archives all of it the way `keyward audit archive --until-seq N` does
//! (`archive::run`: segments built, written, read back and verified, a projection-free
//! prune), then verifies the whole history split between the hot store and the segments
//! the way `keyward audit verify --archive URL` does.
//!
//! ```text
//! cargo run --release --example archive_bench -- run [N] [KEYS] [--level L] [--to URL] [--dir DIR]
//! cargo run --release --example archive_bench -- build DATA_DIR [N] [KEYS] [--days-ago D]
//! ```
//!
//! `run` prints: the build's append rate; the archive's events per second written (built
//! from the store, compressed, put) and read back and verified; compressed bytes per
//! event and per `key.used`; the time to prune; the hot store's pages in use before and
//! after; and the time to verify the store's chain and the archive.
//!
//! `build` appends the log to `DATA_DIR/keyward.db` (what `serve --data-dir DATA_DIR`
//! opens; created if missing, appended to if a stopped Keyward left one) with the events `--days-ago` days old (default 100), for a `serve --archive-to
//! … --retain-usage 1d` to archive (scripts/bench-archive.sh).

#[path = "common/log_fixture.rs"]
mod log_fixture;

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use keyward::archive::{self, ArchiveRequest};
use keyward::checkpoint::CheckpointKey;
use keyward::store::EventStore;
use keyward::store::sqlite::SqliteStore;
use keyward_events::NewEvent;
use keyward_events::note::NoteSigner;
use log_fixture::{Fixture, append_all, fixture, key_used, lifecycle};
use sqlx::{ConnectOptions, Connection, Row};

const BATCH: usize = 1024;
const CHUNK: usize = 100_000;

/// Appends the lifecycle events, then `usage` key.used events, one millisecond apart from
/// `start`. Returns the number of events and the seconds the appends took.
async fn build(
    store: &dyn EventStore,
    f: &Fixture,
    usage: usize,
    start: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<(usize, f64)> {
    let life = lifecycle(f, start);
    let total = life.len() + usage;
    let began = Instant::now();
    append_all(store, life, BATCH).await?;
    let mut n = 0;
    while n < usage {
        let end = (n + CHUNK).min(usage);
        let events: Vec<Vec<NewEvent>> = (n..end)
            .map(|i| {
                let at = start + chrono::Duration::milliseconds(i as i64 + 1);
                vec![key_used(f, i, at)]
            })
            .collect();
        append_all(store, events, BATCH).await?;
        n = end;
        if n.is_multiple_of(1_000_000) {
            eprintln!(
                "  {n} key.used appended ({:.0} events/s)",
                n as f64 / began.elapsed().as_secs_f64()
            );
        }
    }
    Ok((total, began.elapsed().as_secs_f64()))
}

/// Pages in use in the SQLite file (not on the free list), in bytes.
async fn used_bytes(path: &std::path::Path) -> anyhow::Result<i64> {
    let mut c = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .connect()
        .await?;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut c)
        .await?;
    let row = sqlx::query(
        "SELECT (SELECT page_count FROM pragma_page_count()) - (SELECT freelist_count FROM pragma_freelist_count()), (SELECT page_size FROM pragma_page_size())",
    )
    .fetch_one(&mut c)
    .await?;
    let pages: i64 = row.try_get(0)?;
    let size: i64 = row.try_get(1)?;
    c.close().await?;
    Ok(pages * size)
}

struct Args {
    numbers: Vec<usize>,
    level: u8,
    to: Option<String>,
    dir: Option<std::path::PathBuf>,
    days_ago: i64,
}

fn parse(mut it: impl Iterator<Item = String>) -> anyhow::Result<Args> {
    let mut a = Args {
        numbers: Vec::new(),
        level: archive::DEFAULT_LEVEL,
        to: None,
        dir: None,
        days_ago: 100,
    };
    while let Some(x) = it.next() {
        match x.as_str() {
            "--level" => a.level = it.next().context("--level L")?.parse()?,
            "--to" => a.to = Some(it.next().context("--to URL")?),
            "--dir" => a.dir = Some(it.next().context("--dir DIR")?.into()),
            "--days-ago" => a.days_ago = it.next().context("--days-ago D")?.parse()?,
            _ => a.numbers.push(
                x.parse()
                    .with_context(|| format!("{x:?} is not a number"))?,
            ),
        }
    }
    Ok(a)
}

async fn run(a: Args) -> anyhow::Result<()> {
    let usage = a.numbers.first().copied().unwrap_or(10_000_000);
    let keys = a.numbers.get(1).copied().unwrap_or(1_000).max(1);
    let tmp = tempfile::tempdir()?;
    let dir = a.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("keyward.db");
    anyhow::ensure!(!path.exists(), "{} exists already", path.display());
    let store = SqliteStore::open(&path).await?;
    let f = fixture(keys);
    let start = chrono::Utc::now() - chrono::Duration::days(a.days_ago);
    eprintln!(
        "building a log of {usage} key.used over {keys} keys in {}",
        path.display()
    );
    let (total, secs) = build(&store, &f, usage, start).await?;
    println!(
        "log:      {total} events appended in {secs:.1} s = {:.0} events/s ({BATCH} per append)",
        total as f64 / secs
    );
    let before = used_bytes(&path).await?;

    let signer =
        NoteSigner::generate("keyward-bench/archive").map_err(|e| anyhow::anyhow!("{e}"))?;
    let key = CheckpointKey {
        origin: signer.name().to_owned(),
        signer,
        source: "bench".to_owned(),
    };
    let url =
        a.to.clone()
            .unwrap_or_else(|| dir.join("archive").display().to_string());
    let dest = archive::open_destination(&url)?;
    let req = ArchiveRequest {
        until_seq: Some(total as u64),
        before: None,
        level: a.level,
        zstd_level: archive::DEFAULT_ZSTD_LEVEL,
        no_prune: false,
        actor: "cli".to_owned(),
    };
    let began = Instant::now();
    let report = archive::run(&store, &dest, &key, None, &req, async |_| Ok(())).await?;
    let wall = began.elapsed().as_secs_f64();
    let covered = report.covered as f64;
    anyhow::ensure!(
        covered > 0.0,
        "nothing archived: N is below one segment of 2^{}",
        a.level
    );
    println!(
        "archive:  {} segments of 2^{} = {} events to {url} in {wall:.1} s",
        report.written.len(),
        a.level,
        report.covered
    );
    println!(
        "  built and written:     {:.1} s = {:.0} events/s",
        report.write.as_secs_f64(),
        covered / report.write.as_secs_f64()
    );
    println!(
        "  read back, verified:   {:.1} s = {:.0} events/s",
        report.verify.as_secs_f64(),
        covered / report.verify.as_secs_f64()
    );
    println!("  whole run:             {:.0} events/s", covered / wall);
    println!(
        "  compressed:            {} bytes = {:.1} bytes/event, {:.1} bytes per key.used (zstd {})",
        report.bytes,
        report.bytes as f64 / covered,
        report.bytes as f64 / report.pruned_events.max(1) as f64,
        archive::DEFAULT_ZSTD_LEVEL
    );
    println!(
        "  pruned:                {} usage events in {:.1} s = {:.0} events/s",
        report.pruned_events,
        report.prune.as_secs_f64(),
        report.pruned_events as f64 / report.prune.as_secs_f64()
    );
    let after = used_bytes(&path).await?;
    println!(
        "hot store: {:.1} MB in use before, {:.1} MB after (the file keeps its size: freed pages are reused)",
        before as f64 / 1e6,
        after as f64 / 1e6
    );

    let began = Instant::now();
    let chain = keyward::audit::verify_chain(&store, None).await?;
    let chain_secs = began.elapsed().as_secs_f64();
    anyhow::ensure!(chain.failure.is_none(), "the store does not verify");
    let began = Instant::now();
    let (problems, segments, events, _) =
        archive::verify_archive(Some(&store), &dest, &key.verifier()).await?;
    let archive_secs = began.elapsed().as_secs_f64();
    anyhow::ensure!(
        problems.is_empty(),
        "the archive does not verify: {problems:?}"
    );
    println!(
        "verify:   store {} events ({} pruned, crossed by kept hashes) in {chain_secs:.1} s; \
         archive {segments} segments, {events} events in {archive_secs:.1} s = {:.0} events/s; \
         whole history {:.1} s",
        chain.checked,
        chain.pruned,
        events as f64 / archive_secs,
        chain_secs + archive_secs
    );
    store.close().await;
    Ok(())
}

async fn build_only(a: Args) -> anyhow::Result<()> {
    let dir = a.dir.clone().context("build DATA_DIR")?;
    let usage = a.numbers.first().copied().unwrap_or(10_000_000);
    let keys = a.numbers.get(1).copied().unwrap_or(1_000).max(1);
    std::fs::create_dir_all(&dir)?;
    // Appended to the log that is there, if any (a Keyward's data dir, stopped).
    let path = dir.join("keyward.db");
    let store: Arc<SqliteStore> = Arc::new(SqliteStore::open(&path).await?);
    let f = fixture(keys);
    let start = chrono::Utc::now() - chrono::Duration::days(a.days_ago);
    let (total, secs) = build(store.as_ref(), &f, usage, start).await?;
    println!(
        "{total} events in {} ({secs:.1} s = {:.0} events/s)",
        path.display(),
        total as f64 / secs
    );
    store.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut it = std::env::args().skip(1);
    match it.next().as_deref() {
        Some("run") => run(parse(it)?).await,
        Some("build") => {
            let dir = it.next().context("build DATA_DIR [N] [KEYS]")?;
            let mut a = parse(it)?;
            a.dir = Some(dir.into());
            build_only(a).await
        }
        _ => anyhow::bail!(
            "usage: archive_bench run [N] [KEYS] [--level L] [--to URL] [--dir DIR] | build DATA_DIR [N] [KEYS] [--days-ago D]"
        ),
    }
}
