//! The live projections: the state every read and every proxy request uses, folded from
//! the log at start and kept current after each commit.
//!
//! Readers take a shared read lock for the duration of a lookup and clone out an `Arc` of
//! the record they need; the writers are the commit path and, on PostgreSQL, the tail
//! (other nodes' events), one at a time, each holding the write lock for the few
//! microseconds it takes to fold one batch. No read waits on the database.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use keyward_events::{ChainVerifier, Envelope, Head};
use keyward_projections::{ApplyError, State};
use parking_lot::{RwLock, RwLockReadGuard};

use crate::store::appender::CommitSink;
use crate::store::{EventStore, StoreError};

const PAGE: usize = 10_000;
/// Events folded per write-lock hold on the commit path.
const APPLY_SLICE: usize = 64;

pub struct Live {
    state: RwLock<State>,
    /// Serialises appliers (the appender and, on PostgreSQL, the tail) so events are
    /// folded strictly in seq order.
    apply: tokio::sync::Mutex<()>,
    store: Arc<dyn EventStore>,
    tail: TailStats,
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
}

/// What the start-up rebuild found.
#[derive(Debug, Clone, Default)]
pub struct RebuildReport {
    pub events: u64,
    pub head: Head,
    /// The first break, when the chain was allowed to be broken.
    pub broken_at: Option<u64>,
    pub elapsed: std::time::Duration,
}

impl Live {
    /// Folds the whole log, verifying the chain as it goes. A broken chain stops the start
    /// unless `allow_broken_chain`, in which case the break is reported and folding goes on.
    pub async fn rebuild(
        store: Arc<dyn EventStore>,
        allow_broken_chain: bool,
    ) -> Result<(Live, RebuildReport), LiveError> {
        let started = std::time::Instant::now();
        let mut state = State::default();
        let mut verifier = ChainVerifier::new();
        let mut report = RebuildReport::default();
        loop {
            let page = store.read_from(state.head.seq, PAGE).await?;
            if page.is_empty() {
                break;
            }
            for env in &page {
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
                report.events += 1;
            }
        }
        report.head = state.head;
        report.elapsed = started.elapsed();
        Ok((
            Live {
                state: RwLock::new(state),
                apply: tokio::sync::Mutex::new(()),
                store,
                tail: TailStats::default(),
            },
            report,
        ))
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
                for env in page.iter().take_while(|e| until.is_none_or(|u| e.seq <= u)) {
                    state.apply(env)?;
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
            let mut state = self.state.write();
            for env in slice {
                if env.seq > state.head.seq {
                    state.apply(env)?;
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
