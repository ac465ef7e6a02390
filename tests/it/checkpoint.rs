//! Signed checkpoints published outside the database: the writer, the start check, the
//! CLI and the public-key route.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::StatusCode;
use keyward::checkpoint::{self as cpk, LATEST};
use keyward::config::Config;
use keyward::server::start;
use keyward_events::note::{self, Checkpoint, NoteSigner};

use crate::api::*;
use crate::common::*;

/// The test config, with no projection snapshot (so that each start folds, and checks,
/// the whole log) and a checkpoint every `every` events.
fn config(dir: &Path, every: u64) -> Config {
    let mut c = config_in(dir);
    c.snapshot_every = 0;
    c.checkpoint.every = every;
    c
}

fn cp_dir(dir: &Path) -> PathBuf {
    dir.join("checkpoints")
}

fn latest(dir: &Path) -> String {
    std::fs::read_to_string(cp_dir(dir).join(LATEST)).unwrap()
}

fn numbered(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(cp_dir(dir))
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().unwrap();
            n.strip_suffix(".note").and_then(|d| d.parse().ok())
        })
        .collect();
    v.sort_unstable();
    v
}

/// `n` new users: one event each.
async fn append(r: &keyward::server::Running, n: usize) {
    use keyward::commands::Actor;
    let cmds = &r.state.0.commands;
    for _ in 0..n {
        let name = format!("u{}", ulid::Ulid::new().to_string().to_lowercase());
        let (ev, _) = cmds.user_created(&Actor::system(), &name, keyward_events::Role::User, None);
        cmds.submit(vec![ev]).await.unwrap();
    }
}

/// A started app's log, written and stopped: returns its dir and head.
async fn stopped_with_events(n: usize) -> (tempfile::TempDir, u64) {
    let dir = tempfile::tempdir().unwrap();
    let r = start(config(dir.path(), 1000)).await.unwrap();
    append(&r, n).await;
    let head = r.state.0.live.head().seq;
    r.shutdown().await;
    (dir, head)
}

fn public_key(dir: &Path) -> String {
    let o = keyward(dir, &["audit", "public-key"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    stdout(&o).trim().to_owned()
}

async fn drop_triggers(c: &mut sqlx::SqliteConnection) {
    use sqlx::Row;
    let triggers: Vec<String> = sqlx::query(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'events'",
    )
    .fetch_all(&mut *c)
    .await
    .unwrap()
    .into_iter()
    .map(|r| r.get::<String, _>(0))
    .collect();
    for t in triggers {
        sqlx::query(&format!("DROP TRIGGER \"{t}\""))
            .execute(&mut *c)
            .await
            .unwrap();
    }
}

/// Cuts the log's last `n` events.
async fn cut_tail(db: &Path, head: u64, n: u64) {
    let mut c = raw_sqlite(db).await;
    drop_triggers(&mut c).await;
    sqlx::query("DELETE FROM events WHERE seq > ?")
        .bind((head - n) as i64)
        .execute(&mut c)
        .await
        .unwrap();
}

/// Rewrites event 1's actor and re-hashes the whole chain after it, so that the chain
/// verifies again: only a checkpoint kept elsewhere can tell.
async fn rewrite_and_rehash(db: &Path) {
    let store = keyward::store::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let mut envs = store.read_from(0, 100_000).await.unwrap();
    drop(store);
    let mut c = raw_sqlite(db).await;
    drop_triggers(&mut c).await;
    envs[0].actor = "usr_01J0000000000000000FORGED".into();
    let mut prev = keyward_events::Hash32::ZERO;
    for e in &mut envs {
        e.prev_hash = prev;
        e.hash = e.compute_hash();
        prev = e.hash;
        // prev_hash is not stored (it is the row before's hash); the payload goes back as
        // canonical JSON TEXT, which does not depend on the actor as the compact form may.
        sqlx::query("INSERT OR IGNORE INTO names (name) VALUES (?)")
            .bind(&e.actor)
            .execute(&mut c)
            .await
            .unwrap();
        sqlx::query(
            "UPDATE events SET actor = (SELECT id FROM names WHERE name = ?), data = ?, \
             hash = ? WHERE seq = ?",
        )
        .bind(&e.actor)
        .bind(keyward_events::canonical::to_string(&e.data))
        .bind(&e.hash.0[..])
        .bind(e.seq as i64)
        .execute(&mut c)
        .await
        .unwrap();
    }
    assert!(keyward_events::chain::verify(&envs).is_ok());
}

fn err_of(r: anyhow::Result<keyward::server::Running>) -> String {
    match r {
        Ok(_) => panic!("the start was not refused"),
        Err(e) => format!("{e:#}"),
    }
}

/// Runs `keyward serve` and expects it to stop by itself (a refusal), within 60 s.
fn serve_refused(dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--snapshot-every", "0"];
    args.extend_from_slice(extra);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .arg("--data-dir")
        .arg(dir)
        .args(&args)
        .env_remove("KEYWARD_DATABASE_URL")
        .env_remove("KEYWARD_MASTER_KEYS")
        .env_remove("KEYWARD_CHECKPOINT_KEY")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("serve did not stop: it was not refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn serve_writes_signed_checkpoints_every_n_events_and_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(config(dir.path(), 3)).await.unwrap();
    // The log as it started (the first run's two events) is published at once.
    let key = r.state.0.checkpoint_key.clone().unwrap();
    let (_, first) = note::open(latest(dir.path()), &[key.verifier()]).unwrap();
    assert_eq!(first.size, 2);
    assert_eq!(first.origin, key.origin);

    append(&r, 4).await;
    // Six events: three after the first checkpoint make the next one due.
    let mut waited = 0;
    while !numbered(dir.path()).iter().any(|&s| s >= 5) {
        assert!(
            waited < 100,
            "no checkpoint after 3 new events: {:?}",
            numbered(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    append(&r, 1).await;
    let head = r.state.0.live.head().seq;
    let store = r.state.0.store.clone();
    r.shutdown().await;
    // At shutdown, the last one covers every event.
    let (body, cp) = note::open(latest(dir.path()), &[key.verifier()]).unwrap();
    assert_eq!(cp.size, head);
    assert_eq!(cp.root, cpk::root_at(store.as_ref(), head).await.unwrap());
    assert_eq!(body, cp.body().unwrap());
    let sizes = numbered(dir.path());
    assert_eq!(sizes.first(), Some(&2));
    assert_eq!(sizes.last(), Some(&head));
    for s in &sizes {
        let text = std::fs::read_to_string(cp_dir(dir.path()).join(cpk::file_name(*s))).unwrap();
        let (_, cp) = note::open(&text, &[key.verifier()]).unwrap();
        assert_eq!(cp.size, *s);
    }
    // It verifies with the printed public key, as any C2SP tool would.
    let v = note::NoteVerifier::from_text(&public_key(dir.path())).unwrap();
    assert_eq!(v, key.verifier());
    note::open(latest(dir.path()), &[v]).unwrap();
    // No temporary file is left behind.
    assert!(
        std::fs::read_dir(cp_dir(dir.path())).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp"))
    );
}

#[tokio::test]
async fn a_checkpoint_is_written_after_the_interval_when_the_log_grew() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), 1_000_000);
    c.checkpoint.interval = Duration::from_millis(300);
    let r = start(c).await.unwrap();
    append(&r, 1).await;
    let mut waited = 0;
    while !numbered(dir.path()).contains(&3) {
        assert!(waited < 100, "no checkpoint after the interval");
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    // The log did not grow: nothing more is written.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(numbered(dir.path()), vec![2, 3]);
    r.shutdown().await;
}

#[cfg(unix)]
#[tokio::test]
async fn the_development_key_is_private_and_kept_across_starts() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, _) = stopped_with_events(1).await;
    let path = dir.path().join(cpk::DEV_KEY_FILE);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    let signer = NoteSigner::from_text(&text).unwrap();
    assert!(signer.name().starts_with("keyward-dev/"));
    let r = start(config(dir.path(), 1000)).await.unwrap();
    assert_eq!(
        r.state.0.checkpoint_key.as_ref().unwrap().verifier(),
        signer.verifier()
    );
    r.shutdown().await;
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
}

#[tokio::test]
async fn a_configured_key_and_origin_sign_the_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let signer = NoteSigner::generate("keyward/test.example").unwrap();
    let g = keyward::config::GlobalArgs {
        data_dir: Some(dir.path().to_path_buf()),
        checkpoint_key: Some(signer.to_text().to_string()),
        ..Default::default()
    };
    let s = keyward::config::ServeArgs {
        listen: Some("127.0.0.1:0".into()),
        checkpoint_origin: Some("example.com/audit-log".into()),
        ..Default::default()
    };
    let c = Config::resolve(&g, &s).unwrap();
    // The key is not in the config's Debug.
    let debug = format!("{c:?} {g:?}");
    assert!(!debug.contains(signer.to_text().as_str()), "{debug}");
    let r = start(c).await.unwrap();
    r.shutdown().await;
    let (_, cp) = note::open(latest(dir.path()), &[signer.verifier()]).unwrap();
    assert_eq!(cp.origin, "example.com/audit-log");
    // No development key was made.
    assert!(!dir.path().join(cpk::DEV_KEY_FILE).exists());

    // A wrong key stops the start naming the setting, never quoting the key.
    let bad = signer.to_text().replace("PRIVATE+KEY+", "PRIVATE+KEY+x");
    let g = keyward::config::GlobalArgs {
        checkpoint_key: Some(bad.clone()),
        ..g
    };
    let e = Config::resolve(&g, &keyward::config::ServeArgs::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("KEYWARD_CHECKPOINT_KEY"), "{e}");
    // PRIVATE+KEY+<name>+<hash>+<base64>; the base64 itself may hold a '+'.
    let b64 = bad.splitn(5, '+').nth(4).unwrap();
    assert!(!e.contains(b64), "{e}");
}

#[tokio::test]
async fn a_cut_tail_is_refused_at_start_unless_allowed() {
    let (dir, head) = stopped_with_events(3).await;
    cut_tail(&dir.path().join("keyward.db"), head, 2).await;
    let e = err_of(start(config(dir.path(), 1000)).await);
    assert!(e.contains("events were removed from its tail"), "{e}");
    assert!(e.contains(&cpk::file_name(head)), "{e}");
    assert!(e.contains("--allow-broken-chain"), "{e}");

    let o = serve_refused(dir.path(), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("events were removed from its tail"),
        "{}",
        stderr(&o)
    );

    // Allowed, loudly: it serves, and signs nothing that contradicts the checkpoint.
    let before = latest(dir.path());
    let mut c = config(dir.path(), 1);
    c.allow_broken_chain = true;
    let r = start(c).await.unwrap();
    append(&r, 3).await;
    r.shutdown().await;
    assert_eq!(latest(dir.path()), before);
}

#[tokio::test]
async fn a_rewritten_and_rehashed_log_is_refused_at_start_unless_allowed() {
    let (dir, head) = stopped_with_events(3).await;
    rewrite_and_rehash(&dir.path().join("keyward.db")).await;
    // The chain alone holds.
    let o = keyward(dir.path(), &["audit", "verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));

    let e = err_of(start(config(dir.path(), 1000)).await);
    assert!(e.contains("the log was rewritten"), "{e}");
    assert!(e.contains(&format!("first {head} events")), "{e}");
    let o = serve_refused(dir.path(), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the log was rewritten"),
        "{}",
        stderr(&o)
    );

    let mut c = config(dir.path(), 1000);
    c.allow_broken_chain = true;
    start(c).await.unwrap().shutdown().await;

    // The CLI finds it too, against the published note.
    let note = cp_dir(dir.path()).join(cpk::file_name(head));
    let o = keyward(
        dir.path(),
        &["audit", "verify", "--checkpoint", note.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("the log was rewritten"),
        "{}",
        stdout(&o)
    );
}

#[tokio::test]
async fn one_tampered_event_is_refused_at_start_unless_allowed() {
    let (dir, _) = stopped_with_events(2).await;
    tamper(&dir.path().join("keyward.db"), 2).await;
    let e = err_of(start(config(dir.path(), 1000)).await);
    assert!(e.contains("seq 2"), "{e}");
    let o = serve_refused(dir.path(), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let mut c = config(dir.path(), 1000);
    c.allow_broken_chain = true;
    start(c).await.unwrap().shutdown().await;
}

#[tokio::test]
async fn a_checkpoint_signed_by_another_key_is_refused_at_start() {
    let (dir, head) = stopped_with_events(1).await;
    let key = NoteSigner::from_text(
        &std::fs::read_to_string(dir.path().join(cpk::DEV_KEY_FILE)).unwrap(),
    )
    .unwrap();
    let (_, cp) = note::open(latest(dir.path()), &[key.verifier()]).unwrap();
    // Same name, same body, another key.
    let other = NoteSigner::generate(key.name()).unwrap();
    let forged = cp.sign(&other).unwrap();
    std::fs::write(cp_dir(dir.path()).join(cpk::file_name(head + 1)), &forged).unwrap();
    let e = err_of(start(config(dir.path(), 1000)).await);
    assert!(e.contains("does not verify"), "{e}");
    assert!(e.contains(&cpk::file_name(head + 1)), "{e}");
    let o = serve_refused(dir.path(), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

    // A checkpoint for another size than its name says is refused too.
    std::fs::remove_file(cp_dir(dir.path()).join(cpk::file_name(head + 1))).unwrap();
    let moved = Checkpoint::new(cp.origin.clone(), cp.size, cp.root)
        .sign(&key)
        .unwrap();
    std::fs::write(cp_dir(dir.path()).join(cpk::file_name(head + 5)), moved).unwrap();
    let e = err_of(start(config(dir.path(), 1000)).await);
    assert!(e.contains("named for another size"), "{e}");
}

#[tokio::test]
async fn audit_verify_checks_a_signed_checkpoint_against_the_live_log() {
    let (dir, head) = stopped_with_events(2).await;
    let note_path = cp_dir(dir.path()).join(LATEST);
    let note = note_path.to_str().unwrap();
    // With the configured (development) key.
    let o = keyward(dir.path(), &["audit", "verify", "--checkpoint", note]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("consistent with the signed checkpoint"),
        "{}",
        stdout(&o)
    );
    // With the public key given.
    let pk = public_key(dir.path());
    let o = keyward(
        dir.path(),
        &["audit", "verify", "--checkpoint", note, "--public-key", &pk],
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    // Another key's public key: the signature is not one it knows.
    let other = NoteSigner::generate("keyward/other")
        .unwrap()
        .verifier()
        .to_text();
    let o = keyward(
        dir.path(),
        &[
            "audit",
            "verify",
            "--checkpoint",
            note,
            "--public-key",
            &other,
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("does not verify"), "{}", stdout(&o));
    // A malformed public key is a usage error.
    let o = keyward(
        dir.path(),
        &[
            "audit",
            "verify",
            "--checkpoint",
            note,
            "--public-key",
            "nope",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--public-key"), "{}", stderr(&o));
    // A changed note does not verify.
    let changed = std::fs::read_to_string(&note_path).unwrap().replacen(
        &format!("\n{head}\n"),
        &format!("\n{}\n", head - 1),
        1,
    );
    let changed_path = dir.path().join("changed.note");
    std::fs::write(&changed_path, changed).unwrap();
    let o = keyward(
        dir.path(),
        &[
            "audit",
            "verify",
            "--checkpoint",
            changed_path.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("invalid signature"), "{}", stdout(&o));
    // The log behind the checkpoint.
    cut_tail(&dir.path().join("keyward.db"), head, 1).await;
    let o = keyward(dir.path(), &["audit", "verify", "--checkpoint", note]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("events were removed from its tail"),
        "{}",
        stdout(&o)
    );
}

#[tokio::test]
async fn generate_checkpoint_key_prints_a_signer_and_its_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let o = keyward(
        dir.path(),
        &[
            "audit",
            "generate-checkpoint-key",
            "--name",
            "keyward/ops.example",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let mut lines = out.lines();
    let signer = NoteSigner::from_text(lines.next().unwrap()).unwrap();
    let v = note::NoteVerifier::from_text(lines.next().unwrap()).unwrap();
    assert_eq!(signer.verifier(), v);
    assert_eq!(v.name(), "keyward/ops.example");
    // And `audit public-key` prints it back from the environment.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["audit", "public-key"])
        .env("KEYWARD_CHECKPOINT_KEY", signer.to_text().as_str())
        .output()
        .unwrap();
    assert_eq!(stdout(&o).trim(), v.to_text());

    let o = keyward(
        dir.path(),
        &["audit", "generate-checkpoint-key", "--name", "bad name"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("invalid key name"), "{}", stderr(&o));
    // No key at all: said clearly.
    let o = keyward(dir.path(), &["audit", "public-key"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no checkpoint key"), "{}", stderr(&o));
}

#[tokio::test]
async fn the_public_key_and_latest_checkpoint_routes() {
    let t = TestApp::start().await;
    let api = Api::new(&t);
    let admin = t.admin_secret();
    let key = t.running.state.0.checkpoint_key.clone().unwrap();
    let (s, body) = api.get("/api/v1/audit/public-key", &admin).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["key"], key.verifier().to_text());
    assert_eq!(body["name"], key.signer.name());
    assert_eq!(body["origin"], key.origin);
    let (s, body) = api.get("/api/v1/audit/checkpoint/latest", &admin).await;
    assert_eq!(s, StatusCode::OK);
    let (_, cp) = note::open(body.as_str().unwrap(), &[key.verifier()]).unwrap();
    assert_eq!(cp.size, 2);
    let (_, alice) = user_with_full_key(&t, "alice").await;
    for path in [
        "/api/v1/audit/public-key",
        "/api/v1/audit/checkpoint/latest",
    ] {
        let got = api.get(path, &alice).await;
        assert_problem(&got, StatusCode::FORBIDDEN, "forbidden", None);
    }
    t.running.shutdown().await;

    // No checkpoints signed (no directory): 404 with its code.
    let t = TestApp::start_with(|c| c.checkpoint.dir = None).await;
    let api = Api::new(&t);
    let admin = t.admin_secret();
    for path in [
        "/api/v1/audit/public-key",
        "/api/v1/audit/checkpoint/latest",
    ] {
        let got = api.get(path, &admin).await;
        assert_problem(&got, StatusCode::NOT_FOUND, "no_checkpoint_key", None);
    }
    t.running.shutdown().await;
}

#[tokio::test]
async fn each_checkpoint_is_posted_to_the_witness_signed_like_the_webhooks() {
    use axum::routing::post;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let app = axum::Router::new().route(
        "/witness",
        post(move |headers: axum::http::HeaderMap, body: String| {
            let tx = tx.clone();
            async move {
                let sig = headers
                    .get("x-keyward-signature")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                let _ = tx.send((sig, body));
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let secret = "witness-secret-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), 1000);
    c.checkpoint.witness = Some(keyward::config::Witness {
        url: format!("http://{addr}/witness"),
        secret: keyward::config::WebhookSecret::new(secret.into()),
    });
    let r = start(c).await.unwrap();
    let (sig, body) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body, latest(dir.path()));
    assert_eq!(
        sig,
        keyward::notify::sign(secret.as_bytes(), body.as_bytes())
    );
    r.shutdown().await;
    server.abort();
}
