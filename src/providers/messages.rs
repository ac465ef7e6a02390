//! Translation between OpenAI's chat format and Anthropic's Messages API, both ways: the
//! request, the response, errors, and the SSE stream, so that an OpenAI client works
//! against an Anthropic provider, with `stream=true` too.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::error::ProxyError;
use super::sse::{SseEvent, data_event};
use super::wire::{self, Tokens};

pub const DEFAULT_VERSION: &str = "2023-06-01";
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

fn unsupported(param: String, what: &str) -> ProxyError {
    ProxyError::bad_request(
        "unsupported_parameter",
        format!("{what} cannot be sent to an Anthropic provider"),
    )
    .with_param(param)
}

fn invalid(param: impl Into<String>, what: &str) -> ProxyError {
    ProxyError::bad_request("invalid_request", what.to_owned()).with_param(param)
}

/// Text of an OpenAI `content`: a string, or an array of parts of which the text ones count.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn text_block(text: &str) -> Value {
    json!({"type": "text", "text": text})
}

/// OpenAI content parts → Anthropic content blocks. Empty texts are left out: Anthropic
/// refuses empty text blocks.
fn blocks_of(content: &Value, param: &str) -> Result<Vec<Value>, ProxyError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![text_block(s)]),
        Value::Array(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let kind = part.get("type").and_then(Value::as_str).unwrap_or("text");
                match kind {
                    "text" => {
                        let t = part.get("text").and_then(Value::as_str).unwrap_or("");
                        if !t.is_empty() {
                            out.push(text_block(t));
                        }
                    }
                    "image_url" => {
                        let url = part
                            .get("image_url")
                            .and_then(|i| i.get("url").or(Some(i)))
                            .and_then(Value::as_str)
                            .ok_or_else(|| {
                                invalid(
                                    format!("{param}[{j}].image_url"),
                                    "an image part needs a url",
                                )
                            })?;
                        out.push(image_block(url));
                    }
                    _ => {
                        return Err(unsupported(
                            format!("{param}[{j}].type"),
                            "this type of content part",
                        ));
                    }
                }
            }
            Ok(out)
        }
        _ => Err(invalid(
            param,
            "content must be a string or an array of parts",
        )),
    }
}

fn image_block(url: &str) -> Value {
    if let Some(rest) = url.strip_prefix("data:")
        && let Some((meta, data)) = rest.split_once(',')
        && let Some(media) = meta.strip_suffix(";base64")
    {
        return json!({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}});
    }
    json!({"type": "image", "source": {"type": "url", "url": url}})
}

/// An OpenAI chat request → an Anthropic Messages request.
pub fn request(body: &[u8], default_max_tokens: u64) -> Result<Vec<u8>, ProxyError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| ProxyError::bad_request("invalid_json", "the body is not valid JSON"))?;
    let model = v.get("model").cloned().unwrap_or(Value::Null);
    let messages = v
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("messages", "messages must be an array"))?;
    if v.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(unsupported("n".into(), "n greater than 1"));
    }

    let mut system: Vec<String> = Vec::new();
    let mut out: Vec<(String, Vec<Value>)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = m.get("content").unwrap_or(&Value::Null);
        let param = format!("messages[{i}].content");
        let (role, blocks) = match role {
            "system" | "developer" => {
                let t = text_of(content);
                if !t.is_empty() {
                    system.push(t);
                }
                continue;
            }
            "user" => ("user", blocks_of(content, &param)?),
            "assistant" => {
                let mut blocks = blocks_of(content, &param)?;
                if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                    for call in calls {
                        let f = call.get("function").unwrap_or(&Value::Null);
                        let args = f.get("arguments").and_then(Value::as_str).unwrap_or("{}");
                        let input: Value = serde_json::from_str(args)
                            .ok()
                            .filter(Value::is_object)
                            .unwrap_or_else(|| json!({}));
                        blocks.push(json!({
                            "type": "tool_use",
                            "id": call.get("id").cloned().unwrap_or(Value::Null),
                            "name": f.get("name").cloned().unwrap_or(Value::Null),
                            "input": input,
                        }));
                    }
                }
                ("assistant", blocks)
            }
            "tool" => (
                "user",
                vec![json!({
                    "type": "tool_result",
                    "tool_use_id": m.get("tool_call_id").cloned().unwrap_or(Value::Null),
                    "content": text_of(content),
                })],
            ),
            // The message names the place, never the client's text: a body may hold
            // anything, a credential included, and error bodies reach logs.
            _ => {
                return Err(unsupported(format!("messages[{i}].role"), "this role"));
            }
        };
        if blocks.is_empty() {
            continue;
        }
        // Anthropic wants user and assistant turns to alternate: merge neighbours.
        match out.last_mut() {
            Some((last, b)) if last == role => b.extend(blocks),
            _ => out.push((role.to_owned(), blocks)),
        }
    }

    let mut a = Map::new();
    a.insert("model".into(), model);
    let max_tokens = v
        .get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| v.get("max_tokens").and_then(Value::as_u64))
        .unwrap_or(default_max_tokens);
    a.insert("max_tokens".into(), max_tokens.into());
    a.insert(
        "messages".into(),
        Value::Array(
            out.into_iter()
                .map(|(role, content)| json!({"role": role, "content": content}))
                .collect(),
        ),
    );
    if !system.is_empty() {
        a.insert("system".into(), Value::String(system.join("\n\n")));
    }
    if let Some(t) = v.get("temperature").and_then(Value::as_f64) {
        // OpenAI's range is 0–2, Anthropic's 0–1.
        a.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    if let Some(p) = v.get("top_p").and_then(Value::as_f64) {
        a.insert("top_p".into(), json!(p));
    }
    match v.get("stop") {
        Some(Value::String(s)) => {
            a.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(list)) if !list.is_empty() => {
            a.insert("stop_sequences".into(), Value::Array(list.clone()));
        }
        _ => {}
    }
    if v.get("stream").and_then(Value::as_bool) == Some(true) {
        a.insert("stream".into(), Value::Bool(true));
    }
    if let Some(tools) = v.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .filter_map(|t| t.get("function"))
            .map(|f| {
                let mut t = Map::new();
                t.insert("name".into(), f.get("name").cloned().unwrap_or(Value::Null));
                if let Some(d) = f.get("description") {
                    t.insert("description".into(), d.clone());
                }
                t.insert(
                    "input_schema".into(),
                    f.get("parameters")
                        .cloned()
                        .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                );
                Value::Object(t)
            })
            .collect();
        if !tools.is_empty() {
            a.insert("tools".into(), Value::Array(tools));
        }
    }
    if let Some(choice) = v.get("tool_choice") {
        let c = match choice {
            Value::String(s) if s == "none" => Some(json!({"type": "none"})),
            Value::String(s) if s == "auto" => Some(json!({"type": "auto"})),
            Value::String(s) if s == "required" => Some(json!({"type": "any"})),
            Value::Object(o) => o
                .get("function")
                .and_then(|f| f.get("name"))
                .map(|n| json!({"type": "tool", "name": n})),
            _ => None,
        };
        if let Some(c) = c {
            a.insert("tool_choice".into(), c);
        }
    }
    if let Some(user) = v.get("user").and_then(Value::as_str) {
        a.insert("metadata".into(), json!({"user_id": user}));
    }
    serde_json::to_vec(&Value::Object(a))
        .map_err(|_| ProxyError::bad_request("invalid_json", "the body is not valid JSON"))
}

pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// Anthropic's usage object → prompt and completion tokens. Cached input counts as
/// prompt, as OpenAI counts it.
pub fn usage_tokens(u: &Value) -> (Option<u64>, Option<u64>) {
    let field = |k: &str| u.get(k).and_then(Value::as_u64);
    let input = field("input_tokens");
    // A provider's numbers are untrusted: saturate rather than wrap (or panic in a debug
    // build) on a count near u64::MAX.
    let cached = field("cache_creation_input_tokens")
        .unwrap_or(0)
        .saturating_add(field("cache_read_input_tokens").unwrap_or(0));
    (
        input.map(|i| i.saturating_add(cached)),
        field("output_tokens"),
    )
}

/// The tokens a Messages response reports.
pub fn response_tokens(body: &[u8]) -> Tokens {
    checked_response_tokens(body).unwrap_or_default()
}

/// The tokens of a Messages response, or `None` when the body is not JSON at all.
pub fn checked_response_tokens(body: &[u8]) -> Option<Tokens> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let (p, c) = usage_tokens(v.get("usage").unwrap_or(&Value::Null));
    Some(Tokens {
        prompt: p.unwrap_or(0),
        completion: c.unwrap_or(0),
    })
}

/// An Anthropic Messages response → an OpenAI chat completion, and its tokens.
pub fn response(body: &[u8]) -> Option<(Vec<u8>, Tokens)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let content = v.get("content")?.as_array()?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in content {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str)?),
            Some("tool_use") => calls.push(json!({
                "id": block.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": block.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": block.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into()),
                },
            })),
            _ => {}
        }
    }
    let (p, c) = usage_tokens(v.get("usage").unwrap_or(&Value::Null));
    let tokens = Tokens {
        prompt: p.unwrap_or(0),
        completion: c.unwrap_or(0),
    };
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) },
        "refusal": null,
    });
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let finish = v
        .get("stop_reason")
        .and_then(Value::as_str)
        .map(finish_reason);
    let out = json!({
        "id": v.get("id").cloned().unwrap_or(Value::Null),
        "object": "chat.completion",
        "created": wire::now_secs(),
        "model": v.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish,
        }],
        "usage": {
            "prompt_tokens": tokens.prompt,
            "completion_tokens": tokens.completion,
            "total_tokens": tokens.prompt.saturating_add(tokens.completion),
        },
    });
    serde_json::to_vec(&out).ok().map(|b| (b, tokens))
}

/// An Anthropic error body → OpenAI's error shape. The body must already be scrubbed.
pub fn error(body: &[u8]) -> Vec<u8> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let e = v.get("error").unwrap_or(&Value::Null);
    let kind = e.get("type").and_then(Value::as_str).unwrap_or("api_error");
    let message = match e.get("message").and_then(Value::as_str) {
        Some(m) => m.to_owned(),
        None => String::from_utf8_lossy(&body[..body.len().min(1000)]).into_owned(),
    };
    json!({"error": {"message": message, "type": kind, "code": kind, "param": null}})
        .to_string()
        .into_bytes()
}

/// Follows the usage in an Anthropic stream: the prompt from `message_start`, the
/// completion from `message_delta`, and until that arrives, one token per content delta,
/// so that a client that leaves early is still charged for what it was sent.
#[derive(Debug, Default)]
pub struct StreamMeter {
    prompt: Option<u64>,
    completion: Option<u64>,
    deltas: u64,
}

impl StreamMeter {
    pub fn observe(&mut self, kind: &str, v: &Value) {
        match kind {
            "message_start" => {
                let (p, c) = usage_tokens(
                    v.get("message")
                        .and_then(|m| m.get("usage"))
                        .unwrap_or(&Value::Null),
                );
                self.prompt = p.or(self.prompt);
                self.completion = c.or(self.completion);
            }
            "message_delta" => {
                let (p, c) = usage_tokens(v.get("usage").unwrap_or(&Value::Null));
                self.prompt = p.or(self.prompt);
                self.completion = c.or(self.completion);
            }
            "content_block_delta" => self.deltas += 1,
            _ => {}
        }
    }

    pub fn tokens(&self) -> Tokens {
        Tokens {
            prompt: self.prompt.unwrap_or(0),
            completion: self.completion.unwrap_or(0).max(self.deltas),
        }
    }
}

/// Event kind and payload of one Anthropic SSE event.
pub fn parse_event(ev: &SseEvent) -> Option<(String, Value)> {
    let v: Value = serde_json::from_str(&ev.data).ok()?;
    let kind = ev
        .event
        .clone()
        .or_else(|| v.get("type").and_then(Value::as_str).map(str::to_owned))?;
    Some((kind, v))
}

/// Anthropic's SSE → OpenAI's `chat.completion.chunk` SSE.
#[derive(Debug)]
pub struct StreamTranslator {
    pub meter: StreamMeter,
    include_usage: bool,
    id: Value,
    model: Value,
    created: i64,
    /// Anthropic content block index → OpenAI tool call index.
    tools: Vec<(u64, usize)>,
    pub done: bool,
}

impl StreamTranslator {
    pub fn new(include_usage: bool) -> StreamTranslator {
        StreamTranslator {
            meter: StreamMeter::default(),
            include_usage,
            id: Value::Null,
            model: Value::Null,
            created: wire::now_secs(),
            tools: Vec::new(),
            done: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Bytes {
        wire::chat_chunk(
            &self.id,
            self.created,
            &self.model,
            delta,
            finish,
            self.include_usage,
        )
    }

    /// The OpenAI events for one Anthropic event.
    /// The OpenAI chunks for one Anthropic event. Once the stream is over (`[DONE]` or an
    /// error was written) nothing more is written, whatever the provider still sends.
    pub fn event(&mut self, ev: &SseEvent) -> Vec<Bytes> {
        if self.done {
            return Vec::new();
        }
        let Some((kind, v)) = parse_event(ev) else {
            return Vec::new();
        };
        self.meter.observe(&kind, &v);
        match kind.as_str() {
            "message_start" => {
                let m = v.get("message").unwrap_or(&Value::Null);
                self.id = m.get("id").cloned().unwrap_or(Value::Null);
                self.model = m.get("model").cloned().unwrap_or(Value::Null);
                vec![self.chunk(json!({"role": "assistant", "content": ""}), None)]
            }
            "content_block_start" => {
                let block = v.get("content_block").unwrap_or(&Value::Null);
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                match block.get("type").and_then(Value::as_str) {
                    Some("tool_use") => {
                        let ti = self.tools.len();
                        self.tools.push((index, ti));
                        vec![self.chunk(
                            json!({"tool_calls": [{
                                "index": ti,
                                "id": block.get("id").cloned().unwrap_or(Value::Null),
                                "type": "function",
                                "function": {"name": block.get("name").cloned().unwrap_or(Value::Null), "arguments": ""},
                            }]}),
                            None,
                        )]
                    }
                    Some("text") => match block.get("text").and_then(Value::as_str) {
                        Some(t) if !t.is_empty() => {
                            vec![self.chunk(json!({"content": t}), None)]
                        }
                        _ => Vec::new(),
                    },
                    _ => Vec::new(),
                }
            }
            "content_block_delta" => {
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                let d = v.get("delta").unwrap_or(&Value::Null);
                match d.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        let t = d.get("text").cloned().unwrap_or(Value::Null);
                        vec![self.chunk(json!({"content": t}), None)]
                    }
                    Some("input_json_delta") => {
                        let ti = self
                            .tools
                            .iter()
                            .find(|(i, _)| *i == index)
                            .map_or(0, |(_, t)| *t);
                        let args = d.get("partial_json").cloned().unwrap_or(Value::Null);
                        vec![self.chunk(
                            json!({"tool_calls": [{"index": ti, "function": {"arguments": args}}]}),
                            None,
                        )]
                    }
                    _ => Vec::new(),
                }
            }
            "message_delta" => {
                let finish = v
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str)
                    .map(finish_reason);
                match finish {
                    Some(f) => vec![self.chunk(json!({}), Some(f))],
                    None => Vec::new(),
                }
            }
            "message_stop" => self.finish(),
            "error" => {
                self.done = true;
                let e = v.get("error").unwrap_or(&Value::Null);
                let kind = e.get("type").and_then(Value::as_str).unwrap_or("api_error");
                let msg = e
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("the provider reported an error");
                vec![data_event(
                    &json!({"error": {"message": msg, "type": kind, "code": kind, "param": null}})
                        .to_string(),
                )]
            }
            _ => Vec::new(),
        }
    }

    fn finish(&mut self) -> Vec<Bytes> {
        self.done = true;
        let usage = self.include_usage.then(|| self.meter.tokens());
        wire::chat_stream_end(&self.id, self.created, &self.model, usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::sse::SseParser;

    #[test]
    fn requests_move_the_system_prompt_and_map_the_fields() {
        let body = json!({
            "model": "claude-sonnet-4-20250514",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]},
                {"role": "user", "content": "Hi"},
                {"role": "user", "content": [{"type": "text", "text": "there"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "42"}
            ],
            "stop": "END",
            "temperature": 1.5,
            "stream": true,
            "user": "u1",
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": "required"
        });
        let out: Value =
            serde_json::from_slice(&request(body.to_string().as_bytes(), 4096).unwrap()).unwrap();
        assert_eq!(out["system"], "Be brief.\n\nNo emoji.");
        assert_eq!(out["max_tokens"], 4096);
        assert_eq!(out["stop_sequences"], json!(["END"]));
        assert_eq!(out["temperature"], 1.0);
        assert_eq!(out["stream"], true);
        assert_eq!(out["metadata"]["user_id"], "u1");
        assert_eq!(out["tool_choice"], json!({"type": "any"}));
        assert_eq!(out["tools"][0]["input_schema"], json!({"type": "object"}));
        let msgs = out["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert_eq!(msgs[0]["role"], "user");
        assert_eq!(msgs[0]["content"].as_array().unwrap().len(), 3);
        assert_eq!(msgs[0]["content"][2]["source"]["media_type"], "image/png");
        assert_eq!(msgs[1]["content"][0]["type"], "tool_use");
        assert_eq!(msgs[1]["content"][0]["input"], json!({"x": 1}));
        assert_eq!(msgs[2]["content"][0]["type"], "tool_result");
        assert_eq!(msgs[2]["content"][0]["tool_use_id"], "call_1");

        let out: Value = serde_json::from_slice(
            &request(
                br#"{"model":"m","max_tokens":7,"messages":[{"role":"user","content":"x"}],"stop":["a","b"]}"#,
                4096,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(out["max_tokens"], 7);
        assert_eq!(out["stop_sequences"], json!(["a", "b"]));
        assert!(out.get("system").is_none() && out.get("stream").is_none());

        let e = request(
            br#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#,
            1,
        )
        .unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        assert!(request(br#"{"model":"m"}"#, 1).is_err());
    }

    #[test]
    fn the_fixture_response_translates() {
        let body = include_bytes!("../../tests/fixtures/anthropic-message.json");
        let (out, tokens) = response(body).unwrap();
        assert_eq!(
            tokens,
            Tokens {
                prompt: 10,
                completion: 12
            }
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "Hi! My name is Claude."
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["total_tokens"], 22);
        assert_eq!(finish_reason("max_tokens"), "length");
        assert_eq!(finish_reason("tool_use"), "tool_calls");
    }

    #[test]
    fn errors_take_the_openai_shape() {
        let body = include_bytes!("../../tests/fixtures/anthropic-error-401.json");
        let v: Value = serde_json::from_slice(&error(body)).unwrap();
        assert_eq!(v["error"]["type"], "authentication_error");
        assert_eq!(v["error"]["message"], "invalid x-api-key");
    }

    #[test]
    fn the_fixture_stream_translates() {
        let text = include_str!("../../tests/fixtures/anthropic-stream.sse");
        let mut p = SseParser::new();
        p.push(text.as_bytes());
        let mut t = StreamTranslator::new(true);
        let mut out = Vec::new();
        while let Some(ev) = p.next_event() {
            out.extend(t.event(&ev));
        }
        assert!(t.done);
        let mut p = SseParser::new();
        for b in &out {
            p.push(b);
        }
        let chunks: Vec<String> = std::iter::from_fn(|| p.next_event())
            .map(|e| e.data)
            .collect();
        assert_eq!(chunks.last().unwrap(), "[DONE]");
        let parsed: Vec<Value> = chunks[..chunks.len() - 1]
            .iter()
            .map(|c| serde_json::from_str(c).unwrap())
            .collect();
        assert_eq!(parsed[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = parsed
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Hello!");
        assert!(
            parsed
                .iter()
                .any(|c| c["choices"][0]["finish_reason"] == "stop")
        );
        let usage = &parsed.last().unwrap()["usage"];
        assert_eq!(usage["prompt_tokens"], 25);
        assert_eq!(usage["completion_tokens"], 15);
        assert_eq!(parsed.last().unwrap()["choices"], json!([]));
    }

    fn sse(text: &str) -> SseEvent {
        let mut p = SseParser::new();
        p.push(text.as_bytes());
        p.next_event().unwrap()
    }

    #[test]
    fn token_counts_near_the_limit_saturate() {
        // The anthropic_response fuzz target checks this: these wrapped (or panicked in a
        // debug build) when a provider reported a count near u64::MAX.
        let max = u64::MAX;
        let u = json!({"input_tokens": max, "cache_read_input_tokens": 5, "cache_creation_input_tokens": max, "output_tokens": 3});
        assert_eq!(usage_tokens(&u), (Some(max), Some(3)));
        let body = json!({"content": [], "usage": {"input_tokens": max, "output_tokens": 9}});
        let (out, tokens) = response(body.to_string().as_bytes()).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(tokens.prompt, max);
        assert_eq!(v["usage"]["total_tokens"], max);

        let mut t = StreamTranslator::new(true);
        t.event(&sse(&format!(
            "event: message_start\ndata: {{\"message\":{{\"usage\":{{\"input_tokens\":{max}}}}}}}\n\n"
        )));
        t.event(&sse(
            "event: message_delta\ndata: {\"delta\":{},\"usage\":{\"output_tokens\":2}}\n\n",
        ));
        let out = t.event(&sse("event: message_stop\ndata: {}\n\n"));
        let usage: Value = serde_json::from_slice(&out[0][6..out[0].len() - 2]).unwrap();
        assert_eq!(usage["usage"]["total_tokens"], max);
    }

    #[test]
    fn nothing_follows_done_or_an_error() {
        // The anthropic_response fuzz target checks this: a provider that kept sending after
        // message_stop made the translator write chunks, and a second [DONE], after [DONE].
        let mut t = StreamTranslator::new(false);
        let out = t.event(&sse("event: message_stop\ndata: {}\n\n"));
        assert_eq!(out, vec![data_event("[DONE]")]);
        let late = "event: content_block_delta\ndata: {\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}}\n\n";
        assert!(t.event(&sse(late)).is_empty());
        assert!(
            t.event(&sse("event: message_stop\ndata: {}\n\n"))
                .is_empty()
        );

        let mut t = StreamTranslator::new(false);
        let out = t.event(&sse(
            "event: error\ndata: {\"error\":{\"type\":\"overloaded_error\",\"message\":\"busy\"}}\n\n",
        ));
        assert_eq!(out.len(), 1);
        assert!(t.done);
        assert!(t.event(&sse(late)).is_empty());
    }

    #[test]
    fn refusals_name_the_place_never_the_clients_text() {
        // The anthropic_request fuzz target checks this: the role and the part type were
        // quoted back, so a credential pasted into either reached the error body and logs.
        let canary = "kw_CanaryCanaryCanary";
        for body in [
            json!({"model": "m", "messages": [{"role": canary, "content": "hi"}]}),
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": canary}]}]}),
        ] {
            let e = request(body.to_string().as_bytes(), 4096).unwrap_err();
            assert_eq!(e.status.as_u16(), 400);
            assert_eq!(e.code, "unsupported_parameter");
            assert!(!e.message.contains("Canary"), "{}", e.message);
            assert!(!e.param.as_deref().unwrap_or("").contains("Canary"));
        }
        let e = request(
            json!({"messages": [{"role": "user", "content": "a"}, {"role": "x", "content": "b"}]})
                .to_string()
                .as_bytes(),
            4096,
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "this role cannot be sent to an Anthropic provider"
        );
        assert_eq!(e.param.as_deref(), Some("messages[1].role"));
    }
}
