//! OpenAI chat request → Anthropic Messages request (`providers::messages::request`).
//!
//! - Never panics.
//! - An accepted request becomes a JSON object Anthropic accepts in shape: the model
//!   carried over, a numeric `max_tokens`, `messages` whose roles are `user` or
//!   `assistant` and alternate, each with a non-empty content array, a temperature within
//!   Anthropic's 0–1.
//! - A refusal is a 400 whose message and param never quote a credential-looking string
//!   (`kw_…` or `sk-…`) from the body.
#![no_main]

use keyward::providers::messages as anthropic;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn credential_like(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => {
            for (i, _) in s.match_indices("kw_").chain(s.match_indices("sk-")) {
                out.push(s[i..].chars().take(12).collect());
            }
        }
        Value::Array(a) => a.iter().for_each(|v| credential_like(v, out)),
        Value::Object(m) => m.values().for_each(|v| credential_like(v, out)),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let max = 4096;
    match anthropic::request(data, max) {
        Ok(out) => {
            let input: Value = serde_json::from_slice(data).expect("accepted input is JSON");
            let v: Value = serde_json::from_slice(&out).expect("the translation is JSON");
            let obj = v.as_object().expect("the translation is an object");
            assert_eq!(
                obj["model"],
                input.get("model").cloned().unwrap_or(Value::Null)
            );
            assert!(obj["max_tokens"].is_u64());
            let messages = obj["messages"].as_array().expect("messages is an array");
            let mut last: Option<&str> = None;
            for m in messages {
                let role = m["role"].as_str().expect("role is a string");
                assert!(role == "user" || role == "assistant", "role {role:?}");
                assert_ne!(last, Some(role), "two {role} turns in a row");
                last = Some(role);
                let content = m["content"].as_array().expect("content is an array");
                assert!(!content.is_empty(), "an empty turn");
                for block in content {
                    assert!(block["type"].is_string(), "a block without a type");
                }
            }
            if let Some(t) = obj.get("temperature") {
                let t = t.as_f64().expect("temperature is a number");
                assert!((0.0..=1.0).contains(&t), "temperature {t}");
            }
            if let Some(s) = obj.get("system") {
                assert!(s.is_string());
            }
            if let Some(stop) = obj.get("stop_sequences") {
                assert!(
                    !stop
                        .as_array()
                        .expect("stop_sequences is an array")
                        .is_empty()
                );
            }
        }
        Err(e) => {
            assert_eq!(e.status.as_u16(), 400);
            let Ok(input) = serde_json::from_slice::<Value>(data) else {
                return;
            };
            let mut secrets = Vec::new();
            credential_like(&input, &mut secrets);
            for s in secrets.iter().filter(|s| s.len() >= 8) {
                assert!(
                    !e.message.contains(s.as_str()),
                    "the error quotes {s:?}: {}",
                    e.message
                );
                if let Some(p) = &e.param {
                    assert!(!p.contains(s.as_str()), "the param quotes {s:?}: {p}");
                }
            }
        }
    }
});
