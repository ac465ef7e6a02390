//! An incremental parser for server-sent events: bytes go in as the network delivers them,
//! and whole events come out, each with its raw bytes so that a pass-through can forward it
//! unchanged. Only the event being received is buffered, never the whole stream, and the
//! caller bounds that: [`MAX_EVENT_BYTES`] per event.

use bytes::{Bytes, BytesMut};

/// The largest event the proxy holds while waiting for its blank line. A provider's real
/// events are a few KiB (a tool call's arguments arrive as many small deltas); one that
/// sends more without ending the event is cut off rather than buffered without bound.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

#[derive(Clone, Debug, PartialEq)]
pub struct SseEvent {
    /// The event exactly as received, its terminating blank line included.
    pub raw: Bytes,
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

#[derive(Debug, Default)]
pub struct SseParser {
    buf: BytesMut,
    /// Where the next unexamined line starts; every line before it is non-empty.
    scanned: usize,
}

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::default()
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete event, if one has arrived.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            let rel = memchr(b'\n', &self.buf[self.scanned..])?;
            let nl = self.scanned + rel;
            let line = &self.buf[self.scanned..nl];
            let blank = line.is_empty() || line == b"\r";
            if blank {
                let raw = self.buf.split_to(nl + 1).freeze();
                self.scanned = 0;
                return Some(parse(raw));
            }
            self.scanned = nl + 1;
        }
    }

    /// How many bytes of an unfinished event are held.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Drops whatever is held, when the stream is abandoned.
    pub fn clear(&mut self) {
        self.buf = BytesMut::new();
        self.scanned = 0;
    }

    /// Whatever remains when the stream ends without a final blank line.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if self.buf.iter().all(|b| b.is_ascii_whitespace()) {
            self.buf.clear();
            self.scanned = 0;
            return None;
        }
        let raw = self.buf.split().freeze();
        self.scanned = 0;
        Some(parse(raw))
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|b| *b == needle)
}

fn parse(raw: Bytes) -> SseEvent {
    let mut event = None;
    let mut data: Option<String> = None;
    for line in raw.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() || line[0] == b':' {
            continue;
        }
        let (field, value) = match line.iter().position(|b| *b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match field {
            b"event" => event = Some(value.into_owned()),
            b"data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(&value);
                }
                None => data = Some(value.into_owned()),
            },
            _ => {}
        }
    }
    SseEvent {
        raw,
        event,
        data: data.unwrap_or_default(),
    }
}

/// One `data:` event, as the proxy writes the ones it makes.
pub fn data_event(json: &str) -> Bytes {
    let mut s = String::with_capacity(json.len() + 8);
    s.push_str("data: ");
    s.push_str(json);
    s.push_str("\n\n");
    Bytes::from(s)
}

/// A named event, as Anthropic writes them.
pub fn named_event(name: &str, json: &str) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {json}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(p: &mut SseParser) -> Vec<SseEvent> {
        std::iter::from_fn(|| p.next_event()).collect()
    }

    #[test]
    fn events_split_across_chunks_come_out_whole() {
        let text = "event: message_start\ndata: {\"a\":1}\n\n: comment\ndata: x\ndata: y\n\ndata: [DONE]\n\n";
        for split in 0..text.len() {
            let mut p = SseParser::new();
            p.push(&text.as_bytes()[..split]);
            let mut got = all(&mut p);
            p.push(&text.as_bytes()[split..]);
            got.extend(all(&mut p));
            assert_eq!(p.finish(), None);
            assert_eq!(got.len(), 3, "split at {split}");
            assert_eq!(got[0].event.as_deref(), Some("message_start"));
            assert_eq!(got[0].data, "{\"a\":1}");
            assert_eq!(
                &got[0].raw[..],
                b"event: message_start\ndata: {\"a\":1}\n\n"
            );
            assert_eq!(got[1].data, "x\ny");
            assert_eq!(got[2].data, "[DONE]");
        }
    }

    #[test]
    fn crlf_and_a_missing_final_blank_line() {
        let mut p = SseParser::new();
        p.push(b"data:one\r\n\r\ndata: two");
        let e = p.next_event().unwrap();
        assert_eq!(e.data, "one");
        assert_eq!(p.next_event(), None);
        assert_eq!(p.finish().unwrap().data, "two");
    }

    #[test]
    fn the_fixture_parses() {
        let text = include_str!("../../tests/fixtures/anthropic-stream.sse");
        let mut p = SseParser::new();
        p.push(text.as_bytes());
        let names: Vec<_> = all(&mut p).into_iter().filter_map(|e| e.event).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
    }
}
