//! AWS event-stream framing (`application/vnd.amazon.eventstream`, as Bedrock's
//! ConverseStream and InvokeModelWithResponseStream answer) → SSE events, so that the rest
//! of the proxy handles a Bedrock stream as it handles any other: bytes go in as the
//! network delivers them, and whole SSE events come out.
//!
//! The frames are decoded by `aws_smithy_eventstream`'s [`MessageFrameDecoder`]; this
//! module only holds the bytes of the frame being received, bounded by
//! [`MAX_FRAME_BYTES`], and checks each prelude as soon as it arrives, so that garbage is
//! refused at once rather than waited on.
//!
//! A frame that does not decode ends the stream: one error event is written, and whatever
//! follows is ignored (the framing is lost, nothing after it can be trusted).

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder, write_message_to};
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use serde_json::{Value, json};

use super::sse::named_event;

/// The largest frame held while it is received. Bedrock's frames are a few KiB; one that
/// declares more is refused rather than buffered.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Total length, headers length, prelude CRC.
const PRELUDE_BYTES: usize = 12;
/// The prelude and the message CRC: the smallest frame.
const MIN_FRAME_BYTES: usize = PRELUDE_BYTES + 4;

const MALFORMED: &str = "the provider's event stream is malformed";
const TRUNCATED: &str = "the provider's event stream ended in the middle of a frame";

/// Which Bedrock stream the frames come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// ConverseStream: each event's payload is its JSON, named by `:event-type`.
    Converse,
    /// InvokeModelWithResponseStream of an Anthropic model: `chunk` events whose
    /// `{"bytes": base64}` payload is one Anthropic stream event.
    InvokeAnthropic,
}

/// An event stream → SSE events, incrementally.
#[derive(Debug)]
pub struct EventStreamToSse {
    flavour: Flavour,
    decoder: MessageFrameDecoder,
    /// The bytes of the frame being received (and of those after it in the last chunk).
    buf: BytesMut,
    /// An error was written: nothing more is.
    ended: bool,
}

fn header<'a>(m: &'a Message, name: &str) -> Option<&'a str> {
    m.headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| h.value().as_string().ok())
        .map(|s| s.as_str())
}

/// An SSE event name must be one line.
fn event_name(name: &str) -> Option<&str> {
    (!name.is_empty() && !name.contains(['\n', '\r'])).then_some(name)
}

impl EventStreamToSse {
    pub fn new(flavour: Flavour) -> EventStreamToSse {
        EventStreamToSse {
            flavour,
            decoder: MessageFrameDecoder::new(),
            buf: BytesMut::new(),
            ended: false,
        }
    }

    /// How many bytes of an unfinished frame are held.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The SSE events of the frames this chunk completes.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Bytes> {
        let mut out = Vec::new();
        if self.ended {
            return out;
        }
        self.buf.extend_from_slice(chunk);
        while self.buf.len() >= PRELUDE_BYTES {
            let Some(len) = self.frame_len() else {
                out.push(self.fail(MALFORMED));
                return out;
            };
            if self.buf.len() < len {
                break;
            }
            let frame = self.buf.split_to(len).freeze();
            match self.decoder.decode_frame(frame) {
                Ok(DecodedFrame::Complete(m)) => {
                    if let Some(ev) = self.message(&m) {
                        out.push(ev);
                    }
                    if self.ended {
                        return out;
                    }
                }
                // A whole frame was given: the decoder wanting more means its length lies.
                Ok(DecodedFrame::Incomplete) | Err(_) => {
                    out.push(self.fail(MALFORMED));
                    return out;
                }
            }
        }
        out
    }

    /// The end of the stream: a frame left unfinished is an error.
    pub fn finish(&mut self) -> Vec<Bytes> {
        if self.ended || self.buf.is_empty() {
            self.buf = BytesMut::new();
            return Vec::new();
        }
        vec![self.fail(TRUNCATED)]
    }

    /// The declared length of the frame at the head of the buffer, once its prelude's
    /// checksum holds and the length is within bounds; `None` when it is not a frame.
    fn frame_len(&self) -> Option<usize> {
        let prelude = self.buf.get(..PRELUDE_BYTES)?;
        let word = |i: usize| -> Option<u32> {
            Some(u32::from_be_bytes(prelude.get(i..i + 4)?.try_into().ok()?))
        };
        let (total, crc) = (word(0)?, word(8)?);
        let declared = prelude.get(..8)?;
        if crc32fast::hash(declared) != crc {
            return None;
        }
        let total = usize::try_from(total).ok()?;
        (MIN_FRAME_BYTES..=MAX_FRAME_BYTES)
            .contains(&total)
            .then_some(total)
    }

    /// Writes the error event and ends the stream.
    fn fail(&mut self, message: &str) -> Bytes {
        self.ended = true;
        self.buf = BytesMut::new();
        self.error_event("api_error", message)
    }

    fn error_event(&self, kind: &str, message: &str) -> Bytes {
        let body = match self.flavour {
            Flavour::Converse => json!({"error": {"message": message, "type": kind}}),
            Flavour::InvokeAnthropic => {
                let kind = match kind {
                    "throttlingException" | "serviceUnavailableException" => "overloaded_error",
                    _ => "api_error",
                };
                json!({"type": "error", "error": {"type": kind, "message": message}})
            }
        };
        named_event("error", &body.to_string())
    }

    /// The SSE event of one decoded message, if it makes one.
    fn message(&mut self, m: &Message) -> Option<Bytes> {
        match header(m, ":message-type") {
            Some("event") => self.event(m),
            Some("exception") => {
                let kind = header(m, ":exception-type").unwrap_or("api_error");
                let payload: Value = serde_json::from_slice(m.payload()).unwrap_or(Value::Null);
                let message = payload
                    .get("message")
                    .or_else(|| payload.get("Message"))
                    .and_then(Value::as_str)
                    .unwrap_or("the provider reported an error");
                self.ended = true;
                Some(self.error_event(kind, message))
            }
            Some("error") => {
                let kind = header(m, ":error-code").unwrap_or("api_error");
                let message =
                    header(m, ":error-message").unwrap_or("the provider reported an error");
                self.ended = true;
                Some(self.error_event(kind, message))
            }
            // Other message types carry nothing a client needs.
            _ => None,
        }
    }

    fn event(&mut self, m: &Message) -> Option<Bytes> {
        let Some(kind) = header(m, ":event-type").and_then(event_name) else {
            return Some(self.fail(MALFORMED));
        };
        match self.flavour {
            Flavour::Converse => match serde_json::from_slice::<Value>(m.payload()) {
                Ok(v) => Some(named_event(kind, &v.to_string())),
                Err(_) => Some(self.fail(MALFORMED)),
            },
            Flavour::InvokeAnthropic => {
                if kind != "chunk" {
                    return None;
                }
                let inner = serde_json::from_slice::<Value>(m.payload())
                    .ok()
                    .and_then(|v| v.get("bytes")?.as_str().map(str::to_owned))
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
                let Some(inner) = inner else {
                    return Some(self.fail(MALFORMED));
                };
                match inner
                    .get("type")
                    .and_then(Value::as_str)
                    .and_then(event_name)
                {
                    Some(t) => Some(named_event(t, &inner.to_string())),
                    None => Some(self.fail(MALFORMED)),
                }
            }
        }
    }
}

/// One event-stream frame with these string headers and this payload. Empty if the frame
/// cannot be written (a payload of 4 GiB or more).
pub fn encode_with(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut m = Message::new(Bytes::copy_from_slice(payload));
    for (name, value) in headers {
        m = m.add_header(Header::new(
            (*name).to_owned(),
            HeaderValue::String((*value).to_owned().into()),
        ));
    }
    let mut out = Vec::with_capacity(payload.len() + 128);
    if write_message_to(&m, &mut out).is_err() {
        return Vec::new();
    }
    out
}

/// One event frame, as Bedrock writes them: `:event-type`, `:content-type`
/// application/json, `:message-type` event.
pub fn encode(event_type: &str, payload: &[u8]) -> Vec<u8> {
    encode_with(
        &[
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload,
    )
}

/// One exception frame, as Bedrock writes them: `:exception-type`, `:content-type`
/// application/json, `:message-type` exception.
pub fn encode_exception(exception_type: &str, payload: &[u8]) -> Vec<u8> {
    encode_with(
        &[
            (":exception-type", exception_type),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        payload,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::sse::{SseEvent, SseParser};
    use crate::providers::wire::Tokens;

    fn events(out: &[Bytes]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        for b in out {
            p.push(b);
        }
        let evs: Vec<SseEvent> = std::iter::from_fn(|| p.next_event()).collect();
        assert_eq!(p.pending(), 0);
        evs
    }

    fn named(evs: &[SseEvent]) -> Vec<(String, Value)> {
        evs.iter()
            .map(|e| {
                (
                    e.event.clone().unwrap(),
                    serde_json::from_str(&e.data).unwrap(),
                )
            })
            .collect()
    }

    fn converse_frames() -> (Vec<u8>, Vec<(String, Value)>) {
        let evs = [
            (
                "messageStart",
                json!({"role": "assistant", "p": "abcdefgh"}),
            ),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "Hello"}, "p": "ab"}),
            ),
            ("contentBlockStop", json!({"contentBlockIndex": 0})),
            ("messageStop", json!({"stopReason": "end_turn"})),
            (
                "metadata",
                json!({"usage": {"inputTokens": 5, "outputTokens": 1, "totalTokens": 6}, "metrics": {"latencyMs": 100}}),
            ),
        ];
        let mut bytes = Vec::new();
        for (name, v) in &evs {
            // Pretty-printed on the wire: the SSE data must come out compact, on one line.
            bytes.extend(encode(
                name,
                serde_json::to_string_pretty(v).unwrap().as_bytes(),
            ));
        }
        (
            bytes,
            evs.iter()
                .map(|(n, v)| ((*n).to_owned(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn converse_frames_become_named_events_however_they_are_split() {
        let (bytes, want) = converse_frames();
        // All at once.
        let mut d = EventStreamToSse::new(Flavour::Converse);
        let out = d.push(&bytes);
        assert!(d.finish().is_empty());
        let evs = events(&out);
        assert_eq!(named(&evs), want);
        assert_eq!(
            &evs[0].raw[..],
            b"event: messageStart\ndata: {\"p\":\"abcdefgh\",\"role\":\"assistant\"}\n\n"
        );
        // Split once at every byte.
        for split in 0..=bytes.len() {
            let mut d = EventStreamToSse::new(Flavour::Converse);
            let mut out = d.push(&bytes[..split]);
            out.extend(d.push(&bytes[split..]));
            assert!(d.finish().is_empty(), "split at {split}");
            assert_eq!(named(&events(&out)), want, "split at {split}");
        }
        // One byte at a time.
        let mut d = EventStreamToSse::new(Flavour::Converse);
        let mut out = Vec::new();
        for b in &bytes {
            out.extend(d.push(std::slice::from_ref(b)));
        }
        assert_eq!(d.pending(), 0);
        assert!(d.finish().is_empty());
        assert_eq!(named(&events(&out)), want);
    }

    #[test]
    fn the_events_feed_the_converse_translator() {
        use crate::providers::converse::StreamTranslator;
        let (bytes, _) = converse_frames();
        let mut d = EventStreamToSse::new(Flavour::Converse);
        let mut t = StreamTranslator::new(true, "m");
        let mut out = Vec::new();
        for ev in events(&d.push(&bytes)) {
            out.extend(t.event(&ev));
        }
        assert!(t.done);
        let data: Vec<String> = events(&out).into_iter().map(|e| e.data).collect();
        assert_eq!(data.len(), 5);
        assert_eq!(data[4], "[DONE]");
        let usage: Value = serde_json::from_str(&data[3]).unwrap();
        assert_eq!(
            usage["usage"],
            json!({"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6})
        );
    }

    #[test]
    fn a_corrupted_frame_is_one_error_and_the_end() {
        let (bytes, _) = converse_frames();
        let first = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        // The second frame's prelude CRC and a byte of its headers, and the last frame's
        // message CRC.
        for at in [first + 8, first + 20, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x55;
            for chunk in [bad.len(), 7] {
                let mut d = EventStreamToSse::new(Flavour::Converse);
                let mut out = Vec::new();
                for c in bad.chunks(chunk) {
                    out.extend(d.push(c));
                }
                out.extend(d.finish());
                let evs = named(&events(&out));
                let (last, good) = evs.split_last().unwrap();
                assert_eq!(
                    last,
                    &(
                        "error".to_owned(),
                        json!({"error": {"message": "the provider's event stream is malformed", "type": "api_error"}})
                    ),
                    "corrupted at {at}"
                );
                assert!(good.iter().all(|(n, _)| n != "error"));
                if at == bytes.len() - 1 {
                    assert_eq!(good.len(), 4);
                } else {
                    assert_eq!(good.len(), 1);
                }
                // Nothing follows.
                assert!(d.push(&bytes).is_empty());
                assert!(d.finish().is_empty());
            }
        }

        // Garbage from the first byte.
        let mut d = EventStreamToSse::new(Flavour::Converse);
        let out = d.push(b"<html><body>Bad gateway</body></html>");
        assert_eq!(named(&events(&out))[0].0, "error");
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn frames_past_the_bound_and_truncated_streams_are_errors() {
        // A valid prelude declaring 1 MiB + 1: refused on its prelude, before the bytes.
        let total = u32::try_from(MAX_FRAME_BYTES + 1).unwrap();
        let mut prelude = Vec::new();
        prelude.extend(total.to_be_bytes());
        prelude.extend(0u32.to_be_bytes());
        prelude.extend(crc32fast::hash(&prelude).to_be_bytes());
        let mut d = EventStreamToSse::new(Flavour::Converse);
        let out = d.push(&prelude);
        assert_eq!(
            named(&events(&out)),
            [(
                "error".to_owned(),
                json!({"error": {"message": "the provider's event stream is malformed", "type": "api_error"}})
            )]
        );
        assert_eq!(d.pending(), 0);

        // A frame of exactly 1 MiB passes.
        let overhead = encode("x", b"").len();
        let big = vec![b' '; MAX_FRAME_BYTES - overhead - 2];
        let mut payload = b"\"".to_vec();
        payload.extend(&big);
        payload.push(b'"');
        let frame = encode("x", &payload);
        assert_eq!(frame.len(), MAX_FRAME_BYTES);
        let mut d = EventStreamToSse::new(Flavour::Converse);
        let evs = events(&d.push(&frame));
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].event.as_deref(), Some("x"));

        // The stream ends inside a frame.
        let frame = encode("messageStop", br#"{"stopReason":"end_turn"}"#);
        let mut d = EventStreamToSse::new(Flavour::Converse);
        assert!(d.push(&frame[..frame.len() - 3]).is_empty());
        assert_eq!(
            named(&events(&d.finish())),
            [(
                "error".to_owned(),
                json!({"error": {"message": "the provider's event stream ended in the middle of a frame", "type": "api_error"}})
            )]
        );
        assert!(d.finish().is_empty());
    }

    #[test]
    fn exceptions_and_errors_become_error_events() {
        let throttled = encode_exception(
            "throttlingException",
            br#"{"message":"Too many requests, please wait before trying again."}"#,
        );
        let mut d = EventStreamToSse::new(Flavour::Converse);
        let mut bytes = encode("messageStart", br#"{"role":"assistant"}"#);
        bytes.extend(&throttled);
        bytes.extend(encode("messageStop", br#"{"stopReason":"end_turn"}"#));
        let evs = named(&events(&d.push(&bytes)));
        assert_eq!(
            evs,
            [
                ("messageStart".to_owned(), json!({"role": "assistant"})),
                (
                    "error".to_owned(),
                    json!({"error": {"message": "Too many requests, please wait before trying again.", "type": "throttlingException"}})
                )
            ]
        );

        let mut d = EventStreamToSse::new(Flavour::InvokeAnthropic);
        assert_eq!(
            named(&events(&d.push(&throttled))),
            [(
                "error".to_owned(),
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Too many requests, please wait before trying again."}})
            )]
        );
        let mut d = EventStreamToSse::new(Flavour::InvokeAnthropic);
        let failed = encode_exception("modelStreamErrorException", br#"{"Message":"boom"}"#);
        assert_eq!(
            named(&events(&d.push(&failed))),
            [(
                "error".to_owned(),
                json!({"type": "error", "error": {"type": "api_error", "message": "boom"}})
            )]
        );

        let error = encode_with(
            &[
                (":message-type", "error"),
                (":error-code", "InternalFailure"),
                (":error-message", "An internal error occurred."),
            ],
            b"",
        );
        let mut d = EventStreamToSse::new(Flavour::Converse);
        assert_eq!(
            named(&events(&d.push(&error))),
            [(
                "error".to_owned(),
                json!({"error": {"message": "An internal error occurred.", "type": "InternalFailure"}})
            )]
        );
    }

    fn chunk(event: &Value) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(event.to_string());
        encode(
            "chunk",
            json!({"bytes": b64, "p": "abc"}).to_string().as_bytes(),
        )
    }

    #[test]
    fn anthropic_chunks_become_anthropic_events() {
        let stream = [
            json!({"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 9, "output_tokens": 1}}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}),
            json!({"type": "message_stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 9}}),
        ];
        let bytes: Vec<u8> = stream.iter().flat_map(chunk).collect();
        for split in (0..=bytes.len()).step_by(5) {
            let mut d = EventStreamToSse::new(Flavour::InvokeAnthropic);
            let mut out = d.push(&bytes[..split]);
            out.extend(d.push(&bytes[split..]));
            assert!(d.finish().is_empty());
            let evs = events(&out);
            let got = named(&evs);
            let want: Vec<(String, Value)> = stream
                .iter()
                .map(|v| (v["type"].as_str().unwrap().to_owned(), v.clone()))
                .collect();
            assert_eq!(got, want, "split at {split}");
            // Fed to the Anthropic translator, as the pass-through would.
            let mut t = crate::providers::messages::StreamTranslator::new(true);
            for ev in &evs {
                t.event(ev);
            }
            assert!(t.done);
            assert_eq!(
                t.meter.tokens(),
                Tokens {
                    prompt: 9,
                    completion: 3
                }
            );
        }

        // Other event types carry nothing; a chunk that is not base64 JSON is malformed.
        let mut d = EventStreamToSse::new(Flavour::InvokeAnthropic);
        assert!(d.push(&encode("initial-response", b"{}")).is_empty());
        let out = d.push(&encode("chunk", br#"{"bytes":"%%%"}"#));
        assert_eq!(
            named(&events(&out)),
            [(
                "error".to_owned(),
                json!({"type": "error", "error": {"type": "api_error", "message": "the provider's event stream is malformed"}})
            )]
        );
    }

    #[test]
    fn frames_the_stream_cannot_carry_are_malformed() {
        // A Converse event whose payload is not JSON, and one with a multi-line name.
        for frame in [encode("messageStart", b"not json"), encode("a\nb", b"{}")] {
            let mut d = EventStreamToSse::new(Flavour::Converse);
            let evs = named(&events(&d.push(&frame)));
            assert_eq!(evs.len(), 1);
            assert_eq!(
                evs[0].1["error"]["message"],
                "the provider's event stream is malformed"
            );
        }
        assert!(encode("x", b"{}").len() > MIN_FRAME_BYTES);
    }
}
