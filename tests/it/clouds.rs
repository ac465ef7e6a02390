//! The three cloud kinds (Amazon Bedrock, Google Vertex AI, Azure OpenAI with Entra ID)
//! against `tests/mocks/cloud_mock.py`, which checks SigV4 signatures with botocore and
//! JWT assertions with google-auth. The mock runs from `.venv` (made by `scripts/test`,
//! with `tests/mocks/requirements.txt`); without it these tests are skipped with a reason,
//! except under CI=true where they fail.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use keyward::store::EventFilter;
use keyward_events::{Event, UsageOutcome};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::api::Api;
use crate::proxy::{Gw, KeySpec, Reply, chat};

const AWS_ACCESS_KEY_ID: &str = "AKIAKEYWARDTEST0001";
const AWS_SECRET_ACCESS_KEY: &str = "kwTestSecretAccessKey/0123456789+abcdEFGH";
const AWS_WRONG_SECRET: &str = "kwWrongSecretAccessKey/9876543210+zyxwVUTS";
const BEDROCK_MODEL: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";

const ENTRA_TENANT: &str = "keyward-test-tenant";
const ENTRA_CLIENT_ID: &str = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";
const ENTRA_SECRET: &str = "kwEntra~Secret.0123456789_abcdefGHIJ";
const ENTRA_WRONG_SECRET: &str = "kwEntra~Wrong.9876543210_zyxwvuTSRQ";

const GEMINI: &str = "google/gemini-2.0-flash-001";
const VERTEX_CLAUDE: &str = "claude-3-5-sonnet-v2@20241022";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    root().join(".venv/bin/python")
}

/// The `.venv` python, if it has the mock's packages; else the test is skipped (outside CI)
/// or fails (under CI=true).
fn python_or_skip(test: &str, also: &str) -> Option<PathBuf> {
    let python = python();
    let imports = format!("import botocore, google.auth, jwt, cryptography{also}");
    let ok = python.exists()
        && std::process::Command::new(&python)
            .args(["-c", &imports])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    let reason = format!(
        "{} is missing or lacks `{imports}`; run scripts/test to create it",
        python.display()
    );
    assert!(!crate::skip::ci(), "under CI: {reason}");
    crate::skip::skipped(test, &reason);
    None
}

/// The fixture's service account key, its token endpoint pointed at `token_uri`.
fn service_account(token_uri: &str) -> Value {
    let text =
        std::fs::read_to_string(root().join("tests/fixtures/vertex-test-service-account.json"))
            .unwrap();
    let mut sa: Value = serde_json::from_str(&text).unwrap();
    sa["token_uri"] = json!(token_uri);
    sa
}

/// The base64 lines of a PEM key: any of them in a text means the key leaked.
fn pem_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 32)
        .map(str::to_owned)
        .collect()
}

/// The cloud mock, on a port of its own, stopped when dropped.
struct CloudMock {
    _child: tokio::process::Child,
    dir: tempfile::TempDir,
    base: String,
    http: reqwest::Client,
}

impl CloudMock {
    async fn start(python: &Path) -> CloudMock {
        let dir = tempfile::tempdir().unwrap();
        let sa = service_account("http://unused/token");
        let pub_pem = root().join("tests/fixtures/vertex-test-service-account.pub.pem");
        let log = std::fs::File::create(dir.path().join("mock.log")).unwrap();
        let mut child = tokio::process::Command::new(python)
            .arg(root().join("tests/mocks/cloud_mock.py"))
            .args(["--port", "0", "--state-dir"])
            .arg(dir.path().join("state"))
            .args(["--aws-access-key-id", AWS_ACCESS_KEY_ID])
            .args(["--aws-secret-access-key", AWS_SECRET_ACCESS_KEY])
            .arg("--google-public-key")
            .arg(&pub_pem)
            .args([
                "--google-client-email",
                sa["client_email"].as_str().unwrap(),
            ])
            .args(["--entra-tenant", ENTRA_TENANT])
            .args(["--entra-client-id", ENTRA_CLIENT_ID])
            .args(["--entra-client-secret", ENTRA_SECRET])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the cloud mock did not print LISTENING within 30 s: {}",
                    std::fs::read_to_string(dir.path().join("mock.log")).unwrap_or_default()
                )
            })
            .unwrap()
            .unwrap_or_else(|| {
                panic!(
                    "the cloud mock exited: {}",
                    std::fs::read_to_string(dir.path().join("mock.log")).unwrap_or_default()
                )
            });
        let port: u16 = line
            .strip_prefix("LISTENING ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the cloud mock: {line:?}"));
        CloudMock {
            _child: child,
            dir,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    fn token_uri(&self) -> String {
        format!("{}/token", self.base)
    }

    async fn stats(&self) -> Value {
        self.http
            .get(format!("{}/_mock/stats", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn stat(&self, name: &str) -> u64 {
        self.stats().await[name].as_u64().unwrap()
    }

    async fn expire_tokens(&self) {
        let r = self
            .http
            .post(format!("{}/_mock/expire-tokens", self.base))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    /// The mock's request log (method, path, status per line).
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mock.log")).unwrap_or_default()
    }
}

/// Everything a client was sent (bodies and headers), for the canaries.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    fn reply(&mut self, r: &Reply) {
        self.0.push(format!("{:?}\n{}", r.headers, r.text()));
    }

    fn api(&mut self, r: &(StatusCode, Value)) {
        self.0.push(r.1.to_string());
    }

    #[track_caller]
    fn assert_absent(&self, what: &str, secret: &str) {
        for text in &self.0 {
            assert!(!text.contains(secret), "{what} reached a client: {text}");
        }
    }
}

/// Every stored event, serialized.
async fn all_events(gw: &Gw) -> Vec<String> {
    gw.state
        .0
        .store
        .read(&EventFilter::default(), 1_000_000)
        .await
        .unwrap()
        .iter()
        .map(|e| serde_json::to_string(&e.decode().unwrap()).unwrap())
        .collect()
}

async fn assert_not_stored(gw: &Gw, what: &str, secret: &str) {
    let events = all_events(gw).await;
    assert!(!events.is_empty());
    for e in &events {
        assert!(!e.contains(secret), "{what} is in a stored event: {e}");
    }
}

fn used(e: &Event) -> &keyward_events::KeyUsed {
    match e {
        Event::KeyUsed(u) => u,
        other => panic!("{other:?}"),
    }
}

async fn put_credential(api: &Api, admin: &str, id: &str, body: Value) -> (StatusCode, Value) {
    api.call(
        Method::PUT,
        &format!("/api/v1/providers/{id}/credential"),
        Some(admin),
        Some(body),
    )
    .await
}

fn streaming(mut body: Value) -> Value {
    body["stream"] = json!(true);
    body
}

fn messages(model: &str) -> Value {
    json!({"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}]})
}

/// The text of an OpenAI chunk stream; asserts it ends with `[DONE]`.
#[track_caller]
fn chunk_text(r: &Reply) -> (String, Vec<Value>) {
    assert_eq!(r.status, 200, "{}", r.text());
    let data = r.sse_data();
    assert_eq!(
        data.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        r.text()
    );
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|_| panic!("not JSON: {d}")))
        .collect();
    let text = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    for c in &chunks {
        assert!(c.get("error").is_none(), "{}", r.text());
    }
    (text, chunks)
}

/// The text of an Anthropic event stream; asserts it ends with `message_stop`.
#[track_caller]
fn event_text(r: &Reply) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.text();
    assert!(t.starts_with("event: message_start\n"), "{t}");
    assert!(t.contains("event: message_stop"), "{t}");
    assert!(!t.contains("event: error"), "{t}");
    r.sse_data()
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|v| v["type"] == "content_block_delta")
        .filter_map(|v| v["delta"]["text"].as_str().map(str::to_owned))
        .collect()
}

fn bedrock_body(mock: &CloudMock, name: &str, secret: &str) -> Value {
    json!({
        "name": name,
        "kind": "bedrock",
        "base_url": mock.base,
        "config": {"region": "us-east-1"},
        "api_key": {"access_key_id": AWS_ACCESS_KEY_ID, "secret_access_key": secret},
    })
}

fn vertex_body(mock: &CloudMock, name: &str, location: &str) -> Value {
    json!({
        "name": name,
        "kind": "vertex",
        "base_url": mock.base,
        "config": {"project_id": "keyward-test", "location": location},
        "api_key": service_account(&mock.token_uri()),
    })
}

fn azure_body(mock: &CloudMock, name: &str, secret: &str) -> Value {
    json!({
        "name": name,
        "kind": "azure_openai",
        "base_url": mock.base,
        "config": {
            "api_version": "2024-10-21",
            "deployments": {"gpt-4o": "gpt-4o-prod"},
            "auth": "entra_id",
            "tenant_id": ENTRA_TENANT,
            "client_id": ENTRA_CLIENT_ID,
            "authority": mock.base,
        },
        "api_key": secret,
    })
}

/// Creates a provider with the live check; returns its id.
#[track_caller]
fn created(r: &(StatusCode, Value), models: &str) -> String {
    assert_eq!(r.0, StatusCode::CREATED, "{}", r.1);
    assert_eq!(r.1["verification"]["ok"], true, "{}", r.1);
    let detail = r.1["verification"]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("lists {models}")),
        "{detail}: expected {models}"
    );
    r.1["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_signs_with_sigv4_and_translates_both_apis() {
    let Some(python) = python_or_skip(
        "clouds::bedrock_signs_with_sigv4_and_translates_both_apis",
        "",
    ) else {
        return;
    };
    let mock = CloudMock::start(&python).await;
    let gw = Gw::start().await;
    let api = Api::new(&gw.t);
    let admin = gw.t.admin_secret();
    let mut seen = Seen::default();

    // A wrong secret: the signature does not match; the reason is AWS's, the secret is not in it.
    let r = api
        .post(
            "/api/v1/providers",
            &admin,
            bedrock_body(&mock, "bedrock", AWS_WRONG_SECRET),
        )
        .await;
    seen.api(&r);
    assert_eq!(r.0, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.1);
    assert_eq!(r.1["field"], "api_key", "{}", r.1);
    assert!(r.1.to_string().contains("signature"), "{}", r.1);
    assert!(!r.1.to_string().contains(AWS_WRONG_SECRET), "{}", r.1);
    assert!(mock.stat("bedrock_signature_failures").await >= 1);

    // A credential without its secret key: refused before any request.
    let mut body = bedrock_body(&mock, "bedrock", AWS_SECRET_ACCESS_KEY);
    body["api_key"] = json!({"access_key_id": AWS_ACCESS_KEY_ID});
    let r = api.post("/api/v1/providers", &admin, body).await;
    seen.api(&r);
    assert!(matches!(r.0.as_u16(), 400 | 422), "{}: {}", r.0, r.1);
    assert!(
        r.1["field"]
            .as_str()
            .is_some_and(|f| f.starts_with("api_key")),
        "{}",
        r.1
    );

    // No region.
    let mut body = bedrock_body(&mock, "bedrock", AWS_SECRET_ACCESS_KEY);
    body["config"] = json!({});
    let r = api.post("/api/v1/providers", &admin, body).await;
    seen.api(&r);
    assert_eq!(r.0, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.1);
    assert_eq!(r.1["field"], "config.region", "{}", r.1);

    // The right one: the live check lists the foundation models through SigV4.
    let r = api
        .post(
            "/api/v1/providers",
            &admin,
            bedrock_body(&mock, "bedrock", AWS_SECRET_ACCESS_KEY),
        )
        .await;
    seen.api(&r);
    let id = created(&r, "3 models");
    assert_eq!(r.1["credential"]["masked"], "AKIA…0001", "{}", r.1);
    let (_, key) = gw.key(KeySpec::on(&id)).await;

    // Chat → Converse.
    let r = gw
        .post("/v1/chat/completions", &key, chat(BEDROCK_MODEL))
        .await;
    seen.reply(&r);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion", "{v}");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant", "{v}");
    assert_eq!(
        v["choices"][0]["message"]["content"], "Hello from Bedrock",
        "{v}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], 11, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 5, "{v}");
    let u = gw.last_used(1).await;
    assert_eq!((u.prompt_tokens, u.completion_tokens), (11, 5));
    assert_eq!(u.outcome, UsageOutcome::Success);
    assert_eq!(u.model.as_deref(), Some(BEDROCK_MODEL));
    let st = mock.stats().await;
    assert_eq!(
        st["last_bedrock_path"],
        format!("/model/{BEDROCK_MODEL}/converse"),
        "{st}"
    );
    let sent = &st["last_bedrock_body"];
    assert_eq!(sent["messages"][0]["role"], "user", "{sent}");
    assert_eq!(sent["messages"][0]["content"][0]["text"], "Hello", "{sent}");
    assert!(sent.get("model").is_none(), "{sent}");

    // Streamed chat → ConverseStream, re-framed as OpenAI chunks, with a usage chunk.
    let mut body = streaming(chat(BEDROCK_MODEL));
    body["stream_options"] = json!({"include_usage": true});
    let r = gw.post("/v1/chat/completions", &key, body).await;
    seen.reply(&r);
    let (text, chunks) = chunk_text(&r);
    assert_eq!(text, "Hello from Bedrock", "{}", r.text());
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]), "{}", r.text());
    assert_eq!(last["usage"]["prompt_tokens"], 11, "{}", r.text());
    assert_eq!(last["usage"]["completion_tokens"], 5, "{}", r.text());
    let u = gw.last_used(2).await;
    assert!(u.stream);
    assert_eq!((u.prompt_tokens, u.completion_tokens), (11, 5));
    assert_eq!(
        mock.stats().await["last_bedrock_path"],
        format!("/model/{BEDROCK_MODEL}/converse-stream")
    );

    // Without include_usage: no usage chunk, and the tokens are still recorded.
    let r = gw
        .post("/v1/chat/completions", &key, streaming(chat(BEDROCK_MODEL)))
        .await;
    seen.reply(&r);
    let (text, chunks) = chunk_text(&r);
    assert_eq!(text, "Hello from Bedrock");
    assert!(
        chunks.iter().all(|c| c["choices"] != json!([])),
        "{}",
        r.text()
    );
    let u = gw.last_used(3).await;
    assert_eq!((u.prompt_tokens, u.completion_tokens), (11, 5));

    // /v1/messages → InvokeModel, natively.
    let r = gw.post("/v1/messages", &key, messages(BEDROCK_MODEL)).await;
    seen.reply(&r);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "message", "{v}");
    assert_eq!(
        v["content"][0]["text"], "Hello from Claude on Bedrock",
        "{v}"
    );
    assert_eq!(v["usage"]["input_tokens"], 12, "{v}");
    let u = gw.last_used(4).await;
    assert_eq!(u.endpoint, "/v1/messages");
    assert_eq!((u.prompt_tokens, u.completion_tokens), (12, 6));
    let st = mock.stats().await;
    assert_eq!(
        st["last_bedrock_path"],
        format!("/model/{BEDROCK_MODEL}/invoke"),
        "{st}"
    );
    assert_eq!(
        st["last_bedrock_body"]["anthropic_version"],
        "bedrock-2023-05-31"
    );
    assert!(st["last_bedrock_body"].get("model").is_none(), "{st}");

    let r = gw
        .post("/v1/messages", &key, streaming(messages(BEDROCK_MODEL)))
        .await;
    seen.reply(&r);
    assert_eq!(event_text(&r), "Hello from Claude on Bedrock");
    let u = gw.last_used(5).await;
    assert!(u.stream);
    assert_eq!((u.prompt_tokens, u.completion_tokens), (12, 6));
    assert_eq!(
        mock.stats().await["last_bedrock_path"],
        format!("/model/{BEDROCK_MODEL}/invoke-with-response-stream")
    );

    // Bedrock's throttling passes as a 429 in OpenAI's error shape.
    let r = gw
        .post(
            "/v1/chat/completions",
            &key,
            chat("anthropic.claude-throttle-v1:0"),
        )
        .await;
    seen.reply(&r);
    assert_eq!(r.status, 429, "{}", r.text());
    let v = r.json();
    assert!(v["error"]["message"].is_string(), "{v}");
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    assert!(v["error"].get("code").is_some(), "{v}");

    // An exception frame in the middle of a stream ends it with an error event.
    let r = gw
        .post(
            "/v1/chat/completions",
            &key,
            streaming(chat("anthropic.claude-midstream-error-v1:0")),
        )
        .await;
    seen.reply(&r);
    assert_eq!(r.status, 200, "{}", r.text());
    let data = r.sse_data();
    let errors: Vec<Value> = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|v| v.get("error").is_some())
        .collect();
    assert_eq!(errors.len(), 1, "{}", r.text());
    assert!(errors[0]["error"]["message"].is_string(), "{}", r.text());
    assert!(!data.iter().any(|d| d == "[DONE]"), "{}", r.text());

    // Rotation: a wrong secret stored without a check takes effect at once...
    let n = stored_uses(&gw).await;
    let r = put_credential(
        &api,
        &admin,
        &id,
        json!({"api_key": {"access_key_id": AWS_ACCESS_KEY_ID, "secret_access_key": AWS_WRONG_SECRET}, "verify": false}),
    )
    .await;
    seen.api(&r);
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    let r = gw
        .post("/v1/chat/completions", &key, chat(BEDROCK_MODEL))
        .await;
    seen.reply(&r);
    r.assert_error(502, "provider_credential_rejected");
    // ...and so does the right one, put back.
    let r = put_credential(
        &api,
        &admin,
        &id,
        json!({"api_key": {"access_key_id": AWS_ACCESS_KEY_ID, "secret_access_key": AWS_SECRET_ACCESS_KEY}}),
    )
    .await;
    seen.api(&r);
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    assert_eq!(r.1["verification"]["ok"], true, "{}", r.1);
    let r = gw
        .post("/v1/chat/completions", &key, chat(BEDROCK_MODEL))
        .await;
    seen.reply(&r);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "Hello from Bedrock"
    );
    gw.events("key.used", n + 2).await;

    // Canary: the secret access key reached no client and no stored event.
    let r = api.get(&format!("/api/v1/providers/{id}"), &admin).await;
    seen.api(&r);
    seen.assert_absent("the AWS secret access key", AWS_SECRET_ACCESS_KEY);
    seen.assert_absent("the wrong AWS secret access key", AWS_WRONG_SECRET);
    assert_not_stored(&gw, "the AWS secret access key", AWS_SECRET_ACCESS_KEY).await;
    assert_not_stored(&gw, "the wrong AWS secret access key", AWS_WRONG_SECRET).await;
}

async fn stored_uses(gw: &Gw) -> usize {
    crate::proxy::stored(&gw.state, "key.used").await.len()
}

/// An RSA private key (PKCS#8 PEM) the mock does not know.
fn other_private_key() -> String {
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output();
    if let Ok(o) = out
        && o.status.success()
    {
        return String::from_utf8(o.stdout).unwrap();
    }
    // No openssl: the same with the venv's cryptography.
    let o = std::process::Command::new(python())
        .args([
            "-c",
            "from cryptography.hazmat.primitives.asymmetric import rsa\n\
             from cryptography.hazmat.primitives import serialization as s\n\
             k = rsa.generate_private_key(public_exponent=65537, key_size=2048)\n\
             print(k.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()).decode(), end='')",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertex_exchanges_a_service_account_for_a_cached_token() {
    let Some(python) = python_or_skip(
        "clouds::vertex_exchanges_a_service_account_for_a_cached_token",
        "",
    ) else {
        return;
    };
    let mock = CloudMock::start(&python).await;
    let gw = Gw::start().await;
    let api = Api::new(&gw.t);
    let admin = gw.t.admin_secret();
    let mut seen = Seen::default();
    let fixture_key = service_account("x")["private_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = other_private_key();

    let r = api
        .post(
            "/api/v1/providers",
            &admin,
            vertex_body(&mock, "vertex", "us-central1"),
        )
        .await;
    seen.api(&r);
    let id = created(&r, "2 models");
    assert_eq!(
        r.1["credential"]["masked"],
        service_account("x")["client_email"],
        "{}",
        r.1
    );
    let (_, key) = gw.key(KeySpec::on(&id)).await;

    // Gemini through the OpenAI-compatible endpoint.
    let r = gw.post("/v1/chat/completions", &key, chat(GEMINI)).await;
    seen.reply(&r);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        v["choices"][0]["message"]["content"], "Hello from Gemini on Vertex",
        "{v}"
    );
    let u = gw.last_used(1).await;
    assert_eq!((u.prompt_tokens, u.completion_tokens), (9, 4));
    let st = mock.stats().await;
    assert_eq!(
        st["last_vertex_path"],
        "/v1/projects/keyward-test/locations/us-central1/endpoints/openapi/chat/completions"
    );
    assert_eq!(st["last_vertex_body"]["model"], GEMINI);

    let mut body = streaming(chat(GEMINI));
    body["stream_options"] = json!({"include_usage": true});
    let r = gw.post("/v1/chat/completions", &key, body).await;
    seen.reply(&r);
    let (text, chunks) = chunk_text(&r);
    assert_eq!(text, "Hello from Gemini on Vertex");
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 4);
    let u = gw.last_used(2).await;
    assert_eq!((u.prompt_tokens, u.completion_tokens), (9, 4));

    // Claude through Vertex's Anthropic endpoint: an OpenAI client, translated.
    let r = gw
        .post("/v1/chat/completions", &key, chat(VERTEX_CLAUDE))
        .await;
    seen.reply(&r);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion", "{v}");
    assert_eq!(
        v["choices"][0]["message"]["content"], "Hello from Claude on Vertex",
        "{v}"
    );
    assert_eq!(v["usage"]["prompt_tokens"], 10, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 5, "{v}");
    let st = mock.stats().await;
    assert_eq!(
        st["last_vertex_path"],
        format!(
            "/v1/projects/keyward-test/locations/us-central1/publishers/anthropic/models/{VERTEX_CLAUDE}:rawPredict"
        )
    );
    assert_eq!(
        st["last_vertex_body"]["anthropic_version"],
        "vertex-2023-10-16"
    );
    assert!(st["last_vertex_body"].get("model").is_none(), "{st}");

    let r = gw
        .post("/v1/chat/completions", &key, streaming(chat(VERTEX_CLAUDE)))
        .await;
    seen.reply(&r);
    let (text, _) = chunk_text(&r);
    assert_eq!(text, "Hello from Claude on Vertex");

    // And natively, on /v1/messages.
    let r = gw.post("/v1/messages", &key, messages(VERTEX_CLAUDE)).await;
    seen.reply(&r);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["content"][0]["text"],
        "Hello from Claude on Vertex"
    );
    let u = gw.last_used(5).await;
    assert_eq!((u.prompt_tokens, u.completion_tokens), (10, 5));
    let r = gw
        .post("/v1/messages", &key, streaming(messages(VERTEX_CLAUDE)))
        .await;
    seen.reply(&r);
    assert_eq!(event_text(&r), "Hello from Claude on Vertex");
    let u = gw.last_used(6).await;
    assert!(u.stream);
    assert_eq!((u.prompt_tokens, u.completion_tokens), (10, 5));

    // One token for the check and six requests: it is cached.
    assert_eq!(
        mock.stat("google_token_requests").await,
        1,
        "{}",
        mock.log()
    );

    // Tokens that expire early: the next request is refused and drops the token, the one
    // after gets a new token.
    mock.expire_tokens().await;
    let r = gw.post("/v1/chat/completions", &key, chat(GEMINI)).await;
    seen.reply(&r);
    r.assert_error(502, "provider_credential_rejected");
    let r = gw.post("/v1/chat/completions", &key, chat(GEMINI)).await;
    seen.reply(&r);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mock.stat("google_token_requests").await, 2);

    // 20 concurrent requests on a new provider: one exchange among them.
    let mut body = vertex_body(&mock, "vertex-eu", "europe-west4");
    body["verify"] = json!(false);
    let r = api.post("/api/v1/providers", &admin, body).await;
    seen.api(&r);
    assert_eq!(r.0, StatusCode::CREATED, "{}", r.1);
    let id2 = r.1["id"].as_str().unwrap().to_owned();
    let (_, key2) = gw.key(KeySpec::on(&id2)).await;
    let gw = std::sync::Arc::new(gw);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (gw, key2) = (gw.clone(), key2.clone());
            tokio::spawn(async move { gw.post("/v1/chat/completions", &key2, chat(GEMINI)).await })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        seen.reply(&r);
    }
    assert_eq!(mock.stat("google_token_requests").await, 3);

    // A service account whose key Google does not know: the identity provider's reason,
    // and no private key in the answer.
    let mut body = vertex_body(&mock, "vertex-other", "us-central1");
    body["api_key"]["private_key"] = json!(other);
    body["api_key"]["private_key_id"] = json!("fedcba9876543210fedcba9876543210fedcba98");
    let r = api.post("/api/v1/providers", &admin, body).await;
    seen.api(&r);
    assert_eq!(r.0, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.1);
    assert_eq!(r.1["field"], "api_key", "{}", r.1);
    assert!(
        r.1["detail"]
            .as_str()
            .unwrap()
            .contains("Invalid JWT Signature"),
        "{}",
        r.1
    );
    for line in pem_lines(&other).iter().chain(&pem_lines(&fixture_key)) {
        assert!(!r.1.to_string().contains(line.as_str()), "{}", r.1);
    }
    assert_eq!(mock.stat("google_token_failures").await, 1);

    // Canaries: no private key and no access token in any stored event or any answer.
    let events = all_events(&gw).await;
    for e in &events {
        assert!(
            !e.contains("ya29."),
            "an access token is in a stored event: {e}"
        );
        for line in pem_lines(&fixture_key).iter().chain(&pem_lines(&other)) {
            assert!(
                !e.contains(line.as_str()),
                "a private key is in a stored event: {e}"
            );
        }
    }
    seen.assert_absent("an access token", "ya29.");
    for line in pem_lines(&fixture_key) {
        seen.assert_absent("the private key", &line);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_openai_with_entra_id_gets_and_caches_a_token() {
    let Some(python) = python_or_skip(
        "clouds::azure_openai_with_entra_id_gets_and_caches_a_token",
        "",
    ) else {
        return;
    };
    let mock = CloudMock::start(&python).await;
    let gw = Gw::start().await;
    let api = Api::new(&gw.t);
    let admin = gw.t.admin_secret();
    let mut seen = Seen::default();

    let r = api
        .post(
            "/api/v1/providers",
            &admin,
            azure_body(&mock, "azure", ENTRA_SECRET),
        )
        .await;
    seen.api(&r);
    let id = created(&r, "1 model");
    let (_, key) = gw.key(KeySpec::on(&id)).await;

    for i in 1..=3 {
        let r = gw.post("/v1/chat/completions", &key, chat("gpt-4o")).await;
        seen.reply(&r);
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(
            v["choices"][0]["message"]["content"], "Hello from Azure with Entra ID",
            "{v}"
        );
        let u = gw.last_used(i).await;
        assert_eq!((u.prompt_tokens, u.completion_tokens), (9, 6));
    }
    let st = mock.stats().await;
    assert_eq!(
        st["last_azure_path"],
        "/openai/deployments/gpt-4o-prod/chat/completions"
    );

    let mut body = streaming(chat("gpt-4o"));
    body["stream_options"] = json!({"include_usage": true});
    let r = gw.post("/v1/chat/completions", &key, body).await;
    seen.reply(&r);
    let (text, chunks) = chunk_text(&r);
    assert_eq!(text, "Hello from Azure with Entra ID");
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 6);
    let u = gw.last_used(4).await;
    assert!(u.stream);
    assert_eq!((u.prompt_tokens, u.completion_tokens), (9, 6));

    // One token for the check and four requests.
    assert_eq!(mock.stat("entra_token_requests").await, 1, "{}", mock.log());
    assert_eq!(mock.stat("azure_auth_failures").await, 0);

    // A wrong client secret: Entra's reason, not the secret.
    let r = api
        .post(
            "/api/v1/providers",
            &admin,
            azure_body(&mock, "azure-wrong-secret", ENTRA_WRONG_SECRET),
        )
        .await;
    seen.api(&r);
    assert_eq!(r.0, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.1);
    assert_eq!(r.1["field"], "api_key", "{}", r.1);
    assert!(r.1.to_string().contains("AADSTS7000215"), "{}", r.1);
    assert!(!r.1.to_string().contains(ENTRA_WRONG_SECRET), "{}", r.1);

    // entra_id without a tenant.
    let mut body = azure_body(&mock, "azure-no-tenant", ENTRA_SECRET);
    body["config"].as_object_mut().unwrap().remove("tenant_id");
    let r = api.post("/api/v1/providers", &admin, body).await;
    seen.api(&r);
    assert_eq!(r.0, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.1);
    assert_eq!(r.1["field"], "config.tenant_id", "{}", r.1);

    seen.assert_absent("the client secret", ENTRA_SECRET);
    seen.assert_absent("the wrong client secret", ENTRA_WRONG_SECRET);
    assert_not_stored(&gw, "the client secret", ENTRA_SECRET).await;
    assert_not_stored(&gw, "the wrong client secret", ENTRA_WRONG_SECRET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdks_work_against_the_cloud_kinds() {
    let test = "clouds::the_official_python_sdks_work_against_the_cloud_kinds";
    let Some(python) = python_or_skip(test, ", openai, anthropic") else {
        return;
    };
    let mock = CloudMock::start(&python).await;
    let gw = Gw::start().await;
    let api = Api::new(&gw.t);
    let admin = gw.t.admin_secret();

    let r = api
        .post(
            "/api/v1/providers",
            &admin,
            bedrock_body(&mock, "bedrock", AWS_SECRET_ACCESS_KEY),
        )
        .await;
    let bedrock = created(&r, "3 models");
    let r = api
        .post(
            "/api/v1/providers",
            &admin,
            vertex_body(&mock, "vertex", "us-central1"),
        )
        .await;
    let vertex = created(&r, "2 models");
    let r = api
        .post(
            "/api/v1/providers",
            &admin,
            azure_body(&mock, "azure", ENTRA_SECRET),
        )
        .await;
    let azure = created(&r, "1 model");
    let (_, bedrock_key) = gw.key(KeySpec::on(&bedrock)).await;
    let (_, vertex_key) = gw.key(KeySpec::on(&vertex)).await;
    let (_, azure_key) = gw.key(KeySpec::on(&azure)).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = keyward::app(gw.state.clone());
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });

    let run = tokio::process::Command::new(&python)
        .arg(root().join("tests/sdk/clouds.py"))
        .env("KW_BASE", format!("http://{addr}"))
        .env("KW_BEDROCK_KEY", &bedrock_key)
        .env("KW_VERTEX_KEY", &vertex_key)
        .env("KW_AZURE_KEY", &azure_key)
        .env("KW_BEDROCK_MODEL", BEDROCK_MODEL)
        .env("KW_GEMINI_MODEL", GEMINI)
        .env("KW_VERTEX_CLAUDE_MODEL", VERTEX_CLAUDE)
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("ANTHROPIC_BASE_URL")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the SDK script timed out")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{stderr}\n{}", mock.log());
    assert!(stdout.contains("clouds sdk ok"), "{stdout}");
    for step in [
        "openai bedrock: chat",
        "openai bedrock: stream",
        "openai vertex: chat",
        "openai vertex: stream",
        "openai azure: chat",
        "openai azure: stream",
        "anthropic bedrock: messages",
        "anthropic bedrock: stream",
        "anthropic vertex: messages",
        "anthropic vertex: stream",
    ] {
        assert!(stdout.contains(&format!("- {step}\n")), "{step}: {stdout}");
    }
    server.abort();

    // Ten calls, ten uses, each with the provider's tokens.
    let uses = gw.events("key.used", 10).await;
    assert_eq!(uses.len(), 10, "{uses:?}");
    for e in &uses {
        let u = used(e);
        assert_eq!(u.outcome, UsageOutcome::Success, "{u:?}");
        assert_eq!(u.client_ip.as_deref(), Some("127.0.0.1"));
        assert!(u.prompt_tokens > 0 && u.completion_tokens > 0, "{u:?}");
    }
    let on = |p: &str| uses.iter().filter(|e| used(e).provider_id == p).count();
    assert_eq!((on(&bedrock), on(&vertex), on(&azure)), (4, 4, 2));
}
