//! PostgreSQL for tests: a database of its own per test, dropped when the test ends.
//!
//! `KEYWARD_TEST_PG_URL` names the server (default `postgres://postgres@127.0.0.1:5432/test`);
//! each test creates `kw_test_<ulid>` on it. When the server cannot be reached the test is
//! skipped with a printed reason, except under `CI=true`, where it fails.
#![allow(dead_code)]

use std::time::Duration;

use sqlx::{Connection, Executor, PgConnection};

pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The server URL, or `None` after printing why PostgreSQL is skipped. Panics under
/// `CI=true` instead of skipping.
pub async fn pg_url_or_skip() -> Option<String> {
    let url = std::env::var("KEYWARD_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let reason =
        match tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&url)).await {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                return Some(url);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within 5 s".to_owned(),
        };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("PostgreSQL at {url} is unreachable and CI=true, so this fails: {reason}");
    }
    crate::skip::skipped(
        &crate::skip::current_test(),
        &format!("PostgreSQL at {url} is unreachable ({reason}); set KEYWARD_TEST_PG_URL"),
    );
    None
}

/// A fresh, empty database, dropped (with any connections still open to it) on drop.
pub struct TestDb {
    pub url: String,
    pub name: String,
    server_url: String,
}

impl TestDb {
    pub async fn create() -> Option<TestDb> {
        let server_url = pg_url_or_skip().await?;
        let name = format!("kw_test_{}", ulid::Ulid::new().to_string().to_lowercase());
        let mut conn = PgConnection::connect(&server_url).await.unwrap();
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        let _ = conn.close().await;
        Some(TestDb {
            url: with_database(&server_url, &name),
            name,
            server_url,
        })
    }

    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop may run inside a runtime (and during a panic), so the DROP runs on a thread
        // with a runtime of its own.
        let server_url = self.server_url.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut conn = PgConnection::connect(&server_url).await?;
                conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await?;
                conn.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the test database {}", self.name);
        }
    }
}

/// `url` with its database replaced by `name`, keeping any query string.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[test]
fn with_database_replaces_only_the_path() {
    assert_eq!(
        with_database("postgres://u@h:5432/test", "kw"),
        "postgres://u@h:5432/kw"
    );
    assert_eq!(with_database("postgres://u@h", "kw"), "postgres://u@h/kw");
    assert_eq!(
        with_database("postgresql://u:p@h/db?sslmode=disable", "kw"),
        "postgresql://u:p@h/kw?sslmode=disable"
    );
}
