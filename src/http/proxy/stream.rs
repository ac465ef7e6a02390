//! The response body of a streamed request: provider chunks in, SSE events out, one at a
//! time, with the usage followed along the way and one `key.used` recorded at the end.
//!
//! The event is recorded before the body's end is sent, so a client that has seen the
//! whole response knows its use is queued. If the body is dropped first (the client went
//! away), the [`Meter`] records `client_closed` with the tokens seen so far.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use keyward_events::UsageOutcome;
use serde_json::{Value, json};

use super::Meter;
use super::anthropic::{self, StreamMeter, StreamTranslator};
use super::sse::{SseEvent, SseParser, data_event, named_event};
use super::upstream::{Tokens, scrub, scrub_credential};
use crate::crypto::ProviderSecret;

pub type Upstream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// How the events of one stream are handled.
pub enum Mode {
    /// OpenAI chunks passed through; `strip_usage` when the proxy asked for the usage
    /// chunk and the client did not.
    OpenAi { strip_usage: bool },
    /// Anthropic events passed through.
    Anthropic,
    /// Anthropic events translated to OpenAI chunks.
    AnthropicToOpenAi(Box<StreamTranslator>),
}

/// Follows the usage in an OpenAI stream: the final usage chunk when there is one, and
/// until then one token per content chunk.
#[derive(Default)]
struct OpenAiMeter {
    usage: Option<Tokens>,
    deltas: u64,
}

pub struct Pump {
    upstream: Upstream,
    idle: Duration,
    /// The answer is cut off here even if chunks keep coming.
    deadline: Instant,
    parser: SseParser,
    mode: Mode,
    openai: OpenAiMeter,
    anthropic: StreamMeter,
    out: VecDeque<Bytes>,
    outcome: Option<UsageOutcome>,
    /// The provider sent an error event inside the stream.
    upstream_error: bool,
    /// The stream was cut off at the deadline, not for a pause.
    overran: bool,
    credential: ProviderSecret,
    upstream_started: Instant,
    upstream_latency: Option<Duration>,
    meter: Meter,
}

impl Pump {
    pub fn new(
        upstream: Upstream,
        idle: Duration,
        deadline: Instant,
        mode: Mode,
        meter: Meter,
        credential: ProviderSecret,
        upstream_started: Instant,
    ) -> Pump {
        Pump {
            upstream,
            idle,
            deadline,
            parser: SseParser::new(),
            mode,
            openai: OpenAiMeter::default(),
            anthropic: StreamMeter::default(),
            out: VecDeque::new(),
            outcome: None,
            upstream_error: false,
            overran: false,
            credential,
            upstream_started,
            upstream_latency: None,
            meter,
        }
    }

    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
        futures::stream::unfold(self, |mut p| async move {
            let b = p.next().await?;
            Some((Ok(b), p))
        })
    }

    fn tokens(&self) -> Tokens {
        match &self.mode {
            Mode::OpenAi { .. } => self.openai.usage.unwrap_or(Tokens {
                prompt: 0,
                completion: self.openai.deltas,
            }),
            Mode::Anthropic => self.anthropic.tokens(),
            Mode::AnthropicToOpenAi(t) => t.meter.tokens(),
        }
    }

    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(b) = self.out.pop_front() {
                return Some(b);
            }
            if let Some(outcome) = self.outcome {
                let tokens = self.tokens();
                self.meter
                    .record(outcome, 200, tokens, self.upstream_latency)
                    .await;
                return None;
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(self.idle.min(left), self.upstream.next()).await {
                Err(_) if left <= self.idle => {
                    tracing::warn!("the provider's stream ran past the maximum duration");
                    self.overran = true;
                    self.fail(UsageOutcome::UpstreamTimeout);
                }
                Err(_) => self.fail(UsageOutcome::UpstreamTimeout),
                Ok(Some(Err(e))) => {
                    tracing::warn!(error = %e, "the provider's stream broke off");
                    self.fail(UsageOutcome::UpstreamUnavailable);
                }
                Ok(None) => {
                    if let Some(ev) = self.parser.finish() {
                        self.handle(ev);
                    }
                    self.upstream_latency = Some(self.upstream_started.elapsed());
                    let complete = match &self.mode {
                        Mode::AnthropicToOpenAi(t) => t.done,
                        _ => true,
                    };
                    if self.upstream_error {
                        self.outcome = Some(UsageOutcome::UpstreamError);
                    } else if complete {
                        self.outcome = Some(UsageOutcome::Success);
                    } else {
                        self.fail(UsageOutcome::UpstreamUnavailable);
                    }
                }
                Ok(Some(Ok(chunk))) => {
                    self.parser.push(&chunk);
                    while let Some(ev) = self.parser.next_event() {
                        self.handle(ev);
                    }
                }
            }
            self.meter.tokens_so_far = self.tokens();
            self.meter.upstream_so_far = Some(self.upstream_started.elapsed());
        }
    }

    /// Ends the stream with an error event in the client's dialect.
    fn fail(&mut self, outcome: UsageOutcome) {
        self.upstream_latency = Some(self.upstream_started.elapsed());
        self.outcome = Some(outcome);
        let (code, message) = match outcome {
            UsageOutcome::UpstreamTimeout if self.overran => (
                "upstream_timeout",
                "the provider's answer ran past the maximum duration",
            ),
            UsageOutcome::UpstreamTimeout => (
                "upstream_timeout",
                "the provider stopped sending for longer than the idle timeout",
            ),
            _ => (
                "upstream_unavailable",
                "the provider's stream broke off before it was complete",
            ),
        };
        let ev = match self.mode {
            Mode::Anthropic => named_event(
                "error",
                &json!({"type": "error", "error": {"type": "api_error", "message": message}})
                    .to_string(),
            ),
            _ => data_event(
                &json!({"error": {"message": message, "type": "api_error", "code": code, "param": null}})
                    .to_string(),
            ),
        };
        self.out.push_back(ev);
    }

    /// A successful event, with the provider's credential replaced if it was echoed.
    fn push_clean(&mut self, raw: Bytes) {
        let clean = scrub_credential(&raw, self.credential.expose()).map_or(raw, Into::into);
        self.out.push_back(clean);
    }

    fn handle(&mut self, ev: SseEvent) {
        match &mut self.mode {
            Mode::OpenAi { strip_usage } => {
                let strip = *strip_usage;
                if ev.data.is_empty() || ev.data == "[DONE]" {
                    self.out.push_back(ev.raw);
                    return;
                }
                let v: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                if v.get("error").is_some() {
                    self.upstream_error = true;
                    self.out
                        .push_back(scrub(&ev.raw, self.credential.expose()).into());
                    return;
                }
                let choices = v.get("choices").and_then(Value::as_array);
                if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
                    self.openai.usage = Some(Tokens {
                        prompt: n("prompt_tokens"),
                        completion: n("completion_tokens"),
                    });
                    if strip && choices.is_none_or(|c| c.is_empty()) {
                        return;
                    }
                }
                if choices.is_some_and(|c| !c.is_empty()) {
                    self.openai.deltas += 1;
                }
                self.push_clean(ev.raw);
            }
            Mode::Anthropic => {
                if let Some((kind, v)) = anthropic::parse_event(&ev) {
                    self.anthropic.observe(&kind, &v);
                    if kind == "error" {
                        self.upstream_error = true;
                        self.out
                            .push_back(scrub(&ev.raw, self.credential.expose()).into());
                        return;
                    }
                }
                self.push_clean(ev.raw);
            }
            Mode::AnthropicToOpenAi(t) => {
                if ev.event.as_deref() == Some("error") {
                    self.upstream_error = true;
                }
                for b in t.event(&ev) {
                    let b = if self.upstream_error {
                        scrub(&b, self.credential.expose()).into()
                    } else {
                        scrub_credential(&b, self.credential.expose()).map_or(b, Into::into)
                    };
                    self.out.push_back(b);
                }
            }
        }
    }
}
