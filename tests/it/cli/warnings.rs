//! Warnings are printed and do not fail; disabled enforcement plans nothing.

use serde_json::{json, Value};

use super::{
    config_of, json_of, limits, ok, replaced, run, text, user_slice, write_files, ADMINS, BASE,
    STUDENTS,
};
use crate::support::{Scratch, MAIN};

#[test]
fn warnings_are_printed_and_do_not_fail() {
    let scratch = Scratch::new("warnings");
    write_files(
        &scratch,
        &[
            text(MAIN, &replaced(BASE, "\"9600%\"", "\"150.5%\"")),
            text(STUDENTS, "alice\njohn.doe\n"),
            text(ADMINS, "root1\nalice\n"),
        ],
    );
    let config = config_of(&scratch);
    let dir = scratch.path().display().to_string();
    let twice = format!(
        "{dir}/groups/admin.members:2: warning: user alice is also listed for group student at {dir}/groups/student.members:1; the first group wins"
    );
    let rounded = format!("{dir}/resource-limits.yaml:7: warning: cpu_quota of group student: 150.5% is not a whole percent; rounded up to 151%");

    let out = run(&["check-config", "--config", &config]);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        out.stdout,
        format!("{config}: ok (2 groups, 3 listed users, 0 overrides, 2 warnings)\n")
    );
    assert!(out.stderr.contains(&twice), "{out}");
    assert!(out.stderr.contains(&rounded), "{out}");
    assert!(!out.stderr.contains(": error: "), "{out}");

    // plan works, prints the warnings, and the first group wins.
    let out = run(&["plan", "--user", "alice", "--json", "--config", &config]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stderr.contains(&twice) && out.stderr.contains(&rounded),
        "{out}"
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
    assert_eq!(out.code, Some(0), "{out}");
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
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        out.stdout,
        "{\"cpu_quota\": \"150.5%\", \"memory_max\": \"96G\", \"memory_high\": \"86G\", \"tasks_max\": 12288, \"gpu_limit\": 2.0}\n"
    );

    let report = {
        let out = run(&["--json", "check-config", "--config", &config]);
        assert_eq!(out.code, Some(0), "{out}");
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
    write_files(
        &scratch,
        &[
            text(
                MAIN,
                &replaced(BASE, "aggregate_limits: true", "aggregate_limits: false"),
            ),
            text(STUDENTS, "alice\n"),
        ],
    );
    let config = config_of(&scratch);
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
