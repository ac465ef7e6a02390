//! The management API under `/api/v1`, its OpenAPI document, `/openapi.json` and the
//! vendored Swagger UI at `/docs`.

use std::sync::OnceLock;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use crate::AppState;
use crate::http::{audit, checkpoint, keys, logs, me, providers, users};

/// Management requests are small; anything larger is refused with 413.
pub const MANAGEMENT_BODY_LIMIT: usize = 256 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Keyward management API",
        description = "Keys, providers, users, audit and logs. Authenticate with `Authorization: Bearer kw_…` using a key with scope `full`; it acts with its owner's role. Errors are application/problem+json.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "keys", description = "Keyward keys: create, list, rotate, expire, delete"),
        (name = "providers", description = "Provider credentials (admins change them, auditors read them)"),
        (name = "users", description = "Users and roles: admin, user, auditor (admins change them, auditors read them)"),
        (name = "audit", description = "The hash-chained event log and the request log"),
        (name = "me", description = "The caller")
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("kw_ key")
                    .description(Some("A Keyward key with scope `full`"))
                    .build(),
            ),
        );
    }
}

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi()).nest(
        "/api/v1",
        OpenApiRouter::new()
            .merge(keys::router())
            .merge(providers::router())
            .merge(users::router())
            .merge(audit::router())
            .merge(checkpoint::router())
            .merge(logs::router())
            .merge(me::router()),
    )
}

/// The OpenAPI document, generated from the handlers' annotations.
pub fn openapi() -> OpenApiDoc {
    api_router().split_for_parts().1
}

/// The document as committed in `openapi/keyward.json`.
pub fn openapi_json() -> String {
    let mut s = openapi().to_pretty_json().unwrap_or_default();
    s.push('\n');
    s
}

pub fn router() -> Router<AppState> {
    let (api, _) = api_router().split_for_parts();
    api.layer(DefaultBodyLimit::max(MANAGEMENT_BODY_LIMIT))
        .route("/openapi.json", get(spec))
        .route("/docs", get(docs))
        .route("/docs/", get(docs))
        .route("/docs/swagger-ui-bundle.js", get(swagger_js))
        .route("/docs/swagger-ui.css", get(swagger_css))
}

async fn spec() -> impl IntoResponse {
    static SPEC: OnceLock<String> = OnceLock::new();
    (
        [(header::CONTENT_TYPE, "application/json")],
        SPEC.get_or_init(openapi_json).clone(),
    )
}

async fn docs() -> Html<&'static str> {
    Html(
        r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Keyward API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui" });</script>
</body></html>"##,
    )
}

async fn swagger_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js").as_slice(),
    )
}

async fn swagger_css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        include_bytes!("../../assets/swagger-ui/swagger-ui.css").as_slice(),
    )
}
