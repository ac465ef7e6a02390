//! Retention (issue 18): `audit archive` writes sealed, signed segments, reads each back
//! and verifies it, then prunes the usage events it holds in one controlled transaction;
//! `audit verify --archive` checks the store and the archive together.

use std::path::{Path, PathBuf};

use keyward::commands::Actor;
use keyward_events::{ExpectedVersion, KeyDenied, KeyUsed, NewEvent, UsageOutcome};
use sqlx::Row;

use crate::common::*;

/// A raw connection to the SQLite log, with a temporary view `ev` that shows the compact
/// events table (migration 0003) with its names as text, for the tests' own queries.
async fn raw_sqlite(db: &Path) -> sqlx::SqliteConnection {
    let mut c = crate::common::raw_sqlite(db).await;
    sqlx::query(
        "CREATE TEMP VIEW IF NOT EXISTS ev AS SELECT e.seq, e.stream_version, e.occurred_at, \
         s.name AS stream, t.name AS type, a.name AS actor FROM events e \
         JOIN names s ON s.id = e.stream JOIN names t ON t.id = e.type \
         JOIN names a ON a.id = e.actor",
    )
    .execute(&mut c)
    .await
    .unwrap();
    c
}

/// Users, keys, usage and denials through the real command path: per round a user, a
/// key, `uses` key.used and one key.denied (so usage dominates, as in production).
async fn activity(r: &keyward::server::Running, rounds: usize, uses: usize) {
    let t = r.state.0.commands.clone();
    for i in 0..rounds {
        let name = format!("u{}", ulid::Ulid::new().to_string().to_lowercase());
        let (ev, user_id) =
            t.user_created(&Actor::system(), &name, keyward_events::Role::User, None);
        t.submit(vec![ev]).await.unwrap();
        let (rec, _secret) = t
            .create_key(
                &Actor::system(),
                keyward::commands::NewKey {
                    name: format!("key {i}"),
                    owner_id: user_id,
                    provider_ids: vec![],
                    expires_at: chrono::Utc::now() + chrono::Duration::days(10),
                    scopes: vec![keyward_events::Scope::Chat],
                    models: vec!["gpt-4o".into()],
                    rate_limit: None,
                    quota: None,
                    ip_allowlist: vec![],
                    metadata: serde_json::Map::new(),
                    rotated_from: None,
                },
            )
            .await
            .unwrap();
        let key_id = rec.key_id().to_owned();
        let mut events = Vec::new();
        for j in 0..uses {
            events.push(keyward_events::Event::KeyUsed(KeyUsed {
                key_id: key_id.clone(),
                provider_id: "prv_x".into(),
                model: Some("gpt-4o".into()),
                endpoint: "/v1/chat/completions".into(),
                outcome: UsageOutcome::Success,
                status: 200,
                latency_us: 10 + j as u64,
                upstream_latency_us: Some(5),
                prompt_tokens: 3 + j as u64,
                completion_tokens: 4,
                stream: false,
                client_ip: Some("10.0.0.7".into()),
            }));
        }
        events.push(keyward_events::Event::KeyDenied(KeyDenied {
            key_id: key_id.clone(),
            reason: keyward_events::DenyReason::Model,
            endpoint: "/v1/chat/completions".into(),
            model: Some("gpt-5".into()),
            client_ip: None,
            suppressed: 0,
        }));
        for e in events {
            t.appender
                .submit(vec![NewEvent::new(
                    &e,
                    ExpectedVersion::Any,
                    chrono::Utc::now(),
                    key_id.clone(),
                    None,
                )])
                .await
                .unwrap();
        }
    }
}

/// A stopped SQLite app with activity; returns its state (keys and usage) at the stop.
async fn sqlite_log(dir: &Path, rounds: usize, uses: usize) -> keyward_projections::State {
    let r = keyward::server::start(config_in(dir)).await.unwrap();
    activity(&r, rounds, uses).await;
    let state = r.state.0.live.read().clone();
    r.shutdown().await;
    state
}

fn archive_dir(dir: &Path) -> PathBuf {
    dir.join("archive")
}

fn segments(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

struct Counts {
    events: i64,
    usage: i64,
    lifecycle: i64,
    pruned: i64,
    segments: i64,
}

async fn counts(db: &Path) -> Counts {
    let mut c = raw_sqlite(db).await;
    let mut get = async |sql: &str| -> i64 {
        sqlx::query(sql)
            .fetch_one(&mut c)
            .await
            .unwrap()
            .get::<i64, _>(0)
    };
    Counts {
        events: get("SELECT count(*) FROM events").await,
        usage: get("SELECT count(*) FROM ev WHERE type IN ('key.used', 'key.denied')").await,
        lifecycle: get("SELECT count(*) FROM ev WHERE type NOT IN ('key.used', 'key.denied')")
            .await,
        pruned: get("SELECT count(*) FROM pruned_hashes").await,
        segments: get("SELECT count(*) FROM archived_segments").await,
    }
}

fn run_ok(dir: &Path, args: &[&str]) -> String {
    let o = keyward(dir, args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{args:?}\nstdout: {}\nstderr: {}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

fn run_fails(dir: &Path, args: &[&str]) -> String {
    let o = keyward(dir, args);
    assert_ne!(
        o.status.code(),
        Some(0),
        "{args:?} was not refused\nstdout: {}\nstderr: {}",
        stdout(&o),
        stderr(&o)
    );
    format!("{}{}", stdout(&o), stderr(&o))
}

/// Decompresses a segment, applies `f` to its text, and writes it back compressed.
fn rewrite_segment(path: &Path, f: impl FnOnce(String) -> String) {
    let raw = zstd::decode_all(std::fs::read(path).unwrap().as_slice()).unwrap();
    let text = f(String::from_utf8(raw).unwrap());
    std::fs::write(path, zstd::encode_all(text.as_bytes(), 3).unwrap()).unwrap();
}

/// The hash of the event at `seq` as the store now answers for it (event or pruned).
async fn inclusion_root(db: &Path, seq: u64, size: u64) -> keyward_events::Hash32 {
    let store = keyward::store::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let inc = keyward::audit::inclusion(store.as_ref(), seq, size)
        .await
        .unwrap();
    keyward_events::merkle::verify_inclusion(
        &inc.leaf_hash,
        inc.leaf_index,
        size,
        &inc.proof,
        &inc.root,
    )
    .unwrap();
    inc.root
}

#[tokio::test]
async fn archive_prunes_usage_and_a_restart_keeps_keys_counters_proofs_and_the_whole_history() {
    let dir = tempfile::tempdir().unwrap();
    let before = sqlite_log(dir.path(), 6, 5).await;
    let db = dir.path().join("keyward.db");
    let start = counts(&db).await;
    assert!(start.events >= 48, "{}", start.events);
    // A usage event inside the first segment, and a root over the log as it was.
    let size = start.events as u64;
    let usage_seq: i64 =
        sqlx::query_scalar("SELECT min(seq) FROM ev WHERE type = 'key.used' AND seq <= 16")
            .fetch_one(&mut raw_sqlite(&db).await)
            .await
            .unwrap();
    let root_before = inclusion_root(&db, usage_seq as u64, size).await;

    let to = archive_dir(dir.path());
    let out = run_ok(
        dir.path(),
        &[
            "audit",
            "archive",
            "--to",
            to.to_str().unwrap(),
            "--until-seq",
            "40",
            "--segment-level",
            "4",
        ],
    );
    // 40 rounds down to two whole segments of 16.
    assert!(out.contains("the archive covers up to seq 32"), "{out}");
    assert_eq!(
        segments(&to),
        vec![
            "keyward-segment-00000000000000000001-00000000000000000016.ndjson.zst",
            "keyward-segment-00000000000000000017-00000000000000000032.ndjson.zst",
        ]
    );
    let after = counts(&db).await;
    let mut c = raw_sqlite(&db).await;
    let usage_left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ev WHERE seq <= 32 AND type IN ('key.used', 'key.denied')",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(usage_left, 0, "usage events of the archived range remain");
    assert!(after.pruned > 0);
    assert_eq!(after.segments, 2);
    // Lifecycle events all stay; two `audit.archived` (and nothing else) were added.
    assert_eq!(after.lifecycle, start.lifecycle + 2);
    assert_eq!(after.usage, start.usage - after.pruned);
    let archived: i64 = sqlx::query_scalar("SELECT count(*) FROM ev WHERE type = 'audit.archived'")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(archived, 2);

    // The trigger: a lifecycle row, or a usage row outside an archived segment, cannot be
    // deleted; UPDATE is refused as before.
    let lifecycle_seq: i64 =
        sqlx::query_scalar("SELECT min(seq) FROM ev WHERE type = 'user.created'")
            .fetch_one(&mut c)
            .await
            .unwrap();
    let e = sqlx::query("DELETE FROM events WHERE seq = ?")
        .bind(lifecycle_seq)
        .execute(&mut c)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
    let live_usage: i64 =
        sqlx::query_scalar("SELECT min(seq) FROM ev WHERE seq > 32 AND type = 'key.used'")
            .fetch_one(&mut c)
            .await
            .unwrap();
    let e = sqlx::query("DELETE FROM events WHERE seq = ?")
        .bind(live_usage)
        .execute(&mut c)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
    let e = sqlx::query("DELETE FROM archived_segments")
        .execute(&mut c)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("insert-only"), "{e}");
    let e = sqlx::query("DELETE FROM pruned_hashes")
        .execute(&mut c)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("insert-only"), "{e}");
    drop(c);
    let unchanged = counts(&db).await;
    assert_eq!(unchanged.events, after.events);

    // A restart folds from the snapshot the archive took: the same keys and counters.
    let r = keyward::server::start(config_in(dir.path())).await.unwrap();
    let now = r.state.0.live.read().clone();
    let snap = r
        .report
        .snapshot
        .expect("the start used the archive's snapshot");
    assert!(snap.seq >= 32, "{snap:?}");
    assert_eq!(now.keys, before.keys);
    assert_eq!(now.usage, before.usage);
    assert_eq!(now.users, before.users);
    // An as-of to a time inside the pruned range cannot fold across it: 409 `archived`,
    // not a wrong table.
    let early: i64 = sqlx::query_scalar("SELECT occurred_at FROM events WHERE seq = 33")
        .fetch_one(&mut raw_sqlite(&db).await)
        .await
        .unwrap();
    let t = chrono::DateTime::from_timestamp_micros(early - 1).unwrap();
    let api = crate::api::Api {
        app: keyward::app(r.state.clone()),
    };
    let admin = std::fs::read_to_string(dir.path().join("initial-admin-key")).unwrap();
    let (status, body) = api
        .get(
            &format!(
                "/api/v1/keys?as_of={}",
                t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                    .replace('+', "%2B")
            ),
            admin.trim(),
        )
        .await;
    assert_eq!(status, axum::http::StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "archived", "{body}");
    // New usage after the prune still counts on top.
    activity(&r, 1, 2).await;
    r.shutdown().await;

    // Proofs: a pruned event's inclusion proof against the same root as before.
    assert_eq!(
        inclusion_root(&db, usage_seq as u64, size).await,
        root_before
    );

    // The chain across the holes, and the whole history with the archive.
    let out = run_ok(dir.path(), &["audit", "verify"]);
    assert!(out.starts_with("ok:"), "{out}");
    let out = run_ok(
        dir.path(),
        &["audit", "verify", "--archive", to.to_str().unwrap()],
    );
    assert!(out.contains("in 2 segments of the archive"), "{out}");

    // An export of the store now has gaps: it says so, and with proofs it verifies
    // (as a filtered export) offline.
    let o = keyward(dir.path(), &["audit", "export", "--with-proofs"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("were archived and pruned"),
        "{}",
        stderr(&o)
    );
    let export = dir.path().join("export.ndjson");
    std::fs::write(&export, &o.stdout).unwrap();
    let key = run_ok(dir.path(), &["audit", "public-key"]);
    let out = run_ok(
        dir.path(),
        &[
            "audit",
            "verify",
            "--export",
            export.to_str().unwrap(),
            "--public-key",
            key.trim(),
        ],
    );
    assert!(!out.contains("FAILED"), "{out}");
    // As-of before the pruned range cannot fold across it: said, not a wrong answer.
    let out = run_fails(dir.path(), &["audit", "replay", "--until-seq", "20"]);
    assert!(out.contains("archived"), "{out}");

    // Archiving again is a no-op; the next segment follows on.
    let out = run_ok(
        dir.path(),
        &[
            "audit",
            "archive",
            "--to",
            &format!("file://{}", to.display()),
            "--until-seq",
            "48",
            "--segment-level",
            "4",
        ],
    );
    assert!(out.contains("up to seq 48"), "{out}");
    assert_eq!(segments(&to).len(), 3);
    let out = run_ok(
        dir.path(),
        &["audit", "verify", "--archive", to.to_str().unwrap()],
    );
    assert!(out.contains("in 3 segments"), "{out}");
}

/// An archived log (two segments of 16) and its archive directory.
async fn archived() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    sqlite_log(dir.path(), 6, 5).await;
    let to = archive_dir(dir.path());
    run_ok(
        dir.path(),
        &[
            "audit",
            "archive",
            "--to",
            to.to_str().unwrap(),
            "--until-seq",
            "32",
            "--segment-level",
            "4",
        ],
    );
    (dir, to)
}

const SEG1: &str = "keyward-segment-00000000000000000001-00000000000000000016.ndjson.zst";
const SEG2: &str = "keyward-segment-00000000000000000017-00000000000000000032.ndjson.zst";

#[tokio::test]
async fn segments_leave_out_the_hashes_a_reader_recomputes() {
    let (dir, to) = archived().await;
    let raw = zstd::decode_all(std::fs::read(to.join(SEG1)).unwrap().as_slice()).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let mut lines = text.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .contains("\"format\":\"keyward-segment/2\""),
        "{text}"
    );
    let events: Vec<&str> = lines.collect();
    assert_eq!(events.len(), 16);
    for l in &events {
        assert!(l.starts_with("{\"seq\":"), "{l}");
        assert!(!l.contains("\"prev_hash\""), "{l}");
        assert!(!l.contains("\"hash\""), "{l}");
    }
    let out = run_ok(
        dir.path(),
        &["audit", "verify", "--archive", to.to_str().unwrap()],
    );
    assert!(out.contains("in 2 segments of the archive"), "{out}");
}

/// Rewrites a format-2 segment as format 1 wrote it: every event line with its
/// `prev_hash` and `hash`, recomputed here from the line and the one before.
fn to_format_1(path: &Path) {
    rewrite_segment(path, |text| {
        let mut lines = text.lines();
        let manifest = lines.next().unwrap();
        let m: serde_json::Value = serde_json::from_str(manifest).unwrap();
        let mut prev: keyward_events::Hash32 =
            serde_json::from_value(m["keyward_segment"]["prev_hash"].clone()).unwrap();
        let mut out = manifest.replace("keyward-segment/2", "keyward-segment/1");
        out.push('\n');
        for l in lines {
            let open = l.strip_suffix('}').unwrap();
            let zero = format!(
                "{open},\"prev_hash\":\"{}\",\"hash\":\"{}\"}}",
                prev.to_hex(),
                keyward_events::Hash32::ZERO.to_hex()
            );
            let keyward_events::export::Line::Event { envelope, .. } =
                keyward_events::export::parse_line(&zero).unwrap()
            else {
                panic!("{l}")
            };
            let hash = envelope.compute_hash();
            out.push_str(&format!(
                "{open},\"prev_hash\":\"{}\",\"hash\":\"{}\"}}\n",
                prev.to_hex(),
                hash.to_hex()
            ));
            prev = hash;
        }
        out
    });
}

#[tokio::test]
async fn segments_of_format_1_still_verify_and_their_altered_lines_are_named() {
    let (dir, to) = archived().await;
    to_format_1(&to.join(SEG1));
    to_format_1(&to.join(SEG2));
    let out = run_ok(
        dir.path(),
        &["audit", "verify", "--archive", to.to_str().unwrap()],
    );
    assert!(out.contains("in 2 segments of the archive"), "{out}");
    rewrite_segment(&to.join(SEG2), |t| t.replacen("gpt-4o", "gpt-4x", 1));
    let out = run_fails(
        dir.path(),
        &["audit", "verify", "--archive", to.to_str().unwrap()],
    );
    assert!(
        out.contains(&format!("FAILED: the segment {SEG2}")),
        "{out}"
    );
    assert!(
        out.contains("the stored hash does not match the recomputed hash: the event was altered"),
        "{out}"
    );
}

#[tokio::test]
async fn a_line_given_hashes_of_its_own_in_format_2_is_checked_against_them() {
    let (dir, to) = archived().await;
    // A forged pair of hashes on one line: its prev_hash breaks the chain.
    rewrite_segment(&to.join(SEG2), |t| {
        let mut lines: Vec<String> = t.lines().map(str::to_owned).collect();
        let l = lines[3].strip_suffix('}').unwrap().to_owned();
        lines[3] = format!(
            "{l},\"prev_hash\":\"{}\",\"hash\":\"{}\"}}",
            "ab".repeat(32),
            "cd".repeat(32)
        );
        lines.join("\n") + "\n"
    });
    let out = run_fails(
        dir.path(),
        &["audit", "verify", "--archive", to.to_str().unwrap()],
    );
    assert!(
        out.contains(&format!("FAILED: the segment {SEG2}")),
        "{out}"
    );
    assert!(out.contains("the chain breaks"), "{out}");
}

#[tokio::test]
async fn an_altered_segment_is_named() {
    let (dir, to) = archived().await;
    rewrite_segment(&to.join(SEG2), |t| t.replacen("gpt-4o", "gpt-4x", 1));
    let out = run_fails(
        dir.path(),
        &["audit", "verify", "--archive", to.to_str().unwrap()],
    );
    assert!(
        out.contains(&format!("FAILED: the segment {SEG2}")),
        "{out}"
    );
    assert!(out.contains("altered"), "{out}");
    assert!(!out.contains(&format!("segment {SEG1}")), "{out}");
}

#[tokio::test]
async fn a_segment_left_out_is_named() {
    let (dir, to) = archived().await;
    std::fs::remove_file(to.join(SEG1)).unwrap();
    let out = run_fails(
        dir.path(),
        &["audit", "verify", "--archive", to.to_str().unwrap()],
    );
    assert!(
        out.contains(&format!("the segment {SEG1} (seqs 1 to 16) is missing")),
        "{out}"
    );
}

#[tokio::test]
async fn two_swapped_segments_are_named() {
    let (dir, to) = archived().await;
    let a = std::fs::read(to.join(SEG1)).unwrap();
    let b = std::fs::read(to.join(SEG2)).unwrap();
    std::fs::write(to.join(SEG1), b).unwrap();
    std::fs::write(to.join(SEG2), a).unwrap();
    let out = run_fails(
        dir.path(),
        &["audit", "verify", "--archive", to.to_str().unwrap()],
    );
    assert!(
        out.contains(&format!("the segment {SEG1} does not verify")),
        "{out}"
    );
    assert!(
        out.contains(&format!("the segment {SEG2} does not verify")),
        "{out}"
    );
    assert!(out.contains("renamed or swapped"), "{out}");
}

#[tokio::test]
async fn a_segment_signed_by_another_key_is_refused() {
    let (dir, to) = archived().await;
    let other = keyward_events::note::NoteSigner::generate("someone/else").unwrap();
    let out = run_fails(
        dir.path(),
        &[
            "audit",
            "verify",
            "--archive",
            to.to_str().unwrap(),
            "--public-key",
            &other.verifier().to_text(),
        ],
    );
    assert!(
        out.contains(&format!("the segment {SEG1} does not verify")),
        "{out}"
    );
    assert!(out.contains("checkpoint does not verify"), "{out}");
}

#[tokio::test]
async fn a_prune_without_a_verified_segment_is_refused_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    sqlite_log(dir.path(), 6, 5).await;
    let db = dir.path().join("keyward.db");
    let to = archive_dir(dir.path());
    let args = |extra: &[&'static str]| {
        let mut v: Vec<String> = [
            "audit",
            "archive",
            "--to",
            to.to_str().unwrap(),
            "--until-seq",
            "32",
            "--segment-level",
            "4",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    // Segments written and verified, nothing pruned.
    let a = args(&["--no-prune"]);
    let out = run_ok(
        dir.path(),
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(out.contains("nothing pruned"), "{out}");
    let before = counts(&db).await;
    assert_eq!(before.pruned, 0);
    assert_eq!(before.segments, 0);

    // One segment altered in the archive: the prune must not trust it.
    rewrite_segment(&to.join(SEG2), |t| t.replacen("10.0.0.7", "10.0.0.8", 1));
    let a = args(&[]);
    let out = run_fails(
        dir.path(),
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(out.contains(&format!("the segment {SEG2}")), "{out}");
    assert!(out.contains("Nothing was pruned"), "{out}");
    let after = counts(&db).await;
    assert_eq!(after.events, before.events);
    assert_eq!(after.usage, before.usage);
    assert_eq!(after.pruned, 0);
    assert_eq!(after.segments, 0);

    // A truncated segment (cut off mid-stream) is refused the same way.
    let bytes = std::fs::read(to.join(SEG1)).unwrap();
    std::fs::write(to.join(SEG1), &bytes[..bytes.len() / 2]).unwrap();
    let out = run_fails(
        dir.path(),
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(out.contains(&format!("the segment {SEG1}")), "{out}");
    assert_eq!(counts(&db).await.events, before.events);

    // With no checkpoint key the archive refuses before writing anything.
    let dir2 = tempfile::tempdir().unwrap();
    for side in ["", "-wal", "-shm"] {
        let from = dir.path().join(format!("keyward.db{side}"));
        if from.exists() {
            std::fs::copy(&from, dir2.path().join(format!("keyward.db{side}"))).unwrap();
        }
    }
    let out = run_fails(
        dir2.path(),
        &[
            "audit",
            "archive",
            "--to",
            dir2.path().join("a").to_str().unwrap(),
            "--until-seq",
            "32",
            "--segment-level",
            "4",
        ],
    );
    assert!(out.contains("no checkpoint key"), "{out}");
    assert!(segments(&dir2.path().join("a")).is_empty());
}

#[tokio::test]
async fn a_restarted_archive_resumes_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let before = sqlite_log(dir.path(), 6, 5).await;
    let db = dir.path().join("keyward.db");
    let to = archive_dir(dir.path());
    // A crash after the first segment was written but before it was recorded...
    run_ok(
        dir.path(),
        &[
            "audit",
            "archive",
            "--to",
            to.to_str().unwrap(),
            "--until-seq",
            "16",
            "--segment-level",
            "4",
            "--no-prune",
        ],
    );
    // ...and one in the middle of writing the second: a partial object is left.
    let partial = to.join(format!("{SEG2}.partial"));
    std::fs::write(&partial, b"(\xb5/\xfd half a segment").unwrap();
    assert_eq!(counts(&db).await.segments, 0);

    let out = run_ok(
        dir.path(),
        &[
            "audit",
            "archive",
            "--to",
            to.to_str().unwrap(),
            "--until-seq",
            "32",
            "--segment-level",
            "4",
        ],
    );
    assert!(out.contains("the archive covers up to seq 32"), "{out}");
    assert!(!partial.exists(), "the partial segment was left");
    assert_eq!(segments(&to), vec![SEG1.to_owned(), SEG2.to_owned()]);
    assert_eq!(counts(&db).await.segments, 2);
    run_ok(
        dir.path(),
        &["audit", "verify", "--archive", to.to_str().unwrap()],
    );
    let r = keyward::server::start(config_in(dir.path())).await.unwrap();
    assert_eq!(r.state.0.live.read().usage, before.usage);
    r.shutdown().await;
}

#[tokio::test]
async fn archive_refuses_while_serve_holds_the_sqlite_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let r = keyward::server::start(config_in(dir.path())).await.unwrap();
    activity(&r, 3, 5).await;
    let out = run_fails(
        dir.path(),
        &[
            "audit",
            "archive",
            "--to",
            archive_dir(dir.path()).to_str().unwrap(),
            "--until-seq",
            "16",
            "--segment-level",
            "4",
        ],
    );
    assert!(out.contains("`serve` is running"), "{out}");
    r.shutdown().await;
}

/// The binary on PostgreSQL: the database, master keys and checkpoint key from the
/// environment, as a deployment sets them.
fn keyward_pg(dir: &Path, url: &str, signer: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env("KEYWARD_DATABASE_URL", url)
        .env("KEYWARD_MASTER_KEYS", crate::nodes::MASTER_KEYS)
        .env("KEYWARD_CHECKPOINT_KEY", signer)
        .output()
        .unwrap()
}

#[tokio::test]
async fn postgres_archive_prunes_and_a_restart_keeps_the_counters_and_verifies() {
    let Some(db) = crate::pg::TestDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let r = keyward::server::start(crate::nodes::node_config(dir.path(), &db.url))
        .await
        .unwrap();
    activity(&r, 6, 5).await;
    let before = r.state.0.live.read().clone();
    r.shutdown().await;
    let count = async |sql: &str| -> i64 {
        let mut c = db.connect().await;
        sqlx::query(sql).fetch_one(&mut c).await.unwrap().get(0)
    };
    let events = count("SELECT count(*) FROM events").await;
    let signer = keyward_events::note::NoteSigner::generate("keyward/pg.test").unwrap();
    let signer = signer.to_text().as_str().to_owned();
    let to = archive_dir(dir.path());

    // Without a checkpoint key (none is generated on PostgreSQL): refused, nothing written.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "audit",
            "archive",
            "--to",
            to.to_str().unwrap(),
            "--until-seq",
            "32",
            "--segment-level",
            "4",
        ])
        .env("KEYWARD_DATABASE_URL", &db.url)
        .env("KEYWARD_MASTER_KEYS", crate::nodes::MASTER_KEYS)
        .env_remove("KEYWARD_CHECKPOINT_KEY")
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("no checkpoint key"), "{}", stderr(&o));
    assert!(segments(&to).is_empty());

    let o = keyward_pg(
        dir.path(),
        &db.url,
        &signer,
        &[
            "audit",
            "archive",
            "--to",
            to.to_str().unwrap(),
            "--until-seq",
            "32",
            "--segment-level",
            "4",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(segments(&to), vec![SEG1.to_owned(), SEG2.to_owned()]);
    let pruned = count("SELECT count(*) FROM pruned_hashes").await;
    assert!(pruned > 0);
    assert_eq!(
        count("SELECT count(*) FROM events WHERE seq <= 32 AND type IN ('key.used', 'key.denied')")
            .await,
        0
    );
    assert_eq!(
        count("SELECT count(*) FROM events").await,
        events - pruned + 2
    );

    // The trigger on PostgreSQL: lifecycle and unarchived usage rows stay.
    let mut c = db.connect().await;
    for sql in [
        "DELETE FROM events WHERE type = 'user.created'",
        "DELETE FROM events WHERE seq > 32 AND type = 'key.used'",
        "UPDATE events SET actor = 'x' WHERE seq = 1",
        "DELETE FROM pruned_hashes",
        "DELETE FROM archived_segments",
    ] {
        let e = sqlx::query(sql).execute(&mut c).await.unwrap_err();
        assert!(
            e.to_string().contains("append-only") || e.to_string().contains("insert-only"),
            "{sql}: {e}"
        );
    }
    drop(c);

    // A restart from the archive's snapshot: the same keys and counters.
    let r = keyward::server::start(crate::nodes::node_config(dir.path(), &db.url))
        .await
        .unwrap();
    assert!(r.report.snapshot.is_some_and(|h| h.seq >= 32));
    let now = r.state.0.live.read().clone();
    assert_eq!(now.keys, before.keys);
    assert_eq!(now.usage, before.usage);
    // Usage goes on; a new event of a pruned usage stream takes a version never used.
    activity(&r, 1, 2).await;
    r.shutdown().await;

    let o = keyward_pg(dir.path(), &db.url, &signer, &["audit", "verify"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let o = keyward_pg(
        dir.path(),
        &db.url,
        &signer,
        &["audit", "verify", "--archive", to.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("in 2 segments"), "{}", stdout(&o));

    std::fs::remove_file(to.join(SEG2)).unwrap();
    let o = keyward_pg(
        dir.path(),
        &db.url,
        &signer,
        &["audit", "verify", "--archive", to.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains(&format!("the segment {SEG2} (seqs 17 to 32) is missing")));
}

/// A moto S3 server (`.venv/bin/moto_server`, which scripts/test installs) on a loopback
/// port of its own, stopped on drop.
struct Moto {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    async fn start_or_skip(test: &str) -> Option<Moto> {
        let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
        if !bin.exists() {
            assert!(
                !crate::skip::ci(),
                "{} is missing under CI: scripts/test installs it",
                bin.display()
            );
            crate::skip::skipped(
                test,
                &format!(
                    "{} is missing; run scripts/test to install it",
                    bin.display()
                ),
            );
            return None;
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = std::process::Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if client.get(&moto.endpoint).send().await.is_ok() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not answer on {} within 60 s",
                moto.endpoint
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Some(moto)
    }

    fn env(&self, c: &mut std::process::Command) {
        c.env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ALLOW_HTTP", "true");
    }

    fn keyward(&self, dir: &Path, args: &[&str]) -> std::process::Output {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"));
        c.arg("--data-dir")
            .arg(dir)
            .args(args)
            .env_remove("KEYWARD_DATABASE_URL")
            .env_remove("KEYWARD_MASTER_KEYS");
        self.env(&mut c);
        c.output().unwrap()
    }
}

#[tokio::test]
async fn s3_archive_against_a_real_s3_server_verifies_and_names_a_missing_segment() {
    let Some(moto) = Moto::start_or_skip(
        "archive::s3_archive_against_a_real_s3_server_verifies_and_names_a_missing_segment",
    )
    .await
    else {
        return;
    };
    let client = reqwest::Client::new();
    let created = client
        .put(format!("{}/keyward-archive", moto.endpoint))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success(), "{}", created.status());

    let dir = tempfile::tempdir().unwrap();
    let before = sqlite_log(dir.path(), 6, 5).await;
    let db = dir.path().join("keyward.db");
    let url = "s3://keyward-archive/logs/prod";
    let o = moto.keyward(
        dir.path(),
        &[
            "audit",
            "archive",
            "--to",
            url,
            "--until-seq",
            "32",
            "--segment-level",
            "4",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(counts(&db).await.segments, 2);
    // The objects are where the URL says, under their names, and no partial one is left.
    let listing = client
        .get(format!(
            "{}/keyward-archive?list-type=2&prefix=logs/prod/",
            moto.endpoint
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listing.contains(&format!("logs/prod/{SEG1}")), "{listing}");
    assert!(listing.contains(&format!("logs/prod/{SEG2}")), "{listing}");
    assert!(!listing.contains(".partial"), "{listing}");

    let o = moto.keyward(dir.path(), &["audit", "verify", "--archive", url]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("in 2 segments"), "{}", stdout(&o));

    let r = keyward::server::start(config_in(dir.path())).await.unwrap();
    assert_eq!(r.state.0.live.read().usage, before.usage);
    r.shutdown().await;

    // Removed with a signed request, as an operator's tool would.
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&moto.endpoint)
        .with_bucket_name("keyward-archive")
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .with_region("us-east-1")
        .with_allow_http(true)
        .build()
        .unwrap();
    object_store::ObjectStore::delete(
        &s3,
        &object_store::path::Path::from(format!("logs/prod/{SEG1}")),
    )
    .await
    .unwrap();
    let o = moto.keyward(dir.path(), &["audit", "verify", "--archive", url]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains(&format!("the segment {SEG1} (seqs 1 to 16) is missing")),
        "{}",
        stdout(&o)
    );
}

#[tokio::test]
async fn serve_archives_on_a_schedule_without_stopping_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let to = archive_dir(dir.path());
    let mut c = config_in(dir.path());
    c.archive = Some(keyward::config::ArchiveSchedule {
        to: to.to_str().unwrap().to_owned(),
        retain: std::time::Duration::from_millis(1),
        interval: std::time::Duration::from_millis(200),
        level: 4,
    });
    let r = keyward::server::start(c.clone()).await.unwrap();
    activity(&r, 6, 5).await;
    let db = dir.path().join("keyward.db");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while counts(&db).await.segments < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "serve archived nothing within 60 s: {:?}",
            segments(&to)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The service goes on: usage still lands, and the live counters never lost any.
    activity(&r, 1, 2).await;
    let live = r.state.0.live.read().clone();
    let usage_in_live: u64 = live.usage.iter().map(|(_, t)| t.requests).sum();
    // 6 rounds of 5 uses, then one of 2: every key.used counted, pruned or not.
    assert_eq!(usage_in_live, 6 * 5 + 2);
    r.shutdown().await;
    let mut conn = raw_sqlite(&db).await;
    let actor: String =
        sqlx::query_scalar("SELECT actor FROM ev WHERE type = 'audit.archived' LIMIT 1")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(actor, "system");
    drop(conn);

    // A restart folds from a snapshot at or after the prune: the same counters.
    let r = keyward::server::start(c).await.unwrap();
    assert_eq!(r.state.0.live.read().usage, live.usage);
    assert_eq!(r.state.0.live.read().keys, live.keys);
    r.shutdown().await;
    let out = run_ok(
        dir.path(),
        &["audit", "verify", "--archive", to.to_str().unwrap()],
    );
    assert!(out.starts_with("ok:"), "{out}");
}

#[tokio::test]
async fn postgres_archive_lock_lets_one_node_at_a_time_archive() {
    let Some(db) = crate::pg::TestDb::create().await else {
        return;
    };
    let a = keyward::store::postgres::PostgresStore::connect(&db.url)
        .await
        .unwrap();
    let b = keyward::store::postgres::PostgresStore::connect(&db.url)
        .await
        .unwrap();
    let held = a
        .try_archive_lock()
        .await
        .unwrap()
        .expect("the first node takes it");
    assert!(
        b.try_archive_lock().await.unwrap().is_none(),
        "two nodes archived at once"
    );
    held.release().await;
    let again = b.try_archive_lock().await.unwrap();
    assert!(again.is_some(), "the lock was not released");
    again.unwrap().release().await;
}

#[tokio::test]
async fn a_usage_stream_emptied_by_a_prune_never_reuses_a_version() {
    let dir = tempfile::tempdir().unwrap();
    sqlite_log(dir.path(), 6, 5).await;
    let db = dir.path().join("keyward.db");
    // The first key's usage stream lies wholly in the first segment.
    let mut c = raw_sqlite(&db).await;
    let (stream, top): (String, i64) = sqlx::query_as(
        "SELECT stream, max(stream_version) FROM ev WHERE stream LIKE 'usage:%' \
         GROUP BY stream ORDER BY min(seq) LIMIT 1",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    let last_seq: i64 = sqlx::query_scalar("SELECT max(seq) FROM ev WHERE stream = ?")
        .bind(&stream)
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert!(
        last_seq <= 16,
        "the fixture changed: {stream} ends at seq {last_seq}"
    );
    drop(c);
    run_ok(
        dir.path(),
        &[
            "audit",
            "archive",
            "--to",
            archive_dir(dir.path()).to_str().unwrap(),
            "--until-seq",
            "16",
            "--segment-level",
            "4",
        ],
    );
    let mut c = raw_sqlite(&db).await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM ev WHERE stream = ?")
        .bind(&stream)
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(left, 0, "the stream was not emptied by the prune");
    drop(c);

    let r = keyward::server::start(config_in(dir.path())).await.unwrap();
    let key_id = stream.strip_prefix("usage:").unwrap().to_owned();
    let used = keyward_events::Event::KeyUsed(KeyUsed {
        key_id: key_id.clone(),
        provider_id: "prv_x".into(),
        model: Some("gpt-4o".into()),
        endpoint: "/v1/chat/completions".into(),
        outcome: UsageOutcome::Success,
        status: 200,
        latency_us: 1,
        upstream_latency_us: None,
        prompt_tokens: 1,
        completion_tokens: 1,
        stream: false,
        client_ip: None,
    });
    let env = r
        .state
        .0
        .commands
        .appender
        .submit(vec![NewEvent::new(
            &used,
            ExpectedVersion::Any,
            chrono::Utc::now(),
            key_id,
            None,
        )])
        .await
        .unwrap();
    assert_eq!(env[0].stream_version, top as u64 + 1);
    r.shutdown().await;
}

#[tokio::test]
async fn archive_before_a_time_takes_the_whole_segments_that_occurred_before_it() {
    let dir = tempfile::tempdir().unwrap();
    sqlite_log(dir.path(), 6, 5).await;
    let to = archive_dir(dir.path());
    let archive = |before: &str| {
        run_ok(
            dir.path(),
            &[
                "audit",
                "archive",
                "--to",
                to.to_str().unwrap(),
                "--before",
                before,
                "--segment-level",
                "4",
            ],
        )
    };
    let out = archive("2000-01-01T00:00:00Z");
    assert!(out.contains("nothing to prune"), "{out}");
    assert!(segments(&to).is_empty());
    let out = archive("2999-01-01T00:00:00Z");
    let events = counts(&dir.path().join("keyward.db")).await;
    assert!(out.contains("the archive covers up to seq 48"), "{out}");
    assert_eq!(events.segments, 3);
    let o = keyward(
        dir.path(),
        &[
            "audit",
            "archive",
            "--to",
            to.to_str().unwrap(),
            "--segment-level",
            "4",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// Every seq up to the head is in the log or kept as a pruned hash, and every pruned seq
/// lies in a recorded segment: no event lost, whatever was cut short.
async fn no_event_lost(db: &Path) {
    let mut c = raw_sqlite(db).await;
    let (head, events, pruned, outside): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT max(seq) FROM events), (SELECT count(*) FROM events), \
         (SELECT count(*) FROM pruned_hashes), \
         (SELECT count(*) FROM pruned_hashes p WHERE NOT EXISTS (SELECT 1 FROM archived_segments a \
            WHERE p.seq BETWEEN a.first_seq AND a.last_seq))",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(events + pruned, head, "events were lost");
    assert_eq!(outside, 0, "a pruned seq lies in no recorded segment");
}

#[tokio::test]
async fn kill_9_during_an_archive_loses_no_event_and_a_rerun_completes_it() {
    let dir = tempfile::tempdir().unwrap();
    let before = sqlite_log(dir.path(), 20, 6).await;
    let db = dir.path().join("keyward.db");
    let to = archive_dir(dir.path());
    let args = [
        "--data-dir",
        dir.path().to_str().unwrap(),
        "audit",
        "archive",
        "--to",
        to.to_str().unwrap(),
        "--until-seq",
        "160",
        "--segment-level",
        "4",
    ];
    let mut kills = 0;
    for delay_ms in [5u64, 20, 40, 60, 80, 110, 140, 170, 200, 250, 300, 400] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
            .args(args)
            .env_remove("KEYWARD_DATABASE_URL")
            .env_remove("KEYWARD_MASTER_KEYS")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
        no_event_lost(&db).await;
        eprintln!(
            "after {delay_ms} ms: {} segments recorded, {} objects",
            counts(&db).await.segments,
            segments(&to).len()
        );
    }
    assert!(kills > 0, "no run was cut short: the test proves nothing");
    // A run to the end completes what the killed ones left.
    let out = run_ok(dir.path(), &args[2..]);
    assert!(out.contains("the archive covers up to seq 160"), "{out}");
    no_event_lost(&db).await;
    assert_eq!(counts(&db).await.segments, 10);
    assert!(
        segments(&to).iter().all(|n| !n.ends_with(".partial")),
        "{:?}",
        segments(&to)
    );
    run_ok(
        dir.path(),
        &["audit", "verify", "--archive", to.to_str().unwrap()],
    );
    let r = keyward::server::start(config_in(dir.path())).await.unwrap();
    assert_eq!(r.state.0.live.read().usage, before.usage);
    assert_eq!(r.state.0.live.read().keys, before.keys);
    r.shutdown().await;
}

/// `GET /api/v1/keys?as_of=T` from the running service, as the admin.
async fn keys_as_of(
    r: &keyward::server::Running,
    dir: &Path,
    t: chrono::DateTime<chrono::Utc>,
) -> (axum::http::StatusCode, serde_json::Value) {
    let api = crate::api::Api {
        app: keyward::app(r.state.clone()),
    };
    let admin = std::fs::read_to_string(dir.join("initial-admin-key")).unwrap();
    api.get(
        &format!(
            "/api/v1/keys?as_of={}",
            t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .replace('+', "%2B")
        ),
        admin.trim(),
    )
    .await
}

#[tokio::test]
async fn as_of_after_the_pruned_range_starts_from_the_archive_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    // More than two timeline blocks (256 seqs each), so that a time after the pruned
    // range has a block boundary below it and above the snapshot.
    let before = sqlite_log(dir.path(), 30, 20).await;
    let db = dir.path().join("keyward.db");
    let head: i64 = sqlx::query_scalar("SELECT max(seq) FROM events")
        .fetch_one(&mut raw_sqlite(&db).await)
        .await
        .unwrap();
    assert!(head > 600, "{head}");
    let time_of = async |seq: i64| {
        let us: i64 = sqlx::query_scalar("SELECT occurred_at FROM events WHERE seq = ?")
            .bind(seq)
            .fetch_one(&mut raw_sqlite(&db).await)
            .await
            .unwrap();
        chrono::DateTime::from_timestamp_micros(us).unwrap()
    };
    let late = time_of(head).await;
    let early = time_of(100).await;
    run_ok(
        dir.path(),
        &[
            "audit",
            "archive",
            "--to",
            archive_dir(dir.path()).to_str().unwrap(),
            "--until-seq",
            "256",
            "--segment-level",
            "8",
        ],
    );
    assert!(keyward::snapshot::kept(dir.path()).contains(&256));
    let r = keyward::server::start(config_in(dir.path())).await.unwrap();
    let (status, body) = keys_as_of(&r, dir.path(), late).await;
    assert_eq!(status, axum::http::StatusCode::OK, "{body}");
    assert_eq!(
        body["keys"].as_array().map(Vec::len),
        Some(before.keys.iter().count()),
        "{body}"
    );
    // The counters as of then include the pruned usage: from the archive's snapshot.
    for k in body["keys"].as_array().unwrap() {
        if k["name"].as_str().is_some_and(|n| n.starts_with("key ")) {
            assert_eq!(k["usage"]["requests"], 20, "{k}");
        }
    }
    let (status, body) = keys_as_of(&r, dir.path(), early).await;
    assert_eq!(status, axum::http::StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "archived", "{body}");
    r.shutdown().await;
}

#[tokio::test]
async fn the_archive_verifies_offline_with_the_public_key_alone() {
    let (dir, to) = archived().await;
    let key = run_ok(dir.path(), &["audit", "public-key"]);
    let key = key.trim();
    // No database: another data dir, empty.
    let elsewhere = tempfile::tempdir().unwrap();
    let offline = |to: &Path| {
        keyward(
            elsewhere.path(),
            &[
                "audit",
                "verify",
                "--archive",
                to.to_str().unwrap(),
                "--offline",
                "--public-key",
                key,
            ],
        )
    };
    let o = offline(&to);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("in 2 segments"), "{}", stdout(&o));
    assert!(stdout(&o).contains("seqs 1 to 32"), "{}", stdout(&o));
    assert!(!elsewhere.path().join("keyward.db").exists());

    // A segment rewritten and re-hashed consistently inside (a forged segment) still fails:
    // its root no longer proves into its signed checkpoint. (Written as format 1, whose
    // lines carry their hashes, to forge them line by line.)
    to_format_1(&to.join(SEG1));
    rewrite_segment(&to.join(SEG1), |t| {
        let mut lines: Vec<String> = t.lines().map(str::to_owned).collect();
        let mut events: Vec<keyward_events::Envelope> = lines[1..]
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        events[3].actor = "usr_01J0000000000000000FORGED".into();
        let mut prev = events[0].prev_hash;
        let mut tree = keyward_events::merkle::CompactRange::new();
        for e in &mut events {
            e.prev_hash = prev;
            e.hash = e.compute_hash();
            prev = e.hash;
            tree.push(keyward_events::merkle::leaf_hash(&e.hash));
        }
        let mut m: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        m["keyward_segment"]["root"] = serde_json::json!(tree.root());
        m["keyward_segment"]["last_hash"] = serde_json::json!(prev);
        lines[0] = m.to_string();
        for (l, e) in lines[1..].iter_mut().zip(&events) {
            *l = serde_json::to_string(e).unwrap();
        }
        lines.join("\n") + "\n"
    });
    let o = offline(&to);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains(&format!("the segment {SEG1} does not verify")),
        "{out}"
    );
    assert!(
        out.contains("does not prove into its signed checkpoint"),
        "{out}"
    );
    // With the store it is refused too.
    let o = keyward(
        dir.path(),
        &["audit", "verify", "--archive", to.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
}

/// When the last event of the log is a usage event at the end of a segment, the prune
/// deletes the head itself: the next event (`audit.archived`) must still chain onto it and
/// take the next seq, not one that was handed out already.
#[tokio::test]
async fn pruning_the_head_itself_keeps_the_chain_and_the_seqs() {
    let dir = tempfile::tempdir().unwrap();
    // One key and no use yet: fewer than 16 events, so that the first segment ends at
    // the head once usage events fill it.
    sqlite_log(dir.path(), 1, 1).await;
    let db = dir.path().join("keyward.db");
    {
        let store = keyward::store::open(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let head = store.head().await.unwrap().seq;
        let key_id: String = sqlx::query_scalar("SELECT actor FROM ev WHERE type = 'key.used'")
            .fetch_one(&mut raw_sqlite(&db).await)
            .await
            .unwrap();
        assert!(head < 16, "{head}");
        let fill = 16 - head;
        let units = (0..fill)
            .map(|j| {
                vec![NewEvent::new(
                    &keyward_events::Event::KeyUsed(KeyUsed {
                        key_id: key_id.clone(),
                        provider_id: "prv_x".into(),
                        model: None,
                        endpoint: "/v1/chat/completions".into(),
                        outcome: UsageOutcome::Success,
                        status: 200,
                        latency_us: j,
                        upstream_latency_us: None,
                        prompt_tokens: 0,
                        completion_tokens: 0,
                        stream: false,
                        client_ip: None,
                    }),
                    ExpectedVersion::Any,
                    chrono::Utc::now(),
                    key_id.clone(),
                    None,
                )]
            })
            .collect();
        for r in store.append(units).await.unwrap() {
            r.unwrap();
        }
    }
    let head = counts_head(&db).await;
    assert_eq!(head, 16);
    let to = archive_dir(dir.path());
    run_ok(
        dir.path(),
        &[
            "audit",
            "archive",
            "--to",
            to.to_str().unwrap(),
            "--until-seq",
            &head.to_string(),
            "--segment-level",
            "4",
        ],
    );
    let mut c = raw_sqlite(&db).await;
    let (archived_seq, pruned_head): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT seq FROM ev WHERE type = 'audit.archived'), \
         (SELECT count(*) FROM pruned_hashes WHERE seq = ?1)",
    )
    .bind(head)
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(pruned_head, 1, "the head was a usage event of the segment");
    assert_eq!(archived_seq, head + 1);
    drop(c);
    let out = run_ok(
        dir.path(),
        &["audit", "verify", "--archive", to.to_str().unwrap()],
    );
    assert!(!out.is_empty());
}

async fn counts_head(db: &Path) -> i64 {
    sqlx::query_scalar("SELECT max(seq) FROM events")
        .fetch_one(&mut raw_sqlite(db).await)
        .await
        .unwrap()
}
