//! The audit export's line format: NDJSON, one line per event.
//!
//! An event line is the readable envelope (see [`crate::upcast::readable`]) exactly as
//! `serde_json` writes an [`Envelope`]: members in the struct's order (`seq`, `event_id`,
//! `stream`, `stream_version`, `type`, `schema`, `occurred_at`, `actor`, `request_id`,
//! `data`, `prev_hash`, `hash`), no whitespace, `data` with its keys sorted.
//!
//! An export with proofs starts with one checkpoint line, `{"checkpoint":"<signed note>"}`,
//! and each event line then ends with one more member, `"inclusion_proof":["<hex>",…]`:
//! the RFC 6962 inclusion proof of the event's leaf in the tree of that checkpoint's size.
//!
//! [`parse_line`] is strict: it accepts a line only if writing the parsed value again
//! gives the same bytes. A line that was re-encoded, reordered, or carries a member twice
//! (which two JSON parsers may read differently) is refused, so what a reader sees in a
//! verified line is exactly what its hash covers.

use std::io::{self, Write};

use serde::Deserialize;
use serde_json::Value;
use ulid::Ulid;

use crate::canonical::write_str;
use crate::envelope::Envelope;
use crate::hash::Hash32;
use crate::time::{self, Timestamp};

/// The longest line a reader accepts, so that a hostile file cannot make it buffer
/// without bound. An event's payload is far smaller.
pub const MAX_LINE: usize = 16 << 20;

/// The member a checkpoint line holds.
pub const CHECKPOINT_MEMBER: &str = "checkpoint";
/// The member an event line's proof is in.
pub const PROOF_MEMBER: &str = "inclusion_proof";

/// One parsed line of an export.
// One line is held at a time: boxing the envelope would only add an allocation per line.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Line {
    /// The signed note the proofs of the following lines are against.
    Checkpoint(String),
    /// An event, with its inclusion proof if the export carries proofs.
    Event {
        envelope: Envelope,
        proof: Option<Vec<Hash32>>,
    },
}

/// Why a line is not an export line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    #[error("not an export line: {0}")]
    Json(String),
    #[error(
        "the line is not in the exact form the export writes (re-encoded, reordered, or a \
         member given twice)"
    )]
    NotExact,
    #[error("the line is longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("the line is not UTF-8")]
    NotUtf8,
}

/// `{"checkpoint":"<note text>"}`: the first line of an export with proofs.
pub fn checkpoint_line(note_text: &str) -> String {
    let mut out = Vec::with_capacity(note_text.len() + 24);
    encode_checkpoint_line(&mut out, note_text);
    // Only JSON punctuation and serde_json's string encoding were written.
    String::from_utf8(out).unwrap_or_default()
}

fn encode_checkpoint_line(out: &mut Vec<u8>, note_text: &str) {
    out.extend_from_slice(b"{\"checkpoint\":");
    write_str(note_text, out);
    out.push(b'}');
}

/// Writes one event line, newline included. `envelope` is written as given: pass the
/// readable form ([`crate::upcast::readable`]) as every export does.
pub fn write_event_line(
    w: &mut impl Write,
    envelope: &Envelope,
    proof: Option<&[Hash32]>,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    encode_event_line(&mut buf, envelope, proof)?;
    buf.push(b'\n');
    w.write_all(&buf)
}

/// Writes one event line, newline included, from an envelope already serialised with
/// `serde_json` (one JSON object, no trailing newline).
pub fn write_event_json(
    w: &mut impl Write,
    envelope_json: &[u8],
    proof: Option<&[Hash32]>,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(envelope_json.len() + 80);
    buf.extend_from_slice(envelope_json);
    append_proof(&mut buf, proof)?;
    buf.push(b'\n');
    w.write_all(&buf)
}

/// Appends the event line (without its newline) to `out`.
pub fn encode_event_line(
    out: &mut Vec<u8>,
    envelope: &Envelope,
    proof: Option<&[Hash32]>,
) -> io::Result<()> {
    serde_json::to_writer(&mut *out, envelope)?;
    append_proof(out, proof)
}

/// Replaces the closing brace of the object at the end of `out` with the proof member.
fn append_proof(out: &mut Vec<u8>, proof: Option<&[Hash32]>) -> io::Result<()> {
    let Some(proof) = proof else { return Ok(()) };
    if out.last() != Some(&b'}') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an event line must be one JSON object",
        ));
    }
    out.pop();
    out.extend_from_slice(b",\"inclusion_proof\":[");
    for (i, h) in proof.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(h.to_hex().as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b"]}");
    Ok(())
}

/// Parses one line (without its newline).
pub fn parse_line(line: &str) -> Result<Line, ExportError> {
    parse_bytes(line.as_bytes(), &mut Vec::new())
}

/// [`parse_line`] on bytes, with a scratch buffer the caller keeps between lines so that
/// the exactness check allocates nothing per line.
pub fn parse_bytes(line: &[u8], scratch: &mut Vec<u8>) -> Result<Line, ExportError> {
    if line.len() > MAX_LINE {
        return Err(ExportError::TooLong);
    }
    scratch.clear();
    if line.starts_with(b"{\"checkpoint\"") {
        let c: CheckpointRepr =
            serde_json::from_slice(line).map_err(|e| ExportError::Json(e.to_string()))?;
        encode_checkpoint_line(scratch, &c.checkpoint);
        if scratch.as_slice() != line {
            return Err(ExportError::NotExact);
        }
        return Ok(Line::Checkpoint(c.checkpoint));
    }
    let r: EventRepr = serde_json::from_slice(line).map_err(|e| {
        if std::str::from_utf8(line).is_err() {
            ExportError::NotUtf8
        } else {
            ExportError::Json(e.to_string())
        }
    })?;
    let proof = r.inclusion_proof;
    let envelope = Envelope {
        seq: r.seq,
        event_id: r.event_id,
        stream: r.stream,
        stream_version: r.stream_version,
        event_type: r.event_type,
        schema: r.schema,
        occurred_at: r.occurred_at,
        actor: r.actor,
        request_id: r.request_id,
        data: r.data,
        prev_hash: r.prev_hash,
        hash: r.hash,
    };
    encode_event_line(scratch, &envelope, proof.as_deref())
        .map_err(|e| ExportError::Json(e.to_string()))?;
    if scratch.as_slice() != line {
        return Err(ExportError::NotExact);
    }
    Ok(Line::Event { envelope, proof })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointRepr {
    checkpoint: String,
}

/// An event line: the envelope's members and the optional proof.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventRepr {
    seq: u64,
    event_id: Ulid,
    stream: String,
    stream_version: u64,
    #[serde(rename = "type")]
    event_type: String,
    schema: u16,
    #[serde(with = "time")]
    occurred_at: Timestamp,
    actor: String,
    request_id: Option<String>,
    data: Value,
    prev_hash: Hash32,
    hash: Hash32,
    #[serde(default)]
    inclusion_proof: Option<Vec<Hash32>>,
}

/// Whether `env` is a line [`crate::upcast::readable`] changed: a schema 1 `user.created`
/// or `user.updated` whose password hash was replaced. Its hash cannot be recomputed from
/// the line; only its place in the chain and the tree can be checked.
pub fn is_redacted(env: &Envelope) -> bool {
    env.schema < 2
        && matches!(env.event_type.as_str(), "user.created" | "user.updated")
        && env.data.get("password_hash").and_then(Value::as_str) == Some(crate::upcast::REDACTED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env() -> Envelope {
        let mut e = Envelope {
            seq: 7,
            event_id: Ulid::from_parts(1_700_000_000_000, 9),
            stream: "key:key_1".into(),
            stream_version: 2,
            event_type: "key.used".into(),
            schema: 1,
            occurred_at: time::from_micros(1_772_355_600_000_001).unwrap_or_default(),
            actor: "usr_\"1\"\n".into(),
            request_id: None,
            data: json!({"z": 1.5, "a": [1, {"y": null, "b": "é\u{2028}"}], "m": u64::MAX}),
            prev_hash: Hash32([3; 32]),
            hash: Hash32::ZERO,
        };
        e.hash = e.compute_hash();
        e
    }

    #[test]
    fn an_event_line_is_the_serde_json_envelope() {
        let e = env();
        let mut out = Vec::new();
        write_event_line(&mut out, &e, None).unwrap();
        let mut want = serde_json::to_vec(&e).unwrap();
        want.push(b'\n');
        assert_eq!(out, want);
        let line = std::str::from_utf8(&out).unwrap().trim_end_matches('\n');
        assert_eq!(
            parse_line(line).unwrap(),
            Line::Event {
                envelope: e,
                proof: None
            }
        );
    }

    #[test]
    fn a_proof_is_one_more_member_at_the_end() {
        let e = env();
        let proof = [Hash32([1; 32]), Hash32([0xab; 32])];
        let mut out = Vec::new();
        write_event_line(&mut out, &e, Some(&proof)).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with(&format!(
            ",\"inclusion_proof\":[\"{}\",\"{}\"]}}\n",
            proof[0], proof[1]
        )));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["seq"], 7);
        let mut from_json = Vec::new();
        write_event_json(
            &mut from_json,
            &serde_json::to_vec(&e).unwrap(),
            Some(&proof),
        )
        .unwrap();
        assert_eq!(from_json, text.as_bytes());
        assert_eq!(
            parse_line(text.trim_end()).unwrap(),
            Line::Event {
                envelope: e,
                proof: Some(proof.to_vec())
            }
        );
        // An empty proof (a tree of one leaf) is written and read back as such.
        let mut one = Vec::new();
        write_event_line(&mut one, &env(), Some(&[])).unwrap();
        let one = String::from_utf8(one).unwrap();
        assert!(one.ends_with(",\"inclusion_proof\":[]}\n"));
        assert!(matches!(
            parse_line(one.trim_end()).unwrap(),
            Line::Event { proof: Some(p), .. } if p.is_empty()
        ));
    }

    #[test]
    fn a_checkpoint_line_round_trips() {
        let note = "example.com/log\n5\nAAAA\n\n— example.com/log abc=\n";
        let line = checkpoint_line(note);
        assert!(line.starts_with("{\"checkpoint\":\"example.com/log\\n5"));
        assert_eq!(parse_line(&line).unwrap(), Line::Checkpoint(note.into()));
    }

    #[test]
    fn lines_not_in_the_exact_exported_form_are_refused() {
        let e = env();
        let line = String::from_utf8(serde_json::to_vec(&e).unwrap()).unwrap();
        // Whitespace, a reordered member, a member given twice, an escaped character
        // that need not be: each parses to the same value, and each is refused.
        let spaced = line.replacen("\"seq\":7", "\"seq\": 7", 1);
        let v: Value = serde_json::from_str(&line).unwrap();
        let mut reordered = serde_json::Map::new();
        reordered.insert("hash".into(), v["hash"].clone());
        for (k, x) in v.as_object().unwrap() {
            reordered.insert(k.clone(), x.clone());
        }
        let reordered = canonical_like(&reordered);
        let twice = line.replacen("\"data\":{", "\"data\":{\"z\":2,", 1);
        let escaped = line.replacen("key:key_1", "key:key\\u005f1", 1);
        for bad in [spaced, reordered, twice, escaped] {
            assert_ne!(bad, line);
            assert_eq!(parse_line(&bad), Err(ExportError::NotExact), "{bad}");
        }
        // A missing null member reads as null, and the line is refused as inexact.
        let missing = line.replacen("\"request_id\":null,", "", 1);
        assert_eq!(parse_line(&missing), Err(ExportError::NotExact));
        // An unknown member, a missing required one, a bad hash: not an export line.
        let extra = line.replacen("{\"seq\"", "{\"x\":1,\"seq\"", 1);
        let no_seq = line.replacen("\"seq\":7,", "", 1);
        let bad_hash = line.replacen(&e.hash.to_hex(), "zz", 1);
        for bad in [extra, no_seq, bad_hash] {
            assert!(
                matches!(parse_line(&bad), Err(ExportError::Json(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_line("{\"checkpoint\":\"x\",\"y\":1}"),
            Err(ExportError::Json(_))
        ));
        assert_eq!(
            parse_line("{\"checkpoint\" : \"x\"}"),
            Err(ExportError::NotExact)
        );
    }

    /// Writes the members in the map's own order (it is sorted without preserve_order,
    /// so "hash" lands before "occurred_at").
    fn canonical_like(m: &serde_json::Map<String, Value>) -> String {
        serde_json::to_string(m).unwrap()
    }

    #[test]
    fn a_redacted_legacy_line_is_recognised() {
        let mut e = env();
        assert!(!is_redacted(&e));
        e.event_type = "user.created".into();
        e.data =
            json!({"user_id": "u", "username": "n", "role": "user", "password_hash": "<redacted>"});
        assert!(is_redacted(&e));
        e.schema = 2;
        assert!(!is_redacted(&e));
    }
}
