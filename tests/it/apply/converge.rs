//! apply converges: exactly the plan on the bus, nothing written twice, drift made by others
//! reported and repaired (and left alone by --dry-run), and old slices losing only our limits.

use std::fs;
use std::time::Duration;

use crate::support::{verify_block, verify_entry, World, EXAMPLE, NO_LIMITS, STUDENT_LIMITS};

#[test]
fn apply_sets_exactly_the_plan_and_a_second_apply_writes_nothing() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    let out = w.expect(&["apply"], 0).stdout;
    assert!(out.contains("+ ds01-student-alice.slice"), "{out}");
    assert!(out.contains("MemoryMax=96G"), "{out}");

    let plan = w.plan();
    assert!(plan.len() >= 10);
    for (slice, props) in &plan {
        for (prop, want) in props {
            assert_eq!(&w.bus_value(slice, prop), want, "{slice} {prop}");
        }
    }
    // The reference tool agrees, in its own units.
    assert_eq!(
        w.limits("ds01-student-alice.slice"),
        [
            "1min 36s".to_owned(),
            (96u64 << 30).to_string(),
            (86u64 << 30).to_string(),
            "12288".to_owned()
        ]
    );
    assert_eq!(w.show("ds01-student.slice", "MemoryAccounting"), "yes");
    assert_eq!(
        w.control_dropins("ds01-student-alice.slice"),
        [
            "50-CPUQuota.conf",
            "50-MemoryHigh.conf",
            "50-MemoryMax.conf",
            "50-TasksMax.conf"
        ]
    );
    // Admins have no cap: nothing is written for them.
    assert!(w
        .control_dropins("ds01-admin-datasciencelab.slice")
        .is_empty());

    let mtimes = |w: &World| -> Vec<_> {
        plan.iter()
            .flat_map(|(s, _)| {
                w.control_dropins(s)
                    .into_iter()
                    .map(move |f| (s.clone(), f))
            })
            .map(|(s, f)| {
                let p =
                    w.sb.host_path(&format!("/etc/systemd/system.control/{s}.d/{f}"));
                (p.clone(), fs::metadata(p).unwrap().modified().unwrap())
            })
            .collect()
    };
    let before = mtimes(&w);
    std::thread::sleep(Duration::from_millis(20));
    let out = w.expect(&["apply"], 0).stdout;
    assert!(out.contains("nothing to do"), "{out}");
    assert_eq!(mtimes(&w), before, "a second apply rewrote drop-ins");
    let json = w.json(&["apply", "--json"], 0);
    assert_eq!(json["writes"], 0);
    w.expect(&["verify"], 0);
}

#[test]
fn drift_made_with_systemctl_is_reported_repaired_and_left_alone_by_dry_run() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    w.expect(&["apply"], 0);
    let alice = "ds01-student-alice.slice";
    let john = "ds01-student-john_doe.slice";
    w.set_property(alice, &["MemoryMax=1G"]);
    w.set_property(john, &["TasksMax=infinity"]);

    let out = w.run(&["verify"]);
    assert_eq!(out.code, Some(3), "{out}");
    let block = verify_block(&out.stdout, alice);
    assert!(
        block.contains("    drift    MemoryMax: expected 96G, actual 1G"),
        "{out}"
    );
    assert!(block.contains("    ok       TasksMax=12288"), "{out}");
    let block = verify_block(&out.stdout, john);
    assert!(
        block.contains("    missing  TasksMax: expected 12288, not set"),
        "{out}"
    );
    assert!(out.stdout.contains("DRIFT: "), "{out}");

    let report = w.json(&["verify", "--format", "json"], 3);
    assert_eq!(report["holds"], false);
    assert_eq!(report["counts"]["drift"], 1, "{report}");
    assert_eq!(report["counts"]["missing"], 1, "{report}");
    let m = verify_entry(&report, alice, "MemoryMax");
    assert_eq!(m["status"], "drift", "{m}");
    assert_eq!(
        (m["expected"].as_str(), m["actual"].as_str()),
        (Some("96G"), Some("1G")),
        "{m}"
    );
    assert_eq!(m["actual_value"], 1u64 << 30, "{m}");
    assert_eq!(verify_entry(&report, john, "TasksMax")["status"], "missing");

    let diff = "~ ds01-student-alice.slice\n    ~ MemoryMax 1G -> 96G\n\
                ~ ds01-student-john_doe.slice\n    ~ TasksMax infinity -> 12288\n";
    let dropins = w.control_mtimes();
    let records = w.records();
    assert!(!records.is_empty(), "apply recorded nothing");
    std::thread::sleep(Duration::from_millis(20));
    let out = w.expect(&["apply", "--dry-run"], 0).stdout;
    assert!(out.starts_with(diff), "{out}");
    assert!(out.contains("dry run: would write to 2 of "), "{out}");
    assert_eq!(w.control_mtimes(), dropins, "--dry-run wrote a drop-in");
    assert_eq!(
        w.records(),
        records,
        "--dry-run changed the ownership records"
    );
    w.expect(&["verify"], 3);

    let out = w.expect(&["apply"], 0).stdout;
    assert!(out.starts_with(diff), "{out}");
    assert!(out.contains("applied: 2 writes"), "{out}");
    // Only the two drifted drop-ins were rewritten.
    let after = w.control_mtimes();
    let rewritten: Vec<String> = after
        .iter()
        .filter(|(p, t)| dropins.get(*p) != Some(t))
        .map(|(p, _)| p.rsplit('/').take(2).collect::<Vec<_>>().join(" in "))
        .collect();
    assert_eq!(
        rewritten,
        [
            format!("50-MemoryMax.conf in {alice}.d"),
            format!("50-TasksMax.conf in {john}.d")
        ]
    );
    assert_eq!(w.limits(alice), STUDENT_LIMITS);
    assert_eq!(w.limits(john), STUDENT_LIMITS);
    w.expect(&["verify"], 0);
}

#[test]
fn old_slices_of_moved_removed_and_promoted_users_lose_only_our_limits() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    w.expect(&["apply"], 0);
    let (alice, r_chen, john, h_baker) = (
        "ds01-student-alice.slice",
        "ds01-researcher-r_chen.slice",
        "ds01-student-john_doe.slice",
        "ds01-student-h_baker.slice",
    );
    // What others set: on a slice of ours, on a ds01 slice we never touched, outside ds01.
    let ghost = "ds01-faculty-ghost.slice";
    w.set_property(alice, &["CPUWeight=50"]);
    w.set_property(ghost, &["TasksMax=77"]);
    // Active, so that apply surely sees it among the loaded ds01 slices.
    let out = w.sb.systemd_run(&[
        "--unit=ghost.service",
        &format!("--slice={ghost}"),
        "sleep",
        "infinity",
    ]);
    assert!(out.status.success(), "{out:?}");
    w.set_property("user.slice", &["MemoryMax=1G"]);
    // A record for a foreign unit (planted, or left by some other tool) is no licence either.
    fs::write(w.state().join("owned/user.slice"), "MemoryMax\nTasksMax\n").unwrap();

    // alice moves to researcher, r.chen leaves the researcher file (and so falls back to the
    // default group, where nobody asked for a slice yet), john.doe becomes an admin, and
    // h.baker leaves the default group's own file: still a student, served by the hook.
    w.write(
        "groups/student.members",
        "204214@hertie-school.lan\nAnna-Lena.Mueller\n",
    );
    w.write("groups/researcher.members", "maria.garcia\nalice\n");
    w.write("groups/admin.members", "datasciencelab\njohn.doe\n");

    let out = w.expect(&["apply"], 0).stdout;
    let heads: Vec<&str> = out.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(
        heads[..heads.len() - 1],
        [
            "+ ds01-researcher-alice.slice",
            &format!("- {r_chen}"),
            &format!("- {alice}"),
            &format!("- {john}"),
        ],
        "{out}"
    );
    assert!(
        heads[heads.len() - 1].starts_with("applied: 4 writes, "),
        "{out}"
    );
    assert!(out.contains(&format!("- {alice}\n    ~ CPUQuota 9600% -> infinity\n    ~ MemoryMax 96G -> infinity\n    ~ MemoryHigh 86G -> infinity\n    ~ TasksMax 12288 -> infinity\n")), "{out}");
    for slice in [alice, r_chen, john] {
        assert_eq!(w.limits(slice), NO_LIMITS, "{slice}");
        assert_eq!(w.record(slice), None, "{slice} is still recorded as ours");
    }
    // Gone for good, not just until the next reload or reboot.
    let out = w.sb.systemctl(&["daemon-reload"]);
    assert!(out.status.success(), "{out:?}");
    for slice in [alice, r_chen, john] {
        assert_eq!(w.limits(slice), NO_LIMITS, "{slice} after daemon-reload");
    }
    assert_eq!(
        w.limits(h_baker),
        STUDENT_LIMITS,
        "the hook's user lost limits"
    );
    assert!(w.record(h_baker).is_some());
    w.assert_user_as_planned("alice");
    assert_eq!(w.limits("ds01-admin-john_doe.slice"), NO_LIMITS);
    // What others set is still there.
    assert_eq!(w.show(alice, "CPUWeight"), "50");
    assert_eq!(w.show(ghost, "TasksMax"), "77");
    assert_eq!(w.show("user.slice", "MemoryMax"), (1u64 << 30).to_string());
    assert_eq!(w.show("user.slice", "TasksMax"), "infinity");
    assert!(w.record("user.slice").is_some());

    let out = w.expect(&["apply"], 0).stdout;
    assert!(out.starts_with("nothing to do"), "{out}");
    // verify still points at the foreign limit, and says whose it is.
    let out = w.run(&["verify"]);
    assert_eq!(out.code, Some(3), "{out}");
    let block = verify_block(&out.stdout, ghost);
    assert!(
        block.starts_with(&format!(
            "{ghost} (active, stale: not in the configuration)\n    stale    TasksMax=77 still in \
             force (not set by ds01-slices: left alone by apply)"
        )),
        "{out}"
    );
    assert_eq!(block.lines().count(), 2, "{out}");
    w.expect(&["verify", "--user", "alice"], 0);
    w.expect(&["verify", "--user", "h.baker@hertie-school.lan"], 0);
    w.expect(&["verify", "--user", "john.doe"], 0);
}
