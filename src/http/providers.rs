//! Providers (admins change them, auditors read them): the upstreams keys are bound to, and their credentials.
//!
//! A credential is checked live against the provider before it is stored, stored only
//! sealed, and shown only masked (`sk-…abcd`) with its fingerprint: never in plaintext,
//! not even in the response to the request that sent it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::Utc;
use keyward_events::{ProviderKind, ProviderUpdated};
use keyward_projections::{KeyStatus, ProviderRecord, State as Projections};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::commands::NewProvider;
use crate::crypto::{self, ProviderSecret};
use crate::http::caller::{Admin, Reader};
use crate::http::error::{ApiError, Json, Problem, Query};
use crate::http::keys::{check_models, check_name};
use crate::http::schema::{KeyStatusSchema, ProviderCredentialSchema, ProviderKindSchema};
use crate::providers;
use crate::providers::check::{self as provider_check, CheckError, CheckResult};
use crate::time::{self, Timestamp};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_provider, list_providers))
        .routes(routes!(get_provider, update_provider, delete_provider))
        .routes(routes!(replace_credential))
        .routes(routes!(verify_provider))
}

const MAX_API_KEY: usize = 4096;
const MAX_URL: usize = 2048;
const MAX_CONFIG_BYTES: usize = 16 * 1024;
/// Config keys that look like a credential: those belong in `api_key`, which is sealed;
/// config is stored in the clear.
const SECRET_LIKE_CONFIG_KEYS: &[&str] = &[
    "api_key",
    "apikey",
    "api-key",
    "key",
    "secret",
    "password",
    "token",
    "authorization",
];

// ---------- views ----------

/// The credential as anyone may see it: masked, with its fingerprint.
#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialView {
    /// A known prefix such as `sk-`, if the credential has one, then `…` and its last four
    /// characters.
    #[schema(example = "sk-…abcd")]
    pub masked: String,
    /// Keyed blake3 of the credential: equal fingerprints mean the same credential.
    pub fingerprint: String,
    /// The master key of the keyring that sealed it.
    pub keyring_version: u32,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

/// The result of a live check of the credential against the provider's models endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerificationView {
    pub ok: bool,
    /// The provider's HTTP status; absent when it could not be reached.
    pub status: Option<u16>,
    /// The provider's reason for a refusal, or a summary.
    pub detail: Option<String>,
    #[schema(format = DateTime)]
    pub at: String,
}

/// A key bound to the provider.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderKeyRef {
    pub id: String,
    pub name: String,
    pub owner_id: String,
    #[schema(value_type = KeyStatusSchema)]
    pub status: KeyStatus,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderView {
    pub id: String,
    pub name: String,
    #[schema(value_type = ProviderKindSchema)]
    pub kind: ProviderKind,
    pub base_url: String,
    #[schema(value_type = Object)]
    pub config: Map<String, Value>,
    /// The models enabled for keys; empty means every model the provider offers.
    pub models: Vec<String>,
    pub credential: Option<CredentialView>,
    /// The last live check.
    pub verification: Option<VerificationView>,
    /// The keys bound to this provider that are not deleted.
    pub keys: Vec<ProviderKeyRef>,
    /// How many of them still work (active or in their rotation grace).
    pub active_keys: usize,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    pub deleted: bool,
    #[schema(format = DateTime)]
    pub deleted_at: Option<String>,
    /// The provider stream's version.
    pub version: u64,
}

fn credential_view(app: &AppState, p: &ProviderRecord) -> Option<CredentialView> {
    let c = p.credential.as_ref()?;
    // Opened only to tell whether it starts with a known prefix; dropped (and zeroed) here.
    let secret = app
        .0
        .keyring
        .open(&p.provider_id, &c.ciphertext, &c.nonce, c.keyring_version)
        .ok();
    let masked = match &secret {
        Some(s) => providers::kind(p.kind).masked(s),
        None => crypto::mask(None, &c.last4),
    };
    Some(CredentialView {
        masked,
        fingerprint: c.fingerprint.clone(),
        keyring_version: c.keyring_version,
        updated_at: time::format(&c.updated_at),
    })
}

/// The keys bound to each provider, not deleted, in id order.
fn keys_by_provider(state: &Projections, now: Timestamp) -> HashMap<String, Vec<ProviderKeyRef>> {
    let mut map: HashMap<String, Vec<ProviderKeyRef>> = HashMap::new();
    for k in state.keys.iter().filter(|k| !k.is_deleted()) {
        for p in k.provider_ids() {
            map.entry(p.to_owned()).or_default().push(ProviderKeyRef {
                id: k.key_id().to_owned(),
                name: k.name().to_owned(),
                owner_id: k.owner_id().to_owned(),
                status: k.status(now),
            });
        }
    }
    for v in map.values_mut() {
        v.sort_by(|a, b| a.id.cmp(&b.id));
    }
    map
}

fn view(app: &AppState, p: &ProviderRecord, keys: Vec<ProviderKeyRef>) -> ProviderView {
    let active_keys = keys
        .iter()
        .filter(|k| matches!(k.status, KeyStatus::Active | KeyStatus::Grace))
        .count();
    ProviderView {
        id: p.provider_id.clone(),
        name: p.name.clone(),
        kind: p.kind,
        base_url: p.base_url.clone(),
        config: p.config.clone(),
        models: p.models.clone(),
        credential: credential_view(app, p),
        verification: p.verification.as_ref().map(|v| VerificationView {
            ok: v.ok,
            status: v.status,
            detail: v.detail.clone(),
            at: time::format(&v.at),
        }),
        keys,
        active_keys,
        created_at: time::format(&p.created_at),
        updated_at: time::format(&p.updated_at),
        deleted: p.is_deleted(),
        deleted_at: p.deleted_at.map(|t| time::format(&t)),
        version: p.version,
    }
}

fn live_view(app: &AppState, p: &ProviderRecord) -> ProviderView {
    let keys = {
        let state = app.0.live.read();
        let now = Utc::now();
        let mut keys: Vec<ProviderKeyRef> = state
            .keys
            .using_provider(&p.provider_id)
            .filter(|k| !k.is_deleted())
            .map(|k| ProviderKeyRef {
                id: k.key_id().to_owned(),
                name: k.name().to_owned(),
                owner_id: k.owner_id().to_owned(),
                status: k.status(now),
            })
            .collect();
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        keys
    };
    view(app, p, keys)
}

fn find(app: &AppState, id: &str) -> Result<Arc<ProviderRecord>, ApiError> {
    app.0
        .live
        .read()
        .providers
        .get(id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("provider {id} was not found")))
}

// ---------- validation ----------

/// A provider credential in a request body. Its `Debug` prints nothing of it.
pub struct ApiKey(ProviderSecret);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for ApiKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// A key, or a credential of named parts (Bedrock's access key, Vertex's service
        /// account key), kept as its JSON text.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            Key(String),
            Parts(Map<String, Value>),
        }
        match Text::deserialize(d)? {
            Text::Key(s) => Ok(ApiKey(ProviderSecret::new(s))),
            Text::Parts(m) => serde_json::to_string(&m)
                .map(|s| ApiKey(ProviderSecret::new(s)))
                .map_err(serde::de::Error::custom),
        }
    }
}

/// The credential, checked for its kind: a key that travels in a header, or (for a kind
/// whose credential has parts) a JSON object the kind can use.
fn check_api_key(
    key: ApiKey,
    kind: ProviderKind,
    config: &Map<String, Value>,
) -> Result<ProviderSecret, ApiError> {
    let k = providers::kind(kind);
    if k.structured_credential() {
        let s = key.0.expose();
        if s.len() > MAX_API_KEY {
            return Err(ApiError::invalid(
                "api_key",
                format!("api_key must be at most {MAX_API_KEY} characters"),
            ));
        }
        k.check_secret(config, s)
            .map_err(|p| ApiError::invalid(&p.field, p.message))?;
        return Ok(key.0);
    }
    let s = key.0.expose();
    if s.is_empty() {
        return Err(ApiError::invalid("api_key", "api_key must not be empty"));
    }
    if s.len() > MAX_API_KEY {
        return Err(ApiError::invalid(
            "api_key",
            format!("api_key must be at most {MAX_API_KEY} characters"),
        ));
    }
    // It travels in an HTTP header: printable ASCII, and no spaces that a copy and paste
    // may have added.
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid(
            "api_key",
            "api_key must be printable ASCII without spaces",
        ));
    }
    Ok(key.0)
}

fn check_base_url(s: &str) -> Result<String, ApiError> {
    let s = s.trim();
    let err = |d: String| ApiError::invalid("base_url", d);
    if s.len() > MAX_URL {
        return Err(err(format!(
            "base_url must be at most {MAX_URL} characters"
        )));
    }
    let url = reqwest::Url::parse(s).map_err(|e| {
        err(format!(
            "{s:?} is not an absolute URL such as https://api.openai.com/v1: {e}"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(err(format!(
            "base_url must use http or https, not {}",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(err("base_url needs a host".to_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(err(
            "base_url must not carry credentials; send the credential as api_key".to_owned(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(err(
            "base_url must not have a query or a fragment; put settings such as api_version in config"
                .to_owned(),
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// A base URL whose host is, or resolves to, an address Keyward may not connect to is
/// refused before anything is stored: link-local and metadata addresses always, loopback
/// and private ones unless the upstream allowlist names them.
async fn check_egress(app: &AppState, base_url: &str) -> Result<(), ApiError> {
    let url = reqwest::Url::parse(base_url)
        .map_err(|e| ApiError::invalid("base_url", format!("not an absolute URL: {e}")))?;
    app.0
        .proxy
        .egress()
        .check_url(&url)
        .await
        .map_err(|e| ApiError::invalid("base_url", format!("base_url refused: {e}")))
}

fn check_config(kind: ProviderKind, config: Option<Value>) -> Result<Map<String, Value>, ApiError> {
    let config = match config {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ApiError::invalid("config", "config must be a JSON object")),
    };
    let size = serde_json::to_vec(&config).map_or(usize::MAX, |v| v.len());
    if size > MAX_CONFIG_BYTES {
        return Err(ApiError::invalid(
            "config",
            format!("config must be at most {MAX_CONFIG_BYTES} bytes of JSON"),
        ));
    }
    if let Some(k) = config
        .keys()
        .find(|k| SECRET_LIKE_CONFIG_KEYS.contains(&k.to_ascii_lowercase().as_str()))
    {
        return Err(ApiError::invalid(
            &format!("config.{k}"),
            "credentials go in api_key, where they are sealed; config is stored in the clear",
        ));
    }
    providers::kind(kind)
        .check_config(&config)
        .map_err(|p| ApiError::invalid(&p.field, p.message))?;
    if let Some(Value::Object(deployments)) = config.get("deployments") {
        for (model, dep) in deployments {
            if let Some(c) = crate::names::hidden_char(model)
                .or_else(|| dep.as_str().and_then(crate::names::hidden_char))
            {
                return Err(crate::http::keys::hidden_char_error(
                    "config.deployments",
                    c,
                ));
            }
        }
    }
    Ok(config)
}

/// Runs the live check; a provider that cannot be reached is 502, and nothing is stored.
pub(crate) async fn live_check(
    app: &AppState,
    kind: ProviderKind,
    base_url: &str,
    config: &Map<String, Value>,
    secret: &ProviderSecret,
) -> Result<CheckResult, ApiError> {
    // The provider as it would be stored, so the check goes through its kind exactly as
    // the proxy will.
    let now = Utc::now();
    let candidate = ProviderRecord {
        provider_id: "prv_candidate".to_owned(),
        name: String::new(),
        kind,
        base_url: base_url.to_owned(),
        config: config.clone(),
        models: Vec::new(),
        credential: None,
        verification: None,
        created_at: now,
        updated_at: now,
        deleted_at: None,
        version: 0,
    };
    match provider_check::check(app.0.proxy.upstreams(), &candidate, secret).await {
        Ok(r) => Ok(r),
        Err(CheckError::Unreachable(d)) => {
            tracing::warn!(%base_url, reason = %d, "a provider could not be reached for a credential check");
            Err(ApiError::BadGateway(format!(
                "the provider could not be reached to check the credential: {d}. Nothing was stored; retry, or send verify: false"
            )))
        }
        Err(CheckError::Request(d)) => Err(ApiError::Unprocessable {
            detail: d,
            field: None,
        }),
    }
}

/// A check that did not pass, as the refusal of the request that wanted to store it.
fn refusal(r: &CheckResult) -> Option<ApiError> {
    if r.ok {
        return None;
    }
    let status = r.status.unwrap_or(0);
    let reason = r.detail.as_deref().unwrap_or("no reason given");
    Some(match status {
        401 | 403 => ApiError::invalid(
            "api_key",
            format!("the provider refused the credential ({status}): {reason}"),
        ),
        300..=399 | 404 | 405 => ApiError::invalid(
            "base_url",
            format!("the provider has no models endpoint there ({status}): {reason}"),
        ),
        429 | 500..=599 => ApiError::BadGateway(format!(
            "the provider could not check the credential ({status}): {reason}. Nothing was stored; retry, or send verify: false"
        )),
        _ => ApiError::invalid(
            "api_key",
            format!("the provider did not accept the credential ({status}): {reason}"),
        ),
    })
}

// ---------- create ----------

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProvider {
    /// 1 to 200 characters, unique among providers that are not deleted.
    pub name: String,
    #[schema(value_type = ProviderKindSchema)]
    pub kind: ProviderKind,
    /// The API's base URL, e.g. `https://api.openai.com/v1`, `https://api.anthropic.com` or
    /// an Azure resource endpoint `https://NAME.openai.azure.com`.
    #[schema(example = "https://api.openai.com/v1")]
    pub base_url: String,
    /// The provider's credential: a key, or for `bedrock` an object `{"access_key_id",
    /// "secret_access_key", "session_token"?}` and for `vertex` the service account's JSON
    /// key. For `azure_openai` with `config.auth: "entra_id"`, the application's client
    /// secret. Stored sealed; never returned.
    #[schema(value_type = ProviderCredentialSchema, write_only)]
    pub api_key: ApiKey,
    /// Kind-specific settings. `azure_openai` needs
    /// `{"api_version": "2024-10-21", "deployments": {"<model>": "<deployment>"}}`, and for
    /// Entra ID `"auth": "entra_id", "tenant_id", "client_id"`; `bedrock` needs `{"region"}`;
    /// `vertex` needs `{"project_id", "location"}`.
    #[schema(value_type = Option<Object>)]
    pub config: Option<Value>,
    /// The models keys may use; empty or absent means all.
    pub models: Option<Vec<String>>,
    /// Check the credential against the provider's models endpoint before storing it.
    /// Default true.
    pub verify: Option<bool>,
}

/// Add a provider. With `verify` (the default), its models endpoint is called with the
/// credential first: a refused credential is 422 with the provider's reason, an
/// unreachable provider 502, and nothing is stored.
#[utoipa::path(post, path = "/providers", tag = "providers", request_body = CreateProvider,
    responses(
        (status = 201, body = ProviderView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 502, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn create_provider(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Json(req): Json<CreateProvider>,
) -> Result<(StatusCode, Json<ProviderView>), ApiError> {
    let name = check_name(&req.name)?;
    let base_url = check_base_url(&req.base_url)?;
    check_egress(&app, &base_url).await?;
    let config = check_config(req.kind, req.config)?;
    let secret = check_api_key(req.api_key, req.kind, &config)?;
    let models = check_models(req.models.unwrap_or_default())?;
    // Fail fast, before calling the provider; the command checks again under its lock.
    app.0.commands.check_provider_name(&name, None)?;
    let check = if req.verify.unwrap_or(true) {
        let r = live_check(&app, req.kind, &base_url, &config, &secret).await?;
        if let Some(e) = refusal(&r) {
            return Err(e);
        }
        Some(r)
    } else {
        None
    };
    let spec = NewProvider {
        name,
        kind: req.kind,
        base_url,
        config,
        models,
    };
    let p = app
        .0
        .commands
        .create_provider(
            &caller.actor(),
            spec,
            &secret,
            &app.0.keyring,
            check.as_ref(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(live_view(&app, &p))))
}

// ---------- read ----------

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListProviders {
    /// Include deleted providers; default false.
    pub include_deleted: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderList {
    pub providers: Vec<ProviderView>,
}

/// Every provider, with the keys that use it, in creation order.
#[utoipa::path(get, path = "/providers", tag = "providers", params(ListProviders),
    responses(
        (status = 200, body = ProviderList),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`: under `--usage-durability durable`, the key was refused for its IP allowlist or rate limit and the refusal could not be recorded", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn list_providers(
    State(app): State<AppState>,
    Reader(_caller): Reader,
    Query(q): Query<ListProviders>,
) -> Result<Json<ProviderList>, ApiError> {
    let include_deleted = q.include_deleted.unwrap_or(false);
    let (mut providers, mut keys) = {
        let state = app.0.live.read();
        let providers: Vec<Arc<ProviderRecord>> = state
            .providers
            .iter()
            .filter(|p| include_deleted || !p.is_deleted())
            .cloned()
            .collect();
        (providers, keys_by_provider(&state, Utc::now()))
    };
    // Provider ids are ULIDs: id order is creation order.
    providers.sort_by(|a, b| a.provider_id.cmp(&b.provider_id));
    let providers = providers
        .iter()
        .map(|p| {
            let k = keys.remove(&p.provider_id).unwrap_or_default();
            view(&app, p, k)
        })
        .collect();
    Ok(Json(ProviderList { providers }))
}

/// One provider, deleted ones included.
#[utoipa::path(get, path = "/providers/{id}", tag = "providers",
    params(("id" = String, Path, description = "The provider id, prv_…")),
    responses(
        (status = 200, body = ProviderView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`: under `--usage-durability durable`, the key was refused for its IP allowlist or rate limit and the refusal could not be recorded", body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn get_provider(
    State(app): State<AppState>,
    Reader(_caller): Reader,
    Path(id): Path<String>,
) -> Result<Json<ProviderView>, ApiError> {
    let p = find(&app, &id)?;
    Ok(Json(live_view(&app, &p)))
}

// ---------- update ----------

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProvider {
    pub name: Option<String>,
    pub base_url: Option<String>,
    /// Replaces the whole config.
    #[schema(value_type = Option<Object>)]
    pub config: Option<Value>,
    pub models: Option<Vec<String>>,
}

/// Change a provider's name, base URL, config or models. The credential has its own route.
#[utoipa::path(patch, path = "/providers/{id}", tag = "providers", request_body = UpdateProvider,
    params(("id" = String, Path, description = "The provider id, prv_…")),
    responses(
        (status = 200, body = ProviderView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn update_provider(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<String>,
    Json(req): Json<UpdateProvider>,
) -> Result<Json<ProviderView>, ApiError> {
    let p = find(&app, &id)?;
    let patch = ProviderUpdated {
        provider_id: id.clone(),
        name: req.name.as_deref().map(check_name).transpose()?,
        base_url: req.base_url.as_deref().map(check_base_url).transpose()?,
        config: req
            .config
            .map(|c| check_config(p.kind, Some(c)))
            .transpose()?,
        models: req.models.map(check_models).transpose()?,
    };
    if let Some(base_url) = &patch.base_url {
        check_egress(&app, base_url).await?;
    }
    if patch
        == (ProviderUpdated {
            provider_id: id.clone(),
            ..ProviderUpdated::default()
        })
    {
        return Err(ApiError::Unprocessable {
            detail: "the request changes nothing".to_owned(),
            field: None,
        });
    }
    let p = app
        .0
        .commands
        .update_provider(&caller.actor(), patch)
        .await?;
    Ok(Json(live_view(&app, &p)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplaceCredential {
    /// The new credential, in the form its kind takes (see `CreateProvider.api_key`).
    /// Stored sealed; never returned.
    #[schema(value_type = ProviderCredentialSchema, write_only)]
    pub api_key: ApiKey,
    /// Check it against the provider before storing it. Default true.
    pub verify: Option<bool>,
}

/// Replace the provider's credential. Every key bound to the provider uses the new one
/// from the moment this returns.
#[utoipa::path(put, path = "/providers/{id}/credential", tag = "providers",
    request_body = ReplaceCredential,
    params(("id" = String, Path, description = "The provider id, prv_…")),
    responses(
        (status = 200, body = ProviderView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 502, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn replace_credential(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<String>,
    Json(req): Json<ReplaceCredential>,
) -> Result<Json<ProviderView>, ApiError> {
    let p = find(&app, &id)?;
    let secret = check_api_key(req.api_key, p.kind, &p.config)?;
    if p.is_deleted() {
        return Err(ApiError::Conflict {
            detail: format!("provider {id} was deleted and can no longer be changed"),
            extra: None,
        });
    }
    let check = if req.verify.unwrap_or(true) {
        let r = live_check(&app, p.kind, &p.base_url, &p.config, &secret).await?;
        if let Some(e) = refusal(&r) {
            return Err(e);
        }
        Some(r)
    } else {
        None
    };
    let p = app
        .0
        .commands
        .replace_provider_credential(
            &caller.actor(),
            &id,
            &secret,
            &app.0.keyring,
            check.as_ref(),
        )
        .await?;
    Ok(Json(live_view(&app, &p)))
}

/// Check the stored credential against the provider again, and record the result
/// (`provider.verified`), whether it passed or not.
#[utoipa::path(post, path = "/providers/{id}/verify", tag = "providers",
    params(("id" = String, Path, description = "The provider id, prv_…")),
    responses(
        (status = 200, body = VerificationView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn verify_provider(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<String>,
) -> Result<Json<VerificationView>, ApiError> {
    let p = find(&app, &id)?;
    if p.is_deleted() {
        return Err(ApiError::Conflict {
            detail: format!("provider {id} was deleted"),
            extra: None,
        });
    }
    let Some(c) = &p.credential else {
        return Err(ApiError::Conflict {
            detail: format!("provider {id} has no credential; PUT one first"),
            extra: None,
        });
    };
    let check = match app
        .0
        .keyring
        .open(&id, &c.ciphertext, &c.nonce, c.keyring_version)
    {
        Err(e) => CheckResult {
            ok: false,
            status: None,
            detail: Some(format!("the stored credential cannot be opened: {e}")),
        },
        Ok(secret) => match provider_check::check(app.0.proxy.upstreams(), &p, &secret).await {
            Ok(r) => r,
            Err(e) => CheckResult {
                ok: false,
                status: None,
                detail: Some(e.to_string()),
            },
        },
    };
    let p = app
        .0
        .commands
        .record_provider_check(&caller.actor(), &id, p.version, &check)
        .await?;
    let v = p
        .verification
        .as_ref()
        .ok_or_else(|| ApiError::Internal("a recorded verification is missing".to_owned()))?;
    Ok(Json(VerificationView {
        ok: v.ok,
        status: v.status,
        detail: v.detail.clone(),
        at: time::format(&v.at),
    }))
}

// ---------- delete ----------

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteProvider {
    /// Delete even though keys that still work use the provider; they stop working.
    pub force: Option<bool>,
}

/// Delete a provider. While keys that still work use it, this is refused with 409 and the
/// list of those keys in `extra.keys`, unless `force=true`. The record stays for audit.
#[utoipa::path(delete, path = "/providers/{id}", tag = "providers",
    params(("id" = String, Path, description = "The provider id, prv_…"), DeleteProvider),
    responses(
        (status = 200, body = ProviderView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn delete_provider(
    State(app): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<String>,
    Query(q): Query<DeleteProvider>,
) -> Result<Json<ProviderView>, ApiError> {
    find(&app, &id)?;
    let p = app
        .0
        .commands
        .delete_provider(&caller.actor(), &id, q.force.unwrap_or(false))
        .await?;
    Ok(Json(live_view(&app, &p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(e: ApiError) -> Option<String> {
        match e {
            ApiError::Unprocessable { field, .. } => field,
            _ => None,
        }
    }

    #[test]
    fn base_urls_are_absolute_http_without_credentials() {
        assert_eq!(
            check_base_url(" https://api.openai.com/v1/ ").unwrap(),
            "https://api.openai.com/v1"
        );
        assert_eq!(
            check_base_url("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        for bad in [
            "api.openai.com/v1",
            "ftp://x.example",
            "https://user:pw@x.example",
            "https://x.example/v1?key=1",
            "",
        ] {
            assert_eq!(
                field(check_base_url(bad).unwrap_err()).as_deref(),
                Some("base_url"),
                "{bad}"
            );
        }
    }

    #[test]
    fn azure_config_needs_a_version_and_deployments() {
        let ok =
            serde_json::json!({"api_version": "2024-10-21", "deployments": {"gpt-4o": "prod-4o"}});
        assert!(check_config(ProviderKind::AzureOpenai, Some(ok)).is_ok());
        let e = check_config(ProviderKind::AzureOpenai, None).unwrap_err();
        assert_eq!(field(e).as_deref(), Some("config.api_version"));
        let e = check_config(
            ProviderKind::AzureOpenai,
            Some(serde_json::json!({"api_version": "2024-10-21", "deployments": {"gpt-4o": ""}})),
        )
        .unwrap_err();
        assert_eq!(field(e).as_deref(), Some("config.deployments.gpt-4o"));
        let e = check_config(ProviderKind::Openai, Some(serde_json::json!([1]))).unwrap_err();
        assert_eq!(field(e).as_deref(), Some("config"));
        let e = check_config(
            ProviderKind::Openai,
            Some(serde_json::json!({"API_KEY": "sk-x"})),
        )
        .unwrap_err();
        assert_eq!(field(e).as_deref(), Some("config.API_KEY"));
    }
}
