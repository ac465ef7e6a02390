//! Translation between OpenAI's chat format and Amazon Bedrock's Converse API, both ways:
//! the request, the response, errors, and the ConverseStream events (already turned into
//! SSE by [`super::eventstream`]), so that an OpenAI client works against a Bedrock
//! provider, with `stream=true` too. The shapes written are those of
//! [`super::messages`]: a client sees the same chunks whichever of the two answers.
//!
//! Also the Anthropic Messages body Bedrock's `InvokeModel` (and Vertex's `rawPredict`)
//! take: [`anthropic_request`].

use bytes::Bytes;
use serde_json::{Map, Value, json};
use ulid::Ulid;

use super::error::ProxyError;
use super::sse::{SseEvent, data_event};
use super::wire::{self, Tokens};

/// The `anthropic_version` Bedrock's `InvokeModel` wants in an Anthropic body.
pub const BEDROCK_ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";
/// The `anthropic_version` Vertex AI wants in an Anthropic body.
pub const VERTEX_ANTHROPIC_VERSION: &str = "vertex-2023-10-16";

fn unsupported(param: impl Into<String>, what: &str) -> ProxyError {
    ProxyError::bad_request(
        "unsupported_parameter",
        format!("{what} cannot be sent to an Amazon Bedrock provider"),
    )
    .with_param(param)
}

fn invalid(param: impl Into<String>, what: &str) -> ProxyError {
    ProxyError::bad_request("invalid_request", what.to_owned()).with_param(param)
}

fn invalid_json() -> ProxyError {
    ProxyError::bad_request("invalid_json", "the body is not valid JSON")
}

/// Text of an OpenAI `content` where only text makes sense (system prompts, tool
/// results): a string, or the text parts of an array.
fn text_of(content: &Value, param: &str) -> Result<String, ProxyError> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                match part.get("type").and_then(Value::as_str).unwrap_or("text") {
                    "text" => {
                        if let Some(t) = part.get("text").and_then(Value::as_str) {
                            texts.push(t);
                        }
                    }
                    _ => {
                        return Err(unsupported(
                            format!("{param}[{j}].type"),
                            "this type of content part",
                        ));
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        _ => Err(invalid(
            param,
            "content must be a string or an array of parts",
        )),
    }
}

/// OpenAI content → Converse content blocks. Empty texts are left out: Converse refuses
/// blank text blocks.
fn blocks_of(content: &Value, param: &str) -> Result<Vec<Value>, ProxyError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![json!({"text": s})]),
        Value::Array(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                match part.get("type").and_then(Value::as_str).unwrap_or("text") {
                    "text" => {
                        let t = part.get("text").and_then(Value::as_str).unwrap_or("");
                        if !t.is_empty() {
                            out.push(json!({"text": t}));
                        }
                    }
                    "image_url" => {
                        return Err(unsupported(format!("{param}[{j}].type"), "an image part"));
                    }
                    "input_audio" => {
                        return Err(unsupported(format!("{param}[{j}].type"), "an audio part"));
                    }
                    // The message names the place, never the client's text.
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

/// An assistant message's `tool_calls` → Converse `toolUse` blocks.
fn tool_uses(calls: &Value, i: usize) -> Result<Vec<Value>, ProxyError> {
    let Some(calls) = calls.as_array() else {
        return Err(invalid(
            format!("messages[{i}].tool_calls"),
            "tool_calls must be an array",
        ));
    };
    let mut out = Vec::with_capacity(calls.len());
    for (j, call) in calls.iter().enumerate() {
        let param = format!("messages[{i}].tool_calls[{j}]");
        let id = call
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("{param}.id"), "a tool call needs an id"))?;
        let f = call.get("function").unwrap_or(&Value::Null);
        let name = f.get("name").and_then(Value::as_str).ok_or_else(|| {
            invalid(
                format!("{param}.function.name"),
                "a tool call needs a function name",
            )
        })?;
        let args = f.get("arguments").and_then(Value::as_str).unwrap_or("{}");
        // As on the Anthropic path: arguments that are not a JSON object become `{}`.
        let input: Value = serde_json::from_str(args)
            .ok()
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        out.push(json!({"toolUse": {"toolUseId": id, "name": name, "input": input}}));
    }
    Ok(out)
}

/// OpenAI `tools` → Converse `toolConfig.tools`.
fn tool_specs(tools: &Value) -> Result<Vec<Value>, ProxyError> {
    let Some(tools) = tools.as_array() else {
        return Err(invalid("tools", "tools must be an array"));
    };
    let mut out = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        if t.get("type").and_then(Value::as_str).unwrap_or("function") != "function" {
            return Err(unsupported(format!("tools[{i}].type"), "this type of tool"));
        }
        let f = t.get("function").unwrap_or(&Value::Null);
        let name = f.get("name").and_then(Value::as_str).ok_or_else(|| {
            invalid(
                format!("tools[{i}].function.name"),
                "a function tool needs a name",
            )
        })?;
        let mut spec = Map::new();
        spec.insert("name".into(), name.into());
        if let Some(d) = f.get("description").and_then(Value::as_str) {
            spec.insert("description".into(), d.into());
        }
        let schema = f
            .get("parameters")
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        spec.insert("inputSchema".into(), json!({"json": schema}));
        out.push(json!({"toolSpec": Value::Object(spec)}));
    }
    Ok(out)
}

/// What OpenAI's `tool_choice` asks of Converse.
enum Choice {
    /// `"none"`: the tools are left out.
    None,
    /// No `tool_choice`: Converse's default (auto).
    Default,
    /// A Converse `toolChoice`.
    Some(Value),
}

fn tool_choice(choice: Option<&Value>) -> Result<Choice, ProxyError> {
    match choice {
        None | Some(Value::Null) => Ok(Choice::Default),
        Some(Value::String(s)) => match s.as_str() {
            "none" => Ok(Choice::None),
            "auto" => Ok(Choice::Some(json!({"auto": {}}))),
            "required" => Ok(Choice::Some(json!({"any": {}}))),
            _ => Err(invalid(
                "tool_choice",
                "tool_choice must be none, auto, required or a function",
            )),
        },
        Some(Value::Object(o)) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .map(|n| Choice::Some(json!({"tool": {"name": n}})))
            .ok_or_else(|| {
                invalid(
                    "tool_choice.function.name",
                    "a tool_choice object needs a function name",
                )
            }),
        Some(_) => Err(invalid(
            "tool_choice",
            "tool_choice must be none, auto, required or a function",
        )),
    }
}

/// An OpenAI chat request → a Converse request. The model goes in the URL, not the body:
/// `model`, `stream` and `stream_options` are dropped.
pub fn request(body: &[u8], default_max_tokens: u64) -> Result<Vec<u8>, ProxyError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| invalid_json())?;
    if !v.is_object() {
        return Err(ProxyError::bad_request(
            "invalid_json",
            "the body must be a JSON object",
        ));
    }
    let messages = v
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("messages", "messages must be an array"))?;
    if v.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(unsupported("n", "n greater than 1"));
    }
    if v.get("audio").is_some_and(|a| !a.is_null()) {
        return Err(unsupported("audio", "audio output"));
    }
    if let Some(m) = v.get("modalities").and_then(Value::as_array)
        && m.iter().any(|m| m.as_str() != Some("text"))
    {
        return Err(unsupported(
            "modalities",
            "an output modality other than text",
        ));
    }

    let mut system: Vec<Value> = Vec::new();
    let mut out: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = m.get("content").unwrap_or(&Value::Null);
        let param = format!("messages[{i}].content");
        let (role, blocks) = match role {
            "system" | "developer" => {
                let t = text_of(content, &param)?;
                if !t.is_empty() {
                    system.push(json!({"text": t}));
                }
                continue;
            }
            "user" => ("user", blocks_of(content, &param)?),
            "assistant" => {
                let mut blocks = blocks_of(content, &param)?;
                if let Some(calls) = m.get("tool_calls").filter(|c| !c.is_null()) {
                    blocks.extend(tool_uses(calls, i)?);
                }
                ("assistant", blocks)
            }
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        invalid(
                            format!("messages[{i}].tool_call_id"),
                            "a tool message needs a tool_call_id",
                        )
                    })?;
                let text = text_of(content, &param)?;
                (
                    "user",
                    vec![json!({"toolResult": {"toolUseId": id, "content": [{"text": text}]}})],
                )
            }
            // The message names the place, never the client's text: a body may hold
            // anything, a credential included, and error bodies reach logs.
            _ => return Err(unsupported(format!("messages[{i}].role"), "this role")),
        };
        if blocks.is_empty() {
            continue;
        }
        // Converse wants user and assistant turns to alternate: merge neighbours.
        match out.last_mut() {
            Some((last, b)) if *last == role => b.extend(blocks),
            _ => out.push((role, blocks)),
        }
    }

    let mut c = Map::new();
    c.insert(
        "messages".into(),
        Value::Array(
            out.into_iter()
                .map(|(role, content)| json!({"role": role, "content": content}))
                .collect(),
        ),
    );
    if !system.is_empty() {
        c.insert("system".into(), Value::Array(system));
    }

    let mut inference = Map::new();
    let max_tokens = match v
        .get("max_completion_tokens")
        .filter(|m| !m.is_null())
        .map(|m| (m, "max_completion_tokens"))
        .or_else(|| {
            v.get("max_tokens")
                .filter(|m| !m.is_null())
                .map(|m| (m, "max_tokens"))
        }) {
        Some((m, param)) => m
            .as_u64()
            .ok_or_else(|| invalid(param, "this must be a non-negative integer"))?,
        None => default_max_tokens,
    };
    inference.insert("maxTokens".into(), max_tokens.into());
    if let Some(t) = v.get("temperature").filter(|t| !t.is_null()) {
        let t = t
            .as_f64()
            .ok_or_else(|| invalid("temperature", "temperature must be a number"))?;
        // OpenAI's range is 0–2, that of Bedrock's models 0–1.
        inference.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    if let Some(p) = v.get("top_p").filter(|p| !p.is_null()) {
        let p = p
            .as_f64()
            .ok_or_else(|| invalid("top_p", "top_p must be a number"))?;
        inference.insert("topP".into(), json!(p));
    }
    match v.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            inference.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(list)) => {
            if !list.iter().all(Value::is_string) {
                return Err(invalid(
                    "stop",
                    "stop must be a string or an array of strings",
                ));
            }
            if !list.is_empty() {
                inference.insert("stopSequences".into(), Value::Array(list.clone()));
            }
        }
        Some(_) => {
            return Err(invalid(
                "stop",
                "stop must be a string or an array of strings",
            ));
        }
    }
    c.insert("inferenceConfig".into(), Value::Object(inference));

    let choice = tool_choice(v.get("tool_choice"))?;
    if let Some(tools) = v.get("tools").filter(|t| !t.is_null()) {
        let specs = tool_specs(tools)?;
        match choice {
            Choice::None => {}
            _ if specs.is_empty() => {}
            Choice::Default => {
                c.insert("toolConfig".into(), json!({"tools": specs}));
            }
            Choice::Some(choice) => {
                c.insert(
                    "toolConfig".into(),
                    json!({"tools": specs, "toolChoice": choice}),
                );
            }
        }
    }
    serde_json::to_vec(&Value::Object(c)).map_err(|_| invalid_json())
}

/// An Anthropic Messages request → the body of Bedrock's `InvokeModel` (or Vertex's
/// `rawPredict`): no `model` (it is in the URL), no `stream` (the URL says it), and an
/// `anthropic_version` (`version`, unless the client sent one).
pub fn anthropic_request(body: &[u8], version: &str) -> Result<Vec<u8>, ProxyError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| invalid_json())?;
    let Value::Object(mut o) = v else {
        return Err(ProxyError::bad_request(
            "invalid_json",
            "the body must be a JSON object",
        ));
    };
    o.remove("model");
    o.remove("stream");
    if !o.get("anthropic_version").is_some_and(Value::is_string) {
        o.insert("anthropic_version".into(), version.into());
    }
    serde_json::to_vec(&Value::Object(o)).map_err(|_| invalid_json())
}

/// Converse's `stopReason` → OpenAI's `finish_reason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        _ => "stop",
    }
}

/// Converse's usage object → prompt and completion tokens. Cache reads and writes count
/// as prompt, as OpenAI counts them; a provider's numbers saturate rather than wrap.
pub fn usage_tokens(u: &Value) -> (Option<u64>, Option<u64>) {
    let field = |k: &str| u.get(k).and_then(Value::as_u64);
    let cached = field("cacheReadInputTokens")
        .unwrap_or(0)
        .saturating_add(field("cacheWriteInputTokens").unwrap_or(0));
    (
        field("inputTokens").map(|i| i.saturating_add(cached)),
        field("outputTokens"),
    )
}

fn completion_id() -> String {
    format!("chatcmpl-{}", Ulid::new())
}

/// A Converse response → an OpenAI chat completion, and its tokens; `None` when the body
/// is not a Converse response. `model` is the name the client asked for.
pub fn response(body: &[u8], model: &str) -> Option<(Vec<u8>, Tokens)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let content = v
        .get("output")?
        .get("message")?
        .get("content")?
        .as_array()?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in content {
        if let Some(t) = block.get("text") {
            text.push_str(t.as_str()?);
        } else if let Some(u) = block.get("toolUse") {
            calls.push(json!({
                "id": u.get("toolUseId").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": u.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": u.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into()),
                },
            }));
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
        .get("stopReason")
        .and_then(Value::as_str)
        .map(finish_reason);
    let out = json!({
        "id": completion_id(),
        "object": "chat.completion",
        "created": wire::now_secs(),
        "model": model,
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

/// The OpenAI error type for a Bedrock exception name (`ValidationException`, or with its
/// namespace, `com.amazon.coral.validate#ValidationException`, or, as the
/// `x-amzn-ErrorType` header has it, followed by a URI:
/// `ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/`).
fn error_type(exception: &str) -> &'static str {
    // As AWS's SDKs read it: what comes before a `:`, then what comes after a `#`.
    let name = exception.split(':').next().unwrap_or(exception);
    let name = name.rsplit('#').next().unwrap_or(name);
    match name.to_ascii_lowercase().as_str() {
        "validationexception" => "invalid_request_error",
        "accessdeniedexception" => "permission_error",
        "unrecognizedclientexception" | "expiredtokenexception" => "authentication_error",
        "resourcenotfoundexception" => "not_found_error",
        "throttlingexception" | "servicequotaexceededexception" => "rate_limit_error",
        _ => "api_error",
    }
}

/// A Bedrock error body (`{"message": …}`, `{"Message": …}`, maybe with a `__type`) →
/// OpenAI's error shape. The body must already be scrubbed.
pub fn error(body: &[u8]) -> Vec<u8> {
    error_typed(body, None)
}

/// [`error`], with the exception name of the answer's `x-amzn-ErrorType` header, where
/// Bedrock's runtime names it (its bodies carry only the message).
pub fn error_typed(body: &[u8], error_type_header: Option<&str>) -> Vec<u8> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let kind = v
        .get("__type")
        .and_then(Value::as_str)
        .or(error_type_header)
        .map_or("api_error", error_type);
    let message = match v
        .get("message")
        .or_else(|| v.get("Message"))
        .and_then(Value::as_str)
    {
        Some(m) => m.to_owned(),
        None => String::from_utf8_lossy(&body[..body.len().min(1000)]).into_owned(),
    };
    json!({"error": {"message": message, "type": kind, "code": null, "param": null}})
        .to_string()
        .into_bytes()
}

/// Follows the usage in a ConverseStream: the tokens of its `metadata` event, and until
/// that arrives, one completion token per content delta, so that a client that leaves
/// early is still charged for what it was sent.
#[derive(Debug, Default)]
pub struct StreamMeter {
    prompt: Option<u64>,
    completion: Option<u64>,
    deltas: u64,
}

impl StreamMeter {
    pub fn observe(&mut self, kind: &str, v: &Value) {
        match kind {
            "metadata" => {
                let (p, c) = usage_tokens(v.get("usage").unwrap_or(&Value::Null));
                self.prompt = p.or(self.prompt);
                self.completion = c.or(self.completion);
            }
            "contentBlockDelta" => self.deltas += 1,
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

/// The ConverseStream exception names, should one arrive as an event of its own rather
/// than as [`super::eventstream`]'s `error`.
const EXCEPTIONS: [&str; 5] = [
    "internalServerException",
    "modelStreamErrorException",
    "validationException",
    "throttlingException",
    "serviceUnavailableException",
];

/// ConverseStream events (as SSE, from [`super::eventstream`]) → OpenAI's
/// `chat.completion.chunk` SSE.
#[derive(Debug)]
pub struct StreamTranslator {
    pub meter: StreamMeter,
    include_usage: bool,
    id: String,
    model: String,
    created: i64,
    /// Whether the role chunk was written.
    started: bool,
    /// Converse content block index → OpenAI tool call index.
    tools: Vec<(u64, usize)>,
    /// `messageStop` was seen (and its finish chunk written).
    stopped: bool,
    pub done: bool,
}

impl StreamTranslator {
    pub fn new(include_usage: bool, model: &str) -> StreamTranslator {
        StreamTranslator {
            meter: StreamMeter::default(),
            include_usage,
            id: completion_id(),
            model: model.to_owned(),
            created: wire::now_secs(),
            started: false,
            tools: Vec::new(),
            stopped: false,
            done: false,
        }
    }

    /// The tokens seen so far.
    pub fn tokens(&self) -> Tokens {
        self.meter.tokens()
    }

    /// Whether `messageStop` was seen: a stream that ends after it but before `metadata`
    /// ends cleanly with [`StreamTranslator::finish`].
    pub fn stopped(&self) -> bool {
        self.stopped
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

    /// The role chunk, if it is not written yet: a stream missing its `messageStart`
    /// still begins with one.
    fn start(&mut self, out: &mut Vec<Bytes>) {
        if !self.started {
            self.started = true;
            out.push(self.chunk(json!({"role": "assistant", "content": ""}), None));
        }
    }

    /// The OpenAI chunks for one ConverseStream event. Once the stream is over (`[DONE]`
    /// or an error was written) nothing more is written, whatever the provider still sends.
    pub fn event(&mut self, ev: &SseEvent) -> Vec<Bytes> {
        if self.done {
            return Vec::new();
        }
        let Some(kind) = ev.event.as_deref() else {
            return Vec::new();
        };
        let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
            return Vec::new();
        };
        self.meter.observe(kind, &v);
        let mut out = Vec::new();
        match kind {
            "messageStart" => self.start(&mut out),
            "contentBlockStart" => {
                let index = v
                    .get("contentBlockIndex")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                if let Some(u) = v.get("start").and_then(|s| s.get("toolUse")) {
                    self.start(&mut out);
                    let ti = self.tools.len();
                    self.tools.push((index, ti));
                    out.push(self.chunk(
                        json!({"tool_calls": [{
                            "index": ti,
                            "id": u.get("toolUseId").cloned().unwrap_or(Value::Null),
                            "type": "function",
                            "function": {"name": u.get("name").cloned().unwrap_or(Value::Null), "arguments": ""},
                        }]}),
                        None,
                    ));
                }
            }
            "contentBlockDelta" => {
                let index = v
                    .get("contentBlockIndex")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                let d = v.get("delta").unwrap_or(&Value::Null);
                if let Some(t) = d.get("text").and_then(Value::as_str) {
                    self.start(&mut out);
                    out.push(self.chunk(json!({"content": t}), None));
                } else if let Some(args) = d
                    .get("toolUse")
                    .and_then(|u| u.get("input"))
                    .and_then(Value::as_str)
                {
                    self.start(&mut out);
                    let ti = self
                        .tools
                        .iter()
                        .find(|(i, _)| *i == index)
                        .map_or(0, |(_, t)| *t);
                    out.push(self.chunk(
                        json!({"tool_calls": [{"index": ti, "function": {"arguments": args}}]}),
                        None,
                    ));
                }
            }
            "messageStop" if !self.stopped => {
                self.stopped = true;
                self.start(&mut out);
                let finish = v
                    .get("stopReason")
                    .and_then(Value::as_str)
                    .map_or("stop", finish_reason);
                out.push(self.chunk(json!({}), Some(finish)));
            }
            // ConverseStream sends its usage after messageStop: the end comes with it.
            "metadata" if self.stopped => out.extend(self.finish()),
            "error" => {
                let e = v.get("error").unwrap_or(&Value::Null);
                out.push(self.error_chunk(
                    e.get("type").and_then(Value::as_str),
                    e.get("message").and_then(Value::as_str),
                ));
            }
            k if EXCEPTIONS.contains(&k) => {
                let msg = v
                    .get("message")
                    .or_else(|| v.get("Message"))
                    .and_then(Value::as_str);
                out.push(self.error_chunk(Some(k), msg));
            }
            _ => {}
        }
        out
    }

    fn error_chunk(&mut self, kind: Option<&str>, message: Option<&str>) -> Bytes {
        self.done = true;
        let kind = kind.unwrap_or("api_error");
        let msg = message.unwrap_or("the provider reported an error");
        data_event(
            &json!({"error": {"message": msg, "type": kind, "code": kind, "param": null}})
                .to_string(),
        )
    }

    /// The end of the stream: the usage chunk when the client asked for it, then
    /// `[DONE]`. Called on `metadata` after `messageStop`; the caller calls it when the
    /// stream ends after `messageStop` without `metadata`. Once only.
    pub fn finish(&mut self) -> Vec<Bytes> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        let usage = self.include_usage.then(|| self.meter.tokens());
        wire::chat_stream_end(&self.id, self.created, &self.model, usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::sse::SseParser;

    fn req(body: Value) -> Value {
        serde_json::from_slice(&request(body.to_string().as_bytes(), 4096).unwrap()).unwrap()
    }

    fn req_err(body: Value) -> ProxyError {
        request(body.to_string().as_bytes(), 4096).unwrap_err()
    }

    #[test]
    fn requests_move_the_system_prompt_and_merge_turns() {
        let out = req(json!({
            "model": "anthropic.claude-3-haiku",
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]},
                {"role": "user", "content": "Hi"},
                {"role": "user", "content": [{"type": "text", "text": "there"}, {"type": "text", "text": ""}]},
                {"role": "assistant", "content": "Hello."},
                {"role": "assistant", "content": [{"type": "text", "text": "How can I help?"}]},
                {"role": "user", "content": "Add 1 and 2."}
            ],
            "max_completion_tokens": 100,
            "max_tokens": 5,
            "temperature": 1.5,
            "top_p": 0.9,
            "stop": "END"
        }));
        assert_eq!(
            out,
            json!({
                "system": [{"text": "Be brief."}, {"text": "No emoji."}],
                "messages": [
                    {"role": "user", "content": [{"text": "Hi"}, {"text": "there"}]},
                    {"role": "assistant", "content": [{"text": "Hello."}, {"text": "How can I help?"}]},
                    {"role": "user", "content": [{"text": "Add 1 and 2."}]}
                ],
                "inferenceConfig": {"maxTokens": 100, "temperature": 1.0, "topP": 0.9, "stopSequences": ["END"]}
            })
        );

        let out = req(json!({
            "model": "m",
            "max_tokens": 7,
            "messages": [{"role": "user", "content": "x"}],
            "stop": ["a", "b"]
        }));
        assert_eq!(
            out,
            json!({
                "messages": [{"role": "user", "content": [{"text": "x"}]}],
                "inferenceConfig": {"maxTokens": 7, "stopSequences": ["a", "b"]}
            })
        );
        let out = req(json!({"messages": [{"role": "user", "content": "x"}]}));
        assert_eq!(out["inferenceConfig"], json!({"maxTokens": 4096}));
    }

    #[test]
    fn tools_tool_calls_and_results_map() {
        let tools = json!([{"type": "function", "function": {
            "name": "add",
            "description": "Adds.",
            "parameters": {"type": "object", "properties": {"a": {"type": "number"}}}
        }}, {"type": "function", "function": {"name": "noop"}}]);
        let out = req(json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "Add 1 and 2, and 3 and 4."},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "tooluse_1", "type": "function", "function": {"name": "add", "arguments": "{\"a\":1,\"b\":2}"}},
                    {"id": "tooluse_2", "type": "function", "function": {"name": "add", "arguments": "not json"}}
                ]},
                {"role": "tool", "tool_call_id": "tooluse_1", "content": "3"},
                {"role": "tool", "tool_call_id": "tooluse_2", "content": [{"type": "text", "text": "7"}]},
                {"role": "user", "content": "Thanks"}
            ],
            "tools": tools,
            "tool_choice": "required"
        }));
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": [{"text": "Add 1 and 2, and 3 and 4."}]},
                {"role": "assistant", "content": [
                    {"toolUse": {"toolUseId": "tooluse_1", "name": "add", "input": {"a": 1, "b": 2}}},
                    {"toolUse": {"toolUseId": "tooluse_2", "name": "add", "input": {}}}
                ]},
                {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "3"}]}},
                    {"toolResult": {"toolUseId": "tooluse_2", "content": [{"text": "7"}]}},
                    {"text": "Thanks"}
                ]}
            ])
        );
        assert_eq!(
            out["toolConfig"],
            json!({
                "tools": [
                    {"toolSpec": {"name": "add", "description": "Adds.", "inputSchema": {"json": {"type": "object", "properties": {"a": {"type": "number"}}}}}},
                    {"toolSpec": {"name": "noop", "inputSchema": {"json": {"type": "object", "properties": {}}}}}
                ],
                "toolChoice": {"any": {}}
            })
        );

        let with = |choice: Value| {
            req(
                json!({"messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": choice}),
            )
        };
        assert_eq!(
            with(json!("auto"))["toolConfig"]["toolChoice"],
            json!({"auto": {}})
        );
        assert_eq!(
            with(json!({"type": "function", "function": {"name": "add"}}))["toolConfig"]["toolChoice"],
            json!({"tool": {"name": "add"}})
        );
        assert!(with(json!("none")).get("toolConfig").is_none());
        let out = with(Value::Null);
        assert!(out["toolConfig"].get("toolChoice").is_none());
        assert_eq!(out["toolConfig"]["tools"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn unsupported_and_malformed_requests_are_400_with_a_param() {
        let cases = [
            (
                json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}),
                "unsupported_parameter",
                "messages[0].content[1].type",
            ),
            (
                json!({"messages": [{"role": "user", "content": "a"}], "n": 2}),
                "unsupported_parameter",
                "n",
            ),
            (
                json!({"messages": [{"role": "user", "content": "a"}], "audio": {"voice": "alloy", "format": "wav"}}),
                "unsupported_parameter",
                "audio",
            ),
            (
                json!({"messages": [{"role": "user", "content": "a"}], "modalities": ["text", "audio"]}),
                "unsupported_parameter",
                "modalities",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}),
                "unsupported_parameter",
                "messages[0].content[0].type",
            ),
            (
                json!({"messages": [{"role": "user", "content": "a"}, {"role": "wizard", "content": "b"}]}),
                "unsupported_parameter",
                "messages[1].role",
            ),
            (
                json!({"messages": [{"role": "tool", "content": "3"}]}),
                "invalid_request",
                "messages[0].tool_call_id",
            ),
            (
                json!({"messages": [{"role": "user", "content": 5}]}),
                "invalid_request",
                "messages[0].content",
            ),
            (
                json!({"messages": [{"role": "user", "content": "a"}], "tools": [{"type": "code_interpreter"}]}),
                "unsupported_parameter",
                "tools[0].type",
            ),
            (
                json!({"messages": [{"role": "user", "content": "a"}], "tool_choice": "sometimes"}),
                "invalid_request",
                "tool_choice",
            ),
            (
                json!({"messages": [{"role": "user", "content": "a"}], "stop": [1]}),
                "invalid_request",
                "stop",
            ),
            (
                json!({"messages": [{"role": "user", "content": "a"}], "max_tokens": -1}),
                "invalid_request",
                "max_tokens",
            ),
            (
                json!({"messages": [{"role": "user", "content": "a"}], "temperature": "hot"}),
                "invalid_request",
                "temperature",
            ),
            (json!({"model": "m"}), "invalid_request", "messages"),
        ];
        for (body, code, param) in cases {
            let e = req_err(body.clone());
            assert_eq!(e.status.as_u16(), 400, "{body}");
            assert_eq!(e.code, code, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
        }
        let e =
            req_err(json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}));
        assert_eq!(
            e.message,
            "an image part cannot be sent to an Amazon Bedrock provider"
        );
        for body in [&b"{not json"[..], b"[1]"] {
            let e = request(body, 1).unwrap_err();
            assert_eq!((e.status.as_u16(), e.code), (400, "invalid_json"));
        }
    }

    #[test]
    fn refusals_name_the_place_never_the_clients_text() {
        let canary = "kw_CanaryCanaryCanary";
        for body in [
            json!({"messages": [{"role": canary, "content": "hi"}]}),
            json!({"messages": [{"role": "user", "content": [{"type": canary}]}]}),
        ] {
            let e = req_err(body);
            assert!(!e.message.contains("Canary"), "{}", e.message);
            assert!(!e.param.as_deref().unwrap_or("").contains("Canary"));
        }
    }

    #[test]
    fn anthropic_bodies_lose_model_and_stream_and_gain_a_version() {
        let body = br#"{"model":"claude","stream":true,"max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;
        let out: Value =
            serde_json::from_slice(&anthropic_request(body, BEDROCK_ANTHROPIC_VERSION).unwrap())
                .unwrap();
        assert_eq!(
            out,
            json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
        );
        let body = br#"{"anthropic_version":"custom","messages":[]}"#;
        let out: Value =
            serde_json::from_slice(&anthropic_request(body, VERTEX_ANTHROPIC_VERSION).unwrap())
                .unwrap();
        assert_eq!(out, json!({"anthropic_version": "custom", "messages": []}));
        let out: Value =
            serde_json::from_slice(&anthropic_request(b"{}", VERTEX_ANTHROPIC_VERSION).unwrap())
                .unwrap();
        assert_eq!(out, json!({"anthropic_version": "vertex-2023-10-16"}));
        assert_eq!(
            anthropic_request(b"nope", "v").unwrap_err().code,
            "invalid_json"
        );
        assert_eq!(
            anthropic_request(b"[]", "v").unwrap_err().code,
            "invalid_json"
        );
    }

    #[test]
    fn responses_translate_with_tokens_and_finish_reasons() {
        let body = json!({
            "output": {"message": {"role": "assistant", "content": [{"text": "Hello"}, {"text": " there."}]}},
            "stopReason": "end_turn",
            "usage": {"inputTokens": 12, "outputTokens": 5, "totalTokens": 17},
            "metrics": {"latencyMs": 300}
        });
        let (out, tokens) = response(body.to_string().as_bytes(), "claude-haiku").unwrap();
        assert_eq!(
            tokens,
            Tokens {
                prompt: 12,
                completion: 5
            }
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        let id = v["id"].as_str().unwrap();
        assert!(id.starts_with("chatcmpl-") && id.len() > 20, "{id}");
        assert!(v["created"].as_i64().unwrap() > 1_600_000_000);
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "claude-haiku");
        assert_eq!(
            v["choices"],
            json!([{
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there.", "refusal": null},
                "logprobs": null,
                "finish_reason": "stop"
            }])
        );
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17})
        );

        let body = json!({
            "output": {"message": {"role": "assistant", "content": [
                {"toolUse": {"toolUseId": "tooluse_a", "name": "add", "input": {"a": 1, "b": 2}}}
            ]}},
            "stopReason": "tool_use",
            "usage": {"inputTokens": 30, "outputTokens": 9, "cacheReadInputTokens": 100, "cacheWriteInputTokens": 1}
        });
        let (out, tokens) = response(body.to_string().as_bytes(), "m").unwrap();
        assert_eq!(tokens.prompt, 131);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["choices"][0]["message"],
            json!({
                "role": "assistant",
                "content": null,
                "refusal": null,
                "tool_calls": [{"id": "tooluse_a", "type": "function", "function": {"name": "add", "arguments": "{\"a\":1,\"b\":2}"}}]
            })
        );
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(v["usage"]["total_tokens"], 140);

        for (reason, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("guardrail_intervened", "content_filter"),
            ("content_filtered", "content_filter"),
        ] {
            assert_eq!(finish_reason(reason), finish);
        }

        let max = u64::MAX;
        let body = json!({"output": {"message": {"content": []}}, "usage": {"inputTokens": max, "cacheReadInputTokens": 3, "outputTokens": 2}});
        let (out, tokens) = response(body.to_string().as_bytes(), "m").unwrap();
        assert_eq!(tokens.prompt, max);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["usage"]["total_tokens"], max);
        assert_eq!(v["choices"][0]["finish_reason"], Value::Null);

        assert!(response(b"not json", "m").is_none());
        assert!(response(br#"{"message":"x"}"#, "m").is_none());
        assert!(response(br#"{"output":{"message":{"content":{}}}}"#, "m").is_none());
    }

    #[test]
    fn errors_take_the_openai_shape() {
        let v: Value = serde_json::from_slice(&error(
            br#"{"message":"The security token included in the request is invalid."}"#,
        ))
        .unwrap();
        assert_eq!(
            v,
            json!({"error": {"message": "The security token included in the request is invalid.", "type": "api_error", "code": null, "param": null}})
        );
        let v: Value = serde_json::from_slice(&error(
            br#"{"Message":"Too many requests","__type":"com.amazon.coral.availability#ThrottlingException"}"#,
        ))
        .unwrap();
        assert_eq!(
            v,
            json!({"error": {"message": "Too many requests", "type": "rate_limit_error", "code": null, "param": null}})
        );
        let v: Value = serde_json::from_slice(&error(
            br#"{"message":"bad","__type":"ValidationException"}"#,
        ))
        .unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let v: Value = serde_json::from_slice(&error(b"<html>oops</html>")).unwrap();
        assert_eq!(v["error"]["message"], "<html>oops</html>");
        assert_eq!(v["error"]["type"], "api_error");
        // Bedrock's runtime names the exception in x-amzn-ErrorType, not in the body.
        let v: Value = serde_json::from_slice(&error_typed(
            br#"{"message":"Too many requests, please wait before trying again."}"#,
            Some("ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"),
        ))
        .unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
    }

    fn sse(name: &str, data: Value) -> SseEvent {
        let mut p = SseParser::new();
        p.push(format!("event: {name}\ndata: {data}\n\n").as_bytes());
        p.next_event().unwrap()
    }

    /// A realistic ConverseStream: some text, then a tool call, then the stop and the usage.
    fn converse_stream() -> Vec<SseEvent> {
        vec![
            sse("messageStart", json!({"role": "assistant", "p": "abc"})),
            sse(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "Let me "}}),
            ),
            sse(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "add."}}),
            ),
            sse("contentBlockStop", json!({"contentBlockIndex": 0})),
            sse(
                "contentBlockStart",
                json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_x", "name": "add"}}}),
            ),
            sse(
                "contentBlockDelta",
                json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"a\":"}}}),
            ),
            sse(
                "contentBlockDelta",
                json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "1}"}}}),
            ),
            sse("contentBlockStop", json!({"contentBlockIndex": 1})),
            sse("messageStop", json!({"stopReason": "tool_use"})),
            sse(
                "metadata",
                json!({"usage": {"inputTokens": 40, "outputTokens": 20, "totalTokens": 60}, "metrics": {"latencyMs": 500}}),
            ),
        ]
    }

    fn data(chunks: &[Bytes]) -> Vec<String> {
        let mut p = SseParser::new();
        for b in chunks {
            p.push(b);
        }
        std::iter::from_fn(|| p.next_event())
            .map(|e| {
                assert!(e.event.is_none());
                e.data
            })
            .collect()
    }

    #[test]
    fn a_converse_stream_translates() {
        for include_usage in [true, false] {
            let mut t = StreamTranslator::new(include_usage, "claude-haiku");
            let mut out = Vec::new();
            for ev in converse_stream() {
                assert!(!t.done);
                out.extend(t.event(&ev));
            }
            assert!(t.done && t.stopped());
            assert_eq!(
                t.tokens(),
                Tokens {
                    prompt: 40,
                    completion: 20
                }
            );
            let chunks = data(&out);
            assert_eq!(chunks.last().unwrap(), "[DONE]");
            let parsed: Vec<Value> = chunks[..chunks.len() - 1]
                .iter()
                .map(|c| serde_json::from_str(c).unwrap())
                .collect();
            let id = parsed[0]["id"].as_str().unwrap();
            assert!(id.starts_with("chatcmpl-"));
            for c in &parsed {
                assert_eq!(c["id"], id);
                assert_eq!(c["object"], "chat.completion.chunk");
                assert_eq!(c["model"], "claude-haiku");
                assert_eq!(c["created"], parsed[0]["created"]);
                assert_eq!(c.get("usage").is_some(), include_usage);
            }
            let choices: Vec<&Value> = parsed.iter().map(|c| &c["choices"]).collect();
            let mut want = vec![
                json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
                json!([{"index": 0, "delta": {"content": "Let me "}, "logprobs": null, "finish_reason": null}]),
                json!([{"index": 0, "delta": {"content": "add."}, "logprobs": null, "finish_reason": null}]),
                json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "tooluse_x", "type": "function", "function": {"name": "add", "arguments": ""}}]}, "logprobs": null, "finish_reason": null}]),
                json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]}, "logprobs": null, "finish_reason": null}]),
                json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}, "logprobs": null, "finish_reason": null}]),
                json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "tool_calls"}]),
            ];
            if include_usage {
                want.push(json!([]));
                assert_eq!(
                    parsed.last().unwrap()["usage"],
                    json!({"prompt_tokens": 40, "completion_tokens": 20, "total_tokens": 60})
                );
                for c in &parsed[..parsed.len() - 1] {
                    assert_eq!(c["usage"], Value::Null);
                }
            }
            assert_eq!(choices, want.iter().collect::<Vec<_>>());
            // Nothing after [DONE].
            assert!(t.event(&sse("messageStop", json!({}))).is_empty());
            assert!(t.finish().is_empty());
        }
    }

    #[test]
    fn the_finish_chunk_comes_at_message_stop_and_the_end_at_metadata() {
        let mut t = StreamTranslator::new(true, "m");
        let evs = converse_stream();
        for ev in &evs[..evs.len() - 2] {
            t.event(ev);
        }
        // Until metadata, the tokens are the deltas seen.
        assert_eq!(
            t.tokens(),
            Tokens {
                prompt: 0,
                completion: 4
            }
        );
        let out = data(&t.event(&evs[evs.len() - 2]));
        assert_eq!(out.len(), 1);
        let v: Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert!(t.stopped() && !t.done);

        // Metadata never comes: the caller finishes.
        let out = data(&t.finish());
        assert_eq!(out.len(), 2);
        let v: Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": 0, "completion_tokens": 4, "total_tokens": 4})
        );
        assert_eq!(out[1], "[DONE]");
        assert!(t.done);
        assert!(t.event(evs.last().unwrap()).is_empty());

        // Without include_usage, the end is [DONE] alone; a stream with no messageStart
        // still begins with the role chunk.
        let mut t = StreamTranslator::new(false, "m");
        let out = data(&t.event(&sse(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "Hi"}}),
        )));
        assert_eq!(out.len(), 2);
        let v: Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(
            v["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert!(v.get("usage").is_none());
        assert!(t.event(&sse("metadata", json!({"usage": {}}))).is_empty());
        t.event(&sse("messageStop", json!({"stopReason": "max_tokens"})));
        assert_eq!(
            data(&t.event(&sse(
                "metadata",
                json!({"usage": {"inputTokens": 1, "outputTokens": 2}})
            ))),
            ["[DONE]"]
        );
        assert_eq!(
            t.tokens(),
            Tokens {
                prompt: 1,
                completion: 2
            }
        );
    }

    #[test]
    fn errors_end_the_stream() {
        let mut t = StreamTranslator::new(true, "m");
        t.event(&sse("messageStart", json!({"role": "assistant"})));
        let out = data(&t.event(&sse(
            "error",
            json!({"error": {"message": "Too many tokens, please wait.", "type": "throttlingException"}}),
        )));
        assert_eq!(out.len(), 1);
        let v: Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(
            v,
            json!({"error": {"message": "Too many tokens, please wait.", "type": "throttlingException", "code": "throttlingException", "param": null}})
        );
        assert!(t.done);
        assert!(t.event(&sse("messageStop", json!({}))).is_empty());
        assert!(t.finish().is_empty());

        let mut t = StreamTranslator::new(false, "m");
        let out = data(&t.event(&sse(
            "modelStreamErrorException",
            json!({"message": "The model failed."}),
        )));
        let v: Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(v["error"]["message"], "The model failed.");
        assert_eq!(v["error"]["type"], "modelStreamErrorException");
        assert!(t.done);

        // Unknown events and unparsable data are ignored.
        let mut t = StreamTranslator::new(false, "m");
        assert!(t.event(&sse("somethingNew", json!({}))).is_empty());
        let mut p = SseParser::new();
        p.push(b"event: contentBlockDelta\ndata: {nope\n\n");
        assert!(t.event(&p.next_event().unwrap()).is_empty());
        assert!(!t.done);
    }
}
