//! The gate switched on and off on a running host as docs/gate.md says, with the shipped units
//! and drop-ins (contrib/gate/, where the package puts them), and the VS Code Dev Containers
//! path through it: a docker CLI on this machine with an ssh Docker context into the VM
//! (`docker -H ssh://USER@HOST`, which runs `docker system dial-stdio` there as USER, over the
//! ssh the fleet tests use) creates a container that lands in USER's slice. Runs on the host
//! and boots a VM of its own (it moves the daemon's socket and restarts Docker twice).

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::docker_api::docker_cli;
use crate::support::ssh::SshAccess;
use crate::support::vm::{self, in_vm_guest, Vm};
use crate::support::{skip, Run, Scratch, BIN, MANIFEST_DIR};

const USER: &str = "dev.user";

/// doctor's gate finding in the guest: (status, what it found).
fn doctor_gate(vm: &Vm) -> (String, String) {
    let out = vm.sh_ok("ds01-slices doctor --json || true");
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let f = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "gate")
        .unwrap_or_else(|| panic!("no gate finding: {out}"))
        .clone();
    (
        f["status"].as_str().unwrap().to_owned(),
        f["found"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn switched_on_the_shipped_units_put_the_gate_in_front_and_dev_containers_land_in_the_slice() {
    if in_vm_guest() {
        return;
    }
    if let Some(reason) = vm::unavailable() {
        skip("the cgroup v2 VM", &reason);
        return;
    }
    // The docker CLI on this machine (the client only: no daemon runs here).
    let Some(docker) = docker_cli() else {
        skip(
            "a docker CLI on this machine",
            "no docker on PATH, nor the one .ci/docker-cli unpacks",
        );
        return;
    };
    let vm = Vm::boot("bookworm").unwrap_or_else(|e| panic!("booting the VM: {e}"));
    // The tool, units and drop-ins where the package puts them; a configuration; a user.
    vm.sh_ok(&format!(
        r#"set -e
ln -sf '{BIN}' /usr/sbin/ds01-slices
cp '{MANIFEST_DIR}'/contrib/gate/ds01-slices-gate.socket '{MANIFEST_DIR}'/contrib/gate/ds01-slices-gate.service /lib/systemd/system/
mkdir -p /usr/share/ds01-slices/gate
cp -r '{MANIFEST_DIR}'/contrib/gate/docker.socket.d '{MANIFEST_DIR}'/contrib/gate/docker.service.d /usr/share/ds01-slices/gate/
mkdir -p /opt/ds01-infra/config/groups
printf 'enforcement:\n  aggregate_limits: true\n  cgroup_driver: systemd\ngroups:\n  student:\n    aggregate:\n      memory_max: "1G"\n      tasks_max: 512\n' >/opt/ds01-infra/config/resource-limits.yaml
echo '{USER}' >/opt/ds01-infra/config/groups/student.members
useradd --badname -m -d /home/devuser -G docker -s /bin/sh '{USER}'
systemctl daemon-reload
systemctl start docker.service
for i in $(seq 1 240); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
docker import /usr/local/share/ds01/busybox-root.tar local/busybox >/dev/null
"#
    ));
    let (status, found) = doctor_gate(&vm);
    assert_eq!(status, "warning", "{found}");
    assert!(found.contains("no gate in front"), "{found}");

    // Switched on, as docs/gate.md says.
    let on = vm.sh(
        r#"set -e
mkdir -p /etc/systemd/system/docker.socket.d /etc/systemd/system/docker.service.d
cp /usr/share/ds01-slices/gate/docker.socket.d/ds01-slices-gate.conf /etc/systemd/system/docker.socket.d/
cp /usr/share/ds01-slices/gate/docker.service.d/ds01-slices-gate.conf /etc/systemd/system/docker.service.d/
systemctl daemon-reload
systemctl enable ds01-slices-gate.socket 2>&1
systemctl stop docker.service docker.socket
systemctl start docker.socket ds01-slices-gate.socket docker.service
for i in $(seq 1 240); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
stat -c '%a %U:%G %n' /run/ds01-slices/docker.sock /run/docker.sock
"#,
        Duration::from_secs(600),
    )
    .unwrap();
    assert_eq!(on.code, Some(0), "switching on: {on}");
    assert!(
        on.stdout
            .contains("600 root:root /run/ds01-slices/docker.sock")
            && on.stdout.contains("660 root:docker /run/docker.sock"),
        "{on}"
    );
    let (status, found) = doctor_gate(&vm);
    assert_eq!(status, "ok", "{found}");
    assert!(found.contains("only root can open"), "{found}");

    // The Dev Containers path: a docker CLI here, an ssh context into the VM as USER. One ssh
    // connection (a ControlMaster, as VS Code keeps one) carries every dial-stdio the CLI opens.
    let ssh = SshAccess::new(&vm, 1).unwrap_or_else(|e| panic!("{e}"));
    vm.sh_ok(&format!(
        "install -d -m 700 -o '{USER}' /home/devuser/.ssh && install -m 600 -o '{USER}' /root/.ssh/authorized_keys /home/devuser/.ssh/authorized_keys"
    ));
    let dir = Scratch::new("devcontainers");
    let wrapper = dir.join("bin/ssh");
    fs::create_dir_all(dir.join("bin")).unwrap();
    let control = dir.join("cm");
    // The real ssh by its path, with the fleet tests' configuration: the `ssh` this wrapper
    // stands for is first on the CLI's PATH, so it must not call `ssh` by name.
    let real_ssh = ["/usr/bin/ssh", "/bin/ssh"]
        .into_iter()
        .find(|p| fs::metadata(p).is_ok())
        .expect("ssh (openssh-client)");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {real_ssh} -F '{}' -o ControlMaster=auto -o ControlPath='{}' -o ControlPersist=yes \"$@\"\n",
            ssh.program().with_file_name("ssh_config").display(),
            control.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        dir.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let host = format!("ssh://{USER}@{}", ssh.hosts[0]);
    let remote = |args: &[&str]| {
        Run::of(
            Command::new(&docker)
                .arg("-H")
                .arg(&host)
                .args(args)
                .env("PATH", &path)
                .env("HOME", dir.path())
                .env_remove("DOCKER_HOST")
                .env_remove("DOCKER_CONTEXT"),
        )
    };
    // The master connection first, as USER: every dial-stdio the CLI opens (it opens several
    // at once) then shares it. Without it, the CLI's first ssh processes raced for the one
    // connection the VM's port serves, and the losers waited for a banner that never came
    // (ssh exit 255 after the CLI's ConnectTimeout of 30 s).
    let master = Master {
        wrapper: wrapper.clone(),
        host: ssh.hosts[0].clone(),
    };
    let login = Run::of(
        Command::new(&wrapper)
            .args([
                "-l",
                USER,
                &ssh.hosts[0],
                "id -un; docker version --format '{{.Server.Version}}'",
            ])
            .env("HOME", dir.path()),
    );
    assert!(
        login.code == Some(0) && login.stdout.starts_with(USER),
        "ssh into the VM as {USER}: {login}\nsshd's log in the guest:\n{}",
        vm.sshd_log()
    );
    let started = remote(&[
        "run",
        "-d",
        "--network",
        "none",
        "local/busybox",
        "sleep",
        "600",
    ]);
    assert_eq!(
        started.code,
        Some(0),
        "docker -H {host} run: {started}\n{}\nsshd's log in the guest:\n{}",
        vm.sh_ok("journalctl --no-pager -o cat -u ds01-slices-gate.service | tail -n 40"),
        vm.sshd_log()
    );
    let id = started.stdout.trim().to_owned();
    let exec = remote(&["exec", &id, "echo", "through ssh"]);
    drop(master);
    assert_eq!(exec.stdout.trim(), "through ssh", "{exec}");
    // The slice as the product names it ("dev.user" sanitized: "dev_user").
    let slice = super::slice_of(USER);
    let cgroup = vm.sh_ok(&format!(
        "cat /proc/$(docker inspect -f '{{{{.State.Pid}}}}' {id})/cgroup"
    ));
    assert!(
        cgroup.trim().starts_with(&format!(
            "0::/ds01.slice/ds01-student.slice/{slice}/docker-"
        )),
        "{cgroup}"
    );
    eprintln!(
        "container cgroup: docker -H ssh:// (dial-stdio): {}",
        cgroup.trim()
    );
    let journal = vm.sh_ok("journalctl --no-pager -o cat -u ds01-slices-gate.service");
    assert!(
        journal.contains(&format!("create by {USER} (uid "))
            && journal.contains(&format!("in {slice}: placed")),
        "{journal}"
    );

    // Restart-safe: the gate killed, its socket stays; the next request waits in it until the
    // gate is back (Restart=always), no sleep needed.
    let restarted = vm.sh_ok(&format!(
        "systemctl kill --signal=KILL ds01-slices-gate.service; runuser -u '{USER}' -- docker ps -q --no-trunc; systemctl is-active ds01-slices-gate.service"
    ));
    assert!(
        restarted.contains(&id) && restarted.trim_end().ends_with("active"),
        "{restarted}"
    );
    vm.sh_ok(&format!("docker rm -f {id} >/dev/null"));

    // Switched off, as docs/gate.md says: the daemon serves /run/docker.sock again.
    let off = vm.sh(
        r#"set -e
systemctl disable --now ds01-slices-gate.socket ds01-slices-gate.service 2>&1
rm /etc/systemd/system/docker.socket.d/ds01-slices-gate.conf /etc/systemd/system/docker.service.d/ds01-slices-gate.conf
systemctl daemon-reload
systemctl stop docker.service docker.socket
systemctl start docker.socket docker.service
for i in $(seq 1 240); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
stat -c '%a %U:%G %n' /run/docker.sock
"#,
        Duration::from_secs(600),
    )
    .unwrap();
    assert_eq!(off.code, Some(0), "switching off: {off}");
    assert!(
        off.stdout.contains("660 root:docker /run/docker.sock"),
        "{off}"
    );
    let (status, found) = doctor_gate(&vm);
    assert_eq!(status, "warning", "{found}");
    let direct = vm.sh_ok(&format!("runuser -u '{USER}' -- docker ps -q; echo ok"));
    assert!(direct.contains("ok"), "{direct}");
}

/// The ssh master connection of the Dev Containers path, ended on drop (also when the test
/// fails): no ssh is left running on this machine.
struct Master {
    wrapper: std::path::PathBuf,
    host: String,
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = Command::new(&self.wrapper)
            .args(["-O", "exit", &self.host])
            .output();
    }
}
