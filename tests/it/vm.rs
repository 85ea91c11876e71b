//! The cgroup v2 host: the whole suite, run again inside a Debian VM whose systemd is PID 1 on the
//! unified hierarchy (support/vm.rs). There every sandbox test boots its systemd on v2 with real
//! controllers, and the Docker tests (tests/it/docker.rs) run against the VM's own systemd.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::support::skip;
use crate::support::vm::{self, in_vm_guest, run_test_binary, Vm};

/// Boots the VM of `suite` and runs this test binary inside it with `args` and the libtest
/// `filters` (or those of DS01_VM_TESTS, when set); asserts it passed and prints its summary
/// line (past libtest's capture, so that CI's log shows it).
fn suite_in_vm(suite: &str, args: &[&str], filters: &[&str], with_docker: bool) {
    if in_vm_guest() {
        return; // this binary is the one inside the VM
    }
    if let Some(reason) = vm::unavailable() {
        skip("the cgroup v2 VM", &reason);
        return;
    }
    let started = Instant::now();
    let vm = Vm::boot(suite).unwrap_or_else(|e| panic!("booting the {suite} VM: {e}"));
    let booted = started.elapsed();
    let exe = std::env::current_exe().expect("the test binary's path");
    // DS01_VM_TESTS="apply:: hook::" runs only those inside (a filter as libtest takes it).
    let chosen = std::env::var("DS01_VM_TESTS").ok();
    let mut args: Vec<&str> = args.to_vec();
    match &chosen {
        Some(chosen) => args.extend(chosen.split_whitespace()),
        None => args.extend_from_slice(filters),
    }
    let run = run_test_binary(&vm, &exe, &args, Duration::from_secs(3600))
        .unwrap_or_else(|e| panic!("{e}"));
    let summary = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("test result: "))
        .collect::<Vec<_>>()
        .join("; ");
    let _ = writeln!(
        std::io::stderr(),
        "VM {suite} ({}): booted in {:.1} s, suite in {:.0} s: {summary}",
        vm.image.versions().lines().collect::<Vec<_>>().join(", "),
        booted.as_secs_f64(),
        (started.elapsed() - booted).as_secs_f64(),
    );
    let docker_passed = crate::docker::TESTS
        .iter()
        .filter(|t| run.stdout.contains(&format!("test {t} ... ok")))
        .count();
    assert!(
        run.code == Some(0) && summary.starts_with("test result: ok."),
        "the suite inside the {suite} VM failed (exit {:?}):\n{}\n--- the whole output:\n{}\n--- stderr:\n{}",
        run.code,
        failure_reports(&run.stdout),
        run.stdout,
        run.stderr
    );
    if chosen.is_none() && with_docker {
        assert_eq!(
            docker_passed,
            crate::docker::TESTS.len(),
            "not every Docker test passed inside the VM:\n{}",
            run.stdout
        );
    }
    // The figures the Docker tests print (cgroup paths, tasks, OOM kills, CPU share, device
    // programs).
    for line in run.stdout.lines().chain(run.stderr.lines()) {
        if ["container cgroup:", "tasks:", "memory:", "cpu:", "gpu:"]
            .iter()
            .any(|p| line.starts_with(p))
        {
            let _ = writeln!(std::io::stderr(), "VM {suite}: {line}");
        }
    }
}

/// libtest's report of each failed test (its "---- NAME stdout ----" block and what follows, up
/// to the list of names), so that it leads the panic message: CI shows a long message's start
/// and end only, and the whole output of a suite run buries it in the middle.
fn failure_reports(stdout: &str) -> String {
    // With --show-output, passed tests' blocks come first, under "successes:".
    let failed = stdout
        .find("\nfailures:\n\n---- ")
        .map_or("", |at| &stdout[at..]);
    let reports: Vec<&str> = failed
        .split("\n---- ")
        .skip(1)
        .map(|block| block.split("\n\nfailures:\n").next().unwrap_or(block))
        .collect();
    if reports.is_empty() {
        return "(no test reported a failure: the run itself failed; see its output)".into();
    }
    reports
        .iter()
        .map(|r| format!("---- {}", r.trim_end()))
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[test]
fn failure_reports_lead_with_each_failed_test() {
    let stdout = "running 2 tests\ntest a ... ok\ntest b ... FAILED\n\nsuccesses:\n\n---- a stdout ----\nfine\n\n\nsuccesses:\n    a\n\nfailures:\n\n---- b stdout ----\nthread 'b' panicked at x.rs:1:1:\nboom\n\n---- c stdout ----\nbang\n\n\nfailures:\n    b\n    c\n\ntest result: FAILED. 1 passed; 2 failed\n";
    assert_eq!(
        failure_reports(stdout),
        "---- b stdout ----\nthread 'b' panicked at x.rs:1:1:\nboom\n\n---- c stdout ----\nbang"
    );
    assert!(failure_reports("test result: ok.").starts_with("(no test"));
}

/// The tests that run again inside the bookworm VM (libtest filters: a test runs when its name
/// contains one of them). Everything runs on the v1 sandbox; a test belongs here when its result
/// can differ on cgroup v2 or needs what only the VM has (Docker, the unified hierarchy's files).
/// The one list of what the v2 host runs: a new test that must hold there adds its path here.
pub const V2_SUITE: &[&str] = &[
    "apply::",
    "architecture::",
    "cli::",
    "containers::",
    "counters::",
    "dbus_contract::",
    "docker::",
    "doctor::",
    "failsafe::",
    "fleet::",
    "gate::",
    "gpu::",
    "hook::",
    "metrics::",
    "package::",
    "render::",
    "sandbox::",
    "scale::",
    "status::",
    "support::",
];

/// Debian 12 (DS01's release): systemd 252, kernel 6.1, cgroup v2.
#[test]
fn suite_on_cgroup_v2() {
    suite_in_vm(
        "bookworm",
        &["--test-threads=2", "--show-output", "--skip", "vm::"],
        V2_SUITE,
        true,
    );
}

/// Debian 13: systemd 257, kernel 6.12, cgroup v2. The D-Bus contract (dbus/) and the apply and
/// verify tests: what a newer systemd may change under us.
#[test]
fn contract_apply_and_verify_on_systemd_257() {
    suite_in_vm(
        "trixie",
        &["--test-threads=2", "--skip", "vm::"],
        &["dbus_contract::", "apply::", "sandbox::limits"],
        false,
    );
}

/// The product on the host, driving the guest's systemd (PID 1, cgroup v2) through the bus
/// bridge, as `systemctl -H` would: a zbus `unixexec:` address that runs socat to the VM's port.
#[test]
fn the_binary_drives_the_guests_systemd_through_the_bridge() {
    if in_vm_guest() {
        return;
    }
    if let Some(reason) = vm::unavailable() {
        skip("the cgroup v2 VM", &reason);
        return;
    }
    let vm = Vm::boot("bookworm").unwrap_or_else(|e| panic!("booting the VM: {e}"));
    let dir = crate::support::Scratch::new("bridge");
    crate::support::copy_dir(
        std::path::Path::new(crate::support::EXAMPLE),
        &dir.join("config"),
    );
    dir.mkdir("state");
    // A port per client (a virtio port has no connection boundaries: test-vm.md).
    let run = |args: &[&str]| {
        let bus = vm.bus_address().expect("a free bus port");
        let mut cmd = crate::support::ds01(args);
        cmd.arg("--config")
            .arg(dir.join("config/resource-limits.yaml"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--bus")
            .arg(&bus)
            // Rendered drop-ins would be the host's business, not the guest's: D-Bus only.
            .arg("--root")
            .arg(dir.join("root"));
        crate::support::Run::of(&mut cmd)
    };
    dir.mkdir("root");
    let applied = run(&["apply", "--user", "alice"]);
    assert_eq!(applied.code, Some(0), "{applied}");
    let shown = vm.sh_ok(
        "systemctl show --property=CPUQuotaPerSecUSec,MemoryMax,MemoryHigh,TasksMax ds01-student-alice.slice",
    );
    let mut shown: Vec<&str> = shown.lines().collect();
    shown.sort_unstable();
    assert_eq!(
        shown,
        [
            "CPUQuotaPerSecUSec=1min 36s",
            "MemoryHigh=92341796864",
            "MemoryMax=103079215104",
            "TasksMax=12288"
        ],
        "what the guest's systemd holds"
    );
    // A second client, on the next port: in sync, nothing to write.
    let again = run(&["apply", "--user", "alice", "--json"]);
    assert_eq!(again.code, Some(0), "{again}");
    let report: serde_json::Value = serde_json::from_str(&again.stdout)
        .unwrap_or_else(|e| panic!("apply --json printed no JSON ({e}):\n{again}"));
    assert_eq!(report["writes"], 0, "the second apply wrote: {again}");
    assert!(vm
        .sh_ok("ls /etc/systemd/system.control/ds01-student-alice.slice.d/")
        .contains("50-TasksMax.conf"));
}
