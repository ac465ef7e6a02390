//! The offline verifier against exports built here with the crate's own APIs: clean ones
//! pass, and each kind of tampering is caught and named.

// Test helpers outside #[test] functions may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Cursor;

use chrono::{TimeZone, Utc};
use keyward_events::export::{self, Line};
use keyward_events::merkle::{self, CompactRange, NodeId, ProofError};
use keyward_events::note::{Checkpoint, NoteSigner};
use keyward_events::verify::{
    self, Failure, Mode, Options, Report, RootStatus, Signature, Source, VerifyError,
};
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
            stream: n.is_multiple_of(2),
            client_ip: Some("203.0.113.9".into()),
        }),
    }
}

fn seal(n: u64, e: &Event, prev: Hash32) -> Envelope {
    let mut ne = NewEvent::new(
        e,
        ExpectedVersion::Any,
        t(n),
        "system",
        Some(format!("req-{n}")),
    );
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
        (
            "\"occurred_at\":\"2026-03-01T09:00:00.000009Z\"",
            "\"occurred_at\":\"2026-03-01T09:00:00.000010Z\"",
        ),
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
        assert!(
            err.to_string().starts_with("line 9: seq 9: stored hash"),
            "{err}"
        );
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
    for (m, at) in [
        (Mode::Auto, 7usize),
        (Mode::Complete, 7),
        (Mode::Auto, 0),
        (Mode::Complete, 0),
    ] {
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
        matches!(
            err.failure,
            Failure::Gap {
                seq: 5,
                expected: 4
            }
        ),
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
    let text = String::from_utf8(export_of(&log))
        .unwrap()
        .replace('\n', "\r\n");
    assert_eq!(run(text.as_bytes(), &auto()).unwrap().events, 5);
}

#[test]
fn a_filtered_export_without_proofs_cannot_be_verified() {
    let log = log(20);
    let odd: Vec<&Envelope> = log.iter().filter(|e| e.seq % 2 == 1).collect();
    // Auto: the gap after seq 1 is what fails.
    let err = run(&export_of(odd.iter().copied()), &auto()).unwrap_err();
    assert_eq!(
        err.failure,
        Failure::Gap {
            seq: 3,
            expected: 2
        }
    );
    // Starting past seq 1 (`audit export --from-seq`).
    let err = run(&export_of(&log[5..]), &auto()).unwrap_err();
    assert_eq!(
        err.failure,
        Failure::Gap {
            seq: 6,
            expected: 1
        }
    );
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

// ---------- checkpoints and proofs ----------

const ORIGIN: &str = "keyward.example/audit";

fn signer() -> NoteSigner {
    NoteSigner::from_seed(ORIGIN, &[7; 32]).unwrap()
}

fn other_signer() -> NoteSigner {
    NoteSigner::from_seed(ORIGIN, &[8; 32]).unwrap()
}

fn public_key() -> String {
    signer().verifier().to_text()
}

/// The checkpoint of the first `size` events of `log`, signed.
fn checkpoint(log: &[Envelope], size: u64, by: &NoteSigner) -> String {
    Checkpoint::new(ORIGIN, size, root(log, size))
        .sign(by)
        .unwrap()
}

/// An export with proofs of the events `keep` selects against the checkpoint of `size`.
fn export_with_proofs(log: &[Envelope], size: u64, keep: impl Fn(u64) -> bool) -> Vec<u8> {
    let mut out = export::checkpoint_line(&checkpoint(log, size, &signer())).into_bytes();
    out.push(b'\n');
    for e in log.iter().filter(|e| keep(e.seq)) {
        export::write_event_line(
            &mut out,
            &upcast::readable(e),
            Some(&proof(log, e.seq, size)),
        )
        .unwrap();
    }
    out
}

fn with_key(checkpoint: Option<String>) -> Options {
    Options {
        checkpoint,
        public_key: Some(public_key()),
        ..Options::default()
    }
}

#[test]
fn a_complete_export_matches_a_signed_checkpoint_of_its_head_or_of_a_prefix() {
    let log = log(37);
    for size in [37, 20, 1, 0] {
        let report = run(
            &export_of(&log),
            &with_key(Some(checkpoint(&log, size, &signer()))),
        )
        .unwrap();
        assert!(report.complete);
        let c = &report.checkpoints[0];
        assert_eq!(
            (c.source, c.size, c.root, c.signature, c.root_status),
            (
                Source::Given,
                size,
                root(&log, size),
                Signature::Verified,
                RootStatus::Matched
            )
        );
        assert_eq!(c.origin, ORIGIN);
        assert!(
            report.to_string().contains("signature verified"),
            "{report}"
        );
    }
}

#[test]
fn a_cut_tail_is_caught_against_a_checkpoint_of_a_larger_size() {
    let log = log(30);
    let cp = checkpoint(&log, 30, &signer());
    for keep in [29usize, 10, 0] {
        let err = run(&export_of(&log[..keep]), &with_key(Some(cp.clone()))).unwrap_err();
        assert_eq!(
            err.failure,
            Failure::Truncated {
                last: keep as u64,
                size: 30,
                which: Source::Given
            }
        );
        assert_eq!(err.seq(), Some(keep as u64 + 1));
        assert_eq!(err.line, None);
    }
}

#[test]
fn a_deleted_line_is_caught_with_a_checkpoint_too() {
    let log = log(30);
    let mut l = lines(&export_of(&log));
    l.remove(12);
    let err = run(&join(&l), &with_key(Some(checkpoint(&log, 30, &signer())))).unwrap_err();
    assert_eq!(
        err.failure,
        Failure::Gap {
            seq: 14,
            expected: 13
        }
    );
}

/// The log rewritten from `from` on: event `from` altered, every later one re-chained.
fn rewritten(log: &[Envelope], from: u64) -> Vec<Envelope> {
    let mut out: Vec<Envelope> = log[..from as usize - 1].to_vec();
    let mut prev = out.last().map_or(Hash32::ZERO, |e| e.hash);
    for e in &log[from as usize - 1..] {
        let mut e = e.clone();
        if e.seq == from {
            e.actor = "usr_mallory".into();
        }
        e.prev_hash = prev;
        e.hash = e.compute_hash();
        prev = e.hash;
        out.push(e);
    }
    out
}

#[test]
fn a_rewritten_and_rehashed_log_is_caught_by_the_checkpoint() {
    let log = log(40);
    let cp = checkpoint(&log, 32, &signer());
    for from in [1, 17, 32] {
        let forged = rewritten(&log, from);
        // On its own the forged export is a perfect chain.
        assert!(run(&export_of(&forged), &auto()).is_ok());
        let err = run(&export_of(&forged), &with_key(Some(cp.clone()))).unwrap_err();
        assert_eq!(
            err.failure,
            Failure::RootMismatch {
                size: 32,
                which: Source::Given
            }
        );
        assert_eq!(err.line, Some(32));
    }
    // Rewritten after the checkpoint's size: the checkpoint says nothing about it.
    assert!(
        run(
            &export_of(&rewritten(&log, 33)),
            &with_key(Some(cp.clone()))
        )
        .is_ok()
    );
    // A forger who signs a new checkpoint over the forged log needs the key.
    let forged = rewritten(&log, 5);
    let mut bytes = export::checkpoint_line(&checkpoint(&forged, 40, &other_signer())).into_bytes();
    bytes.push(b'\n');
    bytes.extend(export_of(&forged));
    let err = run(&bytes, &with_key(None)).unwrap_err();
    assert!(
        matches!(
            &err.failure,
            Failure::Checkpoint {
                which: Source::Export,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.line, Some(1));
}

#[test]
fn a_checkpoint_signed_by_another_key_fails() {
    let log = log(10);
    let forged = checkpoint(&log, 10, &other_signer());
    let err = run(&export_of(&log), &with_key(Some(forged))).unwrap_err();
    assert!(
        matches!(
            &err.failure,
            Failure::Checkpoint {
                which: Source::Given,
                reason
            } if reason.contains("signature")
        ),
        "{err}"
    );
    assert_eq!((err.line, err.checked), (None, 0));
    // A checkpoint whose body was edited after signing fails too.
    let good = checkpoint(&log, 10, &signer());
    let edited = good.replacen("\n10\n", "\n9\n", 1);
    assert_ne!(edited, good);
    assert!(run(&export_of(&log), &with_key(Some(edited))).is_err());
    // So does a key that is not a key.
    let err = run(
        &export_of(&log),
        &Options {
            checkpoint: Some(good),
            public_key: Some("not a key".into()),
            ..Options::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("public key"), "{err}");
}

#[test]
fn without_a_key_the_signature_is_reported_as_not_checked() {
    let log = log(10);
    let report = run(
        &export_of(&log),
        &Options {
            checkpoint: Some(checkpoint(&log, 10, &other_signer())),
            ..Options::default()
        },
    )
    .unwrap();
    assert_eq!(report.checkpoints[0].signature, Signature::NotChecked);
    assert_eq!(report.checkpoints[0].root_status, RootStatus::Matched);
    assert!(report.to_string().contains("NOT checked"), "{report}");
}

#[test]
fn a_filtered_export_with_proofs_passes() {
    let log = log(100);
    for size in [100, 64, 77] {
        let bytes = export_with_proofs(&log, size, |s| s % 3 == 0 && s <= size);
        let report = run(&bytes, &with_key(None)).unwrap();
        assert!(!report.complete);
        assert_eq!(report.events, size / 3);
        assert_eq!(report.proofs, size / 3);
        assert_eq!(report.lines, size / 3 + 1);
        let c = &report.checkpoints[0];
        assert_eq!(
            (c.source, c.signature, c.root_status),
            (
                Source::Export,
                Signature::Verified,
                RootStatus::ProofsChecked
            )
        );
        assert!(
            run(
                &bytes,
                &Options {
                    mode: Mode::Filtered,
                    ..with_key(None)
                }
            )
            .is_ok()
        );
        // Told it is complete, it is not.
        assert!(matches!(
            run(
                &bytes,
                &Options {
                    mode: Mode::Complete,
                    ..with_key(None)
                }
            )
            .unwrap_err()
            .failure,
            Failure::Gap {
                seq: 3,
                expected: 1
            }
        ));
    }
    // One key's history: a single event, and the first and last leaves.
    for keep in [1u64, 50, 100] {
        let bytes = export_with_proofs(&log, 100, |s| s == keep);
        assert_eq!(run(&bytes, &with_key(None)).unwrap().proofs, 1);
    }
    // The first events only, each with its proof: a filtered export in auto mode (a
    // prefix that is every proven event says nothing of the rest), a cut tail when the
    // whole log was asked for.
    let prefix = export_with_proofs(&log, 100, |s| s <= 40);
    let report = run(&prefix, &with_key(None)).unwrap();
    assert!(!report.complete);
    assert_eq!(report.checkpoints[0].root_status, RootStatus::ProofsChecked);
    let err = run(
        &prefix,
        &Options {
            mode: Mode::Complete,
            ..with_key(None)
        },
    )
    .unwrap_err();
    assert_eq!(err.seq(), Some(41));
    // A complete export with proofs is checked both ways.
    let report = run(&export_with_proofs(&log, 100, |_| true), &with_key(None)).unwrap();
    assert!(report.complete);
    assert_eq!(report.proofs, 100);
    assert_eq!(report.checkpoints[0].root_status, RootStatus::Matched);
}

/// The filtered export of every 5th event of 64 with the proof of `seq` changed by `f`.
fn with_proof_of(log: &[Envelope], seq: u64, f: impl Fn(&mut Vec<Hash32>)) -> Vec<u8> {
    let mut l = lines(&export_with_proofs(log, 64, |s| s % 5 == 0 && s <= 64));
    let at = l
        .iter()
        .position(|x| x.contains(&format!("{{\"seq\":{seq},")))
        .unwrap();
    let Line::Event { envelope, proof } = export::parse_line(&l[at]).unwrap() else {
        panic!()
    };
    let mut p = proof.unwrap();
    f(&mut p);
    let mut out = Vec::new();
    export::write_event_line(&mut out, &envelope, Some(&p)).unwrap();
    l[at] = String::from_utf8(out).unwrap().trim_end().to_owned();
    join(&l)
}

#[test]
fn a_proof_off_by_one_hash_or_one_level_fails_naming_its_seq() {
    let log = log(64);
    let opts = with_key(None);
    // One bit of one hash.
    for i in 0..6 {
        let err = run(&with_proof_of(&log, 25, |p| p[i].0[31] ^= 1), &opts).unwrap_err();
        assert_eq!(
            err.failure,
            Failure::Proof {
                seq: 25,
                reason: ProofError::RootMismatch
            }
        );
        assert_eq!(err.line, Some(1 + 25 / 5 + 1 - 1));
    }
    // A level missing, a level too many.
    let err = run(
        &with_proof_of(&log, 25, |p| {
            p.pop();
        }),
        &opts,
    )
    .unwrap_err();
    assert_eq!(
        err.failure,
        Failure::Proof {
            seq: 25,
            reason: ProofError::WrongLength { got: 5, want: 6 }
        }
    );
    let err = run(
        &with_proof_of(&log, 25, |p| p.insert(0, Hash32([0; 32]))),
        &opts,
    )
    .unwrap_err();
    assert!(matches!(
        err.failure,
        Failure::Proof {
            seq: 25,
            reason: ProofError::WrongLength { got: 7, want: 6 }
        }
    ));
    // Two hashes swapped; the proof of the neighbouring leaf.
    let err = run(&with_proof_of(&log, 25, |p| p.swap(1, 2)), &opts).unwrap_err();
    assert_eq!(err.seq(), Some(25));
    let neighbour = proof(&log, 26, 64);
    let err = run(&with_proof_of(&log, 25, |p| *p = neighbour.clone()), &opts).unwrap_err();
    assert_eq!(err.seq(), Some(25));
    assert!(matches!(err.failure, Failure::Proof { .. }));
}

#[test]
fn an_altered_event_in_a_filtered_export_fails_even_if_rehashed() {
    let log = log(64);
    let mut l = lines(&export_with_proofs(&log, 64, |s| s % 8 == 0));
    l[3] = l[3].replacen("\"status\":200", "\"status\":201", 1);
    assert_eq!(
        run(&join(&l), &with_key(None)).unwrap_err().failure,
        Failure::Hash { seq: 24 }
    );
    // Re-hashed: its leaf is no longer in the tree.
    let Line::Event {
        mut envelope,
        proof,
    } = export::parse_line(&l[3]).unwrap()
    else {
        panic!()
    };
    envelope.hash = envelope.compute_hash();
    let mut out = Vec::new();
    export::write_event_line(&mut out, &envelope, proof.as_deref()).unwrap();
    l[3] = String::from_utf8(out).unwrap().trim_end().to_owned();
    assert_eq!(
        run(&join(&l), &with_key(None)).unwrap_err().failure,
        Failure::Proof {
            seq: 24,
            reason: ProofError::RootMismatch
        }
    );
}

#[test]
fn filtered_exports_fail_on_missing_proofs_and_events_past_the_checkpoint() {
    let log = log(40);
    // One event's proof dropped.
    let mut l = lines(&export_with_proofs(&log, 32, |s| s % 4 == 0 && s <= 32));
    let Line::Event { envelope, .. } = export::parse_line(&l[2]).unwrap() else {
        panic!()
    };
    let mut out = Vec::new();
    export::write_event_line(&mut out, &envelope, None).unwrap();
    l[2] = String::from_utf8(out).unwrap().trim_end().to_owned();
    let err = run(&join(&l), &with_key(None)).unwrap_err();
    assert_eq!(err.failure, Failure::MissingProof { seq: 8 });
    assert_eq!(err.line, Some(3));
    // An event after the checkpoint's size cannot have a proof against it.
    let mut l = lines(&export_with_proofs(&log, 32, |s| s % 4 == 0 && s <= 32));
    let mut out = Vec::new();
    export::write_event_line(&mut out, &log[35], Some(&proof(&log, 36, 40))).unwrap();
    l.push(String::from_utf8(out).unwrap().trim_end().to_owned());
    let err = run(&join(&l), &with_key(None)).unwrap_err();
    assert_eq!(err.failure, Failure::BeyondCheckpoint { seq: 36, size: 32 });
}

#[test]
fn checkpoint_lines_must_come_first_and_agree_with_the_given_one() {
    let log = log(16);
    let mut l = lines(&export_with_proofs(&log, 16, |s| s % 2 == 0));
    let cp = l[0].clone();
    l.insert(2, cp);
    let err = run(&join(&l), &with_key(None)).unwrap_err();
    assert_eq!(err.failure, Failure::MisplacedCheckpoint);
    assert_eq!(err.line, Some(3));
    // The caller's checkpoint of the same size with another root: a split view.
    let forged = rewritten(&log, 3);
    let err = run(
        &export_with_proofs(&log, 16, |s| s % 2 == 0),
        &with_key(Some(checkpoint(&forged, 16, &signer()))),
    )
    .unwrap_err();
    assert_eq!(err.failure, Failure::CheckpointsDisagree { size: 16 });
    // The same checkpoint given and in the export: both reported, both checked.
    let report = run(
        &export_with_proofs(&log, 16, |s| s % 2 == 0),
        &with_key(Some(checkpoint(&log, 16, &signer()))),
    )
    .unwrap();
    assert_eq!(report.checkpoints.len(), 2);
    assert!(
        report
            .checkpoints
            .iter()
            .all(|c| c.root_status == RootStatus::ProofsChecked)
    );
    // A given checkpoint of another size cannot be related to a filtered export.
    let report = run(
        &export_with_proofs(&log, 16, |s| s % 2 == 0),
        &with_key(Some(checkpoint(&log, 12, &signer()))),
    )
    .unwrap();
    assert_eq!(report.checkpoints[1].root_status, RootStatus::NotComparable);
}

// ---------- the binary ----------

fn keyward_verify(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_keyward-verify"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_binary_exits_0_1_or_2() {
    let dir = std::env::temp_dir().join(format!("keyward-verify-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = log(30);
    let export = dir.join("export.ndjson");
    let cp = dir.join("checkpoint");
    let key = dir.join("key.pub");
    std::fs::write(&export, export_of(&log)).unwrap();
    std::fs::write(&cp, checkpoint(&log, 30, &signer())).unwrap();
    std::fs::write(&key, public_key()).unwrap();
    let (e, c, k) = (
        export.to_str().unwrap(),
        cp.to_str().unwrap(),
        key.to_str().unwrap(),
    );
    let o = keyward_verify(&["--export", e, "--checkpoint", c, "--public-key", k]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("ok: 30 events checked"), "{out}");
    assert!(
        out.contains(&format!("head seq 30 hash {}", log[29].hash)),
        "{out}"
    );
    assert!(out.contains("size 30"), "{out}");
    // The key given as text works the same.
    let o = keyward_verify(&[
        "--export",
        e,
        "--checkpoint",
        c,
        "--public-key",
        &public_key(),
    ]);
    assert_eq!(o.status.code(), Some(0));
    // The tail cut.
    std::fs::write(&export, export_of(&log[..29])).unwrap();
    let o = keyward_verify(&["--export", e, "--checkpoint", c, "--public-key", k]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.starts_with("FAILED at seq 30: "), "{out}");
    // Usage.
    for args in [
        &[][..],
        &["--export"][..],
        &["--export", e, "--complete", "--filtered"][..],
        &["--bogus"][..],
        &["--export", "/nonexistent/x"][..],
    ] {
        let o = keyward_verify(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
