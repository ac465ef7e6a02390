//! As-of replays from kept projection snapshots: the answer equals a fold of the whole log
//! at every point (before the first snapshot, at one, between two, at the head), with
//! event times out of seq order; a corrupt or foreign snapshot is skipped; only the newest
//! `--snapshots-keep` are kept; a user sees their own keys; bad and future times are 400.

use std::path::Path;

use axum::http::StatusCode;
use keyward::commands::{Actor, NewKey, Visibility};
use keyward::history::{self, Kept};
use keyward::snapshot;
use keyward::time::Timestamp;
use keyward_events::{Event, ExpectedVersion, KeyUsed, NewEvent, UsageOutcome};
use keyward_projections::{AsOf, State};

use crate::api::{Api, assert_problem, user_with_full_key};
use crate::common::*;

const MASTER: &str = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// An app whose own writer stays quiet (the test writes the snapshots, as serve would)
/// and which keeps every snapshot unless told otherwise.
async fn app() -> TestApp {
    TestApp::start_with(|c| {
        c.master_keys = Some(MASTER.to_owned());
        c.snapshot_every = 1_000_000;
        c.snapshots_keep = 10_000;
    })
    .await
}

fn kept(t: &TestApp) -> Kept {
    Kept {
        dir: t.dir.path().to_path_buf(),
        keys: t.running.state.0.keyring.snapshot_mac_keys(),
    }
}

/// Writes a kept snapshot of the live state, as the periodic writer does.
fn snapshot_now(t: &TestApp, keep: usize) -> u64 {
    let (state, timeline) = t
        .running
        .state
        .0
        .live
        .verified_copy_with_timeline()
        .expect("a verified state");
    let seq = state.head.seq;
    snapshot::write_kept(
        t.dir.path(),
        &state,
        &timeline,
        &t.running.state.0.keyring.snapshot_mac_keys(),
        keep,
    )
    .unwrap();
    seq
}

fn micros(t: Timestamp) -> i64 {
    t.timestamp_micros()
}

fn at(us: i64) -> Timestamp {
    keyward::time::from_micros(us).unwrap()
}

async fn new_key(t: &TestApp, owner: &str, name: &str) -> String {
    let (rec, _) = t
        .running
        .state
        .0
        .commands
        .create_key(
            &Actor::system(),
            NewKey {
                name: name.to_owned(),
                owner_id: owner.to_owned(),
                provider_ids: vec![],
                expires_at: chrono::Utc::now() + chrono::Duration::days(10),
                scopes: vec![keyward_events::Scope::Chat],
                models: vec![],
                rate_limit: None,
                quota: None,
                ip_allowlist: vec![],
                metadata: Default::default(),
                rotated_from: None,
            },
        )
        .await
        .unwrap();
    rec.key_id().to_owned()
}

/// `n` usage events of `key`, stamped `first`, `first + step`, …, except that every
/// 37th is stamped `back` earlier than its place (a usage event that waited in a queue,
/// or another node's clock): times are not in seq order.
async fn usage(t: &TestApp, key: &str, n: usize, first: i64, step: i64, back: i64) {
    let appender = &t.running.state.0.commands.appender;
    for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
        let subs = chunk.iter().map(|&i| {
            let mut when = first + i as i64 * step;
            if i % 37 == 36 {
                when -= back;
            }
            let used = Event::KeyUsed(KeyUsed {
                key_id: key.to_owned(),
                provider_id: "prv_x".into(),
                model: Some("gpt-4o".into()),
                endpoint: "/v1/chat/completions".into(),
                outcome: UsageOutcome::Success,
                status: 200,
                latency_us: 10,
                upstream_latency_us: Some(5),
                prompt_tokens: 3,
                completion_tokens: i as u64,
                stream: false,
                client_ip: None,
            });
            appender.submit(vec![NewEvent::new(
                &used,
                ExpectedVersion::Any,
                at(when),
                key.to_owned(),
                None,
            )])
        });
        for r in futures::future::join_all(subs).await {
            r.unwrap();
        }
    }
}

async fn full(t: &TestApp, as_of: AsOf) -> State {
    history::replay(t.running.state.0.store.as_ref(), as_of)
        .await
        .unwrap()
}

async fn fast(t: &TestApp, as_of: AsOf) -> history::Replayed {
    let app = &t.running.state.0;
    let bounds = match as_of {
        AsOf::Time(ts) => Some(app.live.timeline_bounds(ts)),
        AsOf::Seq(_) => None,
    };
    history::replay_with(app.store.as_ref(), Some(&kept(t)), bounds, as_of)
        .await
        .unwrap()
}

/// A log of ~1,300 events over several timeline blocks with a snapshot every 50 events,
/// and times out of seq order. Returns the snapshot seqs.
async fn busy_log(t: &TestApp) -> Vec<u64> {
    let cmds = &t.running.state.0.commands;
    // Usage is stamped from now on, a second apart, so that it runs ahead of the commands'
    // own clock: the creations, expiry and deletion below are out of order with it.
    let now = micros(chrono::Utc::now());
    let base = now;
    let mut snaps = Vec::new();
    let mut keys = Vec::new();
    for u in 0..4 {
        let (ev, user_id) = cmds.user_created(
            &Actor::system(),
            &format!("user{u}"),
            keyward_events::Role::User,
            None,
        );
        cmds.submit(vec![ev]).await.unwrap();
        let key = new_key(t, &user_id, &format!("key {u}")).await;
        // 300 uses a second apart, some stamped 200 s early.
        for part in 0..6 {
            let first = base + (u * 300 + part * 50) as i64 * 1_000_000;
            usage(t, &key, 50, first, 1_000_000, 200_000_000).await;
            snaps.push(snapshot_now(t, 10_000));
        }
        keys.push(key);
    }
    cmds.expire_key(&Actor::system(), Visibility::All, &keys[0])
        .await
        .unwrap();
    cmds.delete_key(&Actor::system(), Visibility::All, &keys[1])
        .await
        .unwrap();
    snaps.push(snapshot_now(t, 10_000));
    // A few after the last snapshot.
    usage(t, &keys[2], 10, base + 1_300_000_000, 1_000, 5_000_000).await;
    snaps
}

#[tokio::test]
async fn as_of_answers_equal_a_full_replay_before_at_and_between_snapshots_and_at_the_head() {
    let t = app().await;
    let snaps = busy_log(&t).await;
    let store = t.running.state.0.store.clone();
    let head = store.head().await.unwrap().seq;
    assert!(head > 1_200, "{head}");
    assert_eq!(snapshot::kept(t.dir.path()), snaps);

    // By seq: before the first snapshot, at each, between, at and past the head.
    let mut seqs = vec![0, 1, snaps[0] - 1, head, head + 10];
    for s in &snaps {
        seqs.extend([*s, s + 1, s + 17]);
    }
    let mut started_from = 0;
    for n in seqs {
        let f = fast(&t, AsOf::Seq(n)).await;
        assert_eq!(f.state, full(&t, AsOf::Seq(n)).await, "as of seq {n}");
        if let Some(s) = f.from_snapshot {
            assert!(s <= n);
            assert_eq!(
                f.read,
                n.min(head) - s,
                "only the events after the snapshot"
            );
            started_from += 1;
        }
    }
    assert!(started_from > 20);

    // By time: at every 19th event's time, a microsecond before and after it, before the
    // first event and now.
    let all = store.read_from(0, 10_000).await.unwrap();
    let mut times: Vec<i64> = all
        .iter()
        .step_by(19)
        .flat_map(|e| {
            let us = micros(e.occurred_at);
            [us - 1, us, us + 1]
        })
        .collect();
    times.extend([
        micros(all[0].occurred_at) - 3_600_000_000,
        micros(chrono::Utc::now()),
    ]);
    let mut from_snapshot = 0;
    let mut skipped_reads = 0;
    for us in times {
        let ts = at(us);
        let f = fast(&t, AsOf::Time(ts)).await;
        let want = full(&t, AsOf::Time(ts)).await;
        assert_eq!(f.state, want, "as of {}", keyward::time::format(&ts));
        from_snapshot += usize::from(f.from_snapshot.is_some());
        skipped_reads += usize::from(f.read < head);
    }
    assert!(
        from_snapshot > 20,
        "{from_snapshot} time replays started from a snapshot"
    );
    assert!(skipped_reads > 20);

    // Through the API: the same table as the full fold gives.
    let api = Api::new(&t);
    let admin = t.admin_secret();
    // A time the API takes (not in the future): the expiry's.
    let mid = all
        .iter()
        .find(|e| e.event_type == "key.expired")
        .unwrap()
        .occurred_at;
    let (s, body) = api
        .get(
            &format!(
                "/api/v1/keys?as_of={}",
                keyward::time::format(&mid).replace('+', "%2B")
            ),
            &admin,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let want = full(&t, AsOf::Time(mid)).await;
    assert_eq!(body["keys"].as_array().unwrap().len(), want.keys.len());
}

#[tokio::test]
async fn a_corrupt_or_foreign_snapshot_is_skipped_and_the_answer_is_still_right() {
    let t = app().await;
    let snaps = busy_log(&t).await;
    let target = snaps[10] + 5;
    let want = full(&t, AsOf::Seq(target)).await;
    assert_eq!(
        fast(&t, AsOf::Seq(target)).await.from_snapshot,
        Some(snaps[10])
    );

    // One flipped bit: its MAC fails; the one before it is used.
    let p = snapshot::kept_path(t.dir.path(), snaps[10]);
    let mut bytes = std::fs::read(&p).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&p, &bytes).unwrap();
    let f = fast(&t, AsOf::Seq(target)).await;
    assert_eq!(f.from_snapshot, Some(snaps[9]));
    assert_eq!(f.state, want);

    // A valid snapshot under another seq's name: its header does not match its name.
    std::fs::copy(
        snapshot::kept_path(t.dir.path(), snaps[8]),
        snapshot::kept_path(t.dir.path(), snaps[9]),
    )
    .unwrap();
    let f = fast(&t, AsOf::Seq(target)).await;
    assert_eq!(f.from_snapshot, Some(snaps[8]));
    assert_eq!(f.state, want);

    // Truncated, and garbage.
    std::fs::write(snapshot::kept_path(t.dir.path(), snaps[8]), &bytes[..100]).unwrap();
    std::fs::write(
        snapshot::kept_path(t.dir.path(), snaps[7]),
        b"not a snapshot",
    )
    .unwrap();
    let f = fast(&t, AsOf::Seq(target)).await;
    assert_eq!(f.from_snapshot, Some(snaps[6]));
    assert_eq!(f.state, want);

    // A snapshot of another log (same keyring, so its MAC verifies): the log does not
    // hold its hash at its seq.
    let other = app().await;
    let theirs = busy_log(&other).await;
    let mine = snapshot::kept(t.dir.path());
    let shared = theirs
        .iter()
        .rev()
        .find(|s| **s <= snaps[6] && mine.contains(s))
        .copied();
    if let Some(s) = shared {
        std::fs::copy(
            snapshot::kept_path(other.dir.path(), s),
            snapshot::kept_path(t.dir.path(), s),
        )
        .unwrap();
    }
    let f = fast(&t, AsOf::Seq(target)).await;
    assert_eq!(f.state, want);
    if let Some(s) = shared {
        assert_ne!(f.from_snapshot, Some(s));
    }

    // By time too, with every snapshot at or before it broken: the whole fold.
    let ts = store_time(&t, target).await;
    for s in snapshot::kept(t.dir.path()) {
        std::fs::write(snapshot::kept_path(t.dir.path(), s), b"x").unwrap();
    }
    let f = fast(&t, AsOf::Time(ts)).await;
    assert_eq!(f.from_snapshot, None);
    assert_eq!(f.state, full(&t, AsOf::Time(ts)).await);
}

async fn store_time(t: &TestApp, seq: u64) -> Timestamp {
    let page = t.running.state.0.store.read_from(seq - 1, 1).await.unwrap();
    page[0].occurred_at
}

#[tokio::test]
async fn only_the_newest_snapshots_are_kept_and_the_single_file_of_earlier_versions_goes() {
    let t = app().await;
    let dir = t.dir.path();
    // A format-1 snapshot, as an earlier version left it.
    std::fs::write(dir.join(snapshot::FILE), b"old").unwrap();
    let (ev, user_id) = t.running.state.0.commands.user_created(
        &Actor::system(),
        "keeper",
        keyward_events::Role::User,
        None,
    );
    t.running.state.0.commands.submit(vec![ev]).await.unwrap();
    let mut written = Vec::new();
    for i in 0..6 {
        new_key(&t, &user_id, &format!("k{i}")).await;
        written.push(snapshot_now(&t, 3));
    }
    assert_eq!(snapshot::kept(dir), written[3..].to_vec());
    assert!(!dir.join(snapshot::FILE).exists());
    assert_eq!(snapshot::path(dir), snapshot::kept_path(dir, written[5]));
    let name = snapshot::kept_path(dir, written[5]);
    let name = name.file_name().unwrap().to_str().unwrap();
    assert_eq!(name, format!("{:020}.snapshot", written[5]));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(snapshot::kept_path(dir, written[5]))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[tokio::test]
async fn a_restart_uses_the_newest_kept_snapshot_the_log_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config_in(dir.path());
    c.master_keys = Some(MASTER.to_owned());
    c.snapshots_keep = 2;
    let r = keyward::server::start(c.clone()).await.unwrap();
    let t = TestApp {
        running: r,
        dir: tempfile::tempdir().unwrap(),
    };
    let (ev, user_id) = t.running.state.0.commands.user_created(
        &Actor::system(),
        "restarter",
        keyward_events::Role::User,
        None,
    );
    t.running.state.0.commands.submit(vec![ev]).await.unwrap();
    new_key(&t, &user_id, "a").await;
    let TestApp { running, .. } = t;
    running.shutdown().await;
    let first = snapshot::kept(dir.path());
    assert_eq!(first.len(), 1, "shutdown writes one");

    let r = keyward::server::start(c.clone()).await.unwrap();
    assert_eq!(r.report.snapshot.map(|h| h.seq), Some(first[0]));
    let t = TestApp {
        running: r,
        dir: tempfile::tempdir().unwrap(),
    };
    new_key(&t, &user_id, "b").await;
    // The chain under the snapshot is verified in the background; only then is a
    // snapshot written.
    let live = t.running.state.0.live.clone();
    for _ in 0..500 {
        if live.is_verified() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let TestApp { running, .. } = t;
    running.shutdown().await;
    let both = snapshot::kept(dir.path());
    assert_eq!(both.len(), 2, "{both:?}");

    // The newest is corrupt: the start uses the one before and folds the rest.
    std::fs::write(snapshot::kept_path(dir.path(), both[1]), b"torn").unwrap();
    let r = keyward::server::start(c).await.unwrap();
    assert_eq!(r.report.snapshot.map(|h| h.seq), Some(both[0]));
    assert_eq!(r.report.events, both[1] - both[0]);
    r.shutdown().await;
}

#[tokio::test]
async fn a_user_sees_only_their_own_keys_as_of_a_time_and_an_admin_every_key() {
    let t = app().await;
    let api = Api::new(&t);
    let admin = t.admin_secret();
    let (alice_id, alice) = user_with_full_key(&t, "alice").await;
    let (bob_id, _bob) = user_with_full_key(&t, "bob").await;
    new_key(&t, &alice_id, "alice second").await;
    new_key(&t, &bob_id, "bob second").await;
    snapshot_now(&t, 100);
    let then = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    new_key(&t, &alice_id, "alice later").await;
    let q = format!(
        "/api/v1/keys?as_of={}",
        keyward::time::format(&then).replace('+', "%2B")
    );
    let (s, body) = api.get(&q, &alice).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let keys = body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{body}");
    assert!(
        keys.iter().all(|k| k["owner_id"] == alice_id.as_str()),
        "{body}"
    );
    // Asking for someone else's keys gives one's own still.
    let (s, body) = api.get(&format!("{q}&owner_id={bob_id}"), &alice).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        body["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["owner_id"] == alice_id.as_str())
    );
    let (s, body) = api.get(&q, &admin).await;
    assert_eq!(s, StatusCode::OK);
    // The bootstrap admin key, alice's two, bob's two.
    assert_eq!(body["keys"].as_array().unwrap().len(), 5, "{body}");
}

#[tokio::test]
async fn a_bad_or_future_as_of_is_400_naming_the_field() {
    let t = app().await;
    let api = Api::new(&t);
    let admin = t.admin_secret();
    let (_, alice) = user_with_full_key(&t, "alice").await;
    for key in [&admin, &alice] {
        let got = api.get("/api/v1/keys?as_of=yesterday", key).await;
        assert_problem(&got, StatusCode::BAD_REQUEST, "bad_request", Some("as_of"));
        let future = keyward::time::format(&(chrono::Utc::now() + chrono::Duration::hours(1)))
            .replace('+', "%2B");
        let got = api.get(&format!("/api/v1/keys?as_of={future}"), key).await;
        assert_problem(&got, StatusCode::BAD_REQUEST, "bad_request", Some("as_of"));
        assert!(
            got.1["detail"].as_str().unwrap().contains("in the future"),
            "{}",
            got.1
        );
    }
}

#[tokio::test]
async fn snapshots_keep_is_configurable_and_at_least_one() {
    use keyward::config::{Config, GlobalArgs, ServeArgs};
    let resolve = |v: Option<&str>| {
        Config::resolve(
            &GlobalArgs::default(),
            &ServeArgs {
                snapshots_keep: v.map(str::to_owned),
                ..ServeArgs::default()
            },
        )
    };
    assert_eq!(resolve(None).unwrap().snapshots_keep, 64);
    assert_eq!(resolve(Some("3")).unwrap().snapshots_keep, 3);
    let e = resolve(Some("0")).err().unwrap().to_string();
    assert!(
        e.contains("KEYWARD_SNAPSHOTS_KEEP") && e.contains("--snapshots-keep"),
        "{e}"
    );
}

#[tokio::test]
async fn audit_replay_from_snapshots_prints_what_the_whole_fold_prints() {
    let t = app().await;
    busy_log(&t).await;
    let all = t.running.state.0.store.read_from(0, 10_000).await.unwrap();
    let points: Vec<String> = [200usize, 640, 1100]
        .iter()
        .map(|&i| keyward::time::format(&all[i].occurred_at))
        .collect();
    let TestApp { running, dir } = t;
    running.shutdown().await;
    // A copy without the snapshots folds the whole log.
    let bare = tempfile::tempdir().unwrap();
    copy_db(dir.path(), bare.path());
    for p in &points {
        let args = ["audit", "replay", "--as-of", p, "--format", "json"];
        let with = keyward_with_master(dir.path(), &args);
        let without = keyward_with_master(bare.path(), &args);
        assert_eq!(with.status.code(), Some(0), "{}", stderr(&with));
        assert_eq!(stdout(&with), stdout(&without), "as of {p}");
    }
    let args = ["audit", "replay", "--until-seq", "777", "--format", "json"];
    assert_eq!(
        stdout(&keyward_with_master(dir.path(), &args)),
        stdout(&keyward_with_master(bare.path(), &args))
    );
}

fn keyward_with_master(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("KEYWARD_DATABASE_URL")
        .env("KEYWARD_MASTER_KEYS", MASTER)
        .output()
        .unwrap()
}

fn copy_db(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name.to_str().unwrap().starts_with("keyward.db") {
            // A -wal or -shm file may go between listing and copying (SQLite removes
            // them when the last connection closes): that is not a failure.
            match std::fs::copy(e.path(), to.join(&name)) {
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => panic!("copying {}: {err}", e.path().display()),
            }
        }
    }
}
