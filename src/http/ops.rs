//! Operations endpoints: liveness, readiness and the Prometheus metrics.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// The process is up and serving HTTP.
async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Ready to take traffic: the projections are rebuilt, the service is not draining, and
/// the store answers.
async fn readyz(State(state): State<AppState>) -> Response {
    let app = &state.0;
    let head = app.live.head();
    let reason = if !app.is_ready() {
        Some("starting or draining")
    } else if app.store.ping().await.is_err() {
        Some("the event store is unavailable")
    } else {
        None
    };
    match reason {
        None => Json(json!({ "status": "ready", "head_seq": head.seq })).into_response(),
        Some(r) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "reason": r })),
        )
            .into_response(),
    }
}

/// Prometheus metrics, in the OpenMetrics text format that Prometheus negotiates.
async fn metrics(State(state): State<AppState>) -> Response {
    match crate::http::metrics::render(&state.0) {
        Ok(body) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
