//! Quotas under concurrency: a burst of parallel requests of one key gets no more than
//! the quota on one node, and every admitted request gives its place back on every path.

use std::time::Duration;

use chrono::{Timelike, Utc};
use futures::future::join_all;
use http_body_util::BodyExt;
use keyward_events::{Quota, UsageOutcome};
use serde_json::json;

use crate::proxy::{Gw, KeySpec, Reply, chat, post};

/// The mock answers model `slow` after 3 s: every request of the burst arrives while the
/// first admitted one is still in flight.
async fn burst(gw: &Gw, secret: &str, n: usize, body: serde_json::Value) -> Vec<Reply> {
    join_all((0..n).map(|_| gw.post("/v1/chat/completions", secret, body.clone()))).await
}

/// Waits until no use of the key is in flight or queued on this node.
async fn settled(gw: &Gw, key_id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while gw.state.0.live.reservations().in_flight(key_id) != Default::default() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the key's uses never settled: {:?}",
            gw.state.0.live.reservations().in_flight(key_id)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn secs_to_tomorrow() -> i64 {
    86_400 - i64::from(Utc::now().num_seconds_from_midnight())
}

/// Asserts the burst's split: `passed` answers 200, the rest 429 `quota_exceeded` in
/// OpenAI's shape, retried after one second (the quota is held by a request in flight).
fn assert_split(replies: &[Reply], passed: usize) {
    let ok = replies.iter().filter(|r| r.status == 200).count();
    assert_eq!(
        ok,
        passed,
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for r in replies.iter().filter(|r| r.status != 200) {
        r.assert_error(429, "quota_exceeded");
        assert_eq!(r.json()["error"]["type"], "insufficient_quota");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
}

#[tokio::test]
async fn parallel_requests_get_at_most_the_request_quota() {
    let gw = Gw::start().await;
    let p = gw.openai(&[]).await;
    let mut spec = KeySpec::on(&p);
    spec.quota = Some(Quota {
        requests_per_day: Some(1),
        ..Quota::default()
    });
    let (key_id, secret) = gw.key(spec).await;

    let replies = burst(&gw, &secret, 50, chat("slow")).await;
    assert_split(&replies, 1);
    assert_eq!(
        gw.mock.seen().len(),
        1,
        "only one request reached the provider"
    );
    assert_eq!(gw.events("key.used", 1).await.len(), 1);

    // Once the use is folded, the quota is used up until tomorrow, not for a second.
    settled(&gw, &key_id).await;
    let r = gw.post("/v1/chat/completions", &secret, chat("m")).await;
    r.assert_error(429, "quota_exceeded");
    let retry: i64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((retry - secs_to_tomorrow()).abs() <= 2, "{retry}");
    assert_eq!(gw.mock.seen().len(), 1);
}

#[tokio::test]
async fn parallel_requests_with_no_token_bound_take_the_token_quota_one_at_a_time() {
    let gw = Gw::start().await;
    let p = gw.openai(&[]).await;
    let mut spec = KeySpec::on(&p);
    // The fixture reports 29 tokens a request.
    spec.quota = Some(Quota {
        tokens_per_day: Some(30),
        ..Quota::default()
    });
    let (key_id, secret) = gw.key(spec).await;

    let replies = burst(&gw, &secret, 20, chat("slow")).await;
    assert_split(&replies, 1);
    assert_eq!(gw.mock.seen().len(), 1);

    // The reservation was settled as the real 29 tokens: one more request fits.
    assert_eq!(
        gw.post("/v1/chat/completions", &secret, chat("m"))
            .await
            .status,
        200
    );
    settled(&gw, &key_id).await;
    let r = gw.post("/v1/chat/completions", &secret, chat("m")).await;
    r.assert_error(429, "quota_exceeded");
    assert_ne!(r.header("retry-after"), Some("1"));
    let day = gw
        .state
        .0
        .live
        .read()
        .usage
        .day(&key_id, Utc::now().date_naive());
    assert_eq!((day.requests, day.tokens()), (2, 58));
}

#[tokio::test]
async fn bounded_requests_reserve_their_max_tokens_and_prompt() {
    let gw = Gw::start().await;
    let p = gw.openai(&[]).await;
    let mut spec = KeySpec::on(&p);
    let mut body = chat("slow");
    body["max_tokens"] = json!(100);
    // Each reserves 100 and a quarter of its body's bytes; one is admitted while what is
    // reserved is under the quota, so two pass and the third finds it full.
    let each = 100 + (body.to_string().len() as u64).div_ceil(4);
    spec.quota = Some(Quota {
        tokens_per_day: Some(2 * each),
        ..Quota::default()
    });
    let (key_id, secret) = gw.key(spec).await;
    let replies = burst(&gw, &secret, 10, body).await;
    assert_split(&replies, 2);
    settled(&gw, &key_id).await;
}

#[tokio::test]
async fn failed_and_abandoned_requests_give_their_place_back() {
    let gw = Gw::start().await;
    let p = gw.openai(&[]).await;
    let mut spec = KeySpec::on(&p);
    spec.quota = Some(Quota {
        tokens_per_day: Some(30),
        requests_per_day: Some(4),
        ..Quota::default()
    });
    let (key_id, secret) = gw.key(spec).await;

    // A provider failure: the use (no tokens) is counted, the unbounded reservation is not.
    let failed = gw
        .post("/v1/chat/completions", &secret, chat("error-500"))
        .await;
    assert_eq!(failed.status, 500, "{}", failed.text());
    assert_eq!(gw.state.0.live.reservations().in_flight(&key_id).tokens, 0);

    // A client that leaves mid-stream: its use is recorded by the guard, and settled.
    let mut streaming = chat("drip");
    streaming["stream"] = json!(true);
    let res = gw
        .call(post("/v1/chat/completions", &secret, streaming))
        .await;
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    let used = gw.events("key.used", 2).await;
    assert!(matches!(
        &used[1],
        keyward_events::Event::KeyUsed(u) if u.outcome == UsageOutcome::ClientClosed
    ));
    settled(&gw, &key_id).await;

    // A request refused before the provider (its model is not served) holds nothing.
    gw.post("/v1/embeddings", &secret, json!({"input": "x"}))
        .await
        .assert_error(400, "missing_model");
    settled(&gw, &key_id).await;

    // So the fourth request of the day still passes; the fifth does not.
    assert_eq!(
        gw.post("/v1/chat/completions", &secret, chat("m"))
            .await
            .status,
        200
    );
    gw.post("/v1/chat/completions", &secret, chat("m"))
        .await
        .assert_error(429, "quota_exceeded");
}

/// A provider on the mock and a key bound to it with `quota`, through node `n`.
async fn quota_key_on(
    n: &crate::nodes::Node,
    mock: &crate::proxy::mock::Mock,
    quota: Quota,
) -> (String, String) {
    use keyward::commands::{Actor, NewKey};
    use keyward::crypto::ProviderSecret;
    use keyward_events::{
        Event, ExpectedVersion, NewEvent, ProviderCreated, ProviderKeyUpdated, ProviderKind, Scope,
    };
    let id = keyward::commands::new_provider_id();
    let created = Event::ProviderCreated(ProviderCreated {
        provider_id: id.clone(),
        name: "mock".into(),
        kind: ProviderKind::Openai,
        base_url: mock.openai_base(),
        config: Default::default(),
        models: vec![],
    });
    let sealed = n.running.state.0.keyring.seal(
        &id,
        &ProviderSecret::new(crate::proxy::OPENAI_CREDENTIAL.to_owned()),
    );
    let key_updated = Event::ProviderKeyUpdated(ProviderKeyUpdated {
        provider_id: id.clone(),
        ciphertext: sealed.ciphertext,
        nonce: sealed.nonce,
        keyring_version: sealed.keyring_version,
        fingerprint: sealed.fingerprint,
        last4: sealed.last4,
    });
    n.cmds()
        .submit(vec![
            NewEvent::new(
                &created,
                ExpectedVersion::NoStream,
                Utc::now(),
                "system",
                None,
            ),
            NewEvent::new(
                &key_updated,
                ExpectedVersion::Exact(1),
                Utc::now(),
                "system",
                None,
            ),
        ])
        .await
        .unwrap();
    let (key, secret) = n
        .cmds()
        .create_key(
            &Actor::system(),
            NewKey {
                name: "shared quota".into(),
                owner_id: n.admin_id(),
                provider_ids: vec![id],
                expires_at: Utc::now() + chrono::Duration::days(1),
                scopes: vec![Scope::Chat],
                models: vec![],
                rate_limit: None,
                quota: Some(quota),
                ip_allowlist: vec![],
                metadata: Default::default(),
                rotated_from: None,
            },
        )
        .await
        .unwrap();
    (key.key_id().to_owned(), secret.expose().to_owned())
}

async fn post_on(n: &crate::nodes::Node, secret: &str) -> Reply {
    use axum::extract::ConnectInfo;
    use tower::ServiceExt;
    let mut req = post("/v1/chat/completions", secret, chat("m"));
    req.extensions_mut()
        .insert(ConnectInfo(std::net::SocketAddr::from(
            crate::proxy::CLIENT,
        )));
    let res = keyward::app(n.running.state.clone())
        .oneshot(req)
        .await
        .unwrap();
    Reply::read(res).await
}

/// Across nodes, committed uses are shared through the log: a use on A counts on B once
/// B has folded it.
#[tokio::test]
async fn committed_uses_count_on_every_node() {
    let Some(db) = crate::pg::TestDb::create().await else {
        return;
    };
    let mock = crate::proxy::mock::Mock::start().await;
    let a = crate::nodes::Node::start(&db).await;
    let b = crate::nodes::Node::start(&db).await;
    let quota = Quota {
        requests_per_day: Some(2),
        ..Quota::default()
    };
    let (key_id, secret) = quota_key_on(&a, &mock, quota).await;
    // The key reaches B through the log.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while b.authenticate(&secret).is_err() {
        assert!(std::time::Instant::now() < deadline, "B never saw the key");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    assert_eq!(post_on(&a, &secret).await.status, 200);
    settled_on(&a, &key_id).await;
    folded(&b, &key_id, 1).await;
    assert_eq!(post_on(&b, &secret).await.status, 200);
    settled_on(&b, &key_id).await;
    folded(&a, &key_id, 2).await;
    for n in [&a, &b] {
        let r = post_on(n, &secret).await;
        r.assert_error(429, "quota_exceeded");
        assert_ne!(r.header("retry-after"), Some("1"));
    }
    assert_eq!(mock.seen().len(), 2);
    a.shutdown().await;
    b.shutdown().await;
}

/// Waits until node `n` has folded `want` uses of the key today.
async fn folded(n: &crate::nodes::Node, key_id: &str, want: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let seen = || {
        n.live()
            .read()
            .usage
            .day(key_id, Utc::now().date_naive())
            .requests
    };
    while seen() < want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw {want} uses"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn settled_on(n: &crate::nodes::Node, key_id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while n.live().reservations().in_flight(key_id) != Default::default() {
        assert!(tokio::time::Instant::now() < deadline, "never settled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
