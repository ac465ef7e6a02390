//! Authentication: a presented secret → its key in the live projection → the checks that
//! every surface shares. No database read: the proxy's hot path goes through here.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::Extensions;
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

/// The client's address: the TCP peer. Behind a reverse proxy this is the proxy's, as no
/// forwarded-for header is trusted. Every surface that accepts a key checks its IP
/// allowlist against this one address.
pub fn client_ip(ext: &Extensions) -> Option<IpAddr> {
    ext.get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .or_else(|| ext.get::<MockConnectInfo<SocketAddr>>().map(|c| c.0.ip()))
}

/// Whether `ip` is in the key's allowlist of CIDRs or addresses; an empty list allows all.
/// An entry that does not parse allows nothing, and neither does an unknown address.
pub fn ip_allowed(list: &[String], ip: Option<IpAddr>) -> bool {
    if list.is_empty() {
        return true;
    }
    let Some(ip) = ip.map(|i| i.to_canonical()) else {
        return false;
    };
    list.iter().any(|entry| {
        let entry = entry.trim();
        match entry.parse::<ipnet::IpNet>() {
            Ok(net) => net.contains(&ip),
            Err(_) => entry
                .parse::<IpAddr>()
                .is_ok_and(|a| a.to_canonical() == ip),
        }
    })
}

/// Why a key that authenticated may not manage anything (the management API, the
/// console's first-run set-up). The proxy makes the same IP check in its own order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Restricted {
    /// The client's address is outside the key's IP allowlist.
    #[error("this key may not be used from this address ({})", .0.map_or_else(|| "unknown".to_owned(), |i| i.to_canonical().to_string()))]
    Ip(Option<IpAddr>),
    /// A rotated key works on the proxy until its grace ends, so that clients can switch
    /// over; it manages nothing, or a leaked key that was rotated away could mint keys.
    #[error(
        "this key was rotated; during its grace period it works only on the proxy; use the key it was rotated to"
    )]
    Rotated,
}

/// The restrictions a key carries beyond its status, checked wherever a key is accepted
/// for management: the IP allowlist, and no management by a key in its rotation grace.
pub fn check_restrictions(
    key: &KeyRecord,
    ip: Option<IpAddr>,
    now: Timestamp,
) -> Result<(), Restricted> {
    if !ip_allowed(key.ip_allowlist(), ip) {
        return Err(Restricted::Ip(ip));
    }
    if key.status(now) == KeyStatus::Grace {
        return Err(Restricted::Rotated);
    }
    Ok(())
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
    fn ip_allowlists() {
        let list = vec!["10.0.0.0/8".to_owned(), "2001:db8::1".to_owned()];
        assert!(ip_allowed(&list, Some("10.9.8.7".parse().unwrap())));
        assert!(ip_allowed(&list, Some("::ffff:10.0.0.1".parse().unwrap())));
        assert!(ip_allowed(&list, Some("2001:db8::1".parse().unwrap())));
        assert!(!ip_allowed(&list, Some("11.0.0.1".parse().unwrap())));
        assert!(!ip_allowed(&list, None));
        assert!(ip_allowed(&[], None));
        assert!(!ip_allowed(
            &["garbage".into()],
            Some("1.2.3.4".parse().unwrap())
        ));
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
