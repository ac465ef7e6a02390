//! The cost of refusing a guessed key on the proxy, through the whole router: a guess from
//! a new address each time (the per-IP throttle never engages), well-formed (checksum,
//! hash, lookup) or malformed (checksum only), and one from a throttled address (429, no
//! lookup). The figure is quoted in SECURITY.md.
//!
//! `cargo bench --bench refusal`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use keyward::config::{Config, GlobalArgs, ServeArgs};
use keyward::crypto::Secret;
use tower::ServiceExt;

fn request(secret: &str, ip: [u8; 4]) -> Request<Body> {
    let mut req = Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {secret}"))
        .header("content-type", "application/json")
        .body(Body::from(
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
        ))
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from((ip, 40_000))));
    req
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = Config::resolve(
        &GlobalArgs {
            data_dir: Some(dir.path().to_path_buf()),
            ..GlobalArgs::default()
        },
        &ServeArgs {
            listen: Some("127.0.0.1:0".into()),
            auth_failures_per_second: Some("5".into()),
            ..ServeArgs::default()
        },
    )
    .unwrap();
    let running = rt.block_on(keyward::server::start(config)).unwrap();
    let app = keyward::app(running.state.clone());
    let mut g = c.benchmark_group("refusal");
    let mut n: u32 = 0;
    let mut next_ip = || {
        n = n.wrapping_add(1);
        [10, (n >> 16) as u8, (n >> 8) as u8, n as u8]
    };
    g.bench_function("well-formed guess, new address each time", |b| {
        b.to_async(&rt).iter_batched(
            || request(Secret::generate().expose(), next_ip()),
            |req| {
                let app = app.clone();
                async move {
                    let res = app.oneshot(req).await.unwrap();
                    assert_eq!(res.status(), 401);
                }
            },
            BatchSize::SmallInput,
        )
    });
    let malformed = format!("kw_{}", "A".repeat(49));
    g.bench_function("malformed guess, new address each time", |b| {
        b.to_async(&rt).iter_batched(
            || request(&malformed, next_ip()),
            |req| {
                let app = app.clone();
                async move {
                    let res = app.oneshot(req).await.unwrap();
                    assert_eq!(res.status(), 401);
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("guess from a throttled address", |b| {
        b.to_async(&rt).iter_batched(
            || request(Secret::generate().expose(), [192, 0, 2, 1]),
            |req| {
                let app = app.clone();
                async move {
                    let res = app.oneshot(req).await.unwrap();
                    assert!(res.status() == 429 || res.status() == 401);
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
    rt.block_on(running.shutdown());
}

criterion_group!(benches, bench);
criterion_main!(benches);

/// The service's allocator, so that this measures what runs.
#[global_allocator]
static GLOBAL: keyward::Allocator = keyward::ALLOCATOR;
