//! The architecture as rules a test can check: the pure domain does no I/O, only the command
//! line prints, each layer imports only the layers below it, no file imports itself through
//! other files (imports.rs), and files stay small.

mod imports;

use std::fs;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every source file as (path relative to src/, code without comments and string
/// literals' contents of doc comments). Only line comments are stripped: the crate uses no
/// block comments.
fn sources() -> Vec<(String, String)> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(src()).unwrap().display().to_string();
            let code: String = fs::read_to_string(&p)
                .unwrap()
                .lines()
                .map(|l| match l.find("//") {
                    Some(i) if !l[..i].contains('"') => &l[..i],
                    _ => l,
                })
                .collect::<Vec<_>>()
                .join("\n");
            (rel, code)
        })
        .collect()
}

/// The module a file belongs to: its first path component (`ops/apply.rs` → `ops`).
fn module_of(rel: &str) -> &str {
    rel.split('/').next().unwrap().trim_end_matches(".rs")
}

/// What each module may import from the crate; a module not listed here fails the test
/// until its place in the layers is decided.
const LAYERS: &[(&str, &[&str])] = &[
    ("error", &[]),
    ("model", &["error", "model"]),
    ("config", &["config", "error", "model"]),
    ("plan", &["config", "model"]),
    ("diff", &["config", "model", "plan"]),
    ("atomic", &[]),
    ("trace", &[]),
    ("cgroupfs", &["model"]),
    ("docker", &[]),
    ("http", &[]),
    ("process", &[]),
    ("systemd", &["error", "model", "systemd"]),
    // The hook's record of the validated configuration (state/cache.rs) holds its plan.
    (
        "state",
        &["atomic", "config", "error", "model", "plan", "state"],
    ),
    (
        "dropin",
        &[
            "atomic", "config", "diff", "dropin", "error", "model", "plan", "state",
        ],
    ),
    (
        "ops",
        &[
            "cgroupfs", "config", "diff", "docker", "dropin", "error", "model", "ops", "plan",
            "process", "state", "systemd", "trace",
        ],
    ),
    // The Docker API gate: its rules (gate/rules/) are pure; the rest serves them over the
    // shared HTTP server and runs the hook's use case for the slice.
    (
        "gate",
        &[
            "config", "docker", "error", "gate", "http", "model", "ops", "plan", "state",
            "systemd", "trace",
        ],
    ),
];

#[test]
fn each_module_imports_only_the_layers_below_it() {
    let mut wrong = Vec::new();
    for (rel, code) in sources() {
        let module = module_of(&rel);
        // src/bin/ holds build tools that use the crate as a library, from outside.
        if matches!(module, "cli" | "lib" | "main" | "bin") {
            continue;
        }
        // A unit test may hold its module to what builds on it: the configuration's tests
        // check the hook's record (state/cache.rs) against a full validation.
        if rel.ends_with("tests.rs") {
            continue;
        }
        let Some((_, allowed)) = LAYERS.iter().find(|(m, _)| *m == module) else {
            wrong.push(format!("{rel}: module `{module}` has no place in LAYERS"));
            continue;
        };
        for (at, _) in code.match_indices("crate::") {
            let used: String = code[at + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if used != module && !allowed.contains(&used.as_str()) {
                wrong.push(format!("{rel}: `{module}` uses crate::{used}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_domain_does_no_io() {
    // The configuration's one stage that reads files: read.rs decides what to read, files.rs
    // how, trust.rs whose files root may act on.
    let reads_files = ["config/read.rs", "config/files.rs", "config/trust.rs"];
    let domain = |rel: &str| {
        // Unit tests (in a `tests.rs`, `*_tests.rs` or after `#[cfg(test)]`) may make
        // scratch files.
        !rel.ends_with("tests.rs")
            && (rel.starts_with("model/")
                || (rel.starts_with("config/") && !reads_files.contains(&rel))
                || rel == "config.rs"
                || rel == "plan.rs"
                || rel == "diff.rs"
                || rel.starts_with("gate/rules/"))
    };
    let io = [
        "zbus",
        "tokio",
        "std::fs",
        "fs::",
        "std::net",
        "std::process",
        "File::",
        "std::env",
    ];
    let mut found = Vec::new();
    for (rel, code) in sources().iter().filter(|(rel, _)| domain(rel)) {
        let code = code.split("#[cfg(test)]").next().unwrap();
        for token in io {
            if code.contains(token) {
                found.push(format!("{rel}: {token}"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "I/O in the pure domain:\n{}",
        found.join("\n")
    );
}

#[test]
fn only_the_command_line_prints() {
    let prints = [
        "println!",
        "eprintln!",
        "print!",
        "eprint!",
        "io::stdout",
        "io::stderr",
        "dbg!",
    ];
    let mut found = Vec::new();
    for (rel, code) in sources() {
        if rel.starts_with("cli/") || rel.starts_with("bin/") || rel == "main.rs" {
            continue;
        }
        for p in prints {
            if code.contains(p) {
                found.push(format!("{rel}: {p}"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "printing outside cli/:\n{}",
        found.join("\n")
    );
}

/// Files allowed past ~500 lines, each with the reason.
const LONG_FILES: &[(&str, &str)] = &[];

#[test]
fn source_files_stay_small() {
    let mut long = Vec::new();
    for (rel, _) in sources() {
        let lines = fs::read_to_string(src().join(&rel))
            .unwrap()
            .lines()
            .count();
        if lines > 550 && !LONG_FILES.iter().any(|(f, _)| *f == rel) {
            long.push(format!("{rel}: {lines} lines"));
        }
    }
    assert!(
        long.is_empty(),
        "files over ~500 lines:\n{}",
        long.join("\n")
    );
}
