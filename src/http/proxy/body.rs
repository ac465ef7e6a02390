//! Reading a client's request body: the few fields the proxy needs (`model`, `stream`,
//! `stream_options.include_usage`) and a walk over every key at every depth that refuses
//! the fields a client could use to choose the upstream or its credential. Nothing else
//! is decoded, and the body is forwarded as it came.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// What the proxy reads from a body.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scanned {
    pub model: Option<String>,
    /// `model` is present but not a string.
    pub model_invalid: bool,
    pub stream: bool,
    /// The client asked for the final usage chunk itself.
    pub include_usage: bool,
    /// The largest of `max_tokens` and `max_completion_tokens`, when one is a whole
    /// number: what the quota reserves for the completion.
    pub max_tokens: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ScanError {
    /// Not JSON, or JSON nested too deeply.
    Syntax,
    /// Valid JSON, but not an object.
    NotObject,
    /// A key that chooses the upstream or its credential, at this path.
    Forbidden(String),
    /// A top-level field the proxy decides on (`model`, `stream`, `stream_options`) given
    /// twice. Parsers differ on which copy wins, so the model the allowlist checked might
    /// not be the one the provider runs.
    Duplicate(&'static str),
}

/// Keys a client may not send at any depth, compared without case, `_` or `-`.
const FORBIDDEN: &[&str] = &["apibase", "baseurl", "apikey"];

fn is_forbidden(key: &str) -> bool {
    // Normalised on the stack: every key of every body passes through here. Separators
    // are skipped before the length counts, so `a_p_i_k_e_y____` is caught too.
    let mut norm = [0u8; 8];
    let mut n = 0;
    for b in key.bytes() {
        if b == b'_' || b == b'-' {
            continue;
        }
        let Some(slot) = norm.get_mut(n) else {
            return false;
        };
        *slot = b.to_ascii_lowercase();
        n += 1;
    }
    FORBIDDEN.iter().any(|f| f.as_bytes() == &norm[..n])
}

pub fn scan(body: &[u8]) -> Result<Scanned, ScanError> {
    let mut walk = Walk::default();
    let mut de = serde_json::Deserializer::from_slice(body);
    let res = Top { walk: &mut walk }
        .deserialize(&mut de)
        .and_then(|()| de.end());
    if let Some(path) = walk.forbidden {
        return Err(ScanError::Forbidden(path));
    }
    if walk.not_object {
        return Err(ScanError::NotObject);
    }
    if let Some(field) = walk.duplicate {
        return Err(ScanError::Duplicate(field));
    }
    res.map_err(|_| ScanError::Syntax)?;
    Ok(walk.out)
}

/// The body with `stream_options.include_usage` set, so that the provider reports usage in
/// a final chunk. The only case where an OpenAI-format body is re-serialised.
pub fn with_include_usage(body: &[u8]) -> Result<Vec<u8>, ScanError> {
    let mut v: Value = serde_json::from_slice(body).map_err(|_| ScanError::Syntax)?;
    let obj = v.as_object_mut().ok_or(ScanError::NotObject)?;
    let opts = obj
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Default::default()));
    if !opts.is_object() {
        *opts = Value::Object(Default::default());
    }
    if let Some(o) = opts.as_object_mut() {
        o.insert("include_usage".to_owned(), Value::Bool(true));
    }
    serde_json::to_vec(&v).map_err(|_| ScanError::Syntax)
}

#[derive(Default)]
struct Walk {
    out: Scanned,
    path: Vec<Seg>,
    forbidden: Option<String>,
    not_object: bool,
    duplicate: Option<&'static str>,
}

enum Seg {
    Key(String),
    Index(usize),
}

impl Walk {
    fn path_with(&self, last: &str) -> String {
        let mut s = String::new();
        for seg in &self.path {
            match seg {
                Seg::Key(k) => {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    s.push_str(k);
                }
                Seg::Index(i) => s.push_str(&format!("[{i}]")),
            }
        }
        if !s.is_empty() {
            s.push('.');
        }
        s.push_str(last);
        s
    }

    fn check_key<E: de::Error>(&mut self, key: &str) -> Result<(), E> {
        if is_forbidden(key) {
            self.forbidden = Some(self.path_with(key));
            return Err(E::custom("forbidden field"));
        }
        Ok(())
    }
}

/// The top-level fields the proxy reads and decides on.
const DECIDED: [&str; 3] = ["model", "stream", "stream_options"];

/// The top-level object: reads the three fields and walks the rest.
struct Top<'a> {
    walk: &'a mut Walk,
}

impl<'de> DeserializeSeed<'de> for Top<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = [false; 3];
        while let Some(key) = map.next_key::<String>()? {
            self.walk.check_key(&key)?;
            if let Some(i) = DECIDED.iter().position(|d| *d == key)
                && std::mem::replace(&mut seen[i], true)
            {
                self.walk.duplicate = Some(DECIDED[i]);
                return Err(de::Error::custom("duplicate field"));
            }
            match key.as_str() {
                "model" => match map.next_value::<Value>()? {
                    Value::String(m) => self.walk.out.model = Some(m),
                    Value::Null => {}
                    v => {
                        // Not a model, but its keys are checked as every other value's.
                        self.walk.path.push(Seg::Key(key));
                        check_value(self.walk, &v)?;
                        self.walk.path.pop();
                        self.walk.out.model_invalid = true;
                    }
                },
                "stream" => {
                    let v = map.next_value::<Value>()?;
                    self.walk.path.push(Seg::Key(key));
                    check_value(self.walk, &v)?;
                    self.walk.path.pop();
                    self.walk.out.stream = matches!(v, Value::Bool(true));
                }
                "stream_options" => {
                    let v = map.next_value::<Value>()?;
                    self.walk.path.push(Seg::Key(key));
                    check_value(self.walk, &v)?;
                    self.walk.path.pop();
                    self.walk.out.include_usage =
                        v.get("include_usage").and_then(Value::as_bool) == Some(true);
                }
                "max_tokens" | "max_completion_tokens" => {
                    let v = map.next_value::<Value>()?;
                    self.walk.path.push(Seg::Key(key));
                    check_value(self.walk, &v)?;
                    self.walk.path.pop();
                    // Given twice, or both: the provider may read either, so the larger.
                    if let Some(n) = v.as_u64() {
                        self.walk.out.max_tokens = self.walk.out.max_tokens.max(Some(n));
                    }
                }
                _ => {
                    self.walk.path.push(Seg::Key(key));
                    map.next_value_seed(Nested {
                        walk: &mut *self.walk,
                    })?;
                    self.walk.path.pop();
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.walk.not_object = true;
        Err(de::Error::custom("not an object"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.not_object()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.not_object()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.not_object()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.not_object()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.not_object()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.not_object()
    }
}

impl Top<'_> {
    fn not_object<E: de::Error>(self) -> Result<(), E> {
        self.walk.not_object = true;
        Err(E::custom("not an object"))
    }
}

fn check_value<E: de::Error>(walk: &mut Walk, v: &Value) -> Result<(), E> {
    match v {
        Value::Object(m) => {
            for (k, inner) in m {
                walk.check_key(k)?;
                walk.path.push(Seg::Key(k.clone()));
                check_value(walk, inner)?;
                walk.path.pop();
            }
        }
        Value::Array(a) => {
            for (i, inner) in a.iter().enumerate() {
                walk.path.push(Seg::Index(i));
                check_value(walk, inner)?;
                walk.path.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

/// Any value below the top level: only its keys are looked at.
struct Nested<'a> {
    walk: &'a mut Walk,
}

impl<'de> DeserializeSeed<'de> for Nested<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Nested<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            self.walk.check_key(&key)?;
            self.walk.path.push(Seg::Key(key));
            map.next_value_seed(Nested {
                walk: &mut *self.walk,
            })?;
            self.walk.path.pop();
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            self.walk.path.push(Seg::Index(i));
            let more = seq
                .next_element_seed(Nested {
                    walk: &mut *self.walk,
                })?
                .is_some();
            self.walk.path.pop();
            if !more {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forbidden_key_inside_a_non_string_model_or_stream_is_refused() {
        // Found by the openai_body fuzz target: a model that is not a string was not
        // walked, so a forbidden key inside it passed.
        for body in [
            &br#"{"model":[{"role":"user","extra":{"api_base":"69"}}]}"#[..],
            br#"{"model":"m","stream":{"api_base":"x"}}"#,
        ] {
            assert!(
                matches!(scan(body), Err(ScanError::Forbidden(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn reads_model_stream_and_include_usage() {
        let s = scan(br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#).unwrap();
        assert_eq!(s.model.as_deref(), Some("gpt-4o"));
        assert!(s.stream && s.include_usage && !s.model_invalid);
        let s = scan(br#"{"model":7}"#).unwrap();
        assert!(s.model_invalid && s.model.is_none() && !s.stream);
        assert_eq!(s.max_tokens, None);
    }

    #[test]
    fn reads_the_largest_completion_bound() {
        let s = scan(br#"{"model":"m","max_tokens":5,"max_completion_tokens":9}"#).unwrap();
        assert_eq!(s.max_tokens, Some(9));
        let s = scan(br#"{"model":"m","max_tokens":50,"max_tokens":9}"#).unwrap();
        assert_eq!(s.max_tokens, Some(50));
        let s = scan(br#"{"model":"m","max_tokens":"5"}"#).unwrap();
        assert_eq!(s.max_tokens, None);
    }

    #[test]
    fn forbidden_fields_are_found_at_any_depth() {
        assert_eq!(
            scan(br#"{"model":"m","api_base":"http://evil"}"#),
            Err(ScanError::Forbidden("api_base".into()))
        );
        assert_eq!(
            scan(br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","extra":{"baseURL":"x"}}]}]}"#),
            Err(ScanError::Forbidden("messages[0].content[0].extra.baseURL".into()))
        );
        assert_eq!(
            scan(br#"{"stream_options":{"api-key":"k"}}"#),
            Err(ScanError::Forbidden("stream_options.api-key".into()))
        );
        assert_eq!(
            scan(br#"{"a":[[{"Api_Key":1}]]}"#),
            Err(ScanError::Forbidden("a[0][0].Api_Key".into()))
        );
        // A value that merely mentions the name is fine.
        assert!(scan(br#"{"model":"m","messages":[{"content":"my api_key is"}]}"#).is_ok());
    }

    #[test]
    fn separators_do_not_hide_a_forbidden_key_however_many() {
        // The openai_body fuzz target checks this: keys over 16 bytes were never checked.
        assert_eq!(
            scan(br#"{"a_p_i_k_e_y____":"k"}"#),
            Err(ScanError::Forbidden("a_p_i_k_e_y____".into()))
        );
        assert_eq!(
            scan(br#"{"x":{"--base--url----------":"http://evil"}}"#),
            Err(ScanError::Forbidden("x.--base--url----------".into()))
        );
        assert!(scan(br#"{"api_keys":1,"apikeyx":2,"base_url_x":3}"#).is_ok());
    }

    #[test]
    fn a_decided_field_given_twice_is_refused() {
        // The openai_body fuzz target checks this: `"model":"a","model":null` was read as
        // "a" while a last-wins parser upstream sees null, and a first-wins one sees
        // another model than the allowlist checked.
        assert_eq!(
            scan(br#"{"model":"allowed","model":null}"#),
            Err(ScanError::Duplicate("model"))
        );
        assert_eq!(
            scan(br#"{"model":"m","stream":false,"x":1,"stream":true}"#),
            Err(ScanError::Duplicate("stream"))
        );
        assert_eq!(
            scan(br#"{"stream_options":{},"stream_options":{"include_usage":true}}"#),
            Err(ScanError::Duplicate("stream_options"))
        );
        // Other fields are forwarded as they came; nested duplicates are not ours to judge.
        assert!(scan(br#"{"model":"m","user":"a","user":"b","n":{"model":1,"model":2}}"#).is_ok());
    }

    #[test]
    fn malformed_bodies() {
        assert_eq!(scan(b"{\"model\":"), Err(ScanError::Syntax));
        assert_eq!(scan(b"[1,2]"), Err(ScanError::NotObject));
        assert_eq!(scan(b"\"x\""), Err(ScanError::NotObject));
        assert_eq!(scan(b"{} x"), Err(ScanError::Syntax));
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert_eq!(
            scan(format!("{{\"a\":{deep}}}").as_bytes()),
            Err(ScanError::Syntax)
        );
    }

    #[test]
    fn include_usage_is_added_and_kept() {
        let out =
            with_include_usage(br#"{"model":"m","stream":true,"stream_options":{"x":1}}"#).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], Value::Bool(true));
        assert_eq!(v["stream_options"]["x"], 1);
        assert_eq!(v["model"], "m");
    }
}
