//! The web console at `/ui`: server-rendered HTML (maud), a little hand-written CSS and JS
//! served from the binary, and nothing from anywhere else.
//!
//! Every page and action calls the management API's own handlers with a [`Caller`] built
//! from the session, so the console has exactly the API's validation and authorization
//! (another user's key is 404, admin pages are 403) and events record the user as actor.
//!
//! [`Caller`]: crate::http::caller::Caller

mod admin;
mod keys;
mod pages;
mod session;
mod sign_in;
mod user;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

pub use session::Console;

use crate::AppState;

const CSS: &str = include_str!("../../assets/ui/console.css");
const JS: &str = include_str!("../../assets/ui/console.js");
const ICON: &str = include_str!("../../assets/ui/favicon.svg");

struct Asset {
    path: String,
    content_type: &'static str,
    body: &'static str,
}

/// The assets under names that carry a hash of their content, so that they can be cached
/// for good and a new build is fetched at once.
fn assets() -> &'static [Asset; 3] {
    static ASSETS: std::sync::OnceLock<[Asset; 3]> = std::sync::OnceLock::new();
    ASSETS.get_or_init(|| {
        let named = |stem: &str, ext: &str, content_type, body: &'static str| {
            let hash = blake3::hash(body.as_bytes()).to_hex();
            Asset {
                path: format!("/ui/assets/{stem}-{}.{ext}", &hash[..12]),
                content_type,
                body,
            }
        };
        [
            named("console", "css", "text/css; charset=utf-8", CSS),
            named("console", "js", "text/javascript; charset=utf-8", JS),
            named("favicon", "svg", "image/svg+xml", ICON),
        ]
    })
}

pub fn css_path() -> &'static str {
    &assets()[0].path
}

pub fn js_path() -> &'static str {
    &assets()[1].path
}

pub fn icon_path() -> &'static str {
    &assets()[2].path
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/login", get(sign_in::login_page).post(sign_in::login))
        .route("/logout", post(sign_in::logout))
        .route("/setup", get(sign_in::setup_page).post(sign_in::setup))
        .route("/keys", get(keys::my_keys).post(keys::create))
        .route("/admin/keys", get(keys::all_keys))
        .route("/keys/{id}", get(keys::detail))
        .route("/keys/{id}/expire", post(keys::expire))
        .route("/keys/{id}/rotate", post(keys::rotate))
        .route("/keys/{id}/delete", post(keys::delete))
        .route("/keys/{id}/edit", post(keys::edit))
        .route(
            "/providers",
            get(admin::providers).post(admin::create_provider),
        )
        .route("/providers/{id}/verify", post(admin::verify_provider))
        .route(
            "/providers/{id}/credential",
            post(admin::replace_credential),
        )
        .route("/providers/{id}/delete", post(admin::delete_provider))
        .route("/users", get(admin::users).post(admin::create_user))
        .route("/users/{id}", post(admin::update_user))
        .route("/logs", get(admin::logs))
        .route("/audit", get(admin::audit))
        .route("/audit/verify", post(admin::verify_chain))
        .route("/audit/export", get(admin::export))
        .route("/assets/{name}", get(asset))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(security_headers))
}

async fn home() -> Redirect {
    Redirect::to("/ui/keys")
}

async fn not_found() -> Response {
    pages::error_page(
        axum::http::StatusCode::NOT_FOUND,
        "Not found",
        "There is no console page at this address.",
    )
}

/// On every console response: a CSP that allows only this origin (no inline script or
/// style), no framing, no sniffing, no caching of pages (they hold secrets once and tokens
/// always). The referrer stays same-origin: with `no-referrer`, browsers send
/// `Origin: null` on form posts, which would defeat the origin check.
async fn security_headers(req: Request, next: Next) -> Response {
    let is_asset = req.uri().path().starts_with("/ui/assets/");
    let mut res = next.run(req).await;
    let is_asset = is_asset && res.status().is_success();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !is_asset && !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    let wanted = format!("/ui/assets/{name}");
    match assets().iter().find(|a| a.path == wanted) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            a.body,
        )
            .into_response(),
        None => not_found().await,
    }
}
