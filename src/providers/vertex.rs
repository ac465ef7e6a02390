//! Google Vertex AI. The credential is a service account's JSON key; Keyward signs a JWT
//! with its private key (RS256, `jsonwebtoken`), exchanges it at the key's `token_uri` for
//! an access token, and caches the token until shortly before it expires (one exchange at
//! a time; requests that arrive meanwhile wait for that one). `config.project_id` and
//! `config.location` name where the models run.
//!
//! - Gemini (and every model Vertex serves in OpenAI's format, named as Vertex names them,
//!   `google/gemini-2.0-flash-001`) through Vertex's OpenAI-compatible chat endpoint.
//! - Claude models (`claude-…`) through Vertex's Anthropic endpoint (`:rawPredict`,
//!   `:streamRawPredict`) with `anthropic_version: vertex-2023-10-16` in the body: OpenAI
//!   chat requests translated by [`super::messages`], and `/v1/messages` natively.

use async_trait::async_trait;
use keyward_events::ProviderKind;
use keyward_projections::ProviderRecord;
use serde_json::{Map, Value};

use super::cloudauth::google;
use super::wire::{self, Dialect, Endpoint};
use super::{
    AuthorizeError, Field, Framing, Kind, Outgoing, Problem, ProxyError, Route, Upstreams,
    WireSecret, config_str, misconfigured,
};
use crate::crypto::ProviderSecret;

pub struct Vertex;

/// The version Vertex's Anthropic endpoint wants in the body.
pub const ANTHROPIC_VERSION: &str = "vertex-2023-10-16";

const FIELDS: &[Field] = &[
    Field {
        name: "project_id",
        label: "GCP project ID",
        secret: false,
        required: true,
        hint: "my-project",
    },
    Field {
        name: "location",
        label: "Location",
        secret: false,
        required: true,
        hint: "us-central1",
    },
    Field {
        name: "service_account",
        label: "Service account key (JSON)",
        secret: true,
        required: true,
        hint: "{\"type\": \"service_account\", …}",
    },
];

fn project_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == ':' || c == '.'
}

fn location_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}

/// A Claude model, served through Vertex's Anthropic endpoint.
fn is_claude(model: &str) -> bool {
    let m = model.strip_prefix("anthropic/").unwrap_or(model);
    m.starts_with("claude")
}

#[async_trait]
impl Kind for Vertex {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Vertex
    }

    fn label(&self) -> &'static str {
        "Google Vertex AI"
    }

    fn default_base_url(&self) -> &'static str {
        "https://us-central1-aiplatform.googleapis.com"
    }

    fn fields(&self) -> &'static [Field] {
        FIELDS
    }

    fn structured_credential(&self) -> bool {
        true
    }

    fn check_config(&self, config: &Map<String, Value>) -> Result<(), Problem> {
        super::require_config(
            "vertex",
            config,
            "project_id",
            "my-project",
            63,
            project_char,
        )?;
        super::require_config(
            "vertex",
            config,
            "location",
            "us-central1",
            32,
            location_char,
        )
    }

    fn check_secret(&self, _config: &Map<String, Value>, secret: &str) -> Result<(), Problem> {
        google::parse(secret).map(|_| ()).map_err(|e| {
            Problem::new(
                "api_key",
                format!("vertex's api_key is a service account's JSON key: {e}"),
            )
        })
    }

    /// The service account's address: it names the credential without revealing it.
    fn masked(&self, secret: &ProviderSecret) -> String {
        match google::parse(secret.expose()) {
            Ok(sa) => sa.client_email.clone(),
            Err(_) => "…".to_owned(),
        }
    }

    fn offers(&self, ep: Endpoint) -> bool {
        ep != Endpoint::Embeddings
    }

    fn default_max_tokens(&self, p: &ProviderRecord) -> Option<u64> {
        Some(super::anthropic::default_max_tokens(p))
    }

    fn route(
        &self,
        p: &ProviderRecord,
        ep: Endpoint,
        model: &str,
        stream: bool,
    ) -> Result<Route, ProxyError> {
        let project = config_str(&p.config, "project_id").ok_or_else(misconfigured)?;
        let location = config_str(&p.config, "location").ok_or_else(misconfigured)?;
        let here = ["v1", "projects", project, "locations", location];
        let sse = |url, dialect, anthropic_body| Route {
            url,
            dialect,
            framing: Framing::Sse,
            anthropic_body,
        };
        match ep {
            Endpoint::Models => Ok(sse(
                wire::join(&p.base_url, &["v1beta1", "publishers", "google", "models"])?,
                Dialect::OpenAi,
                None,
            )),
            Endpoint::Embeddings => Err(misconfigured()),
            Endpoint::Chat if !is_claude(model) => {
                let mut segs = here.to_vec();
                segs.extend_from_slice(&["endpoints", "openapi", "chat", "completions"]);
                Ok(sse(wire::join(&p.base_url, &segs)?, Dialect::OpenAi, None))
            }
            Endpoint::Chat | Endpoint::Messages => {
                let m = model.strip_prefix("anthropic/").unwrap_or(model);
                let call = format!(
                    "{m}:{}",
                    if stream {
                        "streamRawPredict"
                    } else {
                        "rawPredict"
                    }
                );
                let mut segs = here.to_vec();
                segs.extend_from_slice(&["publishers", "anthropic", "models", &call]);
                let dialect = if ep == Endpoint::Chat {
                    Dialect::AnthropicFromOpenAi
                } else {
                    Dialect::Anthropic
                };
                Ok(sse(
                    wire::join(&p.base_url, &segs)?,
                    dialect,
                    Some(ANTHROPIC_VERSION),
                ))
            }
        }
    }

    async fn authorize(
        &self,
        up: &Upstreams,
        p: &ProviderRecord,
        secret: &ProviderSecret,
        req: &mut Outgoing,
    ) -> Result<Option<WireSecret>, AuthorizeError> {
        let token = up
            .token_cache(p, secret)
            .get(|| async {
                let sa = google::parse(secret.expose())?;
                up.check_token_url(&sa.token_uri)?;
                google::exchange(&up.check_client, &sa, chrono::Utc::now().timestamp()).await
            })
            .await?;
        super::put_bearer(&mut req.headers, token.value())?;
        Ok(Some(ProviderSecret::new(token.value().to_owned())))
    }

    fn rejected(&self, up: &Upstreams, p: &ProviderRecord, secret: &ProviderSecret) {
        up.token_cache(p, secret).invalidate();
    }

    /// Vertex lists `publishers/google/models/<id>`; clients name them `google/<id>`.
    fn listed_models(&self, body: &[u8]) -> Option<Vec<String>> {
        let v: Value = serde_json::from_slice(body).ok()?;
        Some(
            v.get("publisherModels")?
                .as_array()?
                .iter()
                .filter_map(|m| m.get("name").and_then(Value::as_str))
                .map(|n| match n.strip_prefix("publishers/") {
                    Some(rest) => rest.replacen("/models/", "/", 1),
                    None => n.to_owned(),
                })
                .collect(),
        )
    }
}
