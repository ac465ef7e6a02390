//! Refusals that say what Keyward saw: the client address for `ip_not_allowed`, the model
//! for `model_not_allowed` and `model_not_found`, the key's scopes for `insufficient_scope`,
//! the endpoint for `provider_not_allowed`; never a key, even one pasted into the model.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use keyward_events::Scope;
use serde_json::json;

use super::*;

fn from(ip: [u8; 4], req: Request<Body>) -> Request<Body> {
    let mut req = req;
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from((ip, 5555))));
    req
}

fn message(r: &Reply) -> String {
    r.json()["error"]["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn ip_not_allowed_names_the_address_keyward_saw() {
    let gw = Gw::start().await;
    let p = gw.openai(&[]).await;
    let mut spec = KeySpec::on(&p);
    spec.ip_allowlist = vec!["10.0.0.0/8".into()];
    let (_, secret) = gw.key(spec).await;
    let r = Reply::read(
        gw.call(from(
            [192, 0, 2, 33],
            post("/v1/chat/completions", &secret, chat("gpt-4o-mini")),
        ))
        .await,
    )
    .await;
    r.assert_error(403, "ip_not_allowed");
    let m = message(&r);
    assert!(m.contains("192.0.2.33"), "{m}");
    assert!(m.contains("allowlist"), "{m}");
    assert!(
        !m.contains("10.0.0.0/8"),
        "the allowlist itself is not shown: {m}"
    );
}

#[tokio::test]
async fn model_refusals_name_the_model_cut_short_and_key_free() {
    let gw = Gw::start().await;
    let p = gw.openai(&["gpt-4o-mini", "gpt-4.1"]).await;
    let mut spec = KeySpec::on(&p);
    spec.models = vec!["gpt-4o-mini".into()];
    let (_, narrow) = gw.key(spec).await;
    let r = gw
        .post("/v1/chat/completions", &narrow, chat("gpt-4.1"))
        .await;
    r.assert_error(403, "model_not_allowed");
    assert!(message(&r).contains("`gpt-4.1`"), "{}", message(&r));

    let (_, plain) = gw.key(KeySpec::on(&p)).await;
    let r = gw.post("/v1/chat/completions", &plain, chat("o3")).await;
    r.assert_error(404, "model_not_found");
    assert!(message(&r).contains("`o3`"), "{}", message(&r));

    // A key pasted into the model is not echoed back; a long name is cut.
    let pasted = format!("gpt-{plain}");
    let r = gw
        .post("/v1/chat/completions", &narrow, chat(&pasted))
        .await;
    r.assert_error(403, "model_not_allowed");
    assert!(!r.text().contains(&plain), "{}", r.text());
    assert!(!r.text().contains(&plain[..20]), "{}", r.text());
    let long = "x".repeat(5000);
    let r = gw.post("/v1/chat/completions", &narrow, chat(&long)).await;
    r.assert_error(403, "model_not_allowed");
    let m = message(&r);
    assert!(m.contains(&format!("`{}…`", "x".repeat(64))), "{m}");
    assert!(m.len() < 200, "{m}");
}

#[tokio::test]
async fn scope_and_provider_refusals_name_what_the_key_has_and_the_endpoint() {
    let gw = Gw::start().await;
    let p = gw.openai(&[]).await;
    let mut spec = KeySpec::on(&p);
    spec.scopes = vec![Scope::Read];
    let (_, read_only) = gw.key(spec).await;
    let r = gw
        .post("/v1/chat/completions", &read_only, chat("gpt-4o-mini"))
        .await;
    r.assert_error(403, "insufficient_scope");
    let m = message(&r);
    assert!(m.contains("(`read`)") && m.contains("needs `chat`"), "{m}");

    let (_, plain) = gw.key(KeySpec::on(&p)).await;
    let r = gw
        .post(
            "/v1/messages",
            &plain,
            json!({"model": "claude", "max_tokens": 5, "messages": []}),
        )
        .await;
    r.assert_error(403, "provider_not_allowed");
    assert!(message(&r).contains("/v1/messages"), "{}", message(&r));
}
