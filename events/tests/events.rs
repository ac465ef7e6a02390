use chrono::{TimeZone, Utc};
use keyward_events::chain::{self, ChainBreak, ChainVerifier};
use keyward_events::upcast::frozen::KeyCreatedV1;
use keyward_events::*;
use serde_json::json;
use ulid::Ulid;

fn t(h: u32, us: u32) -> time::Timestamp {
    Utc.with_ymd_and_hms(2026, 3, 1, h, 0, 0).unwrap() + chrono::Duration::microseconds(us.into())
}

fn user_created(n: u32) -> Event {
    Event::UserCreated(UserCreated {
        user_id: format!("usr_{n}"),
        username: format!("user{n}"),
        role: Role::User,
        password: None,
        legacy_password_hash: None,
    })
}

fn new_event(e: &Event, n: u32) -> NewEvent {
    let mut ne = NewEvent::new(
        e,
        ExpectedVersion::NoStream,
        t(9, n),
        "system",
        Some(format!("req-{n}")),
    );
    ne.event_id = Ulid::from_parts(1_700_000_000_000 + u64::from(n), u128::from(n));
    ne
}

fn chain_of(n: u32) -> Vec<Envelope> {
    let mut prev = Hash32::ZERO;
    (1..=n)
        .map(|i| {
            let env = new_event(&user_created(i), i).seal(u64::from(i), 1, prev);
            prev = env.hash;
            env
        })
        .collect()
}

#[test]
fn golden_vector_for_one_event_hash() {
    // A stored schema 1 row (user.created is at schema 2 now): its hash must not move.
    let mut ne = new_event(&user_created(1), 1);
    ne.schema = 1;
    let env = ne.seal(1, 1, Hash32::ZERO);
    assert_eq!(
        String::from_utf8(env.canonical_body()).unwrap(),
        r#"{"actor":"system","data":{"role":"user","user_id":"usr_1","username":"user1"},"event_id":"01HF7YAT010000000000000001","occurred_at":"2026-03-01T09:00:00.000001Z","request_id":"req-1","schema":1,"seq":1,"stream":"user:usr_1","stream_version":1,"type":"user.created"}"#
    );
    // If this changes, every stored log stops verifying: never update it casually.
    assert_eq!(env.hash.to_hex(), GOLDEN_HASH);
}

// Computed independently: blake3(b"keyward/event-chain/v1\0" ‖ 32 zero bytes ‖ the body above).
const GOLDEN_HASH: &str = "a1d8b1e8504172b15d3acc2614cb0dd7ddfd82acc7524fd9908600b8858ca83c";

#[test]
fn a_clean_chain_verifies_and_reports_its_head() {
    let log = chain_of(5);
    let head = chain::verify(&log).unwrap();
    assert_eq!(head.seq, 5);
    assert_eq!(head.hash, log[4].hash);
}

#[test]
fn an_altered_payload_is_named_by_its_seq() {
    let mut log = chain_of(5);
    log[2].data["username"] = json!("mallory");
    assert_eq!(chain::verify(&log), Err(ChainBreak::Hash { seq: 3 }));
}

#[test]
fn an_altered_envelope_field_is_detected() {
    for alter in [
        (|e: &mut Envelope| e.actor = "usr_x".into()) as fn(&mut Envelope),
        |e| e.occurred_at += chrono::Duration::microseconds(1),
        |e| e.stream_version += 1,
        |e| e.schema += 1,
        |e| e.request_id = None,
        |e| e.event_type = "user.updated".into(),
    ] {
        let mut log = chain_of(4);
        alter(&mut log[1]);
        assert_eq!(chain::verify(&log).unwrap_err().seq(), 2);
    }
}

#[test]
fn a_removed_event_is_a_gap() {
    let mut log = chain_of(5);
    log.remove(3);
    assert_eq!(
        chain::verify(&log),
        Err(ChainBreak::Gap {
            seq: 5,
            expected: 4
        })
    );
}

#[test]
fn a_rehashed_forgery_breaks_the_link_to_the_next_event() {
    let mut log = chain_of(5);
    log[1].actor = "usr_x".into();
    log[1].hash = log[1].compute_hash();
    assert_eq!(
        chain::verify(&log),
        Err(ChainBreak::PrevHash { seq: 3, prev: 2 })
    );
}

#[test]
fn resuming_from_a_checkpoint_verifies_only_the_rest() {
    let log = chain_of(6);
    let mut v = ChainVerifier::resume(Head {
        seq: 3,
        hash: log[2].hash,
    });
    for e in &log[3..] {
        v.push(e).unwrap();
    }
    assert_eq!(v.checked(), 3);
    assert_eq!(v.head().seq, 6);
}

#[test]
fn every_type_has_a_schema_and_round_trips_through_its_envelope() {
    let exp = t(12, 0);
    let events = vec![
        user_created(1),
        Event::UserUpdated(UserUpdated {
            user_id: "usr_1".into(),
            role: Some(Role::Admin),
            ..blank_user_update()
        }),
        Event::UserDisabled(UserDisabled {
            user_id: "usr_1".into(),
        }),
        Event::UserEnabled(UserEnabled {
            user_id: "usr_1".into(),
        }),
        Event::KeyCreated(KeyCreated {
            key_id: "key_1".into(),
            name: "n".into(),
            owner_id: "usr_1".into(),
            provider_ids: vec!["prv_1".into()],
            secret_hash: "00".repeat(32),
            prefix: "kw_abcdef".into(),
            expires_at: exp,
            scopes: vec![Scope::Chat],
            models: vec![],
            rate_limit: Some(RateLimit {
                requests_per_minute: 60,
                burst: 5,
            }),
            quota: Some(Quota {
                tokens_per_day: Some(10),
                ..Quota::default()
            }),
            ip_allowlist: vec!["10.0.0.0/8".into()],
            metadata: serde_json::Map::new(),
            rotated_from: None,
        }),
        Event::KeyUpdated(KeyUpdated {
            key_id: "key_1".into(),
            rate_limit: Some(None),
            ..KeyUpdated::default()
        }),
        Event::KeyUsed(KeyUsed {
            key_id: "key_1".into(),
            provider_id: "prv_1".into(),
            model: Some("gpt-4o".into()),
            endpoint: "/v1/chat/completions".into(),
            outcome: UsageOutcome::Success,
            status: 200,
            latency_us: 1200,
            upstream_latency_us: Some(1000),
            prompt_tokens: 3,
            completion_tokens: 4,
            stream: false,
            client_ip: Some("127.0.0.1".into()),
        }),
        Event::KeyDenied(KeyDenied {
            key_id: "key_1".into(),
            reason: DenyReason::Model,
            endpoint: "/v1/chat/completions".into(),
            model: None,
            client_ip: None,
            suppressed: 0,
        }),
        Event::KeyExpired(KeyExpired {
            key_id: "key_1".into(),
            reason: ExpireReason::Scheduled,
        }),
        Event::KeyRotated(KeyRotated {
            key_id: "key_1".into(),
            new_key_id: "key_2".into(),
            grace_until: exp,
        }),
        Event::KeyDeleted(KeyDeleted {
            key_id: "key_1".into(),
        }),
        Event::KeyNoticeSent(KeyNoticeSent {
            key_id: "key_1".into(),
            kind: NoticeKind::GraceInUse,
            ends_at: exp,
        }),
        Event::ProviderCreated(ProviderCreated {
            provider_id: "prv_1".into(),
            name: "openai".into(),
            kind: ProviderKind::Openai,
            base_url: "https://api.openai.com/v1".into(),
            config: serde_json::Map::new(),
            models: vec!["gpt-4o".into()],
        }),
        Event::ProviderUpdated(ProviderUpdated {
            provider_id: "prv_1".into(),
            name: Some("x".into()),
            ..Default::default()
        }),
        Event::ProviderDeleted(ProviderDeleted {
            provider_id: "prv_1".into(),
            forced: true,
        }),
        Event::ProviderKeyUpdated(ProviderKeyUpdated {
            provider_id: "prv_1".into(),
            ciphertext: "ab".into(),
            nonce: "cd".into(),
            keyring_version: 1,
            fingerprint: "ef".into(),
            last4: "abcd".into(),
        }),
        Event::ProviderVerified(ProviderVerified {
            provider_id: "prv_1".into(),
            ok: false,
            status: Some(401),
            detail: None,
        }),
        Event::AuditRead(AuditRead {
            user_id: Some("usr_1".into()),
            kind: AuditReadKind::Export,
            filter: Some("type=key.created".into()),
            after_seq: Some(0),
            until_seq: Some(41),
        }),
        Event::UserSignedIn(UserSignedIn {
            user_id: "usr_1".into(),
            session: "0123456789abcdef".into(),
        }),
        Event::UserSignedOut(UserSignedOut {
            user_id: "usr_1".into(),
            session: "0123456789abcdef".into(),
        }),
        Event::AuditArchived(AuditArchived {
            first_seq: 1,
            last_seq: 16,
            pruned: 12,
            segments: vec![ArchivedSegmentRef {
                name: "keyward-segment-00000000000000000001-00000000000000000016.ndjson.zst".into(),
                first_seq: 1,
                last_seq: 16,
                root: Hash32([7; 32]),
                checkpoint: "example.com/log\n16\nroot\n".into(),
            }],
        }),
    ];
    let names: Vec<_> = events.iter().map(Event::type_name).collect();
    assert_eq!(names, EVENT_TYPES);
    let mut prev = Hash32::ZERO;
    for (i, e) in events.iter().enumerate() {
        let env =
            NewEvent::new(e, ExpectedVersion::Any, exp, "system", None).seal(i as u64 + 1, 1, prev);
        prev = env.hash;
        let stored: Envelope = serde_json::from_str(&serde_json::to_string(&env).unwrap()).unwrap();
        assert_eq!(stored, env);
        assert_eq!(&stored.decode().unwrap(), e, "{}", e.type_name());
        assert_eq!(stored.schema, e.schema());
    }
}

fn blank_user_update() -> UserUpdated {
    UserUpdated {
        user_id: String::new(),
        username: None,
        role: None,
        password: None,
        legacy_password_hash: None,
    }
}

#[test]
fn key_updated_distinguishes_absent_from_null() {
    let cleared = KeyUpdated {
        key_id: "k".into(),
        rate_limit: Some(None),
        ..KeyUpdated::default()
    };
    let untouched = KeyUpdated {
        key_id: "k".into(),
        ..KeyUpdated::default()
    };
    let c = Event::KeyUpdated(cleared.clone()).data();
    let u = Event::KeyUpdated(untouched.clone()).data();
    assert_eq!(c, json!({"key_id": "k", "rate_limit": null}));
    assert_eq!(u, json!({"key_id": "k"}));
    assert_eq!(
        upcast::decode("key.updated", 1, &c).unwrap(),
        Event::KeyUpdated(cleared)
    );
    assert_eq!(
        upcast::decode("key.updated", 1, &u).unwrap(),
        Event::KeyUpdated(untouched)
    );
}

#[test]
fn frozen_key_created_v1_fixture_upcasts_to_the_current_shape() {
    let raw: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/key.created.v1.json")).unwrap();
    // The fixture still parses as the frozen type: the old shape has not drifted.
    let v1: KeyCreatedV1 = serde_json::from_value(raw.clone()).unwrap();
    assert_eq!(
        v1.provider_id.as_deref(),
        Some("prv_01JD0000000000000000000003")
    );

    let Event::KeyCreated(k) = upcast::decode("key.created", 1, &raw).unwrap() else {
        panic!("wrong type");
    };
    assert_eq!(
        k.provider_ids,
        vec!["prv_01JD0000000000000000000003".to_string()]
    );
    assert_eq!(
        k.expires_at,
        Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap()
    );
    assert_eq!(k.scopes, vec![Scope::Chat]);
    assert_eq!(
        k.rate_limit,
        Some(RateLimit {
            requests_per_minute: 60,
            burst: 10
        })
    );
    assert_eq!(k.quota, None);
    assert!(k.metadata.is_empty());
    assert_eq!(k.ip_allowlist, vec!["10.0.0.0/8".to_string()]);
}

#[test]
fn a_stored_v1_event_keeps_verifying_after_upcasting() {
    let raw: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/key.created.v1.json")).unwrap();
    let ne = NewEvent {
        event_id: Ulid::nil(),
        stream: "key:key_01JD0000000000000000000001".into(),
        expected: ExpectedVersion::NoStream,
        event_type: "key.created".into(),
        schema: 1,
        occurred_at: t(0, 0),
        actor: "system".into(),
        request_id: None,
        data: raw,
    };
    let env = ne.seal(1, 1, Hash32::ZERO);
    assert!(chain::verify([&env]).is_ok());
    assert!(matches!(env.decode(), Ok(Event::KeyCreated(_))));
}

#[test]
fn unknown_types_and_future_schemas_are_refused() {
    assert_eq!(
        upcast::decode("key.teleported", 1, &json!({})),
        Err(DecodeError::UnknownType("key.teleported".into()))
    );
    assert!(matches!(
        upcast::decode("key.deleted", 9, &json!({"key_id": "k"})),
        Err(DecodeError::FutureSchema {
            schema: 9,
            known: 1,
            ..
        })
    ));
    assert!(matches!(
        upcast::decode("key.deleted", 1, &json!({"nope": 1})),
        Err(DecodeError::Payload { .. })
    ));
}

#[test]
fn schema_1_user_events_upcast_their_plaintext_hash_and_never_write_it_again() {
    let phc = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA";
    let created =
        json!({"user_id": "usr_1", "username": "alice", "role": "user", "password_hash": phc});
    let Event::UserCreated(u) = upcast::decode("user.created", 1, &created).unwrap() else {
        panic!("wrong type");
    };
    assert_eq!(u.legacy_password_hash, Some(LegacyPasswordHash(phc.into())));
    assert_eq!(u.password, None);
    // Re-encoding the upcast event (what a new event would carry) drops the hash.
    let again = Event::UserCreated(u.clone()).data();
    assert!(!again.to_string().contains("argon2"), "{again}");
    assert!(!format!("{u:?}").contains("argon2"));
    let updated = json!({"user_id": "usr_1", "role": "admin", "password_hash": phc});
    let Event::UserUpdated(u) = upcast::decode("user.updated", 1, &updated).unwrap() else {
        panic!("wrong type");
    };
    assert_eq!(u.legacy_password_hash, Some(LegacyPasswordHash(phc.into())));
    assert_eq!(u.role, Some(Role::Admin));
    // Without a hash, a schema 1 row upcasts to no password.
    let plain = json!({"user_id": "usr_2", "username": "bob", "role": "user"});
    let Event::UserCreated(u) = upcast::decode("user.created", 1, &plain).unwrap() else {
        panic!("wrong type");
    };
    assert_eq!((u.password, u.legacy_password_hash), (None, None));
}

#[test]
fn the_readable_form_redacts_a_schema_1_hash_and_leaves_everything_else_as_stored() {
    let phc = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA";
    let mut ne = new_event(&user_created(1), 1);
    ne.schema = 1;
    ne.data["password_hash"] = json!(phc);
    let old = ne.seal(1, 1, Hash32::ZERO);
    let shown = upcast::readable(&old);
    assert_eq!(shown.data["password_hash"], upcast::REDACTED);
    assert_eq!(shown.hash, old.hash);
    assert!(!serde_json::to_string(&*shown).unwrap().contains("argon2"));
    // The stored envelope still verifies; the redacted copy does not, by design.
    assert!(chain::verify([&old]).is_ok());
    assert!(chain::verify([&*shown]).is_err());
    // A current event is returned as it is.
    let sealed = Event::UserCreated(UserCreated {
        password: Some(SealedPassword {
            ciphertext: "00ff".into(),
            nonce: "00".repeat(12),
            keyring_version: 1,
        }),
        ..match user_created(2) {
            Event::UserCreated(u) => u,
            _ => unreachable!(),
        }
    });
    let new = new_event(&sealed, 2).seal(2, 1, old.hash);
    assert_eq!(new.schema, 2);
    assert!(matches!(
        upcast::readable(&new),
        std::borrow::Cow::Borrowed(_)
    ));
}
