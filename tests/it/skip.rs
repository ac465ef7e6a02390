//! Skipped tests, made visible. A test that cannot run here (a missing service, browser
//! or SDK) calls [`skipped`]: it prints `SKIPPED: <test>: <reason>` and appends that line
//! to the skip log, which `scripts/test` reads to print the count and the reasons at the
//! end of the run (the harness itself reports such a test as `ok` and swallows its output).
//! Under `CI=true` the callers fail instead of skipping.

use std::io::Write;
use std::path::PathBuf;

/// `KEYWARD_SKIP_LOG`, or `<target dir>/test-skips.log`.
pub fn log_path() -> PathBuf {
    if let Ok(p) = std::env::var("KEYWARD_SKIP_LOG") {
        return PathBuf::from(p);
    }
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("test-skips.log")
}

pub fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Records that `test` did not run, and why.
pub fn skipped(test: &str, reason: &str) {
    skipped_to(&log_path(), test, reason);
}

fn skipped_to(path: &std::path::Path, test: &str, reason: &str) {
    let line = format!("SKIPPED: {test}: {}", reason.replace('\n', " "));
    eprintln!("{line}");
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // One write of one line with O_APPEND: lines from parallel tests do not interleave.
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}

/// The running test's name (`module::test`), from the thread the harness names after it.
pub fn current_test() -> String {
    std::thread::current().name().unwrap_or("a test").to_owned()
}

#[test]
fn a_skip_is_one_line_in_the_log_that_scripts_test_counts() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sub/test-skips.log");
    skipped_to(&log, "pg::a", "PostgreSQL at x is unreachable\n(refused)");
    skipped_to(&log, "ui::browser_flows", "node is missing");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text,
        "SKIPPED: pg::a: PostgreSQL at x is unreachable (refused)\n\
         SKIPPED: ui::browser_flows: node is missing\n"
    );
    // scripts/test counts the lines that start with the marker.
    let script =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test")).unwrap();
    assert!(
        script.contains("grep -c '^SKIPPED: '"),
        "scripts/test no longer counts skips"
    );
    assert!(script.contains("KEYWARD_SKIP_LOG"));
}
