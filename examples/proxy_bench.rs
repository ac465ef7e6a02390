//! A first load figure for the proxy: requests per second through Keyward, and the latency
//! it adds over calling the same mock upstream directly. The mock, Keyward (SQLite in a
//! temporary data dir) and the load generator all run in this one process, on loopback.
//!
//! ```sh
//! cargo run --release --example proxy_bench -- --concurrency 32 --seconds 10
//! ```
//!
//! The benchmark issue turns this into a harness; this is the first measurement.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::http::header;
use axum::routing::post;
use chrono::Utc;
use keyward::commands::{Actor, NewKey};
use keyward::config::{Config, GlobalArgs, ServeArgs};
use keyward::crypto::ProviderSecret;
use keyward::store::EventFilter;
use keyward_events::{
    Event, ExpectedVersion, NewEvent, ProviderCreated, ProviderKeyUpdated, ProviderKind, Scope,
};

const CHAT: &str = include_str!("../tests/fixtures/openai-chat-completion.json");
const BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}"#;

struct Args {
    concurrency: usize,
    seconds: u64,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        concurrency: 32,
        seconds: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--concurrency" => a.concurrency = value.parse()?,
            "--seconds" => a.seconds = value.parse()?,
            other => bail!("unknown flag {other}; use --concurrency N --seconds S"),
        }
    }
    Ok(a)
}

async fn serve(router: Router) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    Ok(addr)
}

struct Run {
    requests: usize,
    failures: usize,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Run {
    fn pct(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }

    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn report(&self, name: &str) {
        println!(
            "{name:<8} {:>8.0} req/s  p50 {:>6.2} ms  p90 {:>6.2} ms  p99 {:>6.2} ms  ({} requests, {} failed)",
            self.rps(),
            self.pct(0.50),
            self.pct(0.90),
            self.pct(0.99),
            self.requests,
            self.failures
        );
    }
}

/// `concurrency` workers sending one request after another for `d`.
async fn load(
    client: &reqwest::Client,
    url: &str,
    auth: Option<&str>,
    concurrency: usize,
    d: Duration,
) -> Run {
    let started = Instant::now();
    let deadline = started + d;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let url = url.to_owned();
        let auth = auth.map(|a| format!("Bearer {a}"));
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failures = 0;
            while Instant::now() < deadline {
                let t = Instant::now();
                let mut req = client
                    .post(&url)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(BODY);
                if let Some(a) = &auth {
                    req = req.header(header::AUTHORIZATION, a);
                }
                let ok = match req.send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    lat.push(t.elapsed().as_micros() as u64);
                } else {
                    failures += 1;
                }
            }
            (lat, failures)
        }));
    }
    let mut latencies_us = Vec::new();
    let mut failures = 0;
    for t in tasks {
        if let Ok((lat, f)) = t.await {
            latencies_us.extend(lat);
            failures += f;
        }
    }
    latencies_us.sort_unstable();
    Run {
        requests: latencies_us.len() + failures,
        failures,
        elapsed: started.elapsed(),
        latencies_us,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;

    let mock = Router::new().route(
        "/v1/chat/completions",
        post(|| async { ([(header::CONTENT_TYPE, "application/json")], CHAT) }),
    );
    let mock_addr = serve(mock).await?;

    let dir = tempfile::tempdir()?;
    let config = Config::resolve(
        &GlobalArgs {
            data_dir: Some(dir.path().to_path_buf()),
            ..GlobalArgs::default()
        },
        &ServeArgs {
            listen: Some("127.0.0.1:0".into()),
            // The mock upstream is on loopback.
            upstream_allow: Some("127.0.0.0/8".into()),
            ..ServeArgs::default()
        },
    )?;
    let running = keyward::server::start(config).await?;
    let state = running.state.clone();
    let app = &state.0;

    let provider_id = keyward::commands::new_provider_id();
    let sealed = app.keyring.seal(
        &provider_id,
        &ProviderSecret::new("sk-bench-credential".into()),
    );
    let events = [
        Event::ProviderCreated(ProviderCreated {
            provider_id: provider_id.clone(),
            name: "bench".into(),
            kind: ProviderKind::Openai,
            base_url: format!("http://{mock_addr}/v1"),
            config: Default::default(),
            models: Vec::new(),
        }),
        Event::ProviderKeyUpdated(ProviderKeyUpdated {
            provider_id: provider_id.clone(),
            ciphertext: sealed.ciphertext,
            nonce: sealed.nonce,
            keyring_version: sealed.keyring_version,
            fingerprint: sealed.fingerprint,
            last4: sealed.last4,
        }),
    ];
    let unit = events
        .iter()
        .map(|e| NewEvent::new(e, ExpectedVersion::Any, Utc::now(), "system", None))
        .collect();
    app.commands.submit(unit).await?;
    let owner = app
        .live
        .read()
        .users
        .by_username("admin")
        .map(|u| u.user_id.clone())
        .context("the bootstrap admin is missing")?;
    let (ev, _, secret) = app.commands.key_created(
        &Actor::system(),
        NewKey {
            name: "bench".into(),
            owner_id: owner,
            provider_ids: vec![provider_id],
            expires_at: Utc::now() + chrono::Duration::days(1),
            scopes: vec![Scope::Chat],
            models: Vec::new(),
            rate_limit: None,
            quota: None,
            ip_allowlist: Vec::new(),
            metadata: Default::default(),
            rotated_from: None,
        },
    );
    app.commands.submit(vec![ev]).await?;
    let keyward_addr = serve(keyward::app(state.clone())).await?;

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(a.concurrency * 2)
        .build()?;
    let direct_url = format!("http://{mock_addr}/v1/chat/completions");
    let keyward_url = format!("http://{keyward_addr}/v1/chat/completions");
    let d = Duration::from_secs(a.seconds);
    println!(
        "concurrency {}, {} s per run, {} CPUs",
        a.concurrency,
        a.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // Warm both paths: connection pools, the key's first lookup, SQLite's cache.
    let warm = Duration::from_secs(1);
    load(&client, &direct_url, None, a.concurrency, warm).await;
    let warm_via = load(
        &client,
        &keyward_url,
        Some(secret.expose()),
        a.concurrency,
        warm,
    )
    .await;

    let direct = load(&client, &direct_url, None, a.concurrency, d).await;
    direct.report("direct");
    let via = load(
        &client,
        &keyward_url,
        Some(secret.expose()),
        a.concurrency,
        d,
    )
    .await;
    via.report("keyward");
    println!(
        "added    p50 {:+.2} ms  p99 {:+.2} ms",
        via.pct(0.50) - direct.pct(0.50),
        via.pct(0.99) - direct.pct(0.99)
    );

    running.shutdown().await;
    let recorded = app
        .store
        .read(
            &EventFilter {
                types: vec!["key.used".into()],
                ..EventFilter::default()
            },
            usize::MAX,
        )
        .await?
        .len();
    println!(
        "key.used recorded after shutdown: {recorded}; requests sent through Keyward: {}",
        warm_via.requests + via.requests
    );
    Ok(())
}

/// The service's allocator, so that this measures what runs.
#[global_allocator]
static GLOBAL: keyward::Allocator = keyward::ALLOCATOR;
