//! `/metrics` moves with the traffic, and never shows a secret.

use axum::body::Body;
use axum::http::Request;
use keyward::metrics::KeyLabels;
use keyward_events::RateLimit;

use super::*;

async fn scrape(gw: &Gw) -> String {
    let req = Request::get("/metrics").body(Body::empty()).unwrap();
    let r = Reply::read(gw.call(req).await).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text"),
    );
    let text = r.text();
    assert!(text.ends_with("# EOF\n"), "{text}");
    text
}

/// The value of the one sample of `name` whose labels include every `labels` pair.
#[track_caller]
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?} in\n{text}");
    found[0]
}

#[tokio::test]
async fn metrics_move_with_the_traffic_and_show_no_secret() {
    let gw = Gw::start().await;
    let p = gw.openai(&["gpt-4o-mini"]).await;
    let (key_id, secret) = gw.key(KeySpec::on(&p)).await;
    let mut limited = KeySpec::on(&p);
    limited.rate_limit = Some(RateLimit {
        requests_per_minute: 1,
        burst: 1,
    });
    let (_, limited_secret) = gw.key(limited).await;

    let before = scrape(&gw).await;
    assert!(
        !before.contains("keyward_proxy_requests_total{"),
        "{before}"
    );

    for _ in 0..3 {
        let r = gw
            .post("/v1/chat/completions", &secret, chat("gpt-4o-mini"))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    gw.post("/v1/chat/completions", &limited_secret, chat("gpt-4o-mini"))
        .await;
    gw.post("/v1/chat/completions", &limited_secret, chat("gpt-4o-mini"))
        .await
        .assert_error(429, "rate_limit_exceeded");
    // Unknown keys from one address until the per-IP throttle answers instead.
    let stranger = keyward::crypto::Secret::generate();
    // On a loaded machine 30 attempts may take longer than the throttle's window, so keep
    // going until it answers (bounded), and count exactly what it refused.
    let mut throttled = 0;
    for attempt in 0..2000 {
        let r = gw
            .post("/v1/chat/completions", stranger.expose(), chat("m"))
            .await;
        if r.status == 429 {
            throttled += 1;
        }
        if attempt >= 30 && throttled > 0 {
            break;
        }
    }
    assert!(throttled > 0);
    gw.events("key.used", 4).await;

    let m = scrape(&gw).await;
    let ok = [
        ("provider", p.as_str()),
        ("model", "gpt-4o-mini"),
        ("outcome", "success"),
        ("status_class", "2xx"),
    ];
    assert_eq!(sample(&m, "keyward_proxy_requests_total", &ok), 4.0);
    let by = [("provider", p.as_str()), ("model", "gpt-4o-mini")];
    assert_eq!(
        sample(&m, "keyward_proxy_request_duration_seconds_count", &by),
        4.0
    );
    assert_eq!(
        sample(&m, "keyward_proxy_upstream_duration_seconds_count", &by),
        4.0
    );
    let prompt = [by[0], by[1], ("kind", "prompt")];
    let completion = [by[0], by[1], ("kind", "completion")];
    assert_eq!(
        sample(&m, "keyward_proxy_tokens_total", &prompt),
        4.0 * 19.0
    );
    assert_eq!(
        sample(&m, "keyward_proxy_tokens_total", &completion),
        4.0 * 10.0
    );
    assert_eq!(
        sample(
            &m,
            "keyward_proxy_refusals_total",
            &[("reason", "rate_limit")]
        ),
        1.0
    );
    assert_eq!(
        sample(&m, "keyward_proxy_auth_throttled_total", &[]),
        f64::from(throttled)
    );

    // The admin key (30 days) and the two test keys (1 day).
    assert_eq!(sample(&m, "keyward_keys", &[("status", "active")]), 3.0);
    assert_eq!(sample(&m, "keyward_keys", &[("status", "expired")]), 0.0);
    assert_eq!(sample(&m, "keyward_keys_expiring_7d", &[]), 2.0);

    let head = gw.state.0.live.head().seq as f64;
    assert_eq!(sample(&m, "keyward_projection_head_seq", &[]), head);
    // Every event of this log went through this node's appender.
    assert_eq!(sample(&m, "keyward_appender_events_total", &[]), head);
    assert!(sample(&m, "keyward_appender_batch_size_count", &[]) >= 1.0);
    assert!(sample(&m, "keyward_appender_commit_duration_seconds_count", &[]) >= 1.0);
    assert_eq!(sample(&m, "keyward_appender_queue_depth", &[]), 0.0);
    assert_eq!(sample(&m, "keyward_ready", &[]), 1.0);
    // SQLite has no tail.
    assert!(!m.contains("keyward_tail_lag"));

    let admin = gw.t.admin_secret();
    for s in [secret.as_str(), &limited_secret, stranger.expose(), &admin] {
        assert!(!m.contains(s), "a secret in /metrics");
    }
    assert!(!m.contains(OPENAI_CREDENTIAL));
    assert!(!m.contains("kw_"));
    // Per-key labels are off by default.
    assert!(!m.contains(&key_id), "{m}");
    assert!(!m.contains("key_id="), "{m}");
}

#[tokio::test]
async fn per_key_labels_are_opt_in() {
    let gw = Gw::start_with(|c| c.metrics_key_labels = KeyLabels::KeyId).await;
    let p = gw.openai(&[]).await;
    let (key_id, secret) = gw.key(KeySpec::on(&p)).await;
    let r = gw.post("/v1/chat/completions", &secret, chat("m1")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    gw.events("key.used", 1).await;
    let m = scrape(&gw).await;
    assert_eq!(
        sample(
            &m,
            "keyward_proxy_requests_total",
            &[("key_id", key_id.as_str()), ("outcome", "success")]
        ),
        1.0
    );
    assert!(!m.contains(&secret));
}
