//! "My API Keys", "Admin → API Keys", the Create dialog, the row actions and key detail.
//! Each calls the management API's handler with the session's caller.

use std::collections::HashMap;

use axum::extract::{Path, Query as AxumQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{Duration, NaiveDate, Utc};
use keyward_events::{Envelope, Event, Scope};
use keyward_projections::KeyStatus;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::pages::{
    Nav, api_error_page, badge, csrf, empty, explain, field_error, invalid, notice, page, render,
    safe_return, secret_dialog, status_badge, when,
};
use super::session::{ConsoleUser, Posted};
use crate::AppState;
use crate::http::error::{ApiError, Json, Query};
use crate::http::keys::{
    self as api, CreateKey, EventKind, EventOrder, EventsQuery, KeyView, ListKeys, RotateKey,
    UpdateKey,
};

/// What the owner of a key may change without an admin, shown where they edit one.
const NARROWING_NOTE: &str = "On your own key you may narrow it: rename it, move its expiry earlier, lower its rate limit. Raising or removing a limit, or a later expiry, needs an admin; rotate the key to renew it.";

/// Expiry presets from the key management best practices.
const PRESETS: &[(&str, &str)] = &[
    ("30d", "Development — 30 days"),
    ("90d", "Production — 90 days"),
    ("180d", "Production — 180 days"),
    ("7d", "Emergency — 7 days"),
    ("1d", "Emergency — 1 day"),
];

#[derive(Debug, Default, Deserialize)]
pub struct TableQuery {
    owner_id: Option<String>,
    provider_id: Option<String>,
    status: Option<String>,
    notice: Option<String>,
}

fn nonempty(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn parse_status(s: Option<&str>) -> Option<KeyStatus> {
    match s? {
        "active" => Some(KeyStatus::Active),
        "grace" => Some(KeyStatus::Grace),
        "expired" => Some(KeyStatus::Expired),
        "deleted" => Some(KeyStatus::Deleted),
        _ => None,
    }
}

/// What the page shows besides the table: a notice, a secret once, a form to re-open.
#[derive(Default)]
pub struct Extras {
    notice: Option<(&'static str, String)>,
    secret: Option<Markup>,
    create: Option<CreateState>,
}

pub struct CreateState {
    form: CreateForm,
    error: Option<(String, String)>,
}

async fn list(
    state: &AppState,
    user: &ConsoleUser,
    owner: Option<String>,
    provider: Option<String>,
    status: Option<KeyStatus>,
    as_of: Option<String>,
) -> Result<Vec<KeyView>, ApiError> {
    let Json(list) = api::list_keys(
        State(state.clone()),
        user.caller.clone(),
        Query(ListKeys {
            owner_id: owner,
            provider_id: provider,
            status,
            q: None,
            cursor: None,
            limit: Some(500),
            as_of,
        }),
    )
    .await?;
    Ok(list.keys)
}

pub fn provider_names(state: &AppState) -> HashMap<String, String> {
    state
        .0
        .live
        .read()
        .providers
        .iter()
        .map(|p| (p.provider_id.clone(), p.name.clone()))
        .collect()
}

pub async fn my_keys(
    State(state): State<AppState>,
    user: ConsoleUser,
    AxumQuery(q): AxumQuery<TableQuery>,
) -> Response {
    // An auditor owns nothing to manage: their page is every key, read-only.
    if user.is_auditor() {
        return Redirect::to("/ui/admin/keys").into_response();
    }
    let extras = Extras {
        notice: q.notice.as_deref().and_then(notice_text).map(|t| ("ok", t)),
        ..Extras::default()
    };
    keys_page(
        &state,
        &user,
        false,
        &TableQuery::default(),
        extras,
        StatusCode::OK,
    )
    .await
}

pub async fn all_keys(
    State(state): State<AppState>,
    user: ConsoleUser,
    AxumQuery(q): AxumQuery<TableQuery>,
) -> Response {
    if !user.reads_everything() {
        return api_error_page(
            &user,
            &ApiError::Forbidden("this page needs the admin or the auditor role".to_owned()),
        );
    }
    let extras = Extras {
        notice: q.notice.as_deref().and_then(notice_text).map(|t| ("ok", t)),
        ..Extras::default()
    };
    keys_page(&state, &user, true, &q, extras, StatusCode::OK).await
}

fn notice_text(code: &str) -> Option<String> {
    Some(
        match code {
            "expired" => "The key was expired. It stops working at once.",
            "deleted" => "The key was deleted. Its record stays for the audit.",
            "updated" => "The key was updated.",
            _ => return None,
        }
        .to_owned(),
    )
}

async fn keys_page(
    state: &AppState,
    user: &ConsoleUser,
    admin_view: bool,
    q: &TableQuery,
    extras: Extras,
    status: StatusCode,
) -> Response {
    let (owner, provider, st) = if admin_view {
        (
            nonempty(&q.owner_id),
            nonempty(&q.provider_id),
            parse_status(q.status.as_deref()),
        )
    } else {
        // "My API Keys" is the caller's own keys, an admin's too: the API lists every
        // key for an admin unless asked for one owner.
        (Some(user.caller.user_id.clone()), None, None)
    };
    let keys = match list(state, user, owner.clone(), provider.clone(), st, None).await {
        Ok(k) => k,
        Err(e) => return api_error_page(user, &e),
    };
    let names = provider_names(state);
    let back = if admin_view {
        "/ui/admin/keys"
    } else {
        "/ui/keys"
    };
    let (title, nav) = if admin_view {
        ("API Keys", Nav::AllKeys)
    } else {
        ("My API Keys", Nav::MyKeys)
    };
    let filtered = admin_view && (owner.is_some() || provider.is_some() || st.is_some());
    // An auditor changes nothing: no button or form that would be refused.
    let writer = !user.is_auditor();
    let body = html! {
        @if let Some((kind, text)) = &extras.notice { (notice(kind, text)) }
        div.toolbar {
            @if admin_view {
                (filters(state, &owner, &provider, q.status.as_deref()))
            } @else {
                p.lede { "Keys you own. Each works only until its expiry; rotate it before then." }
            }
            @if writer {
                button.primary type="button" data-open="create-dialog" { "Create API Key" }
            }
        }
        @if keys.is_empty() {
            @if filtered {
                (empty("No keys match these filters", html! { a href="/ui/admin/keys" { "Clear the filters" } }))
            } @else {
                (empty("No API keys yet", html! { "Create one to call the gateway: it is shown once, then only its prefix." }))
            }
        } @else {
            (key_table(&keys, &names, admin_view, writer.then_some(user), back))
        }
        @if writer {
            (create_dialog(state, user, admin_view, extras.create.as_ref(), back))
            (action_dialogs(user))
        }
        @if let Some(s) = &extras.secret { (s) }
    };
    render(status, page(user, nav, title, body))
}

fn filters(
    state: &AppState,
    owner: &Option<String>,
    provider: &Option<String>,
    status: Option<&str>,
) -> Markup {
    let (users, providers) = {
        let live = state.0.live.read();
        let mut u: Vec<(String, String)> = live
            .users
            .iter()
            .map(|u| (u.user_id.clone(), u.username.clone()))
            .collect();
        u.sort_by(|a, b| a.1.cmp(&b.1));
        let mut p: Vec<(String, String)> = live
            .providers
            .iter()
            .map(|p| (p.provider_id.clone(), p.name.clone()))
            .collect();
        p.sort_by(|a, b| a.1.cmp(&b.1));
        (u, p)
    };
    html! {
        form.filters method="get" action="/ui/admin/keys" {
            div.field {
                label for="f-owner" { "Owner" }
                select #f-owner name="owner_id" {
                    option value="" { "Everyone" }
                    @for (id, name) in &users {
                        option value=(id) selected[owner.as_deref() == Some(id.as_str())] { (name) }
                    }
                }
            }
            div.field {
                label for="f-provider" { "Provider" }
                select #f-provider name="provider_id" {
                    option value="" { "Any provider" }
                    @for (id, name) in &providers {
                        option value=(id) selected[provider.as_deref() == Some(id.as_str())] { (name) }
                    }
                }
            }
            div.field {
                label for="f-status" { "Status" }
                select #f-status name="status" {
                    option value="" { "Any status" }
                    @for (v, l) in [("active", "Active"), ("grace", "Rotating"), ("expired", "Expired"), ("deleted", "Deleted")] {
                        option value=(v) selected[status == Some(v)] { (l) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
    }
}

/// The key table; with `actions` the row buttons (none for an "as of" table).
pub fn key_table(
    keys: &[KeyView],
    names: &HashMap<String, String>,
    owner_column: bool,
    actions: Option<&ConsoleUser>,
    back: &str,
) -> Markup {
    html! {
        div.tablewrap {
            table.keys {
                thead {
                    tr {
                        th scope="col" { "Name" }
                        @if owner_column { th scope="col" { "Owner" } }
                        th scope="col" { "Provider" }
                        th scope="col" { "Prefix" }
                        th scope="col" { "Scopes" }
                        th scope="col" .num { "Requests" }
                        th scope="col" { "Last used" }
                        th scope="col" { "Expiry" }
                        th scope="col" { "Status" }
                        th scope="col" { "Deleted" }
                        @if actions.is_some() { th.actions scope="col" { span.sr-only { "Actions" } } }
                    }
                }
                tbody {
                    @for k in keys {
                        tr data-key-id=(k.id) data-key-name=(k.name) {
                            td { a href={"/ui/keys/" (k.id)} { (k.name) } }
                            @if owner_column { td.wrap { (k.owner.as_deref().unwrap_or(&k.owner_id)) } }
                            td.wrap { (provider_label(k, names)) }
                            td { code { (k.prefix) "…" } }
                            td.wrap { (scopes_text(&k.scopes)) }
                            td.num { (k.usage.requests) }
                            td { @match &k.last_used_at { Some(t) => (day(t)), None => span.muted { "—" } } }
                            td { (day(&k.expires_at)) }
                            td { (status_badge(k.status)) }
                            td { @if k.deleted { (badge("bad", "Deleted")) } @else { span.muted { "No" } } }
                            @if actions.is_some() {
                                td.actions { (row_actions(k, back)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn quota_text(q: Option<keyward_events::Quota>) -> String {
    let Some(q) = q else {
        return "none".to_owned();
    };
    [
        (q.requests_per_day, "requests / day"),
        (q.requests_per_month, "requests / month"),
        (q.tokens_per_day, "tokens / day"),
        (q.tokens_per_month, "tokens / month"),
    ]
    .iter()
    .filter_map(|(v, what)| v.map(|v| format!("{v} {what}")))
    .collect::<Vec<_>>()
    .join(", ")
}

fn day(ts: &str) -> Markup {
    html! { time datetime=(ts) title=(ts) { (ts.get(..10).unwrap_or(ts)) } }
}

fn provider_label(k: &KeyView, names: &HashMap<String, String>) -> Markup {
    match &k.provider_id {
        None => html! { span.muted { "—" } },
        Some(p) => html! { (names.get(p).map_or(p.as_str(), String::as_str)) },
    }
}

fn scopes_text(s: &[Scope]) -> String {
    s.iter()
        .map(|s| match s {
            Scope::Read => "read",
            Scope::Chat => "chat",
            Scope::Full => "full",
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn row_actions(k: &KeyView, back: &str) -> Markup {
    let usable = matches!(k.status, KeyStatus::Active | KeyStatus::Grace);
    let rl = k.rate_limit.map(|r| r.requests_per_minute.to_string());
    html! {
        div.rowactions {
            @if usable {
                button.small type="button" data-open="edit-dialog" data-action={"/ui/keys/" (k.id) "/edit"}
                    data-name=(k.name) data-back=(back) data-rate=[rl] data-expires=(k.expires_at.get(..10).unwrap_or_default())
                    aria-label={"Edit " (k.name)} { "Edit" }
            }
            @if k.status == KeyStatus::Active {
                button.small type="button" data-open="rotate-dialog" data-action={"/ui/keys/" (k.id) "/rotate"}
                    data-name=(k.name) data-back=(back) aria-label={"Rotate " (k.name)} { "Rotate" }
            }
            @if usable {
                button.small type="button" data-open="expire-dialog" data-action={"/ui/keys/" (k.id) "/expire"}
                    data-name=(k.name) data-back=(back) aria-label={"Expire " (k.name)} { "Expire" }
            }
            @if !k.deleted {
                button.small.danger type="button" data-open="delete-dialog" data-action={"/ui/keys/" (k.id) "/delete"}
                    data-name=(k.name) data-back=(back) aria-label={"Delete " (k.name)} { "Delete" }
            }
        }
    }
}

/// The confirmation dialogs of the row actions, filled in by the row's button.
fn action_dialogs(user: &ConsoleUser) -> Markup {
    let head = |id: &str, title: &str| {
        html! { h2 id={(id) "-title"} { (title) " " span data-slot="name" {} } }
    };
    // A dialog that only asks to confirm a destructive action.
    let confirm = |id: &str, title: &str, text: &str, submit: &str| {
        html! {
            dialog id=(id) aria-labelledby={(id) "-title"} {
                (head(id, title))
                p { (text) }
                form method="post" data-action-form {
                    (csrf(user))
                    input type="hidden" name="return_to" data-slot="back";
                    div.buttons {
                        button type="button" data-close { "Cancel" }
                        button.danger type="submit" { (submit) }
                    }
                }
            }
        }
    };
    html! {
        (confirm(
            "expire-dialog",
            "Expire",
            "The key stops working at once, on every node. Its record and history stay. This cannot be undone.",
            "Expire key",
        ))
        (confirm(
            "delete-dialog",
            "Delete",
            "The key stops working and is marked Deleted. The record stays for the audit.",
            "Delete key",
        ))
        dialog #rotate-dialog aria-labelledby="rotate-dialog-title" {
            (head("rotate-dialog", "Rotate"))
            p { "A new key with the same settings is created and shown once. The old key keeps working during the grace period, and its uses show who has not switched yet." }
            form.stack method="post" data-action-form {
                (csrf(user))
                input type="hidden" name="return_to" data-slot="back";
                label for="grace_period" { "Grace period" }
                select #grace_period name="grace_period" {
                    option value="0" { "None: the old key stops now" }
                    option value="1h" { "1 hour" }
                    option value="24h" selected { "24 hours" }
                    option value="7d" { "7 days" }
                    option value="30d" { "30 days" }
                }
                div.buttons {
                    button type="button" data-close { "Cancel" }
                    button.primary type="submit" { "Rotate key" }
                }
            }
        }
        dialog #edit-dialog aria-labelledby="edit-dialog-title" {
            (head("edit-dialog", "Edit"))
            form.stack method="post" data-action-form {
                (csrf(user))
                input type="hidden" name="return_to" data-slot="back";
                label for="edit-name" { "Name" }
                input #edit-name name="name" type="text" required maxlength="200" data-fill="name";
                @if user.is_admin() {
                    label for="edit-expires" { "Expires on (UTC)" }
                    input #edit-expires name="expires_on" type="date" data-fill="expires" aria-describedby="edit-expires-hint";
                    p.hint #edit-expires-hint { "At most the maximum key lifetime after the key's creation; rotate a key to renew it." }
                    label for="edit-rate" { "Rate limit (requests per minute)" }
                    input #edit-rate name="rate_limit" type="number" min="1" max="1000000" data-fill="rate" aria-describedby="edit-rate-hint";
                    p.hint #edit-rate-hint { "Empty removes the limit." }
                } @else {
                    p.hint #edit-narrow-hint data-narrowing { (NARROWING_NOTE) }
                    label for="edit-expires" { "Expires on (UTC), earlier only" }
                    input #edit-expires name="expires_on" type="date" data-fill="expires" data-fill-max="expires" aria-describedby="edit-narrow-hint";
                    label for="edit-rate" { "Rate limit (requests per minute), lower only" }
                    input #edit-rate name="rate_limit" type="number" min="1" max="1000000" data-fill="rate" data-fill-max="rate" aria-describedby="edit-narrow-hint";
                }
                div.buttons {
                    button type="button" data-close { "Cancel" }
                    button.primary type="submit" { "Save" }
                }
            }
        }
    }
}

// ---------- create ----------

#[derive(Debug, Default, Clone, Deserialize)]
pub struct CreateForm {
    #[serde(default)]
    name: String,
    owner_id: Option<String>,
    provider_id: Option<String>,
    #[serde(default)]
    expires_in: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    models: String,
    #[serde(default)]
    rate_limit: String,
    #[serde(default)]
    ip_allowlist: String,
    return_to: Option<String>,
}

fn split_list(s: &str) -> Vec<String> {
    s.split([',', '\n', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn rate_limit_json(s: &str) -> Result<Value, ApiError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Value::Null);
    }
    let rpm: u32 = s
        .parse()
        .map_err(|_| ApiError::invalid("rate_limit", "a whole number of requests per minute"))?;
    // A burst of a tenth of a minute's allowance, at least 1: short spikes pass, floods do not.
    Ok(json!({"requests_per_minute": rpm, "burst": (rpm / 10).max(1)}))
}

fn create_request(f: &CreateForm) -> Result<CreateKey, ApiError> {
    let mut body = json!({
        "name": f.name,
        "expires_in": if f.expires_in.is_empty() { "30d" } else { f.expires_in.as_str() },
        "scopes": [if f.scope.is_empty() { "chat" } else { f.scope.as_str() }],
        "models": split_list(&f.models),
        "ip_allowlist": split_list(&f.ip_allowlist),
    });
    if let Some(p) = nonempty(&f.provider_id) {
        body["provider_id"] = json!(p);
    }
    if let Some(o) = nonempty(&f.owner_id) {
        body["owner_id"] = json!(o);
    }
    let rl = rate_limit_json(&f.rate_limit)?;
    if !rl.is_null() {
        body["rate_limit"] = rl;
    }
    serde_json::from_value(body).map_err(|e| ApiError::BadRequest {
        detail: e.to_string(),
        field: None,
    })
}

pub async fn create(State(state): State<AppState>, p: Posted<CreateForm>) -> Response {
    let user = p.user;
    if let Err(e) = user.caller.require_writer() {
        return api_error_page(&user, &e);
    }
    let form = p.form;
    let admin_view = form.return_to.as_deref() == Some("/ui/admin/keys") && user.is_admin();
    let result = match create_request(&form) {
        Ok(req) => api::create_key(State(state.clone()), user.caller.clone(), Json(req)).await,
        Err(e) => Err(e),
    };
    match result {
        Ok((_, Json(created))) => {
            let extra = html! {
                p { "Key " strong { (created.key.name) } " (" code { (created.key.prefix) "…" } ") expires " (when(Some(&created.key.expires_at))) "." }
            };
            let extras = Extras {
                notice: Some(("ok", format!("Created the key {}.", created.key.name))),
                secret: Some(secret_dialog("Your new API key", &created.secret, extra)),
                create: None,
            };
            keys_page(
                &state,
                &user,
                admin_view,
                &TableQuery::default(),
                extras,
                StatusCode::CREATED,
            )
            .await
        }
        Err(e) => {
            let (status, detail, field) = explain(&e);
            let field = field
                .map(|f| f.split('.').next().unwrap_or_default().to_owned())
                .unwrap_or_default();
            let extras = Extras {
                notice: None,
                secret: None,
                create: Some(CreateState {
                    form,
                    error: Some((field, detail)),
                }),
            };
            keys_page(
                &state,
                &user,
                admin_view,
                &TableQuery::default(),
                extras,
                status,
            )
            .await
        }
    }
}

fn create_dialog(
    state: &AppState,
    user: &ConsoleUser,
    admin_view: bool,
    st: Option<&CreateState>,
    back: &str,
) -> Markup {
    let (providers, users) = {
        let live = state.0.live.read();
        let mut p: Vec<(String, String)> = live
            .providers
            .iter()
            .filter(|p| !p.is_deleted())
            .map(|p| (p.provider_id.clone(), p.name.clone()))
            .collect();
        p.sort_by(|a, b| a.1.cmp(&b.1));
        let mut u: Vec<(String, String)> = live
            .users
            .iter()
            .filter(|u| !u.disabled)
            .map(|u| (u.user_id.clone(), u.username.clone()))
            .collect();
        u.sort_by(|a, b| a.1.cmp(&b.1));
        (p, u)
    };
    let f = st.map(|s| s.form.clone()).unwrap_or_default();
    let err = st.and_then(|s| s.error.as_ref());
    let general = err.filter(|(field, _)| {
        ![
            "name",
            "owner_id",
            "provider_id",
            "expires_in",
            "scopes",
            "models",
            "rate_limit",
            "ip_allowlist",
        ]
        .contains(&field.as_str())
    });
    let expires = if f.expires_in.is_empty() {
        "30d".to_owned()
    } else {
        f.expires_in.clone()
    };
    let scope = if f.scope.is_empty() {
        "chat".to_owned()
    } else {
        f.scope.clone()
    };
    let described = |field: &str| invalid(err, field).map(|_| format!("err-{field}"));
    html! {
        dialog #create-dialog .open-on-load[st.is_some()] aria-labelledby="create-title" {
            h2 #create-title { "Create API Key" }
            @if let Some((_, d)) = general { (notice("error", d)) }
            form.grid method="post" action="/ui/keys" novalidate {
                (csrf(user))
                input type="hidden" name="return_to" value=(back);
                div.field.span2 {
                    label for="c-name" { "Name" }
                    input #c-name name="name" type="text" required maxlength="200" value=(f.name)
                        placeholder="billing-service" aria-invalid=[invalid(err, "name")] aria-describedby=[described("name")];
                    (field_error(err, "name"))
                }
                @if user.is_admin() && admin_view {
                    div.field {
                        label for="c-owner" { "User" }
                        select #c-owner name="owner_id" aria-invalid=[invalid(err, "owner_id")] aria-describedby=[described("owner_id")] {
                            @for (id, name) in &users {
                                option value=(id) selected[f.owner_id.as_deref().map_or(*id == user.caller.user_id, |o| o == id)] { (name) }
                            }
                        }
                        (field_error(err, "owner_id"))
                    }
                }
                div.field {
                    label for="c-provider" { "Provider" }
                    select #c-provider name="provider_id" aria-invalid=[invalid(err, "provider_id")] aria-describedby=[described("provider_id")] {
                        @if providers.is_empty() { option value="" { "No provider yet" } }
                        @for (id, name) in &providers {
                            option value=(id) selected[f.provider_id.as_deref() == Some(id.as_str())] { (name) }
                        }
                    }
                    (field_error(err, "provider_id"))
                }
                div.field {
                    label for="c-expiry" { "Expiry" }
                    select #c-expiry name="expires_in" aria-invalid=[invalid(err, "expires_in")] aria-describedby=[described("expires_in")] {
                        @for (v, l) in PRESETS {
                            option value=(v) selected[expires == *v] { (l) }
                        }
                    }
                    (field_error(err, "expires_in"))
                }
                div.field {
                    label for="c-scope" { "Scopes" }
                    select #c-scope name="scope" aria-describedby="c-scope-hint" {
                        option value="chat" selected[scope == "chat"] { "chat — proxy endpoints" }
                        option value="read" selected[scope == "read"] { "read — list models only" }
                        option value="full" selected[scope == "full"] { "full — chat and the management API" }
                    }
                    p.hint #c-scope-hint { "A key never has more rights than its owner." }
                    (field_error(err, "scopes"))
                }
                div.field {
                    label for="c-models" { "Models" }
                    input #c-models name="models" type="text" value=(f.models) placeholder="gpt-4o-mini, gpt-4o"
                        aria-invalid=[invalid(err, "models")] aria-describedby="c-models-hint";
                    p.hint #c-models-hint { "Comma-separated. Empty allows every model of the provider." }
                    (field_error(err, "models"))
                }
                div.field {
                    label for="c-rate" { "Rate limit (requests per minute)" }
                    input #c-rate name="rate_limit" type="number" min="1" max="1000000" value=(f.rate_limit)
                        placeholder="no limit" aria-invalid=[invalid(err, "rate_limit")] aria-describedby=[described("rate_limit")];
                    (field_error(err, "rate_limit"))
                }
                div.field.span2 {
                    label for="c-ips" { "IP allowlist" }
                    input #c-ips name="ip_allowlist" type="text" value=(f.ip_allowlist) placeholder="10.0.0.0/8, 192.168.1.7"
                        aria-invalid=[invalid(err, "ip_allowlist")] aria-describedby="c-ips-hint";
                    p.hint #c-ips-hint { "Addresses or CIDR ranges, comma-separated. Empty allows any address." }
                    (field_error(err, "ip_allowlist"))
                }
                div.buttons.span2 {
                    button type="button" data-close { "Cancel" }
                    button.primary type="submit" { "Create key" }
                }
            }
        }
    }
}

// ---------- row actions ----------

#[derive(Debug, Deserialize)]
pub struct ReturnTo {
    return_to: Option<String>,
}

fn after(back: Option<&str>, notice_code: &str) -> Response {
    let to = safe_return(back, "/ui/keys");
    let sep = if to.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{to}{sep}notice={notice_code}")).into_response()
}

pub async fn expire(
    State(state): State<AppState>,
    Path(id): Path<String>,
    p: Posted<ReturnTo>,
) -> Response {
    match api::expire_key(State(state), p.user.caller.clone(), Path(id)).await {
        Ok(_) => after(p.form.return_to.as_deref(), "expired"),
        Err(e) => api_error_page(&p.user, &e),
    }
}

pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    p: Posted<ReturnTo>,
) -> Response {
    match api::delete_key(State(state), p.user.caller.clone(), Path(id)).await {
        Ok(_) => after(p.form.return_to.as_deref(), "deleted"),
        Err(e) => api_error_page(&p.user, &e),
    }
}

#[derive(Debug, Deserialize)]
pub struct RotateForm {
    grace_period: Option<String>,
    return_to: Option<String>,
}

pub async fn rotate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    p: Posted<RotateForm>,
) -> Response {
    let user = p.user;
    let req = RotateKey {
        grace_period: p.form.grace_period.clone(),
        ..RotateKey::default()
    };
    match api::rotate_key(
        State(state.clone()),
        user.caller.clone(),
        Path(id),
        Json(req),
    )
    .await
    {
        Ok((_, Json(r))) => {
            let admin_view =
                p.form.return_to.as_deref() == Some("/ui/admin/keys") && user.is_admin();
            let extra = html! {
                p { "The old key " code { (r.previous.prefix) "…" } " works until "
                    (when(r.previous.grace_until.as_deref())) "; then it expires with reason " em { "rotated" } "." }
            };
            let extras = Extras {
                notice: Some(("ok", format!("Rotated the key {}.", r.key.name))),
                secret: Some(secret_dialog(
                    "The rotated key's new secret",
                    &r.secret,
                    extra,
                )),
                create: None,
            };
            keys_page(
                &state,
                &user,
                admin_view,
                &TableQuery::default(),
                extras,
                StatusCode::CREATED,
            )
            .await
        }
        Err(e) => api_error_page(&user, &e),
    }
}

#[derive(Debug, Deserialize)]
pub struct EditForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    expires_on: String,
    #[serde(default)]
    rate_limit: String,
    return_to: Option<String>,
}

fn edit_request(f: &EditForm, current: &KeyView) -> Result<UpdateKey, ApiError> {
    let mut body = serde_json::Map::new();
    if !f.name.trim().is_empty() && f.name.trim() != current.name {
        body.insert("name".into(), json!(f.name));
    }
    let day = f.expires_on.trim();
    if !day.is_empty() && Some(day) != current.expires_at.get(..10) {
        let d = NaiveDate::parse_from_str(day, "%Y-%m-%d")
            .map_err(|_| ApiError::invalid("expires_at", "a date such as 2026-12-31"))?;
        body.insert("expires_at".into(), json!(format!("{d}T23:59:59Z")));
    }
    let mut rl = rate_limit_json(&f.rate_limit)?;
    // A lower rate keeps a burst no larger than the current one: a new burst of a tenth
    // of the rate could otherwise widen the key while the rate narrows it.
    if let (Some(cur), Some(burst)) = (current.rate_limit, rl["burst"].as_u64()) {
        rl["burst"] = json!(burst.min(u64::from(cur.burst)));
    }
    let current_rpm = current.rate_limit.map(|r| r.requests_per_minute);
    let wanted_rpm = rl["requests_per_minute"].as_u64().map(|n| n as u32);
    if wanted_rpm != current_rpm {
        body.insert("rate_limit".into(), rl);
    }
    serde_json::from_value(Value::Object(body)).map_err(|e| ApiError::BadRequest {
        detail: e.to_string(),
        field: None,
    })
}

pub async fn edit(
    State(state): State<AppState>,
    Path(id): Path<String>,
    p: Posted<EditForm>,
) -> Response {
    let user = p.user;
    let current =
        match api::get_key(State(state.clone()), user.caller.clone(), Path(id.clone())).await {
            Ok(Json(k)) => k,
            Err(e) => return api_error_page(&user, &e),
        };
    let result = match edit_request(&p.form, &current) {
        Ok(req) => api::update_key(State(state), user.caller.clone(), Path(id), Json(req))
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => after(p.form.return_to.as_deref(), "updated"),
        Err(e) => api_error_page(&user, &e),
    }
}

// ---------- detail ----------

/// The History section's page of a key's lifecycle events, newest first.
const HISTORY_PAGE: usize = 50;

#[derive(Debug, Default, Deserialize)]
pub struct HistoryQuery {
    /// Only events older than this seq: the link to the next page.
    before: Option<u64>,
}

pub async fn detail(
    State(state): State<AppState>,
    user: ConsoleUser,
    Path(id): Path<String>,
    AxumQuery(history): AxumQuery<HistoryQuery>,
) -> Response {
    let key = match api::get_key(State(state.clone()), user.caller.clone(), Path(id.clone())).await
    {
        Ok(Json(k)) => k,
        Err(e) => return api_error_page(&user, &e),
    };
    let events = match api::key_events(
        State(state.clone()),
        user.caller.clone(),
        Path(id.clone()),
        Query(EventsQuery {
            cursor: history.before,
            limit: Some(HISTORY_PAGE),
            order: Some(EventOrder::Newest),
            kind: Some(EventKind::Lifecycle),
            ..EventsQuery::default()
        }),
    )
    .await
    {
        Ok(Json(p)) => p,
        Err(e) => return api_error_page(&user, &e),
    };
    let days = 30;
    let today = Utc::now().date_naive();
    let series: Vec<(NaiveDate, u64, u64)> = {
        let live = state.0.live.read();
        (0..days)
            .rev()
            .map(|back| {
                let d = today - Duration::days(back);
                let c = live.usage.day(&key.id, d);
                (d, c.requests, c.errors)
            })
            .collect()
    };
    let names = provider_names(&state);
    let actors = Actors::of(&state);
    let back = format!("/ui/keys/{}", key.id);
    let lifecycle: Vec<&Envelope> = events.events.iter().collect();
    let body = html! {
        div.toolbar {
            p.lede { (status_badge(key.status)) " " code { (key.prefix) "…" } " · " (key.id) }
            @if !user.is_auditor() { (row_actions(&key, &back)) }
        }
        div.cards {
            section.card aria-labelledby="settings-h" {
                h2 #settings-h { "Settings" }
                dl.settings {
                    dt { "Owner" } dd { (key.owner.as_deref().unwrap_or(&key.owner_id)) }
                    dt { "Provider" } dd { (provider_label(&key, &names)) }
                    dt { "Scopes" } dd { (scopes_text(&key.scopes)) }
                    dt { "Models" } dd { @if key.models.is_empty() { "every model of the provider" } @else { (key.models.join(", ")) } }
                    dt { "Rate limit" } dd { @match key.rate_limit { Some(r) => { (r.requests_per_minute) " / min, burst " (r.burst) } None => { "none" } } }
                    dt { "IP allowlist" } dd { @if key.ip_allowlist.is_empty() { "any address" } @else { (key.ip_allowlist.join(", ")) } }
                    @if key.quota.is_some() { dt { "Quota" } dd { (quota_text(key.quota)) } }
                    dt { "Created" } dd { (when(Some(&key.created_at))) " by " (actors.label(&key.created_by)) }
                    dt { "Expires" } dd { (when(Some(&key.expires_at))) }
                    dt { "Last used" } dd { (when(key.last_used_at.as_deref())) }
                    dt { "Requests" } dd { (key.usage.requests) " (" (key.usage.errors) " errors, " (key.usage.denied) " refused)" }
                    @if let Some(from) = &key.rotated_from { dt { "Rotated from" } dd { a href={"/ui/keys/" (from)} { (from) } } }
                    @if let Some(to) = &key.rotated_to { dt { "Rotated to" } dd { a href={"/ui/keys/" (to)} { (to) } } }
                    @if let Some(at) = &key.expired_at { dt { "Expired" } dd { (when(Some(at))) } }
                    @if key.deleted { dt { "Deleted" } dd { (when(key.deleted_at.as_deref())) } }
                }
                @if !user.reads_everything() { p.hint data-narrowing { (NARROWING_NOTE) } }
            }
            section.card aria-labelledby="grace-h" {
                h2 #grace-h { "Uses during the rotation grace" }
                @match (&key.grace_usage, &key.grace_until) {
                    (Some(g), Some(until)) => {
                        p { "Grace ends " (when(Some(until))) "." }
                        p.big { (g.requests) }
                        p { @if g.requests == 0 { "No one used the old key since the rotation." } @else { "requests with the old key since the rotation; last " (when(g.last_used_at.as_deref())) ". Someone has not switched over yet." } }
                    }
                    _ => { p.muted { "This key was not rotated." } }
                }
            }
        }
        section.card aria-labelledby="chart-h" {
            h2 #chart-h { "Requests and errors per day" }
            (chart(&series))
        }
        section.card aria-labelledby="history-h" {
            h2 #history-h { "History" }
            p.muted { "Newest first. Its " (key.usage.requests) " uses and " (key.usage.denied) " refusals are in " a href={"/ui/logs?key_id=" (key.id)} { "Logs" } "." }
            (event_table(&lifecycle, &actors))
            @if history.before.is_some() || events.next_cursor.is_some() {
                p {
                    @if history.before.is_some() { a href={"/ui/keys/" (key.id) "#history-h"} { "← Newest events" } " " }
                    @if let Some(c) = events.next_cursor { a href={"/ui/keys/" (key.id) "?before=" (c) "#history-h"} { "Older events →" } }
                }
            }
        }
        @if !user.is_auditor() { (action_dialogs(&user)) }
    };
    render(StatusCode::OK, page(&user, Nav::None, &key.name, body))
}

/// Who an actor id stands for: a username, a key's name, or `system`.
pub struct Actors(HashMap<String, String>);

impl Actors {
    pub fn of(state: &AppState) -> Actors {
        let live = state.0.live.read();
        let mut m: HashMap<String, String> = live
            .users
            .iter()
            .map(|u| (u.user_id.clone(), u.username.clone()))
            .collect();
        for k in live.keys.iter() {
            m.insert(k.key_id().to_owned(), format!("key {}", k.name()));
        }
        Actors(m)
    }

    fn label(&self, id: &str) -> Markup {
        match self.0.get(id) {
            Some(name) => html! { span title=(id) { (name) } },
            None => html! { (id) },
        }
    }
}

pub fn event_table(events: &[&Envelope], actors: &Actors) -> Markup {
    if events.is_empty() {
        return empty("No events", html! { "Nothing matches." });
    }
    html! {
        div.tablewrap {
            table {
                thead { tr { th scope="col" .num { "Seq" } th scope="col" { "Time" } th scope="col" { "Event" } th scope="col" { "Actor" } th scope="col" { "Details" } } }
                tbody {
                    @for e in events {
                        tr {
                            td.num { (e.seq) }
                            td { (when(Some(&crate::time::format(&e.occurred_at)))) }
                            td { code { (e.event_type) } }
                            td { (actors.label(&e.actor)) }
                            td.details { (summary(e)) }
                        }
                    }
                }
            }
        }
    }
}

fn short(t: &crate::time::Timestamp) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

fn word<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
        .unwrap_or_default()
}

/// One line about what an event says; never a secret (events hold none).
fn summary(e: &Envelope) -> String {
    let Ok(ev) = e.decode() else {
        return String::new();
    };
    match ev {
        Event::KeyCreated(k) => format!(
            "{} ({}…), expires {}",
            k.name,
            k.prefix,
            short(&k.expires_at)
        ),
        Event::KeyUpdated(u) => {
            let mut changed = Vec::new();
            if u.name.is_some() {
                changed.push("name");
            }
            if u.expires_at.is_some() {
                changed.push("expiry");
            }
            if u.scopes.is_some() {
                changed.push("scopes");
            }
            if u.models.is_some() {
                changed.push("models");
            }
            if u.rate_limit.is_some() {
                changed.push("rate limit");
            }
            if u.quota.is_some() {
                changed.push("quota");
            }
            if u.ip_allowlist.is_some() {
                changed.push("IP allowlist");
            }
            if u.metadata.is_some() {
                changed.push("metadata");
            }
            format!("changed {}", changed.join(", "))
        }
        Event::KeyExpired(k) => format!("reason: {}", word(&k.reason)),
        Event::KeyRotated(k) => {
            format!("to {}, grace until {}", k.new_key_id, short(&k.grace_until))
        }
        Event::KeyDeleted(_) => "soft-deleted; the record stays".to_owned(),
        Event::KeyUsed(u) => format!(
            "{} → {} ({})",
            u.model.unwrap_or_default(),
            u.status,
            word(&u.outcome)
        ),
        Event::KeyDenied(d) => format!("refused: {}", word(&d.reason)),
        Event::UserCreated(u) => format!(
            "{} ({}){}",
            u.username,
            word(&u.role),
            if u.password.is_some() || u.legacy_password_hash.is_some() {
                ", password set"
            } else {
                ""
            }
        ),
        Event::UserUpdated(u) => {
            let mut parts = Vec::new();
            if let Some(r) = u.role {
                parts.push(format!("role {}", word(&r)));
            }
            if u.password.is_some() || u.legacy_password_hash.is_some() {
                parts.push("password changed".to_owned());
            }
            parts.join(", ")
        }
        Event::UserDisabled(_) => "disabled".to_owned(),
        Event::UserEnabled(_) => "enabled".to_owned(),
        Event::ProviderCreated(p) => format!("{} ({})", p.name, p.kind.as_str()),
        Event::ProviderKeyUpdated(p) => format!(
            "credential …{}, fingerprint {}",
            p.last4,
            p.fingerprint.get(..12).unwrap_or_default()
        ),
        Event::ProviderVerified(v) => {
            if v.ok {
                "check passed".to_owned()
            } else {
                format!("check failed: {}", v.detail.unwrap_or_default())
            }
        }
        Event::ProviderDeleted(p) => {
            if p.forced {
                "deleted while keys used it".to_owned()
            } else {
                "deleted".to_owned()
            }
        }
        _ => String::new(),
    }
}

/// Requests (bars) and errors (dark bars) per UTC day, drawn here as SVG.
pub fn chart(series: &[(NaiveDate, u64, u64)]) -> Markup {
    let w = 720.0_f64;
    let h = 200.0_f64;
    let (left, bottom, top) = (44.0, 28.0, 12.0);
    let max = series.iter().map(|s| s.1).max().unwrap_or(0).max(1);
    let nice = nice_max(max);
    let n = series.len().max(1) as f64;
    let slot = (w - left - 8.0) / n;
    let bar = (slot * 0.7).max(1.0);
    let plot_h = h - bottom - top;
    let y = |v: u64| top + plot_h - (v as f64 / nice as f64) * plot_h;
    let total = series.iter().fold(0u64, |n, s| n.saturating_add(s.1));
    let errors = series.iter().fold(0u64, |n, s| n.saturating_add(s.2));
    let first = series.first().map(|s| s.0.to_string()).unwrap_or_default();
    let last = series.last().map(|s| s.0.to_string()).unwrap_or_default();
    let desc = format!("{total} requests and {errors} errors from {first} to {last}");
    html! {
        figure.chart {
            svg viewBox={"0 0 " (w) " " (h)} role="img" aria-labelledby="chart-title chart-desc" {
                title #chart-title { "Requests and errors per day" }
                desc #chart-desc { (desc) }
                @for i in 0..=4u64 {
                    @let v = nice * i / 4;
                    line x1=(left) x2=(w - 8.0) y1=(y(v)) y2=(y(v)) stroke="#e2e8f0" stroke-width="1" {}
                    text x=(left - 6.0) y=(y(v) + 4.0) text-anchor="end" font-size="11" fill="#475569" { (v) }
                }
                @for (i, (d, req, err)) in series.iter().enumerate() {
                    @let x = left + slot * i as f64 + (slot - bar) / 2.0;
                    g {
                        title { (d) ": " (req) " requests, " (err) " errors" }
                        rect x=(x) y=(y(*req)) width=(bar) height=((y(0) - y(*req)).max(0.0)) fill="#93c5fd" {}
                        rect x=(x) y=(y(*err)) width=(bar) height=((y(0) - y(*err)).max(0.0)) fill="#b91c1c" {}
                    }
                    @if (series.len() - 1 - i).is_multiple_of(7) {
                        text x=(x + bar / 2.0) y=(h - 10.0) text-anchor="middle" font-size="11" fill="#475569" { (d.format("%b %d")) }
                    }
                }
            }
            figcaption {
                span.legend.req { "Requests" } " " span.legend.err { "Errors" } " · " (desc) " (UTC days)"
            }
        }
    }
}

/// The top of the axis: four gridline steps of 1, 2, 2.5 or 5 times a power of ten.
fn nice_max(v: u64) -> u64 {
    let mut base = 1u64;
    loop {
        for m in [10, 20, 25, 50] {
            let top = (base.saturating_mul(m) / 10).max(1).saturating_mul(4);
            if v <= top {
                return top;
            }
        }
        if base > u64::MAX / 100 {
            return u64::MAX;
        }
        base *= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_a_title_labels_and_one_bar_pair_per_day() {
        let d0 = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
        let series: Vec<_> = (0..3)
            .map(|i| (d0 + Duration::days(i), (i * 10) as u64, i as u64))
            .collect();
        let svg = chart(&series).into_string();
        assert!(svg.contains("<title id=\"chart-title\">Requests and errors per day</title>"));
        assert!(svg.contains("30 requests and 3 errors from 2026-11-01 to 2026-11-03"));
        assert_eq!(svg.matches("<rect").count(), 6);
        assert!(svg.contains("Nov 03"), "the newest day is labelled");
    }

    #[test]
    fn axis_tops_are_round() {
        assert_eq!(nice_max(1), 4);
        assert_eq!(nice_max(7), 8);
        assert_eq!(nice_max(33), 40);
        assert_eq!(nice_max(950), 1000);
        assert_eq!(nice_max(u64::MAX), u64::MAX);
    }

    #[test]
    fn forms_become_api_requests() {
        let f = CreateForm {
            name: "svc".into(),
            expires_in: "90d".into(),
            scope: "chat".into(),
            models: "a, b".into(),
            rate_limit: "600".into(),
            ip_allowlist: "10.0.0.0/8".into(),
            ..CreateForm::default()
        };
        let r = create_request(&f).unwrap();
        assert_eq!(r.models.unwrap(), vec!["a", "b"]);
        assert_eq!(r.rate_limit.unwrap().burst, 60);
        let bad = CreateForm {
            rate_limit: "lots".into(),
            ..f
        };
        assert!(
            matches!(create_request(&bad), Err(ApiError::Unprocessable { field: Some(f), .. }) if f == "rate_limit")
        );
    }
}
