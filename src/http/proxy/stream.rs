//! The response body of a streamed request: provider chunks in, SSE events out, one at a
//! time, with the usage followed along the way and one `key.used` recorded at the end.
//!
//! A task of its own owns the provider's stream and hands events to the client's body
//! through a short queue. The client's pace therefore cannot hold the provider's stream
//! open: a client that stops reading fills the queue, and at `upstream_max_duration` the
//! task records the use, drops the provider's connection and ends, whether or not the
//! client ever reads again.
//!
//! The event is recorded before the body's end is sent, so a client that has seen the
//! whole response knows its use is queued. If the body is dropped first (the client went
//! away), the task notices, and the [`Meter`] records `client_closed` with the tokens seen
//! so far.
//!
//! Under `--usage-durability durable` the stream's end is held back until the event has
//! committed: the final event (`[DONE]`, `message_stop`, the provider's error event or
//! Keyward's own cut-off event) and whatever follows it wait in `held`, and the body ends
//! only after the commit. If the commit fails, the held events are dropped, an error event
//! `usage_not_recorded` is sent in their place, and the body ends with an error (the
//! connection is aborted, never ended cleanly): no client sees a complete stream whose
//! use is not in the log.
//!
//! Every byte that reaches the client passes the credential scrub: data, comments,
//! `event:`/`id:`/`retry:` lines and `[DONE]` alike (the scrub works on whole events, so a
//! credential split across two network chunks is still found).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use keyward_events::UsageOutcome;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::meter::Meter;
use crate::crypto::ProviderSecret;
use crate::providers::converse;
use crate::providers::eventstream::{EventStreamToSse, Flavour};
use crate::providers::messages::{self, StreamMeter, StreamTranslator};
use crate::providers::sse::{MAX_EVENT_BYTES, SseEvent, SseParser, data_event, named_event};
use crate::providers::wire::{Tokens, scrub, scrub_credential};

/// How many events wait for a client that reads slowly. Past that the task waits too, until
/// the deadline; with [`MAX_EVENT_BYTES`] per event this bounds what one stream holds.
const QUEUED_EVENTS: usize = 16;

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
    /// Bedrock ConverseStream events (re-framed as SSE by [`from_event_stream`])
    /// translated to OpenAI chunks.
    ConverseToOpenAi(Box<converse::StreamTranslator>),
}

/// AWS's binary event stream, re-framed as SSE events (`event: <type>`, `data: <json>`)
/// for the pump's parser: frames are decoded with `aws-smithy-eventstream`, at most one
/// frame is held, and a malformed frame ends the stream with an error event.
pub fn from_event_stream(upstream: Upstream, flavour: Flavour) -> Upstream {
    fn joined(events: Vec<Bytes>) -> Bytes {
        if events.len() == 1 {
            return events.into_iter().next().unwrap_or_default();
        }
        events.concat().into()
    }
    let state = (upstream, EventStreamToSse::new(flavour), false);
    Box::pin(futures::stream::unfold(
        state,
        |(mut up, mut frames, ended)| async move {
            if ended {
                return None;
            }
            loop {
                match up.next().await {
                    Some(Ok(chunk)) => {
                        let out = frames.push(&chunk);
                        if !out.is_empty() {
                            return Some((Ok(joined(out)), (up, frames, false)));
                        }
                    }
                    Some(Err(e)) => return Some((Err(e), (up, frames, true))),
                    None => {
                        let out = frames.finish();
                        if out.is_empty() {
                            return None;
                        }
                        return Some((Ok(joined(out)), (up, frames, true)));
                    }
                }
            }
        },
    ))
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
    /// The answer is cut off here even if chunks keep coming, or the client stops reading.
    deadline: Instant,
    parser: SseParser,
    mode: Mode,
    openai: OpenAiMeter,
    anthropic: StreamMeter,
    out: VecDeque<Bytes>,
    outcome: Option<UsageOutcome>,
    /// The provider sent an error event inside the stream.
    upstream_error: bool,
    credential: ProviderSecret,
    upstream_started: Instant,
    upstream_latency: Option<Duration>,
    meter: Meter,
    /// `durable`: the stream's end, held back until the use has committed.
    durable: bool,
    holding: bool,
    held: VecDeque<Bytes>,
    /// The stream's final event was seen: the client leaving after it has had the whole
    /// answer, and the use is recorded as the provider's end makes it.
    end_seen: bool,
    /// The use is recorded: what is left in `out` is sent, then the body ends.
    finished: bool,
}

/// Why a stream ends early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    /// The provider sent nothing for longer than the idle timeout.
    Idle,
    /// The answer ran past the maximum duration (the provider kept sending, or the client
    /// stopped reading).
    Overran,
    /// The provider's stream broke off or ended before it was complete.
    BrokeOff,
    /// The provider sent an event larger than [`MAX_EVENT_BYTES`].
    Oversized,
}

impl Cut {
    fn outcome(self) -> UsageOutcome {
        match self {
            Cut::Idle | Cut::Overran => UsageOutcome::UpstreamTimeout,
            Cut::BrokeOff => UsageOutcome::UpstreamUnavailable,
            Cut::Oversized => UsageOutcome::UpstreamError,
        }
    }

    fn code_and_message(self) -> (&'static str, &'static str) {
        match self {
            Cut::Overran => (
                "upstream_timeout",
                "the provider's answer ran past the maximum duration",
            ),
            Cut::Idle => (
                "upstream_timeout",
                "the provider stopped sending for longer than the idle timeout",
            ),
            Cut::BrokeOff => (
                "upstream_unavailable",
                "the provider's stream broke off before it was complete",
            ),
            Cut::Oversized => (
                "upstream_invalid_response",
                "the provider sent a stream event larger than 1 MiB; the stream was cut off",
            ),
        }
    }
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
            credential,
            upstream_started,
            upstream_latency: None,
            durable: meter.durable(),
            meter,
            holding: false,
            held: VecDeque::new(),
            end_seen: false,
            finished: false,
        }
    }

    /// Queues an event for the client, or holds it back once the stream's end was seen
    /// (under `durable`).
    fn emit(&mut self, b: Bytes) {
        if self.holding {
            self.held.push_back(b);
        } else {
            self.out.push_back(b);
        }
    }

    /// Under `durable`: the next events are the stream's end; hold them back.
    fn end_begins(&mut self) {
        self.end_seen = true;
        self.holding = self.durable;
    }

    /// Starts the task that owns the provider's stream, and returns the client's body. The
    /// body ends with an error (the client's connection is aborted rather than ended
    /// cleanly) when the stream was cut off and its error event could not be queued.
    pub fn spawn(self) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
        let (tx, rx) = mpsc::channel(QUEUED_EVENTS);
        let cut = Arc::new(AtomicBool::new(false));
        tokio::spawn(
            self.run(tx, cut.clone())
                .instrument(tracing::Span::current()),
        );
        futures::stream::unfold(Some((rx, cut)), |state| async move {
            let (mut rx, cut) = state?;
            match rx.recv().await {
                Some(b) => Some((Ok(b), Some((rx, cut)))),
                None if cut.load(Ordering::Acquire) => Some((
                    Err(std::io::Error::other(
                        "the stream was cut off at the maximum duration",
                    )),
                    None,
                )),
                None => None,
            }
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
            Mode::ConverseToOpenAi(t) => t.tokens(),
        }
    }

    /// The task: reads the provider, queues events for the client, records the use. Ends
    /// at the latest at the deadline, whatever the client does.
    async fn run(mut self, tx: mpsc::Sender<Bytes>, cut: Arc<AtomicBool>) {
        let deadline = tokio::time::Instant::from_std(self.deadline);
        loop {
            if let Some(b) = self.out.pop_front() {
                match tokio::time::timeout_at(deadline, tx.send(b)).await {
                    Ok(Ok(())) => continue,
                    // The client went away: dropping the meter records `client_closed`.
                    Ok(Err(_)) => return,
                    Err(_) => {
                        self.cut_off_unread(&tx, &cut).await;
                        return;
                    }
                }
            }
            if let Some(outcome) = self.outcome.take() {
                let tokens = self.tokens();
                let recorded = self
                    .meter
                    .record(outcome, 200, tokens, self.upstream_latency)
                    .await;
                if recorded.is_err() {
                    self.not_recorded(&tx, &cut).await;
                    return;
                }
                if self.held.is_empty() {
                    return;
                }
                // Committed: the stream's end goes out, then the body ends.
                self.holding = false;
                let held = std::mem::take(&mut self.held);
                self.out.extend(held);
                self.finished = true;
                continue;
            }
            if self.finished {
                return;
            }
            // The final event went out (not under `durable`, where it waits in `held`): a
            // client that stops reading now, as SDKs do at `[DONE]`, has the whole answer,
            // so the provider's end is awaited (its idle timeout still applies) rather than
            // the use recorded as `client_closed`.
            if self.end_seen && !self.holding && self.held.is_empty() {
                self.step().await;
                continue;
            }
            tokio::select! {
                biased;
                () = tx.closed() => return,
                () = self.step() => {}
            }
        }
    }

    /// The deadline passed while the client left events unread: the stream ends here, the
    /// provider's connection is dropped with the task, and the use is recorded now.
    async fn cut_off_unread(&mut self, tx: &mpsc::Sender<Bytes>, cut: &AtomicBool) {
        tracing::warn!(
            "the client did not read the stream before the maximum duration; it is cut off"
        );
        self.out.clear();
        self.held.clear();
        self.holding = false;
        self.parser.clear();
        self.outcome = None;
        self.fail(Cut::Overran);
        let tokens = self.tokens();
        let recorded = self
            .meter
            .record(
                UsageOutcome::UpstreamTimeout,
                200,
                tokens,
                self.upstream_latency,
            )
            .await;
        // The error event goes only to a use that is recorded (under `durable`, held back
        // until then).
        let queued = recorded.is_ok()
            && self
                .out
                .pop_front()
                .or_else(|| self.held.pop_front())
                .is_some_and(|ev| tx.try_send(ev).is_ok());
        if !queued {
            cut.store(true, Ordering::Release);
        }
    }

    /// Under `durable`, the use did not commit: the held end is dropped, an error event
    /// says why, and the body ends with an error rather than cleanly.
    async fn not_recorded(&mut self, tx: &mpsc::Sender<Bytes>, cut: &AtomicBool) {
        self.held.clear();
        self.holding = false;
        let ev = self.error_event(
            "usage_not_recorded",
            "Keyward could not record this use in its audit log, so the stream is cut off before its end",
        );
        let deadline = tokio::time::Instant::from_std(self.deadline);
        let _ = tokio::time::timeout_at(deadline, tx.send(ev)).await;
        cut.store(true, Ordering::Release);
    }

    /// An error event in the client's dialect.
    fn error_event(&self, code: &str, message: &str) -> Bytes {
        match self.mode {
            Mode::Anthropic => named_event(
                "error",
                &json!({"type": "error", "error": {"type": "api_error", "message": message}})
                    .to_string(),
            ),
            _ => data_event(
                &json!({"error": {"message": message, "type": "api_error", "code": code, "param": null}})
                    .to_string(),
            ),
        }
    }

    /// Waits for the provider's next chunk (or its end, or a timeout) and handles it.
    async fn step(&mut self) {
        let left = self.deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(self.idle.min(left), self.upstream.next()).await {
            Err(_) if left <= self.idle => {
                tracing::warn!("the provider's stream ran past the maximum duration");
                self.fail(Cut::Overran);
            }
            Err(_) => self.fail(Cut::Idle),
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %crate::redact::http_error(&e), "the provider's stream broke off");
                self.fail(Cut::BrokeOff);
            }
            Ok(None) => {
                if let Some(ev) = self.parser.finish() {
                    self.handle(ev);
                }
                self.upstream_latency = Some(self.upstream_started.elapsed());
                // ConverseStream's usage comes after its stop; a stream that stopped
                // without it still ends cleanly.
                if let Mode::ConverseToOpenAi(t) = &mut self.mode
                    && !t.done
                    && t.stopped()
                    && !self.upstream_error
                {
                    let outs = t.finish();
                    self.end_begins();
                    for b in outs {
                        let b =
                            scrub_credential(&b, self.credential.expose()).map_or(b, Into::into);
                        self.emit(b);
                    }
                }
                let complete = match &self.mode {
                    Mode::AnthropicToOpenAi(t) => t.done,
                    Mode::ConverseToOpenAi(t) => t.done,
                    _ => true,
                };
                if self.upstream_error {
                    self.outcome = Some(UsageOutcome::UpstreamError);
                } else if complete {
                    self.outcome = Some(UsageOutcome::Success);
                } else {
                    self.fail(Cut::BrokeOff);
                }
            }
            Ok(Some(Ok(chunk))) => {
                self.parser.push(&chunk);
                while let Some(ev) = self.parser.next_event() {
                    if ev.raw.len() > MAX_EVENT_BYTES {
                        self.oversized();
                        break;
                    }
                    self.handle(ev);
                }
                if self.outcome.is_none() && self.parser.pending() > MAX_EVENT_BYTES {
                    self.oversized();
                }
            }
        }
        self.meter.tokens_so_far = self.tokens();
        self.meter.upstream_so_far = Some(self.upstream_started.elapsed());
    }

    fn oversized(&mut self) {
        tracing::warn!(
            limit = MAX_EVENT_BYTES,
            "the provider sent a stream event larger than the limit; the stream is cut off"
        );
        self.parser.clear();
        self.fail(Cut::Oversized);
    }

    /// Ends the stream with an error event in the client's dialect.
    fn fail(&mut self, why: Cut) {
        self.upstream_latency = Some(self.upstream_started.elapsed());
        self.outcome = Some(why.outcome());
        let (code, message) = why.code_and_message();
        let ev = self.error_event(code, message);
        self.end_begins();
        self.emit(ev);
    }

    /// A successful event, with the provider's credential replaced if it was echoed.
    fn push_clean(&mut self, raw: Bytes) {
        let clean = scrub_credential(&raw, self.credential.expose()).map_or(raw, Into::into);
        self.emit(clean);
    }

    /// A translator's chunks for one provider event: after an error event everything is
    /// scrubbed of keys too (an error may quote the request), otherwise of the credential.
    fn translated(&mut self, error: bool, done: bool, outs: Vec<Bytes>) {
        if error {
            self.upstream_error = true;
        }
        if done || self.upstream_error {
            self.end_begins();
        }
        for b in outs {
            let b = if self.upstream_error {
                scrub(&b, self.credential.expose()).into()
            } else {
                scrub_credential(&b, self.credential.expose()).map_or(b, Into::into)
            };
            self.emit(b);
        }
    }

    fn handle(&mut self, ev: SseEvent) {
        match &mut self.mode {
            Mode::OpenAi { strip_usage } => {
                let strip = *strip_usage;
                if ev.data.is_empty() || ev.data == "[DONE]" {
                    // Comments, `event:`/`id:`/`retry:`-only events and `[DONE]` are the
                    // provider's bytes too: scrubbed like any other.
                    if ev.data == "[DONE]" {
                        self.end_begins();
                    }
                    self.push_clean(ev.raw);
                    return;
                }
                let v: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                if v.get("error").is_some() {
                    self.upstream_error = true;
                    self.end_begins();
                    self.emit(scrub(&ev.raw, self.credential.expose()).into());
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
                if let Some((kind, v)) = messages::parse_event(&ev) {
                    self.anthropic.observe(&kind, &v);
                    if kind == "error" {
                        self.upstream_error = true;
                        self.end_begins();
                        self.emit(scrub(&ev.raw, self.credential.expose()).into());
                        return;
                    }
                    if kind == "message_stop" {
                        self.end_begins();
                    }
                }
                self.push_clean(ev.raw);
            }
            Mode::AnthropicToOpenAi(t) => {
                let error = ev.event.as_deref() == Some("error");
                let outs = t.event(&ev);
                let done = t.done;
                self.translated(error, done, outs);
            }
            Mode::ConverseToOpenAi(t) => {
                let error = ev.event.as_deref() == Some("error");
                let outs = t.event(&ev);
                let done = t.done;
                self.translated(error, done, outs);
            }
        }
    }
}
