use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::hash::Hash32;

/// The last event of a (prefix of the) log: what a checkpoint records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Head {
    pub seq: u64,
    pub hash: Hash32,
}

/// Why the chain does not hold at `seq`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    #[error("seq {seq}: expected seq {expected}; the log has a gap or is out of order")]
    Gap { seq: u64, expected: u64 },
    #[error("seq {seq}: prev_hash does not match the hash of seq {prev}")]
    PrevHash { seq: u64, prev: u64 },
    #[error("seq {seq}: stored hash does not match the recomputed hash; the event was altered")]
    Hash { seq: u64 },
    #[error("seq {seq}: the checkpoint's hash differs from the log's hash at that seq")]
    Checkpoint { seq: u64 },
}

impl ChainBreak {
    /// The first seq at which the chain fails.
    pub fn seq(&self) -> u64 {
        match self {
            ChainBreak::Gap { seq, .. }
            | ChainBreak::PrevHash { seq, .. }
            | ChainBreak::Hash { seq }
            | ChainBreak::Checkpoint { seq } => *seq,
        }
    }
}

/// Checks events one at a time, in order, so that a log of any size is verified in
/// constant memory.
#[derive(Clone, Debug, Default)]
pub struct ChainVerifier {
    head: Head,
    checked: u64,
}

impl ChainVerifier {
    /// Verifies from the start of the log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Verifies the rest of a log whose prefix up to `head` is trusted (a verified checkpoint).
    pub fn resume(head: Head) -> Self {
        ChainVerifier { head, checked: 0 }
    }

    pub fn push(&mut self, e: &Envelope) -> Result<(), ChainBreak> {
        let expected = self.head.seq + 1;
        if e.seq != expected {
            return Err(ChainBreak::Gap {
                seq: e.seq,
                expected,
            });
        }
        if e.prev_hash != self.head.hash {
            return Err(ChainBreak::PrevHash {
                seq: e.seq,
                prev: self.head.seq,
            });
        }
        if e.compute_hash() != e.hash {
            return Err(ChainBreak::Hash { seq: e.seq });
        }
        self.head = Head {
            seq: e.seq,
            hash: e.hash,
        };
        self.checked += 1;
        Ok(())
    }

    pub fn head(&self) -> Head {
        self.head
    }

    pub fn checked(&self) -> u64 {
        self.checked
    }
}

/// Verifies a whole log held in memory.
pub fn verify<'a>(events: impl IntoIterator<Item = &'a Envelope>) -> Result<Head, ChainBreak> {
    let mut v = ChainVerifier::new();
    for e in events {
        v.push(e)?;
    }
    Ok(v.head())
}
