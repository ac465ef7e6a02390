//! A request id on every request: always Keyward's own, a new `req_<ULID>`. It is returned
//! in the `x-request-id` response header, recorded in events, and is a field of the span
//! every log line of the request is written in.
//!
//! A client's own `x-request-id` never becomes Keyward's: it is free text, recorded in
//! the immutable log it could never be taken back, and clients paste keys into headers by
//! mistake. When it passes [`client_id_safe`] (a short id in a plain alphabet that looks
//! like no secret) it is kept apart, as `client_request_id` in the request's span and
//! echoed in the `x-client-request-id` response header; otherwise it is dropped.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

pub const HEADER: &str = "x-request-id";
/// Where a client's own request id comes back, when it is kept.
pub const CLIENT_HEADER: &str = "x-client-request-id";

/// Keyward's id of a request.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// The client's `x-request-id`, when [`client_id_safe`] keeps it.
#[derive(Clone, Debug)]
pub struct ClientRequestId(pub String);

/// The longest client request id kept: a UUID is 36 characters, a prefixed ULID 30.
const MAX_CLIENT_ID: usize = 64;
/// The longest run of letters and digits kept in a client id: a ULID is 26, a UUID's
/// longest group 12. A longer run is what a token looks like (an Azure key is 32 hex
/// digits, most others longer).
const MAX_CLIENT_RUN: usize = 26;
/// A run longer than this that mixes upper and lower case is a base62/base64 token.
const MAX_MIXED_CASE_RUN: usize = 12;
/// Prefixes of well-known credentials, Keyward's own first. Compared without case.
const SECRET_MARKERS: &[&str] = &[
    "kw_",
    "sk-",
    "sk_",
    "pk_",
    "rk_",
    "ghp_",
    "gho_",
    "ghs_",
    "github_pat",
    "glpat",
    "xox",
    "akia",
    "asia",
    "aiza",
    "hf_",
    "bearer",
    "basic",
    "token",
    "secret",
    "passw",
    "key-",
    "key_",
];

/// Whether a client's request id may be kept: 1 to 64 characters of letters, digits and
/// `-_.:`, no run of letters and digits longer than a ULID, no mixed-case run longer than
/// 12, and none of the prefixes credentials start with. Anything else is dropped, never
/// stored or logged: a false refusal costs a client its correlation id, a false acceptance
/// would keep a secret in the log for ever.
pub fn client_id_safe(v: &str) -> bool {
    if !(1..=MAX_CLIENT_ID).contains(&v.len())
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        return false;
    }
    let lower = v.to_ascii_lowercase();
    if SECRET_MARKERS.iter().any(|m| lower.contains(m)) {
        return false;
    }
    v.split(|c: char| !c.is_ascii_alphanumeric()).all(|run| {
        let mixed = run.bytes().any(|b| b.is_ascii_uppercase())
            && run.bytes().any(|b| b.is_ascii_lowercase());
        run.len() <= MAX_CLIENT_RUN && !(mixed && run.len() > MAX_MIXED_CASE_RUN)
    })
}

/// The path as it may be logged. A client can put anything in a path, a key included
/// (`/api/v1/keys/kw_…` by mistake): only short plain segments and the ids Keyward issues
/// are kept; any other segment becomes `[redacted]`.
pub fn loggable_path(path: &str) -> std::borrow::Cow<'_, str> {
    redact_words(path, '/')
}

/// An id Keyward issues: `key_`, `prv_` or `usr_` and a ULID.
fn issued_id(seg: &str) -> bool {
    ["key_", "prv_", "usr_"].iter().any(|p| {
        seg.strip_prefix(p).is_some_and(|u| {
            u.len() == 26
                && u.bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
        })
    })
}

fn plain(seg: &str) -> bool {
    seg.len() <= 24
        && seg.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
}

/// `text` with each `sep`-separated part kept if it is short and plain or an issued id,
/// and `[redacted]` otherwise.
pub fn redact_words(text: &str, sep: char) -> std::borrow::Cow<'_, str> {
    if text.split(sep).all(|seg| plain(seg) || issued_id(seg)) {
        return std::borrow::Cow::Borrowed(text);
    }
    let out: Vec<&str> = text
        .split(sep)
        .map(|seg| {
            if plain(seg) || issued_id(seg) {
                seg
            } else {
                "[redacted]"
            }
        })
        .collect();
    std::borrow::Cow::Owned(out.join(&sep.to_string()))
}

pub async fn layer(mut req: Request, next: Next) -> Response {
    let id = format!("req_{}", ulid::Ulid::new());
    let client = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| client_id_safe(v))
        .map(str::to_owned);
    req.extensions_mut().insert(RequestId(id.clone()));
    if let Some(c) = &client {
        req.extensions_mut().insert(ClientRequestId(c.clone()));
    }
    let path = req.uri().path();
    // Probes and scrapes come every few seconds; an access line each would drown the rest.
    // A proxied request (`/v1/…`) is recorded as its `key.used` or `key.denied` event, with
    // the request id, status, latency and client address; its access line (and its span,
    // whose fields the formatter would otherwise render for every request) are `debug`, so
    // the default log costs the hot path nothing. Its warnings name the request id.
    let quiet = matches!(path, "/healthz" | "/readyz" | "/metrics") || path.starts_with("/v1/");
    let span = if quiet {
        tracing::debug_span!("request", request_id = %id, client_request_id = client.as_deref(), method = %req.method(), path = %loggable_path(path))
    } else {
        tracing::info_span!("request", request_id = %id, client_request_id = client.as_deref(), method = %req.method(), path = %loggable_path(path))
    };
    let started = std::time::Instant::now();
    let mut res = tracing::Instrument::instrument(
        async move {
            let res = next.run(req).await;
            let status = res.status().as_u16();
            let latency_ms = millis(started.elapsed());
            if quiet {
                tracing::debug!(status, latency_ms, "request finished");
            } else {
                tracing::info!(status, latency_ms, "request finished");
            }
            res
        },
        span,
    )
    .await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(HEADER, v);
    }
    if let Some(v) = client.and_then(|c| HeaderValue::from_str(&c).ok()) {
        res.headers_mut().insert(CLIENT_HEADER, v);
    }
    res
}

/// Milliseconds to the microsecond, for a log line: `2.396`, not `2.3961400000000004`
/// (a whole number of microseconds divided by 1000 prints as its short decimal).
pub fn millis(d: std::time::Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_that_look_like_secrets_are_dropped() {
        for ok in [
            "crash-7-123",
            "550e8400-e29b-41d4-a716-446655440000",
            "req_01J00000000000000000000000",
            "01J00000000000000000000000",
            "trace:abc.def-42",
            "MyApp-Retry-3",
        ] {
            assert!(client_id_safe(ok), "{ok}");
        }
        let key = crate::crypto::Secret::generate();
        for bad in [
            key.expose(),
            "KW_abc",
            "sk-proj-abc",
            "x-sk-ant-api03-abc",
            "ghp_abcdef",
            "AKIAIOSFODNN7EXAMPLE",
            "AIzaSyA-bc",
            "Bearer-abc",
            // An Azure key: 32 hex digits, one run.
            "0123456789abcdef0123456789abcdef",
            // A base64-ish token in mixed case.
            "aB3dE5gH7jK9mN",
            "",
            &"a".repeat(65),
            "with space",
            "new\nline",
            "é",
        ] {
            assert!(!client_id_safe(bad), "{bad}");
        }
    }

    #[test]
    fn latencies_are_logged_to_the_microsecond_without_float_noise() {
        use std::time::Duration;
        assert_eq!(millis(Duration::from_nanos(2_396_140)).to_string(), "2.396");
        assert_eq!(millis(Duration::from_micros(400)).to_string(), "0.4");
        for us in (0..200_000u64).step_by(7) {
            let text = millis(Duration::from_micros(us)).to_string();
            let decimals = text.split('.').nth(1).map_or(0, str::len);
            assert!(decimals <= 3, "{us} us logged as {text}");
        }
    }

    #[test]
    fn logged_paths_keep_routes_and_ids_and_drop_anything_else() {
        for p in [
            "/api/v1/keys/key_01J00000000000000000000000/rotate",
            "/v1/chat/completions",
            "/api/v1/providers/prv_01J00000000000000000000000",
            "/healthz",
        ] {
            assert_eq!(loggable_path(p), p);
        }
        let key = crate::crypto::Secret::generate();
        assert_eq!(
            loggable_path(&format!("/api/v1/keys/{}/events", key.expose())),
            "/api/v1/keys/[redacted]/events"
        );
        assert_eq!(
            loggable_path("/api/v1/providers/sk-proj-AbCdEf0123456789"),
            "/api/v1/providers/[redacted]"
        );
        assert_eq!(
            loggable_path("/x/0123456789abcdef0123456789abcdef"),
            "/x/[redacted]"
        );
    }
}
