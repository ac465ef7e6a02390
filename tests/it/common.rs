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
    let data: String = sqlx::query("SELECT data FROM events WHERE seq = ?")
        .bind(seq)
        .fetch_one(&mut c)
        .await
        .unwrap()
        .get(0);
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
