//! `hook pre-create USER` against a real systemd: exactly the slice name on stdout, the
//! limits in place before the container starts, and agreement among concurrent hooks.

use std::collections::BTreeMap;
use std::fs;
use std::sync::{Arc, Barrier};

use crate::support::{Run, World, EXAMPLE, STUDENT_LIMITS};

/// What the ownership record of a user slice with every limit set holds.
const USER_RECORD: &str = "CPUQuotaPerSecUSec\nMemoryMax\nMemoryHigh\nTasksMax\n";
/// ... and of a parent slice.
const PARENT_RECORD: &str = "CPUAccounting\nMemoryAccounting\nTasksAccounting\nIOAccounting\n";

fn hook(w: &World, user: &str) -> Run {
    w.run(&["hook", "pre-create", user])
}

#[test]
fn hook_prints_only_the_slice_and_sets_its_limits_first() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    let cases = [
        ("alice", "ds01-student-alice.slice"),
        ("h.baker@hertie-school.lan", "ds01-student-h_baker.slice"),
        ("r.chen@hertie-school.lan", "ds01-researcher-r_chen.slice"),
        // In no members file: the default group's limits.
        ("zoe", "ds01-student-zoe.slice"),
    ];
    for (user, slice) in cases {
        let out = hook(&w, user);
        assert_eq!(out.code, Some(0), "{user}: {out}");
        assert_eq!(out.stdout, format!("{slice}\n"), "{user}: {out}");
        w.assert_user_as_planned(user);
        assert_eq!(w.record(slice).as_deref(), Some(USER_RECORD), "{slice}");
    }
    assert_eq!(w.limits("ds01-student-zoe.slice"), STUDENT_LIMITS);
    for parent in ["ds01.slice", "ds01-student.slice", "ds01-researcher.slice"] {
        assert_eq!(w.record(parent).as_deref(), Some(PARENT_RECORD), "{parent}");
        assert_eq!(w.show(parent, "MemoryAccounting"), "yes", "{parent}");
    }

    // A slice already right is only read.
    let before = w.control_mtimes();
    std::thread::sleep(std::time::Duration::from_millis(20));
    for (user, slice) in cases {
        let out = hook(&w, user);
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (Some(0), &*format!("{slice}\n")),
            "{out}"
        );
    }
    assert_eq!(
        w.control_mtimes(),
        before,
        "a hook rewrote a slice that was in sync"
    );

    // The hook's unlisted user keeps the limits through a full apply.
    let out = w.expect(&["apply"], 0).stdout;
    assert!(!out.contains("ds01-student-zoe.slice"), "{out}");
    assert_eq!(w.limits("ds01-student-zoe.slice"), STUDENT_LIMITS);
    w.expect(&["verify"], 0);
}

#[test]
fn hook_with_a_bad_user_name_exits_2_with_empty_stdout() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    for user in ["@domain", "@hertie-school.lan"] {
        let out = hook(&w, user);
        assert_eq!(out.code, Some(2), "{user}: {out}");
        assert_eq!(out.stdout, "", "{user}: {out}");
        assert!(
            out.stderr.contains(&format!(
                "user name {user:?} has nothing left after sanitization"
            )),
            "{user}: {out}"
        );
    }
    assert!(w.control_mtimes().is_empty(), "{:?}", w.control_mtimes());
}

#[test]
fn twenty_concurrent_hooks_agree_and_leave_a_consistent_record() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    let w = Arc::new(w);
    // Same users many times, listed and unlisted, and LDAP-style names, all at once.
    let users: Vec<(&str, &str)> = [
        ("alice", "ds01-student-alice.slice"),
        ("zoe", "ds01-student-zoe.slice"),
        ("r.chen@hertie-school.lan", "ds01-researcher-r_chen.slice"),
        (
            "prof.schmidt@hertie-school.lan",
            "ds01-faculty-prof_schmidt.slice",
        ),
        ("maria.garcia", "ds01-researcher-maria_garcia.slice"),
        ("datasciencelab", "ds01-admin-datasciencelab.slice"),
        ("new.user@hertie-school.lan", "ds01-student-new_user.slice"),
    ]
    .into_iter()
    .cycle()
    .take(20)
    .collect();
    let start = Arc::new(Barrier::new(users.len()));
    let threads: Vec<_> = users
        .iter()
        .map(|&(user, _)| {
            let (w, start) = (Arc::clone(&w), Arc::clone(&start));
            std::thread::spawn(move || {
                let mut cmd = w.cmd(&["hook", "pre-create", user]);
                start.wait();
                Run::of(&mut cmd)
            })
        })
        .collect();
    for (t, (user, slice)) in threads.into_iter().zip(&users) {
        let out = t.join().unwrap();
        assert_eq!(out.code, Some(0), "{user}: {out}");
        assert_eq!(out.stdout, format!("{slice}\n"), "{user}: {out}");
    }

    let mut expected: BTreeMap<&str, Option<&str>> = users
        .iter()
        .map(|&(_, slice)| (slice, Some(USER_RECORD)))
        .collect();
    // Admins have no cap: nothing set, nothing recorded.
    expected.insert("ds01-admin-datasciencelab.slice", None);
    for parent in [
        "ds01.slice",
        "ds01-student.slice",
        "ds01-researcher.slice",
        "ds01-faculty.slice",
        "ds01-admin.slice",
    ] {
        expected.insert(parent, Some(PARENT_RECORD));
    }
    let on_disk: Vec<String> = w.records().into_keys().collect();
    let mut want: Vec<&str> = expected
        .iter()
        .filter(|(_, r)| r.is_some())
        .map(|(s, _)| *s)
        .collect();
    want.sort();
    assert_eq!(
        on_disk, want,
        "records (and no temporary files) in the state directory"
    );
    for (slice, record) in &expected {
        assert_eq!(w.record(slice).as_deref(), *record, "{slice}");
    }
    for (user, _) in &users[..7] {
        w.assert_user_as_planned(user);
        w.expect(&["verify", "--user", user], 0);
    }
    assert_eq!(w.limits("ds01-student-new_user.slice"), STUDENT_LIMITS);
}

#[test]
fn hook_takes_a_shortcut_only_through_a_configuration_validated_as_it_is_now() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    let stamp = || fs::read_to_string(w.state().join("validated-config")).ok();
    w.expect(&["apply"], 0);
    let accepted = stamp().expect("apply records the validated configuration");
    let out = hook(&w, "alice");
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "ds01-student-alice.slice\n"),
        "{out}"
    );

    // A bad line anywhere changes the digest: the hook validates everything and refuses.
    let students = w.read("groups/student.members");
    w.write("groups/student.members", &format!("{students}@nobody\n"));
    let out = hook(&w, "alice");
    assert_eq!(out.code, Some(2), "{out}");
    assert_eq!(out.stdout, "", "{out}");
    assert!(
        out.stderr.contains("student.members:7:")
            && out.stderr.contains("has nothing left after sanitization"),
        "{out}"
    );
    assert_eq!(
        stamp(),
        Some(accepted.clone()),
        "an invalid configuration was recorded"
    );

    // Moved to another group: the hook follows the files, never a remembered answer.
    w.write("groups/student.members", &students.replace("alice\n", ""));
    let researchers = w.read("groups/researcher.members");
    w.write(
        "groups/researcher.members",
        &format!("{researchers}alice\n"),
    );
    for _ in 0..2 {
        // The first run validates and records, the second takes the shortcut.
        let out = hook(&w, "alice");
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (Some(0), "ds01-researcher-alice.slice\n"),
            "{out}"
        );
        w.assert_user_as_planned("alice");
    }
    assert_ne!(stamp(), Some(accepted));
}

#[test]
fn the_hook_starts_stopped_parent_slices_before_it_writes() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    w.expect(&["apply"], 0);
    let out = w.sb.systemctl(&["stop", "ds01.slice"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(w.show("ds01-student.slice", "ActiveState"), "inactive");
    let out = hook(&w, "newcomer");
    assert_eq!(out.code, Some(0), "{out}");
    for parent in ["ds01.slice", "ds01-student.slice"] {
        assert_eq!(w.show(parent, "ActiveState"), "active", "{parent}");
    }
    // The user's own slice is left to the container runtime.
    assert_eq!(
        w.show("ds01-student-newcomer.slice", "ActiveState"),
        "inactive"
    );
    w.assert_user_as_planned("newcomer");
}

/// A hook run by a user other than root answers from root's configuration and the system bus
/// only: its answer places a container. Before: nobody, with a configuration of their own that
/// made them an admin, got `ds01-admin-nobody.slice` (uncapped) and exit 0.
#[test]
fn a_hook_run_by_another_user_trusts_only_roots_configuration_and_the_system_bus() {
    use std::os::unix::fs::{chown, PermissionsExt};
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    // The parents as the configuration has them, so that a hook with nothing to write
    // (an admin's slice has no limits) needs no privilege.
    w.expect(&["apply"], 0);
    // On the sandbox's own /tmp (gone with it): the binary, root's configuration, and a copy
    // owned by nobody in which nobody is an admin.
    let inside = "/tmp/ds01-hook-nobody";
    let bin = format!("{inside}/ds01-slices");
    crate::support::copy_dir(&w.config_dir(), &w.sb.host_path(&format!("{inside}/root")));
    crate::support::copy_dir(&w.config_dir(), &w.sb.host_path(&format!("{inside}/own")));
    fs::write(
        w.sb.host_path(&format!("{inside}/own/groups/admin.members")),
        "nobody\n",
    )
    .unwrap();
    for d in ["", "/root", "/root/groups", "/own", "/own/groups"] {
        let p = w.sb.host_path(&format!("{inside}{d}"));
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    for f in [
        "/own",
        "/own/groups",
        "/own/resource-limits.yaml",
        "/own/groups/admin.members",
    ] {
        chown(
            w.sb.host_path(&format!("{inside}{f}")),
            Some(65534),
            Some(65534),
        )
        .unwrap();
    }
    fs::create_dir(w.sb.host_path(&format!("{inside}/state"))).unwrap();
    fs::set_permissions(
        w.sb.host_path(&format!("{inside}/state")),
        fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    fs::copy(crate::support::BIN, w.sb.host_path(&bin)).unwrap();
    fs::set_permissions(w.sb.host_path(&bin), fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |config: &str, bus: &str| -> Run {
        let config = format!("{inside}/{config}/resource-limits.yaml");
        let state = format!("{inside}/state");
        w.sb.exec(&[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &bin,
            "hook",
            "pre-create",
            "nobody",
            "--bus",
            bus,
            "--config",
            &config,
            "--state-dir",
            &state,
        ])
        .into()
    };
    let system = "unix:path=/run/dbus/system_bus_socket";
    // Root's configuration, the system bus: nobody is a student, whose slice it cannot write.
    let out = as_nobody("root", system);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("access denied by systemd"), "{out}");
    // Their own configuration: refused, whatever it says.
    let out = as_nobody("own", system);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stdout.is_empty()
            && out.stderr.contains("refusing configuration file")
            && out
                .stderr
                .contains("every hook, reads only configuration that only root can change"),
        "{out}"
    );
    // Another bus than the system's: refused before it is asked anything.
    let out = as_nobody("root", "unix:path=/tmp/ds01-hook-nobody/bus");
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stdout.is_empty() && out.stderr.contains("talks only to the system bus"),
        "{out}"
    );
    // No record of the validation is kept in (or read from) a directory nobody may write.
    assert!(
        !w.sb
            .host_path(&format!("{inside}/state/validated-config"))
            .exists(),
        "a non-root hook wrote a record"
    );
}
