//! Anthropic's own API: the Messages API natively, and OpenAI chat requests translated to
//! it ([`super::messages`]). The credential goes in `x-api-key`.

use async_trait::async_trait;
use axum::http::{HeaderName, HeaderValue};
use keyward_events::ProviderKind;
use keyward_projections::ProviderRecord;
use serde_json::Value;

use super::messages;
use super::wire::{self, Dialect, Endpoint};
use super::{
    AuthorizeError, Framing, Kind, Outgoing, ProxyError, Route, Upstreams, WireSecret,
    misconfigured,
};
use crate::crypto::ProviderSecret;

pub struct Anthropic;

/// The completion bound sent when a request has none: `config.default_max_tokens`, or
/// Keyward's default.
pub fn default_max_tokens(p: &ProviderRecord) -> u64 {
    p.config
        .get("default_max_tokens")
        .and_then(Value::as_u64)
        .filter(|n| *n > 0)
        .unwrap_or(messages::DEFAULT_MAX_TOKENS)
}

#[async_trait]
impl Kind for Anthropic {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Anthropic
    }

    fn label(&self) -> &'static str {
        "Anthropic"
    }

    fn default_base_url(&self) -> &'static str {
        "https://api.anthropic.com"
    }

    fn offers(&self, ep: Endpoint) -> bool {
        ep != Endpoint::Embeddings
    }

    fn route(
        &self,
        p: &ProviderRecord,
        ep: Endpoint,
        _model: &str,
        _stream: bool,
    ) -> Result<Route, ProxyError> {
        let dialect = if ep == Endpoint::Chat {
            Dialect::AnthropicFromOpenAi
        } else {
            Dialect::Anthropic
        };
        let path: &[&str] = if ep == Endpoint::Models {
            &["v1", "models"]
        } else {
            &["v1", "messages"]
        };
        Ok(Route {
            url: wire::join(&p.base_url, path)?,
            dialect,
            framing: Framing::Sse,
            anthropic_body: None,
        })
    }

    fn default_max_tokens(&self, p: &ProviderRecord) -> Option<u64> {
        Some(default_max_tokens(p))
    }

    async fn authorize(
        &self,
        _up: &Upstreams,
        p: &ProviderRecord,
        secret: &ProviderSecret,
        req: &mut Outgoing,
    ) -> Result<Option<WireSecret>, AuthorizeError> {
        super::put_secret_header(
            &mut req.headers,
            HeaderName::from_static("x-api-key"),
            secret.expose(),
        )?;
        // The client's version when it speaks Anthropic's dialect; else the configured one.
        let version = match req.anthropic_version.take() {
            Some(v) => v,
            None => HeaderValue::from_str(
                p.config
                    .get("anthropic_version")
                    .and_then(Value::as_str)
                    .unwrap_or(messages::DEFAULT_VERSION),
            )
            .map_err(|_| misconfigured())?,
        };
        req.headers
            .insert(HeaderName::from_static("anthropic-version"), version);
        Ok(None)
    }
}
