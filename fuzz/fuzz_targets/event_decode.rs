//! The event decoder with upcasting, fed what a stored row holds: a type name, a schema
//! version and the `data` column's text.
//!
//! Input, one field a line so that seeds are readable stored rows: type, schema, actor,
//! stream, request id (empty for none), then the data column's JSON. The envelope's
//! numbers (seq, event id, stream version, time, prev_hash) come from a hash of the input.
//!
//! - Decoding never panics, whatever the type, schema or payload.
//! - An event that decodes re-encodes (`Event::data`) to a payload that decodes, at the
//!   current schema, to the same event, with the same type name.
//! - Canonical JSON is stable: parsing canonical bytes and writing them again gives the
//!   same bytes, and the same value.
//! - An envelope's hand-written canonical body equals the generic canonical encoder's
//!   output for the same fields, so the chain hash does not depend on which one ran.
#![no_main]

use keyward_events::types::current_schema;
use keyward_events::{Envelope, Hash32, canonical, time, upcast};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fn canonical_is_stable(v: &Value) {
    let once = canonical::to_vec(v);
    let parsed: Value = serde_json::from_slice(&once).expect("canonical bytes are JSON");
    assert_eq!(&parsed, v, "canonical bytes parse back to another value");
    assert_eq!(
        canonical::to_vec(&parsed),
        once,
        "canonical bytes are not stable"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut fields = text.splitn(6, '\n');
    let (
        Some(event_type),
        Some(schema),
        Some(actor),
        Some(stream),
        Some(request_id),
        Some(row_data),
    ) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    )
    else {
        return;
    };
    let Ok(schema) = schema.trim().parse::<u16>() else {
        return;
    };
    // The store parses the data column exactly like this before decoding.
    let Ok(payload) = serde_json::from_str::<Value>(row_data) else {
        return;
    };
    canonical_is_stable(&payload);

    match upcast::decode(event_type, schema, &payload) {
        Ok(event) => {
            assert_eq!(event.type_name(), event_type);
            let known = current_schema(event_type).expect("a decoded type is known");
            assert!(schema <= known);
            assert_eq!(event.schema(), known);
            let again = event.data();
            canonical_is_stable(&again);
            let round = upcast::decode(event_type, known, &again)
                .expect("a re-encoded event decodes at the current schema");
            assert_eq!(round, event, "decode → data → decode changed the event");
            assert_eq!(
                round.data(),
                again,
                "data is not stable after one round trip"
            );
            let upcast =
                upcast::upcast(event_type, schema, payload.clone()).expect("what decodes upcasts");
            assert_eq!(
                upcast::decode(event_type, known, &upcast).as_ref(),
                Ok(&event)
            );
        }
        Err(keyward_events::DecodeError::UnknownType(t)) => {
            assert_eq!(t, event_type);
            assert!(current_schema(event_type).is_none());
        }
        Err(keyward_events::DecodeError::FutureSchema {
            schema: s, known, ..
        }) => {
            assert_eq!(s, schema);
            assert!(schema > known);
        }
        Err(_) => {}
    }

    let seed = blake3::hash(data);
    let n = |i: usize| u64::from_le_bytes(seed.as_bytes()[i..i + 8].try_into().unwrap());
    let Some(occurred_at) = time::from_micros((n(0) % 8_000_000_000_000_000) as i64) else {
        return;
    };
    let env = Envelope {
        seq: n(8),
        event_id: ulid::Ulid(u128::from(n(16)) << 64 | u128::from(n(24))),
        stream: stream.to_owned(),
        stream_version: n(16) >> 1,
        event_type: event_type.to_owned(),
        schema,
        occurred_at,
        actor: actor.to_owned(),
        request_id: (!request_id.is_empty()).then(|| request_id.to_owned()),
        data: payload,
        prev_hash: Hash32(*seed.as_bytes()),
        hash: Hash32([0; 32]),
    };
    let generic = canonical::to_vec(&json!({
        "actor": env.actor,
        "data": env.data,
        "event_id": env.event_id.to_string(),
        "occurred_at": time::format(&env.occurred_at),
        "request_id": env.request_id,
        "schema": env.schema,
        "seq": env.seq,
        "stream": env.stream,
        "stream_version": env.stream_version,
        "type": env.event_type,
    }));
    assert_eq!(
        env.canonical_body(),
        generic,
        "the envelope's body differs from canonical JSON"
    );
    let mut h = blake3::Hasher::new();
    h.update(keyward_events::envelope::DOMAIN_TAG);
    h.update(seed.as_bytes());
    h.update(&generic);
    assert_eq!(env.compute_hash(), Hash32::from(h.finalize()));
});
