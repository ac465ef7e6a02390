//! An in-process mock of the providers on 127.0.0.1:0: OpenAI-style, Azure-style and
//! Anthropic-style routes answering with the shared wire-format fixtures. The model named
//! in a request picks a behaviour: `slow`, `stall`, `drip`, `error-500`, `error-401`,
//! `huge-usage`, `claude-error` (400), `claude-401`; anything else answers normally.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const CHAT: &str = include_str!("../../fixtures/openai-chat-completion.json");
pub const CHAT_SSE: &str = include_str!("../../fixtures/openai-chat-stream.sse");
pub const EMBEDDINGS: &str = include_str!("../../fixtures/openai-embeddings.json");
pub const MODELS: &str = include_str!("../../fixtures/openai-models.json");
pub const OPENAI_401: &str = include_str!("../../fixtures/openai-error-401.json");
pub const MESSAGE: &str = include_str!("../../fixtures/anthropic-message.json");
pub const MESSAGE_SSE: &str = include_str!("../../fixtures/anthropic-stream.sse");

/// One request the mock received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Clone, Default)]
struct MockState {
    seen: Arc<Mutex<Vec<Seen>>>,
}

pub struct Mock {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mock {
    pub async fn start() -> Mock {
        let state = MockState::default();
        let seen = state.seen.clone();
        let app = Router::new()
            .route("/v1/chat/completions", post(openai_chat))
            .route("/v1/embeddings", post(embeddings))
            .route("/v1/models", get(models))
            .route(
                "/openai/deployments/{dep}/chat/completions",
                post(openai_chat),
            )
            .route("/openai/deployments/{dep}/embeddings", post(embeddings))
            .route("/v1/messages", post(anthropic_messages))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Mock { addr, seen, task }
    }

    /// The OpenAI-style base URL, version path included.
    pub fn openai_base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The Anthropic- and Azure-style base URL.
    pub fn root(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .last()
            .cloned()
            .expect("the mock saw no request")
    }
}

fn record(st: &MockState, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Value {
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    st.seen.lock().push(Seen {
        method,
        uri,
        headers,
        body,
    });
    v
}

fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    r.headers_mut()
        .insert("x-request-id", "req_upstream_1".parse().unwrap());
    r
}

/// SSE events sent one per chunk, `gap` apart; after them, `then_hang` keeps the
/// connection open without sending anything more.
fn sse(events: Vec<String>, gap: Duration, then_hang: bool) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(4);
    tokio::spawn(async move {
        for e in events {
            if tx.send(e).await.is_err() {
                return;
            }
            tokio::time::sleep(gap).await;
        }
        if then_hang {
            tx.closed().await;
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|e| (Ok::<_, Infallible>(Bytes::from(e)), rx))
    });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
    r
}

fn split_events(text: &str) -> Vec<String> {
    text.split_inclusive("\n\n").map(str::to_owned).collect()
}

/// The credential the mock was sent, whichever header carried it.
fn credential(h: &HeaderMap) -> String {
    for name in ["authorization", "api-key", "x-api-key"] {
        if let Some(v) = h.get(name).and_then(|v| v.to_str().ok()) {
            return v.trim_start_matches("Bearer ").to_owned();
        }
    }
    String::new()
}

fn openai_chunk(content: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"id":"chatcmpl-drip","object":"chat.completion.chunk","created":1,"model":"drip",
               "choices":[{"index":0,"delta":{"content":content},"finish_reason":null}]})
    )
}

async fn openai_chat(
    State(st): State<MockState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let v = record(&st, method, uri, headers.clone(), body);
    let model = v["model"].as_str().unwrap_or("");
    let stream = v["stream"] == true;
    let include_usage = v["stream_options"]["include_usage"] == true;
    match model {
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            json_response(StatusCode::OK, CHAT)
        }
        "error-500" => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": {"message": format!("upstream failure for key {}", credential(&headers)),
                              "type": "server_error", "param": null, "code": null}})
            .to_string(),
        ),
        "error-401" => json_response(StatusCode::UNAUTHORIZED, OPENAI_401),
        "huge-usage" => json_response(StatusCode::OK, huge_usage()),
        "stall" => sse(vec![openai_chunk("Hel")], Duration::ZERO, true),
        "drip" => sse(
            (0..100).map(|i| openai_chunk(&format!("t{i} "))).collect(),
            Duration::from_millis(50),
            false,
        ),
        _ if stream => {
            let events = split_events(CHAT_SSE)
                .into_iter()
                // The provider sends the usage chunk only when asked.
                .filter(|e| include_usage || !e.contains("\"choices\":[]"))
                .collect();
            sse(events, Duration::from_millis(2), false)
        }
        _ => json_response(StatusCode::OK, CHAT),
    }
}

/// The chat fixture with counts no real provider reports: their sum wraps a `u64`.
pub const HUGE_PROMPT: u64 = u64::MAX - 5;
pub const HUGE_COMPLETION: u64 = i64::MAX as u64;

fn huge_usage() -> String {
    let mut v: Value = serde_json::from_str(CHAT).unwrap();
    v["usage"] = json!({"prompt_tokens": HUGE_PROMPT, "completion_tokens": HUGE_COMPLETION,
                        "total_tokens": HUGE_PROMPT});
    v.to_string()
}

async fn embeddings(
    State(st): State<MockState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&st, method, uri, headers, body);
    json_response(StatusCode::OK, EMBEDDINGS)
}

async fn models(
    State(st): State<MockState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    record(&st, method, uri, headers, Bytes::new());
    json_response(StatusCode::OK, MODELS)
}

async fn anthropic_messages(
    State(st): State<MockState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let v = record(&st, method, uri, headers.clone(), body);
    if v["max_tokens"].as_u64().is_none() {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}).to_string(),
        );
    }
    match v["model"].as_str().unwrap_or("") {
        // A refusal that echoes the credential: scrubbed wherever it reaches the client.
        "claude-error" => json_response(
            StatusCode::BAD_REQUEST,
            json!({"type":"error","error":{"type":"invalid_request_error",
                   "message": format!("invalid x-api-key {}", credential(&headers))}})
            .to_string(),
        ),
        // The credential itself refused: Keyward answers 502, never this 401.
        "claude-401" => json_response(
            StatusCode::UNAUTHORIZED,
            json!({"type":"error","error":{"type":"authentication_error",
                   "message": format!("invalid x-api-key {}", credential(&headers))}})
            .to_string(),
        ),
        _ if v["stream"] == true => sse(split_events(MESSAGE_SSE), Duration::from_millis(2), false),
        _ => json_response(StatusCode::OK, MESSAGE),
    }
    .into_response()
}

/// A port where nothing listens: connections are refused.
pub async fn refused_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A server that accepts, reads the request and closes the connection without answering.
pub async fn reset_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    (addr, task)
}

/// A server that starts an SSE answer, sends one chunk, and then closes the connection
/// mid-stream.
pub async fn midstream_reset_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 8192];
            let _ = s.read(&mut buf).await;
            let chunk = openai_chunk("Hel");
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n",
                chunk.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.flush().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(s);
        }
    });
    (addr, task)
}
