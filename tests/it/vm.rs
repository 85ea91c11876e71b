//! The cgroup v2 host: what can differ there ([`V2_SUITE`]), run again inside a Debian VM whose
//! systemd is PID 1 on the unified hierarchy (support/vm.rs). There every sandbox test boots its
//! systemd on v2 with real controllers, and the Docker tests (tests/it/docker.rs) run against the
//! VM's own systemd.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::support::skip;
use crate::support::vm::{
    self, in_vm_guest, run_test_binary, run_test_binary_timed, test_times, Vm,
};

/// Boots the VM of `suite` and runs this test binary inside it with `args` and the libtest
/// `filters` (or those of DS01_VM_TESTS, when set); prints its summary line (past libtest's
/// capture, so that CI's log shows it). Then `after` gets the same guest (a boot costs 15 s on
/// an idle machine, minutes on a busy one): a host-side test that leaves the guest's systemd as
/// a test may. Fails if either failed, the suite's failure first.
fn suite_in_vm(
    suite: &str,
    args: &[&str],
    filters: &[&str],
    with_docker: bool,
    after: Option<fn(&Vm)>,
) {
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
    let verdict = run_suite(&vm, args, filters, with_docker);
    let _ = writeln!(
        std::io::stderr(),
        "VM {suite} ({}): booted in {:.1} s, suite in {:.0} s (QEMU used {:.0} CPU-s in all): {}",
        vm.image.versions().lines().collect::<Vec<_>>().join(", "),
        booted.as_secs_f64(),
        (started.elapsed() - booted).as_secs_f64(),
        vm.cpu_time().unwrap_or_default().as_secs_f64(),
        verdict.as_ref().map_or("FAILED", |s| s.as_str()),
    );
    let after_started = Instant::now();
    let afterwards =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| after.map(|f| f(&vm))));
    if after.is_some() {
        let _ = writeln!(
            std::io::stderr(),
            "VM {suite}: the host-side checks in the same guest took {:.0} s",
            after_started.elapsed().as_secs_f64()
        );
    }
    if let Err(e) = verdict {
        panic!("{e}");
    }
    if let Err(panicked) = afterwards {
        std::panic::resume_unwind(panicked);
    }
}

/// Runs the suite in `vm`: its summary line, or why it failed.
fn run_suite(
    vm: &Vm,
    args: &[&str],
    filters: &[&str],
    with_docker: bool,
) -> Result<String, String> {
    let suite = &vm.image.suite;
    let exe = std::env::current_exe().expect("the test binary's path");
    // DS01_VM_TESTS="apply:: hook::" runs only those inside (a filter as libtest takes it).
    let chosen = std::env::var("DS01_VM_TESTS").ok();
    // DS01_VM_TIMES=1: the tests one at a time, each one's time printed (slowest first), as
    // libtest's unstable --report-time would.
    let timed = std::env::var("DS01_VM_TIMES").is_ok_and(|v| v == "1");
    let mut args: Vec<&str> = args
        .iter()
        .map(|a| match *a {
            a if timed && a.starts_with("--test-threads=") => "--test-threads=1",
            a => a,
        })
        .collect();
    match &chosen {
        Some(chosen) => args.extend(chosen.split_whitespace()),
        None => args.extend_from_slice(filters),
    }
    let limit = Duration::from_secs(3600);
    let mut run = if timed {
        run_test_binary_timed(vm, &exe, &args, limit)?
    } else {
        run_test_binary(vm, &exe, &args, limit)?
    };
    if timed {
        let (times, plain) = test_times(&run.stdout);
        run.stdout = plain;
        let total: f64 = times.iter().map(|t| t.1).sum();
        let _ = writeln!(
            std::io::stderr(),
            "VM {suite}: {} tests one at a time, {total:.0} s in all:",
            times.len()
        );
        for (name, secs) in &times {
            let _ = writeln!(std::io::stderr(), "VM {suite}: {secs:8.1} s  {name}");
        }
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
    let summary = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("test result: "))
        .collect::<Vec<_>>()
        .join("; ");
    if run.code != Some(0) || !summary.starts_with("test result: ok.") {
        return Err(format!(
            "the suite inside the {suite} VM failed (exit {:?}):\n{}\n--- the whole output:\n{}\n--- stderr:\n{}",
            run.code,
            failure_reports(&run.stdout),
            run.stdout,
            run.stderr
        ));
    }
    let docker_passed = crate::docker::TESTS
        .iter()
        .filter(|t| run.stdout.contains(&format!("test {t} ... ok")))
        .count();
    if chosen.is_none() && with_docker && docker_passed != crate::docker::TESTS.len() {
        return Err(format!(
            "{docker_passed} of the {} Docker tests passed inside the VM:\n{}",
            crate::docker::TESTS.len(),
            run.stdout
        ));
    }
    Ok(summary)
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
/// contains one of them; [`every_vm_suite_filter_names_tests_of_this_binary`] checks each).
/// Everything runs on the v1 sandbox; a test belongs here when its result can differ on cgroup
/// v2 or needs what only the VM has: the kernel's v2 files (cpu.max, memory.max and .high,
/// pids.max, memory.events, PSI), MemoryHigh in force, OOM kills, Docker, the controllers, the
/// D-Bus contract. Pure command-line, configuration and rendering tests, and what only talks to
/// systemd over the bus (the same systemd 252 as on the sandbox), do not: TCG runs them ~10x
/// slower for no new answer. The one list of what the v2 host runs: a new test that must hold
/// there adds its path here, with its reason.
pub const V2_SUITE: &[&str] = &[
    // The limits in the kernel's v2 files (MemoryHigh among them: v1 has no file for it), a
    // busy loop throttled, and memory.max below what is in use.
    "apply::kernel::",
    // The D-Bus contract and our client against systemd 252 as DS01 runs it.
    "dbus_contract::our_proxies_and_client_round_trip_against_systemd",
    "dbus_contract::systemd_serves_every_member_we_use_as_committed_in_dbus_dir",
    // Docker exists only here: containers in the user's slice, limits across containers, a
    // container's BPF device program (what a reload would take from a GPU container), containers
    // started outside their user's slice, and the Docker API gate with real clients (its rollout
    // test boots a VM of its own from the host).
    "docker::",
    "gpu::a_containers_device_program_is_left_alone_and_a_reload_waits_for_the_admins_word",
    "containers::docker_containers_started_without_the_hooks_slice_are_found_with_their_names_and_owners",
    "gate::",
    // The cgroup version, the controllers in the group slices' subtree_control, MemoryHigh and
    // Docker's driver as found on v2.
    "doctor::doctor_names_the_cgroup_version_memory_high_and_dockers_driver",
    // An unrecorded slice's cgroup found at its v2 path (the hook reads before it writes).
    "failsafe::limits::the_hook_refuses_a_memory_max_below_what_the_slice_uses",
    // The harness on v2: limits enforced, memory accounted, nothing left behind.
    "sandbox::limits_set_over_the_bus_are_enforced_by_the_kernel",
    "sandbox::sandbox_memory_is_accounted_to_the_test_memory_cgroup",
    "sandbox::teardown_leaves_no_process_no_cgroup_and_no_file",
    // Usage, PSI, CPU time from cpu.stat, OOM kills from memory.events, and admission against
    // memory.current, all read from v2's files.
    "status::",
    // memory.events' high and max counts and cpu.stat's throttling, as v2 names them.
    "counters::",
];

/// Debian 12 (DS01's release): systemd 252, kernel 6.1, cgroup v2.
#[test]
fn suite_on_cgroup_v2() {
    suite_in_vm(
        "bookworm",
        &["--test-threads=2", "--show-output", "--skip", "vm::"],
        V2_SUITE,
        true,
        Some(the_binary_drives_the_guests_systemd_through_the_bridge),
    );
}

/// What the trixie VM runs (filters as in [`V2_SUITE`]): the D-Bus contract (dbus/) and the
/// apply and verify tests, what a newer systemd may change under us.
const SYSTEMD_257_SUITE: &[&str] = &["dbus_contract::", "apply::", "sandbox::limits"];

/// Debian 13: systemd 257, kernel 6.12, cgroup v2.
#[test]
fn contract_apply_and_verify_on_systemd_257() {
    suite_in_vm(
        "trixie",
        &["--test-threads=2", "--skip", "vm::"],
        SYSTEMD_257_SUITE,
        false,
        None,
    );
}

/// Every filter of the VM suites selects a test of this binary, and only tests whose name
/// begins with it (libtest matches a filter anywhere in a name: "hook::" would also pick up a
/// future "failsafe::hook::..."). A renamed or moved test fails here instead of silently
/// dropping out of the VM.
#[test]
fn every_vm_suite_filter_names_tests_of_this_binary() {
    if in_vm_guest() {
        return;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let listed = std::process::Command::new(&exe)
        .arg("--list")
        .env_remove("RUST_TEST_THREADS")
        .output()
        .expect("the test binary lists its tests");
    assert!(listed.status.success(), "{listed:?}");
    let listed = String::from_utf8_lossy(&listed.stdout);
    let names: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .collect();
    assert!(names.len() > 50, "too few tests listed:\n{listed}");
    let mut wrong = Vec::new();
    for filter in V2_SUITE.iter().chain(SYSTEMD_257_SUITE) {
        let matched: Vec<&&str> = names.iter().filter(|n| n.contains(filter)).collect();
        if matched.is_empty() {
            wrong.push(format!("{filter:?} matches no test"));
        }
        for name in matched.iter().filter(|n| !n.starts_with(filter)) {
            wrong.push(format!("{filter:?} also matches {name}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The product on the host, driving the guest's systemd (PID 1, cgroup v2) through the bus
/// bridge, as `systemctl -H` would: a zbus `unixexec:` address that runs socat to the port QEMU
/// forwards to the guest's bridge socket.
/// Run in the bookworm suite's guest after the suite (the Docker tests' slices, in groups of
/// their own, are left alone by this apply).
fn the_binary_drives_the_guests_systemd_through_the_bridge(vm: &Vm) {
    let dir = crate::support::Scratch::new("bridge");
    crate::support::copy_dir(
        std::path::Path::new(crate::support::EXAMPLE),
        &dir.join("config"),
    );
    dir.mkdir("state");
    let bus = vm
        .bus_address()
        .unwrap_or_else(|e| panic!("the guest's bus bridge: {e}"));
    // Only QEMU's forward reaches the bridge: a process in the guest gets no connection, so
    // no guest user (the Docker tests' callers) can be root on the bus through it.
    use crate::support::vm::{GUEST_ADDRESS, GUEST_BUS_PORT};
    for local in ["127.0.0.1", GUEST_ADDRESS] {
        let tried = vm.sh_ok(&format!(
            "timeout 5 bash -c 'exec 3<>/dev/tcp/{local}/{GUEST_BUS_PORT}' && echo connected || echo refused"
        ));
        assert_eq!(
            tried.trim(),
            "refused",
            "a guest process reached the bus bridge at {local}"
        );
    }
    // Each run is a client of its own: its own TCP connection, and so its own bridge.
    let run = |args: &[&str]| {
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
    // A second client, on a connection of its own: in sync, nothing to write.
    let again = run(&["apply", "--user", "alice", "--json"]);
    assert_eq!(again.code, Some(0), "{again}");
    let report: serde_json::Value = serde_json::from_str(&again.stdout)
        .unwrap_or_else(|e| panic!("apply --json printed no JSON ({e}):\n{again}"));
    assert_eq!(report["writes"], 0, "the second apply wrote: {again}");
    assert!(vm
        .sh_ok("ls /etc/systemd/system.control/ds01-student-alice.slice.d/")
        .contains("50-TasksMax.conf"));
}
