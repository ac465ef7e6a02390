//! The crash harness: the real binary under concurrent management writes and proxy
//! traffic, `kill -9`ed at a random moment, restarted, and checked.
//!
//! - every acknowledged management write is in the log, at its acknowledged version;
//! - every stored row decodes, seqs are gap-free, and `keyward audit verify` passes;
//! - the key table the restarted API reports equals `keyward audit replay` of the log, and
//!   each key's usage count equals its `key.used` events in the export;
//! - the uses answered to a client but missing from the log (the queued usage window) are
//!   counted and printed with the request rate, never asserted away, under
//!   `--usage-durability async`; under `durable` there must be none: every request whose
//!   client received a complete answer (a whole body, or a stream through `[DONE]`) has its
//!   `key.used` in the log after every kill.
//!
//! `KEYWARD_CRASH_CYCLES` sets the cycles (20 by default), `KEYWARD_CRASH_SEED` replays a
//! run (the kill moments and the workers' choices; the exact interleaving is the
//! scheduler's); `scripts/crash-loop.sh N` runs N cycles on a release build.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::proxy::mock::Mock;

/// Cycles on one data dir before a fresh one, so a long run does not replay an ever
/// larger log at each start.
const CYCLES_PER_DIR: usize = 50;
const READY_TIMEOUT: Duration = Duration::from_secs(120);

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        // A failing cycle must not leave a server running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `KEYWARD_CRASH_BIN` runs another build of the binary (a copy, for a long run that must
/// not see a rebuild halfway through).
fn bin(dir: &Path) -> Command {
    let exe = std::env::var_os("KEYWARD_CRASH_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_keyward")),
        PathBuf::from,
    );
    let mut c = Command::new(exe);
    c.arg("--data-dir")
        .arg(dir)
        .env_remove("KEYWARD_DATABASE_URL")
        .env_remove("KEYWARD_MASTER_KEYS")
        .env_remove("KEYWARD_CONFIG")
        // The mock provider listens on loopback, which needs an explicit allowlist.
        .env("KEYWARD_UPSTREAM_ALLOW", "127.0.0.0/8");
    c
}

async fn start_server(dir: &Path, http: &reqwest::Client, durability: &str) -> Server {
    let log = dir.join("serve.log");
    for _attempt in 0..5 {
        let port = free_port();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = bin(dir)
            .arg("serve")
            .env("KEYWARD_LISTEN", format!("127.0.0.1:{port}"))
            .env("KEYWARD_LOG", "warn")
            .env("KEYWARD_SHUTDOWN_GRACE", "1s")
            .env("KEYWARD_USAGE_DURABILITY", durability)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("cannot listen") {
                    break; // another process took the port: try another
                }
                panic!("keyward exited at start with {status}:\n{text}");
            }
            if let Ok(r) = http.get(format!("{}/readyz", server.base)).send().await
                && r.status() == 200
            {
                return server;
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "keyward was not ready within {READY_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("no free port to listen on after 5 attempts");
}

fn kill9(server: &mut Server) {
    // std's kill is SIGKILL on Unix: no drain, no shutdown hook.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

fn run_cli(dir: &Path, args: &[&str]) -> std::process::Output {
    let out = bin(dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "keyward {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[derive(Clone, Debug, Default)]
struct AckedKey {
    version: u64,
    expired: bool,
}

/// What the service acknowledged to its clients.
#[derive(Default)]
struct Acked {
    users: HashSet<String>,
    keys: HashMap<String, AckedKey>,
    /// Secrets of keys that should still work, for the proxy workers.
    secrets: Vec<(String, String)>,
    /// Request ids of the proxy's 200 answers.
    answered: Vec<String>,
    writes: u64,
}

impl Acked {
    fn key(&mut self, id: &str, version: u64, expired: bool) {
        let k = self.keys.entry(id.to_owned()).or_default();
        k.version = k.version.max(version);
        k.expired |= expired;
        self.writes += 1;
    }
}

struct Ctx {
    http: reqwest::Client,
    base: String,
    admin: String,
    provider: String,
    acked: Mutex<Acked>,
    stop: AtomicBool,
}

impl Ctx {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Option<Value> {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.admin);
        if let Some(b) = body {
            req = req.json(&b);
        }
        // A connection error is the kill: that write was never acknowledged.
        let r = req.send().await.ok()?;
        let status = r.status().as_u16();
        let v: Value = r.json().await.ok()?;
        match status {
            200 | 201 => Some(v),
            // Two workers raced on one key, or one acted on a key another just expired.
            409 | 422 => None,
            _ => panic!("unexpected {status} on {path}: {v}"),
        }
    }
}

/// One management worker: users, keys, patches, rotations and expiries, at random.
async fn manage(ctx: Arc<Ctx>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut n = 0u64;
    while !ctx.stop.load(Ordering::Relaxed) {
        n += 1;
        let (users, keys): (Vec<String>, Vec<String>) = {
            let a = ctx.acked.lock();
            (
                a.users.iter().cloned().collect(),
                a.keys
                    .iter()
                    .filter(|(_, k)| !k.expired)
                    .map(|(id, _)| id.clone())
                    .collect(),
            )
        };
        let op = rng.gen_range(0..10);
        if op == 0 || users.is_empty() {
            let name = format!("u{seed}x{n}x{}", rng.r#gen::<u32>());
            let body = json!({"username": name, "role": "user"});
            if let Some(v) = ctx.call(reqwest::Method::POST, "/users", Some(body)).await {
                ctx.acked
                    .lock()
                    .users
                    .insert(v["id"].as_str().unwrap().to_owned());
            }
        } else if op <= 3 || keys.is_empty() {
            let owner = &users[rng.gen_range(0..users.len())];
            let body = json!({"name": format!("k{n}"), "owner_id": owner,
                "provider_id": ctx.provider, "expires_in": "30d", "scopes": ["chat"]});
            if let Some(v) = ctx.call(reqwest::Method::POST, "/keys", Some(body)).await {
                let id = v["key"]["id"].as_str().unwrap().to_owned();
                let mut a = ctx.acked.lock();
                a.key(&id, v["key"]["version"].as_u64().unwrap(), false);
                a.secrets
                    .push((id, v["secret"].as_str().unwrap().to_owned()));
            }
        } else {
            let id = &keys[rng.gen_range(0..keys.len())];
            let path = format!("/keys/{id}");
            match op {
                4..=6 => {
                    let body = json!({"name": format!("renamed-{n}")});
                    if let Some(v) = ctx.call(reqwest::Method::PATCH, &path, Some(body)).await {
                        ctx.acked
                            .lock()
                            .key(id, v["version"].as_u64().unwrap(), false);
                    }
                }
                7 | 8 => {
                    let body = json!({"grace_period": "1h"});
                    if let Some(v) = ctx
                        .call(reqwest::Method::POST, &format!("{path}/rotate"), Some(body))
                        .await
                    {
                        let new = v["key"]["id"].as_str().unwrap().to_owned();
                        let mut a = ctx.acked.lock();
                        a.key(id, v["previous"]["version"].as_u64().unwrap(), false);
                        a.key(&new, v["key"]["version"].as_u64().unwrap(), false);
                        a.secrets
                            .push((new, v["secret"].as_str().unwrap().to_owned()));
                    }
                }
                _ => {
                    if let Some(v) = ctx
                        .call(reqwest::Method::POST, &format!("{path}/expire"), None)
                        .await
                    {
                        let mut a = ctx.acked.lock();
                        a.key(id, v["version"].as_u64().unwrap(), true);
                        a.secrets.retain(|(k, _)| k != id);
                    }
                }
            }
        }
    }
}

/// One proxy worker: chat completions with a random live key, one in three streamed;
/// counts the 200s whose answer arrived complete.
async fn traffic(ctx: Arc<Ctx>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !ctx.stop.load(Ordering::Relaxed) {
        let pick = {
            let a = ctx.acked.lock();
            (!a.secrets.is_empty()).then(|| a.secrets[rng.gen_range(0..a.secrets.len())].clone())
        };
        let Some((_, secret)) = pick else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let stream = rng.gen_range(0..3) == 0;
        let r = ctx
            .http
            .post(format!("{}/v1/chat/completions", ctx.base))
            .bearer_auth(&secret)
            .json(&json!({"model": "gpt-4o-mini", "stream": stream,
                          "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await;
        let Ok(r) = r else { continue };
        let status = r.status().as_u16();
        // Keyward's own request id, which its `key.used` records.
        let id = r
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // The answer counts once its body has arrived whole (a stream: through its end).
        let Ok(body) = r.bytes().await else { continue };
        if stream && !body.ends_with(b"data: [DONE]\n\n") {
            continue;
        }
        if let (200, Some(id)) = (status, id) {
            ctx.acked.lock().answered.push(id);
        }
    }
}

fn export(dir: &Path) -> Vec<Value> {
    let out = run_cli(dir, &["audit", "export"]);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("torn row {l:?}: {e}")))
        .collect()
}

/// The fields the API and the replay both report, per key id.
fn table_from_replay(v: &Value) -> BTreeMap<String, Value> {
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["key_id"].as_str().unwrap().to_owned(),
                json!([
                    k["name"],
                    k["owner_id"],
                    k["prefix"],
                    k["status"],
                    k["expires_at"],
                    k["scopes"],
                    k["provider_ids"]
                ]),
            )
        })
        .collect()
}

async fn api_keys(ctx: &Ctx) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{}/api/v1/keys?limit=500", ctx.base);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let v: Value = ctx
            .http
            .get(url)
            .bearer_auth(&ctx.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        all.extend(v["keys"].as_array().unwrap().iter().cloned());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return all,
        }
    }
}

#[derive(Default)]
struct Totals {
    cycles: usize,
    writes: u64,
    answered: u64,
    lost_uses: u64,
    traffic: Duration,
}

/// After the kill, on the dead data dir: no torn row, a gap-free verified chain, every
/// acknowledged write present. Returns the log and the replayed key table.
fn check_offline(dir: &Path, acked: &Acked) -> (Vec<Value>, BTreeMap<String, Value>) {
    let verify = run_cli(dir, &["audit", "verify"]);
    assert!(
        String::from_utf8_lossy(&verify.stdout).starts_with("ok:"),
        "{verify:?}"
    );
    let log = export(dir);
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e["seq"].as_u64(), Some(i as u64 + 1), "a gap in the log");
    }
    let mut versions: HashMap<&str, u64> = HashMap::new();
    for e in &log {
        let v = versions.entry(e["stream"].as_str().unwrap()).or_default();
        *v = (*v).max(e["stream_version"].as_u64().unwrap());
    }
    for u in &acked.users {
        assert!(
            versions.contains_key(format!("user:{u}").as_str()),
            "acknowledged user {u} is not in the log"
        );
    }
    for (id, k) in &acked.keys {
        let have = versions.get(format!("key:{id}").as_str()).copied();
        assert!(
            have.is_some_and(|v| v >= k.version),
            "acknowledged key {id} version {} is not in the log (log has {have:?})",
            k.version
        );
    }
    let replay = run_cli(dir, &["audit", "replay", "--format", "json"]);
    let replay: Value = serde_json::from_slice(&replay.stdout).unwrap();
    (log, table_from_replay(&replay))
}

/// After the restart: the API reports what the log says.
async fn check_online(ctx: &Ctx, acked: &Acked, log: &[Value], replay: &BTreeMap<String, Value>) {
    let keys = api_keys(ctx).await;
    let api: BTreeMap<String, Value> = keys
        .iter()
        .map(|k| {
            (
                k["id"].as_str().unwrap().to_owned(),
                json!([
                    k["name"],
                    k["owner_id"],
                    k["prefix"],
                    k["status"],
                    k["expires_at"],
                    k["scopes"],
                    k["provider_ids"]
                ]),
            )
        })
        .collect();
    assert_eq!(
        api, *replay,
        "the API's key table differs from the replayed log"
    );
    let mut used: HashMap<&str, u64> = HashMap::new();
    for e in log.iter().filter(|e| e["type"] == "key.used") {
        *used
            .entry(e["data"]["key_id"].as_str().unwrap())
            .or_default() += 1;
    }
    for k in &keys {
        let id = k["id"].as_str().unwrap();
        assert_eq!(
            k["usage"]["requests"].as_u64().unwrap(),
            used.get(id).copied().unwrap_or(0),
            "key {id}: the API's usage differs from the log's key.used events"
        );
        if let Some(a) = acked.keys.get(id) {
            assert!(
                k["version"].as_u64().unwrap() >= a.version,
                "key {id} went back"
            );
            if a.expired {
                assert_ne!(
                    k["status"], "active",
                    "acknowledged expiry of {id} was lost"
                );
            }
        }
    }
}

/// Answered by the proxy but absent from the log: the documented usage window.
fn lost_uses(acked: &Acked, log: &[Value]) -> u64 {
    let logged: HashSet<&str> = log
        .iter()
        .filter(|e| e["type"] == "key.used")
        .filter_map(|e| e["request_id"].as_str())
        .collect();
    acked
        .answered
        .iter()
        .filter(|id| !logged.contains(id.as_str()))
        .count() as u64
}

fn cycles_from_env() -> usize {
    std::env::var("KEYWARD_CRASH_CYCLES")
        .ok()
        .map(|s| s.parse().expect("KEYWARD_CRASH_CYCLES is a number"))
        .unwrap_or(20)
}

fn seed_from_env() -> u64 {
    std::env::var("KEYWARD_CRASH_SEED")
        .ok()
        .map(|s| s.parse().expect("KEYWARD_CRASH_SEED is a number"))
        .unwrap_or_else(|| rand::thread_rng().r#gen())
}

async fn first_start(
    dir: &Path,
    http: &reqwest::Client,
    mock: &Mock,
    durability: &str,
) -> (Server, String, String) {
    let server = start_server(dir, http, durability).await;
    let admin = std::fs::read_to_string(dir.join("initial-admin-key"))
        .unwrap()
        .trim()
        .to_owned();
    let v: Value = http
        .post(format!("{}/api/v1/providers", server.base))
        .bearer_auth(&admin)
        .json(
            &json!({"name": "mock", "kind": "openai", "base_url": mock.openai_base(),
                      "api_key": "sk-crash-harness-0123456789", "models": ["gpt-4o-mini"]}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let provider = v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no provider: {v}"))
        .to_owned();
    (server, admin, provider)
}

async fn run_cycles(cycles: usize, seed: u64, durability: &str) -> Totals {
    eprintln!(
        "crash harness: {cycles} cycles, --usage-durability {durability}, KEYWARD_CRASH_SEED={seed}"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let mock = Mock::start().await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut totals = Totals::default();
    let mut dir: Option<tempfile::TempDir> = None;
    let mut state: Option<(Server, String, String, Acked)> = None;
    for cycle in 0..cycles {
        if cycle % CYCLES_PER_DIR == 0 {
            if let Some((mut server, ..)) = state.take() {
                kill9(&mut server);
            }
            let d = tempfile::tempdir().unwrap();
            let (server, admin, provider) = first_start(d.path(), &http, &mock, durability).await;
            state = Some((server, admin, provider, Acked::default()));
            dir = Some(d);
        }
        let path: PathBuf = dir.as_ref().unwrap().path().to_path_buf();
        let (mut server, admin, provider, acked) = state.take().unwrap();
        let ctx = Arc::new(Ctx {
            http: http.clone(),
            base: server.base.clone(),
            admin,
            provider,
            acked: Mutex::new(Acked {
                answered: Vec::new(),
                writes: 0,
                ..acked
            }),
            stop: AtomicBool::new(false),
        });
        let mut workers = Vec::new();
        for w in 0..3 {
            workers.push(tokio::spawn(manage(ctx.clone(), rng.r#gen::<u64>() ^ w)));
        }
        for w in 0..6 {
            workers.push(tokio::spawn(traffic(ctx.clone(), rng.r#gen::<u64>() ^ w)));
        }
        let run_for = Duration::from_millis(rng.gen_range(100..1500));
        let t = Instant::now();
        tokio::time::sleep(run_for).await;
        kill9(&mut server);
        let ran = t.elapsed();
        ctx.stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.await.unwrap();
        }
        let ctx = Arc::into_inner(ctx).unwrap();
        let acked = ctx.acked.into_inner();

        let (log, replay) = check_offline(&path, &acked);
        let server = start_server(&path, &http, durability).await;
        let ctx = Ctx {
            base: server.base.clone(),
            acked: Mutex::new(Acked::default()),
            stop: AtomicBool::new(false),
            ..ctx
        };
        check_online(&ctx, &acked, &log, &replay).await;
        let answered = acked.answered.len() as u64;
        let lost = lost_uses(&acked, &log);
        eprintln!(
            "cycle {cycle}: killed after {ran:?}; {} writes and {answered} uses acknowledged \
             ({:.0} uses/s); log head {}; uses answered but not logged: {lost}",
            acked.writes,
            answered as f64 / ran.as_secs_f64(),
            log.len()
        );
        if durability == "durable" {
            assert_eq!(
                lost, 0,
                "cycle {cycle} (KEYWARD_CRASH_SEED={seed}): under durable, {lost} answered uses are not in the log"
            );
        }
        totals.cycles += 1;
        totals.writes += acked.writes;
        totals.answered += answered;
        totals.lost_uses += lost;
        totals.traffic += ran;
        state = Some((server, ctx.admin, ctx.provider, acked));
    }
    if let Some((mut server, ..)) = state {
        kill9(&mut server);
    }
    totals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_loses_no_acknowledged_write() {
    let seed = seed_from_env();
    let started = Instant::now();
    let t = run_cycles(cycles_from_env(), seed, "async").await;
    eprintln!(
        "crash harness done (async): seed {seed}, {} cycles in {:?}; {} management writes \
         acknowledged, none lost; {} proxy uses answered at {:.0}/s, {} of them not logged \
         at the kill (the usage window, {:.2} per kill)",
        t.cycles,
        started.elapsed(),
        t.writes,
        t.answered,
        t.answered as f64 / t.traffic.as_secs_f64().max(0.001),
        t.lost_uses,
        t.lost_uses as f64 / t.cycles.max(1) as f64
    );
}

/// The same cycles under `--usage-durability durable`: after every kill, every request
/// whose client received a complete answer has its `key.used` in the log (asserted in each
/// cycle).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_in_durable_mode_loses_no_answered_use() {
    let seed = seed_from_env();
    let started = Instant::now();
    let t = run_cycles(cycles_from_env(), seed, "durable").await;
    assert_eq!(t.lost_uses, 0);
    eprintln!(
        "crash harness done (durable): seed {seed}, {} cycles in {:?}; {} management writes \
         acknowledged, none lost; {} proxy uses answered at {:.0}/s, none of them missing \
         from the log",
        t.cycles,
        started.elapsed(),
        t.writes,
        t.answered,
        t.answered as f64 / t.traffic.as_secs_f64().max(0.001),
    );
}
