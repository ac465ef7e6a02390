//! Secrets at rest: no password hash in any readable rendering of the log, whichever path
//! set the password, old rows included; the data dir's files are private; every type that
//! holds a secret prints nothing of it in `Debug`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use chrono::Utc;
use keyward_events::{ExpectedVersion, NewEvent};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::*;
use crate::ui::Browser;

const LEGACY_PASSWORD: &str = "a password from the old days";

/// `keyward bootstrap --username … --password-stdin` on `dir`, fed `password`.
fn bootstrap_with_password(dir: &Path, username: &str, password: &str) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .arg("--data-dir")
        .arg(dir)
        .args(["bootstrap", "--username", username, "--password-stdin"])
        .env_remove("KEYWARD_DATABASE_URL")
        .env_remove("KEYWARD_MASTER_KEYS")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// Serves `state` on a real port; returns its base URL.
async fn serve(state: keyward::AppState) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = keyward::app(state);
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    format!("http://{addr}")
}

/// The first-run page: sets the initial admin's password with the initial admin key.
async fn console_setup(base: &str, admin_key: &str, password: &str) -> StatusCode {
    let mut b = Browser::new(base);
    let page = b.get("/ui/setup").await;
    assert_eq!(page.status, StatusCode::OK);
    let pre = page
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("kw_pre="))
        .map(|c| c.split(';').next().unwrap().to_owned())
        .unwrap();
    let res = b
        .http
        .post(format!("{base}/ui/setup"))
        .header("cookie", format!("kw_pre={pre}"))
        .header("origin", base)
        .form(&[
            ("csrf", b.csrf.clone().unwrap().as_str()),
            ("admin_key", admin_key),
            ("password", password),
            ("confirm", password),
        ])
        .send()
        .await
        .unwrap();
    res.status()
}

/// A `user.created` as a build before schema 2 wrote it: the PHC string in plaintext.
fn legacy_user_created(user_id: &str, username: &str, phc: &str) -> NewEvent {
    NewEvent {
        event_id: ulid::Ulid::new(),
        stream: keyward_events::user_stream(user_id),
        expected: ExpectedVersion::NoStream,
        event_type: "user.created".into(),
        schema: 1,
        occurred_at: Utc::now(),
        actor: "system".into(),
        request_id: None,
        data: json!({"user_id": user_id, "username": username, "role": "user", "password_hash": phc}),
    }
}

#[tokio::test]
async fn no_password_hash_in_any_export_whichever_path_set_it() {
    let dir = tempfile::tempdir().unwrap();
    // 1. The CLI: a new admin with a password (user.created), then the same admin again
    //    (user.updated on an existing admin).
    bootstrap_with_password(dir.path(), "root", "a root password of length");
    bootstrap_with_password(dir.path(), "root", "a second root password");

    let running = keyward::server::start(config_in(dir.path())).await.unwrap();
    let state = running.state.clone();
    let base = serve(state.clone()).await;
    let admin_key = std::fs::read_to_string(dir.path().join("initial-admin-key"))
        .unwrap()
        .trim()
        .to_owned();
    let http = reqwest::Client::new();
    let bearer = format!("Bearer {admin_key}");

    // 2. The console's first-run page.
    assert_eq!(
        console_setup(&base, &admin_key, "the admin console password").await,
        StatusCode::OK
    );
    // 3. The API: a user created with a password, then a password change.
    let r = http
        .post(format!("{base}/api/v1/users"))
        .header("authorization", &bearer)
        .json(&json!({"username": "carol", "role": "user", "password": "carol's first password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let carol: Value = r.json().await.unwrap();
    let r = http
        .patch(format!(
            "{base}/api/v1/users/{}",
            carol["id"].as_str().unwrap()
        ))
        .header("authorization", &bearer)
        .json(&json!({"password": "carol's second password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // 4. A row written before schema 2, holding a plaintext PHC string.
    let legacy_phc = keyward::crypto::hash_password(LEGACY_PASSWORD).unwrap();
    state
        .0
        .commands
        .submit(vec![legacy_user_created(
            "usr_01JLEGACY000000000000000000",
            "legacy",
            &legacy_phc,
        )])
        .await
        .unwrap();

    // Every password works for sign-in, the old one included.
    for (user, pw) in [
        ("root", "a second root password"),
        ("admin", "the admin console password"),
        ("carol", "carol's second password"),
        ("legacy", LEGACY_PASSWORD),
    ] {
        let mut b = Browser::new(&base);
        assert_eq!(
            b.sign_in(user, pw).await.status,
            StatusCode::SEE_OTHER,
            "{user}"
        );
    }

    // Every readable rendering of the whole log.
    let mut renderings: Vec<(&str, String)> = Vec::new();
    let mut cursor = 0;
    let mut events = Vec::new();
    loop {
        let r = http
            .get(format!(
                "{base}/api/v1/audit/events?limit=1000&cursor={cursor}"
            ))
            .header("authorization", &bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let page: Value = r.json().await.unwrap();
        events.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_u64() {
            Some(c) => cursor = c,
            None => break,
        }
    }
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(types.iter().filter(|t| **t == "user.created").count() >= 4);
    assert!(types.iter().filter(|t| **t == "user.updated").count() >= 3);
    let legacy = events
        .iter()
        .find(|e| e["data"]["username"] == "legacy")
        .unwrap();
    assert_eq!(legacy["schema"], 1);
    assert_eq!(legacy["data"]["password_hash"], "<redacted>");
    renderings.push(("/api/v1/audit/events", Value::Array(events).to_string()));
    let r = http
        .get(format!("{base}/api/v1/audit/export"))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    renderings.push(("/api/v1/audit/export", r.text().await.unwrap()));
    let mut console = Browser::new(&base);
    console.sign_in("admin", "the admin console password").await;
    let page = console.get("/ui/audit").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("user.created"));
    renderings.push(("/ui/audit", page.body));
    let page = console.get("/ui/audit/export").await;
    assert_eq!(page.status, StatusCode::OK);
    renderings.push(("/ui/audit/export", page.body));
    let o = keyward(dir.path(), &["audit", "export"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    renderings.push(("keyward audit export", stdout(&o)));
    let o = keyward(dir.path(), &["audit", "replay", "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    renderings.push(("keyward audit replay", stdout(&o)));

    for (what, text) in &renderings {
        if *what != "keyward audit replay" {
            assert!(text.contains("user."), "{what} holds no user event");
        }
        assert!(!text.contains("$argon2"), "{what} holds a password hash");
        assert!(!text.contains(&legacy_phc), "{what} holds the old hash");
    }
    // New events carry the hash sealed.
    let export = &renderings[1].1;
    assert!(export.contains("\"password\":{\"ciphertext\":"));

    // The chain still verifies against the stored bytes, and those bytes still hold the
    // old row's hash: redaction is on the way out, not a rewrite (see SECURITY.md).
    let r = http
        .get(format!("{base}/api/v1/audit/verify"))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["ok"], true, "{v}");
    // Strings are stored as their UTF-8 bytes in both the compact form and the TEXT of
    // rows written before migration 0003, so a search of the bytes finds any PHC string.
    let raw: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT CAST(data AS BLOB) FROM events \
         WHERE type IN (SELECT id FROM names WHERE name LIKE 'user.%')",
    )
    .fetch_all(&mut raw_sqlite(&dir.path().join("keyward.db")).await)
    .await
    .unwrap();
    assert_eq!(
        raw.iter()
            .filter(|d| d.windows(7).any(|w| w == b"$argon2"))
            .count(),
        1
    );

    running.shutdown().await;
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[cfg(unix)]
fn set_mode(p: &Path, m: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// The files of a data dir while the service runs, and after (the snapshot is written at
/// shutdown).
#[cfg(unix)]
const RUNNING_FILES: &[&str] = &[
    "keyward.db",
    "keyward.db-wal",
    "keyward.db-shm",
    "keyward.lock",
    "master.key",
    "initial-admin-key",
    "checkpoint.key",
];

#[cfg(unix)]
#[tokio::test]
async fn the_data_dir_files_are_private_even_in_a_world_readable_dir() {
    // A data dir the operator made, 0755, as `mkdir` leaves it.
    let dir = tempfile::tempdir().unwrap();
    set_mode(dir.path(), 0o755);
    let r = keyward::server::start(config_in(dir.path())).await.unwrap();
    for f in RUNNING_FILES {
        assert_eq!(mode(&dir.path().join(f)), 0o600, "{f} on a first start");
    }
    r.shutdown().await;
    let snapshot = keyward::snapshot::path(dir.path());
    assert_eq!(mode(&snapshot), 0o600);

    // The same dir after an older build (or a careless copy) left every file 0644.
    for f in RUNNING_FILES
        .iter()
        .map(|f| dir.path().join(f))
        .chain([snapshot.clone()])
    {
        if f.exists() {
            set_mode(&f, 0o644);
        }
    }
    let r = keyward::server::start(config_in(dir.path())).await.unwrap();
    for f in RUNNING_FILES {
        assert_eq!(mode(&dir.path().join(f)), 0o600, "{f} on a restart");
    }
    assert_eq!(mode(&snapshot), 0o600);
    r.shutdown().await;
    // The operator's own dir keeps its mode; Keyward only narrows its own files.
    assert_eq!(mode(dir.path()), 0o755);

    // A CLI run on the database tightens it too.
    set_mode(&dir.path().join("keyward.db"), 0o644);
    let o = keyward(dir.path(), &["audit", "verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(mode(&dir.path().join("keyward.db")), 0o600);

    // A data dir Keyward creates is 0700.
    let parent = tempfile::tempdir().unwrap();
    let fresh = parent.path().join("a").join("keyward-data");
    let r = keyward::server::start(config_in(&fresh)).await.unwrap();
    assert_eq!(mode(&fresh), 0o700);
    assert_eq!(mode(&fresh.join("keyward.db")), 0o600);
    r.shutdown().await;
}

const CANARY: &str = "CANARY7f3a9";

/// Asserts that a `{:?}` of `v` holds no canary.
fn no_canary(what: &str, v: &dyn std::fmt::Debug) {
    for debug in [format!("{v:?}"), format!("{v:#?}")] {
        assert!(!debug.contains(CANARY), "{what} prints a secret: {debug}");
    }
}

#[tokio::test]
async fn every_type_that_holds_a_secret_prints_none_of_it_in_debug() {
    use clap::Parser;
    use keyward::crypto::{Keyring, MasterKey, PasswordHash, ProviderSecret};

    let master = format!("1:{}", "ab".repeat(32));
    // The CLI's arguments, with every secret-bearing flag set.
    let cli = keyward::cli::Cli::try_parse_from([
        "keyward",
        "--database-url",
        &format!("postgres://keyward:{CANARY}@db.internal:5432/keyward?password={CANARY}"),
        "--master-keys",
        &master,
        "serve",
        "--notify-webhook-url",
        &format!("https://hooks.example/{CANARY}?token={CANARY}"),
        "--notify-webhook-secret",
        &format!("{CANARY}{CANARY}"),
    ])
    .unwrap();
    no_canary("Cli", &cli);
    assert!(!format!("{cli:?}").contains(&"ab".repeat(32)));
    let keyward::cli::Command::Serve(serve) = &cli.command else {
        panic!("not serve")
    };
    no_canary("GlobalArgs", &cli.global);
    no_canary("ServeArgs", serve);
    let config = keyward::config::Config::resolve(&cli.global, serve).unwrap();
    assert!(config.database_url.contains(CANARY));
    no_canary("Config", &config);
    assert!(!format!("{config:?}").contains(&"ab".repeat(32)));
    assert!(format!("{config:?}").contains("db.internal"));
    no_canary("NoticeWebhook", &config.notify);

    // Key secrets, in the responses that carry them once.
    let t = TestApp::start().await;
    let app = &t.running.state.0;
    let admin = app.live.read().users.by_username("admin").cloned().unwrap();
    let (rec, secret) = app
        .commands
        .create_key(
            &keyward::commands::Actor::system(),
            keyward::commands::NewKey {
                name: "k".into(),
                owner_id: admin.user_id.clone(),
                provider_ids: vec![],
                expires_at: Utc::now() + chrono::Duration::days(1),
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
    let view = || keyward::http::keys::view(&rec, &app.live.read(), Utc::now());
    let created = keyward::http::keys::CreatedKey {
        key: view(),
        secret: format!("{}{CANARY}", secret.expose()),
    };
    no_canary("CreatedKey", &created);
    assert!(!format!("{created:?}").contains(secret.expose()));
    let rotated = keyward::http::keys::RotatedKey {
        key: view(),
        secret: CANARY.into(),
        previous: view(),
    };
    no_canary("RotatedKey", &rotated);
    no_canary("Secret", &secret);
    assert!(!format!("{secret:?}").contains(secret.expose()));

    // Request bodies with a password or a provider credential.
    let body = |v: Value| v;
    let create_user: keyward::http::users::CreateUser = serde_json::from_value(body(
        json!({"username": "u", "role": "user", "password": CANARY}),
    ))
    .unwrap();
    no_canary("CreateUser", &create_user);
    let update_user: keyward::http::users::UpdateUser =
        serde_json::from_value(json!({"password": CANARY})).unwrap();
    no_canary("UpdateUser", &update_user);
    let create_provider: keyward::http::providers::CreateProvider = serde_json::from_value(
        json!({"name": "p", "kind": "openai", "base_url": "https://api.openai.com/v1", "api_key": CANARY}),
    )
    .unwrap();
    no_canary("CreateProvider", &create_provider);
    let replace: keyward::http::providers::ReplaceCredential =
        serde_json::from_value(json!({"api_key": CANARY})).unwrap();
    no_canary("ReplaceCredential", &replace);

    // Password hashes, sealed or not, in commands, events and projections.
    let ring = Keyring::new(vec![MasterKey::generate(1)]).unwrap();
    let phc = PasswordHash::new(format!("$argon2id$v=19${CANARY}"));
    no_canary("PasswordHash", &phc);
    let patch = keyward::commands::UserPatch {
        password_hash: Some(phc.clone()),
        ..Default::default()
    };
    no_canary("UserPatch", &patch);
    let sealed = ring.seal_password("usr_1", &phc);
    let legacy = keyward_events::LegacyPasswordHash(CANARY.into());
    no_canary("LegacyPasswordHash", &legacy);
    let event = keyward_events::Event::UserUpdated(keyward_events::UserUpdated {
        user_id: "usr_1".into(),
        username: None,
        role: None,
        password: Some(sealed.clone()),
        legacy_password_hash: Some(legacy),
    });
    no_canary("Event::UserUpdated", &event);
    assert!(!format!("{event:?}").contains(&sealed.ciphertext));
    no_canary(
        "StoredPassword",
        &keyward_projections::StoredPassword::Legacy(CANARY.into()),
    );
    no_canary("UserRecord", &admin);
    no_canary("ProviderSecret", &ProviderSecret::new(CANARY.into()));
    let spec = format!("7:{}", "cd".repeat(32));
    let ring = Keyring::parse(&spec).unwrap();
    assert!(!format!("{ring:?}").contains(&"cd".repeat(32)));
    assert!(!format!("{:?}", ring.snapshot_mac_keys()).contains("cd"));
    t.running.shutdown().await;
}
