//! Anthropic providers: native passthrough on /v1/messages, and OpenAI clients translated
//! both ways, streaming included.

use axum::body::Body;
use axum::http::Request;
use keyward_events::UsageOutcome;
use serde_json::{Value, json};

use super::mock::MESSAGE;
use super::*;

#[tokio::test]
async fn messages_pass_through_natively_with_the_anthropic_headers() {
    let gw = Gw::start().await;
    let p = gw.anthropic(json!({})).await;
    let (_, secret) = gw.key(KeySpec::on(&p)).await;
    let raw = r#"{"model":"claude-sonnet-4-20250514","max_tokens":64,"system":"Be brief.","messages":[{"role":"user","content":"Hi"}]}"#;
    // As the Anthropic SDK sends it: the key in x-api-key.
    let req = Request::post("/v1/messages")
        .header("x-api-key", &secret)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "tools-2024-04-04")
        .header("content-type", "application/json")
        .body(Body::from(raw))
        .unwrap();
    let r = Reply::read(gw.call(req).await).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), MESSAGE);
    let seen = gw.mock.last();
    assert_eq!(seen.uri.path(), "/v1/messages");
    assert_eq!(&seen.body[..], raw.as_bytes());
    assert_eq!(seen.header("x-api-key"), Some(ANTHROPIC_CREDENTIAL));
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(seen.header("anthropic-beta"), Some("tools-2024-04-04"));
    assert_eq!(seen.header("authorization"), None);
    let used = gw.last_used(1).await;
    assert_eq!(used.endpoint, "/v1/messages");
    assert_eq!((used.prompt_tokens, used.completion_tokens), (10, 12));

    // Streaming passes the named events through and reads the usage from them.
    let mut body: Value = serde_json::from_str(raw).unwrap();
    body["stream"] = json!(true);
    let r = gw.post("/v1/messages", &secret, body).await;
    assert_eq!(r.status, 200);
    assert!(
        r.text().starts_with("event: message_start\n"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("event: message_stop"));
    let used = gw.last_used(2).await;
    assert!(used.stream);
    assert_eq!((used.prompt_tokens, used.completion_tokens), (25, 15));
}

#[tokio::test]
async fn an_openai_chat_request_is_translated_to_messages_and_back() {
    let gw = Gw::start().await;
    let p = gw
        .anthropic(json!({"default_max_tokens": 1000, "anthropic_version": "2023-06-01"}))
        .await;
    let (_, secret) = gw.key(KeySpec::on(&p)).await;
    let body = json!({
        "model": "claude-sonnet-4-20250514",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Name?"}
        ],
        "stop": ["\n\n"],
        "temperature": 0.2
    });
    let r = gw.post("/v1/chat/completions", &secret, body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "claude-sonnet-4-20250514");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hi! My name is Claude."
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 10);
    assert_eq!(v["usage"]["completion_tokens"], 12);

    let seen = gw.mock.last();
    assert_eq!(seen.uri.path(), "/v1/messages");
    assert_eq!(seen.header("x-api-key"), Some(ANTHROPIC_CREDENTIAL));
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    let sent = seen.json();
    assert_eq!(sent["system"], "You are terse.");
    assert_eq!(sent["max_tokens"], 1000);
    assert_eq!(sent["stop_sequences"], json!(["\n\n"]));
    let roles: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user"]);

    let used = gw.last_used(1).await;
    assert_eq!((used.prompt_tokens, used.completion_tokens), (10, 12));
    assert_eq!(used.outcome, UsageOutcome::Success);
}

#[tokio::test]
async fn an_openai_stream_is_translated_from_anthropic_events() {
    let gw = Gw::start().await;
    let p = gw.anthropic(json!({})).await;
    let (_, secret) = gw.key(KeySpec::on(&p)).await;
    let mut body = chat("claude-sonnet-4-20250514");
    body["stream"] = json!(true);
    let r = gw.post("/v1/chat/completions", &secret, body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(gw.mock.last().json()["max_tokens"], 4096);
    assert_eq!(gw.mock.last().json()["stream"], true);
    let data = r.sse_data();
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello!");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    assert!(!chunks.iter().any(|c| c["choices"] == json!([])));
    let used = gw.last_used(1).await;
    assert!(used.stream);
    assert_eq!((used.prompt_tokens, used.completion_tokens), (25, 15));

    body["stream_options"] = json!({"include_usage": true});
    let r = gw.post("/v1/chat/completions", &secret, body).await;
    let data = r.sse_data();
    let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 25);
    assert_eq!(usage["usage"]["total_tokens"], 40);
}

#[tokio::test]
async fn anthropic_errors_reach_openai_clients_in_openai_shape_and_scrubbed() {
    let gw = Gw::start().await;
    let p = gw.anthropic(json!({})).await;
    let (_, secret) = gw.key(KeySpec::on(&p)).await;
    let r = gw
        .post("/v1/chat/completions", &secret, chat("claude-error"))
        .await;
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let msg = v["error"]["message"].as_str().unwrap();
    assert_eq!(msg, "invalid x-api-key [redacted]");
    assert!(!r.text().contains(ANTHROPIC_CREDENTIAL));

    // Natively, the error stays in Anthropic's shape, scrubbed too.
    let r = gw
        .post(
            "/v1/messages",
            &secret,
            json!({"model": "claude-error", "max_tokens": 5, "messages": []}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["type"], "error");
    assert!(!r.text().contains(ANTHROPIC_CREDENTIAL));
    assert_eq!(gw.last_used(2).await.outcome, UsageOutcome::UpstreamError);

    // The provider refusing Keyward's own credential is not the client's 401: a 502 in
    // either dialect, recorded as the provider's error.
    let r = gw
        .post("/v1/chat/completions", &secret, chat("claude-401"))
        .await;
    r.assert_error(502, "provider_credential_rejected");
    assert!(!r.text().contains(ANTHROPIC_CREDENTIAL));
    let r = gw
        .post(
            "/v1/messages",
            &secret,
            json!({"model": "claude-401", "max_tokens": 5, "messages": []}),
        )
        .await;
    assert_eq!(r.status, 502);
    assert!(!r.text().contains(ANTHROPIC_CREDENTIAL));
    let used = gw.last_used(4).await;
    assert_eq!(used.outcome, UsageOutcome::UpstreamError);
    assert_eq!(used.status, 502);
}
