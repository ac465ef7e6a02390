//! The SQLite event store: the embedded default.
//!
//! One dedicated writer connection appends; a small pool serves reads. Exactly one Keyward
//! process writes a given file (a lock file elsewhere ensures that), so the writer may keep
//! the head of the log and the last version of each stream in memory instead of reading
//! them again for every batch. Any failed append throws that cache and the connection
//! away, and the next append reads both afresh.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use keyward_events::merkle::{CompactRange, NodeId, leaf_hash};
use keyward_events::{Envelope, ExpectedVersion, Hash32, Head, NewEvent, compact};
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Row, Sqlite, SqliteExecutor};
use ulid::Ulid;

use super::plan::{self, seal_run};
use super::tree::{self, Reads, Rows};
use super::{
    AppendError, ArchivedSegment, EventFilter, EventStore, Order, Prune, StoreError, Unwritten,
    select_events,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

macro_rules! columns {
    () => {
        "seq, event_id, stream, stream_version, type, schema, occurred_at, actor, request_id, \
         data, hash"
    };
}
const COLUMNS: &str = columns!();

/// The files SQLite keeps next to the database: the WAL, the shared-memory index and a
/// rollback journal.
pub const SIDE_FILES: &[&str] = &["-wal", "-shm", "-journal"];

/// Keeps the log private to the service's user whatever the umask and whoever made the
/// directory. SQLite creates the database with the umask's mode (0644 under the usual
/// 022) and its WAL and shared-memory files with the database's mode; so the database is
/// created here first, 0600, and every one of these files that already exists is set to
/// 0600. A failure is logged, not fatal: a read-only run on someone else's file (an
/// `audit export` as another user) still works, and says the file is not private.
pub fn private_files(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let name = path.as_os_str();
        if name.is_empty() || name == ":memory:" {
            return;
        }
        if !path.exists() {
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path);
            if let Err(e) = created
                && e.kind() != std::io::ErrorKind::AlreadyExists
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot create the database file 0600");
            }
        }
        let mut files = vec![path.to_path_buf()];
        files.extend(SIDE_FILES.iter().map(|s| {
            let mut p = path.as_os_str().to_owned();
            p.push(s);
            std::path::PathBuf::from(p)
        }));
        for f in files {
            let Ok(meta) = std::fs::metadata(&f) else {
                continue;
            };
            if meta.permissions().mode() & 0o077 == 0 {
                continue;
            }
            if let Err(e) = std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)) {
                tracing::warn!(path = %f.display(), error = %e, "cannot make the file private (0600); other local users may read the log");
            }
        }
    }
}

/// Rows per multi-row INSERT. Binding a batch in a few large statements rather than one
/// statement per event saves a round trip to SQLite's worker thread per row. Smaller
/// statements (halving down to one row) take the remainder, so only a handful of distinct
/// statements are ever prepared and all of them stay in the statement cache.
const INSERT_CHUNK: usize = 256;
/// WAL pages between automatic checkpoints: 16,384 pages of 4 KB, a 64 MB WAL at most.
const WAL_AUTOCHECKPOINT: &str = "16384";
/// Bytes the WAL file is truncated to after a checkpoint.
const JOURNAL_SIZE_LIMIT: &str = "67108864";
/// A batch's event ids and streams are looked up with one statement each, passed as one
/// JSON array, rather than one round trip to SQLite's worker per value or per chunk.
/// An id is stored as its 16 bytes (passed here in hex), or as the 26-character text a row
/// written before migration 0003 holds.
const LOOKUP_IDS_SQL: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM events WHERE event_id IN (SELECT unhex(value) FROM json_each(?1)) UNION ALL SELECT ",
    columns!(),
    " FROM events WHERE event_id IN (SELECT value FROM json_each(?2))"
);
/// A stream's last version is the highest in the log or, if an archive pruned later ones,
/// the highest pruned (`pruned_streams`): versions are never handed out twice.
const LOOKUP_STREAMS_SQL: &str = "SELECT j.value, max(coalesce((SELECT MAX(e.stream_version) \
     FROM events e WHERE e.stream = (SELECT n.id FROM names n WHERE n.name = j.value)), 0), \
     coalesce((SELECT MAX(version) FROM pruned_streams WHERE stream = j.value), 0)) \
     FROM json_each(?1) AS j";
const LOOKUP_NAMES_SQL: &str =
    "SELECT name, id FROM names WHERE name IN (SELECT value FROM json_each(?1))";
const INSERT_NAMES_SQL: &str =
    "INSERT INTO names (name) SELECT value FROM json_each(?1) RETURNING name, id";
const NAMES_BY_ID_SQL: &str =
    "SELECT id, name FROM names WHERE id IN (SELECT value FROM json_each(?1))";
/// The hashes of the events before those a read returned without their predecessor: the
/// row, or what pruning kept of it.
const PREV_HASHES_SQL: &str = "SELECT seq, hash FROM events WHERE seq IN \
     (SELECT value FROM json_each(?1)) UNION ALL SELECT seq, hash FROM pruned_hashes \
     WHERE seq IN (SELECT value FROM json_each(?1))";
/// The stream-version cache is cleared when it grows past this many streams; it refills
/// lazily from the unique (stream, stream_version) index. So are the caches of names.
const MAX_CACHED_STREAMS: usize = 200_000;
const READ_POOL_SIZE: u32 = 4;
/// Up to this many values, a filter's list is bound one parameter each (the plan SQLite
/// knows best); beyond it, as one JSON array, so that no list meets the parameter limit.
const INLINE_VALUES_MAX: usize = 256;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SqliteStore {
    writer: tokio::sync::Mutex<Writer>,
    readers: SqlitePool,
    writer_options: SqliteConnectOptions,
    /// The head as of the last commit, for [`EventStore::head`] without touching the
    /// writer. `None` until known, and again after a failed append.
    head: parking_lot::Mutex<Option<Head>>,
    insert_sql: Vec<(usize, String)>,
    /// The strings of `names` by id, for reads. Names are only ever inserted, and a read
    /// only meets ids of committed rows, so an entry never goes stale.
    names: parking_lot::RwLock<HashMap<i64, String>>,
    /// False only to measure what the tree costs (see `without_tree_for_benchmarks`).
    keep_tree: bool,
}

#[derive(Default)]
struct Writer {
    /// Taken out for the length of an append and put back only if it completes, so a
    /// failed or cancelled append leaves no half-open transaction or stale cache behind.
    conn: Option<SqliteConnection>,
    cache: Option<Cache>,
}

struct Cache {
    head: Head,
    /// The last version of each stream seen; 0 for a stream known to be empty.
    streams: HashMap<String, u64>,
    /// The Merkle tree's right edge at `head`: what the next events' nodes hang from.
    tree: CompactRange,
    /// The ids in `names` of the streams, types and actors seen.
    names: HashMap<String, i64>,
}

impl SqliteStore {
    /// Opens (creating it if missing) the database file at `path` and runs the migrations.
    /// Only one process may append to a file at a time: the writer caches the head.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        Self::open_with(SqliteConnectOptions::new().filename(path)).await
    }

    /// Opens a `sqlite://…` URL, creating the file if missing, and runs the migrations.
    pub async fn open_url(url: &str) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("bad SQLite URL: {e}")))?;
        Self::open_with(options).await
    }

    async fn open_with(options: SqliteConnectOptions) -> Result<SqliteStore, StoreError> {
        private_files(options.get_filename());
        let base = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let writer_options = base
            .clone()
            .pragma("cache_size", "-65536")
            .pragma("temp_store", "MEMORY")
            // Checkpoint every WAL_AUTOCHECKPOINT pages rather than SQLite's 1,000 (4 MB).
            // A batch of usage events dirties the same hot index pages (one per key in
            // the stream and actor indexes) batch after batch; a longer interval copies
            // each of them into the database once per checkpoint instead of once every
            // few batches, and fsyncs the database file less often. Commits are as
            // durable either way: each one is fsynced in the WAL.
            .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT)
            // After a checkpoint, the WAL file is truncated back to this size.
            .pragma("journal_size_limit", JOURNAL_SIZE_LIMIT);
        // Readers never write; query_only turns a stray write into an error. It is applied
        // after journal_mode, which is already WAL by then and so is not a write.
        let reader_options = base.pragma("query_only", "ON");

        let mut conn = writer_options.connect().await?;
        run_migrations(&mut conn).await?;
        backfill_tree(&mut conn).await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(READ_POOL_SIZE)
            .min_connections(0)
            .connect_with(reader_options)
            .await?;

        let mut insert_sql = Vec::new();
        let mut rows = INSERT_CHUNK;
        while rows > 0 {
            insert_sql.push((rows, insert_statement(rows)));
            rows /= 2;
        }
        Ok(SqliteStore {
            writer: tokio::sync::Mutex::new(Writer {
                conn: Some(conn),
                cache: None,
            }),
            readers,
            writer_options,
            head: parking_lot::Mutex::new(None),
            insert_sql,
            names: parking_lot::RwLock::new(HashMap::new()),
            keep_tree: true,
        })
    }

    /// Appends without maintaining the Merkle tree. **Only for measuring what the tree
    /// costs** on a scratch log: the tree of a log appended this way is left short, and
    /// the next open builds the rest.
    #[doc(hidden)]
    pub fn without_tree_for_benchmarks(mut self) -> Self {
        self.keep_tree = false;
        self
    }

    /// Applies any migration not yet applied. `open` already does this; `keyward migrate`
    /// calls it explicitly.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut writer = self.writer.lock().await;
        let mut conn = self.writer_conn(&mut writer).await?;
        writer.cache = None;
        run_migrations(&mut conn).await?;
        writer.conn = Some(conn);
        Ok(())
    }

    /// Closes the writer and the read pool. Appends after this reconnect the writer;
    /// reads fail.
    pub async fn close(&self) {
        let conn = self.writer.lock().await.conn.take();
        if let Some(conn) = conn {
            let _ = conn.close().await;
        }
        self.readers.close().await;
    }

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
        let actor = ("actor = (SELECT id FROM names WHERE name = ", ")");
        let mut qb = select_events::<Sqlite>(
            COLUMNS,
            actor,
            filter,
            limit,
            order,
            |qb, column, values| {
                // Streams and types are stored as ids in `names`. One value is compared
                // with `=`: SQLite then knows an index on the column alone yields rows in
                // seq (rowid) order, and sorts nothing for ORDER BY seq … LIMIT.
                if let [one] = values {
                    qb.push(column)
                        .push(" = (SELECT id FROM names WHERE name = ")
                        .push_bind(one.as_str())
                        .push(")");
                    return;
                }
                qb.push(column)
                    .push(" IN (SELECT id FROM names WHERE name IN (");
                if values.len() <= INLINE_VALUES_MAX {
                    let mut list = qb.separated(", ");
                    for v in values {
                        list.push_bind(v.as_str());
                    }
                    qb.push("))");
                } else {
                    // One parameter whatever the count: a user's streams are two per key,
                    // and SQLite takes at most 32,766 parameters in a statement.
                    qb.push("SELECT value FROM json_each(")
                        .push_bind(json_array(values))
                        .push(")))");
                }
            },
        )?;
        let mut conn = self.readers.acquire().await?;
        let rows = qb.build().fetch_all(&mut *conn).await?;
        self.decode_rows(&mut conn, &rows).await
    }

    /// The head and stream versions to plan from, and the events of this call already
    /// stored.
    async fn look_up(
        &self,
        tx: &mut SqliteConnection,
        cache: Option<Cache>,
        units: &[Vec<NewEvent>],
    ) -> Result<(Cache, HashMap<Ulid, Envelope>), StoreError> {
        let mut cache = match cache {
            Some(c) => c,
            None => {
                let head = read_head(&mut *tx).await?;
                Cache {
                    head,
                    streams: HashMap::new(),
                    tree: tree_at(&mut *tx, head.seq).await?,
                    names: HashMap::new(),
                }
            }
        };
        if cache.streams.len() > MAX_CACHED_STREAMS {
            cache.streams.clear();
        }
        if cache.names.len() > MAX_CACHED_STREAMS {
            cache.names.clear();
        }

        let mut ids: Vec<Ulid> = Vec::new();
        let mut seen_ids = std::collections::HashSet::new();
        for e in units.iter().flatten() {
            if seen_ids.insert(e.event_id) {
                ids.push(e.event_id);
            }
        }
        let existing = self.lookup_events(&mut *tx, &ids).await?;
        let missing = plan::streams_to_look_up(units, &existing, &cache.streams);
        for (stream, version) in self.lookup_stream_versions(&mut *tx, &missing).await? {
            cache.streams.insert(stream, version);
        }
        Ok((cache, existing))
    }

    /// On failure the transaction is rolled back and the units come back unwritten.
    async fn append_in(
        &self,
        conn: &mut SqliteConnection,
        cache: Option<Cache>,
        units: Vec<Vec<NewEvent>>,
    ) -> Result<(Vec<Result<Vec<Envelope>, AppendError>>, Cache), Unwritten> {
        let mut tx = match conn.begin_with("BEGIN IMMEDIATE").await {
            Ok(tx) => tx,
            Err(e) => {
                return Err(Unwritten {
                    error: e.into(),
                    units,
                });
            }
        };
        let (mut cache, existing) = match self.look_up(&mut tx, cache, &units).await {
            Ok(found) => found,
            Err(error) => return Err(Unwritten { error, units }),
        };

        // Decide every unit first (cheap), then hash and insert (dear) in a pipeline.
        let base = cache.head;
        let mut decided = plan::plan(units, &existing, &mut cache.streams);
        let planned = decided.take_planned();
        if let Err(error) = intern(&mut tx, &mut cache.names, &planned).await {
            let events = planned.into_iter().map(|p| p.event).collect();
            return Err(Unwritten {
                error,
                units: decided.units_back(events),
            });
        }
        let count = planned.len();
        // Sealing drops what each event expected; kept to give the events back on failure.
        let expected: Vec<ExpectedVersion> = planned.iter().map(|p| p.event.expected).collect();
        let mut planned = planned.into_iter();
        let mut head = base;
        let mut sealed: Vec<Envelope> = Vec::with_capacity(count);
        let mut sizes = self.chunk_sizes(count).into_iter();
        let mut current = seal_run(&mut planned, sizes.next().unwrap_or(0), &mut head);
        // The Merkle nodes the new events complete, written in the same transaction.
        let mut nodes: Vec<(NodeId, Hash32)> = Vec::new();
        let merkle = &mut cache.tree;
        let names = &cache.names;
        let failed: Option<StoreError> = 'write: {
            while !current.is_empty() {
                let next_size = sizes.next().unwrap_or(0);
                let insert = match self.insert_query(&current, names) {
                    Ok(q) => q,
                    Err(e) => break 'write Some(e),
                };
                // join! polls the insert first, which hands it to SQLite's worker thread,
                // and then hashes this run into the tree and seals the next run here
                // while SQLite writes this one.
                let (inserted, next) = futures::join!(insert.execute(&mut *tx), async {
                    if self.keep_tree {
                        tree::push_events(
                            merkle,
                            current.iter().map(|(env, _)| &env.hash),
                            &mut nodes,
                        );
                    }
                    seal_run(&mut planned, next_size, &mut head)
                });
                sealed.extend(current.into_iter().map(|(env, _)| env));
                current = next;
                if let Err(e) = inserted {
                    break 'write Some(e.into());
                }
            }
            if let Err(e) = insert_nodes(&mut tx, &nodes).await {
                break 'write Some(e);
            }
            tx.commit().await.err().map(StoreError::from)
        };
        if let Some(error) = failed {
            // Everything planned goes back, in plan order: the transaction wrote none of it.
            let events = sealed
                .into_iter()
                .chain(current.into_iter().map(|(env, _)| env))
                .zip(&expected)
                .map(|(env, &exp)| env.unseal(exp))
                .chain(planned.map(|p| p.event))
                .collect();
            return Err(Unwritten {
                error,
                units: decided.units_back(events),
            });
        }
        cache.head = head;

        let results = decided.answer(sealed);
        Ok((results, cache))
    }

    /// Splits `count` rows into runs that each match a prepared INSERT, smallest first so
    /// that SQLite gets its first rows after very little hashing.
    fn chunk_sizes(&self, mut count: usize) -> Vec<usize> {
        let mut sizes = Vec::new();
        for (rows, _) in &self.insert_sql {
            while count >= *rows {
                sizes.push(*rows);
                count -= rows;
            }
        }
        sizes.reverse();
        sizes
    }

    /// The INSERT for a run of sealed events and their canonical data.
    fn insert_query<'q>(
        &'q self,
        run: &'q [(Envelope, String)],
        names: &HashMap<String, i64>,
    ) -> Result<sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>, StoreError> {
        let Some((_, sql)) = self.insert_sql.iter().find(|(rows, _)| *rows == run.len()) else {
            return Err(StoreError::Unavailable(format!(
                "no INSERT prepared for {} rows",
                run.len()
            )));
        };
        let id = |name: &str| {
            names.get(name).copied().ok_or_else(|| {
                StoreError::Unavailable(format!("{name:?} was not interned before the insert"))
            })
        };
        let mut q = sqlx::query(sql);
        for (e, _) in run {
            let context = compact::context(&e.actor, &e.stream);
            q = q
                .bind(to_i64(e.seq)?)
                .bind(e.event_id.to_bytes().to_vec())
                .bind(id(&e.stream)?)
                .bind(to_i64(e.stream_version)?)
                .bind(id(&e.event_type)?)
                .bind(i64::from(e.schema))
                .bind(e.occurred_at.timestamp_micros())
                .bind(id(&e.actor)?)
                .bind(e.request_id.as_deref().map(|r| {
                    let mut out = Vec::with_capacity(r.len());
                    compact::encode_str(r, &[], &mut out);
                    out
                }))
                .bind(compact::to_vec(&e.data, &context))
                .bind(&e.hash.0[..]);
        }
        Ok(q)
    }

    /// The stored envelopes of those of `ids` that are already in the log.
    async fn lookup_events(
        &self,
        conn: &mut SqliteConnection,
        ids: &[Ulid],
    ) -> Result<HashMap<Ulid, Envelope>, StoreError> {
        let mut found = HashMap::new();
        if ids.is_empty() {
            return Ok(found);
        }
        let hex: Vec<String> = ids.iter().map(|id| hex::encode(id.to_bytes())).collect();
        let text: Vec<String> = ids.iter().map(Ulid::to_string).collect();
        let rows = sqlx::query(LOOKUP_IDS_SQL)
            .bind(json_array(&hex))
            .bind(json_array(&text))
            .fetch_all(&mut *conn)
            .await?;
        for env in self.decode_rows(conn, &rows).await? {
            found.insert(env.event_id, env);
        }
        Ok(found)
    }

    /// The last version of each of `streams`, 0 for a stream with no events.
    async fn lookup_stream_versions(
        &self,
        conn: &mut SqliteConnection,
        streams: &[&str],
    ) -> Result<Vec<(String, u64)>, StoreError> {
        if streams.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(LOOKUP_STREAMS_SQL)
            .bind(json_array(streams))
            .fetch_all(&mut *conn)
            .await?;
        let mut found = Vec::with_capacity(streams.len());
        for row in rows {
            let stream: String = row.try_get(0)?;
            let version: Option<i64> = row.try_get(1)?;
            let version = u64::try_from(version.unwrap_or(0)).map_err(|_| StoreError::Corrupt {
                seq: 0,
                reason: format!("stream {stream} has a negative version"),
            })?;
            found.push((stream, version));
        }
        Ok(found)
    }

    /// [`EventStore::prune_archived`] in one IMMEDIATE transaction on the writer.
    async fn prune_in(
        &self,
        conn: &mut SqliteConnection,
        prune: Prune,
    ) -> Result<Envelope, StoreError> {
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let now = chrono::Utc::now().timestamp_micros();
        for (seg, want) in &prune.segments {
            let exists: Option<i64> = sqlx::query_scalar(
                "SELECT first_seq FROM archived_segments WHERE first_seq <= ?2 AND last_seq >= ?1 \
                 OR name = ?3",
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
                "SELECT e.seq, e.hash, n.name, e.stream_version FROM events e \
                 JOIN names n ON n.id = e.stream WHERE e.seq >= ?1 AND e.seq <= ?2 \
                 AND e.type IN (SELECT id FROM names WHERE name IN ('key.used', 'key.denied')) \
                 ORDER BY e.seq",
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
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .bind(to_i64(seg.first_seq)?)
            .bind(to_i64(seg.last_seq)?)
            .bind(seg.name.as_str())
            .bind(&seg.root.0[..])
            .bind(seg.checkpoint.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            for chunk in got.chunks(NODE_CHUNK) {
                let sql = format!(
                    "INSERT INTO pruned_hashes (seq, hash) VALUES {}",
                    vec!["(?, ?)"; chunk.len()].join(", ")
                );
                let mut q = sqlx::query(&sql);
                for (seq, hash) in chunk {
                    q = q.bind(to_i64(*seq)?).bind(&hash.0[..]);
                }
                q.execute(&mut *tx).await?;
            }
            for (stream, version) in super::stream_maxima(&streams) {
                sqlx::query(
                    "INSERT INTO pruned_streams (stream, last_seq, version) VALUES (?1, ?2, ?3)",
                )
                .bind(stream)
                .bind(to_i64(seg.last_seq)?)
                .bind(to_i64(version)?)
                .execute(&mut *tx)
                .await?;
            }
            let deleted = sqlx::query(
                "DELETE FROM events WHERE seq >= ?1 AND seq <= ?2 \
                 AND type IN (SELECT id FROM names WHERE name IN ('key.used', 'key.denied'))",
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
        // The `audit.archived` event, sealed onto the head in this transaction.
        let head = read_head(&mut *tx).await?;
        let stream = prune.event.stream.clone();
        let version = self
            .lookup_stream_versions(&mut tx, &[stream.as_str()])
            .await?
            .first()
            .map_or(0, |(_, v)| *v);
        let sealed = prune
            .event
            .seal_with_data(head.seq + 1, version + 1, head.hash);
        let mut cr = tree_at(&mut tx, head.seq).await?;
        let mut names = HashMap::new();
        let env = &sealed.0;
        intern_names(
            &mut tx,
            &mut names,
            vec![
                env.stream.as_str(),
                env.event_type.as_str(),
                env.actor.as_str(),
            ],
        )
        .await?;
        self.insert_query(std::slice::from_ref(&sealed), &names)?
            .execute(&mut *tx)
            .await?;
        let mut nodes = Vec::new();
        tree::push_events(&mut cr, [&sealed.0.hash], &mut nodes);
        insert_nodes(&mut tx, &nodes).await?;
        tx.commit().await?;
        Ok(sealed.0)
    }

    async fn writer_conn(&self, writer: &mut Writer) -> Result<SqliteConnection, StoreError> {
        match writer.conn.take() {
            Some(c) => Ok(c),
            None => Ok(self.writer_options.connect().await?),
        }
    }
}

struct Unpublish<'a>(Option<&'a parking_lot::Mutex<Option<Head>>>);

impl Drop for Unpublish<'_> {
    fn drop(&mut self) {
        if let Some(head) = self.0 {
            *head.lock() = None;
        }
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(
        &self,
        units: Vec<Vec<NewEvent>>,
    ) -> Result<Vec<Result<Vec<Envelope>, AppendError>>, StoreError> {
        self.append_returning(units).await.map_err(|u| u.error)
    }

    async fn append_returning(
        &self,
        units: Vec<Vec<NewEvent>>,
    ) -> Result<Vec<Result<Vec<Envelope>, AppendError>>, Unwritten> {
        if units.iter().all(Vec::is_empty) {
            return Ok(units.iter().map(|_| Ok(Vec::new())).collect());
        }
        let mut writer = self.writer.lock().await;
        let mut conn = match self.writer_conn(&mut writer).await {
            Ok(c) => c,
            Err(error) => return Err(Unwritten { error, units }),
        };
        let cache = writer.cache.take();
        // Unless this append completes, forget the published head: a failed append
        // changed nothing, but a cancelled one may have committed.
        let mut unpublish = Unpublish(Some(&self.head));
        match self.append_in(&mut conn, cache, units).await {
            Ok((results, cache)) => {
                *self.head.lock() = Some(cache.head);
                unpublish.0 = None;
                writer.cache = Some(cache);
                writer.conn = Some(conn);
                Ok(results)
            }
            Err(unwritten) => {
                // The transaction guard has already queued a rollback; closing the
                // connection finishes it, and the next append starts from the database.
                drop(conn);
                tracing::warn!(error = %unwritten.error, "append failed; the batch was rolled back");
                Err(unwritten)
            }
        }
    }

    async fn head(&self) -> Result<Head, StoreError> {
        if let Some(head) = *self.head.lock() {
            return Ok(head);
        }
        let mut conn = self.readers.acquire().await?;
        read_head(&mut *conn).await
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
        let mut conn = self.readers.acquire().await?;
        read_tree_size(&mut conn).await
    }

    async fn tree_nodes(&self, ids: &[NodeId]) -> Result<HashMap<NodeId, Hash32>, StoreError> {
        let mut conn = self.readers.acquire().await?;
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
        let mut conn = self.readers.acquire().await?;
        Ok(read_rows(&mut conn, &reads).await?.nodes)
    }

    async fn pruned_hashes(
        &self,
        after: u64,
        until: u64,
    ) -> Result<Vec<(u64, Hash32)>, StoreError> {
        let mut conn = self.readers.acquire().await?;
        let rows = sqlx::query(
            "SELECT seq, hash FROM pruned_hashes WHERE seq > ?1 AND seq <= ?2 ORDER BY seq",
        )
        .bind(to_i64(after)?)
        .bind(to_i64(until.min(i64::MAX as u64))?)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(decode_seq_hash).collect()
    }

    async fn archived_segments(&self) -> Result<Vec<ArchivedSegment>, StoreError> {
        let mut conn = self.readers.acquire().await?;
        let rows = sqlx::query(
            "SELECT first_seq, last_seq, name, root, checkpoint FROM archived_segments ORDER BY first_seq",
        )
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(decode_segment).collect()
    }

    async fn prune_archived(&self, prune: Prune) -> Result<Envelope, StoreError> {
        let mut writer = self.writer.lock().await;
        let mut conn = self.writer_conn(&mut writer).await?;
        // The prune moves the head and may change stream versions: the next append reads
        // both afresh.
        writer.cache = None;
        *self.head.lock() = None;
        let done = self.prune_in(&mut conn, prune).await;
        if done.is_ok() {
            writer.conn = Some(conn);
        }
        done
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut writer = self.writer.lock().await;
        let mut conn = self.writer_conn(&mut writer).await?;
        // Taking the write lock and letting it go proves the file is writable and no
        // other process holds it, without writing anything.
        let tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        tx.rollback().await?;
        writer.conn = Some(conn);
        Ok(())
    }
}

async fn run_migrations(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    MIGRATOR
        .run(conn)
        .await
        .map_err(|e| StoreError::Unavailable(format!("migrating the SQLite event store: {e}")))
}

// ---------- the Merkle tree (see `super::tree`) ----------

/// Rows of `merkle_nodes` per INSERT, at most (three parameters each).
const NODE_CHUNK: usize = 128;

/// How many leaves the stored tree can serve: the head, once the tree is built. One
/// statement, so that both come from one snapshot.
async fn read_tree_size(conn: &mut SqliteConnection) -> Result<u64, StoreError> {
    let row = sqlx::query(
        "SELECT max(coalesce((SELECT max(seq) FROM events), 0), \
         coalesce((SELECT max(seq) FROM pruned_hashes), 0)), \
         (SELECT max(idx) FROM merkle_nodes WHERE level = ?1)",
    )
    .bind(i64::from(tree::STRIDE))
    .fetch_one(&mut *conn)
    .await?;
    let head: Option<i64> = row.try_get(0)?;
    let highest: Option<i64> = row.try_get(1)?;
    Ok(tree::built_size(
        highest.map(|k| k.max(0) as u64),
        head.map_or(0, |h| h.max(0) as u64),
    ))
}

/// The rows `reads` names, in one statement: a UNION ALL of primary-key range scans.
async fn read_rows(conn: &mut SqliteConnection, reads: &Reads) -> Result<Rows, StoreError> {
    let mut rows = Rows::default();
    if reads.is_empty() {
        return Ok(rows);
    }
    let mut qb = sqlx::QueryBuilder::<Sqlite>::new("");
    let mut first = true;
    let mut union = |qb: &mut sqlx::QueryBuilder<'_, Sqlite>| {
        if !first {
            qb.push(" UNION ALL ");
        }
        first = false;
    };
    for &(level, lo, hi) in &reads.nodes {
        union(&mut qb);
        qb.push("SELECT level, idx, hash FROM merkle_nodes WHERE level = ")
            .push_bind(i64::from(level))
            .push(" AND idx >= ")
            .push_bind(to_i64(lo)?)
            .push(" AND idx < ")
            .push_bind(to_i64(hi)?);
    }
    for &(lo, hi) in &reads.leaves {
        union(&mut qb);
        qb.push("SELECT 0, seq - 1, hash FROM events WHERE seq > ")
            .push_bind(to_i64(lo)?)
            .push(" AND seq <= ")
            .push_bind(to_i64(hi)?);
        // The leaves of events an archive pruned: their hashes are kept.
        qb.push(" UNION ALL SELECT 0, seq - 1, hash FROM pruned_hashes WHERE seq > ")
            .push_bind(to_i64(lo)?)
            .push(" AND seq <= ")
            .push_bind(to_i64(hi)?);
    }
    let fetched = qb.build().fetch_all(&mut *conn).await?;
    for row in &fetched {
        let level: i64 = row.try_get(0)?;
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
/// events where the stored tree stops short of them.
async fn tree_at(conn: &mut SqliteConnection, size: u64) -> Result<CompactRange, StoreError> {
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
    conn: &mut SqliteConnection,
    cr: &mut CompactRange,
    to: u64,
) -> Result<(), StoreError> {
    while cr.size() < to {
        let hi = to.min(cr.size() + tree::BACKFILL_CHUNK);
        let rows =
            sqlx::query("SELECT seq, hash FROM events WHERE seq > ?1 AND seq <= ?2 ORDER BY seq")
                .bind(to_i64(cr.size())?)
                .bind(to_i64(hi)?)
                .fetch_all(&mut *conn)
                .await?;
        let mut hashes = Vec::with_capacity(rows.len());
        for row in &rows {
            let seq = decode_seq(row)?;
            if seq != cr.size() + hashes.len() as u64 + 1 {
                return Err(StoreError::Corrupt {
                    seq,
                    reason: format!(
                        "the log skips from seq {} to {seq}",
                        cr.size() + hashes.len() as u64
                    ),
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

/// Stores Merkle nodes, in multi-row INSERTs.
async fn insert_nodes(
    conn: &mut SqliteConnection,
    nodes: &[(NodeId, Hash32)],
) -> Result<(), StoreError> {
    for chunk in nodes.chunks(NODE_CHUNK) {
        let sql = format!(
            "INSERT INTO merkle_nodes (level, idx, hash) VALUES {}",
            vec!["(?, ?, ?)"; chunk.len()].join(", ")
        );
        let mut q = sqlx::query(&sql);
        for (id, hash) in chunk {
            q = q
                .bind(i64::from(id.level))
                .bind(to_i64(id.index)?)
                .bind(&hash.0[..]);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Gives a log that predates the Merkle tree (or whose tree stops short of it) its tree,
/// [`tree::BACKFILL_CHUNK`] events per transaction, saying how far it has got.
async fn backfill_tree(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let mut said = false;
    loop {
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let head = read_head(&mut *tx).await?.seq;
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

async fn read_head(conn: impl SqliteExecutor<'_>) -> Result<Head, StoreError> {
    // The last event may be one an archive pruned: its hash is kept in pruned_hashes.
    let row = sqlx::query(
        "SELECT seq, hash FROM events WHERE seq = (SELECT max(seq) FROM events) \
         UNION ALL SELECT seq, hash FROM pruned_hashes \
         WHERE seq = (SELECT max(seq) FROM pruned_hashes) ORDER BY seq DESC LIMIT 1",
    )
    .fetch_optional(conn)
    .await?;
    let Some(row) = row else {
        return Ok(Head::default());
    };
    let seq = decode_seq(&row)?;
    let hash: Vec<u8> = row.try_get(1).map_err(|e| corrupt(seq, e))?;
    let hash = Hash32::from_slice(&hash).ok_or_else(|| StoreError::Corrupt {
        seq,
        reason: format!("hash has {} bytes, not 32", hash.len()),
    })?;
    Ok(Head { seq, hash })
}

fn decode_seq(row: &SqliteRow) -> Result<u64, StoreError> {
    let seq: i64 = row.try_get(0).map_err(|e| corrupt(0, e))?;
    u64::try_from(seq).map_err(|_| StoreError::Corrupt {
        seq: 0,
        reason: format!("negative seq {seq}"),
    })
}

/// A `(seq, hash)` row.
fn decode_seq_hash(row: &SqliteRow) -> Result<(u64, Hash32), StoreError> {
    let seq = decode_seq(row)?;
    let hash: &[u8] = row.try_get(1).map_err(|e| corrupt(seq, e))?;
    let hash = Hash32::from_slice(hash).ok_or_else(|| StoreError::Corrupt {
        seq,
        reason: format!("hash has {} bytes, not 32", hash.len()),
    })?;
    Ok((seq, hash))
}

/// A row of `archived_segments`: first_seq, last_seq, name, root, checkpoint.
fn decode_segment(row: &SqliteRow) -> Result<ArchivedSegment, StoreError> {
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

/// A stored value that may be TEXT (a row written before migration 0003) or a BLOB.
enum Cell<'r> {
    Null,
    Text(&'r str),
    Blob(&'r [u8]),
}

fn cell<'r>(row: &'r SqliteRow, i: usize, seq: u64) -> Result<Cell<'r>, StoreError> {
    use sqlx::{TypeInfo, ValueRef};
    let c = |e| corrupt(seq, e);
    let raw = row.try_get_raw(i).map_err(c)?;
    if raw.is_null() {
        return Ok(Cell::Null);
    }
    let kind = raw.type_info().name().to_owned();
    match kind.as_str() {
        "TEXT" => Ok(Cell::Text(row.try_get_unchecked::<&str, _>(i).map_err(c)?)),
        "BLOB" => Ok(Cell::Blob(row.try_get_unchecked::<&[u8], _>(i).map_err(c)?)),
        other => Err(StoreError::Corrupt {
            seq,
            reason: format!("column {i} holds {other}, not TEXT or BLOB"),
        }),
    }
}

/// A row selected with [`COLUMNS`], before its names and prev_hash are filled in.
struct Stored<'r> {
    seq: u64,
    event_id: Ulid,
    stream: i64,
    stream_version: u64,
    event_type: i64,
    schema: u16,
    occurred_at: crate::time::Timestamp,
    actor: i64,
    request_id: Cell<'r>,
    data: Cell<'r>,
    hash: Hash32,
}

fn stored(row: &SqliteRow) -> Result<Stored<'_>, StoreError> {
    let seq = decode_seq(row)?;
    let c = |e| corrupt(seq, e);
    let bad = |reason: String| StoreError::Corrupt { seq, reason };
    let event_id = match cell(row, 1, seq)? {
        Cell::Blob(b) => <[u8; 16]>::try_from(b)
            .map(Ulid::from_bytes)
            .map_err(|_| bad(format!("event_id has {} bytes, not 16", b.len())))?,
        Cell::Text(t) => Ulid::from_string(t).map_err(|e| bad(format!("event_id {t:?}: {e}")))?,
        Cell::Null => return Err(bad("event_id is NULL".to_owned())),
    };
    let stream_version: i64 = row.try_get(3).map_err(c)?;
    let schema: i64 = row.try_get(5).map_err(c)?;
    let occurred_at: i64 = row.try_get(6).map_err(c)?;
    let hash: &[u8] = row.try_get(10).map_err(c)?;
    Ok(Stored {
        seq,
        event_id,
        stream: row.try_get(2).map_err(c)?,
        stream_version: u64::try_from(stream_version)
            .map_err(|_| bad(format!("negative stream_version {stream_version}")))?,
        event_type: row.try_get(4).map_err(c)?,
        schema: u16::try_from(schema).map_err(|_| bad(format!("schema {schema} out of range")))?,
        occurred_at: crate::time::from_micros(occurred_at)
            .ok_or_else(|| bad(format!("occurred_at {occurred_at} out of range")))?,
        actor: row.try_get(7).map_err(c)?,
        request_id: cell(row, 8, seq)?,
        data: cell(row, 9, seq)?,
        hash: Hash32::from_slice(hash)
            .ok_or_else(|| bad(format!("hash has {} bytes, not 32", hash.len())))?,
    })
}

impl SqliteStore {
    /// Envelopes from rows selected with [`COLUMNS`], in the order given: names looked up
    /// in `names` (cached), payloads decoded, and each prev_hash taken from the row before
    /// (in `rows`, else read from the log or `pruned_hashes`).
    async fn decode_rows(
        &self,
        conn: &mut SqliteConnection,
        rows: &[SqliteRow],
    ) -> Result<Vec<Envelope>, StoreError> {
        let rows: Vec<Stored<'_>> = rows.iter().map(stored).collect::<Result<_, _>>()?;
        self.resolve_names(conn, &rows).await?;
        // The row before is usually next to it in `rows` (ascending or descending).
        let beside = |i: usize| {
            let want = rows[i].seq.checked_sub(1)?;
            [i.checked_sub(1), i.checked_add(1)]
                .into_iter()
                .flatten()
                .filter_map(|j| rows.get(j))
                .find(|r| r.seq == want)
                .map(|r| r.hash)
        };
        let mut hashes: HashMap<u64, Hash32> = HashMap::new();
        let missing: Vec<u64> = (0..rows.len())
            .filter(|&i| rows[i].seq > 1 && beside(i).is_none())
            .map(|i| rows[i].seq - 1)
            .collect();
        if !missing.is_empty() {
            for r in &rows {
                hashes.insert(r.seq, r.hash);
            }
            let found = sqlx::query(PREV_HASHES_SQL)
                .bind(json_numbers(&missing))
                .fetch_all(&mut *conn)
                .await?;
            for row in &found {
                let seq = decode_seq(row)?;
                let hash: &[u8] = row.try_get(1).map_err(|e| corrupt(seq, e))?;
                let hash = Hash32::from_slice(hash).ok_or_else(|| StoreError::Corrupt {
                    seq,
                    reason: format!("hash has {} bytes, not 32", hash.len()),
                })?;
                hashes.insert(seq, hash);
            }
        }
        let names = self.names.read();
        let mut out = Vec::with_capacity(rows.len());
        for (i, r) in rows.iter().enumerate() {
            let seq = r.seq;
            let bad = |reason: String| StoreError::Corrupt { seq, reason };
            let name = |id: i64| {
                names
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| bad(format!("name {id} is not in names")))
            };
            let (stream, event_type, actor) =
                (name(r.stream)?, name(r.event_type)?, name(r.actor)?);
            let prev_hash = if seq == 1 {
                Hash32::ZERO
            } else if let Some(h) = beside(i) {
                h
            } else {
                *hashes.get(&(seq - 1)).ok_or_else(|| {
                    bad(format!(
                        "the hash of seq {} is neither in the log nor in pruned_hashes",
                        seq - 1
                    ))
                })?
            };
            let request_id = match &r.request_id {
                Cell::Null => None,
                Cell::Text(t) => Some((*t).to_owned()),
                Cell::Blob(b) => {
                    Some(compact::decode_str(b, &[]).map_err(|e| bad(format!("request_id: {e}")))?)
                }
            };
            let data = match &r.data {
                Cell::Text(t) => {
                    serde_json::from_str(t).map_err(|e| bad(format!("data is not JSON: {e}")))?
                }
                Cell::Blob(b) => compact::decode(b, &compact::context(&actor, &stream))
                    .map_err(|e| bad(format!("data: {e}")))?,
                Cell::Null => return Err(bad("data is NULL".to_owned())),
            };
            out.push(Envelope {
                seq,
                event_id: r.event_id,
                stream,
                stream_version: r.stream_version,
                event_type,
                schema: r.schema,
                occurred_at: r.occurred_at,
                actor,
                request_id,
                data,
                prev_hash,
                hash: r.hash,
            });
        }
        Ok(out)
    }

    /// Reads into the cache the names of `rows` it does not hold yet.
    async fn resolve_names(
        &self,
        conn: &mut SqliteConnection,
        rows: &[Stored<'_>],
    ) -> Result<(), StoreError> {
        let mut missing: Vec<u64> = {
            let names = self.names.read();
            rows.iter()
                .flat_map(|r| [r.stream, r.event_type, r.actor])
                .filter(|id| !names.contains_key(id))
                .map(|id| id.max(0) as u64)
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        missing.sort_unstable();
        missing.dedup();
        let found = sqlx::query(NAMES_BY_ID_SQL)
            .bind(json_numbers(&missing))
            .fetch_all(&mut *conn)
            .await?;
        let mut names = self.names.write();
        if names.len() > MAX_CACHED_STREAMS {
            names.clear();
        }
        for row in &found {
            names.insert(row.try_get(0)?, row.try_get(1)?);
        }
        Ok(())
    }
}

/// Gives every stream, type and actor of `planned` an id in `names`, inserting those that
/// have none, in the append's transaction.
async fn intern(
    conn: &mut SqliteConnection,
    names: &mut HashMap<String, i64>,
    planned: &[plan::Planned],
) -> Result<(), StoreError> {
    let mut wanted: Vec<&str> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for p in planned {
        for s in [&p.event.stream, &p.event.event_type, &p.event.actor] {
            if !names.contains_key(s.as_str()) && seen.insert(s.as_str()) {
                wanted.push(s);
            }
        }
    }
    intern_names(conn, names, wanted).await
}

/// Gives each of `wanted` (distinct, not yet in `names`) its id in `names`, inserting
/// those the dictionary does not hold yet.
async fn intern_names(
    conn: &mut SqliteConnection,
    names: &mut HashMap<String, i64>,
    wanted: Vec<&str>,
) -> Result<(), StoreError> {
    let mut seen = std::collections::HashSet::new();
    let wanted: Vec<&str> = wanted
        .into_iter()
        .filter(|s| !names.contains_key(*s) && seen.insert(*s))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let rows = sqlx::query(LOOKUP_NAMES_SQL)
        .bind(json_array(&wanted))
        .fetch_all(&mut *conn)
        .await?;
    for row in &rows {
        names.insert(row.try_get(0)?, row.try_get(1)?);
    }
    let new: Vec<&str> = wanted
        .into_iter()
        .filter(|s| !names.contains_key(*s))
        .collect();
    if new.is_empty() {
        return Ok(());
    }
    let rows = sqlx::query(INSERT_NAMES_SQL)
        .bind(json_array(&new))
        .fetch_all(&mut *conn)
        .await?;
    for row in &rows {
        names.insert(row.try_get(0)?, row.try_get(1)?);
    }
    Ok(())
}

fn json_numbers(items: &[u64]) -> String {
    serde_json::to_string(items).unwrap_or_default()
}

fn corrupt(seq: u64, e: sqlx::Error) -> StoreError {
    StoreError::Corrupt {
        seq,
        reason: e.to_string(),
    }
}

fn to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v)
        .map_err(|_| StoreError::Unavailable(format!("{v} does not fit SQLite's INTEGER")))
}

fn json_array<S: AsRef<str>>(items: &[S]) -> String {
    let items: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    serde_json::to_string(&items).unwrap_or_default()
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// OR ROLLBACK: a failed insert abandons the whole batch anyway, and without the default
/// ABORT SQLite need not keep a statement journal to undo a multi-row INSERT partway.
fn insert_statement(rows: usize) -> String {
    let row = format!("({})", placeholders(11));
    format!(
        "INSERT OR ROLLBACK INTO events ({COLUMNS}) VALUES {}",
        vec![row; rows].join(", ")
    )
}
