//! Signed checkpoints, published outside the database.
//!
//! A checkpoint is a C2SP `tlog-checkpoint` (origin, tree size, RFC 6962 root over the
//! first `size` event hashes) in a C2SP signed note, signed with an Ed25519 key
//! (`keyward_events::note`). `serve` writes one every `--checkpoint-every` events, or every
//! `--checkpoint-interval` while the log grows, and one at shutdown, into
//! `--checkpoint-dir` as `<20-digit size>.note`, and the latest again as `latest.note`;
//! each can also be POSTed to a witness URL.
//!
//! At start, the log is checked against the newest checkpoint in that directory: a log
//! that ends before it (its tail was cut) or whose first `size` events do not hash to its
//! root (it was rewritten and re-hashed) stops the start, unless `--allow-broken-chain`.
//! An operator who can write the database can rewrite the chain; they cannot forge a
//! checkpoint without the key, nor make an old one agree with a new history.
//!
//! The key: `--checkpoint-key` / `KEYWARD_CHECKPOINT_KEY` or `--checkpoint-key-file`; on
//! the embedded SQLite default with none configured, a development key is generated into
//! `<data dir>/checkpoint.key` (0600) with a warning. On PostgreSQL without a key (or
//! without `--checkpoint-dir`) no checkpoints are written, with a warning.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use keyward_events::merkle::{CompactRange, leaf_hash};
use keyward_events::note::{self, Checkpoint, NoteSigner, NoteVerifier};
use keyward_events::{Envelope, Hash32};

use crate::config::{Config, Witness};
use crate::live::Live;
use crate::store::{EventFilter, EventStore, StoreError};

/// The checkpoint directory's default name, in the data dir (SQLite).
pub use crate::config::CHECKPOINT_DIR as DIR;
/// The development key's file, in the data dir.
pub const DEV_KEY_FILE: &str = "checkpoint.key";
/// The latest checkpoint, at a fixed name in the checkpoint directory.
pub const LATEST: &str = "latest.note";
/// Events read per page while folding hashes.
const PAGE: usize = 10_000;
/// How often the writer looks at the head.
const POLL: Duration = Duration::from_millis(500);
const WITNESS_ATTEMPTS: u32 = 6;
const WITNESS_BACKOFF_START: Duration = Duration::from_millis(500);

/// The key that signs checkpoints and the origin they carry.
pub struct CheckpointKey {
    pub signer: NoteSigner,
    pub origin: String,
    /// Where the key came from, for messages: a setting or the development key file.
    pub source: String,
}

impl CheckpointKey {
    pub fn verifier(&self) -> NoteVerifier {
        self.signer.verifier()
    }
}

impl std::fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointKey")
            .field("signer", &self.signer)
            .field("origin", &self.origin)
            .field("source", &self.source)
            .finish()
    }
}

/// The name of a generated development key: `keyward-dev/<host name>`.
pub fn dev_key_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_whitespace() || c == '+' || c.is_control() {
                '-'
            } else {
                c
            }
        })
        .collect();
    format!("keyward-dev/{host}")
}

/// The configured checkpoint key; else, on SQLite, the development key in the data dir,
/// generated (0600, with a warning) when `generate` and it does not exist yet. `None` when
/// there is no key: PostgreSQL without one, or no development key and `generate` off.
pub fn load_key(config: &Config, generate: bool) -> anyhow::Result<Option<Arc<CheckpointKey>>> {
    let cp = &config.checkpoint;
    let (signer, source) = if let Some(text) = &cp.key {
        let signer = NoteSigner::from_text(text.expose())
            .context("invalid KEYWARD_CHECKPOINT_KEY (--checkpoint-key / --checkpoint-key-file)")?;
        (signer, "KEYWARD_CHECKPOINT_KEY".to_owned())
    } else if config.sqlite_path().is_none() {
        return Ok(None);
    } else {
        let path = config.data_dir.join(DEV_KEY_FILE);
        if path.exists() {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
            );
            let signer = NoteSigner::from_text(text.trim()).with_context(|| {
                format!("{} is not a valid checkpoint key file", path.display())
            })?;
            if generate {
                tracing::warn!(path = %path.display(), "using the development checkpoint key file; set KEYWARD_CHECKPOINT_KEY in production");
            }
            (signer, path.display().to_string())
        } else if generate {
            let signer = NoteSigner::generate(&dev_key_name())
                .map_err(|e| anyhow::anyhow!("cannot generate a checkpoint key: {e}"))?;
            write_private_new(&path, signer.to_text().as_bytes())?;
            tracing::warn!(path = %path.display(), public_key = %signer.verifier(), "generated a development checkpoint key; this is for development only: set KEYWARD_CHECKPOINT_KEY in production and keep its public key where auditors can find it");
            (signer, path.display().to_string())
        } else {
            return Ok(None);
        }
    };
    let origin = cp
        .origin
        .clone()
        .unwrap_or_else(|| signer.name().to_owned());
    Ok(Some(Arc::new(CheckpointKey {
        signer,
        origin,
        source,
    })))
}

/// Creates `path` 0600 (it must not exist) with `bytes`, synced.
fn write_private_new(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    std::io::Write::write_all(&mut f, bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The file name of the checkpoint of a tree of `size` events.
pub fn file_name(size: u64) -> String {
    format!("{size:020}.note")
}

fn size_of_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".note")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The newest checkpoint file in `dir`: the numbered one of the largest size, else
/// `latest.note`. `None` if there is none (or no such directory).
pub fn newest(dir: &Path) -> std::io::Result<Option<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut best: Option<(u64, PathBuf)> = None;
    for e in entries {
        let e = e?;
        let name = e.file_name();
        let Some(size) = name.to_str().and_then(size_of_name) else {
            continue;
        };
        if best.as_ref().is_none_or(|(s, _)| size > *s) {
            best = Some((size, e.path()));
        }
    }
    if let Some((_, p)) = best {
        return Ok(Some(p));
    }
    let latest = dir.join(LATEST);
    Ok(latest.exists().then_some(latest))
}

#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the log skips from seq {after} to seq {found}: events are missing")]
    Gap { after: u64, found: u64 },
    #[error("the log ends at seq {end}, before seq {wanted}")]
    Short { end: u64, wanted: u64 },
}

/// Appends to `range` the leaves of the events after `range.size()` up to seq `until`,
/// reading the store a page at a time. O(events read).
// This folds the stored event hashes rather than reading the store's Merkle tree on
// purpose: the check must bind the events themselves to the checkpoint, and a writer of the
// database could leave the tree's rows as they were while rewriting the events under them.
pub async fn extend(
    store: &dyn EventStore,
    range: &mut CompactRange,
    until: u64,
) -> Result<(), FoldError> {
    while range.size() < until {
        let filter = EventFilter {
            after_seq: range.size(),
            until_seq: Some(until),
            ..EventFilter::default()
        };
        let page: Vec<Envelope> = store.read(&filter, PAGE).await?;
        if page.is_empty() {
            return Err(FoldError::Short {
                end: range.size(),
                wanted: until,
            });
        }
        for env in &page {
            if env.seq != range.size() + 1 {
                // A hole an archive left: its events' hashes are kept, and fold in their
                // place. Any other gap is events missing.
                match crate::audit::hole(store, range.size(), env.seq).await? {
                    Ok(hashes) if !hashes.is_empty() => {
                        for (_, h) in &hashes {
                            range.push(leaf_hash(h));
                        }
                    }
                    _ => {
                        return Err(FoldError::Gap {
                            after: range.size(),
                            found: env.seq,
                        });
                    }
                }
            }
            range.push(leaf_hash(&env.hash));
        }
    }
    Ok(())
}

/// The root of the tree over the first `size` events.
pub async fn root_at(store: &dyn EventStore, size: u64) -> Result<Hash32, FoldError> {
    let mut range = CompactRange::new();
    extend(store, &mut range, size).await?;
    Ok(range.root())
}

/// How the live log stands against a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consistency {
    /// The log holds the checkpoint's events, unchanged, and maybe more.
    Consistent,
    /// The log ends before the checkpoint's size: its tail was cut.
    Behind { head: u64 },
    /// The first `size` events do not hash to the checkpoint's root: rewritten.
    Rewritten { root: Hash32 },
}

impl Consistency {
    /// Why the log disagrees with the checkpoint in `file`, if it does.
    pub fn problem(&self, cp: &Checkpoint, file: &str) -> Option<String> {
        match self {
            Consistency::Consistent => None,
            Consistency::Behind { head } => Some(format!(
                "the log ends at seq {head} but the checkpoint {file} covers {} events: events were removed from its tail",
                cp.size
            )),
            Consistency::Rewritten { root } => Some(format!(
                "the log's first {} events hash to root {} but the checkpoint {file} says {}: the log was rewritten",
                cp.size,
                root.to_hex(),
                cp.root.to_hex()
            )),
        }
    }
}

/// Checks the live log against a checkpoint: the head reaches its size and the first
/// `size` events hash to its root.
pub async fn consistency(store: &dyn EventStore, cp: &Checkpoint) -> anyhow::Result<Consistency> {
    let head = store.head().await?.seq;
    if head < cp.size {
        return Ok(Consistency::Behind { head });
    }
    let root = root_at(store, cp.size).await?;
    Ok(if root == cp.root {
        Consistency::Consistent
    } else {
        Consistency::Rewritten { root }
    })
}

/// Reads and opens a signed checkpoint file with the given keys.
pub fn open_file(path: &Path, verifiers: &[NoteVerifier]) -> anyhow::Result<Checkpoint> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (_, cp) = note::open(&bytes, verifiers).map_err(|e| {
        anyhow::anyhow!(
            "the checkpoint {} does not verify with the key {}: {e}",
            path.display(),
            verifiers
                .iter()
                .map(|v| v.to_text())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    Ok(cp)
}

/// Why an export with proofs cannot be signed.
#[derive(Debug, thiserror::Error)]
pub enum ExportSignError {
    #[error(transparent)]
    Tree(#[from] crate::audit::TreeError),
    /// The store's tree does not extend the latest published checkpoint.
    #[error("{0}")]
    Inconsistent(String),
    #[error("cannot sign the checkpoint: {0}")]
    Sign(String),
}

/// Signs, for an export that carries proofs, a checkpoint of the log's first `size`
/// events (`size` at most the store's tree size), with the root from the store's tree.
/// When a checkpoint was published in `dir` (`latest.note`, opened with the key), the
/// store's tree must prove this one consistent with it, so the export's checkpoint extends
/// what witnesses already hold. Returns the checkpoint and its signed note.
pub async fn sign_for_export(
    store: &dyn EventStore,
    key: &CheckpointKey,
    dir: Option<&Path>,
    size: u64,
) -> Result<(Checkpoint, String), ExportSignError> {
    let root = crate::audit::tree_root(store, size).await?;
    if let Some(dir) = dir {
        let latest = dir.join(LATEST);
        if latest.exists() {
            let published = open_file(&latest, &[key.verifier()])
                .map_err(|e| ExportSignError::Inconsistent(format!("{e:#}")))?;
            if published.size > 0 && published.size <= size {
                let c = crate::audit::consistency(store, published.size, size).await?;
                keyward_events::merkle::verify_consistency(
                    published.size,
                    size,
                    &published.root,
                    &root,
                    &c.proof,
                )
                .map_err(|e| {
                    ExportSignError::Inconsistent(format!(
                        "the store's tree at size {size} does not extend the published checkpoint of size {}: {e}",
                        published.size
                    ))
                })?;
            }
        }
    }
    let cp = Checkpoint::new(key.origin.clone(), size, root);
    let note = cp
        .sign(&key.signer)
        .map_err(|e| ExportSignError::Sign(e.to_string()))?;
    Ok((cp, note))
}

/// What the start check found.
#[derive(Clone)]
pub struct StartCheck {
    /// The tree over the whole log as of the start (the writer goes on from it).
    pub range: CompactRange,
    /// The checkpoint checked against, if there was one.
    pub checked: Option<(PathBuf, Checkpoint)>,
    /// Why the log disagrees with it, if it does (only with `--allow-broken-chain`;
    /// otherwise the check fails).
    pub problem: Option<String>,
}

/// At `serve` start: checks the log against the newest checkpoint in `dir` and folds the
/// tree up to the head. A log that is behind or inconsistent with it, or a checkpoint that
/// does not verify with the key, is an error unless `allow_broken`.
pub async fn check_at_start(
    store: &dyn EventStore,
    key: &CheckpointKey,
    dir: &Path,
    allow_broken: bool,
) -> anyhow::Result<StartCheck> {
    let head = store.head().await?.seq;
    let mut range = CompactRange::new();
    let newest = newest(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let mut checked = None;
    let mut problem = None;
    if let Some(path) = newest {
        let file = path.display().to_string();
        match open_file(&path, &[key.verifier()]) {
            Err(e) => problem = Some(format!("{e:#}")),
            Ok(cp) => {
                let named = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(size_of_name);
                if named.is_some_and(|n| n != cp.size) {
                    problem = Some(format!(
                        "the checkpoint {file} is named for another size than the {} events it covers",
                        cp.size
                    ));
                } else if cp.origin != key.origin {
                    problem = Some(format!(
                        "the checkpoint {file} is for the log {:?}, not {:?} (--checkpoint-origin)",
                        cp.origin, key.origin
                    ));
                } else if head < cp.size {
                    problem = Consistency::Behind { head }.problem(&cp, &file);
                } else {
                    extend(store, &mut range, cp.size).await?;
                    let root = range.root();
                    if root != cp.root {
                        problem = Consistency::Rewritten { root }.problem(&cp, &file);
                    }
                }
                checked = Some((path, cp));
            }
        }
    }
    if let Some(p) = &problem
        && !allow_broken
    {
        bail!(
            "refusing to start: {p}. Investigate before serving (`keyward audit verify`); \
             --allow-broken-chain starts anyway"
        );
    }
    if range.size() <= head {
        match extend(store, &mut range, head).await {
            Ok(()) => {}
            // A log that is behind the checkpoint was reported above.
            Err(e) if problem.is_none() => return Err(e.into()),
            Err(_) => {}
        }
    }
    Ok(StartCheck {
        range,
        checked,
        problem,
    })
}

/// Writes `note` as the checkpoint of `size` events and as `latest.note`, each atomically
/// (a temporary file, synced, renamed over, the directory synced). Returns the numbered
/// file's path.
pub fn write_note(dir: &Path, size: u64, note: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let numbered = dir.join(file_name(size));
    write_atomic(dir, &numbered, note.as_bytes())?;
    write_atomic(dir, &dir.join(LATEST), note.as_bytes())?;
    Ok(numbered)
}

fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("checkpoint");
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// The `serve` task that signs and writes checkpoints.
pub struct Writer {
    key: Arc<CheckpointKey>,
    dir: PathBuf,
    every: u64,
    interval: Duration,
    witness: Option<Witness>,
    store: Arc<dyn EventStore>,
    live: Arc<Live>,
    /// The tree over the log up to the last event folded.
    range: CompactRange,
    /// The size of the last checkpoint written (or found at start).
    written: u64,
    last_write: Instant,
    client: Option<reqwest::Client>,
}

impl Writer {
    pub fn new(
        config: &Config,
        key: Arc<CheckpointKey>,
        dir: PathBuf,
        store: Arc<dyn EventStore>,
        live: Arc<Live>,
        start: StartCheck,
    ) -> Writer {
        let witness = config.checkpoint.witness.clone();
        let client = witness.as_ref().and_then(|_| match crate::notify::client() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %crate::redact::http_error(&e), "cannot build the checkpoint witness client; checkpoints are written but not POSTed");
                None
            }
        });
        Writer {
            key,
            dir,
            every: config.checkpoint.every,
            interval: config.checkpoint.interval,
            witness,
            store,
            live,
            written: start.checked.as_ref().map_or(0, |(_, cp)| cp.size),
            range: start.range,
            last_write: Instant::now(),
            client,
        }
    }

    /// Signs and writes the checkpoint of the log as it is now, if it grew since the last
    /// one and one is due (or `force`). Returns the size written.
    pub async fn write_if_due(&mut self, force: bool) -> Option<u64> {
        let head = self.live.head().seq;
        if head <= self.written {
            return None;
        }
        let due = force
            || head - self.written >= self.every
            || self.last_write.elapsed() >= self.interval;
        if !due {
            return None;
        }
        if let Err(e) = extend(self.store.as_ref(), &mut self.range, head).await {
            tracing::error!(error = %e, "cannot read the log to write a checkpoint; retrying");
            return None;
        }
        let cp = Checkpoint::new(self.key.origin.clone(), head, self.range.root());
        let note = match cp.sign(&self.key.signer) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "cannot sign the checkpoint");
                return None;
            }
        };
        let dir = self.dir.clone();
        let text = note.clone();
        let written = tokio::task::spawn_blocking(move || write_note(&dir, head, &text)).await;
        match written {
            Ok(Ok(path)) => {
                tracing::info!(size = head, root = %cp.root.to_hex(), path = %path.display(), "signed checkpoint written");
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, dir = %self.dir.display(), "cannot write the signed checkpoint; retrying");
                return None;
            }
            Err(e) => {
                tracing::error!(error = %e, "the checkpoint write failed");
                return None;
            }
        }
        self.written = head;
        self.last_write = Instant::now();
        if let (Some(w), Some(c)) = (&self.witness, &self.client) {
            tokio::spawn(post_to_witness(c.clone(), w.clone(), head, note));
        }
        Some(head)
    }

    /// Runs until `stop`, then writes a last checkpoint if the log grew (the caller stops
    /// it once every queued event is committed).
    pub fn spawn(
        mut self,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let poll = POLL.min(self.interval);
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    () = tokio::time::sleep(poll) => {}
                }
                self.write_if_due(false).await;
            }
            self.write_if_due(true).await;
        })
    }
}

/// POSTs a checkpoint to the witness, signed like the expiry notices
/// (`x-keyward-signature: sha256=<hex HMAC-SHA256 of the body>`), retried with backoff.
/// A failure is logged; the checkpoint stays written in the directory either way.
async fn post_to_witness(client: reqwest::Client, w: Witness, size: u64, note: String) {
    let signature = crate::notify::sign(w.secret.expose().as_bytes(), note.as_bytes());
    let mut backoff = WITNESS_BACKOFF_START;
    for attempt in 1..=WITNESS_ATTEMPTS {
        let res = client
            .post(&w.url)
            .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(crate::notify::SIGNATURE_HEADER, &signature)
            .body(note.clone())
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => {
                tracing::info!(size, attempt, "checkpoint delivered to the witness");
                return;
            }
            Ok(r) => {
                tracing::warn!(
                    size,
                    status = r.status().as_u16(),
                    attempt,
                    "the checkpoint witness refused a checkpoint"
                )
            }
            Err(e) => {
                tracing::warn!(size, error = %crate::redact::http_error(&e), attempt, "cannot reach the checkpoint witness")
            }
        }
        if attempt < WITNESS_ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    tracing::error!(
        size,
        "a checkpoint could not be delivered to the witness; the next one will be"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_sort_by_size() {
        assert_eq!(file_name(7), "00000000000000000007.note");
        assert_eq!(size_of_name("00000000000000000007.note"), Some(7));
        assert_eq!(size_of_name("7.note"), None);
        assert_eq!(size_of_name("latest.note"), None);
    }

    #[test]
    fn newest_prefers_the_largest_numbered_note() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(newest(dir.path()).unwrap(), None);
        assert_eq!(newest(&dir.path().join("missing")).unwrap(), None);
        std::fs::write(dir.path().join(LATEST), "x").unwrap();
        assert_eq!(newest(dir.path()).unwrap(), Some(dir.path().join(LATEST)));
        for n in [3u64, 12, 5] {
            std::fs::write(dir.path().join(file_name(n)), "x").unwrap();
        }
        assert_eq!(
            newest(dir.path()).unwrap(),
            Some(dir.path().join(file_name(12)))
        );
    }

    #[test]
    fn dev_key_names_are_valid_key_names() {
        assert!(keyward_events::note::is_valid_name(&dev_key_name()));
    }
}
