//! The proxy path, driven through `app(state)` against the in-process mock upstream.

mod anthropic;
mod events;
mod faults;
mod logs;
mod metrics;
pub mod mock;
mod named_refusals;
mod openai;
mod refusals;
mod streaming;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, Response, StatusCode};
use chrono::Utc;
use http_body_util::BodyExt;
use keyward::AppState;
use keyward::commands::{Actor, NewKey};
use keyward::config::Config;
use keyward::crypto::ProviderSecret;
use keyward::store::EventFilter;
use keyward_events::{
    Event, ExpectedVersion, NewEvent, ProviderCreated, ProviderKeyUpdated, ProviderKind, Quota,
    RateLimit, Scope,
};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::common::TestApp;
use mock::Mock;

pub const OPENAI_CREDENTIAL: &str = "sk-test-openai-cred-0123456789abcdef";
pub const ANTHROPIC_CREDENTIAL: &str = "sk-ant-test-cred-0123456789abcdef";
pub const AZURE_CREDENTIAL: &str = "azure-test-cred-0123456789abcdef";

/// A started Keyward with the mock upstream beside it.
pub struct Gw {
    pub t: TestApp,
    pub state: AppState,
    pub mock: Mock,
    pub admin_id: String,
}

/// A key to create; every field has a usable default.
#[derive(Clone)]
pub struct KeySpec {
    pub providers: Vec<String>,
    pub scopes: Vec<Scope>,
    pub models: Vec<String>,
    pub rate_limit: Option<RateLimit>,
    pub quota: Option<Quota>,
    pub ip_allowlist: Vec<String>,
    pub expires_in: chrono::Duration,
    /// The admin unless set.
    pub owner: Option<String>,
}

impl KeySpec {
    pub fn on(provider: &str) -> KeySpec {
        KeySpec {
            providers: vec![provider.to_owned()],
            scopes: vec![Scope::Chat],
            models: Vec::new(),
            rate_limit: None,
            quota: None,
            ip_allowlist: Vec::new(),
            expires_in: chrono::Duration::days(1),
            owner: None,
        }
    }
}

pub const CLIENT: ([u8; 4], u16) = ([127, 0, 0, 1], 40_000);

impl Gw {
    pub async fn start() -> Gw {
        Gw::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut Config)) -> Gw {
        let mock = Mock::start().await;
        let t = TestApp::start_with(f).await;
        let state = t.running.state.clone();
        let admin_id = state
            .0
            .live
            .read()
            .users
            .by_username("admin")
            .unwrap()
            .user_id
            .clone();
        Gw {
            t,
            state,
            mock,
            admin_id,
        }
    }

    pub async fn provider(
        &self,
        kind: ProviderKind,
        base_url: &str,
        config: Value,
        models: &[&str],
        credential: Option<&str>,
    ) -> String {
        let id = keyward::commands::new_provider_id();
        let created = Event::ProviderCreated(ProviderCreated {
            provider_id: id.clone(),
            name: format!("{}-{}", kind.as_str(), &id[id.len() - 6..]),
            kind,
            base_url: base_url.to_owned(),
            config: config.as_object().cloned().unwrap_or_default(),
            models: models.iter().map(|m| m.to_string()).collect(),
        });
        let mut unit = vec![NewEvent::new(
            &created,
            ExpectedVersion::NoStream,
            Utc::now(),
            "system",
            None,
        )];
        if let Some(cred) = credential {
            let sealed = self
                .state
                .0
                .keyring
                .seal(&id, &ProviderSecret::new(cred.to_owned()));
            let ev = Event::ProviderKeyUpdated(ProviderKeyUpdated {
                provider_id: id.clone(),
                ciphertext: sealed.ciphertext,
                nonce: sealed.nonce,
                keyring_version: sealed.keyring_version,
                fingerprint: sealed.fingerprint,
                last4: sealed.last4,
            });
            unit.push(NewEvent::new(
                &ev,
                ExpectedVersion::Exact(1),
                Utc::now(),
                "system",
                None,
            ));
        }
        self.state.0.commands.submit(unit).await.unwrap();
        id
    }

    pub async fn openai(&self, models: &[&str]) -> String {
        self.provider(
            ProviderKind::Openai,
            &self.mock.openai_base(),
            json!({}),
            models,
            Some(OPENAI_CREDENTIAL),
        )
        .await
    }

    pub async fn anthropic(&self, config: Value) -> String {
        self.provider(
            ProviderKind::Anthropic,
            &self.mock.root(),
            config,
            &[],
            Some(ANTHROPIC_CREDENTIAL),
        )
        .await
    }

    pub async fn key(&self, spec: KeySpec) -> (String, String) {
        let cmds = &self.state.0.commands;
        let (ev, key_id, secret) = cmds.key_created(
            &Actor::system(),
            NewKey {
                name: "test key".into(),
                owner_id: spec.owner.unwrap_or_else(|| self.admin_id.clone()),
                provider_ids: spec.providers,
                expires_at: Utc::now() + spec.expires_in,
                scopes: spec.scopes,
                models: spec.models,
                rate_limit: spec.rate_limit,
                quota: spec.quota,
                ip_allowlist: spec.ip_allowlist,
                metadata: Default::default(),
                rotated_from: None,
            },
        );
        cmds.submit(vec![ev]).await.unwrap();
        (key_id, secret.expose().to_owned())
    }

    /// Appends events as the management API would.
    pub async fn append(&self, event: Event) {
        let ev = NewEvent::new(&event, ExpectedVersion::Any, Utc::now(), "system", None);
        self.state.0.commands.submit(vec![ev]).await.unwrap();
    }

    /// One request through the whole router, from 127.0.0.1 unless the request says
    /// otherwise.
    pub async fn call(&self, mut req: Request<Body>) -> Response<Body> {
        if req.extensions().get::<ConnectInfo<SocketAddr>>().is_none() {
            req.extensions_mut()
                .insert(ConnectInfo(SocketAddr::from(CLIENT)));
        }
        keyward::app(self.state.clone()).oneshot(req).await.unwrap()
    }

    pub async fn post(&self, path: &str, secret: &str, body: Value) -> Reply {
        Reply::read(self.call(post(path, secret, body)).await).await
    }

    pub async fn get(&self, path: &str, secret: &str) -> Reply {
        let req = Request::get(path)
            .header("authorization", format!("Bearer {secret}"))
            .body(Body::empty())
            .unwrap();
        Reply::read(self.call(req).await).await
    }

    /// The events of a type in the store, waiting up to 5 s for at least `n`.
    pub async fn events(&self, type_name: &str, n: usize) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let found = stored(&self.state, type_name).await;
            if found.len() >= n || tokio::time::Instant::now() > deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The single `key.used` of the next request, once it is committed.
    pub async fn last_used(&self, n: usize) -> keyward_events::KeyUsed {
        let evs = self.events("key.used", n).await;
        assert_eq!(evs.len(), n, "expected {n} key.used events");
        match evs.last() {
            Some(Event::KeyUsed(u)) => u.clone(),
            other => panic!("{other:?}"),
        }
    }
}

pub async fn stored(state: &AppState, type_name: &str) -> Vec<Event> {
    state
        .0
        .store
        .read(
            &EventFilter {
                types: vec![type_name.to_owned()],
                ..EventFilter::default()
            },
            100_000,
        )
        .await
        .unwrap()
        .iter()
        .map(|e| e.decode().unwrap())
        .collect()
}

pub fn post(path: &str, secret: &str, body: Value) -> Request<Body> {
    Request::post(path)
        .header("authorization", format!("Bearer {secret}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

pub fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Hello"}]})
}

/// A response read whole.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub bytes: Vec<u8>,
}

impl Reply {
    pub async fn read(res: Response<Body>) -> Reply {
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.unwrap().to_bytes().to_vec();
        Reply {
            status,
            headers,
            bytes,
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or_else(|_| panic!("not JSON: {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an error in OpenAI's shape with this status and code.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        let v = self.json();
        let e = &v["error"];
        assert_eq!(e["code"], code, "{}", self.text());
        assert!(e["message"].is_string(), "{}", self.text());
        assert!(e["type"].is_string(), "{}", self.text());
        assert!(e.get("param").is_some(), "{}", self.text());
    }

    /// The `data:` payloads of an SSE body.
    pub fn sse_data(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .filter_map(|e| {
                let data: Vec<&str> = e
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: ").or(l.strip_prefix("data:")))
                    .collect();
                (!data.is_empty()).then(|| data.join("\n"))
            })
            .collect()
    }
}
