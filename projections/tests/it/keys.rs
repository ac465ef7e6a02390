use std::sync::Arc;

use keyward_events::time::Timestamp;
use keyward_events::*;
use keyward_projections::{KeyRecord, KeyStatus, State};
use serde_json::json;

use crate::support::*;

#[test]
fn a_created_key_is_found_by_id_and_by_secret_hash() {
    let mut log = Log::new();
    log.push_as(at(1, 9), ALICE, created("key_a"));
    let s = log.state();

    let k = s.keys.get("key_a").unwrap();
    assert_eq!(k.key_id(), "key_a");
    assert_eq!(k.name(), "key_a name");
    assert_eq!(k.owner_id(), ALICE);
    assert!(k.provider_ids().eq([OPENAI]));
    assert_eq!(k.secret_hash, secret_hash("key_a"));
    assert_eq!(k.prefix(), "kw_AbCd");
    assert_eq!(k.expires_at, at(31, 0));
    assert_eq!(k.scopes(), vec![Scope::Chat]);
    assert_eq!(k.models(), vec!["gpt-4o".to_owned()]);
    assert_eq!(k.rate_limit.map(|r| r.requests_per_minute), Some(60));
    assert_eq!(k.quota().and_then(|q| q.requests_per_day), Some(1000));
    assert_eq!(k.created_at, at(1, 9));
    assert_eq!(k.updated_at, at(1, 9));
    assert_eq!(k.created_by(), ALICE);
    assert_eq!(k.version, 1);
    assert_eq!(k.rotated_from(), None);
    assert_eq!(k.status(at(2, 0)), KeyStatus::Active);

    let by_hash = s.keys.by_secret_hash(&secret_hash("key_a")).unwrap();
    assert!(Arc::ptr_eq(k, by_hash));
    assert!(s.keys.by_secret_hash(&secret_hash("key_b")).is_none());
    assert_eq!((s.keys.len(), s.keys.is_empty()), (1, false));
}

#[test]
fn a_secret_hash_that_does_not_parse_is_stored_as_zero_and_not_indexed() {
    let mut e = key_created("key_a");
    e.secret_hash = "NOT-HEX".into();
    let s = given([(at(1, 9), Event::KeyCreated(e))]);

    assert_eq!(s.keys.get("key_a").unwrap().secret_hash, Hash32::ZERO);
    assert!(s.keys.by_secret_hash(&Hash32::ZERO).is_none());
}

type Then = Box<dyn Fn(&KeyRecord)>;

#[test]
fn an_update_changes_only_the_fields_it_carries() {
    let quota = Quota {
        tokens_per_month: Some(5_000_000),
        ..Quota::default()
    };
    // (when, then)
    let cases: Vec<(KeyUpdated, Then)> = vec![
        (
            KeyUpdated {
                key_id: "key_a".into(),
                name: Some("renamed".into()),
                ..KeyUpdated::default()
            },
            Box::new(|k| {
                assert_eq!(k.name(), "renamed");
                assert!(k.rate_limit.is_some());
                assert!(k.quota().is_some());
                assert_eq!(k.scopes(), vec![Scope::Chat]);
            }),
        ),
        (
            // null clears the limit
            KeyUpdated {
                key_id: "key_a".into(),
                rate_limit: Some(None),
                ..KeyUpdated::default()
            },
            Box::new(|k| {
                assert_eq!(k.rate_limit, None);
                assert_eq!(k.quota().and_then(|q| q.requests_per_day), Some(1000));
                assert_eq!(k.name(), "key_a name");
            }),
        ),
        (
            KeyUpdated {
                key_id: "key_a".into(),
                quota: Some(Some(quota)),
                expires_at: Some(at(20, 0)),
                scopes: Some(vec![Scope::Read, Scope::Full]),
                models: Some(vec![]),
                ip_allowlist: Some(vec!["10.0.0.0/8".into()]),
                metadata: Some(json!({"team": "ml"}).as_object().unwrap().clone()),
                ..KeyUpdated::default()
            },
            Box::new(move |k| {
                assert_eq!(k.quota(), Some(quota));
                assert_eq!(k.expires_at, at(20, 0));
                assert_eq!(k.scopes(), vec![Scope::Read, Scope::Full]);
                assert!(k.models().is_empty());
                assert_eq!(k.ip_allowlist(), vec!["10.0.0.0/8".to_owned()]);
                assert_eq!(k.metadata().get("team"), Some(&json!("ml")));
                assert!(k.rate_limit.is_some());
            }),
        ),
    ];
    for (when, then) in cases {
        let s = given([(at(1, 9), created("key_a")), (at(2, 9), updated(when))]);
        let k = s.keys.get("key_a").unwrap();
        then(k);
        assert_eq!(k.version, 2);
        assert_eq!(k.updated_at, at(2, 9));
        assert_eq!(k.created_at, at(1, 9));
    }
}

#[test]
fn an_update_sent_as_json_null_clears_the_rate_limit() {
    let s = given([(at(1, 9), created("key_a"))]);
    let mut log = Log::new();
    log.push(at(1, 9), created("key_a"));
    log.push_new(raw(
        &key_stream("key_a"),
        "key.updated",
        1,
        at(2, 9),
        json!({"key_id": "key_a", "rate_limit": null}),
    ));
    let after = log.state();
    assert!(s.keys.get("key_a").unwrap().rate_limit.is_some());
    assert_eq!(after.keys.get("key_a").unwrap().rate_limit, None);
    assert!(after.keys.get("key_a").unwrap().quota().is_some());
}

type Given = Vec<(Timestamp, Event)>;

#[test]
fn status_follows_expiry_rotation_and_deletion() {
    // (given after key_a's creation on Mar 1, now, then)
    let cases: Vec<(&str, Given, Timestamp, KeyStatus)> = vec![
        ("fresh", vec![], at(10, 0), KeyStatus::Active),
        (
            "a second before expires_at",
            vec![],
            minutes(at(31, 0), -1),
            KeyStatus::Active,
        ),
        (
            "at expires_at, by the clock",
            vec![],
            at(31, 0),
            KeyStatus::Expired,
        ),
        (
            "expired by hand",
            vec![(at(5, 0), expired("key_a", ExpireReason::Manual))],
            at(6, 0),
            KeyStatus::Expired,
        ),
        (
            "rotated, within grace",
            vec![(at(10, 0), rotated("key_a", "key_b", at(12, 0)))],
            at(11, 0),
            KeyStatus::Grace,
        ),
        (
            "rotated, at grace_until",
            vec![(at(10, 0), rotated("key_a", "key_b", at(12, 0)))],
            at(12, 0),
            KeyStatus::Expired,
        ),
        (
            "rotated, grace ended and recorded",
            vec![
                (at(10, 0), rotated("key_a", "key_b", at(12, 0))),
                (at(12, 0), expired("key_a", ExpireReason::Rotated)),
            ],
            at(11, 0),
            KeyStatus::Expired,
        ),
        (
            "rotated with a grace past expires_at",
            vec![(at(30, 0), rotated("key_a", "key_b", at_ymd(2026, 4, 5, 0)))],
            at_ymd(2026, 4, 1, 0),
            KeyStatus::Expired,
        ),
        (
            "deleted",
            vec![(at(5, 0), deleted("key_a"))],
            at(6, 0),
            KeyStatus::Deleted,
        ),
        (
            "deleted after expiring",
            vec![
                (at(5, 0), expired("key_a", ExpireReason::Manual)),
                (at(6, 0), deleted("key_a")),
            ],
            at(7, 0),
            KeyStatus::Deleted,
        ),
    ];
    for (name, events, now, want) in cases {
        let s = given(std::iter::once((at(1, 0), created("key_a"))).chain(events));
        assert_eq!(s.keys.get("key_a").unwrap().status(now), want, "{name}");
    }
}

#[test]
fn a_manual_expiry_records_its_reason_and_time() {
    let s = given([
        (at(1, 0), created("key_a")),
        (at(5, 0), expired("key_a", ExpireReason::Manual)),
        (at(6, 0), expired("key_a", ExpireReason::Scheduled)),
    ]);
    let k = s.keys.get("key_a").unwrap();
    assert_eq!(k.expired(), Some((ExpireReason::Manual, at(5, 0))));
    assert_eq!(k.status(at(2, 0)), KeyStatus::Expired);
    assert_eq!(k.version, 3);
}

#[test]
fn a_key_ends_at_its_expiry_its_expiry_event_or_the_end_of_its_grace() {
    let s = given([
        (at(1, 0), created("key_a")),
        (at(1, 0), created("key_b")),
        (at(1, 0), created("key_c")),
        (at(5, 0), expired("key_b", ExpireReason::Manual)),
        (at(10, 0), rotated("key_c", "key_d", at(12, 0))),
    ]);
    let ends = |id: &str| s.keys.get(id).unwrap().ends_at();
    assert_eq!(ends("key_a"), at(31, 0));
    assert_eq!(ends("key_b"), at(5, 0));
    assert_eq!(ends("key_c"), at(12, 0));
}

#[test]
fn rotation_links_the_old_key_to_the_new_one() {
    let mut new_key = key_created("key_b");
    new_key.rotated_from = Some("key_a".into());
    let s = given([
        (at(1, 0), created("key_a")),
        (at(10, 0), rotated("key_a", "key_b", at(12, 0))),
        (at(10, 0), Event::KeyCreated(new_key)),
    ]);

    let old = s.keys.get("key_a").unwrap();
    assert_eq!(old.rotated_to(), Some("key_b"));
    assert_eq!(old.grace_until(), Some(at(12, 0)));
    assert_eq!(old.version, 2);
    assert_eq!(old.status(minutes(at(12, 0), -1)), KeyStatus::Grace);
    assert_eq!(old.status(at(12, 0)), KeyStatus::Expired);

    let new = s.keys.get("key_b").unwrap();
    assert_eq!(new.rotated_from(), Some("key_a"));
    assert_eq!(new.rotated_to(), None);
    assert_eq!(new.version, 1);
    assert_eq!(new.status(at(11, 0)), KeyStatus::Active);
    assert_eq!(new.status(at(13, 0)), KeyStatus::Active);

    // Both secrets still resolve: the old one must keep working through the grace.
    assert_eq!(
        s.keys
            .by_secret_hash(&secret_hash("key_a"))
            .unwrap()
            .key_id(),
        "key_a"
    );
    assert_eq!(
        s.keys
            .by_secret_hash(&secret_hash("key_b"))
            .unwrap()
            .key_id(),
        "key_b"
    );
}

#[test]
fn a_deleted_key_stays_in_the_table_and_the_index() {
    let s = given([
        (at(1, 0), created("key_a")),
        (at(1, 1), created("key_b")),
        (at(3, 0), deleted("key_a")),
    ]);
    let k = s.keys.get("key_a").unwrap();
    assert!(k.is_deleted());
    assert_eq!(k.deleted_at(), Some(at(3, 0)));
    assert_eq!(k.status(at(3, 1)), KeyStatus::Deleted);
    assert_eq!(k.version, 2);
    assert_eq!(s.keys.len(), 2);
    assert_eq!(
        s.keys
            .by_secret_hash(&secret_hash("key_a"))
            .unwrap()
            .key_id(),
        "key_a"
    );
    assert!(!s.keys.get("key_b").unwrap().is_deleted());
}

#[test]
fn version_counts_only_events_on_the_keys_own_stream() {
    let mut log = Log::new();
    log.push(at(1, 0), created("key_a"));
    log.push(at(1, 1), ok("key_a"));
    log.push(at(1, 2), denied("key_a", DenyReason::Model, 0));
    log.push(at(1, 3), ok("key_a"));
    let s = log.state();
    let k = s.keys.get("key_a").unwrap();
    assert_eq!(
        log.envs[3].stream_version, 3,
        "usage stream has its own versions"
    );
    assert_eq!(k.version, 1);
    assert_eq!(k.updated_at, at(1, 0));

    log.push(
        at(2, 0),
        updated(KeyUpdated {
            key_id: "key_a".into(),
            name: Some("x".into()),
            ..KeyUpdated::default()
        }),
    );
    log.push(at(2, 1), ok("key_a"));
    log.push(at(2, 2), rotated("key_a", "key_b", at(9, 0)));
    let s = log.state();
    let k = s.keys.get("key_a").unwrap();
    assert_eq!(k.version, 3);
    assert_eq!(k.updated_at, at(2, 2));
    assert_eq!(s.head.seq, 7);
}

#[test]
fn events_for_unknown_keys_are_ignored() {
    let s = given([
        (at(1, 0), created("key_a")),
        (at(2, 0), expired("key_nope", ExpireReason::Manual)),
        (at(2, 1), rotated("key_nope", "key_a", at(3, 0))),
        (at(2, 2), deleted("key_nope")),
        (
            at(2, 3),
            updated(KeyUpdated {
                key_id: "key_nope".into(),
                name: Some("ghost".into()),
                ..KeyUpdated::default()
            }),
        ),
    ]);
    assert_eq!(s.keys.len(), 1);
    assert!(s.keys.get("key_nope").is_none());
    assert_eq!(s.keys.get("key_a").unwrap().version, 1);
    assert_eq!(s.head.seq, 5);
}

#[test]
fn keys_are_listed_by_owner_and_by_provider() {
    let mut bobs = key_created("key_bob");
    bobs.owner_id = "usr_bob".into();
    bobs.provider_ids = vec!["prv_anthropic".into(), OPENAI.into()];
    let mut other = key_created("key_c");
    other.provider_ids = vec!["prv_groq".into()];
    let s = given([
        (at(1, 0), created("key_a")),
        (at(1, 1), Event::KeyCreated(bobs)),
        (at(1, 2), Event::KeyCreated(other)),
    ]);

    let ids = |it: &mut dyn Iterator<Item = &Arc<KeyRecord>>| {
        let mut v: Vec<String> = it.map(|k| k.key_id().to_owned()).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&mut s.keys.by_owner(ALICE)), ["key_a", "key_c"]);
    assert_eq!(ids(&mut s.keys.by_owner("usr_bob")), ["key_bob"]);
    assert_eq!(
        ids(&mut s.keys.using_provider(OPENAI)),
        ["key_a", "key_bob"]
    );
    assert_eq!(ids(&mut s.keys.using_provider("prv_groq")), ["key_c"]);
    assert!(s.keys.using_provider("prv_none").next().is_none());
    assert_eq!(ids(&mut s.keys.iter()), ["key_a", "key_bob", "key_c"]);
}

#[test]
fn a_reader_holding_a_record_keeps_its_version_across_an_update() {
    let mut log = Log::new();
    log.push(at(1, 0), created("key_a"));
    let mut s = log.state();
    let before = Arc::clone(s.keys.get("key_a").unwrap());

    log.push(at(2, 0), deleted("key_a"));
    s.apply(&log.envs[1]).unwrap();

    assert!(!before.is_deleted());
    assert_eq!(before.version, 1);
    let now = s.keys.get("key_a").unwrap();
    assert!(now.is_deleted());
    assert!(Arc::ptr_eq(
        now,
        s.keys.by_secret_hash(&secret_hash("key_a")).unwrap()
    ));
}

#[test]
fn a_schema_1_key_created_is_upcast_to_a_provider_list() {
    let mut log = Log::new();
    let mut ne = raw(
        &key_stream("key_old"),
        "key.created",
        1,
        at(1, 0),
        json!({
            "key_id": "key_old",
            "name": "legacy",
            "owner_id": ALICE,
            "provider_id": OPENAI,
            "secret_hash": secret_hash("key_old").to_hex(),
            "prefix": "kw_Old",
            "expires_at": "2026-03-31T00:00:00.000000Z",
            "scopes": ["chat"],
        }),
    );
    ne.actor = "system".into();
    log.push_new(ne);
    let s: State = log.state();
    let k = s.keys.get("key_old").unwrap();
    assert!(k.provider_ids().eq([OPENAI]));
    assert_eq!(k.quota(), None);
    assert!(k.metadata().is_empty());
    assert_eq!(k.created_by(), "system");
    assert_eq!(
        s.keys
            .by_secret_hash(&secret_hash("key_old"))
            .unwrap()
            .name(),
        "legacy"
    );
}
