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
//! File layout: `MAGIC (8) | seq (u64 LE) | hash (32) | MAC (32) | image`, where the image
//! is [`State::to_snapshot`] and the MAC is keyed blake3 over everything but itself.

use std::io::Write;
use std::path::{Path, PathBuf};

use keyward_events::{Hash32, Head};
use keyward_projections::State;

use crate::crypto::SnapshotMacKeys;

pub const FILE: &str = "projections.snapshot";
const MAGIC: &[u8; 8] = b"KWSNAP\x00\x01";
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
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

fn mac(key: &[u8; 32], seq: u64, hash: &Hash32, image: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(MAGIC);
    h.update(&seq.to_le_bytes());
    h.update(&hash.0);
    h.update(image);
    *h.finalize().as_bytes()
}

/// Reads and checks the snapshot in `dir`. `Ok(None)` when there is none. The caller
/// still has to check that the log holds the returned head.
pub fn load(dir: &Path, keys: &SnapshotMacKeys) -> Result<Option<State>, Rejected> {
    let path = path(dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Rejected::Io { path, source }),
    };
    decode(&bytes, keys).map(Some)
}

/// Checks the magic and the MAC, then decodes the image.
pub fn decode(bytes: &[u8], keys: &SnapshotMacKeys) -> Result<State, Rejected> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(Rejected::Magic);
    }
    if bytes.len() < HEADER {
        return Err(Rejected::Truncated);
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[8..16]);
    let seq = u64::from_le_bytes(seq);
    let hash = Hash32::from_slice(&bytes[16..48]).ok_or(Rejected::Truncated)?;
    let stored_mac = &bytes[48..80];
    let image = &bytes[HEADER..];
    let ok = keys.all().any(|k| {
        let m = mac(k, seq, &hash, image);
        // Constant time: the MAC is the only thing standing between a writer of the data
        // dir and a forged state.
        constant_time_eq(&m, stored_mac)
    });
    if !ok {
        return Err(Rejected::Mac);
    }
    let state = State::from_snapshot(image)?;
    if state.head.seq != seq || state.head.hash != hash {
        return Err(Rejected::HeadMismatch {
            header: seq,
            image: state.head.seq,
        });
    }
    Ok(state)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The file's bytes for `image`, the encoding of a state whose head is `head`.
pub fn encode(head: Head, image: &[u8], keys: &SnapshotMacKeys) -> Option<Vec<u8>> {
    let key = keys.current()?;
    let mut out = Vec::with_capacity(HEADER + image.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&head.seq.to_le_bytes());
    out.extend_from_slice(&head.hash.0);
    out.extend_from_slice(&mac(key, head.seq, &head.hash, image));
    out.extend_from_slice(image);
    Some(out)
}

/// Encodes `state` and replaces the snapshot in `dir` atomically: a temporary file,
/// fsynced, renamed over the old one, and the directory fsynced. A crash leaves the old
/// snapshot or the new one, never a torn file under the real name. Returns its size.
pub fn write(dir: &Path, state: &State, keys: &SnapshotMacKeys) -> std::io::Result<usize> {
    let image = state.to_snapshot();
    let bytes = encode(state.head, &image, keys)
        .ok_or_else(|| std::io::Error::other("the keyring is empty"))?;
    drop(image);
    if !dir.exists() {
        // A PostgreSQL node has no data dir of its own until its first snapshot: private,
        // as `serve` makes it for SQLite.
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            b.mode(0o700);
        }
        b.create(dir)?;
    }
    let tmp = dir.join(format!(
        "{FILE}.tmp-{}-{}",
        std::process::id(),
        ulid::Ulid::new()
    ));
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
        std::fs::rename(&tmp, path(dir))?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map(|()| bytes.len())
}

/// Writes snapshots of the live projections: every `every` new events (checked every few
/// seconds) and at shutdown.
pub struct Snapshots {
    dir: PathBuf,
    keys: SnapshotMacKeys,
    every: u64,
    /// The seq of the newest snapshot written or started from.
    last: std::sync::atomic::AtomicU64,
    /// One write at a time: the periodic one and the shutdown one must not interleave.
    writing: tokio::sync::Mutex<()>,
}

/// How often the writer looks at how far the head has moved.
const CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl Snapshots {
    pub fn new(dir: PathBuf, keys: SnapshotMacKeys, every: u64, last: u64) -> Snapshots {
        Snapshots {
            dir,
            keys,
            every,
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
        let Some(state) = live.verified_copy() else {
            tracing::debug!("not snapshotting: the chain under the live state is not verified yet");
            return;
        };
        let copied = started.elapsed();
        let head = state.head;
        let dir = self.dir.clone();
        let keys = self.keys.clone();
        let written = tokio::task::spawn_blocking(move || write(&dir, &state, &keys)).await;
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
