//! Sign-in, sign-out, and the one-time set-up of the initial admin's password.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use keyward_events::{Event, Role, Scope, UserSignedIn, UserSignedOut};
use keyward_projections::UserRecord;
use maud::{Markup, html};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::pages::{bare, notice, render};
use super::session::{
    self, Admit, Busy, CSRF_FIELD, PRE_COOKIE, Posted, PrePosted, SESSION_COOKIE, clear_cookie,
    cookie,
};
use crate::AppState;
use crate::auth;
use crate::commands::{Actor, UserPatch};

const SIGN_IN_FAILED: &str = "The username or password is not correct.";
const MIN_PASSWORD: usize = 12;
const MAX_PASSWORD: usize = 1024;

/// A fresh double-submit token for a form shown before any session exists.
fn with_pre_token(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    body: impl FnOnce(&str) -> Markup,
) -> Response {
    let token = session::random_token();
    let mut res = render(status, body(&token));
    res.headers_mut().append(
        header::SET_COOKIE,
        cookie(
            PRE_COOKIE,
            &token,
            Some(3600),
            session::is_secure(state, headers),
        ),
    );
    res
}

fn login_form(token: &str, username: &str, error: Option<&str>) -> Markup {
    bare(
        "Sign in",
        html! {
            @if let Some(e) = error { (notice("error", e)) }
            form.stack method="post" action="/ui/login" {
                input type="hidden" name=(CSRF_FIELD) value=(token);
                label for="username" { "Username" }
                input #username name="username" type="text" required autocomplete="username" value=(username) autofocus;
                label for="password" { "Password" }
                input #password name="password" type="password" required autocomplete="current-password";
                button.primary.wide type="submit" { "Sign in" }
            }
            p.hint { "First time? The initial admin sets a password on the " a href="/ui/setup" { "set-up page" } " with the initial admin key." }
        },
    )
}

pub async fn login_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if signed_in(&state, &headers) {
        return Redirect::to("/ui/keys").into_response();
    }
    with_pre_token(&state, &headers, StatusCode::OK, |t| {
        login_form(t, "", None)
    })
}

fn signed_in(state: &AppState, headers: &HeaderMap) -> bool {
    let mut req = axum::http::Request::new(());
    *req.headers_mut() = headers.clone();
    let (parts, ()) = req.into_parts();
    session::session_user(state, &parts).is_some()
}

/// A password or key from a form: zeroed on drop; prints nothing.
#[derive(Default)]
pub struct Secret(pub Zeroizing<String>);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Secret(Zeroizing::new(s)))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    username: String,
    password: Secret,
}

/// A hash to verify against when the user does not exist or has no password, so that a
/// failure takes as long whichever the reason.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| crate::crypto::hash_password(&session::random_token()).unwrap_or_default())
}

fn find_user(state: &AppState, username: &str) -> Option<Arc<UserRecord>> {
    let live = state.0.live.read();
    live.users
        .by_username(username)
        .or_else(|| {
            live.users
                .iter()
                .find(|u| u.username.eq_ignore_ascii_case(username))
        })
        .cloned()
}

/// Whether a user could have this name: what user creation accepts. Anything else is
/// refused before it is stored, hashed against or echoed back.
fn possible_username(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= crate::names::MAX_USERNAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The client as the throttles count it: an IPv4 address or an IPv6 /64's prefix.
fn client_label(ip: Option<IpAddr>) -> String {
    ip.map_or_else(
        || "unknown".to_owned(),
        |ip| crate::http::proxy::limits::client_prefix(ip).to_string(),
    )
}

const THROTTLED: &str = "Too many sign-in attempts. Wait a minute and try again.";
const BUSY: &str = "The server is busy checking other sign-ins. Try again in a moment.";
const NOT_RECORDED: &str =
    "The sign-in could not be recorded in the audit log, so it was refused. Try again in a moment.";

/// A console user acting for themselves (no key, no request id).
fn user_actor(user_id: &str) -> Actor {
    Actor {
        id: user_id.to_owned(),
        request_id: None,
    }
}

/// The sign-in, in the order that keeps a flood cheap: the client's throttle before
/// anything about the attempt is kept; the username's shape before it is stored, hashed
/// against or logged; the (username, client) throttle; then argon2, a bounded number at
/// once. A log line names a known user by id and any other name by a keyed fingerprint.
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    p: PrePosted<LoginForm>,
) -> Response {
    let console = &state.0.console;
    let typed = p.form.username.trim();
    let username = if possible_username(typed) { typed } else { "" };
    let client = client_label(p.ip);
    let page = |status: StatusCode, message: &str| {
        with_pre_token(&state, &headers, status, |t| {
            login_form(t, username, Some(message))
        })
    };
    if let Admit::No { log } = console.admit_client(p.ip) {
        if log {
            tracing::warn!(%client, "console sign-in throttled for this client");
        }
        return page(StatusCode::TOO_MANY_REQUESTS, THROTTLED);
    }
    if username.is_empty() || p.form.password.0.chars().count() > MAX_PASSWORD {
        // No user has this name, or this password: there is nothing to check.
        tracing::info!(%client, username_fp = %console.fingerprint(typed), "console sign-in failed");
        return page(StatusCode::UNAUTHORIZED, SIGN_IN_FAILED);
    }
    if let Admit::No { log } = console.admit_user(username, p.ip) {
        if log {
            tracing::warn!(%client, username_fp = %console.fingerprint(username), "console sign-in throttled for this username and client");
        }
        return page(StatusCode::TOO_MANY_REQUESTS, THROTTLED);
    }
    let user = find_user(&state, username);
    let phc = user.as_ref().and_then(|u| state.0.keyring.password_of(u));
    let password = p.form.password;
    let matches = match console
        .password_work(move || {
            // The decoy is hashed once, on the first sign-in, in an argon2 slot too.
            let phc = phc.as_ref().map_or_else(|| decoy_hash(), |p| p.expose());
            crate::crypto::verify_password(&password.0, phc)
        })
        .await
    {
        Ok(m) => m,
        Err(Busy) => {
            let mut res = page(StatusCode::SERVICE_UNAVAILABLE, BUSY);
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            return res;
        }
    };
    let known = user.as_ref().map(|u| u.user_id.clone());
    let user = user.filter(|u| matches && !u.disabled && u.password.is_some());
    let Some(user) = user else {
        match known {
            Some(user_id) => tracing::info!(%user_id, %client, "console sign-in failed"),
            None => {
                tracing::info!(%client, username_fp = %console.fingerprint(username), "console sign-in failed");
            }
        }
        return page(StatusCode::UNAUTHORIZED, SIGN_IN_FAILED);
    };
    console.signed_in(username, p.ip);
    let token = console.create(&user.user_id, user.password.as_ref().map(|p| p.identity()));
    // The sign-in is in the log before the session is handed out; a sign-in that cannot
    // be recorded is refused (and its session ended).
    let signed_in = Event::UserSignedIn(UserSignedIn {
        user_id: user.user_id.clone(),
        session: console.session_label(&token),
    });
    if let Err(e) = state
        .0
        .commands
        .record(&user_actor(&user.user_id), &signed_in)
        .await
    {
        console.destroy(&token);
        tracing::error!(user_id = %user.user_id, error = %e, "cannot record a console sign-in; refusing it");
        return page(StatusCode::SERVICE_UNAVAILABLE, NOT_RECORDED);
    }
    tracing::info!(user_id = %user.user_id, "console sign-in");
    let ttl = console.ttl().as_secs();
    let target = if matches!(user.role, Role::Admin | Role::Auditor) {
        "/ui/admin/keys"
    } else {
        "/ui/keys"
    };
    let mut res = Redirect::to(target).into_response();
    let h = res.headers_mut();
    h.append(
        header::SET_COOKIE,
        cookie(SESSION_COOKIE, &token, Some(ttl), p.secure),
    );
    h.append(header::SET_COOKIE, clear_cookie(PRE_COOKIE, p.secure));
    res
}

#[derive(Debug, Deserialize)]
pub struct Empty {}

pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    p: Posted<Empty>,
) -> Response {
    state.0.console.destroy(&p.user.token);
    // Signing out always works; a sign-out that cannot be recorded is logged here.
    let signed_out = Event::UserSignedOut(UserSignedOut {
        user_id: p.user.caller.user_id.clone(),
        session: state.0.console.session_label(&p.user.token),
    });
    if let Err(e) = state
        .0
        .commands
        .record(&user_actor(&p.user.caller.user_id), &signed_out)
        .await
    {
        tracing::error!(user_id = %p.user.caller.user_id, error = %e, "cannot record a console sign-out");
    }
    let mut res = Redirect::to("/ui/login").into_response();
    res.headers_mut().append(
        header::SET_COOKIE,
        clear_cookie(SESSION_COOKIE, session::is_secure(&state, &headers)),
    );
    res
}

// ---------- set-up ----------

fn setup_form(token: &str, error: Option<(&str, &str)>) -> Markup {
    let err = |f: &str| match error {
        Some((field, d)) if field == f => html! { p.field-error id={"err-" (f)} { (d) } },
        _ => html! {},
    };
    bare(
        "Set the admin password",
        html! {
            p { "While the initial admin has no password, whoever holds the initial admin key (" code { "keyward-data/initial-admin-key" } ") sets it here, once. Afterwards this page is closed; " code { "keyward bootstrap --password-stdin" } " does the same from the command line." }
            @if let Some(("", d)) = error { (notice("error", d)) }
            form.stack method="post" action="/ui/setup" {
                input type="hidden" name=(CSRF_FIELD) value=(token);
                label for="admin_key" { "Initial admin key" }
                input #admin_key name="admin_key" type="password" required autocomplete="off" placeholder="kw_…";
                (err("admin_key"))
                label for="new_password" { "New password" }
                input #new_password name="password" type="password" required minlength="12" autocomplete="new-password" aria-describedby="pw-hint";
                p.hint #pw-hint { "At least 12 characters." }
                (err("password"))
                label for="confirm" { "Repeat the password" }
                input #confirm name="confirm" type="password" required autocomplete="new-password";
                (err("confirm"))
                button.primary.wide type="submit" { "Set password" }
            }
            p.hint { a href="/ui/login" { "Back to sign in" } }
        },
    )
}

pub async fn setup_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    // The page is for an admin without a password; once every admin has one, it is closed
    // and says so instead of showing a form that can only answer 409.
    let open = state
        .0
        .live
        .read()
        .users
        .iter()
        .any(|u| u.role == Role::Admin && !u.disabled && u.password.is_none());
    if !open {
        return render(StatusCode::OK, setup_done());
    }
    with_pre_token(&state, &headers, StatusCode::OK, |t| setup_form(t, None))
}

fn setup_done() -> Markup {
    bare(
        "Set-up is done",
        html! {
            (notice("ok", "The admin password is set: sign in with it."))
            p { "To change a password, ask an admin (Users), or run " code { "keyward bootstrap --password-stdin" } " with " code { "serve" } " stopped." }
            p { a.button.primary href="/ui/login" { "Sign in" } }
        },
    )
}

#[derive(Debug, Deserialize)]
pub struct SetupForm {
    admin_key: Secret,
    password: Secret,
    confirm: Secret,
}

pub async fn setup(
    State(state): State<AppState>,
    headers: HeaderMap,
    p: PrePosted<SetupForm>,
) -> Response {
    let fail = |status: StatusCode, field: &'static str, detail: &'static str| {
        with_pre_token(&state, &headers, status, |t| {
            setup_form(t, Some((field, detail)))
        })
    };
    // Per client, as sign-in: one bucket for the whole world would let anyone keep the
    // initial admin from setting a password.
    if let Admit::No { log } = state.0.console.admit_client(p.ip) {
        if log {
            tracing::warn!(client = %client_label(p.ip), "console set-up throttled for this client");
        }
        return fail(
            StatusCode::TOO_MANY_REQUESTS,
            "",
            "Too many attempts. Wait a minute and try again.",
        );
    }
    let now = chrono::Utc::now();
    let authed = {
        let live = state.0.live.read();
        auth::authenticate(&live, p.form.admin_key.0.trim(), now)
    };
    let owner = match authed {
        Ok(a) if a.owner.role == Role::Admin && auth::scope_allows(a.key.scopes(), Scope::Full) => {
            // The key's restrictions hold here as on the API: from outside its IP
            // allowlist, or in its rotation grace, it sets no password.
            if auth::check_restrictions(&a.key, p.ip, now).is_err() {
                return fail(
                    StatusCode::FORBIDDEN,
                    "admin_key",
                    "This key may not be used from this address, or it was rotated: use it from an address its IP allowlist names, or use its successor.",
                );
            }
            a.owner
        }
        _ => {
            return fail(
                StatusCode::UNAUTHORIZED,
                "admin_key",
                "This is not a working admin key with scope full.",
            );
        }
    };
    if owner.password.is_some() {
        return fail(
            StatusCode::CONFLICT,
            "",
            "This admin already has a password: sign in with it, or ask another admin to change it.",
        );
    }
    let n = p.form.password.0.chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&n) {
        return fail(
            StatusCode::UNPROCESSABLE_ENTITY,
            "password",
            "The password must be 12 to 1024 characters.",
        );
    }
    if *p.form.password.0 != *p.form.confirm.0 {
        return fail(
            StatusCode::UNPROCESSABLE_ENTITY,
            "confirm",
            "The two passwords differ.",
        );
    }
    let password = p.form.password;
    let hashed = state
        .0
        .console
        .password_work(move || crate::crypto::hash_password(&password.0))
        .await;
    let phc = match hashed {
        Ok(Ok(phc)) => phc,
        Err(Busy) => {
            let mut res = fail(StatusCode::SERVICE_UNAVAILABLE, "", BUSY);
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            return res;
        }
        Ok(Err(_)) => {
            tracing::error!("password hashing failed during set-up");
            return fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "",
                "Something went wrong; the server log has the details.",
            );
        }
    };
    let actor = Actor {
        id: owner.user_id.clone(),
        request_id: None,
    };
    let patch = UserPatch {
        password_hash: Some(phc.into()),
        ..UserPatch::default()
    };
    if let Err(e) = state
        .0
        .commands
        .update_user(&actor, &owner.user_id, patch)
        .await
    {
        tracing::error!(error = %e, "set-up could not record the password");
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "",
            "The password could not be saved; nothing was changed. Try again.",
        );
    }
    tracing::info!(user_id = %owner.user_id, "initial admin password set in the console");
    render(
        StatusCode::OK,
        bare(
            "Password set",
            html! {
                (notice("ok", "The admin password is set. Sign in with it now."))
                p { a.button.primary href="/ui/login" { "Sign in" } }
            },
        ),
    )
}
