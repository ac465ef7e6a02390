//! The real binary: bootstrap, migrate and the audit commands.

use keyward::crypto::Secret;
use keyward_events::Envelope;

use crate::common::*;

async fn stopped_app() -> tempfile::TempDir {
    let t = TestApp::start().await;
    let TestApp { running, dir } = t;
    running.shutdown().await;
    dir
}

#[tokio::test]
async fn audit_verify_passes_on_a_clean_log_and_names_the_tampered_seq() {
    let dir = stopped_app().await;
    let o = keyward(dir.path(), &["audit", "verify"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("ok: 2 events verified; head seq 2"),
        "{}",
        stdout(&o)
    );

    tamper(&dir.path().join("keyward.db"), 1).await;
    let o = keyward(dir.path(), &["audit", "verify"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("breaks at seq 1"), "{}", stdout(&o));
}

#[tokio::test]
async fn bootstrap_prints_a_working_secret_once_on_stdout() {
    let dir = stopped_app().await;
    let o = keyward(dir.path(), &["bootstrap", "--username", "ops"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let secret = Secret::parse(out.trim()).unwrap();
    assert!(!stderr(&o).contains(secret.expose()));
    let o = keyward(dir.path(), &["audit", "replay", "--format", "json"]);
    let table: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let keys = table["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(
        keys.iter()
            .any(|k| k["prefix"] == secret.display_prefix().as_str() && k["status"] == "active")
    );
    // The secret is in no event.
    let o = keyward(dir.path(), &["audit", "export"]);
    assert!(!stdout(&o).contains(secret.expose()));
}

#[tokio::test]
async fn export_writes_every_event_as_ndjson_and_filters_by_type() {
    let dir = stopped_app().await;
    let o = keyward(dir.path(), &["audit", "export"]);
    assert_eq!(o.status.code(), Some(0));
    let envs: Vec<Envelope> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(envs.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert!(keyward_events::chain::verify(&envs).is_ok());

    let o = keyward(dir.path(), &["audit", "export", "--type", "key.created"]);
    let types: Vec<String> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str::<Envelope>(l).unwrap().event_type)
        .collect();
    assert_eq!(types, vec!["key.created"]);

    // From seq 2: the key, then the two exports above, each recorded as an `audit.read`.
    let o = keyward(dir.path(), &["audit", "export", "--from-seq", "2"]);
    let envs: Vec<Envelope> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        envs.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert!(envs[1..].iter().all(|e| e.event_type == "audit.read"));
}

#[tokio::test]
async fn replay_as_of_a_time_before_the_first_event_is_empty() {
    let dir = stopped_app().await;
    let o = keyward(
        dir.path(),
        &[
            "audit",
            "replay",
            "--as-of",
            "2001-01-01T00:00:00Z",
            "--format",
            "json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let table: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(table["keys"].as_array().unwrap().len(), 0);

    let o = keyward(dir.path(), &["audit", "replay", "--as-of", "yesterday"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--as-of \"yesterday\" is not an RFC 3339 time"),
        "{}",
        stderr(&o)
    );

    let o = keyward(dir.path(), &["audit", "replay", "--until-seq", "1"]);
    assert!(stdout(&o).contains("(seq 1)"), "{}", stdout(&o));
}

#[tokio::test]
async fn a_checkpoint_detects_a_truncated_or_rewritten_log() {
    let dir = stopped_app().await;
    let o = keyward(dir.path(), &["audit", "checkpoint"]);
    let cp_path = dir.path().join("cp.json");
    std::fs::write(&cp_path, &o.stdout).unwrap();
    let o = keyward(
        dir.path(),
        &["audit", "verify", "--checkpoint", cp_path.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));

    // A checkpoint from the future: the log lost events.
    let mut cp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cp_path).unwrap()).unwrap();
    cp["seq"] = 5.into();
    std::fs::write(&cp_path, cp.to_string()).unwrap();
    let o = keyward(
        dir.path(),
        &["audit", "verify", "--checkpoint", cp_path.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("events were removed"), "{}", stdout(&o));
}

#[tokio::test]
async fn commands_on_a_missing_database_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let o = keyward(dir.path(), &["audit", "verify"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no database at"), "{}", stderr(&o));
}

#[tokio::test]
async fn a_wrong_setting_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let o = keyward(dir.path(), &["serve", "--listen", "not-an-address"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("KEYWARD_LISTEN"), "{}", stderr(&o));
}

/// `replay --until-seq N` is the table when event N was written, not now; `replay` names
/// owners by username, as `keys expiring` does.
#[tokio::test]
async fn replay_until_a_seq_is_as_of_that_events_time_and_names_owners() {
    let dir = stopped_app().await;
    let o = keyward(dir.path(), &["audit", "export", "--from-seq", "2"]);
    let second: Envelope = serde_json::from_str(stdout(&o).lines().next().unwrap()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));

    let o = keyward(
        dir.path(),
        &["audit", "replay", "--until-seq", "2", "--format", "json"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let table: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        table["as_of"],
        keyward::time::format(&second.occurred_at),
        "{table}"
    );
    assert_eq!(table["keys"][0]["owner"], "admin", "{table}");

    let o = keyward(dir.path(), &["audit", "replay", "--until-seq", "2"]);
    let out = stdout(&o);
    assert!(
        out.starts_with(&format!(
            "as of {} (seq 2)",
            keyward::time::format(&second.occurred_at)
        )),
        "{out}"
    );
    let row = out.lines().nth(2).unwrap();
    assert!(row.contains(" admin "), "{out}");
    assert!(!row.contains("usr_"), "owners are names, not ids: {out}");
}
