use serde::{Deserialize, Serialize};
use serde_json::Value;
use ulid::Ulid;

use crate::canonical::write_str;
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
        self.seal_with_data(seq, stream_version, prev_hash).0
    }

    /// [`seal`](Self::seal), also returning the canonical JSON of `data`: the hash covers
    /// those bytes and a store writes them, so they are computed once for both.
    pub fn seal_with_data(
        self,
        seq: u64,
        stream_version: u64,
        prev_hash: Hash32,
    ) -> (Envelope, String) {
        let data = crate::canonical::to_string(&self.data);
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
        env.hash = env.hash_with_data(data.as_bytes());
        (env, data)
    }
}

/// Separates Keyward's event hashes from any other use of blake3 over the same bytes.
pub const DOMAIN_TAG: &[u8] = b"keyward/event-chain/v1\0";

impl Envelope {
    /// The event as it was before sealing, for a store that failed to write it and gives
    /// it back to be tried again: its place in the log and its hash are dropped, and the
    /// version it expected is given back by the caller, which kept it.
    pub fn unseal(self, expected: ExpectedVersion) -> NewEvent {
        NewEvent {
            event_id: self.event_id,
            stream: self.stream,
            expected,
            event_type: self.event_type,
            schema: self.schema,
            occurred_at: self.occurred_at,
            actor: self.actor,
            request_id: self.request_id,
            data: self.data,
        }
    }

    /// The canonical bytes of every field except `prev_hash` and `hash`: the canonical
    /// JSON of an object with those fields, `type` for `event_type`, `occurred_at` in the
    /// format of [`time::format`].
    pub fn canonical_body(&self) -> Vec<u8> {
        self.body_with_data(&crate::canonical::to_vec(&self.data))
    }

    /// `blake3(domain tag ‖ prev_hash ‖ canonical body)`.
    pub fn compute_hash(&self) -> Hash32 {
        self.hash_with_data(&crate::canonical::to_vec(&self.data))
    }

    fn hash_with_data(&self, data: &[u8]) -> Hash32 {
        let mut h = blake3::Hasher::new();
        h.update(DOMAIN_TAG);
        h.update(&self.prev_hash.0);
        h.update(&self.body_with_data(data));
        h.finalize().into()
    }

    /// Writes the body directly rather than through a `serde_json::Value`, which would
    /// copy the payload and sort the keys for every event on the append path. The keys
    /// are written in the sorted order canonical JSON requires; a test checks the result
    /// against the generic encoder.
    fn body_with_data(&self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 320);
        out.extend_from_slice(b"{\"actor\":");
        write_str(&self.actor, &mut out);
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(data);
        out.extend_from_slice(b",\"event_id\":\"");
        out.extend_from_slice(
            self.event_id
                .array_to_str(&mut [0; ulid::ULID_LEN])
                .as_bytes(),
        );
        out.extend_from_slice(b"\",\"occurred_at\":");
        write_str(&time::format(&self.occurred_at), &mut out);
        out.extend_from_slice(b",\"request_id\":");
        match &self.request_id {
            Some(r) => write_str(r, &mut out),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"schema\":");
        write_int(self.schema, &mut out);
        out.extend_from_slice(b",\"seq\":");
        write_int(self.seq, &mut out);
        out.extend_from_slice(b",\"stream\":");
        write_str(&self.stream, &mut out);
        out.extend_from_slice(b",\"stream_version\":");
        write_int(self.stream_version, &mut out);
        out.extend_from_slice(b",\"type\":");
        write_str(&self.event_type, &mut out);
        out.push(b'}');
        out
    }

    /// The typed event, upcast from whatever schema it was stored with.
    pub fn decode(&self) -> Result<Event, DecodeError> {
        upcast::decode(&self.event_type, self.schema, &self.data)
    }
}

/// A decimal number, written in place: no `String` per number.
fn write_int(n: impl std::fmt::Display, out: &mut Vec<u8>) {
    use std::io::Write;
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{n}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::from_micros;

    /// The body as the generic canonical encoder writes it: the definition the fast
    /// writer must match byte for byte.
    fn reference_body(e: &Envelope) -> Vec<u8> {
        crate::canonical::to_vec(&serde_json::json!({
            "seq": e.seq,
            "event_id": e.event_id.to_string(),
            "stream": e.stream,
            "stream_version": e.stream_version,
            "type": e.event_type,
            "schema": e.schema,
            "occurred_at": time::format(&e.occurred_at),
            "actor": e.actor,
            "request_id": e.request_id,
            "data": e.data,
        }))
    }

    #[test]
    fn the_direct_body_writer_matches_the_canonical_encoder() {
        let awkward = "quote\" back\\ nl\n tab\t nul\u{0} del\u{7f} é 😀 \u{2028}";
        for (actor, request_id, data, seq, version, schema) in [
            ("system", None, serde_json::json!({}), 1, 1, 1),
            (
                awkward,
                Some(awkward.to_owned()),
                serde_json::json!({"b": [1, 2.5, null], "a": awkward}),
                u64::MAX,
                0,
                u16::MAX,
            ),
            (
                "",
                Some(String::new()),
                serde_json::json!(null),
                0,
                u64::MAX,
                0,
            ),
        ] {
            let e = Envelope {
                seq,
                event_id: Ulid::from_parts(1_700_000_000_000, 42),
                stream: format!("user:{awkward}"),
                stream_version: version,
                event_type: "key.used".into(),
                schema,
                occurred_at: from_micros(1_772_355_600_000_001).unwrap_or_default(),
                actor: actor.into(),
                request_id,
                data,
                prev_hash: Hash32([7; 32]),
                hash: Hash32::ZERO,
            };
            assert_eq!(e.canonical_body(), reference_body(&e));
        }
    }
}
