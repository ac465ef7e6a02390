use chrono::NaiveDate;
use keyward_events::*;
use keyward_projections::{DayCounters, UsageTotals};

use crate::support::*;

fn date(month: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, month, day).unwrap()
}

#[test]
fn requests_errors_tokens_and_last_use_are_totalled() {
    let s = given([
        (at(1, 0), created("key_a")),
        (at(2, 9), used("key_a", UsageOutcome::Success, 10, 5)),
        (at(2, 10), used("key_a", UsageOutcome::UpstreamError, 3, 0)),
        (
            at(2, 11),
            used("key_a", UsageOutcome::UpstreamTimeout, 0, 0),
        ),
        (at(2, 12), used("key_a", UsageOutcome::Success, 7, 2)),
    ]);
    assert_eq!(
        s.usage.totals("key_a"),
        Some(&UsageTotals {
            requests: 4,
            errors: 2,
            denied: 0,
            prompt_tokens: 20,
            completion_tokens: 7,
            last_used_at: Some(at(2, 12)),
            grace_requests: 0,
            grace_last_used_at: None,
        })
    );
    assert_eq!(s.usage.totals("key_b"), None);
}

#[test]
fn last_use_is_the_latest_time_even_when_seq_order_differs() {
    let s = given([
        (at(2, 10), ok("key_a")),
        (minutes(at(2, 10), -1), ok("key_a")),
    ]);
    assert_eq!(
        s.usage.totals("key_a").unwrap().last_used_at,
        Some(at(2, 10))
    );
}

#[test]
fn a_denial_counts_itself_and_the_ones_it_suppressed() {
    // (given denials, then denied)
    let cases: &[(&[u64], u64)] = &[(&[0], 1), (&[4], 5), (&[0, 4, 10], 17)];
    for (suppressed, want) in cases {
        let s = given(
            suppressed
                .iter()
                .enumerate()
                .map(|(i, n)| (at(3, i as u32), denied("key_a", DenyReason::RateLimit, *n))),
        );
        let t = s.usage.totals("key_a").unwrap();
        assert_eq!(t.denied, *want, "{suppressed:?}");
        assert_eq!(t.requests, 0);
        assert_eq!(t.last_used_at, None);
        assert_eq!(s.usage.day("key_a", date(3, 3)).denied, *want);
        assert_eq!(s.usage.month("key_a", 2026, 3).denied, *want);
    }
}

#[test]
fn days_are_bucketed_by_utc_date() {
    let s = given([
        (at(4, 23), used("key_a", UsageOutcome::Success, 100, 10)),
        (
            minutes(at(4, 23), 59),
            used("key_a", UsageOutcome::ClientClosed, 1, 0),
        ),
        (at(5, 0), used("key_a", UsageOutcome::Success, 50, 5)),
        (at(5, 8), denied("key_a", DenyReason::Quota, 2)),
        (at(5, 9), ok("key_b")),
    ]);
    let mar4 = DayCounters {
        requests: 2,
        errors: 1,
        denied: 0,
        prompt_tokens: 101,
        completion_tokens: 10,
    };
    let mar5 = DayCounters {
        requests: 1,
        errors: 0,
        denied: 3,
        prompt_tokens: 50,
        completion_tokens: 5,
    };
    assert_eq!(
        s.usage.days("key_a"),
        vec![(date(3, 4), mar4), (date(3, 5), mar5)]
    );
    assert_eq!(s.usage.day("key_a", date(3, 4)), mar4);
    assert_eq!(s.usage.day("key_a", date(3, 5)).tokens(), 55);
    assert_eq!(s.usage.day("key_a", date(3, 6)), DayCounters::default());
    assert_eq!(s.usage.day("key_b", date(3, 5)).requests, 1);
    assert_eq!(s.usage.day("key_b", date(3, 4)).requests, 0);
    assert!(s.usage.days("key_zzz").is_empty());
}

#[test]
fn months_add_up_their_days() {
    let s = given([
        (at(1, 0), used("key_a", UsageOutcome::Success, 10, 1)),
        (
            at(31, 23),
            used("key_a", UsageOutcome::UpstreamError, 20, 2),
        ),
        (
            at_ymd(2026, 4, 1, 0),
            used("key_a", UsageOutcome::Success, 40, 4),
        ),
        (
            at_ymd(2026, 4, 15, 0),
            denied("key_a", DenyReason::Quota, 0),
        ),
        (at_ymd(2027, 3, 1, 0), ok("key_a")),
    ]);
    assert_eq!(
        s.usage.month("key_a", 2026, 3),
        DayCounters {
            requests: 2,
            errors: 1,
            denied: 0,
            prompt_tokens: 30,
            completion_tokens: 3,
        }
    );
    assert_eq!(
        s.usage.month("key_a", 2026, 4),
        DayCounters {
            requests: 1,
            errors: 0,
            denied: 1,
            prompt_tokens: 40,
            completion_tokens: 4,
        }
    );
    assert_eq!(s.usage.month("key_a", 2027, 3).requests, 1);
    assert_eq!(s.usage.month("key_a", 2026, 5), DayCounters::default());
    assert_eq!(s.usage.month("key_b", 2026, 3), DayCounters::default());
    assert_eq!(s.usage.totals("key_a").unwrap().requests, 4);
}

#[test]
fn uses_during_the_rotation_grace_are_counted_apart() {
    let s = given([
        (at(1, 0), created("key_a")),
        (at(9, 0), ok("key_a")),
        (at(10, 0), rotated("key_a", "key_b", at(12, 0))),
        (at(10, 0), created("key_b")),
        (at(11, 0), ok("key_a")),
        (minutes(at(12, 0), -1), ok("key_a")),
        (at(12, 0), ok("key_a")),
        (at(13, 0), ok("key_a")),
        (at(11, 0), ok("key_b")),
    ]);
    let old = s.usage.totals("key_a").unwrap();
    assert_eq!(old.requests, 5);
    assert_eq!(old.grace_requests, 2);
    assert_eq!(old.grace_last_used_at, Some(minutes(at(12, 0), -1)));
    assert_eq!(old.last_used_at, Some(at(13, 0)));

    let new = s.usage.totals("key_b").unwrap();
    assert_eq!((new.requests, new.grace_requests), (1, 0));
    assert_eq!(new.grace_last_used_at, None);
}

#[test]
fn usage_of_a_key_never_rotated_has_no_grace_uses() {
    let s = given([(at(1, 0), created("key_a")), (at(2, 0), ok("key_a"))]);
    let t = s.usage.totals("key_a").unwrap();
    assert_eq!((t.requests, t.grace_requests), (1, 0));
    assert_eq!(s.usage.len(), 1);
    assert_eq!(
        s.usage
            .iter()
            .map(|(k, t)| (k, t.requests))
            .collect::<Vec<_>>(),
        [("key_a", 1)]
    );
}

#[test]
fn events_stamped_out_of_time_order_land_in_their_own_day_and_month() {
    let s = given([
        (
            at_ymd(2026, 4, 2, 0),
            used("key_a", UsageOutcome::Success, 1, 0),
        ),
        (at(5, 0), used("key_a", UsageOutcome::Success, 2, 0)),
        (at(3, 0), used("key_a", UsageOutcome::Success, 4, 0)),
        (at(5, 1), used("key_a", UsageOutcome::Success, 8, 0)),
    ]);
    let days: Vec<(NaiveDate, u64)> = s
        .usage
        .days("key_a")
        .into_iter()
        .map(|(d, c)| (d, c.prompt_tokens))
        .collect();
    assert_eq!(days, [(date(3, 3), 4), (date(3, 5), 10), (date(4, 2), 1)]);
    assert_eq!(s.usage.day("key_a", date(3, 5)).requests, 2);
    assert_eq!(s.usage.day("key_a", date(3, 4)).requests, 0);
    assert_eq!(s.usage.month("key_a", 2026, 3).prompt_tokens, 14);
    assert_eq!(s.usage.month("key_a", 2026, 4).prompt_tokens, 1);
    assert_eq!(
        s.usage.totals("key_a").unwrap().last_used_at,
        Some(at_ymd(2026, 4, 2, 0))
    );
}
