//! Replay throughput: a log of N events (users, keys, and mostly `key.used`) folded into
//! the projections, first from memory (decode + fold: the projections' own speed), then
//! from a SQLite file through `Live::rebuild` (read + verify the chain + decode + fold:
//! what a start-up costs).
//!
//! `cargo run --release --example replay_throughput -- [events] [keys]`

use std::sync::Arc;
use std::time::Instant;

use chrono::{Duration, Utc};
use keyward::live::Live;
use keyward::store::EventStore;
use keyward::store::sqlite::SqliteStore;
use keyward_events::*;
use keyward_projections::State;

fn build(n: usize, keys: usize) -> Vec<Envelope> {
    let now = Utc::now();
    let mut out = Vec::with_capacity(n);
    let mut prev = Hash32::ZERO;
    let mut push = |e: &Event, sv: u64, out: &mut Vec<Envelope>| {
        let seq = out.len() as u64 + 1;
        let env = NewEvent::new(
            e,
            ExpectedVersion::Any,
            now,
            "system",
            Some(format!("req-{seq}")),
        )
        .seal(seq, sv, prev);
        prev = env.hash;
        out.push(env);
    };
    push(
        &Event::UserCreated(UserCreated {
            user_id: "usr_1".into(),
            username: "u".into(),
            role: Role::User,
            password: None,
            legacy_password_hash: None,
        }),
        1,
        &mut out,
    );
    for k in 0..keys {
        let e = Event::KeyCreated(KeyCreated {
            key_id: format!("key_{k:026}"),
            name: format!("key {k}"),
            owner_id: "usr_1".into(),
            provider_ids: vec!["prv_1".into()],
            secret_hash: blake3::hash(&k.to_le_bytes()).to_hex().to_string(),
            prefix: "kw_abcdefgh".into(),
            expires_at: now + Duration::days(30),
            scopes: vec![Scope::Chat],
            models: vec![],
            rate_limit: Some(RateLimit {
                requests_per_minute: 600,
                burst: 20,
            }),
            quota: None,
            ip_allowlist: vec![],
            metadata: Default::default(),
            rotated_from: None,
        });
        push(&e, 1, &mut out);
    }
    let mut versions = vec![0u64; keys];
    while out.len() < n {
        let k = out.len() % keys;
        versions[k] += 1;
        let e = Event::KeyUsed(KeyUsed {
            key_id: format!("key_{k:026}"),
            provider_id: "prv_1".into(),
            model: Some("gpt-4o-mini".into()),
            endpoint: "/v1/chat/completions".into(),
            outcome: UsageOutcome::Success,
            status: 200,
            latency_us: 1234,
            upstream_latency_us: Some(1100),
            prompt_tokens: 42,
            completion_tokens: 128,
            stream: false,
            client_ip: Some("10.1.2.3".into()),
        });
        push(&e, versions[k], &mut out);
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let keys: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    eprintln!("building {n} events over {keys} keys…");
    let log = build(n, keys);

    let t = Instant::now();
    let mut state = State::default();
    for env in &log {
        state.apply(env)?;
    }
    let mem = t.elapsed();
    println!(
        "in memory: {n} events decoded and folded in {:.2} s = {:.0} events/s",
        mem.as_secs_f64(),
        n as f64 / mem.as_secs_f64()
    );

    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(&dir.path().join("replay.db")).await?;
    for chunk in log.chunks(5_000) {
        let unit: Vec<NewEvent> = chunk
            .iter()
            .map(|e| NewEvent {
                event_id: e.event_id,
                stream: e.stream.clone(),
                expected: ExpectedVersion::Any,
                event_type: e.event_type.clone(),
                schema: e.schema,
                occurred_at: e.occurred_at,
                actor: e.actor.clone(),
                request_id: e.request_id.clone(),
                data: e.data.clone(),
            })
            .collect();
        store.append(vec![unit]).await?;
    }
    let store: Arc<dyn EventStore> = Arc::new(store);
    let t = Instant::now();
    let (live, report) = Live::rebuild(store, false).await?;
    let disk = t.elapsed();
    assert_eq!(report.events as usize, n);
    println!(
        "from SQLite (read + verify chain + decode + fold): {n} events in {:.2} s = {:.0} events/s; {} keys live",
        disk.as_secs_f64(),
        n as f64 / disk.as_secs_f64(),
        live.read().keys.len()
    );
    Ok(())
}

/// The service's allocator, so that this measures what runs.
#[global_allocator]
static GLOBAL: keyward::Allocator = keyward::ALLOCATOR;
