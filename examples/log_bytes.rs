//! Bytes on disk per event: builds a log of lifecycle events (users, keys, key updates)
//! and then N `key.used` events shaped as the proxy writes them, through the real store,
//! and says what each costs, split into the table, each index and the WAL.
//!
//! ```text
//! cargo run --release --example log_bytes -- [usage events] [keys] [batch]
//!     [--database-url postgres://…]
//! ```
//!
//! - SQLite (the default, a fresh file): sizes from the `dbstat` virtual table after
//!   `PRAGMA wal_checkpoint(TRUNCATE)`. The WAL figure is the WAL file's size after the
//!   last 10,000 usage events (checkpointed and truncated just before them), per event:
//!   what SQLite writes to the WAL per event at this batch size.
//! - PostgreSQL: a scratch database `kw_bytes_<ulid>` on that server, dropped afterwards;
//!   `pg_relation_size` of the table, its TOAST and each index, and WAL as the
//!   `pg_current_wal_lsn()` delta over the usage events (the whole server's WAL: run it
//!   on an otherwise idle server).
//!
//! Per `key.used` is (size after the usage events − size before them) / N; per lifecycle
//! event is the size before them / the number of lifecycle events.

use std::collections::BTreeMap;
use std::str::FromStr;

use anyhow::Context;
use keyward::store::postgres::PostgresStore;
use keyward::store::sqlite::SqliteStore;
use keyward_events::NewEvent;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor, Row};
use ulid::Ulid;

#[path = "common/log_fixture.rs"]
mod log_fixture;
use log_fixture::{Fixture, append_all, fixture, key_used, lifecycle};

const WAL_TAIL: usize = 10_000;

type Sizes = BTreeMap<String, i64>;

fn report(what: &str, before: &Sizes, after: &Sizes, lifecycle: usize, usage: usize) {
    println!("\n{what}");
    println!(
        "{:<28} {:>14} {:>14}",
        "object", "per lifecycle", "per key.used"
    );
    let (mut tl, mut tu) = (0.0, 0.0);
    let names: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for name in names {
        let b = *before.get(name).unwrap_or(&0) as f64;
        let a = *after.get(name).unwrap_or(&0) as f64;
        let l = b / lifecycle as f64;
        let u = (a - b) / usage as f64;
        if name.starts_with("WAL") {
            println!("{name:<28} {:>14} {u:>14.1}", "");
            continue;
        }
        tl += l;
        tu += u;
        println!("{name:<28} {l:>14.1} {u:>14.1}");
    }
    println!("{:<28} {tl:>14.1} {tu:>14.1}", "total on disk (no WAL)");
}

async fn sqlite_sizes(conn: &mut sqlx::SqliteConnection) -> anyhow::Result<Sizes> {
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").await?;
    let rows = sqlx::query("SELECT name, sum(pgsize) FROM dbstat GROUP BY name")
        .fetch_all(&mut *conn)
        .await
        .context("dbstat (is SQLITE_ENABLE_DBSTAT_VTAB on?)")?;
    let mut out = Sizes::new();
    for r in rows {
        out.insert(r.try_get(0)?, r.try_get(1)?);
    }
    Ok(out)
}

async fn run_sqlite(f: &Fixture, usage: usize, batch: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("events.db");
    let store = SqliteStore::open(&path).await?;
    let life = lifecycle(f, chrono::Utc::now());
    let lifecycle_count = life.len();
    append_all(&store, life, batch).await?;
    let mut side = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .connect()
        .await?;
    let before = sqlite_sizes(&mut side).await?;

    let events: Vec<Vec<NewEvent>> = (0..usage)
        .map(|n| vec![key_used(f, n, chrono::Utc::now())])
        .collect();
    let tail = WAL_TAIL.min(usage);
    let mut events = events.into_iter();
    append_all(&store, events.by_ref().take(usage - tail).collect(), batch).await?;
    side.execute("PRAGMA wal_checkpoint(TRUNCATE)").await?;
    let wal = {
        let mut p = path.as_os_str().to_owned();
        p.push("-wal");
        std::path::PathBuf::from(p)
    };
    let wal_before = std::fs::metadata(&wal).map_or(0, |m| m.len());
    append_all(&store, events.collect(), batch).await?;
    let wal_after = std::fs::metadata(&wal).map_or(0, |m| m.len());
    let mut after = sqlite_sizes(&mut side).await?;
    let file = std::fs::metadata(&path)?.len();
    // Scaled to the whole run so that the report's division by N gives bytes per event.
    let wal_per_event = (wal_after - wal_before) as f64 / tail as f64;
    after.insert(
        format!("WAL (batch {batch})"),
        (wal_per_event * usage as f64) as i64,
    );
    report(
        &format!(
            "SQLite: {lifecycle_count} lifecycle events, then {usage} key.used over {} keys, \
             {batch} events per append; file {file} bytes",
            f.keys.len()
        ),
        &before,
        &after,
        lifecycle_count,
        usage,
    );
    side.close().await?;
    store.close().await;
    Ok(())
}

async fn pg_sizes(conn: &mut sqlx::PgConnection) -> anyhow::Result<Sizes> {
    let rows = sqlx::query(
        "SELECT c.relname::text, pg_relation_size(c.oid) FROM pg_class c \
         WHERE c.oid = 'events'::regclass \
            OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'events'::regclass) \
         UNION ALL SELECT 'events TOAST (+index)', \
            coalesce(pg_total_relation_size(reltoastrelid), 0) FROM pg_class \
            WHERE oid = 'events'::regclass AND reltoastrelid <> 0 \
         UNION ALL SELECT 'merkle_nodes (+index)', pg_total_relation_size('merkle_nodes')",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Sizes::new();
    for r in rows {
        out.insert(r.try_get(0)?, r.try_get(1)?);
    }
    Ok(out)
}

async fn lsn(conn: &mut sqlx::PgConnection) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
            .fetch_one(&mut *conn)
            .await?,
    )
}

async fn run_postgres(url: &str, f: &Fixture, usage: usize, batch: usize) -> anyhow::Result<()> {
    let server = PgConnectOptions::from_str(url)?;
    let name = format!("kw_bytes_{}", Ulid::new().to_string().to_lowercase());
    let mut admin = server.connect().await?;
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    let options = server.clone().database(&name);
    let result = async {
        let store = PostgresStore::connect_with(options.clone()).await?;
        let mut side = options.connect().await?;
        let life = lifecycle(f, chrono::Utc::now());
        let lifecycle_count = life.len();
        append_all(&store, life, batch).await?;
        side.execute("CHECKPOINT").await.ok();
        let before = pg_sizes(&mut side).await?;
        let l0 = lsn(&mut side).await?;
        let events: Vec<Vec<NewEvent>> = (0..usage)
            .map(|n| vec![key_used(f, n, chrono::Utc::now())])
            .collect();
        append_all(&store, events, batch).await?;
        let l1 = lsn(&mut side).await?;
        let mut after = pg_sizes(&mut side).await?;
        let total: i64 = sqlx::query_scalar("SELECT pg_total_relation_size('events')")
            .fetch_one(&mut side)
            .await?;
        after.insert(format!("WAL (batch {batch})"), l1 - l0);
        report(
            &format!(
                "PostgreSQL: {lifecycle_count} lifecycle events, then {usage} key.used over {} \
                 keys, {batch} events per append; pg_total_relation_size('events') {total}",
                f.keys.len()
            ),
            &before,
            &after,
            lifecycle_count,
            usage,
        );
        side.close().await?;
        drop(store);
        anyhow::Ok(())
    }
    .await;
    admin
        .execute(format!("DROP DATABASE {name} WITH (FORCE)").as_str())
        .await?;
    result
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut numbers = Vec::new();
    let mut url = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--database-url" => url = Some(args.next().context("--database-url URL")?),
            _ => numbers.push(a.parse::<usize>().with_context(|| format!("{a:?}"))?),
        }
    }
    let usage = numbers.first().copied().unwrap_or(100_000).max(1);
    let keys = numbers.get(1).copied().unwrap_or(1_000).max(1);
    let batch = numbers.get(2).copied().unwrap_or(256).max(1);
    let f = fixture(keys);
    match url.as_deref() {
        Some(u) if keyward::store::is_postgres(u) => run_postgres(u, &f, usage, batch).await,
        Some(_) => anyhow::bail!("--database-url is for PostgreSQL; SQLite uses a fresh file"),
        None => run_sqlite(&f, usage, batch).await,
    }
}
