//! The PostgreSQL event store: one log shared by several Keyward nodes.
//!
//! # How appends stay one gap-free chain across nodes
//!
//! Every append is one transaction, and its first statement takes
//! `pg_advisory_xact_lock(APPEND_LOCK)`. Only then, in later statements, does it read the
//! head of the log (seq and hash), the stored copies of the event ids it carries and the
//! current version of every stream it writes; it decides and seals the events from
//! those, inserts them, and commits. The lock is released by the commit (or the
//! rollback) itself and never earlier, so:
//!
//! - **Gap-free `seq` in commit order, one hash chain.** While one transaction holds the
//!   lock no other can seal anything, and the next holder starts only after the commit
//!   has completed. PostgreSQL makes a committed transaction visible before it releases
//!   its locks, and in READ COMMITTED (which every append asks for, whatever the
//!   database's default) every statement takes a fresh snapshot, so the next holder's
//!   head read, which runs after its lock statement returns, sees the previous commit.
//!   Its first event therefore takes `head.seq + 1` and `prev_hash = head.hash`. A
//!   rolled-back append wrote nothing and used up no seq. (Under REPEATABLE READ the
//!   snapshot would be taken by the lock statement, before the lock is granted, and the
//!   head could be stale.)
//! - **Optimistic concurrency across nodes.** Stream versions and idempotency (`event_id`)
//!   are read inside the lock, so the checks (`src/store/plan.rs`, shared with SQLite)
//!   are made against the log as it is at that moment, whichever node wrote last. There
//!   is no in-memory head or version cache: other nodes append too.
//! - **A reader never skips an event that commits late.** A seq is assigned only under the
//!   lock, and the lock is held until that seq's transaction has committed (or vanished
//!   with nothing written). So every event with a lower seq was already visible before a
//!   higher seq was even assigned: a snapshot that shows seq `n` shows every seq below
//!   `n`. A reader that has applied everything up to `last_applied` and then reads
//!   `seq > last_applied` in seq order (what [`Live::catch_up`](crate::live::Live::catch_up)
//!   does) can see the log grow only at its end, however long a writer keeps its
//!   transaction open. A sequence or identity column would not give this: its numbers are
//!   handed out before commit, so seq 8 can become visible while seq 7 is still open.
//!
//! Every insert fires a statement trigger that `pg_notify`s `keyward_events` with the new
//! head seq; PostgreSQL delivers it at commit. Other nodes listen for it (see
//! [`crate::tail`]) and poll as a fallback.
//!
//! A node that dies mid-append loses its connection, and PostgreSQL rolls the transaction
//! back and releases the lock. A node that stalls mid-transaction is cut off by
//! `idle_in_transaction_session_timeout`, and a waiter gives up after `lock_timeout`
//! rather than hang a command forever.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use keyward_events::merkle::{CompactRange, NodeId, leaf_hash};
use keyward_events::{Envelope, Hash32, Head, NewEvent};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Executor, PgConnection, Postgres, Row};
use ulid::Ulid;

use super::plan::{self, seal_run};
use super::tree::{self, Reads, Rows};
use super::{
    AppendError, ArchivedSegment, EventFilter, EventStore, Order, Prune, RawEvent, StoreError,
    select_events,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The channel the insert trigger notifies (see `migrations/postgres/0001_events.sql`).
pub const NOTIFY_CHANNEL: &str = "keyward_events";
/// The advisory lock key every append takes: "keyward" in ASCII, then 1.
pub const APPEND_LOCK: i64 = 0x6b65_7977_6172_6401;
/// The advisory lock key that makes the scheduled archive run on one node at a time.
pub const ARCHIVE_LOCK: i64 = 0x6b65_7977_6172_6403;
/// The advisory lock key that makes the first-run bootstrap happen on one node only.
pub const FIRST_RUN_LOCK: i64 = 0x6b65_7977_6172_6402;
/// The first key of every claim lock ([`PostgresStore::claim_lock`]): "kw" and 3.
pub const CLAIM_LOCK_CLASS: i32 = 0x6b77_0003;

const COLUMNS: &str = "seq, event_id, stream, stream_version, type, schema, occurred_at, \
                       actor, request_id, data, prev_hash, hash";
const INSERT: &str = "INSERT INTO events (seq, event_id, stream, stream_version, type, \
                      schema, occurred_at, actor, request_id, data, prev_hash, hash) \
                      SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], \
                      $4::bigint[], $5::text[], $6::int[], $7::bigint[], $8::text[], \
                      $9::text[], $10::text[], $11::bytea[], $12::bytea[])";
const POOL_SIZE: u32 = 8;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Session settings for every store connection (see the module docs). Set with SET after
/// connecting rather than as a startup `options` parameter, which PgBouncer refuses.
const SESSION: &str = "SET lock_timeout = '15s'; SET idle_in_transaction_session_timeout = '10s'";

pub struct PostgresStore {
    pool: PgPool,
    options: PgConnectOptions,
    serialise: bool,
    /// The Merkle tree's right edge after this node's last append. Another node may
    /// have appended since: an append uses it only if its size is the head it reads
    /// under the lock, and reads the edge from the store otherwise.
    tree: parking_lot::Mutex<Option<CompactRange>>,
}

/// Query parameters sqlx reads from a PostgreSQL URL.
const PG_PARAMS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// The URL without the query parameters sqlx does not know: sqlx logs each of those with
/// its value ("ignoring unrecognized connect parameter"), and a misspelt `?passwd=` is a
/// password. Each is left out with a warning that names only the parameter.
fn known_params_only(url: &str) -> String {
    let Ok(mut u) = reqwest::Url::parse(url) else {
        return url.to_owned();
    };
    if u.query().is_none() {
        return url.to_owned();
    }
    let known = |k: &str| PG_PARAMS.contains(&k) || k.starts_with("options[");
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .filter(|(k, _)| {
            let keep = known(k);
            if !keep {
                let plain = k.len() <= 32
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
                let name = if plain { k.as_ref() } else { "[redacted]" };
                tracing::warn!(
                    parameter = name,
                    "ignoring an unknown parameter of the database URL"
                );
            }
            keep
        })
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if pairs.is_empty() {
        u.set_query(None);
    } else {
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

impl PostgresStore {
    /// Connects to a `postgres://…` URL and runs the migrations. Several nodes may do so
    /// at once: sqlx's migrator holds an advisory lock of its own while it migrates.
    pub async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        let url = known_params_only(url);
        let options = PgConnectOptions::from_str(&url)
            .map_err(|e| StoreError::Unavailable(format!("bad PostgreSQL URL: {e}")))?;
        Self::connect_with(options).await
    }

    /// [`connect`](Self::connect) with options built in code.
    pub async fn connect_with(options: PgConnectOptions) -> Result<PostgresStore, StoreError> {
        let mut options = options;
        // `?application_name=…` in the URL tells nodes apart in pg_stat_activity.
        if options.get_application_name().is_none() {
            options = options.application_name("keyward");
        }
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(|conn, _| Box::pin(async move { conn.execute(SESSION).await.map(drop) }))
            .connect_with(options.clone())
            .await?;
        let store = PostgresStore {
            pool,
            options,
            serialise: true,
            tree: parking_lot::Mutex::new(None),
        };
        store.migrate().await?;
        store.backfill_tree().await?;
        Ok(store)
    }

    /// Appends without the advisory lock. **Only for measuring the lock's cost** with a
    /// single appender: two nodes appending without it would fork the chain.
    #[doc(hidden)]
    pub fn without_append_lock_for_benchmarks(mut self) -> Self {
        self.serialise = false;
        self
    }

    /// Applies any migration not yet applied. `connect` already does this; `keyward
    /// migrate` says so explicitly.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await.map_err(|e| {
            StoreError::Unavailable(format!("migrating the PostgreSQL event store: {e}"))
        })
    }

    /// Closes the pool. Calls after this fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Subscribes to the notification every append sends, on a connection of its own.
    pub async fn listen(&self) -> Result<Wakeups, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(self.options.clone());
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.ignore_pool_close_event(true);
        // A lost connection is reported, not silently replaced: the tail reads the log
        // after every reconnect, since notifications sent meanwhile are gone.
        listener.eager_reconnect(false);
        listener.listen(NOTIFY_CHANNEL).await?;
        Ok(Wakeups { listener })
    }

    /// Waits until no other node holds the first-run lock, and holds it until released,
    /// so that of several nodes starting on an empty log only one bootstraps it.
    pub async fn first_run_lock(&self) -> Result<SessionLock, StoreError> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(FIRST_RUN_LOCK)
            .execute(&mut *conn)
            .await?;
        Ok(SessionLock {
            conn: Some(conn),
            key: LockKey::One(FIRST_RUN_LOCK),
        })
    }

    /// The archive lock if no other node holds it, held until released; `None` if one
    /// does (that node is archiving: this one skips its turn).
    pub async fn try_archive_lock(&self) -> Result<Option<SessionLock>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(ARCHIVE_LOCK)
            .fetch_one(&mut *conn)
            .await?;
        Ok(got.then(|| SessionLock {
            conn: Some(conn),
            key: LockKey::One(ARCHIVE_LOCK),
        }))
    }

    /// Waits until no other session, on this node or another, holds the claim on `name`,
    /// and holds it until released: what makes a decision on a username or on a user's
    /// state hold across nodes (see [`crate::commands`]). The two-key form of the advisory
    /// lock, whose key space does not overlap [`APPEND_LOCK`] and [`FIRST_RUN_LOCK`], with
    /// [`CLAIM_LOCK_CLASS`] and 32 bits of blake3 of `name`: two names that share them only
    /// wait for each other.
    pub async fn claim_lock(&self, name: &str) -> Result<SessionLock, StoreError> {
        let digest = blake3::hash(name.as_bytes());
        let mut four = [0u8; 4];
        four.copy_from_slice(&digest.as_bytes()[..4]);
        let id = i32::from_le_bytes(four);
        let mut conn = self.pool.acquire().await?;
        sqlx::query("SELECT pg_advisory_lock($1, $2)")
            .bind(CLAIM_LOCK_CLASS)
            .bind(id)
            .execute(&mut *conn)
            .await?;
        Ok(SessionLock {
            conn: Some(conn),
            key: LockKey::Two(CLAIM_LOCK_CLASS, id),
        })
    }

    async fn append_in(
        &self,
        conn: &mut PgConnection,
        units: Vec<Vec<NewEvent>>,
    ) -> Result<Vec<Result<Vec<Envelope>, AppendError>>, StoreError> {
        let mut tx =
            sqlx::Connection::begin_with(conn, "BEGIN ISOLATION LEVEL READ COMMITTED").await?;
        if self.serialise {
            // Its own statement: the reads below must take their snapshots after the
            // lock is granted (see the module docs).
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(APPEND_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        let head = read_head(&mut tx).await?;
        let ids = plan::event_ids(&units);
        let existing = lookup_events(&mut tx, &ids).await?;
        let mut streams = HashMap::new();
        let missing = plan::streams_to_look_up(&units, &existing, &streams);
        for (stream, version) in lookup_stream_versions(&mut tx, &missing).await? {
            streams.insert(stream, version);
        }

        let mut decided = plan::plan(units, &existing, &mut streams);
        let planned = decided.take_planned();
        let count = planned.len();
        let mut end = head;
        let sealed = seal_run(&mut planned.into_iter(), count, &mut end);
        let mut merkle = None;
        if !sealed.is_empty() {
            insert(&mut tx, &sealed).await?;
            // The tree's edge as this node left it, if no other node appended since.
            let cached = self.tree.lock().take().filter(|t| t.size() == head.seq);
            let mut cr = match cached {
                Some(cr) => cr,
                None => tree_at(&mut tx, head.seq).await?,
            };
            let mut nodes = Vec::new();
            tree::push_events(&mut cr, sealed.iter().map(|(env, _)| &env.hash), &mut nodes);
            insert_nodes(&mut tx, &nodes).await?;
            merkle = Some(cr);
        }
        tx.commit().await?;
        if let Some(cr) = merkle {
            *self.tree.lock() = Some(cr);
        }
        Ok(decided.answer(sealed.into_iter().map(|(env, _)| env).collect()))
    }

    /// [`EventStore::prune_archived`] in one transaction under the append lock.
    async fn prune_in(
        &self,
        conn: &mut PgConnection,
        prune: Prune,
    ) -> Result<Envelope, StoreError> {
        let mut tx =
            sqlx::Connection::begin_with(conn, "BEGIN ISOLATION LEVEL READ COMMITTED").await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(APPEND_LOCK)
            .execute(&mut *tx)
            .await?;
        let now = chrono::Utc::now().timestamp_micros();
        for (seg, want) in &prune.segments {
            let exists: Option<i64> = sqlx::query_scalar(
                "SELECT first_seq FROM archived_segments WHERE (first_seq <= $2 AND last_seq >= $1) \
                 OR name = $3 LIMIT 1",
            )
            .bind(to_i64(seg.first_seq)?)
            .bind(to_i64(seg.last_seq)?)
            .bind(seg.name.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            if exists.is_some() {
                return Err(super::prune_refused(format!(
                    "seqs {} to {} ({}) are already recorded as archived",
                    seg.first_seq, seg.last_seq, seg.name
                )));
            }
            let rows = sqlx::query(
                "SELECT seq, hash, stream, stream_version FROM events \
                 WHERE seq >= $1 AND seq <= $2 AND type IN ('key.used', 'key.denied') ORDER BY seq",
            )
            .bind(to_i64(seg.first_seq)?)
            .bind(to_i64(seg.last_seq)?)
            .fetch_all(&mut *tx)
            .await?;
            let got: Vec<(u64, Hash32)> =
                rows.iter().map(decode_seq_hash).collect::<Result<_, _>>()?;
            super::check_prune_rows(seg, want, &got)?;
            let mut streams = Vec::with_capacity(rows.len());
            for row in &rows {
                let stream: String = row.try_get(2)?;
                let version: i64 = row.try_get(3)?;
                streams.push((stream, u64::try_from(version).unwrap_or(0)));
            }
            sqlx::query(
                "INSERT INTO archived_segments (first_seq, last_seq, name, root, checkpoint, archived_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(to_i64(seg.first_seq)?)
            .bind(to_i64(seg.last_seq)?)
            .bind(seg.name.as_str())
            .bind(&seg.root.0[..])
            .bind(seg.checkpoint.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let mut seqs = Vec::with_capacity(got.len());
            let mut hashes = Vec::with_capacity(got.len());
            for (seq, hash) in &got {
                seqs.push(to_i64(*seq)?);
                hashes.push(&hash.0[..]);
            }
            sqlx::query(
                "INSERT INTO pruned_hashes (seq, hash) SELECT * FROM UNNEST($1::bigint[], $2::bytea[])",
            )
            .bind(seqs)
            .bind(hashes)
            .execute(&mut *tx)
            .await?;
            for (stream, version) in super::stream_maxima(&streams) {
                sqlx::query(
                    "INSERT INTO pruned_streams (stream, last_seq, version) VALUES ($1, $2, $3)",
                )
                .bind(stream)
                .bind(to_i64(seg.last_seq)?)
                .bind(to_i64(version)?)
                .execute(&mut *tx)
                .await?;
            }
            let deleted = sqlx::query(
                "DELETE FROM events WHERE seq >= $1 AND seq <= $2 AND type IN ('key.used', 'key.denied')",
            )
            .bind(to_i64(seg.first_seq)?)
            .bind(to_i64(seg.last_seq)?)
            .execute(&mut *tx)
            .await?;
            if deleted.rows_affected() != got.len() as u64 {
                return Err(super::prune_refused(format!(
                    "deleting the usage events of {} removed {} rows, not {}",
                    seg.name,
                    deleted.rows_affected(),
                    got.len()
                )));
            }
        }
        let head = read_head(&mut tx).await?;
        let stream = prune.event.stream.clone();
        let version = lookup_stream_versions(&mut tx, &[stream.as_str()])
            .await?
            .first()
            .map_or(0, |(_, v)| *v);
        let sealed = prune
            .event
            .seal_with_data(head.seq + 1, version + 1, head.hash);
        let mut cr = tree_at(&mut tx, head.seq).await?;
        insert(&mut tx, std::slice::from_ref(&sealed)).await?;
        let mut nodes = Vec::new();
        tree::push_events(&mut cr, [&sealed.0.hash], &mut nodes);
        insert_nodes(&mut tx, &nodes).await?;
        tx.commit().await?;
        Ok(sealed.0)
    }

    /// Gives a log that predates the Merkle tree (or whose tree stops short of it) its
    /// tree, [`tree::BACKFILL_CHUNK`] events per transaction under the append lock, so
    /// that nodes starting together share the work, saying how far it has got.
    async fn backfill_tree(&self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let mut said = false;
        let mut conn = self.pool.acquire().await?;
        loop {
            let mut tx =
                sqlx::Connection::begin_with(&mut *conn, "BEGIN ISOLATION LEVEL READ COMMITTED")
                    .await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(APPEND_LOCK)
                .execute(&mut *tx)
                .await?;
            let head = read_head(&mut tx).await?.seq;
            let built = read_tree_size(&mut tx).await?;
            if built >= head {
                tx.rollback().await?;
                if said {
                    tracing::info!(
                        events = head,
                        secs = started.elapsed().as_secs_f64(),
                        "the Merkle tree is built"
                    );
                }
                return Ok(());
            }
            if !said {
                tracing::info!(
                    from = built,
                    to = head,
                    "building the Merkle tree over the log ({} events per transaction)",
                    tree::BACKFILL_CHUNK
                );
                said = true;
            }
            let mut cr = tree_at(&mut tx, built).await?;
            let target = head.min((built / tree::BACKFILL_CHUNK + 1) * tree::BACKFILL_CHUNK);
            extend_tree(&mut tx, &mut cr, target).await?;
            tx.commit().await?;
            tracing::info!(built = target, head, "building the Merkle tree");
        }
    }
}

/// Wakes the tail when another append commits.
pub struct Wakeups {
    listener: PgListener,
}

impl Wakeups {
    /// Waits for the next notification and returns the head seq it names. An error means
    /// the connection is gone and notifications may have been missed.
    pub async fn recv(&mut self) -> Result<Option<u64>, StoreError> {
        match self.listener.try_recv().await? {
            Some(n) => Ok(n.payload().parse().ok()),
            None => Err(StoreError::Unavailable(
                "lost the connection listening for new events".to_owned(),
            )),
        }
    }
}

/// A session-level advisory lock, held on a pooled connection until released. Dropped
/// without `release`, the connection is closed, which releases it too.
pub struct SessionLock {
    conn: Option<PoolConnection<Postgres>>,
    key: LockKey,
}

/// The one-key or the two-key form of an advisory lock: PostgreSQL keeps them apart.
#[derive(Clone, Copy, Debug)]
enum LockKey {
    One(i64),
    Two(i32, i32),
}

impl SessionLock {
    pub async fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            let unlocked = match self.key {
                LockKey::One(k) => {
                    sqlx::query("SELECT pg_advisory_unlock($1)")
                        .bind(k)
                        .execute(&mut *conn)
                        .await
                }
                LockKey::Two(a, b) => {
                    sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                        .bind(a)
                        .bind(b)
                        .execute(&mut *conn)
                        .await
                }
            };
            if unlocked.is_err() {
                conn.close_on_drop();
            }
        }
    }
}

impl Drop for SessionLock {
    fn drop(&mut self) {
        if let Some(conn) = &mut self.conn {
            conn.close_on_drop();
        }
    }
}

impl PostgresStore {
    /// The events matching `filter`, in seq `order`.
    async fn select(
        &self,
        filter: &EventFilter,
        limit: usize,
        order: Order,
    ) -> Result<Vec<Envelope>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut qb = select_events::<Postgres>(
            COLUMNS,
            ("actor = ", ""),
            filter,
            limit,
            order,
            |qb, column, values| {
                qb.push(column).push(" = ANY(").push_bind(values).push(")");
            },
        )?;
        let rows = qb.build().fetch_all(&self.pool).await?;
        rows.iter().map(decode_row).collect()
    }
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn append(
        &self,
        units: Vec<Vec<NewEvent>>,
    ) -> Result<Vec<Result<Vec<Envelope>, AppendError>>, StoreError> {
        if units.iter().all(Vec::is_empty) {
            return Ok(units.iter().map(|_| Ok(Vec::new())).collect());
        }
        let mut conn = self.pool.acquire().await?;
        match self.append_in(&mut conn, units).await {
            Ok(results) => Ok(results),
            Err(e) => {
                // Whether the failure was ours or the server's, this connection is not
                // reused: a cancelled COMMIT leaves it in a state not worth reasoning about.
                conn.close_on_drop();
                tracing::warn!(error = %e, "append failed; the batch was rolled back");
                Err(e)
            }
        }
    }

    async fn head(&self) -> Result<Head, StoreError> {
        let mut conn = self.pool.acquire().await?;
        read_head(&mut conn).await
    }

    async fn read(&self, filter: &EventFilter, limit: usize) -> Result<Vec<Envelope>, StoreError> {
        self.select(filter, limit, Order::Oldest).await
    }

    async fn read_newest(
        &self,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<Envelope>, StoreError> {
        self.select(filter, limit, Order::Newest).await
    }

    async fn tree_size(&self) -> Result<u64, StoreError> {
        let mut conn = self.pool.acquire().await?;
        read_tree_size(&mut conn).await
    }

    async fn tree_nodes(&self, ids: &[NodeId]) -> Result<HashMap<NodeId, Hash32>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let rows = read_rows(&mut conn, &tree::reads_for(ids)).await?;
        Ok(tree::compute(ids, &rows))
    }

    async fn stored_tree_nodes(
        &self,
        lo: u64,
        hi: u64,
    ) -> Result<HashMap<NodeId, Hash32>, StoreError> {
        let reads = Reads {
            nodes: tree::stored_within(lo, hi),
            leaves: Vec::new(),
        };
        let mut conn = self.pool.acquire().await?;
        Ok(read_rows(&mut conn, &reads).await?.nodes)
    }

    async fn pruned_hashes(
        &self,
        after: u64,
        until: u64,
    ) -> Result<Vec<(u64, Hash32)>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, hash FROM pruned_hashes WHERE seq > $1 AND seq <= $2 ORDER BY seq",
        )
        .bind(to_i64(after)?)
        .bind(to_i64(until.min(i64::MAX as u64))?)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode_seq_hash).collect()
    }

    async fn archived_segments(&self) -> Result<Vec<ArchivedSegment>, StoreError> {
        let rows = sqlx::query(
            "SELECT first_seq, last_seq, name, root, checkpoint FROM archived_segments ORDER BY first_seq",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode_segment).collect()
    }

    async fn prune_archived(&self, prune: Prune) -> Result<Envelope, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let done = self.prune_in(&mut conn, prune).await;
        if done.is_err() {
            conn.close_on_drop();
        }
        // The cached tree edge is behind the appended event now.
        *self.tree.lock() = None;
        done
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&self.pool)
            .await?;
        if standby {
            return Err(StoreError::Unavailable(
                "the database is a read-only standby".to_owned(),
            ));
        }
        Ok(())
    }
}

// ---------- the Merkle tree (see `super::tree`) ----------

/// How many leaves the stored tree can serve: the head, once the tree is built. One
/// statement, so that both come from one snapshot.
async fn read_tree_size(conn: &mut PgConnection) -> Result<u64, StoreError> {
    let row = sqlx::query(
        "SELECT greatest((SELECT max(seq) FROM events), (SELECT max(seq) FROM pruned_hashes)), \
         (SELECT max(idx) FROM merkle_nodes WHERE level = $1)",
    )
    .bind(i32::from(tree::STRIDE))
    .fetch_one(&mut *conn)
    .await?;
    let head: Option<i64> = row.try_get(0)?;
    let highest: Option<i64> = row.try_get(1)?;
    Ok(tree::built_size(
        highest.map(|k| k.max(0) as u64),
        head.map_or(0, |h| h.max(0) as u64),
    ))
}

/// Every range of stored nodes and of leaves `reads` names, in one statement of fixed
/// text. LATERAL makes each range an index range scan whatever the planner thinks of
/// the arrays' lengths.
const READ_ROWS: &str = "SELECT r.level, n.idx, n.hash \
     FROM UNNEST($1::int[], $2::bigint[], $3::bigint[]) AS r(level, lo, hi) \
     CROSS JOIN LATERAL (SELECT m.idx, m.hash FROM merkle_nodes m \
         WHERE m.level = r.level AND m.idx >= r.lo AND m.idx < r.hi) n \
     UNION ALL \
     SELECT 0, e.seq - 1, e.hash \
     FROM UNNEST($4::bigint[], $5::bigint[]) AS l(lo, hi) \
     CROSS JOIN LATERAL (SELECT ev.seq, ev.hash FROM events ev \
         WHERE ev.seq > l.lo AND ev.seq <= l.hi \
         UNION ALL SELECT p.seq, p.hash FROM pruned_hashes p \
         WHERE p.seq > l.lo AND p.seq <= l.hi) e";

async fn read_rows(conn: &mut PgConnection, reads: &Reads) -> Result<Rows, StoreError> {
    let mut rows = Rows::default();
    if reads.is_empty() {
        return Ok(rows);
    }
    let mut levels = Vec::new();
    let mut los = Vec::new();
    let mut his = Vec::new();
    for &(level, lo, hi) in &reads.nodes {
        levels.push(i32::from(level));
        los.push(to_i64(lo)?);
        his.push(to_i64(hi)?);
    }
    let mut leaf_los = Vec::new();
    let mut leaf_his = Vec::new();
    for &(lo, hi) in &reads.leaves {
        leaf_los.push(to_i64(lo)?);
        leaf_his.push(to_i64(hi)?);
    }
    let fetched = sqlx::query(READ_ROWS)
        .bind(levels)
        .bind(los)
        .bind(his)
        .bind(leaf_los)
        .bind(leaf_his)
        .fetch_all(&mut *conn)
        .await?;
    for row in &fetched {
        let level: i32 = row.try_get(0)?;
        let index: i64 = row.try_get(1)?;
        let hash: &[u8] = row.try_get(2)?;
        let bad = |reason: String| StoreError::Corrupt { seq: 0, reason };
        let (Ok(level), Ok(index)) = (u8::try_from(level), u64::try_from(index)) else {
            return Err(bad(format!("Merkle node ({level}, {index}) out of range")));
        };
        let Some(hash) = Hash32::from_slice(hash) else {
            return Err(bad(format!(
                "Merkle row ({level}, {index}) has {} bytes, not 32",
                hash.len()
            )));
        };
        if level == 0 {
            rows.leaves.insert(index, leaf_hash(&hash));
        } else {
            rows.nodes.insert(NodeId { level, index }, hash);
        }
    }
    Ok(rows)
}

/// The tree's right edge at `size` leaves, from the stored rows, built first from the
/// events where the stored tree stops short of them (another node, of a version that
/// keeps no tree, appended meanwhile).
async fn tree_at(conn: &mut PgConnection, size: u64) -> Result<CompactRange, StoreError> {
    let built = read_tree_size(conn).await?.min(size);
    let edge = CompactRange::edge(built);
    let rows = read_rows(conn, &tree::reads_for(&edge)).await?;
    let mut cr = tree::compact_range(built, &rows).ok_or_else(|| StoreError::Corrupt {
        seq: built,
        reason: format!("the Merkle tree's rows for size {built} are missing"),
    })?;
    if built < size {
        tracing::warn!(
            from = built,
            to = size,
            "the Merkle tree stops short of the log; building the rest in this append"
        );
        extend_tree(conn, &mut cr, size).await?;
    }
    Ok(cr)
}

/// Appends the events after the tree's end up to seq `to` to the tree and stores the
/// nodes they complete.
async fn extend_tree(
    conn: &mut PgConnection,
    cr: &mut CompactRange,
    to: u64,
) -> Result<(), StoreError> {
    while cr.size() < to {
        let hi = to.min(cr.size() + tree::BACKFILL_CHUNK);
        let rows =
            sqlx::query("SELECT seq, hash FROM events WHERE seq > $1 AND seq <= $2 ORDER BY seq")
                .bind(to_i64(cr.size())?)
                .bind(to_i64(hi)?)
                .fetch_all(&mut *conn)
                .await?;
        let mut hashes = Vec::with_capacity(rows.len());
        for row in &rows {
            let seq = decode_seq(row)?;
            let expected = cr.size() + hashes.len() as u64 + 1;
            if seq != expected {
                return Err(StoreError::Corrupt {
                    seq: expected,
                    reason: format!("the log skips from seq {} to {seq}", expected - 1),
                });
            }
            let hash: &[u8] = row.try_get(1).map_err(|e| corrupt(seq, e))?;
            hashes.push(Hash32::from_slice(hash).ok_or_else(|| StoreError::Corrupt {
                seq,
                reason: format!("hash has {} bytes, not 32", hash.len()),
            })?);
        }
        if hashes.len() as u64 != hi - cr.size() {
            return Err(StoreError::Corrupt {
                seq: cr.size() + hashes.len() as u64 + 1,
                reason: "an event below the head is missing".to_owned(),
            });
        }
        let mut nodes = Vec::new();
        tree::push_events(cr, &hashes, &mut nodes);
        insert_nodes(conn, &nodes).await?;
    }
    Ok(())
}

/// Stores Merkle nodes in one statement.
async fn insert_nodes(
    conn: &mut PgConnection,
    nodes: &[(NodeId, Hash32)],
) -> Result<(), StoreError> {
    if nodes.is_empty() {
        return Ok(());
    }
    let mut levels = Vec::with_capacity(nodes.len());
    let mut idxs = Vec::with_capacity(nodes.len());
    let mut hashes = Vec::with_capacity(nodes.len());
    for (id, hash) in nodes {
        levels.push(i32::from(id.level));
        idxs.push(to_i64(id.index)?);
        hashes.push(&hash.0[..]);
    }
    sqlx::query(
        "INSERT INTO merkle_nodes (level, idx, hash) \
         SELECT * FROM UNNEST($1::int[], $2::bigint[], $3::bytea[])",
    )
    .bind(levels)
    .bind(idxs)
    .bind(hashes)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn read_head(conn: &mut PgConnection) -> Result<Head, StoreError> {
    // The last event may be one an archive pruned: its hash is kept in pruned_hashes.
    let row = sqlx::query(
        "(SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1) UNION ALL \
         (SELECT seq, hash FROM pruned_hashes ORDER BY seq DESC LIMIT 1) \
         ORDER BY seq DESC LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(Head::default());
    };
    let seq = decode_seq(&row)?;
    let hash: &[u8] = row.try_get(1).map_err(|e| corrupt(seq, e))?;
    let hash = Hash32::from_slice(hash).ok_or_else(|| StoreError::Corrupt {
        seq,
        reason: format!("hash has {} bytes, not 32", hash.len()),
    })?;
    Ok(Head { seq, hash })
}

async fn lookup_events(
    conn: &mut PgConnection,
    ids: &[String],
) -> Result<HashMap<Ulid, Envelope>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM events WHERE event_id = ANY($1::text[])"
    ))
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut found = HashMap::with_capacity(rows.len());
    for row in &rows {
        let env = decode_row(row)?;
        found.insert(env.event_id, env);
    }
    Ok(found)
}

async fn lookup_stream_versions(
    conn: &mut PgConnection,
    streams: &[&str],
) -> Result<Vec<(String, u64)>, StoreError> {
    if streams.is_empty() {
        return Ok(Vec::new());
    }
    // One index probe per stream on UNIQUE (stream, stream_version), and one on
    // pruned_streams: versions an archive pruned are never handed out again.
    let rows = sqlx::query(
        "SELECT s.stream, GREATEST(\
         (SELECT max(e.stream_version) FROM events e WHERE e.stream = s.stream), \
         (SELECT max(p.version) FROM pruned_streams p WHERE p.stream = s.stream)) \
         FROM UNNEST($1::text[]) AS s(stream)",
    )
    .bind(streams)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            let stream: String = row.try_get(0)?;
            let version: Option<i64> = row.try_get(1)?;
            let version = u64::try_from(version.unwrap_or(0)).map_err(|_| StoreError::Corrupt {
                seq: 0,
                reason: format!("stream {stream} has a negative version"),
            })?;
            Ok((stream, version))
        })
        .collect()
}

/// Inserts a sealed run in one statement: one array per column, whatever the run's length.
async fn insert(conn: &mut PgConnection, run: &[(Envelope, String)]) -> Result<(), StoreError> {
    let n = run.len();
    let mut seq = Vec::with_capacity(n);
    let mut event_id = Vec::with_capacity(n);
    let mut stream = Vec::with_capacity(n);
    let mut stream_version = Vec::with_capacity(n);
    let mut event_type = Vec::with_capacity(n);
    let mut schema = Vec::with_capacity(n);
    let mut occurred_at = Vec::with_capacity(n);
    let mut actor = Vec::with_capacity(n);
    let mut request_id = Vec::with_capacity(n);
    let mut data = Vec::with_capacity(n);
    let mut prev_hash = Vec::with_capacity(n);
    let mut hash = Vec::with_capacity(n);
    for (e, d) in run {
        seq.push(to_i64(e.seq)?);
        event_id.push(e.event_id.to_string());
        stream.push(e.stream.as_str());
        stream_version.push(to_i64(e.stream_version)?);
        event_type.push(e.event_type.as_str());
        schema.push(i32::from(e.schema));
        occurred_at.push(e.occurred_at.timestamp_micros());
        actor.push(e.actor.as_str());
        request_id.push(e.request_id.as_deref());
        data.push(d.as_str());
        prev_hash.push(&e.prev_hash.0[..]);
        hash.push(&e.hash.0[..]);
    }
    sqlx::query(INSERT)
        .bind(seq)
        .bind(event_id)
        .bind(stream)
        .bind(stream_version)
        .bind(event_type)
        .bind(schema)
        .bind(occurred_at)
        .bind(actor)
        .bind(request_id)
        .bind(data)
        .bind(prev_hash)
        .bind(hash)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

fn decode_seq(row: &PgRow) -> Result<u64, StoreError> {
    let seq: i64 = row.try_get(0).map_err(|e| corrupt(0, e))?;
    u64::try_from(seq).map_err(|_| StoreError::Corrupt {
        seq: 0,
        reason: format!("negative seq {seq}"),
    })
}

/// Decodes a row selected with [`COLUMNS`].
/// A `(seq, hash)` row.
fn decode_seq_hash(row: &PgRow) -> Result<(u64, Hash32), StoreError> {
    let seq = decode_seq(row)?;
    let hash: &[u8] = row.try_get(1).map_err(|e| corrupt(seq, e))?;
    let hash = Hash32::from_slice(hash).ok_or_else(|| StoreError::Corrupt {
        seq,
        reason: format!("hash has {} bytes, not 32", hash.len()),
    })?;
    Ok((seq, hash))
}

/// A row of `archived_segments`: first_seq, last_seq, name, root, checkpoint.
fn decode_segment(row: &PgRow) -> Result<ArchivedSegment, StoreError> {
    let first: i64 = row.try_get(0)?;
    let last: i64 = row.try_get(1)?;
    let root: &[u8] = row.try_get(3)?;
    Ok(ArchivedSegment {
        first_seq: u64::try_from(first).unwrap_or(0),
        last_seq: u64::try_from(last).unwrap_or(0),
        name: row.try_get(2)?,
        root: Hash32::from_slice(root).ok_or_else(|| StoreError::Corrupt {
            seq: u64::try_from(first).unwrap_or(0),
            reason: "an archived segment's root is not 32 bytes".to_owned(),
        })?,
        checkpoint: row.try_get(4)?,
    })
}

fn decode_row(row: &PgRow) -> Result<Envelope, StoreError> {
    let seq = decode_seq(row)?;
    let c = |e| corrupt(seq, e);
    RawEvent {
        seq,
        event_id: row.try_get(1).map_err(c)?,
        stream: row.try_get(2).map_err(c)?,
        stream_version: row.try_get(3).map_err(c)?,
        event_type: row.try_get(4).map_err(c)?,
        schema: i64::from(row.try_get::<i32, _>(5).map_err(c)?),
        occurred_at: row.try_get(6).map_err(c)?,
        actor: row.try_get(7).map_err(c)?,
        request_id: row.try_get(8).map_err(c)?,
        data: row.try_get(9).map_err(c)?,
        prev_hash: row.try_get(10).map_err(c)?,
        hash: row.try_get(11).map_err(c)?,
    }
    .into_envelope()
}

fn corrupt(seq: u64, e: sqlx::Error) -> StoreError {
    StoreError::Corrupt {
        seq,
        reason: e.to_string(),
    }
}

fn to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v)
        .map_err(|_| StoreError::Unavailable(format!("{v} does not fit PostgreSQL's BIGINT")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_url_parameters_never_reach_sqlx() {
        assert_eq!(
            known_params_only("postgres://u@h/db?sslmode=require&passwd=s3cret&application_name=a"),
            "postgres://u@h/db?sslmode=require&application_name=a"
        );
        assert_eq!(
            known_params_only("postgres://u@h/db?pasword=s3cret"),
            "postgres://u@h/db"
        );
        assert_eq!(
            known_params_only("postgres://u:p@h/db"),
            "postgres://u:p@h/db"
        );
    }
}
