//! The audit log: events by cursor with filters, an NDJSON export, the chain verification
//! and the checkpoint. Admins and auditors see every event; a user sees the events of
//! their own keys (`key:<id>` and `usage:<id>`, deleted keys included) and nothing else.
//!
//! Taking a copy of or a view into the history (an export, an as-of replay, a proof, the
//! checkpoint) is itself recorded, before the answer is served: [`record_audit_read`].

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use keyward_events::{AuditRead, AuditReadKind, EVENT_TYPES, Envelope, Event};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::audit;
use crate::http::caller::{Caller, Reader};
use crate::http::error::{ApiError, Json, Problem, query_with_lists};
use crate::http::keys::EventPage;
use crate::store::EventFilter;
use crate::time::{self, Timestamp};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(audit_events))
        .routes(routes!(audit_export))
        .routes(routes!(audit_verify))
        .routes(routes!(audit_checkpoint))
        .routes(routes!(audit_inclusion_proof))
        .routes(routes!(audit_consistency_proof))
}

// ---------- recording reads ----------

/// One read of the audit history, as [`record_audit_read`] records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadOf {
    pub kind: AuditReadKind,
    /// What was asked for: the query string (see [`filter_text`]).
    pub filter: Option<String>,
    /// The range read: events after this seq…
    pub after_seq: Option<u64>,
    /// …up to and including this one.
    pub until_seq: Option<u64>,
}

/// The longest filter text recorded; a longer query is cut (on a character boundary) and
/// marked with `…`.
const MAX_FILTER_TEXT: usize = 1024;

/// The filter of a read as recorded: the request's query string. The management API takes
/// its key in a header and its routes refuse unknown parameters, so a query holds only
/// filters, never a secret. `None` when there is none.
pub fn filter_text(uri: &Uri) -> Option<String> {
    let q = uri.query().filter(|q| !q.is_empty())?;
    if q.len() <= MAX_FILTER_TEXT {
        return Some(q.to_owned());
    }
    let mut end = MAX_FILTER_TEXT;
    while !q.is_char_boundary(end) {
        end -= 1;
    }
    Some(format!("{}…", &q[..end]))
}

/// Appends one `audit.read` (who, what, which range) and waits for its commit, before the
/// read is answered. If it cannot be appended the read is refused with 503: a copy of the
/// log nobody can account for is not handed out (fail closed).
pub async fn record_audit_read(
    app: &AppState,
    caller: &Caller,
    read: ReadOf,
) -> Result<(), ApiError> {
    let event = Event::AuditRead(AuditRead {
        user_id: Some(caller.user_id.clone()),
        kind: read.kind,
        filter: read.filter,
        after_seq: read.after_seq,
        until_seq: read.until_seq,
    });
    match app.0.commands.record(&caller.actor(), &event).await {
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::error!(error = %e, kind = read.kind.as_str(), "cannot record a read of the audit history; refusing it");
            Err(ApiError::Unavailable)
        }
    }
}

const MAX_LIMIT: usize = 1000;
const MAX_TYPES: usize = 32;
/// Events per page of the export: each page is one chunk of the response body.
const EXPORT_PAGE: usize = 1000;

// ---------- filters and visibility ----------

/// The filters common to the event list and the export.
struct Filters {
    cursor: Option<u64>,
    types: Option<String>,
    stream: Option<String>,
    actor: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

pub(crate) fn parse_time(field: &str, s: Option<&str>) -> Result<Option<Timestamp>, ApiError> {
    s.map(|v| {
        time::parse(v).ok_or_else(|| ApiError::BadRequest {
            detail: format!("{field} {v:?} is not an RFC 3339 time such as 2026-01-31T00:00:00Z"),
            field: Some(field.to_owned()),
        })
    })
    .transpose()
}

/// The streams a caller may read: `None` for everything (an admin), otherwise the key and
/// usage streams of the keys they own, deleted ones included.
pub(crate) fn visible_streams(app: &AppState, caller: &Caller) -> Option<Vec<String>> {
    if caller.reads_everything() {
        return None;
    }
    let state = app.0.live.read();
    let mut ids: Vec<&str> = state
        .keys
        .by_owner(&caller.user_id)
        .map(|k| k.key_id())
        .collect();
    ids.sort_unstable();
    Some(
        ids.into_iter()
            .flat_map(|id| {
                [
                    keyward_events::key_stream(id),
                    keyward_events::usage_stream(id),
                ]
            })
            .collect(),
    )
}

/// The store filter for a caller's query, or `None` when nothing can match (a user asking
/// for a stream that is not theirs, or who has no keys): an empty `streams` list would
/// mean every stream.
fn filter_for(
    app: &AppState,
    caller: &Caller,
    f: Filters,
) -> Result<Option<EventFilter>, ApiError> {
    let types: Vec<String> = f
        .types
        .as_deref()
        .map(|t| t.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    if types.len() > MAX_TYPES {
        return Err(ApiError::BadRequest {
            detail: format!("at most {MAX_TYPES} types"),
            field: Some("type".into()),
        });
    }
    if let Some(t) = types.iter().find(|t| !EVENT_TYPES.contains(&t.as_str())) {
        return Err(ApiError::BadRequest {
            detail: format!(
                "{t:?} is not an event type; the types are {}",
                EVENT_TYPES.join(", ")
            ),
            field: Some("type".into()),
        });
    }
    let from_time = parse_time("from", f.from.as_deref())?;
    let to_time = parse_time("to", f.to.as_deref())?;
    if let (Some(a), Some(b)) = (from_time, to_time)
        && a > b
    {
        return Err(ApiError::BadRequest {
            detail: "from must not be after to".to_owned(),
            field: Some("from".into()),
        });
    }
    let streams = match (visible_streams(app, caller), f.stream) {
        (None, None) => Vec::new(),
        (None, Some(s)) => vec![s],
        (Some(own), None) if own.is_empty() => return Ok(None),
        (Some(own), None) => own,
        (Some(own), Some(s)) if own.contains(&s) => vec![s],
        (Some(_), Some(_)) => return Ok(None),
    };
    Ok(Some(EventFilter {
        after_seq: f.cursor.unwrap_or(0),
        until_seq: None,
        types,
        streams,
        actor: f.actor,
        from_time,
        to_time,
    }))
}

// ---------- events ----------

/// The envelope as a reader may see it: a schema 1 password hash replaced (see
/// [`keyward_events::upcast::readable`]).
pub(crate) fn readable(env: Envelope) -> Envelope {
    match keyward_events::upcast::readable(&env) {
        std::borrow::Cow::Borrowed(_) => env,
        std::borrow::Cow::Owned(r) => r,
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only events after this seq: the `next_cursor` of the previous page.
    pub cursor: Option<u64>,
    /// Page size, 1 to 1000; default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Only events of these types, e.g. `key.created`; repeat the parameter or separate
    /// types with commas.
    #[serde(rename = "type")]
    #[param(rename = "type", value_type = Option<Vec<String>>, style = Form, explode)]
    pub types: Option<String>,
    /// Only events of this stream, e.g. `key:key_…`, `usage:key_…`, `provider:prv_…`.
    pub stream: Option<String>,
    /// Only events by this actor: a user id, a key id or `system`.
    pub actor: Option<String>,
    /// Only events at or after this time (RFC 3339).
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// Only events at or before this time (RFC 3339).
    #[param(format = DateTime)]
    pub to: Option<String>,
}

/// The event log in seq order, by cursor. Admins see every event; a user sees the events
/// of their own keys.
#[utoipa::path(get, path = "/audit/events", tag = "audit", params(AuditQuery),
    responses(
        (status = 200, body = EventPage),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn audit_events(
    State(app): State<AppState>,
    caller: Caller,
    uri: Uri,
) -> Result<Json<EventPage>, ApiError> {
    let q: AuditQuery = query_with_lists(&uri, &["type"])?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest {
            detail: format!("limit must be between 1 and {MAX_LIMIT}"),
            field: Some("limit".into()),
        });
    }
    let filter = filter_for(
        &app,
        &caller,
        Filters {
            cursor: q.cursor,
            types: q.types,
            stream: q.stream,
            actor: q.actor,
            from: q.from,
            to: q.to,
        },
    )?;
    let Some(filter) = filter else {
        return Ok(Json(EventPage {
            events: Vec::new(),
            next_cursor: None,
        }));
    };
    let mut events = app.0.store.read(&filter, limit + 1).await?;
    let more = events.len() > limit;
    events.truncate(limit);
    let next_cursor = if more {
        events.last().map(|e| e.seq)
    } else {
        None
    };
    let events = events.into_iter().map(readable).collect();
    Ok(Json(EventPage {
        events,
        next_cursor,
    }))
}

// ---------- export ----------

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// Only events after this seq.
    pub cursor: Option<u64>,
    /// Only events of these types; repeat the parameter or separate types with commas.
    #[serde(rename = "type")]
    #[param(rename = "type", value_type = Option<Vec<String>>, style = Form, explode)]
    pub types: Option<String>,
    pub stream: Option<String>,
    pub actor: Option<String>,
    #[param(format = DateTime)]
    pub from: Option<String>,
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// Start the export with a checkpoint signed now (`{"checkpoint":"<signed note>"}`)
    /// and give each event its inclusion proof against it (`inclusion_proof`), so that a
    /// filtered export verifies event by event offline (`keyward-verify`). 409
    /// `no_checkpoint_key` when this service signs no checkpoints.
    pub with_proofs: Option<bool>,
}

fn ndjson(page: &[Envelope]) -> Bytes {
    let mut buf = Vec::with_capacity(page.len() * 512);
    for env in page {
        // Serialising an envelope to memory cannot fail: every field is plain data.
        if serde_json::to_writer(&mut buf, &*keyward_events::upcast::readable(env)).is_ok() {
            buf.push(b'\n');
        }
    }
    Bytes::from(buf)
}

/// The lines of a page of an export with proofs: each event's readable envelope with its
/// inclusion proof in the tree of `size` events whose root is `root`.
async fn ndjson_with_proofs(
    store: &dyn crate::store::EventStore,
    page: &[Envelope],
    size: u64,
    root: &keyward_events::Hash32,
) -> Result<Bytes, audit::TreeError> {
    let proofs = audit::inclusion_proofs(store, page, size, root).await?;
    let mut buf = Vec::with_capacity(page.len() * 1024);
    for (env, proof) in page.iter().zip(&proofs) {
        // Writing to memory cannot fail: every field is plain data.
        let _ = keyward_events::export::write_event_line(
            &mut buf,
            &keyward_events::upcast::readable(env),
            Some(proof),
        );
    }
    Ok(Bytes::from(buf))
}

/// The events as NDJSON, one envelope per line as stored, so that the lines can be
/// verified as a hash chain offline (an unfiltered export by an admin is the whole chain).
/// One exception: a `user.created` or `user.updated` of schema 1 held a password hash in
/// plaintext, and its value is replaced by `<redacted>`; such a line no longer verifies on
/// its own (`/audit/verify` checks the stored bytes). Streamed page by page up to the head
/// at the time of the request; same filters and visibility as `/audit/events`. Each export
/// is recorded first, as an `audit.read` of kind `export` with the query and the range
/// (503 when it cannot be); the record is not part of the export.
#[utoipa::path(get, path = "/audit/export", tag = "audit", params(ExportQuery),
    responses(
        (status = 200, description = "One event envelope per line", body = String,
            content_type = "application/x-ndjson"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn audit_export(
    State(app): State<AppState>,
    caller: Caller,
    uri: Uri,
) -> Result<Response, ApiError> {
    let q: ExportQuery = query_with_lists(&uri, &["type"])?;
    let after_seq = q.cursor.unwrap_or(0);
    let filter = filter_for(
        &app,
        &caller,
        Filters {
            cursor: q.cursor,
            types: q.types,
            stream: q.stream,
            actor: q.actor,
            from: q.from,
            to: q.to,
        },
    )?;
    // The export ends at the head as it is now, and says so in its record: the record
    // itself, appended next, is not part of it. With proofs it ends at the tree's size,
    // which the checkpoint signed for it covers.
    let with_proofs = q.with_proofs.unwrap_or(false);
    let signing = if with_proofs {
        let key = app.0.checkpoint_key.clone().ok_or_else(|| {
            ApiError::coded_field(
                axum::http::StatusCode::CONFLICT,
                "no_checkpoint_key",
                "with_proofs",
                "this service signs no checkpoints (no checkpoint key is configured), so an export cannot carry proofs",
            )
        })?;
        Some(key)
    } else {
        None
    };
    let head = if with_proofs {
        app.0.store.tree_size().await?
    } else {
        app.0.store.head().await?.seq
    };
    record_audit_read(
        &app,
        &caller,
        ReadOf {
            kind: AuditReadKind::Export,
            filter: filter_text(&uri),
            after_seq: Some(after_seq),
            until_seq: Some(head),
        },
    )
    .await?;
    let signed = match &signing {
        None => None,
        Some(key) => {
            let dir = app.0.config.checkpoint.dir.clone();
            match crate::checkpoint::sign_for_export(
                app.0.store.as_ref(),
                key,
                dir.as_deref(),
                head,
            )
            .await
            {
                Ok(signed) => Some(signed),
                Err(crate::checkpoint::ExportSignError::Tree(e)) => return Err(e.into()),
                Err(e) => {
                    tracing::error!(error = %e, "cannot sign a checkpoint for an export with proofs");
                    return Err(ApiError::Internal(e.to_string()));
                }
            }
        }
    };
    let body = match (filter, signed) {
        (None, None) => Body::empty(),
        (None, Some((_, note))) => {
            Body::from(keyward_events::export::checkpoint_line(&note) + "\n")
        }
        (Some(mut filter), Some((cp, note))) => {
            filter.until_seq = Some(head);
            let store = app.0.store.clone();
            let mut pages = Box::pin(audit::pages(store.clone(), filter, EXPORT_PAGE));
            let first = pages.try_next().await?;
            let first = match first {
                Some(page) => {
                    Some(ndjson_with_proofs(store.as_ref(), &page, cp.size, &cp.root).await?)
                }
                None => None,
            };
            let rest = pages
                .map_err(audit::TreeError::from)
                .and_then(move |page| {
                    let store = store.clone();
                    async move { ndjson_with_proofs(store.as_ref(), &page, cp.size, &cp.root).await }
                })
                .inspect_err(|e| {
                    tracing::error!(error = %e, "the audit export with proofs stopped mid-stream");
                });
            let head_line = Bytes::from(keyward_events::export::checkpoint_line(&note) + "\n");
            Body::from_stream(
                futures::stream::iter([Ok(head_line)].into_iter().chain(first.map(Ok))).chain(rest),
            )
        }
        (Some(mut filter), None) => {
            filter.until_seq = Some(head);
            let mut pages = Box::pin(audit::pages(app.0.store.clone(), filter, EXPORT_PAGE));
            // The first page is read before answering, so that a store that is down is a
            // 503 rather than a 200 with a cut-off body.
            let first = pages.try_next().await?;
            let rest = pages.inspect_err(|e| {
                tracing::error!(error = %e, "the audit export stopped: the store failed mid-stream");
            });
            Body::from_stream(
                futures::stream::iter(first.map(Ok))
                    .chain(rest)
                    .map_ok(|page| ndjson(&page)),
            )
        }
    };
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"keyward-audit.ndjson\""),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

// ---------- verify and checkpoint ----------

#[derive(Debug, Serialize, ToSchema)]
pub struct ChainVerification {
    /// Every event up to the head verified.
    pub ok: bool,
    /// The log's last event when the verification started.
    pub head_seq: u64,
    /// Its stored hash, hex.
    pub head_hash: String,
    /// How many events verified before the walk ended.
    pub checked: u64,
    /// The first seq at which the chain does not hold.
    pub first_bad_seq: Option<u64>,
    /// Why it does not hold there.
    pub reason: Option<String>,
}

/// Recompute every event's hash and check the links between them (admins, auditors).
#[utoipa::path(get, path = "/audit/verify", tag = "audit",
    responses(
        (status = 200, body = ChainVerification),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn audit_verify(
    State(app): State<AppState>,
    Reader(_caller): Reader,
) -> Result<Json<ChainVerification>, ApiError> {
    let r = audit::verify_chain(app.0.store.as_ref(), None).await?;
    Ok(Json(ChainVerification {
        ok: r.ok(),
        head_seq: r.head.seq,
        head_hash: r.head.hash.to_hex(),
        checked: r.checked,
        first_bad_seq: r.failure.as_ref().map(|f| f.seq),
        reason: r.failure.map(|f| f.reason),
    }))
}

/// The log's head, to keep elsewhere and verify a later log against
/// (`keyward audit verify --checkpoint`).
#[derive(Debug, Serialize, ToSchema)]
pub struct Checkpoint {
    pub seq: u64,
    /// The hash of the event at `seq`, hex.
    pub hash: String,
    /// When the checkpoint was taken.
    #[schema(format = DateTime)]
    pub at: String,
}

/// The head seq and hash (admins and auditors).
///
/// Each request is recorded as an `audit.read` of kind `checkpoint` before it is answered;
/// 503 when it cannot be.
#[utoipa::path(get, path = "/audit/checkpoint", tag = "audit",
    responses(
        (status = 200, body = Checkpoint),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn audit_checkpoint(
    State(app): State<AppState>,
    Reader(caller): Reader,
) -> Result<Json<Checkpoint>, ApiError> {
    let cp = audit::checkpoint(app.0.store.as_ref()).await?;
    record_audit_read(
        &app,
        &caller,
        ReadOf {
            kind: AuditReadKind::Checkpoint,
            filter: None,
            after_seq: None,
            until_seq: Some(cp.head.seq),
        },
    )
    .await?;
    Ok(Json(Checkpoint {
        seq: cp.head.seq,
        hash: cp.head.hash.to_hex(),
        at: time::format(&cp.at),
    }))
}

// ---------- Merkle proofs (issue 17) ----------

impl From<audit::TreeError> for ApiError {
    fn from(e: audit::TreeError) -> Self {
        match e {
            audit::TreeError::Unavailable(s) => s.into(),
            audit::TreeError::OutOfRange {
                field,
                value,
                reason,
            } => ApiError::coded_field(
                axum::http::StatusCode::BAD_REQUEST,
                "out_of_range",
                field,
                format!("{field} {value} is out of range: {reason}"),
            ),
            audit::TreeError::Corrupt(cause) => {
                ApiError::Internal(format!("the Merkle tree is corrupt: {cause}"))
            }
        }
    }
}

/// A query string read after the caller is known, so that an anonymous request is a 401
/// whatever its parameters; a missing or non-numeric parameter is a 400 naming it.
fn proof_query<T: serde::de::DeserializeOwned>(uri: &Uri) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(uri)
        .map(|axum::extract::Query(v)| v)
        .map_err(|rej| crate::http::error::query_rejection(&rej))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct InclusionQuery {
    /// The event to prove: its seq, from 1.
    #[param(minimum = 1)]
    pub seq: u64,
    /// The size of the tree to prove it in: 1 to the log's head, and at least `seq`.
    /// Default: the head when the request is served (the answer says which size it used).
    /// Ask for the size of a checkpoint you hold to check the proof against its root.
    #[param(minimum = 1)]
    pub tree_size: Option<u64>,
}

/// That one event is in the tree over the first `tree_size` events (RFC 9162 §2.1.3).
#[derive(Debug, Serialize, ToSchema)]
pub struct InclusionProof {
    pub seq: u64,
    pub tree_size: u64,
    /// `seq - 1`: the leaf's index in the tree.
    pub leaf_index: u64,
    /// The event's chain hash (hex): the leaf's data.
    pub event_hash: String,
    /// SHA-256(0x00 || event hash), hex.
    pub leaf_hash: String,
    /// The root of the tree of `tree_size` leaves, hex.
    pub root: String,
    /// The audit path, from the leaf up, hex.
    pub proof: Vec<String>,
}

fn hexes(hashes: &[keyward_events::Hash32]) -> Vec<String> {
    hashes.iter().map(keyward_events::Hash32::to_hex).collect()
}

/// The inclusion proof of event `seq` in the Merkle tree over the first `tree_size`
/// events (RFC 6962 shape: leaf i is SHA-256(0x00 || hash of event seq i+1)). Verify it
/// with RFC 9162's algorithm against the root of a signed checkpoint of that size.
/// Out-of-range values are 400 `out_of_range` naming `seq` or `tree_size`: seq 0, a seq
/// above the tree size, a tree size above the log's head.
#[utoipa::path(get, path = "/audit/proof/inclusion", tag = "audit", params(InclusionQuery),
    responses(
        (status = 200, body = InclusionProof),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn audit_inclusion_proof(
    State(app): State<AppState>,
    caller: Caller,
    uri: Uri,
) -> Result<Json<InclusionProof>, ApiError> {
    caller.require_reads_everything()?;
    let q: InclusionQuery = proof_query(&uri)?;
    let store = app.0.store.as_ref();
    let tree_size = match q.tree_size {
        Some(n) => n,
        None => store.tree_size().await?,
    };
    if tree_size == 0 && q.seq != 0 {
        return Err(audit::TreeError::OutOfRange {
            field: "tree_size",
            value: 0,
            reason: "the empty tree includes no event".to_owned(),
        }
        .into());
    }
    let p = audit::inclusion(store, q.seq, tree_size).await?;
    record_audit_read(
        &app,
        &caller,
        ReadOf {
            kind: AuditReadKind::Proof,
            filter: filter_text(&uri),
            after_seq: Some(q.seq - 1),
            until_seq: Some(p.tree_size),
        },
    )
    .await?;
    Ok(Json(InclusionProof {
        seq: q.seq,
        tree_size: p.tree_size,
        leaf_index: p.leaf_index,
        event_hash: p.event_hash.to_hex(),
        leaf_hash: p.leaf_hash.to_hex(),
        root: p.root.to_hex(),
        proof: hexes(&p.proof),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConsistencyQuery {
    /// The size of the older tree, from 1 (every tree extends the empty one; RFC 9162
    /// has no proof for it).
    #[param(minimum = 1)]
    pub from: u64,
    /// The size of the newer tree: `from` to the log's head. Default: the head when the
    /// request is served (the answer says which size it used).
    #[param(minimum = 1)]
    pub to: Option<u64>,
}

/// That the tree over the first `to` events extends the one over the first `from`
/// (RFC 9162 §2.1.4).
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsistencyProof {
    pub from: u64,
    pub to: u64,
    /// The root of the tree of `from` leaves, hex.
    pub from_root: String,
    /// The root of the tree of `to` leaves, hex.
    pub to_root: String,
    /// The consistency proof, hex; empty when `from` equals `to`.
    pub proof: Vec<String>,
}

/// The proof that the Merkle tree over the first `to` events extends the one over the
/// first `from`: a checkpoint of size `from` held elsewhere is a prefix of today's log.
/// Out-of-range values are 400 `out_of_range` naming `from` or `to`: from 0, from above
/// to, to above the log's head.
#[utoipa::path(get, path = "/audit/proof/consistency", tag = "audit", params(ConsistencyQuery),
    responses(
        (status = 200, body = ConsistencyProof),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn audit_consistency_proof(
    State(app): State<AppState>,
    caller: Caller,
    uri: Uri,
) -> Result<Json<ConsistencyProof>, ApiError> {
    caller.require_reads_everything()?;
    let q: ConsistencyQuery = proof_query(&uri)?;
    let store = app.0.store.as_ref();
    let to = match q.to {
        Some(n) => n,
        None => store.tree_size().await?,
    };
    let p = audit::consistency(store, q.from, to).await?;
    record_audit_read(
        &app,
        &caller,
        ReadOf {
            kind: AuditReadKind::Proof,
            filter: filter_text(&uri),
            after_seq: Some(p.from),
            until_seq: Some(p.to),
        },
    )
    .await?;
    Ok(Json(ConsistencyProof {
        from: p.from,
        to: p.to,
        from_root: p.from_root.to_hex(),
        to_root: p.to_root.to_hex(),
        proof: hexes(&p.proof),
    }))
}
