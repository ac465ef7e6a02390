//! The offline verifier: checks an NDJSON export (see [`crate::export`]) with no database,
//! reading it once, line by line, in constant memory.
//!
//! What it checks:
//! - every line is an export line in the exact form the export writes;
//! - every event's hash recomputes from the line (blake3 over the domain tag, `prev_hash`
//!   and the canonical body, as [`crate::ChainVerifier`] does). The one exception is a
//!   schema 1 `user.created`/`user.updated` whose password hash the export replaced with
//!   `<redacted>`: its hash covers bytes the export does not carry, so only its place is
//!   checked (the next event's `prev_hash`, its inclusion proof), not its content; the
//!   report counts these, and [`Options::strict`] refuses them;
//! - seqs strictly increase, seq 1 has the zero `prev_hash`, and wherever two events with
//!   consecutive seqs are present, the second's `prev_hash` is the first's hash;
//! - a *complete* export (from seq 1, no gaps) is the whole chain: its head is reported,
//!   and for every checkpoint the Merkle root of its first `size` event hashes must be the
//!   checkpoint's root (the export must reach `size`: a cut tail fails);
//! - a *filtered* export (gaps, or not from seq 1) cannot be chained, so every event must
//!   carry an inclusion proof against the export's checkpoint (leaf = `leaf_hash(hash)`,
//!   index = seq − 1);
//! - every checkpoint (the export's first line, and one the caller gives) is a signed
//!   note whose signature verifies with the caller's public key. Without a key the
//!   signature is reported as not checked: the proofs then show only that the export
//!   agrees with itself.
//!
//! The first failure ends the run and names its line and, where there is one, its seq.

use std::fmt;
use std::io::{BufRead, Read};

use crate::Envelope;
use crate::chain::Head;
use crate::export::{self, ExportError, Line, MAX_LINE};
use crate::hash::Hash32;
use crate::merkle::{self, CompactRange, ProofError};

/// How the export is to be read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Complete if it starts at seq 1 with no gaps, filtered otherwise.
    #[default]
    Auto,
    /// Must be the whole log from seq 1 without gaps.
    Complete,
    /// Every event must carry an inclusion proof; gaps are allowed.
    Filtered,
}

/// What to check the export against.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub mode: Mode,
    /// A checkpoint (signed note text) the caller trusts, e.g. one published by the
    /// service's `--checkpoint-dir` or a witness, in addition to any in the export.
    pub checkpoint: Option<String>,
    /// The public key every checkpoint must be signed with (`<name>+<hash>+<base64>`, as
    /// `keyward audit public-key` prints it).
    pub public_key: Option<String>,
    /// Refuse lines whose hash cannot be recomputed (redacted schema 1 password hashes).
    pub strict: bool,
}

/// Where a checkpoint came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The export's first line.
    Export,
    /// Given by the caller.
    Given,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Export => "the export's checkpoint",
            Source::Given => "the given checkpoint",
        })
    }
}

/// Whether a checkpoint's signature was checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signature {
    Verified,
    /// No public key was given.
    NotChecked,
}

/// What a checkpoint was compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootStatus {
    /// A complete export: the root of its first `size` events is the checkpoint's root.
    Matched,
    /// A filtered export: every event's inclusion proof leads to the checkpoint's root.
    ProofsChecked,
    /// A filtered export (or one that ends before this checkpoint's size) whose proofs
    /// are against another checkpoint: nothing in the export relates the two.
    NotComparable,
}

/// One checkpoint the export was checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointReport {
    pub source: Source,
    pub origin: String,
    pub size: u64,
    pub root: Hash32,
    pub signature: Signature,
    pub root_status: RootStatus,
}

/// What a successful run found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Lines read, the checkpoint line included.
    pub lines: u64,
    /// Event lines checked.
    pub events: u64,
    /// Whether the export is the whole log from seq 1 without gaps.
    pub complete: bool,
    pub first_seq: Option<u64>,
    /// The last event: the log's head when the export is complete.
    pub head: Option<Head>,
    /// Pairs of consecutive events whose link (`prev_hash`) was checked, seq 1's link to
    /// the zero hash included.
    pub links: u64,
    /// Inclusion proofs checked.
    pub proofs: u64,
    /// Events whose hash could not be recomputed because the export redacted a schema 1
    /// password hash; their place was checked, not their content.
    pub redacted: u64,
    /// The first few of them.
    pub redacted_seqs: Vec<u64>,
    pub checkpoints: Vec<CheckpointReport>,
}

/// Why the export does not verify.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("cannot read the export: {0}")]
    Read(String),
    #[error("malformed line: {0}")]
    Malformed(ExportError),
    #[error("an empty line")]
    EmptyLine,
    #[error("a checkpoint line may only be the export's first line")]
    MisplacedCheckpoint,
    #[error("{which} does not open: {reason}")]
    Checkpoint { which: Source, reason: String },
    #[error(
        "the export's checkpoint and the given one are both of size {size} but have different \
         roots: the log was shown two ways"
    )]
    CheckpointsDisagree { size: u64 },
    #[error("seq 0 is not a position in the log (seqs start at 1)")]
    SeqZero,
    #[error("seq {seq}: follows seq {prev}; seqs must increase")]
    OutOfOrder { seq: u64, prev: u64 },
    #[error(
        "seq {seq}: expected seq {expected}: events are missing (lines deleted), or this is a \
         filtered export, which must carry an inclusion proof on every event"
    )]
    Gap { seq: u64, expected: u64 },
    #[error("seq {seq}: prev_hash does not match the hash of seq {prev}")]
    PrevHash { seq: u64, prev: u64 },
    #[error("seq {seq}: stored hash does not match the recomputed hash; the event was altered")]
    Hash { seq: u64 },
    #[error(
        "seq {seq}: a redacted schema 1 password hash: the event's hash cannot be recomputed \
         (refused by --strict)"
    )]
    Redacted { seq: u64 },
    #[error(
        "seq {seq}: the export is filtered (it does not hold every event from seq 1) and this \
         event has no inclusion proof, so it cannot be checked; take the export with proofs"
    )]
    MissingProof { seq: u64 },
    #[error("seq {seq}: an inclusion proof, but no checkpoint to check it against")]
    ProofWithoutCheckpoint { seq: u64 },
    #[error("seq {seq}: an inclusion proof, but the checkpoint covers only {size} events")]
    BeyondCheckpoint { seq: u64, size: u64 },
    #[error("seq {seq}: the inclusion proof does not verify: {reason}")]
    Proof { seq: u64, reason: ProofError },
    #[error(
        "the first {size} events do not hash to {which}'s root: the log up to seq {size} was \
         altered or rewritten"
    )]
    RootMismatch { size: u64, which: Source },
    #[error(
        "the export ends at seq {last} but {which} covers {size} events: events from seq {} on \
         are missing (the tail was cut)", last + 1
    )]
    Truncated { last: u64, size: u64, which: Source },
}

impl Failure {
    /// The first bad seq, where the failure has one.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Failure::OutOfOrder { seq, .. }
            | Failure::Gap { seq, .. }
            | Failure::PrevHash { seq, .. }
            | Failure::Hash { seq }
            | Failure::Redacted { seq }
            | Failure::MissingProof { seq }
            | Failure::ProofWithoutCheckpoint { seq }
            | Failure::BeyondCheckpoint { seq, .. }
            | Failure::Proof { seq, .. } => Some(*seq),
            Failure::Truncated { last, .. } => Some(last + 1),
            Failure::SeqZero => Some(0),
            _ => None,
        }
    }
}

/// A failure, where it was found, and how far the run got.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct VerifyError {
    /// The 1-based line of the failure; `None` for a failure found before reading (a
    /// given checkpoint) or at the end (a cut tail, a root mismatch).
    pub line: Option<u64>,
    pub failure: Failure,
    /// Events that passed every check before the failure.
    pub checked: u64,
}

impl VerifyError {
    /// The first bad seq, where there is one.
    pub fn seq(&self) -> Option<u64> {
        self.failure.seq()
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(n) => write!(f, "line {n}: {}", self.failure),
            None => write!(f, "{}", self.failure),
        }
    }
}

/// A checkpoint opened: its signature checked if a key was given.
#[derive(Clone, Debug)]
struct Anchor {
    report: CheckpointReport,
}

impl Anchor {
    fn size(&self) -> u64 {
        self.report.size
    }
    fn root(&self) -> Hash32 {
        self.report.root
    }
}

/// Opens a checkpoint note, checking its signature when a key is given.
fn open_anchor(text: &str, key: Option<&str>, source: Source) -> Result<Anchor, Failure> {
    let bad = |reason: String| Failure::Checkpoint {
        which: source,
        reason,
    };
    let (cp, signature) = note_glue::open(text, key).map_err(bad)?;
    Ok(Anchor {
        report: CheckpointReport {
            source,
            origin: cp.origin,
            size: cp.size,
            root: cp.root,
            signature,
            root_status: RootStatus::NotComparable,
        },
    })
}

/// The state of a run: constant in size whatever the export's length.
struct Run<'o> {
    opts: &'o Options,
    given: Option<Anchor>,
    export_cp: Option<Anchor>,
    line: u64,
    events: u64,
    first_seq: Option<u64>,
    last: Option<Head>,
    /// From seq 1 without gaps so far.
    contiguous: bool,
    /// The tree over the event hashes, folded while the export is contiguous, up to the
    /// largest checkpoint size.
    tree: CompactRange,
    /// Auto mode: the first event without a proof, while the export still looks complete.
    first_unproven: Option<u64>,
    links: u64,
    proofs: u64,
    redacted: u64,
    redacted_seqs: Vec<u64>,
}

const REDACTED_SEQS_KEPT: usize = 10;

impl Run<'_> {
    fn fail(&self, failure: Failure) -> VerifyError {
        VerifyError {
            line: Some(self.line),
            failure,
            checked: self.events,
        }
    }

    fn anchors(&self) -> impl Iterator<Item = &Anchor> {
        self.export_cp.iter().chain(self.given.iter())
    }

    fn anchors_mut(&mut self) -> impl Iterator<Item = &mut Anchor> {
        self.export_cp.iter_mut().chain(self.given.iter_mut())
    }

    /// The checkpoint the proofs are against: the export's, else the given one.
    fn proof_anchor(&self) -> Option<&Anchor> {
        self.export_cp.as_ref().or(self.given.as_ref())
    }

    fn max_size(&self) -> u64 {
        self.anchors().map(Anchor::size).max().unwrap_or(0)
    }

    fn filtered_now(&self) -> bool {
        match self.opts.mode {
            Mode::Filtered => true,
            Mode::Complete => false,
            Mode::Auto => !self.contiguous,
        }
    }

    fn checkpoint_line(&mut self, text: &str) -> Result<(), VerifyError> {
        if self.line != 1 {
            return Err(self.fail(Failure::MisplacedCheckpoint));
        }
        let a = open_anchor(text, self.opts.public_key.as_deref(), Source::Export)
            .map_err(|f| self.fail(f))?;
        if let Some(g) = &self.given
            && g.size() == a.size()
            && g.root() != a.root()
        {
            return Err(self.fail(Failure::CheckpointsDisagree { size: a.size() }));
        }
        self.export_cp = Some(a);
        Ok(())
    }

    fn event(&mut self, env: &Envelope, proof: Option<&[Hash32]>) -> Result<(), VerifyError> {
        let seq = env.seq;
        if seq == 0 {
            return Err(self.fail(Failure::SeqZero));
        }
        // Order and links.
        let expected = self.last.map_or(1, |h| h.seq + 1);
        match self.last {
            Some(last) if seq <= last.seq => {
                return Err(self.fail(Failure::OutOfOrder {
                    seq,
                    prev: last.seq,
                }));
            }
            _ => {}
        }
        if seq == expected {
            let prev = self.last.unwrap_or_default();
            if env.prev_hash != prev.hash {
                return Err(self.fail(Failure::PrevHash {
                    seq,
                    prev: prev.seq,
                }));
            }
            self.links += 1;
        } else {
            if self.opts.mode == Mode::Complete {
                return Err(self.fail(Failure::Gap { seq, expected }));
            }
            if self.contiguous {
                self.contiguous = false;
                // Not the whole log, and an event so far (this one, if it is the first)
                // has no proof: lines are missing, or the export is filtered without
                // proofs; either way nothing vouches for this gap.
                if self.opts.mode == Mode::Auto
                    && (self.first_unproven.is_some() || (self.last.is_none() && proof.is_none()))
                {
                    return Err(self.fail(Failure::Gap { seq, expected }));
                }
            }
        }
        // Content.
        if env.compute_hash() != env.hash {
            if !export::is_redacted(env) {
                return Err(self.fail(Failure::Hash { seq }));
            }
            if self.opts.strict {
                return Err(self.fail(Failure::Redacted { seq }));
            }
            self.redacted += 1;
            if self.redacted_seqs.len() < REDACTED_SEQS_KEPT {
                self.redacted_seqs.push(seq);
            }
        }
        // Inclusion.
        match proof {
            Some(p) => {
                let Some(a) = self.proof_anchor() else {
                    return Err(self.fail(Failure::ProofWithoutCheckpoint { seq }));
                };
                let (size, root) = (a.size(), a.root());
                if seq > size {
                    return Err(self.fail(Failure::BeyondCheckpoint { seq, size }));
                }
                merkle::verify_inclusion(&merkle::leaf_hash(&env.hash), seq - 1, size, p, &root)
                    .map_err(|reason| self.fail(Failure::Proof { seq, reason }))?;
                self.proofs += 1;
            }
            None => {
                if self.filtered_now() {
                    return Err(self.fail(Failure::MissingProof { seq }));
                }
                if self.first_unproven.is_none() {
                    self.first_unproven = Some(seq);
                }
            }
        }
        // The tree, while the export is the log's prefix.
        if self.contiguous && self.tree.size() < self.max_size() {
            self.tree.push(merkle::leaf_hash(&env.hash));
            let (size, root) = (self.tree.size(), self.tree.root());
            let mut mismatch = None;
            for a in self.anchors_mut() {
                if a.size() == size {
                    if a.root() == root {
                        a.report.root_status = RootStatus::Matched;
                    } else {
                        mismatch = Some(a.report.source);
                    }
                }
            }
            if let Some(source) = mismatch {
                return Err(self.fail(Failure::RootMismatch {
                    size,
                    which: source,
                }));
            }
        }
        self.first_seq.get_or_insert(seq);
        self.last = Some(Head {
            seq,
            hash: env.hash,
        });
        self.events += 1;
        Ok(())
    }

    fn finish(mut self) -> Result<Report, VerifyError> {
        let checked = self.events;
        let end = |failure| VerifyError {
            line: None,
            failure,
            checked,
        };
        let last = self.last.map_or(0, |h| h.seq);
        // Contiguous from seq 1 but shorter than a checkpoint: a cut tail, unless every
        // event carries a proof (the filtered export of events that happen to be the first
        // ones, say one key's history). `--complete` always calls it a cut tail.
        let short = self
            .anchors()
            .find(|a| a.size() > last)
            .map(|a| (a.size(), a.report.source));
        let all_proven = self.events > 0 && self.first_unproven.is_none();
        let complete = self.contiguous
            && match self.opts.mode {
                Mode::Filtered => false,
                Mode::Complete => true,
                Mode::Auto => short.is_none() || !all_proven,
            };
        if complete && let Some((size, which)) = short {
            return Err(end(Failure::Truncated { last, size, which }));
        }
        let proof_anchor = self
            .proof_anchor()
            .map(|a| (a.report.source, a.size(), a.root()));
        let (proofs, contiguous) = (self.proofs, self.contiguous);
        for a in self.anchors_mut() {
            if contiguous && a.size() <= last {
                if a.size() == 0 {
                    // The empty tree, which no event was folded into.
                    if a.root() != merkle::empty_root() {
                        let which = a.report.source;
                        return Err(end(Failure::RootMismatch { size: 0, which }));
                    }
                    a.report.root_status = RootStatus::Matched;
                }
                // Otherwise compared while folding: a mismatch has already failed.
                continue;
            }
            a.report.root_status = match proof_anchor {
                Some((s, size, root))
                    if proofs > 0
                        && (s == a.report.source || (size == a.size() && root == a.root())) =>
                {
                    RootStatus::ProofsChecked
                }
                _ => RootStatus::NotComparable,
            };
        }
        let checkpoints = self
            .export_cp
            .into_iter()
            .chain(self.given)
            .map(|a| a.report)
            .collect();
        Ok(Report {
            lines: self.line,
            events: self.events,
            complete,
            first_seq: self.first_seq,
            head: self.last,
            links: self.links,
            proofs: self.proofs,
            redacted: self.redacted,
            redacted_seqs: self.redacted_seqs,
            checkpoints,
        })
    }
}

/// Verifies an export read from `reader`, line by line, in constant memory.
pub fn verify_export(mut reader: impl BufRead, opts: &Options) -> Result<Report, VerifyError> {
    let given = match &opts.checkpoint {
        Some(text) => Some(
            open_anchor(text, opts.public_key.as_deref(), Source::Given).map_err(|failure| {
                VerifyError {
                    line: None,
                    failure,
                    checked: 0,
                }
            })?,
        ),
        None => None,
    };
    let mut run = Run {
        opts,
        given,
        export_cp: None,
        line: 0,
        events: 0,
        first_seq: None,
        last: None,
        contiguous: true,
        tree: CompactRange::new(),
        first_unproven: None,
        links: 0,
        proofs: 0,
        redacted: 0,
        redacted_seqs: Vec::new(),
    };
    let mut buf = Vec::with_capacity(4096);
    let mut scratch = Vec::with_capacity(4096);
    loop {
        buf.clear();
        let n = Read::take(&mut reader, MAX_LINE as u64 + 2)
            .read_until(b'\n', &mut buf)
            .map_err(|e| VerifyError {
                line: Some(run.line + 1),
                failure: Failure::Read(e.to_string()),
                checked: run.events,
            })?;
        if n == 0 {
            break;
        }
        run.line += 1;
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        } else if buf.len() > MAX_LINE {
            return Err(run.fail(Failure::Malformed(ExportError::TooLong)));
        }
        if buf.is_empty() {
            return Err(run.fail(Failure::EmptyLine));
        }
        match export::parse_bytes(&buf, &mut scratch) {
            Ok(Line::Checkpoint(text)) => run.checkpoint_line(&text)?,
            Ok(Line::Event { envelope, proof }) => run.event(&envelope, proof.as_deref())?,
            Err(e) => return Err(run.fail(Failure::Malformed(e))),
        }
        // One very long line must not keep its buffer for the rest of the run.
        if buf.capacity() > 1 << 20 {
            buf = Vec::with_capacity(4096);
            scratch = Vec::with_capacity(4096);
        }
    }
    run.finish()
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ok: {} events checked in {} lines ({} export)",
            self.events,
            self.lines,
            if self.complete {
                "complete"
            } else {
                "filtered"
            }
        )?;
        match (self.first_seq, self.head) {
            (Some(_), Some(head)) if self.complete => writeln!(
                f,
                "chain: seqs 1..{} linked; head seq {} hash {}",
                head.seq, head.seq, head.hash
            )?,
            (Some(first), Some(head)) => writeln!(
                f,
                "events: seqs {first}..{}, not the whole log: the chain cannot be checked \
                 (only the {} links between consecutive events were); last hash {}",
                head.seq, self.links, head.hash
            )?,
            _ => writeln!(f, "events: none")?,
        }
        writeln!(f, "inclusion proofs checked: {}", self.proofs)?;
        if self.checkpoints.is_empty() {
            writeln!(
                f,
                "checkpoint: none given; the export was checked only against itself"
            )?;
        }
        for c in &self.checkpoints {
            let sig = match c.signature {
                Signature::Verified => "signature verified",
                Signature::NotChecked => "signature NOT checked (no public key given)",
            };
            let root = match c.root_status {
                RootStatus::Matched => "the export's first events hash to its root",
                RootStatus::ProofsChecked => "every event's inclusion proof leads to its root",
                RootStatus::NotComparable => {
                    "NOT compared: the export does not reach its size and its proofs are against \
                     another checkpoint (use --complete if the export should be the whole log)"
                }
            };
            writeln!(
                f,
                "{}: origin {:?}, size {}, root {}; {sig}; {root}",
                c.source, c.origin, c.size, c.root
            )?;
        }
        if self.redacted > 0 {
            writeln!(
                f,
                "WARNING: {} events (seqs {:?}{}) are schema 1 user events whose password hash \
                 the export redacted: their hash cannot be recomputed from the line, so their \
                 place in the chain was checked but not their content (verify them against the \
                 store with `keyward audit verify`)",
                self.redacted,
                self.redacted_seqs,
                if self.redacted > self.redacted_seqs.len() as u64 {
                    ", …"
                } else {
                    ""
                }
            )?;
        }
        if self
            .checkpoints
            .iter()
            .any(|c| c.signature == Signature::NotChecked)
        {
            writeln!(
                f,
                "WARNING: without --public-key the checkpoint proves nothing about who signed it: \
                 the export was checked only against itself"
            )?;
        }
        Ok(())
    }
}

/// The bridge to the signed-note module.
mod note_glue {
    use super::Signature;
    use crate::hash::Hash32;
    use crate::note::{self, Checkpoint, NoteVerifier};

    pub(super) struct Opened {
        pub origin: String,
        pub size: u64,
        pub root: Hash32,
    }

    /// Opens a checkpoint note. With a key, its signature by that key must verify; without
    /// one, only its body is read.
    pub(super) fn open(text: &str, key: Option<&str>) -> Result<(Opened, Signature), String> {
        let (cp, sig) = match key {
            Some(k) => {
                let v = NoteVerifier::from_text(k)
                    .map_err(|e| format!("the public key is not usable: {e}"))?;
                let (_, cp) = note::open(text, &[v]).map_err(|e| e.to_string())?;
                (cp, Signature::Verified)
            }
            None => {
                let split = text
                    .rfind("\n\n")
                    .ok_or("not a signed note: no blank line before the signatures")?;
                let cp = Checkpoint::parse(&text[..split + 1]).map_err(|e| e.to_string())?;
                (cp, Signature::NotChecked)
            }
        };
        Ok((
            Opened {
                origin: cp.origin,
                size: cp.size,
                root: cp.root,
            },
            sig,
        ))
    }
}
