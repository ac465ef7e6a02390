//! Shared test helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use keyward::config::{Config, GlobalArgs, ServeArgs};
use keyward::server::{Running, start};

pub fn config_in(dir: &Path) -> Config {
    let g = GlobalArgs {
        data_dir: Some(dir.to_path_buf()),
        ..GlobalArgs::default()
    };
    Config::resolve(
        &g,
        &ServeArgs {
            listen: Some("127.0.0.1:0".into()),
            // The mock providers listen on loopback, which needs an explicit allowlist.
            upstream_allow: Some("127.0.0.0/8".into()),
            ..ServeArgs::default()
        },
    )
    .unwrap()
}

pub struct TestApp {
    pub running: Running,
    pub dir: tempfile::TempDir,
}

impl TestApp {
    pub async fn start() -> TestApp {
        TestApp::start_with(|_| {}).await
    }

    /// Starts with the test config changed by `f` first.
    pub async fn start_with(f: impl FnOnce(&mut Config)) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config_in(dir.path());
        f(&mut config);
        let running = start(config).await.unwrap();
        TestApp { running, dir }
    }

    pub fn admin_secret(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("initial-admin-key"))
            .unwrap()
            .trim()
            .to_owned()
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("keyward.db")
    }
}

/// Runs the real binary with `--data-dir dir` and the given arguments.
pub fn keyward(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("KEYWARD_DATABASE_URL")
        .env_remove("KEYWARD_MASTER_KEYS")
        .output()
        .unwrap()
}

pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Opens the SQLite file directly, as an attacker with file access would.
pub async fn raw_sqlite(path: &Path) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap()
}

/// Drops the append-only triggers by hand and flips one byte of one stored event.
pub async fn tamper(path: &Path, seq: i64) {
    use sqlx::Row;
    let mut c = raw_sqlite(path).await;
    let triggers: Vec<String> = sqlx::query(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'events'",
    )
    .fetch_all(&mut c)
    .await
    .unwrap()
    .into_iter()
    .map(|r| r.get::<String, _>(0))
    .collect();
    assert!(
        !triggers.is_empty(),
        "the events table has no append-only trigger"
    );
    for t in triggers {
        sqlx::query(&format!("DROP TRIGGER \"{t}\""))
            .execute(&mut c)
            .await
            .unwrap();
    }
    // The payload as canonical JSON, from the compact form (or the TEXT a row written
    // before migration 0003 holds); the altered payload goes back as TEXT.
    let row = sqlx::query(
        "SELECT e.data, a.name, s.name, typeof(e.data) FROM events e \
         JOIN names a ON a.id = e.actor JOIN names s ON s.id = e.stream WHERE e.seq = ?",
    )
    .bind(seq)
    .fetch_one(&mut c)
    .await
    .unwrap();
    let data = if row.get::<String, _>(3) == "blob" {
        let (actor, stream): (String, String) = (row.get(1), row.get(2));
        let value = keyward_events::compact::decode(
            &row.get::<Vec<u8>, _>(0),
            &keyward_events::compact::context(&actor, &stream),
        )
        .unwrap();
        keyward_events::canonical::to_string(&value)
    } else {
        row.get::<String, _>(0)
    };
    // Flip one byte inside a string value: the JSON stays valid, the hash does not.
    let pos = data.find("\":\"").unwrap() + 3;
    let mut bytes = data.into_bytes();
    bytes[pos] ^= 0x01;
    let altered = String::from_utf8(bytes).unwrap();
    sqlx::query("UPDATE events SET data = ? WHERE seq = ?")
        .bind(altered)
        .bind(seq)
        .execute(&mut c)
        .await
        .unwrap();
}

/// A provider on 127.0.0.1:0 that knows one good credential prefix, `sk-good`.
///
/// - `GET /v1/models`: OpenAI style (`Authorization: Bearer`) or Anthropic style
///   (`x-api-key` with `anthropic-version`); 200 with a model list for a good key, else 401
///   with an OpenAI-style error that echoes the key, as OpenAI once did.
/// - `GET /openai/models?api-version=…`: Azure style (`api-key`).
/// - `GET /broken/models`: 500.
pub struct MockProvider {
    pub addr: std::net::SocketAddr,
    /// Every credential presented, in order.
    pub seen: std::sync::Arc<parking_lot::Mutex<Vec<String>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl MockProvider {
    pub async fn start() -> MockProvider {
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::IntoResponse;
        use axum::routing::get;
        use serde_json::json;

        let seen: std::sync::Arc<parking_lot::Mutex<Vec<String>>> = Default::default();
        let answer = |key: Option<String>, seen: &parking_lot::Mutex<Vec<String>>| {
            let key = key.unwrap_or_default();
            seen.lock().push(key.clone());
            if key.starts_with("sk-good") {
                (
                    StatusCode::OK,
                    axum::Json(json!({"object": "list", "data": [
                        {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"},
                        {"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"}
                    ]})),
                )
                    .into_response()
            } else {
                (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(json!({"error": {
                        "message": format!("Incorrect API key provided: {key}. You can find your API key at https://platform.openai.com/account/api-keys."),
                        "type": "invalid_request_error", "param": null, "code": "invalid_api_key"
                    }})),
                )
                    .into_response()
            }
        };
        let header = |h: &HeaderMap, name: &str| {
            h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
        };
        let s1 = seen.clone();
        let s2 = seen.clone();
        let app =
            axum::Router::new()
                .route(
                    "/v1/models",
                    get(move |h: HeaderMap| async move {
                        let key = match header(&h, "authorization") {
                            Some(a) => a.strip_prefix("Bearer ").map(str::to_owned),
                            None if header(&h, "anthropic-version").as_deref()
                                == Some("2023-06-01") =>
                            {
                                header(&h, "x-api-key")
                            }
                            None => None,
                        };
                        answer(key, &s1)
                    }),
                )
                .route(
                    "/openai/models",
                    get(
                        move |h: HeaderMap,
                              q: axum::extract::Query<
                            std::collections::HashMap<String, String>,
                        >| async move {
                            if !q.contains_key("api-version") {
                                return (StatusCode::NOT_FOUND, "no api-version").into_response();
                            }
                            answer(header(&h, "api-key"), &s2)
                        },
                    ),
                )
                .route(
                    "/broken/models",
                    get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "upstream fell over") }),
                );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        MockProvider {
            addr,
            seen,
            _task: task,
        }
    }

    /// The base URL for the OpenAI-style kinds.
    pub fn openai_base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn root(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A local address where nothing listens.
pub async fn closed_port_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}/v1")
}
