//! Streams: chunk by chunk, the idle timeout, a provider that breaks off, and a client
//! that leaves early.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use keyward_events::{ProviderKind, UsageOutcome};
use serde_json::json;

use super::*;

fn streaming(model: &str) -> Value {
    let mut b = chat(model);
    b["stream"] = json!(true);
    b
}

#[tokio::test]
async fn chunks_arrive_as_the_provider_sends_them_and_a_client_that_leaves_is_recorded() {
    let gw = Gw::start().await;
    let p = gw.openai(&[]).await;
    let (key_id, secret) = gw.key(KeySpec::on(&p)).await;
    let started = Instant::now();
    let res = gw
        .call(post("/v1/chat/completions", &secret, streaming("drip")))
        .await;
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let mut received = Vec::new();
    // The provider takes 5 s for its 100 chunks; the first few arrive long before that.
    while received.len() < 3 {
        let frame = body.frame().await.unwrap().unwrap();
        received.push(frame.into_data().unwrap());
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(String::from_utf8_lossy(&received[0]).starts_with("data: "));
    drop(body);

    let used = gw.last_used(1).await;
    assert_eq!(used.key_id, key_id);
    assert_eq!(used.outcome, UsageOutcome::ClientClosed);
    assert_eq!(used.status, 499);
    assert!(used.stream);
    // No usage report came: the chunks seen so far are counted.
    assert!(
        (3..100).contains(&used.completion_tokens),
        "{}",
        used.completion_tokens
    );
    let totals = {
        tokio::time::sleep(Duration::from_millis(50)).await;
        gw.state
            .0
            .live
            .read()
            .usage
            .totals(&key_id)
            .cloned()
            .unwrap()
    };
    assert_eq!(totals.requests, 1);
    assert_eq!(totals.errors, 1);
}

#[tokio::test]
async fn a_provider_that_goes_quiet_is_cut_off_by_the_idle_timeout() {
    let gw = Gw::start_with(|c| c.upstream_idle_timeout = Duration::from_millis(500)).await;
    let p = gw.openai(&[]).await;
    let (_, secret) = gw.key(KeySpec::on(&p)).await;
    let started = Instant::now();
    let r = gw
        .post("/v1/chat/completions", &secret, streaming("stall"))
        .await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(r.status, 200);
    let data = r.sse_data();
    assert!(data[0].contains("Hel"), "{data:?}");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_timeout");
    let used = gw.last_used(1).await;
    assert_eq!(used.outcome, UsageOutcome::UpstreamTimeout);
    assert_eq!(used.completion_tokens, 1);
}

#[tokio::test]
async fn a_stream_that_breaks_off_ends_with_an_error_event() {
    let gw = Gw::start().await;
    let (addr, _task) = mock::midstream_reset_server().await;
    let p = gw
        .provider(
            ProviderKind::Openai,
            &format!("http://{addr}/v1"),
            json!({}),
            &[],
            Some(OPENAI_CREDENTIAL),
        )
        .await;
    let (_, secret) = gw.key(KeySpec::on(&p)).await;
    let r = gw
        .post("/v1/chat/completions", &secret, streaming("m"))
        .await;
    assert_eq!(r.status, 200);
    let data = r.sse_data();
    assert!(data[0].contains("Hel"), "{data:?}");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_unavailable");
    assert_eq!(
        gw.last_used(1).await.outcome,
        UsageOutcome::UpstreamUnavailable
    );
}

#[tokio::test]
async fn a_client_that_leaves_before_the_answer_is_recorded_too() {
    let gw = Gw::start().await;
    let p = gw.openai(&[]).await;
    let (_, secret) = gw.key(KeySpec::on(&p)).await;
    let state = gw.state.clone();
    let req = post("/v1/chat/completions", &secret, chat("slow"));
    let call = tokio::spawn(async move {
        let mut req = req;
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from(
                CLIENT,
            )));
        tower::ServiceExt::oneshot(keyward::app(state), req).await
    });
    // The mock takes 3 s to answer; by now the request is waiting for it.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    call.abort();
    let used = gw.last_used(1).await;
    assert_eq!(used.outcome, UsageOutcome::ClientClosed);
    assert!(!used.stream);
}
