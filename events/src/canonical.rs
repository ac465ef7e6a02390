//! Canonical JSON: object keys sorted by their UTF-8 bytes, no insignificant whitespace,
//! numbers and strings as serde_json writes them (shortest round-trip form, minimal
//! escaping). The writer sorts keys itself rather than relying on serde_json's map type,
//! whose order changes if any crate in the build enables `preserve_order`.

use serde_json::Value;

pub fn to_vec(v: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write(v, &mut out);
    out
}

pub fn to_string(v: &Value) -> String {
    // The writer only emits UTF-8: JSON punctuation plus serde_json's own output.
    String::from_utf8(to_vec(v)).unwrap_or_default()
}

pub fn write(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(k.clone()), out);
                out.push(b':');
                write(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(v: &Value, out: &mut Vec<u8>) {
    // Serialising a scalar Value into a Vec cannot fail.
    let _ = serde_json::to_writer(out, v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_keys_at_every_depth_and_drops_whitespace() {
        let v = json!({"b": 1, "a": {"z": [3, {"y": null, "x": true}], "c": "é\n"}});
        assert_eq!(
            to_string(&v),
            r#"{"a":{"c":"é\n","z":[3,{"x":true,"y":null}]},"b":1}"#
        );
    }

    #[test]
    fn parsing_the_output_and_writing_again_is_stable() {
        let v = json!({"n": 1.5, "big": u64::MAX, "neg": -7, "s": "\"q\"\u{1}"});
        let once = to_string(&v);
        let again = to_string(&serde_json::from_str(&once).unwrap());
        assert_eq!(once, again);
    }

    #[test]
    fn floats_survive_a_round_trip_through_stored_text() {
        // Without serde_json's float_roundtrip feature these parse back one ulp off, and
        // an event stored with one would no longer verify after it is read back.
        let v = json!([
            1.221043540074035e217,
            -3.8522126457737876e161,
            5.904414503749853e-220
        ]);
        let once = to_string(&v);
        let parsed: Value = serde_json::from_str(&once).unwrap();
        assert_eq!(parsed, v);
        assert_eq!(to_string(&parsed), once);
    }
}
