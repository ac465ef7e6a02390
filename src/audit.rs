//! Reading the audit log: the chain walk, the checkpoint and paged reads. Shared by the
//! CLI (`keyward audit …`) and the management API (`/api/v1/audit/…`).

use std::sync::Arc;

use futures::Stream;
use keyward_events::merkle::{self, CompactRange, NodeId, ProofPlan};
use keyward_events::{ChainVerifier, Envelope, Hash32, Head};

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
    /// Events an archive pruned, crossed by their kept hashes (not recomputed: the
    /// archive's segments hold them; `audit verify --archive` checks those).
    pub pruned: u64,
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
///
/// It also rebuilds the Merkle tree from the events and checks every node the store
/// keeps for it within the head (see [`crate::store::tree`]) against it: a node that
/// differs or is missing is a failure at the seq of the event that completed it.
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
    let fail = |checked: u64, pruned: u64, seq: u64, reason: String| ChainReport {
        head,
        checked,
        pruned,
        failure: Some(ChainFailure { seq, reason }),
    };
    let mut tree = CompactRange::new();
    // Events checked before the last hole an archive left (the verifier resumes after it).
    let mut checked_before = 0;
    let mut pruned = 0;
    loop {
        let page = store.read(&filter, PAGE).await?;
        let Some(last) = page.last() else { break };
        filter.after_seq = last.seq;
        let mut nodes: Vec<(NodeId, Hash32)> = Vec::new();
        for env in &page {
            if env.seq > v.head().seq + 1 {
                // A hole: the events an archive pruned, whose hashes the store keeps. The
                // next event's prev_hash must be the last pruned hash; the pruned hashes
                // themselves are bound by the stored tree nodes checked below (and by the
                // archive's segments: `audit verify --archive`).
                match hole(store, v.head().seq, env.seq).await? {
                    Ok(hashes) => {
                        for (_, h) in &hashes {
                            crate::store::tree::push_events(&mut tree, [h], &mut nodes);
                        }
                        pruned += hashes.len() as u64;
                        checked_before += v.checked();
                        if let Some(&(seq, hash)) = hashes.last() {
                            v = ChainVerifier::resume(Head { seq, hash });
                        }
                    }
                    Err(reason) => {
                        let c = checked_before + v.checked();
                        return Ok(ChainReport {
                            head,
                            checked: c,
                            pruned,
                            failure: Some(ChainFailure {
                                seq: v.head().seq + 1,
                                reason,
                            }),
                        });
                    }
                }
            }
            if let Err(brk) = v.push(env) {
                return Ok(fail(
                    checked_before + v.checked(),
                    pruned,
                    brk.seq(),
                    format!("the chain breaks at seq {}: {brk}", brk.seq()),
                ));
            }
            if let Some(cp) = checkpoint.filter(|cp| cp.seq == env.seq)
                && cp.hash != env.hash
            {
                return Ok(fail(
                    checked_before + v.checked(),
                    pruned,
                    env.seq,
                    format!(
                        "seq {} differs from the checkpoint: the log was rewritten",
                        env.seq
                    ),
                ));
            }
            crate::store::tree::push_events(&mut tree, [&env.hash], &mut nodes);
        }
        if let Some((seq, reason)) = check_stored_nodes(store, &nodes).await? {
            return Ok(fail(checked_before + v.checked(), pruned, seq, reason));
        }
    }
    let end = v.head().seq;
    if end < head.seq {
        // The store reported a head it then did not return: events are missing at the end.
        return Ok(fail(
            checked_before + v.checked(),
            pruned,
            end + 1,
            format!(
                "the log's head is seq {} but it ends at seq {end}: events are missing",
                head.seq
            ),
        ));
    }
    if let Some(cp) = checkpoint.filter(|cp| cp.seq > end) {
        return Ok(fail(
            checked_before + v.checked(),
            pruned,
            end + 1,
            format!(
                "the checkpoint is at seq {} but the log ends at seq {end}: events were removed",
                cp.seq
            ),
        ));
    }
    Ok(ChainReport {
        head,
        checked: checked_before + v.checked(),
        pruned,
        failure: None,
    })
}

/// The kept hashes of the events pruned from seqs `(after, before)`: a hole in the log an
/// archive left. `Err` says why it is not one (a seq in it is neither in the log nor
/// pruned: events are missing).
pub async fn hole(
    store: &dyn EventStore,
    after: u64,
    before: u64,
) -> Result<Result<Vec<(u64, Hash32)>, String>, StoreError> {
    if before <= after + 1 {
        return Ok(Ok(Vec::new()));
    }
    let hashes = store.pruned_hashes(after, before - 1).await?;
    for (i, (seq, _)) in hashes.iter().enumerate() {
        if *seq != after + 1 + i as u64 {
            return Ok(Err(format!(
                "the log skips from seq {after} to seq {before}: seq {} is neither in the log nor archived",
                after + 1 + i as u64
            )));
        }
    }
    if hashes.len() as u64 != before - after - 1 {
        return Ok(Err(format!(
            "the log skips from seq {after} to seq {before}: seq {} is neither in the log nor archived",
            after + 1 + hashes.len() as u64
        )));
    }
    Ok(Ok(hashes))
}

/// The first of `nodes` (recomputed from the events) that the store keeps otherwise, as
/// the seq of the event that completed it and why.
async fn check_stored_nodes(
    store: &dyn EventStore,
    nodes: &[(NodeId, Hash32)],
) -> Result<Option<(u64, String)>, StoreError> {
    if nodes.is_empty() {
        return Ok(None);
    }
    let ids: Vec<NodeId> = nodes.iter().map(|(id, _)| *id).collect();
    let stored = store.tree_nodes(&ids).await?;
    for (id, want) in nodes {
        let why = match stored.get(id) {
            Some(got) if got == want => continue,
            Some(_) => "differs from the tree recomputed from the events: the tree was rewritten",
            None => "is missing from the store",
        };
        return Ok(Some((
            id.end(),
            format!(
                "the Merkle tree's node at level {}, index {} (seqs {} to {}) {why}",
                id.level,
                id.index,
                id.start() + 1,
                id.end()
            ),
        )));
    }
    Ok(None)
}

// ---------- the Merkle tree: roots and proofs ----------

/// Why a root or a proof cannot be given.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error(transparent)]
    Unavailable(#[from] StoreError),
    /// A seq or a size the log does not have (or that means nothing, like seq 0). `field`
    /// names the request parameter: `seq`, `tree_size`, `from` or `to`.
    #[error("{field} {value} is out of range: {reason}")]
    OutOfRange {
        field: &'static str,
        value: u64,
        reason: String,
    },
    /// The store's tree is missing nodes or does not hold together.
    #[error("the Merkle tree is corrupt: {0}")]
    Corrupt(String),
}

/// An inclusion proof with what it proves: leaf `leaf_index` (the event of seq
/// `leaf_index + 1`, whose chain hash is `event_hash`) is in the tree of `tree_size`
/// leaves whose root is `root`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inclusion {
    pub tree_size: u64,
    pub leaf_index: u64,
    pub event_hash: Hash32,
    pub leaf_hash: Hash32,
    pub root: Hash32,
    pub proof: Vec<Hash32>,
}

/// A consistency proof with the two roots it links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consistency {
    pub from: u64,
    pub to: u64,
    pub from_root: Hash32,
    pub to_root: Hash32,
    pub proof: Vec<Hash32>,
}

fn out_of_range(field: &'static str, value: u64, reason: impl Into<String>) -> TreeError {
    TreeError::OutOfRange {
        field,
        value,
        reason: reason.into(),
    }
}

/// Checks that the store's tree reaches `size`, naming `field` if not.
async fn within_tree(
    store: &dyn EventStore,
    field: &'static str,
    size: u64,
) -> Result<u64, TreeError> {
    let built = store.tree_size().await?;
    if size > built {
        return Err(out_of_range(
            field,
            size,
            format!("the log holds {built} events"),
        ));
    }
    Ok(built)
}

/// Reads every node the plans name in one round trip and assembles each.
async fn assemble(
    store: &dyn EventStore,
    plans: &[&ProofPlan],
    extra: &[NodeId],
) -> Result<(Vec<Vec<Hash32>>, std::collections::HashMap<NodeId, Hash32>), TreeError> {
    let mut ids: Vec<NodeId> = plans.iter().flat_map(|p| p.nodes()).collect();
    ids.extend_from_slice(extra);
    ids.sort_unstable();
    ids.dedup();
    let nodes = store.tree_nodes(&ids).await?;
    let proofs = plans
        .iter()
        .map(|p| {
            p.assemble(|id| nodes.get(&id).copied())
                .map_err(|e| TreeError::Corrupt(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((proofs, nodes))
}

fn root_of(size: u64, assembled: &[Hash32]) -> Hash32 {
    if size == 0 {
        merkle::empty_root()
    } else {
        assembled
            .first()
            .copied()
            .unwrap_or_else(merkle::empty_root)
    }
}

/// The root of the tree over the first `size` events (the empty tree's for 0).
pub async fn tree_root(store: &dyn EventStore, size: u64) -> Result<Hash32, TreeError> {
    within_tree(store, "tree_size", size).await?;
    let plan = merkle::root_plan(size);
    let (proofs, _) = assemble(store, &[&plan], &[]).await?;
    Ok(root_of(size, &proofs[0]))
}

/// The inclusion proof of event `seq` in the tree of the first `size` events.
pub async fn inclusion_proof(
    store: &dyn EventStore,
    seq: u64,
    size: u64,
) -> Result<Vec<Hash32>, TreeError> {
    Ok(inclusion(store, seq, size).await?.proof)
}

/// The inclusion proof of event `seq` in the tree of the first `size` events, with the
/// leaf and the root, all read in one query and checked against each other.
pub async fn inclusion(
    store: &dyn EventStore,
    seq: u64,
    size: u64,
) -> Result<Inclusion, TreeError> {
    if seq == 0 {
        return Err(out_of_range("seq", seq, "seqs start at 1"));
    }
    within_tree(store, "tree_size", size).await?;
    if seq > size {
        return Err(out_of_range(
            "seq",
            seq,
            format!("the tree of size {size} holds seqs 1 to {size}"),
        ));
    }
    let index = seq - 1;
    let plan =
        merkle::inclusion_plan(index, size).map_err(|e| TreeError::Corrupt(e.to_string()))?;
    let root_plan = merkle::root_plan(size);
    let leaf = NodeId { level: 0, index };
    let (proofs, nodes) = assemble(store, &[&plan, &root_plan], &[leaf]).await?;
    let root = root_of(size, &proofs[1]);
    let leaf_hash = *nodes
        .get(&leaf)
        .ok_or_else(|| TreeError::Corrupt(format!("the event of seq {seq} is missing")))?;
    let event_hash = store
        .read(
            &EventFilter {
                after_seq: index,
                until_seq: Some(seq),
                ..EventFilter::default()
            },
            1,
        )
        .await?
        .first()
        .map(|env| env.hash);
    // An event an archive pruned: the store keeps its hash.
    let event_hash = match event_hash {
        Some(h) => Some(h),
        None => store
            .pruned_hashes(index, seq)
            .await?
            .first()
            .filter(|(s, _)| *s == seq)
            .map(|(_, h)| *h),
    }
    .ok_or_else(|| TreeError::Corrupt(format!("the event of seq {seq} is missing")))?;
    if merkle::leaf_hash(&event_hash) != leaf_hash {
        return Err(TreeError::Corrupt(format!(
            "the event of seq {seq} changed while its proof was made"
        )));
    }
    let proof = proofs.into_iter().next().unwrap_or_default();
    merkle::verify_inclusion(&leaf_hash, index, size, &proof, &root)
        .map_err(|e| TreeError::Corrupt(format!("the proof made does not verify: {e}")))?;
    Ok(Inclusion {
        tree_size: size,
        leaf_index: index,
        event_hash,
        leaf_hash,
        root,
        proof,
    })
}

/// Events whose inclusion proofs are read in one query by [`inclusion_proofs`].
pub const PROOFS_PER_READ: usize = 256;

/// The inclusion proofs of `events` (each of seq at most `size`) in the tree of the first
/// `size` events, whose root is `root`: the nodes of up to [`PROOFS_PER_READ`] proofs are
/// read in one query, and each proof is checked against the event's own hash and `root`
/// before it is handed out, so a tree row that disagrees with the events is an error here
/// rather than a bad proof in an export.
pub async fn inclusion_proofs(
    store: &dyn EventStore,
    events: &[Envelope],
    size: u64,
    root: &Hash32,
) -> Result<Vec<Vec<Hash32>>, TreeError> {
    let mut out = Vec::with_capacity(events.len());
    for chunk in events.chunks(PROOFS_PER_READ) {
        let plans = chunk
            .iter()
            .map(|env| {
                if env.seq == 0 || env.seq > size {
                    return Err(out_of_range(
                        "seq",
                        env.seq,
                        format!("the tree of size {size} holds seqs 1 to {size}"),
                    ));
                }
                merkle::inclusion_plan(env.seq - 1, size)
                    .map_err(|e| TreeError::Corrupt(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&ProofPlan> = plans.iter().collect();
        let (proofs, _) = assemble(store, &refs, &[]).await?;
        for (env, proof) in chunk.iter().zip(proofs) {
            merkle::verify_inclusion(&merkle::leaf_hash(&env.hash), env.seq - 1, size, &proof, root)
                .map_err(|e| {
                    TreeError::Corrupt(format!(
                        "the stored tree does not prove the event of seq {} against the root of size {size}: {e}",
                        env.seq
                    ))
                })?;
            out.push(proof);
        }
    }
    Ok(out)
}

/// The proof that the tree of the first `to` events extends the tree of the first
/// `from` (RFC 9162 §2.1.4). `from` must be at least 1: every tree extends the empty one,
/// and RFC 9162 defines no proof for it.
pub async fn consistency_proof(
    store: &dyn EventStore,
    from: u64,
    to: u64,
) -> Result<Vec<Hash32>, TreeError> {
    Ok(consistency(store, from, to).await?.proof)
}

/// [`consistency_proof`] with the two roots, all read in one query and checked against
/// each other.
pub async fn consistency(
    store: &dyn EventStore,
    from: u64,
    to: u64,
) -> Result<Consistency, TreeError> {
    if from == 0 {
        return Err(out_of_range(
            "from",
            from,
            "a tree of size 0 is extended by every tree; proofs start from size 1",
        ));
    }
    within_tree(store, "to", to).await?;
    if from > to {
        return Err(out_of_range(
            "from",
            from,
            format!("from must not exceed to ({to})"),
        ));
    }
    let plan = merkle::consistency_plan(from, to).map_err(|e| TreeError::Corrupt(e.to_string()))?;
    let (from_plan, to_plan) = (merkle::root_plan(from), merkle::root_plan(to));
    let (proofs, _) = assemble(store, &[&plan, &from_plan, &to_plan], &[]).await?;
    let from_root = root_of(from, &proofs[1]);
    let to_root = root_of(to, &proofs[2]);
    let proof = proofs.into_iter().next().unwrap_or_default();
    merkle::verify_consistency(from, to, &from_root, &to_root, &proof)
        .map_err(|e| TreeError::Corrupt(format!("the proof made does not verify: {e}")))?;
    Ok(Consistency {
        from,
        to,
        from_root,
        to_root,
        proof,
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
