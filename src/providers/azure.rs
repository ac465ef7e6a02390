//! Azure OpenAI: OpenAI's format at `/openai/deployments/{deployment}/…?api-version=`, a
//! deployment per model (`config.deployments`), and one of two authentication methods
//! (`config.auth`):
//! - `api_key` (the default): the credential is the resource's key, in `api-key`;
//! - `entra_id`: the credential is a Microsoft Entra ID application's client secret
//!   (`config.tenant_id`, `config.client_id`), exchanged with the client-credentials grant
//!   for a bearer token that is cached until shortly before it expires.

use async_trait::async_trait;
use axum::http::HeaderName;
use keyward_events::ProviderKind;
use keyward_projections::ProviderRecord;
use serde_json::{Map, Value};

use super::cloudauth::entra;
use super::wire::{self, Dialect, Endpoint};
use super::{
    AuthorizeError, Field, Framing, Kind, Outgoing, Problem, ProxyError, Route, Upstreams,
    WireSecret, config_str, misconfigured,
};
use crate::crypto::ProviderSecret;

pub struct Azure;

const DEFAULT_API_VERSION: &str = "2024-10-21";

const FIELDS: &[Field] = &[
    Field {
        name: "api_version",
        label: "API version",
        secret: false,
        required: true,
        hint: "2024-10-21",
    },
    Field {
        name: "deployments",
        label: "Deployments (model → deployment, JSON)",
        secret: false,
        required: true,
        hint: "{\"gpt-4o\": \"my-gpt-4o\"}",
    },
    Field {
        name: "auth",
        label: "Authentication method: api_key or entra_id",
        secret: false,
        required: false,
        hint: "api_key",
    },
    Field {
        name: "tenant_id",
        label: "Entra ID tenant (entra_id)",
        secret: false,
        required: false,
        hint: "contoso.onmicrosoft.com or a GUID",
    },
    Field {
        name: "client_id",
        label: "Entra ID application (client) id (entra_id)",
        secret: false,
        required: false,
        hint: "00000000-0000-0000-0000-000000000000",
    },
    Field {
        name: "authority",
        label: "Entra ID authority (entra_id)",
        secret: false,
        required: false,
        hint: entra::AUTHORITY,
    },
];

/// How the credential authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    ApiKey,
    EntraId,
}

pub fn auth(config: &Map<String, Value>) -> Auth {
    match config_str(config, "auth") {
        Some("entra_id") => Auth::EntraId,
        _ => Auth::ApiKey,
    }
}

fn deployment<'a>(p: &'a ProviderRecord, model: &str) -> Option<&'a str> {
    p.config
        .get("deployments")
        .and_then(|d| d.get(model))
        .and_then(Value::as_str)
}

fn tenant_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '.'
}

fn id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-'
}

#[async_trait]
impl Kind for Azure {
    fn kind(&self) -> ProviderKind {
        ProviderKind::AzureOpenai
    }

    fn label(&self) -> &'static str {
        "Azure OpenAI"
    }

    fn default_base_url(&self) -> &'static str {
        "https://RESOURCE.openai.azure.com"
    }

    fn fields(&self) -> &'static [Field] {
        FIELDS
    }

    fn check_config(&self, config: &Map<String, Value>) -> Result<(), Problem> {
        match config.get("api_version") {
            Some(Value::String(v)) if !v.trim().is_empty() && v.len() <= 64 => {}
            _ => {
                return Err(Problem::new(
                    "config.api_version",
                    "azure_openai needs config.api_version, e.g. \"2024-10-21\"",
                ));
            }
        }
        let deployments = match config.get("deployments") {
            Some(Value::Object(d)) if !d.is_empty() => d,
            _ => {
                return Err(Problem::new(
                    "config.deployments",
                    "azure_openai needs config.deployments, an object from model name to deployment name, e.g. {\"gpt-4o\": \"my-gpt-4o\"}",
                ));
            }
        };
        for (model, dep) in deployments {
            if dep.as_str().is_none_or(|d| d.trim().is_empty()) {
                return Err(Problem::new(
                    format!("config.deployments.{model}"),
                    "a deployment name must be a non-empty string",
                ));
            }
        }
        match config.get("auth") {
            None => {}
            Some(Value::String(a)) if a == "api_key" || a == "entra_id" => {}
            Some(_) => {
                return Err(Problem::new(
                    "config.auth",
                    "config.auth is \"api_key\" (the default) or \"entra_id\"",
                ));
            }
        }
        if auth(config) == Auth::EntraId {
            super::require_config(
                "entra_id authentication",
                config,
                "tenant_id",
                "contoso.onmicrosoft.com",
                100,
                tenant_char,
            )?;
            super::require_config(
                "entra_id authentication",
                config,
                "client_id",
                "00000000-0000-0000-0000-000000000000",
                64,
                id_char,
            )?;
            super::optional_url(config, "authority", entra::AUTHORITY)?;
        }
        Ok(())
    }

    fn offers(&self, ep: Endpoint) -> bool {
        ep != Endpoint::Messages
    }

    fn serves(&self, p: &ProviderRecord, model: &str) -> bool {
        wire::enabled(p, model) && deployment(p, model).is_some()
    }

    fn configured_models(&self, p: &ProviderRecord) -> Option<Vec<String>> {
        Some(
            p.config
                .get("deployments")
                .and_then(Value::as_object)
                .map(|d| d.keys().cloned().collect())
                .unwrap_or_default(),
        )
    }

    fn names_models(&self) -> bool {
        true
    }

    fn route(
        &self,
        p: &ProviderRecord,
        ep: Endpoint,
        model: &str,
        _stream: bool,
    ) -> Result<Route, ProxyError> {
        let mut url = if ep == Endpoint::Models {
            wire::join(&p.base_url, &["openai", "models"])?
        } else {
            let dep = deployment(p, model).ok_or_else(|| wire::model_not_found(model))?;
            let mut segs = vec!["openai", "deployments", dep];
            segs.extend_from_slice(wire::openai_path(ep));
            wire::join(&p.base_url, &segs)?
        };
        let version = p
            .config
            .get("api_version")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_API_VERSION);
        url.query_pairs_mut().append_pair("api-version", version);
        Ok(Route {
            url,
            dialect: Dialect::OpenAi,
            framing: Framing::Sse,
            anthropic_body: None,
        })
    }

    async fn authorize(
        &self,
        up: &Upstreams,
        p: &ProviderRecord,
        secret: &ProviderSecret,
        req: &mut Outgoing,
    ) -> Result<Option<WireSecret>, AuthorizeError> {
        match auth(&p.config) {
            Auth::ApiKey => {
                super::put_secret_header(
                    &mut req.headers,
                    HeaderName::from_static("api-key"),
                    secret.expose(),
                )?;
                Ok(None)
            }
            Auth::EntraId => {
                let tenant = config_str(&p.config, "tenant_id").ok_or_else(misconfigured)?;
                let client_id = config_str(&p.config, "client_id").ok_or_else(misconfigured)?;
                let authority = config_str(&p.config, "authority").unwrap_or(entra::AUTHORITY);
                let token_url = format!(
                    "{}/{tenant}/oauth2/v2.0/token",
                    authority.trim_end_matches('/')
                );
                let token = up
                    .token_cache(p, secret)
                    .get(|| async {
                        up.check_token_url(&token_url)?;
                        entra::exchange(
                            &up.check_client,
                            authority,
                            tenant,
                            client_id,
                            secret.expose(),
                        )
                        .await
                    })
                    .await?;
                super::put_bearer(&mut req.headers, token.value())?;
                Ok(Some(ProviderSecret::new(token.value().to_owned())))
            }
        }
    }

    fn rejected(&self, up: &Upstreams, p: &ProviderRecord, secret: &ProviderSecret) {
        if auth(&p.config) == Auth::EntraId {
            up.token_cache(p, secret).invalidate();
        }
    }
}
