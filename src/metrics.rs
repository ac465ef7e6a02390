//! Prometheus metrics (`/metrics`), with `prometheus-client`.
//!
//! Counters and histograms that traffic moves live here and in the appender; gauges that
//! describe state (keys by status, keys expiring soon, the head, the tail lag) are computed
//! at scrape time from the live projection, so they cannot drift from it. Each scrape
//! builds a fresh registry of handles to the long-lived metrics: there is no global
//! recorder, so several apps in one process (the tests) never share counters.
//!
//! Labels never carry a secret. Per-key labels (`key_id`) are opt-in, through
//! `metrics_key_labels`, because they multiply every series by the number of keys.

use std::sync::atomic::{AtomicI64, AtomicU64};

use chrono::Utc;
use keyward_events::{DenyReason, KeyUsed, UsageOutcome};
use keyward_projections::KeyStatus;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::App;

/// Whether proxy series carry the key id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyLabels {
    #[default]
    None,
    KeyId,
}

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// A model name comes from the request body; a client must not be able to mint series of
/// unbounded length.
const MODEL_LABEL_MAX: usize = 64;

fn latency_histogram() -> Histogram {
    // 1 ms to about 131 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

/// The proxy's traffic metrics.
pub struct ProxyMetrics {
    key_labels: KeyLabels,
    requests: Family<Labels, Counter>,
    latency: HistogramFamily,
    upstream_latency: HistogramFamily,
    tokens: Family<Labels, Counter>,
    refusals: Family<Labels, Counter>,
    auth_throttled: Counter,
}

fn outcome_name(o: UsageOutcome) -> &'static str {
    match o {
        UsageOutcome::Success => "success",
        UsageOutcome::UpstreamError => "upstream_error",
        UsageOutcome::UpstreamUnavailable => "upstream_unavailable",
        UsageOutcome::UpstreamTimeout => "upstream_timeout",
        UsageOutcome::ClientClosed => "client_closed",
        UsageOutcome::InvalidRequest => "invalid_request",
    }
}

fn status_class(status: u16) -> String {
    format!("{}xx", status / 100)
}

fn deny_reason_name(r: DenyReason) -> String {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "other".to_owned())
}

impl ProxyMetrics {
    pub fn new(key_labels: KeyLabels) -> ProxyMetrics {
        ProxyMetrics {
            key_labels,
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            upstream_latency: Family::new_with_constructor(latency_histogram),
            tokens: Family::default(),
            refusals: Family::default(),
            auth_throttled: Counter::default(),
        }
    }

    fn with_key(&self, mut labels: Labels, key_id: &str) -> Labels {
        if self.key_labels == KeyLabels::KeyId {
            labels.push(("key_id", key_id.to_owned()));
        }
        labels
    }

    /// One proxied request, as recorded in its `key.used`.
    pub fn used(&self, u: &KeyUsed) {
        let mut model = u.model.clone().unwrap_or_default();
        if model.len() > MODEL_LABEL_MAX {
            let mut cut = MODEL_LABEL_MAX;
            while !model.is_char_boundary(cut) {
                cut -= 1;
            }
            model.truncate(cut);
        }
        let base = self.with_key(
            vec![("provider", u.provider_id.clone()), ("model", model)],
            &u.key_id,
        );
        let mut req = base.clone();
        req.push(("outcome", outcome_name(u.outcome).to_owned()));
        req.push(("status_class", status_class(u.status)));
        self.requests.get_or_create(&req).inc();
        self.latency
            .get_or_create(&base)
            .observe(u.latency_us as f64 / 1e6);
        if let Some(up) = u.upstream_latency_us {
            self.upstream_latency
                .get_or_create(&base)
                .observe(up as f64 / 1e6);
        }
        for (kind, n) in [
            ("prompt", u.prompt_tokens),
            ("completion", u.completion_tokens),
        ] {
            if n > 0 {
                let mut l = base.clone();
                l.push(("kind", kind.to_owned()));
                self.tokens.get_or_create(&l).inc_by(n);
            }
        }
    }

    /// A known key refused: rate limit, quota, scope, model, IP, expiry and so on. Every
    /// refusal counts, including those the `key.denied` throttle folds together.
    pub fn refused(&self, key_id: &str, reason: DenyReason) {
        let l = self.with_key(vec![("reason", deny_reason_name(reason))], key_id);
        self.refusals.get_or_create(&l).inc();
    }

    /// A request answered 429 by the per-IP throttle on failed authentications.
    pub fn auth_throttled(&self) {
        self.auth_throttled.inc();
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "keyward_proxy_requests",
            "Proxied requests, by outcome, HTTP status class, provider and model",
            self.requests.clone(),
        );
        r.register_with_unit(
            "keyward_proxy_request_duration",
            "Total latency of proxied requests, from arrival to the last byte",
            Unit::Seconds,
            self.latency.clone(),
        );
        r.register_with_unit(
            "keyward_proxy_upstream_duration",
            "Time spent waiting on the provider",
            Unit::Seconds,
            self.upstream_latency.clone(),
        );
        r.register(
            "keyward_proxy_tokens",
            "Tokens reported by providers, by kind (prompt, completion)",
            self.tokens.clone(),
        );
        r.register(
            "keyward_proxy_refusals",
            "Requests of a known key refused, by reason (rate_limit, quota, scope, ...)",
            self.refusals.clone(),
        );
        r.register(
            "keyward_proxy_auth_throttled",
            "Requests refused by the per-IP throttle on failed authentications",
            self.auth_throttled.clone(),
        );
    }
}

fn status_name(s: KeyStatus) -> &'static str {
    match s {
        KeyStatus::Active => "active",
        KeyStatus::Grace => "grace",
        KeyStatus::Expired => "expired",
        KeyStatus::Deleted => "deleted",
    }
}

/// The days ahead that `keyward_keys_expiring` looks.
pub const EXPIRING_WITHIN_DAYS: i64 = 7;

/// The whole exposition, in the OpenMetrics text format.
pub fn render(app: &App) -> Result<String, std::fmt::Error> {
    let mut r = Registry::default();
    app.proxy.metrics().register(&mut r);
    let appender = &app.commands.appender;
    appender.stats().set_queue_depth(appender.queue_depth());
    appender.stats().register(&mut r);

    let by_status: Family<Vec<(&'static str, &'static str)>, Gauge> = Family::default();
    let expiring: Gauge = Gauge::default();
    let head = {
        let state = app.live.read();
        let now = Utc::now();
        let soon = now + chrono::Duration::days(EXPIRING_WITHIN_DAYS);
        for s in [
            KeyStatus::Active,
            KeyStatus::Grace,
            KeyStatus::Expired,
            KeyStatus::Deleted,
        ] {
            by_status
                .get_or_create(&vec![("status", status_name(s))])
                .set(0);
        }
        let mut n_expiring = 0;
        for k in state.keys.iter() {
            let status = k.status(now);
            by_status
                .get_or_create(&vec![("status", status_name(status))])
                .inc();
            if matches!(status, KeyStatus::Active | KeyStatus::Grace)
                && crate::notify::ends_at(k) <= soon
            {
                n_expiring += 1;
            }
        }
        expiring.set(n_expiring);
        state.head.seq
    };
    r.register(
        "keyward_keys",
        "Keys in the live projection, by status",
        by_status,
    );
    r.register(
        "keyward_keys_expiring_7d",
        "Active or grace keys that stop working (expiry, or end of rotation grace) within 7 days",
        expiring,
    );
    let head_seq: Gauge<i64, AtomicI64> = Gauge::default();
    head_seq.set(i64::try_from(head).unwrap_or(i64::MAX));
    r.register(
        "keyward_projection_head_seq",
        "The seq of the last event folded into the live projection",
        head_seq,
    );
    if crate::store::is_postgres(&app.config.database_url) {
        let tail = app.live.tail_stats();
        let lag: Gauge<f64, AtomicU64> = Gauge::default();
        lag.set(tail.lag_us() as f64 / 1e6);
        r.register_with_unit(
            "keyward_tail_lag",
            "How stale this node was about the newest event another node wrote, when it folded it",
            Unit::Seconds,
            lag,
        );
        let events: Counter = Counter::default();
        events.inc_by(tail.events());
        r.register(
            "keyward_tail_events",
            "Events folded from the shared store rather than from this node's commits",
            events,
        );
        let reconnects: Counter = Counter::default();
        reconnects.inc_by(tail.reconnects());
        r.register(
            "keyward_tail_reconnects",
            "Times the tail set up its notification connection again",
            reconnects,
        );
        let listening: Gauge = Gauge::default();
        listening.set(i64::from(tail.listening()));
        r.register(
            "keyward_tail_listening",
            "1 while the tail is subscribed to notifications, 0 while it polls",
            listening,
        );
    }
    let ready: Gauge = Gauge::default();
    ready.set(i64::from(app.is_ready()));
    r.register(
        "keyward_ready",
        "1 when ready for traffic, 0 while starting or draining",
        ready,
    );

    let mut out = String::new();
    encode(&mut out, &r)?;
    Ok(out)
}

/// The appender's own metrics, kept by its task.
#[derive(Clone)]
pub struct AppenderStats {
    batch_size: Histogram,
    commit_seconds: Histogram,
    committed: Counter,
    queue_depth: Gauge,
}

impl Default for AppenderStats {
    fn default() -> Self {
        AppenderStats {
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 17)),
            // 0.1 ms to about 3 s.
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            committed: Counter::default(),
            queue_depth: Gauge::default(),
        }
    }
}

impl AppenderStats {
    pub fn batch(&self, events: usize, commit: std::time::Duration, committed: usize) {
        self.batch_size.observe(events as f64);
        self.commit_seconds.observe(commit.as_secs_f64());
        self.committed.inc_by(committed as u64);
    }

    pub fn set_queue_depth(&self, depth: usize) {
        self.queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "keyward_appender_queue_depth",
            "Items waiting for the appender, counting callers waiting for room",
            self.queue_depth.clone(),
        );
        r.register(
            "keyward_appender_batch_size",
            "Events per committed batch",
            self.batch_size.clone(),
        );
        r.register_with_unit(
            "keyward_appender_commit_duration",
            "Time to append one batch to the store",
            Unit::Seconds,
            self.commit_seconds.clone(),
        );
        r.register(
            "keyward_appender_events",
            "Events this node committed; rate() of it is events per second",
            self.committed.clone(),
        );
    }
}
