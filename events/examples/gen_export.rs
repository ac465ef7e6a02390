//! Writes a valid, chained audit export of N events for benchmarking `keyward-verify`,
//! with a checkpoint of its head signed by a fixed, public benchmark key.
//!
//! ```text
//! cargo run --release -p keyward-events --example gen_export -- N OUT.ndjson CHECKPOINT PUBKEY
//! ```
//!
//! The events are what a busy gateway writes: mostly `key.used` (one per proxied request,
//! about 500 bytes a line), with a `key.created` every 1000. The key is derived from a
//! constant seed: never use it for anything but this benchmark.

use std::io::{BufWriter, Write};

use chrono::{TimeZone, Utc};
use keyward_events::merkle::{self, CompactRange};
use keyward_events::note::{Checkpoint, NoteSigner};
use keyward_events::*;
use ulid::Ulid;

fn event(n: u64) -> Event {
    if n % 1000 == 1 {
        return Event::KeyCreated(KeyCreated {
            key_id: format!("key_{:026}", n / 1000),
            name: format!("service {}", n / 1000),
            owner_id: "usr_01JBENCH0000000000000000".into(),
            provider_ids: vec!["prv_01JBENCH0000000000000000".into()],
            secret_hash: format!("{:064x}", n),
            prefix: format!("kw_{:08x}", n),
            expires_at: Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap(),
            scopes: vec![Scope::Chat],
            models: vec!["gpt-4o-mini".into()],
            rate_limit: None,
            quota: None,
            ip_allowlist: vec![],
            metadata: Default::default(),
            rotated_from: None,
        });
    }
    Event::KeyUsed(KeyUsed {
        key_id: format!("key_{:026}", n / 1000),
        provider_id: "prv_01JBENCH0000000000000000".into(),
        model: Some("gpt-4o-mini-2024-07-18".into()),
        endpoint: "/v1/chat/completions".into(),
        outcome: UsageOutcome::Success,
        status: 200,
        latency_us: 180_000 + n % 9973,
        upstream_latency_us: Some(175_000 + n % 9973),
        prompt_tokens: 200 + n % 1000,
        completion_tokens: 50 + n % 700,
        stream: n.is_multiple_of(3),
        client_ip: Some(format!(
            "10.{}.{}.{}",
            (n >> 16) & 255,
            (n >> 8) & 255,
            n & 255
        )),
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [n, out, cp_path, key_path] = args.as_slice() else {
        return Err("usage: gen_export N OUT.ndjson CHECKPOINT PUBKEY".into());
    };
    let n: u64 = n.parse()?;
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(out)?);
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let mut prev = Hash32::ZERO;
    let mut tree = CompactRange::new();
    let mut line = Vec::with_capacity(1024);
    for seq in 1..=n {
        let e = event(seq);
        let mut ne = NewEvent::new(
            &e,
            ExpectedVersion::Any,
            start + chrono::Duration::microseconds((seq * 1713) as i64),
            format!("key_{:026}", seq / 1000),
            Some(format!("req_{:026}", seq)),
        );
        ne.event_id = Ulid::from_parts(1_767_225_600_000 + seq / 10, u128::from(seq));
        let env = ne.seal(seq, seq, prev);
        prev = env.hash;
        tree.push(merkle::leaf_hash(&env.hash));
        line.clear();
        export::encode_event_line(&mut line, &env, None)?;
        line.push(b'\n');
        w.write_all(&line)?;
    }
    w.flush()?;
    let signer = NoteSigner::from_seed("keyward.example/bench", &[42; 32])?;
    std::fs::write(
        cp_path,
        Checkpoint::new("keyward.example/bench", n, tree.root()).sign(&signer)?,
    )?;
    std::fs::write(key_path, signer.verifier().to_text())?;
    eprintln!("wrote {n} events to {out}; head hash {prev}");
    Ok(())
}
