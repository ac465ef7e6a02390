//! Every refusal, with its exact status and error code, and the `key.denied` it records.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use keyward::commands::Actor;
use keyward_events::{
    DenyReason, Event, ExpireReason, KeyDeleted, KeyExpired, KeyRotated, ProviderDeleted,
    ProviderKind, Quota, RateLimit, Role, Scope, UsageOutcome, UserDisabled,
};
use serde_json::json;

use super::*;

async fn denied(gw: &Gw, n: usize) -> Vec<keyward_events::KeyDenied> {
    gw.events("key.denied", n)
        .await
        .into_iter()
        .map(|e| match e {
            Event::KeyDenied(d) => d,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn a_missing_malformed_or_unknown_key_gets_401() {
    let gw = Gw::start().await;
    let p = gw.openai(&[]).await;
    let (_, secret) = gw.key(KeySpec::on(&p)).await;

    let req = Request::post("/v1/chat/completions")
        .body(Body::from(chat("m").to_string()))
        .unwrap();
    let r = Reply::read(gw.call(req).await).await;
    r.assert_error(401, "missing_api_key");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));

    gw.post("/v1/chat/completions", "sk-not-ours", chat("m"))
        .await
        .assert_error(401, "invalid_api_key");
    // A mistyped key fails its checksum.
    let mut typo = secret.clone().into_bytes();
    typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    let r = gw.post("/v1/chat/completions", &typo, chat("m")).await;
    r.assert_error(401, "invalid_api_key");
    assert!(!r.text().contains(&typo), "the key was echoed");
    // Well-formed, checksum right, but no such key.
    let stranger = keyward::crypto::Secret::generate();
    let r = gw
        .post("/v1/chat/completions", stranger.expose(), chat("m"))
        .await;
    r.assert_error(401, "invalid_api_key");
    assert!(!r.text().contains(stranger.expose()));
    // x-api-key and api-key are read too.
    for header in ["x-api-key", "api-key"] {
        let req = Request::post("/v1/chat/completions")
            .header(header, stranger.expose())
            .body(Body::from(chat("m").to_string()))
            .unwrap();
        Reply::read(gw.call(req).await)
            .await
            .assert_error(401, "invalid_api_key");
    }
    assert!(gw.mock.seen().is_empty());
    // Unknown keys are no one's: nothing is recorded.
    assert!(stored(&gw.state, "key.denied").await.is_empty());
}

#[tokio::test]
async fn expired_deleted_rotated_and_disabled_owner_keys_get_401_and_a_denial() {
    let gw = Gw::start().await;
    let p = gw.openai(&[]).await;

    // Expiry is compared with the clock, not only when a sweeper has run.
    let mut spec = KeySpec::on(&p);
    spec.expires_in = chrono::Duration::milliseconds(300);
    let (short_id, short) = gw.key(spec).await;
    assert_eq!(
        gw.post("/v1/chat/completions", &short, chat("m"))
            .await
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    gw.post("/v1/chat/completions", &short, chat("m"))
        .await
        .assert_error(401, "key_expired");

    let (expired_id, expired) = gw.key(KeySpec::on(&p)).await;
    gw.append(Event::KeyExpired(KeyExpired {
        key_id: expired_id.clone(),
        reason: ExpireReason::Manual,
    }))
    .await;
    gw.post("/v1/chat/completions", &expired, chat("m"))
        .await
        .assert_error(401, "key_expired");

    let (deleted_id, deleted) = gw.key(KeySpec::on(&p)).await;
    gw.append(Event::KeyDeleted(KeyDeleted {
        key_id: deleted_id.clone(),
    }))
    .await;
    gw.post("/v1/chat/completions", &deleted, chat("m"))
        .await
        .assert_error(401, "key_deleted");

    // A rotated key works during its grace and not after.
    let (old_id, old) = gw.key(KeySpec::on(&p)).await;
    let (new_id, _) = gw.key(KeySpec::on(&p)).await;
    gw.append(Event::KeyRotated(KeyRotated {
        key_id: old_id.clone(),
        new_key_id: new_id.clone(),
        grace_until: chrono::Utc::now() + chrono::Duration::milliseconds(300),
    }))
    .await;
    assert_eq!(
        gw.post("/v1/chat/completions", &old, chat("m"))
            .await
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    gw.post("/v1/chat/completions", &old, chat("m"))
        .await
        .assert_error(401, "key_expired");

    let (ev, bob) = gw
        .state
        .0
        .commands
        .user_created(&Actor::system(), "bob", Role::User, None);
    gw.state.0.commands.submit(vec![ev]).await.unwrap();
    let mut spec = KeySpec::on(&p);
    spec.owner = Some(bob.clone());
    let (bobs_id, bobs) = gw.key(spec).await;
    assert_eq!(
        gw.post("/v1/chat/completions", &bobs, chat("m"))
            .await
            .status,
        200
    );
    gw.append(Event::UserDisabled(UserDisabled { user_id: bob }))
        .await;
    gw.post("/v1/chat/completions", &bobs, chat("m"))
        .await
        .assert_error(401, "owner_disabled");

    let d = denied(&gw, 5).await;
    let got: Vec<(String, DenyReason)> = d.iter().map(|d| (d.key_id.clone(), d.reason)).collect();
    assert_eq!(
        got,
        [
            (short_id, DenyReason::Expired),
            (expired_id, DenyReason::Expired),
            (deleted_id, DenyReason::Deleted),
            (old_id, DenyReason::Expired),
            (bobs_id, DenyReason::OwnerDisabled),
        ]
    );
    assert!(d.iter().all(
        |d| d.endpoint == "/v1/chat/completions" && d.client_ip.as_deref() == Some("127.0.0.1")
    ));
}

#[tokio::test]
async fn scope_provider_and_model_refusals() {
    let gw = Gw::start().await;
    let p = gw.openai(&["gpt-4o-mini", "gpt-4.1"]).await;
    let anth = gw.anthropic(json!({})).await;

    let mut spec = KeySpec::on(&p);
    spec.scopes = vec![Scope::Read];
    let (_, read_only) = gw.key(spec).await;
    gw.post("/v1/chat/completions", &read_only, chat("gpt-4o-mini"))
        .await
        .assert_error(403, "insufficient_scope");
    gw.post(
        "/v1/embeddings",
        &read_only,
        json!({"model": "gpt-4o-mini", "input": "x"}),
    )
    .await
    .assert_error(403, "insufficient_scope");
    let mut spec = KeySpec::on(&p);
    spec.scopes = vec![];
    let (_, no_scope) = gw.key(spec).await;
    let r = gw.get("/v1/models", &no_scope).await;
    r.assert_error(403, "insufficient_scope");
    // `full` includes chat.
    let mut spec = KeySpec::on(&p);
    spec.scopes = vec![Scope::Full];
    let (_, full) = gw.key(spec).await;
    assert_eq!(
        gw.post("/v1/chat/completions", &full, chat("gpt-4o-mini"))
            .await
            .status,
        200
    );

    // The key's model allowlist: 403. A model its provider does not serve: 404.
    let mut spec = KeySpec::on(&p);
    spec.models = vec!["gpt-4o-mini".into()];
    let (_, narrow) = gw.key(spec).await;
    let r = gw
        .post("/v1/chat/completions", &narrow, chat("gpt-4.1"))
        .await;
    r.assert_error(403, "model_not_allowed");
    assert_eq!(r.json()["error"]["param"], "model");
    let (_, plain) = gw.key(KeySpec::on(&p)).await;
    gw.post("/v1/chat/completions", &plain, chat("o3"))
        .await
        .assert_error(404, "model_not_found");

    // Provider: an endpoint the key's provider does not offer, or no live provider.
    gw.post(
        "/v1/messages",
        &plain,
        json!({"model": "gpt-4.1", "max_tokens": 5, "messages": []}),
    )
    .await
    .assert_error(403, "provider_not_allowed");
    let (_, anth_key) = gw.key(KeySpec::on(&anth)).await;
    gw.post(
        "/v1/embeddings",
        &anth_key,
        json!({"model": "claude", "input": "x"}),
    )
    .await
    .assert_error(403, "provider_not_allowed");
    let gone = gw.openai(&[]).await;
    let (_, orphan) = gw.key(KeySpec::on(&gone)).await;
    gw.append(Event::ProviderDeleted(ProviderDeleted {
        provider_id: gone,
        forced: true,
    }))
    .await;
    gw.post("/v1/chat/completions", &orphan, chat("gpt-4.1"))
        .await
        .assert_error(403, "provider_not_allowed");
    gw.get("/v1/models", &orphan)
        .await
        .assert_error(403, "provider_not_allowed");

    // One event per key and reason per window: the read-only key's second scope refusal
    // and the orphan's second provider refusal are counted, not logged.
    let reasons: Vec<DenyReason> = denied(&gw, 7).await.iter().map(|d| d.reason).collect();
    assert_eq!(
        reasons,
        [
            DenyReason::Scope,
            DenyReason::Scope,
            DenyReason::Model,
            DenyReason::Model,
            DenyReason::Provider,
            DenyReason::Provider,
            DenyReason::Provider,
        ]
    );
    assert!(
        gw.mock.seen().len() == 1,
        "only the allowed request went upstream"
    );
}

fn from(ip: [u8; 4], req: Request<Body>) -> Request<Body> {
    let mut req = req;
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from((ip, 5555))));
    req
}

#[tokio::test]
async fn the_ip_allowlist() {
    let gw = Gw::start().await;
    let p = gw.openai(&[]).await;
    let mut spec = KeySpec::on(&p);
    spec.ip_allowlist = vec!["192.168.0.0/16".into(), "10.0.0.7".into()];
    let (key_id, secret) = gw.key(spec).await;
    for ok in [[192, 168, 4, 2], [10, 0, 0, 7]] {
        let r = gw
            .call(from(ok, post("/v1/chat/completions", &secret, chat("m"))))
            .await;
        assert_eq!(r.status(), 200);
    }
    let r = Reply::read(
        gw.call(from(
            [10, 0, 0, 8],
            post("/v1/chat/completions", &secret, chat("m")),
        ))
        .await,
    )
    .await;
    r.assert_error(403, "ip_not_allowed");
    let d = denied(&gw, 1).await;
    assert_eq!(d[0].key_id, key_id);
    assert_eq!(d[0].reason, DenyReason::Ip);
    assert_eq!(d[0].client_ip.as_deref(), Some("10.0.0.8"));
    assert_eq!(d[0].model.as_deref(), Some("m"));
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after_and_ratelimit_headers() {
    let gw = Gw::start().await;
    let p = gw.openai(&[]).await;
    let mut spec = KeySpec::on(&p);
    spec.rate_limit = Some(RateLimit {
        requests_per_minute: 2,
        burst: 2,
    });
    let (_, secret) = gw.key(spec).await;
    let r = gw.post("/v1/chat/completions", &secret, chat("m")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("1"));
    assert_eq!(
        gw.post("/v1/chat/completions", &secret, chat("m"))
            .await
            .status,
        200
    );
    let r = gw.post("/v1/chat/completions", &secret, chat("m")).await;
    r.assert_error(429, "rate_limit_exceeded");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    assert_eq!(r.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(
        r.header("x-ratelimit-reset"),
        Some(retry.to_string().as_str())
    );
    assert_eq!(gw.mock.seen().len(), 2);
    assert_eq!(denied(&gw, 1).await[0].reason, DenyReason::RateLimit);
}

#[tokio::test]
async fn quotas_answer_429_quota_exceeded() {
    let gw = Gw::start().await;
    let p = gw.openai(&[]).await;
    let mut spec = KeySpec::on(&p);
    spec.quota = Some(Quota {
        requests_per_day: Some(2),
        ..Quota::default()
    });
    let (key_id, secret) = gw.key(spec).await;
    for _ in 0..2 {
        assert_eq!(
            gw.post("/v1/chat/completions", &secret, chat("m"))
                .await
                .status,
            200
        );
    }
    gw.events("key.used", 2).await;
    let r = gw.post("/v1/chat/completions", &secret, chat("m")).await;
    r.assert_error(429, "quota_exceeded");
    assert!(r.header("retry-after").is_some());
    assert_eq!(denied(&gw, 1).await[0].reason, DenyReason::Quota);

    // Tokens count too: the fixture uses 29 per request.
    let mut spec = KeySpec::on(&p);
    spec.quota = Some(Quota {
        tokens_per_month: Some(30),
        ..Quota::default()
    });
    let (_, tokens) = gw.key(spec).await;
    assert_eq!(
        gw.post("/v1/chat/completions", &tokens, chat("m"))
            .await
            .status,
        200
    );
    assert_eq!(
        gw.post("/v1/chat/completions", &tokens, chat("m"))
            .await
            .status,
        200
    );
    gw.events("key.used", 4).await;
    gw.post("/v1/chat/completions", &tokens, chat("m"))
        .await
        .assert_error(429, "quota_exceeded");
    let _ = key_id;
}

#[tokio::test]
async fn bodies_too_large_malformed_or_choosing_the_upstream_are_refused() {
    let gw = Gw::start_with(|c| c.body_limit_bytes = 1024).await;
    let p = gw.openai(&[]).await;
    let (key_id, secret) = gw.key(KeySpec::on(&p)).await;
    let big = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(2000)}]});
    gw.post("/v1/chat/completions", &secret, big)
        .await
        .assert_error(413, "body_too_large");
    // Without a Content-Length, the limit holds while reading.
    let chunks =
        futures::stream::iter((0..4).map(|_| Ok::<_, std::convert::Infallible>(vec![b' '; 400])));
    let req = Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {secret}"))
        .body(Body::from_stream(chunks))
        .unwrap();
    Reply::read(gw.call(req).await)
        .await
        .assert_error(413, "body_too_large");

    let req = Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {secret}"))
        .body(Body::from("{\"model\": "))
        .unwrap();
    Reply::read(gw.call(req).await)
        .await
        .assert_error(400, "invalid_json");
    gw.post(
        "/v1/chat/completions",
        &secret,
        json!(["not", "an", "object"]),
    )
    .await
    .assert_error(400, "invalid_json");
    let r = gw
        .post("/v1/chat/completions", &secret, json!({"messages": []}))
        .await;
    r.assert_error(400, "missing_model");
    assert_eq!(r.json()["error"]["param"], "model");

    for (body, path) in [
        (json!({"model": "m", "api_base": "http://evil"}), "api_base"),
        (json!({"model": "m", "base_url": "http://evil"}), "base_url"),
        (json!({"model": "m", "api_key": "sk-x"}), "api_key"),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "x", "meta": {"apiKey": "sk"}}]}]}),
            "messages[0].content[0].meta.apiKey",
        ),
        (
            json!({"model": "m", "extra_body": {"deep": [{"deeper": {"base_url": "x"}}]}}),
            "extra_body.deep[0].deeper.base_url",
        ),
    ] {
        let r = gw.post("/v1/chat/completions", &secret, body).await;
        r.assert_error(400, "forbidden_field");
        assert_eq!(r.json()["error"]["param"], path);
    }
    assert!(gw.mock.seen().is_empty());
    // Each is a use of the key that was refused for its body.
    let used = gw.events("key.used", 10).await;
    assert_eq!(used.len(), 10);
    for e in used {
        let Event::KeyUsed(u) = e else { panic!() };
        assert_eq!(u.key_id, key_id);
        assert_eq!(u.outcome, UsageOutcome::InvalidRequest);
        assert!(u.status == 400 || u.status == 413);
    }
}

#[tokio::test]
async fn a_decided_field_given_twice_or_a_padded_forbidden_key_is_refused() {
    // Both are properties the openai_body fuzz target checks against its reference model.
    let gw = Gw::start().await;
    let p = gw.openai(&[]).await;
    let (_, secret) = gw.key(KeySpec::on(&p)).await;
    let raw = |body: &'static str| {
        Request::post("/v1/chat/completions")
            .header("authorization", format!("Bearer {secret}"))
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap()
    };
    for (body, field) in [
        (r#"{"model":"m","messages":[],"model":null}"#, "model"),
        (r#"{"model":"m","stream":false,"stream":true}"#, "stream"),
        (
            r#"{"model":"m","stream_options":{},"stream_options":{"include_usage":false}}"#,
            "stream_options",
        ),
    ] {
        let r = Reply::read(gw.call(raw(body)).await).await;
        assert_eq!(
            r.json(),
            json!({"error": {
                "message": "this field appears more than once in the body; send it once",
                "type": "invalid_request_error",
                "code": "duplicate_field",
                "param": field,
            }})
        );
        assert_eq!(r.status.as_u16(), 400);
    }
    let r = Reply::read(
        gw.call(raw(r#"{"model":"m","x":{"a_p_i_k_e_y____":"sk"}}"#))
            .await,
    )
    .await;
    r.assert_error(400, "forbidden_field");
    assert_eq!(r.json()["error"]["param"], "x.a_p_i_k_e_y____");
    assert!(gw.mock.seen().is_empty());
}

#[tokio::test]
async fn repeated_failed_authentications_from_one_ip_get_429_without_a_lookup() {
    let gw = Gw::start_with(|c| c.auth_failures_per_second = 3).await;
    let p = gw.openai(&[]).await;
    let (_, secret) = gw.key(KeySpec::on(&p)).await;
    let attacker = [203, 0, 113, 9];
    for _ in 0..3 {
        let guess = keyward::crypto::Secret::generate();
        Reply::read(
            gw.call(from(
                attacker,
                post("/v1/chat/completions", guess.expose(), chat("m")),
            ))
            .await,
        )
        .await
        .assert_error(401, "invalid_api_key");
    }
    // Now even a valid key from that address is not looked at this second.
    let r = Reply::read(
        gw.call(from(
            attacker,
            post("/v1/chat/completions", &secret, chat("m")),
        ))
        .await,
    )
    .await;
    r.assert_error(429, "too_many_auth_failures");
    assert_eq!(r.header("retry-after"), Some("1"));
    // Another address is not affected.
    let r = gw
        .call(from(
            [198, 51, 100, 1],
            post("/v1/chat/completions", &secret, chat("m")),
        ))
        .await;
    assert_eq!(r.status(), 200);
    // Once its window has ended, the address may try again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = gw
        .call(from(
            attacker,
            post("/v1/chat/completions", &secret, chat("m")),
        ))
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn upstream_failures_get_502_and_504() {
    let gw = Gw::start_with(|c| {
        c.upstream_first_byte_timeout = Duration::from_millis(500);
    })
    .await;
    let refused = mock::refused_addr().await;
    let dead = gw
        .provider(
            ProviderKind::Openai,
            &format!("http://{refused}/v1"),
            json!({}),
            &[],
            Some(OPENAI_CREDENTIAL),
        )
        .await;
    let (_, secret) = gw.key(KeySpec::on(&dead)).await;
    gw.post("/v1/chat/completions", &secret, chat("m"))
        .await
        .assert_error(502, "upstream_unavailable");
    assert_eq!(
        gw.last_used(1).await.outcome,
        UsageOutcome::UpstreamUnavailable
    );

    let (reset, _task) = mock::reset_server().await;
    let resetting = gw
        .provider(
            ProviderKind::Openai,
            &format!("http://{reset}/v1"),
            json!({}),
            &[],
            Some(OPENAI_CREDENTIAL),
        )
        .await;
    let (_, secret) = gw.key(KeySpec::on(&resetting)).await;
    gw.post("/v1/chat/completions", &secret, chat("m"))
        .await
        .assert_error(502, "upstream_unavailable");

    let p = gw.openai(&[]).await;
    let (_, secret) = gw.key(KeySpec::on(&p)).await;
    let started = std::time::Instant::now();
    gw.post("/v1/chat/completions", &secret, chat("slow"))
        .await
        .assert_error(504, "upstream_timeout");
    assert!(started.elapsed() < Duration::from_secs(2));
    let used = gw.last_used(3).await;
    assert_eq!(used.outcome, UsageOutcome::UpstreamTimeout);
    assert_eq!(used.status, 504);

    let no_cred = gw
        .provider(
            ProviderKind::Openai,
            &gw.mock.openai_base(),
            json!({}),
            &[],
            None,
        )
        .await;
    let (_, secret) = gw.key(KeySpec::on(&no_cred)).await;
    gw.post("/v1/chat/completions", &secret, chat("m"))
        .await
        .assert_error(502, "provider_credential_unavailable");
}

#[tokio::test]
async fn denials_are_throttled_per_key_and_reason_and_counted_exactly() {
    let gw = Gw::start().await;
    let p = gw.openai(&["gpt-4.1"]).await;
    let mut spec = KeySpec::on(&p);
    spec.models = vec!["gpt-4.1".into()];
    let (key_id, secret) = gw.key(spec).await;
    for _ in 0..5 {
        gw.post("/v1/chat/completions", &secret, chat("o3"))
            .await
            .assert_error(403, "model_not_allowed");
    }
    let d = denied(&gw, 1).await;
    assert_eq!(d.len(), 1, "{d:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(stored(&gw.state, "key.denied").await.len(), 1);
    let state = gw.state.clone();
    gw.t.running.shutdown().await;
    // Shutdown records what the throttle held back.
    let all = stored(&state, "key.denied").await;
    let total: u64 = all
        .iter()
        .map(|e| match e {
            Event::KeyDenied(d) => d.suppressed + 1,
            _ => 0,
        })
        .sum();
    assert_eq!(total, 5);
    assert_eq!(state.0.live.read().usage.totals(&key_id).unwrap().denied, 5);
}
