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
    let line = format!("SKIPPED: {test}: {}", reason.replace('\n', " "));
    eprintln!("{line}");
    let path = log_path();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // One write of one line with O_APPEND: lines from parallel tests do not interleave.
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}

/// The running test's name (`module::test`), from the thread the harness names after it.
pub fn current_test() -> String {
    std::thread::current().name().unwrap_or("a test").to_owned()
}
