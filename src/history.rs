//! The log at a past moment: the projections rebuilt from the events up to a seq or a time.
//!
//! A replay starts from the newest kept projection snapshot (see `snapshot`) that holds
//! only events the replay folds, and reads only the events after it:
//! - as of seq `n`: the newest snapshot at or before `n`, then the events up to `n`;
//! - as of time `T`: the newest snapshot at or before the timeline's `lo` (every event up
//!   to it occurred by `T`), then the events with `occurred_at <= T` up to the timeline's
//!   `hi` and any the timeline does not cover yet (see `timeline`).
//!
//! The answer is the same as a fold of the whole log from seq 1 ([`replay`]): the same
//! events, in seq order. Without snapshots (they are off, or none is at or before the
//! point, or none passes its checks) it is that fold.

use std::path::PathBuf;

use anyhow::Context;
use keyward_events::Envelope;
use keyward_projections::{AsOf, State};

use crate::crypto::SnapshotMacKeys;
use crate::snapshot::{self, Loaded};
use crate::store::{EventStore, StoreError};
use crate::timeline::Bounds;

const PAGE: usize = 10_000;

/// Folds the whole log up to `as_of`, page by page, from seq 1.
pub async fn replay(store: &dyn EventStore, as_of: AsOf) -> anyhow::Result<State> {
    Ok(replay_with(store, None, None, as_of).await?.state)
}

/// Where kept snapshots are, and the keys their MACs verify under.
#[derive(Clone, Debug)]
pub struct Kept {
    pub dir: PathBuf,
    pub keys: SnapshotMacKeys,
}

/// A replay's answer and how it was reached.
#[derive(Debug)]
pub struct Replayed {
    pub state: State,
    /// The seq of the snapshot it started from.
    pub from_snapshot: Option<u64>,
    /// Events read from the log (folded or skipped for their time).
    pub read: u64,
}

/// The newest kept snapshot at or before `at_most` that passes its checks and whose hash
/// the log holds at its seq; each one skipped is logged. With `legacy`, the format-1
/// file is tried last (a start after an upgrade).
pub async fn newest_snapshot(
    store: &dyn EventStore,
    kept: &Kept,
    at_most: u64,
    legacy: bool,
) -> Result<Option<Loaded>, StoreError> {
    let dir = kept.dir.clone();
    let seqs = tokio::task::spawn_blocking(move || snapshot::kept(&dir))
        .await
        .unwrap_or_default();
    let mut candidates: Vec<Option<u64>> = seqs
        .into_iter()
        .rev()
        .filter(|s| *s <= at_most && *s > 0)
        .map(Some)
        .collect();
    if legacy {
        candidates.push(None);
    }
    for seq in candidates {
        let (dir, keys) = (kept.dir.clone(), kept.keys.clone());
        let loaded = tokio::task::spawn_blocking(move || match seq {
            Some(seq) => snapshot::load_kept(&dir, seq, &keys),
            None => snapshot::load_legacy(&dir, &keys),
        })
        .await;
        let path = match seq {
            Some(seq) => snapshot::kept_path(&kept.dir, seq),
            None => kept.dir.join(snapshot::FILE),
        };
        let loaded = match loaded {
            Ok(Ok(Some(l))) => l,
            Ok(Ok(None)) => continue,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, path = %path.display(), "skipping a projection snapshot");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "reading a projection snapshot failed");
                continue;
            }
        };
        let head = loaded.state.head;
        if head.seq > at_most {
            continue;
        }
        match crate::live::log_hash_at(store, head.seq).await? {
            Some(h) if h == head.hash => return Ok(Some(loaded)),
            found => tracing::warn!(
                path = %path.display(),
                snapshot_seq = head.seq,
                log_has_seq = found.is_some(),
                "skipping a projection snapshot: the log does not hold its hash at its seq"
            ),
        }
    }
    Ok(None)
}

/// Folds the log up to `as_of`, from the newest usable kept snapshot in `kept` when one
/// is given. `bounds`, for a time, come from a timeline of the log (the live one, or a
/// snapshot's); without them a time replay starts from seq 1.
pub async fn replay_with(
    store: &dyn EventStore,
    kept: Option<&Kept>,
    bounds: Option<Bounds>,
    as_of: AsOf,
) -> anyhow::Result<Replayed> {
    // The newest seq a snapshot may be at, and the ranges to read after it: up to a seq
    // (`Some`) or to the end of the log (`None`).
    let start_at_most = match (as_of, bounds) {
        (AsOf::Seq(n), _) => n,
        (AsOf::Time(_), Some(b)) => b.lo,
        (AsOf::Time(_), None) => 0,
    };
    let base = match kept {
        Some(k) if start_at_most > 0 => newest_snapshot(store, k, start_at_most, false).await?,
        _ => None,
    };
    replay_from(store, base.map(|l| l.state), bounds, as_of).await
}

/// [`replay_with`] from a base already chosen: a state (from a snapshot the log holds)
/// that holds only events the replay folds, or `None` for seq 1.
pub async fn replay_from(
    store: &dyn EventStore,
    base: Option<State>,
    bounds: Option<Bounds>,
    as_of: AsOf,
) -> anyhow::Result<Replayed> {
    let hi = match (as_of, bounds) {
        (AsOf::Time(_), Some(b)) => (b.hi < b.covered).then_some(b),
        _ => None,
    };
    let from_snapshot = base.as_ref().map(|s| s.head.seq);
    let mut state = base.unwrap_or_default();
    let mut read = 0;
    let after = state.head.seq;
    match (as_of, hi) {
        (AsOf::Seq(n), _) => {
            fold(store, &mut state, &mut read, after, Some(n), None).await?;
        }
        (AsOf::Time(t), None) => {
            fold(store, &mut state, &mut read, after, None, Some(t)).await?;
        }
        (AsOf::Time(t), Some(b)) => {
            // No event in (hi, covered] occurred by `t`: skip them.
            fold(store, &mut state, &mut read, after, Some(b.hi), Some(t)).await?;
            fold(store, &mut state, &mut read, b.covered, None, Some(t)).await?;
        }
    }
    Ok(Replayed {
        state,
        from_snapshot,
        read,
    })
}

/// A replay that would have to fold across events an archive pruned.
#[derive(Debug, thiserror::Error)]
#[error(
    "the usage events of seqs {first} to {last} were archived and pruned from the log: a replay can only start \
     from a kept projection snapshot at or after seq {last}, and none at or before the point asked for is usable \
     (the archive's segments hold the pruned events)"
)]
pub struct Archived {
    pub first: u64,
    pub last: u64,
}

/// Folds the events in `(after, until]` (to the end of the log without `until`), only
/// those that occurred by `time` when given.
async fn fold(
    store: &dyn EventStore,
    state: &mut State,
    read: &mut u64,
    mut after: u64,
    until: Option<u64>,
    time: Option<crate::time::Timestamp>,
) -> anyhow::Result<()> {
    loop {
        if until.is_some_and(|u| after >= u) {
            return Ok(());
        }
        let page = store.read_from(after, PAGE).await?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        let mut prev = after;
        after = last.seq;
        for env in page.iter().take_while(|e| until.is_none_or(|u| e.seq <= u)) {
            if env.seq != prev + 1 {
                // A hole an archive left: the usage events in it are not in the store, so
                // a fold across it would give wrong counters. Only a kept snapshot at or
                // after the hole can be the start.
                match crate::audit::hole(store, prev, env.seq).await? {
                    Ok(_) => {
                        return Err(Archived {
                            first: prev + 1,
                            last: env.seq - 1,
                        }
                        .into());
                    }
                    Err(reason) => anyhow::bail!(reason),
                }
            }
            prev = env.seq;
            *read += 1;
            apply(state, env, time)?;
        }
    }
}

fn apply(
    state: &mut State,
    env: &Envelope,
    time: Option<crate::time::Timestamp>,
) -> anyhow::Result<()> {
    match time {
        None => state.apply(env)?,
        Some(t) if env.occurred_at > t => {}
        Some(_) => {
            let ev = env.decode().with_context(|| format!("seq {}", env.seq))?;
            state.apply_decoded(env, &ev);
        }
    }
    Ok(())
}
