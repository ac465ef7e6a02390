//! The compact stored form of payloads and request ids (events/src/compact.rs).
//!
//! - Decoding never panics, whatever the bytes and the context.
//! - A value that decodes encodes again to bytes that decode to the same value.
//! - Any JSON document (the input as text) encodes to bytes that decode back to a value
//!   with exactly the same canonical JSON, the bytes an event's hash covers; and so does
//!   any string, alone, as a request id is stored.
#![no_main]

use keyward_events::{canonical, compact};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const CONTEXT: [&str; 2] = ["key_01JDZ0R7PS4Y5V3QY4VX4M6ZKT", "usr_01JDZ0R7PS4Y5V3QY4VX4M6ZKA"];

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = compact::decode(data, &CONTEXT) {
        let again = compact::to_vec(&v, &CONTEXT);
        let back = compact::decode(&again, &CONTEXT).expect("a decoded value re-encodes");
        assert_eq!(back, v);
    }
    if let Ok(s) = compact::decode_str(data, &CONTEXT) {
        let mut again = Vec::new();
        compact::encode_str(&s, &CONTEXT, &mut again);
        assert_eq!(compact::decode_str(&again, &CONTEXT).as_deref(), Ok(s.as_str()));
    }
    let _ = compact::decode(data, &[]);

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut s = Vec::new();
    compact::encode_str(text, &CONTEXT, &mut s);
    assert_eq!(compact::decode_str(&s, &CONTEXT).as_deref(), Ok(text));
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return;
    };
    let canon = canonical::to_vec(&v);
    for ctx in [&CONTEXT[..], &[]] {
        let bytes = compact::to_vec(&v, ctx);
        let back = compact::decode(&bytes, ctx).expect("what encodes decodes");
        assert_eq!(canonical::to_vec(&back), canon, "a round trip changed the canonical bytes");
    }
});
