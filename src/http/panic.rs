//! A panic in a handler becomes a generic 500 in the surface's own error format, instead
//! of a dropped connection. The panic's message is not logged or sent: it is free text and
//! could hold anything, a secret included. Where it happened is logged.

use std::panic::AssertUnwindSafe;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::FutureExt;

use crate::http::error::ApiError;
use crate::providers::error::{ProxyError, UPSTREAM};

/// The proxy's paths answer in OpenAI's error shape, the rest in problem+json.
fn is_proxy_path(path: &str) -> bool {
    path == "/work" || path.starts_with("/v1/")
}

pub async fn layer(req: Request, next: Next) -> Response {
    let proxy = is_proxy_path(req.uri().path());
    match AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(res) => res,
        Err(_) => {
            tracing::error!("a handler panicked; answered 500");
            if proxy {
                ProxyError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    UPSTREAM,
                    "internal_error",
                    "an internal error occurred; it has been logged",
                )
                .into_response()
            } else {
                ApiError::Internal("a handler panicked".to_owned()).into_response()
            }
        }
    }
}

/// Replaces the default panic hook, which prints the panic's message to stderr, with one
/// that logs only where the panic happened.
pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(%location, "panic (its message is not logged: it could hold a secret)");
    }));
}
