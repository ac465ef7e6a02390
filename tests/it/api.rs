//! HTTP helpers for the management API tests.
#![allow(dead_code)]

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use crate::common::TestApp;

pub struct Api {
    pub app: Router,
}

impl Api {
    pub fn new(t: &TestApp) -> Api {
        Api {
            app: keyward::app(t.running.state.clone()),
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(k) = key {
            b = b.header("authorization", format!("Bearer {k}"));
        }
        let req = match body {
            Some(v) => b
                .header("content-type", "application/json")
                .body(Body::from(v.to_string()))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        self.send(req).await
    }

    pub async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let ct = res
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        if (status.is_client_error() || status.is_server_error()) && !bytes.is_empty() {
            assert_eq!(
                ct.as_deref(),
                Some("application/problem+json"),
                "{status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, v)
    }

    pub async fn get(&self, path: &str, key: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(key), None).await
    }
    pub async fn post(&self, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(key), Some(body)).await
    }
    pub async fn patch(&self, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, Some(key), Some(body)).await
    }
    pub async fn delete(&self, path: &str, key: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, Some(key), None).await
    }
}

/// Asserts a problem response: status, code and (when given) the field.
pub fn assert_problem(
    got: &(StatusCode, Value),
    status: StatusCode,
    code: &str,
    field: Option<&str>,
) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["code"], code, "{}", got.1);
    assert_eq!(got.1["status"], status.as_u16(), "{}", got.1);
    if let Some(f) = field {
        assert_eq!(got.1["field"], f, "{}", got.1);
    }
}

/// Creates a user directly through the commands layer (the users API has its own tests)
/// and a `full` key for them; returns (user id, secret).
pub async fn user_with_full_key(t: &TestApp, username: &str) -> (String, String) {
    use keyward::commands::{Actor, NewKey};
    let cmds = &t.running.state.0.commands;
    let (ev, user_id) =
        cmds.user_created(&Actor::system(), username, keyward_events::Role::User, None);
    cmds.submit(vec![ev]).await.unwrap();
    let (_, secret) = cmds
        .create_key(
            &Actor::system(),
            NewKey {
                name: format!("{username} full"),
                owner_id: user_id.clone(),
                provider_ids: vec![],
                expires_at: chrono::Utc::now() + chrono::Duration::days(10),
                scopes: vec![keyward_events::Scope::Full],
                models: vec![],
                rate_limit: None,
                quota: None,
                ip_allowlist: vec![],
                metadata: Default::default(),
                rotated_from: None,
            },
        )
        .await
        .unwrap();
    (user_id, secret.expose().to_owned())
}
