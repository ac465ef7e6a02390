//! The uses of quota-bound keys that this node has admitted but the live projection does
//! not count yet, so that a quota holds under concurrency.
//!
//! The usage projection moves only when a `key.used` is committed and folded. Without
//! this ledger, every request that arrives before the first one's use is folded sees the
//! same counters, and ten parallel requests of a key with `requests_per_day: 1` all pass.
//! Here a request takes its place at admission and keeps it until its use is in the
//! projection:
//!
//! 1. **Reserved** (admission → its `key.used` is queued): one request, and an estimate of
//!    its tokens ([`TokenBound`]). A [`Reservation`] is a guard: dropped on any path
//!    (refusal after admission, panic, a task cancelled) it gives its place back.
//! 2. **Recorded** (queued → folded): the request and its real tokens, by event id. The
//!    fold of that event, under the live write lock, removes it ([`Reservations::settle`]),
//!    in the same hold that adds it to the projection's counters. A use whose event was
//!    never queued (the queue closed, or the wait for room was cut short) is withdrawn.
//!
//! Admission reads the projection's counters and this ledger under one read lock of the
//! live state, and checks and reserves under the key's own mutex: every use is counted
//! exactly once at every moment a check can see, and two checks of one key are ordered.
//!
//! Per node: other nodes' requests in flight are not here, only their committed uses.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};
use ulid::Ulid;

/// What a request may still add to its key's token counters, as far as admission knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenBound {
    /// At most about this many tokens: its `max_tokens` and an estimate of its prompt.
    AtMost(u64),
    /// No bound: it holds the rest of the key's token quota until its use is recorded.
    Unbounded,
}

/// Uses of one key that the projection does not count yet, on this node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    pub requests: u64,
    /// `u64::MAX` while an unbounded request is in flight.
    pub tokens: u64,
}

#[derive(Debug, Default)]
struct Pending {
    reserved_requests: u64,
    reserved_tokens: u64,
    reserved_unbounded: u64,
    /// Uses queued to the appender and not yet folded: event id and tokens.
    recorded: Vec<(Ulid, u64)>,
}

impl Pending {
    fn in_flight(&self) -> InFlight {
        let recorded_tokens = self
            .recorded
            .iter()
            .fold(0u64, |acc, (_, t)| acc.saturating_add(*t));
        InFlight {
            requests: self
                .reserved_requests
                .saturating_add(self.recorded.len() as u64),
            tokens: if self.reserved_unbounded > 0 {
                u64::MAX
            } else {
                self.reserved_tokens.saturating_add(recorded_tokens)
            },
        }
    }

    fn is_idle(&self) -> bool {
        self.reserved_requests == 0 && self.reserved_unbounded == 0 && self.recorded.is_empty()
    }
}

/// One key's pending uses.
#[derive(Debug, Default)]
pub struct Slot(Mutex<Pending>);

/// Every quota-bound key's pending uses on this node.
#[derive(Debug, Default)]
pub struct Reservations {
    slots: RwLock<HashMap<String, Arc<Slot>>>,
    /// Recorded uses not yet folded, over all keys: the fold skips the lookup at zero.
    recorded: Arc<AtomicUsize>,
}

impl Reservations {
    fn slot(&self, key_id: &str) -> Arc<Slot> {
        if let Some(s) = self.slots.read().get(key_id) {
            return s.clone();
        }
        self.slots
            .write()
            .entry(key_id.to_owned())
            .or_default()
            .clone()
    }

    /// The key's pending uses.
    pub fn in_flight(&self, key_id: &str) -> InFlight {
        self.slots
            .read()
            .get(key_id)
            .map(|s| s.0.lock().in_flight())
            .unwrap_or_default()
    }

    /// Reserves one request of `key_id` if `admit`, given the key's pending uses, allows
    /// it. Call it while holding the live state's read lock, with `admit` reading the
    /// projection's counters from that same hold.
    pub fn reserve<E>(
        &self,
        key_id: &str,
        tokens: TokenBound,
        admit: impl FnOnce(InFlight) -> Result<(), E>,
    ) -> Result<Reservation, E> {
        let slot = self.slot(key_id);
        {
            let mut p = slot.0.lock();
            admit(p.in_flight())?;
            p.reserved_requests += 1;
            match tokens {
                TokenBound::AtMost(n) => p.reserved_tokens = p.reserved_tokens.saturating_add(n),
                TokenBound::Unbounded => p.reserved_unbounded += 1,
            }
        }
        Ok(Reservation {
            slot,
            requests: 1,
            tokens,
            recorded: self.recorded.clone(),
        })
    }

    /// A guard that reserves nothing but records the key's use like a reservation does:
    /// for a use of a quota-bound key that was not admitted through [`reserve`](Self::reserve)
    /// (a request refused for its body still counts as a request).
    pub fn track(&self, key_id: &str) -> Reservation {
        Reservation {
            slot: self.slot(key_id),
            requests: 0,
            tokens: TokenBound::AtMost(0),
            recorded: self.recorded.clone(),
        }
    }

    /// The fold of `key.used` event `event_id` of `key_id`: the projection counts it now.
    /// Call it in the same write-lock hold as the fold.
    pub fn settle(&self, key_id: &str, event_id: Ulid) {
        if self.recorded.load(Ordering::Acquire) == 0 {
            return;
        }
        let Some(slot) = self.slots.read().get(key_id).cloned() else {
            return;
        };
        let mut p = slot.0.lock();
        if let Some(i) = p.recorded.iter().position(|(id, _)| *id == event_id) {
            p.recorded.swap_remove(i);
            self.recorded.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Forgets the keys with nothing pending that no request holds.
    pub fn prune(&self) {
        self.slots
            .write()
            .retain(|_, s| Arc::strong_count(s) > 1 || !s.0.lock().is_idle());
    }

    /// Keys with a slot, idle or not.
    pub fn len(&self) -> usize {
        self.slots.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A request's place in its key's quota, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    slot: Arc<Slot>,
    requests: u64,
    tokens: TokenBound,
    recorded: Arc<AtomicUsize>,
}

impl Reservation {
    /// The request's `key.used`, about to be queued: counted with its real tokens until
    /// its fold. Drop the reservation once the event is queued, and the returned guard
    /// with [`Recorded::queued`] then; dropped otherwise, the guard withdraws the use.
    pub fn record(&self, event_id: Ulid, tokens: u64) -> Recorded {
        self.slot.0.lock().recorded.push((event_id, tokens));
        self.recorded.fetch_add(1, Ordering::AcqRel);
        Recorded {
            slot: self.slot.clone(),
            event_id,
            recorded: self.recorded.clone(),
            queued: false,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut p = self.slot.0.lock();
        p.reserved_requests = p.reserved_requests.saturating_sub(self.requests);
        match self.tokens {
            TokenBound::AtMost(n) => p.reserved_tokens = p.reserved_tokens.saturating_sub(n),
            TokenBound::Unbounded => {
                p.reserved_unbounded = p.reserved_unbounded.saturating_sub(1);
            }
        }
    }
}

/// A use recorded in the ledger whose event is on its way to the appender.
#[derive(Debug)]
pub struct Recorded {
    slot: Arc<Slot>,
    event_id: Ulid,
    recorded: Arc<AtomicUsize>,
    queued: bool,
}

impl Recorded {
    /// The event is in the appender's queue: its fold settles it.
    pub fn queued(mut self) {
        self.queued = true;
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        if self.queued {
            return;
        }
        let mut p = self.slot.0.lock();
        if let Some(i) = p.recorded.iter().position(|(id, _)| *id == self.event_id) {
            p.recorded.swap_remove(i);
            self.recorded.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit_below(limit: u64) -> impl FnOnce(InFlight) -> Result<(), InFlight> {
        move |f| {
            if f.requests >= limit { Err(f) } else { Ok(()) }
        }
    }

    #[test]
    fn a_reservation_holds_its_place_until_dropped() {
        let r = Reservations::default();
        let held = r
            .reserve("k", TokenBound::AtMost(10), admit_below(1))
            .unwrap();
        assert_eq!(
            r.reserve("k", TokenBound::AtMost(10), admit_below(1))
                .unwrap_err(),
            InFlight {
                requests: 1,
                tokens: 10
            }
        );
        // Another key has its own place.
        assert!(
            r.reserve("k2", TokenBound::AtMost(1), admit_below(1))
                .is_ok()
        );
        drop(held);
        assert_eq!(r.in_flight("k"), InFlight::default());
        assert!(
            r.reserve("k", TokenBound::AtMost(10), admit_below(1))
                .is_ok()
        );
    }

    #[test]
    fn a_recorded_use_counts_until_its_fold_settles_it() {
        let r = Reservations::default();
        let held = r
            .reserve("k", TokenBound::Unbounded, admit_below(5))
            .unwrap();
        assert_eq!(r.in_flight("k").tokens, u64::MAX);
        let id = Ulid::new();
        let rec = held.record(id, 29);
        drop(held);
        rec.queued();
        assert_eq!(
            r.in_flight("k"),
            InFlight {
                requests: 1,
                tokens: 29
            }
        );
        // Another event's fold (another node's, say) settles nothing.
        r.settle("k", Ulid::new());
        assert_eq!(r.in_flight("k").requests, 1);
        r.settle("k", id);
        assert_eq!(r.in_flight("k"), InFlight::default());
        r.prune();
        assert!(r.is_empty());
    }

    #[test]
    fn a_use_never_queued_is_withdrawn_and_a_held_slot_is_not_pruned() {
        let r = Reservations::default();
        let t = r.track("k");
        let rec = t.record(Ulid::new(), 7);
        assert_eq!(r.in_flight("k").requests, 1);
        r.prune();
        assert_eq!(r.len(), 1);
        drop(rec);
        assert_eq!(r.in_flight("k"), InFlight::default());
        drop(t);
        r.prune();
        assert!(r.is_empty());
    }

    #[test]
    fn a_panic_while_holding_a_reservation_gives_it_back() {
        let r = Arc::new(Reservations::default());
        let r2 = r.clone();
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _held = r2
                .reserve("k", TokenBound::AtMost(3), admit_below(1))
                .unwrap();
            panic!("boom");
        }));
        assert!(res.is_err());
        assert_eq!(r.in_flight("k"), InFlight::default());
    }
}
