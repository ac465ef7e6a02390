//! The request log: one row per proxied request (`key.used`) or refusal of a known key
//! (`key.denied`), newest first, filterable by user ("Logs filtered by user"), key, model,
//! outcome and time. A user sees only the rows of their own keys.

use axum::extract::State;
use keyward_events::{DenyReason, Envelope, Event, UsageOutcome};
use keyward_projections::State as Projections;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::http::audit::parse_time;
use crate::http::caller::Caller;
use crate::http::error::{ApiError, Json, Problem, Query};
use crate::http::schema::DenyReasonSchema;
use crate::store::EventFilter;
use crate::time;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_logs))
}

const MAX_LIMIT: usize = 500;
/// Events read per round trip while looking for matching rows.
const SCAN_PAGE: usize = 1000;
/// How many events one request looks at before it returns what it found, with a cursor to
/// go on from: a selective filter over a long log must not hold a request for minutes.
const MAX_SCAN: usize = 100_000;

/// What happened to a request: the proxy's outcome, or `denied` for a refused key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogOutcome {
    Success,
    UpstreamError,
    UpstreamUnavailable,
    UpstreamTimeout,
    ClientClosed,
    InvalidRequest,
    Denied,
}

impl From<UsageOutcome> for LogOutcome {
    fn from(o: UsageOutcome) -> Self {
        match o {
            UsageOutcome::Success => LogOutcome::Success,
            UsageOutcome::UpstreamError => LogOutcome::UpstreamError,
            UsageOutcome::UpstreamUnavailable => LogOutcome::UpstreamUnavailable,
            UsageOutcome::UpstreamTimeout => LogOutcome::UpstreamTimeout,
            UsageOutcome::ClientClosed => LogOutcome::ClientClosed,
            UsageOutcome::InvalidRequest => LogOutcome::InvalidRequest,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogRow {
    /// The event's seq.
    pub seq: u64,
    #[schema(format = DateTime)]
    pub at: String,
    pub key_id: String,
    pub key_name: Option<String>,
    pub owner_id: Option<String>,
    /// The owner's username.
    pub owner: Option<String>,
    pub provider_id: Option<String>,
    pub endpoint: String,
    pub model: Option<String>,
    pub outcome: LogOutcome,
    /// Why the key was refused, for `denied`.
    #[schema(value_type = Option<DenyReasonSchema>)]
    pub deny_reason: Option<DenyReason>,
    /// Refusals of the same key and reason folded into this row rather than logged each.
    pub suppressed: u64,
    /// The HTTP status the client got; absent for `denied`.
    pub status: Option<u16>,
    pub latency_ms: Option<f64>,
    pub upstream_latency_ms: Option<f64>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub tokens: u64,
    pub stream: bool,
    pub client_ip: Option<String>,
    pub request_id: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Only rows older than this seq: the `next_cursor` of the previous page.
    pub cursor: Option<u64>,
    /// Page size, 1 to 500; default 100.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
    /// Only the keys of this user (a user id). A user may only give their own.
    pub user: Option<String>,
    pub key_id: Option<String>,
    pub model: Option<String>,
    pub outcome: Option<LogOutcome>,
    /// Only rows at or after this time (RFC 3339).
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// Only rows at or before this time (RFC 3339).
    #[param(format = DateTime)]
    pub to: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogPage {
    /// Newest first.
    pub rows: Vec<LogRow>,
    /// Pass as `cursor` for older rows; absent when there are none. A page may hold fewer
    /// than `limit` rows and still have a cursor when a selective filter met a long log.
    pub next_cursor: Option<u64>,
}

/// Key ids whose usage the query covers: `None` for every key (an admin without `user` or
/// `key_id`), an empty list when nothing can match.
fn keys_in_scope(state: &Projections, caller: &Caller, q: &LogsQuery) -> Option<Vec<String>> {
    let owner = if caller.reads_everything() {
        q.user.clone()
    } else {
        match &q.user {
            Some(u) if *u != caller.user_id => return Some(Vec::new()),
            _ => Some(caller.user_id.clone()),
        }
    };
    let owned = |owner: &str, key: &str| state.keys.get(key).is_some_and(|k| k.owner_id() == owner);
    match (owner, &q.key_id) {
        (None, None) => None,
        (None, Some(k)) => Some(vec![k.clone()]),
        (Some(o), Some(k)) => Some(if owned(&o, k) {
            vec![k.clone()]
        } else {
            Vec::new()
        }),
        (Some(o), None) => {
            let mut ids: Vec<String> = state
                .keys
                .by_owner(&o)
                .map(|k| k.key_id().to_owned())
                .collect();
            ids.sort_unstable();
            Some(ids)
        }
    }
}

fn row(env: &Envelope, event: Event, state: &Projections) -> Option<LogRow> {
    let key_id = event.key_id()?.to_owned();
    let key = state.keys.get(&key_id);
    let owner_id = key.map(|k| k.owner_id().to_owned());
    let owner = owner_id
        .as_deref()
        .and_then(|o| state.users.get(o))
        .map(|u| u.username.clone());
    let base = LogRow {
        seq: env.seq,
        at: time::format(&env.occurred_at),
        key_name: key.map(|k| k.name().to_owned()),
        owner_id,
        owner,
        key_id,
        provider_id: None,
        endpoint: String::new(),
        model: None,
        outcome: LogOutcome::Denied,
        deny_reason: None,
        suppressed: 0,
        status: None,
        latency_ms: None,
        upstream_latency_ms: None,
        prompt_tokens: 0,
        completion_tokens: 0,
        tokens: 0,
        stream: false,
        client_ip: None,
        request_id: env.request_id.clone(),
    };
    match event {
        Event::KeyUsed(u) => Some(LogRow {
            provider_id: Some(u.provider_id),
            endpoint: u.endpoint,
            model: u.model,
            outcome: u.outcome.into(),
            status: Some(u.status),
            latency_ms: Some(u.latency_us as f64 / 1000.0),
            upstream_latency_ms: u.upstream_latency_us.map(|l| l as f64 / 1000.0),
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            tokens: u.prompt_tokens.saturating_add(u.completion_tokens),
            stream: u.stream,
            client_ip: u.client_ip,
            ..base
        }),
        Event::KeyDenied(d) => Some(LogRow {
            endpoint: d.endpoint,
            model: d.model,
            outcome: LogOutcome::Denied,
            deny_reason: Some(d.reason),
            suppressed: d.suppressed,
            client_ip: d.client_ip,
            ..base
        }),
        _ => None,
    }
}

/// The request log, newest first. Admins see every key's rows and may filter by `user`; a
/// user sees their own keys' rows.
#[utoipa::path(get, path = "/logs", tag = "audit", params(LogsQuery),
    responses(
        (status = 200, body = LogPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn list_logs(
    State(app): State<AppState>,
    caller: Caller,
    Query(q): Query<LogsQuery>,
) -> Result<Json<LogPage>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest {
            detail: format!("limit must be between 1 and {MAX_LIMIT}"),
            field: Some("limit".into()),
        });
    }
    let from_time = parse_time("from", q.from.as_deref())?;
    let to_time = parse_time("to", q.to.as_deref())?;
    let empty = || {
        Json(LogPage {
            rows: Vec::new(),
            next_cursor: None,
        })
    };
    let streams = match keys_in_scope(&app.0.live.read(), &caller, &q) {
        None => Vec::new(),
        Some(ids) if ids.is_empty() => return Ok(empty()),
        Some(ids) => ids
            .iter()
            .map(|id| keyward_events::usage_stream(id))
            .collect(),
    };
    let until_seq = match q.cursor {
        Some(c) if c <= 1 => return Ok(empty()),
        Some(c) => Some(c - 1),
        None => None,
    };
    let mut filter = EventFilter {
        after_seq: 0,
        until_seq,
        types: vec!["key.used".to_owned(), "key.denied".to_owned()],
        streams,
        actor: None,
        from_time,
        to_time,
    };

    let mut rows: Vec<LogRow> = Vec::new();
    let mut scanned = 0;
    let mut next_cursor = None;
    'scan: loop {
        let page = app.0.store.read_newest(&filter, SCAN_PAGE).await?;
        let Some(oldest) = page.last().map(|e| e.seq) else {
            break;
        };
        {
            let state = app.0.live.read();
            for env in &page {
                let event = match env.decode() {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(seq = env.seq, error = %e, "a usage event does not decode; left out of the request log");
                        continue;
                    }
                };
                let Some(r) = row(env, event, &state) else {
                    continue;
                };
                if q.model
                    .as_ref()
                    .is_some_and(|m| r.model.as_ref() != Some(m))
                {
                    continue;
                }
                if q.outcome.is_some_and(|o| o != r.outcome) {
                    continue;
                }
                if rows.len() == limit {
                    // One more row exists beyond the page.
                    next_cursor = rows.last().map(|r| r.seq);
                    break 'scan;
                }
                rows.push(r);
            }
        }
        scanned += page.len();
        if page.len() < SCAN_PAGE || oldest <= 1 {
            break;
        }
        filter.until_seq = Some(oldest - 1);
        if scanned >= MAX_SCAN {
            next_cursor = Some(oldest);
            break;
        }
    }
    Ok(Json(LogPage { rows, next_cursor }))
}
