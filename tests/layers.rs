//! The modules of `src/` import one way: no cycle among the top-level modules, and no
//! module reaches a module of a higher layer (the order README.md shows).
//!
//! Every `src/**/*.rs` file belongs to its top-level module (`src/store/appender.rs` is
//! `store`, `src/http/proxy/mod.rs` is `http`, `src/cli.rs` is `cli`); each `crate::<name>`
//! it mentions, in a `use` or inline, outside comments and string literals, is an edge.
//! A name the crate root re-exports (`pub use http::state::AppState;` in `lib.rs`) counts
//! as the module it comes from; any other root item counts as `lib`, the root itself.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lowest first. A module may import modules of its own layer or of a lower one.
const LAYERS: &[(&str, &[&str])] = &[
    // Leaf utilities.
    (
        "base",
        &[
            "time",
            "crypto",
            "redact",
            "names",
            "net",
            "background",
            "metrics",
            "timeline",
        ],
    ),
    // The event store, the Merkle tree over it, and the configuration (which reads the
    // database URL through `store`).
    ("store", &["store", "audit", "config"]),
    // The live projection and what is built from it: snapshots, history, the tail.
    ("live", &["live", "snapshot", "history", "tail"]),
    // Authentication, the commands, and the jobs that append through them.
    (
        "auth/commands",
        &[
            "auth",
            "commands",
            "notify",
            "checkpoint",
            "archive",
            "sweeper",
            "bootstrap",
        ],
    ),
    // Provider kinds (with the egress guard and the credential check), and the mock
    // provider that serves their wire formats.
    ("providers", &["providers", "mock_provider"]),
    // Everything served over HTTP, and the server that runs it. `lib` is the crate root:
    // re-exports, and `app()`, the router of `http` and `ui` together.
    ("http", &["http", "ui", "server", "lib"]),
    ("cli", &["cli"]),
    ("main", &["main"]),
];

/// Imports of a higher layer that stay for now, each with the reason and what removes it.
const EXCEPTIONS: &[(&str, &str)] = &[];

/// Imports left out of the cycle check, each with the reason and what removes it.
const CYCLE_EXCEPTIONS: &[(&str, &str)] = &[];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source with comments removed and string and char literals emptied.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while i < b.len() {
        let rest = &src[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            // Block comments nest in Rust.
            let mut depth = 0;
            let mut j = i;
            while j < b.len() {
                if src[j..].starts_with("/*") {
                    depth += 1;
                    j += 2;
                } else if src[j..].starts_with("*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            i = j;
        } else if (b[i] == b'r' || (b[i] == b'b' && rest.starts_with("br")))
            && (i == 0 || !ident(b[i - 1]))
            && {
                let r = if b[i] == b'b' { &rest[2..] } else { &rest[1..] };
                r.trim_start_matches('#').starts_with('"')
            }
        {
            // A raw string: r"…", r#"…"#, br"…".
            let start = if b[i] == b'b' { i + 2 } else { i + 1 };
            let hashes = src[start..].len() - src[start..].trim_start_matches('#').len();
            let close = format!("\"{}", "#".repeat(hashes));
            let body = start + hashes + 1;
            i = src[body..]
                .find(&close)
                .map_or(b.len(), |k| body + k + close.len());
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            i = j + 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' {
            // A char literal ('x', '\n', '\u{..}'), or else a lifetime or label.
            let len = if rest[1..].starts_with('\\') {
                rest[2..].find('\'').map(|k| k + 3)
            } else {
                rest[1..]
                    .chars()
                    .next()
                    .map(|c| 1 + c.len_utf8())
                    .filter(|&n| rest[n..].starts_with('\''))
                    .map(|n| n + 1)
            };
            match len {
                Some(n) => {
                    i += n;
                    out.push_str("' '");
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first path segment after every `crate::` (each name of a `crate::{a, b::c}` group).
fn crate_names(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        if at > 0 {
            let prev = code.as_bytes()[at - 1];
            if prev.is_ascii_alphanumeric() || prev == b'_' || prev == b'$' {
                continue;
            }
        }
        let rest = code[at + "crate::".len()..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of the group: after `{` and after each `,` at depth 0.
            let mut depth = 0;
            let mut expect = true;
            for (k, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => expect = true,
                    c if c.is_whitespace() => {}
                    _ if expect && depth == 0 => {
                        let name = ident_at(&group[k..]);
                        if !name.is_empty() {
                            names.insert(name.to_owned());
                        }
                        expect = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident_at(rest);
            if !name.is_empty() {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// The top-level modules `lib.rs` declares, and the names it re-exports from one of them.
fn root(lib: &str) -> (BTreeSet<String>, BTreeMap<String, String>) {
    let mut modules = BTreeSet::new();
    let mut reexports = BTreeMap::new();
    for stmt in lib.split(';') {
        let s = stmt.trim();
        let s = s.rsplit('\n').next().unwrap_or(s).trim();
        if let Some(m) = s
            .strip_prefix("pub mod ")
            .or_else(|| s.strip_prefix("mod "))
        {
            modules.insert(ident_at(m).to_owned());
        }
    }
    // `pub mod time { … }` has no `;` after its name.
    for line in lib.lines() {
        let l = line.trim();
        if let Some(m) = l
            .strip_prefix("pub mod ")
            .or_else(|| l.strip_prefix("mod "))
        {
            modules.insert(ident_at(m).to_owned());
        }
    }
    let mut rest = lib;
    while let Some(at) = rest.find("pub use ") {
        let stmt = &rest[at + "pub use ".len()..];
        let end = stmt.find(';').unwrap_or(stmt.len());
        let path = stmt[..end].trim();
        let path = path.strip_prefix("crate::").unwrap_or(path);
        let module = ident_at(path).to_owned();
        if modules.contains(&module) {
            let names: Vec<&str> = match (path.find('{'), path.rfind('}')) {
                (Some(a), Some(b)) => path[a + 1..b].split(',').collect(),
                _ => vec![path.rsplit("::").next().unwrap_or(path)],
            };
            for n in names {
                let n = n.trim();
                let name = n.rsplit(" as ").next().unwrap_or(n).trim();
                let name = name.rsplit("::").next().unwrap_or(name);
                if !name.is_empty() && name != "self" {
                    reexports.insert(name.to_owned(), module.clone());
                }
            }
        }
        rest = &stmt[end..];
    }
    (modules, reexports)
}

/// module → module it imports → the files that do.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn graph() -> Graph {
    let src = src_dir();
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let (modules, reexports) = root(&code_only(&lib));
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut g = Graph::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
        if module == "main" {
            // The binary: `crate::` there is the binary, which imports `keyward::` only.
            g.entry(module).or_default();
            continue;
        }
        let code = code_only(&std::fs::read_to_string(&file).unwrap());
        let edges = g.entry(module.clone()).or_default();
        for name in crate_names(&code) {
            let target = if modules.contains(&name) {
                name
            } else if let Some(m) = reexports.get(&name) {
                m.clone()
            } else {
                "lib".to_owned()
            };
            if target != module {
                edges
                    .entry(target)
                    .or_default()
                    .insert(rel.display().to_string());
            }
        }
    }
    g
}

/// A cycle through `start`, if there is one, as the modules along it.
fn cycle_from(g: &Graph, start: &str) -> Option<Vec<String>> {
    fn walk(
        g: &Graph,
        start: &str,
        at: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in g.get(at).into_iter().flat_map(|e| e.keys()) {
            if next == start {
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(g, start, next, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_owned()];
    let mut seen = BTreeSet::new();
    walk(g, start, start, &mut path, &mut seen).then(|| {
        path.push(start.to_owned());
        path
    })
}

fn show(g: &Graph, cycle: &[String]) -> String {
    cycle
        .windows(2)
        .map(|w| {
            let files: Vec<&str> = g[&w[0]][&w[1]].iter().map(String::as_str).collect();
            format!("  {} -> {}   ({})", w[0], w[1], files.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn no_cycle_among_top_level_modules() {
    let mut g = graph();
    for (from, to) in CYCLE_EXCEPTIONS {
        let edges = g.get_mut(*from).expect("a module of the exception");
        assert!(
            edges.remove(*to).is_some(),
            "cycle exception {from} -> {to} no longer needed, remove it"
        );
    }
    let cycles: Vec<String> = g
        .keys()
        .filter_map(|m| cycle_from(&g, m))
        .map(|c| show(&g, &c))
        .collect();
    assert!(
        cycles.is_empty(),
        "import cycles among the modules of src/:\n{}",
        cycles.join("\n\n")
    );
}

#[test]
fn no_module_imports_a_higher_layer() {
    let layer_of: BTreeMap<&str, usize> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, (_, ms))| ms.iter().map(move |m| (*m, i)))
        .collect();
    let g = graph();
    let unplaced: Vec<&String> = g
        .iter()
        .flat_map(|(m, e)| std::iter::once(m).chain(e.keys()))
        .filter(|m| !layer_of.contains_key(m.as_str()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules without a layer in LAYERS: {unplaced:?}"
    );
    let mut wrong = Vec::new();
    let mut used = BTreeSet::new();
    for (m, edges) in &g {
        for (t, files) in edges {
            if layer_of[t.as_str()] > layer_of[m.as_str()] {
                if EXCEPTIONS.contains(&(m.as_str(), t.as_str())) {
                    used.insert((m.as_str(), t.as_str()));
                    continue;
                }
                wrong.push(format!(
                    "  {m} ({}) imports {t} ({}) in {}",
                    LAYERS[layer_of[m.as_str()]].0,
                    LAYERS[layer_of[t.as_str()]].0,
                    files.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports of a higher layer:\n{}",
        wrong.join("\n")
    );
    let stale: Vec<_> = EXCEPTIONS.iter().filter(|e| !used.contains(*e)).collect();
    assert!(
        stale.is_empty(),
        "exceptions no longer needed, remove them: {stale:?}"
    );
}

#[test]
fn the_scanner_sees_paths_and_skips_comments_and_strings() {
    let code = code_only(
        "use crate::store::{self, X};\n// crate::cli\n/* crate::http /* nested */ crate::ui */\n\
         let s = \"crate::server\"; let r = r#\"crate::main\"#; let c = '\"';\n\
         fn f<'a>(x: &'a crate::live::Live) {}\nuse crate::{config::Config, metrics};",
    );
    let names: Vec<String> = crate_names(&code).into_iter().collect();
    assert_eq!(names, ["config", "live", "metrics", "store"]);
}
