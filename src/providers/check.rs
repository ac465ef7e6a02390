//! The live check of a provider credential: one GET of the provider's models endpoint,
//! authenticated the way that provider expects.
//!
//! Redirects are not followed, so a credential is only ever sent to the URL an admin
//! entered. What the provider says about a refused credential is passed on, with the
//! credential scrubbed from it: some providers echo part of the key they were given.

use std::time::Duration;

use axum::http::{HeaderMap, Method};
use keyward_projections::ProviderRecord;
use serde_json::Value;

use super::cloudauth::AuthError;
use super::egress::EgressPolicy;
use super::{AuthorizeError, Endpoint, Outgoing, Upstreams};
use crate::crypto::ProviderSecret;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const TIMEOUT: Duration = Duration::from_secs(15);
/// How much of a provider's answer is read: enough for an error message or a model list.
const MAX_BODY: usize = 256 * 1024;
const MAX_DETAIL_CHARS: usize = 500;

/// What the provider answered (the commands record it as `provider.verified`).
pub use crate::commands::CheckResult;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// No answer: the connection failed, timed out, or TLS did not work out.
    #[error("{0}")]
    Unreachable(String),
    /// The request could not even be built (the client, or a header the credential
    /// cannot be sent in).
    #[error("{0}")]
    Request(String),
}

/// The HTTP client for provider checks: connection pool, timeouts, no redirects, no
/// environment proxy, and a resolver that refuses the addresses the egress policy does not
/// permit.
pub fn client(policy: &EgressPolicy) -> Result<reqwest::Client, CheckError> {
    policy
        .client_builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(TIMEOUT)
        .user_agent(concat!("keyward/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
            CheckError::Request(format!(
                "cannot build the HTTP client: {}",
                crate::redact::http_error(&e)
            ))
        })
}

/// `1 model`, `3 models`.
pub fn count(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// Calls the provider's models endpoint with the credential, authorised the way its kind
/// does it (a header, an access token it exchanges the credential for, a signature).
/// `p` may be a provider not yet stored.
pub async fn check(
    up: &Upstreams,
    p: &ProviderRecord,
    secret: &ProviderSecret,
) -> Result<CheckResult, CheckError> {
    let kind = super::kind(p.kind);
    let route = kind
        .route(p, Endpoint::Models, "", false)
        .map_err(|e| CheckError::Request(e.message))?;
    // An address literal never reaches the resolver: it is checked here.
    up.egress
        .check_literal(&route.url)
        .map_err(|e| CheckError::Unreachable(e.to_string()))?;
    let mut out = Outgoing {
        method: Method::GET,
        url: route.url,
        headers: HeaderMap::new(),
        body: bytes::Bytes::new(),
        anthropic_version: None,
    };
    let sent = match kind.authorize(up, p, secret, &mut out).await {
        Ok(sent) => sent,
        Err(AuthorizeError::Proxy(e)) => return Err(CheckError::Request(e.message)),
        Err(AuthorizeError::Token(AuthError::Rejected { status, detail })) => {
            return Ok(CheckResult {
                ok: false,
                status: Some(status),
                detail: Some(truncate(
                    &format!(
                        "the identity provider refused the credential: {}",
                        scrub(&detail, secret)
                    ),
                    MAX_DETAIL_CHARS,
                )),
            });
        }
        Err(AuthorizeError::Token(AuthError::Unreachable(why))) => {
            return Err(CheckError::Unreachable(format!(
                "the identity provider could not be reached: {why}"
            )));
        }
        Err(AuthorizeError::Token(AuthError::Invalid(why))) => {
            return Err(CheckError::Request(why));
        }
    };
    // What was sent is scrubbed from the answer too (an access token, not only the
    // credential).
    let echoed = sent.as_ref().unwrap_or(secret);
    let mut res = up
        .check_client
        .request(out.method, out.url)
        .headers(out.headers)
        .body(out.body)
        .send()
        .await
        .map_err(|e| CheckError::Unreachable(describe(&e)))?;
    let status = res.status();
    let mut body = Vec::new();
    while body.len() < MAX_BODY {
        match res.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            Ok(None) => break,
            Err(e) if status.is_success() => {
                return Err(CheckError::Unreachable(describe(&e)));
            }
            // The status is what matters for a refusal; a cut-off body only loses its reason.
            Err(_) => break,
        }
    }
    let code = status.as_u16();
    if status.is_success() {
        let models = kind.listed_models(&body).map(|m| m.len());
        return Ok(CheckResult {
            ok: true,
            status: Some(code),
            detail: Some(match models {
                Some(n) => format!(
                    "the credential works; the provider lists {}",
                    count(n, "model", "models")
                ),
                None => "the credential works".to_owned(),
            }),
        });
    }
    let detail = if status.is_redirection() {
        let to = res
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("elsewhere");
        format!(
            "the provider redirects to {}; give that URL as base_url (redirects are not followed)",
            scrub(&scrub(to, secret), echoed)
        )
    } else {
        match provider_message(&body) {
            Some(m) => scrub(&scrub(&m, secret), echoed),
            None => format!(
                "the provider answered {code} {}",
                status.canonical_reason().unwrap_or("")
            )
            .trim_end()
            .to_owned(),
        }
    };
    Ok(CheckResult {
        ok: false,
        status: Some(code),
        detail: Some(truncate(&detail, MAX_DETAIL_CHARS)),
    })
}

/// Why a provider could not be reached, without the request's headers (reqwest never
/// prints them) and naming the host.
fn describe(e: &reqwest::Error) -> String {
    let host = e
        .url()
        .map(|u| match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            _ => "the provider".to_owned(),
        })
        .unwrap_or_else(|| "the provider".to_owned());
    if e.is_timeout() {
        return format!("{host} did not answer within {} seconds", TIMEOUT.as_secs());
    }
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    if e.is_connect() {
        format!("cannot connect to {host}: {cause}")
    } else {
        format!("no answer from {host}: {cause}")
    }
}

/// The message of a provider's JSON error: OpenAI, Azure and Groq use
/// `{"error": {"message"}}`, Anthropic `{"type": "error", "error": {"message"}}`, Gemini
/// sometimes wraps it in an array. Otherwise a short plain-text body.
fn provider_message(body: &[u8]) -> Option<String> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let v = match &v {
            Value::Array(a) => a.first().cloned().unwrap_or(Value::Null),
            _ => v,
        };
        let candidates = [
            v.pointer("/error/message"),
            v.get("error").filter(|e| e.is_string()),
            v.get("message"),
            v.get("detail"),
        ];
        return candidates
            .into_iter()
            .flatten()
            .find_map(Value::as_str)
            .map(clean);
    }
    let text = std::str::from_utf8(body).ok()?.trim();
    if text.is_empty() || text.starts_with('<') {
        return None;
    }
    Some(clean(text))
}

fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut t: String = s.chars().take(max).collect();
    t.push('…');
    t
}

/// Removes the credential from a provider's text: the whole of it, and any word that
/// shares eight or more consecutive characters with it (providers echo keys partly masked,
/// such as `sk-abc1****wxyz`).
pub fn scrub(text: &str, secret: &ProviderSecret) -> String {
    const WINDOW: usize = 8;
    let key = secret.expose();
    if key.is_empty() {
        return text.to_owned();
    }
    let text = text.replace(key, "[redacted]");
    let chars: Vec<char> = key.chars().collect();
    let windows: Vec<String> = if chars.len() <= WINDOW {
        vec![key.to_owned()]
    } else {
        chars.windows(WINDOW).map(|w| w.iter().collect()).collect()
    };
    text.split(' ')
        .map(|word| {
            if windows.iter().any(|w| word.contains(w.as_str())) {
                "[redacted]"
            } else {
                word
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_agree_in_number() {
        assert_eq!(count(0, "model", "models"), "0 models");
        assert_eq!(count(1, "model", "models"), "1 model");
        assert_eq!(count(3, "model", "models"), "3 models");
    }

    #[test]
    fn scrub_removes_the_key_and_partial_echoes() {
        let s = ProviderSecret::new("sk-live-1234567890abcdef".into());
        assert_eq!(
            scrub("Incorrect API key provided: sk-live-1234567890abcdef.", &s),
            "Incorrect API key provided: [redacted]."
        );
        assert_eq!(
            scrub("key sk-live-1234****cdef is wrong", &s),
            "key [redacted] is wrong"
        );
        assert_eq!(scrub("invalid x-api-key", &s), "invalid x-api-key");
    }

    #[test]
    fn provider_messages_are_found_in_each_shape() {
        assert_eq!(
            provider_message(br#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error"}}"#),
            Some("Incorrect API key provided".to_owned())
        );
        assert_eq!(
            provider_message(br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#),
            Some("invalid x-api-key".to_owned())
        );
        assert_eq!(
            provider_message(br#"[{"error":{"code":400,"message":"API key not valid"}}]"#),
            Some("API key not valid".to_owned())
        );
        assert_eq!(
            provider_message(b"Unauthorized\n"),
            Some("Unauthorized".to_owned())
        );
        assert_eq!(provider_message(b"<html>nope</html>"), None);
    }

    fn record(
        kind: keyward_events::ProviderKind,
        base: &str,
        config: serde_json::Value,
    ) -> ProviderRecord {
        let now = chrono::Utc::now();
        ProviderRecord {
            provider_id: "prv_1".into(),
            name: "p".into(),
            kind,
            base_url: base.into(),
            config: config.as_object().cloned().unwrap_or_default(),
            models: Vec::new(),
            credential: None,
            verification: None,
            created_at: now,
            updated_at: now,
            deleted_at: None,
            version: 1,
        }
    }

    /// The models request of a kind, as the check and the proxy both build it.
    async fn models_request(p: &ProviderRecord, s: &ProviderSecret) -> (String, HeaderMap) {
        let up = Upstreams::new(
            EgressPolicy::new(Vec::new()),
            std::time::Duration::from_secs(1),
        )
        .unwrap();
        let kind = super::super::kind(p.kind);
        let route = kind.route(p, Endpoint::Models, "", false).unwrap();
        let mut out = Outgoing {
            method: Method::GET,
            url: route.url,
            headers: HeaderMap::new(),
            body: bytes::Bytes::new(),
            anthropic_version: None,
        };
        kind.authorize(&up, p, s, &mut out).await.unwrap();
        (out.url.to_string(), out.headers)
    }

    #[tokio::test]
    async fn each_kind_gets_its_endpoint_and_header() {
        use keyward_events::ProviderKind;
        use serde_json::json;
        let s = ProviderSecret::new("k-123".into());
        let azure = record(
            ProviderKind::AzureOpenai,
            "https://x.openai.azure.com/",
            json!({"api_version": "2024-10-21", "deployments": {"gpt-4o": "d"}}),
        );
        let (u, h) = models_request(&azure, &s).await;
        assert_eq!(
            u,
            "https://x.openai.azure.com/openai/models?api-version=2024-10-21"
        );
        assert_eq!(h["api-key"], "k-123");
        let anth = record(
            ProviderKind::Anthropic,
            "https://api.anthropic.com",
            json!({}),
        );
        let (u, h) = models_request(&anth, &s).await;
        assert_eq!(u, "https://api.anthropic.com/v1/models");
        assert_eq!(h["x-api-key"], "k-123");
        assert_eq!(
            h["anthropic-version"],
            super::super::messages::DEFAULT_VERSION
        );
        let groq = record(
            ProviderKind::Groq,
            "https://api.groq.com/openai/v1",
            json!({}),
        );
        let (u, h) = models_request(&groq, &s).await;
        assert_eq!(u, "https://api.groq.com/openai/v1/models");
        assert_eq!(h["authorization"], "Bearer k-123");
        assert!(h["authorization"].is_sensitive());
        // Bedrock: the control plane's foundation models, signed with SigV4.
        let aws = ProviderSecret::new(
            json!({"access_key_id": "AKIDEXAMPLE12345", "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"})
                .to_string(),
        );
        let bedrock = record(
            ProviderKind::Bedrock,
            "https://bedrock-runtime.eu-west-1.amazonaws.com",
            json!({"region": "eu-west-1"}),
        );
        let (u, h) = models_request(&bedrock, &aws).await;
        assert_eq!(
            u,
            "https://bedrock.eu-west-1.amazonaws.com/foundation-models"
        );
        let auth = h["authorization"].to_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE12345/")
                && auth.contains("/eu-west-1/bedrock/aws4_request"),
            "{auth}"
        );
        assert!(h["authorization"].is_sensitive() && h.contains_key("x-amz-date"));
        assert!(!auth.contains("wJalrXUtnFEMI"));
    }
}
