//! The offline verifier against exports built here with the crate's own APIs: clean ones
//! pass, and each kind of tampering is caught and named.

use std::io::Cursor;

use chrono::{TimeZone, Utc};
use keyward_events::export::{self, Line};
use keyward_events::merkle::{self, CompactRange, NodeId};
use keyward_events::verify::{self, Failure, Mode, Options, Report, VerifyError};
use keyward_events::*;
use serde_json::json;
use ulid::Ulid;

fn t(n: u64) -> time::Timestamp {
    Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap() + chrono::Duration::microseconds(n as i64)
}

/// Event `n` of a test log: mostly usage, some keys and users.
fn event(n: u64) -> Event {
    match n % 7 {
        0 => Event::UserCreated(UserCreated {
            user_id: format!("usr_{n}"),
            username: format!("user{n}"),
            role: Role::User,
            password: None,
            legacy_password_hash: None,
        }),
        _ => Event::KeyUsed(KeyUsed {
            key_id: format!("key_{}", n % 3),
            provider_id: "prv_1".into(),
            model: Some("gpt-4o-mini".into()),
            endpoint: "/v1/chat/completions".into(),
            outcome: UsageOutcome::Success,
            status: 200,
            latency_us: 1000 + n,
            upstream_latency_us: Some(900 + n),
            prompt_tokens: 12,
            completion_tokens: 34,
            stream: n % 2 == 0,
            client_ip: Some("203.0.113.9".into()),
        }),
    }
}

fn seal(n: u64, e: &Event, prev: Hash32) -> Envelope {
    let mut ne = NewEvent::new(e, ExpectedVersion::Any, t(n), "system", Some(format!("req-{n}")));
    ne.event_id = Ulid::from_parts(1_700_000_000_000 + n, u128::from(n));
    ne.seal(n, n, prev)
}

/// A chained log of `n` events.
fn log(n: u64) -> Vec<Envelope> {
    let mut prev = Hash32::ZERO;
    (1..=n)
        .map(|i| {
            let env = seal(i, &event(i), prev);
            prev = env.hash;
            env
        })
        .collect()
}

/// The export of `events` as `keyward audit export` writes it: readable envelopes.
fn export_of<'a>(events: impl IntoIterator<Item = &'a Envelope>) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        export::write_event_line(&mut out, &upcast::readable(e), None).unwrap();
    }
    out
}

fn lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn join(lines: &[String]) -> Vec<u8> {
    let mut s = lines.join("\n");
    s.push('\n');
    s.into_bytes()
}

fn run(bytes: &[u8], opts: &Options) -> Result<Report, VerifyError> {
    verify::verify_export(Cursor::new(bytes), opts)
}

fn auto() -> Options {
    Options::default()
}

fn mode(m: Mode) -> Options {
    Options {
        mode: m,
        ..Options::default()
    }
}

/// The hash of the complete subtree `id` of the tree over `leaves`.
fn subtree(leaves: &[Hash32], id: NodeId) -> Hash32 {
    let mut r = CompactRange::new();
    for l in &leaves[id.start() as usize..id.end() as usize] {
        r.push(*l);
    }
    r.root()
}

/// The inclusion proof of `seq` in the tree of the first `size` events of `log`.
fn proof(log: &[Envelope], seq: u64, size: u64) -> Vec<Hash32> {
    let leaves: Vec<Hash32> = log.iter().map(|e| merkle::leaf_hash(&e.hash)).collect();
    merkle::inclusion_plan(seq - 1, size)
        .unwrap()
        .assemble(|id| Some(subtree(&leaves, id)))
        .unwrap()
}

#[allow(dead_code)] // used by the checkpoint tests
fn root(log: &[Envelope], size: u64) -> Hash32 {
    let mut r = CompactRange::new();
    for e in &log[..size as usize] {
        r.push(merkle::leaf_hash(&e.hash));
    }
    r.root()
}

// ---------- complete exports, no checkpoint ----------

#[test]
fn a_clean_complete_export_passes_and_reports_its_head() {
    let log = log(50);
    let report = run(&export_of(&log), &auto()).unwrap();
    assert!(report.complete);
    assert_eq!(report.events, 50);
    assert_eq!(report.lines, 50);
    assert_eq!(report.links, 50);
    assert_eq!(report.proofs, 0);
    assert_eq!(
        report.head,
        Some(Head {
            seq: 50,
            hash: log[49].hash
        })
    );
    // The same head as the chain verifier over the envelopes in memory.
    assert_eq!(report.head, Some(chain::verify(&log).unwrap()));
    assert!(run(&export_of(&log), &mode(Mode::Complete)).is_ok());
    let text = report.to_string();
    assert!(text.contains("50 events checked"), "{text}");
    assert!(text.contains(&log[49].hash.to_hex()), "{text}");
}

#[test]
fn an_empty_export_passes_with_no_events() {
    let report = run(b"", &auto()).unwrap();
    assert_eq!(report.events, 0);
    assert_eq!(report.head, None);
}

#[test]
fn tampering_one_field_of_one_event_names_its_seq_and_line() {
    let log = log(20);
    let exported = lines(&export_of(&log));
    let tamper: [(&str, &str); 4] = [
        ("\"actor\":\"system\"", "\"actor\":\"usr_mallory\""),
        ("\"prompt_tokens\":12", "\"prompt_tokens\":13"),
        ("\"occurred_at\":\"2026-03-01T09:00:00.000009Z\"", "\"occurred_at\":\"2026-03-01T09:00:00.000010Z\""),
        ("\"request_id\":\"req-9\"", "\"request_id\":null"),
    ];
    for (from, to) in tamper {
        let mut l = exported.clone();
        assert!(l[8].contains(from), "{}", l[8]);
        l[8] = l[8].replacen(from, to, 1);
        let err = run(&join(&l), &auto()).unwrap_err();
        assert_eq!(err.failure, Failure::Hash { seq: 9 }, "{from}");
        assert_eq!(err.line, Some(9));
        assert_eq!(err.seq(), Some(9));
        assert_eq!(err.checked, 8);
        assert!(err.to_string().starts_with("line 9: seq 9: stored hash"), "{err}");
    }
}

#[test]
fn tampering_and_rehashing_one_event_breaks_the_next_link() {
    let log = log(20);
    let mut l = lines(&export_of(&log));
    let mut e = log[4].clone();
    e.actor = "usr_mallory".into();
    e.hash = e.compute_hash();
    let mut out = Vec::new();
    export::write_event_line(&mut out, &e, None).unwrap();
    l[4] = String::from_utf8(out).unwrap().trim_end().to_owned();
    let err = run(&join(&l), &auto()).unwrap_err();
    assert_eq!(err.failure, Failure::PrevHash { seq: 6, prev: 5 });
    assert_eq!(err.line, Some(6));
}

#[test]
fn a_deleted_line_is_a_gap_named_by_the_seq_after_it() {
    let log = log(20);
    for (m, at) in [(Mode::Auto, 7usize), (Mode::Complete, 7), (Mode::Auto, 0), (Mode::Complete, 0)] {
        let mut l = lines(&export_of(&log));
        l.remove(at);
        let err = run(&join(&l), &mode(m)).unwrap_err();
        let seq = at as u64 + 2;
        assert_eq!(
            err.failure,
            Failure::Gap {
                seq,
                expected: seq - 1
            },
            "{m:?} {at}"
        );
        assert_eq!(err.line, Some(at as u64 + 1));
    }
}

#[test]
fn a_cut_tail_passes_without_a_checkpoint() {
    // Nothing in the export itself shows that it stops early: this is what a checkpoint
    // is for (see the checkpoint tests below).
    let log = log(20);
    let report = run(&export_of(&log[..15]), &auto()).unwrap();
    assert_eq!(report.head.map(|h| h.seq), Some(15));
}

#[test]
fn seqs_out_of_order_or_repeated_fail() {
    let log = log(10);
    let mut l = lines(&export_of(&log));
    l.swap(3, 4);
    let err = run(&join(&l), &auto()).unwrap_err();
    assert!(
        matches!(err.failure, Failure::Gap { seq: 5, expected: 4 }),
        "{err}"
    );
    let mut l = lines(&export_of(&log));
    let dup = l[3].clone();
    l.insert(4, dup);
    let err = run(&join(&l), &auto()).unwrap_err();
    assert_eq!(err.failure, Failure::OutOfOrder { seq: 4, prev: 4 });
    assert_eq!(err.line, Some(5));
}

#[test]
fn seq_one_must_follow_the_zero_hash() {
    let mut e = seal(1, &event(1), Hash32([9; 32]));
    e.hash = e.compute_hash();
    let err = run(&export_of([&e]), &auto()).unwrap_err();
    assert_eq!(err.failure, Failure::PrevHash { seq: 1, prev: 0 });
}

#[test]
fn malformed_lines_report_their_line_number() {
    let log = log(10);
    let good = lines(&export_of(&log));
    let cases: Vec<(Vec<String>, u64)> = vec![
        (
            {
                let mut l = good.clone();
                l[2] = "not json".into();
                l
            },
            3,
        ),
        (
            {
                let mut l = good.clone();
                l[4] = l[4].replacen("\"seq\":5", "\"seq\": 5", 1);
                l
            },
            5,
        ),
        (
            {
                let mut l = good.clone();
                l[6] = l[6].replacen("\"hash\":\"", "\"hash\":\"x", 1);
                l
            },
            7,
        ),
        (
            {
                let mut l = good.clone();
                l[1].truncate(40);
                l
            },
            2,
        ),
        (
            {
                let mut l = good.clone();
                l.insert(3, String::new());
                l
            },
            4,
        ),
    ];
    for (l, line) in cases {
        let err = run(&join(&l), &auto()).unwrap_err();
        assert_eq!(err.line, Some(line), "{err}");
        assert!(
            matches!(err.failure, Failure::Malformed(_) | Failure::EmptyLine),
            "{err}"
        );
        assert_eq!(err.seq(), None);
        assert!(err.to_string().starts_with(&format!("line {line}: ")));
    }
    // A line that is not UTF-8.
    let mut bytes = export_of(&log[..3]);
    let at = bytes.iter().position(|&b| b == b'u').unwrap();
    bytes[at] = 0xff;
    let err = run(&bytes, &auto()).unwrap_err();
    assert_eq!(err.line, Some(1));
}

#[test]
fn crlf_line_ends_are_accepted() {
    let log = log(5);
    let text = String::from_utf8(export_of(&log)).unwrap().replace('\n', "\r\n");
    assert_eq!(run(text.as_bytes(), &auto()).unwrap().events, 5);
}

#[test]
fn a_filtered_export_without_proofs_cannot_be_verified() {
    let log = log(20);
    let odd: Vec<&Envelope> = log.iter().filter(|e| e.seq % 2 == 1).collect();
    // Auto: the gap after seq 1 is what fails.
    let err = run(&export_of(odd.iter().copied()), &auto()).unwrap_err();
    assert_eq!(err.failure, Failure::Gap { seq: 3, expected: 2 });
    // Starting past seq 1 (`audit export --from-seq`).
    let err = run(&export_of(&log[5..]), &auto()).unwrap_err();
    assert_eq!(err.failure, Failure::Gap { seq: 6, expected: 1 });
    // Told it is filtered, the first event without a proof fails.
    let err = run(&export_of(odd.iter().copied()), &mode(Mode::Filtered)).unwrap_err();
    assert_eq!(err.failure, Failure::MissingProof { seq: 1 });
    assert_eq!(err.line, Some(1));
}

#[test]
fn a_proof_without_a_checkpoint_fails() {
    let log = log(4);
    let mut out = Vec::new();
    export::write_event_line(&mut out, &log[0], Some(&proof(&log, 1, 4))).unwrap();
    let err = run(&out, &auto()).unwrap_err();
    assert_eq!(err.failure, Failure::ProofWithoutCheckpoint { seq: 1 });
}

// ---------- redacted legacy lines ----------

/// A log whose seq 3 is a schema 1 `user.created` that held a password hash.
fn log_with_legacy() -> Vec<Envelope> {
    let mut out = Vec::new();
    let mut prev = Hash32::ZERO;
    for i in 1..=6u64 {
        let env = if i == 3 {
            let mut ne = NewEvent::new(&event(7), ExpectedVersion::NoStream, t(i), "system", None);
            ne.event_id = Ulid::from_parts(1_700_000_000_000 + i, u128::from(i));
            ne.schema = 1;
            ne.data = json!({"user_id": "usr_old", "username": "old", "role": "admin",
                "password_hash": "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"});
            ne.seal(i, 1, prev)
        } else {
            seal(i, &event(i), prev)
        };
        prev = env.hash;
        out.push(env);
    }
    out
}

#[test]
fn a_redacted_legacy_line_is_checked_by_its_place_and_reported() {
    let log = log_with_legacy();
    let bytes = export_of(&log);
    assert!(String::from_utf8_lossy(&bytes).contains("<redacted>"));
    assert!(!String::from_utf8_lossy(&bytes).contains("argon2id"));
    let report = run(&bytes, &auto()).unwrap();
    assert_eq!(report.redacted, 1);
    assert_eq!(report.redacted_seqs, vec![3]);
    assert!(report.to_string().contains("WARNING: 1 events (seqs [3])"));
    // --strict refuses it.
    let err = run(
        &bytes,
        &Options {
            strict: true,
            ..Options::default()
        },
    )
    .unwrap_err();
    assert_eq!(err.failure, Failure::Redacted { seq: 3 });
    // Its stored hash still links: changing it is caught by the next event.
    let mut l = lines(&bytes);
    l[2] = l[2].replacen(&log[2].hash.to_hex(), &Hash32([1; 32]).to_hex(), 1);
    let err = run(&join(&l), &auto()).unwrap_err();
    assert_eq!(err.failure, Failure::PrevHash { seq: 4, prev: 3 });
    // An event that is not a legacy user event cannot pass as redacted.
    let mut l = lines(&bytes);
    l[1] = l[1].replacen("\"status\":200", "\"status\":500", 1);
    assert_eq!(
        run(&join(&l), &auto()).unwrap_err().failure,
        Failure::Hash { seq: 2 }
    );
}

#[test]
fn parsing_an_exported_line_gives_back_the_envelope() {
    let log = log(8);
    for (e, l) in log.iter().zip(lines(&export_of(&log))) {
        let Line::Event { envelope, proof } = export::parse_line(&l).unwrap() else {
            panic!("not an event line");
        };
        assert_eq!(&envelope, e);
        assert_eq!(envelope.compute_hash(), e.hash);
        assert_eq!(proof, None);
    }
}
