//! The incremental SSE parser (`proxy::sse`).
//!
//! - Never panics.
//! - Chunk-split invariance: the same bytes fed whole, byte by byte, or cut at
//!   fuzz-chosen points give the same events, and the same final remainder.
//! - Nothing is lost or invented: the events' raw bytes, followed by what `finish`
//!   returns (or a whitespace-only tail it drops), are exactly the input.
//! - Each event's raw bytes end at its first blank line, and no blank line comes before.
#![no_main]

use keyward::providers::sse::{SseEvent, SseParser};
use libfuzzer_sys::fuzz_target;

fn feed(chunks: &[&[u8]]) -> (Vec<SseEvent>, Option<SseEvent>) {
    let mut p = SseParser::new();
    let mut events = Vec::new();
    for c in chunks {
        p.push(c);
        while let Some(e) = p.next_event() {
            events.push(e);
        }
    }
    (events, p.finish())
}

/// Where the first blank line (`\n\n` or `\n\r\n`, or a leading `\n` / `\r\n`) ends.
fn first_blank_line_end(raw: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for (i, b) in raw.iter().enumerate() {
        if *b == b'\n' {
            let line = &raw[line_start..i];
            if line.is_empty() || line == b"\r" {
                return Some(i + 1);
            }
            line_start = i + 1;
        }
    }
    None
}

fuzz_target!(|data: &[u8]| {
    // The first two bytes choose the cut points; the rest is the stream.
    let (cuts, stream) = match data {
        [a, b, rest @ ..] => ((usize::from(*a), usize::from(*b)), rest),
        _ => return,
    };

    let whole = feed(&[stream]);

    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(feed(&bytes), whole, "byte-at-a-time differs");

    let n = stream.len();
    if n > 0 {
        let (mut x, mut y) = (cuts.0 % (n + 1), cuts.1 % (n + 1));
        if x > y {
            std::mem::swap(&mut x, &mut y);
        }
        let three = [&stream[..x], &stream[x..y], &stream[y..]];
        assert_eq!(feed(&three), whole, "cut at {x} and {y} differs");
    }

    let (events, rest) = &whole;
    let mut rebuilt = Vec::with_capacity(n);
    for e in events {
        assert_eq!(
            first_blank_line_end(&e.raw),
            Some(e.raw.len()),
            "an event does not end at its first blank line"
        );
        rebuilt.extend_from_slice(&e.raw);
    }
    match rest {
        Some(e) => {
            assert_eq!(
                first_blank_line_end(&e.raw),
                None,
                "finish held a whole event"
            );
            rebuilt.extend_from_slice(&e.raw);
            assert_eq!(rebuilt, stream);
        }
        None => {
            assert!(stream.starts_with(&rebuilt));
            assert!(stream[rebuilt.len()..].iter().all(u8::is_ascii_whitespace));
        }
    }
});
