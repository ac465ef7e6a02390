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
