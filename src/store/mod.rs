//! The event store: the only source of truth. Two backends sit behind [`EventStore`]:
//! SQLite (the embedded default) and PostgreSQL (several nodes sharing one log).

pub mod appender;
mod plan;
pub mod postgres;
pub mod sqlite;
pub mod tree;

use std::collections::HashMap;

use async_trait::async_trait;
use keyward_events::merkle::NodeId;
use keyward_events::{Envelope, Hash32, Head, NewEvent};

use crate::time::Timestamp;

/// A store-level failure: the database could not be reached, read or written.
/// Management calls turn it into 503; nothing was written halfway.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the event store is unavailable: {0}")]
    Unavailable(String),
    #[error("the event store holds an event it cannot read at seq {seq}: {reason}")]
    Corrupt { seq: u64, reason: String },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// Why one atomic unit of events was not appended.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Optimistic concurrency: the stream moved on since the command read it.
    #[error("stream {stream} is at version {actual}, not the expected {expected:?}")]
    Conflict {
        stream: String,
        expected: keyward_events::ExpectedVersion,
        actual: u64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The appender has shut down and takes no more events.
    #[error("the appender is shut down")]
    Closed,
}

/// A failed [`EventStore::append_returning`]: the error, and the units to try again.
#[derive(Debug)]
pub struct Unwritten {
    pub error: StoreError,
    pub units: Vec<Vec<NewEvent>>,
}

/// A filter over the log, for audit queries. Every field narrows.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// Only events with seq strictly greater than this.
    pub after_seq: u64,
    /// Only events with seq at most this.
    pub until_seq: Option<u64>,
    pub types: Vec<String>,
    pub streams: Vec<String>,
    pub actor: Option<String>,
    /// Only events that occurred at or after this time.
    pub from_time: Option<Timestamp>,
    /// Only events that occurred at or before this time (inclusive, as an "as of" reads).
    pub to_time: Option<Timestamp>,
}

#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends several atomic units in one transaction (a group commit). Each unit is all
    /// or nothing and gets its own result: a conflicting unit is skipped without affecting
    /// the others. An event whose `event_id` is already stored is not appended again, and
    /// its stored envelope is returned in its place. Envelopes come back in seq order
    /// within each unit; units are sealed in the order given. A store error fails every
    /// unit and writes nothing.
    async fn append(
        &self,
        units: Vec<Vec<NewEvent>>,
    ) -> Result<Vec<Result<Vec<Envelope>, AppendError>>, StoreError>;

    /// [`append`](Self::append) for a caller that tries again what a store error left
    /// unwritten (the appender, with usage events): on a store error the units come back
    /// with it, as they were given except that events already stored are left out and a
    /// unit refused for a conflict is empty. The caller then needs no copy of every batch
    /// made in advance for the rare failure. This default makes that copy; a backend that
    /// can give the events back overrides it.
    async fn append_returning(
        &self,
        units: Vec<Vec<NewEvent>>,
    ) -> Result<Vec<Result<Vec<Envelope>, AppendError>>, Unwritten> {
        let copy = units.clone();
        self.append(units)
            .await
            .map_err(|error| Unwritten { error, units: copy })
    }

    /// The last event's seq and hash; seq 0 and the zero hash for an empty log.
    async fn head(&self) -> Result<Head, StoreError>;

    /// Events in seq order that match the filter, at most `limit`.
    async fn read(&self, filter: &EventFilter, limit: usize) -> Result<Vec<Envelope>, StoreError>;

    /// Events that match the filter, newest first (descending seq), at most `limit`: the
    /// request log pages backwards from the head.
    ///
    /// This default walks back from the head in windows of seqs, each read in ascending
    /// order; a backend that can sort descending overrides it with one query.
    async fn read_newest(
        &self,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<Envelope>, StoreError> {
        const MAX_WINDOW: u64 = 65_536;
        let head = self.head().await?.seq;
        let mut hi = filter.until_seq.map_or(head, |u| u.min(head));
        let mut width = (limit as u64).clamp(64, MAX_WINDOW);
        let mut out = Vec::new();
        while hi > filter.after_seq && out.len() < limit {
            let lo = hi.saturating_sub(width).max(filter.after_seq);
            let window = EventFilter {
                after_seq: lo,
                until_seq: Some(hi),
                ..filter.clone()
            };
            // Seqs are unique, so a window of `hi - lo` seqs holds at most that many events.
            let page = self.read(&window, (hi - lo) as usize).await?;
            let room = limit - out.len();
            out.extend(page.into_iter().rev().take(room));
            hi = lo;
            width = (width * 2).min(MAX_WINDOW);
        }
        Ok(out)
    }

    /// Every event after `after_seq`, in seq order, at most `limit`.
    async fn read_from(&self, after_seq: u64, limit: usize) -> Result<Vec<Envelope>, StoreError> {
        self.read(
            &EventFilter {
                after_seq,
                ..EventFilter::default()
            },
            limit,
        )
        .await
    }

    /// Whether the store can currently be written (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// How many leaves of the Merkle tree over the log the store can serve: the head's
    /// seq once the tree is built (the appender keeps it built; see [`tree`]).
    async fn tree_size(&self) -> Result<u64, StoreError> {
        Err(no_tree())
    }

    /// The hashes of complete nodes of the Merkle tree, each folded from at most eight
    /// stored rows, all read in one query. A node the store cannot compute (beyond the
    /// built tree, or whose rows are missing) is left out of the answer.
    async fn tree_nodes(&self, ids: &[NodeId]) -> Result<HashMap<NodeId, Hash32>, StoreError> {
        let _ = ids;
        Err(no_tree())
    }

    /// The tree's nodes as stored (not recomputed): those at the stored levels that lie
    /// wholly within leaves `[lo, hi)`. For a verifier to compare with its own.
    async fn stored_tree_nodes(
        &self,
        lo: u64,
        hi: u64,
    ) -> Result<HashMap<NodeId, Hash32>, StoreError> {
        let _ = (lo, hi);
        Err(no_tree())
    }

    /// The hashes the store keeps of events an archive pruned, with seq in
    /// `(after, until]`, in seq order. A store that never prunes has none.
    async fn pruned_hashes(
        &self,
        after: u64,
        until: u64,
    ) -> Result<Vec<(u64, Hash32)>, StoreError> {
        let _ = (after, until);
        Ok(Vec::new())
    }

    /// The archived segments recorded, in seq order.
    async fn archived_segments(&self) -> Result<Vec<ArchivedSegment>, StoreError> {
        Ok(Vec::new())
    }

    /// In one transaction: records the segments, keeps the hashes of their usage events,
    /// deletes those events and appends `prune.event`. Refused, with nothing changed, if
    /// a segment is already recorded or the rows to delete are not exactly the ones given.
    async fn prune_archived(&self, prune: Prune) -> Result<Envelope, StoreError> {
        let _ = prune;
        Err(StoreError::Unavailable(
            "this store cannot prune archived events".to_owned(),
        ))
    }
}

/// Why a prune was refused: nothing was changed.
pub(crate) fn prune_refused(reason: String) -> StoreError {
    StoreError::Unavailable(format!(
        "the prune was refused, nothing was deleted: {reason}"
    ))
}

/// Checks the usage rows a prune is about to delete against the verified segment's.
pub(crate) fn check_prune_rows(
    seg: &ArchivedSegment,
    want: &[(u64, Hash32)],
    got: &[(u64, Hash32)],
) -> Result<(), StoreError> {
    if want.len() != got.len() {
        return Err(prune_refused(format!(
            "the segment {} holds {} usage events but the store has {} in seqs {} to {}",
            seg.name,
            want.len(),
            got.len(),
            seg.first_seq,
            seg.last_seq
        )));
    }
    for (w, g) in want.iter().zip(got) {
        if w != g {
            return Err(prune_refused(format!(
                "the segment {} and the store differ at seq {}",
                seg.name,
                w.0.min(g.0)
            )));
        }
    }
    Ok(())
}

/// The highest stream version per stream of the rows a prune deletes.
pub(crate) fn stream_maxima(rows: &[(String, u64)]) -> Vec<(String, u64)> {
    let mut max: HashMap<&str, u64> = HashMap::new();
    for (stream, v) in rows {
        let e = max.entry(stream.as_str()).or_default();
        *e = (*e).max(*v);
    }
    let mut out: Vec<(String, u64)> = max.into_iter().map(|(s, v)| (s.to_owned(), v)).collect();
    out.sort();
    out
}

/// A sealed archive segment whose usage events were pruned from the hot store
/// (`archived_segments`): seqs `first_seq` to `last_seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedSegment {
    pub first_seq: u64,
    pub last_seq: u64,
    pub name: String,
    /// The Merkle subtree root over the segment's events.
    pub root: Hash32,
    /// The signed checkpoint the segment carries.
    pub checkpoint: String,
}

/// One prune ([`EventStore::prune_archived`]): the segments, already written, read back
/// and verified, and the usage events of each that may be deleted, as the verified
/// segment holds them (seq, hash): the rows deleted must be exactly these.
#[derive(Clone, Debug)]
pub struct Prune {
    pub segments: Vec<(ArchivedSegment, Vec<(u64, Hash32)>)>,
    /// The `audit.archived` event appended in the same transaction.
    pub event: NewEvent,
}

/// The types a prune deletes; every other event stays in the log.
pub const PRUNABLE_TYPES: &[&str] = &["key.used", "key.denied"];

fn no_tree() -> StoreError {
    StoreError::Unavailable("this store keeps no Merkle tree".to_owned())
}

/// The backend a database URL names. The one place a database URL is read: the
/// configuration checks it, the server and `/metrics` ask which backend it is, [`open`]
/// opens it, all through here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite://PATH` or `sqlite:PATH`, the path without any `?query`.
    Sqlite(std::path::PathBuf),
    /// `postgres://…` or `postgresql://…`.
    Postgres,
}

impl Backend {
    /// The backend `url` names, or `None` when it names neither.
    pub fn of(url: &str) -> Option<Backend> {
        if let Some(rest) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            let path = rest.split('?').next().unwrap_or(rest);
            return Some(Backend::Sqlite(std::path::PathBuf::from(path)));
        }
        (url.starts_with("postgres://") || url.starts_with("postgresql://"))
            .then_some(Backend::Postgres)
    }
}

/// Opens the store a database URL names: `sqlite://PATH` or `postgres://…`
/// (`postgresql://…`), running its migrations.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn EventStore>, StoreError> {
    match Backend::of(url) {
        Some(Backend::Sqlite(path)) => {
            Ok(std::sync::Arc::new(sqlite::SqliteStore::open(&path).await?))
        }
        Some(Backend::Postgres) => Ok(std::sync::Arc::new(
            postgres::PostgresStore::connect(url).await?,
        )),
        None => Err(StoreError::Unavailable(
            "the database URL must start with sqlite://, postgres:// or postgresql://".to_owned(),
        )),
    }
}

/// Whether a database URL names PostgreSQL.
pub fn is_postgres(url: &str) -> bool {
    Backend::of(url) == Some(Backend::Postgres)
}

/// The SQLite file a database URL names, if it names SQLite.
pub fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    match Backend::of(url) {
        Some(Backend::Sqlite(path)) => Some(path),
        _ => None,
    }
}

/// A stored row's columns as the database returned them, before any checking. Both
/// backends fill one in and share the checks that turn it into an [`Envelope`].
pub(crate) struct RawEvent<'r> {
    pub seq: u64,
    pub event_id: &'r str,
    pub stream: String,
    pub stream_version: i64,
    pub event_type: String,
    pub schema: i64,
    pub occurred_at: i64,
    pub actor: String,
    pub request_id: Option<String>,
    pub data: &'r str,
    pub prev_hash: &'r [u8],
    pub hash: &'r [u8],
}

impl RawEvent<'_> {
    pub(crate) fn into_envelope(self) -> Result<Envelope, StoreError> {
        let seq = self.seq;
        let bad = |reason: String| StoreError::Corrupt { seq, reason };
        let event_id = ulid::Ulid::from_string(self.event_id)
            .map_err(|e| bad(format!("event_id {:?}: {e}", self.event_id)))?;
        let stream_version = u64::try_from(self.stream_version)
            .map_err(|_| bad(format!("negative stream_version {}", self.stream_version)))?;
        let schema = u16::try_from(self.schema)
            .map_err(|_| bad(format!("schema {} out of range", self.schema)))?;
        let occurred_at = crate::time::from_micros(self.occurred_at)
            .ok_or_else(|| bad(format!("occurred_at {} out of range", self.occurred_at)))?;
        let data =
            serde_json::from_str(self.data).map_err(|e| bad(format!("data is not JSON: {e}")))?;
        let hash = |b: &[u8], name: &str| {
            keyward_events::Hash32::from_slice(b)
                .ok_or_else(|| bad(format!("{name} has {} bytes, not 32", b.len())))
        };
        Ok(Envelope {
            seq,
            event_id,
            stream: self.stream,
            stream_version,
            event_type: self.event_type,
            schema,
            occurred_at,
            actor: self.actor,
            request_id: self.request_id,
            data,
            prev_hash: hash(self.prev_hash, "prev_hash")?,
            hash: hash(self.hash, "hash")?,
        })
    }
}

/// Seq order for [`select_events`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Order {
    Oldest,
    Newest,
}

/// `SELECT <columns> FROM events` narrowed by `filter`, in seq `order`, at most `limit`:
/// the one query both backends build. `any` writes "column matches one of these strings"
/// in the backend's own form (an IN list, or `= ANY($n)`); `actor` is the SQL before and
/// after the bound actor in "the actor is this one" (SQLite looks the name's id up).
pub(crate) fn select_events<'a, DB>(
    columns: &str,
    actor_eq: (&str, &str),
    filter: &'a EventFilter,
    limit: usize,
    order: Order,
    any: impl Fn(&mut sqlx::QueryBuilder<'a, DB>, &'static str, &'a [String]),
) -> Result<sqlx::QueryBuilder<'a, DB>, StoreError>
where
    DB: sqlx::Database,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    // A stored seq is at most i64::MAX, so a bound above it is i64::MAX: `seq > bound`
    // then matches nothing and `seq <= bound` everything, as the client's number means.
    // (It was a 500: schemathesis sent `?cursor=9223372036854775808`.)
    let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let mut qb = sqlx::QueryBuilder::<DB>::new(format!("SELECT {columns} FROM events"));
    let mut conditions = 0;
    let mut and = |qb: &mut sqlx::QueryBuilder<'a, DB>, sql: &str| {
        qb.push(if conditions == 0 { " WHERE " } else { " AND " });
        qb.push(sql);
        conditions += 1;
    };
    // `seq > 0` would hold for every row but steer the planner to a scan in seq order
    // instead of the index a time range or an actor could use.
    if filter.after_seq > 0 {
        and(&mut qb, "seq > ");
        qb.push_bind(int(filter.after_seq));
    }
    if let Some(until) = filter.until_seq {
        and(&mut qb, "seq <= ");
        qb.push_bind(int(until));
    }
    if !filter.types.is_empty() {
        and(&mut qb, "");
        any(&mut qb, "type", &filter.types);
    }
    if !filter.streams.is_empty() {
        and(&mut qb, "");
        any(&mut qb, "stream", &filter.streams);
    }
    if let Some(actor) = &filter.actor {
        and(&mut qb, actor_eq.0);
        qb.push_bind(actor.as_str());
        qb.push(actor_eq.1);
    }
    if let Some(from) = filter.from_time {
        and(&mut qb, "occurred_at >= ");
        qb.push_bind(from.timestamp_micros());
    }
    if let Some(to) = filter.to_time {
        and(&mut qb, "occurred_at <= ");
        qb.push_bind(to.timestamp_micros());
    }
    qb.push(match order {
        Order::Oldest => " ORDER BY seq ASC LIMIT ",
        Order::Newest => " ORDER BY seq DESC LIMIT ",
    })
    .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
    Ok(qb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_names_its_backend() {
        let sqlite = |p: &str| Some(Backend::Sqlite(std::path::PathBuf::from(p)));
        assert_eq!(Backend::of("sqlite://./data/k.db"), sqlite("./data/k.db"));
        assert_eq!(
            Backend::of("sqlite:/abs/k.db?mode=rwc"),
            sqlite("/abs/k.db")
        );
        assert_eq!(Backend::of("postgres://u@h/db"), Some(Backend::Postgres));
        assert_eq!(Backend::of("postgresql://h/db"), Some(Backend::Postgres));
        assert_eq!(Backend::of("mysql://h/db"), None);
        assert!(is_postgres("postgresql://h/db") && !is_postgres("sqlite://k.db"));
        assert_eq!(sqlite_path("postgres://h/db"), None);
    }
}
