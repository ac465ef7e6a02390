//! The event store suite, written once against `Arc<dyn EventStore>` and run for each
//! backend (SQLite, and PostgreSQL in a fresh database per test) by `store_suite!`, then
//! the appender, which runs over SQLite.

// Clippy's allow-unwrap-in-tests covers #[test] functions only, not their helpers.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use keyward::store::appender::{Appender, AppenderConfig, CommitSink};
use keyward::store::postgres::PostgresStore;
use keyward::store::sqlite::SqliteStore;
use keyward::store::{AppendError, EventFilter, EventStore, StoreError};
use keyward_events::chain;
use keyward_events::*;
use serde_json::json;
use sqlx::ConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use tokio::sync::{Semaphore, watch};

use crate::pg::TestDb;

// ---- harness ----

/// One store under test, plus what a few tests need to reach behind its back.
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

    /// `None` (after saying why) when PostgreSQL is unreachable outside CI.
    async fn postgres() -> Option<Harness> {
        let db = TestDb::create().await?;
        let store = PostgresStore::connect(&db.url).await.unwrap();
        Some(Harness {
            store: Arc::new(store),
            backend: Backend::Postgres { db },
        })
    }

    /// Closes the store and opens the same database again, as a restart would.
    async fn reopen(&mut self) {
        match &self.backend {
            Backend::Sqlite { path, .. } => {
                self.store = Arc::new(SqliteStore::open(path).await.unwrap());
            }
            Backend::Postgres { db } => {
                self.store = Arc::new(PostgresStore::connect(&db.url).await.unwrap());
            }
        }
    }

    /// Runs the migrations again on the open database.
    async fn migrate(&self) {
        match &self.backend {
            Backend::Sqlite { path, .. } => SqliteStore::open(path)
                .await
                .unwrap()
                .migrate()
                .await
                .unwrap(),
            Backend::Postgres { db } => PostgresStore::connect(&db.url)
                .await
                .unwrap()
                .migrate()
                .await
                .unwrap(),
        }
    }

    /// Runs SQL over a connection of its own, bypassing the store.
    async fn raw_execute(&self, sql: &str) -> Result<u64, sqlx::Error> {
        match &self.backend {
            Backend::Sqlite { path, .. } => {
                let mut conn = SqliteConnectOptions::new().filename(path).connect().await?;
                let done = sqlx::query(sql).execute(&mut conn).await?;
                Ok(done.rows_affected())
            }
            Backend::Postgres { db } => {
                let mut conn = db.connect().await;
                let done = sqlx::query(sql).execute(&mut conn).await?;
                Ok(done.rows_affected())
            }
        }
    }

    /// An SQL expression for 32 bytes, zero or random, in this backend's dialect.
    fn blob32(&self, random: bool) -> &'static str {
        match (&self.backend, random) {
            (Backend::Sqlite { .. }, false) => "zeroblob(32)",
            (Backend::Sqlite { .. }, true) => "randomblob(32)",
            (Backend::Postgres { .. }, false) => "decode(repeat('00', 32), 'hex')",
            (Backend::Postgres { .. }, true) => {
                "decode(md5(random()::text) || md5(random()::text), 'hex')"
            }
        }
    }
}

/// Instantiates each named `async fn(Harness)` once per backend.
macro_rules! store_suite {
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

store_suite!(
    appends_gap_free_and_reads_back_a_verifying_chain,
    an_event_id_is_appended_once,
    a_stale_expected_version_conflicts_and_writes_nothing,
    a_unit_is_all_or_nothing,
    events_cannot_be_updated_or_deleted,
    reopening_keeps_the_log_and_its_head,
    read_filters_narrow,
    read_newest_pages_backwards,
    floats_in_data_read_back_exactly,
    many_streams_in_one_call_keep_their_versions,
    an_undecodable_row_is_reported_with_its_seq,
    ping_succeeds_on_a_writable_store,
    migrating_again_is_a_no_op,
);

// ---- fixtures ----

fn at(minute: u32) -> time::Timestamp {
    Utc.with_ymd_and_hms(2026, 3, 1, 9, minute, 0).unwrap()
}

fn user_created(user: &str) -> NewEvent {
    let e = Event::UserCreated(UserCreated {
        user_id: user.into(),
        username: format!("name-{user}"),
        role: Role::User,
        password: None,
        legacy_password_hash: None,
    });
    NewEvent::new(&e, ExpectedVersion::NoStream, at(0), SYSTEM_ACTOR, None)
}

fn user_disabled(user: &str, expected: ExpectedVersion) -> NewEvent {
    let e = Event::UserDisabled(UserDisabled {
        user_id: user.into(),
    });
    NewEvent::new(&e, expected, at(1), "usr_admin", Some("req-1".into()))
}

fn key_used(key: &str, n: u64) -> NewEvent {
    let e = Event::KeyUsed(KeyUsed {
        key_id: key.into(),
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
    NewEvent::new(
        &e,
        ExpectedVersion::Any,
        at(2),
        key,
        Some(format!("req-{n}")),
    )
}

async fn all(store: &dyn EventStore) -> Vec<Envelope> {
    store.read_from(0, usize::MAX).await.unwrap()
}

fn ok_units(results: Vec<Result<Vec<Envelope>, AppendError>>) -> Vec<Vec<Envelope>> {
    results.into_iter().map(Result::unwrap).collect()
}

// ---- the suite ----

async fn appends_gap_free_and_reads_back_a_verifying_chain(h: Harness) {
    let s = &*h.store;
    assert_eq!(s.head().await.unwrap(), Head::default());
    assert!(all(s).await.is_empty());

    let first = ok_units(s.append(vec![vec![user_created("usr_a")]]).await.unwrap());
    let more = ok_units(
        s.append(vec![
            vec![
                user_created("usr_b"),
                user_disabled("usr_b", ExpectedVersion::Exact(1)),
            ],
            vec![key_used("key_1", 1)],
            vec![],
            vec![user_disabled("usr_a", ExpectedVersion::Exact(1))],
        ])
        .await
        .unwrap(),
    );
    assert_eq!(first[0][0].seq, 1);
    assert_eq!(first[0][0].prev_hash, Hash32::ZERO);
    let seqs: Vec<Vec<u64>> = more
        .iter()
        .map(|u| u.iter().map(|e| e.seq).collect())
        .collect();
    assert_eq!(seqs, vec![vec![2, 3], vec![4], vec![], vec![5]]);
    let versions: Vec<u64> = more.iter().flatten().map(|e| e.stream_version).collect();
    assert_eq!(versions, vec![1, 2, 1, 2]);

    let log = all(s).await;
    let appended: Vec<Envelope> = first.into_iter().chain(more).flatten().collect();
    assert_eq!(log, appended, "what comes back is exactly what was sealed");
    let head = chain::verify(&log).unwrap();
    assert_eq!(head.seq, 5);
    assert_eq!(head.hash, log[4].hash);
    assert_eq!(s.head().await.unwrap(), head);

    assert_eq!(s.read_from(3, 10).await.unwrap(), log[3..].to_vec());
    assert_eq!(s.read_from(0, 2).await.unwrap(), log[..2].to_vec());
    assert!(s.read_from(5, 10).await.unwrap().is_empty());
    assert!(s.read_from(0, 0).await.unwrap().is_empty());
    assert_eq!(
        log[1].decode().unwrap(),
        Event::UserCreated(UserCreated {
            user_id: "usr_b".into(),
            username: "name-usr_b".into(),
            role: Role::User,
            password: None,
            legacy_password_hash: None,
        })
    );
}

async fn an_event_id_is_appended_once(h: Harness) {
    let s = &*h.store;
    let e = user_created("usr_a");
    let first = ok_units(s.append(vec![vec![e.clone()]]).await.unwrap());
    let again = ok_units(s.append(vec![vec![e.clone()]]).await.unwrap());
    assert_eq!(again, first, "the stored envelope comes back");
    assert_eq!(s.head().await.unwrap().seq, 1);

    // Twice in one call, and alongside new events: one row, the same envelope both times.
    let u = key_used("key_1", 1);
    let res = ok_units(
        s.append(vec![
            vec![u.clone()],
            vec![e.clone(), key_used("key_1", 2)],
            vec![u.clone()],
        ])
        .await
        .unwrap(),
    );
    assert_eq!(res[0], res[2]);
    assert_eq!(res[0][0].seq, 2);
    assert_eq!(res[1][0], first[0][0]);
    assert_eq!(res[1][1].seq, 3);
    assert_eq!(res[1][1].stream_version, 2);

    let log = all(s).await;
    assert_eq!(log.len(), 3);
    chain::verify(&log).unwrap();
}

async fn a_stale_expected_version_conflicts_and_writes_nothing(h: Harness) {
    let s = &*h.store;
    ok_units(s.append(vec![vec![user_created("usr_a")]]).await.unwrap());
    let before = s.head().await.unwrap();

    let res = s
        .append(vec![
            vec![user_created("usr_a")],
            vec![user_disabled("usr_a", ExpectedVersion::Exact(7))],
            vec![user_disabled("usr_a", ExpectedVersion::Exact(1))],
            vec![user_disabled("usr_a", ExpectedVersion::Exact(1))],
        ])
        .await
        .unwrap();
    let conflict = |r: &Result<Vec<Envelope>, AppendError>| match r {
        Err(AppendError::Conflict {
            stream,
            expected,
            actual,
        }) => (stream.clone(), *expected, *actual),
        other => panic!("expected a conflict, got {other:?}"),
    };
    assert_eq!(
        conflict(&res[0]),
        ("user:usr_a".into(), ExpectedVersion::NoStream, 1)
    );
    assert_eq!(
        conflict(&res[1]),
        ("user:usr_a".into(), ExpectedVersion::Exact(7), 1)
    );
    let won = res[2].as_ref().unwrap();
    assert_eq!((won[0].seq, won[0].stream_version), (2, 2));
    assert_eq!(won[0].prev_hash, before.hash);
    // The second of two identical commands sees the first one's write.
    assert_eq!(
        conflict(&res[3]),
        ("user:usr_a".into(), ExpectedVersion::Exact(1), 2)
    );

    let log = all(s).await;
    assert_eq!(log.len(), 2);
    chain::verify(&log).unwrap();
    assert_eq!(s.head().await.unwrap().seq, 2);
}

async fn a_unit_is_all_or_nothing(h: Harness) {
    let s = &*h.store;
    ok_units(s.append(vec![vec![user_created("usr_a")]]).await.unwrap());
    let res = s
        .append(vec![
            vec![
                user_created("usr_new"),
                user_disabled("usr_a", ExpectedVersion::Exact(3)),
            ],
            vec![key_used("key_1", 1)],
        ])
        .await
        .unwrap();
    assert!(matches!(
        res[0],
        Err(AppendError::Conflict { actual: 1, .. })
    ));
    assert_eq!(
        res[1].as_ref().unwrap()[0].seq,
        2,
        "the next unit takes the next seq"
    );

    let streams = EventFilter {
        streams: vec!["user:usr_new".into()],
        ..EventFilter::default()
    };
    assert!(s.read(&streams, 10).await.unwrap().is_empty());
    // The skipped unit did not move the stream either: NoStream still holds.
    let res = s.append(vec![vec![user_created("usr_new")]]).await.unwrap();
    assert_eq!(res[0].as_ref().unwrap()[0].stream_version, 1);
    assert_eq!(res[0].as_ref().unwrap()[0].seq, 3);
    chain::verify(&all(s).await).unwrap();
}

async fn events_cannot_be_updated_or_deleted(h: Harness) {
    let s = &*h.store;
    ok_units(
        s.append(vec![
            vec![user_created("usr_a")],
            vec![key_used("key_1", 1)],
        ])
        .await
        .unwrap(),
    );
    let before = all(s).await;

    for sql in [
        // A value of the column's own type in both backends (SQLite's STRICT table
        // refuses a mistyped one before any trigger runs).
        "UPDATE events SET stream_version = 7 WHERE seq = 1",
        "UPDATE events SET data = '{}'",
        "DELETE FROM events WHERE seq = 2",
        "DELETE FROM events",
    ] {
        let err = h.raw_execute(sql).await.unwrap_err();
        assert!(
            err.to_string().contains("events are append-only"),
            "{sql}: {err}"
        );
    }
    assert_eq!(all(s).await, before);
    chain::verify(&before).unwrap();
}

async fn reopening_keeps_the_log_and_its_head(mut h: Harness) {
    ok_units(
        h.store
            .append(vec![
                vec![user_created("usr_a")],
                vec![key_used("key_1", 1)],
            ])
            .await
            .unwrap(),
    );
    let log = all(&*h.store).await;
    let head = h.store.head().await.unwrap();

    h.reopen().await;
    assert_eq!(h.store.head().await.unwrap(), head);
    assert_eq!(all(&*h.store).await, log);
    // The stream versions and the chain carry on from the stored log.
    let res = h
        .store
        .append(vec![
            vec![user_disabled("usr_a", ExpectedVersion::Exact(1))],
            vec![user_created("usr_a")],
        ])
        .await
        .unwrap();
    let next = &res[0].as_ref().unwrap()[0];
    assert_eq!(
        (next.seq, next.stream_version, next.prev_hash),
        (3, 2, head.hash)
    );
    assert!(matches!(
        res[1],
        Err(AppendError::Conflict { actual: 2, .. })
    ));
    chain::verify(&all(&*h.store).await).unwrap();
}

async fn read_filters_narrow(h: Harness) {
    let s = &*h.store;
    let mut late = user_disabled("usr_a", ExpectedVersion::Exact(1));
    late.occurred_at = at(30);
    ok_units(
        s.append(vec![
            vec![user_created("usr_a")], // 1, at(0), system
            vec![key_used("key_1", 1)],  // 2, at(2), key_1
            vec![key_used("key_2", 2)],  // 3, at(2), key_2
            vec![user_created("usr_b")], // 4, at(0), system
            vec![late],                  // 5, at(30), usr_admin
            vec![key_used("key_1", 3)],  // 6, at(2), key_1
        ])
        .await
        .unwrap(),
    );
    let seqs = |f: EventFilter, limit: usize| async move {
        s.read(&f, limit)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>()
    };
    let f = EventFilter::default;

    assert_eq!(seqs(f(), 100).await, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(seqs(f(), 4).await, vec![1, 2, 3, 4]);
    assert_eq!(
        seqs(
            EventFilter {
                types: vec!["key.used".into()],
                ..f()
            },
            100
        )
        .await,
        vec![2, 3, 6]
    );
    assert_eq!(
        seqs(
            EventFilter {
                types: vec!["user.created".into(), "user.disabled".into()],
                ..f()
            },
            100
        )
        .await,
        vec![1, 4, 5]
    );
    assert_eq!(
        seqs(
            EventFilter {
                streams: vec!["usage:key_1".into()],
                ..f()
            },
            100
        )
        .await,
        vec![2, 6]
    );
    assert_eq!(
        seqs(
            EventFilter {
                streams: vec!["user:usr_a".into(), "usage:key_2".into()],
                ..f()
            },
            100
        )
        .await,
        vec![1, 3, 5]
    );
    assert_eq!(
        seqs(
            EventFilter {
                actor: Some("key_1".into()),
                ..f()
            },
            100
        )
        .await,
        vec![2, 6]
    );
    assert_eq!(
        seqs(
            EventFilter {
                actor: Some("nobody".into()),
                ..f()
            },
            100
        )
        .await,
        Vec::<u64>::new()
    );
    assert_eq!(
        seqs(
            EventFilter {
                after_seq: 2,
                until_seq: Some(5),
                ..f()
            },
            100
        )
        .await,
        vec![3, 4, 5]
    );
    assert_eq!(
        seqs(
            EventFilter {
                until_seq: Some(0),
                ..f()
            },
            100
        )
        .await,
        Vec::<u64>::new()
    );
    // The time range is inclusive at both ends.
    assert_eq!(
        seqs(
            EventFilter {
                from_time: Some(at(2)),
                ..f()
            },
            100
        )
        .await,
        vec![2, 3, 5, 6]
    );
    assert_eq!(
        seqs(
            EventFilter {
                to_time: Some(at(2)),
                ..f()
            },
            100
        )
        .await,
        vec![1, 2, 3, 4, 6]
    );
    assert_eq!(
        seqs(
            EventFilter {
                from_time: Some(at(1)),
                to_time: Some(at(29)),
                ..f()
            },
            100
        )
        .await,
        vec![2, 3, 6]
    );
    // Every filter at once, and a limit that cuts the result.
    assert_eq!(
        seqs(
            EventFilter {
                after_seq: 1,
                until_seq: Some(6),
                types: vec!["key.used".into()],
                streams: vec!["usage:key_1".into(), "usage:key_2".into()],
                actor: Some("key_1".into()),
                from_time: Some(at(2)),
                to_time: Some(at(2)),
            },
            1
        )
        .await,
        vec![2]
    );
}

async fn read_newest_pages_backwards(h: Harness) {
    // The backend's own descending read, and the trait's default over its ascending read.
    let fallback: Arc<dyn EventStore> = Wrapped::new(h.store.clone(), false);
    let mut units = Vec::new();
    for n in 0..300u64 {
        units.push(vec![key_used(
            if n % 3 == 0 { "key_1" } else { "key_2" },
            n,
        )]);
    }
    ok_units(h.store.append(units).await.unwrap());
    for s in [h.store.clone(), fallback] {
        let seqs = |f: EventFilter, limit: usize| {
            let s = s.clone();
            async move {
                s.read_newest(&f, limit)
                    .await
                    .unwrap()
                    .iter()
                    .map(|e| e.seq)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(seqs(EventFilter::default(), 3).await, vec![300, 299, 298]);
        let key_1 = || EventFilter {
            streams: vec!["usage:key_1".into()],
            ..EventFilter::default()
        };
        assert_eq!(seqs(key_1(), 3).await, vec![298, 295, 292]);
        assert_eq!(
            seqs(
                EventFilter {
                    until_seq: Some(10),
                    ..key_1()
                },
                100
            )
            .await,
            vec![10, 7, 4, 1]
        );
        assert_eq!(
            seqs(
                EventFilter {
                    after_seq: 4,
                    until_seq: Some(10),
                    ..key_1()
                },
                100
            )
            .await,
            vec![10, 7]
        );
        assert_eq!(seqs(key_1(), 1000).await.len(), 100);
        assert!(seqs(EventFilter::default(), 0).await.is_empty());
    }
}

async fn floats_in_data_read_back_exactly(h: Harness) {
    let s = &*h.store;
    let mut e = user_created("usr_f");
    e.data["extra"] = json!([
        0.1,
        1e-7,
        2.5e300,
        -0.0,
        1.0000000000000002,
        std::f64::consts::PI,
        1.7976931348623157e308,
        1.221043540074035e217,
        -3.8522126457737876e161,
        5.904414503749853e-220
    ]);
    let sealed = ok_units(s.append(vec![vec![e]]).await.unwrap());
    let log = all(s).await;
    assert_eq!(log, sealed[0]);
    chain::verify(&log).unwrap();
}

async fn many_streams_in_one_call_keep_their_versions(mut h: Harness) {
    let users: Vec<String> = (0..300).map(|i| format!("usr_{i:03}")).collect();
    let created = h
        .store
        .append(users.iter().map(|u| vec![user_created(u)]).collect())
        .await
        .unwrap();
    assert!(
        created
            .iter()
            .all(|r| r.as_ref().unwrap()[0].stream_version == 1)
    );

    // After a restart the versions come from the database, all in one call.
    h.reopen().await;
    let mut units: Vec<Vec<NewEvent>> = users
        .iter()
        .map(|u| vec![user_disabled(u, ExpectedVersion::Exact(1))])
        .collect();
    units.push(vec![user_disabled("usr_007", ExpectedVersion::Exact(1))]);
    let res = h.store.append(units).await.unwrap();
    for r in &res[..300] {
        assert_eq!(r.as_ref().unwrap()[0].stream_version, 2);
    }
    assert!(matches!(
        res[300],
        Err(AppendError::Conflict { actual: 2, .. })
    ));
    assert_eq!(h.store.head().await.unwrap().seq, 600);
}

async fn an_undecodable_row_is_reported_with_its_seq(h: Harness) {
    let s = &*h.store;
    ok_units(s.append(vec![vec![user_created("usr_a")]]).await.unwrap());
    // Inserting is allowed (that is how the log grows), so a damaged row can be planted.
    let zero = h.blob32(false);
    let sql = match h.backend {
        // A row in the TEXT form rows written before migration 0003 have.
        Backend::Sqlite { .. } => format!(
            "{SQLITE_NAMES}; INSERT INTO events (seq, event_id, stream, stream_version, type, \
             schema, occurred_at, actor, request_id, data, hash) VALUES (2, \
             '01HF7YAT010000000000000002', {SQLITE_IDS}, NULL, 'not json', {zero})"
        ),
        Backend::Postgres { .. } => format!(
            "INSERT INTO events (seq, event_id, stream, stream_version, type, schema, \
             occurred_at, actor, request_id, data, prev_hash, hash) VALUES (2, \
             '01HF7YAT010000000000000002', 'user:usr_x', 1, 'user.created', 1, 0, 'system', \
             NULL, 'not json', {zero}, {zero})"
        ),
    };
    h.raw_execute(&sql).await.unwrap();
    match s.read_from(0, 10).await {
        Err(StoreError::Corrupt { seq: 2, reason }) => assert!(reason.contains("JSON"), "{reason}"),
        other => panic!("expected Corrupt at seq 2, got {other:?}"),
    }
    assert_eq!(
        s.read_from(0, 1).await.unwrap().len(),
        1,
        "rows before it still read"
    );
}

async fn ping_succeeds_on_a_writable_store(h: Harness) {
    h.store.ping().await.unwrap();
    ok_units(
        h.store
            .append(vec![vec![user_created("usr_a")]])
            .await
            .unwrap(),
    );
    h.store.ping().await.unwrap();
    assert_eq!(h.store.head().await.unwrap().seq, 1);
}

async fn migrating_again_is_a_no_op(mut h: Harness) {
    ok_units(
        h.store
            .append(vec![vec![user_created("usr_a")]])
            .await
            .unwrap(),
    );
    let log = all(&*h.store).await;
    h.migrate().await;
    h.reopen().await;
    assert_eq!(all(&*h.store).await, log);
    assert_eq!(h.store.head().await.unwrap().seq, 1);
}

#[tokio::test]
async fn sqlite_opens_by_url_and_migrating_again_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("events.db"))
        .await
        .unwrap();
    ok_units(
        store
            .append(vec![vec![user_created("usr_a")]])
            .await
            .unwrap(),
    );
    store.migrate().await.unwrap();
    assert_eq!(store.head().await.unwrap().seq, 1);
    let url = format!("sqlite://{}", dir.path().join("events.db").display());
    let again = SqliteStore::open_url(&url).await.unwrap();
    assert_eq!(again.head().await.unwrap().seq, 1);
}

/// The names a planted SQLite row refers to (stream `user:usr_x`, type `user.created`,
/// actor `system`), and the values of its columns from `stream` to `actor`.
const SQLITE_NAMES: &str = "INSERT OR IGNORE INTO names (name) VALUES ('user:usr_x'), \
     ('user.created'), ('system')";
const SQLITE_IDS: &str = "(SELECT id FROM names WHERE name = 'user:usr_x'), 1, \
     (SELECT id FROM names WHERE name = 'user.created'), 1, 0, \
     (SELECT id FROM names WHERE name = 'system')";

/// Another writer takes seq 2 behind the store's back (the lock file normally rules this
/// out), so a SQLite store that cached seq 1 as its head collides on its next insert.
async fn plant_seq_2(h: &Harness) {
    h.raw_execute(&format!(
        "{SQLITE_NAMES}; INSERT INTO events (seq, event_id, stream, stream_version, type, \
         schema, occurred_at, actor, request_id, data, hash) VALUES (2, \
         '01HF7YAT010000000000000002', {SQLITE_IDS}, NULL, '{{}}', randomblob(32))"
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn a_failed_append_writes_nothing_and_the_next_one_rereads_the_head() {
    let h = Harness::sqlite().await;
    let s = &*h.store;
    ok_units(s.append(vec![vec![user_created("usr_a")]]).await.unwrap());
    plant_seq_2(&h).await;

    let err = s
        .append(vec![
            vec![key_used("key_1", 1)],
            vec![user_created("usr_b")],
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert_eq!(all(s).await.len(), 2, "neither unit was written");
    let planted = all(s).await[1].clone();
    assert_eq!(
        s.head().await.unwrap(),
        Head {
            seq: 2,
            hash: planted.hash
        }
    );

    let res = ok_units(s.append(vec![vec![user_created("usr_b")]]).await.unwrap());
    assert_eq!((res[0][0].seq, res[0][0].prev_hash), (3, planted.hash));
}

#[tokio::test]
async fn a_failed_append_gives_back_its_units_as_given_without_the_stored_events() {
    let h = Harness::sqlite().await;
    let s = &*h.store;
    let stored = user_created("usr_a");
    ok_units(s.append(vec![vec![stored.clone()]]).await.unwrap());
    // The first INSERT collides after the first runs of the batch are sealed.
    plant_seq_2(&h).await;

    // Enough usage events for several INSERT runs, a command, and an event already stored.
    let mut units: Vec<Vec<NewEvent>> = (0..300).map(|n| vec![key_used("key_1", n)]).collect();
    units.push(vec![
        user_created("usr_b"),
        user_disabled("usr_b", ExpectedVersion::Exact(1)),
    ]);
    units.push(vec![stored.clone()]);
    let given = units.clone();
    let Err(unwritten) = s.append_returning(units).await else {
        panic!("the append should fail on the planted seq");
    };
    assert!(
        matches!(unwritten.error, StoreError::Unavailable(_)),
        "{:?}",
        unwritten.error
    );
    let mut expected = given.clone();
    *expected.last_mut().unwrap() = Vec::new();
    assert_eq!(
        unwritten.units, expected,
        "every unit back as given, less what is stored"
    );
    assert_eq!(all(s).await.len(), 2, "nothing was written");

    // Given again, they are appended after the planted event, and the chain holds.
    let res = ok_units(s.append(unwritten.units).await.unwrap());
    assert_eq!(res.iter().map(Vec::len).sum::<usize>(), 302);
    assert_eq!(res[0][0].seq, 3);
    let log = all(s).await;
    assert_eq!(log.len(), 304);
    assert_eq!(
        log.iter().skip(2).map(|e| e.event_id).collect::<Vec<_>>(),
        given
            .iter()
            .take(301)
            .flatten()
            .map(|e| e.event_id)
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn postgres_never_trusts_a_cached_head() {
    let Some(h) = Harness::postgres().await else {
        return;
    };
    let s = &*h.store;
    let first = ok_units(s.append(vec![vec![user_created("usr_a")]]).await.unwrap());
    // Another node appends seq 2 (properly sealed, as it would): this store must chain
    // onto it and see its stream version, not reuse what it knew.
    let theirs = user_disabled("usr_a", ExpectedVersion::Exact(1)).seal(2, 2, first[0][0].hash);
    h.raw_execute(&format!(
        "INSERT INTO events (seq, event_id, stream, stream_version, type, schema, occurred_at, \
         actor, request_id, data, prev_hash, hash) VALUES (2, '{}', '{}', 2, '{}', {}, {}, '{}', \
         '{}', '{}', decode('{}', 'hex'), decode('{}', 'hex'))",
        theirs.event_id,
        theirs.stream,
        theirs.event_type,
        theirs.schema,
        theirs.occurred_at.timestamp_micros(),
        theirs.actor,
        theirs.request_id.as_deref().unwrap(),
        keyward_events::canonical::to_string(&theirs.data),
        theirs.prev_hash.to_hex(),
        theirs.hash.to_hex(),
    ))
    .await
    .unwrap();
    assert_eq!(
        s.head().await.unwrap(),
        Head {
            seq: 2,
            hash: theirs.hash
        }
    );
    let res = s
        .append(vec![
            vec![user_disabled("usr_a", ExpectedVersion::Exact(1))],
            vec![user_disabled("usr_a", ExpectedVersion::Exact(2))],
        ])
        .await
        .unwrap();
    assert!(matches!(
        res[0],
        Err(AppendError::Conflict { actual: 2, .. })
    ));
    let ours = &res[1].as_ref().unwrap()[0];
    assert_eq!(
        (ours.seq, ours.stream_version, ours.prev_hash),
        (3, 3, theirs.hash)
    );
    chain::verify(&all(s).await).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writers_on_two_connections_keep_one_chain_whatever_the_default_isolation() {
    let Some(h) = Harness::postgres().await else {
        return;
    };
    let Backend::Postgres { db } = &h.backend else {
        unreachable!()
    };
    // Under REPEATABLE READ the head would be read from a snapshot taken before the lock
    // was granted; an append must ask for READ COMMITTED itself.
    h.raw_execute(&format!(
        "ALTER DATABASE {} SET default_transaction_isolation = 'repeatable read'",
        db.name
    ))
    .await
    .unwrap();
    let writers: Vec<Arc<dyn EventStore>> = vec![
        Arc::new(PostgresStore::connect(&db.url).await.unwrap()),
        Arc::new(PostgresStore::connect(&db.url).await.unwrap()),
    ];
    let tasks: Vec<_> = writers
        .iter()
        .enumerate()
        .map(|(w, s)| {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..40u64 {
                    let units =
                        (0..5).map(|j| vec![key_used("key_1", w as u64 * 1000 + i * 5 + j)]);
                    ok_units(s.append(units.collect()).await.unwrap());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let log = all(&*h.store).await;
    assert_eq!(log.len(), 400);
    chain::verify(&log).unwrap();
    let versions: Vec<u64> = log.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, (1..=400).collect::<Vec<_>>());
}

// ---- the appender ----

/// Records what the appender hands over, and lets a test wait for a count.
struct Recorder {
    envs: parking_lot::Mutex<Vec<Envelope>>,
    count: watch::Sender<usize>,
    calls: AtomicUsize,
}

impl Recorder {
    fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            envs: parking_lot::Mutex::new(Vec::new()),
            count: watch::channel(0).0,
            calls: AtomicUsize::new(0),
        })
    }

    async fn wait_for(&self, n: usize) {
        self.count.subscribe().wait_for(|c| *c >= n).await.unwrap();
    }

    fn seqs(&self) -> Vec<u64> {
        self.envs.lock().iter().map(|e| e.seq).collect()
    }
}

#[async_trait]
impl CommitSink for Recorder {
    async fn committed(&self, envs: &[Envelope]) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut all = self.envs.lock();
        all.extend_from_slice(envs);
        self.count.send_replace(all.len());
    }
}

/// Wraps a real store: counts appends, can hold them at a gate, and can fail them.
struct Wrapped {
    inner: Arc<dyn EventStore>,
    appends: AtomicUsize,
    entered: watch::Sender<usize>,
    gate: Option<Semaphore>,
    down: AtomicBool,
}

impl Wrapped {
    fn new(inner: Arc<dyn EventStore>, gated: bool) -> Arc<Wrapped> {
        Arc::new(Wrapped {
            inner,
            appends: AtomicUsize::new(0),
            entered: watch::channel(0).0,
            gate: gated.then(|| Semaphore::new(0)),
            down: AtomicBool::new(false),
        })
    }

    fn release(&self) {
        if let Some(gate) = &self.gate {
            gate.add_permits(Semaphore::MAX_PERMITS / 2);
        }
    }

    async fn wait_entered(&self, n: usize) {
        self.entered
            .subscribe()
            .wait_for(|c| *c >= n)
            .await
            .unwrap();
    }
}

#[async_trait]
impl EventStore for Wrapped {
    async fn append(
        &self,
        units: Vec<Vec<NewEvent>>,
    ) -> Result<Vec<Result<Vec<Envelope>, AppendError>>, StoreError> {
        self.entered.send_modify(|c| *c += 1);
        if let Some(gate) = &self.gate {
            gate.acquire().await.unwrap().forget();
        }
        self.appends.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("disk on fire".into()));
        }
        self.inner.append(units).await
    }
    async fn head(&self) -> Result<Head, StoreError> {
        self.inner.head().await
    }
    async fn read(&self, f: &EventFilter, limit: usize) -> Result<Vec<Envelope>, StoreError> {
        self.inner.read(f, limit).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

#[tokio::test]
async fn submit_returns_after_the_commit_and_after_the_sink() {
    let h = Harness::sqlite().await;
    let sink = Recorder::new();
    let (appender, handle) =
        Appender::spawn(h.store.clone(), sink.clone(), AppenderConfig::default());

    let envs = appender
        .submit(vec![
            user_created("usr_a"),
            user_disabled("usr_a", ExpectedVersion::Exact(1)),
        ])
        .await
        .unwrap();
    assert_eq!(envs.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(
        *sink.envs.lock(),
        envs,
        "the sink saw the batch before the reply"
    );
    assert_eq!(all(&*h.store).await, envs);

    let err = appender
        .submit(vec![user_created("usr_a")])
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::Conflict { actual: 2, .. }),
        "{err:?}"
    );
    assert!(appender.submit(vec![]).await.unwrap().is_empty());

    handle.shutdown().await;
    assert!(matches!(
        appender.record(key_used("key_1", 1)).await,
        Err(AppendError::Closed)
    ));
    assert!(matches!(
        appender.submit(vec![user_created("usr_b")]).await,
        Err(AppendError::Closed)
    ));
    assert_eq!(sink.seqs(), vec![1, 2]);
}

#[tokio::test]
async fn concurrent_records_are_group_committed() {
    let h = Harness::sqlite().await;
    // The first batch is held until everything is queued, so the rest must batch up.
    let store = Wrapped::new(h.store.clone(), true);
    let sink = Recorder::new();
    let cfg = AppenderConfig {
        queue_capacity: 4096,
        max_batch: 256,
    };
    let (appender, handle) = Appender::spawn(store.clone(), sink.clone(), cfg);

    const N: usize = 2000;
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let a = appender.clone();
            tokio::spawn(async move {
                a.record(key_used(&format!("key_{}", i % 7), i as u64))
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    store.wait_entered(1).await;
    assert!(
        appender.queue_depth() >= N - cfg.max_batch,
        "depth {}",
        appender.queue_depth()
    );
    store.release();
    sink.wait_for(N).await;

    let appends = store.appends.load(Ordering::SeqCst);
    assert!(
        appends <= 1 + N.div_ceil(cfg.max_batch),
        "{appends} appends for {N} events"
    );
    assert_eq!(sink.seqs(), (1..=N as u64).collect::<Vec<_>>());
    assert_eq!(appender.queue_depth(), 0);
    let log = all(&*h.store).await;
    assert_eq!(log.len(), N);
    assert_eq!(log, *sink.envs.lock());
    chain::verify(&log).unwrap();
    handle.shutdown().await;
}

#[tokio::test]
async fn durable_records_are_released_by_their_batch_commit_all_at_once() {
    let h = Harness::sqlite().await;
    // The first batch is held at the gate until every record is queued.
    let store = Wrapped::new(h.store.clone(), true);
    let sink = Recorder::new();
    let cfg = AppenderConfig {
        queue_capacity: 4096,
        max_batch: 256,
    };
    let (appender, handle) = Appender::spawn(store.clone(), sink.clone(), cfg);
    const N: usize = 1000;
    let mut handles = Vec::with_capacity(N);
    for i in 0..N {
        handles.push(
            appender
                .record_durable(key_used(&format!("key_{}", i % 7), i as u64))
                .await
                .unwrap(),
        );
    }
    store.wait_entered(1).await;
    // Nothing is committed yet, so no handle is released.
    let first = handles.remove(0);
    let first = tokio::spawn(first.committed());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !first.is_finished(),
        "a handle was released before its commit"
    );
    store.release();
    let inner = h.store.clone();
    let waiters: Vec<_> = handles
        .into_iter()
        .map(|d| {
            let inner = inner.clone();
            tokio::spawn(async move {
                d.committed().await?;
                // Released only once its event is in the store.
                Ok::<usize, keyward::store::appender::NotCommitted>(
                    inner.head().await.unwrap().seq as usize,
                )
            })
        })
        .collect();
    first.await.unwrap().unwrap();
    for w in waiters {
        assert!(w.await.unwrap().unwrap() >= 1);
    }
    assert_eq!(all(&*h.store).await.len(), N);
    // Still group-committed: the waiting requests did not serialise the batches.
    let appends = store.appends.load(Ordering::SeqCst);
    assert!(
        appends <= 1 + N.div_ceil(cfg.max_batch),
        "{appends} appends for {N} events"
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn a_durable_record_whose_batch_fails_is_told_at_once_and_still_committed_later() {
    let h = Harness::sqlite().await;
    let store = Wrapped::new(h.store.clone(), false);
    let sink = Recorder::new();
    let (appender, handle) =
        Appender::spawn(store.clone(), sink.clone(), AppenderConfig::default());
    store.down.store(true, Ordering::SeqCst);
    let d = appender.record_durable(key_used("key_1", 1)).await.unwrap();
    let told = tokio::time::timeout(Duration::from_secs(5), d.committed())
        .await
        .expect("a failed batch must release its waiters at once, not after the retries");
    assert_eq!(told, Err(keyward::store::appender::NotCommitted));
    assert!(all(&*h.store).await.is_empty());
    // The event is kept and retried: once the store is back it is committed.
    store.down.store(false, Ordering::SeqCst);
    sink.wait_for(1).await;
    assert_eq!(all(&*h.store).await.len(), 1);
    // A durable record queued at shutdown is drained and released as committed.
    let d = appender.record_durable(key_used("key_1", 2)).await.unwrap();
    handle.shutdown().await;
    assert_eq!(d.committed().await, Ok(()));
    assert_eq!(all(&*h.store).await.len(), 2);
    assert!(matches!(
        appender.record_durable(key_used("key_1", 3)).await,
        Err(AppendError::Closed)
    ));
}

#[tokio::test]
async fn a_full_queue_makes_record_wait() {
    let h = Harness::sqlite().await;
    let store = Wrapped::new(h.store.clone(), true);
    let sink = Recorder::new();
    let cfg = AppenderConfig {
        queue_capacity: 1,
        max_batch: 1024,
    };
    let (appender, handle) = Appender::spawn(store.clone(), sink.clone(), cfg);

    appender.record(key_used("key_1", 1)).await.unwrap();
    store.wait_entered(1).await; // the appender holds event 1, blocked in the store
    appender.record(key_used("key_1", 2)).await.unwrap(); // fills the queue
    let third = {
        let a = appender.clone();
        tokio::spawn(async move { a.record(key_used("key_1", 3)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !third.is_finished(),
        "record returned while the queue was full"
    );
    assert_eq!(store.appends.load(Ordering::SeqCst), 0);

    store.release();
    third.await.unwrap().unwrap();
    handle.shutdown().await;
    assert_eq!(sink.seqs(), vec![1, 2, 3]);
    assert_eq!(all(&*h.store).await.len(), 3);
}

#[tokio::test]
async fn shutdown_drains_the_queue() {
    let h = Harness::sqlite().await;
    let store = Wrapped::new(h.store.clone(), true);
    let sink = Recorder::new();
    let cfg = AppenderConfig {
        queue_capacity: 1000,
        max_batch: 64,
    };
    let (appender, handle) = Appender::spawn(store.clone(), sink.clone(), cfg);
    for i in 0..500 {
        appender.record(key_used("key_1", i)).await.unwrap();
    }
    let stopping = tokio::spawn(handle.shutdown());
    store.wait_entered(1).await;
    store.release();
    stopping.await.unwrap();

    assert!(matches!(
        appender.record(key_used("key_1", 9)).await,
        Err(AppendError::Closed)
    ));
    let log = all(&*h.store).await;
    assert_eq!(log.len(), 500);
    assert_eq!(sink.seqs(), (1..=500).collect::<Vec<_>>());
    let latencies: Vec<u64> = log
        .iter()
        .map(|e| e.data["latency_us"].as_u64().unwrap())
        .collect();
    assert_eq!(
        latencies,
        (1000..1500).collect::<Vec<_>>(),
        "queue order is log order"
    );
}

#[tokio::test]
async fn a_failing_store_fails_commands_and_keeps_usage_events() {
    let h = Harness::sqlite().await;
    let store = Wrapped::new(h.store.clone(), false);
    let sink = Recorder::new();
    let (appender, handle) =
        Appender::spawn(store.clone(), sink.clone(), AppenderConfig::default());
    appender.submit(vec![user_created("usr_a")]).await.unwrap();

    store.down.store(true, Ordering::SeqCst);
    appender.record(key_used("key_1", 1)).await.unwrap();
    appender.record(key_used("key_1", 2)).await.unwrap();
    let err = appender
        .submit(vec![user_disabled("usr_a", ExpectedVersion::Exact(1))])
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::Store(StoreError::Unavailable(_))),
        "{err:?}"
    );
    store.wait_entered(3).await; // failed at least twice more: the usage events are retried
    assert_eq!(all(&*h.store).await.len(), 1, "nothing written while down");
    assert_eq!(sink.seqs(), vec![1]);

    store.down.store(false, Ordering::SeqCst);
    sink.wait_for(3).await;
    handle.shutdown().await;

    let log = all(&*h.store).await;
    let types: Vec<&str> = log.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, vec!["user.created", "key.used", "key.used"]);
    assert_eq!(log[1].request_id.as_deref(), Some("req-1"));
    assert_eq!(log[2].request_id.as_deref(), Some("req-2"));
    assert_eq!(*sink.envs.lock(), log);
    chain::verify(&log).unwrap();
}

#[tokio::test]
async fn a_replayed_event_is_not_handed_to_the_sink_twice() {
    let h = Harness::sqlite().await;
    let sink = Recorder::new();
    let (appender, handle) =
        Appender::spawn(h.store.clone(), sink.clone(), AppenderConfig::default());
    let e = user_created("usr_a");
    let first = appender.submit(vec![e.clone()]).await.unwrap();
    let again = appender.submit(vec![e]).await.unwrap();
    assert_eq!(first, again);
    appender.submit(vec![user_created("usr_b")]).await.unwrap();
    handle.shutdown().await;
    assert_eq!(sink.seqs(), vec![1, 2]);
    assert_eq!(sink.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_turns_producers_away_and_keeps_what_it_accepted() {
    let h = Harness::sqlite().await;
    let sink = Recorder::new();
    let cfg = AppenderConfig {
        queue_capacity: 64,
        max_batch: 32,
    };
    let (appender, handle) = Appender::spawn(h.store.clone(), sink.clone(), cfg);
    let producers: Vec<_> = (0..4u64)
        .map(|p| {
            let a = appender.clone();
            tokio::spawn(async move {
                let mut accepted = 0u64;
                loop {
                    match a.record(key_used("key_1", p * 1_000_000 + accepted)).await {
                        Ok(()) => accepted += 1,
                        Err(AppendError::Closed) => return accepted,
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    sink.wait_for(300).await;
    // A generous bound that only turns a hang into a failure.
    tokio::time::timeout(Duration::from_secs(60), handle.shutdown())
        .await
        .expect("shutdown never finished while producers kept recording");

    let mut accepted = 0;
    for p in producers {
        accepted += p.await.unwrap();
    }
    let log = all(&*h.store).await;
    assert_eq!(log.len() as u64, accepted);
    assert_eq!(sink.seqs(), (1..=accepted).collect::<Vec<_>>());
    chain::verify(&log).unwrap();
}

// ---- the compact SQLite form (migration 0003) ----

/// Seals `events` in order onto an empty log, as the store always has.
fn seal_all(events: Vec<NewEvent>) -> Vec<Envelope> {
    let mut versions = std::collections::HashMap::<String, u64>::new();
    let mut prev = Hash32::ZERO;
    let mut out = Vec::new();
    for (i, e) in events.into_iter().enumerate() {
        let v = versions.entry(e.stream.clone()).or_insert(0);
        *v += 1;
        let env = e.seal(i as u64 + 1, *v, prev);
        prev = env.hash;
        out.push(env);
    }
    out
}

/// A SQLite file with only migrations 0001 and 0002 applied and `envs` inserted as the
/// store wrote rows before 0003.
async fn old_format_log(path: &std::path::Path, envs: &[Envelope]) {
    let old = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    for f in ["0001_events.sql", "0002_merkle.sql"] {
        std::fs::copy(root.join(f), old.path().join(f)).unwrap();
    }
    let migrator = sqlx::migrate::Migrator::new(old.path()).await.unwrap();
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .connect()
        .await
        .unwrap();
    migrator.run(&mut conn).await.unwrap();
    for e in envs {
        sqlx::query(
            "INSERT INTO events (seq, event_id, stream, stream_version, type, schema, \
             occurred_at, actor, request_id, data, prev_hash, hash) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(e.seq as i64)
        .bind(e.event_id.to_string())
        .bind(&e.stream)
        .bind(e.stream_version as i64)
        .bind(&e.event_type)
        .bind(i64::from(e.schema))
        .bind(e.occurred_at.timestamp_micros())
        .bind(&e.actor)
        .bind(e.request_id.as_deref())
        .bind(canonical::to_string(&e.data))
        .bind(&e.prev_hash.0[..])
        .bind(&e.hash.0[..])
        .execute(&mut conn)
        .await
        .unwrap();
    }
    sqlx::Connection::close(conn).await.unwrap();
}

#[tokio::test]
async fn a_log_in_the_old_format_is_migrated_and_every_hash_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let mut events = vec![user_created("usr_a"), user_created("usr_b")];
    for n in 0..300 {
        events.push(key_used(["key_1", "key_2", "key_3"][n % 3], n as u64));
    }
    let mut odd = user_created("usr_c");
    odd.data = json!({"f": 1.221043540074035e217, "neg": -7, "s": "quote\" é 😀", "n": null});
    events.push(odd);
    let old = seal_all(events);
    old_format_log(&path, &old).await;

    let store = SqliteStore::open(&path).await.unwrap();
    let read = all(&store).await;
    assert_eq!(read, old, "the migrated log reads back exactly as written");
    chain::verify(&read).unwrap();
    assert_eq!(store.head().await.unwrap().hash, old.last().unwrap().hash);

    // New rows (compact) follow the old ones (TEXT) and chain onto them.
    let more = ok_units(
        store
            .append(vec![
                vec![key_used("key_1", 1000)],
                vec![user_created("usr_d")],
            ])
            .await
            .unwrap(),
    );
    assert_eq!(more[0][0].prev_hash, old.last().unwrap().hash);
    assert_eq!(more[0][0].stream_version, 101);
    // An event id stored in the old TEXT form is still recognised: appending it again
    // gives the stored envelope back.
    let again = old[5].clone().unseal(ExpectedVersion::Any);
    let res = ok_units(store.append(vec![vec![again]]).await.unwrap());
    assert_eq!(res[0][0], old[5]);
    let everything = all(&store).await;
    assert_eq!(everything.len(), old.len() + 2);
    chain::verify(&everything).unwrap();
    assert_eq!(&everything[..old.len()], &old[..]);

    // Filters see old and new rows alike.
    let f = EventFilter {
        streams: vec!["usage:key_1".into()],
        types: vec!["key.used".into()],
        ..EventFilter::default()
    };
    assert_eq!(store.read(&f, 1000).await.unwrap().len(), 101);
    let f = EventFilter {
        actor: Some("system".into()),
        ..EventFilter::default()
    };
    assert_eq!(store.read(&f, 1000).await.unwrap().len(), 4);
    store.close().await;

    // The append-only triggers are on the rebuilt table.
    let mut conn = SqliteConnectOptions::new()
        .filename(&path)
        .connect()
        .await
        .unwrap();
    let triggers: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'events' \
         ORDER BY name",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(triggers, ["events_no_delete", "events_no_update"]);
}

#[tokio::test]
async fn a_pruned_predecessor_s_hash_comes_from_pruned_hashes() {
    let h = Harness::sqlite().await;
    let s = &*h.store;
    let mut units = vec![vec![user_created("usr_a")]];
    for n in 0..5 {
        units.push(vec![key_used("key_1", n)]);
    }
    ok_units(s.append(units).await.unwrap());
    let before = all(s).await;
    // Pruning (elsewhere) deletes usage rows and keeps their hashes.
    h.raw_execute(&format!(
        "DROP TRIGGER events_no_delete; \
         INSERT INTO pruned_hashes (seq, hash) VALUES (3, x'{}'), (4, x'{}'); \
         DELETE FROM events WHERE seq IN (3, 4)",
        before[2].hash.to_hex(),
        before[3].hash.to_hex()
    ))
    .await
    .unwrap();
    let after = all(s).await;
    assert_eq!(after.len(), 4);
    assert_eq!(
        after[2], before[4],
        "seq 5 still has seq 4's hash as its prev_hash"
    );
    assert_eq!(
        s.read_from(4, 10).await.unwrap()[0],
        before[4],
        "read on its own, too"
    );
    // Without the kept hash the row cannot be checked, and says so.
    h.raw_execute("DROP TRIGGER pruned_hashes_no_delete; DELETE FROM pruned_hashes WHERE seq = 4")
        .await
        .unwrap();
    match s.read_from(4, 10).await {
        Err(StoreError::Corrupt { seq: 5, reason }) => {
            assert!(reason.contains("pruned_hashes"), "{reason}")
        }
        other => panic!("expected Corrupt at seq 5, got {other:?}"),
    }
}
