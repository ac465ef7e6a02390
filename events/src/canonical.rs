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
            out.push(b'{');
            // serde_json's default map is a BTreeMap of Strings, whose order is the UTF-8
            // byte order canonical JSON wants, so the entries usually arrive sorted and
            // are written as they come. If they do not (a build with serde_json's
            // `preserve_order`), the object is written again from a sorted copy.
            let start = out.len() - 1;
            let mut prev: Option<&str> = None;
            for (k, v) in map {
                if prev.is_some_and(|p| p.as_bytes() >= k.as_bytes()) {
                    out.truncate(start);
                    write_sorted(map, out);
                    return;
                }
                if prev.is_some() {
                    out.push(b',');
                }
                write_str(k, out);
                out.push(b':');
                write(v, out);
                prev = Some(k);
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
        Value::String(s) => write_str(s, out),
        scalar => write_scalar(scalar, out),
    }
}

fn write_sorted(map: &serde_json::Map<String, Value>, out: &mut Vec<u8>) {
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push(b'{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(k, out);
        out.push(b':');
        write(v, out);
    }
    out.push(b'}');
}

/// A JSON string as serde_json escapes it, written without building a `Value`.
pub fn write_str(s: &str, out: &mut Vec<u8>) {
    // Serialising a str into a Vec cannot fail.
    let _ = serde_json::to_writer(out, s);
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
    fn an_object_whose_entries_arrive_unsorted_is_written_sorted() {
        // serde_json's map iterates sorted in this build; the fallback for one that does
        // not (preserve_order) is exercised directly.
        let map: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"b":1,"a":[2],"é":3,"Z":{"y":1,"x":2}}"#).unwrap();
        let mut out = Vec::new();
        write_sorted(&map, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"Z":{"x":2,"y":1},"a":[2],"b":1,"é":3}"#
        );
        assert_eq!(
            to_string(&Value::Object(map)),
            r#"{"Z":{"x":2,"y":1},"a":[2],"b":1,"é":3}"#
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
