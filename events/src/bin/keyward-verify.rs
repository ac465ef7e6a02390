//! `keyward-verify`: verifies a Keyward audit export offline, with no database.
//!
//! ```text
//! keyward-verify --export FILE [--checkpoint NOTE] [--public-key KEY] [--complete|--filtered] [--strict]
//! ```
//!
//! Exit status: 0 the export verifies, 1 it does not (the first bad line and seq are
//! named), 2 the command line or a file could not be read.

use std::io::BufReader;
use std::process::ExitCode;

use keyward_events::verify::{self, Mode, Options};

const USAGE: &str = "\
usage: keyward-verify --export FILE [--checkpoint NOTE] [--public-key KEY] [--complete|--filtered] [--strict]

Verifies a Keyward audit export (NDJSON, from `keyward audit export` or
GET /api/v1/audit/export) offline, reading it once in constant memory.

  --export FILE       the export; `-` reads stdin
  --checkpoint NOTE   a file holding a signed checkpoint (C2SP signed note) to check
                      the export against, in addition to any checkpoint line in it
  --public-key KEY    the checkpoint key, `<name>+<hash>+<base64>` as
                      `keyward audit public-key` prints it, or a file holding it
  --complete          the export must be the whole log from seq 1 (default: detect)
  --filtered          every event must carry an inclusion proof (default: detect)
  --strict            refuse lines whose hash cannot be recomputed (schema 1 password
                      hashes the export redacted)

Exit status: 0 verified, 1 not verified (the first bad line and seq are named), 2 usage.";

struct Args {
    export: String,
    opts: Options,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut export = None;
    let mut opts = Options::default();
    let mut checkpoint = None;
    let mut key = None;
    while let Some(a) = args.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (a.clone(), None),
        };
        let mut value = |n: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{n} needs a value"))
        };
        match name.as_str() {
            "--export" => export = Some(value("--export")?),
            "--checkpoint" => checkpoint = Some(value("--checkpoint")?),
            "--public-key" => key = Some(value("--public-key")?),
            "--complete" | "--filtered" if opts.mode != Mode::Auto => {
                return Err("--complete and --filtered exclude each other".into());
            }
            "--complete" => opts.mode = Mode::Complete,
            "--filtered" => opts.mode = Mode::Filtered,
            "--strict" => opts.strict = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let export = export.ok_or("--export FILE is required")?;
    if let Some(path) = checkpoint {
        opts.checkpoint = Some(
            std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read the checkpoint {path}: {e}"))?,
        );
    }
    if let Some(k) = key {
        opts.public_key = Some(read_key(&k)?);
    }
    Ok(Args { export, opts })
}

/// The key itself, or the contents of a file holding it.
fn read_key(k: &str) -> Result<String, String> {
    let path = std::path::Path::new(k);
    if path.is_file() {
        return std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .map_err(|e| format!("cannot read the public key {k}: {e}"));
    }
    Ok(k.trim().to_owned())
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    if args
        .peek()
        .is_some_and(|a| a == "-h" || a == "--help" || a == "help")
    {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("keyward-verify: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = if args.export == "-" {
        verify::verify_export(std::io::stdin().lock(), &args.opts)
    } else {
        match std::fs::File::open(&args.export) {
            Ok(f) => verify::verify_export(BufReader::with_capacity(1 << 20, f), &args.opts),
            Err(e) => {
                eprintln!("keyward-verify: cannot open {}: {e}", args.export);
                return ExitCode::from(2);
            }
        }
    };
    match result {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            match e.seq() {
                Some(seq) => println!("FAILED at seq {seq}: {e}"),
                None => println!("FAILED: {e}"),
            }
            println!("({} events passed before the failure)", e.checked);
            ExitCode::from(1)
        }
    }
}
