//! The compact stored form of an event's payload and request id: a binary encoding of the
//! JSON value that decodes back to a value whose canonical JSON is byte for byte the one
//! that was hashed. Nothing about the hash changes; only the bytes a store keeps do.
//!
//! The encoding is a sequence of tokens, one tag byte each:
//!
//! | tag | token |
//! | --- | --- |
//! | `0x00` `0x01` `0x02` | `null`, `false`, `true` |
//! | `0x03` varint | an unsigned integer |
//! | `0x04` varint | a negative integer `-1 - n` |
//! | `0x05` 8 bytes | a float, its IEEE 754 bits little-endian |
//! | `0x06` varint, bytes | a string, UTF-8 |
//! | `0x07` varint, items | an array of that many values |
//! | `0x08` varint, (string, value)… | an object of that many entries |
//! | `0x09` byte | the string of the context at that index (the event's actor, its stream's id) |
//! | `0x0A` string, 16 bytes | a string that is the first string then a ULID in its canonical form |
//! | `0x0B` 4 bytes | a dotted IPv4 address in its canonical form |
//! | `0x0C` varint, bytes | a string of lowercase hex digits, as the bytes they spell |
//! | `0x0D` byte, varint, values… | an object whose keys are among those of [`SHAPES`] at that index: a bitmap of which keys are present, then their values in the shape's order |
//! | `0x10..=0x3F` | the unsigned integer `tag - 0x10` (0 to 47) |
//! | `0x40..=0xFF` | the string at index `tag - 0x40` of [`DICTIONARY`] |
//!
//! Every form is used only where decoding gives back exactly the same string or number,
//! so `decode(encode(v))` is `v`. [`DICTIONARY`] is part of the format: entries may be
//! appended (up to 192) but never changed or reordered, or stored rows would decode to
//! other strings.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::OnceLock;

use serde_json::{Map, Number, Value};
use ulid::Ulid;

/// Strings common in payloads: field names of every event type, then common values.
/// Append only; see the module docs.
pub const DICTIONARY: &[&str] = &[
    // field names
    "actor",
    "burst",
    "ciphertext",
    "client_ip",
    "completion_tokens",
    "endpoint",
    "expires_at",
    "ip_allowlist",
    "key_id",
    "keyring_version",
    "latency_us",
    "metadata",
    "model",
    "models",
    "name",
    "nonce",
    "outcome",
    "owner_id",
    "password",
    "prefix",
    "prompt_tokens",
    "provider_id",
    "provider_ids",
    "quota",
    "rate_limit",
    "reason",
    "requests_per_day",
    "requests_per_minute",
    "requests_per_month",
    "role",
    "rotated_from",
    "scopes",
    "secret_hash",
    "status",
    "stream",
    "tokens_per_day",
    "tokens_per_month",
    "upstream_latency_us",
    "user_id",
    "username",
    "kind",
    "base_url",
    "new_key_id",
    "old_key_id",
    "grace_until",
    "at",
    "detail",
    "count",
    "query",
    "filter",
    "ok",
    "error",
    "session_id",
    "api_key",
    "sealed_key",
    "verified",
    "latency_ms",
    "limit",
    "scope",
    "window",
    // id prefixes (a ULID follows)
    "key_",
    "usr_",
    "prv_",
    "req_",
    "ses_",
    // outcomes, reasons, scopes, roles, provider kinds
    "success",
    "upstream_error",
    "client_error",
    "timeout",
    "cancelled",
    "expired",
    "deleted",
    "owner_disabled",
    "provider",
    "ip",
    "quota_exceeded",
    "rate_limited",
    "read",
    "chat",
    "full",
    "admin",
    "user",
    "auditor",
    "openai",
    "anthropic",
    "groq",
    "openai_compatible",
    "system",
    // endpoints
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/messages",
    "/v1/responses",
    "/v1/models",
    // models
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "o3",
    "o3-mini",
    "o4-mini",
    "gpt-3.5-turbo",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "claude-3-5-sonnet-20241022",
    "claude-3-5-haiku-20241022",
    "claude-3-7-sonnet-20250219",
    "claude-sonnet-4-20250514",
    "claude-opus-4-20250514",
    "llama-3.1-8b-instant",
    "llama-3.3-70b-versatile",
];

/// The keys of the objects written most often (`key.used`, `key.denied`), sorted as
/// canonical JSON sorts them. Part of the format like [`DICTIONARY`]: append only.
pub const SHAPES: &[&[&str]] = &[
    &[
        "client_ip",
        "completion_tokens",
        "endpoint",
        "key_id",
        "latency_us",
        "model",
        "outcome",
        "prompt_tokens",
        "provider_id",
        "status",
        "stream",
        "upstream_latency_us",
    ],
    &[
        "client_ip",
        "endpoint",
        "key_id",
        "model",
        "reason",
        "suppressed",
    ],
];

const NULL: u8 = 0x00;
const FALSE: u8 = 0x01;
const TRUE: u8 = 0x02;
const UINT: u8 = 0x03;
const NEG: u8 = 0x04;
const FLOAT: u8 = 0x05;
const STR: u8 = 0x06;
const ARRAY: u8 = 0x07;
const OBJECT: u8 = 0x08;
const CONTEXT: u8 = 0x09;
const ULID_SUFFIX: u8 = 0x0A;
const IPV4: u8 = 0x0B;
const HEX: u8 = 0x0C;
const SHAPE: u8 = 0x0D;
const SMALL: u8 = 0x10;
const SMALL_MAX: u64 = 0x3F - 0x10;
const DICT: u8 = 0x40;

/// Deeper than serde_json parses (128), so no stored value is refused for its depth.
const MAX_DEPTH: usize = 160;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompactError {
    #[error("compact value: truncated")]
    Truncated,
    #[error("compact value: unknown tag {0:#04x}")]
    Tag(u8),
    #[error("compact value: {0}")]
    Invalid(&'static str),
    #[error("compact value: trailing bytes")]
    Trailing,
}

fn dictionary() -> &'static HashMap<&'static str, u8> {
    static MAP: OnceLock<HashMap<&'static str, u8>> = OnceLock::new();
    MAP.get_or_init(|| {
        DICTIONARY
            .iter()
            .enumerate()
            .take(usize::from(u8::MAX - DICT) + 1)
            .map(|(i, s)| (*s, DICT + i as u8))
            .collect()
    })
}

/// What an event's payload may refer to instead of repeating it: its actor, and the id
/// its stream names (`usage:<key id>` gives the key id).
pub fn context<'a>(actor: &'a str, stream: &'a str) -> [&'a str; 2] {
    [actor, stream.split_once(':').map_or("", |(_, id)| id)]
}

/// Encodes `v`; strings equal to one of `context` (at most 256) are stored as a reference.
pub fn encode(v: &Value, context: &[&str], out: &mut Vec<u8>) {
    match v {
        Value::Null => out.push(NULL),
        Value::Bool(false) => out.push(FALSE),
        Value::Bool(true) => out.push(TRUE),
        Value::Number(n) => encode_number(n, out),
        Value::String(s) => encode_str(s, context, out),
        Value::Array(items) => {
            out.push(ARRAY);
            varint(items.len() as u64, out);
            for item in items {
                encode(item, context, out);
            }
        }
        Value::Object(map) => {
            if map.len() >= 3 && encode_shaped(map, context, out) {
                return;
            }
            out.push(OBJECT);
            varint(map.len() as u64, out);
            for (k, v) in map {
                encode_str(k, context, out);
                encode(v, context, out);
            }
        }
    }
}

/// Writes `map` as a [`SHAPE`] token if one of [`SHAPES`] holds all its keys.
fn encode_shaped(map: &Map<String, Value>, context: &[&str], out: &mut Vec<u8>) -> bool {
    'shapes: for (index, shape) in SHAPES.iter().enumerate() {
        if map.len() > shape.len() {
            continue;
        }
        // Both sorted: one walk finds each key's place in the shape.
        let mut bits: u64 = 0;
        let mut at = 0;
        for key in map.keys() {
            match shape[at..].iter().position(|k| *k == key) {
                Some(p) => {
                    at += p;
                    bits |= 1 << at;
                    at += 1;
                }
                None => continue 'shapes,
            }
        }
        out.push(SHAPE);
        out.push(index as u8);
        varint(bits, out);
        for v in map.values() {
            encode(v, context, out);
        }
        return true;
    }
    false
}

fn encode_number(n: &Number, out: &mut Vec<u8>) {
    if let Some(u) = n.as_u64() {
        if u <= SMALL_MAX {
            out.push(SMALL + u as u8);
        } else {
            out.push(UINT);
            varint(u, out);
        }
    } else if let Some(i) = n.as_i64() {
        // Negative: as_u64 took every non-negative integer.
        out.push(NEG);
        varint((-1 - i) as u64, out);
    } else {
        out.push(FLOAT);
        out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_bits().to_le_bytes());
    }
}

/// Encodes one string.
pub fn encode_str(s: &str, context: &[&str], out: &mut Vec<u8>) {
    encode_string(s, context, true, out);
}

fn encode_string(s: &str, context: &[&str], ulid_suffix: bool, out: &mut Vec<u8>) {
    if let Some(i) = context.iter().take(256).position(|c| *c == s) {
        out.push(CONTEXT);
        out.push(i as u8);
        return;
    }
    if let Some(&tag) = dictionary().get(s) {
        out.push(tag);
        return;
    }
    if ulid_suffix && s.len() >= ulid::ULID_LEN && s.is_char_boundary(s.len() - ulid::ULID_LEN) {
        let (prefix, tail) = s.split_at(s.len() - ulid::ULID_LEN);
        if let Ok(id) = Ulid::from_string(tail)
            && id.array_to_str(&mut [0; ulid::ULID_LEN]) == tail
        {
            out.push(ULID_SUFFIX);
            encode_string(prefix, &[], false, out);
            out.extend_from_slice(&id.to_bytes());
            return;
        }
    }
    if s.len() <= 15
        && let Ok(ip) = s.parse::<Ipv4Addr>()
        && ip.to_string() == s
    {
        out.push(IPV4);
        out.extend_from_slice(&ip.octets());
        return;
    }
    if !s.is_empty()
        && s.len().is_multiple_of(2)
        && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        out.push(HEX);
        varint((s.len() / 2) as u64, out);
        let b = s.as_bytes();
        for pair in b.chunks_exact(2) {
            out.push(nibble(pair[0]) << 4 | nibble(pair[1]));
        }
        return;
    }
    out.push(STR);
    varint(s.len() as u64, out);
    out.extend_from_slice(s.as_bytes());
}

fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        _ => c - b'a' + 10,
    }
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// The encoding of `v` as a new vector.
pub fn to_vec(v: &Value, context: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    encode(v, context, &mut out);
    out
}

/// Decodes a whole buffer holding one value.
pub fn decode(bytes: &[u8], context: &[&str]) -> Result<Value, CompactError> {
    let mut r = Reader {
        bytes,
        pos: 0,
        context,
    };
    let v = r.value(0)?;
    if r.pos != bytes.len() {
        return Err(CompactError::Trailing);
    }
    Ok(v)
}

/// Decodes a whole buffer holding one string (as [`encode_str`] writes it).
pub fn decode_str(bytes: &[u8], context: &[&str]) -> Result<String, CompactError> {
    let mut r = Reader {
        bytes,
        pos: 0,
        context,
    };
    let tag = r.byte()?;
    let s = r.string(tag, 0)?;
    if r.pos != bytes.len() {
        return Err(CompactError::Trailing);
    }
    Ok(s)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    context: &'a [&'a str],
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, CompactError> {
        let b = *self.bytes.get(self.pos).ok_or(CompactError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], CompactError> {
        let end = self.pos.checked_add(n).ok_or(CompactError::Truncated)?;
        let s = self
            .bytes
            .get(self.pos..end)
            .ok_or(CompactError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn varint(&mut self) -> Result<u64, CompactError> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let part = u64::from(b & 0x7f);
            if shift == 63 && part > 1 {
                return Err(CompactError::Invalid("varint overflows 64 bits"));
            }
            n |= part << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(CompactError::Invalid("varint longer than 10 bytes"))
    }

    /// A count of items that each take at least one byte: never more than what is left,
    /// so no allocation is larger than the input.
    fn count(&mut self) -> Result<usize, CompactError> {
        let n = self.varint()?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left {
            return Err(CompactError::Truncated);
        }
        Ok(n as usize)
    }

    fn value(&mut self, depth: usize) -> Result<Value, CompactError> {
        if depth > MAX_DEPTH {
            return Err(CompactError::Invalid("nested too deep"));
        }
        let tag = self.byte()?;
        Ok(match tag {
            NULL => Value::Null,
            FALSE => Value::Bool(false),
            TRUE => Value::Bool(true),
            UINT => Value::Number(self.varint()?.into()),
            NEG => {
                let n = self.varint()?;
                let n = i64::try_from(n)
                    .map_err(|_| CompactError::Invalid("negative integer out of range"))?;
                Value::Number((-1 - n).into())
            }
            FLOAT => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                let f = f64::from_bits(u64::from_le_bytes(a));
                Value::Number(
                    Number::from_f64(f).ok_or(CompactError::Invalid("float is not finite"))?,
                )
            }
            ARRAY => {
                let n = self.count()?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(depth + 1)?);
                }
                Value::Array(items)
            }
            OBJECT => {
                let n = self.count()?;
                let mut map = Map::new();
                for _ in 0..n {
                    let t = self.byte()?;
                    let k = self.string(t, 0)?;
                    let v = self.value(depth + 1)?;
                    map.insert(k, v);
                }
                Value::Object(map)
            }
            SHAPE => {
                let shape = SHAPES
                    .get(usize::from(self.byte()?))
                    .ok_or(CompactError::Invalid("unknown shape"))?;
                let bits = self.varint()?;
                if bits >> shape.len() != 0 {
                    return Err(CompactError::Invalid("key outside the shape"));
                }
                let mut map = Map::new();
                for (i, key) in shape.iter().enumerate() {
                    if bits & (1 << i) != 0 {
                        map.insert((*key).to_owned(), self.value(depth + 1)?);
                    }
                }
                Value::Object(map)
            }
            SMALL..=0x3F => Value::Number(u64::from(tag - SMALL).into()),
            _ => Value::String(self.string(tag, 0)?),
        })
    }

    fn string(&mut self, tag: u8, depth: usize) -> Result<String, CompactError> {
        match tag {
            STR => {
                let n = self.count()?;
                let b = self.take(n)?;
                String::from_utf8(b.to_vec()).map_err(|_| CompactError::Invalid("not UTF-8"))
            }
            CONTEXT => {
                let i = self.byte()?;
                self.context
                    .get(usize::from(i))
                    .map(|s| (*s).to_owned())
                    .ok_or(CompactError::Invalid("context index out of range"))
            }
            ULID_SUFFIX => {
                if depth > 0 {
                    return Err(CompactError::Invalid("nested ULID prefix"));
                }
                let t = self.byte()?;
                let mut s = self.string(t, depth + 1)?;
                let b = self.take(16)?;
                let mut a = [0u8; 16];
                a.copy_from_slice(b);
                s.push_str(Ulid::from_bytes(a).array_to_str(&mut [0; ulid::ULID_LEN]));
                Ok(s)
            }
            IPV4 => {
                let b = self.take(4)?;
                Ok(Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string())
            }
            HEX => {
                let n = self.count()?;
                if n == 0 {
                    return Err(CompactError::Invalid("empty hex"));
                }
                let b = self.take(n)?;
                const DIGITS: &[u8; 16] = b"0123456789abcdef";
                let mut s = String::with_capacity(n * 2);
                for &x in b {
                    s.push(char::from(DIGITS[usize::from(x >> 4)]));
                    s.push(char::from(DIGITS[usize::from(x & 15)]));
                }
                Ok(s)
            }
            DICT..=0xFF => DICTIONARY
                .get(usize::from(tag - DICT))
                .map(|s| (*s).to_owned())
                .ok_or(CompactError::Tag(tag)),
            _ => Err(CompactError::Tag(tag)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round(v: &Value, ctx: &[&str]) -> Vec<u8> {
        let bytes = to_vec(v, ctx);
        let back = decode(&bytes, ctx).unwrap();
        assert_eq!(&back, v);
        assert_eq!(crate::canonical::to_vec(&back), crate::canonical::to_vec(v));
        bytes
    }

    #[test]
    fn values_of_every_kind_round_trip() {
        let ctx = ["key_01JDZ0R7PS4Y5V3QY4VX4M6ZKT", "usr_x"];
        for v in [
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!(47),
            json!(48),
            json!(u64::MAX),
            json!(-1),
            json!(i64::MIN),
            json!(1.5),
            json!(-0.0),
            json!(1e300),
            json!(""),
            json!("plain é 😀"),
            json!("key_01JDZ0R7PS4Y5V3QY4VX4M6ZKT"),
            json!("usr_x"),
            json!("req_01JDZ0R7PS4Y5V3QY4VX4M6ZKT"),
            json!("01JDZ0R7PS4Y5V3QY4VX4M6ZKT"),
            json!("01jdz0r7ps4y5v3qy4vx4m6zkt"),
            json!("x01JDZ0R7PS4Y5V3QY4VX4M6ZK"),
            json!("req_01JDZ0R7PS4Y5V3QY4VX4M6ZKT01JDZ0R7PS4Y5V3QY4VX4M6ZKT"),
            json!("é01JDZ0R7PS4Y5V3QY4VX4M6ZKT"),
            json!("10.0.0.1"),
            json!("010.0.0.1"),
            json!("255.255.255.255"),
            json!("::1"),
            json!("0f0e"),
            json!("0F0E"),
            json!("abc"),
            json!("success"),
            json!([1, "a", [], {}]),
            json!({"a": {"b": [null, {"c": 2}]}, "model": "gpt-4o"}),
        ] {
            round(&v, &ctx);
        }
    }

    #[test]
    fn a_key_used_payload_is_small() {
        let key = "key_01JDZ0R7PS4Y5V3QY4VX4M6ZKT";
        let v = json!({
            "key_id": key,
            "provider_id": "prv_01JDZ0R7PS4Y5V3QY4VX4M6ZKA",
            "model": "gpt-4o-mini",
            "endpoint": "/v1/chat/completions",
            "outcome": "success",
            "status": 200,
            "latency_us": 812345,
            "upstream_latency_us": 800001,
            "prompt_tokens": 1200,
            "completion_tokens": 345,
            "stream": true,
            "client_ip": "10.1.2.3",
        });
        let bytes = round(&v, &[key]);
        assert!(bytes.len() <= 50, "{} bytes", bytes.len());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for b in [
            &[][..],
            &[0xff, 0x00],
            &[
                ARRAY, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
            &[STR, 5, b'a'],
            &[CONTEXT, 3],
            &[FLOAT, 0, 0, 0, 0, 0, 0, 0xf8, 0x7f],
            &[ULID_SUFFIX, ULID_SUFFIX, STR, 0],
            &[0x0D],
        ] {
            assert!(decode(b, &[]).is_err(), "{b:?}");
        }
        let deep = [ARRAY, 1].repeat(10_000);
        assert!(decode(&deep, &[]).is_err());
    }

    #[test]
    fn shapes_are_sorted_and_fit_a_bitmap() {
        for shape in SHAPES {
            assert!(shape.len() <= 64);
            assert!(shape.windows(2).all(|w| w[0].as_bytes() < w[1].as_bytes()));
        }
        // A subset of a shape's keys, and one with a key outside every shape.
        round(
            &json!({"client_ip": "::1", "endpoint": "/x", "stream": true}),
            &[],
        );
        round(&json!({"client_ip": 1, "endpoint": 2, "zzz": 3}), &[]);
        round(
            &json!({"suppressed": 0, "reason": "ip", "key_id": "k"}),
            &[],
        );
    }

    #[test]
    fn the_dictionary_has_room_and_no_duplicates() {
        assert!(DICTIONARY.len() <= 192);
        assert_eq!(dictionary().len(), DICTIONARY.len());
    }

    /// xorshift64: a reproducible stream of random numbers without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn random_string(r: &mut Rng, ctx: &[&str]) -> String {
        let ulid = |r: &mut Rng| Ulid((u128::from(r.next()) << 64) | u128::from(r.next()));
        match r.below(10) {
            0 => DICTIONARY[r.below(DICTIONARY.len() as u64) as usize].to_owned(),
            1 => format!(
                "{}{}",
                ["key_", "req_", "", "x", "é"][r.below(5) as usize],
                ulid(r)
            ),
            2 => ulid(r).to_string().to_lowercase(),
            3 => format!(
                "{}.{}.{}.{}",
                r.below(300),
                r.below(256),
                r.below(256),
                r.below(256)
            ),
            4 => (0..r.below(9))
                .map(|_| format!("{:02x}", r.below(256)))
                .collect(),
            5 => ctx[r.below(ctx.len() as u64) as usize].to_owned(),
            6 => String::new(),
            7 => format!("{:X}", r.next()),
            _ => (0..r.below(12))
                .map(|_| {
                    [
                        'a', 'Z', '0', '"', '\\', '\n', '\u{0}', 'é', '😀', '\u{2028}', ':', '.',
                    ][r.below(12) as usize]
                })
                .collect(),
        }
    }

    fn random_value(r: &mut Rng, ctx: &[&str], depth: u32) -> Value {
        match r.below(if depth > 3 { 7 } else { 9 }) {
            0 => Value::Null,
            1 => Value::Bool(r.below(2) == 0),
            2 => json!(r.next() >> r.below(64)),
            3 => json!(-((r.next() >> (r.below(63) + 1)) as i64) - 1),
            4 => Number::from_f64(f64::from_bits(r.next())).map_or(json!(0.25), Value::Number),
            5 | 6 => Value::String(random_string(r, ctx)),
            7 => Value::Array(
                (0..r.below(5))
                    .map(|_| random_value(r, ctx, depth + 1))
                    .collect(),
            ),
            _ => Value::Object(
                (0..r.below(6))
                    .map(|_| (random_string(r, ctx), random_value(r, ctx, depth + 1)))
                    .collect(),
            ),
        }
    }

    #[test]
    fn random_values_round_trip_to_the_same_canonical_bytes() {
        let ctx = ["key_01JDZ0R7PS4Y5V3QY4VX4M6ZKT", "usr_x"];
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let v = random_value(&mut r, &ctx, 0);
            round(&v, &ctx);
            round(&v, &[]);
            let s = random_string(&mut r, &ctx);
            let mut out = Vec::new();
            encode_str(&s, &ctx, &mut out);
            assert_eq!(decode_str(&out, &ctx).as_deref(), Ok(s.as_str()));
        }
    }

    #[test]
    fn typed_events_round_trip() {
        use crate::types::*;
        let key = "key_01JDZ0R7PS4Y5V3QY4VX4M6ZKT".to_owned();
        let events = [
            Event::KeyUsed(KeyUsed {
                key_id: key.clone(),
                provider_id: "prv_01JDZ0R7PS4Y5V3QY4VX4M6ZKA".into(),
                model: Some("some-new-model".into()),
                endpoint: "/v1/chat/completions".into(),
                outcome: UsageOutcome::Success,
                status: 200,
                latency_us: 1,
                upstream_latency_us: None,
                prompt_tokens: 0,
                completion_tokens: u64::MAX,
                stream: false,
                client_ip: Some("2001:db8::1".into()),
            }),
            Event::UserCreated(UserCreated {
                user_id: "usr_01JDZ0R7PS4Y5V3QY4VX4M6ZKA".into(),
                username: "ada".into(),
                role: Role::Admin,
                password: Some(SealedPassword {
                    ciphertext: "00ff".repeat(20),
                    nonce: "ab".repeat(12),
                    keyring_version: 3,
                }),
                legacy_password_hash: None,
            }),
            Event::KeyUpdated(KeyUpdated {
                key_id: key.clone(),
                rate_limit: Some(None),
                quota: Some(Some(Quota {
                    tokens_per_day: Some(5),
                    ..Quota::default()
                })),
                ..KeyUpdated::default()
            }),
        ];
        for e in events {
            let stream = e.stream();
            let ctx = context(&key, &stream);
            round(&e.data(), &ctx);
        }
    }
}
