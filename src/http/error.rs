//! The management API's errors: `application/problem+json` (RFC 9457) with a precise
//! `detail`. A 5xx tells the client something generic and logs the real cause.

use axum::extract::FromRequest;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

use crate::commands::CommandError;
use crate::store::{AppendError, StoreError};

#[derive(Debug)]
pub enum ApiError {
    /// 400: the request cannot be read at all (malformed JSON, a bad query string).
    BadRequest {
        detail: String,
        field: Option<String>,
    },
    /// 401: no usable credentials.
    Unauthorized(String),
    /// 403: authenticated, but this credential may not do this.
    Forbidden(String),
    /// 404: no such object, or one the caller may not see.
    NotFound(String),
    /// 409: the object changed meanwhile, or the action conflicts with its state.
    Conflict {
        detail: String,
        extra: Option<Value>,
    },
    /// 413
    PayloadTooLarge(String),
    /// 415
    UnsupportedMediaType(String),
    /// 422: well-formed but invalid; `field` names the culprit.
    Unprocessable {
        detail: String,
        field: Option<String>,
    },
    /// 429
    TooManyRequests {
        detail: String,
        retry_after_secs: u64,
    },
    /// 429 with a code of its own, for a refusal a client should tell apart from the
    /// rate limit, e.g. `too_many_replays`.
    Throttled {
        code: &'static str,
        detail: String,
        retry_after_secs: u64,
    },
    /// 502: an upstream (a provider being verified) could not be reached.
    BadGateway(String),
    /// 503: the store is down; nothing was written.
    Unavailable,
    /// 500: logged with its cause, reported without it.
    Internal(String),
    /// A client error with its own stable `code`, and the `field` at fault where there is
    /// one: e.g. 403 `ip_not_allowed`, 403 `widening_needs_admin` on `rate_limit`.
    Coded {
        status: StatusCode,
        code: &'static str,
        detail: String,
        field: Option<String>,
    },
}

impl ApiError {
    pub fn invalid(field: &str, detail: impl Into<String>) -> ApiError {
        ApiError::Unprocessable {
            detail: detail.into(),
            field: Some(field.to_owned()),
        }
    }

    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::NotFound(what.into())
    }

    /// A refusal with its own `code`.
    pub fn coded(status: StatusCode, code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::Coded {
            status,
            code,
            detail: detail.into(),
            field: None,
        }
    }

    /// A refusal with its own `code` that names the request field at fault.
    pub fn coded_field(
        status: StatusCode,
        code: &'static str,
        field: &str,
        detail: impl Into<String>,
    ) -> ApiError {
        ApiError::Coded {
            status,
            code,
            detail: detail.into(),
            field: Some(field.to_owned()),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::BadRequest { .. } => (StatusCode::BAD_REQUEST, "bad_request", "Bad request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", "Not found"),
            ApiError::Conflict { .. } => (StatusCode::CONFLICT, "conflict", "Conflict"),
            ApiError::PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Payload too large",
            ),
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type",
            ),
            ApiError::Unprocessable { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "Invalid request",
            ),
            ApiError::TooManyRequests { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "Too many requests",
            ),
            ApiError::Throttled { code, .. } => {
                (StatusCode::TOO_MANY_REQUESTS, code, "Too many requests")
            }
            ApiError::BadGateway(_) => (StatusCode::BAD_GATEWAY, "bad_gateway", "Bad gateway"),
            ApiError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
            ApiError::Coded { status, code, .. } => {
                (*status, code, status.canonical_reason().unwrap_or("Error"))
            }
        }
    }
}

/// The body of every management error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// A stable machine-readable code.
    pub code: String,
    /// The request field at fault, where there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// More about the problem, e.g. the keys that depend on a provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub extra: Option<Value>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, title) = self.parts();
        let mut retry_after = None;
        let (detail, field, extra) = match self {
            ApiError::BadRequest { detail, field } | ApiError::Unprocessable { detail, field } => {
                (detail, field, None)
            }
            ApiError::Conflict { detail, extra } => (detail, None, extra),
            ApiError::Coded { detail, field, .. } => (detail, field, None),
            ApiError::TooManyRequests {
                detail,
                retry_after_secs,
            }
            | ApiError::Throttled {
                detail,
                retry_after_secs,
                ..
            } => {
                retry_after = Some(retry_after_secs);
                (detail, None, None)
            }
            // The id in "key X was not found" is whatever the client put in the path.
            ApiError::NotFound(d) => (
                crate::http::request_id::redact_words(&d, ' ').into_owned(),
                None,
                None,
            ),
            ApiError::Unauthorized(d)
            | ApiError::Forbidden(d)
            | ApiError::PayloadTooLarge(d)
            | ApiError::UnsupportedMediaType(d)
            | ApiError::BadGateway(d) => (d, None, None),
            ApiError::Unavailable => (
                "the event store is unavailable; nothing was written. Retry later.".to_owned(),
                None,
                None,
            ),
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                (
                    "an internal error occurred; it has been logged".to_owned(),
                    None,
                    None,
                )
            }
        };
        // A client can send a key anywhere (a path, a field, a value of the wrong type),
        // and a message may quote what it got: no Keyward key leaves in a problem.
        let body = Problem {
            kind: format!("https://keyward.dev/problems/{code}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: redact_keys(detail),
            code: code.to_owned(),
            field: field.map(redact_keys),
            extra,
        };
        let mut res = (status, axum::Json(body)).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(s) = retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        res
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "event store failure");
        ApiError::Unavailable
    }
}

impl From<AppendError> for ApiError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Conflict { .. } => ApiError::Conflict {
                detail: "the object was changed by another request; read it again and retry"
                    .to_owned(),
                extra: None,
            },
            AppendError::Store(s) => s.into(),
            AppendError::Closed => ApiError::Unavailable,
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Append(a) => a.into(),
            CommandError::Invalid(d) => ApiError::Unprocessable {
                detail: d,
                field: None,
            },
            CommandError::InvalidField { field, detail } => ApiError::Unprocessable {
                detail: format!("{field}: {detail}"),
                field: Some(field.to_owned()),
            },
            CommandError::NotFound(what) => ApiError::NotFound(format!("{what} was not found")),
            CommandError::Conflict(d) => ApiError::Conflict {
                detail: d,
                extra: None,
            },
            CommandError::ConflictWith { detail, extra } => ApiError::Conflict {
                detail,
                extra: Some(extra),
            },
            CommandError::NeedsAdmin { field, detail } => {
                ApiError::coded_field(StatusCode::FORBIDDEN, "widening_needs_admin", field, detail)
            }
            CommandError::KeyLimit(detail) => {
                ApiError::coded(StatusCode::CONFLICT, "key_limit_reached", detail)
            }
        }
    }
}

/// `axum::Json` whose rejections are problem+json with the exact status: 415 for a wrong
/// content type, 400 for malformed JSON, 422 for a body that does not fit (unknown or
/// missing fields, wrong types; serde names the field), 413 for an oversized body.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rej) => Err(json_rejection(rej)),
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn json_rejection(rej: JsonRejection) -> ApiError {
    match rej {
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
            "the body must be JSON, sent with Content-Type: application/json".to_owned(),
        ),
        JsonRejection::JsonSyntaxError(e) => ApiError::BadRequest {
            detail: format!("the body is not valid JSON: {}", source_text(&e)),
            field: None,
        },
        JsonRejection::JsonDataError(e) => {
            let text = without_values(&source_text(&e));
            let field = field_from_serde(&text);
            ApiError::Unprocessable {
                detail: format!("the body does not fit the schema: {text}"),
                field,
            }
        }
        JsonRejection::BytesRejection(e) => {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("the body is larger than the configured limit".to_owned())
            } else {
                ApiError::BadRequest {
                    detail: "the body could not be read".to_owned(),
                    field: None,
                }
            }
        }
        other => ApiError::BadRequest {
            detail: other.body_text(),
            field: None,
        },
    }
}

/// Any `kw_…` key shape replaced by `[redacted]`.
pub fn redact_keys(text: String) -> String {
    if !text.contains("kw_") {
        return text;
    }
    String::from_utf8_lossy(&crate::providers::wire::scrub(text.as_bytes(), "")).into_owned()
}

/// A serde message without the client's values in it: `invalid type: string "…"`,
/// `invalid value: string "…"` and `unknown variant `…`` quote what was sent, which may
/// be a credential pasted into the wrong field. What was expected stays.
pub fn without_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let quoted = rest.find("string \"").map(|i| (i, 7, '"'));
        let ticked = rest.find("variant `").map(|i| (i, 8, '`'));
        let next = match (quoted, ticked) {
            (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
            (a, b) => a.or(b),
        };
        let Some((at, skip, close)) = next else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..at + skip - 1]);
        let value = &rest[at + skip..];
        let mut end = None;
        let mut escaped = false;
        for (i, c) in value.char_indices().skip(1) {
            if close == '"' && c == '\\' && !escaped {
                escaped = true;
                continue;
            }
            if c == close && !escaped {
                end = Some(i + c.len_utf8());
                break;
            }
            escaped = false;
        }
        match end {
            Some(e) => rest = &value[e..],
            None => return out,
        }
    }
}

fn source_text(e: &dyn std::error::Error) -> String {
    // The innermost cause: serde_json's own message with its line and column.
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// axum reports `path.to.field: message` (serde_path_to_error); an unknown or missing
/// field is named in backticks in the message itself.
fn field_from_serde(text: &str) -> Option<String> {
    let path = text
        .split(": ")
        .next()
        .filter(|p| *p != "." && !p.contains(' '))
        .unwrap_or("");
    // For an unknown field the path already ends with it; for a missing one it is the parent.
    if let Some(start) = text.find("missing field `") {
        let name = text[start + 15..].split('`').next().unwrap_or_default();
        return Some(if path.is_empty() {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        });
    }
    if let Some(start) = text.find("unknown field `") {
        let name = text[start + 15..].split('`').next().unwrap_or_default();
        return Some(if path.is_empty() {
            name.to_owned()
        } else {
            path.to_owned()
        });
    }
    (!path.is_empty()).then(|| path.to_owned())
}

/// `axum::extract::Query` whose rejection is a 400 problem naming the parameter.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(rej) => Err(query_rejection(&rej)),
        }
    }
}

/// A query string that does not fit: 400, naming the parameter.
pub fn query_rejection(rej: &axum::extract::rejection::QueryRejection) -> ApiError {
    let text = rej.body_text();
    let text = without_values(
        text.strip_prefix("Failed to deserialize query string: ")
            .unwrap_or(&text),
    );
    let field = field_from_serde(&text);
    ApiError::BadRequest {
        detail: format!("invalid query string: {text}"),
        field,
    }
}

/// Like [`Query`], for a query string in which the parameters named in `lists` may be
/// repeated (`type=a&type=b`) or comma-separated (`type=a,b`): their values are joined
/// with commas before `T` sees them.
pub fn query_with_lists<T: serde::de::DeserializeOwned>(
    uri: &axum::http::Uri,
    lists: &[&str],
) -> Result<T, ApiError> {
    let bad = |detail: String| ApiError::BadRequest {
        detail,
        field: None,
    };
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(uri.query().unwrap_or(""))
        .map_err(|e| bad(format!("invalid query string: {e}")))?;
    let mut joined: Vec<(String, Vec<String>)> = Vec::new();
    let mut rest: Vec<(String, String)> = Vec::new();
    for (k, v) in pairs {
        if lists.contains(&k.as_str()) {
            let values = v.split(',').map(str::trim).filter(|s| !s.is_empty());
            match joined.iter_mut().find(|(name, _)| *name == k) {
                Some((_, all)) => all.extend(values.map(str::to_owned)),
                None => joined.push((k, values.map(str::to_owned).collect())),
            }
        } else {
            rest.push((k, v));
        }
    }
    rest.extend(
        joined
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k, v.join(","))),
    );
    let query = serde_urlencoded::to_string(&rest)
        .map_err(|e| bad(format!("invalid query string: {e}")))?;
    let uri: axum::http::Uri = format!("/?{query}")
        .parse()
        .map_err(|_| bad("invalid query string".to_owned()))?;
    axum::extract::Query::<T>::try_from_uri(&uri)
        .map(|axum::extract::Query(v)| v)
        .map_err(|rej| query_rejection(&rej))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_lose_the_values_and_keep_what_was_expected() {
        assert_eq!(
            without_values(
                r#"kind: unknown variant `sk-live-123`, expected one of `openai`, `anthropic`"#
            ),
            "kind: unknown variant, expected one of `openai`, `anthropic`"
        );
        assert_eq!(
            without_values(
                r#"invalid type: string "sk-\"quoted\" x", expected a sequence at line 1 column 9"#
            ),
            "invalid type: string, expected a sequence at line 1 column 9"
        );
        assert_eq!(
            without_values(
                r#"a: invalid value: string "x", expected y; b: unknown variant `z`, expected `w`"#
            ),
            "a: invalid value: string, expected y; b: unknown variant, expected `w`"
        );
        assert_eq!(
            without_values("missing field `name`"),
            "missing field `name`"
        );
    }

    #[test]
    fn a_missing_object_is_named_only_by_an_id_keyward_issued() {
        assert_eq!(
            crate::http::request_id::redact_words(
                "key sk-live-AbCdEf0123456789xyz was not found",
                ' '
            ),
            "key [redacted] was not found"
        );
        assert_eq!(
            crate::http::request_id::redact_words(
                "key key_01J00000000000000000000000 was not found",
                ' '
            ),
            "key key_01J00000000000000000000000 was not found"
        );
    }

    #[test]
    fn no_key_leaves_in_a_problem() {
        let key = crate::crypto::Secret::generate();
        assert_eq!(
            redact_keys(format!("key {} not found", key.expose())),
            "key [redacted] not found"
        );
    }
}
