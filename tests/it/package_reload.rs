//! The package's maintainer scripts and systemd's reload (issue 23, item 12): a reinstall while
//! a unit runs in a user's slice does not reload systemd (that unit's device program and one
//! outside ds01.slice keep their ids), still applies the limits, and says in one line why and
//! what the admin runs; with nothing running, it reloads (the program outside gets a new id).
//! A removal while a unit runs withholds postrm's reload the same way.
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

/// Starts the witness and the job; their device programs.
fn start_units(vm: &Vm) -> (Vec<u64>, Vec<u64>) {
    vm.sh_ok(&format!(
        "systemd-run --quiet --unit={WITNESS} -p DevicePolicy=closed sleep infinity && \
         systemd-run --quiet --unit={JOB} --slice=ds01-student-alice.slice -p DevicePolicy=closed -p 'DeviceAllow=/dev/null rw' sleep infinity"
    ));
    let before = (device_programs(vm, WITNESS), device_programs(vm, JOB));
    assert!(
        !before.0.is_empty() && !before.1.is_empty(),
        "no device programs: {before:?}"
    );
    before
}

/// The maintainer script's one line on a withheld reload, checked for what it must say.
fn withheld_line(output: &str, also: &str) {
    let line = output
        .lines()
        .find(|l| l.starts_with("ds01-slices: systemd not reloaded: "))
        .unwrap_or_else(|| panic!("no line on the withheld reload:\n{output}"));
    for said in [
        &format!("1 unit runs in ds01 slices ({JOB} in ds01-student-alice.slice: 1 process)"),
        "Failed to initialize NVML",
        also,
    ] {
        assert!(line.contains(said), "no {said:?} in: {line}");
    }
}

/// `dpkg -r` while a unit runs in alice's slice: postrm withholds its reload (the device
/// programs keep their ids), says why, and removes prerm's copy of the binary; the limits stay.
/// Then the admin's reload, and the package installed again (nothing running) for what follows.
pub fn removal_withholds_the_reload_while_a_unit_runs(vm: &Vm, deb: &Path) {
    let before = start_units(vm);
    let mark = vm.sh_ok("date +%s").trim().to_owned();
    let removed = vm.sh_ok("dpkg -r ds01-slices 2>&1");
    println!("dpkg -r while {JOB} runs:\n{removed}");
    withheld_line(&removed, "systemd still lists the removed units");
    let after = (device_programs(vm, WITNESS), device_programs(vm, JOB));
    // PID 1 says "Reloading." at each daemon-reload (deb-systemd-helper made one after each
    // unit it masked, before the scripts gave it DPKG_ROOT).
    let reloads = vm.sh_ok(&format!(
        "journalctl -b -o cat --since=@{mark} _PID=1 | grep -c '^Reloading' || true"
    ));
    println!(
        "device programs ({WITNESS}, {JOB}) before dpkg -r {before:?}, after {after:?}; PID 1's reloads meanwhile: {}",
        reloads.trim()
    );
    assert_eq!(reloads.trim(), "0", "the removal reloaded systemd");
    assert_eq!(after, before, "the removal replaced device programs");
    assert_eq!(
        vm.sh_ok("test -e /run/ds01-slices-package && echo left || echo gone")
            .trim(),
        "gone",
        "prerm's copy of the binary"
    );
    assert!(vm
        .sh_ok("systemctl show -p MemoryMax ds01-student-alice.slice")
        .contains(ALICE_MEMORY_MAX));
    vm.sh_ok(&format!(
        "systemctl stop {JOB} {WITNESS} && systemctl daemon-reload"
    ));
    let again = install(vm, deb);
    assert!(!again.contains("not reloaded"), "{again}");
}

pub fn reinstall_reloads_only_when_nothing_runs(vm: &Vm, deb: &Path) {
    let before = start_units(vm);
    let pid = exporter_pid(vm);

    // A unit runs in alice's slice: no reload, the limits applied, the reason said.
    let withheld = install(vm, deb);
    println!("dpkg -i (reinstall) while {JOB} runs:\n{withheld}");
    withheld_line(&withheld, "the limits were applied over D-Bus");
    withheld_line(
        &withheld,
        "systemctl daemon-reload && systemctl restart ds01-slices-apply.service",
    );
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
