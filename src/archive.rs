//! Retention: sealed archive segments of the log, and the controlled prune of the usage
//! events they hold (`keyward audit archive`, `keyward audit verify --archive`).
//!
//! A segment covers a Merkle-aligned range of `2^level` events (level a multiple of 4, so
//! its root is a node the store keeps in `merkle_nodes`): seqs `k * 2^level + 1` to
//! `(k + 1) * 2^level`. It is one zstd-compressed NDJSON object named
//! `keyward-segment-<first:020>-<last:020>.ndjson.zst`: a manifest line
//! `{"keyward_segment":{…}}`, then every event of the range (lifecycle events too) in the
//! export's line format (the same readable, redacted form as `audit export`) without its
//! last two members, `prev_hash` and `hash` (format 2): both follow from the lines, since
//! each event's hash is over its canonical form and the hash before it, and the reader
//! recomputes them from the manifest's `prev_hash` on. They are random to a compressor and
//! were more than half of a compressed segment (format 1 kept them; it is still read). A
//! line whose hash cannot be recomputed (a schema-1 password hash the export redacts)
//! keeps both. The manifest
//! carries the range, the prev_hash of the first event and the hash of the last, the
//! subtree root, a checkpoint of the tree of `last` events signed with the checkpoint key,
//! and the inclusion proof of the subtree root in that checkpoint's tree, so a segment
//! verifies on its own against the public key.
//!
//! A segment is written under a temporary name and renamed, so it exists whole or not at
//! all; it is then read back and verified (decompressed, every hash, the chain, the root
//! against the stored tree node, the signature) before anything is pruned. The prune is
//! one transaction in the store ([`EventStore::prune_archived`]).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, bail};
use futures::TryStreamExt;
use keyward_events::Hash32;
use keyward_events::merkle::{self, CompactRange, NodeId};
use keyward_events::note::NoteVerifier;
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};

use crate::store::{ArchivedSegment, EventFilter, EventStore, PRUNABLE_TYPES, Prune};

/// The segment objects' names: `keyward-segment-<first:020>-<last:020>.ndjson.zst`.
pub const SEGMENT_PREFIX: &str = "keyward-segment-";
pub const SEGMENT_SUFFIX: &str = ".ndjson.zst";
/// What a segment is written under before it is renamed to its name.
pub const PARTIAL_SUFFIX: &str = ".partial";
/// The manifest line's member.
pub const MANIFEST_MEMBER: &str = "keyward_segment";
pub const FORMAT: &str = "keyward-segment/2";
/// The first format: every line carried its `prev_hash` and `hash`.
pub const FORMAT_1: &str = "keyward-segment/1";
/// `,"prev_hash":"<64 hex>","hash":"<64 hex>"}`: how an export line ends.
const HASHES_TAIL: usize = 14 + 64 + 10 + 64 + 2;

/// Whether an event line (no newline) ends with its `prev_hash` and `hash` members.
fn has_hashes(line: &[u8]) -> bool {
    line.len() > HASHES_TAIL && {
        let t = &line[line.len() - HASHES_TAIL..];
        t.starts_with(b",\"prev_hash\":\"")
            && &t[14 + 64..14 + 64 + 10] == b"\",\"hash\":\""
            && t.ends_with(b"\"}")
    }
}
/// 2^20 = 1,048,576 events a segment by default (defined with the configuration).
pub use crate::config::ARCHIVE_LEVEL_DEFAULT as DEFAULT_LEVEL;
pub const DEFAULT_ZSTD_LEVEL: i32 = 9;

pub fn segment_name(first: u64, last: u64) -> String {
    format!("{SEGMENT_PREFIX}{first:020}-{last:020}{SEGMENT_SUFFIX}")
}

/// The range a segment's name states.
pub fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let mid = name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    let (a, b) = mid.split_once('-')?;
    if a.len() != 20 || b.len() != 20 {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// A segment's first line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub count: u64,
    /// The segment is node (`level`, `index`) of the tree.
    pub level: u8,
    pub index: u64,
    /// prev_hash of the first event: the hash of seq `first_seq - 1`.
    pub prev_hash: Hash32,
    /// hash of the last event.
    pub last_hash: Hash32,
    /// The Merkle subtree root over the segment's events.
    pub root: Hash32,
    /// A checkpoint (C2SP signed note) of the tree of `last_seq` events.
    pub checkpoint: String,
    /// The inclusion proof of `root` (a node at `level`) in the checkpoint's tree.
    pub root_proof: Vec<Hash32>,
    /// How many of the events are usage events (`key.used`, `key.denied`).
    pub usage: u64,
    pub zstd_level: i32,
}

#[derive(Serialize, Deserialize)]
struct ManifestLine {
    keyward_segment: Manifest,
}

/// Where segments go: an object store from a URL and the prefix under it.
pub struct Destination {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: ObjectPath,
    pub url: String,
}

impl Destination {
    fn path(&self, name: &str) -> ObjectPath {
        self.prefix.child(name)
    }
}

/// Opens a destination: a bare local path or `file:///dir` (created if missing), or
/// `s3://bucket/prefix`, `gs://…`, `az://…` with the credentials and endpoint of the
/// standard environment variables (AWS_*, GOOGLE_*, AZURE_*).
pub fn open_destination(url: &str) -> anyhow::Result<Destination> {
    let local = if let Some(rest) = url.strip_prefix("file://") {
        Some(std::path::PathBuf::from(rest))
    } else if !url.contains("://") {
        Some(std::path::PathBuf::from(url))
    } else {
        None
    };
    if let Some(dir) = local {
        if dir.as_os_str().is_empty() {
            bail!("the archive destination {url:?} names no directory");
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the archive directory {}", dir.display()))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
            .with_context(|| format!("cannot open the archive directory {}", dir.display()))?;
        return Ok(Destination {
            store: Arc::new(fs),
            prefix: ObjectPath::default(),
            url: url.to_owned(),
        });
    }
    let parsed = url::Url::parse(url).with_context(|| format!("{url:?} is not a URL"))?;
    let options: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_")
        })
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let (store, prefix) = object_store::parse_url_opts(&parsed, options)
        .with_context(|| format!("cannot open the archive {url}"))?;
    Ok(Destination {
        store: Arc::from(store),
        prefix,
        url: url.to_owned(),
    })
}

/// The segment objects in a destination, by name, with any partial ones left by a crash.
pub async fn list_segments(dest: &Destination) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let prefix = (!dest.prefix.as_ref().is_empty()).then_some(&dest.prefix);
    let mut names = Vec::new();
    let mut partial = Vec::new();
    let mut listing = dest.store.list(prefix);
    while let Some(meta) = listing
        .try_next()
        .await
        .with_context(|| format!("cannot list the archive {}", dest.url))?
    {
        let Some(name) = meta.location.filename() else {
            continue;
        };
        if name.starts_with(SEGMENT_PREFIX) && name.ends_with(SEGMENT_SUFFIX) {
            names.push(name.to_owned());
        } else if name.starts_with(SEGMENT_PREFIX) && name.ends_with(PARTIAL_SUFFIX) {
            partial.push(name.to_owned());
        }
    }
    names.sort();
    partial.sort();
    Ok((names, partial))
}

async fn get(dest: &Destination, name: &str) -> anyhow::Result<Option<bytes::Bytes>> {
    match dest.store.get(&dest.path(name)).await {
        Ok(r) => Ok(Some(r.bytes().await.with_context(|| {
            format!("cannot read the segment {name} from {}", dest.url)
        })?)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => {
            Err(e).with_context(|| format!("cannot read the segment {name} from {}", dest.url))
        }
    }
}

// ---------- one segment: building and checking ----------

/// The inclusion proof of node (`level`, `index`) in the tree of `(index + 1) << level`
/// leaves: the tree over the level's nodes is that tree (every split falls on a multiple
/// of `2^level`), so it is leaf `index`'s proof there.
async fn node_proof(store: &dyn EventStore, level: u8, index: u64) -> anyhow::Result<Vec<Hash32>> {
    let plan = merkle::inclusion_plan(index, index + 1)?;
    let shift = |id: NodeId| NodeId {
        level: id.level + level,
        index: id.index,
    };
    let ids: Vec<NodeId> = plan.nodes().into_iter().map(shift).collect();
    let nodes = store.tree_nodes(&ids).await?;
    Ok(plan.assemble(|id| nodes.get(&shift(id)).copied())?)
}

/// Events read from the store per page by the archive: small enough that decoding a page
/// holds a runtime worker for a few milliseconds at most (the proxy's p99 while an archive
/// runs), large enough that the queries cost little.
const PAGE: usize = 1_000;

/// A segment's body as it is built: the zstd stream of its lines, the compact Merkle range
/// of its leaves, and where it has got to.
struct SegmentBody {
    range: CompactRange,
    usage: u64,
    prev_hash: Option<Hash32>,
    last_hash: Hash32,
    body: zstd::stream::write::Encoder<'static, Vec<u8>>,
    line: Vec<u8>,
    /// The last seq added.
    after: u64,
}

impl SegmentBody {
    fn new(first: u64, zstd_level: i32) -> anyhow::Result<Self> {
        Ok(Self {
            range: CompactRange::new(),
            usage: 0,
            prev_hash: None,
            last_hash: Hash32::ZERO,
            body: zstd::stream::write::Encoder::new(Vec::new(), zstd_level).context("zstd")?,
            line: Vec::with_capacity(1024),
            after: first - 1,
        })
    }

    /// Adds a page of events, which must continue the seqs without a gap.
    fn push_page(
        &mut self,
        page: &[keyward_events::Envelope],
        first: u64,
        last: u64,
    ) -> anyhow::Result<()> {
        use std::io::Write;
        for env in page {
            if env.seq != self.after + 1 {
                bail!(
                    "seq {} is not in the store: seqs {first} to {last} cannot be archived whole",
                    self.after + 1
                );
            }
            self.prev_hash.get_or_insert(env.prev_hash);
            self.range.push(merkle::leaf_hash(&env.hash));
            if PRUNABLE_TYPES.contains(&env.event_type.as_str()) {
                self.usage += 1;
            }
            // The export's form: secrets redacted exactly as `audit export` does, without
            // the hashes the reader recomputes.
            let line = &mut self.line;
            line.clear();
            let readable = keyward_events::upcast::readable(env);
            keyward_events::export::encode_event_line(line, &readable, None)?;
            if !keyward_events::export::is_redacted(&readable) {
                if !has_hashes(line) {
                    bail!(
                        "seq {}: the export line does not end with its hashes",
                        env.seq
                    );
                }
                line.truncate(line.len() - HASHES_TAIL);
                line.push(b'}');
            }
            line.push(b'\n');
            self.body.write_all(line)?;
            self.last_hash = env.hash;
            self.after = env.seq;
        }
        Ok(())
    }
}

/// Builds segment `index` at `level` from the store: the compressed object and its
/// manifest. The events are read a page at a time and compressed as they come (one zstd
/// frame); the manifest, known only at the end, is its own frame put first. Concatenated
/// frames decompress as one stream, so the object is one NDJSON text.
pub async fn build_segment(
    store: &dyn EventStore,
    key: &crate::checkpoint::CheckpointKey,
    checkpoint_dir: Option<&std::path::Path>,
    level: u8,
    index: u64,
    zstd_level: i32,
) -> anyhow::Result<(Vec<u8>, Manifest)> {
    let first = (index << level) + 1;
    let last = (index + 1) << level;
    let mut body = SegmentBody::new(first, zstd_level)?;
    while body.after < last {
        let page = store
            .read(
                &EventFilter {
                    after_seq: body.after,
                    until_seq: Some(last),
                    ..EventFilter::default()
                },
                PAGE,
            )
            .await?;
        if page.is_empty() {
            break;
        }
        // Encoding, hashing and compressing run on the background thread, a page at a time.
        let done;
        (body, done) = crate::background::run(move || {
            let done = body.push_page(&page, first, last);
            (body, done)
        })
        .await;
        done?;
    }
    let SegmentBody {
        range,
        usage,
        prev_hash,
        last_hash,
        body,
        after,
        ..
    } = body;
    if after != last {
        bail!(
            "seq {} is not in the store: seqs {first} to {last} cannot be archived whole",
            after + 1
        );
    }
    let (body, root) =
        crate::background::run(move || (body.finish().context("zstd"), range.root())).await;
    let body = body?;
    let stored = store
        .tree_nodes(&[NodeId { level, index }])
        .await?
        .get(&NodeId { level, index })
        .copied();
    if stored != Some(root) {
        bail!(
            "the store's Merkle node for seqs {first} to {last} does not match its events; run `keyward audit verify`"
        );
    }
    let (cp, note) = crate::checkpoint::sign_for_export(store, key, checkpoint_dir, last)
        .await
        .context("cannot sign the segment's checkpoint")?;
    let root_proof = node_proof(store, level, index).await?;
    merkle::verify_inclusion(&root, index, index + 1, &root_proof, &cp.root)
        .context("the segment's root does not prove into the checkpoint")?;
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        first_seq: first,
        last_seq: last,
        count: last - first + 1,
        level,
        index,
        prev_hash: prev_hash.unwrap_or(Hash32::ZERO),
        last_hash,
        root,
        checkpoint: note,
        root_proof,
        usage,
        zstd_level,
    };
    let mut head = serde_json::to_vec(&ManifestLine {
        keyward_segment: manifest.clone(),
    })?;
    head.push(b'\n');
    let mut object = zstd::bulk::compress(&head, zstd_level).context("zstd")?;
    object.extend_from_slice(&body);
    Ok((object, manifest))
}

/// What a segment that passed [`check_segment`] holds.
#[derive(Debug)]
pub struct Checked {
    pub manifest: Manifest,
    /// Every event's seq and hash, in order.
    pub hashes: Vec<(u64, Hash32)>,
    /// The usage events' seqs and hashes: what a prune of it may delete.
    pub usage: Vec<(u64, Hash32)>,
    /// The root of the signed checkpoint (of the tree of `last_seq` events).
    pub checkpoint_root: Hash32,
}

/// Checks one segment on its own, reading it as a stream (one line at a time): decompresses
/// it, reads the manifest, and checks every line's form and hash, the chain through it,
/// its count and range (against its name), the Merkle root, the checkpoint's signature
/// with `verifier`, and that the root proves into the checkpoint. The error says what is
/// wrong (the caller names the segment).
pub fn check_segment(name: &str, bytes: &[u8], verifier: &NoteVerifier) -> Result<Checked, String> {
    use std::io::{BufRead, Read};
    let decoder = zstd::stream::read::Decoder::new(bytes)
        .map_err(|e| format!("cannot decompress it: {e}"))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, decoder);
    let mut line = Vec::with_capacity(4096);
    let mut read_line = |line: &mut Vec<u8>| -> Result<bool, String> {
        line.clear();
        let n = Read::take(&mut reader, keyward_events::export::MAX_LINE as u64 + 1)
            .read_until(b'\n', line)
            .map_err(|e| format!("cannot decompress it (zstd): {e}"))?;
        if n > keyward_events::export::MAX_LINE {
            return Err(format!(
                "a line is longer than {} bytes",
                keyward_events::export::MAX_LINE
            ));
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        Ok(n > 0)
    };
    if !read_line(&mut line)? {
        return Err("it is empty".to_owned());
    }
    let manifest: Manifest = serde_json::from_slice::<ManifestLine>(&line)
        .map_err(|e| format!("its first line is not a segment manifest: {e}"))?
        .keyward_segment;
    let recompute = manifest.format == FORMAT;
    if !recompute && manifest.format != FORMAT_1 {
        return Err(format!("unknown segment format {:?}", manifest.format));
    }
    let named = parse_segment_name(name);
    if named != Some((manifest.first_seq, manifest.last_seq)) {
        return Err(format!(
            "it holds seqs {} to {}, not the range its name states: it was renamed or swapped",
            manifest.first_seq, manifest.last_seq
        ));
    }
    let level = manifest.level;
    if level == 0 || !level.is_multiple_of(4) || level > 60 {
        return Err(format!("level {level} is not a stored tree level"));
    }
    if manifest.first_seq != (manifest.index << level) + 1
        || manifest.last_seq != (manifest.index + 1) << level
        || manifest.count != 1 << level
    {
        return Err(format!(
            "its range {} to {} ({} events) is not node {} at level {level}",
            manifest.first_seq, manifest.last_seq, manifest.count, manifest.index
        ));
    }
    let mut hashes = Vec::with_capacity(manifest.count.min(1 << 24) as usize);
    let mut usage = Vec::new();
    let mut range = CompactRange::new();
    let mut prev = manifest.prev_hash;
    let mut scratch = Vec::new();
    let mut expected = manifest.first_seq;
    while read_line(&mut line)? {
        if line.is_empty() {
            continue;
        }
        // Format 2: a line without its hashes gets the hash before it and a zero hash
        // (so that the strict parse sees the export's exact form), then its own hash
        // recomputed.
        let computed = recompute && !has_hashes(&line);
        if computed {
            if line.last() != Some(&b'}') {
                return Err(format!("the line of seq {expected} is not an event line"));
            }
            line.pop();
            line.extend_from_slice(b",\"prev_hash\":\"");
            line.extend_from_slice(prev.to_hex().as_bytes());
            line.extend_from_slice(b"\",\"hash\":\"");
            line.extend_from_slice(Hash32::ZERO.to_hex().as_bytes());
            line.extend_from_slice(b"\"}");
        }
        let parsed = keyward_events::export::parse_bytes(&line, &mut scratch)
            .map_err(|e| format!("the line of seq {expected} is not an event line: {e}"))?;
        let keyward_events::export::Line::Event {
            envelope: mut env,
            proof: None,
        } = parsed
        else {
            return Err(format!(
                "the line of seq {expected} is not a plain event line"
            ));
        };
        if env.seq != expected {
            return Err(format!(
                "seq {} where seq {expected} should be: events are missing or out of order",
                env.seq
            ));
        }
        if env.prev_hash != prev {
            return Err(format!(
                "seq {}: prev_hash does not match the hash of seq {}: the chain breaks",
                env.seq,
                env.seq - 1
            ));
        }
        if computed {
            // Its hash is what its content makes it: an altered line changes it and every
            // hash after it, which the manifest's last hash and root catch.
            env.hash = env.compute_hash();
        }
        // A line the export redacted (a schema-1 password hash) is checked by its place:
        // its hash binds it into the chain and the tree, and the store holds it.
        else if !keyward_events::export::is_redacted(&env) && env.compute_hash() != env.hash {
            return Err(format!(
                "seq {}: the stored hash does not match the recomputed hash: the event was altered",
                env.seq
            ));
        }
        range.push(merkle::leaf_hash(&env.hash));
        if PRUNABLE_TYPES.contains(&env.event_type.as_str()) {
            usage.push((env.seq, env.hash));
        }
        hashes.push((env.seq, env.hash));
        prev = env.hash;
        expected += 1;
        if expected > manifest.last_seq + 1 {
            return Err(format!(
                "it holds more events than the {} of its range",
                manifest.count
            ));
        }
    }
    if hashes.len() as u64 != manifest.count {
        return Err(format!(
            "it holds {} events, not {}: it is truncated",
            hashes.len(),
            manifest.count
        ));
    }
    if prev != manifest.last_hash {
        return Err(
            "its events do not hash to the manifest's last hash: an event in it was altered, added or removed"
                .to_owned(),
        );
    }
    if usage.len() as u64 != manifest.usage {
        return Err(format!(
            "it holds {} usage events, not the manifest's {}",
            usage.len(),
            manifest.usage
        ));
    }
    if range.root() != manifest.root {
        return Err(
            "its events do not hash to the manifest's Merkle root: an event in it was altered, added or removed"
                .to_owned(),
        );
    }
    let (_, cp) = keyward_events::note::open(
        manifest.checkpoint.as_bytes(),
        std::slice::from_ref(verifier),
    )
    .map_err(|e| {
        format!(
            "its checkpoint does not verify with {}: {e}",
            verifier.name()
        )
    })?;
    if cp.size != manifest.last_seq {
        return Err(format!(
            "its checkpoint is of size {}, not {}",
            cp.size, manifest.last_seq
        ));
    }
    merkle::verify_inclusion(
        &manifest.root,
        manifest.index,
        manifest.index + 1,
        &manifest.root_proof,
        &cp.root,
    )
    .map_err(|e| format!("its root does not prove into its signed checkpoint: {e}"))?;
    Ok(Checked {
        manifest,
        hashes,
        usage,
        checkpoint_root: cp.root,
    })
}

/// Checks a segment against the store: its root is the stored tree node, its checkpoint's
/// root is the store's tree root at that size, and each of its events is the store's (the
/// event itself, or the kept hash of a pruned one): every seq of its range must be in the
/// store one way or the other, and its first event chains onto the store's seq before.
/// Reads the store a page of seqs at a time.
pub async fn check_against_store(store: &dyn EventStore, checked: &Checked) -> Result<(), String> {
    let m = &checked.manifest;
    let id = NodeId {
        level: m.level,
        index: m.index,
    };
    let stored = store
        .tree_nodes(&[id])
        .await
        .map_err(|e| e.to_string())?
        .get(&id)
        .copied();
    if stored != Some(m.root) {
        return Err(format!(
            "its root is not the store's Merkle node for seqs {} to {}",
            m.first_seq, m.last_seq
        ));
    }
    let root = crate::audit::tree_root(store, m.last_seq)
        .await
        .map_err(|e| e.to_string())?;
    if root != checked.checkpoint_root {
        return Err(format!(
            "its checkpoint's root is not the store's tree root at size {}",
            m.last_seq
        ));
    }
    for chunk in checked.hashes.chunks(PAGE) {
        let (Some(lo), Some(hi)) = (chunk.first(), chunk.last()) else {
            continue;
        };
        let mut have: HashMap<u64, Hash32> = HashMap::with_capacity(chunk.len());
        let page = store
            .read(
                &EventFilter {
                    after_seq: lo.0 - 1,
                    until_seq: Some(hi.0),
                    ..EventFilter::default()
                },
                chunk.len(),
            )
            .await
            .map_err(|e| e.to_string())?;
        have.extend(page.iter().map(|e| (e.seq, e.hash)));
        for (seq, h) in store
            .pruned_hashes(lo.0 - 1, hi.0)
            .await
            .map_err(|e| e.to_string())?
        {
            have.insert(seq, h);
        }
        for (seq, hash) in chunk {
            match have.get(seq) {
                Some(h) if h == hash => {}
                Some(_) => return Err(format!("seq {seq} differs from the store's")),
                None => return Err(format!("seq {seq} is neither in the store nor archived")),
            }
        }
    }
    // The boundary: the first event chains onto the store's seq first - 1.
    if m.first_seq > 1 {
        let prev = crate::live::log_hash_at(store, m.first_seq - 1)
            .await
            .map_err(|e| e.to_string())?;
        if prev != Some(m.prev_hash) {
            return Err(format!(
                "its first event does not chain onto seq {} of the store",
                m.first_seq - 1
            ));
        }
    }
    Ok(())
}

// ---------- the archive run ----------

/// What `audit archive` is asked to do.
pub struct ArchiveRequest {
    pub until_seq: Option<u64>,
    pub before: Option<crate::time::Timestamp>,
    pub level: u8,
    pub zstd_level: i32,
    /// Write and verify segments, but prune nothing.
    pub no_prune: bool,
    /// The actor of the `audit.archived` events: `cli` or `system`.
    pub actor: String,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct ArchiveReport {
    /// Segments written (or found whole from an earlier run) and verified.
    pub written: Vec<String>,
    /// Segments recorded and pruned by this run.
    pub pruned_segments: Vec<String>,
    pub pruned_events: u64,
    /// The last seq the archive covers after this run.
    pub covered: u64,
    /// Compressed bytes of the segments read back and verified by this run.
    pub bytes: u64,
    /// Where the time went: building and writing the segments, reading them back and
    /// verifying them, the projection snapshot before the prune, and the prune.
    pub write: std::time::Duration,
    pub verify: std::time::Duration,
    pub snapshot: std::time::Duration,
    pub prune: std::time::Duration,
}

/// The last seq to archive up to, rounded down to whole segments.
pub async fn target_end(store: &dyn EventStore, req: &ArchiveRequest) -> anyhow::Result<u64> {
    let tree = store.tree_size().await?;
    let asked = match (req.until_seq, req.before) {
        (Some(n), _) => n,
        (None, Some(t)) => {
            let filter = EventFilter {
                to_time: Some(t - chrono::Duration::microseconds(1)),
                ..EventFilter::default()
            };
            store
                .read_newest(&filter, 1)
                .await?
                .first()
                .map_or(0, |e| e.seq)
        }
        (None, None) => bail!("give --until-seq N or --before TIME"),
    };
    Ok((asked.min(tree) >> req.level) << req.level)
}

/// Writes, reads back and verifies the segments from the end of the archived range up to
/// the target, and (unless `no_prune`) prunes each one's usage events in its own
/// transaction, after `before_prune` (the projection snapshot) succeeded.
pub async fn run(
    store: &dyn EventStore,
    dest: &Destination,
    key: &crate::checkpoint::CheckpointKey,
    checkpoint_dir: Option<&std::path::Path>,
    req: &ArchiveRequest,
    before_prune: impl AsyncFnOnce(u64) -> anyhow::Result<()>,
) -> anyhow::Result<ArchiveReport> {
    let level = req.level;
    if level == 0 || !level.is_multiple_of(4) || level > 40 {
        bail!("--segment-level must be a multiple of 4 from 4 to 40, not {level}");
    }
    let recorded = store.archived_segments().await?;
    let mut next_first = recorded.last().map_or(1, |s| s.last_seq + 1);
    if let Some(last) = recorded.last()
        && last.last_seq - last.first_seq + 1 != 1 << level
    {
        bail!(
            "the archive's segments hold {} events each (the last is {}); give --segment-level {}",
            last.last_seq - last.first_seq + 1,
            last.name,
            (last.last_seq - last.first_seq + 1).trailing_zeros()
        );
    }
    let end = target_end(store, req).await?;
    let mut report = ArchiveReport {
        covered: next_first - 1,
        ..ArchiveReport::default()
    };
    // A crash while writing leaves a partial object: it is never counted, and is removed.
    let (existing, partial) = list_segments(dest).await?;
    for name in partial {
        tracing::warn!(%name, "removing a partial segment a crash left");
        dest.store
            .delete(&dest.path(&name))
            .await
            .with_context(|| format!("cannot remove the partial segment {name}"))?;
    }
    let verifier = key.verifier();
    let mut ready: Vec<(ArchivedSegment, Checked)> = Vec::new();
    while next_first + (1 << level) - 1 <= end {
        let index = (next_first - 1) >> level;
        let last = next_first + (1 << level) - 1;
        let name = segment_name(next_first, last);
        let started = std::time::Instant::now();
        if !existing.contains(&name) {
            let (bytes, _) =
                build_segment(store, key, checkpoint_dir, level, index, req.zstd_level).await?;
            let tmp = dest.path(&format!("{name}{PARTIAL_SUFFIX}"));
            dest.store
                .put(&tmp, bytes.into())
                .await
                .with_context(|| format!("cannot write the segment {name} to {}", dest.url))?;
            dest.store
                .rename(&tmp, &dest.path(&name))
                .await
                .with_context(|| format!("cannot rename the segment {name} into place"))?;
        }
        report.write += started.elapsed();
        // Read back what the destination holds and verify it before anything is pruned.
        let started = std::time::Instant::now();
        let Some(bytes) = get(dest, &name).await? else {
            bail!(
                "the segment {name} is not in {} after it was written",
                dest.url
            );
        };
        let checked = {
            let (name, verifier, bytes) = (name.clone(), verifier.clone(), bytes.clone());
            crate::background::run(move || check_segment(&name, &bytes, &verifier)).await
        };
        let checked = checked.map_err(|e| {
            anyhow::anyhow!(
                "the segment {name} in {} does not verify: {e}. Nothing was pruned; move it away to have it written again",
                dest.url
            )
        })?;
        check_against_store(store, &checked).await.map_err(|e| {
            anyhow::anyhow!(
                "the segment {name} in {} does not match the store: {e}. Nothing was pruned",
                dest.url
            )
        })?;
        report.bytes += bytes.len() as u64;
        report.verify += started.elapsed();
        report.written.push(name.clone());
        ready.push((
            ArchivedSegment {
                first_seq: next_first,
                last_seq: last,
                name,
                root: checked.manifest.root,
                checkpoint: checked.manifest.checkpoint.clone(),
            },
            checked,
        ));
        next_first = last + 1;
    }
    if req.no_prune || ready.is_empty() {
        return Ok(report);
    }
    let last_pruned = ready.last().map_or(0, |(s, _)| s.last_seq);
    let started = std::time::Instant::now();
    before_prune(last_pruned).await?;
    report.snapshot = started.elapsed();
    let started = std::time::Instant::now();
    for (seg, checked) in ready {
        let event = keyward_events::Event::AuditArchived(keyward_events::AuditArchived {
            first_seq: seg.first_seq,
            last_seq: seg.last_seq,
            pruned: checked.usage.len() as u64,
            segments: vec![keyward_events::ArchivedSegmentRef {
                name: seg.name.clone(),
                first_seq: seg.first_seq,
                last_seq: seg.last_seq,
                root: seg.root,
                checkpoint: seg.checkpoint.clone(),
            }],
        });
        let event = keyward_events::NewEvent::new(
            &event,
            keyward_events::ExpectedVersion::Any,
            chrono::Utc::now(),
            req.actor.clone(),
            None,
        );
        let name = seg.name.clone();
        let pruned = checked.usage.len() as u64;
        store
            .prune_archived(Prune {
                segments: vec![(seg, checked.usage)],
                event,
            })
            .await
            .with_context(|| format!("cannot prune the segment {name}"))?;
        report.pruned_events += pruned;
        report.covered = report
            .covered
            .max(parse_segment_name(&name).map_or(0, |r| r.1));
        report.pruned_segments.push(name);
    }
    report.prune = started.elapsed();
    Ok(report)
}

// ---------- verify --archive ----------

/// Verifies the archive, with the store when one is given: every segment on its own
/// (chain, hashes, root, signature, the root's proof into its checkpoint), that each
/// chains onto the one before it, and the coverage (from seq 1, no gap, no overlap, in
/// order). With the store, also every segment against it (root against the stored tree
/// node, checkpoint root against the store's tree, every event against the store's event
/// or kept hash) and every segment the store records as archived present. Returns a line
/// per problem, naming the segment (empty when all is well), the number of segments
/// checked, the events they hold, and the last seq they cover.
pub async fn verify_archive(
    store: Option<&dyn EventStore>,
    dest: &Destination,
    verifier: &NoteVerifier,
) -> anyhow::Result<(Vec<String>, u64, u64, u64)> {
    let mut problems = Vec::new();
    let (names, partial) = list_segments(dest).await?;
    for p in partial {
        tracing::warn!(name = %p, "a partial segment (a write a crash cut short) is not counted");
    }
    let recorded = match store {
        Some(store) => store.archived_segments().await?,
        None => Vec::new(),
    };
    let in_archive: std::collections::HashSet<&String> = names.iter().collect();
    for seg in &recorded {
        if !in_archive.contains(&seg.name) {
            problems.push(format!(
                "the segment {} (seqs {} to {}) is missing from the archive {}",
                seg.name, seg.first_seq, seg.last_seq, dest.url
            ));
        }
    }
    let recorded_by_name: HashMap<&str, &ArchivedSegment> =
        recorded.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut covered = 0u64;
    let mut prev: Option<(String, u64, Hash32)> = None;
    let mut segments = 0;
    let mut events = 0;
    for name in &names {
        let Some((first, last)) = parse_segment_name(name) else {
            problems.push(format!("{name} is not a segment name"));
            continue;
        };
        // Coverage, by the names (each name is checked against its content below).
        if first != covered + 1 {
            if first <= covered {
                problems.push(format!(
                    "the segment {name} overlaps the one before it (seqs {first} to {covered})"
                ));
            } else {
                problems.push(format!(
                    "seqs {} to {} are in no segment: a segment before {name} is missing",
                    covered + 1,
                    first - 1
                ));
            }
        }
        covered = covered.max(last);
        let Some(bytes) = get(dest, name).await? else {
            problems.push(format!("the segment {name} vanished while it was read"));
            continue;
        };
        let checked = match check_segment(name, &bytes, verifier) {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("the segment {name} does not verify: {e}"));
                prev = None;
                continue;
            }
        };
        let m = &checked.manifest;
        if let Some((prev_name, prev_last, prev_hash)) = &prev
            && *prev_last + 1 == m.first_seq
            && *prev_hash != m.prev_hash
        {
            problems.push(format!(
                "the segment {name} does not chain onto {prev_name}: its first event's prev_hash is not that segment's last hash"
            ));
        }
        if m.first_seq == 1 && m.prev_hash != Hash32::ZERO {
            problems.push(format!(
                "the segment {name} starts the log but its first prev_hash is not zero"
            ));
        }
        if let Some(rec) = recorded_by_name.get(name.as_str())
            && (rec.root != m.root || rec.first_seq != first || rec.last_seq != last)
        {
            problems.push(format!(
                "the segment {name} is not the one the store recorded as archived (root or range differ)"
            ));
        }
        if let Some(store) = store
            && let Err(e) = check_against_store(store, &checked).await
        {
            problems.push(format!("the segment {name} does not match the store: {e}"));
        }
        prev = Some((name.clone(), m.last_seq, m.last_hash));
        segments += 1;
        events += m.count;
    }
    // Every pruned seq lies in a segment the archive holds.
    if let Some(last) = recorded.last()
        && covered < last.last_seq
    {
        problems.push(format!(
            "the store has pruned up to seq {} but the archive covers only up to seq {covered}",
            last.last_seq
        ));
    }
    Ok((problems, segments, events, covered))
}

/// Writes a kept projection snapshot at exactly seq `at` (the last seq a prune will
/// delete), folded from the newest kept snapshot at or before it, with its timeline: a
/// start folds from it across nothing pruned, and an as-of to any point after the pruned
/// range starts from it. Called before anything is deleted.
pub async fn snapshot_at(
    store: &dyn EventStore,
    kept: &crate::history::Kept,
    keep: usize,
    at: u64,
) -> anyhow::Result<()> {
    let (mut state, mut timeline) =
        match crate::history::newest_snapshot(store, kept, at, false).await? {
            Some(l) => (l.state, l.timeline),
            None => (
                keyward_projections::State::default(),
                crate::timeline::Timeline::default(),
            ),
        };
    while state.head.seq < at {
        let page = store
            .read(
                &EventFilter {
                    after_seq: state.head.seq,
                    until_seq: Some(at),
                    ..EventFilter::default()
                },
                PAGE,
            )
            .await?;
        if page.is_empty() {
            break;
        }
        // The fold runs on the background thread, a page at a time.
        let folded;
        (state, timeline, folded) = crate::background::run(move || {
            let folded = page.iter().try_for_each(|env| {
                state.apply(env)?;
                timeline.record(env.seq, env.occurred_at);
                Ok::<_, keyward_projections::ApplyError>(())
            });
            (state, timeline, folded)
        })
        .await;
        folded.with_context(|| {
            format!(
                "cannot fold the log to seq {at} for the projection snapshot the prune needs (is a kept snapshot after an earlier prune missing?); nothing was pruned"
            )
        })?;
    }
    if state.head.seq != at {
        bail!(
            "the log ends at seq {} before seq {at}: no projection snapshot can be taken there; nothing was pruned",
            state.head.seq
        );
    }
    let dir = kept.dir.clone();
    let keys = kept.keys.clone();
    tokio::task::spawn_blocking(move || {
        crate::snapshot::write_kept(&dir, &state, &timeline, &keys, keep)
    })
    .await?
    .context("cannot write the projection snapshot; nothing was pruned")?;
    Ok(())
}

// ---------- the schedule (`serve --archive-to`) ----------

/// What the scheduled archive of `serve` works with.
pub struct Scheduled {
    pub schedule: crate::config::ArchiveSchedule,
    pub dest: Destination,
    pub store: Arc<dyn EventStore>,
    /// On PostgreSQL: the advisory lock that lets one node at a time archive.
    pub postgres: Option<Arc<crate::store::postgres::PostgresStore>>,
    pub live: Arc<crate::live::Live>,
    /// Where projection snapshots are kept and the keys of their MACs.
    pub kept: crate::history::Kept,
    pub keep: usize,
    pub key: Arc<crate::checkpoint::CheckpointKey>,
    pub checkpoint_dir: Option<std::path::PathBuf>,
    pub stop: tokio::sync::watch::Receiver<bool>,
}

/// Runs the archive every `interval` until stopped. A run's failure is logged and tried
/// again on the next interval; nothing is pruned unless its segment verified.
pub fn spawn_schedule(mut s: Scheduled) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = s.stop.wait_for(|stop| *stop) => return,
                () = tokio::time::sleep(s.schedule.interval) => {}
            }
            match run_scheduled(&s).await {
                Ok(Some(r)) if !r.pruned_segments.is_empty() => tracing::info!(
                    segments = r.pruned_segments.len(),
                    pruned = r.pruned_events,
                    covered = r.covered,
                    archive = %s.dest.url,
                    "archived and pruned usage events"
                ),
                Ok(_) => {}
                Err(e) => tracing::error!(
                    error = %format!("{e:#}"),
                    archive = %s.dest.url,
                    "the scheduled archive failed; nothing unverified was pruned, it runs again next interval"
                ),
            }
        }
    })
}

/// One scheduled run: `None` when another node holds the archive lock.
async fn run_scheduled(s: &Scheduled) -> anyhow::Result<Option<ArchiveReport>> {
    let _lock = match &s.postgres {
        Some(pg) => match pg.try_archive_lock().await? {
            Some(lock) => Some(lock),
            None => return Ok(None),
        },
        None => None,
    };
    let retain =
        chrono::Duration::from_std(s.schedule.retain).context("--retain-usage is too long")?;
    let req = ArchiveRequest {
        until_seq: None,
        before: Some(chrono::Utc::now() - retain),
        level: s.schedule.level,
        zstd_level: DEFAULT_ZSTD_LEVEL,
        no_prune: false,
        actor: "system".to_owned(),
    };
    // Before a prune: a snapshot at the last seq it deletes.
    let before_prune = async |last: u64| -> anyhow::Result<()> {
        snapshot_at(s.store.as_ref(), &s.kept, s.keep, last).await
    };
    let report = run(
        s.store.as_ref(),
        &s.dest,
        &s.key,
        s.checkpoint_dir.as_deref(),
        &req,
        before_prune,
    )
    .await?;
    // Fold the `audit.archived` events appended outside the appender.
    s.live.catch_up().await?;
    Ok(Some(report))
}
