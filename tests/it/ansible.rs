//! The Ansible example (contrib/ansible/ds01-slices.yml) run for real: ansible-core from PyPI
//! (`.ci/ansible`: a venv under target/ansible) against the cgroup v2 VM over real ssh (one
//! connection, kept open by ssh's ControlPersist: each VM port serves one). Check mode on a
//! fresh server reports the changes and writes nothing; a real run installs, configures, applies
//! and starts the units; a second run changes nothing; after a limit changed by hand, check mode
//! reports that slice and writes nothing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::package::{diagnosis, package_for_the_vm, ALICE_MEMORY_MAX};
use crate::support::ssh::SshAccess;
use crate::support::vm::{Vm, SSHD_LOG};
use crate::support::{guest_deadline, skip, Run, Scratch, MANIFEST_DIR};

const ALICE: &str = "ds01-student-alice.slice";

/// target/ansible, where .ci/ansible put ansible-core's venv and the VM's python3-apt.
fn ansible_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // <target>/debug/deps/it-HASH
    let dir = exe.parent()?.parent()?.parent()?.join("ansible");
    dir.join("venv/bin/ansible-playbook")
        .is_file()
        .then_some(dir)
}

/// One `ansible-playbook` run: its output, each task's result lines, the recap's counts.
struct Play {
    run: Run,
    tasks: Vec<(String, Vec<String>)>,
}

impl Play {
    /// The result words (`ok`, `changed`, `skipping`, ...) of the task named `name`.
    fn results(&self, name: &str) -> Vec<&str> {
        self.tasks
            .iter()
            .filter(|(task, _)| task == name)
            .flat_map(|(_, lines)| lines.iter().map(|l| l.split(':').next().unwrap_or("")))
            .collect()
    }

    /// `changed=N` (or another count) of the play's recap.
    fn recap(&self, count: &str) -> u32 {
        let line = self
            .run
            .stdout
            .lines()
            .skip_while(|l| !l.starts_with("PLAY RECAP"))
            .find(|l| l.contains(" : "))
            .unwrap_or_else(|| panic!("no PLAY RECAP:\n{}", self.run));
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{count}="))?.parse().ok())
            .unwrap_or_else(|| panic!("no {count}= in {line:?}"))
    }
}

fn parse(run: Run) -> Play {
    let mut tasks: Vec<(String, Vec<String>)> = Vec::new();
    for line in run.stdout.lines() {
        if let Some(name) = line
            .strip_prefix("TASK [")
            .and_then(|rest| rest.split_once("] ").map(|(n, _)| n))
        {
            tasks.push((name.to_owned(), Vec::new()));
        } else if ["ok: ", "changed: ", "skipping: ", "fatal: ", "failed: "]
            .iter()
            .any(|p| line.starts_with(p))
        {
            if let Some((_, lines)) = tasks.last_mut() {
                lines.push(line.to_owned());
            }
        }
    }
    Play { run, tasks }
}

/// The lines of what `argv` prints on this machine that `keep` keeps (empty if it cannot run).
fn host_lines(argv: &[&str], keep: impl Fn(&str) -> bool) -> String {
    Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| keep(l))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

struct Ansible<'vm> {
    vm: &'vm Vm,
    dir: PathBuf,
    scratch: Scratch,
    inventory: PathBuf,
    ssh_config: PathBuf,
    deb: PathBuf,
}

impl Ansible<'_> {
    /// Runs the playbook and fails the test unless it exits 0, with what the guest was doing.
    fn playbook_ok(&self, extra: &[&str], config: &Path) -> Play {
        let play = self.playbook(extra, config);
        if play.run.code != Some(0) {
            panic!(
                "ansible-playbook {extra:?}: {}\n--- what the guest is doing\n{}",
                play.run,
                self.guest_state()
            );
        }
        play
    }

    /// The guest's processes (with where each one waits), sshd's log and the end of the
    /// journal: a play that hangs (seen twice in CI, at a copy, over the old virtio port) says
    /// where.
    fn guest_state(&self) -> String {
        // ssh, sftp and the mux master, not every QEMU whose arguments name a port.
        let host = host_lines(&["ps", "-eo", "pid,ppid,etimes,stat,args"], |l| {
            let command = l.split_whitespace().nth(4).unwrap_or("");
            command.starts_with("ssh") || command.starts_with("sftp") || command.ends_with("/sftp")
        });
        let guest = self
            .vm
            .sh(
                // Each step bounded: a hung systemd must not hide what ps found.
                &format!(
                    "ps -eo pid,ppid,etimes,stat,wchan:24,args --forest | grep -v '\\[.*\\]$'; \
                 for p in 1 $(pgrep -x sshd) $(pgrep -x dbus-daemon); do \
                   echo \"--- /proc/$p/stack\"; cat /proc/$p/stack; done; \
                 {SSHD_LOG}; \
                 timeout 20 systemctl list-jobs --no-pager; \
                 timeout 20 journalctl -b --no-pager -n 80"
                ),
                Duration::from_secs(120),
            )
            .map(|r| r.stdout)
            .unwrap_or_else(|e| e);
        // What sits unread on either end of the forwarded ssh connections (Recv-Q, Send-Q).
        let port = format!(":{} ", self.vm.ssh_address().1);
        let sockets = host_lines(&["ss", "-tnp"], |l| l.contains(&port));
        format!("host ssh processes:\n{host}\nhost sockets:\n{sockets}\n{guest}")
    }

    fn playbook(&self, extra: &[&str], config: &Path) -> Play {
        // Ended if it hangs (each task waits at most ANSIBLE_TIMEOUT to connect, not to end).
        let limit = guest_deadline(Duration::from_secs(240)).as_secs();
        let mut cmd = Command::new("timeout");
        cmd.args(["--kill-after=10", &limit.to_string()])
            .arg(self.dir.join("venv/bin/ansible-playbook"))
            .current_dir(self.scratch.path())
            .arg("-i")
            .arg(&self.inventory)
            .arg(Path::new(MANIFEST_DIR).join("contrib/ansible/ds01-slices.yml"))
            .arg("-e")
            .arg(format!("ds01_deb={}", self.deb.display()))
            .arg("-e")
            .arg(format!("ds01_config={}", config.display()))
            .args(extra)
            .env(
                "ANSIBLE_SSH_ARGS",
                format!(
                    "-F {} -o ControlMaster=auto -o ControlPersist=900s",
                    self.ssh_config.display()
                ),
            )
            .env("ANSIBLE_SSH_CONTROL_PATH_DIR", self.scratch.join("cp"))
            .env("ANSIBLE_SSH_CONTROL_PATH", "%(directory)s/%%h")
            // sshd's start and the key exchange take long under emulation and load.
            .env("ANSIBLE_TIMEOUT", "300")
            .env("ANSIBLE_HOME", self.scratch.join("home"))
            .env("ANSIBLE_LOCAL_TEMP", self.scratch.join("tmp"))
            // One ssh session per task instead of three or four: each is slow under emulation.
            .env("ANSIBLE_PIPELINING", "1")
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
            .env("PYTHONWARNINGS", "ignore")
            .env_remove("ANSIBLE_CONFIG")
            .stdin(std::process::Stdio::null());
        let play = parse(Run::of(&mut cmd));
        println!(
            "ansible-playbook {extra:?}: exit {:?}, {}",
            play.run.code,
            play.run
                .stdout
                .lines()
                .skip_while(|l| !l.starts_with("PLAY RECAP"))
                .nth(1)
                .unwrap_or("(no recap)")
                .trim()
        );
        play
    }

    /// Ends ssh's master connection (ControlPersist keeps it after the runs).
    fn close(&self) {
        let _ = Command::new("ssh")
            .arg("-F")
            .arg(&self.ssh_config)
            .arg("-o")
            .arg(format!(
                "ControlPath={}",
                self.scratch.join("cp").join("%h").display()
            ))
            .args(["-O", "exit", "vm0"])
            .output();
    }
}

impl Drop for Ansible<'_> {
    fn drop(&mut self) {
        self.close();
    }
}

#[test]
fn the_ansible_playbook_checks_installs_applies_and_then_changes_nothing() {
    let Some(deb) = package_for_the_vm() else {
        return;
    };
    let Some(dir) = ansible_dir() else {
        skip(
            "ansible-core",
            "no target/ansible/venv/bin/ansible-playbook: .ci/ansible installs it",
        );
        return;
    };
    let vm = Vm::boot("bookworm").unwrap_or_else(|e| panic!("booting the VM: {e}"));
    // Ansible's apt module needs python3-apt on the server (it would install it itself where
    // the server reaches a mirror; the VM has no network).
    let (share, guest_share) = vm.shared_dir("ansible-debs");
    for e in fs::read_dir(dir.join("guest-debs")).unwrap().flatten() {
        fs::copy(e.path(), share.join(e.file_name())).unwrap();
    }
    let script = format!("dpkg -i {guest_share}/*.deb 2>&1");
    match vm.sh(&script, guest_deadline(Duration::from_secs(120))) {
        Ok(run) if run.code == Some(0) => {}
        Ok(run) => panic!("{script}:\n{run}"),
        Err(e) => panic!("{e}"),
    }
    let ssh = SshAccess::new(&vm, 1).unwrap_or_else(|e| panic!("{e}"));
    let scratch = Scratch::new("ansible");
    let inventory = scratch.join("inventory");
    // Logged in as root, so no `become` (the VM has no sudo).
    fs::write(
        &inventory,
        format!(
            "[gpu_servers]\n{} ansible_python_interpreter=/usr/bin/python3 ansible_become=false\n",
            ssh.hosts[0]
        ),
    )
    .unwrap();
    let ansible = Ansible {
        vm: &vm,
        dir,
        inventory,
        ssh_config: ssh.config(),
        deb,
        scratch,
    };
    let example = Path::new(MANIFEST_DIR).join("config");
    let nothing_installed = || {
        vm.sh_ok(
            "dpkg-query -W ds01-slices 2>/dev/null; ls /opt/ds01-infra /var/cache/ds01-slices.deb 2>/dev/null; systemctl show -p MemoryMax --value ds01-student-alice.slice",
        )
    };
    let before = nothing_installed();
    assert_eq!(before.trim(), "infinity", "the VM is not fresh");

    // Check mode on a server without ds01-slices: the copies and the install would change,
    // the dry run is skipped (there is nothing to run it with), nothing is written.
    let check = ansible.playbook_ok(&["--check"], &example);
    assert_eq!(check.results("Copy the package"), ["changed"]);
    assert_eq!(check.results("Install the package"), ["skipping"]);
    assert_eq!(
        check.results(
            "Copy the configuration (root-owned, as ds01-slices requires when run as root)"
        ),
        ["changed"]
    );
    assert_eq!(
        check.results("Apply the limits (a dry run in check mode)"),
        ["skipping"]
    );
    assert_eq!(check.results("Say why nothing was dry-run"), ["ok"]);
    assert!(check.recap("changed") >= 2);
    assert_eq!(nothing_installed(), before, "check mode wrote something");

    // The real run: installed, configured, applied, the units running.
    let real = ansible.playbook_ok(&[], &example);
    for task in [
        "Copy the package",
        "Install the package",
        "Copy the configuration (root-owned, as ds01-slices requires when run as root)",
        "Apply the limits (a dry run in check mode)",
    ] {
        assert_eq!(real.results(task), ["changed"], "{task}:\n{}", real.run);
    }
    assert_eq!(
        real.results("Run the watcher and the exporter"),
        ["changed", "changed"],
        "{}",
        real.run
    );
    assert!(vm
        .sh_ok("systemctl show -p MemoryMax ds01-student-alice.slice")
        .contains(ALICE_MEMORY_MAX));
    assert_eq!(
        vm.sh_ok("systemctl is-active ds01-slices-watch.service ds01-slices-exporter.service"),
        "active\nactive\n",
        "{}",
        diagnosis(&vm)
    );

    // Again: nothing to do.
    let again = ansible.playbook_ok(&[], &example);
    assert_eq!(again.recap("changed"), 0, "{}", again.run);

    // A limit changed by hand: check mode names the slice and leaves it as it is.
    vm.sh_ok(&format!("systemctl set-property {ALICE} MemoryMax=1G"));
    let drift = ansible.playbook_ok(&["--check"], &example);
    assert_eq!(
        drift.results("Apply the limits (a dry run in check mode)"),
        ["changed"],
        "{}",
        drift.run
    );
    assert!(drift.run.stdout.contains(ALICE), "{}", drift.run);
    assert_eq!(drift.recap("changed"), 1, "{}", drift.run);
    assert_eq!(
        vm.sh_ok(&format!("systemctl show -p MemoryMax --value {ALICE}")),
        "1073741824\n"
    );
}
