//! A request id on every request: the client's `x-request-id` when it is sane, otherwise a
//! new `req_<ULID>`. It is returned in the response header, recorded in events, and is a
//! field of the span every log line of the request is written in.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

pub const HEADER: &str = "x-request-id";

#[derive(Clone, Debug)]
pub struct RequestId(pub String);

fn sane(v: &str) -> bool {
    (1..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
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
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| sane(v))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("req_{}", ulid::Ulid::new()));
    req.extensions_mut().insert(RequestId(id.clone()));
    let path = req.uri().path();
    // Probes and scrapes come every few seconds; an access line each would drown the rest.
    let quiet = matches!(path, "/healthz" | "/readyz" | "/metrics");
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %loggable_path(path));
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
