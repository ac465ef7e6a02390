//! The live projections: the state every read and every proxy request uses, folded from
//! the log at start and kept current after each commit.
//!
//! Readers take a shared read lock for the duration of a lookup and clone out an `Arc` of
//! the record they need; the writers are the commit path and, on PostgreSQL, the tail
//! (other nodes' events), one at a time, each holding the write lock for the few
//! microseconds it takes to fold one batch. No read waits on the database.

pub mod reservations;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use keyward_events::{ChainVerifier, Envelope, Head};
use keyward_projections::{ApplyError, State};
use parking_lot::{RwLock, RwLockReadGuard};

use self::reservations::Reservations;
use crate::store::appender::CommitSink;
use crate::store::{EventStore, StoreError};
use crate::timeline::{Bounds, Timeline};

/// A snapshot that passed its own checks: the state and the timeline of its prefix. The
/// caller still has to check that the log holds `state.head`.
#[derive(Debug)]
pub struct Loaded {
    pub state: State,
    pub timeline: Timeline,
}

const PAGE: usize = 10_000;
/// Events folded per write-lock hold on the commit path.
const APPLY_SLICE: usize = 64;

pub struct Live {
    state: RwLock<State>,
    /// When the folded events occurred, by block of seqs (for as-of replays). Updated
    /// under the state's write lock, so a reader holding the state's lock sees the two
    /// at the same head.
    timeline: parking_lot::Mutex<Timeline>,
    /// Serialises appliers (the appender and, on PostgreSQL, the tail) so events are
    /// folded strictly in seq order.
    apply: tokio::sync::Mutex<()>,
    store: Arc<dyn EventStore>,
    tail: TailStats,
    /// Whether the chain under the live state has been verified from seq 1: at once after a
    /// full rebuild, later after a start from a snapshot. Only a verified state is
    /// snapshotted.
    verified: AtomicBool,
    /// Uses of quota-bound keys this node admitted that the state does not count yet;
    /// settled as their events are folded, under the same write lock.
    reservations: Reservations,
}

/// What this node has seen of other writers' events: those it folded from the store
/// rather than from its own commits. A later metrics endpoint exports these.
#[derive(Debug, Default)]
pub struct TailStats {
    lag_us: AtomicU64,
    events: AtomicU64,
    reconnects: AtomicU64,
    listening: AtomicBool,
}

impl TailStats {
    /// Now minus `occurred_at` of the newest event folded from the store, in microseconds,
    /// measured when it was folded: how stale this node was about it. It includes the time
    /// the event spent in its own node's append queue, and any clock skew between nodes.
    pub fn lag_us(&self) -> u64 {
        self.lag_us.load(Ordering::Relaxed)
    }

    /// Events folded from the store rather than from this node's own commits.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Times the tail lost its notification connection and set it up again.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Whether the tail is currently subscribed to notifications (otherwise it polls).
    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    pub fn set_listening(&self, listening: bool) {
        self.listening.store(listening, Ordering::Relaxed);
    }

    pub fn count_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    fn record(&self, newest: &Envelope, applied: u64) {
        let lag = (chrono::Utc::now() - newest.occurred_at)
            .num_microseconds()
            .unwrap_or(i64::MAX);
        let lag = u64::try_from(lag).unwrap_or(0);
        self.lag_us.store(lag, Ordering::Relaxed);
        self.events.fetch_add(applied, Ordering::Relaxed);
        tracing::debug!(
            applied,
            head_seq = newest.seq,
            lag_ms = lag as f64 / 1000.0,
            "folded events from the store"
        );
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the audit chain is broken: {0}. Run `keyward audit verify` for details; start with --allow-broken-chain to serve anyway"
    )]
    BrokenChain(keyward_events::ChainBreak),
    #[error("cannot fold the log: {0}")]
    Apply(#[from] ApplyError),
    #[error(
        "the usage events of seqs {first} to {last} were archived and pruned from the log, so the projections cannot be \
         folded across them: a start needs a projection snapshot at or after seq {last} (the archive takes one into the \
         data dir's snapshots/; copy it to this node's data dir, with the same master keys)"
    )]
    Archived { first: u64, last: u64 },
}

/// What the start-up rebuild found.
#[derive(Debug, Clone, Default)]
pub struct RebuildReport {
    pub events: u64,
    pub head: Head,
    /// The first break, when the chain was allowed to be broken.
    pub broken_at: Option<u64>,
    /// The snapshot the fold started from, when one was used: the events up to it were
    /// not read, and their chain is still to be verified.
    pub snapshot: Option<Head>,
    pub elapsed: std::time::Duration,
}

impl Live {
    /// Folds the whole log, verifying the chain as it goes. A broken chain stops the start
    /// unless `allow_broken_chain`, in which case the break is reported and folding goes on.
    pub async fn rebuild(
        store: Arc<dyn EventStore>,
        allow_broken_chain: bool,
    ) -> Result<(Live, RebuildReport), LiveError> {
        Self::rebuild_from(store, None, allow_broken_chain).await
    }

    /// [`rebuild`](Self::rebuild), starting from `snapshot` when the log holds its head's
    /// hash at its seq: only the events after it are read, verified (from the snapshot's
    /// hash on) and folded. A snapshot the log does not match is ignored with a warning.
    /// The chain up to the snapshot is not verified here: see [`verify_prefix`].
    pub async fn rebuild_from(
        store: Arc<dyn EventStore>,
        snapshot: Option<State>,
        allow_broken_chain: bool,
    ) -> Result<(Live, RebuildReport), LiveError> {
        let snapshot = snapshot.map(|state| Loaded {
            timeline: Timeline::unknown(state.head.seq),
            state,
        });
        Self::rebuild_from_loaded(store, snapshot, allow_broken_chain).await
    }

    /// [`rebuild_from`](Self::rebuild_from) with the snapshot's timeline.
    pub async fn rebuild_from_loaded(
        store: Arc<dyn EventStore>,
        snapshot: Option<Loaded>,
        allow_broken_chain: bool,
    ) -> Result<(Live, RebuildReport), LiveError> {
        let started = std::time::Instant::now();
        let mut state = State::default();
        let mut timeline = Timeline::default();
        let mut verifier = ChainVerifier::new();
        let mut report = RebuildReport::default();
        if let Some(snap) = snapshot {
            let head = snap.state.head;
            match log_hash_at(store.as_ref(), head.seq).await? {
                Some(h) if h == head.hash && head.seq > 0 => {
                    verifier = ChainVerifier::resume(head);
                    report.snapshot = Some(head);
                    state = snap.state;
                    timeline = snap.timeline;
                }
                found => tracing::warn!(
                    snapshot_seq = head.seq,
                    log_has_seq = found.is_some(),
                    "ignoring the projection snapshot: the log does not hold its hash at its seq; folding the whole log"
                ),
            }
        }
        loop {
            let page = store.read_from(state.head.seq, PAGE).await?;
            if page.is_empty() {
                break;
            }
            for env in &page {
                if env.seq > state.head.seq + 1
                    && let Ok(Ok(hashes)) =
                        crate::audit::hole(store.as_ref(), state.head.seq, env.seq).await
                    && let (Some(first), Some(last)) = (hashes.first(), hashes.last())
                {
                    return Err(LiveError::Archived {
                        first: first.0,
                        last: last.0,
                    });
                }
                if let Err(brk) = verifier.push(env) {
                    if !allow_broken_chain {
                        return Err(LiveError::BrokenChain(brk));
                    }
                    report.broken_at.get_or_insert(brk.seq());
                    verifier = ChainVerifier::resume(Head {
                        seq: env.seq,
                        hash: env.hash,
                    });
                }
                if allow_broken_chain {
                    match env.decode() {
                        Ok(event) => state.apply_decoded(env, &event),
                        Err(e) => {
                            tracing::error!(seq = env.seq, error = %e, "skipping an event that does not decode");
                            report.broken_at.get_or_insert(env.seq);
                        }
                    }
                } else {
                    state.apply(env)?;
                }
                timeline.record(env.seq, env.occurred_at);
                report.events += 1;
            }
        }
        report.head = state.head;
        report.elapsed = started.elapsed();
        let verified = report.snapshot.is_none() && report.broken_at.is_none();
        Ok((
            Live {
                state: RwLock::new(state),
                timeline: parking_lot::Mutex::new(timeline),
                apply: tokio::sync::Mutex::new(()),
                store,
                tail: TailStats::default(),
                verified: AtomicBool::new(verified),
                reservations: Reservations::default(),
            },
            report,
        ))
    }

    /// Whether the chain under the live state is verified from seq 1.
    pub fn is_verified(&self) -> bool {
        self.verified.load(Ordering::Acquire)
    }

    /// Records that [`verify_prefix`] passed for the snapshot this node started from.
    pub fn mark_verified(&self) {
        self.verified.store(true, Ordering::Release);
    }

    /// A copy of the projections to snapshot, when they are verified. The read lock is
    /// held for the copy only; the records are shared `Arc`s, the usage counters are
    /// copied.
    pub fn verified_copy(&self) -> Option<State> {
        if !self.is_verified() {
            return None;
        }
        Some(self.state.read().clone())
    }

    /// [`verified_copy`](Self::verified_copy) with the timeline of the same seqs.
    pub fn verified_copy_with_timeline(&self) -> Option<(State, Timeline)> {
        if !self.is_verified() {
            return None;
        }
        let state = self.state.read();
        let timeline = self.timeline.lock().prefix(state.head.seq);
        Some((state.clone(), timeline))
    }

    /// Where the events that occurred by `t` are in the log folded so far.
    pub fn timeline_bounds(&self, t: crate::time::Timestamp) -> Bounds {
        self.timeline.lock().bounds(t)
    }

    /// Fills in the times of a prefix the timeline did not know (a start from a snapshot
    /// written before timelines were kept), from [`verify_prefix`]'s reading of it.
    pub fn fill_timeline(&self, prefix: &Timeline) {
        self.timeline.lock().fill_prefix(prefix);
    }

    /// A shared view of the projections. Hold it briefly: clone out what you need.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read()
    }

    pub fn head(&self) -> Head {
        self.state.read().head
    }

    pub fn tail_stats(&self) -> &TailStats {
        &self.tail
    }

    /// The quota reservations of this node's requests in flight.
    pub fn reservations(&self) -> &Reservations {
        &self.reservations
    }

    /// A `key.used` of this node is in the state now: its reservation is settled. Called
    /// in the write-lock hold that folded it, so a reader sees the use in exactly one of
    /// the two.
    fn settle(&self, env: &Envelope) {
        if env.event_type == "key.used"
            && let Some(key_id) = env.stream.strip_prefix("usage:")
        {
            self.reservations.settle(key_id, env.event_id);
        }
    }

    /// Folds whatever the store has beyond the live head (other nodes' events on a
    /// shared store). Returns the number of events applied.
    pub async fn catch_up(&self) -> Result<u64, LiveError> {
        let _guard = self.apply.lock().await;
        self.catch_up_locked(None).await
    }

    async fn catch_up_locked(&self, until: Option<u64>) -> Result<u64, LiveError> {
        let mut applied = 0;
        loop {
            let head = self.head().seq;
            if until.is_some_and(|u| head >= u) {
                return Ok(applied);
            }
            let page = self.store.read_from(head, PAGE).await?;
            if page.is_empty() {
                return Ok(applied);
            }
            let mut newest = None;
            {
                let mut state = self.state.write();
                let mut timeline = self.timeline.lock();
                for env in page.iter().take_while(|e| until.is_none_or(|u| e.seq <= u)) {
                    state.apply(env)?;
                    timeline.record(env.seq, env.occurred_at);
                    // The tail may fold this node's own events before its commit callback.
                    self.settle(env);
                    applied += 1;
                    newest = Some(env);
                }
            }
            if let Some(env) = newest {
                let count = env.seq - head;
                self.tail.record(env, count);
            }
        }
    }

    /// Folds a committed batch a slice at a time, taking the write lock once per slice:
    /// a batch of a thousand usage events would otherwise stall every proxy lookup for the
    /// whole fold. Each slice leaves the state at a seq-ordered prefix of the log, so a
    /// reader between slices sees a consistent (slightly older) state.
    fn apply_batch(&self, envs: &[Envelope]) -> Result<(), ApplyError> {
        for slice in envs.chunks(APPLY_SLICE) {
            // Decoding each envelope's data is most of a fold's cost; it is done before the
            // write lock, so proxy lookups wait only for the map updates themselves.
            let decoded: Vec<_> = slice.iter().map(Envelope::decode).collect();
            let mut state = self.state.write();
            let mut timeline = self.timeline.lock();
            for (env, event) in slice.iter().zip(decoded) {
                if env.seq > state.head.seq {
                    state.apply_predecoded(env, event)?;
                    timeline.record(env.seq, env.occurred_at);
                    self.settle(env);
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl CommitSink for Live {
    async fn committed(&self, envs: &[Envelope]) {
        let Some(first) = envs.first() else { return };
        let _guard = self.apply.lock().await;
        // On a shared store other nodes' events may precede ours: fold them first so that
        // our own events are applied after every earlier one.
        if first.seq > self.head().seq + 1
            && let Err(e) = self.catch_up_locked(Some(first.seq - 1)).await
        {
            tracing::error!(error = %e, "cannot read the events before our own commit; the tail will retry");
            return;
        }
        if let Err(e) = self.apply_batch(envs) {
            tracing::error!(error = %e, "cannot fold committed events into the live projections");
        }
    }
}

/// The stored hash of the event at `seq`, if the log has it.
pub async fn log_hash_at(
    store: &dyn EventStore,
    seq: u64,
) -> Result<Option<keyward_events::Hash32>, StoreError> {
    if seq == 0 {
        return Ok(None);
    }
    let page = store
        .read(
            &crate::store::EventFilter {
                after_seq: seq - 1,
                until_seq: Some(seq),
                ..Default::default()
            },
            1,
        )
        .await?;
    if let Some(h) = page.first().filter(|e| e.seq == seq).map(|e| e.hash) {
        return Ok(Some(h));
    }
    // An event an archive pruned: the store keeps its hash, bound into the chain by the
    // next event's prev_hash, so a snapshot at its seq is still one the log holds.
    Ok(store
        .pruned_hashes(seq - 1, seq)
        .await?
        .first()
        .filter(|(s, _)| *s == seq)
        .map(|(_, h)| *h))
}

/// Crosses the hole an archive left before seq `next`: the verifier resumes from the last
/// pruned hash (the chain inside the hole is the archive's to check, and the next event's
/// prev_hash binds it). A gap that is not such a hole is a break.
async fn cross_hole(
    store: &dyn EventStore,
    after: Head,
    next: u64,
) -> Result<ChainVerifier, keyward_events::ChainBreak> {
    let gap = keyward_events::ChainBreak::Gap {
        seq: next,
        expected: after.seq + 1,
    };
    match crate::audit::hole(store, after.seq, next).await {
        Ok(Ok(hashes)) => match hashes.last() {
            Some(&(seq, hash)) => Ok(ChainVerifier::resume(Head { seq, hash })),
            None => Err(gap),
        },
        _ => Err(gap),
    }
}

/// Verifies the chain from seq 1 up to `head`, the snapshot a start used, and that it
/// arrives at `head`'s hash. Reads the log a page at a time; meant for a background task.
/// Crosses the holes an archive left by their kept hashes. Returns the number of events
/// checked and their timeline (see [`Live::fill_timeline`]).
pub async fn verify_prefix(
    store: &dyn EventStore,
    head: Head,
) -> Result<(u64, Timeline), keyward_events::ChainBreak> {
    let mut verifier = ChainVerifier::new();
    let mut checked = 0;
    let mut timeline = Timeline::default();
    while verifier.head().seq < head.seq {
        let page = match store.read_from(verifier.head().seq, PAGE).await {
            Ok(p) => p,
            Err(e) => {
                // A store outage is not a broken chain: wait and read the page again.
                tracing::warn!(error = %e, "cannot read the log to verify the snapshot's prefix; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        // A hole before the next event, or before the snapshot's own seq (itself pruned).
        let hole_end = page
            .first()
            .map_or(head.seq + 1, |e| e.seq.min(head.seq + 1));
        if hole_end > verifier.head().seq + 1 {
            checked += verifier.checked();
            verifier = cross_hole(store, verifier.head(), hole_end).await?;
            continue;
        }
        if page.is_empty() {
            return Err(keyward_events::ChainBreak::Checkpoint { seq: head.seq });
        }
        for env in page.iter().take_while(|e| e.seq <= head.seq) {
            if env.seq > verifier.head().seq + 1 {
                checked += verifier.checked();
                verifier = cross_hole(store, verifier.head(), env.seq).await?;
            }
            verifier.push(env)?;
            timeline.record(env.seq, env.occurred_at);
        }
    }
    if verifier.head() != head {
        return Err(keyward_events::ChainBreak::Checkpoint { seq: head.seq });
    }
    Ok((checked + verifier.checked(), timeline))
}
