//! The page frame and the pieces every page shares: navigation, badges, notices, errors.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use keyward_projections::KeyStatus;
use maud::{DOCTYPE, Markup, html};

use super::user::{CSRF_FIELD, ConsoleUser};
use crate::http::error::ApiError;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    MyKeys,
    AllKeys,
    Providers,
    Users,
    Logs,
    Audit,
    None,
}

pub fn render(status: StatusCode, markup: Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Keyward" }
            link rel="icon" href=(super::icon_path()) type="image/svg+xml";
            link rel="stylesheet" href=(super::css_path());
            script src=(super::js_path()) defer {}
        }
    }
}

fn logo() -> Markup {
    html! {
        span.logo aria-hidden="true" {
            svg width="22" height="22" viewBox="0 0 24 24" {
                path d="M12 2 4 5v6c0 5 3.4 9.4 8 11 4.6-1.6 8-6 8-11V5l-8-3Z" fill="#1d4ed8" {}
                path d="M9 12.5 11 14.5 15.5 10" stroke="#fff" stroke-width="2" fill="none" {}
            }
        }
    }
}

/// The whole page for a signed-in user.
pub fn page(user: &ConsoleUser, nav: Nav, title: &str, body: Markup) -> Markup {
    let item = |n: Nav, href: &str, label: &str| {
        html! {
            li { a href=(href) aria-current=[(n == nav).then_some("page")] { (label) } }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                header.topbar {
                    a.brand href="/ui" { (logo()) "Keyward" }
                    div.who {
                        span { (user.caller.username) }
                        span.role { (user.caller.role.as_str()) }
                        form method="post" action="/ui/logout" {
                            (csrf(user))
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                div.shell {
                    nav.side aria-label="Console" {
                        ul {
                            @if !user.is_auditor() {
                                (item(Nav::MyKeys, "/ui/keys", "My API Keys"))
                            }
                            @if user.is_admin() {
                                li.section { "Admin" }
                                (item(Nav::AllKeys, "/ui/admin/keys", "API Keys"))
                                (item(Nav::Providers, "/ui/providers", "Providers"))
                                (item(Nav::Users, "/ui/users", "Users"))
                            }
                            @if user.is_auditor() {
                                li.section { "Audit (read-only)" }
                                (item(Nav::AllKeys, "/ui/admin/keys", "API Keys"))
                            }
                            li.section { "Activity" }
                            (item(Nav::Logs, "/ui/logs", "Logs"))
                            (item(Nav::Audit, "/ui/audit", "Audit"))
                        }
                    }
                    main #main {
                        h1 { (title) }
                        (body)
                    }
                }
            }
        }
    }
}

/// A page for someone not signed in (sign-in, set-up, errors).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare {
                main #main .card.narrow {
                    div.brand.center { (logo()) "Keyward" }
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

pub fn error_page(status: StatusCode, title: &str, detail: &str) -> Response {
    render(
        status,
        bare(
            title,
            html! {
                p.notice.error role="alert" { (detail) }
                p { a href="/ui" { "Back to the console" } }
            },
        ),
    )
}

pub fn csrf(user: &ConsoleUser) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(user.csrf); }
}

/// The status, the message for people, and the field an API error names.
pub fn explain(e: &ApiError) -> (StatusCode, String, Option<String>) {
    match e {
        ApiError::BadRequest { detail, field } | ApiError::Unprocessable { detail, field } => {
            let status = if matches!(e, ApiError::BadRequest { .. }) {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            (status, detail.clone(), field.clone())
        }
        ApiError::Unauthorized(d) => (StatusCode::UNAUTHORIZED, d.clone(), None),
        ApiError::Forbidden(d) => (StatusCode::FORBIDDEN, d.clone(), None),
        ApiError::NotFound(d) => (StatusCode::NOT_FOUND, d.clone(), None),
        ApiError::Conflict { detail, .. } => (StatusCode::CONFLICT, detail.clone(), None),
        ApiError::PayloadTooLarge(d) => (StatusCode::PAYLOAD_TOO_LARGE, d.clone(), None),
        ApiError::UnsupportedMediaType(d) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, d.clone(), None),
        ApiError::TooManyRequests { detail, .. } | ApiError::Throttled { detail, .. } => {
            (StatusCode::TOO_MANY_REQUESTS, detail.clone(), None)
        }
        ApiError::BadGateway(d) => (StatusCode::BAD_GATEWAY, d.clone(), None),
        ApiError::Coded {
            status,
            detail,
            field,
            ..
        } => (*status, detail.clone(), field.clone()),
        ApiError::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the event store is unavailable; nothing was changed".to_owned(),
            None,
        ),
        ApiError::Internal(cause) => {
            tracing::error!(%cause, "console request failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "something went wrong; the server log has the details".to_owned(),
                None,
            )
        }
    }
}

/// An API error as a whole page inside the console frame.
pub fn api_error_page(user: &ConsoleUser, e: &ApiError) -> Response {
    let (status, detail, _) = explain(e);
    let title = match status {
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::NOT_FOUND => "Not found",
        _ => "Something went wrong",
    };
    render(
        status,
        page(
            user,
            Nav::None,
            title,
            html! {
                p.notice.error role="alert" { (detail) }
                p { a href="/ui/keys" { "Back to My API Keys" } }
            },
        ),
    )
}

pub fn status_badge(s: KeyStatus) -> Markup {
    let (class, text) = match s {
        KeyStatus::Active => ("ok", "Active"),
        KeyStatus::Grace => ("warn", "Rotating"),
        KeyStatus::Expired => ("muted", "Expired"),
        KeyStatus::Deleted => ("bad", "Deleted"),
    };
    badge(class, text)
}

pub fn badge(class: &str, text: &str) -> Markup {
    html! { span class={"badge " (class)} { (text) } }
}

/// A date-time as people read it, UTC, to the minute; the full value in a tooltip.
pub fn when(ts: Option<&str>) -> Markup {
    match ts {
        None => html! { span.muted { "—" } },
        Some(t) => {
            let short = t.get(..16).unwrap_or(t).replace('T', " ");
            html! { time datetime=(t) title=(t) { (short) } }
        }
    }
}

pub fn empty(title: &str, hint: Markup) -> Markup {
    html! {
        div.empty {
            p.empty-title { (title) }
            p { (hint) }
        }
    }
}

/// A notice above the content: what just happened, or what went wrong.
pub fn notice(kind: &str, text: &str) -> Markup {
    let role = if kind == "error" { "alert" } else { "status" };
    html! { p class={"notice " (kind)} role=(role) { (text) } }
}

/// The error of a field, shown next to it and tied to it for screen readers.
pub fn field_error(errors: Option<&(String, String)>, field: &str) -> Markup {
    match errors {
        Some((f, d)) if f == field => html! {
            p.field-error id={"err-" (field)} { (d) }
        },
        _ => html! {},
    }
}

pub fn invalid(errors: Option<&(String, String)>, field: &str) -> Option<&'static str> {
    matches!(errors, Some((f, _)) if f == field).then_some("true")
}

/// Only console-local paths are followed after an action.
pub fn safe_return(to: Option<&str>, default: &str) -> String {
    match to {
        // Visible ASCII only: it goes into a Location header as it is.
        Some(p)
            if p.starts_with("/ui")
                && !p.contains("://")
                && p.chars().all(|c| c.is_ascii_graphic() && c != '\\') =>
        {
            p.to_owned()
        }
        _ => default.to_owned(),
    }
}

/// A secret shown once, in a dialog that opens by itself.
pub fn secret_dialog(title: &str, secret: &str, extra: Markup) -> Markup {
    html! {
        dialog #secret-dialog .open-on-load aria-labelledby="secret-title" {
            h2 #secret-title { (title) }
            p.notice.warn role="status" {
                strong { "Copy this key now." } " It will not be shown again: Keyward keeps only its hash."
            }
            div.secret {
                label for="secret-value" { "Secret key" }
                div.copyrow {
                    input #secret-value type="text" readonly value=(secret) autocomplete="off" spellcheck="false";
                    button.primary type="button" data-copy="#secret-value" { "Copy" }
                }
                p.copied aria-live="polite" {}
            }
            (extra)
            form method="dialog" { button type="submit" { "Done" } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_console_paths_are_followed() {
        assert_eq!(
            safe_return(Some("/ui/admin/keys?x=1"), "/ui/keys"),
            "/ui/admin/keys?x=1"
        );
        assert_eq!(
            safe_return(Some("//evil.example/ui"), "/ui/keys"),
            "/ui/keys"
        );
        assert_eq!(
            safe_return(Some("https://evil.example/ui"), "/ui/keys"),
            "/ui/keys"
        );
        assert_eq!(safe_return(Some("/uiX://"), "/ui/keys"), "/ui/keys");
        assert_eq!(safe_return(None, "/ui/keys"), "/ui/keys");
        assert_eq!(
            safe_return(Some("/ui/keys\r\nSet-Cookie: x=1"), "/ui/keys"),
            "/ui/keys"
        );
        assert_eq!(safe_return(Some("/ui\\evil"), "/ui/keys"), "/ui/keys");
    }
}
