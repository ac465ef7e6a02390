//! Restrictions on the management API: a key's restrictions hold wherever the key is
//! accepted, an owner may narrow a key but never widen it, no key outlives its creation
//! plus the maximum lifetime, a user holds a bounded number of keys and can still read
//! their history with any number, and no name hides characters.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use chrono::{Duration, Utc};
use keyward::commands::Actor;
use keyward_events::{Event, ExpectedVersion, KeyCreated, NewEvent, RateLimit, Scope};
use serde_json::{Value, json};

use crate::api::user_with_full_key;
use crate::proxy::{Gw, KeySpec, Reply};

const OUTSIDE: [u8; 4] = [127, 0, 0, 1];
const INSIDE: [u8; 4] = [10, 1, 2, 3];

/// One management call through the whole router, from `ip`.
async fn call(
    gw: &Gw,
    ip: [u8; 4],
    method: Method,
    path: &str,
    secret: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let b = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {secret}"));
    let mut req = match body {
        Some(v) => b
            .header("content-type", "application/json")
            .body(Body::from(v.to_string()))
            .unwrap(),
        None => b.body(Body::empty()).unwrap(),
    };
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from((ip, 5555))));
    let r = Reply::read(gw.call(req).await).await;
    let v = if r.bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&r.bytes).unwrap_or(Value::String(r.text()))
    };
    (r.status, v)
}

#[track_caller]
fn problem(got: &(StatusCode, Value), status: u16, code: &str, field: Option<&str>) {
    assert_eq!(got.0.as_u16(), status, "{}", got.1);
    assert_eq!(got.1["code"], code, "{}", got.1);
    if let Some(f) = field {
        assert_eq!(got.1["field"], f, "{}", got.1);
    }
}

async fn user(gw: &Gw, name: &str) -> String {
    gw.state
        .0
        .commands
        .create_user(&Actor::system(), name, keyward_events::Role::User, None)
        .await
        .unwrap()
        .user_id
        .clone()
}

fn full_key_for(owner: &str) -> KeySpec {
    KeySpec {
        providers: vec![],
        scopes: vec![Scope::Full],
        owner: Some(owner.to_owned()),
        ..KeySpec::on("prv_none")
    }
}

// ---------- item 1: restrictions hold wherever a key is accepted ----------

#[tokio::test]
async fn an_ip_restricted_full_key_is_refused_on_every_management_route() {
    let gw = Gw::start().await;
    let alice = user(&gw, "alice").await;
    let mut spec = full_key_for(&alice);
    spec.ip_allowlist = vec!["10.0.0.0/8".into()];
    let (key_id, secret) = gw.key(spec).await;

    let me = call(&gw, OUTSIDE, Method::GET, "/api/v1/me", &secret, None).await;
    problem(&me, 403, "ip_not_allowed", None);
    assert!(
        me.1["detail"].as_str().unwrap().contains("127.0.0.1"),
        "{}",
        me.1
    );

    // Every operation of the spec, as the owner would call it, from outside the list.
    let spec: Value = serde_json::from_str(&keyward::http::api::openapi_json()).unwrap();
    let mut tried = 0;
    for (template, ops) in spec["paths"].as_object().unwrap() {
        for (method, _) in ops.as_object().unwrap() {
            let m: Method = method.to_uppercase().parse().unwrap();
            let path = template.replace("{id}", &key_id);
            let body = matches!(m, Method::POST | Method::PATCH | Method::PUT)
                .then(|| json!({"name": "x", "expires_in": "1d", "ip_allowlist": []}));
            let got = call(&gw, OUTSIDE, m, &path, &secret, body).await;
            problem(&got, 403, "ip_not_allowed", None);
            tried += 1;
        }
    }
    assert!(tried >= 20, "{tried}");

    // It cannot lift its own allowlist.
    let got = call(
        &gw,
        OUTSIDE,
        Method::PATCH,
        &format!("/api/v1/keys/{key_id}"),
        &secret,
        Some(json!({"ip_allowlist": []})),
    )
    .await;
    problem(&got, 403, "ip_not_allowed", None);
    let k = gw.state.0.live.read().keys.get(&key_id).cloned().unwrap();
    assert_eq!(k.ip_allowlist(), ["10.0.0.0/8"]);
    assert_eq!(k.version, 1, "nothing changed the key");

    // The refusals are recorded as the proxy records its own, throttled.
    let denied = gw.events("key.denied", 1).await;
    assert!(
        denied.iter().any(|e| matches!(e, Event::KeyDenied(d)
            if d.key_id == key_id && d.reason == keyward_events::DenyReason::Ip
                && d.client_ip.as_deref() == Some("127.0.0.1"))),
        "{denied:?}"
    );

    // From inside the list the same key works.
    let me = call(&gw, INSIDE, Method::GET, "/api/v1/me", &secret, None).await;
    assert_eq!(me.0, StatusCode::OK, "{}", me.1);
}

#[tokio::test]
async fn a_rotated_key_manages_nothing_during_its_grace() {
    let gw = Gw::start().await;
    let alice = user(&gw, "alice").await;
    let (key_id, old) = gw.key(full_key_for(&alice)).await;
    let (s, rotated) = call(
        &gw,
        OUTSIDE,
        Method::POST,
        &format!("/api/v1/keys/{key_id}/rotate"),
        &old,
        Some(json!({"grace_period": "24h"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{rotated}");
    let new = rotated["secret"].as_str().unwrap();
    // A leaked key that was rotated away cannot mint another one while it still proxies.
    let got = call(
        &gw,
        OUTSIDE,
        Method::POST,
        "/api/v1/keys",
        &old,
        Some(json!({"name": "persist", "expires_in": "30d", "scopes": ["full"]})),
    )
    .await;
    problem(&got, 403, "key_rotated", None);
    let got = call(&gw, OUTSIDE, Method::GET, "/api/v1/me", &old, None).await;
    problem(&got, 403, "key_rotated", None);
    let got = call(&gw, OUTSIDE, Method::GET, "/api/v1/me", new, None).await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.1);
}

#[tokio::test]
async fn the_management_api_counts_against_the_keys_rate_limit() {
    let gw = Gw::start().await;
    let alice = user(&gw, "alice").await;
    let mut spec = full_key_for(&alice);
    spec.rate_limit = Some(RateLimit {
        requests_per_minute: 2,
        burst: 2,
    });
    let (_, secret) = gw.key(spec).await;
    for _ in 0..2 {
        let got = call(&gw, OUTSIDE, Method::GET, "/api/v1/me", &secret, None).await;
        assert_eq!(got.0, StatusCode::OK, "{}", got.1);
    }
    let got = call(&gw, OUTSIDE, Method::GET, "/api/v1/keys", &secret, None).await;
    problem(&got, 429, "too_many_requests", None);
}

#[tokio::test]
async fn the_first_run_setup_refuses_an_admin_key_from_outside_its_allowlist() {
    let gw = Gw::start().await;
    let mut spec = KeySpec::on("prv_none");
    spec.providers = vec![];
    spec.scopes = vec![Scope::Full];
    spec.ip_allowlist = vec!["10.0.0.0/8".into()];
    let (_, restricted) = gw.key(spec).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = keyward::app(gw.state.clone());
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    let base = format!("http://{addr}");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = http.get(format!("{base}/ui/setup")).send().await.unwrap();
    let pre = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("kw_pre="))
        .map(|c| c.split(';').next().unwrap().to_owned())
        .unwrap();
    let body = page.text().await.unwrap();
    let at = body.find("name=\"csrf\" value=\"").unwrap() + 19;
    let token = &body[at..at + body[at..].find('"').unwrap()];
    let res = http
        .post(format!("{base}/ui/setup"))
        .header("cookie", format!("kw_pre={pre}"))
        .header("origin", &base)
        .form(&[
            ("csrf", token),
            ("admin_key", restricted.as_str()),
            ("password", "a long password 1"),
            ("confirm", "a long password 1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("This key may not be used from this address")
    );
    let admin = gw
        .state
        .0
        .live
        .read()
        .users
        .get(&gw.admin_id)
        .cloned()
        .unwrap();
    assert!(admin.password.is_none(), "no password was set");
}

// ---------- item 2: an owner may narrow a key, never widen it ----------

#[tokio::test]
async fn an_owner_may_narrow_a_key_but_every_widening_needs_an_admin() {
    let gw = Gw::start().await;
    let admin = gw.t.admin_secret();
    let (alice, mine) = user_with_full_key(&gw.t, "alice").await;
    let provider = gw.openai(&["a", "b"]).await;
    let (s, c) = call(
        &gw,
        OUTSIDE,
        Method::POST,
        "/api/v1/keys",
        &admin,
        Some(json!({
            "name": "svc", "owner_id": alice, "provider_id": provider, "expires_in": "30d",
            "scopes": ["chat"], "models": ["a", "b"],
            "rate_limit": {"requests_per_minute": 60, "burst": 6},
            "quota": {"requests_per_day": 100, "tokens_per_day": 1000},
            "ip_allowlist": ["10.0.0.0/8"],
        })),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    let id = c["key"]["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/keys/{id}");

    for (body, field) in [
        (json!({"rate_limit": null}), "rate_limit"),
        (
            json!({"rate_limit": {"requests_per_minute": 61, "burst": 6}}),
            "rate_limit.requests_per_minute",
        ),
        (
            json!({"rate_limit": {"requests_per_minute": 30, "burst": 7}}),
            "rate_limit.burst",
        ),
        (json!({"quota": null}), "quota"),
        (
            json!({"quota": {"requests_per_day": 100}}),
            "quota.tokens_per_day",
        ),
        (
            json!({"quota": {"requests_per_day": 101, "tokens_per_day": 1000}}),
            "quota.requests_per_day",
        ),
        (json!({"ip_allowlist": []}), "ip_allowlist"),
        (json!({"ip_allowlist": ["0.0.0.0/0"]}), "ip_allowlist"),
        (json!({"ip_allowlist": ["10.0.0.0/7"]}), "ip_allowlist"),
        (
            json!({"ip_allowlist": ["10.1.0.0/16", "192.168.0.1"]}),
            "ip_allowlist",
        ),
        (json!({"models": []}), "models"),
        (json!({"models": ["a", "c"]}), "models"),
        (json!({"scopes": ["full"]}), "scopes"),
        (json!({"scopes": ["read", "full"]}), "scopes"),
        (json!({"expires_in": "60d"}), "expires_at"),
        // A narrowing beside a widening does not carry it through.
        (
            json!({"name": "renamed", "rate_limit": {"requests_per_minute": 10, "burst": 1}, "quota": null}),
            "quota",
        ),
    ] {
        let got = call(
            &gw,
            OUTSIDE,
            Method::PATCH,
            &path,
            &mine,
            Some(body.clone()),
        )
        .await;
        problem(&got, 403, "widening_needs_admin", Some(field));
        let k = gw.state.0.live.read().keys.get(&id).cloned().unwrap();
        assert_eq!(k.version, 1, "{body} changed the key");
    }

    // Every narrowing at once.
    let got = call(
        &gw,
        OUTSIDE,
        Method::PATCH,
        &path,
        &mine,
        Some(json!({
            "name": "narrower",
            "rate_limit": {"requests_per_minute": 30, "burst": 3},
            "quota": {"requests_per_day": 50, "tokens_per_day": 500, "tokens_per_month": 9000},
            "ip_allowlist": ["10.1.0.0/16", "10.2.3.4"],
            "models": ["a"],
            "scopes": ["read"],
            "expires_in": "10d",
        })),
    )
    .await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.1);
    assert_eq!(got.1["ip_allowlist"], json!(["10.1.0.0/16", "10.2.3.4/32"]));
    assert_eq!(got.1["rate_limit"]["requests_per_minute"], 30);
    assert_eq!(got.1["scopes"], json!(["read"]));

    // Narrowed, it cannot be widened back by its owner; an admin can.
    let got = call(
        &gw,
        OUTSIDE,
        Method::PATCH,
        &path,
        &mine,
        Some(json!({"scopes": ["chat"]})),
    )
    .await;
    problem(&got, 403, "widening_needs_admin", Some("scopes"));
    let got = call(
        &gw,
        OUTSIDE,
        Method::PATCH,
        &path,
        &admin,
        Some(json!({"rate_limit": null, "ip_allowlist": [], "models": [], "scopes": ["chat"], "expires_in": "20d"})),
    )
    .await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.1);
    assert_eq!(got.1["rate_limit"], Value::Null);
}

#[tokio::test]
async fn no_sequence_of_patches_keeps_a_key_past_its_creation_plus_the_maximum_lifetime() {
    let gw = Gw::start_with(|c| c.max_key_lifetime = Duration::days(10)).await;
    let admin = gw.t.admin_secret();
    // A key created five days ago, for ten days.
    let secret = keyward::crypto::Secret::generate();
    let key_id = keyward::commands::new_key_id();
    let created = Utc::now() - Duration::days(5);
    let ev = Event::KeyCreated(KeyCreated {
        key_id: key_id.clone(),
        name: "old".into(),
        owner_id: gw.admin_id.clone(),
        provider_ids: vec![],
        secret_hash: secret.hash().to_hex(),
        prefix: secret.display_prefix(),
        expires_at: created + Duration::days(10),
        scopes: vec![Scope::Chat],
        models: vec![],
        rate_limit: None,
        quota: None,
        ip_allowlist: vec![],
        metadata: Default::default(),
        rotated_from: None,
    });
    gw.state
        .0
        .commands
        .submit(vec![NewEvent::new(
            &ev,
            ExpectedVersion::NoStream,
            created,
            "system",
            None,
        )])
        .await
        .unwrap();
    let path = format!("/api/v1/keys/{key_id}");
    // Ten days from now is within the lifetime from now, not from the key's creation:
    // refused even for an admin.
    for body in [
        json!({"expires_in": "10d"}),
        json!({"expires_at": keyward::time::format(&(Utc::now() + Duration::days(6)))}),
    ] {
        let got = call(&gw, OUTSIDE, Method::PATCH, &path, &admin, Some(body)).await;
        problem(&got, 422, "invalid", Some("expires_at"));
    }
    let got = call(
        &gw,
        OUTSIDE,
        Method::PATCH,
        &path,
        &admin,
        Some(json!({"expires_in": "4d"})),
    )
    .await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.1);
    // A rotation starts a new key, and with it a new lifetime.
    let got = call(
        &gw,
        OUTSIDE,
        Method::POST,
        &format!("{path}/rotate"),
        &admin,
        Some(json!({"expires_in": "10d"})),
    )
    .await;
    assert_eq!(got.0, StatusCode::CREATED, "{}", got.1);
}

// ---------- item 10: keys per user ----------

#[tokio::test]
async fn a_user_holds_at_most_max_keys_per_user() {
    let gw = Gw::start_with(|c| c.max_keys_per_user = 3).await;
    let admin = gw.t.admin_secret();
    let (alice, mine) = user_with_full_key(&gw.t, "alice").await;
    let create = |who: &str| json!({"name": who, "expires_in": "1d"});
    let mut ids = Vec::new();
    for _ in 0..2 {
        let got = call(
            &gw,
            OUTSIDE,
            Method::POST,
            "/api/v1/keys",
            &mine,
            Some(create("k")),
        )
        .await;
        assert_eq!(got.0, StatusCode::CREATED, "{}", got.1);
        ids.push(got.1["key"]["id"].as_str().unwrap().to_owned());
    }
    let got = call(
        &gw,
        OUTSIDE,
        Method::POST,
        "/api/v1/keys",
        &mine,
        Some(create("k")),
    )
    .await;
    problem(&got, 409, "key_limit_reached", None);
    // An admin creating one for her is held to it too.
    let mut body = create("from admin");
    body["owner_id"] = json!(alice);
    let got = call(
        &gw,
        OUTSIDE,
        Method::POST,
        "/api/v1/keys",
        &admin,
        Some(body),
    )
    .await;
    problem(&got, 409, "key_limit_reached", None);
    // A rotation adds a key (the old one stays until deleted).
    let got = call(
        &gw,
        OUTSIDE,
        Method::POST,
        &format!("/api/v1/keys/{}/rotate", ids[0]),
        &mine,
        Some(json!({})),
    )
    .await;
    problem(&got, 409, "key_limit_reached", None);
    // Expired keys count until deleted; a deleted one frees its place.
    let got = call(
        &gw,
        OUTSIDE,
        Method::POST,
        &format!("/api/v1/keys/{}/expire", ids[1]),
        &mine,
        Some(json!({})),
    )
    .await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.1);
    let got = call(
        &gw,
        OUTSIDE,
        Method::POST,
        "/api/v1/keys",
        &mine,
        Some(create("k")),
    )
    .await;
    problem(&got, 409, "key_limit_reached", None);
    let got = call(
        &gw,
        OUTSIDE,
        Method::DELETE,
        &format!("/api/v1/keys/{}", ids[1]),
        &mine,
        None,
    )
    .await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.1);
    let got = call(
        &gw,
        OUTSIDE,
        Method::POST,
        "/api/v1/keys",
        &mine,
        Some(create("k")),
    )
    .await;
    assert_eq!(got.0, StatusCode::CREATED, "{}", got.1);
    // Other users have their own count.
    let got = call(
        &gw,
        OUTSIDE,
        Method::POST,
        "/api/v1/keys",
        &admin,
        Some(create("a")),
    )
    .await;
    assert_eq!(got.0, StatusCode::CREATED, "{}", got.1);
}

/// More keys than SQLite takes parameters in a statement (32,766; two streams a key):
/// appended straight to the log, as keys made before the limit existed would be.
#[tokio::test]
async fn a_users_audit_and_logs_read_with_more_keys_than_sqlite_has_parameters() {
    const KEYS: usize = 16_500;
    let gw = Gw::start().await;
    let (alice, mine) = user_with_full_key(&gw.t, "alice").await;
    let cmds = &gw.state.0.commands;
    let mut last = String::new();
    for chunk in 0..KEYS.div_ceil(1000) {
        let mut unit = Vec::new();
        for i in 0..1000.min(KEYS - chunk * 1000) {
            let (ev, id, _) = cmds.key_created(
                &Actor::system(),
                keyward::commands::NewKey {
                    name: format!("bulk {chunk}-{i}"),
                    owner_id: alice.clone(),
                    provider_ids: vec![],
                    expires_at: Utc::now() + Duration::days(1),
                    scopes: vec![Scope::Chat],
                    models: vec![],
                    rate_limit: None,
                    quota: None,
                    ip_allowlist: vec![],
                    metadata: Default::default(),
                    rotated_from: None,
                },
            );
            unit.push(ev);
            last = id;
        }
        cmds.submit(unit).await.unwrap();
    }
    gw.append(Event::KeyUsed(keyward_events::KeyUsed {
        key_id: last.clone(),
        provider_id: "prv_01J00000000000000000000000".into(),
        model: Some("gpt-4o-mini".into()),
        endpoint: "/v1/chat/completions".into(),
        outcome: keyward_events::UsageOutcome::Success,
        status: 200,
        latency_us: 1000,
        upstream_latency_us: None,
        prompt_tokens: 1,
        completion_tokens: 1,
        stream: false,
        client_ip: None,
    }))
    .await;
    assert!(gw.state.0.live.read().keys.by_owner(&alice).count() > KEYS);

    let got = call(
        &gw,
        OUTSIDE,
        Method::GET,
        "/api/v1/audit/events?type=key.used",
        &mine,
        None,
    )
    .await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.1);
    let events = got.1["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{}", got.1);
    assert_eq!(events[0]["data"]["key_id"], last);

    let got = call(&gw, OUTSIDE, Method::GET, "/api/v1/logs", &mine, None).await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.1);
    let rows = got.1["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{}", got.1);
    assert_eq!(rows[0]["key_id"], last);
}

// ---------- item 19: names hide no characters ----------

#[tokio::test]
async fn names_with_format_or_control_characters_are_refused_everywhere() {
    let gw = Gw::start().await;
    let admin = gw.t.admin_secret();
    let (_, mine) = user_with_full_key(&gw.t, "alice").await;
    for name in [
        "billing\u{202E}dorp",
        "prod\u{200B}",
        "a\u{2066}b\u{2069}",
        "x\u{FEFF}",
    ] {
        let got = call(
            &gw,
            OUTSIDE,
            Method::POST,
            "/api/v1/keys",
            &mine,
            Some(json!({"name": name, "expires_in": "1d"})),
        )
        .await;
        problem(&got, 422, "invalid_characters", Some("name"));
    }
    let got = call(
        &gw,
        OUTSIDE,
        Method::POST,
        "/api/v1/keys",
        &mine,
        Some(json!({"name": "ok", "expires_in": "1d", "models": ["gpt-4o\u{200D}"]})),
    )
    .await;
    problem(&got, 422, "invalid_characters", Some("models"));
    let got = call(
        &gw,
        OUTSIDE,
        Method::POST,
        "/api/v1/keys",
        &mine,
        Some(json!({"name": "plain", "expires_in": "1d"})),
    )
    .await;
    assert_eq!(got.0, StatusCode::CREATED, "{}", got.1);
    let id = got.1["key"]["id"].as_str().unwrap().to_owned();
    let got = call(
        &gw,
        OUTSIDE,
        Method::PATCH,
        &format!("/api/v1/keys/{id}"),
        &mine,
        Some(json!({"name": "plain\u{200E}"})),
    )
    .await;
    problem(&got, 422, "invalid_characters", Some("name"));

    let got = call(
        &gw,
        OUTSIDE,
        Method::POST,
        "/api/v1/users",
        &admin,
        Some(json!({"username": "ad\u{200B}min2", "role": "user"})),
    )
    .await;
    problem(&got, 422, "invalid_characters", Some("username"));
    let got = call(
        &gw,
        OUTSIDE,
        Method::POST,
        "/api/v1/providers",
        &admin,
        Some(json!({
            "name": "openai\u{202E}", "kind": "openai", "base_url": gw.mock.openai_base(),
            "api_key": "sk-test-0123456789", "verify": false,
        })),
    )
    .await;
    problem(&got, 422, "invalid_characters", Some("name"));
    let provider = gw.openai(&["m"]).await;
    let got = call(
        &gw,
        OUTSIDE,
        Method::PATCH,
        &format!("/api/v1/providers/{provider}"),
        &admin,
        Some(json!({"name": "x\u{2067}y"})),
    )
    .await;
    problem(&got, 422, "invalid_characters", Some("name"));
}

#[test]
fn bootstrap_refuses_a_username_with_hidden_characters() {
    let dir = tempfile::tempdir().unwrap();
    let out = crate::common::keyward(dir.path(), &["bootstrap", "--username", "ad\u{200B}min"]);
    assert!(!out.status.success());
    assert!(
        crate::common::stderr(&out).contains("--username: username may contain only"),
        "{}",
        crate::common::stderr(&out)
    );
}

#[tokio::test]
async fn the_console_shows_and_enforces_what_an_owner_may_change() {
    use crate::ui::{Browser, Console, PASSWORD};
    let c = Console::start().await;
    let alice = c.user("alice", keyward_events::Role::User).await;
    let mut spec = KeySpec::on(&c.provider);
    spec.owner = Some(alice);
    spec.rate_limit = Some(RateLimit {
        requests_per_minute: 60,
        burst: 2,
    });
    spec.expires_in = Duration::days(20);
    let (id, _) = c.gw.key(spec).await;

    let mut b = Browser::new(&c.base);
    assert_eq!(
        b.sign_in("alice", PASSWORD).await.status,
        StatusCode::SEE_OTHER
    );
    let list = b.get("/ui/keys").await;
    assert!(
        list.body.contains("data-fill-max=\"rate\""),
        "{}",
        list.body
    );
    assert!(list.body.contains("lower only"));
    let detail = b.get(&format!("/ui/keys/{id}")).await;
    assert!(
        detail.body.contains("On your own key you may narrow it"),
        "{}",
        detail.body
    );

    let later = (Utc::now() + Duration::days(30))
        .format("%Y-%m-%d")
        .to_string();
    for (form, says) in [
        (
            vec![("rate_limit", "120")],
            "only an admin may raise the rate limit above 60",
        ),
        (vec![("rate_limit", "")], "only an admin may remove"),
        (
            vec![("rate_limit", "60"), ("expires_on", later.as_str())],
            "only an admin may move a key",
        ),
    ] {
        let p = b.post(&format!("/ui/keys/{id}/edit"), &form).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{form:?}: {}", p.body);
        assert!(p.body.contains(says), "{form:?}: {}", p.body);
    }
    // Lowering the rate keeps the burst no larger than it was.
    let p = b
        .post(&format!("/ui/keys/{id}/edit"), &[("rate_limit", "50")])
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let k = c.state().0.live.read().keys.get(&id).cloned().unwrap();
    assert_eq!(
        k.rate_limit,
        Some(RateLimit {
            requests_per_minute: 50,
            burst: 2
        })
    );

    // The admin's form is the unrestricted one.
    let mut a = Browser::new(&c.base);
    a.sign_in("admin", PASSWORD).await;
    let list = a.get("/ui/admin/keys").await;
    assert!(list.body.contains("Empty removes the limit."));
    assert!(!list.body.contains("data-fill-max"));
}

#[tokio::test]
async fn an_owner_renews_a_key_by_rotation_for_no_longer_than_it_lived() {
    let gw = Gw::start().await;
    let admin = gw.t.admin_secret();
    let (alice, mine) = user_with_full_key(&gw.t, "alice").await;
    let (s, c) = call(
        &gw,
        OUTSIDE,
        Method::POST,
        "/api/v1/keys",
        &admin,
        Some(json!({"name": "short", "owner_id": alice, "expires_in": "7d"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    let id = c["key"]["id"].as_str().unwrap().to_owned();
    let rotate = format!("/api/v1/keys/{id}/rotate");
    let got = call(
        &gw,
        OUTSIDE,
        Method::POST,
        &rotate,
        &mine,
        Some(json!({"expires_in": "180d"})),
    )
    .await;
    problem(&got, 403, "widening_needs_admin", Some("expires_at"));
    // By default, and for as long as it lived, the owner renews it.
    let got = call(&gw, OUTSIDE, Method::POST, &rotate, &mine, Some(json!({}))).await;
    assert_eq!(got.0, StatusCode::CREATED, "{}", got.1);
    let next = got.1["key"]["id"].as_str().unwrap().to_owned();
    let got = call(
        &gw,
        OUTSIDE,
        Method::POST,
        &format!("/api/v1/keys/{next}/rotate"),
        &admin,
        Some(json!({"expires_in": "180d"})),
    )
    .await;
    assert_eq!(got.0, StatusCode::CREATED, "{}", got.1);
}
