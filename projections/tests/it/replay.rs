use keyward_events::*;
use keyward_projections::{ApplyError, AsOf, KeyStatus, Replayer, State, replay};

use crate::support::*;

/// A small history of every kind of event, in increasing time.
fn history() -> Log {
    let mut log = Log::new();
    log.push(at(1, 0), user_created(ALICE, "alice", Role::User));
    log.push(at(1, 1), provider_created(OPENAI, "OpenAI"));
    log.push(at(1, 2), created("key_a"));
    log.push(at(2, 0), used("key_a", UsageOutcome::Success, 5, 5));
    log.push(at(3, 0), denied("key_a", DenyReason::Model, 1));
    log.push(at(4, 0), rotated("key_a", "key_b", at(6, 0)));
    log.push(at(4, 0), created("key_b"));
    log.push(at(5, 0), ok("key_a"));
    log.push(at(6, 0), expired("key_a", ExpireReason::Rotated));
    log.push(at(7, 0), deleted("key_a"));
    log.push(
        at(8, 0),
        Event::UserDisabled(UserDisabled {
            user_id: ALICE.into(),
        }),
    );
    log
}

fn prefix(log: &Log, n: usize) -> State {
    let mut s = State::new();
    s.apply_all(&log.envs[..n]).unwrap();
    s
}

#[test]
fn as_of_a_seq_is_the_state_after_that_prefix() {
    let log = history();
    for n in 0..=log.envs.len() {
        let s = replay(&log.envs, AsOf::Seq(n as u64)).unwrap();
        assert_eq!(s, prefix(&log, n), "seq {n}");
        assert_eq!(s.head.seq, n as u64);
    }
    let past_the_end = replay(&log.envs, AsOf::Seq(1000)).unwrap();
    assert_eq!(past_the_end, log.state());
    assert!(past_the_end.keys.get("key_a").unwrap().is_deleted());
}

#[test]
fn as_of_each_events_time_is_the_state_after_it() {
    let log = history();
    for (i, env) in log.envs.iter().enumerate() {
        // Two events share at(4, 0); both are in as of that time.
        let n = log
            .envs
            .iter()
            .rposition(|e| e.occurred_at == env.occurred_at)
            .unwrap()
            + 1;
        let s = replay(&log.envs, AsOf::Time(env.occurred_at)).unwrap();
        assert_eq!(s, prefix(&log, n), "event {i}");
    }
    let before_all = replay(
        &log.envs,
        AsOf::Time(at(1, 0) - chrono::Duration::seconds(1)),
    );
    assert_eq!(before_all.unwrap(), State::new());
}

#[test]
fn as_of_a_time_between_two_events_excludes_the_later_one() {
    let log = history();
    let s = replay(&log.envs, AsOf::Time(at(6, 12))).unwrap();
    assert_eq!(
        s.head,
        Head {
            seq: 9,
            hash: log.envs[8].hash
        }
    );
    let k = s.keys.get("key_a").unwrap();
    assert_eq!(k.expired(), Some((ExpireReason::Rotated, at(6, 0))));
    assert_eq!(k.deleted_at(), None);
    assert_eq!(k.status(at(6, 12)), KeyStatus::Expired);
    assert!(!s.users.get(ALICE).unwrap().disabled);

    let t = s.usage.totals("key_a").unwrap();
    assert_eq!((t.requests, t.denied, t.grace_requests), (2, 2, 1));
}

#[test]
fn as_of_a_time_filters_rather_than_stopping_at_the_first_later_event() {
    let mut log = Log::new();
    log.push(at(1, 10), created("key_a"));
    log.push(minutes(at(1, 10), 5), ok("key_a"));
    // Stamped earlier, committed later.
    log.push(minutes(at(1, 10), 3), ok("key_b"));
    log.push(minutes(at(1, 10), 6), ok("key_b"));

    let s = replay(&log.envs, AsOf::Time(minutes(at(1, 10), 4))).unwrap();
    assert_eq!(
        s.head,
        Head {
            seq: 3,
            hash: log.envs[2].hash
        }
    );
    assert_eq!(s.keys.len(), 1);
    assert_eq!(s.usage.totals("key_a"), None);
    assert_eq!(s.usage.totals("key_b").unwrap().requests, 1);
}

#[test]
fn a_gap_in_the_input_is_refused() {
    let log = history();
    let gappy: Vec<&Envelope> = log.envs.iter().filter(|e| e.seq != 4).collect();
    for as_of in [AsOf::Seq(8), AsOf::Time(at(9, 0))] {
        assert_eq!(
            replay(gappy.iter().copied(), as_of),
            Err(ApplyError::OutOfOrder {
                expected: 4,
                got: 5
            })
        );
    }
    // A gap past the point asked for is never read.
    assert_eq!(
        replay(gappy.iter().copied(), AsOf::Seq(3)).unwrap(),
        prefix(&log, 3)
    );
}

#[test]
fn an_undecodable_event_fails_only_if_it_is_replayed() {
    let mut log = Log::new();
    log.push(at(1, 0), created("key_a"));
    log.push(at(2, 0), ok("key_a"));
    log.push_new(raw(
        "key:key_a",
        "key.unknown",
        1,
        at(3, 0),
        serde_json::json!({}),
    ));

    assert_eq!(replay(&log.envs, AsOf::Time(at(2, 0))).unwrap().head.seq, 2);
    assert_eq!(replay(&log.envs, AsOf::Seq(2)).unwrap().head.seq, 2);
    assert!(matches!(
        replay(&log.envs, AsOf::Time(at(3, 0))),
        Err(ApplyError::Decode { seq: 3, .. })
    ));
}

#[test]
fn a_replayer_streams_and_says_when_to_stop() {
    let log = history();
    let mut r = Replayer::new(AsOf::Seq(3));
    let more: Vec<bool> = log.envs[..3].iter().map(|e| r.push(e).unwrap()).collect();
    assert_eq!(more, [true, true, false]);
    assert_eq!(r.seen(), 3);
    assert_eq!(r.state().keys.len(), 1);
    assert_eq!(r.finish(), prefix(&log, 3));

    let mut r = Replayer::new(AsOf::Time(at(2, 0)));
    for e in &log.envs {
        assert!(r.push(e).unwrap());
    }
    assert_eq!(r.seen(), log.envs.len() as u64);
    assert_eq!(r.finish(), prefix(&log, 4));
}
