//! Rebuilding the state as it was at a past moment, named by a seq or a time.

use keyward_events::Envelope;
use keyward_events::time::Timestamp;

use crate::{ApplyError, State};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AsOf {
    /// Every event up to and including this seq.
    Seq(u64),
    /// Every event whose `occurred_at` is at or before this time.
    Time(Timestamp),
}

/// Folds `events` (given in seq order) into a fresh [`State`]: `AsOf::Seq(n)` applies the
/// events with seq <= n; `AsOf::Time(t)` applies every event with `occurred_at <= t`. It
/// filters rather than stopping at the first later event, since `occurred_at` is stamped
/// before the commit and may be slightly out of seq order.
///
/// The input must be the log from seq 1 without gaps, else [`ApplyError::OutOfOrder`].
/// This does not check hashes; `keyward_events::chain` does.
pub fn replay<'a, I>(events: I, as_of: AsOf) -> Result<State, ApplyError>
where
    I: IntoIterator<Item = &'a Envelope>,
{
    let mut r = Replayer::new(as_of);
    for env in events {
        if !r.push(env)? {
            break;
        }
    }
    Ok(r.finish())
}

/// [`replay`] one event at a time, for a log streamed from a store rather than held in
/// memory.
#[derive(Clone, Debug)]
pub struct Replayer {
    state: State,
    as_of: AsOf,
    /// The last seq pushed, applied or not.
    seen: u64,
}

impl Replayer {
    pub fn new(as_of: AsOf) -> Self {
        Replayer {
            state: State::default(),
            as_of,
            seen: 0,
        }
    }

    /// Takes the next event of the log, and applies it if it falls within `as_of`. Returns
    /// whether a later event could still apply: `false` once `AsOf::Seq` is reached, so
    /// the caller can stop reading. On an error nothing changes.
    pub fn push(&mut self, env: &Envelope) -> Result<bool, ApplyError> {
        let expected = self.seen.saturating_add(1);
        if env.seq != expected {
            return Err(ApplyError::OutOfOrder {
                expected,
                got: env.seq,
            });
        }
        let (include, more) = match self.as_of {
            AsOf::Seq(n) => (env.seq <= n, env.seq < n),
            AsOf::Time(t) => (env.occurred_at <= t, true),
        };
        if include {
            let event = env.decode().map_err(|source| ApplyError::Decode {
                seq: env.seq,
                source,
            })?;
            self.state.apply_decoded(env, &event);
        }
        self.seen = env.seq;
        Ok(more)
    }

    /// The state so far.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The last seq pushed, whether or not it was applied.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    pub fn finish(self) -> State {
        self.state
    }
}
