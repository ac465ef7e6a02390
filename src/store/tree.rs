//! The Merkle tree as the stores keep it (`migrations/*/0002_merkle.sql`): what both
//! backends share, free of SQL.
//!
//! Only complete nodes at the levels [`is_stored`] names (every [`STRIDE`]th level above
//! the leaves) are kept, in `merkle_nodes(level, idx, hash)`; leaves are the events' own
//! hashes. Any other complete node is folded from the at most `2^(STRIDE-1)` = 8 rows at
//! the stored level below it, so that a proof's O(log N) nodes need O(log N) rows, which
//! [`Reads`] names as a handful of index ranges for one query.
//!
//! How far the tree is built needs no row of its own that would have to change: an
//! append writes the nodes its events complete in the transaction that writes them, so
//! the table always holds every complete stored-level node within the first B leaves
//! and none beyond, for some B. Then the tree of any size up to
//! [`built_size`]`(highest level-STRIDE index)` can be read: every stored node it needs
//! is there.

use std::collections::HashMap;

use keyward_events::Hash32;
use keyward_events::merkle::{CompactRange, NodeId, leaf_hash, node_hash};

/// Levels kept: every `STRIDE`th one above the leaves.
pub const STRIDE: u8 = 4;
/// Events per transaction when a log that predates the tree is given one.
pub const BACKFILL_CHUNK: u64 = 65_536;
/// The highest level a tree of at most 2^63 leaves can have, rounded down to a stored one.
const MAX_STORED_LEVEL: u8 = 60;

/// Whether the nodes of `level` are kept in `merkle_nodes`.
pub fn is_stored(level: u8) -> bool {
    level > 0 && level.is_multiple_of(STRIDE)
}

/// The tree size the stored nodes can serve, given the highest index stored at level
/// [`STRIDE`] (`None` for none) and the log's head: every stored-level node within the
/// first `(k+1)·2^STRIDE` leaves is stored, and the next level-STRIDE node is not, so
/// any size below `(k+2)·2^STRIDE` needs only stored nodes.
pub fn built_size(highest_first_level: Option<u64>, head: u64) -> u64 {
    let next = highest_first_level.map_or(0, |k| k.saturating_add(1));
    let limit = next
        .saturating_add(1)
        .saturating_mul(1 << STRIDE)
        .saturating_sub(1);
    head.min(limit)
}

/// What to read to compute a set of nodes: ranges of stored nodes (level, first index,
/// one past the last), and ranges of leaves (first leaf index, one past the last).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reads {
    pub nodes: Vec<(u8, u64, u64)>,
    pub leaves: Vec<(u64, u64)>,
}

impl Reads {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.leaves.is_empty()
    }

    /// How many rows the ranges can return at most.
    pub fn rows(&self) -> u64 {
        self.nodes.iter().map(|(_, lo, hi)| hi - lo).sum::<u64>()
            + self.leaves.iter().map(|(lo, hi)| hi - lo).sum::<u64>()
    }
}

/// The level whose rows a node at `level` is folded from: the stored level at or below
/// it (0 for the leaves).
fn base_level(level: u8) -> u8 {
    level - level % STRIDE
}

/// The rows the nodes `ids` are computed from, as few ranges as can be: adjacent or
/// overlapping ranges at one level are merged.
pub fn reads_for(ids: &[NodeId]) -> Reads {
    let mut nodes: Vec<(u8, u64, u64)> = Vec::new();
    let mut leaves: Vec<(u64, u64)> = Vec::new();
    for id in ids {
        let base = base_level(id.level);
        let shift = id.level - base;
        let lo = id.index << shift;
        let hi = (id.index + 1) << shift;
        if base == 0 {
            leaves.push((lo, hi));
        } else {
            nodes.push((base, lo, hi));
        }
    }
    nodes.sort_unstable();
    leaves.sort_unstable();
    let mut merged_nodes: Vec<(u8, u64, u64)> = Vec::with_capacity(nodes.len());
    for (level, lo, hi) in nodes {
        match merged_nodes.last_mut() {
            Some((l, _, h)) if *l == level && lo <= *h => *h = (*h).max(hi),
            _ => merged_nodes.push((level, lo, hi)),
        }
    }
    let mut merged_leaves: Vec<(u64, u64)> = Vec::with_capacity(leaves.len());
    for (lo, hi) in leaves {
        match merged_leaves.last_mut() {
            Some((_, h)) if lo <= *h => *h = (*h).max(hi),
            _ => merged_leaves.push((lo, hi)),
        }
    }
    Reads {
        nodes: merged_nodes,
        leaves: merged_leaves,
    }
}

/// The rows [`reads_for`] named, as read: stored nodes and leaf hashes (already hashed
/// with [`leaf_hash`]) by leaf index.
#[derive(Debug, Default)]
pub struct Rows {
    pub nodes: HashMap<NodeId, Hash32>,
    pub leaves: HashMap<u64, Hash32>,
}

impl Rows {
    /// A stored node or a leaf; `None` if it was not read.
    fn get(&self, id: NodeId) -> Option<Hash32> {
        if id.level == 0 {
            self.leaves.get(&id.index).copied()
        } else {
            self.nodes.get(&id).copied()
        }
    }
}

/// Folds each of `ids` from the rows read for it. A node some of whose rows are missing
/// (beyond the log, or deleted from the store) is left out of the answer.
pub fn compute(ids: &[NodeId], rows: &Rows) -> HashMap<NodeId, Hash32> {
    let mut out = HashMap::with_capacity(ids.len());
    for &id in ids {
        if let Some(h) = fold_node(id, rows) {
            out.insert(id, h);
        }
    }
    out
}

fn fold_node(id: NodeId, rows: &Rows) -> Option<Hash32> {
    let base = base_level(id.level);
    if base == id.level {
        return rows.get(id);
    }
    let shift = id.level - base;
    let mut layer: Vec<Hash32> = ((id.index << shift)..((id.index + 1) << shift))
        .map(|index| rows.get(NodeId { level: base, index }))
        .collect::<Option<_>>()?;
    while layer.len() > 1 {
        layer = layer.chunks(2).map(|p| node_hash(&p[0], &p[1])).collect();
    }
    layer.first().copied()
}

/// The compact range of a tree of `size` leaves, from the rows read for
/// [`CompactRange::edge`]`(size)`; `None` if some are missing.
pub fn compact_range(size: u64, rows: &Rows) -> Option<CompactRange> {
    let edge = CompactRange::edge(size);
    let hashes = edge
        .iter()
        .map(|&id| fold_node(id, rows))
        .collect::<Option<Vec<_>>>()?;
    CompactRange::from_parts(size, hashes)
}

/// Appends event hashes to `tree`, collecting the stored-level nodes they complete.
pub fn push_events<'a>(
    tree: &mut CompactRange,
    event_hashes: impl IntoIterator<Item = &'a Hash32>,
    out: &mut Vec<(NodeId, Hash32)>,
) {
    for h in event_hashes {
        tree.push_with(leaf_hash(h), |id, hash| {
            if is_stored(id.level) {
                out.push((id, *hash));
            }
        });
    }
}

/// The stored-level nodes that lie wholly within leaves `[lo, hi)`, as index ranges per
/// level: what a verifier compares against the tree it recomputes.
pub fn stored_within(lo: u64, hi: u64) -> Vec<(u8, u64, u64)> {
    let mut out = Vec::new();
    let mut level = STRIDE;
    while level <= MAX_STORED_LEVEL {
        let first = lo.div_ceil(1u64 << level);
        let end = hi >> level;
        if end > first {
            out.push((level, first, end));
        }
        if hi >> level == 0 {
            break;
        }
        level += STRIDE;
    }
    out
}

#[cfg(test)]
mod tests {
    use keyward_events::merkle::{consistency_plan, inclusion_plan, root_plan};

    use super::*;

    fn event_hashes(n: u64) -> Vec<Hash32> {
        (0..n)
            .map(|i| Hash32(*blake3::hash(&i.to_le_bytes()).as_bytes()))
            .collect()
    }

    /// The rows a store would hold for the first `n` events, and every complete node.
    fn stored(events: &[Hash32]) -> (Rows, HashMap<NodeId, Hash32>, CompactRange) {
        let mut tree = CompactRange::new();
        let mut all = HashMap::new();
        let mut rows = Rows::default();
        for (i, e) in events.iter().enumerate() {
            rows.leaves.insert(i as u64, leaf_hash(e));
            tree.push_with(leaf_hash(e), |id, h| {
                all.insert(id, *h);
                if is_stored(id.level) {
                    rows.nodes.insert(id, *h);
                }
            });
        }
        (rows, all, tree)
    }

    /// Only the rows `reads` names.
    fn only(rows: &Rows, reads: &Reads) -> Rows {
        let mut out = Rows::default();
        for &(level, lo, hi) in &reads.nodes {
            for index in lo..hi {
                let id = NodeId { level, index };
                if let Some(h) = rows.nodes.get(&id) {
                    out.nodes.insert(id, *h);
                }
            }
        }
        for &(lo, hi) in &reads.leaves {
            for i in lo..hi {
                if let Some(h) = rows.leaves.get(&i) {
                    out.leaves.insert(i, *h);
                }
            }
        }
        out
    }

    #[test]
    fn every_node_a_proof_needs_is_computed_from_few_rows() {
        let events = event_hashes(300);
        let (rows, all, _) = stored(&events);
        for n in 1..=300u64 {
            let mut plans = vec![root_plan(n)];
            for m in (0..n).step_by(7) {
                plans.push(inclusion_plan(m, n).unwrap());
                plans.push(consistency_plan(m + 1, n).unwrap());
            }
            for plan in plans {
                let ids = plan.nodes();
                let reads = reads_for(&ids);
                assert!(reads.rows() <= 8 * ids.len() as u64);
                let got = compute(&ids, &only(&rows, &reads));
                for id in &ids {
                    assert_eq!(got.get(id), all.get(id), "{id:?} at size {n}");
                }
            }
        }
    }

    #[test]
    fn the_compact_range_resumes_from_stored_rows_at_every_size() {
        let events = event_hashes(600);
        for n in 0..=600u64 {
            let (rows, _, tree) = stored(&events[..n as usize]);
            let reads = reads_for(&CompactRange::edge(n));
            assert_eq!(compact_range(n, &only(&rows, &reads)), Some(tree));
        }
    }

    #[test]
    fn a_missing_row_leaves_its_node_out() {
        let events = event_hashes(64);
        let (mut rows, _, _) = stored(&events);
        rows.nodes.remove(&NodeId { level: 4, index: 1 });
        let ids = [NodeId { level: 5, index: 0 }, NodeId { level: 5, index: 1 }];
        let got = compute(&ids, &rows);
        assert!(!got.contains_key(&ids[0]));
        assert!(got.contains_key(&ids[1]));
    }

    #[test]
    fn the_built_size_follows_from_the_highest_first_level_node() {
        for b in 0..200u64 {
            let (rows, _, _) = stored(&event_hashes(b));
            let highest = rows
                .nodes
                .keys()
                .filter(|id| id.level == STRIDE)
                .map(|id| id.index)
                .max();
            let built = built_size(highest, u64::MAX);
            // Every stored-level node within `built` leaves is there.
            assert!(built >= b);
            for (level, lo, hi) in stored_within(0, built) {
                for index in lo..hi {
                    assert!(rows.nodes.contains_key(&NodeId { level, index }));
                }
            }
            assert_eq!(built_size(highest, b), b);
        }
    }

    #[test]
    fn stored_within_names_exactly_the_nodes_inside() {
        let (rows, _, _) = stored(&event_hashes(1000));
        for (lo, hi) in [(0, 1000), (16, 512), (17, 530), (0, 15), (256, 768)] {
            let mut want: Vec<NodeId> = rows
                .nodes
                .keys()
                .filter(|id| id.start() >= lo && id.end() <= hi)
                .copied()
                .collect();
            want.sort();
            let mut got: Vec<NodeId> = stored_within(lo, hi)
                .into_iter()
                .flat_map(|(level, a, b)| (a..b).map(move |index| NodeId { level, index }))
                .collect();
            got.sort();
            assert_eq!(got, want, "[{lo}, {hi})");
        }
    }
}
