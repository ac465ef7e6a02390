//! The proxy's errors, in OpenAI's shape: `{"error":{"message","type","code","param"}}`.
//!
//! Messages are fixed texts written here. None of them quotes a header, a body or an
//! upstream error, so no key can be echoed through one.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// One refusal or failure of the proxy.
#[derive(Debug)]
pub struct ProxyError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
    /// Extra response headers (`Retry-After`, `x-ratelimit-*`); boxed to keep the error
    /// small on the happy path.
    pub headers: Option<Box<HeaderMap>>,
}

pub const INVALID_REQUEST: &str = "invalid_request_error";
pub const AUTHENTICATION: &str = "authentication_error";
pub const PERMISSION: &str = "permission_error";
pub const NOT_FOUND: &str = "not_found_error";
pub const RATE_LIMIT: &str = "rate_limit_error";
pub const UPSTREAM: &str = "api_error";

impl ProxyError {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> ProxyError {
        ProxyError {
            status,
            kind,
            code,
            message: message.into(),
            param: None,
            headers: None,
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> ProxyError {
        self.param = Some(param.into());
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: impl ToString) -> ProxyError {
        if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
            self.headers.get_or_insert_default().insert(name, v);
        }
        self
    }

    pub fn with_headers(mut self, headers: HeaderMap) -> ProxyError {
        if !headers.is_empty() {
            self.headers.get_or_insert_default().extend(headers);
        }
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ProxyError {
        ProxyError::new(StatusCode::BAD_REQUEST, INVALID_REQUEST, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> ProxyError {
        ProxyError::new(StatusCode::UNAUTHORIZED, AUTHENTICATION, code, message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> ProxyError {
        ProxyError::new(StatusCode::FORBIDDEN, PERMISSION, code, message)
    }

    pub fn bad_gateway(code: &'static str, message: impl Into<String>) -> ProxyError {
        ProxyError::new(StatusCode::BAD_GATEWAY, UPSTREAM, code, message)
    }

    pub fn upstream_unavailable() -> ProxyError {
        ProxyError::bad_gateway(
            "upstream_unavailable",
            "the provider could not be reached or closed the connection",
        )
    }

    pub fn upstream_timeout() -> ProxyError {
        ProxyError::new(
            StatusCode::GATEWAY_TIMEOUT,
            UPSTREAM,
            "upstream_timeout",
            "the provider did not answer in time",
        )
    }

    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "code": self.code,
                "param": self.param,
            }
        })
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let body = self.body();
        let mut res = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(h) = self.headers {
            res.headers_mut().extend(*h);
        }
        res
    }
}
