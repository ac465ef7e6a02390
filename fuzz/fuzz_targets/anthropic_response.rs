//! Anthropic → OpenAI: a Messages response, an error body, and a stream of events
//! (`providers::messages::{response, error, StreamTranslator}` behind the SSE parser).
//!
//! - Never panics, whatever the provider sends; token counts that overflow do not wrap.
//! - A translated response is a `chat.completion` whose usage adds up.
//! - A translated error is always OpenAI's error shape.
//! - Every chunk the stream translator writes is one SSE `data:` event holding a JSON
//!   object (a `chat.completion.chunk` or an error) or `[DONE]`, `[DONE]` comes last,
//!   nothing follows it, and a usage chunk adds up.
#![no_main]

use keyward::providers::messages::{self as anthropic, StreamTranslator};
use keyward::providers::sse::SseParser;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn usage_adds_up(v: &Value) {
    let u = &v["usage"];
    if u.is_null() {
        return;
    }
    let p = u["prompt_tokens"].as_u64().expect("prompt_tokens");
    let c = u["completion_tokens"].as_u64().expect("completion_tokens");
    let t = u["total_tokens"].as_u64().expect("total_tokens");
    assert_eq!(Some(t), p.checked_add(c).or(Some(u64::MAX)), "usage {u}");
}

fn check_chunk(bytes: &[u8]) -> bool {
    let mut p = SseParser::new();
    p.push(bytes);
    let ev = p.next_event().expect("a chunk is one whole event");
    assert!(
        p.next_event().is_none() && p.finish().is_none(),
        "a chunk holds one event"
    );
    assert_eq!(&ev.raw[..], bytes);
    assert!(ev.event.is_none());
    if ev.data == "[DONE]" {
        return true;
    }
    let v: Value = serde_json::from_str(&ev.data).expect("a chunk's data is JSON");
    if let Some(e) = v.get("error") {
        assert!(e["message"].is_string() && e["type"].is_string());
    } else {
        assert_eq!(v["object"], "chat.completion.chunk");
        assert!(v["choices"].is_array());
        usage_adds_up(&v);
    }
    false
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Some((out, tokens)) = anthropic::response(rest) {
                let v: Value = serde_json::from_slice(&out).expect("the translation is JSON");
                assert_eq!(v["object"], "chat.completion");
                assert_eq!(v["usage"]["prompt_tokens"], tokens.prompt);
                assert_eq!(v["usage"]["completion_tokens"], tokens.completion);
                usage_adds_up(&v);
                assert_eq!(anthropic::response_tokens(rest), tokens);
            }
        }
        1 => {
            let v: Value = serde_json::from_slice(&anthropic::error(rest)).expect("JSON");
            assert!(v["error"]["message"].is_string());
            assert!(v["error"]["type"].is_string());
            assert_eq!(v["error"]["type"], v["error"]["code"]);
        }
        _ => {
            let include_usage = rest.first().is_some_and(|b| b & 1 == 1);
            let mut t = StreamTranslator::new(include_usage);
            let mut p = SseParser::new();
            p.push(rest);
            let mut events = Vec::new();
            while let Some(e) = p.next_event() {
                events.push(e);
            }
            events.extend(p.finish());
            let mut finished = false;
            for ev in &events {
                let out = t.event(ev);
                assert!(!finished || out.is_empty(), "output after [DONE]");
                for (i, chunk) in out.iter().enumerate() {
                    if check_chunk(chunk) {
                        assert_eq!(i, out.len() - 1, "[DONE] is not last");
                        finished = true;
                    }
                }
            }
        }
    }
});
