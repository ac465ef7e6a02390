//! Keys: "Admin → API Keys" (every key) and "My API Keys" (the caller's own), with Create,
//! Expire, Rotate and Delete, the key's history and its metrics.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Duration, DurationRound, Utc};
use keyward_events::{Envelope, Event, KeyUpdated, Quota, RateLimit, Scope};
use keyward_projections::{AsOf, KeyRecord, KeyStatus, State as Projections};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::commands::{NewKey, Visibility};
use crate::config::parse_duration;
use crate::http::caller::Caller;
use crate::http::error::{ApiError, Json, Problem, Query};
use crate::http::schema::{
    ExpireReasonSchema, KeyStatusSchema, QuotaSchema, RateLimitSchema, ScopeSchema,
};
use crate::store::EventFilter;
use crate::time::{self, Timestamp};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_key, list_keys))
        .routes(routes!(get_key, update_key, delete_key))
        .routes(routes!(expire_key))
        .routes(routes!(rotate_key))
        .routes(routes!(key_events))
        .routes(routes!(key_metrics))
}

pub const MAX_NAME: usize = 200;
const MAX_LIST: usize = 256;
const MAX_METADATA_BYTES: usize = 16 * 1024;
const MAX_GRACE_DAYS: i64 = 30;

// ---------- views ----------

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageView {
    pub requests: u64,
    pub errors: u64,
    pub denied: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Uses of a rotated key during its grace period: who has not switched over yet.
#[derive(Debug, Serialize, ToSchema)]
pub struct GraceUsageView {
    pub requests: u64,
    #[schema(format = DateTime)]
    pub last_used_at: Option<String>,
}

/// A key as admins and its owner see it. The secret is never part of it.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub owner_id: String,
    /// The owner's username.
    pub owner: Option<String>,
    /// The provider the key is bound to, if any.
    pub provider_id: Option<String>,
    pub provider_ids: Vec<String>,
    /// The first characters of the secret, to recognise it.
    pub prefix: String,
    #[schema(value_type = Vec<ScopeSchema>)]
    pub scopes: Vec<Scope>,
    /// The models the key may use; empty means every model of its provider.
    pub models: Vec<String>,
    #[schema(value_type = Option<RateLimitSchema>)]
    pub rate_limit: Option<RateLimit>,
    #[schema(value_type = Option<QuotaSchema>)]
    pub quota: Option<Quota>,
    pub ip_allowlist: Vec<String>,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    #[schema(format = DateTime)]
    pub expires_at: String,
    #[schema(value_type = KeyStatusSchema)]
    pub status: KeyStatus,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// The user (or `system`) that created the key.
    pub created_by: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    #[schema(format = DateTime)]
    pub last_used_at: Option<String>,
    pub usage: UsageView,
    pub rotated_from: Option<String>,
    pub rotated_to: Option<String>,
    #[schema(format = DateTime)]
    pub grace_until: Option<String>,
    pub grace_usage: Option<GraceUsageView>,
    #[schema(format = DateTime)]
    pub expired_at: Option<String>,
    #[schema(value_type = Option<ExpireReasonSchema>)]
    pub expired_reason: Option<keyward_events::ExpireReason>,
    pub deleted: bool,
    #[schema(format = DateTime)]
    pub deleted_at: Option<String>,
    /// The key stream's version, for optimistic concurrency.
    pub version: u64,
}

pub fn view(k: &KeyRecord, state: &Projections, now: Timestamp) -> KeyView {
    let totals = state.usage.totals(k.key_id());
    let usage = UsageView {
        requests: totals.map_or(0, |t| t.requests),
        errors: totals.map_or(0, |t| t.errors),
        denied: totals.map_or(0, |t| t.denied),
        prompt_tokens: totals.map_or(0, |t| t.prompt_tokens),
        completion_tokens: totals.map_or(0, |t| t.completion_tokens),
    };
    let grace_usage = k.rotated_to().map(|_| GraceUsageView {
        requests: totals.map_or(0, |t| t.grace_requests),
        last_used_at: totals
            .and_then(|t| t.grace_last_used_at)
            .map(|t| time::format(&t)),
    });
    KeyView {
        id: k.key_id().to_owned(),
        name: k.name().to_owned(),
        owner_id: k.owner_id().to_owned(),
        owner: state.users.get(k.owner_id()).map(|u| u.username.clone()),
        provider_id: k.provider_ids().next().map(str::to_owned),
        provider_ids: k.provider_ids().map(str::to_owned).collect(),
        prefix: k.prefix().to_owned(),
        scopes: k.scopes().to_vec(),
        models: k.models().to_vec(),
        rate_limit: k.rate_limit,
        quota: k.quota(),
        ip_allowlist: k.ip_allowlist().to_vec(),
        metadata: k.metadata().clone(),
        expires_at: time::format(&k.expires_at),
        status: k.status(now),
        created_at: time::format(&k.created_at),
        created_by: k.created_by().to_owned(),
        updated_at: time::format(&k.updated_at),
        last_used_at: totals
            .and_then(|t| t.last_used_at)
            .map(|t| time::format(&t)),
        usage,
        rotated_from: k.rotated_from().map(str::to_owned),
        rotated_to: k.rotated_to().map(str::to_owned),
        grace_until: k.grace_until().map(|t| time::format(&t)),
        grace_usage,
        expired_at: k.expired().map(|(_, t)| time::format(&t)),
        expired_reason: k.expired().map(|(r, _)| r),
        deleted: k.is_deleted(),
        deleted_at: k.deleted_at().map(|t| time::format(&t)),
        version: k.version,
    }
}

fn live_view(app: &AppState, k: &KeyRecord) -> KeyView {
    view(k, &app.0.live.read(), Utc::now())
}

// ---------- validation ----------

/// `Option<Option<T>>`: absent is `None`, `null` is `Some(None)`.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

pub(crate) fn check_name(name: &str) -> Result<String, ApiError> {
    let n = name.trim();
    if n.is_empty() {
        return Err(ApiError::invalid("name", "name must not be empty"));
    }
    if n.chars().count() > MAX_NAME {
        return Err(ApiError::invalid(
            "name",
            format!("name must be at most {MAX_NAME} characters"),
        ));
    }
    if let Some(c) = crate::names::hidden_char(n) {
        return Err(hidden_char_error("name", c));
    }
    Ok(n.to_owned())
}

/// 422 `invalid_characters`: a name holds a character that hides or disguises others.
pub(crate) fn hidden_char_error(field: &str, c: char) -> ApiError {
    ApiError::coded_field(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_characters",
        field,
        crate::names::hidden_char_text(field, c),
    )
}

/// Exactly one of `expires_at` / `expires_in`, in the future and within the maximum lifetime.
fn check_expiry(
    expires_at: Option<&str>,
    expires_in: Option<&str>,
    max: Duration,
    now: Timestamp,
) -> Result<Option<Timestamp>, ApiError> {
    let at = match (expires_at, expires_in) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "expires_at",
                "give either expires_at or expires_in, not both",
            ));
        }
        (Some(s), None) => time::parse(s).ok_or_else(|| {
            ApiError::invalid(
                "expires_at",
                format!("{s:?} is not an RFC 3339 time such as 2026-12-31T00:00:00Z"),
            )
        })?,
        (None, Some(s)) => {
            now + parse_duration(s).map_err(|e| ApiError::invalid("expires_in", e))?
        }
    };
    let field = if expires_at.is_some() {
        "expires_at"
    } else {
        "expires_in"
    };
    if at <= now {
        return Err(ApiError::invalid(field, "the expiry must be in the future"));
    }
    // A minute of slack for clocks and request latency.
    if at > now + max + Duration::minutes(1) {
        return Err(ApiError::invalid(
            field,
            format!(
                "the expiry is beyond the maximum key lifetime of {} days",
                max.num_days()
            ),
        ));
    }
    Ok(Some(at))
}

fn check_scopes(scopes: Vec<Scope>) -> Result<Vec<Scope>, ApiError> {
    if scopes.is_empty() {
        return Err(ApiError::invalid(
            "scopes",
            "at least one scope is needed: read, chat or full",
        ));
    }
    let mut out: Vec<Scope> = Vec::new();
    for s in scopes {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out.sort();
    Ok(out)
}

pub(crate) fn check_models(models: Vec<String>) -> Result<Vec<String>, ApiError> {
    if models.len() > MAX_LIST {
        return Err(ApiError::invalid(
            "models",
            format!("at most {MAX_LIST} models"),
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for m in models {
        let m = m.trim().to_owned();
        if let Some(c) = crate::names::hidden_char(&m) {
            return Err(hidden_char_error("models", c));
        }
        if m.is_empty() || m.len() > MAX_NAME {
            return Err(ApiError::invalid(
                "models",
                format!("{m:?} is not a model name"),
            ));
        }
        if seen.insert(m.clone()) {
            out.push(m);
        }
    }
    Ok(out)
}

fn check_rate_limit(r: RateLimit) -> Result<RateLimit, ApiError> {
    if !(1..=1_000_000).contains(&r.requests_per_minute) {
        return Err(ApiError::invalid(
            "rate_limit.requests_per_minute",
            "must be between 1 and 1000000",
        ));
    }
    if !(1..=100_000).contains(&r.burst) {
        return Err(ApiError::invalid(
            "rate_limit.burst",
            "must be between 1 and 100000",
        ));
    }
    Ok(r)
}

fn check_quota(q: Quota) -> Result<Quota, ApiError> {
    let fields = [
        ("quota.requests_per_day", q.requests_per_day),
        ("quota.requests_per_month", q.requests_per_month),
        ("quota.tokens_per_day", q.tokens_per_day),
        ("quota.tokens_per_month", q.tokens_per_month),
    ];
    if fields.iter().all(|(_, v)| v.is_none()) {
        return Err(ApiError::invalid(
            "quota",
            "a quota needs at least one limit; send null to remove it",
        ));
    }
    for (f, v) in fields {
        if let Some(v) = v
            && !(1..=1_000_000_000_000_000).contains(&v)
        {
            return Err(ApiError::invalid(f, "must be between 1 and 10^15"));
        }
    }
    Ok(q)
}

fn check_cidrs(list: Vec<String>) -> Result<Vec<String>, ApiError> {
    if list.len() > MAX_LIST {
        return Err(ApiError::invalid(
            "ip_allowlist",
            format!("at most {MAX_LIST} entries"),
        ));
    }
    list.into_iter()
        .map(|c| {
            let c = c.trim();
            c.parse::<ipnet::IpNet>()
                .map(|n| n.trunc().to_string())
                .or_else(|_| {
                    c.parse::<std::net::IpAddr>()
                        .map(|ip| ipnet::IpNet::from(ip).to_string())
                })
                .map_err(|_| {
                    ApiError::invalid(
                        "ip_allowlist",
                        format!("{c:?} is not an IP address or CIDR such as 10.0.0.0/8"),
                    )
                })
        })
        .collect()
}

fn check_metadata(m: Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    let size = serde_json::to_vec(&m)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_METADATA_BYTES {
        return Err(ApiError::invalid(
            "metadata",
            format!("metadata must be at most {MAX_METADATA_BYTES} bytes of JSON"),
        ));
    }
    Ok(m)
}

pub(crate) fn check_id(field: &str, id: &str, prefix: &str) -> Result<(), ApiError> {
    if !id.starts_with(prefix) || id.len() > 64 {
        return Err(ApiError::invalid(
            field,
            format!("{id:?} is not a {prefix}… id"),
        ));
    }
    Ok(())
}

// ---------- create ----------

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// 1 to 200 characters.
    pub name: String,
    /// Admins only: the user the key is for. Defaults to the caller.
    pub owner_id: Option<String>,
    /// The provider the key may use.
    pub provider_id: Option<String>,
    /// When the key expires (RFC 3339). Give this or `expires_in`.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// How long the key lives, e.g. `30d`, `12h`. Give this or `expires_at`.
    #[schema(example = "30d")]
    pub expires_in: Option<String>,
    /// Defaults to `["chat"]`.
    #[schema(value_type = Option<Vec<ScopeSchema>>)]
    pub scopes: Option<Vec<Scope>>,
    /// The models the key may use; empty or absent means all of its provider's.
    pub models: Option<Vec<String>>,
    #[schema(value_type = Option<RateLimitSchema>)]
    pub rate_limit: Option<RateLimit>,
    #[schema(value_type = Option<QuotaSchema>)]
    pub quota: Option<Quota>,
    /// IP addresses or CIDRs the key may be used from; empty means anywhere.
    pub ip_allowlist: Option<Vec<String>>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

/// A new key and its secret. The secret is shown in this response only.
#[derive(Serialize, ToSchema)]
pub struct CreatedKey {
    pub key: KeyView,
    /// The secret, `kw_…`. Store it now: it is never shown again.
    pub secret: String,
}

// Not derived: a `{:?}` of the response must not print the secret.
impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey")
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Create a key. The secret is returned once, in this response. A user holds at most
/// `max-keys-per-user` keys that are not deleted: past it, 409 `key_limit_reached`.
#[utoipa::path(post, path = "/keys", tag = "keys", request_body = CreateKey,
    responses(
        (status = 201, body = CreatedKey),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn create_key(
    State(app): State<AppState>,
    caller: Caller,
    Json(req): Json<CreateKey>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    caller.require_writer()?;
    let now = Utc::now();
    let name = check_name(&req.name)?;
    let owner_id = match req.owner_id {
        Some(o) if o != caller.user_id => {
            caller.require_admin().map_err(|_| {
                ApiError::Forbidden("only admins may create keys for other users".to_owned())
            })?;
            check_id("owner_id", &o, "usr_")?;
            o
        }
        _ => caller.user_id.clone(),
    };
    let expires_at = check_expiry(
        req.expires_at.as_deref(),
        req.expires_in.as_deref(),
        app.0.config.max_key_lifetime,
        now,
    )?
    .ok_or_else(|| {
        ApiError::invalid(
            "expires_at",
            "an expiry is required: give expires_at or expires_in",
        )
    })?;
    let provider_ids = match req.provider_id {
        Some(p) => {
            check_id("provider_id", &p, "prv_")?;
            vec![p]
        }
        None => Vec::new(),
    };
    let spec = NewKey {
        name,
        owner_id,
        provider_ids,
        expires_at,
        scopes: check_scopes(req.scopes.unwrap_or_else(|| vec![Scope::Chat]))?,
        models: check_models(req.models.unwrap_or_default())?,
        rate_limit: req.rate_limit.map(check_rate_limit).transpose()?,
        quota: req.quota.map(check_quota).transpose()?,
        ip_allowlist: check_cidrs(req.ip_allowlist.unwrap_or_default())?,
        metadata: check_metadata(req.metadata.unwrap_or_default())?,
        rotated_from: None,
    };
    let (key, secret) = app.0.commands.create_key(&caller.actor(), spec).await?;
    let body = CreatedKey {
        key: live_view(&app, &key),
        secret: secret.expose().to_owned(),
    };
    Ok((StatusCode::CREATED, Json(body)))
}

// ---------- list ----------

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListKeys {
    /// Only keys of this owner (admins; a user always sees only their own).
    pub owner_id: Option<String>,
    /// Only keys bound to this provider.
    pub provider_id: Option<String>,
    /// Only keys with this status.
    #[param(value_type = Option<KeyStatusSchema>)]
    pub status: Option<KeyStatus>,
    /// A case-insensitive search in the name.
    pub q: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1 to 500; default 100.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
    /// Show the key table as it was at this time (RFC 3339, not in the future), rebuilt
    /// from the log: from the newest kept projection snapshot before it, then the events
    /// after it. Admins see every key, a user their own.
    #[param(format = DateTime)]
    pub as_of: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
    /// The time the table is shown as of, when `as_of` was given.
    #[schema(format = DateTime)]
    pub as_of: Option<String>,
}

/// `?as_of=` replays that may run at once on a node. Each loads a snapshot and folds the
/// events after it (up to `--snapshot-every` events; the whole log when no kept snapshot
/// is old enough, a minute of CPU on a 10M-event log) and holds a projection's memory, so
/// they are few; one more is refused at once with 429 `too_many_replays` and a
/// `Retry-After`, not queued.
pub const REPLAYS_AT_ONCE: usize = 2;
/// How far past now an `as_of` may be (clocks of other nodes, request latency).
const AS_OF_SLACK_SECS: i64 = 60;
/// What a refused replay is told to wait.
const REPLAY_RETRY_AFTER_SECS: u64 = 10;

/// List keys: every key for an admin or an auditor ("Admin → API Keys"), the caller's own
/// for a user ("My API Keys"). With `as_of`, the table as it was then: every key for an
/// admin or an auditor, the caller's own for a user; each such request is recorded as an
/// `audit.read` of kind `as_of`.
#[utoipa::path(get, path = "/keys", tag = "keys", params(ListKeys),
    responses(
        (status = 200, body = KeyList),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`archived`: `as_of` lies before the end of a range whose usage events were archived and pruned, and no kept snapshot at or after it is usable", body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn list_keys(
    State(app): State<AppState>,
    caller: Caller,
    Query(q): Query<ListKeys>,
) -> Result<Json<KeyList>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest {
            detail: "limit must be between 1 and 500".to_owned(),
            field: Some("limit".into()),
        });
    }
    let owner_filter = if caller.reads_everything() {
        q.owner_id.clone()
    } else {
        Some(caller.user_id.clone())
    };
    let as_of = q
        .as_of
        .as_deref()
        .map(|s| {
            time::parse(s).ok_or_else(|| ApiError::BadRequest {
                detail: format!("as_of {s:?} is not an RFC 3339 time"),
                field: Some("as_of".into()),
            })
        })
        .transpose()?;
    if let (Some(t), Some(s)) = (as_of, q.as_of.as_deref())
        && t > Utc::now() + chrono::Duration::seconds(AS_OF_SLACK_SECS)
    {
        // A future table would change as events arrive: it is not history.
        return Err(ApiError::BadRequest {
            detail: format!("as_of {s:?} is in the future"),
            field: Some("as_of".into()),
        });
    }
    let needle = q.q.as_deref().map(str::to_lowercase);
    let select = |state: &Projections, now: Timestamp| -> KeyList {
        let mut keys: Vec<&Arc<KeyRecord>> = state
            .keys
            .iter()
            .filter(|k| owner_filter.as_deref().is_none_or(|o| k.owner_id() == o))
            .filter(|k| {
                q.provider_id
                    .as_deref()
                    .is_none_or(|p| k.provider_ids().any(|x| x == p))
            })
            .filter(|k| q.status.is_none_or(|s| k.status(now) == s))
            .filter(|k| {
                needle
                    .as_deref()
                    .is_none_or(|n| k.name().to_lowercase().contains(n))
            })
            .filter(|k| q.cursor.as_deref().is_none_or(|c| k.key_id() > c))
            .collect();
        // Key ids are ULIDs: id order is creation order.
        keys.sort_unstable_by(|a, b| a.key_id().cmp(b.key_id()));
        let more = keys.len() > limit;
        keys.truncate(limit);
        KeyList {
            next_cursor: if more {
                keys.last().map(|k| k.key_id().to_owned())
            } else {
                None
            },
            keys: keys.into_iter().map(|k| view(k, state, now)).collect(),
            as_of: as_of.map(|t| time::format(&t)),
        }
    };
    let list = match as_of {
        None => select(&app.0.live.read(), Utc::now()),
        Some(t) => {
            let _slot = app.0.replays.try_acquire().map_err(|_| ApiError::Throttled {
                code: "too_many_replays",
                detail: format!(
                    "{REPLAYS_AT_ONCE} as_of replays are already running on this node; retry later"
                ),
                retry_after_secs: REPLAY_RETRY_AFTER_SECS,
            })?;
            // Recorded before the table is rebuilt: who looked at the past, as of when.
            crate::http::audit::record_audit_read(
                &app,
                &caller,
                crate::http::audit::ReadOf {
                    kind: keyward_events::AuditReadKind::AsOf,
                    filter: Some(as_of_filter(&q)),
                    after_seq: None,
                    until_seq: None,
                },
            )
            .await?;
            let state = as_of_replay(&app, AsOf::Time(t)).await.map_err(|e| {
                if let Some(a) = e.downcast_ref::<crate::history::Archived>() {
                    return ApiError::Coded {
                        status: axum::http::StatusCode::CONFLICT,
                        code: "archived",
                        detail: a.to_string(),
                        field: Some("as_of".to_owned()),
                    };
                }
                tracing::error!(error = %e, "replay for as_of failed");
                ApiError::Unavailable
            })?;
            select(&state, t)
        }
    };
    Ok(Json(list))
}

/// The filter of an as-of listing as recorded: the query's parameters, as given.
fn as_of_filter(q: &ListKeys) -> String {
    let pairs: Vec<(&str, String)> = [
        ("as_of", q.as_of.clone()),
        ("owner_id", q.owner_id.clone()),
        ("provider_id", q.provider_id.clone()),
        ("q", q.q.clone()),
        ("cursor", q.cursor.clone()),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

/// The projections as of `as_of`, from the newest usable kept snapshot at or before it
/// (none when snapshots are off) and the live timeline.
pub async fn as_of_replay(app: &AppState, as_of: AsOf) -> anyhow::Result<Projections> {
    let app = &app.0;
    let kept = (app.config.snapshot_every > 0).then(|| crate::history::Kept {
        dir: app.config.data_dir.clone(),
        keys: app.keyring.snapshot_mac_keys(),
    });
    let bounds = match as_of {
        AsOf::Time(t) => Some(app.live.timeline_bounds(t)),
        AsOf::Seq(_) => None,
    };
    let started = std::time::Instant::now();
    let r = crate::history::replay_with(app.store.as_ref(), kept.as_ref(), bounds, as_of).await?;
    tracing::debug!(
        from_snapshot = r.from_snapshot,
        read = r.read,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "as_of replay"
    );
    Ok(r.state)
}

// ---------- one key ----------

fn visibility(caller: &Caller) -> Visibility<'_> {
    if caller.is_admin() {
        Visibility::All
    } else {
        Visibility::Owner(&caller.user_id)
    }
}

fn find(app: &AppState, caller: &Caller, id: &str) -> Result<Arc<KeyRecord>, ApiError> {
    app.0
        .live
        .read()
        .keys
        .get(id)
        .filter(|k| caller.can_see(k.owner_id()))
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("key {id} was not found")))
}

/// One key.
#[utoipa::path(get, path = "/keys/{id}", tag = "keys", params(("id" = String, Path, description = "The key id, key_…")),
    responses(
        (status = 200, body = KeyView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`: under `--usage-durability durable`, the key was refused for its IP allowlist or rate limit and the refusal could not be recorded", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn get_key(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let k = find(&app, &caller, &id)?;
    Ok(Json(live_view(&app, &k)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    pub name: Option<String>,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    pub expires_in: Option<String>,
    #[schema(value_type = Option<Vec<ScopeSchema>>)]
    pub scopes: Option<Vec<Scope>>,
    pub models: Option<Vec<String>>,
    /// `null` removes the rate limit (admins only, as is raising it).
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<RateLimitSchema>)]
    pub rate_limit: Option<Option<RateLimit>>,
    /// `null` removes the quota (admins only, as is raising or leaving out a limit).
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<QuotaSchema>)]
    pub quota: Option<Option<Quota>>,
    pub ip_allowlist: Option<Vec<String>>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

/// Change a key's name, expiry, scopes, models, limits, allowlist or metadata.
///
/// The owner may only narrow a key: lower or add a limit, move the expiry earlier, drop
/// models, addresses (or narrow a range) and scopes. Anything that widens it needs an
/// admin: 403 `widening_needs_admin`, with the `field`. No key's expiry goes past its
/// creation plus the maximum key lifetime, for anyone (422 on `expires_at`); rotating a
/// key is how it is renewed.
#[utoipa::path(patch, path = "/keys/{id}", tag = "keys", request_body = UpdateKey,
    params(("id" = String, Path, description = "The key id, key_…")),
    responses(
        (status = 200, body = KeyView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn update_key(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(req): Json<UpdateKey>,
) -> Result<Json<KeyView>, ApiError> {
    caller.require_writer()?;
    find(&app, &caller, &id)?;
    let now = Utc::now();
    let patch = KeyUpdated {
        key_id: id.clone(),
        name: req.name.as_deref().map(check_name).transpose()?,
        expires_at: check_expiry(
            req.expires_at.as_deref(),
            req.expires_in.as_deref(),
            app.0.config.max_key_lifetime,
            now,
        )?,
        scopes: req.scopes.map(check_scopes).transpose()?,
        models: req.models.map(check_models).transpose()?,
        rate_limit: req
            .rate_limit
            .map(|r| r.map(check_rate_limit).transpose())
            .transpose()?,
        quota: req
            .quota
            .map(|q| q.map(check_quota).transpose())
            .transpose()?,
        ip_allowlist: req.ip_allowlist.map(check_cidrs).transpose()?,
        metadata: req.metadata.map(check_metadata).transpose()?,
    };
    if patch
        == (KeyUpdated {
            key_id: id.clone(),
            ..KeyUpdated::default()
        })
    {
        return Err(ApiError::Unprocessable {
            detail: "the request changes nothing".to_owned(),
            field: None,
        });
    }
    let k = app
        .0
        .commands
        .update_key(&caller.actor(), visibility(&caller), patch)
        .await?;
    Ok(Json(live_view(&app, &k)))
}

/// Expire a key at once. The record stays, with status `expired`.
#[utoipa::path(post, path = "/keys/{id}/expire", tag = "keys",
    params(("id" = String, Path, description = "The key id, key_…")),
    responses(
        (status = 200, body = KeyView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn expire_key(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    caller.require_writer()?;
    let k = app
        .0
        .commands
        .expire_key(&caller.actor(), visibility(&caller), &id)
        .await?;
    Ok(Json(live_view(&app, &k)))
}

/// Soft-delete a key: it stops working and its record stays with `deleted: true`.
#[utoipa::path(delete, path = "/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "The key id, key_…")),
    responses(
        (status = 200, body = KeyView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn delete_key(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    caller.require_writer()?;
    let k = app
        .0
        .commands
        .delete_key(&caller.actor(), visibility(&caller), &id)
        .await?;
    Ok(Json(live_view(&app, &k)))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// How long the old key keeps working, e.g. `24h` (the default), up to 30 days; `0s`
    /// ends it at once.
    #[schema(example = "24h")]
    pub grace_period: Option<String>,
    /// The new key's expiry; by default it lives as long as the old one did.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    pub expires_in: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RotatedKey {
    /// The new key.
    pub key: KeyView,
    /// The new key's secret, shown only in this response.
    pub secret: String,
    /// The old key, now in its grace period.
    pub previous: KeyView,
}

// Not derived: a `{:?}` of the response must not print the secret.
impl std::fmt::Debug for RotatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotatedKey")
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .field("previous", &self.previous)
            .finish()
    }
}

/// Rotate a key: a new key with the same settings; the old one works until `grace_until`,
/// then expires with reason `rotated`.
#[utoipa::path(post, path = "/keys/{id}/rotate", tag = "keys", request_body = RotateKey,
    params(("id" = String, Path, description = "The key id, key_…")),
    responses(
        (status = 201, body = RotatedKey),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn rotate_key(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(req): Json<RotateKey>,
) -> Result<(StatusCode, Json<RotatedKey>), ApiError> {
    caller.require_writer()?;
    let old = find(&app, &caller, &id)?;
    let now = Utc::now();
    let grace = match req.grace_period.as_deref().map(str::trim) {
        None => Duration::hours(24),
        Some("0" | "0s" | "0m" | "0h" | "0d") => Duration::zero(),
        Some(g) => parse_duration(g).map_err(|e| ApiError::invalid("grace_period", e))?,
    };
    if grace > Duration::days(MAX_GRACE_DAYS) {
        return Err(ApiError::invalid(
            "grace_period",
            format!("the grace period is at most {MAX_GRACE_DAYS} days"),
        ));
    }
    let max = app.0.config.max_key_lifetime;
    let expires_at = match check_expiry(
        req.expires_at.as_deref(),
        req.expires_in.as_deref(),
        max,
        now,
    )? {
        Some(t) => t,
        None => now + (old.expires_at - old.created_at).clamp(Duration::hours(1), max),
    };
    let (previous, new, secret) = app
        .0
        .commands
        .rotate_key(
            &caller.actor(),
            visibility(&caller),
            &id,
            now + grace,
            expires_at,
        )
        .await?;
    let (key, previous) = {
        let state = app.0.live.read();
        (view(&new, &state, now), view(&previous, &state, now))
    };
    Ok((
        StatusCode::CREATED,
        Json(RotatedKey {
            key,
            secret: secret.expose().to_owned(),
            previous,
        }),
    ))
}

// ---------- history and metrics ----------

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// The `next_cursor` of the previous page: only events after this seq (`oldest`), or
    /// before it (`newest`).
    pub cursor: Option<u64>,
    /// Page size, 1 to 1000; default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Only events of this type, e.g. `key.used`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub event_type: Option<String>,
    /// `oldest` first (the default) or `newest` first: the newest events of a busy key are
    /// one page away, not at the end of its whole history.
    #[param(inline)]
    pub order: Option<EventOrder>,
    /// Only the key's `lifecycle` (created, updated, rotated, expired, deleted, notices)
    /// or its `usage` (uses and refusals); both by default.
    #[param(inline)]
    pub kind: Option<EventKind>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EventOrder {
    #[default]
    Oldest,
    Newest,
}

#[derive(Clone, Copy, Debug, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Lifecycle,
    Usage,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    /// Envelopes as stored (see the audit export), in the order asked for.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Envelope>,
    /// Pass as `cursor` for the next page, in the same order; absent on the last page.
    pub next_cursor: Option<u64>,
}

/// The key's history: its lifecycle events and its uses and refusals.
#[utoipa::path(get, path = "/keys/{id}/events", tag = "keys",
    params(("id" = String, Path, description = "The key id, key_…"), EventsQuery),
    responses(
        (status = 200, body = EventPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn key_events(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<EventPage>, ApiError> {
    find(&app, &caller, &id)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest {
            detail: "limit must be between 1 and 1000".to_owned(),
            field: Some("limit".into()),
        });
    }
    let streams = match q.kind {
        None => vec![
            keyward_events::key_stream(&id),
            keyward_events::usage_stream(&id),
        ],
        Some(EventKind::Lifecycle) => vec![keyward_events::key_stream(&id)],
        Some(EventKind::Usage) => vec![keyward_events::usage_stream(&id)],
    };
    let order = q.order.unwrap_or_default();
    let filter = EventFilter {
        after_seq: match order {
            EventOrder::Oldest => q.cursor.unwrap_or(0),
            EventOrder::Newest => 0,
        },
        until_seq: match order {
            EventOrder::Oldest => None,
            EventOrder::Newest => q.cursor.map(|c| c.saturating_sub(1)),
        },
        streams,
        types: q.event_type.into_iter().collect(),
        ..EventFilter::default()
    };
    let mut events = match order {
        EventOrder::Oldest => app.0.store.read(&filter, limit + 1).await?,
        EventOrder::Newest => app.0.store.read_newest(&filter, limit + 1).await?,
    };
    let more = events.len() > limit;
    events.truncate(limit);
    let next_cursor = if more {
        events.last().map(|e| e.seq)
    } else {
        None
    };
    Ok(Json(EventPage {
        events,
        next_cursor,
    }))
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Bucket {
    Hour,
    Day,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MetricsQuery {
    /// `hour` or `day` (the default).
    pub bucket: Option<Bucket>,
    /// Start (RFC 3339); default 24 hours or 30 days back.
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// End (RFC 3339); default now.
    #[param(format = DateTime)]
    pub to: Option<String>,
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub struct MetricsPoint {
    /// The bucket's start.
    #[schema(format = DateTime)]
    pub start: String,
    pub requests: u64,
    pub errors: u64,
    pub denied: u64,
    /// errors / requests, 0 when there were none.
    pub error_rate: f64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub tokens: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyMetrics {
    pub key_id: String,
    pub bucket: Bucket,
    #[schema(format = DateTime)]
    pub from: String,
    #[schema(format = DateTime)]
    pub to: String,
    #[schema(format = DateTime)]
    pub last_used_at: Option<String>,
    pub series: Vec<MetricsPoint>,
}

const MAX_BUCKETS: i64 = 2_000;
const MAX_METRIC_EVENTS: usize = 1_000_000;

/// Requests, errors, error rate, tokens and latency p50/p95 per hour or day.
#[utoipa::path(get, path = "/keys/{id}/metrics", tag = "keys",
    params(("id" = String, Path, description = "The key id, key_…"), MetricsQuery),
    responses(
        (status = 200, body = KeyMetrics),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn key_metrics(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<MetricsQuery>,
) -> Result<Json<KeyMetrics>, ApiError> {
    find(&app, &caller, &id)?;
    let bucket = q.bucket.unwrap_or(Bucket::Day);
    let width = match bucket {
        Bucket::Hour => Duration::hours(1),
        Bucket::Day => Duration::days(1),
    };
    let parse = |field: &str, s: &Option<String>| -> Result<Option<Timestamp>, ApiError> {
        s.as_deref()
            .map(|v| {
                time::parse(v).ok_or_else(|| ApiError::BadRequest {
                    detail: format!("{field} {v:?} is not an RFC 3339 time"),
                    field: Some(field.to_owned()),
                })
            })
            .transpose()
    };
    let now = Utc::now();
    let to = parse("to", &q.to)?.unwrap_or(now);
    let from = parse("from", &q.from)?.unwrap_or(
        to - if bucket == Bucket::Hour {
            Duration::hours(24)
        } else {
            Duration::days(30)
        },
    );
    if from >= to {
        return Err(ApiError::BadRequest {
            detail: "from must be before to".to_owned(),
            field: Some("from".into()),
        });
    }
    let start = from.duration_trunc(width).unwrap_or(from);
    if (to - start).num_seconds() / width.num_seconds() > MAX_BUCKETS {
        return Err(ApiError::BadRequest {
            detail: format!(
                "at most {MAX_BUCKETS} buckets; narrow the range or use a wider bucket"
            ),
            field: Some("from".into()),
        });
    }

    #[derive(Default)]
    struct Acc {
        p: MetricsPoint,
        latencies: Vec<u64>,
    }
    let mut acc: BTreeMap<DateTime<Utc>, Acc> = BTreeMap::new();
    let mut filter = EventFilter {
        streams: vec![keyward_events::usage_stream(&id)],
        from_time: Some(from),
        to_time: Some(to),
        ..EventFilter::default()
    };
    let mut seen = 0;
    loop {
        let page = app.0.store.read(&filter, 10_000).await?;
        let Some(last) = page.last() else { break };
        filter.after_seq = last.seq;
        seen += page.len();
        for env in &page {
            let b = env
                .occurred_at
                .duration_trunc(width)
                .unwrap_or(env.occurred_at);
            let a = acc.entry(b).or_default();
            match env.decode() {
                Ok(Event::KeyUsed(u)) => {
                    a.p.requests = a.p.requests.saturating_add(1);
                    a.p.errors = a.p.errors.saturating_add(u64::from(u.outcome.is_error()));
                    a.p.prompt_tokens = a.p.prompt_tokens.saturating_add(u.prompt_tokens);
                    a.p.completion_tokens =
                        a.p.completion_tokens.saturating_add(u.completion_tokens);
                    a.latencies.push(u.latency_us);
                }
                // Counts a provider reports can be anything: saturate, as the projection does.
                Ok(Event::KeyDenied(d)) => {
                    a.p.denied = a.p.denied.saturating_add(d.suppressed.saturating_add(1));
                }
                _ => {}
            }
        }
        if seen >= MAX_METRIC_EVENTS {
            break;
        }
    }
    let mut series = Vec::new();
    let mut t = start;
    while t < to {
        let mut a = acc.remove(&t).unwrap_or_default();
        a.p.start = time::format(&t);
        a.p.tokens = a.p.prompt_tokens.saturating_add(a.p.completion_tokens);
        a.p.error_rate = if a.p.requests == 0 {
            0.0
        } else {
            a.p.errors as f64 / a.p.requests as f64
        };
        a.latencies.sort_unstable();
        a.p.latency_p50_ms = percentile(&a.latencies, 0.50);
        a.p.latency_p95_ms = percentile(&a.latencies, 0.95);
        series.push(a.p);
        t += width;
    }
    let last_used_at = app
        .0
        .live
        .read()
        .usage
        .totals(&id)
        .and_then(|t| t.last_used_at)
        .map(|t| time::format(&t));
    Ok(Json(KeyMetrics {
        key_id: id,
        bucket,
        from: time::format(&from),
        to: time::format(&to),
        last_used_at,
        series,
    }))
}

/// Nearest-rank percentile of sorted microseconds, in milliseconds.
fn percentile(sorted_us: &[u64], p: f64) -> Option<f64> {
    if sorted_us.is_empty() {
        return None;
    }
    let rank = ((p * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    Some(sorted_us[rank - 1] as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.95), Some(95.0));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[7000], 0.95), Some(7.0));
    }

    #[test]
    fn cidrs_are_normalised_and_bad_ones_name_the_field() {
        assert_eq!(
            check_cidrs(vec!["10.1.2.3/8".into(), "::1".into()]).unwrap(),
            vec!["10.0.0.0/8", "::1/128"]
        );
        let e = check_cidrs(vec!["10.0.0.0/33".into()]).unwrap_err();
        assert!(matches!(e, ApiError::Unprocessable { field: Some(f), .. } if f == "ip_allowlist"));
    }
}
