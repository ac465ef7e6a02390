//! The route × role matrix, generated from the OpenAPI document: every management
//! operation against every kind of caller, with the status each must get. A route added
//! to the spec joins the matrix by itself.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::api::*;
use crate::common::*;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Role {
    Anonymous,
    ReadKey,
    ChatKey,
    ExpiredAdminKey,
    OtherUser,
    Owner,
    Admin,
    /// Reads what the admin reads (the admin's column for every `GET`), changes nothing
    /// (403 `auditor_read_only` for every other method).
    Auditor,
}

/// The exact status of every operation for Alice (a user, with her `full` key) and for the
/// admin, with the bodies the matrix sends (`{}` for a write). The spec's paths and methods
/// are walked in sorted order, so Alice's key is deleted (`DELETE`, 200) before it is
/// expired or rotated (409: a deleted key cannot be). The provider id names no provider
/// (404 for the admin). A route missing from this table fails the test: add its row.
const EXPECTED: &[(&str, &str, u16, u16)] = &[
    ("delete", "/api/v1/keys/{id}", 200, 200),
    ("delete", "/api/v1/providers/{id}", 403, 404),
    ("get", "/api/v1/audit/checkpoint", 403, 200),
    ("get", "/api/v1/audit/checkpoint/latest", 403, 200),
    ("get", "/api/v1/audit/public-key", 403, 200),
    // Without `seq` or `from`: 400 for the readers, 403 before that for a user.
    ("get", "/api/v1/audit/proof/consistency", 403, 400),
    ("get", "/api/v1/audit/proof/inclusion", 403, 400),
    ("get", "/api/v1/audit/events", 200, 200),
    ("get", "/api/v1/audit/export", 200, 200),
    ("get", "/api/v1/audit/verify", 403, 200),
    ("get", "/api/v1/keys", 200, 200),
    ("get", "/api/v1/keys/{id}", 200, 200),
    ("get", "/api/v1/keys/{id}/events", 200, 200),
    ("get", "/api/v1/keys/{id}/metrics", 200, 200),
    ("get", "/api/v1/logs", 200, 200),
    ("get", "/api/v1/me", 200, 200),
    ("get", "/api/v1/providers", 403, 200),
    ("get", "/api/v1/providers/{id}", 403, 404),
    ("get", "/api/v1/users", 403, 200),
    ("get", "/api/v1/users/{id}", 403, 200),
    ("patch", "/api/v1/keys/{id}", 422, 422),
    ("patch", "/api/v1/providers/{id}", 403, 404),
    ("patch", "/api/v1/users/{id}", 403, 422),
    ("post", "/api/v1/keys", 422, 422),
    ("post", "/api/v1/keys/{id}/expire", 409, 409),
    ("post", "/api/v1/keys/{id}/rotate", 409, 409),
    ("post", "/api/v1/providers", 403, 422),
    ("post", "/api/v1/providers/{id}/verify", 403, 404),
    ("post", "/api/v1/users", 403, 422),
    ("put", "/api/v1/providers/{id}/credential", 403, 422),
];

fn expected(method: &str, template: &str) -> (u16, u16) {
    EXPECTED
        .iter()
        .find(|(m, t, _, _)| *m == method && *t == template)
        .map(|(_, _, owner, admin)| (*owner, *admin))
        .unwrap_or_else(|| panic!("{method} {template} has no row in EXPECTED"))
}

/// Reads that are recorded: a `200` appends exactly one `audit.read`, whoever asked.
fn recorded_read(method: &str, path: &str) -> bool {
    method == "get"
        && (path == "/api/v1/audit/export"
            || path == "/api/v1/audit/checkpoint"
            || path == "/api/v1/audit/checkpoint/latest"
            || path.starts_with("/api/v1/audit/proof/"))
}

fn admin_only(path: &str) -> bool {
    path.starts_with("/api/v1/providers")
        || path.starts_with("/api/v1/users")
        || path == "/api/v1/audit/verify"
        || path == "/api/v1/audit/checkpoint"
        || path == "/api/v1/audit/checkpoint/latest"
        || path == "/api/v1/audit/public-key"
        || path.starts_with("/api/v1/audit/proof/")
}

#[tokio::test]
async fn every_route_refuses_every_role_that_must_not_reach_it() {
    let t = TestApp::start().await;
    let api = Api::new(&t);
    let admin = t.admin_secret();
    let (alice_id, alice) = user_with_full_key(&t, "alice").await;
    let (_, bob) = user_with_full_key(&t, "bob").await;
    let (_, auditor) =
        crate::auditor::user_with_role(&t, "audrey", keyward_events::Role::Auditor).await;

    // Alice's key is the object every id-taking route is tried with.
    let (_, c) = api
        .post(
            "/api/v1/keys",
            &alice,
            json!({"name": "alice's", "expires_in": "1d"}),
        )
        .await;
    let alice_key = c["key"]["id"].as_str().unwrap().to_owned();
    let mut narrow = Vec::new();
    for scope in ["read", "chat"] {
        let (_, c) = api
            .post(
                "/api/v1/keys",
                &admin,
                json!({"name": scope, "expires_in": "1d", "scopes": [scope]}),
            )
            .await;
        narrow.push(c["secret"].as_str().unwrap().to_owned());
    }
    let (_, c) = api
        .post(
            "/api/v1/keys",
            &admin,
            json!({"name": "old admin", "expires_in": "1d", "scopes": ["full"]}),
        )
        .await;
    let expired = c["secret"].as_str().unwrap().to_owned();
    api.post(
        &format!("/api/v1/keys/{}/expire", c["key"]["id"].as_str().unwrap()),
        &admin,
        json!({}),
    )
    .await;
    let provider_id = "prv_01J00000000000000000000000";

    let spec: serde_json::Value =
        serde_json::from_str(&keyward::http::api::openapi_json()).unwrap();
    let paths = spec["paths"].as_object().unwrap();
    let mut cells = 0;
    for (template, ops) in paths {
        for (method, _) in ops.as_object().unwrap() {
            let m: Method = method.to_uppercase().parse().unwrap();
            let path = if template.starts_with("/api/v1/keys/") {
                template.replace("{id}", &alice_key)
            } else if template.starts_with("/api/v1/users/") {
                template.replace("{id}", &alice_id)
            } else {
                template.replace("{id}", provider_id)
            };
            let body = matches!(m, Method::POST | Method::PATCH | Method::PUT).then(|| json!({}));
            for role in [
                Role::Anonymous,
                Role::ReadKey,
                Role::ChatKey,
                Role::ExpiredAdminKey,
                Role::OtherUser,
                Role::Owner,
                Role::Admin,
                Role::Auditor,
            ] {
                let key = match role {
                    Role::Anonymous => None,
                    Role::ReadKey => Some(narrow[0].as_str()),
                    Role::ChatKey => Some(narrow[1].as_str()),
                    Role::ExpiredAdminKey => Some(expired.as_str()),
                    Role::OtherUser => Some(bob.as_str()),
                    Role::Owner => Some(alice.as_str()),
                    Role::Admin => Some(admin.as_str()),
                    Role::Auditor => Some(auditor.as_str()),
                };
                let head = t.running.state.0.live.head().seq;
                let (status, body_out) = api.call(m.clone(), &path, key, body.clone()).await;
                let ctx = format!("{method} {template} as {role:?}: {status} {body_out}");
                let on_alices_key = template.starts_with("/api/v1/keys/");
                match role {
                    Role::Anonymous | Role::ExpiredAdminKey => {
                        assert_eq!(status, StatusCode::UNAUTHORIZED, "{ctx}")
                    }
                    Role::ReadKey | Role::ChatKey => {
                        assert_eq!(status, StatusCode::FORBIDDEN, "{ctx}")
                    }
                    Role::OtherUser | Role::Owner if admin_only(template) => {
                        assert_eq!(status, StatusCode::FORBIDDEN, "{ctx}")
                    }
                    Role::OtherUser if on_alices_key => {
                        assert_eq!(status, StatusCode::NOT_FOUND, "{ctx}")
                    }
                    // Bob's view of routes that are not about Alice's key is his own.
                    Role::OtherUser | Role::Owner => {
                        assert_eq!(status.as_u16(), expected(method, template).0, "{ctx}")
                    }
                    Role::Admin => {
                        assert_eq!(status.as_u16(), expected(method, template).1, "{ctx}")
                    }
                    Role::Auditor if m == Method::GET => {
                        assert_eq!(status.as_u16(), expected(method, template).1, "{ctx}")
                    }
                    Role::Auditor => {
                        assert_eq!(status, StatusCode::FORBIDDEN, "{ctx}");
                        assert_eq!(body_out["code"], "auditor_read_only", "{ctx}");
                    }
                }
                if status == StatusCode::OK && recorded_read(method, template) {
                    let now = t.running.state.0.live.head().seq;
                    assert_eq!(now, head + 1, "one audit.read per recorded read: {ctx}");
                    let last = t.running.state.0.store.read_from(head, 1).await.unwrap();
                    assert_eq!(last[0].event_type, "audit.read", "{ctx}");
                } else if !matches!(role, Role::Owner | Role::Admin) {
                    assert_eq!(
                        t.running.state.0.live.head().seq,
                        head,
                        "a refused call wrote an event: {ctx}"
                    );
                }
                cells += 1;
            }
        }
    }
    assert_eq!(cells, 8 * EXPECTED.len(), "the spec and EXPECTED disagree");
}

/// BOLA through the query: every query parameter of the spec that names a user, a key or
/// a stream, given Alice's ids by Bob, shows Bob nothing of Alice's and writes nothing.
/// (Ids in the path are covered by the matrix above: Bob gets 404 on each.)
#[tokio::test]
async fn another_users_ids_in_a_query_reveal_nothing() {
    let t = TestApp::start().await;
    let api = Api::new(&t);
    let (alice_id, alice) = user_with_full_key(&t, "alice").await;
    let (_, bob) = user_with_full_key(&t, "bob").await;
    let (_, c) = api
        .post(
            "/api/v1/keys",
            &alice,
            json!({"name": "alice's", "expires_in": "1d"}),
        )
        .await;
    let alice_key = c["key"]["id"].as_str().unwrap().to_owned();
    // A use of Alice's key, so that the request log has a row of hers to leak.
    let used = keyward_events::Event::KeyUsed(keyward_events::KeyUsed {
        key_id: alice_key.clone(),
        provider_id: "prv_01J00000000000000000000000".to_owned(),
        model: Some("gpt-4o-mini".to_owned()),
        endpoint: "/v1/chat/completions".to_owned(),
        outcome: keyward_events::UsageOutcome::Success,
        status: 200,
        latency_us: 1_000,
        upstream_latency_us: Some(900),
        prompt_tokens: 1,
        completion_tokens: 1,
        stream: false,
        client_ip: Some("10.0.0.1".to_owned()),
    });
    t.running
        .state
        .0
        .commands
        .submit(vec![keyward_events::NewEvent::new(
            &used,
            keyward_events::ExpectedVersion::Any,
            chrono::Utc::now(),
            &alice_key,
            None,
        )])
        .await
        .unwrap();
    let (s, rows) = api.get("/api/v1/logs", &alice).await;
    assert_eq!(s, StatusCode::OK);
    assert!(rows.to_string().contains(&alice_key), "{rows}");

    let spec: serde_json::Value =
        serde_json::from_str(&keyward::http::api::openapi_json()).unwrap();
    let mut tried = Vec::new();
    for (template, ops) in spec["paths"].as_object().unwrap() {
        if template.contains('{') {
            continue;
        }
        for (method, op) in ops.as_object().unwrap() {
            let Some(params) = op["parameters"].as_array() else {
                continue;
            };
            for p in params.iter().filter(|p| p["in"] == "query") {
                let name = p["name"].as_str().unwrap();
                let value = match name {
                    "owner_id" | "user" | "actor" => alice_id.clone(),
                    "key_id" => alice_key.clone(),
                    "stream" => format!("key:{alice_key}"),
                    "q" => "alice".to_owned(),
                    _ => continue,
                };
                let path = format!("{template}?{name}={value}");
                let m: Method = method.to_uppercase().parse().unwrap();
                let head = t.running.state.0.live.head().seq;
                let (status, body) = api.call(m, &path, Some(bob.as_str()), None).await;
                let ctx = format!("{method} {path}: {status} {body}");
                assert!([200, 403, 404].contains(&status.as_u16()), "{ctx}");
                let text = body.to_string();
                assert!(!text.contains(&alice_key), "{ctx}");
                assert!(!text.contains(&alice_id), "{ctx}");
                // An export is recorded (one `audit.read`, on the `audit` stream Bob cannot
                // read); nothing else is written.
                let wrote = if template == "/api/v1/audit/export" {
                    1
                } else {
                    0
                };
                assert_eq!(t.running.state.0.live.head().seq, head + wrote, "{ctx}");
                tried.push(format!("{method} {template}?{name}"));
            }
        }
    }
    // The spec's id filters, all of them tried.
    for must in [
        "get /api/v1/keys?owner_id",
        "get /api/v1/logs?user",
        "get /api/v1/logs?key_id",
        "get /api/v1/audit/events?stream",
        "get /api/v1/audit/events?actor",
        "get /api/v1/audit/export?stream",
    ] {
        assert!(
            tried.iter().any(|t| t == must),
            "{must} not tried: {tried:?}"
        );
    }
}
