//! Authentication: a presented secret → its key in the live projection → the checks that
//! every surface shares. No database read: the proxy's hot path goes through here.

use std::sync::Arc;

use keyward_events::{DenyReason, Scope};
use keyward_projections::{KeyRecord, KeyStatus, State, UserRecord};

use crate::crypto::{self, SecretError};
use crate::time::Timestamp;

/// A key that authenticated, and its owner.
#[derive(Clone, Debug)]
pub struct Authed {
    pub key: Arc<KeyRecord>,
    pub owner: Arc<UserRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no API key was presented")]
    Missing,
    #[error("the API key is malformed: {0}")]
    Malformed(SecretError),
    #[error("the API key is not valid")]
    Unknown,
    /// A known key that may not be used any more; the key id is safe to log and record.
    #[error("the API key is {}", refusal_text(*.reason))]
    Refused { key_id: String, reason: DenyReason },
}

fn refusal_text(r: DenyReason) -> &'static str {
    match r {
        DenyReason::Expired => "expired",
        DenyReason::Deleted => "deleted",
        DenyReason::OwnerDisabled => "disabled because its owner is disabled",
        _ => "not allowed",
    }
}

/// Parses and checks a presented secret against the live state at `now`. Expiry is
/// compared with the clock on every call, not only when the sweeper has run.
pub fn authenticate(state: &State, presented: &str, now: Timestamp) -> Result<Authed, AuthError> {
    crypto::check(presented).map_err(AuthError::Malformed)?;
    let hash = crypto::hash_secret(presented);
    let key = state.keys.by_secret_hash(&hash).ok_or(AuthError::Unknown)?;
    let refuse = |reason| AuthError::Refused {
        key_id: key.key_id().to_owned(),
        reason,
    };
    match key.status(now) {
        KeyStatus::Active | KeyStatus::Grace => {}
        KeyStatus::Expired => return Err(refuse(DenyReason::Expired)),
        KeyStatus::Deleted => return Err(refuse(DenyReason::Deleted)),
    }
    let owner = state.users.get(key.owner_id()).ok_or(AuthError::Unknown)?;
    if owner.disabled {
        return Err(refuse(DenyReason::OwnerDisabled));
    }
    Ok(Authed {
        key: key.clone(),
        owner: owner.clone(),
    })
}

/// Whether a key's scopes allow what `needed` stands for. `full` includes `chat`, and both
/// include `read`.
pub fn scope_allows(scopes: &[Scope], needed: Scope) -> bool {
    scopes.iter().any(|s| match needed {
        Scope::Read => true,
        Scope::Chat => matches!(s, Scope::Chat | Scope::Full),
        Scope::Full => matches!(s, Scope::Full),
    })
}

/// The presented key from `Authorization: Bearer`, `x-api-key` or `api-key`. The scheme is
/// matched case-insensitively; two Authorization headers are ambiguous and refused.
pub fn presented_key(
    headers: &axum::http::HeaderMap,
    allow_alternatives: bool,
) -> Result<&str, AuthError> {
    let mut auth = headers.get_all(axum::http::header::AUTHORIZATION).iter();
    if let Some(v) = auth.next() {
        if auth.next().is_some() {
            return Err(AuthError::Unknown);
        }
        let v = v.to_str().map_err(|_| AuthError::Unknown)?;
        let (scheme, rest) = v.split_once(' ').ok_or(AuthError::Unknown)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Unknown);
        }
        return Ok(rest.trim());
    }
    if allow_alternatives {
        for name in ["x-api-key", "api-key"] {
            let mut vals = headers.get_all(name).iter();
            if let Some(v) = vals.next() {
                if vals.next().is_some() {
                    return Err(AuthError::Unknown);
                }
                return v.to_str().map(str::trim).map_err(|_| AuthError::Unknown);
            }
        }
    }
    Err(AuthError::Missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest() {
        assert!(scope_allows(&[Scope::Full], Scope::Chat));
        assert!(scope_allows(&[Scope::Chat], Scope::Read));
        assert!(!scope_allows(&[Scope::Read], Scope::Chat));
        assert!(!scope_allows(&[Scope::Chat], Scope::Full));
        assert!(!scope_allows(&[], Scope::Read));
    }

    #[test]
    fn presented_keys_come_from_the_documented_headers() {
        use axum::http::{HeaderMap, HeaderValue};
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h, true), Err(AuthError::Missing));
        h.insert("x-api-key", HeaderValue::from_static("kw_a"));
        assert_eq!(presented_key(&h, true), Ok("kw_a"));
        assert_eq!(presented_key(&h, false), Err(AuthError::Missing));
        h.insert("authorization", HeaderValue::from_static("BEARER kw_b"));
        assert_eq!(presented_key(&h, false), Ok("kw_b"));
        h.append("authorization", HeaderValue::from_static("Bearer kw_c"));
        assert_eq!(presented_key(&h, false), Err(AuthError::Unknown));
        let mut basic = HeaderMap::new();
        basic.insert("authorization", HeaderValue::from_static("Basic YTpi"));
        assert_eq!(presented_key(&basic, true), Err(AuthError::Unknown));
    }
}
