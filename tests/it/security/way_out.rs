//! Streams and secrets on the proxy's way out: a provider's stream is bounded in size and in
//! time whatever the client does; no environment proxy takes a request past the SSRF guard;
//! a client's request id never becomes Keyward's; no URL secret reaches a log line.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use keyward::store::EventFilter;
use keyward_events::{ProviderKind, UsageOutcome};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::proxy::{Gw, KeySpec, OPENAI_CREDENTIAL, Reply, chat, post};

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures every log line of this thread (the tests run on a current-thread runtime,
    /// so the tasks they spawn log here too) until the guard is dropped.
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }

    /// Waits up to 10 s for a line containing `needle`.
    async fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.text().contains(needle) {
            assert!(Instant::now() < deadline, "no log line {needle:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[track_caller]
    fn assert_absent(&self, secrets: &[&str]) {
        let text = self.text();
        for s in secrets {
            if let Some(at) = text.find(s) {
                let line = text[..at].rfind('\n').map_or(0, |i| i + 1);
                let to = text[at..].find('\n').map_or(text.len(), |i| at + i);
                panic!("{s} is in the logs:\n{}", &text[line..to]);
            }
        }
    }
}

fn streaming(model: &str) -> Value {
    let mut b = chat(model);
    b["stream"] = json!(true);
    b
}

#[derive(Clone, Copy)]
enum Sends {
    /// `data: ` and then `x` for ever, never ending the line or the event.
    EndlessLine,
    /// Small complete events, one after the other, for ever.
    EndlessEvents,
}

/// A provider on a raw socket, so that what happens to its connection can be seen: it
/// answers one request with an SSE stream and notes how much it wrote and when the
/// connection was closed from the other side.
struct RawProvider {
    addr: SocketAddr,
    written: Arc<AtomicUsize>,
    closed: watch::Receiver<bool>,
}

/// The provider stops writing (and holds the connection open) past this, so that a proxy
/// that never cuts the stream does not eat the machine's memory while the test fails.
const RAW_LIMIT: usize = 32 * 1024 * 1024;

impl RawProvider {
    async fn start(sends: Sends) -> RawProvider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let written = Arc::new(AtomicUsize::new(0));
        let (closed_tx, closed) = watch::channel(false);
        let count = written.clone();
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            let (mut rd, mut wr) = sock.into_split();
            // The request: its head, then as many bytes as its content-length says.
            let mut buf = Vec::new();
            let mut tmp = [0u8; 4096];
            loop {
                let n = rd.read(&mut tmp).await.unwrap();
                assert!(n > 0, "the proxy closed before sending its request");
                buf.extend_from_slice(&tmp[..n]);
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if buf.len() >= end + 4 + len {
                    break;
                }
            }
            wr.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            tokio::spawn(async move {
                let mut b = [0u8; 1024];
                while let Ok(n) = rd.read(&mut b).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = closed_tx.send(true);
            });
            let event = format!(
                "data: {}\n\n",
                json!({"id": "c1", "object": "chat.completion.chunk", "model": "endless",
                    "choices": [{"index": 0, "delta": {"content": "x".repeat(2000)}, "finish_reason": null}]})
            );
            let mut first = true;
            loop {
                let payload = match sends {
                    Sends::EndlessLine if first => format!("data: {}", "x".repeat(64 * 1024)),
                    Sends::EndlessLine => "x".repeat(64 * 1024),
                    Sends::EndlessEvents => event.clone(),
                };
                first = false;
                let chunk = format!("{:x}\r\n{payload}\r\n", payload.len());
                if wr.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
                if count.fetch_add(payload.len(), Ordering::Relaxed) > RAW_LIMIT {
                    // Holds the connection until the other side closes it.
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        RawProvider {
            addr,
            written,
            closed,
        }
    }

    fn base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Waits up to `within` for the proxy to close the connection; whether it did.
    async fn closed_within(&self, within: Duration) -> bool {
        let mut rx = self.closed.clone();
        tokio::time::timeout(within, rx.wait_for(|c| *c))
            .await
            .is_ok()
    }
}

#[tokio::test]
async fn an_event_that_never_ends_is_cut_at_one_mebibyte_and_recorded() {
    let gw = Gw::start().await;
    let up = RawProvider::start(Sends::EndlessLine).await;
    let p = gw
        .provider(
            ProviderKind::Openai,
            &up.base(),
            json!({}),
            &[],
            Some(OPENAI_CREDENTIAL),
        )
        .await;
    let (key_id, secret) = gw.key(KeySpec::on(&p)).await;
    let r = tokio::time::timeout(
        Duration::from_secs(15),
        gw.post("/v1/chat/completions", &secret, streaming("endless")),
    )
    .await
    .expect("the proxy buffered the endless event and never ended the stream");
    assert_eq!(r.status, 200);
    // Nothing of the oversized event reached the client: only the error event.
    assert!(r.bytes.len() < 4096, "{} bytes", r.bytes.len());
    let data = r.sse_data();
    assert_eq!(data.len(), 1, "{}", r.text());
    let e: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(e["error"]["code"], "upstream_invalid_response", "{e}");
    assert_eq!(e["error"]["type"], "api_error", "{e}");

    let used = gw.last_used(1).await;
    assert_eq!(used.key_id, key_id);
    assert_eq!(used.outcome, UsageOutcome::UpstreamError);
    assert_eq!(used.status, 200);
    assert!(used.stream);
    assert!(
        up.closed_within(Duration::from_secs(5)).await,
        "the provider's connection was left open"
    );
    let written = up.written.load(Ordering::Relaxed);
    assert!(written < RAW_LIMIT, "the provider wrote {written} bytes");
}

#[tokio::test]
async fn a_client_that_stops_reading_does_not_hold_the_provider_past_the_max_duration() {
    let gw = Gw::start_with(|c| {
        c.upstream_max_duration = Duration::from_secs(1);
        c.upstream_idle_timeout = Duration::from_secs(30);
    })
    .await;
    let up = RawProvider::start(Sends::EndlessEvents).await;
    let p = gw
        .provider(
            ProviderKind::Openai,
            &up.base(),
            json!({}),
            &[],
            Some(OPENAI_CREDENTIAL),
        )
        .await;
    let (key_id, secret) = gw.key(KeySpec::on(&p)).await;
    let started = Instant::now();
    let res = gw
        .call(post("/v1/chat/completions", &secret, streaming("endless")))
        .await;
    assert_eq!(res.status(), 200);
    // The client holds the response and never reads it.
    assert!(
        up.closed_within(Duration::from_secs(10)).await,
        "the provider's connection outlived the maximum duration"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // The task recorded the use and ended, with the body still unread.
    let used = gw.last_used(1).await;
    assert_eq!(used.key_id, key_id);
    assert_eq!(used.outcome, UsageOutcome::UpstreamTimeout);
    assert_eq!(used.status, 200);
    assert!(used.completion_tokens > 0, "{}", used.completion_tokens);
    // Reading now gives the events that were queued, then a body that breaks off rather
    // than one that ends as if complete.
    let mut body = res.into_body();
    let mut frames = 0;
    let end = loop {
        match body.frame().await {
            Some(Ok(_)) => frames += 1,
            other => break other,
        }
    };
    assert!(frames > 0 && frames <= 17, "{frames} frames");
    assert!(matches!(end, Some(Err(_))), "the body ended cleanly");
    // No second use was recorded when the body was dropped.
    drop(body);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(gw.events("key.used", 2).await.len(), 1);
}

/// A stand-in for an HTTP proxy: counts the connections it gets and closes each at once.
fn fake_proxy() -> (String, Arc<AtomicUsize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            count.fetch_add(1, Ordering::SeqCst);
            drop(conn);
        }
    });
    (url, seen)
}

/// Environment variables are process-wide: the clients are exercised in a child process of
/// this test binary, started with every proxy variable pointing at a fake proxy.
#[test]
fn environment_proxies_are_ignored_by_every_outbound_client() {
    let (url, seen) = fake_proxy();
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "security::way_out::child_outbound_clients_under_environment_proxies",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env(var, &url);
    }
    let out = cmd
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "a request went through the proxy"
    );
}

/// Run by the test above; ignored otherwise.
#[tokio::test]
#[ignore = "run by environment_proxies_are_ignored_by_every_outbound_client"]
async fn child_outbound_clients_under_environment_proxies() {
    assert!(
        std::env::var("HTTPS_PROXY").is_ok(),
        "run by the parent test, with the proxy variables set"
    );
    let gw = Gw::start_with(|c| c.upstream_first_byte_timeout = Duration::from_secs(3)).await;
    // The proxy's own client.
    let p = gw.openai(&[]).await;
    let (_, secret) = gw.key(KeySpec::on(&p)).await;
    let r = gw
        .post("/v1/chat/completions", &secret, chat("gpt-4o-mini"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = gw
        .post("/v1/chat/completions", &secret, streaming("gpt-4o-mini"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The client of live credential checks.
    let app = &gw.state.0;
    let now = chrono::Utc::now();
    let candidate = keyward_projections::ProviderRecord {
        provider_id: "prv_candidate".into(),
        name: "p".into(),
        kind: ProviderKind::Openai,
        base_url: gw.mock.openai_base(),
        config: Default::default(),
        models: Vec::new(),
        credential: None,
        verification: None,
        created_at: now,
        updated_at: now,
        deleted_at: None,
        version: 0,
    };
    let checked = keyward::providers::check::check(
        app.proxy.upstreams(),
        &candidate,
        &keyward::crypto::ProviderSecret::new(OPENAI_CREDENTIAL.to_owned()),
    )
    .await
    .unwrap();
    assert!(checked.ok, "{checked:?}");
    // The notice webhook's client.
    let res = keyward::notify::client()
        .unwrap()
        .get(format!("{}/models", gw.mock.openai_base()))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success() || res.status().is_client_error());
}

#[tokio::test]
async fn a_secret_in_x_request_id_is_neither_kept_nor_echoed() {
    let (logs, _guard) = Logs::capture();
    let gw = Gw::start().await;
    let p = gw.openai(&[]).await;
    let (_, secret) = gw.key(KeySpec::on(&p)).await;
    let admin = gw.t.admin_secret();
    let stored_ids = || async {
        gw.state
            .0
            .store
            .read(&EventFilter::default(), 100_000)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|e| e.request_id)
            .collect::<Vec<_>>()
    };

    for (what, id) in [
        ("gateway key", secret.as_str()),
        ("admin key", admin.as_str()),
        ("provider credential", OPENAI_CREDENTIAL),
    ] {
        let mut req = post("/v1/chat/completions", &secret, chat("gpt-4o-mini"));
        req.headers_mut()
            .insert("x-request-id", id.parse().unwrap());
        let r = Reply::read(gw.call(req).await).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        let ours = r.header("x-request-id").unwrap();
        assert!(ours.starts_with("req_") && ours != id, "{what}: {ours}");
        assert_eq!(r.header("x-client-request-id"), None, "{what}");
        // The management API keeps it out as well (the caller's key is refused elsewhere,
        // the id is what matters here).
        let mut req = axum::http::Request::get("/api/v1/me")
            .header("authorization", format!("Bearer {admin}"))
            .header("x-request-id", id)
            .body(axum::body::Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(SocketAddr::from(
                crate::proxy::CLIENT,
            )));
        let r = Reply::read(gw.call(req).await).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        assert!(r.header("x-request-id").unwrap().starts_with("req_"));
        assert_eq!(r.header("x-client-request-id"), None, "{what}");
    }
    gw.events("key.used", 3).await;
    let ids = stored_ids().await;
    assert!(ids.len() >= 3, "{ids:?}");
    assert!(ids.iter().all(|i| i.starts_with("req_")), "{ids:?}");

    // A plain id is kept apart: echoed in its own header and logged in its own field, never
    // Keyward's id.
    let mut req = post("/v1/chat/completions", &secret, chat("gpt-4o-mini"));
    req.headers_mut()
        .insert("x-request-id", "trace-4711".parse().unwrap());
    let r = Reply::read(gw.call(req).await).await;
    assert_eq!(r.status, 200);
    let ours = r.header("x-request-id").unwrap().to_owned();
    assert!(ours.starts_with("req_"), "{ours}");
    assert_eq!(r.header("x-client-request-id"), Some("trace-4711"));
    gw.events("key.used", 4).await;
    let ids = stored_ids().await;
    assert!(ids.contains(&ours) && !ids.iter().any(|i| i == "trace-4711"));
    assert!(
        logs.text().contains("client_request_id=\"trace-4711\"")
            || logs.text().contains("client_request_id=trace-4711"),
        "{}",
        logs.text()
    );

    logs.assert_absent(&[secret.as_str(), admin.as_str(), OPENAI_CREDENTIAL]);
}

#[tokio::test]
async fn webhook_and_provider_failures_log_no_secret_of_their_urls() {
    let (logs, _guard) = Logs::capture();
    let gw = Gw::start().await;
    let closed = crate::common::closed_port_url().await;
    let closed = closed.trim_end_matches("/v1");

    // A provider whose base URL holds a token in its path and its query, unreachable.
    let p = gw
        .provider(
            ProviderKind::Openai,
            &format!("{closed}/v1/PROVIDER-PATH-SECRET?key=PROVIDER-QUERY-SECRET"),
            json!({}),
            &[],
            Some(OPENAI_CREDENTIAL),
        )
        .await;
    let (_, secret) = gw.key(KeySpec::on(&p)).await;
    let r = gw
        .post("/v1/chat/completions", &secret, chat("gpt-4o-mini"))
        .await;
    r.assert_error(502, "upstream_unavailable");
    let r = gw.get("/v1/models", &secret).await;
    r.assert_error(502, "upstream_unavailable");
    logs.wait_for("the provider could not be reached").await;
    logs.wait_for("the provider's model list could not be fetched")
        .await;

    // A notice webhook whose URL holds its token, unreachable; the key expires within the
    // notice window.
    let hook = keyward::config::NoticeWebhook {
        url: format!("{closed}/hooks/WEBHOOK-PATH-SECRET?token=WEBHOOK-QUERY-SECRET"),
        secret: keyward::config::WebhookSecret::new("0123456789abcdef0123".into()),
        within: chrono::Duration::days(7),
        interval: Duration::from_secs(60),
    };
    assert!(!format!("{hook:?}").contains("SECRET"), "{hook:?}");
    let client = keyward::notify::client().unwrap();
    let claimed = keyward::notify::notify_once(&gw.state.0.commands, &hook, &client)
        .await
        .unwrap();
    assert!(claimed >= 1);
    logs.wait_for("cannot reach the notice webhook").await;

    let text = logs.text();
    let port = closed.rsplit(':').next().unwrap();
    assert!(
        text.contains(&format!("127.0.0.1:{port}")),
        "the host is still named"
    );
    logs.assert_absent(&[
        "PROVIDER-PATH-SECRET",
        "PROVIDER-QUERY-SECRET",
        "WEBHOOK-PATH-SECRET",
        "WEBHOOK-QUERY-SECRET",
    ]);
}

#[test]
fn a_database_url_is_named_without_its_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let out = crate::common::keyward(
        dir.path(),
        &[
            "--database-url",
            "postgres://kw:USERINFO-SECRET@127.0.0.1:1/keyward?password=QUERY-SECRET&passwd=TYPO-SECRET&sslmode=disable",
            "audit",
            "verify",
        ],
    );
    let stderr = crate::common::stderr(&out);
    let stdout = crate::common::stdout(&out);
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("postgres://kw:***@127.0.0.1:1/keyward"),
        "the message still says which database: {stderr}"
    );
    for s in ["USERINFO-SECRET", "QUERY-SECRET", "TYPO-SECRET"] {
        assert!(
            !stderr.contains(s) && !stdout.contains(s),
            "{s}:\n{stdout}{stderr}"
        );
    }
}
