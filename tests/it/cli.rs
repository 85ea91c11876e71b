//! `ds01-slices` end to end through the real binary: the production configuration with a
//! hand-written set of members and overrides, every class of bad input (exit 2, located by
//! file and line), warnings that do not fail, global options, `--help` and exit codes.
//!
//! Every fixture lives in its own directory under `std::env::temp_dir()`, removed by
//! [`Scratch`]'s `Drop` whether the test passes or panics.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

mod safety;

use md5::{Digest, Md5};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_ds01-slices");
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// The production file of the DS01 server, copied byte for byte.
const PRODUCTION: &str = include_str!("../data/production/resource-limits.yaml");
const PRODUCTION_MD5: &str = "5714fd21e53cf6ac0835a23d7a3d5ab3";

const MAIN: &str = "resource-limits.yaml";
const OVERRIDES: &str = "user-overrides.yaml";
const STUDENTS: &str = "groups/student.members";
const ADMINS: &str = "groups/admin.members";

/// The small configuration every bad case starts from. Line numbers matter: the table below
/// names them (7 cpu_quota, 8 memory_max, 9 memory_high, 10 tasks_max, 11 gpu_limit, 12 admin).
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
// Harness
// ---------------------------------------------------------------------------------------------

/// A unique directory under the temp dir, removed on drop (also when a test panics).
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn new(label: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let label: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        let base = std::env::temp_dir();
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!(
                "ds01-slices-cli-{}-{n}-{label}",
                std::process::id()
            ));
            match fs::create_dir(&path) {
                Ok(()) => return Scratch { path },
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("cannot create scratch dir {}: {e}", path.display()),
            }
        }
    }

    fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    fn config(&self) -> String {
        self.join(MAIN).display().to_string()
    }

    /// Writes `files` (paths relative to the scratch dir); later entries replace earlier
    /// ones with the same path, `Absent` removes the path from the set.
    fn write(&self, files: &[(&str, Content)]) {
        let mut set: Vec<(&str, &Content)> = Vec::new();
        for (path, content) in files {
            set.retain(|(p, _)| p != path);
            set.push((path, content));
        }
        for (rel, content) in set {
            let path = self.join(rel);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).unwrap();
            }
            match content {
                Content::Text(t) => fs::write(&path, t).unwrap(),
                Content::Bytes(b) => fs::write(&path, b).unwrap(),
                Content::Dir => fs::create_dir_all(&path).unwrap(),
                Content::Absent => {}
            }
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

#[derive(Debug, Clone)]
enum Content {
    Text(String),
    Bytes(&'static [u8]),
    Dir,
    Absent,
}

#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn show(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("DS01_CONFIG")
        .stdin(Stdio::null());
    cmd
}

fn output(mut cmd: Command) -> Out {
    let out = cmd.output().expect("run ds01-slices");
    Out {
        code: out
            .status
            .code()
            .expect("ds01-slices was killed by a signal"),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
    }
}

fn run(args: &[&str]) -> Out {
    output(command(args))
}

/// Runs and insists on exit 0 with no warnings; returns stdout.
fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.code == 0 && out.stderr.is_empty(),
        "ds01-slices {args:?}:\n{}",
        out.show()
    );
    out.stdout
}

fn json_of(args: &[&str]) -> Value {
    let text = ok(args);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}):\n{text}"))
}

fn production() -> String {
    Path::new(MANIFEST_DIR)
        .join("tests/data/production")
        .join(MAIN)
        .display()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// The production configuration
// ---------------------------------------------------------------------------------------------

const MAX: u64 = u64::MAX;

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

fn student() -> Value {
    // 9600% / 96G / 86G / 12288
    limits(96_000_000, 103_079_215_104, 92_341_796_864, 12_288)
}

fn researcher() -> Value {
    // 24000% / 320G / 288G / 327680
    limits(240_000_000, 343_597_383_680, 309_237_645_312, 327_680)
}

fn faculty() -> Value {
    // 32000% / 640G / 576G / 327680
    limits(320_000_000, 687_194_767_360, 618_475_290_624, 327_680)
}

fn accounting() -> Value {
    json!({"CPUAccounting": true, "MemoryAccounting": true, "TasksAccounting": true, "IOAccounting": true})
}

fn root_slice() -> Value {
    json!({"slice": "ds01.slice", "kind": "root", "group": null, "user": null, "properties": accounting()})
}

fn group_slice(group: &str) -> Value {
    json!({"slice": format!("ds01-{group}.slice"), "kind": "group", "group": group, "user": null, "properties": accounting()})
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

/// Every user slice of the production fixture, in plan order, with its exact properties.
fn production_users() -> Vec<Value> {
    const LONG: &str = "very.long.username.that.exceeds.thirty.two.characters@hertie-school.lan";
    vec![
        user_slice("student", "alice", "alice", student()),
        user_slice("student", "john_doe", "john.doe", student()),
        // Override: memory_max lifted to infinity, tasks_max raised; cpu and memory_high stay.
        user_slice(
            "student",
            "h_baker",
            "h.baker@hertie-school.lan",
            limits(96_000_000, MAX, 92_341_796_864, 20_000),
        ),
        user_slice("student", "204214", "204214@hertie-school.lan", student()),
        user_slice(
            "student",
            "Anna_Lena_Mueller",
            "Anna-Lena.Mueller",
            student(),
        ),
        user_slice(
            "student",
            "very_long_username_that_exc_68e0",
            LONG,
            student(),
        ),
        user_slice(
            "researcher",
            "r_chen",
            "r.chen@hertie-school.lan",
            researcher(),
        ),
        // Override key by key: memory only; cpu and tasks stay the group's.
        user_slice(
            "researcher",
            "maria_garcia",
            "maria.garcia",
            limits(240_000_000, 549_755_813_888, 515_396_075_520, 327_680),
        ),
        user_slice(
            "researcher",
            "310077",
            "310077@hertie-school.lan",
            researcher(),
        ),
        user_slice("researcher", "k_okafor", "k.okafor", researcher()),
        // `aggregate: null`: uncapped, so no limit property at all.
        user_slice(
            "faculty",
            "prof_schmidt",
            "prof.schmidt@hertie-school.lan",
            json!({}),
        ),
        user_slice("faculty", "l_weber", "l.weber@hertie-school.lan", faculty()),
        user_slice("faculty", "m_rossi", "m.rossi", faculty()),
        // Admin has no aggregate section: no limit properties.
        user_slice("admin", "datasciencelab", "datasciencelab", json!({})),
        user_slice(
            "admin",
            "ops_admin",
            "ops.admin@hertie-school.lan",
            json!({}),
        ),
        user_slice("admin", "100001", "100001@hertie-school.lan", json!({})),
        // Named only in user-overrides.yaml: default_group (student) merged with the override.
        user_slice(
            "student",
            "guest_lecturer",
            "guest.lecturer@hertie-school.lan",
            limits(48_000_000, 103_079_215_104, 92_341_796_864, 12_288),
        ),
    ]
}

#[test]
fn production_file_is_an_unchanged_copy() {
    let digest = Md5::digest(PRODUCTION.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex, PRODUCTION_MD5,
        "tests/data/production/resource-limits.yaml must stay a byte-for-byte copy of the production file"
    );
}

#[test]
fn production_check_config_is_clean() {
    let config = production();
    let stdout = ok(&["check-config", "--config", &config]);
    assert_eq!(
        stdout,
        format!("{config}: ok (4 groups, 16 listed users, 4 overrides, 0 warnings)\n")
    );
    let report = json_of(&["check-config", "--config", &config, "--json"]);
    assert_eq!(
        report,
        json!({"ok": true, "groups": 4, "users": 16, "overrides": 4, "problems": []})
    );
}

#[test]
fn production_plan_is_exact() {
    let plan = json_of(&["plan", "--json", "--config", &production()]);
    let mut expected = vec![
        root_slice(),
        group_slice("student"),
        group_slice("researcher"),
        group_slice("faculty"),
        group_slice("admin"),
    ];
    expected.extend(production_users());
    let slices = plan["slices"].as_array().expect("plan has slices");
    assert_eq!(slices.len(), expected.len(), "{plan:#}");
    for (got, want) in slices.iter().zip(&expected) {
        assert_eq!(got, want);
    }
    assert_eq!(plan, json!({"slices": expected}));
}

#[test]
fn production_plan_per_user_is_exact() {
    let config = production();
    for user in production_users() {
        let group = user["group"].as_str().unwrap();
        let name = user["user"].as_str().unwrap();
        let plan = json_of(&["plan", "--user", name, "--json", "--config", &config]);
        assert_eq!(
            plan,
            json!({"slices": [root_slice(), group_slice(group), user]}),
            "plan --user {name}"
        );
    }
    // By sanitized name, and an unlisted user (default_group).
    let plan = json_of(&["plan", "--user", "h_baker", "--json", "--config", &config]);
    assert_eq!(plan["slices"][2], production_users()[2]);
    let plan = json_of(&[
        "plan",
        "--user",
        "new.student@hertie-school.lan",
        "--json",
        "--config",
        &config,
    ]);
    assert_eq!(
        plan["slices"][2],
        user_slice(
            "student",
            "new_student",
            "new.student@hertie-school.lan",
            student()
        )
    );
}

#[test]
fn production_plan_table() {
    let table = ok(&["plan", "--config", &production()]);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "SLICE",
            "KIND",
            "USER",
            "CPUQuota",
            "MemoryMax",
            "MemoryHigh",
            "TasksMax"
        ]
    );
    assert_eq!(rows.len(), 1 + 5 + production_users().len(), "{table}");
    let row = |slice: &str| {
        rows.iter()
            .find(|r| r[0] == slice)
            .unwrap_or_else(|| panic!("no row {slice}:\n{table}"))
    };
    assert_eq!(
        row("ds01.slice")[1..],
        ["root", "-", "accounting", "-", "-", "-"]
    );
    assert_eq!(
        row("ds01-student-alice.slice")[1..],
        ["user", "alice", "9600%", "96G", "86G", "12288"]
    );
    assert_eq!(
        row("ds01-student-h_baker.slice")[1..],
        [
            "user",
            "h.baker@hertie-school.lan",
            "9600%",
            "infinity",
            "86G",
            "20000"
        ]
    );
    assert_eq!(
        row("ds01-researcher-maria_garcia.slice")[1..],
        ["user", "maria.garcia", "24000%", "512G", "480G", "327680"]
    );
    assert_eq!(
        row("ds01-faculty-l_weber.slice")[1..],
        [
            "user",
            "l.weber@hertie-school.lan",
            "32000%",
            "640G",
            "576G",
            "327680"
        ]
    );
    assert_eq!(
        row("ds01-faculty-prof_schmidt.slice")[1..],
        [
            "user",
            "prof.schmidt@hertie-school.lan",
            "uncapped",
            "-",
            "-",
            "-"
        ]
    );
    assert_eq!(
        row("ds01-admin-datasciencelab.slice")[1..],
        ["user", "datasciencelab", "uncapped", "-", "-", "-"]
    );
}

#[test]
fn production_show_aggregate_is_python_json() {
    let config = production();
    let student = r#"{"cpu_quota": "9600%", "memory_max": "96G", "memory_high": "86G", "tasks_max": 12288, "gpu_limit": 2.0}"#;
    let researcher = r#"{"cpu_quota": "24000%", "memory_max": "320G", "memory_high": "288G", "tasks_max": 327680, "gpu_limit": 4.0}"#;
    let faculty = r#"{"cpu_quota": "32000%", "memory_max": "640G", "memory_high": "576G", "tasks_max": 327680, "gpu_limit": 4.0}"#;
    let cases = [
        ("alice", student),
        ("john.doe", student),
        ("john_doe", student),
        ("204214@hertie-school.lan", student),
        (
            "very.long.username.that.exceeds.thirty.two.characters@hertie-school.lan",
            student,
        ),
        ("never.listed", student),
        (
            "h.baker@hertie-school.lan",
            r#"{"cpu_quota": "9600%", "memory_max": "infinity", "memory_high": "86G", "tasks_max": 20000, "gpu_limit": 2.0}"#,
        ),
        (
            "guest.lecturer@hertie-school.lan",
            r#"{"cpu_quota": "4800%", "memory_max": "96G", "memory_high": "86G", "tasks_max": 12288, "gpu_limit": 2.0}"#,
        ),
        ("r.chen@hertie-school.lan", researcher),
        ("310077@hertie-school.lan", researcher),
        ("k.okafor", researcher),
        (
            "maria.garcia",
            r#"{"cpu_quota": "24000%", "memory_max": "512G", "memory_high": "480G", "tasks_max": 327680, "gpu_limit": 4.0}"#,
        ),
        ("l.weber@hertie-school.lan", faculty),
        ("m.rossi", faculty),
        ("prof.schmidt@hertie-school.lan", "null"),
        ("datasciencelab", "null"),
        ("ops.admin@hertie-school.lan", "null"),
        ("100001@hertie-school.lan", "null"),
    ];
    for (user, expected) in cases {
        let stdout = ok(&["show", user, "--aggregate", "--config", &config]);
        assert_eq!(stdout, format!("{expected}\n"), "show {user} --aggregate");
    }
}

#[test]
fn production_show_text_and_json() {
    let config = production();
    let text = ok(&["show", "maria.garcia", "--config", &config]);
    assert_eq!(
        text,
        "user:   maria.garcia\n\
         group:  researcher\n\
         slice:  ds01-researcher-maria_garcia.slice\n\
         limits: CPUQuota=24000% MemoryMax=512G MemoryHigh=480G TasksMax=327680\n\
         gpu:    gpu_limit 4.0 (read by other DS01 tools, not a slice property)\n"
    );
    let text = ok(&["show", "datasciencelab", "--config", &config]);
    assert!(text.contains("limits: none (no aggregate cap)\n"), "{text}");
    let text = ok(&["show", "someone.new", "--config", &config]);
    assert!(
        text.contains("group:  student (in no members file: default_group)\n"),
        "{text}"
    );
    let report = json_of(&[
        "show",
        "h.baker@hertie-school.lan",
        "--json",
        "--config",
        &config,
    ]);
    assert_eq!(
        report,
        json!({
            "user": "h.baker@hertie-school.lan",
            "group": "student",
            "slice": "ds01-student-h_baker.slice",
            "aggregate": {"cpu_quota": "9600%", "memory_max": "infinity", "memory_high": "86G", "tasks_max": 20000, "gpu_limit": 2.0},
        })
    );
}

// ---------------------------------------------------------------------------------------------
// Bad inputs: each gives exit 2 and names its place, with check-config and with plan
// ---------------------------------------------------------------------------------------------

/// One bad configuration: the files that differ from the default fixture, the substrings the
/// error must contain (`{dir}` is the fixture directory) and where it must point
/// (`file[:line]`, relative to the fixture directory).
struct Bad {
    name: &'static str,
    files: Vec<(&'static str, Content)>,
    expect: &'static [&'static str],
    at: &'static str,
}

fn bad(
    name: &'static str,
    files: Vec<(&'static str, Content)>,
    expect: &'static [&'static str],
    at: &'static str,
) -> Bad {
    Bad {
        name,
        files,
        expect,
        at,
    }
}

fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "fixture text has no {from:?}");
    text.replacen(from, to, 1)
}

/// The base configuration with one edit.
fn main_sub(from: &str, to: &str) -> (&'static str, Content) {
    (MAIN, Content::Text(replaced(BASE, from, to)))
}

/// The production file with one edit.
fn prod_sub(from: &str, to: &str) -> (&'static str, Content) {
    (MAIN, Content::Text(replaced(PRODUCTION, from, to)))
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

fn default_files() -> Vec<(&'static str, Content)> {
    vec![
        text(MAIN, BASE),
        text(STUDENTS, "alice\njohn.doe\n"),
        text(ADMINS, "root1\n"),
    ]
}

#[rustfmt::skip]
fn bad_cases() -> Vec<Bad> {
    vec![
        // YAML syntax and shape
        bad("malformed yaml", vec![main_sub("      memory_max", "     memory_max")], &["not valid YAML", "did not find expected key"], "resource-limits.yaml:8"),
        // serde_yaml places a duplicate key at the start of its mapping (line 7), naming the key path.
        bad("duplicate key", vec![main_sub("      tasks_max: 12288\n", "      tasks_max: 12288\n      tasks_max: 1\n")], &["not valid YAML", "groups.student.aggregate: duplicate entry with key \"tasks_max\""], "resource-limits.yaml:7"),
        bad("top level is a list", vec![text(MAIN, "- student\n- admin\n")], &["must be a YAML mapping", "found a list"], "resource-limits.yaml:1"),
        bad("empty main file", vec![text(MAIN, "# nothing here\n")], &["must be a YAML mapping", "found null"], "resource-limits.yaml:1"),
        bad("groups missing", vec![text(MAIN, "enforcement:\n  aggregate_limits: true\n")], &["no `groups:` section"], "resource-limits.yaml:1"),
        bad("groups is a list", vec![text(MAIN, "enforcement:\n  aggregate_limits: true\ngroups: [student, admin]\n")], &["`groups` must be a mapping", "found a list"], "resource-limits.yaml:3"),
        bad("group is a number", vec![main_sub("  admin:\n    max_cpus: 64\n", "  admin: 5\n")], &["group `admin` must be a mapping", "found a number"], "resource-limits.yaml:12"),
        bad("aggregate is a string", vec![main_sub("  admin:", "  staff:\n    aggregate: 96G\n  admin:")], &["aggregate of group staff must be a mapping", "found a string"], "resource-limits.yaml:13"),
        // Wrong YAML types
        bad("bool memory_max", vec![main_sub("memory_max: \"96G\"", "memory_max: true")], &["memory_max of group student must be", "found a boolean"], "resource-limits.yaml:8"),
        bad("list tasks_max", vec![main_sub("tasks_max: 12288", "tasks_max: [4096, 8192]")], &["tasks_max of group student must be", "found a list"], "resource-limits.yaml:10"),
        bad("cpu_quota number without %", vec![main_sub("cpu_quota: \"9600%\"", "cpu_quota: 9600")], &["cpu_quota of group student", "\"9600\" must be a percentage"], "resource-limits.yaml:7"),
        bad("memory_max is a mapping", vec![main_sub("memory_max: \"96G\"", "memory_max: {size: 96G}")], &["memory_max of group student must be", "found a mapping"], "resource-limits.yaml:8"),
        bad("gpu_limit string", vec![main_sub("gpu_limit: 2.0", "gpu_limit: two")], &["gpu_limit of group student must be a number", "found a string"], "resource-limits.yaml:11"),
        bad("negative gpu_limit", vec![main_sub("gpu_limit: 2.0", "gpu_limit: -1")], &["gpu_limit of group student", "\"-1\" is negative"], "resource-limits.yaml:11"),
        bad("cpu_quota with an exponent", vec![main_sub("\"9600%\"", "\"1e3%\"")], &["cpu_quota of group student", "\"1e3%\" is not a percentage of one CPU"], "resource-limits.yaml:7"),
        // Unknown keys
        bad("unknown aggregate key", vec![main_sub("memory_max:", "memroy_max:")], &["unknown key `memroy_max`", "of group student in {dir}/resource-limits.yaml", "did you mean `memory_max`?"], "resource-limits.yaml:8"),
        bad("unknown key in production file", vec![prod_sub("memory_max: \"320G\"", "memroy_max: \"320G\"")], &["unknown key `memroy_max`", "of group researcher in {dir}/resource-limits.yaml", "did you mean `memory_max`?"], "resource-limits.yaml:122"),
        // Units and values
        bad("lower-case unit", vec![main_sub("\"96G\"", "\"96g\"")], &["\"96g\" has unknown unit \"g\""], "resource-limits.yaml:8"),
        bad("two-letter unit", vec![main_sub("\"96G\"", "96GB")], &["\"96GB\" has unknown unit \"GB\""], "resource-limits.yaml:8"),
        bad("lower-case unit in production", vec![prod_sub("memory_max: \"640G\"", "memory_max: 640g")], &["memory_max of group faculty", "\"640g\" has unknown unit"], "resource-limits.yaml:153"),
        bad("percent memory", vec![main_sub("\"96G\"", "\"50%\"")], &["\"50%\" is a percentage of RAM"], "resource-limits.yaml:8"),
        bad("percent tasks", vec![main_sub("tasks_max: 12288", "tasks_max: 10%")], &["tasks_max of group student", "\"10%\" is a percentage"], "resource-limits.yaml:10"),
        bad("zero tasks", vec![main_sub("tasks_max: 12288", "tasks_max: 0")], &["\"0\" is zero"], "resource-limits.yaml:10"),
        bad("zero cpu", vec![main_sub("\"9600%\"", "\"0%\"")], &["cpu_quota of group student", "\"0%\" is zero"], "resource-limits.yaml:7"),
        bad("zero memory", vec![main_sub("memory_high: \"86G\"", "memory_high: 0")], &["memory_high of group student", "\"0\" is zero"], "resource-limits.yaml:9"),
        bad("negative tasks", vec![main_sub("tasks_max: 12288", "tasks_max: -5")], &["\"-5\" is negative"], "resource-limits.yaml:10"),
        bad("negative memory", vec![main_sub("\"96G\"", "\"-1G\"")], &["memory_max of group student", "\"-1G\" is negative"], "resource-limits.yaml:8"),
        bad("memory overflow", vec![main_sub("\"96G\"", "16E")], &["\"16E\" is too large"], "resource-limits.yaml:8"),
        bad("tasks overflow", vec![main_sub("tasks_max: 12288", "tasks_max: 18446744073709551615")], &["tasks_max of group student", "is too large"], "resource-limits.yaml:10"),
        bad("cpu overflow", vec![main_sub("\"9600%\"", "\"1844674407370956%\"")], &["\"1844674407370956%\" is too large"], "resource-limits.yaml:7"),
        bad("memory_high above memory_max", vec![main_sub("\"86G\"", "\"97G\"")], &["memory_high of group student (97G) is above its memory_max (96G)"], "resource-limits.yaml:9"),
        bad("memory_high above max after override", vec![text(OVERRIDES, "john.doe:\n  aggregate:\n    memory_max: 64G\n")], &["memory_high of user john.doe", "(86G) is above its memory_max (64G)"], "user-overrides.yaml:1"),
        bad("memory_high above max after inline override", vec![main_sub("    max_cpus: 64\n", "    max_cpus: 64\nuser_overrides:\n  alice:\n    aggregate:\n      memory_high: 100G\n")], &["memory_high of user alice", "(100G) is above its memory_max (96G)"], "resource-limits.yaml:15"),
        // Members files
        bad("empty sanitized name", vec![text(STUDENTS, "alice\n@domain\n")], &["\"@domain\" has nothing left after sanitization"], "groups/student.members:2"),
        bad("slice collision", vec![text(STUDENTS, "# one slice, two accounts\njohn.doe\njohn_doe\n")], &["\"john_doe\" and \"john.doe\"", "both map to slice ds01-student-john_doe.slice", "{dir}/groups/student.members:2"], "groups/student.members:3"),
        bad("members file is a directory", vec![dir(STUDENTS)], &["cannot read members file"], "groups/student.members"),
        bad("members file not UTF-8", vec![bytes(STUDENTS, b"alice\n\xff\xfebob\n")], &["not valid UTF-8"], "groups/student.members"),
        // Names and structure
        bad("dash in group name", vec![main_sub("  admin:", "  lab-admin:")], &["group name \"lab-admin\"", "'-'"], "resource-limits.yaml:12"),
        bad("missing config file", vec![absent(MAIN)], &["cannot read configuration file {dir}/resource-limits.yaml", "--config"], "resource-limits.yaml"),
        bad("config path is a directory", vec![dir(MAIN)], &["cannot read configuration file"], "resource-limits.yaml"),
        bad("default_group not defined", vec![main_sub("default_group: student", "default_group: staff")], &["default_group `staff` is not defined"], "resource-limits.yaml:1"),
        bad("default_group is a list", vec![main_sub("default_group: student", "default_group: [student]")], &["default_group must be a group name", "found a list"], "resource-limits.yaml:1"),
        bad("aggregate_limits not a bool", vec![main_sub("aggregate_limits: true", "aggregate_limits: yes")], &["enforcement.aggregate_limits must be true or false", "found a string"], "resource-limits.yaml:3"),
        bad("enforcement not a mapping", vec![main_sub("enforcement:\n  aggregate_limits: true\n", "enforcement: strict\n")], &["`enforcement` must be a mapping"], "resource-limits.yaml:2"),
        // user-overrides.yaml
        bad("overrides not valid YAML", vec![text(OVERRIDES, "alice:\n  aggregate:\n    memory_max: 96G\n   tasks_max: 5\n")], &["not valid YAML"], "user-overrides.yaml:4"),
        bad("overrides is a list", vec![text(OVERRIDES, "- alice\n- john.doe\n")], &["user overrides must be a mapping", "found a list"], "user-overrides.yaml:1"),
        bad("override is a number", vec![text(OVERRIDES, "alice: 5\n")], &["override of user alice must be a mapping", "found a number"], "user-overrides.yaml:1"),
        bad("unknown key in override", vec![text(OVERRIDES, "alice:\n  aggregate:\n    cpu_qouta: \"100%\"\n")], &["unknown key `cpu_qouta`", "the override of user alice in {dir}/user-overrides.yaml", "did you mean `cpu_quota`?"], "user-overrides.yaml:3"),
        bad("bad unit in override", vec![text(OVERRIDES, "# raise alice\nalice:\n  aggregate:\n    memory_max: 1TB\n")], &["memory_max of the override of user alice", "\"1TB\" has unknown unit"], "user-overrides.yaml:4"),
        bad("override user sanitizes to nothing", vec![text(OVERRIDES, "alice: {}\n\"@nowhere\":\n  aggregate: null\n")], &["\"@nowhere\" has nothing left after sanitization"], "user-overrides.yaml:2"),
        bad("overrides file is a directory", vec![dir(OVERRIDES)], &["cannot read overrides file"], "user-overrides.yaml"),
        bad("deeply nested overrides", vec![text(OVERRIDES, &"[".repeat(200_000))], &["nests deeper than 32 levels"], "user-overrides.yaml:1"),
        bad("overrides file not UTF-8", vec![bytes(OVERRIDES, b"alice:\n  aggregate: {tasks_max: \xff}\n")], &["cannot read overrides file", "UTF-8"], "user-overrides.yaml"),
    ]
}

/// The checks every bad case must pass, for one command; returns the problems found.
fn check_bad(case: &Bad, scratch: &Scratch, args: &[&str]) -> Vec<String> {
    let dir = scratch.path.display().to_string();
    let out = run(args);
    let mut problems = Vec::new();
    if out.code != 2 {
        problems.push(format!("exit {} (expected 2)", out.code));
    }
    if !out.stdout.is_empty() {
        problems.push("printed on stdout although the configuration is bad".to_owned());
    }
    let place = format!("{dir}/{}:", case.at);
    let expect: Vec<String> = case
        .expect
        .iter()
        .map(|e| e.replace("{dir}", &dir))
        .collect();
    let located = out.stderr.lines().any(|l| {
        l.contains(&place) && l.contains("error") && expect.iter().all(|e| l.contains(e.as_str()))
    });
    if !located {
        problems.push(format!(
            "no stderr line has `{place}`, \"error\" and all of {expect:?}"
        ));
    }
    if problems.is_empty() {
        return problems;
    }
    vec![format!(
        "[{}] ds01-slices {}: {}\n{}",
        case.name,
        args.join(" "),
        problems.join("; "),
        out.show()
    )]
}

#[test]
fn every_bad_input_exits_2_and_names_its_place() {
    let cases = bad_cases();
    assert!(
        cases.len() >= 20,
        "the issue asks for at least 20 distinct bad inputs"
    );
    let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names must be distinct");

    let mut failures = Vec::new();
    for case in &cases {
        let scratch = Scratch::new(case.name);
        let mut files = default_files();
        files.extend(case.files.iter().cloned());
        scratch.write(&files);
        let config = scratch.config();
        let commands: [&[&str]; 4] = [
            &["check-config", "--config", &config],
            &["plan", "--config", &config],
            &["--json", "plan", "--config", &config],
            &["show", "alice", "--aggregate", "--config", &config],
        ];
        for args in commands {
            failures.extend(check_bad(case, &scratch, args));
        }
        // One bad input, one error: nothing else is wrong in the fixture.
        let out = run(&["check-config", "--config", &config]);
        let errors = out
            .stderr
            .lines()
            .filter(|l| l.contains(": error: "))
            .count();
        if errors != 1 {
            failures.push(format!(
                "[{}] check-config reported {errors} errors, expected 1:\n{}",
                case.name,
                out.show()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn check_config_reports_every_problem() {
    let scratch = Scratch::new("three-errors");
    scratch.write(&[
        text(
            MAIN,
            &replaced(
                &replaced(BASE, "\"96G\"", "\"96g\""),
                "tasks_max: 12288",
                "tasks_max: 10%",
            ),
        ),
        text(STUDENTS, "alice\n@domain\n"),
        text(ADMINS, "root1\n"),
    ]);
    let config = scratch.config();
    let dir = scratch.path.display().to_string();
    let wanted = [
        format!("{dir}/resource-limits.yaml:8: error: memory_max of group student: \"96g\" has unknown unit"),
        format!("{dir}/resource-limits.yaml:10: error: tasks_max of group student: \"10%\" is a percentage"),
        format!("{dir}/groups/student.members:2: error: user name \"@domain\" has nothing left"),
    ];

    let out = run(&["check-config", "--config", &config]);
    assert_eq!(out.code, 2, "{}", out.show());
    assert!(out.stdout.is_empty(), "{}", out.show());
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains(": error: "))
        .collect();
    assert_eq!(errors.len(), 3, "{}", out.show());
    for (line, want) in errors.iter().zip(&wanted) {
        assert!(
            line.starts_with(want.as_str()),
            "{line:?} should start with {want:?}"
        );
    }
    assert!(
        out.stderr.ends_with(&format!(
            "{config}: 3 error(s); fix them and run check-config again\n"
        )),
        "{}",
        out.show()
    );

    let out = run(&["plan", "--config", &config]);
    assert_eq!(out.code, 2, "{}", out.show());
    for want in &wanted {
        assert!(
            out.stderr.contains(want.as_str()),
            "plan stderr lacks {want:?}:\n{}",
            out.show()
        );
    }
    assert!(
        out.stderr
            .contains("configuration has 3 errors; nothing was changed"),
        "{}",
        out.show()
    );

    let out = run(&["check-config", "--config", &config, "--json"]);
    assert_eq!(out.code, 2, "{}", out.show());
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let problems = report["problems"].as_array().unwrap();
    let places: Vec<(String, Value, Value)> = problems
        .iter()
        .map(|p| {
            (
                p["location"]["file"].as_str().unwrap().to_owned(),
                p["location"]["line"].clone(),
                p["severity"].clone(),
            )
        })
        .collect();
    assert_eq!(
        places,
        [
            (
                format!("{dir}/resource-limits.yaml"),
                json!(8),
                json!("error")
            ),
            (
                format!("{dir}/resource-limits.yaml"),
                json!(10),
                json!("error")
            ),
            (
                format!("{dir}/groups/student.members"),
                json!(2),
                json!("error")
            ),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Warnings do not fail
// ---------------------------------------------------------------------------------------------

#[test]
fn warnings_are_printed_and_do_not_fail() {
    let scratch = Scratch::new("warnings");
    scratch.write(&[
        text(MAIN, &replaced(BASE, "\"9600%\"", "\"150.5%\"")),
        text(STUDENTS, "alice\njohn.doe\n"),
        text(ADMINS, "root1\nalice\n"),
    ]);
    let config = scratch.config();
    let dir = scratch.path.display().to_string();
    let twice = format!(
        "{dir}/groups/admin.members:2: warning: user alice is also listed for group student at {dir}/groups/student.members:1; the first group wins"
    );
    let rounded = format!("{dir}/resource-limits.yaml:7: warning: cpu_quota of group student: 150.5% is not a whole percent; rounded up to 151%");

    let out = run(&["check-config", "--config", &config]);
    assert_eq!(out.code, 0, "{}", out.show());
    assert_eq!(
        out.stdout,
        format!("{config}: ok (2 groups, 3 listed users, 0 overrides, 2 warnings)\n")
    );
    assert!(out.stderr.contains(&twice), "{}", out.show());
    assert!(out.stderr.contains(&rounded), "{}", out.show());
    assert!(!out.stderr.contains(": error: "), "{}", out.show());

    // plan works, prints the warnings, and the first group wins.
    let out = run(&["plan", "--user", "alice", "--json", "--config", &config]);
    assert_eq!(out.code, 0, "{}", out.show());
    assert!(
        out.stderr.contains(&twice) && out.stderr.contains(&rounded),
        "{}",
        out.show()
    );
    let plan: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        plan["slices"][2],
        user_slice(
            "student",
            "alice",
            "alice",
            limits(1_510_000, 103_079_215_104, 92_341_796_864, 12_288)
        )
    );
    let out = run(&["plan", "--json", "--config", &config]);
    assert_eq!(out.code, 0, "{}", out.show());
    let plan: Value = serde_json::from_str(&out.stdout).unwrap();
    let users: Vec<&str> = plan["slices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["slice"].as_str().unwrap())
        .collect();
    assert_eq!(
        users,
        [
            "ds01.slice",
            "ds01-student.slice",
            "ds01-admin.slice",
            "ds01-student-alice.slice",
            "ds01-student-john_doe.slice",
            "ds01-admin-root1.slice"
        ]
    );
    // show --aggregate prints the value as written; stdout stays clean JSON.
    let out = run(&["show", "alice", "--aggregate", "--config", &config]);
    assert_eq!(out.code, 0, "{}", out.show());
    assert_eq!(
        out.stdout,
        "{\"cpu_quota\": \"150.5%\", \"memory_max\": \"96G\", \"memory_high\": \"86G\", \"tasks_max\": 12288, \"gpu_limit\": 2.0}\n"
    );

    let report = {
        let out = run(&["--json", "check-config", "--config", &config]);
        assert_eq!(out.code, 0, "{}", out.show());
        serde_json::from_str::<Value>(&out.stdout).unwrap()
    };
    assert_eq!(report["ok"], true);
    let severities: Vec<&Value> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["severity"])
        .collect();
    assert_eq!(severities, [&json!("warning"), &json!("warning")]);
}

#[test]
fn disabled_enforcement_plans_nothing() {
    let scratch = Scratch::new("disabled");
    scratch.write(&[
        text(
            MAIN,
            &replaced(BASE, "aggregate_limits: true", "aggregate_limits: false"),
        ),
        text(STUDENTS, "alice\n"),
    ]);
    let config = scratch.config();
    assert_eq!(
        ok(&["plan", "--config", &config]),
        "enforcement.aggregate_limits is false in the configuration: nothing to apply\n"
    );
    assert_eq!(
        json_of(&["plan", "--json", "--config", &config]),
        json!({"slices": []})
    );
    let text = ok(&["show", "alice", "--config", &config]);
    assert!(
        text.contains("enforcement.aggregate_limits is false"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// The command line itself
// ---------------------------------------------------------------------------------------------

#[test]
fn bundled_example_config_plans() {
    // Exactly the README's first command, from the repository root.
    let mut cmd = command(&["plan", "--config", "config/resource-limits.yaml"]);
    cmd.current_dir(MANIFEST_DIR);
    let out = output(cmd);
    assert_eq!(out.code, 0, "{}", out.show());
    assert!(out.stdout.starts_with("SLICE "), "{}", out.show());
    assert!(
        out.stdout.lines().any(|l| l.starts_with("ds01.slice ")),
        "{}",
        out.show()
    );

    let mut cmd = command(&["plan", "--config", "config/resource-limits.yaml", "--json"]);
    cmd.current_dir(MANIFEST_DIR);
    let out = output(cmd);
    assert_eq!(out.code, 0, "{}", out.show());
    let plan: Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{}", out.show()));
    let slices = plan["slices"].as_array().unwrap();
    assert_eq!(slices[0]["slice"], "ds01.slice");
    assert!(slices.iter().any(|s| s["kind"] == "user"), "{plan:#}");
}

#[test]
fn global_options_go_before_or_after_the_subcommand() {
    let config = production();
    let reference = ok(&["plan", "--config", &config, "--json"]);
    for args in [
        vec!["--config", &config, "--json", "plan"],
        vec!["--json", "--config", &config, "plan"],
        vec!["--config", &config, "plan", "--json"],
        vec!["--json", "plan", "--config", &config],
        vec!["plan", "--json", "--config", &config],
        vec![&format!("--config={config}"), "plan", "--json"],
    ] {
        assert_eq!(ok(&args), reference, "{args:?}");
    }
    let show = ok(&["show", "maria.garcia", "--config", &config]);
    assert_eq!(ok(&["--config", &config, "show", "maria.garcia"]), show);

    // DS01_CONFIG stands in for --config; --config wins over it.
    let mut cmd = command(&["plan", "--json"]);
    cmd.env("DS01_CONFIG", &config);
    let out = output(cmd);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, reference.as_str()),
        "{}",
        out.show()
    );
    let mut cmd = command(&["plan", "--json", "--config", &config]);
    cmd.env("DS01_CONFIG", "/nonexistent/ds01/resource-limits.yaml");
    let out = output(cmd);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, reference.as_str()),
        "{}",
        out.show()
    );
}

/// The subcommands `--help` lists under "Commands:" (without clap's `help`).
fn commands_in(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect()
}

/// Every subcommand path of the binary, nested ones included (`hook start`), found by
/// following `--help`, so that subcommands added later are covered too.
fn subcommand_paths() -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut todo: Vec<Vec<String>> = commands_in(&ok(&["--help"]))
        .into_iter()
        .map(|c| vec![c])
        .collect();
    while let Some(path) = todo.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        for child in commands_in(&ok(&args)) {
            let mut child_path = path.clone();
            child_path.push(child);
            todo.push(child_path);
        }
        paths.push(path);
    }
    for required in ["show", "plan", "check-config"] {
        assert!(
            paths.iter().any(|p| p == &[required]),
            "--help does not list {required}: {paths:?}"
        );
    }
    paths
}

#[test]
fn help_works_everywhere() {
    let top = ok(&["--help"]);
    assert!(
        top.contains("Usage: ds01-slices [OPTIONS] <COMMAND>"),
        "{top}"
    );
    assert!(
        top.contains("Exit codes"),
        "--help should list the exit codes:\n{top}"
    );
    for args in [&["-h"][..], &["help"]] {
        assert!(ok(args).contains("Usage: ds01-slices"), "{args:?}");
    }
    for path in subcommand_paths() {
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        let usage = format!("Usage: ds01-slices {}", path.join(" "));
        let help_first: Vec<&str> = std::iter::once("help")
            .chain(path.iter().copied())
            .collect();
        for args in [
            [&path[..], &["--help"]].concat(),
            [&path[..], &["-h"]].concat(),
            help_first,
        ] {
            let out = run(&args);
            assert_eq!(out.code, 0, "{args:?}: {}", out.show());
            assert!(out.stdout.contains(&usage), "{args:?}: {}", out.show());
            // Global options are accepted after every subcommand, so its help lists them.
            assert!(
                out.stdout.contains("--config <PATH>"),
                "{args:?}: {}",
                out.show()
            );
            assert!(out.stdout.contains("--json"), "{args:?}: {}", out.show());
        }
    }
    let version = ok(&["--version"]);
    assert_eq!(
        version,
        format!("ds01-slices {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn usage_errors_exit_2() {
    let config = production();
    let cases: [&[&str]; 8] = [
        &[],
        &["frobnicate"],
        &["show"],
        &["plan", "--bogus"],
        &["plan", "--user"],
        &["--json"],
        &["show", "alice", "extra", "--config", &config],
        &["check-config", "--config"],
    ];
    for args in cases {
        let out = run(args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.show());
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.show());
        assert!(!out.stderr.is_empty(), "{args:?}: {}", out.show());
    }
    // A user name that cannot become a slice is bad usage too.
    for args in [
        vec!["show", "@hertie-school.lan", "--config", &config],
        vec!["plan", "--user", "...", "--config", &config],
    ] {
        let out = run(&args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.show());
        assert!(
            out.stderr.contains("nothing left after sanitization"),
            "{args:?}: {}",
            out.show()
        );
    }
    let out = run(&["plan", "--user", "", "--config", &config]);
    assert_eq!(out.code, 2, "{}", out.show());
    assert!(out.stderr.contains("user name is empty"), "{}", out.show());
}

#[test]
fn unlisted_user_without_default_group_exits_2() {
    let scratch = Scratch::new("no-default");
    scratch.write(&[
        text(MAIN, &replaced(BASE, "default_group: student\n", "")),
        text(STUDENTS, "alice\n"),
    ]);
    let config = scratch.config();
    assert_eq!(
        ok(&["show", "alice", "--aggregate", "--config", &config])
            .lines()
            .count(),
        1
    );
    let out = run(&["show", "stranger", "--config", &config]);
    assert_eq!(out.code, 2, "{}", out.show());
    assert!(
        out.stderr.contains(
            "\"stranger\" is in no members file and the configuration has no default_group"
        ),
        "{}",
        out.show()
    );
}

#[test]
fn a_failed_write_exits_1() {
    // Runtime failure (not the user's input): stdout cannot be written.
    let Ok(full) = fs::OpenOptions::new().write(true).open("/dev/full") else {
        eprintln!("skipped: no /dev/full on this machine");
        return;
    };
    let mut cmd = command(&["plan", "--config", &production()]);
    cmd.stdout(full);
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot write to stdout"));
}

#[test]
fn scratch_dirs_are_removed_even_on_panic() {
    let path = std::panic::catch_unwind(|| {
        let scratch = Scratch::new("panics");
        scratch.write(&[text(STUDENTS, "alice\n"), dir("nested/dir")]);
        let path = scratch.path.clone();
        assert!(path.join(STUDENTS).is_file());
        std::panic::panic_any(path);
    })
    .expect_err("the closure panics")
    .downcast::<PathBuf>()
    .expect("the panic carries the path");
    assert!(!path.exists(), "{} was left behind", path.display());
}
