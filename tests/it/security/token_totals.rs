//! A provider reporting absurd token counts: every total Keyward shows saturates at
//! `u64::MAX`, as the usage projection does, and nothing answers 500 or wraps to a small
//! number.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::Utc;
use serde_json::{Value, json};

use crate::api::Api;
use crate::proxy::mock::{HUGE_COMPLETION, HUGE_PROMPT};
use crate::proxy::{Gw, KeySpec, Reply, chat};

#[tokio::test]
async fn token_totals_saturate_in_logs_key_metrics_usage_and_metrics() {
    saturated_totals(Gw::start().await).await;
}

/// The same on PostgreSQL, which stores the counts in `jsonb`.
#[tokio::test]
async fn token_totals_saturate_on_postgres() {
    let Some(db) = crate::pg::TestDb::create().await else {
        return;
    };
    let url = db.url.clone();
    let gw = Gw::start_with(|c| {
        c.database_url = url;
        c.master_keys = Some(crate::nodes::MASTER_KEYS.to_owned());
    })
    .await;
    saturated_totals(gw).await;
}

async fn saturated_totals(gw: Gw) {
    let p = gw.openai(&["huge-usage"]).await;
    let (key_id, secret) = gw.key(KeySpec::on(&p)).await;
    for _ in 0..2 {
        let r = gw
            .post("/v1/chat/completions", &secret, chat("huge-usage"))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    gw.events("key.used", 2).await;
    let api = Api::new(&gw.t);
    let admin = gw.t.admin_secret();

    // One row's total is the sum of its two counts, saturated.
    let (st, logs) = api.get("/api/v1/logs", &admin).await;
    assert_eq!(st, StatusCode::OK, "{logs}");
    let rows = logs["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{logs}");
    for row in rows {
        assert_eq!(row["prompt_tokens"], json!(HUGE_PROMPT));
        assert_eq!(row["completion_tokens"], json!(HUGE_COMPLETION));
        assert_eq!(row["tokens"], json!(u64::MAX));
    }

    // The buckets add the two rows: the prompts saturate, the completions just fit.
    let (st, m) = api
        .get(&format!("/api/v1/keys/{key_id}/metrics"), &admin)
        .await;
    assert_eq!(st, StatusCode::OK, "{m}");
    let today = Utc::now().date_naive().to_string();
    let bucket = m["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["start"].as_str().is_some_and(|s| s.starts_with(&today)))
        .unwrap_or_else(|| panic!("no bucket for today in {m}"));
    assert_eq!(bucket["requests"], 2);
    assert_eq!(bucket["prompt_tokens"], json!(u64::MAX));
    assert_eq!(bucket["completion_tokens"], json!(2 * HUGE_COMPLETION));
    assert_eq!(bucket["tokens"], json!(u64::MAX));

    let (st, k) = api.get(&format!("/api/v1/keys/{key_id}"), &admin).await;
    assert_eq!(st, StatusCode::OK, "{k}");
    let usage: &Value = &k["usage"];
    assert_eq!(usage["prompt_tokens"], json!(u64::MAX), "{k}");
    assert_eq!(
        usage["completion_tokens"],
        json!(2 * HUGE_COMPLETION),
        "{k}"
    );

    let req = Request::get("/metrics").body(Body::empty()).unwrap();
    let r = Reply::read(gw.call(req).await).await;
    assert_eq!(r.status, 200);
    let text = r.text();
    let prompt = text
        .lines()
        .find(|l| l.starts_with("keyward_proxy_tokens_total{") && l.contains("kind=\"prompt\""))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(prompt.ends_with(&format!(" {}", u64::MAX)), "{prompt}");
}
