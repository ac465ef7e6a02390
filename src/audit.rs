//! Reading the audit log: the chain walk, the checkpoint and paged reads. Shared by the
//! CLI (`keyward audit …`) and the management API (`/api/v1/audit/…`).

use std::sync::Arc;

use futures::Stream;
use keyward_events::{ChainVerifier, Envelope, Head};

use crate::store::{EventFilter, EventStore, StoreError};
use crate::time::Timestamp;

/// Events per read: large enough to keep round trips few, small enough to bound memory.
pub const PAGE: usize = 10_000;

/// What a walk of the chain found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainReport {
    /// The log's last event when the walk started. Events appended meanwhile are not
    /// part of this walk.
    pub head: Head,
    /// Events whose hash was recomputed and matched.
    pub checked: u64,
    /// The first event at which the chain does not hold, if any.
    pub failure: Option<ChainFailure>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainFailure {
    pub seq: u64,
    pub reason: String,
}

impl ChainReport {
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }
}

/// Recomputes every hash up to the current head, in order, one page at a time. With a
/// checkpoint, the log must still hold the checkpoint's hash at its seq and reach it.
pub async fn verify_chain(
    store: &dyn EventStore,
    checkpoint: Option<Head>,
) -> Result<ChainReport, StoreError> {
    let head = store.head().await?;
    let mut v = ChainVerifier::new();
    let mut filter = EventFilter {
        until_seq: Some(head.seq),
        ..EventFilter::default()
    };
    let fail = |v: &ChainVerifier, seq: u64, reason: String| ChainReport {
        head,
        checked: v.checked(),
        failure: Some(ChainFailure { seq, reason }),
    };
    loop {
        let page = store.read(&filter, PAGE).await?;
        let Some(last) = page.last() else { break };
        filter.after_seq = last.seq;
        for env in &page {
            if let Err(brk) = v.push(env) {
                return Ok(fail(
                    &v,
                    brk.seq(),
                    format!("the chain breaks at seq {}: {brk}", brk.seq()),
                ));
            }
            if let Some(cp) = checkpoint.filter(|cp| cp.seq == env.seq)
                && cp.hash != env.hash
            {
                return Ok(fail(
                    &v,
                    env.seq,
                    format!(
                        "seq {} differs from the checkpoint: the log was rewritten",
                        env.seq
                    ),
                ));
            }
        }
    }
    let end = v.head().seq;
    if end < head.seq {
        // The store reported a head it then did not return: events are missing at the end.
        return Ok(fail(
            &v,
            end + 1,
            format!(
                "the log's head is seq {} but it ends at seq {end}: events are missing",
                head.seq
            ),
        ));
    }
    if let Some(cp) = checkpoint.filter(|cp| cp.seq > end) {
        return Ok(fail(
            &v,
            end + 1,
            format!(
                "the checkpoint is at seq {} but the log ends at seq {end}: events were removed",
                cp.seq
            ),
        ));
    }
    Ok(ChainReport {
        head,
        checked: v.checked(),
        failure: None,
    })
}

/// The head, to compare a later log against (`audit verify --checkpoint`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub head: Head,
    pub at: Timestamp,
}

pub async fn checkpoint(store: &dyn EventStore) -> Result<Checkpoint, StoreError> {
    Ok(Checkpoint {
        head: store.head().await?,
        at: chrono::Utc::now(),
    })
}

/// The events matching `filter`, in seq order, one page at a time. It stops at the head
/// as of its first read (unless the filter has an earlier `until_seq`), so that an export
/// of a busy log ends.
pub fn pages(
    store: Arc<dyn EventStore>,
    filter: EventFilter,
    page: usize,
) -> impl Stream<Item = Result<Vec<Envelope>, StoreError>> + Send + 'static {
    futures::stream::try_unfold(
        (store, filter, false),
        move |(store, mut filter, done)| async move {
            if done {
                return Ok(None);
            }
            if filter.until_seq.is_none() {
                filter.until_seq = Some(store.head().await?.seq);
            }
            let events = store.read(&filter, page).await?;
            let Some(last) = events.last() else {
                return Ok(None);
            };
            filter.after_seq = last.seq;
            let done = events.len() < page;
            Ok(Some((events, (store, filter, done))))
        },
    )
}
