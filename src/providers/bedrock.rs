//! Amazon Bedrock. The credential is an AWS access key (`access_key_id`,
//! `secret_access_key`, and a `session_token` for temporary credentials); every request is
//! signed with Signature Version 4 by AWS's own `aws-sigv4` crate, for the service
//! `bedrock` in `config.region`. The secret access key never leaves Keyward.
//!
//! - OpenAI chat requests go to the Converse API (`/model/{id}/converse`, streams to
//!   `/converse-stream`), translated both ways by [`super::converse`]; the stream's AWS
//!   event-stream framing is decoded by `aws-smithy-eventstream` ([`super::eventstream`]).
//! - Anthropic's `/v1/messages` goes to InvokeModel (`/model/{id}/invoke`, streams to
//!   `/invoke-with-response-stream`) with `anthropic_version: bedrock-2023-05-31` in the
//!   body, for Claude models.
//! - The models request (and the credential check) lists foundation models at the control
//!   plane, `bedrock.{region}.amazonaws.com/foundation-models`.

use std::time::SystemTime;

use async_trait::async_trait;
use axum::http::{HeaderName, HeaderValue};
use keyward_events::ProviderKind;
use keyward_projections::ProviderRecord;
use serde_json::{Map, Value};

use super::cloudauth::sigv4;
use super::eventstream::Flavour;
use super::wire::{self, Dialect, Endpoint};
use super::{
    AuthorizeError, Field, Framing, Kind, Outgoing, Problem, ProxyError, Route, Upstreams,
    WireSecret, config_str, misconfigured,
};
use crate::crypto::ProviderSecret;

pub struct Bedrock;

/// The version InvokeModel wants in an Anthropic body.
pub const ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";

const FIELDS: &[Field] = &[
    Field {
        name: "region",
        label: "AWS region",
        secret: false,
        required: true,
        hint: "us-east-1",
    },
    Field {
        name: "control_base_url",
        label: "Control-plane URL (model list), if not bedrock.REGION.amazonaws.com",
        secret: false,
        required: false,
        hint: "https://bedrock.us-east-1.amazonaws.com",
    },
    Field {
        name: "access_key_id",
        label: "Access key id",
        secret: true,
        required: true,
        hint: "AKIA…",
    },
    Field {
        name: "secret_access_key",
        label: "Secret access key",
        secret: true,
        required: true,
        hint: "",
    },
    Field {
        name: "session_token",
        label: "Session token (temporary credentials only)",
        secret: true,
        required: false,
        hint: "",
    },
];

/// The characters of a Bedrock model id or ARN that stay as they are in a URL path; the
/// rest (`:` of a version, `/` of an ARN) is percent-encoded, as AWS's SDKs do.
fn path_segment(model: &str) -> String {
    let mut out = String::with_capacity(model.len() + 8);
    for b in model.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The control plane's base URL: `config.control_base_url`, or the runtime's host with
/// `bedrock-runtime.` made `bedrock.`, or (a gateway or a test double serving both) the
/// base URL itself.
fn control_base(p: &ProviderRecord) -> String {
    if let Some(c) = config_str(&p.config, "control_base_url") {
        return c.to_owned();
    }
    match p.base_url.split_once("://bedrock-runtime.") {
        Some((scheme, rest)) => format!("{scheme}://bedrock.{rest}"),
        None => p.base_url.clone(),
    }
}

#[async_trait]
impl Kind for Bedrock {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Bedrock
    }

    fn label(&self) -> &'static str {
        "Amazon Bedrock"
    }

    fn default_base_url(&self) -> &'static str {
        "https://bedrock-runtime.us-east-1.amazonaws.com"
    }

    fn fields(&self) -> &'static [Field] {
        FIELDS
    }

    fn signs_requests(&self) -> bool {
        true
    }

    fn structured_credential(&self) -> bool {
        true
    }

    fn check_config(&self, config: &Map<String, Value>) -> Result<(), Problem> {
        match config.get("region").and_then(Value::as_str) {
            Some(r) if sigv4::valid_region(r) => {}
            _ => {
                return Err(Problem::new(
                    "config.region",
                    "bedrock needs config.region, an AWS region such as \"us-east-1\"",
                ));
            }
        }
        super::optional_url(
            config,
            "control_base_url",
            "https://bedrock.us-east-1.amazonaws.com",
        )
    }

    fn check_secret(&self, _config: &Map<String, Value>, secret: &str) -> Result<(), Problem> {
        sigv4::parse(secret).map(|_| ()).map_err(|e| {
            Problem::new(
                "api_key",
                format!(
                    "bedrock's api_key is an object {{\"access_key_id\", \"secret_access_key\", \"session_token\" (optional)}}: {e}"
                ),
            )
        })
    }

    fn masked(&self, secret: &ProviderSecret) -> String {
        match sigv4::parse(secret.expose()) {
            Ok(c) => {
                let id = c.access_key_id();
                let head: String = id.chars().take(4).collect();
                let tail: String = id
                    .chars()
                    .skip(id.chars().count().saturating_sub(4))
                    .collect();
                format!("{head}…{tail}")
            }
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
        let (base, path, dialect, framing, anthropic_body) = match ep {
            Endpoint::Models => (
                control_base(p),
                "/foundation-models".to_owned(),
                Dialect::OpenAi,
                Framing::Sse,
                None,
            ),
            // `.` and `..` would climb the path the signature is for.
            Endpoint::Chat | Endpoint::Messages if matches!(model, "" | "." | "..") => {
                return Err(wire::model_not_found(model));
            }
            Endpoint::Chat => (
                p.base_url.clone(),
                format!(
                    "/model/{}/{}",
                    path_segment(model),
                    if stream {
                        "converse-stream"
                    } else {
                        "converse"
                    }
                ),
                Dialect::Converse,
                Framing::EventStream(Flavour::Converse),
                None,
            ),
            Endpoint::Messages => (
                p.base_url.clone(),
                format!(
                    "/model/{}/{}",
                    path_segment(model),
                    if stream {
                        "invoke-with-response-stream"
                    } else {
                        "invoke"
                    }
                ),
                Dialect::Anthropic,
                Framing::EventStream(Flavour::InvokeAnthropic),
                Some(ANTHROPIC_VERSION),
            ),
            Endpoint::Embeddings => return Err(misconfigured()),
        };
        let mut url = wire::parse_base(base.trim_end_matches('/'))?;
        let joined = format!("{}{path}", url.path().trim_end_matches('/'));
        url.set_path(&joined);
        Ok(Route {
            url,
            dialect,
            framing,
            anthropic_body,
        })
    }

    async fn authorize(
        &self,
        _up: &Upstreams,
        p: &ProviderRecord,
        secret: &ProviderSecret,
        req: &mut Outgoing,
    ) -> Result<Option<WireSecret>, AuthorizeError> {
        let creds = sigv4::parse(secret.expose())?;
        let region = config_str(&p.config, "region").ok_or_else(misconfigured)?;
        let content_type = req
            .headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let signed_headers: Vec<(&str, &str)> = content_type
            .as_deref()
            .map(|ct| vec![("content-type", ct)])
            .unwrap_or_default();
        let added = sigv4::sign(
            req.method.as_str(),
            req.url.as_str(),
            &signed_headers,
            &req.body,
            region,
            "bedrock",
            &creds,
            SystemTime::now(),
        )?;
        for (name, value) in added {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| misconfigured())?;
            let mut value = HeaderValue::from_str(&value).map_err(|_| misconfigured())?;
            value.set_sensitive(true);
            req.headers.insert(name, value);
        }
        // Nothing secret travels but a session token; the secret key is scrubbed from the
        // answer all the same.
        Ok(Some(ProviderSecret::new(
            creds
                .session_token()
                .unwrap_or(creds.secret_access_key())
                .to_owned(),
        )))
    }

    fn listed_models(&self, body: &[u8]) -> Option<Vec<String>> {
        let v: Value = serde_json::from_slice(body).ok()?;
        Some(
            v.get("modelSummaries")?
                .as_array()?
                .iter()
                .filter_map(|m| m.get("modelId").and_then(Value::as_str).map(str::to_owned))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_cannot_climb_the_path() {
        let now = chrono::Utc::now();
        let p = ProviderRecord {
            provider_id: "prv_1".into(),
            name: "b".into(),
            kind: ProviderKind::Bedrock,
            base_url: "https://bedrock-runtime.us-east-1.amazonaws.com".into(),
            config: serde_json::json!({"region": "us-east-1"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            models: Vec::new(),
            credential: None,
            verification: None,
            created_at: now,
            updated_at: now,
            deleted_at: None,
            version: 1,
        };
        for m in ["..", ".", ""] {
            let e = Bedrock.route(&p, Endpoint::Chat, m, false).unwrap_err();
            assert_eq!(e.status, 404, "{m:?}");
        }
        let r = Bedrock
            .route(&p, Endpoint::Messages, "../../x/y", true)
            .unwrap();
        assert_eq!(
            r.url.path(),
            "/model/..%2F..%2Fx%2Fy/invoke-with-response-stream"
        );
    }

    #[test]
    fn model_ids_are_encoded_as_the_sdks_do() {
        assert_eq!(
            path_segment("anthropic.claude-3-5-sonnet-20240620-v1:0"),
            "anthropic.claude-3-5-sonnet-20240620-v1%3A0"
        );
        assert_eq!(
            path_segment("arn:aws:bedrock:us-east-1::foundation-model/x"),
            "arn%3Aaws%3Abedrock%3Aus-east-1%3A%3Afoundation-model%2Fx"
        );
    }
}
