//! The README's quick start, run as written: every block fenced as ```` ```sh walkthrough ````
//! is joined, in order, into one bash script (`set -euo pipefail`) and run in an empty
//! temporary directory, against the test-built binary: a fresh data dir, free ports, the
//! built-in mock provider, and `python3` from `.venv` (which `scripts/test` makes with the
//! `openai` and `anthropic` SDKs). A failing command fails the test, naming its block.
//!
//! The only changes made to the text, each asserted to apply (so that a README edit that
//! moves them fails here rather than silently testing something else):
//! - `cargo build --release` becomes `true` (the binary is already built),
//! - `cargo run --release --` becomes the test-built binary,
//! - the ports `:9090` and `:18080` become free ports (`serve` gets its port from
//!   `KEYWARD_LISTEN`, since the README starts it on the default).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keyward::mock_provider::REPLY;

const MARK: &str = "```sh walkthrough";

/// The walkthrough blocks: (line of the fence, text).
pub fn walkthrough_blocks(readme: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in readme.lines().enumerate() {
        match &mut current {
            None if line.trim_end() == MARK => current = Some((i + 1, String::new())),
            None => {}
            Some(_) if line.trim_end() == "```" => blocks.extend(current.take()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    assert!(
        current.is_none(),
        "README.md: a walkthrough block is not closed"
    );
    blocks
}

/// `from` replaced by `to` in the script, which must contain it.
fn substitute(script: &mut String, from: &str, to: &str) {
    assert!(
        script.contains(from),
        "the README walkthrough no longer contains {from:?}; update tests/it/readme.rs"
    );
    *script = script.replace(from, to);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What the walkthrough needs that is not part of this repository, or `None`.
fn missing_tools(venv_bin: &Path) -> Option<String> {
    let python = venv_bin.join("python3");
    let sdks = Command::new(&python)
        .args(["-c", "import openai, anthropic"])
        .output();
    if !sdks.is_ok_and(|o| o.status.success()) {
        return Some(format!(
            "{} with the openai and anthropic SDKs is missing (scripts/test makes it)",
            python.display()
        ));
    }
    for tool in ["jq", "curl", "bash"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Some(format!("{tool} is missing"));
        }
    }
    None
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let venv_bin = repo().join(".venv/bin");
    if let Some(why) = missing_tools(&venv_bin) {
        assert!(
            !crate::skip::ci(),
            "CI must run the README walkthrough: {why}"
        );
        crate::skip::skipped("readme::the_readme_walkthrough_runs_as_written", &why);
        return;
    }
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let blocks = walkthrough_blocks(&readme);
    assert!(blocks.len() >= 8, "{} walkthrough blocks", blocks.len());

    let port = free_port();
    let mock_port = free_port();
    let mut script = String::from(
        "set -Eeuo pipefail\n\
         trap 'echo \"FAILED: line $LINENO: $BASH_COMMAND (exit $?)\" >&2' ERR\n",
    );
    for (line, text) in &blocks {
        script.push_str(&format!(
            "echo '== README.md block at line {line}' >&2\n{text}"
        ));
    }
    substitute(&mut script, "cargo build --release", "true");
    substitute(
        &mut script,
        "cargo run --release --",
        "\"$KEYWARD_TEST_BIN\"",
    );
    substitute(&mut script, ":9090", &format!(":{port}"));
    substitute(&mut script, ":18080", &format!(":{mock_port}"));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("walkthrough.sh"), &script).unwrap();
    let out = std::fs::File::create(dir.path().join("stdout")).unwrap();
    let err = std::fs::File::create(dir.path().join("stderr")).unwrap();
    let path = format!(
        "{}:{}",
        venv_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    // A newcomer's shell has no Keyward settings: none of this process's leak in.
    for (k, _) in std::env::vars() {
        if k.starts_with("KEYWARD_") {
            cmd.env_remove(&k);
        }
    }
    cmd.arg("walkthrough.sh")
        .current_dir(dir.path())
        .env("PATH", path)
        .env("KEYWARD_TEST_BIN", env!("CARGO_BIN_EXE_keyward"))
        .env("KEYWARD_LISTEN", format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    {
        use std::os::unix::process::CommandExt;
        // Its own process group, so that whatever it started in the background is
        // stopped with it, whatever happens.
        cmd.process_group(0);
    }
    let mut child = cmd.spawn().unwrap();
    let pgid = child.id();
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();

    let read = |name: &str| {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(dir.path().join(name)) {
            let _ = f.read_to_string(&mut s);
        }
        s
    };
    let (stdout, stderr, log) = (read("stdout"), read("stderr"), read("keyward.log"));
    let report = format!(
        "--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- keyward.log (tail)\n{}",
        log.lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let Some(status) = status else {
        panic!("the walkthrough did not finish within 300 s\n{report}");
    };
    assert!(
        status.success(),
        "the walkthrough failed: {status}\n{report}"
    );
    // Shown with --nocapture: what a newcomer sees.
    eprintln!("{report}");

    // What a newcomer should see, beyond "no command failed".
    assert!(
        stdout.contains(&format!("streamed: {REPLY}")),
        "the SDK's streaming loop printed no answer\n{report}"
    );
    assert!(
        stdout.contains("\"object\":\"chat.completion.chunk\""),
        "the streaming curl did not stream\n{report}"
    );
    assert!(
        stdout.contains("<h1>API Keys</h1>"),
        "the console sign-in did not reach the keys page\n{report}"
    );
    assert!(
        stdout.contains("ok: ") && stdout.contains("events verified"),
        "audit verify\n{report}"
    );
    // The "as of" table from before the rotation: one key, the old one, active.
    let as_of = stdout
        .lines()
        .find(|l| l.starts_with("{\"as_of\":\"2"))
        .unwrap_or_else(|| panic!("no as_of table\n{report}"));
    assert_eq!(as_of.matches("\"id\":").count(), 1, "{as_of}");
    assert!(as_of.ends_with("\"status\":\"active\"}]}"), "{as_of}");
    let secret = std::fs::read_to_string(dir.path().join("ops-key")).unwrap();
    assert!(
        keyward::crypto::Secret::parse(secret.trim()).is_ok(),
        "bootstrap with serve stopped printed no key\n{report}"
    );
}

#[test]
fn walkthrough_blocks_are_found_in_order_and_must_be_closed() {
    let md =
        "text\n```sh walkthrough\na\nb\n```\n```sh\nnot this\n```\n```sh walkthrough\nc\n```\n";
    assert_eq!(
        walkthrough_blocks(md),
        vec![(2, "a\nb\n".to_owned()), (9, "c\n".to_owned())]
    );
    let open = std::panic::catch_unwind(|| walkthrough_blocks("```sh walkthrough\na\n"));
    assert!(open.is_err());
}
