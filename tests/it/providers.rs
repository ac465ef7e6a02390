//! Providers: creation with a live check against a mock provider, masked credentials,
//! credential replacement, deletion guarded by dependent keys, and every refusal with its
//! exact status, code and field, writing nothing.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::api::*;
use crate::common::*;

const GOOD: &str = "sk-good-0123456789abcd";
const GOOD2: &str = "sk-good-replaced-9876wxyz";
const BAD: &str = "sk-bad-5555666677778888";

fn head(t: &TestApp) -> u64 {
    t.running.state.0.live.head().seq
}

/// Every event of the log, as stored.
async fn all_events(t: &TestApp) -> Vec<keyward_events::Envelope> {
    t.running
        .state
        .0
        .store
        .read_from(0, usize::MAX)
        .await
        .unwrap()
}

async fn stream_types(t: &TestApp, stream: &str) -> Vec<String> {
    all_events(t)
        .await
        .into_iter()
        .filter(|e| e.stream == stream)
        .map(|e| e.event_type)
        .collect()
}

/// Records every response body so a test can check a secret never appeared in one.
struct Recorder<'a> {
    api: &'a Api,
    bodies: Vec<String>,
}

impl<'a> Recorder<'a> {
    fn new(api: &'a Api) -> Self {
        Recorder {
            api,
            bodies: Vec::new(),
        }
    }

    async fn call(
        &mut self,
        method: Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let r = self.api.call(method, path, Some(key), body).await;
        self.bodies.push(r.1.to_string());
        r
    }

    fn assert_never_contains(&self, needle: &str) {
        for b in &self.bodies {
            assert!(!b.contains(needle), "a response leaked a secret: {b}");
        }
    }
}

fn provider_body(name: &str, base_url: &str, api_key: &str) -> Value {
    json!({"name": name, "kind": "openai", "base_url": base_url, "api_key": api_key,
           "models": ["gpt-4o-mini"], "config": {"organization": "org-1"}})
}

async fn export_text(api: &Api, key: &str) -> String {
    let req = Request::get("/api/v1/audit/export")
        .header("authorization", format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap();
    let res = api.app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test]
async fn an_admin_creates_a_provider_and_a_key_for_a_user_end_to_end() {
    let t = TestApp::start().await;
    let api = Api::new(&t);
    let admin = t.admin_secret();
    let mock = MockProvider::start().await;
    let mut rec = Recorder::new(&api);

    // The provider, checked live before anything is stored.
    let (s, p) = rec
        .call(
            Method::POST,
            "/api/v1/providers",
            &admin,
            Some(provider_body("openai-main", &mock.openai_base(), GOOD)),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let pid = p["id"].as_str().unwrap().to_owned();
    assert!(pid.starts_with("prv_"));
    assert_eq!(p["kind"], "openai");
    assert_eq!(p["base_url"], mock.openai_base());
    assert_eq!(p["models"], json!(["gpt-4o-mini"]));
    assert_eq!(p["credential"]["masked"], "sk-…abcd");
    assert_eq!(p["credential"]["keyring_version"], 1);
    let fp1 = p["credential"]["fingerprint"].as_str().unwrap().to_owned();
    assert_eq!(fp1.len(), 32);
    assert_eq!(p["verification"]["ok"], true);
    assert_eq!(p["verification"]["status"], 200);
    assert_eq!(*mock.seen.lock(), vec![GOOD.to_owned()]);
    assert_eq!(
        stream_types(&t, &format!("provider:{pid}")).await,
        [
            "provider.created",
            "provider.key_updated",
            "provider.verified"
        ]
    );

    // A user, and keys for them bound to the provider.
    let (s, u) = rec
        .call(
            Method::POST,
            "/api/v1/users",
            &admin,
            Some(json!({"username": "alice", "role": "user", "password": "correct horse battery"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{u}");
    let alice = u["id"].as_str().unwrap().to_owned();
    let mut alice_keys = Vec::new();
    let mut alice_full = String::new();
    for (name, scopes) in [
        ("alice console", json!(["full"])),
        ("alice app", json!(["chat"])),
    ] {
        let (s, k) = rec
            .call(
                Method::POST,
                "/api/v1/keys",
                &admin,
                Some(json!({"name": name, "owner_id": alice, "provider_id": pid,
                            "expires_in": "30d", "scopes": scopes})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{k}");
        assert_eq!(k["key"]["provider_id"], pid.as_str());
        assert_eq!(k["key"]["owner"], "alice");
        if alice_full.is_empty() {
            alice_full = k["secret"].as_str().unwrap().to_owned();
        }
        alice_keys.push(k["key"]["id"].as_str().unwrap().to_owned());
    }

    // "My API Keys": alice's full key lists only her own keys.
    let (s, mine) = rec
        .call(Method::GET, "/api/v1/keys", &alice_full, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut ids: Vec<_> = mine["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut expected = alice_keys.clone();
    expected.sort();
    assert_eq!(ids, expected);

    // The provider list shows the keys that use it.
    let (s, list) = rec
        .call(Method::GET, "/api/v1/providers", &admin, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let listed = &list["providers"][0];
    assert_eq!(listed["id"], pid.as_str());
    assert_eq!(listed["active_keys"], 2);
    let names: Vec<_> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice console", "alice app"]);
    assert_eq!(listed["keys"][0]["id"], alice_keys[0].as_str());

    // Replace the credential: checked, sealed, and what keys use from now on.
    let (s, p2) = rec
        .call(
            Method::PUT,
            &format!("/api/v1/providers/{pid}/credential"),
            &admin,
            Some(json!({"api_key": GOOD2})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{p2}");
    assert_eq!(p2["credential"]["masked"], "sk-…wxyz");
    assert_ne!(p2["credential"]["fingerprint"], fp1.as_str());
    assert_eq!(mock.seen.lock().last().unwrap(), GOOD2);
    {
        let st = &t.running.state.0;
        let live = st.live.read();
        let c = live
            .providers
            .get(&pid)
            .unwrap()
            .credential
            .clone()
            .unwrap();
        let opened = st
            .keyring
            .open(&pid, &c.ciphertext, &c.nonce, c.keyring_version)
            .unwrap();
        assert_eq!(opened.expose(), GOOD2);
    }

    // The live check again, recorded.
    let h = head(&t);
    let (s, v) = rec
        .call(
            Method::POST,
            &format!("/api/v1/providers/{pid}/verify"),
            &admin,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["ok"], true);
    assert_eq!(v["status"], 200);
    assert_eq!(head(&t), h + 1);
    let last = all_events(&t).await.pop().unwrap();
    assert_eq!(last.event_type, "provider.verified");
    assert_eq!(last.actor, u_admin_id(&t));

    // Delete: refused while keys use it, with those keys; then forced.
    let h = head(&t);
    let got = rec
        .call(
            Method::DELETE,
            &format!("/api/v1/providers/{pid}"),
            &admin,
            None,
        )
        .await;
    assert_problem(&got, StatusCode::CONFLICT, "conflict", None);
    let deps: Vec<_> = got.1["extra"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(deps, expected);
    assert_eq!(got.1["extra"]["keys"][0]["status"], "active");
    assert_eq!(head(&t), h);
    let (s, d) = rec
        .call(
            Method::DELETE,
            &format!("/api/v1/providers/{pid}?force=true"),
            &admin,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["deleted"], true);
    let last = all_events(&t).await.pop().unwrap();
    assert_eq!(last.event_type, "provider.deleted");
    assert_eq!(last.data["forced"], true);
    // Gone from the list, still readable by id.
    let (_, list) = rec
        .call(Method::GET, "/api/v1/providers", &admin, None)
        .await;
    assert_eq!(list["providers"], json!([]));
    let (s, _) = rec
        .call(
            Method::GET,
            &format!("/api/v1/providers/{pid}"),
            &admin,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);

    // The plaintext credentials appear in no response, no event and no export.
    for secret in [GOOD, GOOD2] {
        rec.assert_never_contains(secret);
        let export = export_text(&api, &admin).await;
        assert!(!export.is_empty());
        assert!(!export.contains(secret), "the export leaked a credential");
        for e in all_events(&t).await {
            assert!(!serde_json::to_string(&e).unwrap().contains(secret));
        }
    }
}

fn u_admin_id(t: &TestApp) -> String {
    t.running
        .state
        .0
        .live
        .read()
        .users
        .by_username("admin")
        .unwrap()
        .user_id
        .clone()
}

#[tokio::test]
async fn verify_false_stores_without_a_check_and_each_kind_is_checked_its_own_way() {
    let t = TestApp::start().await;
    let api = Api::new(&t);
    let admin = t.admin_secret();
    let mock = MockProvider::start().await;

    let (s, p) = api
        .post(
            "/api/v1/providers",
            &admin,
            json!({"name": "unchecked", "kind": "openai_compatible", "base_url": closed_port_url().await,
                   "api_key": "token-without-prefix-1234", "verify": false}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    assert_eq!(p["credential"]["masked"], "…1234");
    assert_eq!(p["verification"], Value::Null);
    let pid = p["id"].as_str().unwrap();
    assert_eq!(
        stream_types(&t, &format!("provider:{pid}")).await,
        ["provider.created", "provider.key_updated"]
    );
    // Checking it now records a failed verification; the call itself succeeds.
    let h = head(&t);
    let (s, v) = api
        .post(
            &format!("/api/v1/providers/{pid}/verify"),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["ok"], false);
    assert_eq!(v["status"], Value::Null);
    assert!(
        v["detail"].as_str().unwrap().contains("cannot connect"),
        "{v}"
    );
    assert_eq!(head(&t), h + 1);

    let (s, p) = api
        .post(
            "/api/v1/providers",
            &admin,
            json!({"name": "azure", "kind": "azure_openai", "base_url": mock.root(), "api_key": "sk-good-azure-0001",
                   "config": {"api_version": "2024-10-21", "deployments": {"gpt-4o": "prod-4o"}}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    assert_eq!(p["config"]["deployments"]["gpt-4o"], "prod-4o");
    let (s, p) = api
        .post(
            "/api/v1/providers",
            &admin,
            json!({"name": "claude", "kind": "anthropic", "base_url": format!("{}/", mock.root()), "api_key": "sk-good-ant-0002"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    assert_eq!(p["base_url"], mock.root());
    assert_eq!(
        *mock.seen.lock(),
        vec![
            "sk-good-azure-0001".to_owned(),
            "sk-good-ant-0002".to_owned()
        ]
    );

    // PATCH changes the settings and keeps azure's config valid.
    let id = p["id"].as_str().unwrap();
    let (s, p) = api
        .patch(
            &format!("/api/v1/providers/{id}"),
            &admin,
            json!({"name": "claude-2", "models": ["claude-sonnet-4"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["name"], "claude-2");
    assert_eq!(p["models"], json!(["claude-sonnet-4"]));
    assert_eq!(p["credential"]["masked"], "sk-…0002");
}

#[tokio::test]
async fn provider_refusals_are_exact_and_write_nothing() {
    let t = TestApp::start().await;
    let api = Api::new(&t);
    let admin = t.admin_secret();
    let mock = MockProvider::start().await;
    let base = mock.openai_base();
    let (s, existing) = api
        .post(
            "/api/v1/providers",
            &admin,
            provider_body("taken", &base, GOOD),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let pid = existing["id"].as_str().unwrap().to_owned();
    let h = head(&t);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = provider_body("fresh", &base, GOOD);
        f(&mut b);
        b
    };

    let cases: Vec<(Value, StatusCode, &str, Option<&str>)> = vec![
        (
            with(&|b| b["kind"] = json!("cohere")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("kind"),
        ),
        (
            with(&|b| b["base_url"] = json!("api.openai.com/v1")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("base_url"),
        ),
        (
            with(&|b| b["base_url"] = json!("ftp://files.example/v1")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("base_url"),
        ),
        (
            with(&|b| {
                b.as_object_mut().unwrap().remove("api_key");
            }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("api_key"),
        ),
        (
            with(&|b| b["api_key"] = json!("")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("api_key"),
        ),
        (
            with(&|b| b["api_key"] = json!("x".repeat(4097))),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("api_key"),
        ),
        (
            with(&|b| b["colour"] = json!("blue")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("colour"),
        ),
        (
            with(&|b| b["name"] = json!("")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("name"),
        ),
        (
            with(&|b| b["name"] = json!("n".repeat(201))),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("name"),
        ),
        (
            with(&|b| b["config"] = json!(["not", "an", "object"])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("config"),
        ),
        (
            with(&|b| b["config"] = json!({"api_key": GOOD})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("config.api_key"),
        ),
        (
            with(&|b| {
                b["kind"] = json!("azure_openai");
                b["config"] = json!({"api_version": "2024-10-21"});
            }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("config.deployments"),
        ),
        (
            with(&|b| b["name"] = json!("taken")),
            StatusCode::CONFLICT,
            "conflict",
            None,
        ),
        (
            with(&|b| b["api_key"] = json!(BAD)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("api_key"),
        ),
        (
            with(&|b| b["base_url"] = json!(mock.root() + "/nowhere")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("base_url"),
        ),
        (
            with(&|b| b["base_url"] = json!(mock.root() + "/broken")),
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            None,
        ),
    ];
    for (body, status, code, field) in cases {
        let got = api.post("/api/v1/providers", &admin, body.clone()).await;
        assert_problem(&got, status, code, field);
        if field.is_none() {
            assert_eq!(got.1.get("field"), None, "{}", got.1);
        }
        assert_eq!(head(&t), h, "{body} wrote an event");
    }

    // The provider's reason for a bad credential, with the credential scrubbed from it.
    let got = api
        .post(
            "/api/v1/providers",
            &admin,
            provider_body("fresh", &base, BAD),
        )
        .await;
    let detail = got.1["detail"].as_str().unwrap();
    assert!(detail.contains("(401)"), "{detail}");
    assert!(detail.contains("Incorrect API key provided"), "{detail}");
    assert!(
        !detail.contains(BAD) && !detail.contains("5555666677778888"),
        "{detail}"
    );

    // Unreachable: 502, nothing stored.
    let got = api
        .post(
            "/api/v1/providers",
            &admin,
            provider_body("fresh", &closed_port_url().await, GOOD),
        )
        .await;
    assert_problem(&got, StatusCode::BAD_GATEWAY, "bad_gateway", None);
    assert!(
        got.1["detail"]
            .as_str()
            .unwrap()
            .contains("could not be reached")
    );

    // Malformed JSON and a wrong content type.
    let req = Request::post("/api/v1/providers")
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
    let req = Request::post("/api/v1/providers")
        .header("authorization", format!("Bearer {admin}"))
        .header("content-type", "text/plain")
        .body(Body::from(provider_body("fresh", &base, GOOD).to_string()))
        .unwrap();
    assert_problem(
        &api.send(req).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        None,
    );

    // Unknown ids are 404 on every route.
    for (method, path, body) in [
        (Method::GET, "/api/v1/providers/prv_nope", None),
        (
            Method::PATCH,
            "/api/v1/providers/prv_nope",
            Some(json!({"name": "x"})),
        ),
        (
            Method::PUT,
            "/api/v1/providers/prv_nope/credential",
            Some(json!({"api_key": GOOD})),
        ),
        (Method::POST, "/api/v1/providers/prv_nope/verify", None),
        (Method::DELETE, "/api/v1/providers/prv_nope", None),
    ] {
        let got = api.call(method, path, Some(&admin), body).await;
        assert_problem(&got, StatusCode::NOT_FOUND, "not_found", None);
    }

    // Updates: nothing to change, a taken name, a bad URL, a bad replacement credential.
    let p = format!("/api/v1/providers/{pid}");
    let other = api
        .post(
            "/api/v1/providers",
            &admin,
            provider_body("other", &base, GOOD),
        )
        .await;
    assert_eq!(other.0, StatusCode::CREATED);
    let h = head(&t);
    assert_problem(
        &api.patch(&p, &admin, json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        None,
    );
    assert_problem(
        &api.patch(&p, &admin, json!({"name": "other"})).await,
        StatusCode::CONFLICT,
        "conflict",
        None,
    );
    assert_problem(
        &api.patch(&p, &admin, json!({"base_url": "nope"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some("base_url"),
    );
    assert_problem(
        &api.patch(&p, &admin, json!({"api_key": GOOD})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some("api_key"),
    );
    let cred = format!("{p}/credential");
    let got = api
        .call(
            Method::PUT,
            &cred,
            Some(&admin),
            Some(json!({"api_key": BAD})),
        )
        .await;
    assert_problem(
        &got,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some("api_key"),
    );
    assert!(!got.1.to_string().contains(BAD));
    let got = api
        .call(Method::PUT, &cred, Some(&admin), Some(json!({})))
        .await;
    assert_problem(
        &got,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        Some("api_key"),
    );
    assert_eq!(head(&t), h);
    // The rejected credential did not replace the good one.
    let (_, now) = api.get(&p, &admin).await;
    assert_eq!(now["credential"]["masked"], "sk-…abcd");
}

/// The admin-only routes, taken from the OpenAPI document.
fn admin_only_operations() -> Vec<(Method, String)> {
    let spec: Value = serde_json::from_str(&keyward::http::api::openapi_json()).unwrap();
    let mut ops = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        let admin_only = path.starts_with("/api/v1/providers")
            || path.starts_with("/api/v1/users")
            || path == "/api/v1/audit/verify"
            || path == "/api/v1/audit/checkpoint"
            || path == "/api/v1/audit/checkpoint/latest"
            || path == "/api/v1/audit/public-key";
        if !admin_only {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            ops.push((m, path.replace("{id}", "prv_or_usr_any")));
        }
    }
    ops
}

#[tokio::test]
async fn a_non_admin_gets_403_on_every_admin_route_and_writes_nothing() {
    let t = TestApp::start().await;
    let api = Api::new(&t);
    let mock = MockProvider::start().await;
    let admin = t.admin_secret();
    let (s, p) = api
        .post(
            "/api/v1/providers",
            &admin,
            provider_body("p", &mock.openai_base(), GOOD),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let pid = p["id"].as_str().unwrap().to_owned();
    let (user_id, user_key) = user_with_full_key(&t, "mallory").await;
    let ops = admin_only_operations();
    // providers: 2 + 3 + 1 + 1; users: 2 + 2; audit: verify, checkpoint, the latest
    // signed checkpoint and its public key.
    assert_eq!(ops.len(), 15, "{ops:?}");
    let h = head(&t);
    for (method, path) in ops {
        // Real ids too, so a 404 cannot hide a missing role check.
        for id in [pid.as_str(), user_id.as_str(), "prv_or_usr_any"] {
            let path = path.replace("prv_or_usr_any", id);
            let body = matches!(method, Method::POST | Method::PUT | Method::PATCH).then(
                || json!({"name": "x", "kind": "openai", "base_url": mock.openai_base(), "api_key": GOOD,
                          "username": "x", "role": "admin", "disabled": true}),
            );
            let got = api.call(method.clone(), &path, Some(&user_key), body).await;
            assert_problem(&got, StatusCode::FORBIDDEN, "forbidden", None);
            // A body the schema refuses is still 403: the role is checked first.
            if matches!(method, Method::POST | Method::PUT | Method::PATCH) {
                let got = api
                    .call(
                        method.clone(),
                        &path,
                        Some(&user_key),
                        Some(json!({"junk": 1})),
                    )
                    .await;
                assert_problem(&got, StatusCode::FORBIDDEN, "forbidden", None);
            }
        }
    }
    assert_eq!(head(&t), h);
    assert_eq!(
        mock.seen.lock().len(),
        1,
        "a non-admin made a provider call"
    );
}
