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
}

fn admin_only(path: &str) -> bool {
    path.starts_with("/api/v1/providers")
        || path.starts_with("/api/v1/users")
        || path == "/api/v1/audit/verify"
        || path == "/api/v1/audit/checkpoint"
}

#[tokio::test]
async fn every_route_refuses_every_role_that_must_not_reach_it() {
    let t = TestApp::start().await;
    let api = Api::new(&t);
    let admin = t.admin_secret();
    let (alice_id, alice) = user_with_full_key(&t, "alice").await;
    let (_, bob) = user_with_full_key(&t, "bob").await;

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
            ] {
                let key = match role {
                    Role::Anonymous => None,
                    Role::ReadKey => Some(narrow[0].as_str()),
                    Role::ChatKey => Some(narrow[1].as_str()),
                    Role::ExpiredAdminKey => Some(expired.as_str()),
                    Role::OtherUser => Some(bob.as_str()),
                    Role::Owner => Some(alice.as_str()),
                    Role::Admin => Some(admin.as_str()),
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
                    Role::OtherUser | Role::Owner | Role::Admin => {
                        assert!(![401, 403].contains(&status.as_u16()), "{ctx}");
                        if on_alices_key {
                            assert_ne!(status, StatusCode::NOT_FOUND, "{ctx}");
                        }
                        assert!(!status.is_server_error(), "{ctx}");
                    }
                }
                if !matches!(role, Role::Owner | Role::Admin) {
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
    assert!(cells >= 7 * 25, "the matrix covered only {cells} cells");
}
