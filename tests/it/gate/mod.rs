//! The Docker API gate (`ds01-slices gate`, src/gate/) in front of a real dockerd, with real
//! clients no one here wrote: the docker CLI, Debian's python3-docker and docker-compose, and
//! (rollout.rs, from the host) a docker CLI over an ssh Docker context as VS Code Dev
//! Containers uses it.
//!
//! All but rollout.rs run inside the bookworm VM (tests/it/vm.rs, V2_SUITE), on the VM's own
//! systemd and the dockerd the Docker tests share ([`crate::docker::docker`], one test at a
//! time): each starts its gate as a transient service on a socket of its own
//! ([`GATE_SOCKET`], group docker, 0660) in front of the daemon's /run/docker.sock, and its
//! users' clients talk to that socket. On the host they return at once.

mod clients;
mod faults;
mod refusals;
mod rollout;
mod splice;
mod streams;
mod users;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub(crate) use crate::docker::{sh, sh_ok};
use crate::support::{deadline, wait_until, Run, Scratch, BIN};

/// The busybox image the Docker tests import.
pub const IMAGE: &str = "local/busybox";
pub const GATE_SOCKET: &str = "/run/ds01-gate-test/docker.sock";

/// The VM's users for these tests: in the configuration's `student` group (capped), and
/// `gate-admin` in `admin` (uncapped). `gate-eve` has an account and the docker group but
/// no place in the configuration (it has no default group). The domain-style name is
/// DS01's kind of account.
pub const ALICE: &str = "gate-alice";
pub const BOB: &str = "gate-bob";
pub const BAKER: &str = "h.baker@hertie-school.lan";
pub const CAROL: &str = "gate-carol";
pub const DAVE: &str = "gate-dave";
pub const ADMIN: &str = "gate-admin";
pub const EVE: &str = "gate-eve";
/// A uid with no account (but the docker group, as a process could have it).
pub const NO_ACCOUNT_UID: u32 = 4242;

/// `script` run by `user` with DOCKER_HOST on the gate's socket (`sh -c`, in the user's home).
pub fn as_user(user: &str, script: &str) -> Run {
    let home = if user == "root" {
        "/root".to_owned()
    } else {
        format!("/home/{}", home_dir_name(user))
    };
    Run::of(
        Command::new("runuser")
            .args(["-u", user, "--", "env"])
            .arg(format!("HOME={home}"))
            .arg(format!("DOCKER_HOST=unix://{GATE_SOCKET}"))
            .args(["sh", "-c", &format!("cd {home} && {script}")])
            .stdin(Stdio::null()),
    )
}

pub fn home_dir_name(user: &str) -> String {
    user.replace('@', "_")
}

/// The sanitized slice of a student (the configuration's `student` group).
pub fn slice_of(user: &str) -> String {
    format!(
        "ds01-student-{}.slice",
        ds01_slices::model::names::sanitize_username(user)
    )
}

/// The users of these tests, made once per VM (the VM's disk is a throwaway snapshot).
fn users() {
    static MADE: OnceLock<Result<(), String>> = OnceLock::new();
    MADE.get_or_init(|| {
        let mut script = String::from("set -e\n");
        for user in [ALICE, BOB, BAKER, CAROL, DAVE, ADMIN, EVE] {
            let home = format!("/home/{}", home_dir_name(user));
            script.push_str(&format!(
                "id -u '{user}' >/dev/null 2>&1 || useradd --badname -m -d '{home}' -G docker -s /bin/sh '{user}'\n"
            ));
        }
        sh(&script).map(drop)
    })
    .clone()
    .unwrap_or_else(|e| panic!("making the test users: {e}"));
}

/// The configuration of these tests: students capped at 512M and 256 tasks, admins uncapped,
/// no default group.
pub const CONFIG: &str = "enforcement:\n  aggregate_limits: true\n  cgroup_driver: systemd\ngroups:\n  student:\n    aggregate:\n      cpu_quota: \"200%\"\n      memory_max: \"512M\"\n      memory_high: \"480M\"\n      tasks_max: 256\n  admin: {}\n";

/// A gate on [`GATE_SOCKET`] with its own configuration and state, stopped on drop.
pub struct Gate {
    pub dir: Scratch,
    /// Its transient unit: a name of its own, so that its journal is its own.
    pub unit: String,
}

impl Gate {
    /// Docker running (the shared dockerd), the users made, and a gate started with `args`
    /// (after the global options) in front of /run/docker.sock.
    pub fn start(extra: &[&str]) -> Gate {
        users();
        let dir = Scratch::new("gate");
        dir.write("config/resource-limits.yaml", CONFIG);
        dir.write(
            "config/groups/student.members",
            &format!("{ALICE}\n{BOB}\n{BAKER}\n{CAROL}\n{DAVE}\n"),
        );
        dir.write("config/groups/admin.members", &format!("{ADMIN}\n"));
        dir.mkdir("state");
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let gate = Gate {
            dir,
            unit: format!("ds01-gate-test-{n}"),
        };
        gate.run(extra);
        gate
    }

    /// Starts the gate's unit (again).
    pub fn run(&self, extra: &[&str]) {
        let unit = &self.unit;
        let _ = sh(&format!(
            "systemctl stop {unit} 2>/dev/null; systemctl reset-failed {unit} 2>/dev/null; rm -f {GATE_SOCKET}; mkdir -p -m 0755 /run/ds01-gate-test"
        ));
        let mut cmd = Command::new("systemd-run");
        cmd.args(["--quiet", "--collect", &format!("--unit={unit}"), "--"])
            .arg(BIN)
            .arg("--config")
            .arg(self.config())
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .args(extra)
            .args([
                "gate",
                "--listen",
                GATE_SOCKET,
                "--docker",
                "/run/docker.sock",
            ])
            .stdin(Stdio::null());
        let run = Run::of(&mut cmd);
        assert_eq!(run.code, Some(0), "starting the gate: {run}");
        wait_until(Duration::from_secs(30), "the gate's socket", || {
            fs::metadata(GATE_SOCKET).ok()
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.journal()));
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("config/resource-limits.yaml")
    }

    /// What the gate wrote to the journal.
    pub fn journal(&self) -> String {
        sh(&format!(
            "journalctl --no-pager -o cat -u {} | tail -n 200",
            self.unit
        ))
        .unwrap_or_default()
    }

    /// The gate's main PID.
    pub fn pid(&self) -> u32 {
        sh_ok(&format!(
            "systemctl show --property=MainPID --value {}",
            self.unit
        ))
        .trim()
        .parse()
        .unwrap_or(0)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let unit = &self.unit;
        let _ = sh(&format!(
            "systemctl stop {unit} 2>/dev/null; systemctl reset-failed {unit} 2>/dev/null; rm -rf /run/ds01-gate-test"
        ));
    }
}

/// Containers made by a test, removed on drop (as root, on the daemon's socket).
#[derive(Default)]
pub struct Containers(pub Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let _ = sh(&format!(
                "docker rm -f {} >/dev/null 2>&1",
                self.0.join(" ")
            ));
        }
    }
}

/// The cgroup (v2 line of /proc/PID/cgroup) of a running container.
pub fn cgroup_of(container: &str) -> String {
    sh_ok(&format!(
        "cat /proc/$(docker inspect -f '{{{{.State.Pid}}}}' {container})/cgroup"
    ))
    .trim()
    .to_owned()
}

/// Every container's id, as root sees them on the daemon's socket.
pub fn all_containers() -> String {
    sh_ok("docker ps -aq --no-trunc | sort")
}

/// Runs `build` (a script, as `user`) whose Dockerfile has `RUN sleep MARKER || true`, and
/// returns the build's output and the host's view of that step's cgroup (`/proc/PID/cgroup`
/// of the sleeping process: inside, a cgroup namespace shows only `/`). The sleep is ended as
/// soon as it is seen (the step's `|| true` lets the build go on), so no test waits it out;
/// the search ends when the build does, seen or not.
pub fn build_step_cgroup(user: &str, marker: &str, build: &str) -> (Run, Result<String, String>) {
    let script = build.to_owned();
    let user = user.to_owned();
    let running = std::thread::spawn(move || as_user(&user, &script));
    let want = format!("sleep\0{marker}\0");
    let find = || {
        fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            (cmdline == want.as_bytes())
                .then(|| {
                    Some((
                        e.file_name(),
                        fs::read_to_string(e.path().join("cgroup")).ok()?,
                    ))
                })
                .flatten()
        })
    };
    let limit = deadline(Duration::from_secs(120));
    let until = Instant::now() + limit;
    let step = loop {
        if let Some((pid, cgroup)) = find() {
            let _ = Command::new("kill").arg(&pid).status();
            break Ok(cgroup.trim().to_owned());
        }
        if running.is_finished() {
            break Err("the build ended before its step was seen".to_owned());
        }
        if Instant::now() > until {
            break Err(format!("the build step's process: not within {limit:?}"));
        }
        // A scan of /proc costs the TCG guest's CPU: five a second leave it to the build.
        std::thread::sleep(Duration::from_millis(200));
    };
    let run = running
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    (run, step)
}
