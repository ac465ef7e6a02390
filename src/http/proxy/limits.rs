//! The proxy's in-memory limits: the per-key rate limit (GCRA, with governor), the per-IP
//! throttle on failed authentications, the throttle on `key.denied` events, and the pure
//! check of the quotas. The IP allowlist's check is `crate::auth::ip_allowed`, shared
//! with every other surface that accepts a key.
//!
//! All of it is per node. With several nodes a key gets each node's rate limit; quotas
//! count the usage projection, which every node folds from the shared log, plus this
//! node's own uses in flight ([`crate::live::reservations`]), not other nodes'.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{Datelike, NaiveDate, TimeZone, Utc};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{DefaultDirectRateLimiter, Quota as GovQuota};
use keyward_events::{DenyReason, KeyDenied, Quota, RateLimit};
use keyward_projections::DayCounters;

use crate::live::reservations::InFlight;
use parking_lot::{Mutex, RwLock};

use crate::time::Timestamp;

type Limiter = DefaultDirectRateLimiter<StateInformationMiddleware>;

struct KeyLimiter {
    config: RateLimit,
    /// `None` when the key's rate is zero: every request is refused.
    limiter: Option<Limiter>,
}

/// The outcome of a rate-limit check, with what the `x-ratelimit-*` headers report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateDecision {
    Allowed { limit: u32, remaining: u32 },
    Refused { limit: u32, retry_after: Duration },
}

/// One GCRA limiter per key, created on the key's first request and replaced when its
/// rate limit changes.
#[derive(Default)]
pub struct RateLimits {
    by_key: RwLock<HashMap<String, Arc<KeyLimiter>>>,
    clock: DefaultClock,
}

impl RateLimits {
    pub fn check(&self, key_id: &str, config: RateLimit) -> RateDecision {
        let found = self
            .by_key
            .read()
            .get(key_id)
            .filter(|l| l.config == config)
            .cloned();
        let lim = match found {
            Some(l) => l,
            None => {
                let fresh = Arc::new(KeyLimiter {
                    config,
                    limiter: NonZeroU32::new(config.requests_per_minute).map(|rpm| {
                        let burst = NonZeroU32::new(config.burst).unwrap_or(NonZeroU32::MIN);
                        governor::RateLimiter::direct_with_clock(
                            GovQuota::per_minute(rpm).allow_burst(burst),
                            self.clock.clone(),
                        )
                        .with_middleware::<StateInformationMiddleware>()
                    }),
                });
                let mut map = self.by_key.write();
                let entry = map
                    .entry(key_id.to_owned())
                    .or_insert_with(|| fresh.clone());
                if entry.config != config {
                    *entry = fresh;
                }
                entry.clone()
            }
        };
        let limit = config.requests_per_minute;
        match &lim.limiter {
            None => RateDecision::Refused {
                limit,
                retry_after: Duration::from_secs(60),
            },
            Some(l) => match l.check() {
                Ok(snap) => RateDecision::Allowed {
                    limit,
                    remaining: snap.remaining_burst_capacity(),
                },
                Err(not_until) => RateDecision::Refused {
                    limit,
                    retry_after: not_until.wait_time_from(self.clock.now()),
                },
            },
        }
    }

    /// Forgets the limiters of keys that `keep` says are gone.
    pub fn retain(&self, mut keep: impl FnMut(&str) -> bool) {
        self.by_key.write().retain(|k, _| keep(k));
    }
}

/// The client a throttle counts an address as: IPv4 as is, IPv6 by its /64, which one
/// host can usually fill at will. Every per-client throttle (proxy and console) uses it.
pub fn client_prefix(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(
                seg[0], seg[1], seg[2], seg[3], 0, 0, 0, 0,
            ))
        }
        v4 => v4,
    }
}

/// Counts failed authentications per client IP. A window opens at an IP's first failure
/// and lasts one second; past `per_second` failures in it, the IP is refused until it ends.
pub struct AuthFailures {
    per_second: u32,
    by_ip: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    /// Entries in `by_ip`, read without the lock so that traffic with no failures never
    /// takes it.
    entries: AtomicUsize,
}

const AUTH_FAILURE_IPS_MAX: usize = 100_000;
const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(1);

impl AuthFailures {
    pub fn new(per_second: u32) -> AuthFailures {
        AuthFailures {
            per_second: per_second.max(1),
            by_ip: Mutex::new(HashMap::new()),
            entries: AtomicUsize::new(0),
        }
    }

    fn open(start: Instant, now: Instant) -> bool {
        now.saturating_duration_since(start) < AUTH_FAILURE_WINDOW
    }

    fn bucket(ip: IpAddr) -> IpAddr {
        client_prefix(ip)
    }

    /// Whether this IP already failed `per_second` times in its current window.
    pub fn blocked(&self, ip: Option<IpAddr>, now: Instant) -> bool {
        let Some(ip) = ip.map(Self::bucket) else {
            return false;
        };
        if self.entries.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.by_ip
            .lock()
            .get(&ip)
            .is_some_and(|(start, n)| Self::open(*start, now) && *n >= self.per_second)
    }

    pub fn failed(&self, ip: Option<IpAddr>, now: Instant) {
        let Some(ip) = ip.map(Self::bucket) else {
            return;
        };
        let mut map = self.by_ip.lock();
        if map.len() >= AUTH_FAILURE_IPS_MAX && !map.contains_key(&ip) {
            map.retain(|_, (start, _)| Self::open(*start, now));
            if map.len() >= AUTH_FAILURE_IPS_MAX {
                // More clients failed within one window than the table holds: the
                // newcomer is not tracked, so that memory stays bounded. The clients
                // already counted stay throttled, and nobody is refused for an address
                // the table never saw fail.
                return;
            }
        }
        let e = map.entry(ip).or_insert((now, 0));
        if !Self::open(e.0, now) {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
        self.entries.store(map.len(), Ordering::Relaxed);
    }

    /// Forgets the windows that have ended.
    pub fn prune(&self, now: Instant) {
        let mut map = self.by_ip.lock();
        map.retain(|_, (start, _)| Self::open(*start, now));
        self.entries.store(map.len(), Ordering::Relaxed);
    }
}

struct Pending {
    started: Instant,
    /// Refusals since the window's event, not yet recorded.
    suppressed: u64,
    last: KeyDenied,
}

/// At most one `key.denied` per key and reason per window. The refusals in between are
/// counted, and carried by the next event as `suppressed`, so the log's count is exact
/// once [`DenyThrottle::flush`] has run.
pub struct DenyThrottle {
    pub window: Duration,
    pending: Mutex<HashMap<(String, DenyReason), Pending>>,
}

impl DenyThrottle {
    pub fn new(window: Duration) -> DenyThrottle {
        DenyThrottle {
            window,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// The event to record for this refusal now, if any.
    pub fn deny(&self, d: KeyDenied, now: Instant) -> Option<KeyDenied> {
        let mut map = self.pending.lock();
        let k = (d.key_id.clone(), d.reason);
        match map.get_mut(&k) {
            Some(p) if now.saturating_duration_since(p.started) < self.window => {
                p.suppressed += 1;
                p.last = d;
                None
            }
            Some(p) => {
                let carried = std::mem::take(&mut p.suppressed);
                p.started = now;
                p.last = d.clone();
                Some(KeyDenied {
                    suppressed: carried,
                    ..d
                })
            }
            None => {
                map.insert(
                    k,
                    Pending {
                        started: now,
                        suppressed: 0,
                        last: d.clone(),
                    },
                );
                Some(d)
            }
        }
    }

    /// Events for the refusals still counted: of windows that have ended, or of every
    /// window when `all` (at shutdown). Each event stands for `suppressed + 1` refusals.
    pub fn flush(&self, now: Instant, all: bool) -> Vec<KeyDenied> {
        let mut out = Vec::new();
        self.pending.lock().retain(|_, p| {
            let over = now.saturating_duration_since(p.started) >= self.window;
            if (over || all) && p.suppressed > 0 {
                out.push(KeyDenied {
                    suppressed: p.suppressed - 1,
                    ..p.last.clone()
                });
                p.suppressed = 0;
            }
            !(over || all)
        });
        out
    }
}

/// A quota that is used up: which one, and the seconds until it resets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaExceeded {
    pub what: &'static str,
    pub retry_after_secs: u64,
}

/// Checks the day's and the month's counters (UTC), with this node's uses in flight
/// added, against the key's quota. A quota that only the uses in flight fill is retried
/// after a second: they settle as soon as they are recorded.
pub fn check_quota(
    q: &Quota,
    now: Timestamp,
    day: DayCounters,
    month: DayCounters,
    pending: InFlight,
) -> Option<QuotaExceeded> {
    let to_tomorrow = || secs_until(now, next_day(now.date_naive()));
    let to_next_month = || secs_until(now, next_month(now.date_naive()));
    let checks = [
        (
            q.requests_per_day,
            day.requests,
            pending.requests,
            "requests per day",
            true,
        ),
        (
            q.tokens_per_day,
            day.tokens(),
            pending.tokens,
            "tokens per day",
            true,
        ),
        (
            q.requests_per_month,
            month.requests,
            pending.requests,
            "requests per month",
            false,
        ),
        (
            q.tokens_per_month,
            month.tokens(),
            pending.tokens,
            "tokens per month",
            false,
        ),
    ];
    checks
        .into_iter()
        .find_map(|(limit, used, in_flight, what, daily)| {
            let limit = limit?;
            if used.saturating_add(in_flight) < limit {
                return None;
            }
            let retry_after_secs = if used < limit {
                1
            } else if daily {
                to_tomorrow()
            } else {
                to_next_month()
            };
            Some(QuotaExceeded {
                what,
                retry_after_secs,
            })
        })
}

fn next_day(d: NaiveDate) -> NaiveDate {
    d.succ_opt().unwrap_or(d)
}

fn next_month(d: NaiveDate) -> NaiveDate {
    let (y, m) = if d.month() == 12 {
        (d.year() + 1, 1)
    } else {
        (d.year(), d.month() + 1)
    };
    NaiveDate::from_ymd_opt(y, m, 1).unwrap_or(d)
}

fn secs_until(now: Timestamp, day: NaiveDate) -> u64 {
    let at = Utc.from_utc_datetime(&day.and_time(chrono::NaiveTime::MIN));
    (at - now).num_seconds().max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_the_burst_then_refuses_with_a_wait() {
        let r = RateLimits::default();
        let cfg = RateLimit {
            requests_per_minute: 60,
            burst: 2,
        };
        assert_eq!(
            r.check("k", cfg),
            RateDecision::Allowed {
                limit: 60,
                remaining: 1
            }
        );
        assert!(matches!(r.check("k", cfg), RateDecision::Allowed { .. }));
        match r.check("k", cfg) {
            RateDecision::Refused { retry_after, .. } => {
                assert!(retry_after <= Duration::from_secs(1), "{retry_after:?}")
            }
            other => panic!("{other:?}"),
        }
        // Another key has its own bucket; a changed limit starts a new one.
        assert!(matches!(r.check("k2", cfg), RateDecision::Allowed { .. }));
        let more = RateLimit {
            requests_per_minute: 60,
            burst: 5,
        };
        assert!(matches!(r.check("k", more), RateDecision::Allowed { .. }));
        let zero = RateLimit {
            requests_per_minute: 0,
            burst: 5,
        };
        assert!(matches!(r.check("k", zero), RateDecision::Refused { .. }));
    }

    #[test]
    fn auth_failures_block_until_the_window_ends() {
        let f = AuthFailures::new(2);
        let ip: Option<IpAddr> = Some("10.1.2.3".parse().unwrap());
        let t0 = Instant::now();
        assert!(!f.blocked(ip, t0));
        f.failed(ip, t0);
        assert!(!f.blocked(ip, t0));
        f.failed(ip, t0 + Duration::from_millis(900));
        assert!(f.blocked(ip, t0 + Duration::from_millis(900)));
        assert!(!f.blocked(Some("10.1.2.4".parse().unwrap()), t0));
        assert!(!f.blocked(ip, t0 + Duration::from_millis(1000)));
        f.prune(t0 + Duration::from_secs(2));
        assert!(!f.blocked(ip, t0));

        // One IPv6 /64 is one client.
        let a: Option<IpAddr> = Some("2001:db8:1:2::1".parse().unwrap());
        let b: Option<IpAddr> = Some("2001:db8:1:2:ffff::9".parse().unwrap());
        f.failed(a, t0);
        f.failed(b, t0);
        assert!(f.blocked(Some("2001:db8:1:2::77".parse().unwrap()), t0));
        assert!(!f.blocked(Some("2001:db8:1:3::1".parse().unwrap()), t0));
    }

    #[test]
    fn the_auth_failure_table_has_a_hard_cap_within_one_window() {
        let f = AuthFailures::new(1);
        let t0 = Instant::now();
        let first: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000)));
        for i in 0..(AUTH_FAILURE_IPS_MAX as u32 + 5_000) {
            f.failed(
                Some(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i))),
                t0,
            );
        }
        assert_eq!(f.by_ip.lock().len(), AUTH_FAILURE_IPS_MAX);
        assert_eq!(f.entries.load(Ordering::Relaxed), AUTH_FAILURE_IPS_MAX);
        // Those counted stay blocked; one the table could not hold is not refused.
        assert!(f.blocked(first, t0));
        let untracked = Some(IpAddr::V4(std::net::Ipv4Addr::from(
            0x0a00_0000 + AUTH_FAILURE_IPS_MAX as u32 + 1,
        )));
        assert!(!f.blocked(untracked, t0));
        // Once the window ends, room is made again.
        let later = t0 + AUTH_FAILURE_WINDOW;
        f.failed(untracked, later);
        assert_eq!(f.by_ip.lock().len(), 1);
        assert!(f.blocked(untracked, later));
    }

    fn denied(reason: DenyReason) -> KeyDenied {
        KeyDenied {
            key_id: "key_1".into(),
            reason,
            endpoint: "/v1/chat/completions".into(),
            model: None,
            client_ip: None,
            suppressed: 0,
        }
    }

    #[test]
    fn denials_are_throttled_and_counted_exactly() {
        let t = DenyThrottle::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(t.deny(denied(DenyReason::Ip), t0).unwrap().suppressed, 0);
        for _ in 0..4 {
            assert!(t.deny(denied(DenyReason::Ip), t0).is_none());
        }
        // Another reason is its own stream of events.
        assert!(t.deny(denied(DenyReason::Scope), t0).is_some());
        // The next window's first refusal carries the four suppressed ones.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(t.deny(denied(DenyReason::Ip), later).unwrap().suppressed, 4);
        assert!(t.deny(denied(DenyReason::Ip), later).is_none());
        assert!(t.deny(denied(DenyReason::Ip), later).is_none());
        assert!(t.flush(later, false).is_empty());
        let flushed = t.flush(later, true);
        assert_eq!(flushed.len(), 1);
        // Stands for the two refusals: 1 + suppressed.
        assert_eq!(flushed[0].suppressed, 1);
        assert!(t.flush(later, true).is_empty());
    }

    #[test]
    fn quotas_name_what_ran_out_and_when_it_resets() {
        let now = Utc.with_ymd_and_hms(2026, 12, 31, 23, 0, 0).unwrap();
        let q = Quota {
            requests_per_day: Some(2),
            tokens_per_month: Some(100),
            ..Quota::default()
        };
        let none = InFlight::default();
        let mut day = DayCounters::default();
        assert_eq!(check_quota(&q, now, day, day, none), None);
        day.requests = 2;
        assert_eq!(
            check_quota(&q, now, day, DayCounters::default(), none),
            Some(QuotaExceeded {
                what: "requests per day",
                retry_after_secs: 3600
            })
        );
        let month = DayCounters {
            prompt_tokens: 60,
            completion_tokens: 40,
            ..DayCounters::default()
        };
        assert_eq!(
            check_quota(&q, now, DayCounters::default(), month, none).map(|e| e.what),
            Some("tokens per month")
        );
    }

    #[test]
    fn uses_in_flight_count_and_are_retried_after_a_second() {
        let now = Utc.with_ymd_and_hms(2026, 12, 31, 23, 0, 0).unwrap();
        let q = Quota {
            requests_per_day: Some(2),
            tokens_per_month: Some(100),
            ..Quota::default()
        };
        let day = DayCounters {
            requests: 1,
            ..DayCounters::default()
        };
        let one = InFlight {
            requests: 1,
            tokens: 0,
        };
        assert_eq!(
            check_quota(&q, now, day, DayCounters::default(), one),
            Some(QuotaExceeded {
                what: "requests per day",
                retry_after_secs: 1
            })
        );
        let unbounded = InFlight {
            requests: 0,
            tokens: u64::MAX,
        };
        assert_eq!(
            check_quota(&q, now, day, DayCounters::default(), unbounded),
            Some(QuotaExceeded {
                what: "tokens per month",
                retry_after_secs: 1
            })
        );
        // Saturated counters still refuse, with the wait until the quota resets.
        let full = DayCounters {
            prompt_tokens: u64::MAX,
            completion_tokens: u64::MAX,
            ..DayCounters::default()
        };
        assert_eq!(
            check_quota(&q, now, DayCounters::default(), full, unbounded),
            Some(QuotaExceeded {
                what: "tokens per month",
                retry_after_secs: 3600
            })
        );
        assert_eq!(
            check_quota(&q, now, DayCounters::default(), DayCounters::default(), one),
            None
        );
    }
}
