//! Master keys with the real binary: a wrong keyring stops the start and names the
//! provider and key version; `keyward providers reseal` moves every credential to the
//! newest master key, after which the old one can be removed and the proxy still works.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use keyward_events::Event;
use tower::ServiceExt;

use crate::common::*;
use crate::proxy::{Gw, KeySpec, OPENAI_CREDENTIAL, Reply, chat, stored};

const K1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const K2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const CONSOLE_PASSWORD: &str = "a console password sealed under k1";
const OTHER: &str = "9999999999999999999999999999999999999999999999999999999999999999";

/// Runs the binary on `dir` with this keyring; kills it if it is still running after a
/// minute (a start that should have been refused and is serving instead).
fn run_with_keys(dir: &std::path::Path, keys: &str, args: &[&str]) -> std::process::Output {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("KEYWARD_DATABASE_URL")
        .env("KEYWARD_MASTER_KEYS", keys)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// A provider whose credential is sealed under master key 1, a chat key on it, and the
/// stopped service's data dir.
async fn sealed_under_k1() -> (tempfile::TempDir, crate::proxy::mock::Mock, String, String) {
    let gw = Gw::start_with(|c| c.master_keys = Some(format!("1:{K1}"))).await;
    let provider = gw.openai(&["gpt-4o-mini"]).await;
    let (_, secret) = gw.key(KeySpec::on(&provider)).await;
    let r = gw
        .post("/v1/chat/completions", &secret, chat("gpt-4o-mini"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The admin's console password is sealed under master key 1 as well.
    crate::ui::set_password(&gw.state, &gw.admin_id, CONSOLE_PASSWORD).await;
    let Gw { t, mock, state, .. } = gw;
    drop(state);
    let TestApp { running, dir } = t;
    running.shutdown().await;
    (dir, mock, provider, secret)
}

#[tokio::test]
async fn a_wrong_master_key_stops_the_start_naming_the_provider_and_the_key_version() {
    let (dir, _mock, provider, _) = sealed_under_k1().await;
    let listen = ["serve", "--listen", "127.0.0.1:0"];

    // The same version number, another key: the credential does not open.
    let o = run_with_keys(dir.path(), &format!("1:{OTHER}"), &listen);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{}{err}", stdout(&o));
    assert!(err.contains(&provider), "{err}");
    assert!(err.contains("master key version 1"), "{err}");
    assert!(err.contains("does not decrypt"), "{err}");
    assert!(!stdout(&o).contains("listening"), "{}", stdout(&o));
    assert!(
        !err.contains(OPENAI_CREDENTIAL) && !err.contains(OTHER),
        "{err}"
    );

    // A keyring without version 1 at all.
    let o = run_with_keys(dir.path(), &format!("2:{K2}"), &listen);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(&provider), "{err}");
    assert!(err.contains("no master key of version 1"), "{err}");

    // Nothing was written by the refused starts.
    let o = keyward(dir.path(), &["audit", "verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

#[tokio::test]
async fn reseal_moves_every_credential_to_the_newest_key_and_the_old_key_can_go() {
    let (dir, mock, provider, secret) = sealed_under_k1().await;
    let ring = format!("2:{K2},1:{K1}");

    let o = run_with_keys(dir.path(), &ring, &["providers", "reseal"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains(
            "resealed 1 provider credential(s) under master key version 2, and 1 console password(s)"
        ),
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains(&format!("provider {provider}")),
        "{}",
        stderr(&o)
    );
    // Nothing is left to reseal: a second run changes nothing.
    let o = run_with_keys(dir.path(), &ring, &["providers", "reseal"]);
    assert!(stdout(&o).contains("resealed 0"), "{}", stdout(&o));

    // The old key is gone from the keyring; the service starts and proxies.
    let mut config = config_in(dir.path());
    config.master_keys = Some(format!("2:{K2}"));
    let running = keyward::server::start(config).await.unwrap();
    let updates: Vec<_> = stored(&running.state, "provider.key_updated")
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::ProviderKeyUpdated(u) => Some(u),
            _ => None,
        })
        .collect();
    assert_eq!(
        updates
            .iter()
            .map(|u| u.keyring_version)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    // The same credential (its last four), newly encrypted. The fingerprint is keyed by
    // the master key, so it changes with it.
    assert_eq!(updates[0].last4, updates[1].last4);
    assert_ne!(updates[0].ciphertext, updates[1].ciphertext);

    let mut req = Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {secret}"))
        .header("content-type", "application/json")
        .body(Body::from(chat("gpt-4o-mini").to_string()))
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40_000))));
    let r = Reply::read(
        keyward::app(running.state.clone())
            .oneshot(req)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        mock.last().header("authorization"),
        Some(format!("Bearer {OPENAI_CREDENTIAL}").as_str())
    );
    // The console password was resealed too: it opens without key 1 and still verifies.
    let admin = running
        .state
        .0
        .live
        .read()
        .users
        .by_username("admin")
        .cloned()
        .unwrap();
    let phc = running.state.0.keyring.password_of(&admin).unwrap();
    assert!(keyward::crypto::verify_password(
        CONSOLE_PASSWORD,
        phc.expose()
    ));
    running.shutdown().await;

    // And only the old key no longer opens it.
    let mut config = config_in(dir.path());
    config.master_keys = Some(format!("1:{K1}"));
    let err = keyward::server::start(config).await.err().unwrap();
    assert!(
        format!("{err:#}").contains("no master key of version 2"),
        "{err:#}"
    );
}

#[tokio::test]
async fn reseal_refuses_while_a_server_holds_the_data_dir() {
    let t = TestApp::start_with(|c| c.master_keys = Some(format!("1:{K1}"))).await;
    let o = run_with_keys(
        t.dir.path(),
        &format!("2:{K2},1:{K1}"),
        &["providers", "reseal"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("another keyward process is serving the data dir"),
        "{}",
        stderr(&o)
    );
    assert_eq!(t.running.state.0.live.head().seq, 2);
    t.running.shutdown().await;
}
