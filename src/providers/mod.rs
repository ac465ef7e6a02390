//! Provider kinds, one file each, behind one trait: [`Kind`].
//!
//! A kind builds and authorises the upstream request (a header, a bearer token it
//! exchanged a credential for, a signature), says which dialect the request and the answer
//! travel in (the translators are here too: [`messages`] for Anthropic's Messages API,
//! [`converse`] for Bedrock's Converse API, [`eventstream`] for AWS's stream framing),
//! reads a model list, and checks its own configuration and credential. The proxy
//! (`http::proxy`) and the management API's credential check (`check`) both go through the
//! trait, so a kind's URLs and headers are written once.
//!
//! Adding a kind: its file here, its entry in [`KINDS`], and its variant in the event
//! vocabulary (`keyward_events::ProviderKind`, which every event and snapshot names). The
//! config check, the console's provider form and the OpenAPI enum all read [`KINDS`].
//!
//! This layer sits below `http`: it knows nothing of axum's handlers, the caller or the
//! meter. [`egress`] (where a provider may be reached) and [`sse`] live here too.

pub mod anthropic;
pub mod azure;
pub mod bedrock;
pub mod check;
pub mod cloudauth;
pub mod converse;
pub mod egress;
pub mod error;
pub mod eventstream;
pub mod messages;
pub mod openai;
pub mod sse;
pub mod vertex;
pub mod wire;

use std::time::Duration;

use async_trait::async_trait;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use bytes::Bytes;
use keyward_events::ProviderKind;
use keyward_projections::ProviderRecord;
use reqwest::Url;
use serde_json::{Map, Value};

use crate::crypto::ProviderSecret;
use cloudauth::{AuthError, TokenCaches};
use egress::EgressPolicy;
pub use error::ProxyError;
pub use wire::{Dialect, Endpoint, Tokens};

/// Every kind Keyward knows, in the order the console lists them.
pub static KINDS: &[&dyn Kind] = &[
    &openai::OPENAI,
    &anthropic::Anthropic,
    &azure::Azure,
    &bedrock::Bedrock,
    &vertex::Vertex,
    &openai::GROQ,
    &openai::GEMINI,
    &openai::COMPATIBLE,
];

/// The kind's implementation. Every variant of the event vocabulary has one (a unit test
/// holds that).
pub fn kind(k: ProviderKind) -> &'static dyn Kind {
    KINDS
        .iter()
        .copied()
        .find(|x| x.kind() == k)
        .unwrap_or(&openai::COMPATIBLE)
}

/// One field of a kind's provider form.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    /// The key in `config`, or in the credential object for a credential part.
    pub name: &'static str,
    pub label: &'static str,
    /// A part of the credential: sealed, never shown again, a password input.
    pub secret: bool,
    pub required: bool,
    /// An example or a short explanation.
    pub hint: &'static str,
}

/// What is wrong with a provider's settings: the field (`config.region`,
/// `api_key.secret_access_key`) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl Problem {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Where one request goes, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub url: Url,
    pub dialect: Dialect,
    /// How a streamed answer is framed.
    pub framing: Framing,
    /// Anthropic's Messages API on a cloud (Bedrock, Vertex): the model leaves the body
    /// (it is in the URL) and this version goes into it.
    pub anthropic_body: Option<&'static str>,
}

/// The framing of a streamed answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Server-sent events.
    Sse,
    /// AWS's binary event stream, re-framed as SSE before the dialect's handling.
    EventStream(eventstream::Flavour),
}

/// A request on its way to the provider, before the kind authorises it.
pub struct Outgoing {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The client's `anthropic-version`, when the client speaks Anthropic's dialect.
    pub anthropic_version: Option<HeaderValue>,
}

/// What the request carries that a provider could echo back, and that is scrubbed from
/// whatever reaches the client: the API key, or the access token the credential was
/// exchanged for. (A signature's secret never leaves Keyward.)
pub type WireSecret = ProviderSecret;

/// The provider layer's long-lived parts: the pooled client for upstream requests, the
/// client for checks and token endpoints (shorter timeouts), where providers may be
/// reached, and the access tokens credentials were exchanged for.
pub struct Upstreams {
    pub client: reqwest::Client,
    pub check_client: reqwest::Client,
    pub egress: EgressPolicy,
    pub tokens: TokenCaches,
}

impl Upstreams {
    pub fn new(egress: EgressPolicy, connect_timeout: Duration) -> Result<Upstreams, String> {
        // No environment proxy, no redirects, the guard's resolver.
        let client = egress
            .client_builder()
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| crate::redact::http_error(&e).to_string())?;
        let check_client = check::client(&egress).map_err(|e| e.to_string())?;
        Ok(Upstreams {
            client,
            check_client,
            egress,
            tokens: TokenCaches::default(),
        })
    }

    /// A token endpoint's URL (from a service account's key, or an authority an admin
    /// set) is checked like a provider's before any credential is sent to it.
    pub fn check_token_url(&self, url: &str) -> Result<(), AuthError> {
        let u = Url::parse(url)
            .map_err(|_| AuthError::Invalid("the token endpoint is not a valid URL".into()))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(AuthError::Invalid(
                "the token endpoint must be an http(s) URL".into(),
            ));
        }
        self.egress
            .check_literal(&u)
            .map_err(|e| AuthError::Unreachable(e.to_string()))
    }

    /// The cache of one credential's access token, keyed by what the exchange depends on:
    /// the kind, the configuration (Entra ID's tenant, client id and authority are there)
    /// and the credential. A rotated credential or a changed configuration gets a new
    /// token, and the live check of a provider not yet stored caches the token its
    /// requests then use.
    pub fn token_cache(
        &self,
        p: &ProviderRecord,
        secret: &ProviderSecret,
    ) -> std::sync::Arc<cloudauth::TokenCache> {
        let mut h = blake3::Hasher::new_derive_key("keyward 2026 provider token cache");
        h.update(p.kind.as_str().as_bytes());
        h.update(&[0]);
        // JSON text holds no NUL byte: the parts cannot run into each other.
        h.update(
            serde_json::to_string(&p.config)
                .unwrap_or_default()
                .as_bytes(),
        );
        h.update(&[0]);
        h.update(secret.expose().as_bytes());
        self.tokens.cache(*h.finalize().as_bytes())
    }
}

/// A provider kind.
#[async_trait]
pub trait Kind: Send + Sync {
    fn kind(&self) -> ProviderKind;

    /// Its name in the console.
    fn label(&self) -> &'static str;

    /// The base URL the console suggests; empty when there is none to suggest.
    fn default_base_url(&self) -> &'static str {
        ""
    }

    /// The provider form's fields beyond name, base URL and models.
    fn fields(&self) -> &'static [Field] {
        &[]
    }

    /// The kind signs its requests (AWS): no client header goes along, since the signature
    /// covers the headers it names.
    fn signs_requests(&self) -> bool {
        false
    }

    /// The credential is an object of named parts (`fields` with `secret`), not one key.
    fn structured_credential(&self) -> bool {
        false
    }

    /// The kind's own checks of `config`, after the generic ones.
    fn check_config(&self, _config: &Map<String, Value>) -> Result<(), Problem> {
        Ok(())
    }

    /// The credential's shape, before any live check. `secret` is the text to be sealed.
    fn check_secret(&self, _config: &Map<String, Value>, _secret: &str) -> Result<(), Problem> {
        Ok(())
    }

    /// The credential as people may see it: a recognisable part, never the secret.
    fn masked(&self, secret: &ProviderSecret) -> String {
        wire::mask(secret.expose())
    }

    /// Whether the kind offers the endpoint at all.
    fn offers(&self, ep: Endpoint) -> bool;

    /// Whether the provider serves this model: its enabled list allows it (an empty list
    /// allows every model).
    fn serves(&self, p: &ProviderRecord, model: &str) -> bool {
        wire::enabled(p, model)
    }

    /// The models the configuration itself names, listed without asking the provider
    /// (Azure's deployments).
    fn configured_models(&self, _p: &ProviderRecord) -> Option<Vec<String>> {
        None
    }

    /// Whether the model is named by the configuration rather than "every model".
    fn names_models(&self) -> bool {
        false
    }

    /// The URL and dialect of an endpoint for a model. `stream`: the client asked for a
    /// stream (some kinds stream at another URL).
    fn route(
        &self,
        p: &ProviderRecord,
        ep: Endpoint,
        model: &str,
        stream: bool,
    ) -> Result<Route, ProxyError>;

    /// The completion bound Keyward sends when a request has none (Anthropic's API needs
    /// one); `None` for kinds that need none.
    fn default_max_tokens(&self, _p: &ProviderRecord) -> Option<u64> {
        None
    }

    /// Adds the credential to the request: a header, a bearer token, a signature. Returns
    /// the access token sent, when it is not the credential itself: what a provider could
    /// echo, scrubbed from what reaches the client.
    async fn authorize(
        &self,
        up: &Upstreams,
        p: &ProviderRecord,
        secret: &ProviderSecret,
        req: &mut Outgoing,
    ) -> Result<Option<WireSecret>, AuthorizeError>;

    /// The provider answered 401 or 403 to a credential: a cached token is dropped.
    fn rejected(&self, _up: &Upstreams, _p: &ProviderRecord, _secret: &ProviderSecret) {}

    /// The model ids in a provider's answer to the models request.
    fn listed_models(&self, body: &[u8]) -> Option<Vec<String>> {
        wire::listed_models(body)
    }
}

/// The misconfiguration error of the proxy.
pub fn misconfigured() -> ProxyError {
    ProxyError::bad_gateway(
        "provider_misconfigured",
        "the provider's configuration is not usable; an admin must correct it",
    )
}

/// The provider refused Keyward's credential (or an identity provider refused to exchange
/// it): the client's key is fine, so this is a 502, never a 401 the client would blame on
/// itself.
pub fn credential_rejected() -> ProxyError {
    ProxyError::bad_gateway(
        "provider_credential_rejected",
        "the provider refused Keyward's credential for it; an admin must replace it",
    )
}

/// Why a request could not be authorised.
#[derive(Debug)]
pub enum AuthorizeError {
    /// The provider's settings cannot make a request.
    Proxy(ProxyError),
    /// The credential could not be exchanged for an access token.
    Token(AuthError),
}

impl From<ProxyError> for AuthorizeError {
    fn from(e: ProxyError) -> AuthorizeError {
        AuthorizeError::Proxy(e)
    }
}

impl From<AuthError> for AuthorizeError {
    fn from(e: AuthError) -> AuthorizeError {
        AuthorizeError::Token(e)
    }
}

impl AuthorizeError {
    /// The proxy's answer (the identity provider's reason is logged, never sent).
    pub fn into_proxy(self, provider_id: &str) -> ProxyError {
        match self {
            AuthorizeError::Proxy(e) => e,
            AuthorizeError::Token(e) => auth_failed(&e, provider_id),
        }
    }
}

/// An access-token exchange failed: the proxy's error for it.
pub fn auth_failed(e: &AuthError, provider_id: &str) -> ProxyError {
    match e {
        AuthError::Rejected { status, .. } => {
            tracing::warn!(%provider_id, status, "the identity provider refused the provider's credential");
            credential_rejected()
        }
        AuthError::Unreachable(why) => {
            tracing::warn!(%provider_id, reason = %why, "the identity provider could not be reached");
            ProxyError::upstream_unavailable()
        }
        AuthError::Invalid(why) => {
            tracing::warn!(%provider_id, reason = %why, "the provider's credential is not usable");
            misconfigured()
        }
    }
}

/// Sets one sensitive header (kept out of any `Debug` of the HTTP stack).
pub fn put_secret_header(
    headers: &mut HeaderMap,
    name: HeaderName,
    value: &str,
) -> Result<(), ProxyError> {
    let mut v = HeaderValue::from_str(value).map_err(|_| misconfigured())?;
    v.set_sensitive(true);
    headers.insert(name, v);
    Ok(())
}

/// `Authorization: Bearer <token>`.
pub fn put_bearer(headers: &mut HeaderMap, token: &str) -> Result<(), ProxyError> {
    let bearer = zeroize::Zeroizing::new(format!("Bearer {token}"));
    put_secret_header(headers, header::AUTHORIZATION, &bearer)
}

/// A string in `config`, trimmed; `None` when missing or empty.
pub fn config_str<'a>(config: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    config
        .get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// A required config string of at most `max` characters from `allowed`.
pub fn require_config(
    kind: &str,
    config: &Map<String, Value>,
    name: &str,
    example: &str,
    max: usize,
    allowed: fn(char) -> bool,
) -> Result<(), Problem> {
    match config.get(name) {
        Some(Value::String(v))
            if !v.is_empty() && v.chars().count() <= max && v.chars().all(allowed) =>
        {
            Ok(())
        }
        _ => Err(Problem::new(
            format!("config.{name}"),
            format!("{kind} needs config.{name}, e.g. \"{example}\""),
        )),
    }
}

/// An optional config URL (an Entra authority, Bedrock's control plane): http(s), with no
/// user info and no query.
pub fn optional_url(config: &Map<String, Value>, name: &str, example: &str) -> Result<(), Problem> {
    let Some(v) = config.get(name) else {
        return Ok(());
    };
    let ok = v
        .as_str()
        .and_then(|s| Url::parse(s).ok())
        .is_some_and(|u| {
            matches!(u.scheme(), "https" | "http")
                && u.username().is_empty()
                && u.password().is_none()
                && u.query().is_none()
        });
    if ok {
        Ok(())
    } else {
        Err(Problem::new(
            format!("config.{name}"),
            format!("config.{name} must be an http(s) URL such as {example}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_the_vocabulary_has_one_implementation() {
        for k in ProviderKind::ALL {
            let n = KINDS.iter().filter(|x| x.kind() == k).count();
            assert_eq!(n, 1, "{k:?}");
            assert_eq!(kind(k).kind(), k);
        }
        assert_eq!(KINDS.len(), ProviderKind::ALL.len());
    }

    #[test]
    fn config_urls_are_http_without_user_info_or_query() {
        use serde_json::json;
        let config = |v: Value| v.as_object().cloned().unwrap_or_default();
        assert_eq!(optional_url(&config(json!({})), "authority", "x"), Ok(()));
        assert_eq!(
            optional_url(
                &config(json!({"authority": "https://login.example"})),
                "authority",
                "x"
            ),
            Ok(())
        );
        for bad in [
            json!("ftp://login.example"),
            json!("https://user:pw@login.example"),
            json!("https://login.example/?tenant=x"),
            json!("not a url"),
            json!(42),
        ] {
            assert_eq!(
                optional_url(&config(json!({"authority": bad})), "authority", "https://a"),
                Err(Problem::new(
                    "config.authority",
                    "config.authority must be an http(s) URL such as https://a"
                )),
                "{bad}"
            );
        }
        // Both kinds that take one check it under its own field.
        let entra = config(
            json!({"api_version": "2024-10-21", "deployments": {"m": "d"},
            "auth": "entra_id", "tenant_id": "contoso.onmicrosoft.com", "client_id": "abc",
            "authority": "ftp://x"}),
        );
        assert_eq!(
            azure::Azure.check_config(&entra).unwrap_err().field,
            "config.authority"
        );
        let aws = config(json!({"region": "us-east-1", "control_base_url": "https://u:p@x"}));
        assert_eq!(
            bedrock::Bedrock.check_config(&aws).unwrap_err().field,
            "config.control_base_url"
        );
    }
}
