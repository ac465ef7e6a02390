//! The keys workflows of the management API, and every refusal with its exact status.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::json;

use crate::api::*;
use crate::common::*;

fn head(t: &TestApp) -> u64 {
    t.running.state.0.live.head().seq
}

#[tokio::test]
async fn me_reports_the_caller_and_an_anonymous_call_is_401() {
    let t = TestApp::start().await;
    let api = Api::new(&t);
    let (s, me) = api.get("/api/v1/me", &t.admin_secret()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me["username"], "admin");
    assert_eq!(me["role"], "admin");
    let got = api.call(Method::GET, "/api/v1/me", None, None).await;
    assert_problem(&got, StatusCode::UNAUTHORIZED, "unauthorized", None);
    let got = api.get("/api/v1/me", "kw_nonsense").await;
    assert_problem(&got, StatusCode::UNAUTHORIZED, "unauthorized", None);
    assert!(got.1["detail"].as_str().unwrap().contains("malformed"));
}

#[tokio::test]
async fn a_user_creates_lists_rotates_with_grace_and_expires_their_keys() {
    let t = TestApp::start().await;
    let api = Api::new(&t);
    let (alice, alice_key) = user_with_full_key(&t, "alice").await;
    let (_, bob_key) = user_with_full_key(&t, "bob").await;

    let (s, created) = api
        .post(
            "/api/v1/keys",
            &alice_key,
            json!({"name": "billing", "expires_in": "30d", "models": ["gpt-4o-mini"], "rate_limit": {"requests_per_minute": 60, "burst": 10},
                   "quota": {"tokens_per_day": 100000}, "ip_allowlist": ["10.1.2.3/8"], "metadata": {"team": "billing"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("kw_"));
    let key = &created["key"];
    let id = key["id"].as_str().unwrap().to_owned();
    assert_eq!(key["owner_id"], alice.as_str());
    assert_eq!(key["owner"], "alice");
    assert_eq!(key["scopes"], json!(["chat"]));
    assert_eq!(key["status"], "active");
    assert_eq!(key["ip_allowlist"], json!(["10.0.0.0/8"]));
    assert_eq!(key["prefix"], &secret[..11]);
    assert_eq!(key["created_by"], alice.as_str());
    assert_eq!(key["deleted"], false);

    // "My API Keys": alice sees her two keys, bob sees only his own.
    let (_, mine) = api.get("/api/v1/keys", &alice_key).await;
    assert_eq!(mine["keys"].as_array().unwrap().len(), 2);
    let (_, bobs) = api.get("/api/v1/keys", &bob_key).await;
    assert_eq!(bobs["keys"].as_array().unwrap().len(), 1);
    assert!(!bobs.to_string().contains(&id));
    // The secret appears nowhere after the create response.
    let (_, one) = api.get(&format!("/api/v1/keys/{id}"), &alice_key).await;
    assert!(!one.to_string().contains(&secret));

    // Rotate with grace: a new key with the same settings; the old one works until grace_until.
    let (s, rotated) = api
        .post(
            &format!("/api/v1/keys/{id}/rotate"),
            &alice_key,
            json!({"grace_period": "1h"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{rotated}");
    let new_id = rotated["key"]["id"].as_str().unwrap().to_owned();
    assert_eq!(rotated["key"]["rotated_from"], id.as_str());
    assert_eq!(rotated["key"]["models"], json!(["gpt-4o-mini"]));
    assert_eq!(
        rotated["key"]["rate_limit"],
        json!({"requests_per_minute": 60, "burst": 10})
    );
    assert_eq!(rotated["previous"]["status"], "grace");
    assert_eq!(rotated["previous"]["rotated_to"], new_id.as_str());
    assert_eq!(rotated["previous"]["grace_usage"]["requests"], 0);
    assert_ne!(rotated["secret"], secret.as_str());
    // A second rotation of the old key is a conflict.
    let got = api
        .post(&format!("/api/v1/keys/{id}/rotate"), &alice_key, json!({}))
        .await;
    assert_problem(&got, StatusCode::CONFLICT, "conflict", None);

    // Expire the new key: it stays, as expired.
    let (s, expired) = api
        .post(
            &format!("/api/v1/keys/{new_id}/expire"),
            &alice_key,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(expired["status"], "expired");
    assert_eq!(expired["expired_reason"], "manual");
    let got = api
        .post(
            &format!("/api/v1/keys/{new_id}/expire"),
            &alice_key,
            json!({}),
        )
        .await;
    assert_problem(&got, StatusCode::CONFLICT, "conflict", None);

    // Its history has the lifecycle.
    let (_, hist) = api
        .get(&format!("/api/v1/keys/{new_id}/events"), &alice_key)
        .await;
    let types: Vec<_> = hist["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(types, vec!["key.created", "key.expired"]);
}

#[tokio::test]
async fn an_admin_deletes_and_the_record_remains_and_as_of_shows_the_earlier_table() {
    let t = TestApp::start().await;
    let api = Api::new(&t);
    let admin = t.admin_secret();
    let (bob, bob_key) = user_with_full_key(&t, "bob").await;
    let (s, created) = api
        .post(
            "/api/v1/keys",
            &admin,
            json!({"name": "for bob", "owner_id": bob, "expires_in": "7d"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let id = created["key"]["id"].as_str().unwrap().to_owned();
    let before_delete = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;

    let (s, deleted) = api.delete(&format!("/api/v1/keys/{id}"), &admin).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(deleted["deleted"], true);
    assert_eq!(deleted["status"], "deleted");
    // Deleting again changes nothing and writes nothing.
    let h = head(&t);
    let (s, again) = api.delete(&format!("/api/v1/keys/{id}"), &admin).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again["deleted"], true);
    assert_eq!(head(&t), h);
    // Bob still sees the record, with the Deleted column set.
    let (_, bobs) = api.get("/api/v1/keys", &bob_key).await;
    let row = bobs["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["deleted"], true);
    // A deleted key can no longer be changed.
    let got = api
        .patch(&format!("/api/v1/keys/{id}"), &admin, json!({"name": "x"}))
        .await;
    assert_problem(&got, StatusCode::CONFLICT, "conflict", None);

    // As of before the delete, the key was active.
    let ts = keyward::time::format(&before_delete);
    let (s, then) = api
        .get(
            &format!("/api/v1/keys?as_of={}", ts.replace('+', "%2B")),
            &admin,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{then}");
    let row = then["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["status"], "active");
    assert_eq!(row["deleted"], false);
    // And filters apply to the live table.
    let (_, deleted_only) = api.get("/api/v1/keys?status=deleted", &admin).await;
    assert_eq!(deleted_only["keys"].as_array().unwrap().len(), 1);
    let (_, search) = api.get("/api/v1/keys?q=FOR%20BO", &admin).await;
    assert_eq!(search["keys"].as_array().unwrap().len(), 1);
    let (_, by_owner) = api
        .get(&format!("/api/v1/keys?owner_id={bob}"), &admin)
        .await;
    assert_eq!(by_owner["keys"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn the_list_pages_with_a_cursor() {
    let t = TestApp::start().await;
    let api = Api::new(&t);
    let admin = t.admin_secret();
    for i in 0..5 {
        let (s, _) = api
            .post(
                "/api/v1/keys",
                &admin,
                json!({"name": format!("k{i}"), "expires_in": "1d"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/keys?limit=2&cursor={c}"),
            None => "/api/v1/keys?limit=2".to_owned(),
        };
        let (_, page) = api.get(&path, &admin).await;
        for k in page["keys"].as_array().unwrap() {
            seen.push(k["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen);
    let got = api.get("/api/v1/keys?limit=0", &admin).await;
    assert_problem(&got, StatusCode::BAD_REQUEST, "bad_request", Some("limit"));
    let got = api.get("/api/v1/keys?colour=red", &admin).await;
    assert_problem(&got, StatusCode::BAD_REQUEST, "bad_request", None);
    let got = api.get("/api/v1/keys?as_of=yesterday", &admin).await;
    assert_problem(&got, StatusCode::BAD_REQUEST, "bad_request", Some("as_of"));
}

#[tokio::test]
async fn bad_input_names_the_field_and_writes_no_event() {
    let t = TestApp::start().await;
    let api = Api::new(&t);
    let admin = t.admin_secret();
    let h = head(&t);
    let long = "x".repeat(201);
    let cases = vec![
        (json!({"name": "", "expires_in": "1d"}), "name"),
        (json!({"name": "   ", "expires_in": "1d"}), "name"),
        (json!({"name": long, "expires_in": "1d"}), "name"),
        (json!({"name": "a"}), "expires_at"),
        (
            json!({"name": "a", "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (json!({"name": "a", "expires_at": "soon"}), "expires_at"),
        (json!({"name": "a", "expires_in": "181d"}), "expires_in"),
        (
            json!({"name": "a", "expires_in": "1d", "expires_at": "2099-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (
            json!({"name": "a", "expires_in": "1d", "provider_id": "prv_01J000000000000000000000"}),
            "provider_id",
        ),
        (
            json!({"name": "a", "expires_in": "1d", "provider_id": "openai"}),
            "provider_id",
        ),
        (
            json!({"name": "a", "expires_in": "1d", "owner_id": "usr_01J000000000000000000000"}),
            "owner_id",
        ),
        (
            json!({"name": "a", "expires_in": "1d", "ip_allowlist": ["10.0.0.0/33"]}),
            "ip_allowlist",
        ),
        (
            json!({"name": "a", "expires_in": "1d", "scopes": []}),
            "scopes",
        ),
        (
            json!({"name": "a", "expires_in": "1d", "scopes": ["admin"]}),
            "scopes[0]",
        ),
        (
            json!({"name": "a", "expires_in": "1d", "rate_limit": {"requests_per_minute": 0, "burst": 1}}),
            "rate_limit.requests_per_minute",
        ),
        (
            json!({"name": "a", "expires_in": "1d", "rate_limit": {"requests_per_minute": -5, "burst": 1}}),
            "rate_limit.requests_per_minute",
        ),
        (
            json!({"name": "a", "expires_in": "1d", "rate_limit": {"requests_per_minute": 10, "burst": 1000000}}),
            "rate_limit.burst",
        ),
        (
            json!({"name": "a", "expires_in": "1d", "quota": {}}),
            "quota",
        ),
        (
            json!({"name": "a", "expires_in": "1d", "quota": {"tokens_per_day": 0}}),
            "quota.tokens_per_day",
        ),
        (
            json!({"name": "a", "expires_in": "1d", "colour": "red"}),
            "colour",
        ),
    ];
    for (body, field) in cases {
        let got = api.post("/api/v1/keys", &admin, body.clone()).await;
        assert_problem(
            &got,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some(field),
        );
        assert!(
            got.1["detail"].as_str().unwrap().len() > 10,
            "{body}: {}",
            got.1
        );
    }
    // Malformed JSON, a wrong content type, an oversized body.
    let req = Request::post("/api/v1/keys")
        .header("authorization", format!("Bearer {admin}"))
        .header("content-type", "application/json")
        .body(Body::from("{\"name\": "))
        .unwrap();
    assert_problem(
        &api.send(req).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        None,
    );
    let req = Request::post("/api/v1/keys")
        .header("authorization", format!("Bearer {admin}"))
        .header("content-type", "text/plain")
        .body(Body::from("{}"))
        .unwrap();
    assert_problem(
        &api.send(req).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        None,
    );
    let huge =
        json!({"name": "a", "expires_in": "1d", "metadata": {"blob": "x".repeat(300 * 1024)}});
    let got = api.post("/api/v1/keys", &admin, huge).await;
    assert_problem(
        &got,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    );
    let got = api
        .post(
            "/api/v1/keys",
            &admin,
            json!({"name": "a", "expires_in": "1d", "metadata": {"blob": "x".repeat(20 * 1024)}}),
        )
        .await;
    assert_problem(
        &got,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some("metadata"),
    );
    // An empty patch changes nothing.
    let (_, list) = api.get("/api/v1/keys", &admin).await;
    let id = list["keys"][0]["id"].as_str().unwrap().to_owned();
    let got = api
        .patch(&format!("/api/v1/keys/{id}"), &admin, json!({}))
        .await;
    assert_problem(&got, StatusCode::UNPROCESSABLE_ENTITY, "invalid", None);
    let got = api
        .post(
            &format!("/api/v1/keys/{id}/rotate"),
            &admin,
            json!({"grace_period": "31d"}),
        )
        .await;
    assert_problem(
        &got,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some("grace_period"),
    );

    assert_eq!(head(&t), h, "a refused request wrote an event");
}

#[tokio::test]
async fn patch_changes_fields_and_null_clears_a_limit() {
    let t = TestApp::start().await;
    let api = Api::new(&t);
    let admin = t.admin_secret();
    let (_, c) = api
        .post("/api/v1/keys", &admin, json!({"name": "a", "expires_in": "1d", "rate_limit": {"requests_per_minute": 5, "burst": 1}}))
        .await;
    let id = c["key"]["id"].as_str().unwrap().to_owned();
    let (s, k) = api
        .patch(&format!("/api/v1/keys/{id}"), &admin, json!({"name": "renamed", "rate_limit": null, "scopes": ["read", "chat"], "expires_in": "2d"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{k}");
    assert_eq!(k["name"], "renamed");
    assert_eq!(k["rate_limit"], serde_json::Value::Null);
    assert_eq!(k["scopes"], json!(["read", "chat"]));
    assert_eq!(k["version"], 2);
    let (_, hist) = api
        .get(
            &format!("/api/v1/keys/{id}/events?type=key.updated"),
            &admin,
        )
        .await;
    let data = &hist["events"][0]["data"];
    assert_eq!(data["rate_limit"], serde_json::Value::Null);
    assert_eq!(data["name"], "renamed");
    assert!(
        data.get("models").is_none(),
        "only the changed fields are recorded: {data}"
    );
}

#[tokio::test]
async fn another_users_key_is_404_on_every_route_and_writes_nothing() {
    let t = TestApp::start().await;
    let api = Api::new(&t);
    let (_, alice_key) = user_with_full_key(&t, "alice").await;
    let (_, bob_key) = user_with_full_key(&t, "bob").await;
    let (_, c) = api
        .post(
            "/api/v1/keys",
            &alice_key,
            json!({"name": "alice's", "expires_in": "1d"}),
        )
        .await;
    let id = c["key"]["id"].as_str().unwrap().to_owned();
    let h = head(&t);
    let attempts = [
        (Method::GET, format!("/api/v1/keys/{id}"), None),
        (
            Method::PATCH,
            format!("/api/v1/keys/{id}"),
            Some(json!({"name": "mine now"})),
        ),
        (Method::DELETE, format!("/api/v1/keys/{id}"), None),
        (
            Method::POST,
            format!("/api/v1/keys/{id}/expire"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/api/v1/keys/{id}/rotate"),
            Some(json!({})),
        ),
        (Method::GET, format!("/api/v1/keys/{id}/events"), None),
        (Method::GET, format!("/api/v1/keys/{id}/metrics"), None),
    ];
    for (m, path, body) in attempts {
        let got = api
            .call(m.clone(), &path, Some(&bob_key), body.clone())
            .await;
        assert_problem(&got, StatusCode::NOT_FOUND, "not_found", None);
        // The same as for an id that does not exist at all.
        let missing = path.replace(&id, "key_01J0000000000000000000000X");
        let got2 = api.call(m, &missing, Some(&bob_key), body).await;
        assert_eq!(got2.0, StatusCode::NOT_FOUND);
    }
    // Bob cannot create a key owned by alice either.
    let alice_id = api.get("/api/v1/me", &alice_key).await.1["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let got = api
        .post(
            "/api/v1/keys",
            &bob_key,
            json!({"name": "x", "expires_in": "1d", "owner_id": alice_id}),
        )
        .await;
    assert_problem(&got, StatusCode::FORBIDDEN, "forbidden", None);
    assert_eq!(head(&t), h);
}

#[tokio::test]
async fn keys_without_scope_full_cannot_use_the_management_api() {
    let t = TestApp::start().await;
    let api = Api::new(&t);
    let admin = t.admin_secret();
    for scope in ["read", "chat"] {
        let (_, c) = api
            .post(
                "/api/v1/keys",
                &admin,
                json!({"name": scope, "expires_in": "1d", "scopes": [scope]}),
            )
            .await;
        let secret = c["secret"].as_str().unwrap().to_owned();
        let got = api.get("/api/v1/keys", &secret).await;
        assert_problem(&got, StatusCode::FORBIDDEN, "forbidden", None);
    }
    // An expired key is refused as unauthenticated.
    let (_, c) = api
        .post(
            "/api/v1/keys",
            &admin,
            json!({"name": "short", "expires_in": "1d", "scopes": ["full"]}),
        )
        .await;
    let (id, secret) = (
        c["key"]["id"].as_str().unwrap().to_owned(),
        c["secret"].as_str().unwrap().to_owned(),
    );
    api.post(&format!("/api/v1/keys/{id}/expire"), &admin, json!({}))
        .await;
    let got = api.get("/api/v1/me", &secret).await;
    assert_problem(&got, StatusCode::UNAUTHORIZED, "unauthorized", None);
    assert!(got.1["detail"].as_str().unwrap().contains("expired"));
    assert!(!got.1.to_string().contains(&secret));
}

#[tokio::test]
async fn of_two_concurrent_rotations_exactly_one_wins() {
    let t = TestApp::start().await;
    let api = Api::new(&t);
    let admin = t.admin_secret();
    for _ in 0..5 {
        let (_, c) = api
            .post(
                "/api/v1/keys",
                &admin,
                json!({"name": "r", "expires_in": "1d"}),
            )
            .await;
        let id = c["key"]["id"].as_str().unwrap().to_owned();
        let path = format!("/api/v1/keys/{id}/rotate");
        let (a, b) = tokio::join!(
            api.post(&path, &admin, json!({})),
            api.post(&path, &admin, json!({}))
        );
        let mut statuses = [a.0.as_u16(), b.0.as_u16()];
        statuses.sort();
        assert_eq!(statuses, [201, 409], "{} {}", a.1, b.1);
    }
}

#[tokio::test]
async fn the_sweeper_writes_each_scheduled_and_rotated_expiry_exactly_once() {
    use keyward::commands::{Actor, NewKey, Visibility};
    let t = TestApp::start().await;
    let cmds = &t.running.state.0.commands;
    let admin_id = t
        .running
        .state
        .0
        .live
        .read()
        .users
        .by_username("admin")
        .unwrap()
        .user_id
        .clone();
    let spec = |name: &str, exp| NewKey {
        name: name.into(),
        owner_id: admin_id.clone(),
        provider_ids: vec![],
        expires_at: exp,
        scopes: vec![keyward_events::Scope::Chat],
        models: vec![],
        rate_limit: None,
        quota: None,
        ip_allowlist: vec![],
        metadata: Default::default(),
        rotated_from: None,
    };
    let now = chrono::Utc::now();
    let (soon, _) = cmds
        .create_key(
            &Actor::system(),
            spec("soon", now + chrono::Duration::milliseconds(300)),
        )
        .await
        .unwrap();
    let (rot, _) = cmds
        .create_key(
            &Actor::system(),
            spec("rot", now + chrono::Duration::days(1)),
        )
        .await
        .unwrap();
    cmds.rotate_key(
        &Actor::system(),
        Visibility::All,
        rot.key_id(),
        now + chrono::Duration::milliseconds(300),
        now + chrono::Duration::days(1),
    )
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    // Two sweepers racing, as on two nodes: each expiry is written once.
    let (a, b) = tokio::join!(
        keyward::sweeper::sweep_once(cmds),
        keyward::sweeper::sweep_once(cmds)
    );
    let written = a.unwrap() + b.unwrap();
    let again = keyward::sweeper::sweep_once(cmds).await.unwrap();
    assert_eq!(again, 0);
    let envs = t
        .running
        .state
        .0
        .store
        .read(
            &keyward::store::EventFilter {
                types: vec!["key.expired".into()],
                ..Default::default()
            },
            100,
        )
        .await
        .unwrap();
    let reasons: Vec<(String, String)> = envs
        .iter()
        .map(|e| {
            (
                e.data["key_id"].as_str().unwrap().to_owned(),
                e.data["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(written >= 2);
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons.contains(&(soon.key_id().to_owned(), "scheduled".into())));
    assert!(reasons.contains(&(rot.key_id().to_owned(), "rotated".into())));
}

#[tokio::test]
async fn metrics_bucket_usage_by_day_and_hour() {
    use keyward_events::{Event, ExpectedVersion, KeyUsed, NewEvent, UsageOutcome};
    let t = TestApp::start().await;
    let api = Api::new(&t);
    let admin = t.admin_secret();
    let (_, c) = api
        .post(
            "/api/v1/keys",
            &admin,
            json!({"name": "m", "expires_in": "1d"}),
        )
        .await;
    let id = c["key"]["id"].as_str().unwrap().to_owned();
    let now = chrono::Utc::now();
    for (i, (lat, outcome)) in [
        (1000u64, UsageOutcome::Success),
        (3000, UsageOutcome::Success),
        (9000, UsageOutcome::UpstreamError),
    ]
    .into_iter()
    .enumerate()
    {
        let ev = Event::KeyUsed(KeyUsed {
            key_id: id.clone(),
            provider_id: "prv_x".into(),
            model: Some("m".into()),
            endpoint: "/v1/chat/completions".into(),
            outcome,
            status: if outcome == UsageOutcome::Success {
                200
            } else {
                500
            },
            latency_us: lat,
            upstream_latency_us: None,
            prompt_tokens: 10,
            completion_tokens: i as u64,
            stream: false,
            client_ip: None,
        });
        t.running
            .state
            .0
            .commands
            .submit(vec![NewEvent::new(
                &ev,
                ExpectedVersion::Any,
                now,
                id.clone(),
                None,
            )])
            .await
            .unwrap();
    }
    let (s, m) = api
        .get(&format!("/api/v1/keys/{id}/metrics?bucket=hour"), &admin)
        .await;
    assert_eq!(s, StatusCode::OK, "{m}");
    let series = m["series"].as_array().unwrap();
    // 24 hours back from now, from the start of that hour.
    assert!((24..=25).contains(&series.len()), "{}", series.len());
    let point = series.iter().find(|p| p["requests"] == 3).unwrap();
    assert_eq!(point["errors"], 1);
    assert_eq!(point["tokens"], 33);
    assert_eq!(point["latency_p50_ms"], 3.0);
    assert_eq!(point["latency_p95_ms"], 9.0);
    assert!((point["error_rate"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
    assert!(m["last_used_at"].is_string());
    let (_, d) = api.get(&format!("/api/v1/keys/{id}/metrics"), &admin).await;
    assert_eq!(d["bucket"], "day");
    assert_eq!(
        d["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["requests"].as_u64().unwrap())
            .sum::<u64>(),
        3
    );
    let got = api
        .get(&format!("/api/v1/keys/{id}/metrics?bucket=week"), &admin)
        .await;
    assert_problem(&got, StatusCode::BAD_REQUEST, "bad_request", None);
    let got = api
        .get(
            &format!("/api/v1/keys/{id}/metrics?bucket=hour&from=2020-01-01T00:00:00Z"),
            &admin,
        )
        .await;
    assert_problem(&got, StatusCode::BAD_REQUEST, "bad_request", Some("from"));
}

#[tokio::test]
async fn the_store_being_down_is_503_with_nothing_written() {
    let t = TestApp::start().await;
    let api = Api::new(&t);
    let admin = t.admin_secret();
    let h = head(&t);
    // Make the database read-only underneath the running service.
    let mut c = raw_sqlite(&t.db_path()).await;
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut c)
        .await
        .unwrap();
    let got = api
        .post(
            "/api/v1/keys",
            &admin,
            json!({"name": "a", "expires_in": "1d"}),
        )
        .await;
    assert_problem(&got, StatusCode::SERVICE_UNAVAILABLE, "unavailable", None);
    assert!(
        !got.1["detail"].as_str().unwrap().contains("sqlite"),
        "no internals: {}",
        got.1
    );
    sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
    assert_eq!(head(&t), h);
    let (s, _) = api
        .post(
            "/api/v1/keys",
            &admin,
            json!({"name": "a", "expires_in": "1d"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
}

#[tokio::test]
async fn openapi_and_docs_are_served() {
    let t = TestApp::start().await;
    let api = Api::new(&t);
    let (s, spec) = api.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(spec["paths"]["/api/v1/keys"]["post"].is_object());
    let (s, html) = api.call(Method::GET, "/docs", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        html.as_str()
            .unwrap()
            .contains("/docs/swagger-ui-bundle.js")
    );
    let (s, _) = api
        .call(Method::GET, "/docs/swagger-ui-bundle.js", None, None)
        .await;
    assert_eq!(s, StatusCode::OK);
}
