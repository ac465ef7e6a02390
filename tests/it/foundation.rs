//! Start-up, bootstrap, the data-dir lock, readiness, and replay against the live state.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use keyward::crypto::Secret;
use keyward_events::{Role, Scope};
use keyward_projections::{AsOf, KeyStatus};
use tower::ServiceExt;

use crate::common::*;

#[tokio::test]
async fn first_start_creates_the_admin_and_a_private_key_file() {
    let t = TestApp::start().await;
    let path = t
        .running
        .initial_key_file
        .clone()
        .expect("first start bootstraps");
    assert_eq!(path, t.dir.path().join("initial-admin-key"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let secret = Secret::parse(&t.admin_secret()).unwrap();
    let state = t.running.state.0.live.read();
    let key = state
        .keys
        .by_secret_hash(&secret.hash())
        .expect("the key is in the live projection");
    assert_eq!(key.scopes(), vec![Scope::Full]);
    assert_eq!(key.status(chrono::Utc::now()), KeyStatus::Active);
    let days = (key.expires_at - chrono::Utc::now()).num_days();
    assert!((29..=30).contains(&days), "{days}");
    let owner = state.users.get(key.owner_id()).unwrap();
    assert_eq!(owner.username, "admin");
    assert_eq!(owner.role, Role::Admin);
    assert_eq!(state.head.seq, 2);
}

#[tokio::test]
async fn a_restart_rebuilds_the_same_state_and_does_not_bootstrap_again() {
    let t = TestApp::start().await;
    let before = format!(
        "{:?}",
        t.running
            .state
            .0
            .live
            .read()
            .keys
            .iter()
            .collect::<Vec<_>>()
    );
    let head = t.running.state.0.live.head();
    let TestApp { running, dir } = t;
    running.shutdown().await;
    let again = keyward::server::start(config_in(dir.path()))
        .await
        .unwrap_or_else(|e| panic!("restart failed: {e:#}"));
    assert!(again.initial_key_file.is_none());
    // The shutdown wrote a projection snapshot, so the restart folds what follows it.
    let from = again.report.snapshot.map_or(0, |h| h.seq);
    assert_eq!(from + again.report.events, 2);
    assert_eq!(again.state.0.live.head(), head);
    assert_eq!(
        format!(
            "{:?}",
            again.state.0.live.read().keys.iter().collect::<Vec<_>>()
        ),
        before
    );
    again.shutdown().await;
}

#[tokio::test]
async fn a_second_serve_on_the_same_data_dir_is_refused() {
    let t = TestApp::start().await;
    let err = keyward::server::start(config_in(t.dir.path()))
        .await
        .err()
        .expect("refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("another keyward process"), "{msg}");
}

#[tokio::test]
async fn a_database_that_cannot_be_opened_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("keyward.db")).unwrap();
    let err = keyward::server::start(config_in(dir.path()))
        .await
        .err()
        .expect("refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("cannot open the event store"), "{msg}");
}

#[tokio::test]
async fn healthz_and_readyz_answer() {
    let t = TestApp::start().await;
    let app = keyward::app(t.running.state.clone());
    let res = app
        .clone()
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = app
        .clone()
        .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["head_seq"], 2);

    t.running.state.0.set_ready(false);
    let res = app
        .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn replay_as_of_a_seq_equals_the_live_state_at_that_seq() {
    let t = TestApp::start().await;
    let cmds = &t.running.state.0.commands;
    let mut snapshots = Vec::new();
    for i in 0..4 {
        keyward::bootstrap::bootstrap(cmds, &format!("admin{i}"))
            .await
            .unwrap();
        let s = t.running.state.0.live.read();
        let mut keys: Vec<String> = s.keys.iter().map(|k| format!("{k:?}")).collect();
        keys.sort();
        snapshots.push((s.head.seq, keys, s.users.len()));
    }
    for (seq, keys, users) in snapshots {
        let replayed = keyward::history::replay(t.running.state.0.store.as_ref(), AsOf::Seq(seq))
            .await
            .unwrap();
        let mut rk: Vec<String> = replayed.keys.iter().map(|k| format!("{k:?}")).collect();
        rk.sort();
        assert_eq!(replayed.head.seq, seq);
        assert_eq!(rk, keys, "at seq {seq}");
        assert_eq!(replayed.users.len(), users);
    }
}

#[tokio::test]
async fn serve_refuses_a_broken_chain_unless_allowed() {
    // Without a snapshot every start verifies the whole chain (see snapshot.rs for the
    // start from a snapshot, whose prefix is verified in the background).
    let t = TestApp::start_with(|c| c.snapshot_every = 0).await;
    let TestApp { running, dir } = t;
    running.shutdown().await;
    tamper(&dir.path().join("keyward.db"), 2).await;

    let err = keyward::server::start(config_in(dir.path()))
        .await
        .err()
        .expect("refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("seq 2") && msg.contains("--allow-broken-chain"),
        "{msg}"
    );

    let mut c = config_in(dir.path());
    c.allow_broken_chain = true;
    let r = keyward::server::start(c).await.unwrap();
    assert_eq!(r.report.broken_at, Some(2));
    r.shutdown().await;
}
