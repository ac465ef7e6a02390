//! The Merkle tree over the log, in the shape of RFC 6962 / RFC 9162 (Certificate
//! Transparency) and C2SP `tlog-tiles`: SHA-256, leaves hashed with a `0x00` prefix and
//! interior nodes with `0x01`, so that a leaf can never pass for a node.
//!
//! Leaf `i` (from 0) is `SHA-256(0x00 || hash of event seq i+1)`: the event's own 32-byte
//! chain hash is the leaf's data. The tree of size N is over the first N events; its root
//! is what a signed checkpoint records.
//!
//! A stored tree keeps the hash of every *complete* subtree: node `(level L, index k)`
//! covers leaves `[k·2^L, (k+1)·2^L)`. Any subtree hash a proof needs, complete or not,
//! is folded from at most `log2 N` of them. Proofs are made in two steps so that a store
//! can fetch what they need in one round trip: a [`ProofPlan`] names the nodes, and
//! [`ProofPlan::assemble`] folds the fetched hashes into the proof.
//!
//! Verification follows RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2 (consistency).

use sha2::{Digest, Sha256};

use crate::hash::Hash32;

/// The root of the empty tree: SHA-256 of no bytes.
pub fn empty_root() -> Hash32 {
    Hash32(Sha256::digest([]).into())
}

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash_of(data: &[u8]) -> Hash32 {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    Hash32(h.finalize().into())
}

/// The leaf of an event: its chain hash is the leaf's data.
pub fn leaf_hash(event_hash: &Hash32) -> Hash32 {
    leaf_hash_of(&event_hash.0)
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash32, right: &Hash32) -> Hash32 {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left.0);
    h.update(right.0);
    Hash32(h.finalize().into())
}

/// A complete subtree: level `L` and index `k` cover leaves `[k·2^L, (k+1)·2^L)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    pub level: u8,
    pub index: u64,
}

impl NodeId {
    /// The first leaf the node covers.
    pub fn start(&self) -> u64 {
        self.index << self.level
    }

    /// One past the last leaf the node covers.
    pub fn end(&self) -> u64 {
        (self.index + 1) << self.level
    }
}

/// Why a proof cannot be made or does not verify.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf {index} is not in a tree of size {size}")]
    LeafOutOfRange { index: u64, size: u64 },
    #[error("a tree of size {from} cannot be proved consistent with one of size {to}")]
    SizesOutOfOrder { from: u64, to: u64 },
    #[error("the proof has {got} hashes where {want} were expected")]
    WrongLength { got: usize, want: usize },
    #[error("the proof does not lead to the root")]
    RootMismatch,
    #[error("the node at level {level}, index {index} is missing from the store")]
    MissingNode { level: u8, index: u64 },
}

/// The tree's right edge while leaves are appended: the roots of the complete subtrees
/// that make up the tree so far, largest (leftmost) first. O(log N) hashes; appending is
/// amortised two hashes per leaf.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactRange {
    size: u64,
    /// One hash per set bit of `size`, from the highest bit down.
    stack: Vec<Hash32>,
}

impl CompactRange {
    pub fn new() -> CompactRange {
        CompactRange::default()
    }

    /// Resumes from the roots of the complete subtrees of a tree of `size` leaves, largest
    /// first (what [`CompactRange::edge`] names). `None` if their number does not match.
    pub fn from_parts(size: u64, stack: Vec<Hash32>) -> Option<CompactRange> {
        (stack.len() == size.count_ones() as usize).then_some(CompactRange { size, stack })
    }

    /// The complete subtrees whose roots a tree of `size` leaves is folded from, largest
    /// first.
    pub fn edge(size: u64) -> Vec<NodeId> {
        range_nodes(0, size)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn stack(&self) -> &[Hash32] {
        &self.stack
    }

    /// Appends a leaf (already hashed with [`leaf_hash`]).
    pub fn push(&mut self, leaf: Hash32) {
        self.push_with(leaf, |_, _| {});
    }

    /// Appends a leaf and reports every node it completes, the leaf itself first, then
    /// each parent up to the highest, so that a store can keep them.
    pub fn push_with(&mut self, leaf: Hash32, mut completed: impl FnMut(NodeId, &Hash32)) {
        let mut h = leaf;
        let mut id = NodeId {
            level: 0,
            index: self.size,
        };
        completed(id, &h);
        while (self.size >> id.level) & 1 == 1 {
            let Some(left) = self.stack.pop() else {
                unreachable!("a set bit of the size has its subtree on the stack");
            };
            h = node_hash(&left, &h);
            id = NodeId {
                level: id.level + 1,
                index: id.index >> 1,
            };
            completed(id, &h);
        }
        self.stack.push(h);
        self.size += 1;
    }

    /// The root of the tree so far.
    pub fn root(&self) -> Hash32 {
        fold(&self.stack).unwrap_or_else(empty_root)
    }
}

/// Folds the roots of adjacent complete subtrees, largest first, into the hash of the
/// range they cover, as RFC 6962's MTH splits it.
fn fold(hashes: &[Hash32]) -> Option<Hash32> {
    let (last, rest) = hashes.split_last()?;
    Some(rest.iter().rev().fold(*last, |acc, h| node_hash(h, &acc)))
}

/// The largest power of two strictly below `n` (n ≥ 2).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The complete subtrees that make up leaves `[lo, hi)`, largest first. Every range a
/// proof names starts at a multiple of a power of two at least as large as the range, so
/// this is its RFC 6962 decomposition.
fn range_nodes(lo: u64, hi: u64) -> Vec<NodeId> {
    let mut out = Vec::new();
    let mut s = lo;
    while s < hi {
        let len = hi - s;
        let mut level = 63 - len.leading_zeros();
        if s > 0 {
            level = level.min(s.trailing_zeros());
        }
        out.push(NodeId {
            level: level as u8,
            index: s >> level,
        });
        s += 1u64 << level;
    }
    out
}

/// The subtree hashes a proof is made of, as ranges of leaves, in the proof's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProofPlan {
    ranges: Vec<(u64, u64)>,
}

impl ProofPlan {
    /// Every complete node the proof needs, without repeats, in a stable order.
    pub fn nodes(&self) -> Vec<NodeId> {
        let mut all: Vec<NodeId> = self
            .ranges
            .iter()
            .flat_map(|&(lo, hi)| range_nodes(lo, hi))
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The proof, given the hashes of the nodes [`ProofPlan::nodes`] named.
    pub fn assemble(
        &self,
        mut get: impl FnMut(NodeId) -> Option<Hash32>,
    ) -> Result<Vec<Hash32>, ProofError> {
        self.ranges
            .iter()
            .map(|&(lo, hi)| {
                let hashes = range_nodes(lo, hi)
                    .into_iter()
                    .map(|id| {
                        get(id).ok_or(ProofError::MissingNode {
                            level: id.level,
                            index: id.index,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                fold(&hashes).ok_or(ProofError::RootMismatch)
            })
            .collect()
    }

    /// How many hashes the proof has.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

/// The plan of the root of a tree of `size` leaves: one "proof" element, the root (none
/// for the empty tree, whose root is [`empty_root`]).
pub fn root_plan(size: u64) -> ProofPlan {
    ProofPlan {
        ranges: if size == 0 { vec![] } else { vec![(0, size)] },
    }
}

/// The plan of the inclusion proof of leaf `index` in the tree of `size` leaves
/// (RFC 6962 §2.1.1 PATH).
pub fn inclusion_plan(index: u64, size: u64) -> Result<ProofPlan, ProofError> {
    if index >= size {
        return Err(ProofError::LeafOutOfRange { index, size });
    }
    let mut ranges = Vec::new();
    let (mut lo, mut hi) = (0, size);
    let mut pending = Vec::new();
    while hi - lo > 1 {
        let k = split_point(hi - lo);
        if index < lo + k {
            pending.push((lo + k, hi));
            hi = lo + k;
        } else {
            pending.push((lo, lo + k));
            lo += k;
        }
    }
    // The path is listed from the leaf up: the innermost split first.
    while let Some(r) = pending.pop() {
        ranges.push(r);
    }
    Ok(ProofPlan { ranges })
}

/// The plan of the proof that the tree of `to` leaves extends the one of `from` leaves
/// (RFC 6962 §2.1.2 PROOF). `from` must be at least 1 and at most `to`.
pub fn consistency_plan(from: u64, to: u64) -> Result<ProofPlan, ProofError> {
    if from == 0 || from > to {
        return Err(ProofError::SizesOutOfOrder { from, to });
    }
    let mut pending = Vec::new();
    let (mut lo, mut hi) = (0, to);
    let mut complete = true;
    loop {
        if from == hi {
            if !complete {
                pending.push((lo, hi));
            }
            break;
        }
        let k = split_point(hi - lo);
        if from - lo <= k {
            pending.push((lo + k, hi));
            hi = lo + k;
        } else {
            pending.push((lo, lo + k));
            lo += k;
            complete = false;
        }
    }
    pending.reverse();
    Ok(ProofPlan { ranges: pending })
}

/// Checks that `leaf` is leaf `index` of the tree of `size` leaves whose root is `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash32,
    index: u64,
    size: u64,
    proof: &[Hash32],
    root: &Hash32,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::LeafOutOfRange { index, size });
    }
    let want = inclusion_plan(index, size)?.len();
    if proof.len() != want {
        return Err(ProofError::WrongLength {
            got: proof.len(),
            want,
        });
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(ProofError::RootMismatch);
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s == 0 && r == *root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// Checks that the tree of `to` leaves with root `new_root` extends the tree of `from`
/// leaves with root `old_root` (RFC 9162 §2.1.4.2). Equal sizes need an empty proof and
/// equal roots.
pub fn verify_consistency(
    from: u64,
    to: u64,
    old_root: &Hash32,
    new_root: &Hash32,
    proof: &[Hash32],
) -> Result<(), ProofError> {
    let want = consistency_plan(from, to)?.len();
    if proof.len() != want {
        return Err(ProofError::WrongLength {
            got: proof.len(),
            want,
        });
    }
    if from == to {
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    let mut path: Vec<Hash32> = Vec::with_capacity(proof.len() + 1);
    if from.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut f, mut s) = (from - 1, to - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError::RootMismatch);
    };
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return Err(ProofError::RootMismatch);
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if fr == *old_root && sr == *new_root && s == 0 {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    // A proof does not bind the tree's size on its own: the root of 3 leaves with the
    // proof of 1 -> 3 also "verifies" as 1 -> 4, since a proof's hashes are opaque. What
    // binds the size to the root is the signed checkpoint that carries both.

    /// RFC 6962's MTH, straight from its definition.
    fn mth(leaves: &[Hash32]) -> Hash32 {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    /// RFC 6962's PATH, from its definition.
    fn path(m: usize, leaves: &[Hash32]) -> Vec<Hash32> {
        let n = leaves.len();
        if n <= 1 {
            return vec![];
        }
        let k = split_point(n as u64) as usize;
        if m < k {
            let mut p = path(m, &leaves[..k]);
            p.push(mth(&leaves[k..]));
            p
        } else {
            let mut p = path(m - k, &leaves[k..]);
            p.push(mth(&leaves[..k]));
            p
        }
    }

    /// RFC 6962's SUBPROOF, from its definition.
    fn subproof(m: usize, leaves: &[Hash32], b: bool) -> Vec<Hash32> {
        let n = leaves.len();
        if m == n {
            return if b { vec![] } else { vec![mth(leaves)] };
        }
        let k = split_point(n as u64) as usize;
        if m <= k {
            let mut p = subproof(m, &leaves[..k], b);
            p.push(mth(&leaves[k..]));
            p
        } else {
            let mut p = subproof(m - k, &leaves[k..], false);
            p.push(mth(&leaves[..k]));
            p
        }
    }

    /// The leaves of the test vectors of RFC 6962's reference implementations.
    fn ct_leaves() -> Vec<Vec<u8>> {
        vec![
            vec![],
            vec![0x00],
            vec![0x10],
            vec![0x20, 0x21],
            vec![0x30, 0x31],
            vec![0x40, 0x41, 0x42, 0x43],
            vec![0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
            vec![
                0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d,
                0x6e, 0x6f,
            ],
        ]
    }

    fn leaves(n: u64) -> Vec<Hash32> {
        (0..n)
            .map(|i| leaf_hash(&Hash32(*blake3::hash(&i.to_le_bytes()).as_bytes())))
            .collect()
    }

    /// Every complete node of a tree, as a store keeps them.
    fn store(leaves: &[Hash32]) -> (CompactRange, HashMap<NodeId, Hash32>) {
        let mut nodes = HashMap::new();
        let mut cr = CompactRange::new();
        for l in leaves {
            cr.push_with(*l, |id, h| {
                nodes.insert(id, *h);
            });
        }
        (cr, nodes)
    }

    #[test]
    fn roots_match_the_reference_test_vectors() {
        // Roots of the first 1..=8 leaves of the reference vectors (certificate-transparency,
        // merkle_tree_test), and the empty tree.
        let want = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        assert_eq!(
            empty_root().to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut cr = CompactRange::new();
        for (data, root) in ct_leaves().iter().zip(want) {
            cr.push(leaf_hash_of(data));
            assert_eq!(cr.root().to_hex(), root, "size {}", cr.size());
        }
    }

    #[test]
    fn the_compact_range_and_stored_nodes_give_the_rfc_root_at_every_size() {
        let all = leaves(70);
        let (_, nodes) = store(&all);
        let mut cr = CompactRange::new();
        for n in 0..=all.len() {
            assert_eq!(cr.root(), mth(&all[..n]), "size {n}");
            let plan = root_plan(n as u64);
            let root = plan.assemble(|id| nodes.get(&id).copied()).unwrap();
            assert_eq!(
                root.first().copied().unwrap_or_else(empty_root),
                mth(&all[..n])
            );
            // The edge names exactly the hashes on the stack, and resuming from them works.
            let edge: Vec<Hash32> = CompactRange::edge(n as u64)
                .iter()
                .map(|id| nodes[id])
                .collect();
            assert_eq!(edge, cr.stack());
            let resumed = CompactRange::from_parts(n as u64, edge).unwrap();
            assert_eq!(resumed, cr);
            if n < all.len() {
                cr.push(all[n]);
            }
        }
        assert!(CompactRange::from_parts(3, vec![empty_root()]).is_none());
    }

    #[test]
    fn pushing_reports_each_completed_node_once() {
        let mut cr = CompactRange::new();
        let mut seen = Vec::new();
        for l in leaves(8) {
            cr.push_with(l, |id, _| seen.push(id));
        }
        // 8 leaves, 4 + 2 + 1 parents.
        assert_eq!(seen.len(), 15);
        assert!(seen.contains(&NodeId { level: 3, index: 0 }));
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), seen.len());
    }

    #[test]
    fn inclusion_proofs_are_the_rfc_paths_and_verify() {
        let all = leaves(40);
        let (_, nodes) = store(&all);
        for n in 1..=all.len() {
            let root = mth(&all[..n]);
            for m in 0..n {
                let plan = inclusion_plan(m as u64, n as u64).unwrap();
                let proof = plan.assemble(|id| nodes.get(&id).copied()).unwrap();
                assert_eq!(proof, path(m, &all[..n]), "leaf {m} of {n}");
                // Only complete nodes inside the tree are needed.
                assert!(plan.nodes().iter().all(|id| id.end() <= n as u64));
                verify_inclusion(&all[m], m as u64, n as u64, &proof, &root).unwrap();

                // Another leaf, index, size or root fails; so does any changed hash, and a
                // proof one hash short or long.
                let other = all[(m + 1) % n];
                if n > 1 {
                    assert!(verify_inclusion(&other, m as u64, n as u64, &proof, &root).is_err());
                    let wrong_index = ((m + 1) % n) as u64;
                    assert!(
                        verify_inclusion(&all[m], wrong_index, n as u64, &proof, &root).is_err()
                    );
                }
                assert!(
                    verify_inclusion(&all[m], m as u64, n as u64, &proof, &empty_root()).is_err()
                );
                for i in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[i].0[0] ^= 1;
                    assert!(verify_inclusion(&all[m], m as u64, n as u64, &bad, &root).is_err());
                }
                let mut long = proof.clone();
                long.push(root);
                assert_eq!(
                    verify_inclusion(&all[m], m as u64, n as u64, &long, &root),
                    Err(ProofError::WrongLength {
                        got: proof.len() + 1,
                        want: proof.len()
                    })
                );
                if !proof.is_empty() {
                    assert!(
                        verify_inclusion(&all[m], m as u64, n as u64, &proof[1..], &root).is_err()
                    );
                }
            }
            assert_eq!(
                inclusion_plan(n as u64, n as u64),
                Err(ProofError::LeafOutOfRange {
                    index: n as u64,
                    size: n as u64
                })
            );
        }
    }

    #[test]
    fn consistency_proofs_are_the_rfc_proofs_and_verify() {
        let all = leaves(40);
        let (_, nodes) = store(&all);
        for n in 1..=all.len() {
            let new_root = mth(&all[..n]);
            for m in 1..=n {
                let old_root = mth(&all[..m]);
                let plan = consistency_plan(m as u64, n as u64).unwrap();
                let proof = plan.assemble(|id| nodes.get(&id).copied()).unwrap();
                assert_eq!(proof, subproof(m, &all[..n], true), "{m} -> {n}");
                verify_consistency(m as u64, n as u64, &old_root, &new_root, &proof).unwrap();

                // A rewritten old tree, a changed hash, a shorter proof, swapped roots fail.
                let mut rewritten = all[..m].to_vec();
                rewritten[0] = leaf_hash_of(b"rewritten");
                let other_old = mth(&rewritten);
                assert!(
                    verify_consistency(m as u64, n as u64, &other_old, &new_root, &proof).is_err()
                );
                for i in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[i].0[31] ^= 0x80;
                    assert!(
                        verify_consistency(m as u64, n as u64, &old_root, &new_root, &bad).is_err(),
                        "{m} -> {n}, hash {i}"
                    );
                }
                if !proof.is_empty() {
                    let short = &proof[..proof.len() - 1];
                    assert!(
                        verify_consistency(m as u64, n as u64, &old_root, &new_root, short)
                            .is_err()
                    );
                }
                if m < n {
                    assert!(
                        verify_consistency(m as u64, n as u64, &new_root, &old_root, &proof)
                            .is_err()
                    );
                    // Off by one in either size.
                    assert!(
                        verify_consistency(m as u64 + 1, n as u64, &old_root, &new_root, &proof)
                            .is_err()
                    );
                }
            }
        }
        assert_eq!(
            consistency_plan(0, 5),
            Err(ProofError::SizesOutOfOrder { from: 0, to: 5 })
        );
        assert_eq!(
            consistency_plan(6, 5),
            Err(ProofError::SizesOutOfOrder { from: 6, to: 5 })
        );
    }

    #[test]
    fn a_missing_node_is_named() {
        let plan = inclusion_plan(3, 8).unwrap();
        assert_eq!(
            plan.assemble(|_| None),
            Err(ProofError::MissingNode { level: 0, index: 2 })
        );
    }

    #[test]
    fn proofs_of_a_huge_tree_need_few_nodes() {
        let n = 10_000_000u64;
        let plan = inclusion_plan(4_999_999, n).unwrap();
        assert!(plan.len() <= 24);
        assert!(plan.nodes().len() <= 2 * 24);
        let plan = consistency_plan(5_000_001, n).unwrap();
        assert!(plan.nodes().len() <= 2 * 24 * 2);
    }
}
