//! The production configuration: the file is an unchanged copy, and check-config, plan (whole
//! and per user, JSON and table) and show give exactly what the DS01 server must get.

use md5::{Digest, Md5};
use serde_json::{json, Value};

use super::{json_of, limits, ok, production, user_slice, PRODUCTION_MD5, PRODUCTION_TEXT};

const MAX: u64 = u64::MAX;

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
    let digest = Md5::digest(PRODUCTION_TEXT.as_bytes());
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
