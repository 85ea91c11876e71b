//! Limits that must hold: the hook's MemoryMax check, stale slices with running jobs,
//! `--runtime` under a persistent value, corrupt records, and what verify must not miss.

use std::fs;
use std::time::Duration;

use crate::support::{wait_until, Run, Scratch, World, EXAMPLE, NO_LIMITS, STUDENT_LIMITS};

const ALICE: &str = "ds01-student-alice.slice";

#[test]
fn the_hook_refuses_a_memory_max_below_what_the_slice_uses() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    w.expect(&["apply"], 0);
    w.sb.start_memory_hog("hog.service", ALICE, 200).unwrap();
    let used = || w.show(ALICE, "MemoryCurrent").parse::<u64>().ok();
    wait_until(Duration::from_secs(10), "the hog holds 200M", || {
        used().filter(|u| *u >= 200 << 20)
    })
    .unwrap();
    w.write(
        "user-overrides.yaml",
        "alice:\n  aggregate: {memory_max: 100M, memory_high: 90M}\n",
    );
    let refused = |what: &str| {
        let out = w.expect(&["hook", "pre-create", "alice"], 1);
        assert_eq!(out.stdout, "", "{what}: no slice for the container\n{out}");
        assert!(
            out.stderr.contains(&format!("refused {ALICE}"))
                && out.stderr.contains("OOM-kill")
                && out.stderr.contains("--force"),
            "{what}\n{out}"
        );
        assert_eq!(w.limits(ALICE), STUDENT_LIMITS, "{what}");
        assert_eq!(w.show("hog.service", "ActiveState"), "active", "{what}");
    };
    refused("with its record");
    // Without a record of ours the hook would write blindly, but the slice has a cgroup (jobs
    // may run there): it reads it first and refuses the same way.
    fs::remove_file(w.state().join("owned").join(ALICE)).unwrap();
    refused("without its record");
}

#[test]
fn a_moved_users_old_slice_keeps_its_limits_while_its_jobs_run() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    w.expect(&["apply"], 0);
    w.sb.start_memory_hog("job.service", ALICE, 1).unwrap();
    let students = w.read("groups/student.members").replace("\nalice\n", "\n");
    w.write("groups/student.members", &students);
    let researchers = w.read("groups/researcher.members") + "alice\n";
    w.write("groups/researcher.members", &researchers);

    let out = w.expect(&["apply"], 0);
    assert!(
        out.stdout
            .contains(&format!("  {ALICE} (stale, still active: ")),
        "{out}"
    );
    assert_eq!(w.limits(ALICE), STUDENT_LIMITS, "the job is still held");
    assert_eq!(
        w.show("ds01-researcher-alice.slice", "MemoryMax"),
        "343597383680"
    );
    let verify = w.expect(&["verify", "--user", "alice"], 0);
    assert!(
        verify
            .stdout
            .contains(&format!("{ALICE} (active, stale, still active: "))
            && verify.stdout.contains("kept     MemoryMax="),
        "{verify}"
    );
    let json = w.json(&["apply", "--json"], 0);
    assert_eq!(json["kept"][0]["slice"], ALICE, "{json}");

    assert!(w.sb.systemctl(&["stop", "job.service"]).status.success());
    wait_until(Duration::from_secs(10), "the old slice is idle", || {
        let tasks = w.show(ALICE, "TasksCurrent");
        (tasks == "0" || tasks == "[not set]" || w.show(ALICE, "ActiveState") != "active")
            .then_some(())
    })
    .unwrap();
    let out = w.expect(&["apply"], 0);
    assert!(out.stdout.contains(&format!("- {ALICE}")), "{out}");
    assert_eq!(w.limits(ALICE), NO_LIMITS);
    w.expect(&["verify"], 0);
}

#[test]
fn runtime_values_that_a_persistent_one_would_shadow_are_refused() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    w.expect(&["apply"], 0);
    let overrides = w.read("user-overrides.yaml") + "alice:\n  aggregate: {tasks_max: 500}\n";
    w.write("user-overrides.yaml", &overrides);
    let out = w.expect(&["apply", "--runtime"], 2);
    assert!(
        out.stderr
            .contains(&format!("--runtime cannot take effect on {ALICE}"))
            && out.stderr.contains("50-TasksMax.conf"),
        "{out}"
    );
    assert_eq!(w.show(ALICE, "TasksMax"), "12288", "nothing was changed");
    assert!(w.ds01_drop_ins("/run/systemd/system.control").is_empty());
    w.expect(&["apply"], 0);
    assert_eq!(w.show(ALICE, "TasksMax"), "500");
    w.expect(&["verify"], 0);
}

#[test]
fn a_corrupt_ownership_record_affects_only_its_slice() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    w.expect(&["apply"], 0);
    let record = w.state().join("owned").join(ALICE);
    fs::write(&record, [0xff, 0xfe, b'\n']).unwrap();
    w.write(
        "user-overrides.yaml",
        "john.doe:\n  aggregate: {tasks_max: 500}\n",
    );
    for args in [&["apply"][..], &["verify"]] {
        let out = w.expect(args, 0);
        assert!(
            out.stderr.contains(&format!(
                "ownership record {} is corrupt (not UTF-8 text)",
                record.display()
            )),
            "{args:?}\n{out}"
        );
    }
    assert_eq!(w.show("ds01-student-john_doe.slice", "TasksMax"), "500");
    assert_eq!(w.limits(ALICE), STUDENT_LIMITS);
}

#[test]
fn verify_reports_limits_on_an_uncapped_slice_and_unreadable_kernel_files() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    w.expect(&["apply"], 0);
    let admin = "ds01-admin-datasciencelab.slice";
    w.set_property(admin, &["MemoryMax=2G"]);
    let out = w.expect(&["verify"], 3);
    assert!(
        out.stdout.contains(&format!("{admin} (")) && out.stdout.contains(
            "stale    MemoryMax=2G still in force (not set by ds01-slices: left alone by apply)"
        ),
        "{out}"
    );
    w.set_property(admin, &["MemoryMax=infinity"]);
    w.expect(&["verify"], 0);

    // Kernel files that cannot be read are not "ok".
    w.sb.start_memory_hog("job.service", ALICE, 1).unwrap();
    let empty = Scratch::new("no-cgroups");
    let out = Run::of(&mut w.cmd_on_cgroups(&["verify", "--user", "alice"], empty.path()));
    assert_eq!(out.code, Some(3), "{out}");
    assert!(
        out.stdout.contains("unread   MemoryMax=96G")
            && out.stdout.contains("kernel values unreadable"),
        "{out}"
    );
}
