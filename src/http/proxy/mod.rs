//! The proxy: OpenAI-compatible endpoints that authenticate an application's key against
//! the live projection and forward to the provider the key is bound to.
//!
//! One request takes these steps, in this order, and the first that refuses answers:
//! 1. the per-IP throttle on failed authentications (429, before any lookup);
//! 2. the secret's format and checksum (401, before any lookup);
//! 3. the key in the live projection by its hash, no database read (401);
//! 4. status and owner: expiry against the clock, deletion, rotation grace (401);
//! 5. scope (403);
//! 6. the body: size (413), JSON, forbidden fields, model (400);
//! 7. provider and model allowlist (403), a model no provider of the key serves (404);
//! 8. the IP allowlist (403);
//! 9. the per-key rate limit (429 with `Retry-After` and `x-ratelimit-*`);
//! 10. the quota (429 `quota_exceeded`), counting this node's requests in flight: an
//!     admitted request holds its place until its use is folded;
//! 11. the forward, with the decrypted credential in the provider's own header, and the
//!     answer streamed back;
//! 12. one `key.used` into the appender's queue.
//!
//! A known key refused at 4, 5, 7, 8, 9 or 10 records a throttled `key.denied`.

pub mod body;
pub mod limits;
pub mod meter;
pub mod stream;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::{Bytes, BytesMut};
use chrono::{Datelike, Utc};
use futures::StreamExt;
use keyward_events::{
    DenyReason, Event, ExpectedVersion, KeyDenied, NewEvent, Scope, UsageOutcome,
};
use keyward_projections::{KeyRecord, ProviderRecord};
use serde_json::{Value, json};
use ulid::Ulid;

use self::body::{ScanError, Scanned};
use self::limits::{AuthFailures, DenyThrottle, RateDecision, RateLimits};
use self::meter::{Meter, MeterSpec, NotRecorded};
use self::stream::{Mode, Pump};
use crate::auth::{AuthError, authenticate, client_ip, ip_allowed, presented_key, scope_allows};
use crate::config::Config;
use crate::crypto::ProviderSecret;
use crate::live::reservations::{Reservation, TokenBound};
use crate::metrics::ProxyMetrics;
use crate::providers::error::{self, ProxyError, RATE_LIMIT};
use crate::providers::wire::{self, Dialect, Endpoint, Tokens};
use crate::providers::{self, Framing, Outgoing, Upstreams, converse, messages};
use crate::store::appender::Appender;
use crate::{App, AppState};

/// The proxy's long-lived parts: one pooled HTTP client for every provider, and the
/// in-memory limits.
pub struct Proxy {
    /// The clients, the egress policy and the access-token caches of the provider layer.
    upstreams: Upstreams,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
    max_duration: Duration,
    body_limit: usize,
    rate: RateLimits,
    auth_failures: AuthFailures,
    denials: DenyThrottle,
    metrics: Arc<ProxyMetrics>,
    /// `--usage-durability durable`: answers wait for their event's commit.
    durable: bool,
}

impl Proxy {
    pub fn new(config: &Config) -> anyhow::Result<Proxy> {
        let upstreams = Upstreams::new(
            providers::egress::EgressPolicy::from(&config.upstream_allow),
            config.upstream_connect_timeout,
        )
        .map_err(|e| anyhow::anyhow!("cannot build the HTTP client: {e}"))?;
        Ok(Proxy {
            upstreams,
            first_byte_timeout: config.upstream_first_byte_timeout,
            idle_timeout: config.upstream_idle_timeout,
            max_duration: config.upstream_max_duration,
            body_limit: config.body_limit_bytes,
            rate: RateLimits::default(),
            auth_failures: AuthFailures::new(config.auth_failures_per_second),
            denials: DenyThrottle::new(config.denied_event_window),
            metrics: Arc::new(ProxyMetrics::new(config.metrics_key_labels)),
            durable: config.usage_durability == crate::config::UsageDurability::Durable,
        })
    }

    pub fn metrics(&self) -> &ProxyMetrics {
        &self.metrics
    }

    /// The provider layer: clients, egress policy, access tokens.
    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// Where providers may be reached.
    pub fn egress(&self) -> &providers::egress::EgressPolicy {
        &self.upstreams.egress
    }

    /// Records the refusals the denial throttle still holds: those of windows that have
    /// ended, or all of them (at shutdown).
    pub async fn flush_denials(&self, appender: &Appender, all: bool) {
        for d in self.denials.flush(Instant::now(), all) {
            let actor = d.key_id.clone();
            let ev = NewEvent::new(
                &Event::KeyDenied(d),
                ExpectedVersion::Any,
                Utc::now(),
                actor,
                None,
            );
            if appender.record(ev).await.is_err() {
                tracing::warn!("the usage queue is closed; suppressed refusals were not recorded");
                return;
            }
        }
    }

    /// The key's rate limit, one bucket per key whichever surface the key is used on.
    pub fn check_rate(&self, key_id: &str, limit: keyward_events::RateLimit) -> RateDecision {
        self.rate.check(key_id, limit)
    }

    /// Records a refusal of a known key, on the proxy or the management API, under one
    /// per-key, per-reason throttle. Under `durable`, a
    /// refusal it records waits for the commit, and `false` says it did not commit: the
    /// caller must not answer the refusal as if it were recorded.
    pub async fn record_denial(
        &self,
        appender: &Appender,
        d: KeyDenied,
        request_id: Option<String>,
    ) -> bool {
        let key_id = d.key_id.clone();
        let Some(d) = self.denials.deny(d, Instant::now()) else {
            return true;
        };
        let ev = NewEvent::new(
            &Event::KeyDenied(d),
            ExpectedVersion::Any,
            Utc::now(),
            key_id,
            request_id,
        );
        if self.durable {
            let committed = match appender.record_durable(ev).await {
                Ok(d) => d.committed().await.is_ok(),
                Err(_) => false,
            };
            if !committed {
                tracing::warn!("a refusal was not committed; its answer is withheld");
            }
            return committed;
        }
        if appender.record(ev).await.is_err() {
            tracing::warn!("the usage queue is closed; a refusal was not recorded");
        }
        true
    }
}

/// Flushes ended denial windows and forgets stale failure counts and rate limiters, until
/// aborted.
pub fn spawn_sweeper(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let app = &state.0;
        let period = app
            .proxy
            .denials
            .window
            .clamp(Duration::from_millis(100), Duration::from_secs(10));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            app.proxy.auth_failures.prune(Instant::now());
            app.proxy.flush_denials(&app.commands.appender, false).await;
            app.live.reservations().prune();
            let now = Utc::now();
            let live = app.live.read();
            app.proxy.rate.retain(|key_id| {
                live.keys.get(key_id).is_some_and(|k| {
                    matches!(
                        k.status(now),
                        keyward_projections::KeyStatus::Active
                            | keyward_projections::KeyStatus::Grace
                    )
                })
            });
        }
    })
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/work", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/messages", post(messages))
        .route("/v1/models", get(models))
}

async fn chat(State(state): State<AppState>, req: Request) -> Response {
    run(state, req, Endpoint::Chat).await
}

async fn embeddings(State(state): State<AppState>, req: Request) -> Response {
    run(state, req, Endpoint::Embeddings).await
}

async fn messages(State(state): State<AppState>, req: Request) -> Response {
    run(state, req, Endpoint::Messages).await
}

async fn models(State(state): State<AppState>, req: Request) -> Response {
    run(state, req, Endpoint::Models).await
}

async fn run(state: AppState, req: Request, ep: Endpoint) -> Response {
    let (parts, body) = req.into_parts();
    let ctx = Ctx {
        app: &state.0,
        started: Instant::now(),
        request_id: parts
            .extensions
            .get::<crate::http::request_id::RequestId>()
            .map_or_else(|| format!("req_{}", Ulid::new()), |r| r.0.clone()),
        endpoint: ep,
        path: parts.uri.path().to_owned(),
        ip: client_ip(&parts.extensions),
    };
    let result = match ep {
        Endpoint::Models => ctx.list_models(&parts.headers).await,
        _ => ctx.forward(&parts.headers, body).await,
    };
    // The request-id layer puts the id on the response.
    result.unwrap_or_else(IntoResponse::into_response)
}

/// One request on its way through the steps.
struct Ctx<'a> {
    app: &'a App,
    started: Instant,
    request_id: String,
    endpoint: Endpoint,
    path: String,
    ip: Option<IpAddr>,
}

/// A key that passed steps 1–5, with what the later steps need, read in the same brief
/// hold of the live projection.
struct Admitted {
    key: Arc<KeyRecord>,
    /// The key's providers that are not deleted, in the key's order.
    providers: Vec<Arc<ProviderRecord>>,
}

fn auth_error(e: &AuthError) -> ProxyError {
    match e {
        AuthError::Missing => ProxyError::unauthorized(
            "missing_api_key",
            "no API key was given; send it as Authorization: Bearer kw_…",
        ),
        AuthError::Malformed(why) => ProxyError::unauthorized(
            "invalid_api_key",
            format!("the API key is malformed: {why}"),
        ),
        AuthError::Unknown => {
            ProxyError::unauthorized("invalid_api_key", "the API key is not valid")
        }
        AuthError::Refused { reason, .. } => match reason {
            DenyReason::Expired => {
                ProxyError::unauthorized("key_expired", "the API key has expired")
            }
            DenyReason::Deleted => {
                ProxyError::unauthorized("key_deleted", "the API key has been deleted")
            }
            DenyReason::OwnerDisabled => {
                ProxyError::unauthorized("owner_disabled", "the API key's owner is disabled")
            }
            _ => ProxyError::unauthorized("invalid_api_key", "the API key is not valid"),
        },
    }
}

fn too_large() -> ProxyError {
    ProxyError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        error::INVALID_REQUEST,
        "body_too_large",
        "the request body is larger than the configured limit",
    )
}

/// A key's scopes for a refusal: `` `read`, `chat` ``, or `none`.
fn scope_list(scopes: &[Scope]) -> String {
    if scopes.is_empty() {
        return "none".to_owned();
    }
    scopes
        .iter()
        .map(|s| format!("`{}`", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn scan_error(e: ScanError) -> ProxyError {
    match e {
        ScanError::Syntax => ProxyError::bad_request("invalid_json", "the body is not valid JSON"),
        ScanError::NotObject => {
            ProxyError::bad_request("invalid_json", "the body must be a JSON object")
        }
        ScanError::Forbidden(path) => ProxyError::bad_request(
            "forbidden_field",
            "the upstream and its credential are chosen by Keyward; remove this field",
        )
        .with_param(path),
        ScanError::Duplicate(field) => ProxyError::bad_request(
            "duplicate_field",
            "this field appears more than once in the body; send it once",
        )
        .with_param(field),
    }
}

fn rate_headers(limit: u32, remaining: u32) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(HeaderName::from_static("x-ratelimit-limit"), limit.into());
    h.insert(
        HeaderName::from_static("x-ratelimit-remaining"),
        remaining.into(),
    );
    h
}

impl Ctx<'_> {
    fn proxy(&self) -> &Proxy {
        &self.app.proxy
    }

    fn client_ip_text(&self) -> Option<String> {
        self.ip.map(|i| i.to_canonical().to_string())
    }

    /// Counts a refusal of a known key and records it if the throttle lets it through.
    /// Under `durable`, a refusal it records is answered only once the event committed:
    /// otherwise the error is [`not_recorded`].
    async fn deny(
        &self,
        key_id: &str,
        reason: DenyReason,
        model: Option<&str>,
    ) -> Result<(), ProxyError> {
        let d = KeyDenied {
            key_id: key_id.to_owned(),
            reason,
            endpoint: self.path.clone(),
            model: model.map(wire::recorded_model),
            client_ip: self.client_ip_text(),
            suppressed: 0,
        };
        tracing::debug!(request_id = %self.request_id, %key_id, ?reason, "refused");
        self.proxy().metrics.refused(key_id, reason);
        let recorded = self
            .proxy()
            .record_denial(
                &self.app.commands.appender,
                d,
                Some(self.request_id.clone()),
            )
            .await;
        if recorded {
            Ok(())
        } else {
            Err(not_recorded())
        }
    }

    /// Steps 1 to 5.
    async fn admit(&self, headers: &HeaderMap, needed: Scope) -> Result<Admitted, ProxyError> {
        let px = self.proxy();
        let t = Instant::now();
        if px.auth_failures.blocked(self.ip, t) {
            px.metrics.auth_throttled();
            return Err(ProxyError::new(
                StatusCode::TOO_MANY_REQUESTS,
                RATE_LIMIT,
                "too_many_auth_failures",
                "too many failed authentications from this address; wait a second",
            )
            .with_header(header::RETRY_AFTER, 1));
        }
        let now = Utc::now();
        let looked_up = presented_key(headers, true).and_then(|presented| {
            let state = self.app.live.read();
            let authed = authenticate(&state, presented, now)?;
            let providers = authed
                .key
                .provider_ids()
                .filter_map(|id| state.providers.get(id))
                .filter(|p| !p.is_deleted())
                .cloned()
                .collect();
            let auditor = authed.owner.role == keyward_events::Role::Auditor;
            Ok((
                Admitted {
                    key: authed.key,
                    providers,
                },
                auditor,
            ))
        });
        let (adm, auditor) = match looked_up {
            Ok(a) => a,
            Err(e) => {
                px.auth_failures.failed(self.ip, t);
                if let AuthError::Refused { key_id, reason } = &e {
                    self.deny(key_id, *reason, None).await?;
                }
                return Err(auth_error(&e));
            }
        };
        // An auditor's key reads the management API and nothing else: it never reaches a
        // provider, whatever its scopes.
        if auditor {
            self.deny(adm.key.key_id(), DenyReason::Scope, None).await?;
            return Err(ProxyError::forbidden(
                "insufficient_scope",
                "this key belongs to an auditor: it may read the management API, not use the proxy",
            ));
        }
        if !scope_allows(adm.key.scopes(), needed) {
            self.deny(adm.key.key_id(), DenyReason::Scope, None).await?;
            return Err(ProxyError::forbidden(
                "insufficient_scope",
                format!(
                    "this key's scopes ({}) do not allow this endpoint; it needs `{}`",
                    scope_list(adm.key.scopes()),
                    needed.as_str()
                ),
            ));
        }
        Ok(adm)
    }

    /// Steps 8 to 10. Returns the rate-limit headers for the response and, for a key with
    /// a quota, the request's place in it, which its [`Meter`] holds until its use is
    /// recorded.
    async fn limits(
        &self,
        adm: &Admitted,
        model: Option<&str>,
        tokens: TokenBound,
    ) -> Result<(HeaderMap, Option<Reservation>), ProxyError> {
        let key = &adm.key;
        if !ip_allowed(key.ip_allowlist(), self.ip) {
            self.deny(key.key_id(), DenyReason::Ip, model).await?;
            return Err(ProxyError::forbidden(
                "ip_not_allowed",
                format!(
                    "this key may not be used from {}: the address is outside its IP allowlist",
                    self.client_ip_text()
                        .unwrap_or_else(|| "an unknown address".to_owned())
                ),
            ));
        }
        let headers = self.rate_limit(adm, model).await?;
        let Some(q) = key.quota() else {
            return Ok((headers, None));
        };
        let reserved = {
            // The counters and the reservations are read in one hold of the state, which
            // the fold of a use changes both of in one write hold.
            let state = self.app.live.read();
            let now = Utc::now();
            let (id, d) = (key.key_id(), now.date_naive());
            let day = state.usage.day(id, d);
            let month = state.usage.month(id, d.year(), d.month());
            self.app.live.reservations().reserve(id, tokens, |pending| {
                match limits::check_quota(&q, now, day, month, pending) {
                    Some(over) => Err(over),
                    None => Ok(()),
                }
            })
        };
        let over = match reserved {
            Ok(r) => return Ok((headers, Some(r))),
            Err(over) => over,
        };
        self.deny(key.key_id(), DenyReason::Quota, model).await?;
        Err(ProxyError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            "quota_exceeded",
            format!("this key's quota of {} is used up", over.what),
        )
        .with_header(header::RETRY_AFTER, over.retry_after_secs)
        .with_headers(headers))
    }

    async fn rate_limit(
        &self,
        adm: &Admitted,
        model: Option<&str>,
    ) -> Result<HeaderMap, ProxyError> {
        let Some(rl) = adm.key.rate_limit else {
            return Ok(HeaderMap::new());
        };
        match self.proxy().rate.check(adm.key.key_id(), rl) {
            RateDecision::Allowed { limit, remaining } => Ok(rate_headers(limit, remaining)),
            RateDecision::Refused { limit, retry_after } => {
                self.deny(adm.key.key_id(), DenyReason::RateLimit, model)
                    .await?;
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                Err(ProxyError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    RATE_LIMIT,
                    "rate_limit_exceeded",
                    format!(
                        "this key is limited to {limit} requests per minute; retry after {secs}s"
                    ),
                )
                .with_header(header::RETRY_AFTER, secs)
                .with_header(HeaderName::from_static("x-ratelimit-reset"), secs)
                .with_headers(rate_headers(limit, 0)))
            }
        }
    }

    fn meter(
        &self,
        key_id: &str,
        provider_id: &str,
        model: Option<(&str, bool)>,
        stream: bool,
        hold: Option<Reservation>,
    ) -> Meter {
        Meter::new(
            hold,
            MeterSpec {
                appender: self.app.commands.appender.clone(),
                key_id: key_id.to_owned(),
                provider_id: provider_id.to_owned(),
                model: model.map(|(m, _)| wire::recorded_model(m)),
                model_named: model.is_some_and(|(_, named)| named),
                endpoint: self.path.clone(),
                stream,
                client_ip: self.client_ip_text(),
                request_id: self.request_id.clone(),
                started: self.started,
                metrics: self.proxy().metrics.clone(),
                durable: self.proxy().durable,
            },
        )
    }

    /// A request refused for its body, after the key was admitted: counted against the
    /// rate limit like any other, and recorded as a use with outcome `invalid_request`.
    async fn invalid(&self, adm: &Admitted, model: Option<&str>, e: ProxyError) -> ProxyError {
        if let Err(limited) = self.rate_limit(adm, model).await {
            return limited;
        }
        let provider = adm.key.provider_ids().next().unwrap_or("");
        // Not admitted to the provider, yet counted by a quota like any use.
        let hold = adm
            .key
            .quota()
            .map(|_| self.app.live.reservations().track(adm.key.key_id()));
        let mut m = self.meter(
            adm.key.key_id(),
            provider,
            model.map(|m| (m, false)),
            false,
            hold,
        );
        match m
            .record(
                UsageOutcome::InvalidRequest,
                e.status.as_u16(),
                Tokens::default(),
                None,
            )
            .await
        {
            Ok(()) => e,
            Err(NotRecorded) => not_recorded(),
        }
    }

    async fn forward(&self, headers: &HeaderMap, body: Body) -> Result<Response, ProxyError> {
        let adm = self.admit(headers, Scope::Chat).await?;
        let key = &adm.key;

        let bytes = match read_body(body, headers, self.proxy().body_limit).await {
            Ok(b) => b,
            Err(e) => return Err(self.invalid(&adm, None, e).await),
        };
        let scanned = match body::scan(&bytes) {
            Ok(s) => s,
            Err(e) => return Err(self.invalid(&adm, None, scan_error(e)).await),
        };
        let model = match (&scanned.model, scanned.model_invalid) {
            (Some(m), false) if !m.is_empty() => m.clone(),
            _ => {
                let e = ProxyError::bad_request("missing_model", "the body must name a model")
                    .with_param("model");
                return Err(self.invalid(&adm, None, e).await);
            }
        };

        let offering: Vec<Arc<ProviderRecord>> = adm
            .providers
            .iter()
            .filter(|p| providers::kind(p.kind).offers(self.endpoint))
            .cloned()
            .collect();
        if offering.is_empty() {
            self.deny(key.key_id(), DenyReason::Provider, Some(&model))
                .await?;
            return Err(ProxyError::forbidden(
                "provider_not_allowed",
                format!(
                    "this key is not bound to a provider that offers {}",
                    self.path
                ),
            ));
        }
        if !key.models().is_empty() && !key.models().contains(&model) {
            self.deny(key.key_id(), DenyReason::Model, Some(&model))
                .await?;
            return Err(ProxyError::forbidden(
                "model_not_allowed",
                format!(
                    "this key may not use the model `{}`",
                    wire::named_model(&model)
                ),
            )
            .with_param("model"));
        }
        let Some(provider) = wire::choose(&offering, self.endpoint, &model).cloned() else {
            self.deny(key.key_id(), DenyReason::Model, Some(&model))
                .await?;
            return Err(wire::model_not_found(&model));
        };
        let bound = token_bound(self.endpoint, &provider, &scanned, bytes.len());
        let (rl_headers, hold) = self.limits(&adm, Some(&model), bound).await?;
        // Every use is recorded; with the queue full (the store has stopped taking writes)
        // this one could not be, so it is refused before it reaches the provider.
        if self.app.commands.appender.is_full() {
            tracing::warn!(request_id = %self.request_id, "usage queue full: request refused");
            return Err(ProxyError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                error::UPSTREAM,
                "usage_queue_full",
                "Keyward cannot record usage right now; try again shortly",
            )
            .with_header(axum::http::header::RETRY_AFTER, 1));
        }

        // The model passed the key's allowlist and the provider's: it is named explicitly
        // when either is a list (or an Azure deployment map), not "every model".
        let named = !key.models().is_empty()
            || !provider.models.is_empty()
            || providers::kind(provider.kind).names_models();
        let meter = self.meter(
            key.key_id(),
            &provider.provider_id,
            Some((&model, named)),
            scanned.stream,
            hold,
        );
        let mut res = self
            .send(headers, bytes, &scanned, &model, &provider, meter)
            .await?;
        res.headers_mut().extend(rl_headers);
        Ok(res)
    }

    fn credential(&self, p: &ProviderRecord) -> Result<ProviderSecret, ProxyError> {
        let unusable = || {
            ProxyError::bad_gateway(
                "provider_credential_unavailable",
                "the provider has no usable credential; an admin must set one",
            )
        };
        let sealed = p.credential.as_ref().ok_or_else(unusable)?;
        self.app
            .keyring
            .open(
                &p.provider_id,
                &sealed.ciphertext,
                &sealed.nonce,
                sealed.keyring_version,
            )
            .map_err(|e| {
                tracing::error!(provider_id = %p.provider_id, error = %e, "cannot open the provider's credential");
                unusable()
            })
    }

    /// Step 11: the forward, the answer and the use.
    async fn send(
        &self,
        client_headers: &HeaderMap,
        bytes: Bytes,
        scanned: &Scanned,
        model: &str,
        p: &ProviderRecord,
        mut meter: Meter,
    ) -> Result<Response, ProxyError> {
        let prepared = match self.prepare(client_headers, bytes, scanned, model, p).await {
            Ok(x) => x,
            Err((e, outcome)) => return Err(fail(&mut meter, e, outcome).await),
        };
        let Prepared {
            req,
            mode,
            dialect,
            framing,
            secret,
            sent,
        } = prepared;
        let up_started = Instant::now();
        let resp = match self.call(req, p).await {
            Ok(r) => r,
            Err((e, outcome)) => return Err(fail(&mut meter, e, outcome).await),
        };
        let status = resp.status();
        if status.is_redirection() {
            // Never followed: it could lead the credential, or the client, anywhere.
            tracing::warn!(request_id = %self.request_id, provider_id = %p.provider_id, status = status.as_u16(), "the provider answered with a redirect; not followed");
            return Err(fail(
                &mut meter,
                ProxyError::bad_gateway(
                    "upstream_redirect",
                    "the provider answered with a redirect, which Keyward does not follow",
                ),
                UsageOutcome::UpstreamError,
            )
            .await);
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            // Keyward's credential for the provider was refused, not the client's key.
            tracing::warn!(request_id = %self.request_id, provider_id = %p.provider_id, status = status.as_u16(), "the provider refused Keyward's credential");
            providers::kind(p.kind).rejected(&self.proxy().upstreams, p, &secret);
            return Err(fail(
                &mut meter,
                providers::credential_rejected(),
                UsageOutcome::UpstreamError,
            )
            .await);
        }
        // What the answer is scrubbed of: the access token sent, or the credential itself.
        let scrub_with = sent.unwrap_or(secret);
        let mut out_headers = HeaderMap::new();
        wire::response_headers(resp.headers(), &mut out_headers, scrub_with.expose());
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let streamed = match framing {
            Framing::Sse => content_type.starts_with("text/event-stream"),
            Framing::EventStream(_) => {
                content_type.starts_with("application/vnd.amazon.eventstream")
            }
        };
        if status.is_success() && streamed {
            let upstream: stream::Upstream = match framing {
                Framing::Sse => Box::pin(resp.bytes_stream()),
                Framing::EventStream(flavour) => {
                    stream::from_event_stream(Box::pin(resp.bytes_stream()), flavour)
                }
            };
            let pump = Pump::new(
                upstream,
                self.proxy().idle_timeout,
                up_started + self.proxy().max_duration,
                mode,
                meter,
                scrub_with,
                up_started,
            );
            let mut res = Response::new(Body::from_stream(pump.spawn()));
            *res.status_mut() = status;
            let h = res.headers_mut();
            h.extend(out_headers);
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            h.insert(
                HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            );
            return Ok(res);
        }
        self.answer(
            resp,
            dialect,
            model,
            up_started,
            out_headers,
            &scrub_with,
            p,
            meter,
        )
        .await
    }

    /// The request as it leaves: the route, the body in the provider's dialect, the
    /// client's headers that may cross, and the credential the kind adds.
    async fn prepare(
        &self,
        client_headers: &HeaderMap,
        bytes: Bytes,
        scanned: &Scanned,
        model: &str,
        p: &ProviderRecord,
    ) -> Result<Prepared, (ProxyError, UsageOutcome)> {
        let unavailable = |e| (e, UsageOutcome::UpstreamUnavailable);
        let invalid = |e| (e, UsageOutcome::InvalidRequest);
        let kind = providers::kind(p.kind);
        let secret = self.credential(p).map_err(unavailable)?;
        let wants_sse = scanned.stream && self.endpoint != Endpoint::Embeddings;
        let route = kind
            .route(p, self.endpoint, model, wants_sse)
            .map_err(unavailable)?;
        // A name is checked by the client's resolver at connect time; an address literal
        // never reaches a resolver, so it is checked here, on every request.
        if let Err(e) = self.proxy().upstreams.egress.check_literal(&route.url) {
            tracing::warn!(request_id = %self.request_id, provider_id = %p.provider_id, reason = %e, "refused to connect to the provider's address");
            return Err(unavailable(address_refused()));
        }
        let max_tokens = kind
            .default_max_tokens(p)
            .unwrap_or(messages::DEFAULT_MAX_TOKENS);
        let (body, mode) = match route.dialect {
            Dialect::OpenAi if wants_sse && !scanned.include_usage => {
                let b = body::with_include_usage(&bytes).map_err(|e| invalid(scan_error(e)))?;
                (Bytes::from(b), Mode::OpenAi { strip_usage: true })
            }
            Dialect::OpenAi => (bytes, Mode::OpenAi { strip_usage: false }),
            Dialect::Anthropic => {
                let b = match route.anthropic_body {
                    Some(version) => {
                        Bytes::from(converse::anthropic_request(&bytes, version).map_err(invalid)?)
                    }
                    None => bytes,
                };
                (b, Mode::Anthropic)
            }
            Dialect::AnthropicFromOpenAi => {
                let mut b = messages::request(&bytes, max_tokens).map_err(invalid)?;
                if let Some(version) = route.anthropic_body {
                    b = converse::anthropic_request(&b, version).map_err(invalid)?;
                }
                (
                    Bytes::from(b),
                    Mode::AnthropicToOpenAi(Box::new(messages::StreamTranslator::new(
                        scanned.include_usage,
                    ))),
                )
            }
            Dialect::Converse => {
                let b = converse::request(&bytes, max_tokens).map_err(invalid)?;
                (
                    Bytes::from(b),
                    Mode::ConverseToOpenAi(Box::new(converse::StreamTranslator::new(
                        scanned.include_usage,
                        model,
                    ))),
                )
            }
        };
        let mut headers = if kind.signs_requests() {
            // A signature covers the headers it names: only Keyward's own go.
            HeaderMap::new()
        } else {
            wire::forwarded_headers(client_headers)
        };
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let anthropic_version = match route.dialect {
            Dialect::Anthropic => client_headers.get("anthropic-version").cloned(),
            _ => None,
        };
        let mut req = Outgoing {
            method: axum::http::Method::POST,
            url: route.url,
            headers,
            body,
            anthropic_version,
        };
        let sent = kind
            .authorize(&self.proxy().upstreams, p, &secret, &mut req)
            .await
            .map_err(|e| unavailable(e.into_proxy(&p.provider_id)))?;
        Ok(Prepared {
            req,
            mode,
            dialect: route.dialect,
            framing: route.framing,
            secret,
            sent,
        })
    }

    /// Sends the request and waits, at most the first-byte timeout, for the answer's head.
    async fn call(
        &self,
        req: Outgoing,
        p: &ProviderRecord,
    ) -> Result<reqwest::Response, (ProxyError, UsageOutcome)> {
        let req = self
            .proxy()
            .upstreams
            .client
            .request(req.method, req.url)
            .headers(req.headers)
            .body(req.body);
        match tokio::time::timeout(self.proxy().first_byte_timeout, req.send()).await {
            Err(_) => {
                tracing::warn!(request_id = %self.request_id, provider_id = %p.provider_id, "the provider did not answer within the first-byte timeout");
                Err((
                    ProxyError::upstream_timeout(),
                    UsageOutcome::UpstreamTimeout,
                ))
            }
            Ok(Err(e)) => {
                tracing::warn!(request_id = %self.request_id, provider_id = %p.provider_id, error = %crate::redact::http_error(&e), "the provider could not be reached");
                if e.is_timeout() {
                    Err((
                        ProxyError::upstream_timeout(),
                        UsageOutcome::UpstreamTimeout,
                    ))
                } else {
                    Err((
                        ProxyError::upstream_unavailable(),
                        UsageOutcome::UpstreamUnavailable,
                    ))
                }
            }
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// A whole (not streamed) answer: read, translated to the client's dialect, scrubbed,
    /// its use recorded.
    #[allow(clippy::too_many_arguments)]
    async fn answer(
        &self,
        resp: reqwest::Response,
        dialect: Dialect,
        model: &str,
        up_started: Instant,
        out_headers: HeaderMap,
        scrub_with: &ProviderSecret,
        p: &ProviderRecord,
        mut meter: Meter,
    ) -> Result<Response, ProxyError> {
        let status = resp.status();
        // The provider's header is passed on only when it holds no secret.
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .filter(|v| wire::clean_header(v, scrub_with.expose()))
            .cloned();
        // Bedrock names its exception in a header (`ThrottlingException:…`).
        let aws_error_type = resp
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let deadline = up_started + self.proxy().max_duration;
        let body = match read_upstream(resp, self.proxy().idle_timeout, deadline).await {
            Ok(b) => b,
            Err(outcome) => {
                let e = if outcome == UsageOutcome::UpstreamTimeout {
                    ProxyError::upstream_timeout()
                } else {
                    ProxyError::upstream_unavailable()
                };
                return Err(fail(&mut meter, e, outcome).await);
            }
        };
        let up_latency = up_started.elapsed();
        let secret = scrub_with.expose();
        let (out, outcome, tokens, json_out) = if !status.is_success() {
            let scrubbed = wire::scrub(&body, secret);
            let out = match dialect {
                Dialect::AnthropicFromOpenAi => messages::error(&scrubbed),
                Dialect::Converse => converse::error_typed(&scrubbed, aws_error_type.as_deref()),
                _ => scrubbed,
            };
            tracing::info!(request_id = %self.request_id, provider_id = %p.provider_id, status = status.as_u16(), "the provider answered with an error");
            (
                Bytes::from(out),
                UsageOutcome::UpstreamError,
                Tokens::default(),
                dialect != Dialect::OpenAi && dialect != Dialect::Anthropic,
            )
        } else if matches!(dialect, Dialect::AnthropicFromOpenAi | Dialect::Converse) {
            let translated = match dialect {
                Dialect::Converse => converse::response(&body, model),
                _ => messages::response(&body),
            };
            match translated {
                Some((out, tokens)) => {
                    let out = wire::scrub_credential(&out, secret).unwrap_or(out);
                    (Bytes::from(out), UsageOutcome::Success, tokens, true)
                }
                None => {
                    tracing::warn!(request_id = %self.request_id, provider_id = %p.provider_id, "the provider's answer is not in its API's response shape");
                    return Err(
                        fail(&mut meter, invalid_response(), UsageOutcome::UpstreamError).await,
                    );
                }
            }
        } else {
            // One parse both checks that the answer is JSON and reads its tokens.
            let tokens = match dialect {
                Dialect::Anthropic => messages::checked_response_tokens(&body),
                _ => wire::openai_tokens(&body),
            };
            let Some(tokens) = tokens else {
                tracing::warn!(request_id = %self.request_id, provider_id = %p.provider_id, "the provider's answer is not JSON");
                return Err(
                    fail(&mut meter, invalid_response(), UsageOutcome::UpstreamError).await,
                );
            };
            // The provider's bytes are passed on as they are, unless they held the credential.
            let out = wire::scrub_credential(&body, secret).map_or(body, Bytes::from);
            (out, UsageOutcome::Success, tokens, false)
        };
        if meter
            .record(outcome, status.as_u16(), tokens, Some(up_latency))
            .await
            .is_err()
        {
            return Err(not_recorded());
        }
        let mut res = Response::new(Body::from(out));
        *res.status_mut() = status;
        let h = res.headers_mut();
        h.extend(out_headers);
        match (json_out, content_type) {
            (false, Some(ct)) => {
                h.insert(header::CONTENT_TYPE, ct);
            }
            _ => {
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
        }
        Ok(res)
    }

    /// `GET /v1/models`: the key's allowlist ∩ each provider's enabled models. Only when
    /// both are empty ("every model") is the provider asked for its list.
    async fn list_models(&self, headers: &HeaderMap) -> Result<Response, ProxyError> {
        let adm = self.admit(headers, Scope::Read).await?;
        let key = &adm.key;
        if adm.providers.is_empty() {
            self.deny(key.key_id(), DenyReason::Provider, None).await?;
            return Err(ProxyError::forbidden(
                "provider_not_allowed",
                "this key is not bound to any provider",
            ));
        }
        let (rl_headers, hold) = self.limits(&adm, None, TokenBound::AtMost(0)).await?;
        let first = adm.providers[0].provider_id.clone();
        let mut meter = self.meter(key.key_id(), &first, None, false, hold);
        let mut ids: Vec<(String, String)> = Vec::new();
        let mut upstream_latency = None;
        for p in &adm.providers {
            let listed: Vec<String> = if !p.models.is_empty() {
                p.models.clone()
            } else if !key.models().is_empty() {
                key.models().to_vec()
            } else if let Some(configured) = providers::kind(p.kind).configured_models(p) {
                configured
            } else {
                let t = Instant::now();
                match self.fetch_models(p).await {
                    Ok(list) => {
                        upstream_latency = Some(upstream_latency.unwrap_or_default() + t.elapsed());
                        list
                    }
                    Err((e, outcome)) => {
                        let recorded = meter
                            .record(
                                outcome,
                                e.status.as_u16(),
                                Tokens::default(),
                                Some(t.elapsed()),
                            )
                            .await;
                        return Err(recorded.map_or_else(|NotRecorded| not_recorded(), |()| e));
                    }
                }
            };
            for m in listed {
                let allowed = key.models().is_empty() || key.models().contains(&m);
                if allowed
                    && providers::kind(p.kind).serves(p, &m)
                    && !ids.iter().any(|(id, _)| *id == m)
                {
                    ids.push((m, p.name.clone()));
                }
            }
        }
        if meter
            .record(
                UsageOutcome::Success,
                200,
                Tokens::default(),
                upstream_latency,
            )
            .await
            .is_err()
        {
            return Err(not_recorded());
        }
        let data: Vec<Value> = ids
            .into_iter()
            .map(
                |(id, owner)| json!({"id": id, "object": "model", "created": 0, "owned_by": owner}),
            )
            .collect();
        let mut res = axum::Json(json!({"object": "list", "data": data})).into_response();
        res.headers_mut().extend(rl_headers);
        Ok(res)
    }

    async fn fetch_models(
        &self,
        p: &ProviderRecord,
    ) -> Result<Vec<String>, (ProxyError, UsageOutcome)> {
        let secret = self
            .credential(p)
            .map_err(|e| (e, UsageOutcome::UpstreamUnavailable))?;
        let kind = providers::kind(p.kind);
        let route = kind
            .route(p, Endpoint::Models, "", false)
            .map_err(|e| (e, UsageOutcome::UpstreamUnavailable))?;
        if let Err(e) = self.proxy().upstreams.egress.check_literal(&route.url) {
            tracing::warn!(provider_id = %p.provider_id, reason = %e, "refused to connect to the provider's address");
            return Err((address_refused(), UsageOutcome::UpstreamUnavailable));
        }
        let mut out = Outgoing {
            method: axum::http::Method::GET,
            url: route.url,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            anthropic_version: None,
        };
        let sent = kind
            .authorize(&self.proxy().upstreams, p, &secret, &mut out)
            .await
            .map_err(|e| {
                (
                    e.into_proxy(&p.provider_id),
                    UsageOutcome::UpstreamUnavailable,
                )
            })?;
        let req = self
            .proxy()
            .upstreams
            .client
            .request(out.method, out.url)
            .headers(out.headers);
        let resp = match tokio::time::timeout(self.proxy().first_byte_timeout, req.send()).await {
            Err(_) => {
                return Err((
                    ProxyError::upstream_timeout(),
                    UsageOutcome::UpstreamTimeout,
                ));
            }
            Ok(Err(e)) => {
                tracing::warn!(provider_id = %p.provider_id, error = %crate::redact::http_error(&e), "the provider's model list could not be fetched");
                return Err((
                    ProxyError::upstream_unavailable(),
                    UsageOutcome::UpstreamUnavailable,
                ));
            }
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        let deadline = Instant::now() + self.proxy().max_duration;
        let body = read_upstream(resp, self.proxy().idle_timeout, deadline)
            .await
            .map_err(|o| (ProxyError::upstream_unavailable(), o))?;
        let bad = || {
            (
                ProxyError::bad_gateway("upstream_error", "the provider did not list its models"),
                UsageOutcome::UpstreamError,
            )
        };
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            tracing::warn!(provider_id = %p.provider_id, status = status.as_u16(), "the provider refused Keyward's credential");
            kind.rejected(&self.proxy().upstreams, p, &secret);
            return Err((
                providers::credential_rejected(),
                UsageOutcome::UpstreamError,
            ));
        }
        if !status.is_success() {
            tracing::info!(provider_id = %p.provider_id, status = status.as_u16(), "the provider refused to list its models");
            return Err(bad());
        }
        // The ids go to the client: a provider that echoes its credential in one does not
        // hand it over.
        let scrub_with = sent.as_ref().unwrap_or(&secret);
        let body = wire::scrub_credential(&body, scrub_with.expose()).map_or(body, Bytes::from);
        kind.listed_models(&body).ok_or_else(bad)
    }
}

/// What a request reserves of its key's token quota while in flight: what the provider
/// may generate (the body's `max_tokens` or `max_completion_tokens`, or on Anthropic the
/// default Keyward sends), plus its prompt at about four bytes a token. A chat request
/// with no bound on its completion holds the rest of the quota until its use is recorded.
fn token_bound(ep: Endpoint, p: &ProviderRecord, scanned: &Scanned, body_len: usize) -> TokenBound {
    let prompt = (body_len as u64).div_ceil(4);
    let completion = match ep {
        Endpoint::Embeddings | Endpoint::Models => Some(0),
        Endpoint::Chat | Endpoint::Messages => scanned
            .max_tokens
            .or_else(|| providers::kind(p.kind).default_max_tokens(p)),
    };
    completion.map_or(TokenBound::Unbounded, |c| {
        TokenBound::AtMost(prompt.saturating_add(c))
    })
}

fn address_refused() -> ProxyError {
    ProxyError::bad_gateway(
        "upstream_address_refused",
        "the provider's address is not one Keyward may connect to; an admin must fix its base_url or the upstream allowlist",
    )
}

/// A 2xx whose body the client's SDK could not parse: the provider's failure.
fn invalid_response() -> ProxyError {
    ProxyError::bad_gateway(
        "upstream_invalid_response",
        "the provider's answer could not be read",
    )
}

/// A request ready to leave for its provider.
struct Prepared {
    req: Outgoing,
    mode: Mode,
    dialect: Dialect,
    framing: Framing,
    /// The provider's credential, opened.
    secret: ProviderSecret,
    /// The access token sent in the credential's place, if any: the answer is scrubbed of
    /// it (else of the credential).
    sent: Option<ProviderSecret>,
}

/// Records a use that failed before the provider answered, and hands back its error.
async fn fail(meter: &mut Meter, e: ProxyError, outcome: UsageOutcome) -> ProxyError {
    match meter
        .record(outcome, e.status.as_u16(), Tokens::default(), None)
        .await
    {
        Ok(()) => e,
        Err(NotRecorded) => not_recorded(),
    }
}

/// Under `--usage-durability durable`, the answer in place of one whose `key.used` did not
/// commit (the store failed, or the service is stopping): the provider's answer, or the
/// error, is withheld.
pub fn not_recorded() -> ProxyError {
    ProxyError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        error::UPSTREAM,
        "usage_not_recorded",
        "Keyward could not record this use in its audit log, so its answer is withheld; try again shortly",
    )
    .with_header(axum::http::header::RETRY_AFTER, 1)
}

/// The client's body, at most `limit` bytes.
/// The most [`read_body`] reserves before the body's bytes arrive.
const INITIAL_BODY_CAPACITY: usize = 64 * 1024;

async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ProxyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    // A declared length is reserved only up to a bound: a client that declares 32 MiB
    // and sends nothing must not hold 32 MiB per connection.
    let mut buf = BytesMut::with_capacity(
        declared.map_or(8 * 1024, |n| (n as usize).min(INITIAL_BODY_CAPACITY)),
    );
    let mut data = body.into_data_stream();
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(|_| {
            ProxyError::bad_request("invalid_body", "the request body could not be read")
        })?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// A non-streamed answer larger than this is refused rather than held in memory.
const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;

/// A provider's whole (non-streamed) body, allowing at most `idle` between two chunks,
/// until `deadline` in all, and at most [`MAX_UPSTREAM_BODY`] bytes: an answer that never
/// ends is cut off.
async fn read_upstream(
    resp: reqwest::Response,
    idle: Duration,
    deadline: Instant,
) -> Result<Bytes, UsageOutcome> {
    let mut data = resp.bytes_stream();
    let mut buf = BytesMut::new();
    loop {
        let wait = idle.min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, data.next()).await {
            Err(_) => return Err(UsageOutcome::UpstreamTimeout),
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %crate::redact::http_error(&e), "the provider's answer broke off");
                return Err(UsageOutcome::UpstreamUnavailable);
            }
            Ok(Some(Ok(b))) => {
                if buf.len() + b.len() > MAX_UPSTREAM_BODY {
                    tracing::warn!(
                        "the provider's answer is larger than {MAX_UPSTREAM_BODY} bytes"
                    );
                    return Err(UsageOutcome::UpstreamUnavailable);
                }
                buf.extend_from_slice(&b);
            }
        }
    }
}
