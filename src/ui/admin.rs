//! Providers and Users (admins), Logs and Audit (everyone, filtered as the API filters).

use axum::extract::{Path, Query as AxumQuery, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use keyward_events::Role;
use keyward_projections::KeyStatus;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::keys::{Actors, event_table, key_table, provider_names};
use super::pages::{
    Nav, api_error_page, badge, csrf, empty, explain, notice, page, render, status_badge, when,
};
use super::session::{ConsoleUser, Posted};
use crate::AppState;
use crate::http::audit as audit_api;
use crate::http::caller::{Admin, Reader};
use crate::http::error::{ApiError, Json, Query};
use crate::http::keys::{self as keys_api, ListKeys};
use crate::http::logs::{self as logs_api, LogsQuery};
use crate::http::providers::{self as providers_api, DeleteProvider, ListProviders, ProviderView};
use crate::http::users::{self as users_api, ListUsers};
use crate::providers;

fn admin(user: &ConsoleUser) -> Result<Admin, Box<Response>> {
    user.caller
        .require_admin()
        .map(|()| Admin(user.caller.clone()))
        .map_err(|e| Box::new(api_error_page(user, &e)))
}

/// The admin pages (Providers, Users) are full of changes: an auditor reads providers and
/// users through the API, and the console shows them Audit, Logs and API Keys.
fn admin_reader(user: &ConsoleUser) -> Result<Reader, Box<Response>> {
    admin(user).map(|Admin(c)| Reader(c))
}

fn reader(user: &ConsoleUser) -> Result<Reader, Box<Response>> {
    user.caller
        .require_reads_everything()
        .map(|()| Reader(user.caller.clone()))
        .map_err(|e| Box::new(api_error_page(user, &e)))
}

fn from_json<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    serde_json::from_value(v).map_err(|e| ApiError::BadRequest {
        detail: e.to_string(),
        field: None,
    })
}

#[derive(Debug, Default, Deserialize)]
pub struct NoticeQuery {
    notice: Option<String>,
}

fn done(to: &str, code: &str) -> Response {
    Redirect::to(&format!("{to}?notice={code}")).into_response()
}

// ---------- providers ----------

pub async fn providers(
    State(state): State<AppState>,
    user: ConsoleUser,
    AxumQuery(q): AxumQuery<NoticeQuery>,
) -> Response {
    let msg = match q.notice.as_deref() {
        Some("created") => Some((
            "ok",
            "The provider was created and its credential checked.".to_owned(),
        )),
        Some("replaced") => Some((
            "ok",
            "The credential was replaced. Keys use the new one from now on.".to_owned(),
        )),
        Some("deleted") => Some(("ok", "The provider was deleted.".to_owned())),
        _ => None,
    };
    providers_page(&state, &user, msg, None, StatusCode::OK).await
}

async fn providers_page(
    state: &AppState,
    user: &ConsoleUser,
    msg: Option<(&str, String)>,
    create_error: Option<(String, String)>,
    status: StatusCode,
) -> Response {
    let a = match admin_reader(user) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let list = match providers_api::list_providers(
        State(state.clone()),
        a,
        Query(ListProviders {
            include_deleted: Some(false),
        }),
    )
    .await
    {
        Ok(Json(l)) => l.providers,
        Err(e) => return api_error_page(user, &e),
    };
    let body = html! {
        @if let Some((k, t)) = &msg { (notice(k, t)) }
        div.toolbar {
            p.lede { "Provider credentials are sealed with AES-256-GCM; the console shows only a mask and a fingerprint." }
            button.primary type="button" data-open="provider-dialog" { "Add provider" }
        }
        @if list.is_empty() {
            (empty("No providers yet", html! { "Add one to let keys reach a model." }))
        }
        @for p in &list { (provider_card(user, p)) }
        (provider_dialog(user, create_error.as_ref()))
    };
    render(status, page(user, Nav::Providers, "Providers", body))
}

fn provider_card(user: &ConsoleUser, p: &ProviderView) -> Markup {
    let live: Vec<_> = p
        .keys
        .iter()
        .filter(|k| matches!(k.status, KeyStatus::Active | KeyStatus::Grace))
        .collect();
    let did = format!("del-{}", p.id);
    let rid = format!("cred-{}", p.id);
    html! {
        section.card.provider data-provider-id=(p.id) aria-labelledby={"h-" (p.id)} {
            div.cardhead {
                h2 id={"h-" (p.id)} { (p.name) " " span.muted.small { (p.kind.as_str()) } }
                @match &p.verification {
                    Some(v) if v.ok => (badge("ok", "Verified")),
                    Some(_) => (badge("bad", "Check failed")),
                    None => (badge("muted", "Not verified")),
                }
            }
            dl.settings {
                dt { "Base URL" } dd { code { (p.base_url) } }
                dt { "Credential" } dd {
                    @match &p.credential {
                        Some(c) => { code { (c.masked) } " · fingerprint " code { (c.fingerprint.get(..16).unwrap_or(&c.fingerprint)) } " · updated " (when(Some(&c.updated_at))) }
                        None => { span.muted { "none" } }
                    }
                }
                dt { "Last check" } dd {
                    @match &p.verification {
                        Some(v) => { (when(Some(&v.at))) @if let Some(d) = &v.detail { " — " (d) } }
                        None => { span.muted { "never" } }
                    }
                }
                dt { "Models" } dd { @if p.models.is_empty() { "every model" } @else { (p.models.join(", ")) } }
                dt { "Keys" } dd {
                    @if p.keys.is_empty() { span.muted { "none" } }
                    @for (i, k) in p.keys.iter().enumerate() {
                        @if i > 0 { ", " }
                        a href={"/ui/keys/" (k.id)} { (k.name) } " " (status_badge(k.status))
                    }
                }
            }
            div.buttons.left {
                form method="post" action={"/ui/providers/" (p.id) "/verify"} {
                    (csrf(user))
                    button type="submit" { "Verify now" }
                }
                button type="button" data-open=(rid) { "Replace credential" }
                button.danger type="button" data-open=(did) { "Delete" }
            }
            dialog id=(rid) aria-labelledby={(rid) "-t"} {
                h2 id={(rid) "-t"} { "Replace the credential of " (p.name) }
                form.stack method="post" action={"/ui/providers/" (p.id) "/credential"} {
                    (csrf(user))
                    label for={(rid) "-k"} { "New API key" }
                    input id={(rid) "-k"} name="api_key" type="password" required autocomplete="off";
                    p.hint { "It is checked against the provider first; a key the provider refuses is not stored." }
                    div.buttons {
                        button type="button" data-close { "Cancel" }
                        button.primary type="submit" { "Replace" }
                    }
                }
            }
            dialog id=(did) aria-labelledby={(did) "-t"} {
                h2 id={(did) "-t"} { "Delete " (p.name) "?" }
                @if live.is_empty() {
                    p { "No working key uses this provider." }
                } @else {
                    p.notice.warn role="status" { strong { (live.len()) " working key(s) use this provider" } " and will stop working:" }
                    ul.deps {
                        @for k in &live { li { (k.name) " " code { (k.id) } } }
                    }
                }
                form method="post" action={"/ui/providers/" (p.id) "/delete"} {
                    (csrf(user))
                    input type="hidden" name="force" value=(if live.is_empty() { "false" } else { "true" });
                    div.buttons {
                        button type="button" data-close { "Cancel" }
                        button.danger type="submit" { "Delete provider" }
                    }
                }
            }
        }
    }
}

fn provider_dialog(user: &ConsoleUser, err: Option<&(String, String)>) -> Markup {
    let fe = |f: &str| super::pages::field_error(err, f);
    html! {
        dialog #provider-dialog .open-on-load[err.is_some()] aria-labelledby="provider-title" {
            h2 #provider-title { "Add provider" }
            @if let Some((f, d)) = err { @if !["name", "kind", "base_url", "api_key", "models"].contains(&f.as_str()) { (notice("error", d)) } }
            form.grid method="post" action="/ui/providers" {
                (csrf(user))
                div.field { label for="p-name" { "Name" } input #p-name name="name" type="text" required; (fe("name")) }
                div.field {
                    label for="p-kind" { "Kind" }
                    select #p-kind name="kind" data-kind-select {
                        @for k in providers::KINDS { option value=(k.kind().as_str()) data-base-url=(k.default_base_url()) { (k.label()) } }
                    }
                }
                div.field.span2 { label for="p-url" { "Base URL" } input #p-url name="base_url" type="url" required placeholder="https://api.openai.com/v1"; (fe("base_url")) }
                // Each kind's own fields; the console script shows the selected kind's.
                @for k in providers::KINDS {
                    @let kind = k.kind().as_str();
                    fieldset.span2.kind-fields data-kind=(kind) {
                        legend { (k.label()) }
                        @if !k.structured_credential() {
                            @let id = format!("p-{kind}-api_key");
                            div.field { label for=(id) { "API key" } input id=(id) name=(format!("cred.{kind}.api_key")) type="password" autocomplete="off"; }
                        }
                        @for f in k.fields() {
                            @let id = format!("p-{kind}-{}", f.name);
                            @let name = if f.secret { format!("cred.{kind}.{}", f.name) } else { format!("cfg.{kind}.{}", f.name) };
                            div.field {
                                label for=(id) { (f.label) @if f.required { " *" } }
                                @if f.secret && f.name == "service_account" {
                                    textarea id=(id) name=(name) rows="4" autocomplete="off" spellcheck="false" placeholder=(f.hint) {}
                                } @else if f.secret {
                                    input id=(id) name=(name) type="password" autocomplete="off";
                                } @else {
                                    input id=(id) name=(name) type="text" placeholder=(f.hint);
                                }
                            }
                        }
                    }
                }
                (fe("api_key")) (fe("config"))
                div.field.span2 { label for="p-models" { "Models" } input #p-models name="models" type="text" placeholder="gpt-4o-mini, gpt-4o"; p.hint { "Comma-separated; empty enables every model." } (fe("models")) }
                div.buttons.span2 {
                    button type="button" data-close { "Cancel" }
                    button.primary type="submit" { "Add provider" }
                }
            }
        }
    }
}

#[derive(Deserialize)]
pub struct ProviderForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    base_url: String,
    #[serde(default)]
    models: String,
    /// Each kind's fields: `cfg.<kind>.<name>` and `cred.<kind>.<name>`; only the chosen
    /// kind's are read. Zeroed when dropped (credential parts are among them).
    #[serde(flatten)]
    fields: std::collections::HashMap<String, super::sign_in::Secret>,
}

impl ProviderForm {
    /// The chosen kind's config and credential, as the API takes them.
    fn kind_parts(&self) -> (serde_json::Map<String, Value>, Value) {
        let kind = self.kind.as_str();
        let mut config = serde_json::Map::new();
        let mut parts = serde_json::Map::new();
        for (name, value) in &self.fields {
            let v = value.0.as_str().trim();
            if v.is_empty() {
                continue;
            }
            if let Some(key) = name.strip_prefix(&format!("cfg.{kind}.")) {
                // A JSON object (Azure's deployments) is taken as one.
                let parsed = match v.starts_with('{') {
                    true => serde_json::from_str::<Value>(v)
                        .unwrap_or_else(|_| Value::String(v.to_owned())),
                    false => Value::String(v.to_owned()),
                };
                config.insert(key.to_owned(), parsed);
            } else if let Some(key) = name.strip_prefix(&format!("cred.{kind}.")) {
                parts.insert(key.to_owned(), Value::String(v.to_owned()));
            }
        }
        let structured = providers::KINDS
            .iter()
            .find(|k| k.kind().as_str() == kind)
            .is_some_and(|k| k.structured_credential());
        // A form without per-kind fields (a script, an older page) sends `api_key`.
        let plain = || {
            self.fields
                .get("api_key")
                .map(|v| Value::String(v.0.as_str().to_owned()))
                .unwrap_or(Value::String(String::new()))
        };
        let credential = if !structured {
            parts.remove("api_key").unwrap_or_else(plain)
        } else if let Some(Value::String(sa)) = parts.get("service_account") {
            // A service account's key is pasted as its JSON file.
            serde_json::from_str::<Value>(sa).unwrap_or_else(|_| Value::String(sa.clone()))
        } else {
            Value::Object(parts)
        };
        (config, credential)
    }
}

fn list_of(s: &str) -> Vec<String> {
    s.split([',', ' ', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

pub async fn create_provider(State(state): State<AppState>, p: Posted<ProviderForm>) -> Response {
    let user = p.user;
    let a = match admin(&user) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let f = p.form;
    let (config, credential) = f.kind_parts();
    let req = from_json(json!({
        "name": f.name, "kind": f.kind, "base_url": f.base_url,
        "api_key": credential, "models": list_of(&f.models),
        "config": config,
    }));
    let res = match req {
        Ok(req) => providers_api::create_provider(State(state.clone()), a, Json(req))
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    match res {
        Ok(()) => done("/ui/providers", "created"),
        Err(e) => {
            let (status, detail, field) = explain(&e);
            providers_page(
                &state,
                &user,
                None,
                Some((field.unwrap_or_default(), detail)),
                status,
            )
            .await
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct Nothing {}

pub async fn verify_provider(
    State(state): State<AppState>,
    Path(id): Path<String>,
    p: Posted<Nothing>,
) -> Response {
    let a = match admin(&p.user) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    match providers_api::verify_provider(State(state.clone()), a, Path(id)).await {
        Ok(Json(v)) => {
            let msg = if v.ok {
                (
                    "ok",
                    "The credential works: the provider answered the check.".to_owned(),
                )
            } else {
                (
                    "error",
                    format!("The check failed: {}", v.detail.unwrap_or_default()),
                )
            };
            providers_page(&state, &p.user, Some(msg), None, StatusCode::OK).await
        }
        Err(e) => {
            let (status, d, _) = explain(&e);
            providers_page(&state, &p.user, Some(("error", d)), None, status).await
        }
    }
}

#[derive(Deserialize)]
pub struct CredentialForm {
    #[serde(default)]
    api_key: super::sign_in::Secret,
}

pub async fn replace_credential(
    State(state): State<AppState>,
    Path(id): Path<String>,
    p: Posted<CredentialForm>,
) -> Response {
    let a = match admin(&p.user) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let res = match from_json(json!({ "api_key": p.form.api_key.0.as_str() })) {
        Ok(req) => providers_api::replace_credential(State(state.clone()), a, Path(id), Json(req))
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    match res {
        Ok(()) => done("/ui/providers", "replaced"),
        Err(e) => {
            let (status, d, _) = explain(&e);
            providers_page(&state, &p.user, Some(("error", d)), None, status).await
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct DeleteForm {
    force: Option<String>,
}

pub async fn delete_provider(
    State(state): State<AppState>,
    Path(id): Path<String>,
    p: Posted<DeleteForm>,
) -> Response {
    let a = match admin(&p.user) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let force = p.form.force.as_deref() == Some("true");
    match providers_api::delete_provider(
        State(state.clone()),
        a,
        Path(id),
        Query(DeleteProvider { force: Some(force) }),
    )
    .await
    {
        Ok(_) => done("/ui/providers", "deleted"),
        Err(e) => {
            let (status, d, _) = explain(&e);
            providers_page(&state, &p.user, Some(("error", d)), None, status).await
        }
    }
}

// ---------- users ----------

pub async fn users(
    State(state): State<AppState>,
    user: ConsoleUser,
    AxumQuery(q): AxumQuery<NoticeQuery>,
) -> Response {
    let msg = match q.notice.as_deref() {
        Some("created") => Some(("ok", "The user was created.".to_owned())),
        Some("updated") => Some(("ok", "The user was updated.".to_owned())),
        _ => None,
    };
    users_page(&state, &user, msg, None, StatusCode::OK).await
}

async fn users_page(
    state: &AppState,
    user: &ConsoleUser,
    msg: Option<(&str, String)>,
    create_error: Option<(String, String)>,
    status: StatusCode,
) -> Response {
    let a = match admin_reader(user) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let list = match users_api::list_users(
        State(state.clone()),
        a,
        Query(ListUsers {
            q: None,
            cursor: None,
            limit: Some(500),
        }),
    )
    .await
    {
        Ok(Json(l)) => l.users,
        Err(e) => return api_error_page(user, &e),
    };
    let err = create_error.as_ref();
    let fe = |f: &str| super::pages::field_error(err, f);
    let body = html! {
        @if let Some((k, t)) = &msg { (notice(k, t)) }
        div.toolbar {
            p.lede { "Disabling a user stops every key of theirs at once and ends their console sessions." }
            button.primary type="button" data-open="user-dialog" { "Create user" }
        }
        div.tablewrap {
            table {
                thead { tr { th scope="col" { "Username" } th scope="col" { "Role" } th scope="col" { "Status" } th scope="col" { "Password" } th scope="col" .num { "Working keys" } th scope="col" { "Created" } th scope="col" { span.sr-only { "Actions" } } } }
                tbody {
                    @for u in &list {
                        tr data-user=(u.username) {
                            td { (u.username) }
                            td {
                                form.inline method="post" action={"/ui/users/" (u.id)} {
                                    (csrf(user))
                                    label.sr-only for={"role-" (u.id)} { "Role of " (u.username) }
                                    select id={"role-" (u.id)} name="role" {
                                        option value="user" selected[u.role == Role::User] { "user" }
                                        option value="admin" selected[u.role == Role::Admin] { "admin" }
                                        option value="auditor" selected[u.role == Role::Auditor] { "auditor" }
                                    }
                                    button.small type="submit" { "Change role" }
                                }
                            }
                            td { @if u.disabled { (badge("bad", "Disabled")) } @else { (badge("ok", "Enabled")) } }
                            td { @if u.has_password { "set" } @else { span.muted { "none" } } }
                            td.num { (u.active_keys) }
                            td { (when(Some(&u.created_at))) }
                            td.actions {
                                @if u.id != user.caller.user_id {
                                    button.small.danger[!u.disabled] type="button" data-open={"dis-" (u.id)} {
                                        (if u.disabled { "Enable" } else { "Disable" })
                                    }
                                    dialog id={"dis-" (u.id)} aria-labelledby={"dis-" (u.id) "-t"} {
                                        h2 id={"dis-" (u.id) "-t"} { (if u.disabled { "Enable " } else { "Disable " }) (u.username) "?" }
                                        @if !u.disabled { p { "Their " (u.active_keys) " working key(s) expire at once, with reason owner_disabled, and their sessions end. Enabling them again does not bring the keys back." } }
                                        form method="post" action={"/ui/users/" (u.id)} {
                                            (csrf(user))
                                            input type="hidden" name="disabled" value=(if u.disabled { "false" } else { "true" });
                                            div.buttons {
                                                button type="button" data-close { "Cancel" }
                                                button.danger[!u.disabled] .primary[u.disabled] type="submit" { (if u.disabled { "Enable" } else { "Disable" }) }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        dialog #user-dialog .open-on-load[err.is_some()] aria-labelledby="user-title" {
            h2 #user-title { "Create user" }
            @if let Some((f, d)) = err { @if !["username", "role", "password"].contains(&f.as_str()) { (notice("error", d)) } }
            form.stack method="post" action="/ui/users" {
                (csrf(user))
                label for="u-name" { "Username" }
                input #u-name name="username" type="text" required maxlength="64";
                (fe("username"))
                label for="u-role" { "Role" }
                select #u-role name="role" { option value="user" { "user" } option value="admin" { "admin" } option value="auditor" { "auditor" } }
                label for="u-pw" { "Password (optional)" }
                input #u-pw name="password" type="password" minlength="12" autocomplete="new-password";
                p.hint { "At least 12 characters. Without one the user can only use API keys." }
                (fe("password"))
                div.buttons {
                    button type="button" data-close { "Cancel" }
                    button.primary type="submit" { "Create user" }
                }
            }
        }
    };
    render(status, page(user, Nav::Users, "Users", body))
}

#[derive(Deserialize)]
pub struct UserForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    password: super::sign_in::Secret,
}

pub async fn create_user(State(state): State<AppState>, p: Posted<UserForm>) -> Response {
    let a = match admin(&p.user) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let f = p.form;
    let mut body = json!({ "username": f.username.trim(), "role": f.role });
    if !f.password.0.is_empty() {
        body["password"] = json!(f.password.0.as_str());
    }
    let res = match from_json(body) {
        Ok(req) => users_api::create_user(State(state.clone()), a, Json(req))
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    match res {
        Ok(()) => done("/ui/users", "created"),
        Err(e) => {
            let (status, d, field) = explain(&e);
            users_page(
                &state,
                &p.user,
                None,
                Some((field.unwrap_or_default(), d)),
                status,
            )
            .await
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct UserUpdateForm {
    role: Option<String>,
    disabled: Option<String>,
}

pub async fn update_user(
    State(state): State<AppState>,
    Path(id): Path<String>,
    p: Posted<UserUpdateForm>,
) -> Response {
    let a = match admin(&p.user) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let mut body = serde_json::Map::new();
    if let Some(r) = &p.form.role {
        body.insert("role".into(), json!(r));
    }
    if let Some(d) = &p.form.disabled {
        body.insert("disabled".into(), json!(d == "true"));
    }
    let res = match from_json(Value::Object(body)) {
        Ok(req) => users_api::update_user(State(state.clone()), a, Path(id), Json(req))
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    match res {
        Ok(()) => done("/ui/users", "updated"),
        Err(e) => {
            let (status, d, _) = explain(&e);
            users_page(&state, &p.user, Some(("error", d)), None, status).await
        }
    }
}

// ---------- logs ----------

#[derive(Debug, Default, Deserialize)]
pub struct LogFilter {
    user: Option<String>,
    key_id: Option<String>,
    model: Option<String>,
    outcome: Option<String>,
    from: Option<String>,
    to: Option<String>,
    cursor: Option<u64>,
}

fn set(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// `datetime-local` gives `2026-11-24T14:30`; the console's times are UTC.
fn utc_input(s: &str) -> String {
    match s.len() {
        16 => format!("{s}:00Z"),
        19 => format!("{s}Z"),
        _ => s.to_owned(),
    }
}

pub async fn logs(
    State(state): State<AppState>,
    user: ConsoleUser,
    AxumQuery(f): AxumQuery<LogFilter>,
) -> Response {
    let mut q = serde_json::Map::new();
    q.insert("limit".into(), json!(100));
    if let Some(c) = f.cursor {
        q.insert("cursor".into(), json!(c));
    }
    for (k, v) in [
        ("user", &f.user),
        ("key_id", &f.key_id),
        ("model", &f.model),
        ("outcome", &f.outcome),
    ] {
        if let Some(v) = set(v) {
            q.insert(k.into(), json!(v));
        }
    }
    for (k, v) in [("from", &f.from), ("to", &f.to)] {
        if let Some(v) = set(v) {
            q.insert(k.into(), json!(utc_input(v)));
        }
    }
    let result = match from_json::<LogsQuery>(Value::Object(q)) {
        Ok(q) => logs_api::list_logs(State(state.clone()), user.caller.clone(), Query(q)).await,
        Err(e) => Err(e),
    };
    let (page_rows, error) = match result {
        Ok(Json(p)) => (Some(p), None),
        Err(e) => (None, Some(explain(&e).1)),
    };
    let users: Vec<(String, String)> = if user.reads_everything() {
        let live = state.0.live.read();
        let mut u: Vec<_> = live
            .users
            .iter()
            .map(|u| (u.user_id.clone(), u.username.clone()))
            .collect();
        u.sort_by(|a, b| a.1.cmp(&b.1));
        u
    } else {
        Vec::new()
    };
    let outcomes = [
        "success",
        "upstream_error",
        "upstream_unavailable",
        "upstream_timeout",
        "client_closed",
        "invalid_request",
        "denied",
    ];
    let body = html! {
        form.filters method="get" action="/ui/logs" {
            @if user.reads_everything() {
                div.field {
                    label for="l-user" { "User" }
                    select #l-user name="user" {
                        option value="" { "Everyone" }
                        @for (id, name) in &users { option value=(id) selected[set(&f.user) == Some(id.as_str())] { (name) } }
                    }
                }
            }
            div.field { label for="l-key" { "Key id" } input #l-key name="key_id" type="text" value=[set(&f.key_id)] placeholder="key_…"; }
            div.field { label for="l-model" { "Model" } input #l-model name="model" type="text" value=[set(&f.model)]; }
            div.field {
                label for="l-outcome" { "Outcome" }
                select #l-outcome name="outcome" {
                    option value="" { "Any" }
                    @for o in outcomes { option value=(o) selected[set(&f.outcome) == Some(o)] { (o.replace('_', " ")) } }
                }
            }
            div.field { label for="l-from" { "From (UTC)" } input #l-from name="from" type="datetime-local" value=[set(&f.from)]; }
            div.field { label for="l-to" { "To (UTC)" } input #l-to name="to" type="datetime-local" value=[set(&f.to)]; }
            button type="submit" { "Filter" }
        }
        @if let Some(e) = &error { (notice("error", e)) }
        @if let Some(p) = &page_rows {
            @if p.rows.is_empty() {
                (empty("No requests match", html! { "Requests through the gateway appear here as they happen." }))
            } @else {
                div.tablewrap {
                    table {
                        thead { tr {
                            th scope="col" { "Time" } th scope="col" { "Key" } th scope="col" { "User" } th scope="col" { "Model" }
                            th scope="col" { "Outcome" } th scope="col" .num { "Status" } th scope="col" .num { "Latency" } th scope="col" .num { "Tokens" } th scope="col" { "Client" }
                        } }
                        tbody {
                            @for r in &p.rows {
                                tr {
                                    td { (when(Some(&r.at))) }
                                    td { a href={"/ui/keys/" (r.key_id)} { (r.key_name.as_deref().unwrap_or(&r.key_id)) } }
                                    td { (r.owner.as_deref().unwrap_or("—")) }
                                    td { (r.model.as_deref().unwrap_or("—")) }
                                    td { (outcome_badge(&r.outcome, r.deny_reason.map(|d| format!("{d:?}")))) }
                                    td.num { @if let Some(s) = r.status { (s) } @else { "—" } }
                                    td.num { @if let Some(l) = r.latency_ms { (format!("{l:.0} ms")) } @else { "—" } }
                                    td.num { (r.tokens) }
                                    td { (r.client_ip.as_deref().unwrap_or("—")) }
                                }
                            }
                        }
                    }
                }
                @if let Some(c) = p.next_cursor {
                    p { a href={"/ui/logs?cursor=" (c) (keep_filters(&f))} { "Older requests →" } }
                }
            }
        }
    };
    render(StatusCode::OK, page(&user, Nav::Logs, "Logs", body))
}

fn keep_filters(f: &LogFilter) -> String {
    let mut s = String::new();
    for (k, v) in [
        ("user", &f.user),
        ("key_id", &f.key_id),
        ("model", &f.model),
        ("outcome", &f.outcome),
        ("from", &f.from),
        ("to", &f.to),
    ] {
        if let Some(v) = set(v) {
            s.push('&');
            s.push_str(k);
            s.push('=');
            s.push_str(&serde_urlencoded::to_string([("", v)]).unwrap_or_default()[1..]);
        }
    }
    s
}

fn outcome_badge(o: &logs_api::LogOutcome, deny: Option<String>) -> Markup {
    let word = serde_json::to_value(o)
        .ok()
        .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
        .unwrap_or_default();
    let class = match o {
        logs_api::LogOutcome::Success => "ok",
        logs_api::LogOutcome::Denied => "bad",
        logs_api::LogOutcome::ClientClosed => "muted",
        _ => "warn",
    };
    match deny {
        Some(d) => html! { (badge(class, &word)) " " span.muted.small { (d.to_lowercase()) } },
        None => badge(class, &word),
    }
}

// ---------- audit ----------

#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    as_of: Option<String>,
}

pub async fn audit(
    State(state): State<AppState>,
    user: ConsoleUser,
    AxumQuery(q): AxumQuery<AuditQuery>,
) -> Response {
    audit_page(&state, &user, set(&q.as_of).map(str::to_owned), None).await
}

async fn audit_page(
    state: &AppState,
    user: &ConsoleUser,
    as_of: Option<String>,
    verification: Option<Markup>,
) -> Response {
    let head = state.0.live.head().seq;
    let cursor = head.saturating_sub(50);
    let uri: Uri = format!("/api/v1/audit/events?limit=50&cursor={cursor}")
        .parse()
        .unwrap_or_default();
    let events = match audit_api::audit_events(State(state.clone()), user.caller.clone(), uri).await
    {
        Ok(Json(p)) => p.events,
        Err(e) => return api_error_page(user, &e),
    };
    let mut newest: Vec<_> = events.iter().collect();
    newest.reverse();
    // Rebuilding the log is for admins and auditors (the API refuses anyone else); the
    // form is shown to them only.
    let table = match &as_of {
        None => None,
        Some(t) => {
            let r = keys_api::list_keys(
                State(state.clone()),
                user.caller.clone(),
                Query(ListKeys {
                    owner_id: None,
                    provider_id: None,
                    status: None,
                    q: None,
                    cursor: None,
                    limit: Some(500),
                    as_of: Some(utc_input(t)),
                }),
            )
            .await;
            Some(r.map(|Json(l)| l.keys))
        }
    };
    let names = provider_names(state);
    let body = html! {
        div.cards {
            section.card aria-labelledby="chain-h" {
                h2 #chain-h { "Chain" }
                p { "The log holds " strong { (head) } " events, each hash-chained to the one before." }
                @if let Some(v) = &verification { (v) }
                @if user.reads_everything() {
                    form method="post" action="/ui/audit/verify" {
                        (csrf(user))
                        button.primary type="submit" { "Verify the chain" }
                    }
                }
            }
            section.card aria-labelledby="export-h" {
                h2 #export-h { "Export" }
                p { "NDJSON, one envelope a line as stored (a password hash of a schema 1 user event is redacted), to verify offline with " code { "keyward audit verify" } "." }
                a.button href="/ui/audit/export" download="keyward-audit.ndjson" { "Download export" }
            }
        }
        @if user.reads_everything() { section.card aria-labelledby="asof-h" {
            h2 #asof-h { "The key table as of a past time" }
            form.filters method="get" action="/ui/audit" {
                div.field {
                    label for="as_of" { "As of (UTC)" }
                    input #as_of name="as_of" type="datetime-local" step="1" required value=[as_of.as_deref().map(|t| t.trim_end_matches('Z'))];
                }
                button type="submit" { "Show table" }
            }
            @match &table {
                None => {}
                Some(Err(e)) => { (notice("error", &explain(e).1)) }
                Some(Ok(keys)) if keys.is_empty() => { (empty("No keys existed then", html! { "Pick a later time." })) }
                Some(Ok(keys)) => {
                    p.muted { "Rebuilt from the log up to " (as_of.as_deref().map(utc_input).unwrap_or_default()) "." }
                    div #asof-table { (key_table(keys, &names, user.reads_everything(), None, "/ui/audit")) }
                }
            }
        } } @else if let Some(Err(e)) = &table { (notice("error", &explain(e).1)) }
        section.card aria-labelledby="events-h" {
            h2 #events-h { "Latest events" }
            (event_table(&newest, &Actors::of(state)))
        }
    };
    // A refused or failed replay answers with its status, the rest of the page intact.
    let status = match &table {
        Some(Err(e)) => explain(e).0,
        _ => StatusCode::OK,
    };
    render(status, page(user, Nav::Audit, "Audit", body))
}

pub async fn verify_chain(State(state): State<AppState>, p: Posted<Nothing>) -> Response {
    let a = match reader(&p.user) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let v = match audit_api::audit_verify(State(state.clone()), a).await {
        Ok(Json(v)) => v,
        Err(e) => return api_error_page(&p.user, &e),
    };
    let m = if v.ok {
        html! { p.notice.ok role="status" { (badge("ok", "Chain intact")) " All " (v.checked) " events verify, up to seq " (v.head_seq) "." } }
    } else {
        html! { p.notice.error role="alert" { (badge("bad", "Chain broken")) " The first bad event is seq " (v.first_bad_seq.unwrap_or_default()) ": " (v.reason.unwrap_or_default()) } }
    };
    audit_page(&state, &p.user, None, Some(m)).await
}

pub async fn export(State(state): State<AppState>, user: ConsoleUser) -> Response {
    let uri: Uri = Uri::from_static("/api/v1/audit/export");
    match audit_api::audit_export(State(state), user.caller.clone(), uri).await {
        Ok(r) => r,
        Err(e) => api_error_page(&user, &e),
    }
}
