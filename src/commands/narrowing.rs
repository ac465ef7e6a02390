//! What the owner of a key may change on their own: whatever narrows it. A lower limit, an
//! earlier expiry, fewer models, addresses or scopes. Anything that widens it (a higher
//! or removed limit, a later expiry, another model, a broader address range, another
//! scope) needs an admin, so that an owner cannot undo what an admin set.
//!
//! Each rule compares the change with the key as it is at the version the change is
//! appended against, so a concurrent change cannot slip a widening between the check and
//! the commit.

use keyward_events::{KeyUpdated, Quota, RateLimit, Scope};
use keyward_projections::KeyRecord;

/// A change that widens the key: the request field at fault, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Widening {
    pub field: &'static str,
    pub detail: String,
}

fn widens(field: &'static str, detail: impl Into<String>) -> Option<Widening> {
    Some(Widening {
        field,
        detail: detail.into(),
    })
}

/// The first setting `patch` widens on `key`, if any. The name and the metadata restrict
/// nothing and may always change.
pub fn first_widening(key: &KeyRecord, patch: &KeyUpdated) -> Option<Widening> {
    if let Some(at) = patch.expires_at
        && at > key.expires_at
    {
        return widens(
            "expires_at",
            "only an admin may move a key's expiry later; rotate the key to renew it",
        );
    }
    if let Some(scopes) = &patch.scopes
        && let Some(w) = scopes_widen(key.scopes(), scopes)
    {
        return Some(w);
    }
    if let Some(models) = &patch.models
        && let Some(w) = list_widens("models", key.models(), models, |old, new| {
            old.iter().any(|o| o == new)
        })
    {
        return Some(w);
    }
    if let Some(rl) = &patch.rate_limit
        && let Some(w) = rate_limit_widens(key.rate_limit, *rl)
    {
        return Some(w);
    }
    if let Some(q) = &patch.quota
        && let Some(w) = quota_widens(key.quota(), *q)
    {
        return Some(w);
    }
    if let Some(ips) = &patch.ip_allowlist
        && let Some(w) = list_widens("ip_allowlist", key.ip_allowlist(), ips, net_within)
    {
        return Some(w);
    }
    None
}

/// Every new scope must be one the old scopes already allow (`full` covers `chat`, which
/// covers `read`).
fn scopes_widen(old: &[Scope], new: &[Scope]) -> Option<Widening> {
    let extra = new.iter().find(|s| !crate::auth::scope_allows(old, **s))?;
    widens(
        "scopes",
        format!(
            "only an admin may give a key the scope `{}`, which it does not have",
            extra.as_str()
        ),
    )
}

/// An allowlist where empty means "anything": an owner may make it non-empty or drop
/// entries, never empty it or add an entry that the old list does not already cover.
fn list_widens(
    field: &'static str,
    old: &[String],
    new: &[String],
    covered: impl Fn(&[String], &str) -> bool,
) -> Option<Widening> {
    if old.is_empty() {
        return None;
    }
    if new.is_empty() {
        return widens(
            field,
            format!("only an admin may empty {field}: an empty list allows everything"),
        );
    }
    let extra = new.iter().find(|n| !covered(old, n))?;
    widens(
        field,
        format!("only an admin may add {extra:?} to {field}; you may only remove entries"),
    )
}

/// Whether the network `new` lies inside one of `old`'s: `10.1.0.0/16` inside
/// `10.0.0.0/8` narrows, `0.0.0.0/0` does not, whatever the number of entries.
fn net_within(old: &[String], new: &str) -> bool {
    let Some(new) = parse_net(new) else {
        return false;
    };
    old.iter()
        .filter_map(|o| parse_net(o))
        .any(|o| o.contains(&new))
}

fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

fn rate_limit_widens(old: Option<RateLimit>, new: Option<RateLimit>) -> Option<Widening> {
    let old = old?;
    let Some(new) = new else {
        return widens("rate_limit", "only an admin may remove a key's rate limit");
    };
    if new.requests_per_minute > old.requests_per_minute {
        return widens(
            "rate_limit.requests_per_minute",
            format!(
                "only an admin may raise the rate limit above {} requests per minute",
                old.requests_per_minute
            ),
        );
    }
    if new.burst > old.burst {
        return widens(
            "rate_limit.burst",
            format!("only an admin may raise the burst above {}", old.burst),
        );
    }
    None
}

fn quota_widens(old: Option<Quota>, new: Option<Quota>) -> Option<Widening> {
    let old = old?;
    let Some(new) = new else {
        return widens("quota", "only an admin may remove a key's quota");
    };
    let fields = [
        (
            "quota.requests_per_day",
            old.requests_per_day,
            new.requests_per_day,
        ),
        (
            "quota.requests_per_month",
            old.requests_per_month,
            new.requests_per_month,
        ),
        (
            "quota.tokens_per_day",
            old.tokens_per_day,
            new.tokens_per_day,
        ),
        (
            "quota.tokens_per_month",
            old.tokens_per_month,
            new.tokens_per_month,
        ),
    ];
    for (field, was, now) in fields {
        match (was, now) {
            (Some(w), None) => {
                return widens(field, format!("only an admin may remove this limit of {w}"));
            }
            (Some(w), Some(n)) if n > w => {
                return widens(
                    field,
                    format!("only an admin may raise this limit above {w}"),
                );
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broader_network_widens_whatever_the_count() {
        let old = vec!["10.0.0.0/8".to_owned()];
        assert!(net_within(&old, "10.1.0.0/16"));
        assert!(net_within(&old, "10.2.3.4/32"));
        assert!(!net_within(&old, "0.0.0.0/0"));
        assert!(!net_within(&old, "11.0.0.0/8"));
        assert!(!net_within(&old, "::/0"));
        assert!(!net_within(&old, "garbage"));
        assert!(list_widens("ip_allowlist", &old, &["0.0.0.0/0".into()], net_within).is_some());
        assert!(list_widens("ip_allowlist", &old, &[], net_within).is_some());
        assert!(list_widens("ip_allowlist", &[], &["0.0.0.0/0".into()], net_within).is_none());
    }

    #[test]
    fn limits_may_go_down_never_up_or_away() {
        let rl = |rpm, burst| RateLimit {
            requests_per_minute: rpm,
            burst,
        };
        assert!(rate_limit_widens(None, None).is_none());
        assert!(rate_limit_widens(None, Some(rl(10, 1))).is_none());
        assert!(rate_limit_widens(Some(rl(60, 5)), Some(rl(30, 5))).is_none());
        assert_eq!(
            rate_limit_widens(Some(rl(60, 5)), None).unwrap().field,
            "rate_limit"
        );
        assert_eq!(
            rate_limit_widens(Some(rl(60, 5)), Some(rl(61, 5)))
                .unwrap()
                .field,
            "rate_limit.requests_per_minute"
        );
        assert_eq!(
            rate_limit_widens(Some(rl(60, 5)), Some(rl(60, 6)))
                .unwrap()
                .field,
            "rate_limit.burst"
        );
        let q = Quota {
            requests_per_day: Some(100),
            ..Quota::default()
        };
        assert!(
            quota_widens(
                Some(q),
                Some(Quota {
                    requests_per_day: Some(50),
                    tokens_per_day: Some(7),
                    ..Quota::default()
                })
            )
            .is_none()
        );
        assert_eq!(quota_widens(Some(q), None).unwrap().field, "quota");
        assert_eq!(
            quota_widens(
                Some(q),
                Some(Quota {
                    tokens_per_day: Some(7),
                    ..Quota::default()
                })
            )
            .unwrap()
            .field,
            "quota.requests_per_day"
        );
        assert_eq!(
            quota_widens(
                Some(q),
                Some(Quota {
                    requests_per_day: Some(101),
                    ..Quota::default()
                })
            )
            .unwrap()
            .field,
            "quota.requests_per_day"
        );
    }

    #[test]
    fn scopes_may_only_be_dropped_or_nested_inside_what_is_there() {
        assert!(scopes_widen(&[Scope::Full], &[Scope::Chat]).is_none());
        assert!(scopes_widen(&[Scope::Chat], &[Scope::Read]).is_none());
        assert!(scopes_widen(&[Scope::Chat], &[Scope::Full]).is_some());
        assert!(scopes_widen(&[Scope::Read], &[Scope::Read, Scope::Chat]).is_some());
        let eq = |old: &[String], new: &str| old.iter().any(|o| o == new);
        let old = vec!["a".to_owned(), "b".to_owned()];
        assert!(list_widens("models", &old, &["a".into()], eq).is_none());
        assert!(list_widens("models", &old, &["a".into(), "c".into()], eq).is_some());
        assert!(list_widens("models", &old, &[], eq).is_some());
    }
}
