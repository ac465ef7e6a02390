//! `keyward mock-provider`, the built-in test upstream: its wire formats on their own,
//! every endpoint through Keyward with usage recorded, and the process's refusals.

use std::net::SocketAddr;

use axum::body::Body;
use axum::http::Request;
use keyward::mock_provider::{self, REPLY};
use keyward_events::ProviderKind;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::proxy::{Gw, KeySpec, Reply};

async fn direct(req: Request<Body>) -> Reply {
    Reply::read(mock_provider::router().oneshot(req).await.unwrap()).await
}

fn post(path: &str, headers: &[(&str, &str)], body: Value) -> Request<Body> {
    let mut b = Request::post(path).header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::from(body.to_string())).unwrap()
}

const BEARER: (&str, &str) = ("authorization", "Bearer sk-anything");

/// The content of a streamed chat, and the chunks that carry a usage block.
fn streamed_text(r: &Reply) -> (String, Vec<Value>) {
    let data = r.sse_data();
    assert_eq!(
        data.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        r.text()
    );
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect::<String>();
    let usage = chunks
        .iter()
        .filter(|c| c["usage"].is_object())
        .cloned()
        .collect();
    (text, usage)
}

#[tokio::test]
async fn chat_answers_in_openais_shape_streamed_or_not() {
    let r = direct(post(
        "/v1/chat/completions",
        &[BEARER],
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there"}]}),
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o-mini");
    assert_eq!(v["choices"][0]["message"]["content"], REPLY);
    let u = &v["usage"];
    // "Hello there": 11 characters, 3 tokens, + 3 per message + 3.
    assert_eq!(u["prompt_tokens"], 9);
    assert_eq!(u["completion_tokens"], REPLY.split(' ').count());
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
    );

    // Streamed, without include_usage: no usage chunk, as OpenAI does.
    let body = json!({"model": "gpt-4o-mini", "stream": true,
                      "messages": [{"role": "user", "content": "Hello there"}]});
    let r = direct(post("/v1/chat/completions", &[BEARER], body.clone())).await;
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let (text, usage) = streamed_text(&r);
    assert_eq!(text, REPLY);
    assert!(usage.is_empty(), "{usage:?}");

    // With include_usage: the last chunk before [DONE] has no choices and the usage.
    let mut with = body;
    with["stream_options"] = json!({"include_usage": true});
    let r = direct(post("/v1/chat/completions", &[BEARER], with)).await;
    let (text, usage) = streamed_text(&r);
    assert_eq!(text, REPLY);
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0]["choices"], json!([]));
    assert_eq!(usage[0]["usage"]["prompt_tokens"], 9);
    let data = r.sse_data();
    let last: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(last, usage[0]);
}

#[tokio::test]
async fn embeddings_come_as_floats_or_base64() {
    let r = direct(post(
        "/v1/embeddings",
        &[BEARER],
        json!({"model": "text-embedding-3-small", "input": ["hi", "there"]}),
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][1]["index"], 1);
    let floats: Vec<f32> = v["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(floats.len(), 16);
    assert_eq!(v["usage"]["prompt_tokens"], 3);

    // The openai SDK asks for base64 by default: little-endian f32s.
    let r = direct(post(
        "/v1/embeddings",
        &[BEARER],
        json!({"model": "text-embedding-3-small", "input": "hi", "encoding_format": "base64",
               "dimensions": 4}),
    ))
    .await;
    let b64 = r.json()["data"][0]["embedding"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        b64.len(),
        24,
        "4 f32 = 16 bytes = 24 base64 characters: {b64}"
    );

    let r = direct(post(
        "/v1/embeddings",
        &[BEARER],
        json!({"model": "text-embedding-3-small", "input": []}),
    ))
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "input");
}

#[tokio::test]
async fn messages_follow_anthropics_event_sequence() {
    let key = ("x-api-key", "sk-ant-anything");
    let body = json!({"model": "claude-sonnet-4-20250514", "max_tokens": 256, "system": "Be brief",
                      "messages": [{"role": "user", "content": "Hi"}]});
    let r = direct(post("/v1/messages", &[key], body.clone())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["text"], REPLY);
    assert_eq!(v["stop_reason"], "end_turn");
    // "Be brief" 2 + "Hi" 1 + 3.
    assert_eq!(v["usage"]["input_tokens"], 6);
    assert_eq!(v["usage"]["output_tokens"], REPLY.split(' ').count());

    let mut s = body.clone();
    s["stream"] = json!(true);
    let r = direct(post("/v1/messages", &[key], s)).await;
    let text = r.text();
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    let mut want = vec!["message_start", "content_block_start", "ping"];
    want.extend(std::iter::repeat_n(
        "content_block_delta",
        REPLY.split(' ').count(),
    ));
    want.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(events, want);

    // max_tokens cuts the reply, with stop_reason max_tokens.
    let mut short = body.clone();
    short["max_tokens"] = json!(2);
    let v = direct(post("/v1/messages", &[key], short)).await.json();
    assert_eq!(v["content"][0]["text"], "Hello! This");
    assert_eq!(v["stop_reason"], "max_tokens");

    let mut none = body;
    none.as_object_mut().unwrap().remove("max_tokens");
    let r = direct(post("/v1/messages", &[key], none)).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn a_request_without_a_credential_gets_the_providers_401() {
    let r = direct(post(
        "/v1/chat/completions",
        &[],
        json!({"model": "gpt-4o-mini", "messages": []}),
    ))
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    let r = direct(post(
        "/v1/messages",
        &[],
        json!({"model": "m", "max_tokens": 1, "messages": []}),
    ))
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    let r = direct(post("/v1/chat/completions", &[BEARER], json!("nonsense"))).await;
    assert_eq!(r.status, 400);
    let r = direct(Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    let r = direct(Request::get("/v2/other").body(Body::empty()).unwrap()).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "unknown_url");
}

#[tokio::test]
async fn models_are_listed_in_the_dialect_asked_for() {
    let r = direct(
        Request::get("/v1/models")
            .header("authorization", "Bearer sk-x")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.json()["object"], "list");
    assert_eq!(r.json()["data"][0]["id"], "gpt-4o-mini");
    let r = direct(
        Request::get("/v1/models")
            .header("x-api-key", "sk-ant-x")
            .header("anthropic-version", "2023-06-01")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.json()["data"][0]["type"], "model");
    assert_eq!(r.json()["has_more"], false);
}

/// Every endpoint through Keyward, against the real mock on a port: the answers arrive and
/// each use is recorded with the mock's token counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_works_through_keyward_with_usage_recorded() {
    let listener = mock_provider::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, mock_provider::router()).await });
    let gw = Gw::start().await;
    let openai = gw
        .provider(
            ProviderKind::Openai,
            &format!("http://{addr}/v1"),
            json!({}),
            &[],
            Some("sk-mock"),
        )
        .await;
    let anthropic = gw
        .provider(
            ProviderKind::Anthropic,
            &format!("http://{addr}"),
            json!({}),
            &[],
            Some("sk-ant-mock"),
        )
        .await;
    let mut spec = KeySpec::on(&openai);
    spec.providers.push(anthropic);
    let (_, kw) = gw.key(spec).await;

    let chat = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]});
    let r = gw.post("/v1/chat/completions", &kw, chat.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"][0]["message"]["content"], REPLY);
    let used = gw.last_used(1).await;
    assert_eq!(used.prompt_tokens, 8);
    assert_eq!(used.completion_tokens, REPLY.split(' ').count() as u64);

    // Streamed: Keyward asks for the usage chunk upstream and drops it for this client.
    let mut s = chat;
    s["stream"] = json!(true);
    let r = gw.post("/v1/chat/completions", &kw, s).await;
    let (text, usage) = streamed_text(&r);
    assert_eq!(text, REPLY);
    assert!(usage.is_empty(), "{usage:?}");
    let used = gw.last_used(2).await;
    assert!(used.stream);
    assert_eq!(used.prompt_tokens, 8);
    assert_eq!(used.completion_tokens, REPLY.split(' ').count() as u64);

    let r = gw
        .post(
            "/v1/embeddings",
            &kw,
            json!({"model": "text-embedding-3-small", "input": "hi"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(gw.last_used(3).await.prompt_tokens, 1);

    let r = gw.get("/v1/models", &kw).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let r = gw
        .post(
            "/v1/messages",
            &kw,
            json!({"model": "claude-sonnet-4-20250514", "max_tokens": 64,
                   "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["content"][0]["text"], REPLY);
}

#[test]
fn the_process_is_a_loopback_test_tool_that_names_a_taken_port() {
    let bin = env!("CARGO_BIN_EXE_keyward");
    let help = std::process::Command::new(bin)
        .args(["mock-provider", "--help"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("test tool"),
        "{}",
        String::from_utf8_lossy(&help.stdout)
    );

    let o = std::process::Command::new(bin)
        .args(["mock-provider", "--listen", "0.0.0.0:18080"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("loopback only"), "{err}");

    // A port that is taken is named.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let o = std::process::Command::new(bin)
        .args(["mock-provider", "--listen", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("port {port} is already in use")),
        "{err}"
    );
    assert!(mock_provider::banner(SocketAddr::from(([127, 0, 0, 1], 1))).contains("test tool"));
}

/// `--latency`: a whole answer comes after it, and a stream's chunks are spread over it
/// (the first at once, the end only after the latency), with the same content.
#[tokio::test]
async fn a_latency_delays_whole_answers_and_spreads_streams() {
    use http_body_util::BodyExt;
    let latency = std::time::Duration::from_millis(300);
    let router = mock_provider::router_with(latency);
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]});
    let t = std::time::Instant::now();
    let r = Reply::read(
        router
            .clone()
            .oneshot(post("/v1/chat/completions", &[BEARER], body.clone()))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200);
    assert!(t.elapsed() >= latency, "{:?}", t.elapsed());
    assert_eq!(r.json()["choices"][0]["message"]["content"], REPLY);

    let mut streamed = body;
    streamed["stream"] = json!(true);
    let t = std::time::Instant::now();
    let res = router
        .oneshot(post("/v1/chat/completions", &[BEARER], streamed))
        .await
        .unwrap();
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let first_at = t.elapsed();
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    let mut rest = Vec::new();
    while let Some(f) = body.frame().await {
        rest.extend_from_slice(&f.unwrap().into_data().unwrap());
    }
    let whole_at = t.elapsed();
    // Spread: the rest came over most of the latency after the first chunk.
    assert!(
        whole_at - first_at >= latency * 8 / 10,
        "first chunk at {first_at:?}, end at {whole_at:?}"
    );
    assert!(String::from_utf8_lossy(&rest).ends_with("data: [DONE]\n\n"));
}

/// `--chunks N`: a streamed reply has exactly N content chunks and its usage counts them;
/// a whole answer is still the canned reply.
#[tokio::test]
async fn a_chunk_count_shapes_streamed_replies() {
    let router = mock_provider::router_shaped(std::time::Duration::ZERO, Some(50));
    let body = json!({"model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Hi"}]});
    let r = Reply::read(
        router
            .clone()
            .oneshot(post("/v1/chat/completions", &[BEARER], body))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200);
    let text = String::from_utf8_lossy(&r.bytes).into_owned();
    let events: Vec<Value> = text
        .split("\n\n")
        .filter_map(|f| f.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let contents = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .filter(|c| !c.is_empty())
        .count();
    assert_eq!(contents, 50, "{text}");
    assert_eq!(events.last().unwrap()["usage"]["completion_tokens"], 50);
    let whole = Reply::read(
        router
            .oneshot(post(
                "/v1/chat/completions",
                &[BEARER],
                json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}),
            ))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(whole.json()["choices"][0]["message"]["content"], REPLY);
}
