//! What every backend decides for an append before it writes anything: which events are
//! already stored (idempotency by `event_id`), which units pass their optimistic
//! concurrency checks, the stream version each new event takes, and, once the new events
//! are sealed, which envelopes go back to which unit. Both backends share this so that
//! they cannot drift apart in what an append means.

use std::collections::{HashMap, HashSet};

use keyward_events::{Envelope, Head, NewEvent};
use ulid::Ulid;

use super::AppendError;

/// An event admitted by its unit's checks, with the stream version it will take.
pub(crate) struct Planned {
    pub event: NewEvent,
    pub version: u64,
}

/// Where an envelope of an appended unit comes from: sealed in this call, or already stored.
enum Slot {
    New(usize),
    Stored(Box<Envelope>),
}

/// The decisions for one append: the events to seal, in log order, and how to answer
/// each unit once they are sealed.
pub(crate) struct Plan {
    pub planned: Vec<Planned>,
    results: Vec<Result<Vec<Slot>, AppendError>>,
    /// Planned events answered more than once (a repeat of an id within the call).
    repeated: HashSet<usize>,
}

/// The distinct event ids of a call, in order, to look up in the store.
pub(crate) fn event_ids(units: &[Vec<NewEvent>]) -> Vec<String> {
    let mut seen = HashSet::new();
    units
        .iter()
        .flatten()
        .filter(|e| seen.insert(e.event_id))
        .map(|e| e.event_id.to_string())
        .collect()
}

/// The distinct streams of the events not already stored whose version is not in `known`.
pub(crate) fn streams_to_look_up<'a>(
    units: &'a [Vec<NewEvent>],
    existing: &HashMap<Ulid, Envelope>,
    known: &HashMap<String, u64>,
) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    units
        .iter()
        .flatten()
        .filter(|e| {
            !existing.contains_key(&e.event_id)
                && !known.contains_key(&e.stream)
                && seen.insert(e.stream.as_str())
        })
        .map(|e| e.stream.as_str())
        .collect()
}

/// Decides every unit in order against the stored events and the stream versions, which
/// it advances for each admitted event. `streams` must hold the current version of every
/// stream [`streams_to_look_up`] named (0 for an empty stream).
pub(crate) fn plan(
    units: Vec<Vec<NewEvent>>,
    existing: &HashMap<Ulid, Envelope>,
    streams: &mut HashMap<String, u64>,
) -> Plan {
    let mut planned: Vec<Planned> = Vec::new();
    // Events planned in this call, so that a repeat later in the call is answered with
    // the same envelope; and which of them are answered more than once.
    let mut planned_ids: HashMap<Ulid, usize> = HashMap::new();
    let mut repeated: HashSet<usize> = HashSet::new();
    let mut results: Vec<Result<Vec<Slot>, AppendError>> = Vec::with_capacity(units.len());
    for unit in units {
        let known = |id: &Ulid| existing.contains_key(id) || planned_ids.contains_key(id);
        if let Err(conflict) = check_unit(&unit, known, streams) {
            results.push(Err(conflict));
            continue;
        }
        let mut slots = Vec::with_capacity(unit.len());
        for e in unit {
            if let Some(env) = existing.get(&e.event_id) {
                slots.push(Slot::Stored(Box::new(env.clone())));
                continue;
            }
            if let Some(&i) = planned_ids.get(&e.event_id) {
                repeated.insert(i);
                slots.push(Slot::New(i));
                continue;
            }
            let version = match streams.get_mut(&e.stream) {
                Some(v) => {
                    *v += 1;
                    *v
                }
                None => {
                    streams.insert(e.stream.clone(), 1);
                    1
                }
            };
            planned_ids.insert(e.event_id, planned.len());
            slots.push(Slot::New(planned.len()));
            planned.push(Planned { event: e, version });
        }
        results.push(Ok(slots));
    }
    Plan {
        planned,
        results,
        repeated,
    }
}

impl Plan {
    /// Takes the events to seal out of the plan, leaving what is needed to answer.
    pub fn take_planned(&mut self) -> Vec<Planned> {
        std::mem::take(&mut self.planned)
    }

    /// Each unit's answer, given the planned events sealed in order.
    pub fn answer(self, sealed: Vec<Envelope>) -> Vec<Result<Vec<Envelope>, AppendError>> {
        self.fill(sealed, |env| Some(*env))
    }

    /// The units as they were given, for an append that failed after planning: `events`
    /// are the planned events in plan order (sealed ones unsealed again). Events already
    /// stored before this call are left out (they are durable), and a unit refused for a
    /// conflict comes back empty.
    pub fn units_back(self, events: Vec<NewEvent>) -> Vec<Vec<NewEvent>> {
        self.fill(events, |_| None)
            .into_iter()
            .map(Result::unwrap_or_default)
            .collect()
    }

    /// Each unit with its slots filled: a new event from `planned` (in plan order; cloned
    /// where a repeated id answers it more than once), a stored one through `stored`.
    fn fill<T: Clone>(
        self,
        planned: Vec<T>,
        stored: impl Fn(Box<Envelope>) -> Option<T>,
    ) -> Vec<Result<Vec<T>, AppendError>> {
        let repeated = self.repeated;
        let mut planned: Vec<Option<T>> = planned.into_iter().map(Some).collect();
        let mut resolve = |slot: Slot| match slot {
            Slot::Stored(env) => stored(env),
            Slot::New(i) if repeated.contains(&i) => planned.get(i).cloned().flatten(),
            Slot::New(i) => planned.get_mut(i).and_then(Option::take),
        };
        self.results
            .into_iter()
            .map(|r| r.map(|slots| slots.into_iter().filter_map(&mut resolve).collect()))
            .collect()
    }
}

/// Seals the next `n` planned events, continuing the chain from `head`, and returns each
/// with the canonical JSON of its data, which the hash covers and the store writes.
pub(crate) fn seal_run(
    planned: &mut impl Iterator<Item = Planned>,
    n: usize,
    head: &mut Head,
) -> Vec<(Envelope, String)> {
    let mut run = Vec::with_capacity(n);
    for p in planned.take(n) {
        let (env, data) = p.event.seal_with_data(head.seq + 1, p.version, head.hash);
        *head = Head {
            seq: env.seq,
            hash: env.hash,
        };
        run.push((env, data));
    }
    run
}

/// Checks every event of a unit that is not already stored against the stream versions,
/// counting earlier events of the same unit on the same stream.
fn check_unit(
    unit: &[NewEvent],
    known: impl Fn(&Ulid) -> bool,
    streams: &HashMap<String, u64>,
) -> Result<(), AppendError> {
    let mut ahead: HashMap<&str, u64> = HashMap::new();
    let mut seen = HashSet::new();
    for e in unit {
        if known(&e.event_id) || !seen.insert(e.event_id) {
            continue;
        }
        let current = match ahead.get(e.stream.as_str()) {
            Some(v) => *v,
            None => streams.get(&e.stream).copied().unwrap_or(0),
        };
        if !e.expected.admits(current) {
            return Err(AppendError::Conflict {
                stream: e.stream.clone(),
                expected: e.expected,
                actual: current,
            });
        }
        ahead.insert(&e.stream, current + 1);
    }
    Ok(())
}
