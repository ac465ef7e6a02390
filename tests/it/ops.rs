//! Operations, against the real binary where the process matters: JSON logs that carry
//! the request id, and a SIGTERM that lets a stream finish and loses no usage event.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::common::{keyward, stdout};
use crate::proxy::mock::Mock;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `keyward serve` on a port of its own, with JSON logs collected from stderr.
struct Served {
    child: Child,
    base: String,
    lines: Arc<Mutex<Vec<String>>>,
    http: reqwest::Client,
}

impl Served {
    async fn start(dir: &Path, extra: &[&str]) -> Served {
        Served::start_with(dir, extra, &[("KEYWARD_LOG_FORMAT", "json")]).await
    }

    async fn start_with(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Served {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_keyward"))
            .arg("--data-dir")
            .arg(dir)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env_remove("KEYWARD_LOG_FORMAT")
            .env_remove("KEYWARD_LOG")
            .envs(env.iter().copied())
            .env_remove("KEYWARD_DATABASE_URL")
            .env_remove("KEYWARD_MASTER_KEYS")
            .env("KEYWARD_UPSTREAM_ALLOW", "127.0.0.0/8")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().push(line);
            }
        });
        let served = Served {
            child,
            base: format!("http://127.0.0.1:{port}"),
            lines,
            http: reqwest::Client::new(),
        };
        for _ in 0..200 {
            if let Ok(r) = served.http.get(served.url("/readyz")).send().await
                && r.status() == 200
            {
                return served;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("keyward did not become ready: {:?}", served.lines.lock());
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post(&self, path: &str, secret: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(secret)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits up to `limit` for the process to exit.
    async fn exit_code(&mut self, limit: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "keyward did not exit"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn admin_secret(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("initial-admin-key"))
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test]
async fn json_logs_carry_the_request_id_on_the_requests_lines() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), &[]).await;
    let r = served
        .http
        .get(served.url("/api/v1/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let id = r
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();

    let mut mine = Vec::new();
    for _ in 0..100 {
        mine = served
            .lines
            .lock()
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
            .filter(|v| v["span"]["request_id"] == id.as_str())
            .collect();
        if !mine.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let finished = mine
        .iter()
        .find(|v| v["fields"]["message"] == "request finished")
        .unwrap_or_else(|| panic!("no access line for {id}: {:?}", served.lines.lock()));
    assert_eq!(finished["fields"]["status"], 401);
    assert_eq!(finished["span"]["path"], "/api/v1/me");
    assert_eq!(finished["level"], "INFO");
    // Every line is JSON, the start-up ones included, and none shows the admin secret.
    let secret = admin_secret(dir.path());
    for l in served.lines.lock().iter() {
        serde_json::from_str::<Value>(l).unwrap_or_else(|_| panic!("not JSON: {l}"));
        assert!(!l.contains(&secret));
    }
}

#[tokio::test]
async fn the_log_format_may_come_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keyward.toml");
    std::fs::write(&file, "log_format = \"json\"\nlog = \"debug\"\n").unwrap();
    let served = Served::start_with(
        dir.path(),
        &[],
        &[("KEYWARD_CONFIG", file.to_str().unwrap())],
    )
    .await;
    let probed = |lines: &[String]| lines.iter().any(|l| l.contains("\"path\":\"/readyz\""));
    for _ in 0..100 {
        if probed(&served.lines.lock()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = served.lines.lock().clone();
    assert!(!lines.is_empty());
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}"));
        assert!(v["level"].is_string(), "{l}");
    }
    // `debug` from the file: the readiness probes' access lines are written.
    assert!(probed(&lines), "{lines:?}");
}

#[tokio::test]
async fn sigterm_lets_a_stream_finish_and_loses_no_usage() {
    let mock = Mock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut served = Served::start(dir.path(), &["--shutdown-grace", "30s"]).await;
    let admin = admin_secret(dir.path());
    let (s, p) = served
        .post(
            "/api/v1/providers",
            &admin,
            json!({"name": "mock", "kind": "openai", "base_url": mock.openai_base(),
                   "api_key": crate::proxy::OPENAI_CREDENTIAL, "models": []}),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    let pid = p["id"].as_str().unwrap();
    let (s, k) = served
        .post(
            "/api/v1/keys",
            &admin,
            json!({"name": "app", "expires_in": "1d", "provider_id": pid, "scopes": ["chat"]}),
        )
        .await;
    assert_eq!(s, 201, "{k}");
    let secret = k["secret"].as_str().unwrap().to_owned();
    let key_id = k["key"]["id"].as_str().unwrap().to_owned();

    // "drip" streams 100 chunks, 50 ms apart.
    let mut res = served
        .http
        .post(served.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .json(&json!({"model": "drip", "stream": true,
                      "messages": [{"role": "user", "content": "Hello"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let mut body = Vec::new();
    body.extend_from_slice(&res.chunk().await.unwrap().unwrap());

    served.sigterm();
    // New connections are refused once the drain begins.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        reqwest::Client::new()
            .get(served.url("/healthz"))
            .send()
            .await
            .is_err()
    );
    while let Some(chunk) = res.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("t99 "), "the stream was cut: {text}");
    assert_eq!(served.exit_code(Duration::from_secs(20)).await, Some(0));
    let lines = served.lines.lock().clone();
    assert!(
        lines.iter().any(|l| l.contains("usage queue drained")),
        "{lines:?}"
    );

    let out = keyward(dir.path(), &["audit", "export", "--type", "key.used"]);
    assert!(out.status.success());
    let used: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ours: Vec<&Value> = used
        .iter()
        .filter(|e| e["request_id"] == request_id.as_str())
        .collect();
    assert_eq!(ours.len(), 1, "{used:?}");
    assert_eq!(ours[0]["data"]["key_id"], key_id.as_str());
    assert_eq!(ours[0]["data"]["outcome"], "success");
    assert_eq!(ours[0]["data"]["stream"], true);
}

#[tokio::test]
async fn readyz_is_false_until_ready_and_while_draining() {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    let t = crate::common::TestApp::start().await;
    let state = t.running.state.clone();
    let readyz = || async {
        keyward::app(state.clone())
            .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(readyz().await, 200);
    // What serve does on SIGTERM before it stops accepting.
    state.0.set_ready(false);
    assert_eq!(readyz().await, 503);
}

#[tokio::test]
async fn keys_expiring_lists_the_keys_that_stop_within_the_window() {
    use crate::proxy::{Gw, KeySpec};

    let gw = Gw::start().await;
    let p = gw.openai(&[]).await;
    let mut soon = KeySpec::on(&p);
    soon.expires_in = chrono::Duration::days(2);
    let (soon_id, soon_secret) = gw.key(soon).await;
    let mut later = KeySpec::on(&p);
    later.expires_in = chrono::Duration::days(20);
    let (later_id, _) = gw.key(later).await;
    let mut gone = KeySpec::on(&p);
    gone.expires_in = chrono::Duration::days(1);
    let (gone_id, _) = gw.key(gone).await;
    gw.append(keyward_events::Event::KeyDeleted(
        keyward_events::KeyDeleted {
            key_id: gone_id.clone(),
        },
    ))
    .await;
    let Gw { t, state, .. } = gw;
    drop(state);
    let crate::common::TestApp { running, dir } = t;
    running.shutdown().await;

    let o = keyward(
        dir.path(),
        &["keys", "expiring", "--within", "7d", "--format", "json"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", crate::common::stderr(&o));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids: Vec<&str> = report["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [soon_id.as_str()], "{report}");
    assert_eq!(report["keys"][0]["owner"], "admin");
    assert_eq!(report["keys"][0]["status"], "active");

    // 30 days takes in the admin key too, soonest first.
    let o = keyward(dir.path(), &["keys", "expiring", "--within", "30d"]);
    assert_eq!(o.status.code(), Some(0));
    let table = stdout(&o);
    assert!(table.starts_with("3 key(s) stop working before"), "{table}");
    let soon_at = table.find(&soon_id).unwrap();
    let later_at = table.find(&later_id).unwrap();
    assert!(soon_at < later_at, "{table}");
    assert!(!table.contains(&gone_id));
    assert!(!table.contains(&soon_secret));

    let o = keyward(dir.path(), &["keys", "expiring", "--within", "soon"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(crate::common::stderr(&o).contains("--within"));
}

/// A webhook receiver on 127.0.0.1 that refuses its first delivery with a 500.
async fn receiver() -> (String, Arc<Mutex<Vec<(String, Vec<u8>)>>>) {
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};

    type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;
    async fn hook(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> StatusCode {
        let sig = headers
            .get("x-keyward-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let mut seen = seen.lock();
        seen.push((sig, body.to_vec()));
        if seen.len() == 1 {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::NO_CONTENT
        }
    }
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(seen.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, seen)
}

#[tokio::test]
async fn the_expiry_webhook_fires_once_signed_and_is_recorded() {
    use crate::proxy::{Gw, KeySpec, stored};
    use hmac::{Hmac, Mac};

    const SECRET: &str = "webhook-secret-0123456789";
    let (url, seen) = receiver().await;
    let gw = Gw::start_with(|c| {
        c.notify = Some(keyward::config::NoticeWebhook {
            url,
            secret: keyward::config::WebhookSecret::new(SECRET.to_owned()),
            within: chrono::Duration::days(7),
            interval: Duration::from_millis(50),
        });
    })
    .await;
    let p = gw.openai(&[]).await;
    let mut soon = KeySpec::on(&p);
    soon.expires_in = chrono::Duration::days(2);
    let (key_id, secret) = gw.key(soon).await;
    let mut later = KeySpec::on(&p);
    later.expires_in = chrono::Duration::days(20);
    let (later_id, _) = gw.key(later).await;

    // The first delivery is refused; the retry, 0.5 s later, goes through.
    for _ in 0..100 {
        if seen.lock().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Many more notifier passes: nothing new is sent.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), 2, "one notice, delivered on its second attempt");
    assert_eq!(seen[0], seen[1], "the retry is the same notice");
    let (sig, body) = &seen[1];
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(sig, &want);
    let v: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["type"], "expiring");
    assert_eq!(v["key_id"], key_id.as_str());
    assert_eq!(v["owner"], "admin");
    assert!(v["notice_id"].as_str().is_some_and(|s| !s.is_empty()));
    let text = String::from_utf8_lossy(body);
    assert!(!text.contains(&secret) && !text.contains(SECRET));
    assert!(!text.contains(&later_id));

    let notices = stored(&gw.state, "key.notice_sent").await;
    assert_eq!(notices.len(), 1, "{notices:?}");
    match &notices[0] {
        keyward_events::Event::KeyNoticeSent(n) => {
            assert_eq!(n.key_id, key_id);
            assert_eq!(n.kind, keyward_events::NoticeKind::Expiring);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn notices_go_on_expiry_and_for_a_rotated_key_still_in_use_and_survive_a_restart() {
    use crate::proxy::{Gw, KeySpec, chat};

    let (url, seen) = receiver().await;
    let hook = keyward::config::NoticeWebhook {
        url,
        secret: keyward::config::WebhookSecret::new("webhook-secret-0123456789".to_owned()),
        within: chrono::Duration::days(7),
        interval: Duration::from_millis(50),
    };
    let h = hook.clone();
    let gw = Gw::start_with(move |c| c.notify = Some(h)).await;
    let p = gw.openai(&[]).await;
    let mut short = KeySpec::on(&p);
    short.expires_in = chrono::Duration::seconds(2);
    let (short_id, _) = gw.key(short).await;
    let (old_id, old_secret) = gw.key(KeySpec::on(&p)).await;
    let (new_id, _) = gw.key(KeySpec::on(&p)).await;
    let rotated = keyward_events::Event::KeyRotated(keyward_events::KeyRotated {
        key_id: old_id.clone(),
        new_key_id: new_id.clone(),
        grace_until: chrono::Utc::now() + chrono::Duration::hours(1),
    });
    // The notifier may write a `key.notice_sent` to the key's stream between our read of
    // its version and our write: retry on that conflict, as a client would.
    let mut attempts = 0;
    loop {
        let version = gw.state.0.live.read().keys.get(&old_id).unwrap().version;
        let r = gw
            .state
            .0
            .commands
            .submit(vec![keyward_events::NewEvent::new(
                &rotated,
                keyward_events::ExpectedVersion::Exact(version),
                chrono::Utc::now(),
                "system",
                None,
            )])
            .await;
        attempts += 1;
        match r {
            Ok(_) => break,
            Err(e) if attempts < 20 => eprintln!("rotation raced the notifier: {e:?}"),
            Err(e) => panic!("{e:?}"),
        }
    }
    let r = gw
        .post("/v1/chat/completions", &old_secret, chat("m"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let delivered = |seen: &[(String, Vec<u8>)]| {
        let mut d: Vec<(String, String)> = seen
            .iter()
            .map(|(_, b)| serde_json::from_slice::<Value>(b).unwrap())
            .map(|v| {
                (
                    v["key_id"].as_str().unwrap().to_owned(),
                    v["type"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        d.sort();
        d.dedup();
        d
    };
    let mut want = vec![
        (short_id.clone(), "expiring".to_owned()),
        (short_id.clone(), "expired".to_owned()),
        (old_id.clone(), "grace_in_use".to_owned()),
        (old_id.clone(), "expiring".to_owned()),
        (new_id.clone(), "expiring".to_owned()),
    ];
    want.sort();
    for _ in 0..200 {
        if delivered(&seen.lock()) == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(delivered(&seen.lock()), want);
    // Five notices, the first of them delivered twice.
    assert_eq!(seen.lock().len(), 6);

    // Restarted on the same log, the notifier finds every notice recorded.
    let crate::proxy::Gw { t, state, mock, .. } = gw;
    drop(state);
    let crate::common::TestApp { running, dir } = t;
    running.shutdown().await;
    let mut config = crate::common::config_in(dir.path());
    config.notify = Some(hook);
    let again = keyward::server::start(config).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(seen.lock().len(), 6);
    again.shutdown().await;
    drop(mock);
}

/// At the default level a proxied request writes no access line (its `key.used` or
/// `key.denied` is the record), a management request does, and `/metrics` counts the
/// lines the log writer dropped.
#[tokio::test]
async fn proxied_requests_log_no_access_line_at_info_and_dropped_lines_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), &[]).await;
    let proxied = served
        .http
        .post(served.url("/v1/chat/completions"))
        .bearer_auth("kw_live_not-a-key")
        .json(&json!({"model": "gpt-4o-mini", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), 401);
    let proxied_id = proxied.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let managed = served
        .http
        .get(served.url("/api/v1/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(managed.status(), 401);
    let managed_id = managed.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    // The management request's line comes after the proxied one's would have.
    let mut seen = false;
    for _ in 0..100 {
        seen = served.lines.lock().iter().any(|l| l.contains(&managed_id));
        if seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen, "{:?}", served.lines.lock());
    assert!(
        !served.lines.lock().iter().any(|l| l.contains(&proxied_id)),
        "{:?}",
        served.lines.lock()
    );
    let metrics = served
        .http
        .get(served.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("# TYPE keyward_log_lines_dropped counter")
            && text.contains("keyward_log_lines_dropped_total 0"),
        "{text}"
    );
}
