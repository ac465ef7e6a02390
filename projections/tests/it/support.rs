//! Builds sealed logs from typed events, and the events the tests use most.

use std::collections::HashMap;

use chrono::{TimeZone, Utc};
use keyward_events::time::Timestamp;
use keyward_events::*;
use keyward_projections::State;

pub const ADMIN: &str = "usr_admin";
pub const ALICE: &str = "usr_alice";
pub const OPENAI: &str = "prv_openai";

/// A time in March 2026, UTC.
pub fn at(day: u32, hour: u32) -> Timestamp {
    at_ymd(2026, 3, day, hour)
}

pub fn at_ymd(year: i32, month: u32, day: u32, hour: u32) -> Timestamp {
    Utc.with_ymd_and_hms(year, month, day, hour, 0, 0).unwrap()
}

pub fn minutes(t: Timestamp, m: i64) -> Timestamp {
    t + chrono::Duration::minutes(m)
}

/// A log under construction: seqs from 1, a version per stream, and a chained prev hash.
#[derive(Default)]
pub struct Log {
    pub envs: Vec<Envelope>,
    versions: HashMap<String, u64>,
}

impl Log {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, at: Timestamp, event: Event) -> &Envelope {
        self.push_as(at, ADMIN, event)
    }

    pub fn push_as(&mut self, at: Timestamp, actor: &str, event: Event) -> &Envelope {
        self.push_new(NewEvent::new(&event, ExpectedVersion::Any, at, actor, None))
    }

    /// For payloads no typed event produces: old schemas, broken data.
    pub fn push_new(&mut self, ne: NewEvent) -> &Envelope {
        let version = self.versions.entry(ne.stream.clone()).or_default();
        *version += 1;
        let seq = self.envs.len() as u64 + 1;
        let prev = self.envs.last().map_or(Hash32::ZERO, |e| e.hash);
        self.envs.push(ne.seal(seq, *version, prev));
        self.envs.last().unwrap()
    }

    /// Every event, applied one at a time with `State::apply`.
    pub fn state(&self) -> State {
        let mut s = State::new();
        s.apply_all(&self.envs).unwrap();
        s
    }
}

/// A schema 1 `user.updated` that sets a password: the PHC string in plaintext, as builds
/// before schema 2 wrote it.
pub fn legacy_password_set(at: Timestamp, user_id: &str, phc: &str) -> NewEvent {
    let mut ne = NewEvent::new(
        &Event::UserUpdated(UserUpdated {
            user_id: user_id.into(),
            username: None,
            role: None,
            password: None,
            legacy_password_hash: None,
        }),
        ExpectedVersion::Any,
        at,
        ADMIN,
        None,
    );
    ne.schema = 1;
    ne.data["password_hash"] = serde_json::Value::String(phc.into());
    ne
}

/// Given these events, the state.
pub fn given(events: impl IntoIterator<Item = (Timestamp, Event)>) -> State {
    let mut log = Log::new();
    for (t, e) in events {
        log.push(t, e);
    }
    log.state()
}

/// Stands in for blake3 of the key's secret: distinct per id, never zero.
pub fn secret_hash(key_id: &str) -> Hash32 {
    let mut b = [0x5a_u8; 32];
    for (i, c) in key_id.bytes().take(31).enumerate() {
        b[i + 1] = c;
    }
    Hash32(b)
}

/// A key of Alice's on OpenAI that expires at the end of March.
pub fn key_created(key_id: &str) -> KeyCreated {
    KeyCreated {
        key_id: key_id.into(),
        name: format!("{key_id} name"),
        owner_id: ALICE.into(),
        provider_ids: vec![OPENAI.into()],
        secret_hash: secret_hash(key_id).to_hex(),
        prefix: "kw_AbCd".into(),
        expires_at: at(31, 0),
        scopes: vec![Scope::Chat],
        models: vec!["gpt-4o".into()],
        rate_limit: Some(RateLimit {
            requests_per_minute: 60,
            burst: 10,
        }),
        quota: Some(Quota {
            requests_per_day: Some(1000),
            ..Quota::default()
        }),
        ip_allowlist: vec![],
        metadata: serde_json::Map::new(),
        rotated_from: None,
    }
}

pub fn created(key_id: &str) -> Event {
    Event::KeyCreated(key_created(key_id))
}

pub fn used(key_id: &str, outcome: UsageOutcome, prompt: u64, completion: u64) -> Event {
    Event::KeyUsed(KeyUsed {
        key_id: key_id.into(),
        provider_id: OPENAI.into(),
        model: Some("gpt-4o".into()),
        endpoint: "/v1/chat/completions".into(),
        outcome,
        status: if outcome.is_error() { 502 } else { 200 },
        latency_us: 1200,
        upstream_latency_us: Some(1000),
        prompt_tokens: prompt,
        completion_tokens: completion,
        stream: false,
        client_ip: None,
    })
}

pub fn ok(key_id: &str) -> Event {
    used(key_id, UsageOutcome::Success, 0, 0)
}

pub fn denied(key_id: &str, reason: DenyReason, suppressed: u64) -> Event {
    Event::KeyDenied(KeyDenied {
        key_id: key_id.into(),
        reason,
        endpoint: "/v1/chat/completions".into(),
        model: None,
        client_ip: None,
        suppressed,
    })
}

pub fn expired(key_id: &str, reason: ExpireReason) -> Event {
    Event::KeyExpired(KeyExpired {
        key_id: key_id.into(),
        reason,
    })
}

pub fn rotated(key_id: &str, new_key_id: &str, grace_until: Timestamp) -> Event {
    Event::KeyRotated(KeyRotated {
        key_id: key_id.into(),
        new_key_id: new_key_id.into(),
        grace_until,
    })
}

pub fn deleted(key_id: &str) -> Event {
    Event::KeyDeleted(KeyDeleted {
        key_id: key_id.into(),
    })
}

pub fn updated(u: KeyUpdated) -> Event {
    Event::KeyUpdated(u)
}

pub fn user_created(user_id: &str, username: &str, role: Role) -> Event {
    Event::UserCreated(UserCreated {
        user_id: user_id.into(),
        username: username.into(),
        role,
        password: Some(SealedPassword {
            ciphertext: format!("c1phertext0f{user_id}"),
            nonce: "00".repeat(12),
            keyring_version: 1,
        }),
        legacy_password_hash: None,
    })
}

pub fn provider_created(provider_id: &str, name: &str) -> Event {
    Event::ProviderCreated(ProviderCreated {
        provider_id: provider_id.into(),
        name: name.into(),
        kind: ProviderKind::Openai,
        base_url: "https://api.openai.com/v1".into(),
        config: serde_json::Map::new(),
        models: vec!["gpt-4o".into()],
    })
}

/// An unsealed event with any type, schema and payload, for shapes no typed event
/// produces: old schemas, broken data.
pub fn raw(
    stream: &str,
    event_type: &str,
    schema: u16,
    at: Timestamp,
    data: serde_json::Value,
) -> NewEvent {
    let mut ne = NewEvent::new(
        &deleted("key_placeholder"),
        ExpectedVersion::Any,
        at,
        ADMIN,
        None,
    );
    ne.stream = stream.into();
    ne.event_type = event_type.into();
    ne.schema = schema;
    ne.data = data;
    ne
}
