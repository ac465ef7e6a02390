//! The Merkle tree the store keeps (issue 17): proofs from the API verify against roots
//! computed here from the exported event hashes alone; a proof off by one hash or one
//! level fails; every out-of-range value is an exact 400; the stored nodes agree with
//! the events after a restart, after a backfill of a log that predates the tree and
//! across PostgreSQL nodes; tampering with a stored node is caught by `verify_chain`.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;

use axum::http::StatusCode;
use chrono::{TimeZone, Utc};
use keyward::store::postgres::PostgresStore;
use keyward::store::sqlite::SqliteStore;
use keyward::store::{EventStore, tree};
use keyward_events::merkle::{self, NodeId, verify_consistency, verify_inclusion};
use keyward_events::{Event, ExpectedVersion, Hash32, KeyUsed, NewEvent, UsageOutcome};
use serde_json::Value;
use sqlx::ConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;

use crate::api::*;
use crate::common::*;
use crate::pg::TestDb;

// ---- an independent tree: RFC 6962's MTH, straight from its definition ----

fn sha256(parts: &[&[u8]]) -> Hash32 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    Hash32(h.finalize().into())
}

fn leaf(event_hash: &Hash32) -> Hash32 {
    sha256(&[&[0], &event_hash.0])
}

fn mth(leaves: &[Hash32]) -> Hash32 {
    match leaves.len() {
        0 => sha256(&[]),
        1 => leaves[0],
        n => {
            let mut k = 1;
            while k * 2 < n {
                k *= 2;
            }
            let (l, r) = (mth(&leaves[..k]), mth(&leaves[k..]));
            sha256(&[&[1], &l.0, &r.0])
        }
    }
}

fn hex(v: &Value) -> Hash32 {
    Hash32::from_hex(v.as_str().unwrap()).unwrap()
}

fn hexes(v: &Value) -> Vec<Hash32> {
    v.as_array().unwrap().iter().map(hex).collect()
}

// ---- fixtures ----

fn key_used(n: u64) -> NewEvent {
    let key = format!("key_{}", n % 3);
    let e = Event::KeyUsed(KeyUsed {
        key_id: key.clone(),
        provider_id: "prv_1".into(),
        model: Some("gpt-4o-mini".into()),
        endpoint: "/v1/chat/completions".into(),
        outcome: UsageOutcome::Success,
        status: 200,
        latency_us: 1000 + n,
        upstream_latency_us: Some(900),
        prompt_tokens: 12,
        completion_tokens: 34,
        stream: false,
        client_ip: Some("10.0.0.1".into()),
    });
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
    NewEvent::new(&e, ExpectedVersion::Any, at, key, Some(format!("req-{n}")))
}

/// Appends `n` events in batches of `batch`.
async fn append(store: &dyn EventStore, n: u64, batch: u64) {
    let mut done = 0;
    while done < n {
        let k = batch.min(n - done);
        let units = (done..done + k).map(|i| vec![key_used(i)]).collect();
        for r in store.append(units).await.unwrap() {
            r.unwrap();
        }
        done += k;
    }
}

async fn event_hashes(store: &dyn EventStore) -> Vec<Hash32> {
    store
        .read_from(0, usize::MAX)
        .await
        .unwrap()
        .iter()
        .map(|e| e.hash)
        .collect()
}

/// Every stored node must be the independent tree's, and every node the store should
/// keep must be there.
async fn assert_stored_nodes_agree(store: &dyn EventStore) {
    let hashes = event_hashes(store).await;
    let leaves: Vec<Hash32> = hashes.iter().map(leaf).collect();
    let n = leaves.len() as u64;
    assert_eq!(store.tree_size().await.unwrap(), n);
    let stored = store.stored_tree_nodes(0, n).await.unwrap();
    let mut want = 0;
    for (level, lo, hi) in tree::stored_within(0, n) {
        for index in lo..hi {
            let id = NodeId { level, index };
            let expected = mth(&leaves[id.start() as usize..id.end() as usize]);
            assert_eq!(stored.get(&id), Some(&expected), "{id:?} of {n}");
            want += 1;
        }
    }
    assert_eq!(stored.len(), want);
    for size in [0, 1, n / 3, n / 2, n] {
        let root = keyward::audit::tree_root(store, size).await.unwrap();
        assert_eq!(root, mth(&leaves[..size as usize]), "root of {size}");
    }
}

// ---- the API, over SQLite ----

#[tokio::test]
async fn proofs_from_the_api_verify_against_roots_computed_from_the_export() {
    let t = TestApp::start().await;
    let api = Api::new(&t);
    let admin = t.admin_secret();
    let store = t.running.state.0.store.clone();
    let head = store.head().await.unwrap().seq;
    append(store.as_ref(), 40u64.saturating_sub(head), 7).await;

    // The event hashes as anyone with an export has them.
    let export = api.app.clone();
    let res = tower::ServiceExt::oneshot(
        export,
        axum::http::Request::get("/api/v1/audit/export")
            .header("authorization", format!("Bearer {admin}"))
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let leaves: Vec<Hash32> = String::from_utf8(body.to_vec())
        .unwrap()
        .lines()
        .map(|l| leaf(&hex(&serde_json::from_str::<Value>(l).unwrap()["hash"])))
        .collect();
    assert!(leaves.len() >= 40);
    let leaves = &leaves[..40];

    for size in 1..=40u64 {
        let root = mth(&leaves[..size as usize]);
        for seq in 1..=size {
            let (s, p) = api
                .get(
                    &format!("/api/v1/audit/proof/inclusion?seq={seq}&tree_size={size}"),
                    &admin,
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{p}");
            assert_eq!(p["seq"], seq);
            assert_eq!(p["tree_size"], size);
            assert_eq!(p["leaf_index"], seq - 1);
            let leaf_hash = hex(&p["leaf_hash"]);
            assert_eq!(leaf_hash, leaves[seq as usize - 1]);
            assert_eq!(leaf(&hex(&p["event_hash"])), leaf_hash);
            assert_eq!(hex(&p["root"]), root, "root of {size}");
            let proof = hexes(&p["proof"]);
            verify_inclusion(&leaf_hash, seq - 1, size, &proof, &root).unwrap();
            off_by_one_fails_inclusion(&leaf_hash, seq - 1, size, &proof, &root);
        }
        for from in 1..=size {
            let (s, p) = api
                .get(
                    &format!("/api/v1/audit/proof/consistency?from={from}&to={size}"),
                    &admin,
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{p}");
            assert_eq!(
                (p["from"].as_u64(), p["to"].as_u64()),
                (Some(from), Some(size))
            );
            let old = mth(&leaves[..from as usize]);
            assert_eq!(hex(&p["from_root"]), old);
            assert_eq!(hex(&p["to_root"]), root);
            let proof = hexes(&p["proof"]);
            verify_consistency(from, size, &old, &root, &proof).unwrap();
            off_by_one_fails_consistency(from, size, &old, &root, &proof);
        }
    }

    // Without a size, the head is used, and said.
    let now = store.head().await.unwrap().seq;
    let (s, p) = api.get("/api/v1/audit/proof/inclusion?seq=3", &admin).await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["tree_size"], now);
    // Each proof request is recorded: one audit.read, after the proof was made.
    let now = store.head().await.unwrap().seq;
    let last = store.read_from(now - 1, 1).await.unwrap();
    assert_eq!(last[0].event_type, "audit.read");
    let (s, p) = api
        .get("/api/v1/audit/proof/consistency?from=3", &admin)
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["to"], now);
    assert_eq!(store.head().await.unwrap().seq, now + 1);
}

fn off_by_one_fails_inclusion(
    leaf_hash: &Hash32,
    index: u64,
    size: u64,
    proof: &[Hash32],
    root: &Hash32,
) {
    for i in 0..proof.len() {
        let mut bad = proof.to_vec();
        bad[i].0[7] ^= 0x10;
        assert!(verify_inclusion(leaf_hash, index, size, &bad, root).is_err());
    }
    if let Some((_, shorter)) = proof.split_last() {
        // One level short.
        assert!(verify_inclusion(leaf_hash, index, size, shorter, root).is_err());
    }
    let mut longer = proof.to_vec();
    longer.push(*root);
    assert!(verify_inclusion(leaf_hash, index, size, &longer, root).is_err());
    if size > 1 {
        let other = (index + 1) % size;
        assert!(verify_inclusion(leaf_hash, other, size, proof, root).is_err());
    }
}

fn off_by_one_fails_consistency(from: u64, to: u64, old: &Hash32, new: &Hash32, proof: &[Hash32]) {
    for i in 0..proof.len() {
        let mut bad = proof.to_vec();
        bad[i].0[0] ^= 1;
        assert!(verify_consistency(from, to, old, new, &bad).is_err());
    }
    if let Some((_, shorter)) = proof.split_last() {
        assert!(verify_consistency(from, to, old, new, shorter).is_err());
    }
    if from < to {
        assert!(verify_consistency(from + 1, to, old, new, proof).is_err());
        assert!(verify_consistency(from, to, new, old, proof).is_err());
    }
}

#[tokio::test]
async fn out_of_range_and_malformed_proof_requests_are_exact_400s() {
    let t = TestApp::start().await;
    let api = Api::new(&t);
    let admin = t.admin_secret();
    let head = t.running.state.0.store.head().await.unwrap().seq;
    assert!(head >= 2);
    let over = head + 1;
    let inc = "/api/v1/audit/proof/inclusion";
    let con = "/api/v1/audit/proof/consistency";
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!("{inc}?seq=0&tree_size={head}"),
            "out_of_range",
            "seq",
        ),
        (format!("{inc}?seq=0"), "out_of_range", "seq"),
        (
            format!("{inc}?seq={over}&tree_size={head}"),
            "out_of_range",
            "seq",
        ),
        (format!("{inc}?seq=2&tree_size=1"), "out_of_range", "seq"),
        (format!("{inc}?seq={over}"), "out_of_range", "seq"),
        (
            format!("{inc}?seq=1&tree_size={over}"),
            "out_of_range",
            "tree_size",
        ),
        (
            format!("{inc}?seq=1&tree_size=0"),
            "out_of_range",
            "tree_size",
        ),
        (
            format!("{inc}?seq=1&tree_size=18446744073709551615"),
            "out_of_range",
            "tree_size",
        ),
        (format!("{inc}?tree_size={head}"), "bad_request", "seq"),
        (format!("{inc}?seq=abc"), "bad_request", "seq"),
        (format!("{inc}?seq=-1"), "bad_request", "seq"),
        (
            format!("{inc}?seq=1&tree_size=x"),
            "bad_request",
            "tree_size",
        ),
        (
            format!("{inc}?seq=18446744073709551616"),
            "bad_request",
            "seq",
        ),
        (format!("{con}?from=0&to={head}"), "out_of_range", "from"),
        (format!("{con}?from=2&to=1"), "out_of_range", "from"),
        (format!("{con}?from=1&to={over}"), "out_of_range", "to"),
        (format!("{con}?from={over}"), "out_of_range", "from"),
        (format!("{con}?to={head}"), "bad_request", "from"),
        (format!("{con}?from=1&to=two"), "bad_request", "to"),
    ];
    for (path, code, field) in cases {
        let got = api.get(&path, &admin).await;
        assert_problem(&got, StatusCode::BAD_REQUEST, code, Some(field));
        assert!(
            got.1["detail"].as_str().unwrap().contains(field),
            "{path}: {}",
            got.1
        );
    }
    // An unknown parameter is refused rather than ignored.
    let got = api.get(&format!("{inc}?seq=1&size=2"), &admin).await;
    assert_problem(&got, StatusCode::BAD_REQUEST, "bad_request", Some("size"));

    // Without credentials: 401 whatever the parameters; a user: 403.
    let anon = api
        .call(axum::http::Method::GET, &format!("{inc}?seq=0"), None, None)
        .await;
    assert_problem(&anon, StatusCode::UNAUTHORIZED, "unauthorized", None);
    let (_, user_key) = user_with_full_key(&t, "merkle-reader").await;
    for path in [format!("{inc}?seq=1"), format!("{con}?from=1")] {
        let got = api.get(&path, &user_key).await;
        assert_problem(&got, StatusCode::FORBIDDEN, "forbidden", None);
    }
}

// ---- the store, on both backends ----

struct Harness {
    store: Arc<dyn EventStore>,
    backend: Backend,
}

enum Backend {
    Sqlite {
        _dir: tempfile::TempDir,
        path: PathBuf,
    },
    Postgres {
        db: TestDb,
    },
}

impl Harness {
    async fn sqlite() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let store = SqliteStore::open(&path).await.unwrap();
        Harness {
            store: Arc::new(store),
            backend: Backend::Sqlite { _dir: dir, path },
        }
    }

    async fn postgres() -> Option<Harness> {
        let db = TestDb::create().await?;
        let store = PostgresStore::connect(&db.url).await.unwrap();
        Some(Harness {
            store: Arc::new(store),
            backend: Backend::Postgres { db },
        })
    }

    /// Another store on the same database: a restart, or another node.
    async fn open_again(&self) -> Arc<dyn EventStore> {
        match &self.backend {
            Backend::Sqlite { path, .. } => Arc::new(SqliteStore::open(path).await.unwrap()),
            Backend::Postgres { db } => Arc::new(PostgresStore::connect(&db.url).await.unwrap()),
        }
    }

    async fn reopen(&mut self) {
        self.store = self.open_again().await;
    }

    /// Runs SQL statements over a connection of its own, bypassing the store.
    async fn raw(&self, sqls: &[&str]) -> Result<(), sqlx::Error> {
        match &self.backend {
            Backend::Sqlite { path, .. } => {
                let mut conn = SqliteConnectOptions::new().filename(path).connect().await?;
                for sql in sqls {
                    sqlx::query(sql).execute(&mut conn).await?;
                }
            }
            Backend::Postgres { db } => {
                let mut conn = db.connect().await;
                for sql in sqls {
                    sqlx::query(sql).execute(&mut conn).await?;
                }
            }
        }
        Ok(())
    }

    fn is_sqlite(&self) -> bool {
        matches!(self.backend, Backend::Sqlite { .. })
    }

    /// Drops the tree's append-only triggers, as someone with write access to the
    /// database could, then runs `sql`.
    async fn tamper(&self, sql: &str) {
        let drops: &[&str] = if self.is_sqlite() {
            &[
                "DROP TRIGGER IF EXISTS merkle_nodes_no_update",
                "DROP TRIGGER IF EXISTS merkle_nodes_no_delete",
            ]
        } else {
            &[
                "DROP TRIGGER IF EXISTS merkle_nodes_no_update ON merkle_nodes",
                "DROP TRIGGER IF EXISTS merkle_nodes_no_delete ON merkle_nodes",
            ]
        };
        let mut all = drops.to_vec();
        all.push(sql);
        self.raw(&all).await.unwrap();
    }
}

macro_rules! both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Harness::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    let Some(h) = super::Harness::postgres().await else { return };
                    super::$test(h).await;
                }
            )*
        }
    };
}

both_backends!(
    the_stored_nodes_agree_with_the_events_after_appends_and_a_restart,
    a_log_without_its_tree_is_given_one_at_open,
    a_tampered_or_missing_node_is_caught_by_verify_chain,
    the_tree_is_append_only,
    proofs_need_one_read_of_the_tree,
);

async fn the_stored_nodes_agree_with_the_events_after_appends_and_a_restart(mut h: Harness) {
    assert_eq!(h.store.tree_size().await.unwrap(), 0);
    assert_eq!(
        keyward::audit::tree_root(h.store.as_ref(), 0)
            .await
            .unwrap(),
        merkle::empty_root()
    );
    // Batches of every shape: single events, and runs across node boundaries.
    append(h.store.as_ref(), 1, 1).await;
    append(h.store.as_ref(), 40, 3).await;
    append(h.store.as_ref(), 300, 97).await;
    assert_stored_nodes_agree(h.store.as_ref()).await;
    h.reopen().await;
    assert_stored_nodes_agree(h.store.as_ref()).await;
    // Appends after the restart resume from the stored edge.
    append(h.store.as_ref(), 290, 50).await;
    assert_stored_nodes_agree(h.store.as_ref()).await;
    let report = keyward::audit::verify_chain(h.store.as_ref(), None)
        .await
        .unwrap();
    assert!(report.ok(), "{report:?}");

    if !h.is_sqlite() {
        // Two nodes appending in turn: each notices the other's appends.
        let other = h.open_again().await;
        for round in 0..5 {
            append(h.store.as_ref(), 13 + round, 5).await;
            append(other.as_ref(), 21 - round, 4).await;
        }
        assert_stored_nodes_agree(h.store.as_ref()).await;
        assert_stored_nodes_agree(other.as_ref()).await;
    }
}

async fn a_log_without_its_tree_is_given_one_at_open(mut h: Harness) {
    append(h.store.as_ref(), 700, 100).await;
    // As a log written before the tree existed: no rows at all.
    h.tamper("DELETE FROM merkle_nodes").await;
    assert_eq!(h.store.tree_size().await.unwrap(), 15);
    h.reopen().await;
    assert_stored_nodes_agree(h.store.as_ref()).await;

    // A tree that stops short (its last rows gone): completed at open.
    // As a log whose tree was built up to seq 300 (a backfill cut short): every node
    // that ends beyond it gone.
    h.tamper("DELETE FROM merkle_nodes WHERE (idx + 1) * (1 << level) > 300")
        .await;
    let short = h.store.tree_size().await.unwrap();
    assert!(short < 700, "{short}");
    h.reopen().await;
    assert_stored_nodes_agree(h.store.as_ref()).await;
    append(h.store.as_ref(), 50, 9).await;
    assert_stored_nodes_agree(h.store.as_ref()).await;

    // A store that finds the tree short at its first append builds the rest then.
    let store = h.open_again().await;
    if h.is_sqlite() {
        // The old SQLite store keeps its cache; only the new one is used from here.
        h.store = store.clone();
    }
    h.tamper("DELETE FROM merkle_nodes WHERE level = 4 AND idx >= 40")
        .await;
    append(store.as_ref(), 10, 10).await;
    assert_stored_nodes_agree(store.as_ref()).await;
}

async fn a_tampered_or_missing_node_is_caught_by_verify_chain(h: Harness) {
    append(h.store.as_ref(), 600, 200).await;
    let ok = keyward::audit::verify_chain(h.store.as_ref(), None)
        .await
        .unwrap();
    assert!(ok.ok(), "{ok:?}");

    let flip = if h.is_sqlite() {
        "UPDATE merkle_nodes SET hash = randomblob(32) WHERE level = 8 AND idx = 1"
    } else {
        "UPDATE merkle_nodes SET hash = decode(md5('x') || md5('y'), 'hex') \
         WHERE level = 8 AND idx = 1"
    };
    h.tamper(flip).await;
    let r = keyward::audit::verify_chain(h.store.as_ref(), None)
        .await
        .unwrap();
    let f = r.failure.expect("the rewritten node is caught");
    assert_eq!(f.seq, 512, "{}", f.reason);
    assert!(f.reason.contains("level 8, index 1"), "{}", f.reason);
    assert!(f.reason.contains("rewritten"), "{}", f.reason);

    // A deleted node is caught too, and proofs that need it fail rather than lie.
    h.raw(&["DELETE FROM merkle_nodes WHERE level = 4 AND idx = 3"])
        .await
        .unwrap();
    let r = keyward::audit::verify_chain(h.store.as_ref(), None)
        .await
        .unwrap();
    let f = r.failure.expect("the missing node is caught");
    assert_eq!(f.seq, 64, "{}", f.reason);
    assert!(f.reason.contains("missing"), "{}", f.reason);
    let err = keyward::audit::inclusion_proof(h.store.as_ref(), 1, 600)
        .await
        .unwrap_err();
    assert!(
        matches!(err, keyward::audit::TreeError::Corrupt(_)),
        "{err:?}"
    );
}

async fn the_tree_is_append_only(h: Harness) {
    append(h.store.as_ref(), 40, 40).await;
    for sql in [
        "UPDATE merkle_nodes SET idx = idx + 100",
        "DELETE FROM merkle_nodes",
    ] {
        let err = h.raw(&[sql]).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    if !h.is_sqlite() {
        // Statement triggers: even a statement that matches no row is refused.
        let err = h
            .raw(&["DELETE FROM merkle_nodes WHERE level = 60"])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
        let err = h.raw(&["TRUNCATE merkle_nodes"]).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
    }
    // Rows at levels the layout does not keep are refused by the schema.
    let blob = if h.is_sqlite() {
        "zeroblob(32)"
    } else {
        "decode(repeat('00', 32), 'hex')"
    };
    let err = h
        .raw(&[&format!(
            "INSERT INTO merkle_nodes (level, idx, hash) VALUES (3, 1000, {blob})"
        )])
        .await
        .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("check"), "{err}");
}

async fn proofs_need_one_read_of_the_tree(h: Harness) {
    append(h.store.as_ref(), 1000, 250).await;
    let leaves: Vec<Hash32> = event_hashes(h.store.as_ref())
        .await
        .iter()
        .map(leaf)
        .collect();
    for (seq, size) in [(1, 1000), (500, 1000), (1000, 1000), (17, 333), (256, 257)] {
        let plan = merkle::inclusion_plan(seq - 1, size).unwrap();
        let reads = tree::reads_for(&plan.nodes());
        // O(log N) rows: at most 8 per node of the plan.
        assert!(reads.rows() <= 8 * plan.nodes().len() as u64);
        let p = keyward::audit::inclusion(h.store.as_ref(), seq, size)
            .await
            .unwrap();
        let root = mth(&leaves[..size as usize]);
        assert_eq!(p.root, root);
        verify_inclusion(&leaves[seq as usize - 1], seq - 1, size, &p.proof, &root).unwrap();
    }
    for (from, to) in [(1, 1000), (999, 1000), (512, 1000), (300, 700)] {
        let proof = keyward::audit::consistency_proof(h.store.as_ref(), from, to)
            .await
            .unwrap();
        let (old, new) = (mth(&leaves[..from as usize]), mth(&leaves[..to as usize]));
        verify_consistency(from, to, &old, &new, &proof).unwrap();
    }
}
