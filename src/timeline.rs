//! Which seqs an "as of time T" replay has to read: the earliest and latest `occurred_at`
//! of every block of [`BLOCK`] seqs, kept beside the live projections (16 bytes per
//! block: 625 KB for a 10M-event log) and saved inside each projection snapshot.
//!
//! `occurred_at` is stamped when a command runs, not when its event commits, so it is not
//! monotonic in seq: a usage event may wait in the append queue, and on PostgreSQL nodes'
//! clocks differ. A replay as of T folds exactly the events with `occurred_at <= T`, in seq
//! order (as a full fold does). The timeline bounds where they are:
//! - every event at or below [`Bounds::lo`] has `occurred_at <= T`, so a snapshot at or
//!   below it holds only events the replay folds, and can be started from;
//! - no event in `(hi, covered]` has `occurred_at <= T`, so nothing there is read.
//!
//! Events past [`Timeline::covered`] are unknown and must be read (filtered by time).

use crate::time::Timestamp;

/// Seqs per block.
pub const BLOCK: u64 = 256;

/// The earliest and latest `occurred_at` (UTC microseconds) of one block's events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    min: i64,
    max: i64,
}

impl Span {
    const EMPTY: Span = Span {
        min: i64::MAX,
        max: i64::MIN,
    };
    /// A block whose times are not known: it may hold any time.
    const UNKNOWN: Span = Span {
        min: i64::MIN,
        max: i64::MAX,
    };

    fn merge(self, o: Span) -> Span {
        Span {
            min: self.min.min(o.min),
            max: self.max.max(o.max),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timeline {
    /// Every seq from 1 to this one has been recorded, or is at most `unknown_below`.
    covered: u64,
    /// The times of seqs 1 to this one are not known (a start from a snapshot written
    /// before timelines were kept, until [`fill_prefix`](Self::fill_prefix)): a block
    /// holding any of them may hold any time. Blocks hold the known times only.
    unknown_below: u64,
    /// Block `i` is seqs `i * BLOCK + 1 ..= (i + 1) * BLOCK`.
    blocks: Vec<Span>,
}

/// Where the events of an "as of T" replay are, see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Every event with seq <= `lo` occurred at or before T.
    pub lo: u64,
    /// No event in `(hi, covered]` occurred at or before T.
    pub hi: u64,
    /// The timeline knows nothing past this seq.
    pub covered: u64,
}

impl Timeline {
    /// A timeline that knows seqs 1 to `seq` exist but not when they occurred (a state
    /// started from a snapshot written before timelines were kept).
    pub fn unknown(seq: u64) -> Timeline {
        let mut t = Timeline::default();
        t.mark_unknown(seq);
        t
    }

    /// Whether some seqs' times are not known.
    pub fn has_unknown(&self) -> bool {
        self.unknown_below > 0
    }

    /// Fills in the unknown times from `prefix`, a timeline of seqs 1 to at least
    /// `unknown_below` (read from the log).
    pub fn fill_prefix(&mut self, prefix: &Timeline) {
        if self.unknown_below == 0 || prefix.unknown_below > 0 {
            return;
        }
        if prefix.covered < self.unknown_below {
            return;
        }
        let last = Self::block_of(self.unknown_below);
        for (i, b) in prefix.blocks.iter().enumerate().take(last + 1) {
            if let Some(mine) = self.blocks.get_mut(i) {
                *mine = mine.merge(*b);
            }
        }
        self.unknown_below = 0;
    }

    /// Block `i` as [`bounds`](Self::bounds) sees it.
    fn span(&self, i: usize) -> Span {
        if (i as u64) * BLOCK < self.unknown_below {
            Span::UNKNOWN
        } else {
            self.blocks[i]
        }
    }

    pub fn covered(&self) -> u64 {
        self.covered
    }

    fn block_of(seq: u64) -> usize {
        ((seq - 1) / BLOCK) as usize
    }

    /// Marks seqs `covered + 1 ..= to` as of unknown time.
    fn mark_unknown(&mut self, to: u64) {
        if to <= self.covered {
            return;
        }
        if self.covered > self.unknown_below {
            // A gap after known seqs (not expected: the fold is gap-free): those blocks
            // can hold any time.
            let first = Self::block_of(self.covered + 1);
            let last = Self::block_of(to);
            self.blocks.resize(last + 1, Span::EMPTY);
            for b in &mut self.blocks[first..=last] {
                *b = Span::UNKNOWN;
            }
        } else {
            self.blocks.resize(Self::block_of(to) + 1, Span::EMPTY);
            self.unknown_below = to;
        }
        self.covered = to;
    }

    /// Records that event `seq` occurred at `at`. Seqs at or below `covered` are ignored
    /// (already recorded); a gap is marked unknown.
    pub fn record(&mut self, seq: u64, at: Timestamp) {
        if seq <= self.covered {
            return;
        }
        if seq > self.covered + 1 {
            self.mark_unknown(seq - 1);
        }
        let micros = at.timestamp_micros();
        let i = Self::block_of(seq);
        if self.blocks.len() <= i {
            self.blocks.resize(i + 1, Span::EMPTY);
        }
        let b = &mut self.blocks[i];
        b.min = b.min.min(micros);
        b.max = b.max.max(micros);
        self.covered = seq;
    }

    /// The timeline of seqs 1 to `seq` only (the part a snapshot at `seq` keeps).
    pub fn prefix(&self, seq: u64) -> Timeline {
        if seq >= self.covered {
            return self.clone();
        }
        if seq == 0 {
            return Timeline::default();
        }
        // The last block is cut: its span may include later seqs' times, which only
        // widens it (still a sound bound).
        Timeline {
            covered: seq,
            unknown_below: self.unknown_below.min(seq),
            blocks: self.blocks[..=Self::block_of(seq)].to_vec(),
        }
    }

    /// Where the events with `occurred_at <= t` are.
    pub fn bounds(&self, t: Timestamp) -> Bounds {
        let t = t.timestamp_micros();
        let n = self.blocks.len();
        let lo = match (0..n).position(|i| self.span(i).max > t) {
            Some(i) => (i as u64) * BLOCK,
            None => self.covered,
        };
        let hi = match (0..n).rposition(|i| self.span(i).min <= t) {
            Some(i) => ((i as u64 + 1) * BLOCK).min(self.covered),
            None => 0,
        };
        Bounds {
            lo: lo.min(self.covered),
            hi,
            covered: self.covered,
        }
    }

    /// `covered (u64 LE) | unknown_below (u64 LE) | blocks (u64 LE) |
    /// blocks × (min i64 LE, max i64 LE)`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.covered.to_le_bytes());
        out.extend_from_slice(&self.unknown_below.to_le_bytes());
        out.extend_from_slice(&(self.blocks.len() as u64).to_le_bytes());
        for b in &self.blocks {
            out.extend_from_slice(&b.min.to_le_bytes());
            out.extend_from_slice(&b.max.to_le_bytes());
        }
    }

    /// Reads what [`encode`](Self::encode) wrote at the start of `bytes`; returns it and
    /// the number of bytes read. `None` if it is truncated or inconsistent.
    pub fn decode(bytes: &[u8]) -> Option<(Timeline, usize)> {
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
        };
        let covered = u64_at(0)?;
        let unknown_below = u64_at(8)?;
        if unknown_below > covered {
            return None;
        }
        let bytes = bytes.get(8..)?;
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
        };
        let n = usize::try_from(u64_at(8)?).ok()?;
        let expected = if covered == 0 {
            0
        } else {
            Self::block_of(covered) + 1
        };
        if n != expected {
            return None;
        }
        let len = 16usize.checked_add(n.checked_mul(16)?)?;
        if bytes.len() < len {
            return None;
        }
        let blocks = (0..n)
            .map(|i| {
                let at = 16 + i * 16;
                Some(Span {
                    min: u64_at(at)? as i64,
                    max: u64_at(at + 8)? as i64,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some((
            Timeline {
                covered,
                unknown_below,
                blocks,
            },
            len + 8,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        crate::time::from_micros(s * 1_000_000).unwrap()
    }

    #[test]
    fn bounds_hold_with_times_out_of_order() {
        let mut t = Timeline::default();
        // Seconds 1.. in order, except seq 1500 which occurred at second 10.
        for seq in 1..=5000u64 {
            let s = if seq == 1500 { 10 } else { seq as i64 };
            t.record(seq, at(s));
        }
        // Seq 1500's block holds second 10 but later ones past 100.
        let b1500 = (1500 - 1) / BLOCK;
        let b = t.bounds(at(100));
        assert_eq!((b.lo, b.hi, b.covered), (0, (b1500 + 1) * BLOCK, 5000));
        // In order past that block: lo and hi are the edges of T's own block.
        let b = t.bounds(at(3000));
        let own = (3000 - 1) / BLOCK;
        assert_eq!((b.lo, b.hi), (own * BLOCK, (own + 1) * BLOCK));
        let b = t.bounds(at(10_000));
        assert_eq!((b.lo, b.hi), (5000, 5000));
        let b = t.bounds(at(0));
        assert_eq!((b.lo, b.hi), (0, 0));
        let (back, len) = {
            let mut v = Vec::new();
            t.encode(&mut v);
            let (d, n) = Timeline::decode(&v).unwrap();
            (d, (n, v.len()))
        };
        assert_eq!(back, t);
        assert_eq!(len.0, len.1);
        assert_eq!(t.prefix(3000).covered(), 3000);
    }

    #[test]
    fn an_unknown_prefix_is_never_skipped_until_it_is_filled_in() {
        let mut t = Timeline::unknown(3000);
        t.record(3001, at(5000));
        let b = t.bounds(at(100));
        assert_eq!(b.lo, 0);
        let edge = (3000 - 1) / BLOCK;
        assert_eq!(b.hi, ((edge + 1) * BLOCK).min(3001));
        let mut prefix = Timeline::default();
        for seq in 1..=3000 {
            prefix.record(seq, at(seq as i64));
        }
        t.fill_prefix(&prefix);
        assert!(!t.has_unknown());
        let mut whole = prefix.clone();
        whole.record(3001, at(5000));
        assert_eq!(t, whole);
        let b = t.bounds(at(100));
        assert_eq!((b.lo, b.hi), (0, BLOCK));
        let mut v = Vec::new();
        Timeline::unknown(700).encode(&mut v);
        assert_eq!(Timeline::decode(&v).unwrap().0, Timeline::unknown(700));
    }
}
