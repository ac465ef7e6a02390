//! `keyward mock-provider`: a **test tool**, a mock OpenAI- and Anthropic-compatible
//! provider with canned answers, so that Keyward can be tried (and load-tested) with no
//! internet and no provider account. No model runs; nothing leaves the machine. It listens
//! on a loopback address only.
//!
//! It answers, in the providers' wire formats (`tests/fixtures/`):
//! - `POST /v1/chat/completions`: a chat completion, or with `"stream": true` SSE
//!   `chat.completion.chunk`s then `data: [DONE]`; the final usage chunk comes when
//!   `stream_options.include_usage` is true, as OpenAI sends it;
//! - `POST /v1/embeddings`: one deterministic unit vector per input, as floats or, with
//!   `"encoding_format": "base64"` (the `openai` SDK's default), little-endian f32 in base64;
//! - `GET /v1/models`: OpenAI's list, or Anthropic's when the request carries
//!   `anthropic-version`;
//! - `POST /v1/messages`: an Anthropic message, or with `"stream": true` Anthropic's event
//!   sequence (`message_start` … `message_stop`).
//!
//! `GET /healthz` answers `{"status":"ok"}` without a credential, for scripts that wait
//! for it to start.
//!
//! `--latency DURATION` makes chat completions take that long, as a real model does: a
//! whole answer comes after it, and a stream's chunks are spread evenly over it (the
//! benchmarks' in-flight scenario: thousands of requests held open at once).
//! `--chunks N` makes a stream's reply N content chunks (the canned reply's words, repeated),
//! with a usage block that counts them: `--latency 2s --chunks 50` streams 50 chunks over
//! two seconds.
//!
//! Every answer has a usage block: about one token per four characters of the input, and
//! one per word of the canned reply (one per streamed content chunk). A request without a
//! credential gets the provider's 401; a body that is not JSON, or lacks `model` (or
//! Anthropic's `max_tokens`), gets the provider's 400.
//!
//! A leaf module: it uses nothing else of Keyward.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

/// Where it listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:18080";

/// The canned answer. Streamed one word per chunk.
pub const REPLY: &str = "Hello! This is Keyward's mock provider: a canned answer, no model ran.";

/// The models it lists. Any model name is answered.
pub const MODELS: &[&str] = &[
    "gpt-4o-mini",
    "gpt-4.1",
    "text-embedding-3-small",
    "claude-sonnet-4-20250514",
];

/// Dimensions of an embedding unless the request asks for others (`dimensions`, 1 to 4096).
const DIMENSIONS: usize = 16;

/// Why the mock did not start.
#[derive(Debug, thiserror::Error)]
pub enum MockError {
    #[error("--listen {0:?} is not an address: give a loopback IP and port, e.g. {DEFAULT_LISTEN}")]
    NotAnAddress(String),
    #[error(
        "--listen {0}: the mock provider is a test tool and listens on loopback only \
         (127.0.0.0/8 or ::1), e.g. {DEFAULT_LISTEN}"
    )]
    NotLoopback(SocketAddr),
    #[error(
        "cannot listen on {addr}: port {port} is already in use (another mock-provider?); \
         choose another with --listen 127.0.0.1:PORT"
    )]
    PortInUse { addr: SocketAddr, port: u16 },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Parses `--listen` and refuses anything but a loopback address.
pub fn parse_listen(listen: &str) -> Result<SocketAddr, MockError> {
    let addr: SocketAddr = listen
        .trim()
        .parse()
        .map_err(|_| MockError::NotAnAddress(listen.to_owned()))?;
    if !addr.ip().is_loopback() {
        return Err(MockError::NotLoopback(addr));
    }
    Ok(addr)
}

/// Binds the listener, naming the port when it is taken.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, MockError> {
    if !addr.ip().is_loopback() {
        return Err(MockError::NotLoopback(addr));
    }
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AddrInUse => MockError::PortInUse {
                addr,
                port: addr.port(),
            },
            _ => MockError::Bind { addr, source },
        })
}

/// The line printed at start.
pub fn banner(addr: SocketAddr) -> String {
    format!(
        "keyward mock-provider (a test tool: canned answers, no model runs, nothing leaves \
         this machine) on http://{addr}\n  OpenAI-compatible base URL:    http://{addr}/v1\n  \
         Anthropic-compatible base URL: http://{addr}"
    )
}

/// `keyward mock-provider --listen ADDR [--latency D] [--chunks N]`: serves until the
/// process is stopped.
pub async fn run(
    listen: &str,
    latency: std::time::Duration,
    chunks: Option<usize>,
) -> Result<(), anyhow::Error> {
    let addr = parse_listen(listen)?;
    let listener = bind(addr).await?;
    let addr = listener.local_addr()?;
    eprintln!("{}", banner(addr));
    if !latency.is_zero() {
        eprintln!("  chat completions take {latency:?} (streams spread their chunks over it)");
    }
    if let Some(n) = chunks {
        eprintln!("  a streamed reply comes in {n} content chunks");
    }
    axum::serve(listener, router_shaped(latency, chunks))
        .with_graceful_shutdown(stopped())
        .await?;
    Ok(())
}

/// Ctrl-C or SIGTERM: the mock stops and exits 0, like `serve`.
async fn stopped() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// The mock's routes, answering at once.
pub fn router() -> Router {
    router_with(std::time::Duration::ZERO)
}

/// How long a chat completion takes, and how many content chunks a streamed reply has
/// (`None`: one per word of [`REPLY`]).
#[derive(Clone, Copy)]
struct Latency(std::time::Duration, Option<usize>);

/// The mock's routes, with chat completions that take `latency`.
pub fn router_with(latency: std::time::Duration) -> Router {
    router_shaped(latency, None)
}

/// The mock's routes, with chat completions that take `latency` and streamed replies of
/// `chunks` content chunks.
pub fn router_shaped(latency: std::time::Duration, chunks: Option<usize>) -> Router {
    let l = Latency(latency, chunks.map(|n| n.max(1)));
    Router::new()
        .route(
            "/v1/chat/completions",
            post(move |h: HeaderMap, b: Bytes| chat(h, b, l)),
        )
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/v1/messages", post(messages))
        .route("/healthz", get(healthz))
        .fallback(not_found)
}

// ---------- shared ----------

static IDS: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    IDS.fetch_add(1, Ordering::Relaxed)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// About one token per four characters, at least one for any text.
pub fn tokens(text: &str) -> u64 {
    let chars = text.chars().count() as u64;
    chars.div_ceil(4).max(u64::from(!text.is_empty()))
}

/// The text of a message's `content`: a string, or the `text` of each part.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// The reply's words, each with the space before it, as streamed.
fn reply_chunks() -> impl Iterator<Item = String> {
    REPLY.split(' ').enumerate().map(|(i, w)| {
        if i == 0 {
            w.to_owned()
        } else {
            format!(" {w}")
        }
    })
}

fn completion_tokens() -> u64 {
    REPLY.split(' ').count() as u64
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        v.to_string(),
    )
        .into_response()
}

fn sse_response(frames: Vec<String>) -> Response {
    sse_response_over(frames, std::time::Duration::ZERO)
}

/// A stream whose frames are spread evenly over `over` (the first goes at once).
fn sse_response_over(frames: Vec<String>, over: std::time::Duration) -> Response {
    let gap = over / u32::try_from(frames.len().max(1)).unwrap_or(u32::MAX);
    let stream = futures::stream::unfold(
        (frames.into_iter(), true),
        move |(mut frames, first)| async move {
            let f = frames.next()?;
            if !first && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            Some((
                Ok::<_, std::convert::Infallible>(Bytes::from(f)),
                (frames, false),
            ))
        },
    );
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// The credential as an OpenAI-style client sends it: a bearer token, or Azure's `api-key`.
fn has_bearer(h: &HeaderMap) -> bool {
    let bearer = header_str(h, "authorization")
        .strip_prefix("Bearer ")
        .is_some_and(|t| !t.trim().is_empty());
    bearer || !header_str(h, "api-key").is_empty()
}

fn openai_error(
    status: StatusCode,
    kind: &str,
    code: Option<&str>,
    param: Option<&str>,
    message: &str,
) -> Response {
    json_response(
        status,
        &json!({"error": {"message": message, "type": kind, "param": param, "code": code}}),
    )
}

fn openai_unauthorized() -> Response {
    openai_error(
        StatusCode::UNAUTHORIZED,
        "invalid_request_error",
        Some("invalid_api_key"),
        None,
        "No API key provided: the mock provider wants `Authorization: Bearer <any key>`.",
    )
}

fn anthropic_error(status: StatusCode, kind: &str, message: &str) -> Response {
    json_response(
        status,
        &json!({"type": "error", "error": {"type": kind, "message": message},
                "request_id": format!("req_mock{:06}", next_id())}),
    )
}

/// For scripts waiting for the mock to start: no credential needed.
async fn healthz() -> Response {
    json_response(
        StatusCode::OK,
        &json!({"status": "ok", "mock_provider": true}),
    )
}

async fn not_found() -> Response {
    openai_error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("unknown_url"),
        None,
        "The mock provider answers POST /v1/chat/completions, POST /v1/embeddings, \
         GET /v1/models, POST /v1/messages and GET /healthz.",
    )
}

// ---------- OpenAI: chat ----------

#[derive(Deserialize)]
struct ChatRequest {
    model: Option<String>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    messages: Vec<ChatMessage>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
struct ChatMessage {
    #[serde(default)]
    content: Value,
}

async fn chat(headers: HeaderMap, body: Bytes, latency: Latency) -> Response {
    if !has_bearer(&headers) {
        return openai_unauthorized();
    }
    let req: ChatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                None,
                &format!("The body is not a valid chat request: {e}"),
            );
        }
    };
    let Some(model) = req.model.filter(|m| !m.is_empty()) else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            Some("model"),
            "you must provide a model parameter",
        );
    };
    // Three tokens of framing per message, as OpenAI counts, and three to prime the reply.
    let prompt = req
        .messages
        .iter()
        .map(|m| tokens(&text_of(&m.content)) + 3)
        .sum::<u64>()
        + 3;
    // A streamed reply of `--chunks N` has N content chunks; otherwise one per word.
    let chunks = latency.1.filter(|_| req.stream);
    let completion = chunks.map_or_else(completion_tokens, |n| n as u64);
    let usage = json!({
        "prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    });
    let id = format!("chatcmpl-mock{:010}", next_id());
    let created = now_secs();
    if !req.stream {
        if !latency.0.is_zero() {
            tokio::time::sleep(latency.0).await;
        }
        return json_response(
            StatusCode::OK,
            &json!({
                "id": id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY,
                    "refusal": null, "annotations": []}, "logprobs": null, "finish_reason": "stop"}],
                "usage": usage, "service_tier": "default", "system_fingerprint": "fp_mock",
            }),
        );
    }
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        format!("data: {c}\n\n")
    };
    let mut frames = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    let words: Vec<String> = reply_chunks().collect();
    let n = chunks.unwrap_or(words.len());
    frames.extend(
        words
            .iter()
            .cycle()
            .take(n)
            .map(|w| chunk(json!({"content": w}), Value::Null)),
    );
    frames.push(chunk(json!({}), json!("stop")));
    if include_usage {
        let last = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_mock", "choices": [], "usage": usage,
        });
        frames.push(format!("data: {last}\n\n"));
    }
    frames.push("data: [DONE]\n\n".to_owned());
    sse_response_over(frames, latency.0)
}

// ---------- OpenAI: embeddings ----------

#[derive(Deserialize)]
struct EmbeddingsRequest {
    model: Option<String>,
    input: Option<Value>,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
}

/// A deterministic unit vector for a text.
fn embedding(text: &str, dims: usize) -> Vec<f32> {
    let mut h = blake3::Hasher::new();
    h.update(text.as_bytes());
    let mut bytes = vec![0u8; dims];
    h.finalize_xof().fill(&mut bytes);
    let v: Vec<f32> = bytes.iter().map(|b| f32::from(*b) / 127.5 - 1.0).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 {
        return v;
    }
    v.into_iter().map(|x| x / norm).collect()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn embeddings(headers: HeaderMap, body: Bytes) -> Response {
    if !has_bearer(&headers) {
        return openai_unauthorized();
    }
    let req: EmbeddingsRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                None,
                &format!("The body is not a valid embeddings request: {e}"),
            );
        }
    };
    let Some(model) = req.model.filter(|m| !m.is_empty()) else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            Some("model"),
            "you must provide a model parameter",
        );
    };
    // A string, a list of strings, a list of token ids, or a list of such lists.
    let inputs: Vec<String> = match req.input {
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) if items.iter().all(Value::is_number) && !items.is_empty() => {
            vec![Value::Array(items).to_string()]
        }
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect(),
        _ => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                Some("input"),
                "'input' must be a non-empty string or array",
            );
        }
    };
    let dims = req.dimensions.unwrap_or(DIMENSIONS);
    if !(1..=4096).contains(&dims) {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            Some("dimensions"),
            "'dimensions' must be 1 to 4096",
        );
    }
    let base64_wanted = req.encoding_format.as_deref() == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let v = embedding(text, dims);
            let value = if base64_wanted {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64(&bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": value})
        })
        .collect();
    let prompt: u64 = inputs.iter().map(|t| tokens(t)).sum();
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}),
    )
}

// ---------- models ----------

async fn models(headers: HeaderMap) -> Response {
    let anthropic = headers.contains_key("anthropic-version");
    if anthropic {
        if header_str(&headers, "x-api-key").is_empty() && !has_bearer(&headers) {
            return anthropic_error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "x-api-key header is required",
            );
        }
        let data: Vec<Value> = MODELS
            .iter()
            .map(|m| {
                json!({"type": "model", "id": m, "display_name": m,
                       "created_at": "2025-05-14T00:00:00Z"})
            })
            .collect();
        return json_response(
            StatusCode::OK,
            &json!({"data": data, "has_more": false, "first_id": MODELS.first(),
                    "last_id": MODELS.last()}),
        );
    }
    if !has_bearer(&headers) {
        return openai_unauthorized();
    }
    let data: Vec<Value> = MODELS
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": 1721172741, "owned_by": "mock"}))
        .collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

// ---------- Anthropic: messages ----------

#[derive(Deserialize)]
struct MessagesRequest {
    model: Option<String>,
    max_tokens: Option<u64>,
    #[serde(default)]
    system: Value,
    #[serde(default)]
    messages: Vec<ChatMessage>,
    #[serde(default)]
    stream: bool,
}

async fn messages(headers: HeaderMap, body: Bytes) -> Response {
    if header_str(&headers, "x-api-key").is_empty() && !has_bearer(&headers) {
        return anthropic_error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "x-api-key header is required",
        );
    }
    let req: MessagesRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return anthropic_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("The body is not a valid messages request: {e}"),
            );
        }
    };
    let Some(model) = req.model.filter(|m| !m.is_empty()) else {
        return anthropic_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "model: Field required",
        );
    };
    let Some(max_tokens) = req.max_tokens else {
        return anthropic_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "max_tokens: Field required",
        );
    };
    let input = tokens(&text_of(&req.system))
        + req
            .messages
            .iter()
            .map(|m| tokens(&text_of(&m.content)) + 3)
            .sum::<u64>();
    // The reply is cut at max_tokens words, as a model stops at its limit.
    let words: Vec<String> = reply_chunks().take(max_tokens.max(1) as usize).collect();
    let output = words.len() as u64;
    let stop = if output < completion_tokens() {
        "max_tokens"
    } else {
        "end_turn"
    };
    let id = format!("msg_mock{:016}", next_id());
    if !req.stream {
        return json_response(
            StatusCode::OK,
            &json!({
                "id": id, "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": words.concat()}],
                "stop_reason": stop, "stop_sequence": null,
                "usage": {"input_tokens": input, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0, "output_tokens": output},
            }),
        );
    }
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut frames = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {"id": id, "type": "message",
                "role": "assistant", "content": [], "model": model, "stop_reason": null,
                "stop_sequence": null, "usage": {"input_tokens": input, "output_tokens": 1}}}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    frames.extend(words.iter().map(|w| {
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": w}}),
        )
    }));
    frames.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    frames.push(event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
               "usage": {"output_tokens": output}}),
    ));
    frames.push(event("message_stop", json!({"type": "message_stop"})));
    sse_response(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn listen_must_be_a_loopback_address() {
        assert!(parse_listen("127.0.0.1:18080").is_ok());
        assert!(parse_listen("[::1]:18080").is_ok());
        let e = parse_listen("0.0.0.0:18080").unwrap_err().to_string();
        assert!(e.contains("loopback only"), "{e}");
        let e = parse_listen("localhost").unwrap_err().to_string();
        assert!(e.contains("is not an address"), "{e}");
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embedding("hi", 16);
        assert_eq!(a, embedding("hi", 16));
        assert_ne!(a, embedding("ho", 16));
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }

    #[test]
    fn tokens_are_about_four_characters_each() {
        assert_eq!(tokens(""), 0);
        assert_eq!(tokens("Hi"), 1);
        assert_eq!(tokens("Hello"), 2);
        assert_eq!(tokens("12345678"), 2);
    }
}
