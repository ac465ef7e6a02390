//! The log both log examples build: users, keys and key updates, then `key.used` events
//! shaped as the proxy writes them (`Meter::event` in src/http/proxy).

use keyward::store::EventStore;
use keyward_events::{
    Event, ExpectedVersion, KeyCreated, KeyUpdated, KeyUsed, NewEvent, Role, Scope, SealedPassword,
    UsageOutcome, UserCreated,
};
use ulid::Ulid;

const MODELS: &[&str] = &[
    "gpt-4o-mini",
    "gpt-4o",
    "claude-3-5-sonnet-20241022",
    "o3-mini",
];
const ENDPOINTS: &[&str] = &["/v1/chat/completions", "/v1/messages", "/v1/embeddings"];

pub struct Fixture {
    pub users: Vec<String>,
    pub keys: Vec<(String, String)>,
    pub providers: Vec<String>,
}

pub fn fixture(keys: usize) -> Fixture {
    let users: Vec<String> = (0..keys.div_ceil(4))
        .map(|_| format!("usr_{}", Ulid::new()))
        .collect();
    let keys = (0..keys)
        .map(|i| (format!("key_{}", Ulid::new()), users[i / 4].clone()))
        .collect();
    let providers = (0..3).map(|_| format!("prv_{}", Ulid::new())).collect();
    Fixture {
        users,
        keys,
        providers,
    }
}

pub fn lifecycle(f: &Fixture, now: chrono::DateTime<chrono::Utc>) -> Vec<Vec<NewEvent>> {
    let req = || Some(format!("req_{}", Ulid::new()));
    let mut units = Vec::new();
    for (i, u) in f.users.iter().enumerate() {
        let e = Event::UserCreated(UserCreated {
            user_id: u.clone(),
            username: format!("user{i}@example.com"),
            role: Role::User,
            password: Some(SealedPassword {
                ciphertext: "ab".repeat(60),
                nonce: "cd".repeat(12),
                keyring_version: 1,
            }),
            legacy_password_hash: None,
        });
        units.push(vec![NewEvent::new(
            &e,
            ExpectedVersion::NoStream,
            now,
            "system",
            req(),
        )]);
    }
    for (i, (k, owner)) in f.keys.iter().enumerate() {
        let e = Event::KeyCreated(KeyCreated {
            key_id: k.clone(),
            name: format!("service {i}"),
            owner_id: owner.clone(),
            provider_ids: vec![f.providers[i % f.providers.len()].clone()],
            secret_hash: "0f".repeat(32),
            prefix: "kw_live_ab12".into(),
            expires_at: now + chrono::Duration::days(90),
            scopes: vec![Scope::Chat],
            models: vec![],
            rate_limit: None,
            quota: None,
            ip_allowlist: vec![],
            metadata: serde_json::Map::new(),
            rotated_from: None,
        });
        units.push(vec![NewEvent::new(
            &e,
            ExpectedVersion::NoStream,
            now,
            owner.clone(),
            req(),
        )]);
        if i.is_multiple_of(2) {
            let e = Event::KeyUpdated(KeyUpdated {
                key_id: k.clone(),
                name: Some(format!("service {i} (renamed)")),
                ..KeyUpdated::default()
            });
            units.push(vec![NewEvent::new(
                &e,
                ExpectedVersion::Exact(1),
                now,
                owner.clone(),
                req(),
            )]);
        }
    }
    units
}

/// A `key.used` as `Meter::event` in src/http/proxy builds it.
pub fn key_used(f: &Fixture, n: usize, at: chrono::DateTime<chrono::Utc>) -> NewEvent {
    let (key_id, _) = &f.keys[(n * 7919) % f.keys.len()];
    let model = MODELS[n % MODELS.len()];
    let stream = n.is_multiple_of(3);
    let e = Event::KeyUsed(KeyUsed {
        key_id: key_id.clone(),
        provider_id: f.providers[n % f.providers.len()].clone(),
        model: Some(model.into()),
        endpoint: ENDPOINTS[n % ENDPOINTS.len()].into(),
        outcome: if n.is_multiple_of(50) {
            UsageOutcome::UpstreamError
        } else {
            UsageOutcome::Success
        },
        status: if n.is_multiple_of(50) { 502 } else { 200 },
        latency_us: 350_000 + (n as u64 * 7_919) % 2_000_000,
        upstream_latency_us: Some(340_000 + (n as u64 * 7_919) % 2_000_000),
        prompt_tokens: 200 + (n as u64 * 31) % 1_800,
        completion_tokens: 50 + (n as u64 * 17) % 700,
        stream,
        client_ip: Some(format!("10.{}.{}.{}", n % 4, (n / 4) % 256, n % 200 + 1)),
    });
    NewEvent::new(
        &e,
        ExpectedVersion::Any,
        at,
        key_id.clone(),
        Some(format!("req_{}", Ulid::new())),
    )
}

pub async fn append_all(
    store: &dyn EventStore,
    events: Vec<Vec<NewEvent>>,
    batch: usize,
) -> anyhow::Result<()> {
    let mut it = events.into_iter().peekable();
    while it.peek().is_some() {
        let units: Vec<Vec<NewEvent>> = it.by_ref().take(batch).collect();
        for r in store.append(units).await? {
            r?;
        }
    }
    Ok(())
}
