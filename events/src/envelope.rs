use serde::{Deserialize, Serialize};
use serde_json::Value;
use ulid::Ulid;

use crate::hash::Hash32;
use crate::time::{self, Timestamp};
use crate::types::Event;
use crate::upcast::{self, DecodeError};

/// One stored event: a row of the `events` table, never updated or deleted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Global, gap-free, starting at 1.
    pub seq: u64,
    /// Appending the same id again is idempotent.
    pub event_id: Ulid,
    /// `key:<id>`, `usage:<key id>`, `provider:<id>` or `user:<id>`.
    pub stream: String,
    /// Unique within the stream; what optimistic concurrency checks.
    pub stream_version: u64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema: u16,
    #[serde(with = "time")]
    pub occurred_at: Timestamp,
    /// A user id, a key id or `system`.
    pub actor: String,
    pub request_id: Option<String>,
    /// The payload as it was stored, in the shape of its `schema`.
    pub data: Value,
    pub prev_hash: Hash32,
    pub hash: Hash32,
}

/// What a command hands to the store: an event that has no place in the log yet.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub event_id: Ulid,
    pub stream: String,
    pub expected: ExpectedVersion,
    pub event_type: String,
    pub schema: u16,
    pub occurred_at: Timestamp,
    pub actor: String,
    pub request_id: Option<String>,
    pub data: Value,
}

/// The stream version a command expects to find before its event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the stream holds; used for usage events, which never conflict.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have exactly this version.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream whose last version is `current` (0 when empty) satisfies this.
    pub fn admits(self, current: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::Exact(v) => current == v,
        }
    }
}

impl NewEvent {
    /// Builds the unsealed form of a typed event. The stream comes from the event itself.
    pub fn new(
        event: &Event,
        expected: ExpectedVersion,
        occurred_at: Timestamp,
        actor: impl Into<String>,
        request_id: Option<String>,
    ) -> NewEvent {
        NewEvent {
            event_id: Ulid::new(),
            stream: event.stream(),
            expected,
            event_type: event.type_name().to_owned(),
            schema: event.schema(),
            occurred_at: time::truncate_micros(occurred_at),
            actor: actor.into(),
            request_id,
            data: event.data(),
        }
    }

    /// Gives the event its place in the log and its hash.
    pub fn seal(self, seq: u64, stream_version: u64, prev_hash: Hash32) -> Envelope {
        let mut env = Envelope {
            seq,
            event_id: self.event_id,
            stream: self.stream,
            stream_version,
            event_type: self.event_type,
            schema: self.schema,
            occurred_at: time::truncate_micros(self.occurred_at),
            actor: self.actor,
            request_id: self.request_id,
            data: self.data,
            prev_hash,
            hash: Hash32::ZERO,
        };
        env.hash = env.compute_hash();
        env
    }
}

/// Separates Keyward's event hashes from any other use of blake3 over the same bytes.
pub const DOMAIN_TAG: &[u8] = b"keyward/event-chain/v1\0";

impl Envelope {
    /// The canonical bytes of every field except `prev_hash` and `hash`.
    pub fn canonical_body(&self) -> Vec<u8> {
        let body = serde_json::json!({
            "seq": self.seq,
            "event_id": self.event_id.to_string(),
            "stream": self.stream,
            "stream_version": self.stream_version,
            "type": self.event_type,
            "schema": self.schema,
            "occurred_at": time::format(&self.occurred_at),
            "actor": self.actor,
            "request_id": self.request_id,
            "data": self.data,
        });
        crate::canonical::to_vec(&body)
    }

    /// `blake3(domain tag ‖ prev_hash ‖ canonical body)`.
    pub fn compute_hash(&self) -> Hash32 {
        let mut h = blake3::Hasher::new();
        h.update(DOMAIN_TAG);
        h.update(&self.prev_hash.0);
        h.update(&self.canonical_body());
        h.finalize().into()
    }

    /// The typed event, upcast from whatever schema it was stored with.
    pub fn decode(&self) -> Result<Event, DecodeError> {
        upcast::decode(&self.event_type, self.schema, &self.data)
    }
}
