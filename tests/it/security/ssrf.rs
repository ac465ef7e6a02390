//! Server-side request forgery: where Keyward may be made to connect.
//!
//! - An admin-set base_url on a link-local or metadata address, in any spelling, is refused
//!   with 422 on create and on update, and nothing is written.
//! - Loopback and private addresses need `--upstream-allow`.
//! - The same policy holds at connect time, for names (the resolver) and addresses alike,
//!   so a provider registered before, or a DNS answer that changed, gets nowhere.
//! - Clients cannot steer the upstream with body fields or headers.
//! - A redirect from the provider is not followed.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use keyward_events::{Event, ProviderKind, UsageOutcome};
use serde_json::{Value, json};

use crate::api::*;
use crate::common::*;
use crate::proxy::{Gw, KeySpec, Reply, chat};

const METADATA: &[&str] = &[
    "http://169.254.169.254/latest/meta-data",
    "http://169.254.170.2/v2",
    "http://2852039166/",
    "http://0xA9FEA9FE/",
    "http://0251.0376.0251.0376/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[fd00:ec2::254]/latest",
    "http://[fe80::1]/",
    "http://0.0.0.0:8080/v1",
    "http://0/",
];

fn provider(base_url: &str) -> Value {
    json!({"name": "p", "kind": "openai", "base_url": base_url, "api_key": "sk-good-0123456789abcd"})
}

#[tokio::test]
async fn metadata_and_link_local_base_urls_are_refused_on_create_and_update() {
    // Even with every range allowlisted: these are never reachable.
    let t = TestApp::start_with(|c| {
        c.upstream_allow = keyward::config::UpstreamAllow::parse("0.0.0.0/0,::/0").unwrap()
    })
    .await;
    let api = Api::new(&t);
    let admin = t.admin_secret();
    let mock = MockProvider::start().await;
    let (s, created) = api
        .post("/api/v1/providers", &admin, provider(&mock.openai_base()))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap();
    let seen = mock.seen.lock().len();

    for url in METADATA {
        let head = t.running.state.0.live.head().seq;
        let got = api.post("/api/v1/providers", &admin, provider(url)).await;
        assert_problem(
            &got,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("base_url"),
        );
        let detail = got.1["detail"].as_str().unwrap();
        assert!(detail.contains("never connects to"), "{url}: {detail}");
        let got = api
            .patch(
                &format!("/api/v1/providers/{id}"),
                &admin,
                json!({"base_url": url}),
            )
            .await;
        assert_problem(
            &got,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("base_url"),
        );
        assert_eq!(
            t.running.state.0.live.head().seq,
            head,
            "{url} wrote an event"
        );
    }
    // No check was sent anywhere for them.
    assert_eq!(mock.seen.lock().len(), seen);
}

#[tokio::test]
async fn loopback_and_private_base_urls_need_the_allowlist() {
    let t =
        TestApp::start_with(|c| c.upstream_allow = keyward::config::UpstreamAllow::default()).await;
    let api = Api::new(&t);
    let admin = t.admin_secret();
    let mock = MockProvider::start().await;
    let port = mock.addr.port();
    for url in [
        mock.openai_base(),
        format!("http://localhost:{port}/v1"),
        format!("http://2130706433:{port}/v1"),
        format!("http://[::1]:{port}/v1"),
        format!("http://[::ffff:127.0.0.1]:{port}/v1"),
        "http://10.0.0.1/v1".to_owned(),
        "http://172.16.5.4/v1".to_owned(),
        "http://192.168.0.10/v1".to_owned(),
        "http://[fd00::1]/v1".to_owned(),
    ] {
        let head = t.running.state.0.live.head().seq;
        let got = api.post("/api/v1/providers", &admin, provider(&url)).await;
        assert_problem(
            &got,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("base_url"),
        );
        let detail = got.1["detail"].as_str().unwrap();
        assert!(detail.contains("KEYWARD_UPSTREAM_ALLOW"), "{url}: {detail}");
        assert_eq!(t.running.state.0.live.head().seq, head);
    }
    assert!(mock.seen.lock().is_empty(), "a refused provider was called");

    // Allowlisted, a name that resolves to loopback is accepted and checked live.
    let t = TestApp::start_with(|c| {
        c.upstream_allow = keyward::config::UpstreamAllow::parse("127.0.0.1/32").unwrap()
    })
    .await;
    let api = Api::new(&t);
    let (s, created) = api
        .post(
            "/api/v1/providers",
            &t.admin_secret(),
            provider(&format!("http://localhost:{port}/v1")),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(created["verification"]["ok"], true, "{created}");
}

/// A provider registered straight into the log, as one stored before the allowlist was
/// narrowed would be: the proxy still refuses to connect.
#[tokio::test]
async fn the_policy_holds_at_connect_time_for_addresses_and_names() {
    let gw = Gw::start_with(|c| c.upstream_allow = keyward::config::UpstreamAllow::default()).await;
    let by_address = gw.openai(&["gpt-4o-mini"]).await;
    let port = gw.mock.addr.port();
    let by_name = gw
        .provider(
            ProviderKind::Openai,
            &format!("http://localhost:{port}/v1"),
            json!({}),
            &["gpt-4o-mini"],
            Some(crate::proxy::OPENAI_CREDENTIAL),
        )
        .await;
    let (_, a) = gw.key(KeySpec::on(&by_address)).await;
    let (_, b) = gw.key(KeySpec::on(&by_name)).await;

    let r = gw
        .post("/v1/chat/completions", &a, chat("gpt-4o-mini"))
        .await;
    r.assert_error(502, "upstream_address_refused");
    // The resolver drops every loopback answer for `localhost`: no connection is made.
    let r = gw
        .post("/v1/chat/completions", &b, chat("gpt-4o-mini"))
        .await;
    r.assert_error(502, "upstream_unavailable");
    assert!(gw.mock.seen().is_empty(), "{:?}", gw.mock.seen());

    let used = gw.events("key.used", 2).await;
    assert_eq!(used.len(), 2);
    for e in used {
        let Event::KeyUsed(u) = e else { unreachable!() };
        assert_eq!(u.outcome, UsageOutcome::UpstreamUnavailable);
        assert_eq!(u.status, 502);
    }
}

#[tokio::test]
async fn clients_cannot_steer_the_upstream_with_body_fields_or_headers() {
    let gw = Gw::start().await;
    let p = gw.openai(&["gpt-4o-mini"]).await;
    let (_, secret) = gw.key(KeySpec::on(&p)).await;
    let evil = "http://169.254.169.254/latest/meta-data";

    // Fields that choose an upstream or a credential are refused at any depth.
    for (body, param) in [
        (json!({"base_url": evil}), "base_url"),
        (json!({"api_base": evil}), "api_base"),
        (json!({"baseURL": evil}), "baseURL"),
        (json!({"API-KEY": "sk-x"}), "API-KEY"),
        (
            json!({"extra_body": {"nested": [{"Base_Url": evil}]}}),
            "extra_body.nested[0].Base_Url",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi", "api_base": evil}]}),
            "messages[0].api_base",
        ),
    ] {
        let mut b = chat("gpt-4o-mini");
        for (k, v) in body.as_object().unwrap() {
            b[k] = v.clone();
        }
        let r = gw.post("/v1/chat/completions", &secret, b).await;
        r.assert_error(400, "forbidden_field");
        assert_eq!(r.json()["error"]["param"], param, "{}", r.text());
    }
    assert!(gw.mock.seen().is_empty());

    // Other fields are the provider's business: they go along, and change nothing about
    // where the request goes. Nor do headers.
    let mut body = chat("gpt-4o-mini");
    for field in ["url", "endpoint", "host", "upstream"] {
        body[field] = json!(evil);
    }
    let req = Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {secret}"))
        .header("content-type", "application/json")
        .header("host", "169.254.169.254")
        .header("x-forwarded-host", "169.254.169.254")
        .header("x-forwarded-proto", "http")
        .header("x-original-url", "/latest/meta-data")
        .header("x-rewrite-url", "/latest/meta-data")
        .header("forwarded", "host=169.254.169.254")
        .header("x-http-method-override", "DELETE")
        .header("x-forwarded-prefix", "/admin")
        .header("x-host", "169.254.169.254")
        .body(Body::from(body.to_string()))
        .unwrap();
    let r = Reply::read(gw.call(req).await).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = gw.mock.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.method, axum::http::Method::POST);
    assert_eq!(s.uri.path(), "/v1/chat/completions");
    assert_eq!(s.header("host"), Some(gw.mock.addr.to_string().as_str()));
    for h in [
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-original-url",
        "x-rewrite-url",
        "forwarded",
        "x-http-method-override",
        "x-forwarded-prefix",
        "x-host",
    ] {
        assert_eq!(s.header(h), None, "{h} was forwarded");
    }
}

/// A provider that answers every chat with a redirect to `to`.
async fn redirecting(to: String) -> std::net::SocketAddr {
    let app = axum::Router::new().fallback(move || {
        let to = to.clone();
        async move { (StatusCode::TEMPORARY_REDIRECT, [("location", to)], "moved") }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    addr
}

#[tokio::test]
async fn a_redirect_from_the_provider_is_not_followed() {
    let gw = Gw::start().await;
    // Where the redirect points: the mock, which records any request.
    let target = format!("{}/chat/completions", gw.mock.openai_base());
    for status_target in [target, "http://169.254.169.254/latest/meta-data".to_owned()] {
        let addr = redirecting(status_target).await;
        let p = gw
            .provider(
                ProviderKind::Openai,
                &format!("http://{addr}/v1"),
                json!({}),
                &["gpt-4o-mini"],
                Some(crate::proxy::OPENAI_CREDENTIAL),
            )
            .await;
        let (_, secret) = gw.key(KeySpec::on(&p)).await;
        let r = gw
            .post("/v1/chat/completions", &secret, chat("gpt-4o-mini"))
            .await;
        r.assert_error(502, "upstream_redirect");
        assert_eq!(r.header("location"), None);
        assert!(!r.text().contains("169.254"), "{}", r.text());
    }
    assert!(gw.mock.seen().is_empty(), "the redirect was followed");
    let used = gw.events("key.used", 2).await;
    assert_eq!(used.len(), 2);
    for e in used {
        let Event::KeyUsed(u) = e else { unreachable!() };
        assert_eq!(u.outcome, UsageOutcome::UpstreamError);
        assert_eq!(u.status, 502);
    }
}
