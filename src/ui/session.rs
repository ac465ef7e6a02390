//! Console sessions, CSRF and sign-in throttling.
//!
//! A session id is 32 bytes from the OS RNG, sent once as the `kw_session` cookie and kept
//! server-side only as its blake3 hash, so a memory dump of the table cannot be replayed.
//! Sessions live in this node's memory: with several nodes, a console user needs sticky
//! routing or signs in on each node. That is the price of revocation that takes effect at
//! once and needs no shared secret: every request re-checks the user in the live projection
//! (which all nodes share through the log), so disabling a user or changing their password
//! ends their sessions on every node, and signing out ends this one.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::http::caller::Caller;
use crate::http::request_id::RequestId;

pub use super::user::{CSRF_FIELD, ConsoleUser};
pub use crate::http::console::{Admit, Busy, Console, random_token, tokens_match};
use crate::http::console::{hash_token, password_tag};

pub const SESSION_COOKIE: &str = "kw_session";
/// The double-submit token of the sign-in and set-up forms, before any session exists.
pub const PRE_COOKIE: &str = "kw_pre";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Form bodies are small; anything larger is refused.
const FORM_LIMIT: usize = 64 * 1024;
/// Whether the request reached us over TLS, as far as the configuration lets us know.
pub fn is_secure(state: &AppState, headers: &HeaderMap) -> bool {
    state.0.console.trust_forwarded_proto
        && headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

pub fn cookie(name: &str, value: &str, max_age: Option<u64>, secure: bool) -> HeaderValue {
    let mut c = format!("{name}={value}; Path=/ui; HttpOnly; SameSite=Strict");
    if let Some(s) = max_age {
        c.push_str(&format!("; Max-Age={s}"));
    }
    if secure {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

pub fn clear_cookie(name: &str, secure: bool) -> HeaderValue {
    cookie(name, "", Some(0), secure)
}

pub fn read_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub fn client_ip(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Why a console request was refused before its handler ran.
#[derive(Debug)]
pub enum Refused {
    /// No valid session: go and sign in.
    SignIn,
    /// A state-changing request that failed the origin or token check.
    Csrf(&'static str),
    TooLarge,
    BadForm(String),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::SignIn => Redirect::to("/ui/login").into_response(),
            Refused::Csrf(why) => super::pages::error_page(
                axum::http::StatusCode::FORBIDDEN,
                "Request refused",
                &format!(
                    "{why}. Reload the page and try again; if this keeps happening, sign out and in again."
                ),
            ),
            Refused::TooLarge => super::pages::error_page(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "Form too large",
                "The form sent more data than the console accepts.",
            ),
            Refused::BadForm(d) => super::pages::error_page(
                axum::http::StatusCode::BAD_REQUEST,
                "The form could not be read",
                &d,
            ),
        }
    }
}

/// Looks the session cookie up, and the user behind it in the live projection.
pub fn session_user(state: &AppState, parts: &Parts) -> Option<ConsoleUser> {
    let token = read_cookie(&parts.headers, SESSION_COOKIE)?;
    let key = hash_token(token);
    let now = Instant::now();
    let (user_id, csrf, tag) = {
        let mut sessions = state.0.console.sessions.lock();
        let s = sessions.get(&key)?;
        if s.expires <= now {
            sessions.remove(&key);
            return None;
        }
        (s.user_id.clone(), s.csrf.clone(), s.password_tag)
    };
    let user = state.0.live.read().users.get(&user_id).cloned();
    let valid = user.as_ref().filter(|u| {
        !u.disabled
            && u.password.is_some()
            && password_tag(u.password.as_ref().map(|p| p.identity())) == tag
    });
    let Some(u) = valid else {
        state.0.console.sessions.lock().remove(&key);
        return None;
    };
    Some(ConsoleUser {
        caller: Caller {
            user_id: u.user_id.clone(),
            username: u.username.clone(),
            role: u.role,
            // A console session is not a key; events record the user as the actor.
            key_id: String::new(),
            request_id: parts.extensions.get::<RequestId>().map(|r| r.0.clone()),
        },
        csrf,
        token: token.to_owned(),
    })
}

impl FromRequestParts<AppState> for ConsoleUser {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Refused> {
        session_user(state, parts).ok_or(Refused::SignIn)
    }
}

/// Same-origin check for a state-changing request: `Sec-Fetch-Site` when the browser sends
/// it, and `Origin` (or, without it, `Referer`) naming this host. A request with neither is
/// refused: browsers send `Origin` on every POST.
pub fn check_origin(headers: &HeaderMap) -> Result<(), Refused> {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && site != "same-origin"
    {
        return Err(Refused::Csrf("the request came from another site"));
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .ok_or(Refused::Csrf("the request names no host"))?;
    let source = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok())
        .ok_or(Refused::Csrf("the request does not say where it came from"))?;
    let authority = source
        .strip_prefix("https://")
        .or_else(|| source.strip_prefix("http://"))
        .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or(""));
    match authority {
        Some(a) if a.eq_ignore_ascii_case(host) => Ok(()),
        _ => Err(Refused::Csrf("the request came from another origin")),
    }
}

/// A state-changing console request: a session, the same-origin check, the session's CSRF
/// token (form field `csrf` or header `x-csrf-token`), and the form decoded as `T`.
pub struct Posted<T> {
    pub user: ConsoleUser,
    pub form: T,
}

async fn read_form(req: Request) -> Result<(Parts, Vec<u8>), Refused> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, FORM_LIMIT)
        .await
        .map_err(|_| Refused::TooLarge)?;
    Ok((parts, bytes.to_vec()))
}

fn form_token(parts: &Parts, body: &[u8]) -> Option<String> {
    if let Some(h) = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()) {
        return Some(h.to_owned());
    }
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == CSRF_FIELD)
        .map(|(_, v)| v)
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Refused> {
    serde_urlencoded::from_bytes::<T>(body).map_err(|e| Refused::BadForm(e.to_string()))
}

impl<T: DeserializeOwned + Send> FromRequest<AppState> for Posted<T> {
    type Rejection = Refused;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Refused> {
        let (parts, body) = read_form(req).await?;
        let user = session_user(state, &parts).ok_or(Refused::SignIn)?;
        check_origin(&parts.headers)?;
        let sent = form_token(&parts, &body).ok_or(Refused::Csrf("the form has no CSRF token"))?;
        if !tokens_match(&sent, &user.csrf) {
            return Err(Refused::Csrf("the form's CSRF token is not this session's"));
        }
        Ok(Posted {
            user,
            form: decode(&body)?,
        })
    }
}

/// A sign-in or set-up form: no session yet, so the token is the `kw_pre` cookie's,
/// submitted again in the form (double submit), plus the same-origin check.
pub struct PrePosted<T> {
    pub form: T,
    pub ip: Option<IpAddr>,
    pub secure: bool,
}

impl<T: DeserializeOwned + Send> FromRequest<AppState> for PrePosted<T> {
    type Rejection = Refused;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Refused> {
        let (parts, body) = read_form(req).await?;
        check_origin(&parts.headers)?;
        let cookie = read_cookie(&parts.headers, PRE_COOKIE)
            .ok_or(Refused::Csrf("the sign-in form has expired"))?;
        let sent = form_token(&parts, &body).ok_or(Refused::Csrf("the form has no CSRF token"))?;
        if cookie.len() != 64 || !tokens_match(&sent, cookie) {
            return Err(Refused::Csrf("the form's CSRF token does not match"));
        }
        Ok(PrePosted {
            form: decode(&body)?,
            ip: client_ip(&parts),
            secure: is_secure(state, &parts.headers),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_events::Role;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn origin_check_wants_this_host() {
        assert!(check_origin(&h(&[("host", "k:9090"), ("origin", "http://k:9090")])).is_ok());
        assert!(
            check_origin(&h(&[
                ("host", "k:9090"),
                ("referer", "https://k:9090/ui/keys")
            ]))
            .is_ok()
        );
        assert!(check_origin(&h(&[("host", "k:9090"), ("origin", "http://evil:9090")])).is_err());
        assert!(check_origin(&h(&[("host", "k:9090"), ("origin", "null")])).is_err());
        assert!(check_origin(&h(&[("host", "k:9090")])).is_err());
        assert!(
            check_origin(&h(&[
                ("host", "k:9090"),
                ("origin", "http://k:9090"),
                ("sec-fetch-site", "cross-site")
            ]))
            .is_err()
        );
    }

    #[test]
    fn a_console_user_prints_no_token() {
        let u = ConsoleUser {
            caller: Caller {
                user_id: "usr_1".into(),
                username: "alice".into(),
                role: Role::User,
                key_id: String::new(),
                request_id: None,
            },
            csrf: "c".repeat(64),
            token: "t".repeat(64),
        };
        let s = format!("{u:?}");
        assert!(s.contains("usr_1"), "{s}");
        assert!(!s.contains("cccc") && !s.contains("tttt"), "{s}");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(tokens_match("abc", "abc"));
        assert!(!tokens_match("abc", "abd"));
        assert!(!tokens_match("abc", "abcd"));
        assert_eq!(random_token().len(), 64);
        assert_ne!(random_token(), random_token());
    }

    #[test]
    fn cookies_are_read_by_exact_name() {
        let m = h(&[("cookie", "kw_session_x=1; kw_session=abc; other=2")]);
        assert_eq!(read_cookie(&m, SESSION_COOKIE), Some("abc"));
        assert_eq!(read_cookie(&m, PRE_COOKIE), None);
    }
}
