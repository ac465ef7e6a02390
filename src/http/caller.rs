//! Who is calling the management API: a `full`-scoped key, acting with its owner's role,
//! and held to the key's restrictions as the proxy holds it.

use std::net::IpAddr;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use keyward_events::{DenyReason, KeyDenied, Role, Scope};

use crate::AppState;
use crate::auth::{self, AuthError, Restricted};
use crate::commands::Actor;
use crate::http::error::ApiError;
use crate::http::proxy::limits::RateDecision;
use crate::http::request_id::RequestId;

#[derive(Clone, Debug)]
pub struct Caller {
    pub user_id: String,
    pub username: String,
    pub role: Role,
    pub key_id: String,
    pub request_id: Option<String>,
}

/// The problem `code` of a write refused to an auditor.
pub const READ_ONLY_CODE: &str = "auditor_read_only";

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    pub fn is_auditor(&self) -> bool {
        self.role == Role::Auditor
    }

    /// Whether the caller reads every object: an admin or an auditor.
    pub fn reads_everything(&self) -> bool {
        self.is_admin() || self.is_auditor()
    }

    /// Reads of everything (users, providers, the whole log) are refused with 403 to a
    /// plain user.
    pub fn require_reads_everything(&self) -> Result<(), ApiError> {
        if self.reads_everything() {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "this needs the admin or the auditor role".to_owned(),
            ))
        }
    }

    /// Every change is refused with 403 `auditor_read_only` to an auditor, on their own
    /// objects too: the role reads and changes nothing.
    pub fn require_writer(&self) -> Result<(), ApiError> {
        if self.is_auditor() {
            Err(read_only())
        } else {
            Ok(())
        }
    }

    /// Admin-only functions are refused with 403 to everyone else (an auditor with
    /// `auditor_read_only`: they are all changes).
    pub fn require_admin(&self) -> Result<(), ApiError> {
        self.require_writer()?;
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
        self.reads_everything() || self.user_id == owner_id
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

    /// A key is held to every restriction it carries that applies here, in this order:
    /// status and owner (401), scope `full` (403), the IP allowlist (403
    /// `ip_not_allowed`), no management during a rotation grace (403 `key_rotated`), and
    /// the key's rate limit, whose bucket the proxy shares (429).
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let presented = auth::presented_key(&parts.headers, false).map_err(unauthorized)?;
        let now = chrono::Utc::now();
        let authed = {
            let live = state.0.live.read();
            auth::authenticate(&live, presented, now).map_err(unauthorized)?
        };
        if !auth::scope_allows(authed.key.scopes(), Scope::Full) {
            return Err(ApiError::Forbidden(
                "the management API needs a key with scope `full`; this key may only use the proxy"
                    .to_owned(),
            ));
        }
        let request_id = parts.extensions.get::<RequestId>().map(|r| r.0.clone());
        let ip = auth::client_ip(&parts.extensions);
        let key_id = authed.key.key_id();
        match auth::check_restrictions(&authed.key, ip, now) {
            Ok(()) => {}
            Err(e @ Restricted::Ip(_)) => {
                deny(state, key_id, DenyReason::Ip, parts, ip, &request_id).await?;
                return Err(ApiError::coded(
                    StatusCode::FORBIDDEN,
                    "ip_not_allowed",
                    e.to_string(),
                ));
            }
            Err(e @ Restricted::Rotated) => {
                return Err(ApiError::coded(
                    StatusCode::FORBIDDEN,
                    "key_rotated",
                    e.to_string(),
                ));
            }
        }
        if let Some(rl) = authed.key.rate_limit
            && let RateDecision::Refused { limit, retry_after } =
                state.0.proxy.check_rate(key_id, rl)
        {
            deny(state, key_id, DenyReason::RateLimit, parts, ip, &request_id).await?;
            let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            return Err(ApiError::TooManyRequests {
                detail: format!(
                    "this key is limited to {limit} requests per minute, the management API's included; retry after {secs}s"
                ),
                retry_after_secs: secs,
            });
        }
        let caller = Caller {
            user_id: authed.owner.user_id.clone(),
            username: authed.owner.username.clone(),
            role: authed.owner.role,
            key_id: key_id.to_owned(),
            request_id,
        };
        // Every method but a read is a change, and an auditor makes none: refused here,
        // before the body is read, whatever the route (each write handler checks again).
        if !parts.method.is_safe() {
            caller.require_writer()?;
        }
        Ok(caller)
    }
}

fn read_only() -> ApiError {
    ApiError::coded(
        StatusCode::FORBIDDEN,
        READ_ONLY_CODE,
        "the auditor role reads everything and changes nothing; an admin makes changes",
    )
}

/// Records the refusal as the proxy does (a throttled `key.denied` on the key's usage
/// stream), so that a key tried from the wrong place shows in its history and the log.
async fn deny(
    state: &AppState,
    key_id: &str,
    reason: DenyReason,
    parts: &Parts,
    ip: Option<IpAddr>,
    request_id: &Option<String>,
) -> Result<(), ApiError> {
    tracing::info!(%key_id, ?reason, "management call refused by the key's restrictions");
    let d = KeyDenied {
        key_id: key_id.to_owned(),
        reason,
        endpoint: parts.uri.path().to_owned(),
        model: None,
        client_ip: ip.map(|i| i.to_canonical().to_string()),
        suppressed: 0,
    };
    let recorded = state
        .0
        .proxy
        .record_denial(&state.0.commands.appender, d, request_id.clone())
        .await;
    // Under `--usage-durability durable` a refusal is answered only once it is recorded.
    if recorded {
        Ok(())
    } else {
        Err(ApiError::Unavailable)
    }
}

fn unauthorized(e: AuthError) -> ApiError {
    let detail = match e {
        AuthError::Missing => "send a Keyward key as `Authorization: Bearer kw_…`".to_owned(),
        other => other.to_string(),
    };
    ApiError::Unauthorized(detail)
}

/// A caller who reads everything: an admin or an auditor. Refused with 403 to a user
/// before the handler runs.
#[derive(Clone, Debug)]
pub struct Reader(pub Caller);

impl FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.require_reads_everything()?;
        Ok(Reader(caller))
    }
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
