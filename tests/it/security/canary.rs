//! Secret canaries. A known gateway key, admin key and provider credentials are planted;
//! every failure path is driven (bad input on every management route, in the path, the
//! query and the body; refused and malformed proxy calls; a provider that answers 4xx and
//! 5xx echoing the credential and the client's body in its body and headers; a provider
//! that refuses a credential at registration; a panicking handler; streamed answers, OpenAI
//! and Anthropic, passed through and translated, that echo the credential in every kind of
//! SSE line, with CRLF endings and split across two network chunks). Then no canary may
//! appear in any log line (at TRACE, every crate), any response body or header after the
//! one that created it, any stored event, `/metrics`, or the audit export.

use std::io::Write;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode, Uri};
use axum::response::IntoResponse;
use futures::StreamExt;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::proxy::{CLIENT, Gw, Reply, chat};

const PROVIDER_CANARY: &str = "sk-canary-PROVIDERqZ7xW2vK9mT4nR8bL3";
/// The credential of the Anthropic provider, whose streams are passed through and translated.
const ANTHROPIC_CANARY: &str = "sk-ant-canary-ANTHROPICpQ4sD8fG1hJ6kL";
/// The echo provider refuses a credential containing `refused`.
const REFUSED_CANARY: &str = "sk-canary-refusedHj5Yt8Wq2Zx6Lp9Mn4";
const MODELS: &[&str] = &[
    "echo-400", "echo-401", "echo-403", "echo-404", "echo-429", "echo-500", "echo-503", "echo-sse",
    "echo-ok",
];

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A provider that echoes whatever credential it was sent, and the client's body, in its
/// error bodies and in response headers. The model picks the status.
async fn echo_provider() -> std::net::SocketAddr {
    let app = Router::new().fallback(|method: Method, uri: Uri, headers: HeaderMap, body: Bytes| async move {
        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        let cred = [h("authorization"), h("x-api-key"), h("api-key")]
            .into_iter()
            .find(|v| !v.is_empty())
            .unwrap_or("")
            .trim_start_matches("Bearer ")
            .to_owned();
        let echo = [
            ("x-echo-credential", cred.clone()),
            ("x-request-id", cred.clone()),
            ("www-authenticate", format!("Bearer realm=\"{cred}\"")),
            ("set-cookie", format!("session={cred}")),
        ];
        let msg = format!(
            "Incorrect API key provided: {cred}. You sent: {}",
            String::from_utf8_lossy(&body)
        );
        let error = json!({"error": {"message": msg, "type": "invalid_request_error", "code": "invalid_api_key", "param": cred}});
        // Set after the JSON body's own, so it replaces it.
        let content_type = [("content-type", format!("application/json; profile=\"{cred}\""))];
        if method == Method::GET {
            if cred.contains("refused") {
                return (StatusCode::UNAUTHORIZED, echo, content_type, axum::Json(error)).into_response();
            }
            return (
                echo,
                content_type,
                axum::Json(json!({"object": "list", "data": [
                    {"id": "echo-ok", "object": "model"},
                    {"id": format!("echo-{cred}"), "object": "model"},
                ]})),
            )
                .into_response();
        }
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let model = v["model"].as_str().unwrap_or("").to_owned();
        // A success carries the model's output, which may repeat the client's own prompt;
        // the credential is what it must never carry back.
        let said = format!("the key I was called with is {cred}");
        if model == "echo-sse" {
            let chunks = if uri.path().ends_with("/messages") {
                anthropic_stream(&cred)
            } else {
                openai_stream(&cred, &said, &error)
            };
            // Each part a network chunk of its own, a moment apart: the credential is split
            // between two of them.
            let body = futures::stream::iter(chunks).then(|c| async move {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                Ok::<_, std::convert::Infallible>(Bytes::from(c))
            });
            return (
                [("content-type", "text/event-stream")],
                echo,
                Body::from_stream(body),
            )
                .into_response();
        }
        let status = model
            .strip_prefix("echo-")
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok());
        match status {
            Some(s) => (s, echo, content_type, axum::Json(error)).into_response(),
            None => (
                echo,
                content_type,
                axum::Json(json!({"id": "c1", "object": "chat.completion", "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": said}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})),
            )
                .into_response(),
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    addr
}

/// An OpenAI stream with the credential in every kind of line: a comment, `event:`, `id:`
/// and `retry:` lines (alone and in an event with data), `data:`, an error event, a comment
/// before `[DONE]`; LF and CRLF endings; and once split across two network chunks.
fn openai_stream(cred: &str, said: &str, error: &Value) -> Vec<String> {
    let chunk = |content: &str| {
        json!({"id": "c1", "object": "chat.completion.chunk", "model": "echo-sse",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]})
        .to_string()
    };
    let split = chunk(&format!("again: {cred}"));
    // The middle of the credential, where the canary check's own needle is taken from.
    let at = split.find(cred).unwrap() + cred.len() / 2;
    vec![
        format!(": keep-alive {cred}\n\n"),
        format!(": {cred}\r\n\r\n"),
        format!("event: {cred}\n\n"),
        format!("id: {cred}\r\nretry: {cred}\r\n\r\n"),
        format!("retry: {cred}\n\n"),
        format!("event: delta\nid: {cred}\ndata: {}\n\n", chunk(said)),
        format!("data: {}\r\n\r\n", chunk(said)),
        format!("data: {}", &split[..at]),
        format!("{}\n\n", &split[at..]),
        format!("data: {error}\n\n"),
        format!(": {cred}\ndata: [DONE]\n\n"),
        format!("id: {cred}\n"),
    ]
}

/// An Anthropic stream, complete, with the credential in comments, `id:` and `retry:`
/// lines, in a text delta split across two network chunks, and CRLF endings.
fn anthropic_stream(cred: &str) -> Vec<String> {
    let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let delta = ev(
        "content_block_delta",
        json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": format!("the key I was called with is {cred}")}}),
    );
    let at = delta.find(cred).unwrap() + cred.len() / 2;
    vec![
        format!(": {cred}\n\n"),
        format!(
            "event: message_start\r\ndata: {}\r\n\r\n",
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                "model": "echo-sse", "content": [], "usage": {"input_tokens": 1, "output_tokens": 0}}})
        ),
        format!("id: {cred}\nevent: ping\ndata: {{\"type\":\"ping\"}}\n\n"),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        delta[..at].to_owned(),
        delta[at..].to_owned(),
        format!("retry: {cred}\n\n"),
        format!("event: {cred}\n\n"),
        ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        ev(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}),
        ),
        ev("message_stop", json!({"type": "message_stop"})),
        format!(": {cred}\n"),
    ]
}

/// Everything a client saw, by the request that got it: status, headers and body.
#[derive(Default)]
struct Seen(Vec<(String, String)>);

impl Seen {
    fn add(&mut self, what: &str, r: &Reply) {
        let headers: Vec<String> = r
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
            .collect();
        self.0.push((
            what.to_owned(),
            format!("{}\n{}\n{}", r.status, headers.join("\n"), r.text()),
        ));
    }
}

async fn send(app: &Router, mut req: Request<Body>) -> Reply {
    req.extensions_mut()
        .insert(ConnectInfo(std::net::SocketAddr::from(CLIENT)));
    Reply::read(app.clone().oneshot(req).await.unwrap()).await
}

fn request(method: Method, path: &str, key: &str, body: Option<String>) -> Request<Body> {
    let b = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {key}"));
    match body {
        Some(s) => b
            .header("content-type", "application/json")
            .body(Body::from(s))
            .unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}

/// The canary and a piece from its middle, so a truncated echo is caught too.
fn needles(secret: &str) -> [String; 2] {
    let mid = secret.len() / 2;
    [secret.to_owned(), secret[mid - 6..mid + 6].to_owned()]
}

#[tokio::test]
async fn no_secret_reaches_logs_responses_events_metrics_or_the_export() {
    let logs = Buf::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let gw = Gw::start().await;
    let app = keyward::app(gw.state.clone());
    let admin = gw.t.admin_secret();
    let echo = echo_provider().await;
    let mut seen = Seen::default();

    // A provider through the API, with a live check against the echo provider.
    let body = json!({"name": "echo", "kind": "openai", "base_url": format!("http://{echo}/v1"),
        "api_key": PROVIDER_CANARY, "models": MODELS});
    let r = send(
        &app,
        request(
            Method::POST,
            "/api/v1/providers",
            &admin,
            Some(body.to_string()),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    seen.add("create provider", &r);
    let provider_id = r.json()["id"].as_str().unwrap().to_owned();
    // A credential the provider refuses, echoing it: on create and on replace.
    let mut refused = body.clone();
    refused["name"] = json!("refused");
    refused["api_key"] = json!(REFUSED_CANARY);
    let r = send(
        &app,
        request(
            Method::POST,
            "/api/v1/providers",
            &admin,
            Some(refused.to_string()),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text());
    seen.add("refused provider", &r);
    let r = send(
        &app,
        request(
            Method::PUT,
            &format!("/api/v1/providers/{provider_id}/credential"),
            &admin,
            Some(json!({"api_key": REFUSED_CANARY}).to_string()),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text());
    seen.add("refused credential", &r);

    // The gateway key: its creating response is the one place it may appear.
    let r = send(
        &app,
        request(
            Method::POST,
            "/api/v1/keys",
            &admin,
            Some(json!({"name": "canary", "provider_id": provider_id, "expires_in": "1d", "scopes": ["chat"]}).to_string()),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let gateway = r.json()["secret"].as_str().unwrap().to_owned();
    let key_id = r.json()["key"]["id"].as_str().unwrap().to_owned();

    // Every provider failure, with the client's own key in its prompt to be echoed back.
    for model in MODELS {
        let mut body = chat(model);
        body["messages"][0]["content"] = json!(format!("my key is {gateway} and {admin}"));
        let r = send(
            &app,
            request(
                Method::POST,
                "/v1/chat/completions",
                &gateway,
                Some(body.to_string()),
            ),
        )
        .await;
        seen.add(&format!("chat {model}"), &r);
        // A provider refusing Keyward's credential (401, 403) is a 502 to the client.
        let expect = match model
            .strip_prefix("echo-")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(200)
        {
            401 | 403 => 502,
            s => s,
        };
        assert_eq!(r.status.as_u16(), expect, "{model}: {}", r.text());
    }
    let r = send(
        &app,
        request(
            Method::POST,
            "/v1/embeddings",
            &gateway,
            Some(json!({"model": "echo-500", "input": gateway}).to_string()),
        ),
    )
    .await;
    seen.add("embeddings", &r);
    assert_eq!(r.status, 500);
    let r = send(&app, request(Method::GET, "/v1/models", &gateway, None)).await;
    seen.add("models", &r);
    // A provider with no model list of its own: `/v1/models` asks it, and it lists a model
    // named after its credential.
    let body = json!({"name": "echo-lists", "kind": "openai", "base_url": format!("http://{echo}/v1"),
        "api_key": PROVIDER_CANARY});
    let r = send(
        &app,
        request(
            Method::POST,
            "/api/v1/providers",
            &admin,
            Some(body.to_string()),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    seen.add("create listing provider", &r);
    let lister = r.json()["id"].as_str().unwrap().to_owned();
    let r = send(
        &app,
        request(
            Method::POST,
            "/api/v1/keys",
            &admin,
            Some(json!({"name": "canary-lister", "provider_id": lister, "expires_in": "1d", "scopes": ["read"]}).to_string()),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let lister_key = r.json()["secret"].as_str().unwrap().to_owned();
    let r = send(&app, request(Method::GET, "/v1/models", &lister_key, None)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("echo-[redacted]"), "{}", r.text());
    seen.add("models listed by the provider", &r);

    // Streams with the credential in every kind of SSE line: OpenAI passed through (with and
    // without the usage chunk asked for), Anthropic passed through, Anthropic translated.
    let body = json!({"name": "echo-anthropic", "kind": "anthropic", "base_url": format!("http://{echo}"),
        "api_key": ANTHROPIC_CANARY, "models": ["echo-sse"]});
    let r = send(
        &app,
        request(
            Method::POST,
            "/api/v1/providers",
            &admin,
            Some(body.to_string()),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    seen.add("create anthropic provider", &r);
    let anthropic_id = r.json()["id"].as_str().unwrap().to_owned();
    let r = send(
        &app,
        request(
            Method::POST,
            "/api/v1/keys",
            &admin,
            Some(json!({"name": "canary-anthropic", "provider_id": anthropic_id, "expires_in": "1d", "scopes": ["chat"]}).to_string()),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let anthropic_key = r.json()["secret"].as_str().unwrap().to_owned();
    let messages = json!([{"role": "user", "content": "Hello"}]);
    let streamed = [
        (
            "openai stream",
            gateway.as_str(),
            "/v1/chat/completions",
            json!({"model": "echo-sse", "stream": true, "messages": messages}),
            "[DONE]",
        ),
        (
            "openai stream with usage",
            gateway.as_str(),
            "/v1/chat/completions",
            json!({"model": "echo-sse", "stream": true, "stream_options": {"include_usage": true}, "messages": messages}),
            "[DONE]",
        ),
        (
            "anthropic stream",
            anthropic_key.as_str(),
            "/v1/messages",
            json!({"model": "echo-sse", "max_tokens": 10, "stream": true, "messages": messages}),
            "message_stop",
        ),
        (
            "anthropic translated stream",
            anthropic_key.as_str(),
            "/v1/chat/completions",
            json!({"model": "echo-sse", "stream": true, "messages": messages}),
            "[DONE]",
        ),
    ];
    for (what, key, path, body, end) in streamed {
        let r = send(
            &app,
            request(Method::POST, path, key, Some(body.to_string())),
        )
        .await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        assert_eq!(
            r.header("content-type"),
            Some("text/event-stream"),
            "{what}"
        );
        // The stream came whole, and the credential was in it to be scrubbed.
        assert!(r.text().contains(end), "{what}: {}", r.text());
        assert!(r.text().contains("[redacted]"), "{what}: {}", r.text());
        seen.add(what, &r);
    }

    // Refused and malformed proxy calls.
    let mut flipped = gateway.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'a' { b'b' } else { b'a' };
    let flipped = String::from_utf8(flipped).unwrap();
    let proxy_cases: Vec<(&str, String, Option<String>)> = vec![
        (
            "bad checksum",
            flipped.clone(),
            Some(chat("echo-ok").to_string()),
        ),
        (
            "longer",
            format!("{gateway}x"),
            Some(chat("echo-ok").to_string()),
        ),
        (
            "two keys",
            format!("{gateway} {gateway}"),
            Some(chat("echo-ok").to_string()),
        ),
        (
            "admin key, chat",
            admin.clone(),
            Some(chat("echo-ok").to_string()),
        ),
        (
            "bad json",
            gateway.clone(),
            Some(format!("{{\"model\": \"{gateway}")),
        ),
        (
            "not an object",
            gateway.clone(),
            Some(json!(gateway).to_string()),
        ),
        (
            "unknown model",
            gateway.clone(),
            Some(chat(&gateway).to_string()),
        ),
        (
            "model type",
            gateway.clone(),
            Some(json!({"model": [gateway], "messages": []}).to_string()),
        ),
        (
            "forbidden field",
            gateway.clone(),
            Some(
                json!({"model": "echo-ok", "api_key": PROVIDER_CANARY, "messages": []}).to_string(),
            ),
        ),
        (
            "base_url",
            gateway.clone(),
            Some(json!({"model": "echo-ok", "base_url": gateway, "messages": []}).to_string()),
        ),
    ];
    for (what, key, body) in proxy_cases {
        let r = send(
            &app,
            request(Method::POST, "/v1/chat/completions", &key, body),
        )
        .await;
        assert!(r.status.is_client_error(), "{what}: {}", r.text());
        seen.add(what, &r);
    }
    for header in ["x-api-key", "api-key"] {
        let req = Request::post("/v1/messages")
            .header(header, &flipped)
            .header("content-type", "application/json")
            .body(Body::from(chat("echo-ok").to_string()))
            .unwrap();
        let r = send(&app, req).await;
        assert_eq!(r.status, 401, "{}", r.text());
        seen.add(header, &r);
    }
    // The gateway key on the management API, where its scope does not reach.
    let r = send(&app, request(Method::GET, "/api/v1/keys", &gateway, None)).await;
    assert_eq!(r.status, 403, "{}", r.text());
    seen.add("chat key on the API", &r);

    // Bad input on every management route, in the path, the query and the body.
    let spec: Value = serde_json::from_str(&keyward::http::api::openapi_json()).unwrap();
    let canaries = [gateway.as_str(), admin.as_str(), PROVIDER_CANARY];
    for (template, ops) in spec["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let m: Method = method.to_uppercase().parse().unwrap();
            let params: Vec<&str> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "query")
                        .filter_map(|p| p["name"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            for canary in canaries {
                let path = template.replace("{id}", canary);
                let query: Vec<String> = params.iter().map(|p| format!("{p}={canary}")).collect();
                let real = template.replace(
                    "{id}",
                    if template.contains("/keys/") {
                        &key_id
                    } else {
                        &provider_id
                    },
                );
                let mut targets = vec![(path.clone(), None)];
                if !query.is_empty() {
                    targets.push((format!("{real}?{}", query.join("&")), None));
                }
                if op.get("requestBody").is_some() {
                    for body in [
                        json!(canary).to_string(),
                        json!({"name": {"x": canary}, "kind": canary, "role": canary, "scopes": [canary],
                            "status": canary, "expires_in": canary, "owner_id": canary, "provider_id": canary,
                            "base_url": canary, "api_key": 5, "password": [canary], "ip_allowlist": [canary],
                            "models": canary, "grace_period": canary, "config": canary}).to_string(),
                        json!({"unknown": canary}).to_string(),
                        format!("{{\"name\": \"{canary}"),
                    ] {
                        targets.push((real.clone(), Some(body)));
                    }
                }
                for (target, body) in targets {
                    let what = format!("{method} {target}");
                    let r = send(&app, request(m.clone(), &target, &admin, body)).await;
                    assert!(!r.status.is_server_error(), "{what}: {}", r.text());
                    seen.add(&what, &r);
                }
            }
        }
    }

    // A handler that panics with the secrets in its message, in each surface.
    let boom = keyward::layered(
        Router::new()
            .route(
                "/v1/boom",
                axum::routing::get({
                    let s = gateway.clone();
                    move || async move {
                        if !s.is_empty() {
                            panic!("boom {s} {PROVIDER_CANARY}");
                        }
                    }
                }),
            )
            .route(
                "/api/v1/boom",
                axum::routing::get({
                    let s = gateway.clone();
                    move || async move {
                        if !s.is_empty() {
                            panic!("boom {s} {PROVIDER_CANARY}");
                        }
                    }
                }),
            ),
    )
    .with_state(gw.state.clone());
    let r = send(&boom, request(Method::GET, "/v1/boom", &gateway, None)).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"]["code"], "internal_error", "{}", r.text());
    assert!(r.header("x-request-id").is_some());
    seen.add("proxy panic", &r);
    let r = send(&boom, request(Method::GET, "/api/v1/boom", &admin, None)).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.json()["code"], "internal", "{}", r.text());
    seen.add("api panic", &r);

    // Where else a secret could end up.
    let r = send(&app, request(Method::GET, "/metrics", &admin, None)).await;
    assert_eq!(r.status, 200);
    seen.add("metrics", &r);
    let r = send(
        &app,
        request(Method::GET, "/api/v1/audit/export", &admin, None),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    seen.add("export", &r);
    let r = send(&app, request(Method::GET, "/api/v1/logs", &admin, None)).await;
    seen.add("logs", &r);
    let events = gw.state.0.store.read_from(0, usize::MAX).await.unwrap();
    assert!(events.iter().any(|e| e.event_type == "key.used"));
    let store: String = events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap() + "\n")
        .collect();

    let logs = String::from_utf8_lossy(&logs.0.lock()).into_owned();
    assert!(
        logs.contains("a handler panicked"),
        "the log capture saw nothing"
    );
    assert!(logs.contains("TRACE"), "no trace-level line was captured");
    for canary in [
        gateway.as_str(),
        anthropic_key.as_str(),
        lister_key.as_str(),
        admin.as_str(),
        PROVIDER_CANARY,
        ANTHROPIC_CANARY,
        REFUSED_CANARY,
    ] {
        for needle in needles(canary) {
            for (place, text) in [("logs", &logs), ("events", &store)] {
                if let Some(at) = text.find(&needle) {
                    let line = text[..at].rfind('\n').map_or(0, |i| i + 1);
                    let to = text[at..].find('\n').map_or(text.len(), |i| at + i);
                    panic!("a secret is in the {place}:\n{}", &text[line..to]);
                }
            }
            for (what, response) in &seen.0 {
                assert!(
                    !response.contains(&needle),
                    "a secret is in the response to {what}:\n{response}"
                );
            }
        }
    }
}
