//! Bad inputs: each gives exit 2 and names its place, with check-config and with plan; several
//! are all reported at once.

use serde_json::{json, Value};

use super::{
    absent, bytes, config_of, dir, ok, replaced, run, text, write_files, Content, ADMINS, BASE,
    OVERRIDES, PRODUCTION_TEXT, STUDENTS,
};
use crate::support::{Scratch, MAIN};

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

/// The base configuration with one edit.
pub(super) fn main_sub(from: &str, to: &str) -> (&'static str, Content) {
    (MAIN, Content::Text(replaced(BASE, from, to)))
}

/// The production file with one edit.
fn prod_sub(from: &str, to: &str) -> (&'static str, Content) {
    (MAIN, Content::Text(replaced(PRODUCTION_TEXT, from, to)))
}

pub(super) fn default_files() -> Vec<(&'static str, Content)> {
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
    let dir = scratch.path().display().to_string();
    let out = run(args);
    let mut problems = Vec::new();
    if out.code != Some(2) {
        problems.push(format!("exit {:?} (expected 2)", out.code));
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
        out
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
        write_files(&scratch, &files);
        let config = config_of(&scratch);
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
                case.name, out
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
    write_files(
        &scratch,
        &[
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
        ],
    );
    let config = config_of(&scratch);
    let dir = scratch.path().display().to_string();
    let wanted = [
        format!("{dir}/resource-limits.yaml:8: error: memory_max of group student: \"96g\" has unknown unit"),
        format!("{dir}/resource-limits.yaml:10: error: tasks_max of group student: \"10%\" is a percentage"),
        format!("{dir}/groups/student.members:2: error: user name \"@domain\" has nothing left"),
    ];

    let out = run(&["check-config", "--config", &config]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stdout.is_empty(), "{out}");
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains(": error: "))
        .collect();
    assert_eq!(errors.len(), 3, "{out}");
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
        "{out}"
    );

    let out = run(&["plan", "--config", &config]);
    assert_eq!(out.code, Some(2), "{out}");
    for want in &wanted {
        assert!(
            out.stderr.contains(want.as_str()),
            "plan stderr lacks {want:?}:\n{out}"
        );
    }
    assert!(
        out.stderr
            .contains("configuration has 3 errors; nothing was changed"),
        "{out}"
    );

    let out = run(&["check-config", "--config", &config, "--json"]);
    assert_eq!(out.code, Some(2), "{out}");
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

#[test]
fn unlisted_user_without_default_group_exits_2() {
    let scratch = Scratch::new("no-default");
    write_files(
        &scratch,
        &[
            text(MAIN, &replaced(BASE, "default_group: student\n", "")),
            text(STUDENTS, "alice\n"),
        ],
    );
    let config = config_of(&scratch);
    assert_eq!(
        ok(&["show", "alice", "--aggregate", "--config", &config])
            .lines()
            .count(),
        1
    );
    let out = run(&["show", "stranger", "--config", &config]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr.contains(
            "\"stranger\" is in no members file and the configuration has no default_group"
        ),
        "{out}"
    );
}
