//! `keyward audit verify --export`: the offline verifier on a real export, with no database.

use crate::common::*;

#[tokio::test]
async fn a_real_export_verifies_offline_and_a_changed_byte_fails_naming_its_seq() {
    let t = TestApp::start().await;
    let TestApp { running, dir } = t;
    running.shutdown().await;
    let o = keyward(dir.path(), &["audit", "export"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let export = stdout(&o);
    assert!(export.lines().count() >= 2, "{export}");

    // Verified from a directory with no database: nothing is opened but the file.
    let elsewhere = tempfile::tempdir().unwrap();
    let file = elsewhere.path().join("audit.ndjson");
    std::fs::write(&file, &export).unwrap();
    let empty = tempfile::tempdir().unwrap();
    let o = keyward(
        empty.path(),
        &["audit", "verify", "--export", file.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let n = export.lines().count();
    assert!(
        stdout(&o).contains(&format!("ok: {n} events checked")),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("complete export"), "{}", stdout(&o));
    assert!(!empty.path().join("keyward.db").exists());

    // One byte changed in the second event: its stream version.
    let tampered = {
        let mut lines: Vec<String> = export.lines().map(str::to_owned).collect();
        let at = lines[1].find("\"stream_version\":").unwrap() + "\"stream_version\":".len();
        let mut bytes = lines[1].clone().into_bytes();
        bytes[at] = if bytes[at] == b'9' {
            b'8'
        } else {
            bytes[at] + 1
        };
        lines[1] = String::from_utf8(bytes).unwrap();
        lines.join("\n") + "\n"
    };
    std::fs::write(&file, &tampered).unwrap();
    let o = keyward(
        empty.path(),
        &["audit", "verify", "--export", file.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("FAILED at seq 2: line 2: seq 2: stored hash does not match"),
        "{}",
        stdout(&o)
    );

    // A filtered export without proofs cannot be verified, and says so.
    let o = keyward(dir.path(), &["audit", "export", "--from-seq", "2"]);
    std::fs::write(&file, stdout(&o)).unwrap();
    let o = keyward(
        empty.path(),
        &["audit", "verify", "--export", file.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("filtered export"), "{}", stdout(&o));

    // A missing file is a usage error, not a verification failure.
    let o = keyward(
        empty.path(),
        &["audit", "verify", "--export", "/nonexistent/x.ndjson"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("cannot open the export"),
        "{}",
        stderr(&o)
    );
}

/// Runs `keyward audit verify --export` on `text` from a directory with no database.
fn verify_offline(text: &str, public_key: &str) -> std::process::Output {
    let empty = tempfile::tempdir().unwrap();
    let file = empty.path().join("audit.ndjson");
    std::fs::write(&file, text).unwrap();
    keyward(
        empty.path(),
        &[
            "audit",
            "verify",
            "--export",
            file.to_str().unwrap(),
            "--public-key",
            public_key,
        ],
    )
}

/// The export's lines with the proof on line `at` changed by `edit`, the line otherwise
/// exactly as Keyward writes it (the proof member last).
fn edit_proof(text: &str, at: usize, edit: impl Fn(&mut Vec<serde_json::Value>)) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let cut = lines[at].find(",\"inclusion_proof\":").unwrap();
    let (head, tail) = lines[at].split_at(cut);
    let member = &tail[",\"inclusion_proof\":".len()..tail.len() - 1];
    let mut proof: Vec<serde_json::Value> = serde_json::from_str(member).unwrap();
    edit(&mut proof);
    lines[at] = format!(
        "{head},\"inclusion_proof\":{}}}",
        serde_json::to_string(&proof).unwrap()
    );
    lines.join("\n") + "\n"
}

#[tokio::test]
async fn an_api_export_with_proofs_verifies_event_by_event_and_a_bad_proof_fails() {
    use axum::http::StatusCode;

    use crate::api::*;

    let t = TestApp::start().await;
    let api = Api::new(&t);
    let admin = t.admin_secret();
    user_with_full_key(&t, "alice").await;
    user_with_full_key(&t, "bob").await;
    let key = t.running.state.0.checkpoint_key.clone().unwrap();
    let public = key.verifier().to_text();

    // One type only: a filtered export, which only proofs make verifiable.
    let (s, body) = api
        .get(
            "/api/v1/audit/export?type=key.created&with_proofs=true",
            &admin,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let text = body.as_str().unwrap().to_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("{\"checkpoint\":"), "{}", lines[0]);
    assert!(lines.len() >= 3, "{text}");
    for l in &lines[1..] {
        assert!(l.contains("\"type\":\"key.created\""), "{l}");
        assert!(l.contains("\"inclusion_proof\":["), "{l}");
    }
    let o = verify_offline(&text, &public);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).starts_with("ok:"), "{}", stdout(&o));

    // One hash of one proof changed: that event fails, by seq.
    let seq = serde_json::from_str::<serde_json::Value>(lines[1]).unwrap()["seq"]
        .as_u64()
        .unwrap();
    let flipped = edit_proof(&text, 1, |p| {
        let h = p[0].as_str().unwrap();
        let c = if h.starts_with('0') { "1" } else { "0" };
        p[0] = serde_json::Value::String(format!("{c}{}", &h[1..]));
    });
    let o = verify_offline(&flipped, &public);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains(&format!("seq {seq}")), "{}", stdout(&o));
    // One level too few: fails too.
    let short = edit_proof(&text, 1, |p| {
        p.pop();
    });
    let o = verify_offline(&short, &public);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));

    // The checkpoint checked with another key: fails.
    let other = keyward_events::note::NoteSigner::generate("someone-else")
        .unwrap()
        .verifier()
        .to_text();
    let o = verify_offline(&text, &other);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));

    // A value that is not a boolean: 400 naming the field.
    let got = api
        .get("/api/v1/audit/export?with_proofs=perhaps", &admin)
        .await;
    assert_eq!(got.0, StatusCode::BAD_REQUEST, "{}", got.1);
    t.running.shutdown().await;

    // A service that signs no checkpoints cannot give proofs: 409, and nothing recorded.
    let t = TestApp::start_with(|c| c.checkpoint.dir = None).await;
    let api = Api::new(&t);
    let admin = t.admin_secret();
    let before = t.running.state.0.store.head().await.unwrap().seq;
    let got = api
        .get("/api/v1/audit/export?with_proofs=true", &admin)
        .await;
    assert_problem(
        &got,
        StatusCode::CONFLICT,
        "no_checkpoint_key",
        Some("with_proofs"),
    );
    assert_eq!(t.running.state.0.store.head().await.unwrap().seq, before);
    t.running.shutdown().await;
}

#[tokio::test]
async fn a_cli_export_with_proofs_verifies_offline_with_the_public_key() {
    let t = TestApp::start().await;
    crate::api::user_with_full_key(&t, "alice").await;
    let TestApp { running, dir } = t;
    running.shutdown().await;
    let o = keyward(dir.path(), &["audit", "public-key"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let public = stdout(&o).trim().to_owned();
    let o = keyward(
        dir.path(),
        &["audit", "export", "--type", "key.created", "--with-proofs"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.starts_with("{\"checkpoint\":"), "{text}");
    let o = verify_offline(&text, &public);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    // With one event's body changed it does not: its hash no longer matches.
    let changed = text.replacen("\"name\":\"", "\"name\":\"x", 1);
    assert_ne!(changed, text);
    let o = verify_offline(&changed, &public);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
}
