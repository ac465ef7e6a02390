use keyward_events::*;
use keyward_projections::{ApplyError, State};
use serde_json::json;

use crate::support::*;

fn two_events() -> Log {
    let mut log = Log::new();
    log.push(at(1, 0), created("key_a"));
    log.push(at(1, 1), ok("key_a"));
    log
}

#[test]
fn an_empty_state_has_a_zero_head() {
    let s = State::new();
    assert_eq!(
        s.head,
        Head {
            seq: 0,
            hash: Hash32::ZERO
        }
    );
    assert!(s.keys.is_empty() && s.usage.is_empty() && s.providers.is_empty());
}

#[test]
fn the_head_follows_the_last_applied_event() {
    let log = two_events();
    let mut s = State::new();
    s.apply(&log.envs[0]).unwrap();
    assert_eq!(
        s.head,
        Head {
            seq: 1,
            hash: log.envs[0].hash
        }
    );
    s.apply(&log.envs[1]).unwrap();
    assert_eq!(
        s.head,
        Head {
            seq: 2,
            hash: log.envs[1].hash
        }
    );
}

#[test]
fn an_event_out_of_order_is_refused_and_changes_nothing() {
    let mut log = two_events();
    log.push(at(1, 2), deleted("key_a"));
    // (given applied, when applying, then expected)
    let cases = [
        (0, 1, 1),
        (0, 2, 1),
        (1, 2, 2),
        (1, 0, 2),
        (2, 0, 3),
        (2, 1, 3),
    ];
    for (applied, when, expected) in cases {
        let mut s = State::new();
        s.apply_all(&log.envs[..applied]).unwrap();
        let before = s.clone();
        let err = s.apply(&log.envs[when]).unwrap_err();
        assert_eq!(
            err,
            ApplyError::OutOfOrder {
                expected,
                got: log.envs[when].seq,
            }
        );
        assert_eq!(s, before);
    }
}

#[test]
fn an_undecodable_payload_is_refused_with_its_seq() {
    // (event type, schema, payload, then the decode error)
    let cases = [
        (
            "key.frobbed",
            1,
            json!({}),
            DecodeError::UnknownType("key.frobbed".into()),
        ),
        (
            "key.deleted",
            7,
            json!({"key_id": "key_a"}),
            DecodeError::FutureSchema {
                event_type: "key.deleted".into(),
                schema: 7,
                known: 1,
            },
        ),
    ];
    for (event_type, schema, data, want) in cases {
        let mut log = two_events();
        log.push_new(raw(
            &key_stream("key_a"),
            event_type,
            schema,
            at(1, 2),
            data,
        ));
        let mut s = State::new();
        s.apply_all(&log.envs[..2]).unwrap();
        let before = s.clone();
        assert_eq!(
            s.apply(&log.envs[2]),
            Err(ApplyError::Decode {
                seq: 3,
                source: want
            })
        );
        assert_eq!(s, before);
        assert_eq!(s.head.seq, 2);
    }

    let mut log = two_events();
    log.push_new(raw(
        &key_stream("key_a"),
        "key.expired",
        1,
        at(1, 2),
        json!({"key_id": 5}),
    ));
    let err = log
        .envs
        .iter()
        .try_fold(State::new(), |mut s, e| s.apply(e).map(|()| s));
    match err {
        Err(ApplyError::Decode {
            seq: 3,
            source: DecodeError::Payload { event_type, .. },
        }) => assert_eq!(event_type, "key.expired"),
        other => panic!("expected a payload error at seq 3, got {other:?}"),
    }
}

#[test]
fn the_decode_error_names_the_seq_in_its_message() {
    let err = ApplyError::Decode {
        seq: 42,
        source: DecodeError::UnknownType("x.y".into()),
    };
    assert_eq!(err.to_string(), "seq 42: unknown event type \"x.y\"");
    assert!(std::error::Error::source(&err).is_some());
    assert_eq!(
        ApplyError::OutOfOrder {
            expected: 3,
            got: 5
        }
        .to_string(),
        "event seq 5 applied out of order: expected seq 3"
    );
}

#[test]
fn apply_decoded_skips_the_contiguity_check_but_moves_the_head() {
    let mut log = two_events();
    log.push(at(2, 0), deleted("key_a"));
    let mut s = State::new();
    s.apply(&log.envs[0]).unwrap();
    let env = &log.envs[2];
    s.apply_decoded(env, &env.decode().unwrap());
    assert_eq!(
        s.head,
        Head {
            seq: 3,
            hash: env.hash
        }
    );
    assert!(s.keys.get("key_a").unwrap().is_deleted());
    assert_eq!(s.usage.totals("key_a"), None);
    assert!(matches!(
        s.apply(&log.envs[1]),
        Err(ApplyError::OutOfOrder {
            expected: 4,
            got: 2
        })
    ));
}

#[test]
fn every_projection_is_fed_from_one_log() {
    let s = given([
        (at(1, 0), user_created(ALICE, "alice", Role::User)),
        (at(1, 1), provider_created(OPENAI, "OpenAI")),
        (at(1, 2), created("key_a")),
        (at(1, 3), used("key_a", UsageOutcome::Success, 3, 4)),
    ]);
    assert_eq!(s.users.len(), 1);
    assert_eq!(s.providers.len(), 1);
    assert_eq!(s.keys.len(), 1);
    assert_eq!(s.usage.totals("key_a").unwrap().completion_tokens, 4);
    assert_eq!(s.head.seq, 4);
    // The owner and the provider resolve across projections.
    let k = s.keys.get("key_a").unwrap();
    assert_eq!(s.users.get(k.owner_id()).unwrap().username, "alice");
    assert_eq!(
        s.providers
            .get(k.provider_ids().next().unwrap())
            .unwrap()
            .name,
        "OpenAI"
    );
}
