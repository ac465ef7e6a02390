//! What every kind shares on the wire: endpoints and dialects, URL building, the headers
//! that may cross, and what a provider's answer may carry back (scrubbed of credentials).

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use bytes::Bytes;
use keyward_projections::ProviderRecord;
use reqwest::Url;
use serde::Serialize;
use serde_json::{Value, json};

use super::error::ProxyError;
use super::misconfigured;
use super::sse::data_event;

/// Tokens a request used, as the provider reported them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
}

/// The proxy's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Embeddings,
    Messages,
    Models,
}

/// What a provider speaks, for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI's format on both sides, forwarded as it came.
    OpenAi,
    /// Anthropic's format on both sides, forwarded as it came (on Bedrock and Vertex with
    /// the model moved from the body to the URL and the version into the body).
    Anthropic,
    /// An OpenAI client against Anthropic's Messages API: translated both ways.
    AnthropicFromOpenAi,
    /// An OpenAI client against Bedrock's Converse API: translated both ways.
    Converse,
}

/// Whether the provider's enabled list allows the model (an empty list allows every model).
pub fn enabled(p: &ProviderRecord, model: &str) -> bool {
    p.models.is_empty() || p.models.iter().any(|m| m == model)
}

/// `base` with path segments added.
pub fn join(base: &str, segments: &[&str]) -> Result<Url, ProxyError> {
    let mut url = parse_base(base.trim_end_matches('/'))?;
    url.path_segments_mut()
        .map_err(|_| misconfigured())?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// A provider's base URL, parsed. Parsing runs the host through IDNA processing, a
/// noticeable share of a proxied request's CPU, and a worker thread serves the same few
/// providers again and again: each thread keeps its last few parses and clones one when
/// the text matches exactly.
pub fn parse_base(base: &str) -> Result<Url, ProxyError> {
    const KEPT: usize = 8;
    thread_local! {
        static PARSED: std::cell::RefCell<Vec<(String, Url)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    PARSED.with_borrow_mut(|parsed| {
        if let Some(i) = parsed.iter().position(|(text, _)| text == base) {
            // Most recently used last, so a thread serving one provider hits at once.
            let hit = parsed.remove(i);
            let url = hit.1.clone();
            parsed.push(hit);
            return Ok(url);
        }
        let url = Url::parse(base).map_err(|_| misconfigured())?;
        if parsed.len() == KEPT {
            parsed.remove(0);
        }
        parsed.push((base.to_owned(), url.clone()));
        Ok(url)
    })
}

/// The path of an OpenAI-format endpoint below an OpenAI-compatible base URL.
pub fn openai_path(ep: Endpoint) -> &'static [&'static str] {
    match ep {
        Endpoint::Chat => &["chat", "completions"],
        Endpoint::Embeddings => &["embeddings"],
        Endpoint::Models => &["models"],
        Endpoint::Messages => &["messages"],
    }
}

/// A credential as people may see it: a known prefix such as `sk-`, then `…` and its last
/// four characters.
pub fn mask(secret: &str) -> String {
    let prefix = ["sk-ant-", "sk-proj-", "sk-", "gsk_", "AIza"]
        .into_iter()
        .find(|p| secret.starts_with(p) && secret.len() > p.len() + 8)
        .unwrap_or("");
    let chars: Vec<char> = secret.chars().collect();
    let last4: String = chars[chars.len().saturating_sub(4)..].iter().collect();
    format!("{prefix}…{last4}")
}

pub fn model_not_found(model: &str) -> ProxyError {
    ProxyError::new(
        axum::http::StatusCode::NOT_FOUND,
        super::error::INVALID_REQUEST,
        "model_not_found",
        format!(
            "the model `{}` does not exist or this key cannot use it",
            named_model(model)
        ),
    )
    .with_param("model")
}

/// Longest model name a refusal repeats, in characters.
const NAMED_MODEL_MAX: usize = 64;

/// The client's model name as a refusal may repeat it: key-free as [`recorded_model`]
/// makes it, and cut to 64 characters, so an error body never carries a pasted key or
/// echoes a huge field back.
pub fn named_model(model: &str) -> String {
    let clean = recorded_model(model);
    if clean.chars().count() <= NAMED_MODEL_MAX {
        return clean;
    }
    let mut cut: String = clean.chars().take(NAMED_MODEL_MAX).collect();
    cut.push('…');
    cut
}

/// Request headers never sent upstream: hop-by-hop ones, the client's credentials, and
/// the ones the proxy sets itself.
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "authorization",
    "x-api-key",
    "api-key",
    "cookie",
    "accept-encoding",
    "openai-organization",
    "openai-project",
    "anthropic-version",
    "forwarded",
    // Path and method overrides some servers and proxies in front of a provider honour:
    // a client must not pick the provider endpoint that Keyward's credential is sent to.
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-forwarded-prefix",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-host",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
];

/// The client's headers that may go upstream. Any header the client's `Connection`
/// names is hop-by-hop too.
pub fn forwarded_headers(client: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = client
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(client.len());
    for (name, value) in client {
        let n = name.as_str();
        if NOT_FORWARDED.contains(&n) || named.iter().any(|c| c == n) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// Upstream response headers passed on to the client: a few informational ones, and
/// none that carries the credential or a key, whatever the provider put in it.
pub fn response_headers(upstream: &HeaderMap, out: &mut HeaderMap, credential: &str) {
    let clean = |v: &HeaderValue| clean_header(v, credential);
    for name in ["openai-processing-ms", "openai-version"] {
        if let Some(v) = upstream.get(name).filter(|v| clean(v)) {
            out.insert(HeaderName::from_static(name), v.clone());
        }
    }
    if let Some(v) = upstream
        .get("x-request-id")
        .or_else(|| upstream.get("request-id"))
        .filter(|v| clean(v))
    {
        out.insert(HeaderName::from_static("x-upstream-request-id"), v.clone());
    }
}

/// Whether a provider's header value may reach the client: it holds neither the credential
/// nor anything `kw_`.
pub fn clean_header(v: &HeaderValue, credential: &str) -> bool {
    let b = v.as_bytes();
    memchr::memmem::find(b, b"kw_").is_none()
        && (credential.len() < MIN_CREDENTIAL
            || memchr::memmem::find(b, credential.as_bytes()).is_none())
}

const REDACTED: &[u8] = b"[redacted]";
/// A credential shorter than this is not looked for: it would match ordinary text.
const MIN_CREDENTIAL: usize = 4;

/// The client's model name as it may be recorded in an event, a log or a metric: it is
/// free text, and a client that pastes its key into it must not have the key kept in the
/// log forever.
pub fn recorded_model(model: &str) -> String {
    if !model.contains("kw_") {
        return model.to_owned();
    }
    String::from_utf8_lossy(&scrub(model.as_bytes(), "")).into_owned()
}

/// A successful answer with the provider's credential replaced, when a provider echoed it;
/// `None` (no copy) when it did not. Anything else in a success is the model's output and
/// the client's business, so a `kw_` shape is left alone there.
pub fn scrub_credential(body: &[u8], credential: &str) -> Option<Vec<u8>> {
    let cred = credential.as_bytes();
    if cred.len() < MIN_CREDENTIAL {
        return None;
    }
    // memmem's vectorised search: comparing the credential at every offset ran ~15k
    // instructions per proxied answer of ~500 bytes.
    let finder = memchr::memmem::Finder::new(cred);
    let mut at = finder.find(body)?;
    let mut out = Vec::with_capacity(body.len());
    let mut rest = body;
    loop {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(REDACTED);
        rest = &rest[at + cred.len()..];
        match finder.find(rest) {
            Some(next) => at = next,
            None => break,
        }
    }
    out.extend_from_slice(rest);
    Some(out)
}

/// The body with the provider's credential and anything shaped like a Keyward key (`kw_`
/// and at least 8 letters or digits) replaced by `[redacted]`.
pub fn scrub(body: &[u8], credential: &str) -> Vec<u8> {
    let cred = credential.as_bytes();
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if cred.len() >= MIN_CREDENTIAL && body[i..].starts_with(cred) {
            out.extend_from_slice(REDACTED);
            i += cred.len();
            continue;
        }
        if body[i..].starts_with(b"kw_") {
            let run = body[i + 3..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric())
                .count();
            if run >= 8 {
                out.extend_from_slice(REDACTED);
                i += 3 + run;
                continue;
            }
        }
        out.push(body[i]);
        i += 1;
    }
    out
}

/// The tokens an OpenAI-format response body reports.
pub fn openai_tokens(body: &[u8]) -> Option<Tokens> {
    #[derive(serde::Deserialize)]
    struct Body {
        usage: Option<Usage>,
    }
    #[derive(serde::Deserialize)]
    struct Usage {
        #[serde(default)]
        prompt_tokens: u64,
        #[serde(default)]
        completion_tokens: u64,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(Body { usage: Some(u) }) => Some(Tokens {
            prompt: u.prompt_tokens,
            completion: u.completion_tokens,
        }),
        Ok(Body { usage: None }) => Some(Tokens::default()),
        // JSON of another shape (an array, counts that are not numbers) has no tokens to
        // read, but is still an answer; only what is not JSON at all is `None`.
        Err(_) => serde_json::from_slice::<serde::de::IgnoredAny>(body)
            .ok()
            .map(|_| Tokens::default()),
    }
}

/// Seconds since the epoch, for an OpenAI answer's `created`.
pub fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// One OpenAI `chat.completion.chunk` event of a translated stream: one choice with its
/// delta and finish reason, and `usage: null` when the client asked for a usage chunk.
pub fn chat_chunk(
    id: &impl Serialize,
    created: i64,
    model: &impl Serialize,
    delta: Value,
    finish: Option<&str>,
    include_usage: bool,
) -> Bytes {
    let mut c = json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    });
    if include_usage {
        c["usage"] = Value::Null;
    }
    data_event(&c.to_string())
}

/// The end of a translated OpenAI stream: the usage chunk (no choices) when the client
/// asked for it, then `[DONE]`.
pub fn chat_stream_end(
    id: &impl Serialize,
    created: i64,
    model: &impl Serialize,
    usage: Option<Tokens>,
) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(2);
    if let Some(t) = usage {
        let c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": {
                "prompt_tokens": t.prompt,
                "completion_tokens": t.completion,
                "total_tokens": t.prompt.saturating_add(t.completion),
            },
        });
        out.push(data_event(&c.to_string()));
    }
    out.push(data_event("[DONE]"));
    out
}

/// Model ids a provider lists at its models endpoint, in either dialect.
pub fn listed_models(body: &[u8]) -> Option<Vec<String>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    Some(
        v.get("data")?
            .as_array()?
            .iter()
            .filter_map(|m| m.get("id").and_then(Value::as_str).map(str::to_owned))
            .collect(),
    )
}

/// The first provider of the key that offers the endpoint and serves the model.
pub fn choose<'a>(
    providers: &'a [Arc<ProviderRecord>],
    ep: Endpoint,
    model: &str,
) -> Option<&'a Arc<ProviderRecord>> {
    providers.iter().find(|p| {
        let k = super::kind(p.kind);
        k.offers(ep) && k.serves(p, model)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use keyward_events::ProviderKind;
    use serde_json::{Value, json};

    fn provider(kind: ProviderKind, base: &str, config: Value, models: &[&str]) -> ProviderRecord {
        ProviderRecord {
            provider_id: "prv_1".into(),
            name: "p".into(),
            kind,
            base_url: base.into(),
            config: config.as_object().cloned().unwrap_or_default(),
            models: models.iter().map(|m| m.to_string()).collect(),
            credential: None,
            verification: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            deleted_at: None,
            version: 1,
        }
    }

    #[test]
    fn the_credential_is_redacted_wherever_it_appears() {
        // The left-to-right, non-overlapping replacement the search must reproduce.
        fn reference(body: &[u8], cred: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            let mut i = 0;
            while i < body.len() {
                if body[i..].starts_with(cred) {
                    out.extend_from_slice(REDACTED);
                    i += cred.len();
                } else {
                    out.push(body[i]);
                    i += 1;
                }
            }
            out
        }
        let cred = "sk-abab";
        for body in [
            "sk-abab",
            "x sk-abab y sk-abab",
            "sk-ababsk-abab",
            "sk-ababab",
            "{\"e\":\"bad key sk-abab\"}sk-aba",
        ] {
            let got = scrub_credential(body.as_bytes(), cred).expect("found");
            assert_eq!(got, reference(body.as_bytes(), cred.as_bytes()), "{body}");
            assert!(!got.windows(cred.len()).any(|w| w == cred.as_bytes()));
        }
        assert_eq!(scrub_credential(b"nothing here sk-aba", cred), None);
        assert_eq!(
            scrub_credential(b"abc abc", "abc"),
            None,
            "too short to scrub"
        );
    }

    #[test]
    fn a_kept_parse_is_the_same_url_and_a_bad_base_stays_an_error() {
        // More bases than are kept, twice over, so that entries are evicted and parsed again.
        for round in 0..2 {
            for i in 0..12 {
                let base = format!("https://p{i}.example/v1");
                let url = parse_base(&base).unwrap();
                assert_eq!(url, Url::parse(&base).unwrap(), "round {round}, base {i}");
            }
        }
        let twice = parse_base("https://Bücher.example/v1").unwrap();
        assert_eq!(twice.host_str(), Some("xn--bcher-kva.example"));
        assert_eq!(parse_base("https://Bücher.example/v1").unwrap(), twice);
        for _ in 0..2 {
            let e = parse_base("not a url").unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_GATEWAY);
        }
    }

    fn url(p: &ProviderRecord, ep: Endpoint, model: &str) -> Result<(Url, Dialect), ProxyError> {
        super::super::kind(p.kind)
            .route(p, ep, model, false)
            .map(|r| (r.url, r.dialect))
    }

    fn serves(p: &ProviderRecord, model: &str) -> bool {
        super::super::kind(p.kind).serves(p, model)
    }

    fn offers(k: ProviderKind, ep: Endpoint) -> bool {
        super::super::kind(k).offers(ep)
    }

    #[test]
    fn urls_per_kind() {
        let p = provider(
            ProviderKind::Openai,
            "https://api.openai.com/v1/",
            json!({}),
            &[],
        );
        assert_eq!(
            url(&p, Endpoint::Chat, "gpt-4o").unwrap().0.as_str(),
            "https://api.openai.com/v1/chat/completions"
        );
        let g = provider(
            ProviderKind::Gemini,
            "https://generativelanguage.googleapis.com/v1beta/openai",
            json!({}),
            &[],
        );
        assert_eq!(
            url(&g, Endpoint::Embeddings, "x").unwrap().0.as_str(),
            "https://generativelanguage.googleapis.com/v1beta/openai/embeddings"
        );
        let a = provider(
            ProviderKind::AzureOpenai,
            "https://myres.openai.azure.com",
            json!({"api_version": "2024-10-21", "deployments": {"gpt-4o": "prod 4o"}}),
            &[],
        );
        assert_eq!(
            url(&a, Endpoint::Chat, "gpt-4o").unwrap().0.as_str(),
            "https://myres.openai.azure.com/openai/deployments/prod%204o/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(url(&a, Endpoint::Chat, "gpt-5").unwrap_err().status, 404);
        assert!(serves(&a, "gpt-4o") && !serves(&a, "gpt-5"));
        let c = provider(
            ProviderKind::Anthropic,
            "https://api.anthropic.com",
            json!({}),
            &["claude"],
        );
        assert_eq!(
            url(&c, Endpoint::Chat, "claude").unwrap(),
            (
                Url::parse("https://api.anthropic.com/v1/messages").unwrap(),
                Dialect::AnthropicFromOpenAi
            )
        );
        assert!(serves(&c, "claude") && !serves(&c, "gpt-4o"));
        assert!(!offers(ProviderKind::Anthropic, Endpoint::Embeddings));
        assert!(!offers(ProviderKind::Openai, Endpoint::Messages));
    }

    #[test]
    fn client_credentials_and_hop_by_hop_headers_stay_behind() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer kw_x"),
            ("x-api-key", "kw_y"),
            ("api-key", "kw_z"),
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("user-agent", "OpenAI/Python"),
            ("x-stainless-lang", "python"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out = forwarded_headers(&h);
        let names: Vec<_> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(out.contains_key("user-agent") && out.contains_key("x-stainless-lang"));
    }

    #[test]
    fn named_models_are_key_free_and_short() {
        assert_eq!(named_model("gpt-4o-mini"), "gpt-4o-mini");
        let key = keyward_test_key();
        let named = named_model(&format!("gpt-{key}"));
        assert!(!named.contains(&key), "{named}");
        let long = "m".repeat(500);
        let named = named_model(&long);
        assert_eq!(named.chars().count(), NAMED_MODEL_MAX + 1);
        assert!(named.ends_with('…'));
        // Multi-byte characters are cut between characters, not inside one.
        assert_eq!(
            named_model(&"é".repeat(100)).chars().count(),
            NAMED_MODEL_MAX + 1
        );
    }

    fn keyward_test_key() -> String {
        crate::crypto::Secret::generate().expose().to_owned()
    }

    #[test]
    fn recorded_models_never_hold_a_key() {
        let key = crate::crypto::Secret::generate();
        assert_eq!(recorded_model("gpt-4o-mini"), "gpt-4o-mini");
        assert_eq!(recorded_model("kw_short"), "kw_short");
        assert_eq!(
            recorded_model(&format!("x {} y", key.expose())),
            "x [redacted] y"
        );
    }

    #[test]
    fn scrubbing_removes_credentials_and_keys() {
        let key = crate::crypto::Secret::generate();
        let body = format!(
            r#"{{"error":{{"message":"bad key sk-live-abcdef1234 and {} and kw_short"}}}}"#,
            key.expose()
        );
        let out = String::from_utf8(scrub(body.as_bytes(), "sk-live-abcdef1234")).unwrap();
        assert!(!out.contains("sk-live-abcdef1234") && !out.contains(key.expose()));
        assert_eq!(
            out,
            r#"{"error":{"message":"bad key [redacted] and [redacted] and kw_short"}}"#
        );
    }

    #[test]
    fn tokens_from_the_fixtures() {
        assert_eq!(
            openai_tokens(include_bytes!(
                "../../tests/fixtures/openai-chat-completion.json"
            )),
            Some(Tokens {
                prompt: 19,
                completion: 10
            })
        );
        assert_eq!(
            openai_tokens(include_bytes!(
                "../../tests/fixtures/openai-embeddings.json"
            )),
            Some(Tokens {
                prompt: 8,
                completion: 0
            })
        );
        assert_eq!(
            listed_models(include_bytes!("../../tests/fixtures/openai-models.json")).unwrap(),
            ["gpt-4o-mini", "gpt-4.1", "text-embedding-3-small"]
        );
        // JSON of another shape has no tokens but is an answer; only non-JSON is `None`.
        assert_eq!(openai_tokens(b"[1, 2]"), Some(Tokens::default()));
        assert_eq!(
            openai_tokens(br#"{"usage":{"prompt_tokens":-1}}"#),
            Some(Tokens::default())
        );
        assert_eq!(openai_tokens(b"<html>busy</html>"), None);
    }
}
