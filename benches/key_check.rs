//! Secret parse + hash + lookup with 1M keys loaded in the projections' `State`.
//!
//! `cargo bench --bench key_check` (`KEYWARD_BENCH_KEYS=N` for another count)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chrono::Utc;
use criterion::{BatchSize, Criterion, black_box, criterion_group, criterion_main};
use keyward::auth::authenticate;
use keyward::crypto::{Secret, check, hash_secret};
use keyward_projections::State;

fn keys() -> usize {
    std::env::var("KEYWARD_BENCH_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000)
}

fn bench(c: &mut Criterion) {
    let n = keys();
    let mut state = State::default();
    // Keep 1 secret in 1,000: 1,000 different keys spread over the table, so lookups are
    // not all served from one cache line.
    let secrets = common::keys_log(n, 1_000, |env| state.apply(&env).unwrap());
    assert_eq!(state.keys.len(), n);
    let now = Utc::now();
    let mut g = c.benchmark_group(format!("key_check/{n}_keys"));
    let mut i = 0usize;
    let mut next = || {
        i = (i + 1) % secrets.len();
        secrets[i].as_str()
    };
    g.bench_function("check", |b| b.iter(|| check(black_box(next())).unwrap()));
    g.bench_function("hash", |b| b.iter(|| hash_secret(black_box(next()))));
    let hashes: Vec<_> = secrets.iter().map(|s| hash_secret(s)).collect();
    let mut j = 0usize;
    g.bench_function("lookup", |b| {
        b.iter(|| {
            j = (j + 1) % hashes.len();
            state.keys.by_secret_hash(black_box(&hashes[j])).unwrap();
        })
    });
    g.bench_function("check+hash+lookup", |b| {
        b.iter(|| {
            let s = black_box(next());
            check(s).unwrap();
            state.keys.by_secret_hash(&hash_secret(s)).unwrap();
        })
    });
    g.bench_function("authenticate", |b| {
        b.iter(|| authenticate(&state, black_box(next()), now).unwrap())
    });
    // `Secret::parse` copies the secret into a zeroizing String; the proxy uses `check`.
    g.bench_function("Secret::parse+hash+lookup", |b| {
        b.iter_batched(
            || next().to_owned(),
            |s| {
                let secret = Secret::parse(&s).unwrap();
                state.keys.by_secret_hash(&secret.hash()).unwrap();
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

/// The service's allocator, so that this measures what runs.
#[global_allocator]
static GLOBAL: keyward::Allocator = keyward::ALLOCATOR;
