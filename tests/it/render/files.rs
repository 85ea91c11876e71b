//! What render finds in place: the old generator's files taken over, stale ones removed,
//! foreign ones left alone; offline verify on a drifted tree; apply falling back to files when
//! systemd is not there.

use std::fs;

use serde_json::Value;

use super::{contents, golden, Offline, ALICE, DROP_IN, MARKER};
use crate::support::{Run, EXAMPLE};

/// The old generator's files are rewritten with our header or removed; anything else is left
/// alone; nothing outside ds01 slices is looked at.
#[test]
fn legacy_files_are_taken_over_stale_ones_removed_and_foreign_ones_left_alone() {
    let s = Offline::new("legacy", EXAMPLE);
    let unit = s.root().join("etc/systemd/system");
    let put = |dir: &str, name: &str, text: &str| {
        fs::create_dir_all(unit.join(dir)).unwrap();
        fs::write(unit.join(dir).join(name), text).unwrap();
    };
    let python = "[Slice]\nCPUQuota=9600%\nMemoryMax=96G\nMemoryHigh=86G\nTasksMax=12288\n";
    // In the plan: taken over.
    put("ds01-student-alice.slice.d", DROP_IN, python);
    // researcher is not the default group, so these users are gone from the configuration.
    put("ds01-researcher-gone.slice.d", DROP_IN, python);
    put(
        "ds01-researcher-left.slice.d",
        DROP_IN,
        &format!("{MARKER}\n[Slice]\nTasksMax=5\n"),
    );
    put(
        "ds01-researcher-left.slice.d",
        "20-admin.conf",
        "[Slice]\nCPUWeight=50\n",
    );
    let admins = "# mine\n[Slice]\nCPUWeight=50\n";
    put("ds01-researcher-other.slice.d", DROP_IN, admins);
    // Someone else's file where ours must go: refused, the rest is rendered.
    let theirs = "[Slice]\nMemoryMax=1G\nCPUWeight=10\n";
    put("ds01-student-john_doe.slice.d", DROP_IN, theirs);
    // Not a ds01 slice: never looked at, even in the old generator's shape.
    put("user-1000.slice.d", DROP_IN, python);
    put("ds01x.slice.d", DROP_IN, python);

    let Run { stdout, stderr, .. } = s
        .run(None, &["render"])
        .assert_code(1, "render with a foreign file in the way");
    let john = unit.join("ds01-student-john_doe.slice.d").join(DROP_IN);
    assert!(
        stderr.contains(&format!("refused {}", john.display())),
        "{stderr}"
    );
    let other = unit.join("ds01-researcher-other.slice.d").join(DROP_IN);
    assert!(
        stderr.contains(&format!("warning: {}", other.display())),
        "{stderr}"
    );
    assert!(
        stdout.contains("(the old generator's: taken over)"),
        "{stdout}"
    );

    let got = contents(&s.root());
    let alice = "etc/systemd/system/ds01-student-alice.slice.d/10-resource-limits.conf";
    let golden_alice =
        fs::read(golden("example").join(alice)).expect("the example golden tree has alice");
    assert_eq!(
        got[alice], golden_alice,
        "taken over: rewritten with our header"
    );
    assert!(
        !unit.join("ds01-researcher-gone.slice.d").exists(),
        "emptied dir removed"
    );
    assert!(!unit
        .join("ds01-researcher-left.slice.d")
        .join(DROP_IN)
        .exists());
    assert!(
        unit.join("ds01-researcher-left.slice.d/20-admin.conf")
            .exists(),
        "another file of the directory stays, and so does the directory"
    );
    assert_eq!(fs::read_to_string(&other).unwrap(), admins);
    assert_eq!(fs::read_to_string(&john).unwrap(), theirs);
    assert_eq!(
        fs::read_to_string(unit.join("user-1000.slice.d").join(DROP_IN)).unwrap(),
        python
    );
    assert_eq!(
        fs::read_to_string(unit.join("ds01x.slice.d").join(DROP_IN)).unwrap(),
        python
    );
    // Every other file of the plan is as in the golden tree.
    for (rel, bytes) in contents(&golden("example")) {
        if !rel.contains("john_doe") {
            assert_eq!(got.get(&rel), Some(&bytes), "{rel}");
        }
    }

    let stdout = s
        .run(None, &["verify", "--offline"])
        .assert_code(3, "verify --offline with a foreign file in the way")
        .stdout;
    assert!(
        stdout.contains(&format!("foreign  {}", john.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("ignored  {}", other.display())),
        "{stdout}"
    );

    // Once the admin moves their file away, render converges and verify holds.
    fs::remove_file(&john).unwrap();
    s.run(None, &["render"])
        .assert_code(0, "render after the foreign file is gone");
    s.run(None, &["verify", "--offline"])
        .assert_code(0, "verify --offline after convergence");
}

#[test]
fn offline_verify_reports_missing_different_and_stale_files() {
    let s = Offline::new("offline", EXAMPLE);
    s.run(None, &["render"]).assert_code(0, "render");
    let unit = s.root().join("etc/systemd/system");
    fs::remove_file(unit.join("ds01-student-alice.slice.d").join(DROP_IN)).unwrap();
    let bob = unit.join("ds01-student-john_doe.slice.d").join(DROP_IN);
    let text = fs::read_to_string(&bob).unwrap().replace("12288", "99");
    fs::write(&bob, text).unwrap();
    fs::create_dir_all(unit.join("ds01-faculty-gone.slice.d")).unwrap();
    fs::write(
        unit.join("ds01-faculty-gone.slice.d").join(DROP_IN),
        format!("{MARKER}\n[Slice]\nTasksMax=1\n"),
    )
    .unwrap();
    let stdout = s
        .run(None, &["--json", "verify", "--offline"])
        .assert_code(3, "verify --offline on a drifted tree")
        .stdout;
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["holds"], false);
    let status = |slice: &str| -> String {
        v["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["slice"] == slice)
            .map(|f| f["status"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(status(ALICE), "missing");
    assert_eq!(status("ds01-student-john_doe.slice"), "different");
    assert_eq!(status("ds01-faculty-gone.slice"), "stale");
    assert_eq!(status("ds01.slice"), "ok");
    assert_eq!(v["counts"]["drift"], 3);
}

#[test]
fn auto_backend_renders_files_when_systemd_is_not_there() {
    let s = Offline::new("auto", EXAMPLE);
    let bus = format!("unix:path={}", s.path().join("no-bus-here").display());
    let Run { stdout, stderr, .. } = s
        .run(Some(&bus), &["apply"])
        .assert_code(0, "apply --backend auto without systemd");
    assert!(
        stderr.contains(&format!("systemd is not reachable at {bus} (")),
        "{stderr}"
    );
    assert!(
        stderr.contains("rendered drop-in files instead of applying over D-Bus; activate them with 'systemctl daemon-reload' once no containers run in ds01 slices"),
        "{stderr}"
    );
    assert!(stdout.contains("rendered: 13 written"), "{stdout}");
    assert_eq!(contents(&s.root()), contents(&golden("example")));

    let stderr = s
        .run(Some(&bus), &["apply", "--backend", "dbus"])
        .assert_code(1, "apply --backend dbus without systemd")
        .stderr;
    assert!(stderr.contains(&bus), "{stderr}");
    let stdout = s
        .run(Some(&bus), &["apply", "--backend", "files"])
        .assert_code(0, "apply --backend files")
        .stdout;
    assert!(stdout.starts_with("nothing to do"), "{stdout}");
    s.run(Some(&bus), &["apply", "--backend", "files", "--runtime"])
        .assert_code(2, "--runtime with files");
    // Runtime limits must vanish at reboot: no fallback to persistent files.
    s.run(Some(&bus), &["apply", "--runtime"])
        .assert_code(1, "apply --runtime without systemd");
}
