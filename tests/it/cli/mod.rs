//! `ds01-slices` end to end through the real binary: the production configuration with a
//! hand-written set of members and overrides, every class of bad input (exit 2, located by
//! file and line), warnings that do not fail, global options, `--help` and exit codes.
//!
//! Every fixture lives in its own [`Scratch`] directory, removed on drop whether the test
//! passes or panics.

mod bad_input;
mod command_line;
mod docs;
mod guide;
mod production;
mod safety;
mod warnings;

use serde_json::{json, Value};

use crate::support::{ds01, main_file, write_file, Run, Scratch, MAIN, PRODUCTION};

/// The production file of the DS01 server, copied byte for byte.
const PRODUCTION_TEXT: &str = include_str!("../../data/production/resource-limits.yaml");
const PRODUCTION_MD5: &str = "5714fd21e53cf6ac0835a23d7a3d5ab3";

const OVERRIDES: &str = "user-overrides.yaml";
const STUDENTS: &str = "groups/student.members";
const ADMINS: &str = "groups/admin.members";

/// The small configuration every bad case starts from. Line numbers matter: the table in
/// bad_input.rs names them (7 cpu_quota, 8 memory_max, 9 memory_high, 10 tasks_max,
/// 11 gpu_limit, 12 admin).
const BASE: &str = "\
default_group: student
enforcement:
  aggregate_limits: true
groups:
  student:
    aggregate:
      cpu_quota: \"9600%\"
      memory_max: \"96G\"
      memory_high: \"86G\"
      tasks_max: 12288
      gpu_limit: 2.0
  admin:
    max_cpus: 64
";

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// What a fixture file holds.
#[derive(Debug, Clone)]
enum Content {
    Text(String),
    Bytes(&'static [u8]),
    Dir,
    Absent,
}

fn text(path: &'static str, text: &str) -> (&'static str, Content) {
    (path, Content::Text(text.to_owned()))
}

fn bytes(path: &'static str, bytes: &'static [u8]) -> (&'static str, Content) {
    (path, Content::Bytes(bytes))
}

fn dir(path: &'static str) -> (&'static str, Content) {
    (path, Content::Dir)
}

fn absent(path: &'static str) -> (&'static str, Content) {
    (path, Content::Absent)
}

/// `text` with the first `from` replaced by `to` (which must be there).
fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "fixture text has no {from:?}");
    text.replacen(from, to, 1)
}

/// Writes `files` (paths relative to the scratch dir); later entries replace earlier ones with
/// the same path, `Absent` removes the path from the set.
fn write_files(scratch: &Scratch, files: &[(&str, Content)]) {
    let mut set: Vec<(&str, &Content)> = Vec::new();
    for (path, content) in files {
        set.retain(|(p, _)| p != path);
        set.push((path, content));
    }
    for (rel, content) in set {
        let path = scratch.join(rel);
        match content {
            Content::Text(t) => write_file(&path, t.as_bytes()),
            Content::Bytes(b) => write_file(&path, b),
            Content::Dir => drop(scratch.mkdir(rel)),
            Content::Absent => {}
        }
    }
}

/// The main file of a fixture in `scratch`, as --config takes it.
fn config_of(scratch: &Scratch) -> String {
    scratch.join(MAIN).display().to_string()
}

/// The production configuration's main file.
fn production() -> String {
    main_file(PRODUCTION).display().to_string()
}

// ---------------------------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------------------------

fn run(args: &[&str]) -> Run {
    Run::of(&mut ds01(args))
}

/// Runs and insists on exit 0 with no warnings; returns stdout.
fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.code == Some(0) && out.stderr.is_empty(),
        "ds01-slices {args:?}:\n{out}"
    );
    out.stdout
}

fn json_of(args: &[&str]) -> Value {
    let text = ok(args);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}):\n{text}"))
}

// ---------------------------------------------------------------------------------------------
// Plans as `plan --json` prints them
// ---------------------------------------------------------------------------------------------

/// The limit properties as `plan --json` prints them: CPUQuotaPerSecUSec is percent × 10,000,
/// memory is bytes (base 1024), u64::MAX means infinity.
fn limits(cpu_usec: u64, memory_max: u64, memory_high: u64, tasks_max: u64) -> Value {
    json!({
        "CPUQuotaPerSecUSec": cpu_usec,
        "MemoryMax": memory_max,
        "MemoryHigh": memory_high,
        "TasksMax": tasks_max,
    })
}

fn user_slice(group: &str, component: &str, user: &str, properties: Value) -> Value {
    json!({
        "slice": format!("ds01-{group}-{component}.slice"),
        "kind": "user",
        "group": group,
        "user": user,
        "properties": properties,
    })
}
