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
    let span =
        tracing::info_span!("request", request_id = %id, method = %req.method(), path = %path);
    let started = std::time::Instant::now();
    let mut res = tracing::Instrument::instrument(
        async move {
            let res = next.run(req).await;
            let status = res.status().as_u16();
            let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
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
