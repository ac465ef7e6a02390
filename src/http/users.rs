//! Users (admins change them, auditors read them): who may hold keys, with which role. Disabling a user stops all of
//! their keys at once.

use std::fmt;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::Utc;
use keyward_events::Role;
use keyward_projections::{State as Projections, UserRecord};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use zeroize::Zeroizing;

use crate::AppState;
use crate::commands::{UserPatch, key_is_live};
use crate::http::caller::{Admin, Reader};
use crate::http::error::{ApiError, Json, Problem, Query};
use crate::http::schema::RoleSchema;
use crate::time;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_user, list_users))
        .routes(routes!(get_user, update_user))
}

const MIN_PASSWORD: usize = 12;
const MAX_PASSWORD: usize = 1024;

// ---------- views ----------

/// A user. The password hash is never part of it.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: String,
    pub username: String,
    #[schema(value_type = RoleSchema)]
    pub role: Role,
    /// A disabled user's keys do not work.
    pub disabled: bool,
    /// Whether a password is set.
    pub has_password: bool,
    /// How many of the user's keys still work (active or in their rotation grace).
    pub active_keys: usize,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// The user stream's version.
    pub version: u64,
}

fn view(u: &UserRecord, state: &Projections) -> UserView {
    let now = Utc::now();
    UserView {
        id: u.user_id.clone(),
        username: u.username.clone(),
        role: u.role,
        disabled: u.disabled,
        has_password: u.password.is_some(),
        active_keys: state
            .keys
            .by_owner(&u.user_id)
            .filter(|k| key_is_live(k, now))
            .count(),
        created_at: time::format(&u.created_at),
        updated_at: time::format(&u.updated_at),
        version: u.version,
    }
}

fn live_view(app: &AppState, u: &UserRecord) -> UserView {
    view(u, &app.0.live.read())
}

fn find(app: &AppState, id: &str) -> Result<Arc<UserRecord>, ApiError> {
    app.0
        .live
        .read()
        .users
        .get(id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("user {id} was not found")))
}

// ---------- validation ----------

/// A password in a request body. Zeroed on drop; its `Debug` prints nothing.
pub struct Password(Zeroizing<String>);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for Password {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Password(Zeroizing::new(s)))
    }
}

fn check_username(s: &str) -> Result<String, ApiError> {
    if let Some(c) = crate::names::hidden_char(s) {
        return Err(crate::http::keys::hidden_char_error("username", c));
    }
    if let Some(why) = crate::names::username_problem(s) {
        return Err(ApiError::invalid("username", why));
    }
    Ok(s.to_owned())
}

/// Checks the length and hashes with argon2id off the async runtime.
pub(crate) async fn hash_password(p: Password) -> Result<crate::crypto::PasswordHash, ApiError> {
    let n = p.0.chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&n) {
        return Err(ApiError::invalid(
            "password",
            format!("password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters"),
        ));
    }
    tokio::task::spawn_blocking(move || crate::crypto::hash_password(&p.0))
        .await
        .map_err(|e| ApiError::Internal(format!("password hashing task: {e}")))?
        .map_err(|e| ApiError::Internal(format!("password hashing: {e}")))
        .map(crate::crypto::PasswordHash::new)
}

// ---------- routes ----------

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// 1 to 64 of letters, digits, `.`, `_` and `-`; unique regardless of case.
    pub username: String,
    #[schema(value_type = RoleSchema)]
    pub role: Role,
    /// 12 to 1024 characters; stored as an argon2id hash and never returned.
    #[schema(value_type = Option<String>, write_only)]
    pub password: Option<Password>,
}

/// Create a user.
#[utoipa::path(post, path = "/users", tag = "users", request_body = CreateUser,
    responses(
        (status = 201, body = UserView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn create_user(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Json(req): Json<CreateUser>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let username = check_username(&req.username)?;
    let password_hash = match req.password {
        Some(p) => Some(hash_password(p).await?),
        None => None,
    };
    let u = app
        .0
        .commands
        .create_user(&caller.actor(), &username, req.role, password_hash)
        .await?;
    Ok((StatusCode::CREATED, Json(live_view(&app, &u))))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListUsers {
    /// A case-insensitive search in the username.
    pub q: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1 to 500; default 100.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserList {
    pub users: Vec<UserView>,
    pub next_cursor: Option<String>,
}

/// Every user, in creation order.
#[utoipa::path(get, path = "/users", tag = "users", params(ListUsers),
    responses(
        (status = 200, body = UserList),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`: under `--usage-durability durable`, the key was refused for its IP allowlist or rate limit and the refusal could not be recorded", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn list_users(
    State(app): State<AppState>,
    Reader(_caller): Reader,
    Query(q): Query<ListUsers>,
) -> Result<Json<UserList>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest {
            detail: "limit must be between 1 and 500".to_owned(),
            field: Some("limit".into()),
        });
    }
    let needle = q.q.as_deref().map(str::to_lowercase);
    let state = app.0.live.read();
    let mut users: Vec<&Arc<UserRecord>> = state
        .users
        .iter()
        .filter(|u| {
            needle
                .as_deref()
                .is_none_or(|n| u.username.to_lowercase().contains(n))
        })
        .filter(|u| q.cursor.as_deref().is_none_or(|c| u.user_id.as_str() > c))
        .collect();
    // User ids are ULIDs: id order is creation order.
    users.sort_unstable_by(|a, b| a.user_id.cmp(&b.user_id));
    let more = users.len() > limit;
    users.truncate(limit);
    Ok(Json(UserList {
        next_cursor: if more {
            users.last().map(|u| u.user_id.clone())
        } else {
            None
        },
        users: users.into_iter().map(|u| view(u, &state)).collect(),
    }))
}

/// One user.
#[utoipa::path(get, path = "/users/{id}", tag = "users",
    params(("id" = String, Path, description = "The user id, usr_…")),
    responses(
        (status = 200, body = UserView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`: under `--usage-durability durable`, the key was refused for its IP allowlist or rate limit and the refusal could not be recorded", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn get_user(
    State(app): State<AppState>,
    Reader(_caller): Reader,
    Path(id): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    let u = find(&app, &id)?;
    Ok(Json(live_view(&app, &u)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    #[schema(value_type = Option<RoleSchema>)]
    pub role: Option<Role>,
    /// `true` disables the user and expires every key of theirs that still works (reason
    /// `owner_disabled`); `false` enables them again, and expired keys stay expired.
    pub disabled: Option<bool>,
    /// A new password, 12 to 1024 characters.
    #[schema(value_type = Option<String>, write_only)]
    pub password: Option<Password>,
}

/// Change a user's role, password or disabled state. An admin cannot disable or demote
/// themselves (409): another admin must.
#[utoipa::path(patch, path = "/users/{id}", tag = "users", request_body = UpdateUser,
    params(("id" = String, Path, description = "The user id, usr_…")),
    responses(
        (status = 200, body = UserView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn update_user(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<String>,
    Json(req): Json<UpdateUser>,
) -> Result<Json<UserView>, ApiError> {
    find(&app, &id)?;
    if req.role.is_none() && req.disabled.is_none() && req.password.is_none() {
        return Err(ApiError::Unprocessable {
            detail: "the request changes nothing".to_owned(),
            field: None,
        });
    }
    let password_hash = match req.password {
        Some(p) => Some(hash_password(p).await?),
        None => None,
    };
    let (u, _expired) = app
        .0
        .commands
        .update_user(
            &caller.actor(),
            &id,
            UserPatch {
                role: req.role,
                disabled: req.disabled,
                password_hash,
            },
        )
        .await?;
    Ok(Json(live_view(&app, &u)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_short_and_plain() {
        assert!(check_username("alice.b-c_1").is_ok());
        for bad in ["", "a b", "ålice", "a/b", &"x".repeat(65)] {
            assert!(check_username(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passwords_do_not_debug_print() {
        let p: Password = serde_json::from_str("\"correct horse battery\"").unwrap();
        assert_eq!(format!("{p:?}"), "Password(<redacted>)");
    }
}
