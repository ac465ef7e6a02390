//! Projection snapshots: a restart from one gives the state a full replay gives; a
//! snapshot that was altered, or that belongs to another log, is ignored; a log altered
//! under a snapshot is found by the background check.

use std::path::Path;
use std::time::Duration;

use keyward::commands::Actor;
use keyward::live::Live;
use keyward_events::{ExpectedVersion, KeyUsed, NewEvent, UsageOutcome};
use keyward_projections::State;

use crate::common::*;

/// One master key for every app in a test, so that a snapshot's MAC verifies across them.
const MASTER: &str = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

async fn start_in(dir: &Path) -> keyward::server::Running {
    let mut c = config_in(dir);
    c.master_keys = Some(MASTER.to_owned());
    keyward::server::start(c).await.unwrap()
}

/// Users, keys, a key change and some usage, through the real command path.
async fn some_activity(r: &keyward::server::Running, n: usize) {
    let t = r.state.0.commands.clone();
    for i in 0..n {
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
                    metadata: serde_json::json!({"team": i}).as_object().unwrap().clone(),
                    rotated_from: None,
                },
            )
            .await
            .unwrap();
        for _ in 0..3 {
            let used = keyward_events::Event::KeyUsed(KeyUsed {
                key_id: rec.key_id().to_owned(),
                provider_id: "prv_x".into(),
                model: Some("gpt-4o".into()),
                endpoint: "/v1/chat/completions".into(),
                outcome: UsageOutcome::Success,
                status: 200,
                latency_us: 10,
                upstream_latency_us: Some(5),
                prompt_tokens: 3,
                completion_tokens: 4,
                stream: false,
                client_ip: None,
            });
            t.appender
                .submit(vec![NewEvent::new(
                    &used,
                    ExpectedVersion::Any,
                    chrono::Utc::now(),
                    rec.key_id().to_owned(),
                    None,
                )])
                .await
                .unwrap();
        }
        t.expire_key(
            &Actor::system(),
            keyward::commands::Visibility::All,
            rec.key_id(),
        )
        .await
        .unwrap();
    }
}

async fn full_replay(dir: &Path) -> State {
    let store = keyward::store::open(&format!("sqlite://{}", dir.join("keyward.db").display()))
        .await
        .unwrap();
    let (live, report) = Live::rebuild(store, false).await.unwrap();
    assert_eq!(report.snapshot, None);
    live.read().clone()
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_restart_from_a_snapshot_folds_only_the_newer_events_into_the_full_replay_state() {
    let dir = tempfile::tempdir().unwrap();
    let r = start_in(dir.path()).await;
    some_activity(&r, 3).await;
    r.shutdown().await;
    let snap = keyward::snapshot::path(dir.path());
    assert!(snap.exists(), "shutdown writes a snapshot");
    let old = std::fs::read(&snap).unwrap();

    // Events after the snapshot: this run writes a newer one at shutdown (kept beside the
    // old one); delete it so that the next start has events to fold after the old one.
    let r = start_in(dir.path()).await;
    let snap_head = r.report.snapshot.expect("started from the snapshot");
    assert_eq!(r.report.events, 0);
    some_activity(&r, 2).await;
    r.shutdown().await;
    for seq in keyward::snapshot::kept(dir.path()) {
        if seq > snap_head.seq {
            std::fs::remove_file(keyward::snapshot::kept_path(dir.path(), seq)).unwrap();
        }
    }
    assert_eq!(std::fs::read(&snap).unwrap(), old);

    let r = start_in(dir.path()).await;
    assert_eq!(r.report.snapshot, Some(snap_head));
    assert_eq!(r.report.events, r.report.head.seq - snap_head.seq);
    assert!(r.report.events > 0);
    let live = r.state.0.live.clone();
    let from_snapshot = live.read().clone();
    // The chain under the snapshot is verified in the background; until then no snapshot
    // is written from this state.
    until("the background chain check", || live.is_verified()).await;
    assert!(r.state.0.is_ready());
    r.shutdown().await;

    let replayed = full_replay(dir.path()).await;
    assert_eq!(from_snapshot, replayed);
    assert_eq!(from_snapshot.head, replayed.head);
    assert!(replayed.keys.len() >= 5 && replayed.usage.len() >= 5);
}

#[tokio::test]
async fn an_altered_snapshot_is_ignored_and_the_whole_log_is_folded() {
    let dir = tempfile::tempdir().unwrap();
    let r = start_in(dir.path()).await;
    some_activity(&r, 2).await;
    r.shutdown().await;
    let snap = keyward::snapshot::path(dir.path());
    let mut bytes = std::fs::read(&snap).unwrap();
    // One bit of the image: still decodable perhaps, but the MAC no longer verifies.
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&snap, &bytes).unwrap();

    let r = start_in(dir.path()).await;
    assert_eq!(
        r.report.snapshot, None,
        "an altered snapshot is never trusted"
    );
    assert_eq!(r.report.events, r.report.head.seq);
    let state = r.state.0.live.read().clone();
    assert!(r.state.0.live.is_verified());
    r.shutdown().await;
    assert_eq!(state, full_replay(dir.path()).await);

    // A snapshot under another keyring does not verify either.
    let mut c = config_in(dir.path());
    c.master_keys =
        Some("1:ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f".to_owned());
    let r = keyward::server::start(c).await.unwrap();
    assert_eq!(r.report.snapshot, None);
    r.shutdown().await;

    // Garbage under the snapshot's name is ignored too.
    std::fs::write(&snap, b"not a snapshot").unwrap();
    let r = start_in(dir.path()).await;
    assert_eq!(r.report.snapshot, None);
    r.shutdown().await;
}

#[tokio::test]
async fn a_snapshot_of_another_log_is_ignored() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for d in [&a, &b] {
        let r = start_in(d.path()).await;
        some_activity(&r, 1).await;
        r.shutdown().await;
    }
    // Same keyring, so the MAC verifies: only the chain check can tell.
    std::fs::copy(
        keyward::snapshot::path(a.path()),
        keyward::snapshot::path(b.path()),
    )
    .unwrap();
    let r = start_in(b.path()).await;
    assert_eq!(r.report.snapshot, None);
    assert_eq!(r.report.events, r.report.head.seq);
    r.shutdown().await;

    // A snapshot ahead of the log (the database was restored from an older backup).
    let r = start_in(a.path()).await;
    some_activity(&r, 1).await;
    r.shutdown().await;
    let ahead = std::fs::read(keyward::snapshot::path(a.path())).unwrap();
    let c = tempfile::tempdir().unwrap();
    let r = start_in(c.path()).await;
    r.shutdown().await;
    std::fs::write(keyward::snapshot::path(c.path()), ahead).unwrap();
    let r = start_in(c.path()).await;
    assert_eq!(r.report.snapshot, None);
    r.shutdown().await;
}

#[tokio::test]
async fn a_log_altered_under_the_snapshot_turns_the_node_unready_and_is_never_snapshotted() {
    let dir = tempfile::tempdir().unwrap();
    let r = start_in(dir.path()).await;
    some_activity(&r, 2).await;
    r.shutdown().await;
    let snap = keyward::snapshot::path(dir.path());
    let before = std::fs::read(&snap).unwrap();
    tamper(&dir.path().join("keyward.db"), 2).await;

    // The snapshot still matches the head, so the node starts and serves from it...
    let r = start_in(dir.path()).await;
    assert!(r.report.snapshot.is_some());
    // ...but the background check finds the altered event and takes it out of rotation.
    let app = r.state.0.clone();
    until("the node to turn unready", || !app.is_ready()).await;
    assert!(!app.live.is_verified());
    some_activity(&r, 1).await;
    r.shutdown().await;
    assert_eq!(
        std::fs::read(&snap).unwrap(),
        before,
        "an unverified state is not snapshotted"
    );

    // A full start still refuses the broken chain, as without snapshots.
    std::fs::remove_file(&snap).unwrap();
    let mut c = config_in(dir.path());
    c.master_keys = Some(MASTER.to_owned());
    let err = keyward::server::start(c).await.err().expect("refused");
    assert!(format!("{err:#}").contains("seq 2"), "{err:#}");
}

#[tokio::test]
async fn snapshots_off_writes_and_reads_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config_in(dir.path());
    c.snapshot_every = 0;
    let r = keyward::server::start(c.clone()).await.unwrap();
    some_activity(&r, 1).await;
    r.shutdown().await;
    assert!(!keyward::snapshot::path(dir.path()).exists());

    // A snapshot left there is not read when they are off.
    let r = keyward::server::start(config_in(dir.path())).await.unwrap();
    r.shutdown().await;
    assert!(keyward::snapshot::path(dir.path()).exists());
    let r = keyward::server::start(c).await.unwrap();
    assert_eq!(r.report.snapshot, None);
    assert_eq!(r.report.events, r.report.head.seq);
    r.shutdown().await;
}

#[tokio::test]
async fn the_periodic_writer_snapshots_after_enough_new_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config_in(dir.path());
    c.snapshot_every = 5;
    let r = keyward::server::start(c).await.unwrap();
    some_activity(&r, 2).await;
    until("a periodic snapshot", || {
        !keyward::snapshot::kept(dir.path()).is_empty()
    })
    .await;
    r.shutdown().await;
}
