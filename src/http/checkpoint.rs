//! Signed checkpoints over HTTP: the public key that verifies them, and the latest one
//! (see [`crate::checkpoint`]).

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::http::caller::Caller;
use crate::http::error::{ApiError, Json, Problem};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(audit_public_key))
        .routes(routes!(audit_checkpoint_latest))
}

/// The key that verifies this service's signed checkpoints.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublicKey {
    /// The key's name.
    pub name: String,
    /// The C2SP verifier key, `<name>+<hash>+<base64>`: give it to
    /// `keyward audit verify --public-key` or any signed-note verifier.
    pub key: String,
    /// The origin line of the checkpoints it signs.
    pub origin: String,
}

fn no_key() -> ApiError {
    ApiError::coded(
        StatusCode::NOT_FOUND,
        "no_checkpoint_key",
        "this service has no checkpoint key, so it signs no checkpoints (KEYWARD_CHECKPOINT_KEY)",
    )
}

/// The public key of the signed checkpoints (admin only).
#[utoipa::path(get, path = "/audit/public-key", tag = "audit",
    responses(
        (status = 200, body = PublicKey),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`: under `--usage-durability durable`, the key was refused for its IP allowlist or rate limit and the refusal could not be recorded", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`no_checkpoint_key`: no checkpoints are signed", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn audit_public_key(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Json<PublicKey>, ApiError> {
    caller.require_reads_everything()?;
    let key = app.0.checkpoint_key.as_ref().ok_or_else(no_key)?;
    let v = key.verifier();
    Ok(Json(PublicKey {
        name: v.name().to_owned(),
        key: v.to_text(),
        origin: key.origin.clone(),
    }))
}

/// The latest signed checkpoint, as the C2SP signed note `serve` wrote (admin only).
#[utoipa::path(get, path = "/audit/checkpoint/latest", tag = "audit",
    responses(
        (status = 200, description = "The signed note", body = String, content_type = "text/plain"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`: under `--usage-durability durable`, the key was refused for its IP allowlist or rate limit and the refusal could not be recorded", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`no_checkpoint_key`: no checkpoints are signed; `no_checkpoint`: none written yet", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn audit_checkpoint_latest(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require_reads_everything()?;
    app.0.checkpoint_key.as_ref().ok_or_else(no_key)?;
    crate::http::audit::record_audit_read(
        &app,
        &caller,
        crate::http::audit::ReadOf {
            kind: keyward_events::AuditReadKind::Checkpoint,
            filter: None,
            after_seq: None,
            until_seq: None,
        },
    )
    .await?;
    let none = || {
        ApiError::coded(
            StatusCode::NOT_FOUND,
            "no_checkpoint",
            "no signed checkpoint has been written yet",
        )
    };
    let dir = app.0.config.checkpoint.dir.clone().ok_or_else(none)?;
    let path = dir.join(crate::checkpoint::LATEST);
    let text = match tokio::fs::read_to_string(&path).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(none()),
        Err(e) => {
            return Err(ApiError::Internal(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    let mut res = text.into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}
