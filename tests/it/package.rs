//! The Debian package as an admin meets it, on the cgroup v2 test host: `dpkg -i` of the .deb that
//! `.ci/package` built (cargo-deb, lintian), then what issue 16 promises of it: nothing starts
//! before the configuration exists; after a reboot the boot apply has run before Docker's slot;
//! an edit of a members file re-applies within 10 s; `man` renders; the exporter answers; a
//! reinstall reloads systemd only when nothing runs in ds01 slices (package_reload.rs); `dpkg -r`
//! leaves the limits and records, `--purge` removes the records.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;

use crate::fleet;
use crate::support::ssh::SshAccess;
use crate::support::vm::{self, in_vm_guest, Vm};
use crate::support::{ds01, skip, Run, Scratch, World, EXAMPLE};

/// alice's MemoryMax in the bundled example (student: 96G).
pub const ALICE_MEMORY_MAX: &str = "MemoryMax=103079215104";

/// The newest `ds01-slices_*.deb` that `.ci/package` left in the target directory.
pub fn built_package() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // <target>/debug/deps/it-HASH
    let target = exe.parent()?.parent()?.parent()?;
    let mut debs: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(target.join("debian"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("ds01-slices_") && n.ends_with(".deb"))
        })
        .filter_map(|p| Some((fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    debs.sort();
    debs.pop().map(|(_, p)| p)
}

/// The built package, for a test that installs it in the VM from here; `None` inside the VM
/// (where such a test has nothing to do) and, after a skip, where no VM or package is.
pub fn package_for_the_vm() -> Option<PathBuf> {
    if in_vm_guest() {
        return None;
    }
    if let Some(reason) = vm::unavailable() {
        skip("the cgroup v2 VM", &reason);
        return None;
    }
    let deb = built_package();
    if deb.is_none() {
        skip(
            "the Debian package",
            "no target/debian/ds01-slices_*.deb: .ci/package builds it (cargo-deb, lintian)",
        );
    }
    deb
}

/// Boots a rebootable VM and installs the package in it (before any configuration exists);
/// returns the VM and what dpkg printed.
pub fn vm_with_package(deb: &Path) -> (Vm, String) {
    let vm = Vm::boot_rebootable("bookworm").unwrap_or_else(|e| panic!("booting the VM: {e}"));
    let installed = install(&vm, deb);
    (vm, installed)
}

/// `dpkg -i` of `deb` in the guest; what dpkg printed.
pub fn install(vm: &Vm, deb: &Path) -> String {
    let (host_dir, guest_dir) = vm.shared_dir("package");
    let name = deb.file_name().unwrap().to_str().unwrap().to_owned();
    fs::copy(deb, host_dir.join(&name)).expect("copy the package into the VM's share");
    // The maintainer scripts start units and run deb-systemd-helper (perl): minutes under
    // QEMU's emulation on a loaded machine.
    let script = format!("dpkg -i {guest_dir}/{name} 2>&1");
    match vm.sh(
        &script,
        crate::support::guest_deadline(Duration::from_secs(120)),
    ) {
        Ok(run) if run.code == Some(0) => {
            helper_said_no_error(&run.stdout);
            run.stdout
        }
        Ok(run) => panic!("{script}:\n{run}"),
        Err(e) => panic!("{e}"),
    }
}

/// deb-systemd-helper exits at its first error: what the maintainer scripts asked of it was
/// left half-done (its records of what it enabled, which `purge` reads, not written).
fn helper_said_no_error(dpkg_said: &str) {
    assert!(
        !dpkg_said.contains("deb-systemd-helper: error"),
        "deb-systemd-helper failed:\n{dpkg_said}"
    );
}

/// Whatever deb-systemd-helper made or recorded for the package's units: their links in
/// /etc/systemd/system, its records under /var/lib/systemd.
const HELPER_FILES: &str = "ls -d /etc/systemd/system/ds01-slices-* /etc/systemd/system/*/ds01-slices-* \
     /var/lib/systemd/deb-systemd-helper-*/ds01-slices-* /var/lib/systemd/deb-systemd-helper-*/*/ds01-slices-* \
     2>/dev/null | sort || true";

/// Copies the example configuration to where the package looks for it, root's as the reader
/// requires.
pub fn install_example_config(vm: &Vm) {
    vm.sh_ok(&format!(
        "mkdir -p /opt/ds01-infra && cp -r {}/config /opt/ds01-infra/config && chown -R root:root /opt/ds01-infra && chmod -R go-w /opt/ds01-infra",
        crate::support::MANIFEST_DIR
    ));
}

/// What the units and their journal say, for a failure's message.
pub fn diagnosis(vm: &Vm) -> String {
    vm.sh(
        "systemctl status --no-pager 'ds01-slices-*' 2>&1 | head -n 60; journalctl -b --no-pager -u 'ds01-slices-*' | tail -n 40; ls -la /opt/ds01-infra/config",
        Duration::from_secs(60),
    )
    .map(|r| r.stdout)
    .unwrap_or_else(|e| e)
}

/// Polls `script` in the guest until its output contains `want`; how long that took.
fn until(vm: &Vm, script: &str, want: &str, limit: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let out = vm.sh(script, Duration::from_secs(60))?.stdout;
        if out.contains(want) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            return Err(format!(
                "after {limit:?}: {script}\nprinted {out:?}, not {want:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_package_installs_applies_at_boot_watches_the_config_and_removes_cleanly() {
    let Some(deb) = package_for_the_vm() else {
        return;
    };
    let (vm, installed) = vm_with_package(&deb);
    println!("dpkg -i {}:\n{installed}", deb.display());
    let units = "ds01-slices-apply.service ds01-slices-watch.service ds01-slices-exporter.service";

    // Installed before its configuration: enabled, nothing started, the reason said.
    assert!(installed.contains("nothing started"), "{installed}");
    let enabled = vm.sh_ok(&format!("systemctl is-enabled {units}"));
    assert_eq!(
        enabled.lines().collect::<Vec<_>>(),
        ["enabled"; 3],
        "{enabled}"
    );
    let active = vm.sh(
        &format!("systemctl is-active {units}"),
        Duration::from_secs(60),
    );
    let active = active.unwrap().stdout;
    assert!(
        !active.contains("\nactive") && !active.starts_with("active"),
        "{active}"
    );
    assert!(vm
        .sh_ok("systemctl show -p Before ds01-slices-apply.service")
        .contains("docker.service"));
    // The Docker API gate is shipped switched off: its units disabled, its docker drop-ins
    // where systemd does not read them, the daemon's socket where it was (docs/gate.md).
    let gate = vm.sh_ok(
        "systemctl is-enabled ds01-slices-gate.socket ds01-slices-gate.service || true; \
         ls /usr/share/ds01-slices/gate/docker.socket.d/ds01-slices-gate.conf /usr/share/ds01-slices/gate/docker.service.d/ds01-slices-gate.conf /usr/share/doc/ds01-slices/gate.md; \
         ls /etc/systemd/system/docker.socket.d /etc/systemd/system/docker.service.d 2>&1 || true; \
         systemctl show -p Listen docker.socket",
    );
    let mut states = gate.lines();
    assert_eq!(states.next(), Some("disabled"), "the gate's socket: {gate}");
    // The service has only `Also=` in its [Install]: systemd calls that "indirect".
    assert!(
        matches!(states.next(), Some("disabled" | "indirect")),
        "the gate's service: {gate}"
    );
    assert!(gate.contains("Listen=/run/docker.sock (Stream)"), "{gate}");
    assert!(!gate.contains("ds01-slices-gate.conf\n/etc"), "{gate}");

    // The configuration appears (root's, as the reader requires), then the machine reboots.
    install_example_config(&vm);
    let rebooted = vm.reboot().unwrap_or_else(|e| panic!("{e}"));
    println!("rebooted in {:.1} s", rebooted.as_secs_f64());
    // The agent answers before the boot has finished: wait for it (a unit that has not run yet
    // shows Result=success too), then the apply must have run, and succeeded, in this boot.
    vm.sh_ok("systemctl is-system-running --wait >/dev/null; true");
    let boot_apply = vm.sh_ok(
        "systemctl show -p Result -p ExecMainStatus -p ExecMainExitTimestampMonotonic ds01-slices-apply.service",
    );
    assert!(
        boot_apply.contains("Result=success")
            && boot_apply.contains("ExecMainStatus=0")
            && !boot_apply.contains("ExecMainExitTimestampMonotonic=0\n"),
        "the boot apply: {boot_apply}\n{}",
        diagnosis(&vm)
    );
    let alice = vm.sh_ok("systemctl show -p MemoryMax ds01-student-alice.slice");
    assert!(
        alice.contains(ALICE_MEMORY_MAX),
        "after the boot: {alice}\n{}",
        diagnosis(&vm)
    );
    until(
        &vm,
        &format!("systemctl is-active {units}; true"),
        "active\nactive\nactive",
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "after the reboot: {}",
        vm.sh_ok("journalctl -b -u ds01-slices-apply.service -o cat --no-pager | tail -n 3")
            .trim()
    );

    // An edit of a members file: the watcher re-applies it within 10 s.
    let newbie = "systemctl show -p MemoryMax ds01-student-newbie.slice";
    assert!(!vm.sh_ok(newbie).contains(ALICE_MEMORY_MAX));
    vm.sh_ok("echo newbie >>/opt/ds01-infra/config/groups/student.members");
    let took = until(&vm, newbie, ALICE_MEMORY_MAX, Duration::from_secs(10)).unwrap_or_else(|e| {
        panic!(
            "{e}\n{}",
            vm.sh_ok("journalctl -b -u 'ds01-slices-*' --no-pager | tail -n 30")
        )
    });
    println!(
        "members edit -> newbie's MemoryMax in force after {:.1} s",
        took.as_secs_f64()
    );

    many_servers(&vm);

    // Documentation and completions where the shells look.
    let man = vm.sh_ok("MANPAGER=cat MANWIDTH=100 man ds01-slices 2>&1");
    assert!(
        man.contains("ds01-slices") && man.contains("apply"),
        "{man}"
    );
    assert!(vm
        .sh_ok("MANPAGER=cat man 8 ds01-slices-verify 2>&1")
        .contains("verify"));
    vm.sh_ok("test -s /usr/share/bash-completion/completions/ds01-slices && test -s /usr/share/zsh/vendor-completions/_ds01-slices && test -s /usr/share/fish/vendor_completions.d/ds01-slices.fish && test -x /usr/share/ds01-slices/ds01-docker-run");
    // The alert rules and the dashboard (docs/monitoring.md), as shipped.
    vm.sh_ok("grep -q 'alert: DS01ContainerOutsideUserSlice' /usr/share/ds01-slices/ds01-slices.rules.yml && grep -q '\"uid\": \"ds01-slices\"' /usr/share/ds01-slices/ds01-slices.dashboard.json");

    // The exporter, as installed and hardened.
    until(
        &vm,
        "busybox wget -q -O - http://127.0.0.1:9851/metrics 2>&1; true",
        "ds01_slice_memory_max_bytes{",
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}",
            vm.sh_ok("journalctl -b -u ds01-slices-exporter.service --no-pager | tail -n 20")
        )
    });
    let metrics = vm.sh_ok("busybox wget -q -O - http://127.0.0.1:9851/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ds01_slice_memory_max_bytes{")
                && l.contains("ds01-student-alice.slice")
                && l.ends_with(" 103079215104")),
        "{metrics}"
    );
    // Its caps, in force on the running process and its cgroup (docs/monitoring.md, "`metrics` and `serve`").
    let caps = vm.sh_ok(
        "u=ds01-slices-exporter.service; systemctl show -p LimitNOFILE,MemoryMax,TasksMax $u; \
         pid=$(systemctl show -p MainPID --value $u); grep '^Max open files' /proc/$pid/limits; \
         cat /sys/fs/cgroup/system.slice/$u/memory.max /sys/fs/cgroup/system.slice/$u/pids.max",
    );
    println!("the exporter's caps:\n{caps}");
    let lines: Vec<&str> = caps.lines().map(str::trim).collect();
    for cap in [
        "LimitNOFILE=512",
        "MemoryMax=134217728",
        "TasksMax=16",
        "134217728",
        "16",
    ] {
        assert!(lines.contains(&cap), "{cap} not in force:\n{caps}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()[..]
                == ["Max", "open", "files", "512", "512", "files"]),
        "{caps}"
    );
    let security = vm.sh_ok("systemd-analyze security --no-pager ds01-slices-exporter.service");
    let score = security
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("(no overall line)");
    println!(
        "systemd-analyze security ds01-slices-exporter.service: {}",
        score.trim()
    );

    // A reinstall while a unit runs in a user's slice, then with nothing running.
    crate::package_reload::reinstall_reloads_only_when_nothing_runs(&vm, &deb);
    // A removal while a unit runs, then the package back for what follows.
    crate::package_reload::removal_withholds_the_reload_while_a_unit_runs(&vm, &deb);

    // dpkg -r: the package's files go, the limits and the records stay; with nothing running,
    // systemd is reloaded (through the copy of the binary that prerm left) and forgets the units.
    vm.sh_ok("dpkg -L ds01-slices >/run/ds01-package-files");
    let recorded = vm.sh_ok(HELPER_FILES);
    for unit in units.split(' ') {
        assert!(
            recorded.contains(&format!("deb-systemd-helper-enabled/{unit}.dsh-also")),
            "deb-systemd-helper has no record of enabling {unit}:\n{recorded}"
        );
    }
    let removed = vm.sh_ok("dpkg -r ds01-slices 2>&1");
    println!("dpkg -r:\n{removed}");
    assert!(!removed.contains("not reloaded"), "{removed}");
    helper_said_no_error(&removed);
    assert_eq!(
        vm.sh_ok("test -e /run/ds01-slices-package && echo left || echo gone")
            .trim(),
        "gone",
        "prerm's copy of the binary"
    );
    // Directories may be shared with other packages; every file must be gone.
    let left = vm.sh_ok(
        "while read -r f; do if [ ! -d \"$f\" ] && { [ -e \"$f\" ] || [ -L \"$f\" ]; }; then echo \"$f\"; fi; done </run/ds01-package-files",
    );
    assert!(left.trim().is_empty(), "dpkg -r left:\n{left}");
    assert!(vm
        .sh_ok("systemctl show -p MemoryMax ds01-student-alice.slice")
        .contains(ALICE_MEMORY_MAX));
    assert!(vm
        .sh_ok("ls /var/lib/ds01-slices/owned")
        .contains("ds01-student-alice.slice"));
    assert!(vm
        .sh_ok("systemctl show -p LoadState ds01-slices-apply.service ds01-slices-exporter.service")
        .lines()
        .all(|l| l != "LoadState=loaded"));

    // --purge: the records go too, and every link and record of deb-systemd-helper's (the
    // masks of the removal among them); the limits still stay.
    helper_said_no_error(&vm.sh_ok("dpkg --purge ds01-slices 2>&1"));
    assert_eq!(
        vm.sh_ok("test -e /var/lib/ds01-slices && echo present || echo gone")
            .trim(),
        "gone"
    );
    let left = vm.sh_ok(HELPER_FILES);
    assert!(left.trim().is_empty(), "dpkg --purge left:\n{left}");
    assert!(vm
        .sh_ok("systemctl show -p MemoryMax ds01-student-alice.slice")
        .contains(ALICE_MEMORY_MAX));
}

/// Many servers, with the VM as one reached over real ssh (sshd in the guest, on the port QEMU
/// forwards): `fleet apply` and `fleet verify` over the VM, a sandboxed systemd on this machine
/// (through the tests' ssh stand-in) and a host that is down; then `verify --host` of the VM
/// against `verify` run inside it.
fn many_servers(vm: &Vm) {
    let ssh = SshAccess::new(vm, 4).unwrap_or_else(|e| panic!("{e}"));
    let Some(sandbox) = World::new(EXAMPLE) else {
        return;
    };
    let dir = Scratch::new("fleet-vm");
    let stand_in = fleet::fake_ssh(&dir, &[("sandbox-a", &sandbox)], "600");
    // The VM's aliases go to the real ssh, every other host to the stand-in.
    let dispatch = dir.join("dispatch-ssh");
    fs::write(
        &dispatch,
        format!(
            "#!/bin/sh\nprev=\nfor a in \"$@\"; do if [ \"$prev\" = -- ]; then host=$a; break; fi; prev=$a; done\n\
             case \"$host\" in vm*) exec '{}' \"$@\" ;; *) exec '{}' \"$@\" ;; esac\n",
            ssh.program().display(),
            stand_in.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&dispatch, fs::Permissions::from_mode(0o755)).unwrap();
    let fleet_run = |hosts: &[&str], args: &[&str], code: i32| -> Value {
        let file = fleet::hosts_file(&dir, &hosts.join("-"), hosts);
        let mut cmd = ds01(&["fleet"]);
        cmd.args(args)
            .arg("--hosts")
            .arg(&file)
            .arg("--json")
            .env("DS01_SSH", &dispatch);
        let out = Run::of(&mut cmd).assert_code(code, format!("fleet {args:?} {hosts:?}"));
        println!("fleet {} (exit {code}): {}", args[0], out.stderr.trim());
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("no JSON ({e}):\n{out}"))
    };
    let applied = fleet_run(&[&ssh.hosts[0], "sandbox-a", "down"], &["apply"], 1);
    let got = fleet::results(&applied);
    assert_eq!(
        got[0],
        (ssh.hosts[0].clone(), "ok".into(), 0),
        "{applied:#}"
    );
    assert!(got[1].1.starts_with("changed "), "{applied:#}");
    assert_eq!(
        got[2],
        ("down".into(), "unreachable".into(), 1),
        "{applied:#}"
    );
    let verified = fleet_run(&[&ssh.hosts[1], "sandbox-a", "down"], &["verify"], 1);
    assert_eq!(
        fleet::results(&verified),
        [
            (ssh.hosts[1].clone(), "ok".into(), 0),
            ("sandbox-a".into(), "ok".into(), 0),
            ("down".into(), "unreachable".into(), 1),
        ],
        "{verified:#}"
    );
    println!(
        "fleet verify: the VM over ssh in {} s, the sandbox in {} s, the down host in {} s",
        verified["hosts"][0]["seconds"],
        verified["hosts"][1]["seconds"],
        verified["hosts"][2]["seconds"]
    );

    // The table an admin reads, through OpenSSH's connection sharing as many admins set it
    // up: the first ssh to the VM becomes a master that persists in the background, holding
    // that ssh's stderr (the fleet's pipe) open; the next run goes through the master (one
    // connection: the VM's port serves one). Both are judged when their ssh exits (before: the
    // VM was reported "timed out" after --host-timeout).
    let control = Scratch::new_in(Path::new("/tmp"), "cm");
    let persist = ssh.persistent_program(control.path(), 120);
    let shared = dir.join("shared-ssh");
    fs::write(
        &shared,
        format!(
            "#!/bin/sh\nprev=\nfor a in \"$@\"; do if [ \"$prev\" = -- ]; then host=$a; break; fi; prev=$a; done\n\
             case \"$host\" in vm*) exec '{}' \"$@\" ;; *) exec '{}' \"$@\" ;; esac\n",
            persist.display(),
            stand_in.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
    let file = fleet::hosts_file(&dir, "table", &[&ssh.hosts[3], "sandbox-a", "down"]);
    let started = Instant::now();
    let mut cmd = ds01(&["fleet", "verify", "--host-timeout", "120", "--hosts"]);
    cmd.arg(&file).env("DS01_SSH", &shared);
    let table = Run::of(&mut cmd).assert_code(1, "fleet verify, the table");
    println!(
        "fleet verify (ControlPersist, the master's run, {:.1} s):\n{}",
        started.elapsed().as_secs_f64(),
        table.stdout.trim_end()
    );
    let vm_row = |out: &Run| {
        out.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{} ", ssh.hosts[3])))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(vm_row(&table).contains(" ok "), "{table}");
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.starts_with("down ") && l.contains("unreachable")),
        "{table}"
    );
    let file = fleet::hosts_file(&dir, "persist", &[&ssh.hosts[3], "sandbox-a"]);
    let started = Instant::now();
    let mut cmd = ds01(&["fleet", "verify", "--host-timeout", "120", "--hosts"]);
    cmd.arg(&file).env("DS01_SSH", &shared);
    let again = Run::of(&mut cmd);
    println!(
        "fleet verify (ControlPersist, through the master, {:.1} s): {}",
        started.elapsed().as_secs_f64(),
        vm_row(&again)
    );
    assert!(
        vm_row(&again).contains(" ok ") && again.code == Some(0),
        "{again}"
    );
    let _ = std::process::Command::new(&persist)
        .args(["-O", "exit", &ssh.hosts[3]])
        .output();
    drop(control);

    // --host: this machine's copy of the guest's configuration against the guest's systemd.
    let (share, guest_share) = vm.shared_dir("fleet-config");
    vm.sh_ok(&format!("cp -r /opt/ds01-infra/config {guest_share}/"));
    crate::support::copy_dir(&share.join("config"), &dir.join("config"));
    let mut cmd = ds01(&["verify", "--json", "--host", &ssh.hosts[2], "--config"]);
    cmd.arg(dir.join("config/resource-limits.yaml"))
        .env("DS01_SSH", ssh.program());
    let remote = Run::of(&mut cmd).assert_code(0, "verify --host");
    let inside = vm.sh_ok("/usr/sbin/ds01-slices verify --json");
    let parse = |text: &str| -> Value {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("no JSON ({e}):\n{text}"))
    };
    let (remote, inside) = (parse(&remote.stdout), parse(&inside));
    assert_eq!(
        fleet::without_local_reads(remote.clone()),
        fleet::without_local_reads(inside),
        "verify --host and verify inside the VM differ"
    );
    println!(
        "verify --host {} over ssh: the same {} slices as verify inside the VM",
        ssh.hosts[2], remote["counts"]["slices"]
    );
}
