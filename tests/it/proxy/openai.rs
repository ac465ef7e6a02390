//! OpenAI-format providers: passthrough, the alias, embeddings, models, Azure's URL and
//! header, streaming with the usage chunk, headers that must not cross, upstream errors.

use axum::body::Body;
use axum::http::Request;
use keyward_events::{ProviderKind, UsageOutcome};
use serde_json::{Value, json};

use super::mock::{CHAT, EMBEDDINGS};
use super::*;

#[tokio::test]
async fn a_chat_completion_is_forwarded_byte_for_byte_with_the_provider_credential() {
    let gw = Gw::start().await;
    let p = gw.openai(&[]).await;
    let (key_id, secret) = gw.key(KeySpec::on(&p)).await;
    // Odd spacing and key order: the proxy must not re-serialise the body.
    let raw = r#"{ "messages":[{"role":"user","content":"Hello"}],   "model":"gpt-4o-mini","temperature":0.5 }"#;
    let req = Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {secret}"))
        .header("content-type", "application/json")
        .header("x-custom-trace", "abc")
        .body(Body::from(raw))
        .unwrap();
    let r = Reply::read(gw.call(req).await).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), CHAT);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("x-request-id").unwrap().starts_with("req_"));
    assert_eq!(r.header("x-upstream-request-id"), Some("req_upstream_1"));

    let seen = gw.mock.last();
    assert_eq!(seen.method, axum::http::Method::POST);
    assert_eq!(seen.uri.path(), "/v1/chat/completions");
    assert_eq!(&seen.body[..], raw.as_bytes());
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {OPENAI_CREDENTIAL}").as_str())
    );
    assert_eq!(seen.header("x-custom-trace"), Some("abc"));
    let all_headers = format!("{:?}", seen.headers);
    assert!(
        !all_headers.contains(&secret),
        "the client's key went upstream"
    );

    let used = gw.last_used(1).await;
    assert_eq!(used.key_id, key_id);
    assert_eq!(used.provider_id, p);
    assert_eq!(used.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(used.endpoint, "/v1/chat/completions");
    assert_eq!(used.outcome, UsageOutcome::Success);
    assert_eq!(used.status, 200);
    assert_eq!((used.prompt_tokens, used.completion_tokens), (19, 10));
    assert!(!used.stream);
    assert_eq!(used.client_ip.as_deref(), Some("127.0.0.1"));
    let up = used.upstream_latency_us.unwrap();
    assert!(
        up > 0 && up <= used.latency_us,
        "{up} vs {}",
        used.latency_us
    );
}

#[tokio::test]
async fn work_is_an_alias_and_embeddings_are_forwarded() {
    let gw = Gw::start().await;
    let p = gw.openai(&[]).await;
    let (_, secret) = gw.key(KeySpec::on(&p)).await;
    let r = gw.post("/work", &secret, chat("gpt-4o-mini")).await;
    assert_eq!(r.status, 200);
    assert_eq!(gw.mock.last().uri.path(), "/v1/chat/completions");
    assert_eq!(gw.last_used(1).await.endpoint, "/work");

    let r = gw
        .post(
            "/v1/embeddings",
            &secret,
            json!({"model": "text-embedding-3-small", "input": "hi"}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), EMBEDDINGS);
    assert_eq!(gw.mock.last().uri.path(), "/v1/embeddings");
    let used = gw.last_used(2).await;
    assert_eq!(used.endpoint, "/v1/embeddings");
    assert_eq!((used.prompt_tokens, used.completion_tokens), (8, 0));
}

#[tokio::test]
async fn streaming_adds_include_usage_upstream_and_hides_the_extra_chunk() {
    let gw = Gw::start().await;
    let p = gw.openai(&[]).await;
    let (_, secret) = gw.key(KeySpec::on(&p)).await;
    let mut body = chat("gpt-4o-mini");
    body["stream"] = json!(true);
    let r = gw.post("/v1/chat/completions", &secret, body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(
        gw.mock.last().json()["stream_options"]["include_usage"],
        true
    );
    let data = r.sse_data();
    assert_eq!(data.last().unwrap(), "[DONE]");
    assert!(
        !data.iter().any(|d| d.contains("\"choices\":[]")),
        "the usage chunk the client did not ask for was shown: {data:?}"
    );
    let text: String = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, "Hello there!");
    let used = gw.last_used(1).await;
    assert!(used.stream);
    assert_eq!((used.prompt_tokens, used.completion_tokens), (9, 3));
    assert_eq!(used.outcome, UsageOutcome::Success);

    // A client that asks for usage gets the chunk, and its body goes up unchanged.
    let raw = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;
    let req = Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {secret}"))
        .body(Body::from(raw))
        .unwrap();
    let r = Reply::read(gw.call(req).await).await;
    assert_eq!(&gw.mock.last().body[..], raw.as_bytes());
    assert!(r.sse_data().iter().any(|d| d.contains("\"choices\":[]")));
    let used = gw.last_used(2).await;
    assert_eq!((used.prompt_tokens, used.completion_tokens), (9, 3));
}

#[tokio::test]
async fn azure_gets_its_deployment_url_api_version_and_api_key_header() {
    let gw = Gw::start().await;
    let p = gw
        .provider(
            ProviderKind::AzureOpenai,
            &gw.mock.root(),
            json!({"api_version": "2024-10-21", "deployments": {"gpt-4o": "prod-4o", "text-embedding-3-small": "emb"}}),
            &[],
            Some(AZURE_CREDENTIAL),
        )
        .await;
    let (_, secret) = gw.key(KeySpec::on(&p)).await;
    let r = gw
        .post("/v1/chat/completions", &secret, chat("gpt-4o"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = gw.mock.last();
    assert_eq!(
        seen.uri.path(),
        "/openai/deployments/prod-4o/chat/completions"
    );
    assert_eq!(seen.uri.query(), Some("api-version=2024-10-21"));
    assert_eq!(seen.header("api-key"), Some(AZURE_CREDENTIAL));
    assert_eq!(seen.header("authorization"), None);

    let r = gw
        .post(
            "/v1/embeddings",
            &secret,
            json!({"model": "text-embedding-3-small", "input": "x"}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        gw.mock.last().uri.path(),
        "/openai/deployments/emb/embeddings"
    );

    // A model with no deployment does not exist for this key.
    gw.post("/v1/chat/completions", &secret, chat("gpt-5"))
        .await
        .assert_error(404, "model_not_found");

    // The models it lists are its deployments.
    let ids = model_ids(&gw.get("/v1/models", &secret).await.json());
    assert_eq!(ids, ["gpt-4o", "text-embedding-3-small"]);
}

fn model_ids(v: &Value) -> Vec<String> {
    assert_eq!(v["object"], "list");
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["object"], "model");
            m["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn models_are_the_key_allowlist_intersected_with_the_provider() {
    let gw = Gw::start().await;
    let narrow = gw.openai(&["gpt-4o-mini", "gpt-4.1"]).await;
    let open = gw.openai(&[]).await;

    // Both lists set: the intersection, without asking the provider.
    let mut spec = KeySpec::on(&narrow);
    spec.models = vec!["gpt-4.1".into(), "o3".into()];
    let (_, secret) = gw.key(spec).await;
    let before = gw.mock.seen().len();
    let r = gw.get("/v1/models", &secret).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(model_ids(&r.json()), ["gpt-4.1"]);
    assert_eq!(gw.mock.seen().len(), before);

    // Only the provider's list: all of it.
    let (_, secret) = gw.key(KeySpec::on(&narrow)).await;
    assert_eq!(
        model_ids(&gw.get("/v1/models", &secret).await.json()),
        ["gpt-4o-mini", "gpt-4.1"]
    );

    // Only the key's list, the provider allowing everything: the key's.
    let mut spec = KeySpec::on(&open);
    spec.models = vec!["gpt-4.1".into()];
    let (_, secret) = gw.key(spec).await;
    assert_eq!(
        model_ids(&gw.get("/v1/models", &secret).await.json()),
        ["gpt-4.1"]
    );

    // Neither: the provider is asked, with its credential.
    let (_, secret) = gw.key(KeySpec::on(&open)).await;
    let r = gw.get("/v1/models", &secret).await;
    assert_eq!(
        model_ids(&r.json()),
        ["gpt-4o-mini", "gpt-4.1", "text-embedding-3-small"]
    );
    let seen = gw.mock.last();
    assert_eq!(seen.method, axum::http::Method::GET);
    assert_eq!(seen.uri.path(), "/v1/models");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {OPENAI_CREDENTIAL}").as_str())
    );
    let used = gw.last_used(4).await;
    assert_eq!(used.endpoint, "/v1/models");
    assert_eq!(used.outcome, UsageOutcome::Success);

    // `read` is enough to list models.
    let mut spec = KeySpec::on(&narrow);
    spec.scopes = vec![keyward_events::Scope::Read];
    let (_, secret) = gw.key(spec).await;
    assert_eq!(gw.get("/v1/models", &secret).await.status, 200);
}

#[tokio::test]
async fn client_credentials_and_hop_by_hop_headers_are_not_forwarded() {
    let gw = Gw::start().await;
    let p = gw.openai(&[]).await;
    let (_, secret) = gw.key(KeySpec::on(&p)).await;
    let req = Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {secret}"))
        .header("x-api-key", "kw_should_not_travel_0000")
        .header("api-key", "azure-from-client")
        .header("connection", "x-hop-header")
        .header("x-hop-header", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .header("cookie", "session=1")
        .header("openai-organization", "org-client")
        .header("user-agent", "OpenAI/Python 1.0")
        .body(Body::from(chat("gpt-4o-mini").to_string()))
        .unwrap();
    assert_eq!(gw.call(req).await.status(), 200);
    let seen = gw.mock.last();
    for name in [
        "x-api-key",
        "api-key",
        "x-hop-header",
        "keep-alive",
        "proxy-authorization",
        "te",
        "cookie",
        "openai-organization",
    ] {
        assert!(seen.headers.get(name).is_none(), "{name} was forwarded");
    }
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {OPENAI_CREDENTIAL}").as_str())
    );
    assert_eq!(seen.header("user-agent"), Some("OpenAI/Python 1.0"));
}

#[tokio::test]
async fn upstream_errors_are_passed_on_with_credentials_scrubbed() {
    let gw = Gw::start().await;
    let p = gw.openai(&[]).await;
    let (_, secret) = gw.key(KeySpec::on(&p)).await;
    let r = gw
        .post("/v1/chat/completions", &secret, chat("error-500"))
        .await;
    assert_eq!(r.status, 500);
    let text = r.text();
    assert!(!text.contains(OPENAI_CREDENTIAL), "{text}");
    assert!(
        text.contains("upstream failure for key [redacted]"),
        "{text}"
    );
    let used = gw.last_used(1).await;
    assert_eq!(used.outcome, UsageOutcome::UpstreamError);
    assert_eq!(used.status, 500);

    let r = gw
        .post("/v1/chat/completions", &secret, chat("error-401"))
        .await;
    // The provider refused Keyward's credential: the client's key is fine, so not a 401.
    r.assert_error(502, "provider_credential_rejected");
    assert!(!r.text().contains(OPENAI_CREDENTIAL));
    assert_eq!(gw.last_used(2).await.outcome, UsageOutcome::UpstreamError);
}
