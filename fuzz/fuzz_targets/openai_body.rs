//! The OpenAI request body scan (`proxy::body`), which reads `model`, `stream` and
//! `stream_options.include_usage` without re-serialising the body, checked against a
//! reference model built on `serde_json::Value`.
//!
//! - Never panics.
//! - What `serde_json` refuses, the scan refuses; a JSON value that is not an object is
//!   `NotObject`.
//! - A forbidden key (`api_base`, `base_url`, `api_key`, any case, `_`/`-` ignored) at any
//!   depth is refused, and the refusal names a path that ends in such a key.
//! - When the scan accepts, it reads the same `model`, `stream` and `include_usage` as the
//!   reference, so the allowlist checks the model the provider will see.
//! - `with_include_usage` keeps every other field and sets the flag.
#![no_main]

use keyward::http::proxy::body::{self, ScanError};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn forbidden(key: &str) -> bool {
    let norm: String = key
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    matches!(norm.as_str(), "apibase" | "baseurl" | "apikey")
}

fn any_forbidden(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, v)| forbidden(k) || any_forbidden(v)),
        Value::Array(a) => a.iter().any(any_forbidden),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let scanned = body::scan(data);
    let reference = serde_json::from_slice::<Value>(data);

    if let Err(ScanError::Forbidden(path)) = &scanned {
        let last = path.rsplit(['.', ']']).next().unwrap_or(path);
        assert!(
            forbidden(last),
            "refused {path:?}, which ends in an allowed key"
        );
    }

    let Ok(v) = reference else {
        assert!(
            scanned.is_err(),
            "the scan accepted what serde_json refuses"
        );
        return;
    };
    let Some(obj) = v.as_object() else {
        assert_eq!(scanned, Err(ScanError::NotObject));
        return;
    };
    if any_forbidden(&v) {
        assert!(
            matches!(
                scanned,
                Err(ScanError::Forbidden(_)) | Err(ScanError::Duplicate(_))
            ),
            "a forbidden key passed: {scanned:?}"
        );
        return;
    }
    let Ok(s) = scanned else {
        // Only a key that the parsed value no longer shows (a duplicate) may be refused
        // here.
        assert!(
            matches!(
                scanned,
                Err(ScanError::Forbidden(_)) | Err(ScanError::Duplicate(_))
            ),
            "a valid object was refused: {scanned:?}"
        );
        return;
    };

    match obj.get("model") {
        Some(Value::String(m)) => {
            assert_eq!(s.model.as_deref(), Some(m.as_str()));
            assert!(!s.model_invalid);
        }
        None | Some(Value::Null) => {
            assert_eq!(s.model, None);
            assert!(!s.model_invalid);
        }
        Some(_) => assert!(s.model_invalid && s.model.is_none()),
    }
    assert_eq!(s.stream, obj.get("stream") == Some(&Value::Bool(true)));
    let include_usage = obj
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        == Some(&Value::Bool(true));
    assert_eq!(s.include_usage, include_usage);

    let rewritten = body::with_include_usage(data).expect("an accepted body can be rewritten");
    let w: Value = serde_json::from_slice(&rewritten).expect("the rewrite is JSON");
    let wobj = w.as_object().expect("the rewrite is an object");
    assert_eq!(wobj["stream_options"]["include_usage"], Value::Bool(true));
    for (k, val) in obj {
        if k != "stream_options" {
            assert_eq!(wobj.get(k), Some(val), "the rewrite changed {k:?}");
        }
    }
    assert_eq!(
        wobj.len(),
        obj.len() + usize::from(!obj.contains_key("stream_options"))
    );
    let again = body::scan(&rewritten).expect("the rewrite scans");
    assert_eq!(
        (again.model, again.model_invalid, again.stream),
        (s.model, s.model_invalid, s.stream)
    );
    assert!(again.include_usage);
});
