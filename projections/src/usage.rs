//! Usage counters per key, fed by `key.used` and `key.denied`: lifetime totals, UTC days
//! and UTC months. Quotas read the day and month counters on the proxy's hot path.

use std::collections::HashMap;

use chrono::{Datelike, NaiveDate};
use keyward_events::time::Timestamp;
use keyward_events::{Envelope, Event, KeyDenied, KeyUsed};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct UsageTotals {
    pub requests: u64,
    /// Requests whose outcome was not a success.
    pub errors: u64,
    /// Refusals, counting the ones a `key.denied` folded in as `suppressed`.
    pub denied: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub last_used_at: Option<Timestamp>,
    /// Requests made after the key was rotated, before its grace ended.
    pub grace_requests: u64,
    pub grace_last_used_at: Option<Timestamp>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DayCounters {
    pub requests: u64,
    pub errors: u64,
    pub denied: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl DayCounters {
    /// Prompt plus completion tokens, what a token quota counts.
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }

    fn add_used(&mut self, e: &KeyUsed) {
        self.requests = self.requests.saturating_add(1);
        self.errors = self.errors.saturating_add(u64::from(e.outcome.is_error()));
        self.prompt_tokens = self.prompt_tokens.saturating_add(e.prompt_tokens);
        self.completion_tokens = self.completion_tokens.saturating_add(e.completion_tokens);
    }
}

/// Days and months are sorted vectors rather than maps. Events arrive nearly in time
/// order, so the bucket wanted (today, this month) is almost always the last one and is
/// found without a search; an older one takes a binary search over the few months or
/// days a key lives. One small allocation each also keeps a million keys' usage compact.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct KeyUsage {
    pub(crate) totals: UsageTotals,
    pub(crate) days: Vec<(NaiveDate, DayCounters)>,
    pub(crate) months: Vec<((i32, u32), DayCounters)>,
}

impl KeyUsage {
    fn buckets(&mut self, at: Timestamp) -> (&mut DayCounters, &mut DayCounters) {
        let day = at.date_naive();
        (
            bucket_mut(&mut self.days, day),
            bucket_mut(&mut self.months, (day.year(), day.month())),
        )
    }
}

fn bucket_mut<K: Ord + Copy>(v: &mut Vec<(K, DayCounters)>, k: K) -> &mut DayCounters {
    let i = match v.last() {
        Some((last, _)) if *last == k => v.len() - 1,
        _ => match v.binary_search_by(|(b, _)| b.cmp(&k)) {
            Ok(i) => i,
            Err(i) => {
                // Grow from one, not Vec's usual four: most keys see only a month or two.
                if v.len() == v.capacity() {
                    v.reserve_exact(v.len().max(1));
                }
                v.insert(i, (k, DayCounters::default()));
                i
            }
        },
    };
    &mut v[i].1
}

fn bucket<K: Ord + Copy>(v: &[(K, DayCounters)], k: K) -> DayCounters {
    match v.last() {
        Some((last, c)) if *last == k => *c,
        _ => v
            .binary_search_by(|(b, _)| b.cmp(&k))
            .map_or_else(|_| DayCounters::default(), |i| v[i].1),
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    pub(crate) by_key: HashMap<String, KeyUsage>,
}

impl Usage {
    pub fn totals(&self, key_id: &str) -> Option<&UsageTotals> {
        self.by_key.get(key_id).map(|u| &u.totals)
    }

    /// Zero when the key had no traffic that day.
    pub fn day(&self, key_id: &str, day: NaiveDate) -> DayCounters {
        self.by_key
            .get(key_id)
            .map_or_else(DayCounters::default, |u| bucket(&u.days, day))
    }

    /// Every day with traffic, oldest first.
    pub fn days(&self, key_id: &str) -> Vec<(NaiveDate, DayCounters)> {
        self.by_key
            .get(key_id)
            .map(|u| u.days.clone())
            .unwrap_or_default()
    }

    /// Zero when the key had no traffic that month.
    pub fn month(&self, key_id: &str, year: i32, month: u32) -> DayCounters {
        self.by_key
            .get(key_id)
            .map_or_else(DayCounters::default, |u| bucket(&u.months, (year, month)))
    }

    /// Every key with any usage or denial, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &UsageTotals)> {
        self.by_key.iter().map(|(k, u)| (k.as_str(), &u.totals))
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Folds a usage event. A `key.used` counts as a grace use only through
    /// [`Usage::record_used`], since that needs the key table; [`crate::State`] does it.
    pub fn apply(&mut self, env: &Envelope, event: &Event) {
        match event {
            Event::KeyUsed(e) => self.record_used(e, env.occurred_at, false),
            Event::KeyDenied(e) => self.record_denied(e, env.occurred_at),
            _ => {}
        }
    }

    /// Counts one proxied request made at `at`; `grace_use` when the key was rotated and
    /// `at` fell within its grace.
    pub fn record_used(&mut self, e: &KeyUsed, at: Timestamp, grace_use: bool) {
        self.with_key(&e.key_id, |u| {
            let t = &mut u.totals;
            t.requests = t.requests.saturating_add(1);
            t.errors = t.errors.saturating_add(u64::from(e.outcome.is_error()));
            t.prompt_tokens = t.prompt_tokens.saturating_add(e.prompt_tokens);
            t.completion_tokens = t.completion_tokens.saturating_add(e.completion_tokens);
            // occurred_at is stamped before the commit, so seq order is not quite time order.
            t.last_used_at = t.last_used_at.max(Some(at));
            if grace_use {
                t.grace_requests = t.grace_requests.saturating_add(1);
                t.grace_last_used_at = t.grace_last_used_at.max(Some(at));
            }
            let (day, month) = u.buckets(at);
            day.add_used(e);
            month.add_used(e);
        });
    }

    /// Counts a refusal and the ones folded into it.
    pub fn record_denied(&mut self, e: &KeyDenied, at: Timestamp) {
        let n = e.suppressed.saturating_add(1);
        self.with_key(&e.key_id, |u| {
            u.totals.denied = u.totals.denied.saturating_add(n);
            let (day, month) = u.buckets(at);
            day.denied = day.denied.saturating_add(n);
            month.denied = month.denied.saturating_add(n);
        });
    }

    fn with_key(&mut self, key_id: &str, f: impl FnOnce(&mut KeyUsage)) {
        // Look up by &str first so that a key seen before, the common case, allocates nothing.
        let u = match self.by_key.get_mut(key_id) {
            Some(u) => u,
            None => self.by_key.entry(key_id.to_owned()).or_default(),
        };
        f(u);
    }
}
