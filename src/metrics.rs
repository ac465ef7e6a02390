//! Prometheus metrics, with `prometheus-client`: the families that the proxy and the
//! appender record into. `/metrics` renders them with the gauges computed from the live
//! state in [`crate::http::metrics`] (this module needs nothing above it).
//!
//! Counters and histograms that traffic moves live here and in the appender; gauges that
//! describe state (keys by status, keys expiring soon, the head, the tail lag) are computed
//! at scrape time from the live projection, so they cannot drift from it. Each scrape
//! builds a fresh registry of handles to the long-lived metrics: there is no global
//! recorder, so several apps in one process (the tests) never share counters.
//!
//! Labels never carry a secret. Per-key labels (`key_id`) are opt-in, through
//! `metrics_key_labels`, because they multiply every series by the number of keys.
//!
//! No client decides how many series there are or what a line says. prometheus-client
//! writes label values as given, so every value that is not a constant here passes
//! through [`label_value`] (quotes, backslashes and newlines escaped, other control
//! characters replaced). A model counts under its own name only when the provider or the
//! key names it explicitly; any other is `other`. The provider, model (and key) sets with
//! their own series are capped at [`MAX_LABEL_SETS`], the request series at
//! [`MAX_REQUEST_SERIES`] and the refusals' keys at [`MAX_LABEL_SETS`]: past a cap, counts go
//! to series labelled `overflow`, never dropped.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use keyward_events::{DenyReason, KeyUsed, UsageOutcome};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Whether proxy series carry the key id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyLabels {
    #[default]
    None,
    KeyId,
}

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;
/// Token counts come from providers: a huge report saturates rather than wraps.
type TokenCounter = Counter<u64, SaturatingU64>;

/// A counter's value that stops at `u64::MAX`, as the usage projection's counters do.
#[derive(Debug, Default)]
pub struct SaturatingU64(AtomicU64);

impl prometheus_client::metrics::counter::Atomic<u64> for SaturatingU64 {
    fn inc(&self) -> u64 {
        self.inc_by(1)
    }

    fn inc_by(&self, v: u64) -> u64 {
        match self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add(v))
            }) {
            Ok(prev) | Err(prev) => prev,
        }
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The label value of a model that no provider or key of the request names explicitly.
pub const OTHER_MODEL: &str = "other";
/// The label values of the series past a cap.
pub const OVERFLOW: &str = "overflow";
/// Provider, model (and key) label sets with series of their own.
pub const MAX_LABEL_SETS: usize = 1024;
/// `keyward_proxy_requests` series (label set × outcome × status class) of their own.
pub const MAX_REQUEST_SERIES: usize = 8192;

/// A value from outside the code (an id, a model name) as it may stand between the
/// quotes of a label: `\`, `"` and a newline escaped as the text format wants, any
/// other control character replaced by `_`. Borrowed when there is nothing to change.
pub fn label_value(v: &str) -> Cow<'_, str> {
    if !v.chars().any(|c| c == '\\' || c == '"' || c.is_control()) {
        return Cow::Borrowed(v);
    }
    let mut out = String::with_capacity(v.len() + 8);
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push('_'),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

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
    tokens: Family<Labels, TokenCounter>,
    refusals: Family<Labels, Counter>,
    auth_throttled: Counter,
    series: SeriesCache,
    /// Where label sets past [`MAX_LABEL_SETS`] are counted.
    overflow: OnceLock<Arc<Series>>,
    /// Request series created for label sets other than the overflow's.
    request_series: AtomicUsize,
    /// Keys whose refusals have series of their own (per-key labels only).
    refusal_keys: parking_lot::Mutex<HashSet<String>>,
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

/// The outcomes' places in [`Series::requests`]. Exhaustive, so a new outcome cannot
/// share another's place (and label).
const OUTCOMES: usize = 6;
fn outcome_slot(o: UsageOutcome) -> usize {
    match o {
        UsageOutcome::Success => 0,
        UsageOutcome::UpstreamError => 1,
        UsageOutcome::UpstreamUnavailable => 2,
        UsageOutcome::UpstreamTimeout => 3,
        UsageOutcome::ClientClosed => 4,
        UsageOutcome::InvalidRequest => 5,
    }
}
/// Status classes 0xx to 9xx: a `u16` status divided by 100 stays below 10 for any
/// status hyper accepts (100–999).
const STATUS_CLASSES: usize = 10;

/// A model name as a label: at most [`MODEL_LABEL_MAX`] bytes, cut at a char boundary.
fn model_label(model: &str) -> &str {
    if model.len() <= MODEL_LABEL_MAX {
        return model;
    }
    let mut cut = MODEL_LABEL_MAX;
    while !model.is_char_boundary(cut) {
        cut -= 1;
    }
    &model[..cut]
}

/// One provider, model (and key)'s handles into the families. A proxied request touches
/// up to five series with the same base labels; looking each up in its family hashes a
/// vector of label strings under the family's lock every time. With the handles kept
/// here, a request does one lookup; the handles share their values with the families,
/// so a scrape sees the same counts.
struct Series {
    base: Labels,
    latency: Histogram,
    upstream_latency: Histogram,
    /// Created on the first request that reports tokens of the kind, as before: a key
    /// that never reports any has no zero series.
    prompt: OnceLock<TokenCounter>,
    completion: OnceLock<TokenCounter>,
    /// By outcome and status class, each created on first use.
    requests: [OnceLock<Counter>; OUTCOMES * STATUS_CLASSES],
    /// The overflow's series, whose request series are not counted against the cap.
    overflow: bool,
}

impl Series {
    fn request(&self, metrics: &ProxyMetrics, outcome: UsageOutcome, status: u16) -> &Counter {
        let class = usize::from(status / 100).min(STATUS_CLASSES - 1);
        self.requests[outcome_slot(outcome) * STATUS_CLASSES + class].get_or_init(|| {
            if !self.overflow
                && metrics.request_series.fetch_add(1, Ordering::Relaxed) >= MAX_REQUEST_SERIES
            {
                return metrics.overflow().request(metrics, outcome, status).clone();
            }
            let mut l = self.base.clone();
            l.push(("outcome", outcome_name(outcome).to_owned()));
            l.push(("status_class", status_class(status)));
            metrics.requests.get_or_create(&l).clone()
        })
    }

    fn is(&self, provider: &str, model: &str, key: Option<&str>) -> bool {
        let label = |i: usize| self.base.get(i).map(|(_, v)| v.as_str());
        label(0) == Some(provider) && label(1) == Some(model) && label(2) == key
    }
}

/// [`Series`] by a keyed hash of their labels: every label set with series of its own,
/// at most [`MAX_LABEL_SETS`]. A hash that collides with another label set's is detected
/// on lookup and counted under the overflow.
#[derive(Default)]
struct SeriesCache {
    hasher: std::hash::RandomState,
    map: parking_lot::RwLock<HashMap<u64, Arc<Series>>>,
}

impl SeriesCache {
    fn hash(&self, provider: &str, model: &str, key: Option<&str>) -> u64 {
        self.hasher.hash_one((provider, model, key))
    }

    fn get(&self, provider: &str, model: &str, key: Option<&str>) -> Option<Arc<Series>> {
        let h = self.hash(provider, model, key);
        let map = self.map.read();
        map.get(&h).filter(|s| s.is(provider, model, key)).cloned()
    }

    /// The label set's series: found, made by `make` while there is room, or `None`
    /// (full, or its hash taken by another label set).
    fn get_or_make(
        &self,
        provider: &str,
        model: &str,
        key: Option<&str>,
        make: impl FnOnce() -> Arc<Series>,
    ) -> Option<Arc<Series>> {
        let h = self.hash(provider, model, key);
        let mut map = self.map.write();
        if let Some(s) = map.get(&h) {
            return s.is(provider, model, key).then(|| s.clone());
        }
        if map.len() >= MAX_LABEL_SETS {
            return None;
        }
        Some(map.entry(h).or_insert_with(make).clone())
    }
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
            series: SeriesCache::default(),
            overflow: OnceLock::new(),
            request_series: AtomicUsize::new(0),
            refusal_keys: parking_lot::Mutex::new(HashSet::new()),
        }
    }

    /// The key's id as a label value, when series carry it.
    fn key_label<'a>(&self, key_id: &'a str) -> Option<&'a str> {
        (self.key_labels == KeyLabels::KeyId).then_some(key_id)
    }

    fn with_key(mut labels: Labels, key: Option<&str>) -> Labels {
        if let Some(k) = key {
            labels.push(("key_id", k.to_owned()));
        }
        labels
    }

    /// One proxied request, as recorded in its `key.used`. `model_named`: a provider or
    /// the key names the model explicitly, so it is counted under its own name.
    pub fn used(&self, u: &KeyUsed, model_named: bool) {
        let model = match u.model.as_deref() {
            Some(m) if model_named => label_value(model_label(m)),
            Some(_) => Cow::Borrowed(OTHER_MODEL),
            None => Cow::Borrowed(""),
        };
        let provider = label_value(&u.provider_id);
        let key = self.key_label(&u.key_id).map(label_value);
        let key = key.as_deref();
        let series = self
            .series
            .get(&provider, &model, key)
            .unwrap_or_else(|| self.series_for(&provider, &model, key));
        series.request(self, u.outcome, u.status).inc();
        series.latency.observe(u.latency_us as f64 / 1e6);
        if let Some(up) = u.upstream_latency_us {
            series.upstream_latency.observe(up as f64 / 1e6);
        }
        for (slot, kind, n) in [
            (&series.prompt, "prompt", u.prompt_tokens),
            (&series.completion, "completion", u.completion_tokens),
        ] {
            if n > 0 {
                slot.get_or_init(|| {
                    let mut l = series.base.clone();
                    l.push(("kind", kind.to_owned()));
                    self.tokens.get_or_create(&l).clone()
                })
                .inc_by(n);
            }
        }
    }

    /// The handles of one provider, model (and key) from the families, kept for the next
    /// request with the same labels; past [`MAX_LABEL_SETS`], the overflow's.
    fn series_for(&self, provider: &str, model: &str, key: Option<&str>) -> Arc<Series> {
        self.series
            .get_or_make(provider, model, key, || {
                self.make_series(provider, model, key, false)
            })
            .unwrap_or_else(|| self.overflow().clone())
    }

    fn make_series(
        &self,
        provider: &str,
        model: &str,
        key: Option<&str>,
        overflow: bool,
    ) -> Arc<Series> {
        let base = Self::with_key(
            vec![
                ("provider", provider.to_owned()),
                ("model", model.to_owned()),
            ],
            key,
        );
        Arc::new(Series {
            latency: self.latency.get_or_create(&base).clone(),
            upstream_latency: self.upstream_latency.get_or_create(&base).clone(),
            prompt: OnceLock::new(),
            completion: OnceLock::new(),
            requests: std::array::from_fn(|_| OnceLock::new()),
            base,
            overflow,
        })
    }

    fn overflow(&self) -> &Arc<Series> {
        self.overflow.get_or_init(|| {
            let key = self.key_label(OVERFLOW);
            self.make_series(OVERFLOW, OVERFLOW, key, true)
        })
    }

    /// A known key refused: rate limit, quota, scope, model, IP, expiry and so on. Every
    /// refusal counts, including those the `key.denied` throttle folds together.
    pub fn refused(&self, key_id: &str, reason: DenyReason) {
        let key = self.key_label(key_id).map(|k| {
            let mut seen = self.refusal_keys.lock();
            if seen.contains(k) || seen.len() < MAX_LABEL_SETS && seen.insert(k.to_owned()) {
                label_value(k)
            } else {
                Cow::Borrowed(OVERFLOW)
            }
        });
        let l = Self::with_key(vec![("reason", deny_reason_name(reason))], key.as_deref());
        self.refusals.get_or_create(&l).inc();
    }

    /// A request answered 429 by the per-IP throttle on failed authentications.
    pub fn auth_throttled(&self) {
        self.auth_throttled.inc();
    }

    pub fn register(&self, r: &mut Registry) {
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

    pub fn register(&self, r: &mut Registry) {
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

/// The process's log writer: how many lines it dropped because its buffer was full. One
/// per process (the log is), set by `main` once it has built the writer; 0 until then.
static LOG_DROPPED: std::sync::OnceLock<Box<dyn Fn() -> u64 + Send + Sync>> =
    std::sync::OnceLock::new();

/// Tells `/metrics` how to read the log writer's dropped lines (the first call wins).
pub fn count_log_drops(read: impl Fn() -> u64 + Send + Sync + 'static) {
    let _ = LOG_DROPPED.set(Box::new(read));
}

/// Log lines dropped so far because the writer's buffer was full.
pub fn log_lines_dropped() -> u64 {
    LOG_DROPPED.get().map_or(0, |read| read())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    fn used(model: &str, outcome: UsageOutcome, status: u16, prompt: u64) -> KeyUsed {
        KeyUsed {
            key_id: "key_1".into(),
            provider_id: "prv_1".into(),
            model: Some(model.into()),
            endpoint: "chat".into(),
            outcome,
            status,
            latency_us: 1_500,
            upstream_latency_us: Some(1_000),
            prompt_tokens: prompt,
            completion_tokens: 0,
            stream: false,
            client_ip: None,
        }
    }

    fn scrape(m: &ProxyMetrics) -> String {
        let mut r = Registry::default();
        m.register(&mut r);
        let mut out = String::new();
        encode(&mut out, &r).unwrap();
        out
    }

    /// The value of the one sample whose line starts with `series` (name and labels).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn counts_kept_through_the_cache_are_the_families_counts() {
        let m = ProxyMetrics::new(KeyLabels::KeyId);
        for _ in 0..3 {
            m.used(&used("gpt-4o", UsageOutcome::Success, 200, 7), true);
        }
        m.used(&used("gpt-4o", UsageOutcome::UpstreamError, 503, 0), true);
        m.used(&used("o3", UsageOutcome::Success, 200, 0), true);
        let text = scrape(&m);
        let base = r#"provider="prv_1",model="gpt-4o",key_id="key_1""#;
        assert_eq!(
            sample(
                &text,
                &format!(
                    "keyward_proxy_requests_total{{{base},outcome=\"success\",status_class=\"2xx\"}}"
                )
            ),
            Some(3.0)
        );
        assert_eq!(
            sample(
                &text,
                &format!(
                    "keyward_proxy_requests_total{{{base},outcome=\"upstream_error\",status_class=\"5xx\"}}"
                )
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                &format!("keyward_proxy_request_duration_seconds_count{{{base}}}")
            ),
            Some(4.0)
        );
        assert_eq!(
            sample(
                &text,
                &format!("keyward_proxy_tokens_total{{{base},kind=\"prompt\"}}")
            ),
            Some(21.0)
        );
        // No token was ever reported for o3, or as completion: no zero series for them.
        assert!(
            !text.contains(r#"model="o3",key_id="key_1",kind="#),
            "{text}"
        );
        assert!(!text.contains(r#"kind="completion""#), "{text}");
        assert_eq!(
            sample(
                &text,
                r#"keyward_proxy_requests_total{provider="prv_1",model="o3",key_id="key_1",outcome="success",status_class="2xx"}"#
            ),
            Some(1.0)
        );
    }

    fn requests_series(model: &str) -> String {
        format!(
            "keyward_proxy_requests_total{{provider=\"prv_1\",model=\"{model}\",outcome=\"success\",status_class=\"2xx\"}}"
        )
    }

    #[test]
    fn label_sets_past_the_cap_are_counted_under_overflow() {
        let m = ProxyMetrics::new(KeyLabels::None);
        let n = MAX_LABEL_SETS + 10;
        for i in 0..n {
            m.used(&used(&format!("m{i}"), UsageOutcome::Success, 200, 3), true);
        }
        m.used(
            &used(&format!("m{}", n - 1), UsageOutcome::Success, 200, 3),
            true,
        );
        assert_eq!(m.series.map.read().len(), MAX_LABEL_SETS);
        let text = scrape(&m);
        assert_eq!(sample(&text, &requests_series("m0")), Some(1.0));
        assert_eq!(
            sample(&text, &requests_series(&format!("m{}", n - 1))),
            None
        );
        let overflow = r#"keyward_proxy_requests_total{provider="overflow",model="overflow",outcome="success",status_class="2xx"}"#;
        assert_eq!(sample(&text, overflow), Some(11.0));
        assert_eq!(
            sample(
                &text,
                r#"keyward_proxy_tokens_total{provider="overflow",model="overflow",kind="prompt"}"#
            ),
            Some(33.0)
        );
        let lines = text
            .lines()
            .filter(|l| l.starts_with("keyward_proxy_requests_total"))
            .count();
        assert_eq!(lines, MAX_LABEL_SETS + 1);
    }

    #[test]
    fn request_series_past_their_cap_are_counted_under_overflow() {
        let m = ProxyMetrics::new(KeyLabels::None);
        // Each label set with every status class: ten request series apiece.
        let sets = MAX_REQUEST_SERIES / STATUS_CLASSES + 3;
        assert!(sets <= MAX_LABEL_SETS);
        for i in 0..sets {
            for class in 0..STATUS_CLASSES as u16 {
                m.used(
                    &used(&format!("m{i}"), UsageOutcome::Success, class * 100 + 1, 0),
                    true,
                );
            }
        }
        let text = scrape(&m);
        let own = text
            .lines()
            .filter(|l| l.starts_with("keyward_proxy_requests_total{provider=\"prv_1\""))
            .count();
        assert_eq!(own, MAX_REQUEST_SERIES);
        let overflow: f64 = text
            .lines()
            .filter(|l| l.starts_with("keyward_proxy_requests_total{provider=\"overflow\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum();
        assert_eq!(
            overflow,
            (sets * STATUS_CLASSES - MAX_REQUEST_SERIES) as f64
        );
    }

    #[test]
    fn label_values_cannot_break_the_exposition() {
        let m = ProxyMetrics::new(KeyLabels::KeyId);
        let evil = "x\"} 1\nkeyward_ready 0\n# EOF\n\\\r\u{1b}[31m";
        let mut u = used(evil, UsageOutcome::Success, 200, 1);
        u.provider_id = evil.into();
        u.key_id = evil.into();
        m.used(&u, true);
        m.refused(evil, DenyReason::Quota);
        let text = scrape(&m);
        let escaped = r#"x\"} 1\nkeyward_ready 0\n# EOF\n\\__[31m"#;
        assert_eq!(label_value(evil), escaped);
        assert!(
            !text.lines().any(|l| l.starts_with("keyward_ready")),
            "{text}"
        );
        assert_eq!(text.lines().filter(|l| *l == "# EOF").count(), 1, "{text}");
        assert!(text.ends_with("# EOF\n"));
        assert!(!text.contains('\u{1b}') && !text.contains('\r'));
        assert_eq!(
            sample(
                &text,
                &format!("keyward_proxy_refusals_total{{reason=\"quota\",key_id=\"{escaped}\"}}")
            ),
            Some(1.0)
        );
    }

    #[test]
    fn an_unnamed_model_is_other_and_token_counts_saturate() {
        let m = ProxyMetrics::new(KeyLabels::None);
        for i in 0..500 {
            m.used(
                &used(&format!("made-up-{i}"), UsageOutcome::Success, 200, 0),
                false,
            );
        }
        m.used(
            &used("named", UsageOutcome::Success, 200, u64::MAX - 1),
            true,
        );
        m.used(
            &used("named", UsageOutcome::Success, 200, u64::MAX - 1),
            true,
        );
        assert_eq!(m.series.map.read().len(), 2);
        let text = scrape(&m);
        assert_eq!(sample(&text, &requests_series("other")), Some(500.0));
        assert_eq!(sample(&text, &requests_series("named")), Some(2.0));
        let tokens = text
            .lines()
            .find(|l| l.starts_with(r#"keyward_proxy_tokens_total{provider="prv_1",model="named""#))
            .unwrap();
        assert!(tokens.ends_with(&format!(" {}", u64::MAX)), "{tokens}");
    }

    #[test]
    fn a_long_model_is_one_series_cut_at_a_char_boundary() {
        let m = ProxyMetrics::new(KeyLabels::None);
        let long = format!("{}é{}", "a".repeat(MODEL_LABEL_MAX - 1), "b".repeat(10));
        m.used(&used(&long, UsageOutcome::Success, 200, 0), true);
        m.used(
            &used(
                &format!("{long}-other-suffix"),
                UsageOutcome::Success,
                200,
                0,
            ),
            true,
        );
        let cut = "a".repeat(MODEL_LABEL_MAX - 1);
        assert_eq!(model_label(&long), cut);
        let text = scrape(&m);
        assert_eq!(
            sample(
                &text,
                &format!(
                    "keyward_proxy_requests_total{{provider=\"prv_1\",model=\"{cut}\",outcome=\"success\",status_class=\"2xx\"}}"
                )
            ),
            Some(2.0)
        );
    }
}
