//! Builders shared by the benchmarks (and `examples/key_memory.rs`): a log with a user and
//! N keys, and `key.used` events.
#![allow(dead_code)]

use chrono::{Duration, Utc};
use keyward::crypto::{Secret, hash_secret};
use keyward_events::*;

pub const OWNER: &str = "usr_01HF7YAT010000000000000001";
pub const PROVIDER: &str = "prv_01HF7YAT010000000000000001";

pub fn key_id(k: usize) -> String {
    format!("key_{k:026}")
}

pub fn user_created() -> Event {
    Event::UserCreated(UserCreated {
        user_id: OWNER.into(),
        username: "bench".into(),
        role: Role::User,
        password: None,
        legacy_password_hash: None,
    })
}

pub fn key_created(k: usize, secret_hash: Hash32) -> Event {
    Event::KeyCreated(KeyCreated {
        key_id: key_id(k),
        name: format!("key {k}"),
        owner_id: OWNER.into(),
        provider_ids: vec![PROVIDER.into()],
        secret_hash: secret_hash.to_hex(),
        prefix: "kw_abcdefgh".into(),
        expires_at: Utc::now() + Duration::days(30),
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
    })
}

pub fn key_used(k: usize, n: usize) -> Event {
    Event::KeyUsed(KeyUsed {
        key_id: key_id(k),
        provider_id: PROVIDER.into(),
        model: Some("gpt-4o-mini".into()),
        endpoint: "/v1/chat/completions".into(),
        outcome: UsageOutcome::Success,
        status: 200,
        latency_us: 1200 + (n % 997) as u64,
        upstream_latency_us: Some(1100),
        prompt_tokens: 42,
        completion_tokens: 128,
        stream: false,
        client_ip: Some("10.1.2.3".into()),
    })
}

pub fn new_event(e: &Event, n: usize) -> NewEvent {
    NewEvent::new(
        e,
        ExpectedVersion::Any,
        Utc::now(),
        "system",
        Some(format!("req-{n}")),
    )
}

/// Seals events one after another into a chain.
pub struct Chain {
    pub seq: u64,
    pub prev: Hash32,
}

impl Default for Chain {
    fn default() -> Self {
        Chain {
            seq: 0,
            prev: Hash32::ZERO,
        }
    }
}

impl Chain {
    pub fn seal(&mut self, e: &Event, stream_version: u64) -> Envelope {
        self.seq += 1;
        let env = new_event(e, self.seq as usize).seal(self.seq, stream_version, self.prev);
        self.prev = env.hash;
        env
    }
}

/// Feeds `f` the envelopes of a user and `keys` keys, each with a fresh secret; returns
/// every `keep_every`-th secret (the rest are dropped as they are made).
pub fn keys_log(keys: usize, keep_every: usize, mut f: impl FnMut(Envelope)) -> Vec<String> {
    let mut chain = Chain::default();
    f(chain.seal(&user_created(), 1));
    let mut kept = Vec::new();
    for k in 0..keys {
        let secret = Secret::generate();
        let h = hash_secret(secret.expose());
        if k % keep_every.max(1) == 0 {
            kept.push(secret.expose().to_owned());
        }
        f(chain.seal(&key_created(k, h), 1));
    }
    kept
}

/// A log of `n` events: a user, `keys` keys, then `key.used` events round-robin.
pub fn usage_log(n: usize, keys: usize) -> Vec<Envelope> {
    let mut out = Vec::with_capacity(n);
    keys_log(keys, usize::MAX, |e| out.push(e));
    let mut chain = Chain {
        seq: out.len() as u64,
        prev: out.last().map(|e| e.hash).unwrap_or(Hash32::ZERO),
    };
    let mut versions = vec![1u64; keys];
    while out.len() < n {
        let k = out.len() % keys;
        versions[k] += 1;
        let v = versions[k];
        out.push(chain.seal(&key_used(k, out.len()), v));
    }
    out
}
