//! Projection snapshots: the live projections as of a seq, in a file in the data dir, so
//! that a start folds only the events after it instead of the whole log.
//!
//! A snapshot is a checkpoint like `keyward audit verify --checkpoint`: it names the seq and
//! the event hash it covers. It is trusted only when
//! - its MAC verifies under a key derived from the keyring (so whoever can write the data
//!   dir but does not hold a master key cannot plant a state), and
//! - the log holds that very hash at that seq (so it belongs to this log, at a point the
//!   log still has).
//!
//! Anything else (a missing file, a torn write, another format, a bad MAC, a seq past the
//! head, another hash) is ignored with a warning and the start folds the whole log.
//!
//! Only a node whose live state was verified against the chain writes one: a full rebuild
//! that verified every hash, or a start from a snapshot whose prefix the background check
//! (see `server`) has since verified. So a valid MAC also attests that the chain up to the
//! snapshot's seq verified when it was written.
//!
//! Snapshots are kept by seq, `<data dir>/snapshots/<seq, 20 digits>.snapshot`, the newest
//! `--snapshots-keep` of them (24 by default); older ones are deleted as new ones are
//! written. A start uses the newest one that passes the checks above; an `?as_of=` or
//! `keyward audit replay` uses the newest one at or before the point asked for (see
//! `history`), and folds only the events after it. Each file carries the
//! [`Timeline`] of its prefix, so that a replay as of a time knows which snapshot holds
//! only events that occurred by then.
//!
//! File layout (format 2): `MAGIC (8) | seq (u64 LE) | hash (32) | MAC (32) |
//! timeline length (u64 LE) | timeline | image`, where the image is [`State::to_snapshot`]
//! and the MAC (the file's checksum, keyed) is keyed blake3 over everything but itself.
//! Format 1, the single `projections.snapshot` of earlier versions, is
//! `MAGIC | seq | hash | MAC | image`; it is still read at start when no kept snapshot is
//! usable, and deleted once a kept one is written.

use std::io::Write;
use std::path::{Path, PathBuf};

use keyward_events::{Hash32, Head};
use keyward_projections::State;

use crate::crypto::SnapshotMacKeys;
use crate::timeline::Timeline;

/// The single snapshot of earlier versions (format 1).
pub const FILE: &str = "projections.snapshot";
/// The directory of kept snapshots, in the data dir.
pub const DIR: &str = "snapshots";
const EXT: &str = ".snapshot";
/// The defaults of `snapshot_every` and `snapshot_keep`, defined with the configuration.
pub use crate::config::{
    SNAPSHOT_EVERY_DEFAULT as EVERY_DEFAULT, SNAPSHOT_KEEP_DEFAULT as KEEP_DEFAULT,
};
const MAGIC_V1: &[u8; 8] = b"KWSNAP\x00\x01";
const MAGIC: &[u8; 8] = b"KWSNAP\x00\x02";
const HEADER: usize = 8 + 8 + 32 + 32;

/// Why a snapshot file was not used. Each is logged as a warning, never fatal.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("it is not a Keyward snapshot of this version")]
    Magic,
    #[error("it is truncated")]
    Truncated,
    #[error(
        "its MAC does not verify under any master key: it was altered, or written under another keyring"
    )]
    Mac,
    #[error(transparent)]
    Image(#[from] keyward_projections::SnapshotError),
    #[error("its header says seq {header} but its image holds seq {image}")]
    HeadMismatch { header: u64, image: u64 },
    #[error("its name says seq {name} but its header says seq {header}")]
    NameMismatch { name: u64, header: u64 },
    #[error("its timeline is malformed or does not end at its seq")]
    Timeline,
}

/// A snapshot that passed its own checks (defined where the live projection starts from it).
pub use crate::live::Loaded;

/// The directory of kept snapshots.
pub fn kept_dir(dir: &Path) -> PathBuf {
    dir.join(DIR)
}

/// Where the kept snapshot at `seq` is.
pub fn kept_path(dir: &Path, seq: u64) -> PathBuf {
    kept_dir(dir).join(format!("{seq:020}{EXT}"))
}

/// The seqs of the kept snapshots in `dir`, ascending. Other files are ignored.
pub fn kept(dir: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(kept_dir(dir)) else {
        return Vec::new();
    };
    let mut seqs: Vec<u64> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            let stem = name.to_str()?.strip_suffix(EXT)?;
            (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
                .then(|| stem.parse().ok())
                .flatten()
        })
        .collect();
    seqs.sort_unstable();
    seqs
}

/// The newest kept snapshot's file, or the format-1 file's path when none is kept.
pub fn path(dir: &Path) -> PathBuf {
    match kept(dir).last() {
        Some(&seq) => kept_path(dir, seq),
        None => dir.join(FILE),
    }
}

fn mac(key: &[u8; 32], magic: &[u8; 8], seq: u64, hash: &Hash32, body: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(magic);
    h.update(&seq.to_le_bytes());
    h.update(&hash.0);
    h.update(body);
    *h.finalize().as_bytes()
}

fn read(path: PathBuf) -> Result<Option<Vec<u8>>, Rejected> {
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Rejected::Io { path, source }),
    }
}

/// Reads and checks the format-1 snapshot in `dir`. `Ok(None)` when there is none.
pub fn load_legacy(dir: &Path, keys: &SnapshotMacKeys) -> Result<Option<Loaded>, Rejected> {
    read(dir.join(FILE))?
        .map(|bytes| decode(&bytes, keys))
        .transpose()
}

/// Reads and checks the kept snapshot at `seq`. `Ok(None)` when there is none.
pub fn load_kept(dir: &Path, seq: u64, keys: &SnapshotMacKeys) -> Result<Option<Loaded>, Rejected> {
    let Some(bytes) = read(kept_path(dir, seq))? else {
        return Ok(None);
    };
    let loaded = decode(&bytes, keys)?;
    if loaded.state.head.seq != seq {
        return Err(Rejected::NameMismatch {
            name: seq,
            header: loaded.state.head.seq,
        });
    }
    Ok(Some(loaded))
}

/// Reads and checks the newest usable snapshot in `dir` (kept ones first, newest first,
/// then the format-1 file), logging each one skipped. The caller still has to check
/// that the log holds the returned head.
pub fn load(dir: &Path, keys: &SnapshotMacKeys) -> Result<Option<State>, Rejected> {
    for seq in kept(dir).into_iter().rev() {
        match load_kept(dir, seq, keys) {
            Ok(Some(l)) => return Ok(Some(l.state)),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, path = %kept_path(dir, seq).display(), "skipping a projection snapshot")
            }
        }
    }
    Ok(load_legacy(dir, keys)?.map(|l| l.state))
}

/// Checks the magic and the MAC, then decodes the timeline and the image.
pub fn decode(bytes: &[u8], keys: &SnapshotMacKeys) -> Result<Loaded, Rejected> {
    let magic: &[u8; 8] = match bytes.get(..8) {
        Some(m) if m == MAGIC => MAGIC,
        Some(m) if m == MAGIC_V1 => MAGIC_V1,
        _ => return Err(Rejected::Magic),
    };
    if bytes.len() < HEADER {
        return Err(Rejected::Truncated);
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[8..16]);
    let seq = u64::from_le_bytes(seq);
    let hash = Hash32::from_slice(&bytes[16..48]).ok_or(Rejected::Truncated)?;
    let stored_mac = &bytes[48..80];
    let body = &bytes[HEADER..];
    let ok = keys.all().any(|k| {
        let m = mac(k, magic, seq, &hash, body);
        // Constant time: the MAC is the only thing standing between a writer of the data
        // dir and a forged state.
        constant_time_eq(&m, stored_mac)
    });
    if !ok {
        return Err(Rejected::Mac);
    }
    let (timeline, image) = if magic == MAGIC {
        let len = body
            .get(..8)
            .and_then(|b| usize::try_from(u64::from_le_bytes(b.try_into().ok()?)).ok())
            .ok_or(Rejected::Truncated)?;
        let tl = body
            .get(8..8usize.saturating_add(len))
            .ok_or(Rejected::Truncated)?;
        let (timeline, used) = Timeline::decode(tl).ok_or(Rejected::Timeline)?;
        if used != len || timeline.covered() != seq {
            return Err(Rejected::Timeline);
        }
        (timeline, &body[8 + len..])
    } else {
        (Timeline::unknown(seq), body)
    };
    let state = State::from_snapshot(image)?;
    if state.head.seq != seq || state.head.hash != hash {
        return Err(Rejected::HeadMismatch {
            header: seq,
            image: state.head.seq,
        });
    }
    Ok(Loaded { state, timeline })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The file's bytes for `image`, the encoding of a state whose head is `head`, with the
/// timeline of seqs 1 to `head.seq`.
pub fn encode(
    head: Head,
    timeline: &Timeline,
    image: &[u8],
    keys: &SnapshotMacKeys,
) -> Option<Vec<u8>> {
    let key = keys.current()?;
    let mut tl = Vec::new();
    timeline.prefix(head.seq).encode(&mut tl);
    let mut body = Vec::with_capacity(8 + tl.len() + image.len());
    body.extend_from_slice(&(tl.len() as u64).to_le_bytes());
    body.extend_from_slice(&tl);
    body.extend_from_slice(image);
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&head.seq.to_le_bytes());
    out.extend_from_slice(&head.hash.0);
    out.extend_from_slice(&mac(key, MAGIC, head.seq, &head.hash, &body));
    out.extend_from_slice(&body);
    Some(out)
}

/// Private directory creation, as `serve` makes the data dir.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

/// [`write_kept`] with a timeline of unknown times and every older snapshot kept (a
/// state built outside `serve`, e.g. by a benchmark).
pub fn write(dir: &Path, state: &State, keys: &SnapshotMacKeys) -> std::io::Result<usize> {
    write_kept(
        dir,
        state,
        &Timeline::unknown(state.head.seq),
        keys,
        usize::MAX,
    )
}

/// Encodes `state` and writes it as the kept snapshot at its seq, atomically: a
/// temporary file, fsynced, renamed to its name, and the directory fsynced. A crash
/// leaves the snapshot whole or absent, never torn under its real name. Then only the
/// newest `keep` are kept, and the format-1 file is deleted. Returns the size written.
pub fn write_kept(
    dir: &Path,
    state: &State,
    timeline: &Timeline,
    keys: &SnapshotMacKeys,
    keep: usize,
) -> std::io::Result<usize> {
    let image = state.to_snapshot();
    let bytes = encode(state.head, timeline, &image, keys)
        .ok_or_else(|| std::io::Error::other("the keyring is empty"))?;
    drop(image);
    // A PostgreSQL node has no data dir of its own until its first snapshot: private, as
    // `serve` makes it for SQLite.
    private_dir(dir)?;
    let kdir = kept_dir(dir);
    private_dir(&kdir)?;
    let tmp = kdir.join(format!(".tmp-{}-{}", std::process::id(), ulid::Ulid::new()));
    let written = (|| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, kept_path(dir, state.head.seq))?;
        std::fs::File::open(&kdir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    prune(dir, keep);
    Ok(bytes.len())
}

/// Deletes all but the newest `keep` kept snapshots, and the format-1 file. Failures
/// are logged: an extra file costs disk, not correctness.
pub fn prune(dir: &Path, keep: usize) {
    let seqs = kept(dir);
    let old = seqs.len().saturating_sub(keep.max(1));
    for seq in &seqs[..old] {
        let p = kept_path(dir, *seq);
        if let Err(e) = std::fs::remove_file(&p) {
            tracing::warn!(error = %e, path = %p.display(), "cannot delete an old projection snapshot");
        }
    }
    let legacy = dir.join(FILE);
    if legacy.exists()
        && let Err(e) = std::fs::remove_file(&legacy)
    {
        tracing::warn!(error = %e, path = %legacy.display(), "cannot delete the format-1 projection snapshot");
    }
}

/// Writes snapshots of the live projections: every `every` new events (checked every few
/// seconds) and at shutdown.
pub struct Snapshots {
    dir: PathBuf,
    keys: SnapshotMacKeys,
    every: u64,
    keep: usize,
    /// The seq of the newest snapshot written or started from.
    last: std::sync::atomic::AtomicU64,
    /// One write at a time: the periodic one and the shutdown one must not interleave.
    writing: tokio::sync::Mutex<()>,
}

/// How often the writer looks at how far the head has moved.
const CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl Snapshots {
    pub fn new(
        dir: PathBuf,
        keys: SnapshotMacKeys,
        every: u64,
        keep: usize,
        last: u64,
    ) -> Snapshots {
        Snapshots {
            dir,
            keys,
            every,
            keep,
            last: std::sync::atomic::AtomicU64::new(last),
            writing: tokio::sync::Mutex::new(()),
        }
    }

    /// Writes one when the live head is at least `min_new` events past the last one and
    /// the live state is verified. Failures are logged: a missing snapshot only makes the
    /// next start slower.
    pub async fn write_if_due(&self, live: &crate::live::Live, min_new: u64) {
        use std::sync::atomic::Ordering;
        let _one = self.writing.lock().await;
        let last = self.last.load(Ordering::Acquire);
        if live.head().seq < last.saturating_add(min_new.max(1)) {
            return;
        }
        let started = std::time::Instant::now();
        let Some((state, timeline)) = live.verified_copy_with_timeline() else {
            tracing::debug!("not snapshotting: the chain under the live state is not verified yet");
            return;
        };
        let copied = started.elapsed();
        let head = state.head;
        let dir = self.dir.clone();
        let keys = self.keys.clone();
        let keep = self.keep;
        let written =
            tokio::task::spawn_blocking(move || write_kept(&dir, &state, &timeline, &keys, keep))
                .await;
        match written {
            Ok(Ok(bytes)) => {
                self.last.store(head.seq, Ordering::Release);
                tracing::info!(
                    seq = head.seq,
                    bytes,
                    copy_ms = copied.as_millis() as u64,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "wrote a projection snapshot"
                );
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, dir = %self.dir.display(), "cannot write a projection snapshot")
            }
            Err(e) => tracing::error!(error = %e, "the snapshot writer failed"),
        }
    }

    /// The periodic writer, until `stop` turns true.
    pub fn spawn(
        self: std::sync::Arc<Self>,
        live: std::sync::Arc<crate::live::Live>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    () = tokio::time::sleep(CHECK_EVERY) => {}
                }
                self.write_if_due(&live, self.every).await;
            }
        })
    }
}
