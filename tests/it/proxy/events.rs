//! One `key.used` per request, exactly, and the live counters that follow them.

use keyward_events::{Event, UsageOutcome};
use serde_json::json;

use super::*;

#[tokio::test]
async fn after_n_requests_and_a_shutdown_there_are_exactly_n_uses_and_the_counters_match() {
    let gw = Gw::start().await;
    let p = gw.openai(&[]).await;
    let (key_id, secret) = gw.key(KeySpec::on(&p)).await;
    let before = chrono::Utc::now();
    const N: usize = 60;
    let mut calls = Vec::new();
    for i in 0..N {
        let state = gw.state.clone();
        let secret = secret.clone();
        calls.push(tokio::spawn(async move {
            let mut body = chat(if i % 5 == 0 {
                "error-500"
            } else {
                "gpt-4o-mini"
            });
            if i % 3 == 0 {
                body["stream"] = json!(true);
            }
            let mut req = post("/v1/chat/completions", &secret, body);
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from(
                    CLIENT,
                )));
            let res = tower::ServiceExt::oneshot(keyward::app(state), req)
                .await
                .unwrap();
            Reply::read(res).await.status
        }));
    }
    for c in calls {
        let status = c.await.unwrap();
        assert!(status == 200 || status == 500, "{status}");
    }
    let state = gw.state.clone();
    gw.t.running.shutdown().await;

    let used: Vec<_> = stored(&state, "key.used")
        .await
        .into_iter()
        .map(|e| match e {
            Event::KeyUsed(u) => u,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(used.len(), N);
    assert!(used.iter().all(|u| u.key_id == key_id));
    let errors = used.iter().filter(|u| u.outcome.is_error()).count();
    assert_eq!(errors, N / 5);
    assert!(
        used.iter()
            .filter(|u| u.outcome == UsageOutcome::Success)
            .all(|u| u.prompt_tokens > 0)
    );

    let live = state.0.live.read();
    let totals = live.usage.totals(&key_id).unwrap();
    assert_eq!(totals.requests, N as u64);
    assert_eq!(totals.errors, errors as u64);
    assert_eq!(
        totals.prompt_tokens,
        used.iter().map(|u| u.prompt_tokens).sum::<u64>()
    );
    assert_eq!(
        totals.completion_tokens,
        used.iter().map(|u| u.completion_tokens).sum::<u64>()
    );
    assert!(totals.last_used_at.unwrap() >= before);
    let today = live.usage.day(&key_id, chrono::Utc::now().date_naive());
    assert_eq!(today.requests, N as u64);
}
