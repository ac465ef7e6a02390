//! Users: creation with an argon2id password, refusals, and disabling a user, which stops
//! every key of theirs at once.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::api::*;
use crate::common::*;

fn head(t: &TestApp) -> u64 {
    t.running.state.0.live.head().seq
}

async fn all_events(t: &TestApp) -> Vec<keyward_events::Envelope> {
    t.running
        .state
        .0
        .store
        .read_from(0, usize::MAX)
        .await
        .unwrap()
}

/// Creates a key for `owner` as the admin; returns (id, secret).
async fn key_for(api: &Api, admin: &str, owner: &str, name: &str, scope: &str) -> (String, String) {
    let (s, k) = api
        .post(
            "/api/v1/keys",
            admin,
            json!({"name": name, "owner_id": owner, "expires_in": "7d", "scopes": [scope]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{k}");
    (
        k["key"]["id"].as_str().unwrap().to_owned(),
        k["secret"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn users_are_created_listed_and_never_show_a_password() {
    let t = TestApp::start().await;
    let api = Api::new(&t);
    let admin = t.admin_secret();
    let password = "correct horse battery staple";

    let (s, u) = api
        .post(
            "/api/v1/users",
            &admin,
            json!({"username": "alice.b-c_1", "role": "user", "password": password}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{u}");
    let id = u["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("usr_"));
    assert_eq!(u["username"], "alice.b-c_1");
    assert_eq!(u["role"], "user");
    assert_eq!(u["disabled"], false);
    assert_eq!(u["has_password"], true);
    assert_eq!(u["active_keys"], 0);

    // The event holds the argon2id PHC string sealed under the keyring, never the
    // password and never the PHC string itself.
    let ev = all_events(&t).await.pop().unwrap();
    assert_eq!(ev.event_type, "user.created");
    assert_eq!(ev.schema, 2);
    let sealed: keyward_events::SealedPassword =
        serde_json::from_value(ev.data["password"].clone()).unwrap();
    let ring = &t.running.state.0.keyring;
    let phc = ring.open_password(&id, &sealed).unwrap();
    assert!(phc.expose().starts_with("$argon2id$v=19$"));
    assert!(keyward::crypto::verify_password(password, phc.expose()));
    assert!(!ev.data.to_string().contains(password));
    assert!(!ev.data.to_string().contains("argon2"));
    assert!(ev.data.get("password_hash").is_none());

    let (s, nopw) = api
        .post(
            "/api/v1/users",
            &admin,
            json!({"username": "bob", "role": "admin"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(nopw["has_password"], false);
    assert_eq!(nopw["role"], "admin");

    let (s, list) = api.get("/api/v1/users", &admin).await;
    assert_eq!(s, StatusCode::OK);
    let names: Vec<_> = list["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "alice.b-c_1", "bob"]);
    let (_, page) = api.get("/api/v1/users?limit=1", &admin).await;
    assert_eq!(page["users"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = api
        .get(&format!("/api/v1/users?cursor={cursor}&q=ALICE"), &admin)
        .await;
    assert_eq!(rest["users"][0]["username"], "alice.b-c_1");
    assert_eq!(rest["next_cursor"], Value::Null);

    // A new password: a new hash in user.updated, still not in any view.
    let (s, u2) = api
        .patch(
            &format!("/api/v1/users/{id}"),
            &admin,
            json!({"password": "another long passphrase"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{u2}");
    let ev = all_events(&t).await.pop().unwrap();
    assert_eq!(ev.event_type, "user.updated");
    let sealed2: keyward_events::SealedPassword =
        serde_json::from_value(ev.data["password"].clone()).unwrap();
    assert_ne!(ring.open_password(&id, &sealed2).unwrap(), phc);
    assert!(!ev.data.to_string().contains("argon2"));
    for body in [
        u.to_string(),
        u2.to_string(),
        list.to_string(),
        api.get(&format!("/api/v1/users/{id}"), &admin)
            .await
            .1
            .to_string(),
    ] {
        assert!(
            !body.contains("argon2")
                && !body.contains("password_hash")
                && !body.contains("\"password\""),
            "{body}"
        );
    }
}

#[tokio::test]
async fn user_refusals_are_exact_and_write_nothing() {
    let t = TestApp::start().await;
    let api = Api::new(&t);
    let admin = t.admin_secret();
    let (s, _) = api
        .post(
            "/api/v1/users",
            &admin,
            json!({"username": "alice", "role": "user"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let admin_id = api.get("/api/v1/me", &admin).await.1["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let h = head(&t);

    let cases: Vec<(Value, StatusCode, &str, Option<&str>)> = vec![
        (
            json!({"username": "alice", "role": "user"}),
            StatusCode::CONFLICT,
            "conflict",
            None,
        ),
        (
            json!({"username": "ALICE", "role": "admin"}),
            StatusCode::CONFLICT,
            "conflict",
            None,
        ),
        (
            json!({"username": "carol", "role": "user", "password": "short"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("password"),
        ),
        (
            json!({"username": "carol", "role": "user", "password": "x".repeat(1025)}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("password"),
        ),
        (
            json!({"username": "carol smith", "role": "user"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("username"),
        ),
        (
            json!({"username": "", "role": "user"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("username"),
        ),
        (
            json!({"username": "c".repeat(65), "role": "user"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("username"),
        ),
        (
            json!({"username": "carol", "role": "owner"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("role"),
        ),
        (
            json!({"username": "carol"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("role"),
        ),
        (
            json!({"username": "carol", "role": "user", "password_hash": "$argon2id$x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("password_hash"),
        ),
    ];
    for (body, status, code, field) in cases {
        let got = api.post("/api/v1/users", &admin, body.clone()).await;
        assert_problem(&got, status, code, field);
        assert!(!got.1.to_string().contains("x".repeat(100).as_str()));
        assert_eq!(head(&t), h, "{body} wrote an event");
    }

    // The admin cannot lock themselves out.
    let me = format!("/api/v1/users/{admin_id}");
    assert_problem(
        &api.patch(&me, &admin, json!({"disabled": true})).await,
        StatusCode::CONFLICT,
        "conflict",
        None,
    );
    assert_problem(
        &api.patch(&me, &admin, json!({"role": "user"})).await,
        StatusCode::CONFLICT,
        "conflict",
        None,
    );
    assert_problem(
        &api.patch(&me, &admin, json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        None,
    );
    assert_problem(
        &api.patch(&me, &admin, json!({"password": "short"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some("password"),
    );
    assert_problem(
        &api.patch(&me, &admin, json!({"username": "root"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some("username"),
    );
    for got in [
        api.get("/api/v1/users/usr_nope", &admin).await,
        api.patch("/api/v1/users/usr_nope", &admin, json!({"disabled": true}))
            .await,
    ] {
        assert_problem(&got, StatusCode::NOT_FOUND, "not_found", None);
    }
    assert_eq!(head(&t), h);
    let (_, me_now) = api.get("/api/v1/me", &admin).await;
    assert_eq!(me_now["role"], "admin");
    // Enabling oneself when enabled, and keeping one's own role, change nothing and write
    // nothing.
    let (s, v) = api
        .patch(&me, &admin, json!({"disabled": false, "role": "admin"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(head(&t), h);
}

#[tokio::test]
async fn disabling_a_user_expires_their_keys_at_once_and_enabling_does_not_revive_them() {
    let t = TestApp::start().await;
    let api = Api::new(&t);
    let admin = t.admin_secret();
    let (s, u) = api
        .post(
            "/api/v1/users",
            &admin,
            json!({"username": "alice", "role": "user"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let alice = u["id"].as_str().unwrap().to_owned();
    let (full_id, full) = key_for(&api, &admin, &alice, "console", "full").await;
    let (chat_id, _) = key_for(&api, &admin, &alice, "app", "chat").await;
    let (old_id, _) = key_for(&api, &admin, &alice, "old", "chat").await;
    api.post(&format!("/api/v1/keys/{old_id}/expire"), &admin, json!({}))
        .await;
    let (s, _) = api.get("/api/v1/me", &full).await;
    assert_eq!(s, StatusCode::OK);
    let (_, before) = api.get(&format!("/api/v1/users/{alice}"), &admin).await;
    assert_eq!(before["active_keys"], 2);

    let h = head(&t);
    let (s, d) = api
        .patch(
            &format!("/api/v1/users/{alice}"),
            &admin,
            json!({"disabled": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["disabled"], true);
    assert_eq!(d["active_keys"], 0);

    // One unit: user.disabled, then key.expired(owner_disabled) for each key that worked.
    let written: Vec<_> = all_events(&t)
        .await
        .into_iter()
        .filter(|e| e.seq > h)
        .collect();
    assert_eq!(written.len(), 3);
    assert_eq!(written[0].event_type, "user.disabled");
    assert_eq!(written[0].request_id, written[1].request_id);
    let mut expired: Vec<_> = written[1..]
        .iter()
        .map(|e| {
            assert_eq!(e.event_type, "key.expired");
            assert_eq!(e.data["reason"], "owner_disabled");
            e.data["key_id"].as_str().unwrap().to_owned()
        })
        .collect();
    expired.sort();
    let mut want = vec![full_id.clone(), chat_id.clone()];
    want.sort();
    assert_eq!(expired, want);

    // Their keys stop at once.
    let got = api.get("/api/v1/me", &full).await;
    assert_problem(&got, StatusCode::UNAUTHORIZED, "unauthorized", None);
    let (_, k) = api.get(&format!("/api/v1/keys/{chat_id}"), &admin).await;
    assert_eq!(k["status"], "expired");
    assert_eq!(k["expired_reason"], "owner_disabled");
    let (_, k) = api.get(&format!("/api/v1/keys/{old_id}"), &admin).await;
    assert_eq!(k["expired_reason"], "manual");

    // Disabling again writes nothing.
    let h = head(&t);
    let (s, _) = api
        .patch(
            &format!("/api/v1/users/{alice}"),
            &admin,
            json!({"disabled": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(head(&t), h);
    // No new keys for a disabled user.
    let got = api
        .post(
            "/api/v1/keys",
            &admin,
            json!({"name": "n", "owner_id": alice, "expires_in": "1d"}),
        )
        .await;
    assert_problem(
        &got,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some("owner_id"),
    );

    // Enabled again: user.enabled, and the expired keys stay expired.
    let (s, e) = api
        .patch(
            &format!("/api/v1/users/{alice}"),
            &admin,
            json!({"disabled": false}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(e["disabled"], false);
    assert_eq!(
        all_events(&t).await.pop().unwrap().event_type,
        "user.enabled"
    );
    let got = api.get("/api/v1/me", &full).await;
    assert_problem(&got, StatusCode::UNAUTHORIZED, "unauthorized", None);
}

#[tokio::test]
async fn another_admin_may_demote_and_disable_an_admin() {
    let t = TestApp::start().await;
    let api = Api::new(&t);
    let admin = t.admin_secret();
    let (_, u) = api
        .post(
            "/api/v1/users",
            &admin,
            json!({"username": "second", "role": "admin"}),
        )
        .await;
    let second = u["id"].as_str().unwrap().to_owned();
    let (_, second_key) = key_for(&api, &admin, &second, "second console", "full").await;
    let admin_id = api.get("/api/v1/me", &admin).await.1["user_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let (s, d) = api
        .patch(
            &format!("/api/v1/users/{admin_id}"),
            &second_key,
            json!({"role": "user"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["role"], "user");
    // The demoted admin's key now acts as a user.
    let got = api.get("/api/v1/users", &admin).await;
    assert_problem(&got, StatusCode::FORBIDDEN, "forbidden", None);
    let (s, _) = api
        .patch(
            &format!("/api/v1/users/{admin_id}"),
            &second_key,
            json!({"disabled": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let got = api.get("/api/v1/me", &admin).await;
    assert_problem(&got, StatusCode::UNAUTHORIZED, "unauthorized", None);
}
