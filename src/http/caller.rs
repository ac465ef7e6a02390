//! Who is calling the management API: a `full`-scoped key, acting with its owner's role.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use keyward_events::{Role, Scope};

use crate::AppState;
use crate::auth::{self, AuthError};
use crate::commands::Actor;
use crate::http::error::ApiError;
use crate::http::request_id::RequestId;

#[derive(Clone, Debug)]
pub struct Caller {
    pub user_id: String,
    pub username: String,
    pub role: Role,
    pub key_id: String,
    pub request_id: Option<String>,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Admin-only functions are refused with 403 to everyone else.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "this action needs the admin role".to_owned(),
            ))
        }
    }

    /// Whether the caller may see objects owned by `owner_id`. Objects a caller may not see
    /// are reported as not found, never as forbidden, so ids cannot be probed.
    pub fn can_see(&self, owner_id: &str) -> bool {
        self.is_admin() || self.user_id == owner_id
    }

    /// The actor recorded in events: the user, acting through a key.
    pub fn actor(&self) -> Actor {
        Actor {
            id: self.user_id.clone(),
            request_id: self.request_id.clone(),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let presented = auth::presented_key(&parts.headers, false).map_err(unauthorized)?;
        let authed = {
            let live = state.0.live.read();
            auth::authenticate(&live, presented, chrono::Utc::now()).map_err(unauthorized)?
        };
        if !auth::scope_allows(authed.key.scopes(), Scope::Full) {
            return Err(ApiError::Forbidden(
                "the management API needs a key with scope `full`; this key may only use the proxy"
                    .to_owned(),
            ));
        }
        Ok(Caller {
            user_id: authed.owner.user_id.clone(),
            username: authed.owner.username.clone(),
            role: authed.owner.role,
            key_id: authed.key.key_id().to_owned(),
            request_id: parts.extensions.get::<RequestId>().map(|r| r.0.clone()),
        })
    }
}

fn unauthorized(e: AuthError) -> ApiError {
    let detail = match e {
        AuthError::Missing => "send a Keyward key as `Authorization: Bearer kw_…`".to_owned(),
        other => other.to_string(),
    };
    ApiError::Unauthorized(detail)
}

/// A caller with the admin role. As an extractor it runs before the body is read, so a
/// non-admin gets 403 whatever they send, and learns nothing about the body's schema.
#[derive(Clone, Debug)]
pub struct Admin(pub Caller);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.require_admin()?;
        Ok(Admin(caller))
    }
}
