//! The gate's cost in the cgroup v2 test VM (Debian 12 under QEMU/TCG, Docker 20.10): the
//! guest's python3 measures as the user `bench`, through a gate started as a transient unit.

use std::fs;
use std::time::Duration;

use serde_json::Value;

use crate::support::vm::Vm;
use crate::support::BIN;
use crate::{Args, Measured, MEASURE};

const SOCKET: &str = "/run/ds01-gate-bench/docker.sock";

pub fn run(args: &Args) -> Measured {
    let vm = Vm::boot("bookworm").unwrap_or_else(|e| panic!("booting the VM: {e}"));
    let (host_dir, guest_dir) = vm.shared_dir("gate-bench");
    fs::write(host_dir.join("measure.py"), MEASURE).unwrap();
    let mib = args.mib;
    let setup = format!(
        r#"set -e
useradd -m -G docker -s /bin/sh bench
mkdir -p /var/tmp/gate-bench/config/groups /var/tmp/gate-bench/state
printf 'enforcement:\n  aggregate_limits: true\n  cgroup_driver: systemd\ngroups:\n  student:\n    aggregate:\n      memory_max: "4G"\n      tasks_max: 4096\n' >/var/tmp/gate-bench/config/resource-limits.yaml
echo bench >/var/tmp/gate-bench/config/groups/student.members
chmod -R go-w /var/tmp/gate-bench
systemctl start docker.service
for i in $(seq 1 240); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
docker import /usr/local/share/ds01/busybox-root.tar local/busybox >/dev/null
mkdir -p /var/tmp/big && head -c {mib}M /dev/urandom >/var/tmp/big/blob
tar -C /var/tmp/big -c . | docker import - bench/big >/dev/null
cd /home/bench && docker save bench/big >big.tar && docker rmi bench/big >/dev/null && cp /var/tmp/big/blob blob && chown bench big.tar blob
mkdir -p -m 0755 /run/ds01-gate-bench
systemd-run --quiet --unit=ds01-gate-bench --setenv=DS01_TRACE=1 -- '{BIN}' --config /var/tmp/gate-bench/config/resource-limits.yaml --state-dir /var/tmp/gate-bench/state gate --listen {SOCKET} --docker /run/docker.sock
for i in $(seq 1 100); do [ -S {SOCKET} ] && break; sleep 0.2; done
cp {guest_dir}/measure.py /home/bench/measure.py
"#
    );
    let done = vm.sh(&setup, Duration::from_secs(1800)).unwrap();
    assert_eq!(done.code, Some(0), "setting up the VM: {done}");
    let run = vm
        .sh(
            &format!(
                "cd /home/bench && runuser -u bench -- env HOME=/home/bench python3 measure.py {} {} {mib} $(systemctl show -p MainPID --value ds01-gate-bench) $(pidof dockerd) /run/docker.sock {SOCKET}",
                args.creates, args.runs
            ),
            Duration::from_secs(6 * 3600),
        )
        .unwrap();
    assert_eq!(run.code, Some(0), "measuring: {run}");
    let figures: Value =
        serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {run}"));
    let placed =
        vm.sh_ok("journalctl --no-pager -o cat -u ds01-gate-bench | grep -c ': placed' || true");
    let spliced = vm.sh_ok(
        "journalctl --no-pager -o cat -u ds01-gate-bench | grep 'ds01-slices gate: archive spliced by' | grep -c 'bytes out' || true",
    );
    let traces = vm.sh_ok(
        "journalctl --no-pager -o cat -u ds01-gate-bench | grep 'ds01-slices gate: trace by' || true",
    );
    Measured {
        figures,
        placed: placed.trim().to_owned(),
        traces,
        spliced: spliced.trim().to_owned(),
        platform: format!(
            "the cgroup v2 test VM ({}), QEMU under TCG (software emulation, 2 vCPUs on a shared 2-core machine): every figure is several times a real server's",
            vm.image.versions().trim().replace('\n', ", ")
        ),
        copies: "`load`'s bytes are read from one socket and written to the other by the gate, two more copies by the guest's kernel; `cp`'s are spliced (socket to pipe to socket, in the kernel); all on the same two emulated vCPUs as the daemon and the client.",
    }
}
