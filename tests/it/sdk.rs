//! The official `openai` and `anthropic` Python SDKs drive Keyward on a real port, as an
//! application would. `scripts/test` puts them in `.venv`; without it the test is skipped
//! with a reason, except under CI=true where it fails.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use keyward_events::{Event, RateLimit};
use serde_json::json;

use crate::proxy::{Gw, KeySpec, stored};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdks_work_against_keyward() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    if !python.exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{} is missing under CI: scripts/test creates it",
            python.display()
        );
        crate::skip::skipped(
            "sdk::the_official_python_sdks_work_against_keyward",
            &format!(
                "{} is missing; run scripts/test to create it",
                python.display()
            ),
        );
        return;
    }

    let gw = Gw::start().await;
    let openai = gw.openai(&[]).await;
    let anth = gw.anthropic(json!({})).await;
    let (_, key) = gw.key(KeySpec::on(&openai)).await;
    let (_, anth_key) = gw.key(KeySpec::on(&anth)).await;
    let one_per_minute = Some(RateLimit {
        requests_per_minute: 1,
        burst: 1,
    });
    let mut spec = KeySpec::on(&openai);
    spec.rate_limit = one_per_minute;
    let (_, limited) = gw.key(spec).await;
    let mut spec = KeySpec::on(&anth);
    spec.rate_limit = one_per_minute;
    let (_, limited_anth) = gw.key(spec).await;
    let unknown = keyward::crypto::Secret::generate();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = keyward::app(gw.state.clone());
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });

    let run = tokio::process::Command::new(&python)
        .arg(root.join("tests/sdk/sdk_test.py"))
        .env("KW_BASE", format!("http://{addr}"))
        .env("KW_KEY", &key)
        .env("KW_ANTHROPIC_KEY", &anth_key)
        .env("KW_LIMITED_KEY", &limited)
        .env("KW_LIMITED_ANTHROPIC_KEY", &limited_anth)
        .env("KW_UNKNOWN_KEY", unknown.expose())
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("ANTHROPIC_BASE_URL")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the SDK script timed out")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("sdk ok"), "{stdout}");
    server.abort();

    // Each SDK call that Keyward admitted is one use, seen from the client's real address.
    let used = gw.events("key.used", 12).await;
    assert_eq!(used.len(), 12, "{used:?}");
    assert!(used.iter().all(|e| matches!(e,
        Event::KeyUsed(u) if u.client_ip.as_deref() == Some("127.0.0.1"))));
    let denied = stored(&gw.state, "key.denied").await;
    assert_eq!(denied.len(), 2, "{denied:?}");
}
