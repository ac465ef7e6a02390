//! A snapshot taken after any prefix of the log, decoded and then fed the rest of the log,
//! is the state the whole log folds to.

use keyward_events::*;
use keyward_projections::State;
use serde_json::json;

use crate::support::*;

/// Every event type, and every optional field of every record set at some point.
fn rich_log() -> Log {
    let mut log = Log::new();
    log.push(at(1, 0), user_created(ADMIN, "admin", Role::Admin));
    log.push(at(1, 0), user_created(ALICE, "alice", Role::User));
    log.push(
        at(1, 1),
        Event::UserUpdated(UserUpdated {
            user_id: ALICE.into(),
            username: Some("alice2".into()),
            role: Some(Role::Admin),
            password: None,
            legacy_password_hash: None,
        }),
    );
    // A schema 1 row: the snapshot carries both kinds of stored password.
    log.push_new(legacy_password_set(at(1, 1), ALICE, "$argon2id$v=19$new"));
    log.push(at(1, 1), user_created("usr_bob", "alice", Role::User));
    log.push(
        at(1, 2),
        Event::UserDisabled(UserDisabled {
            user_id: "usr_bob".into(),
        }),
    );
    log.push(at(1, 2), provider_created(OPENAI, "openai"));
    log.push(
        at(1, 3),
        Event::ProviderUpdated(ProviderUpdated {
            provider_id: OPENAI.into(),
            config: Some(
                json!({"api_version": "2024-10-21", "n": 1.5, "nested": {"a": [1, null]}})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
            ..ProviderUpdated::default()
        }),
    );
    log.push(
        at(1, 3),
        Event::ProviderKeyUpdated(ProviderKeyUpdated {
            provider_id: OPENAI.into(),
            ciphertext: "00ff".into(),
            nonce: "0102".into(),
            keyring_version: 3,
            fingerprint: "fp".into(),
            last4: "abcd".into(),
        }),
    );
    log.push(
        at(1, 4),
        Event::ProviderVerified(ProviderVerified {
            provider_id: OPENAI.into(),
            ok: false,
            status: Some(401),
            detail: Some("bad key".into()),
        }),
    );
    log.push(at(1, 4), provider_created("prv_old", "old"));
    log.push(
        at(1, 5),
        Event::ProviderDeleted(ProviderDeleted {
            provider_id: "prv_old".into(),
            forced: true,
        }),
    );
    let mut k = key_created("key_a");
    k.metadata = json!({"team": "x", "cost": 12})
        .as_object()
        .unwrap()
        .clone();
    k.ip_allowlist = vec!["10.0.0.0/8".into()];
    k.scopes = vec![Scope::Read, Scope::Chat, Scope::Full];
    k.quota = Some(Quota {
        requests_per_day: Some(1),
        requests_per_month: Some(2),
        tokens_per_day: Some(3),
        tokens_per_month: Some(4),
    });
    log.push(at(2, 0), Event::KeyCreated(k));
    log.push(at(2, 1), ok("key_a"));
    log.push(at(2, 1), used("key_a", UsageOutcome::UpstreamError, 5, 7));
    log.push(at(3, 1), used("key_a", UsageOutcome::Success, 11, 13));
    log.push(at(3, 2), denied("key_a", DenyReason::RateLimit, 4));
    log.push(
        at(3, 3),
        updated(KeyUpdated {
            key_id: "key_a".into(),
            name: Some("renamed".into()),
            rate_limit: Some(None),
            ..KeyUpdated::default()
        }),
    );
    let mut b = key_created("key_b");
    b.rotated_from = Some("key_a".into());
    log.push(at(4, 0), Event::KeyCreated(b));
    log.push(at(4, 0), rotated("key_a", "key_b", at(6, 0)));
    log.push(at(5, 0), ok("key_a"));
    log.push(
        at(5, 1),
        Event::KeyNoticeSent(KeyNoticeSent {
            key_id: "key_a".into(),
            kind: NoticeKind::GraceInUse,
            ends_at: at(6, 0),
        }),
    );
    log.push(at(6, 0), expired("key_a", ExpireReason::Rotated));
    log.push(at(7, 0), created("key_c"));
    log.push(at(7, 1), deleted("key_c"));
    // A second key with key_c's hash: the first keeps the auth index.
    let mut dup = key_created("key_d");
    dup.secret_hash = secret_hash("key_b").to_hex();
    log.push(at(7, 2), Event::KeyCreated(dup));
    let mut bad = key_created("key_e");
    bad.secret_hash = "not hex".into();
    log.push(at(7, 3), Event::KeyCreated(bad));
    // Models and quota set at creation, then cleared: no settings left.
    log.push(at(7, 4), created("key_f"));
    log.push(
        at(7, 5),
        updated(KeyUpdated {
            key_id: "key_f".into(),
            models: Some(vec![]),
            quota: Some(None),
            ..KeyUpdated::default()
        }),
    );
    log.push(at_ymd(2026, 4, 2, 0), ok("key_b"));
    log
}

#[test]
fn a_snapshot_at_any_seq_plus_the_rest_of_the_log_is_the_full_fold() {
    let log = rich_log();
    let full = log.state();
    assert!(full.keys.by_secret_hash(&secret_hash("key_b")).is_some());
    for cut in 0..=log.envs.len() {
        let mut prefix = State::new();
        prefix.apply_all(&log.envs[..cut]).unwrap();
        let bytes = prefix.to_snapshot();
        let mut loaded = State::from_snapshot(&bytes).unwrap();
        assert_eq!(loaded, prefix, "the image after seq {cut}");
        loaded.apply_all(&log.envs[cut..]).unwrap();
        assert_eq!(loaded, full, "snapshot at seq {cut}, then the rest");
        // Same answers from the indexes, not just equal records.
        assert_eq!(
            loaded
                .keys
                .by_secret_hash(&secret_hash("key_b"))
                .map(|k| k.key_id().to_owned()),
            Some("key_b".to_owned())
        );
        assert_eq!(
            loaded.users.by_username("alice").map(|u| u.user_id.clone()),
            full.users.by_username("alice").map(|u| u.user_id.clone())
        );
        assert_eq!(loaded.head, full.head);
    }
}

#[test]
fn a_snapshot_carries_usage_days_and_months() {
    let log = rich_log();
    let full = log.state();
    let loaded = State::from_snapshot(&full.to_snapshot()).unwrap();
    let day = chrono::NaiveDate::from_ymd_opt(2026, 3, 2).unwrap();
    assert_eq!(loaded.usage.day("key_a", day), full.usage.day("key_a", day));
    assert_eq!(loaded.usage.day("key_a", day).requests, 2);
    assert_eq!(loaded.usage.month("key_b", 2026, 4).requests, 1);
    assert_eq!(
        loaded.usage.totals("key_a").unwrap().grace_requests,
        full.usage.totals("key_a").unwrap().grace_requests
    );
}
