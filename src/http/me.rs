//! `GET /me`: the caller and their role.

use keyward_events::Role;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::http::caller::Caller;
use crate::http::error::{Json, Problem};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(me))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    pub user_id: String,
    pub username: String,
    #[schema(value_type = String, example = "admin")]
    pub role: Role,
    /// The key this request authenticated with.
    pub key_id: String,
}

/// The caller, their role, and the key they used.
#[utoipa::path(get, path = "/me", tag = "me",
    responses(
        (status = 200, body = Me),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`: under `--usage-durability durable`, the key was refused for its IP allowlist or rate limit and the refusal could not be recorded", body = Problem, content_type = "application/problem+json"),
    ))]
async fn me(caller: Caller) -> Json<Me> {
    Json(Me {
        user_id: caller.user_id,
        username: caller.username,
        role: caller.role,
        key_id: caller.key_id,
    })
}
