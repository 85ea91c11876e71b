//! The package's maintainer scripts and systemd's reload (issue 23, item 12): a reinstall while
//! a unit runs in a user's slice does not reload systemd (that unit's device program and one
//! outside ds01.slice keep their ids), still applies the limits, and says in one line why and
//! what the admin runs; with nothing running, it reloads (the program outside gets a new id).
//! Run inside the package test's VM (package.rs), after its reboot, with the configuration and
//! the units in place.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::gpu::device_program_ids;
use crate::package::{install, ALICE_MEMORY_MAX};
use crate::support::guest_deadline;
use crate::support::vm::Vm;

/// A unit in a user's slice whose device rules systemd set, as a GPU container's are.
const JOB: &str = "ds01-package-gpu-job.service";
/// A unit outside ds01.slice with device rules of its own: its program is replaced at each
/// reload, whatever runs in ds01 slices.
const WITNESS: &str = "ds01-package-reload-witness.service";

/// The ids of the BPF device programs attached to `unit`'s cgroup in the guest.
fn device_programs(vm: &Vm, unit: &str) -> Vec<u64> {
    device_program_ids(&vm.sh_ok(&format!(
        "bpftool --json cgroup show /sys/fs/cgroup$(systemctl show -p ControlGroup --value {unit})"
    )))
}

/// The exporter's main PID: the same one when the scripts left the units alone.
fn exporter_pid(vm: &Vm) -> String {
    vm.sh_ok("systemctl show -p MainPID --value ds01-slices-exporter.service")
        .trim()
        .to_owned()
}

pub fn reinstall_reloads_only_when_nothing_runs(vm: &Vm, deb: &Path) {
    vm.sh_ok(&format!(
        "systemd-run --quiet --unit={WITNESS} -p DevicePolicy=closed sleep infinity && \
         systemd-run --quiet --unit={JOB} --slice=ds01-student-alice.slice -p DevicePolicy=closed -p 'DeviceAllow=/dev/null rw' sleep infinity"
    ));
    let before = (device_programs(vm, WITNESS), device_programs(vm, JOB));
    assert!(
        !before.0.is_empty() && !before.1.is_empty(),
        "no device programs: {before:?}"
    );
    let pid = exporter_pid(vm);

    // A unit runs in alice's slice: no reload, the limits applied, the reason said.
    let withheld = install(vm, deb);
    println!("dpkg -i (reinstall) while {JOB} runs:\n{withheld}");
    let line = withheld
        .lines()
        .find(|l| l.starts_with("ds01-slices: systemd not reloaded: "))
        .unwrap_or_else(|| panic!("no line on the withheld reload:\n{withheld}"));
    for said in [
        &format!("1 unit runs in ds01 slices ({JOB} in ds01-student-alice.slice: 1 process)"),
        "Failed to initialize NVML",
        "the limits were applied over D-Bus",
        "systemctl daemon-reload && systemctl restart ds01-slices-apply.service",
    ] {
        assert!(line.contains(said), "no {said:?} in: {line}");
    }
    let after = (device_programs(vm, WITNESS), device_programs(vm, JOB));
    assert_eq!(after, before, "the reinstall reloaded systemd");
    assert_eq!(
        exporter_pid(vm),
        pid,
        "the reinstall restarted the exporter"
    );
    assert!(vm
        .sh_ok("systemctl show -p MemoryMax ds01-student-alice.slice")
        .contains(ALICE_MEMORY_MAX));
    println!("device programs ({WITNESS}, {JOB}) before and after the reinstall: {before:?}");

    // Nothing runs: the reinstall reloads, and restarts the units.
    vm.sh_ok(&format!("systemctl stop {JOB}"));
    let reloaded = install(vm, deb);
    println!("dpkg -i (reinstall) with nothing running:\n{reloaded}");
    assert!(!reloaded.contains("not reloaded"), "{reloaded}");
    // systemd attaches the new program after the reload's reply, from its queue of cgroups to
    // realize: waited for, not read once.
    let limit = guest_deadline(Duration::from_secs(30));
    let started = Instant::now();
    let replaced = loop {
        let now = device_programs(vm, WITNESS);
        if now != before.0 && now.len() == before.0.len() {
            break now;
        }
        assert!(
            started.elapsed() < limit,
            "no reload: {WITNESS}'s device programs {now:?} after {limit:?}, {:?} before",
            before.0
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    println!("device programs of {WITNESS} after the reinstall with nothing running: {replaced:?}");
    assert_ne!(exporter_pid(vm), pid, "the exporter was not restarted");
    vm.sh_ok(&format!("systemctl stop {WITNESS}"));
}
