//! Pure folds from Keyward's events to the state the service reads: the key table and its
//! auth index, usage counters, providers and users. Replay "as of" a seq or a time builds
//! the same state for any past moment.
//!
//! Nothing here does I/O. A caller feeds envelopes in seq order, one at a time with
//! [`State::apply`] (the live projection, or a replay of a log too large to hold), or all
//! at once with [`replay()`].

pub mod keys;
pub mod providers;
pub mod replay;
pub mod snapshot;
pub mod usage;
pub mod users;

pub use keys::{KeyRecord, KeyStatus, KeyTable};
pub use providers::{ProviderRecord, Providers, SealedCredential, Verification};
pub use replay::{AsOf, Replayer, replay};
pub use snapshot::SnapshotError;
pub use usage::{DayCounters, Usage, UsageTotals};
pub use users::{StoredPassword, UserRecord, Users};

use keyward_events::{DecodeError, Envelope, Event, Head};

/// Everything the projections know after a prefix of the log.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    pub keys: KeyTable,
    pub usage: Usage,
    pub providers: Providers,
    pub users: Users,
    /// seq and hash of the last applied event (seq 0 / zero hash when empty)
    pub head: Head,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ApplyError {
    #[error("event seq {got} applied out of order: expected seq {expected}")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("seq {seq}: {source}")]
    Decode {
        seq: u64,
        #[source]
        source: DecodeError,
    },
}

impl State {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies the next event. Requires `env.seq == head.seq + 1`. On any error nothing
    /// changes, so the caller can stop, or skip an event it knowingly tolerates with
    /// [`State::apply_decoded`].
    pub fn apply(&mut self, env: &Envelope) -> Result<(), ApplyError> {
        self.apply_predecoded(env, env.decode())
    }

    /// [`apply`](Self::apply) with the envelope already decoded (`env.decode()`), so that
    /// a caller holding a lock around the state can decode, the dear part, before taking it.
    pub fn apply_predecoded(
        &mut self,
        env: &Envelope,
        decoded: Result<Event, DecodeError>,
    ) -> Result<(), ApplyError> {
        let expected = self.head.seq.saturating_add(1);
        if env.seq != expected {
            return Err(ApplyError::OutOfOrder {
                expected,
                got: env.seq,
            });
        }
        let event = decoded.map_err(|source| ApplyError::Decode {
            seq: env.seq,
            source,
        })?;
        self.apply_decoded(env, &event);
        Ok(())
    }

    /// Applies the events in order, stopping at the first error; the events before it stay
    /// applied.
    pub fn apply_all<'a, I>(&mut self, events: I) -> Result<(), ApplyError>
    where
        I: IntoIterator<Item = &'a Envelope>,
    {
        events.into_iter().try_for_each(|env| self.apply(env))
    }

    /// Applies an event that is already decoded, with its envelope's metadata, without the
    /// seq-contiguity check (replay as of a time skips events). Still moves the head to
    /// `env`.
    pub fn apply_decoded(&mut self, env: &Envelope, event: &Event) {
        // Exhaustive on purpose: a new event type must be routed here deliberately.
        match event {
            Event::KeyUsed(used) => {
                // Usage does not know about rotation; the key table does.
                let grace_use = self
                    .keys
                    .get(&used.key_id)
                    .is_some_and(|k| k.in_grace_at(env.occurred_at));
                self.usage.record_used(used, env.occurred_at, grace_use);
            }
            Event::KeyDenied(denied) => self.usage.record_denied(denied, env.occurred_at),
            Event::KeyCreated(_)
            | Event::KeyUpdated(_)
            | Event::KeyExpired(_)
            | Event::KeyRotated(_)
            | Event::KeyDeleted(_)
            | Event::KeyNoticeSent(_) => self.keys.apply(env, event),
            Event::ProviderCreated(_)
            | Event::ProviderUpdated(_)
            | Event::ProviderDeleted(_)
            | Event::ProviderKeyUpdated(_)
            | Event::ProviderVerified(_) => self.providers.apply(env, event),
            Event::UserCreated(_)
            | Event::UserUpdated(_)
            | Event::UserDisabled(_)
            | Event::UserEnabled(_) => self.users.apply(env, event),
            // Reads of the audit history and console sessions change no key, provider or
            // user: only the head moves.
            Event::AuditRead(_)
            | Event::UserSignedIn(_)
            | Event::UserSignedOut(_)
            | Event::AuditArchived(_) => {}
        }
        self.head = Head {
            seq: env.seq,
            hash: env.hash,
        };
    }
}
