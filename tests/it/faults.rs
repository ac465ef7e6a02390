//! Store faults, made real: a read-only database file (`chattr +i`, since root ignores
//! file modes), a full disk (a small tmpfs), and a database locked by another process
//! (`BEGIN EXCLUSIVE` held by a python3 sqlite3 process). In each case management calls
//! get 503 problem+json with nothing written, the proxy serves until the usage queue is
//! full and then refuses with 503 `usage_queue_full`, and once the fault clears the
//! service recovers by itself: the queued uses are committed and writes work again.
//!
//! A fault whose capability this machine lacks is skipped with a message, except under
//! `CI=true`, where CI's machine is known to have it and a skip would hide a regression.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use keyward::config::UsageDurability;
use serde_json::json;

use crate::proxy::{Gw, KeySpec, Reply, chat};

/// Small so that a fault fills it within a few requests.
const QUEUE: usize = 8;
const BATCH: usize = 4;

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips a test whose fault cannot be made here, or fails it under CI.
fn unavailable(what: &str, why: &str) {
    assert!(!ci(), "CI=true but {what} is not possible here: {why}");
    crate::skip::skipped(
        &crate::skip::current_test(),
        &format!("{what} is not possible on this machine: {why}"),
    );
}

fn sh(cmd: &str, args: &[&str]) -> Result<(), String> {
    match Command::new(cmd).args(args).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("{cmd}: {e}")),
    }
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().to_str().ok_or("path")?.to_owned();
        sh(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", &path],
        )?;
        Ok(Tmpfs { dir })
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = sh("umount", &["-l", self.dir.path().to_str().unwrap_or("")]);
    }
}

/// Files made immutable; made mutable again on drop, so the temp dir can be removed even
/// when the test fails.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    fn set(files: Vec<PathBuf>) -> Result<Immutable, String> {
        let guard = Immutable(Vec::new());
        let mut guard = guard;
        for f in files {
            sh("chattr", &["+i", f.to_str().ok_or("path")?])?;
            guard.0.push(f);
        }
        Ok(guard)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = sh("chattr", &["-i", f.to_str().unwrap_or("")]);
        }
    }
}

/// Another process holding SQLite's write lock until dropped.
struct Locker(Child);

impl Locker {
    fn hold(db: &Path) -> Result<Locker, String> {
        let script = "import sqlite3, sys\n\
                      c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
                      c.execute('BEGIN EXCLUSIVE')\n\
                      print('locked', flush=True)\n\
                      sys.stdin.read()\n";
        let mut child = Command::new("python3")
            .args(["-c", script])
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("python3: {e}"))?;
        let mut line = String::new();
        let stdout = child.stdout.take().ok_or("stdout")?;
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if line.trim() != "locked" {
            let _ = child.kill();
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            return Err(format!(
                "python3 could not lock: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(Locker(child))
    }
}

impl Drop for Locker {
    fn drop(&mut self) {
        // Closing stdin ends the script; its connection closes and the lock goes.
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

async fn manage(gw: &Gw, admin: &str, provider: &str, name: &str) -> Reply {
    let req = Request::post("/api/v1/keys")
        .header("authorization", format!("Bearer {admin}"))
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"name": name, "provider_id": provider, "expires_in": "1d", "scopes": ["chat"]})
                .to_string(),
        ))
        .unwrap();
    Reply::read(gw.call(req).await).await
}

#[track_caller]
fn assert_unavailable(r: &Reply) {
    assert_eq!(r.status.as_u16(), 503, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let v = r.json();
    assert_eq!(v["code"], "unavailable", "{v}");
    assert_eq!(v["status"], 503, "{v}");
}

async fn used_count(gw: &Gw) -> usize {
    crate::proxy::stored(&gw.state, "key.used").await.len()
}

/// Starts a gateway on `data_dir` (a fresh temp dir when `None`) with a small queue.
async fn gateway(data_dir: Option<&Path>) -> (Gw, String, String, String) {
    gateway_in(data_dir, UsageDurability::Async).await
}

async fn gateway_in(
    data_dir: Option<&Path>,
    durability: UsageDurability,
) -> (Gw, String, String, String) {
    let dir = data_dir.map(Path::to_path_buf);
    let gw = Gw::start_with(|c| {
        c.usage_queue_capacity = QUEUE;
        c.append_batch_max = BATCH;
        c.usage_durability = durability;
        if let Some(d) = dir {
            c.database_url = format!("sqlite://{}", d.join("keyward.db").display());
            c.data_dir = d;
        }
    })
    .await;
    let admin = std::fs::read_to_string(
        data_dir
            .unwrap_or(gw.t.dir.path())
            .join("initial-admin-key"),
    )
    .unwrap()
    .trim()
    .to_owned();
    let p = gw.openai(&[]).await;
    // A quota far from full: its reservations must follow every use through the fault.
    let mut spec = KeySpec::on(&p);
    spec.quota = Some(keyward_events::Quota {
        requests_per_day: Some(1_000_000),
        ..keyward_events::Quota::default()
    });
    let (_, secret) = gw.key(spec).await;
    (gw, admin, p, secret)
}

/// The scenario every fault shares. `inject` makes the fault and returns what clears it
/// on drop.
async fn survives<G>(
    gw: Gw,
    admin: String,
    provider: String,
    secret: String,
    inject: impl FnOnce() -> G,
) {
    // A use before the fault, committed.
    let r = gw.post("/v1/chat/completions", &secret, chat("m")).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(gw.events("key.used", 1).await.len(), 1);
    let head_before = gw.state.0.store.head().await.unwrap().seq;

    let fault = inject();
    eprintln!("fault injected");

    let r = manage(&gw, &admin, &provider, "during-fault-1").await;
    assert_unavailable(&r);

    // The proxy keeps answering while the queue has room, then refuses: never an answer
    // whose use could not be recorded.
    let mut served = 0usize;
    let refused = loop {
        let r = tokio::time::timeout(
            Duration::from_secs(60),
            gw.post("/v1/chat/completions", &secret, chat("m")),
        )
        .await
        .expect("a proxy call was held during the fault instead of answered");
        if r.status == 200 {
            served += 1;
            assert!(
                served <= QUEUE + BATCH + 1,
                "the proxy served past a full queue"
            );
            continue;
        }
        break r;
    };
    eprintln!(
        "proxy served {served} during the fault, then {}",
        refused.status
    );
    refused.assert_error(503, "usage_queue_full");
    assert_eq!(refused.json()["error"]["type"], "api_error");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(
        served >= QUEUE,
        "served only {served} before the queue was full"
    );
    // Each answered use is held against the quota until it is folded; the refused request
    // gave its place back.
    let key_id = match &gw.events("key.used", 1).await[0] {
        keyward_events::Event::KeyUsed(u) => u.key_id.clone(),
        other => panic!("{other:?}"),
    };
    let reservations = || gw.state.0.live.reservations().in_flight(&key_id);
    assert_eq!(reservations().requests, served as u64);
    // With the queue full, a management call is refused in bounded time, not held.
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        manage(&gw, &admin, &provider, "during-fault-2"),
    )
    .await
    .expect("a management call was held on the full queue instead of refused");
    assert_unavailable(&r);
    assert_eq!(gw.state.0.store.head().await.unwrap().seq, head_before);

    drop(fault);
    eprintln!("fault cleared");

    // Recovery without a restart: every use the proxy answered is committed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while used_count(&gw).await < 1 + served {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queued uses were not committed after the fault cleared"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(used_count(&gw).await, 1 + served);
    while reservations() != Default::default() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the committed uses were not settled: {:?}",
            reservations()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = manage(&gw, &admin, &provider, "after-fault").await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.text());
    let r = gw.post("/v1/chat/completions", &secret, chat("m")).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());

    // Nothing half-written: the refused creations left no event, and the log verifies.
    let created = crate::proxy::stored(&gw.state, "key.created").await;
    let names: Vec<String> = created
        .iter()
        .filter_map(|e| match e {
            keyward_events::Event::KeyCreated(k) => Some(k.name.clone()),
            _ => None,
        })
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with("during-fault")),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n == "after-fault"));
    let report = keyward::audit::verify_chain(gw.state.0.store.as_ref(), None)
        .await
        .unwrap();
    assert!(
        report.failure.is_none(),
        "{:?}",
        report.failure.map(|f| f.reason)
    );
    assert_eq!(report.checked, report.head.seq, "the log has a gap");
    assert_eq!(gw.state.0.commands.appender.queue_depth(), 0);
}

/// The gateway's database files (the file and its WAL), to make read-only; `None` (the
/// test skipped, or failed under CI) when chattr cannot work here: it needs
/// CAP_LINUX_IMMUTABLE and a file system that has the flag, probed on a scratch file.
fn database_files_if_chattr_works(gw: &Gw) -> Option<Vec<PathBuf>> {
    let db = gw.t.db_path();
    let probe = gw.t.dir.path().join("probe");
    std::fs::write(&probe, b"x").unwrap();
    if let Err(e) = Immutable::set(vec![probe]) {
        unavailable("chattr +i", &e);
        return None;
    }
    Some(vec![
        db.clone(),
        PathBuf::from(format!("{}-wal", db.display())),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_database_file() {
    let (gw, admin, p, secret) = gateway(None).await;
    let Some(files) = database_files_if_chattr_works(&gw) else {
        return;
    };
    survives(gw, admin, p, secret, move || Immutable::set(files).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk() {
    let fs = match Tmpfs::mount("16m") {
        Ok(fs) => fs,
        Err(e) => return unavailable("mounting a tmpfs", &e),
    };
    let (gw, admin, p, secret) = gateway(Some(fs.path())).await;
    let filler = fs.path().join("filler");
    survives(gw, admin, p, secret, move || {
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        loop {
            match f.write_all(&block) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        // Write the odd bytes left under a block too.
        while f.write_all(&[0u8; 512]).is_ok() {}
        let _ = f.sync_all();
        Filler(filler)
    })
    .await;
}

struct Filler(PathBuf);

impl Drop for Filler {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_locked_by_another_process() {
    let (gw, admin, p, secret) = gateway(None).await;
    let db = gw.t.db_path();
    // Probe: python3 with sqlite3 holds and releases the lock once.
    if let Err(e) = Locker::hold(&db) {
        return unavailable("locking the database from python3", &e);
    }
    survives(gw, admin, p, secret, move || Locker::hold(&db).unwrap()).await;
}

/// A streamed chat request's body, read frame by frame: the bytes that arrived, and
/// whether the body ended with an error (the connection aborted) rather than cleanly.
async fn read_stream(gw: &Gw, secret: &str) -> (u16, String, bool) {
    let mut body = chat("m");
    body["stream"] = json!(true);
    let res = gw
        .call(crate::proxy::post("/v1/chat/completions", secret, body))
        .await;
    let status = res.status().as_u16();
    let mut body = res.into_body();
    let mut text = Vec::new();
    let aborted = loop {
        match body.frame().await {
            None => break false,
            Some(Err(_)) => break true,
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    text.extend_from_slice(&d);
                }
            }
        }
    };
    (status, String::from_utf8_lossy(&text).into_owned(), aborted)
}

/// `--usage-durability durable` under a store fault (the database file made read-only):
/// before it, an answer arrives only with its `key.used` already in the log; during it,
/// answers are held for the commit and then cut off (503 `usage_not_recorded`, or a stream
/// without its end, an error event and an aborted body), never completed unrecorded; after
/// it, the uses of the cut-off answers are committed (kept and retried, not lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_answers_wait_for_their_commit_and_are_cut_off_when_it_fails() {
    let (gw, _admin, _p, secret) = gateway_in(None, UsageDurability::Durable).await;
    let Some(files) = database_files_if_chattr_works(&gw) else {
        return;
    };

    // Two keys refused on the management API for their IP allowlist (two keys, so the
    // per-key denial throttle records both refusals).
    let p = gw.openai(&[]).await;
    let (_, outside_1) = gw.key(narrow_key(&p)).await;
    let (_, outside_2) = gw.key(narrow_key(&p)).await;
    let r = me_from_outside(&gw, &outside_1).await;
    assert_eq!(r.status.as_u16(), 403, "{}", r.text());
    assert_eq!(
        crate::proxy::stored(&gw.state, "key.denied").await.len(),
        1,
        "a management refusal was answered before its key.denied committed"
    );

    // No waiting for the log: the answer itself says the use is committed.
    let r = gw.post("/v1/chat/completions", &secret, chat("m")).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(used_count(&gw).await, 1);
    let (status, text, aborted) = read_stream(&gw, &secret).await;
    assert_eq!(status, 200);
    assert!(!aborted, "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert_eq!(used_count(&gw).await, 2);

    let fault = Immutable::set(files).unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        gw.post("/v1/chat/completions", &secret, chat("m")),
    )
    .await
    .expect("a durable answer was held past its failed commit");
    r.assert_error(503, "usage_not_recorded");
    assert_eq!(r.json()["error"]["type"], "api_error");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        !r.text().contains("chatcmpl"),
        "the answer leaked: {}",
        r.text()
    );

    let (status, text, aborted) =
        tokio::time::timeout(Duration::from_secs(60), read_stream(&gw, &secret))
            .await
            .expect("a durable stream was held past its failed commit");
    assert_eq!(status, 200);
    assert!(aborted, "the stream ended cleanly: {text}");
    // A management refusal whose key.denied cannot commit is 503, not the 403.
    let r = tokio::time::timeout(Duration::from_secs(60), me_from_outside(&gw, &outside_2))
        .await
        .expect("a durable management refusal was held past its failed commit");
    assert_unavailable(&r);
    assert!(
        !text.contains("[DONE]"),
        "the stream's end went out: {text}"
    );
    assert!(text.contains("chat.completion.chunk"), "{text}");
    assert!(text.contains("usage_not_recorded"), "{text}");
    assert_eq!(used_count(&gw).await, 2);

    drop(fault);
    // The two cut-off uses were kept and are committed once the store is back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while used_count(&gw).await < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cut-off uses were not committed after the fault cleared"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = gw.post("/v1/chat/completions", &secret, chat("m")).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(used_count(&gw).await, 5);
}

/// `durable` on PostgreSQL: the commit an answer waits for is the database's, so each
/// answer, whole or streamed, arrives with its `key.used` already readable by any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_answers_on_postgres_arrive_with_their_use_committed() {
    let Some(db) = crate::pg::TestDb::create().await else {
        return;
    };
    let url = db.url.clone();
    let gw = Gw::start_with(move |c| {
        c.database_url = url;
        c.master_keys = Some(crate::nodes::MASTER_KEYS.to_owned());
        c.usage_durability = UsageDurability::Durable;
    })
    .await;
    let p = gw.openai(&[]).await;
    let (_, secret) = gw.key(KeySpec::on(&p)).await;
    // Read from the database directly, not through the node's projection.
    let mut conn = db.connect().await;
    let mut logged = async || -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events WHERE type = 'key.used'")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    for i in 1..=3 {
        let r = gw.post("/v1/chat/completions", &secret, chat("m")).await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.text());
        let (status, text, aborted) = read_stream(&gw, &secret).await;
        assert_eq!(status, 200);
        assert!(!aborted && text.contains("[DONE]"), "{text}");
        assert_eq!(logged().await, 2 * i);
    }
}

/// `durable`, no fault: in each stream mode (OpenAI passed through, Anthropic passed
/// through, Anthropic translated to OpenAI) the held end is released after the commit, so
/// the stream ends whole, and a provider's error answer is held and released the same way.
#[tokio::test]
async fn durable_streams_of_every_dialect_end_whole_once_their_use_committed() {
    let gw = Gw::start_with(|c| c.usage_durability = UsageDurability::Durable).await;
    let openai = gw.openai(&[]).await;
    let anthropic = gw.anthropic(json!({})).await;
    let (_, s_openai) = gw.key(KeySpec::on(&openai)).await;
    let (_, s_anthropic) = gw.key(KeySpec::on(&anthropic)).await;
    let stream = |path: &str, secret: &str, body: serde_json::Value| {
        let req = crate::proxy::post(path, secret, body);
        async { Reply::read(gw.call(req).await).await }
    };
    let mut chat_stream = chat("claude-sonnet-4-20250514");
    chat_stream["stream"] = json!(true);

    // OpenAI through.
    let (status, text, aborted) = read_stream(&gw, &s_openai).await;
    assert_eq!(status, 200);
    assert!(
        !aborted && text.trim_end().ends_with("data: [DONE]"),
        "{text}"
    );
    assert_eq!(used_count(&gw).await, 1);
    // Anthropic through: ends with message_stop.
    let r = stream(
        "/v1/messages",
        &s_anthropic,
        json!({"model": "claude-sonnet-4-20250514", "max_tokens": 64, "stream": true,
               "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert!(r.text().contains("event: message_stop"), "{}", r.text());
    assert_eq!(used_count(&gw).await, 2);
    // Anthropic translated for an OpenAI client: ends with [DONE].
    let r = stream("/v1/chat/completions", &s_anthropic, chat_stream).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert!(
        r.text().trim_end().ends_with("data: [DONE]"),
        "{}",
        r.text()
    );
    assert_eq!(used_count(&gw).await, 3);
    // A provider's error, whole: recorded before it is answered.
    let r = gw
        .post("/v1/chat/completions", &s_anthropic, chat("claude-error"))
        .await;
    assert_eq!(r.status.as_u16(), 400, "{}", r.text());
    assert_eq!(used_count(&gw).await, 4);
    // A refusal that records a key.denied: recorded before it is answered.
    let r = gw
        .post("/v1/chat/completions", "kw_not_a_key", chat("m"))
        .await;
    assert_eq!(r.status.as_u16(), 401);
    let mut narrow = KeySpec::on(&openai);
    narrow.models = vec!["gpt-4o".to_owned()];
    let (_, s_narrow) = gw.key(narrow).await;
    let r = gw.post("/v1/chat/completions", &s_narrow, chat("m")).await;
    r.assert_error(403, "model_not_allowed");
    assert_eq!(
        crate::proxy::stored(&gw.state, "key.denied").await.len(),
        1,
        "the refusal was answered before its key.denied committed"
    );
}

/// GET /api/v1/me with a key whose IP allowlist leaves out the test client (127.0.0.1).
async fn me_from_outside(gw: &Gw, secret: &str) -> Reply {
    let req = Request::get("/api/v1/me")
        .header("authorization", format!("Bearer {secret}"))
        .body(Body::empty())
        .unwrap();
    Reply::read(gw.call(req).await).await
}

fn narrow_key(p: &str) -> KeySpec {
    let mut spec = KeySpec::on(p);
    spec.scopes = vec![keyward_events::Scope::Full];
    spec.ip_allowlist = vec!["10.0.0.0/8".to_owned()];
    spec
}
