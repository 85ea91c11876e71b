//! The gate's cost on this machine's own CPUs: Debian 12's Docker (docker.io 20.10, the VM's
//! own packages, unpacked into a cache, never installed) runs natively beside a sandboxed
//! systemd 252, whose bus the gate asks as it asks the VM's. What emulation inflates (every
//! syscall, every D-Bus round trip) runs at the speed of a real server here.
//!
//! Beside the two paths, a third for throughput: a bare relay (gate/relay.rs) in the gate's place,
//! which only copies bytes, so that what the hop itself costs on this machine is told apart
//! from what the gate adds to it.
//!
//! Over 500 lines: one platform's whole life (packages, daemon, gate, relay, measuring,
//! teardown) in one place, so that what a run sets up and what it removes read side by side.
//!
//! The daemon runs on private paths (data root, exec root, sockets, key, pid file under one
//! scratch directory) with no network of its own; what it cannot be told to put elsewhere
//! (`/run/docker`, containerd's `/run/containerd`, the cgroups of its containers) is removed on
//! teardown when this run created it.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::relay::RELAY_FLAG;
use crate::support::{Sandbox, Scratch, BIN};
use crate::{Args, Measured, Platform, MEASURE};

/// Unpacked packages, kept between runs (like the VM's image cache).
const CACHE: &str = "/var/cache/ds01-slices-bench/docker";
const PACKAGES: [&str; 5] = ["docker.io", "containerd", "runc", "tini", "busybox-static"];
/// The caller: an account every Debian system has, in the configuration's student group.
const USER: &str = "nobody";
const GROUP: &str = "nogroup";
/// Paths the daemon or its containerd use whatever they are told; removed if this run made them.
const FIXED_PATHS: [&str; 2] = ["/run/docker", "/run/containerd"];

/// With `--spare-cpu`: the CPU of the client and the daemon (both paths alike), and the gate's.
const SHARED_CPU: usize = 0;
const GATE_CPU: usize = 1;

pub fn run(args: &Args) -> Measured {
    let spare_cpu = args.platform == Platform::SpareCpu;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        !spare_cpu || cpus > GATE_CPU,
        "--spare-cpu needs two CPUs; this machine has {cpus}"
    );
    let root = unpacked_packages();
    let sandbox = Sandbox::boot().unwrap_or_else(|e| panic!("booting the sandbox: {e}"));
    let mut bench = Bench::new(root, sandbox, spare_cpu);
    bench.start_daemon();
    bench.prepare_images(args.mib);
    bench.start_gate();
    bench.start_relay();
    let figures = bench.measure(args);
    let log = fs::read_to_string(bench.dir.join("gate.log")).unwrap_or_default();
    let placed = log.lines().filter(|l| l.contains(": placed")).count();
    let spliced = log
        .lines()
        .filter(|l| l.contains("ds01-slices gate: archive spliced by") && l.contains("bytes out"))
        .count();
    let traces: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ds01-slices gate: trace by"))
        .collect();
    let pinning = if spare_cpu {
        format!("; the client and the daemon (with containerd and the containers) pinned to CPU {SHARED_CPU} on both paths, the gate to CPU {GATE_CPU}, as on a server whose cores are not all busy")
    } else {
        String::new()
    };
    let platform = format!(
        "this machine natively ({}, {cpus} CPUs, cgroup {}), {} run from Debian 12's packages with the cgroupfs driver and overlay2; the gate asks a sandboxed systemd 252 (its own PID 1 in private namespaces, support/sandbox.rs) for the user's slices{pinning}",
        kernel(),
        if bench.sandbox.unified() { "v2" } else { "v1-hybrid" },
        fs::read_to_string(bench.root.join("versions")).unwrap_or_default().trim().replace('\n', ", "),
    );
    Measured {
        figures,
        placed: placed.to_string(),
        traces: traces.join("\n"),
        spliced: spliced.to_string(),
        platform,
        copies: "`load`'s bytes are read from one socket and written to the other by the gate, two more copies by the kernel; `cp`'s are spliced (socket to pipe to socket, in the kernel); all on the same CPUs as the daemon and the client.",
    }
}

fn kernel() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| format!("Linux {}", s.trim()))
        .unwrap_or_else(|_| "Linux".into())
}

/// The packages' files under CACHE (downloaded with `apt-get download` and unpacked with
/// `dpkg-deb -x` on the first run).
fn unpacked_packages() -> PathBuf {
    let root = PathBuf::from(CACHE);
    if root.join("versions").is_file() {
        return root;
    }
    let download = Scratch::new("gate-native-debs");
    let ok = Command::new("apt-get")
        .arg("download")
        .args(PACKAGES)
        .current_dir(download.path())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "apt-get download {} failed (no package lists? run apt-get update)",
        PACKAGES.join(" ")
    );
    let partial = root.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial).unwrap();
    let mut versions = String::new();
    for deb in fs::read_dir(download.path()).unwrap().flatten() {
        let deb = deb.path();
        let ok = Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&partial)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "dpkg-deb -x {} failed", deb.display());
        let fields = Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .args(["Package", "Version"])
            .output()
            .unwrap();
        let fields = String::from_utf8_lossy(&fields.stdout);
        let value = |k: &str| {
            fields
                .lines()
                .find_map(|l| l.strip_prefix(k).map(str::trim))
                .unwrap_or("?")
                .to_owned()
        };
        if value("Package:") == "docker.io" || value("Package:") == "containerd" {
            versions.push_str(&format!("{} {}\n", value("Package:"), value("Version:")));
        }
    }
    fs::write(partial.join("versions"), versions).unwrap();
    fs::rename(&partial, &root).unwrap();
    root
}

struct Bench {
    root: PathBuf,
    sandbox: Sandbox,
    dir: Scratch,
    daemon: Option<Child>,
    gate: Option<Child>,
    relay: Option<Child>,
    cgroups_before: BTreeSet<PathBuf>,
    fixed_paths_before: Vec<bool>,
    spare_cpu: bool,
}

impl Bench {
    fn new(root: PathBuf, sandbox: Sandbox, spare_cpu: bool) -> Bench {
        // Under /tmp, not $TMPDIR: the daemon's and containerd's sockets need short paths.
        let dir = Scratch::new_in(Path::new("/tmp"), "gate-native");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        for sub in [
            "data",
            "exec",
            "run",
            "gate",
            "relay",
            "config/groups",
            "state",
            "work",
        ] {
            dir.mkdir(sub);
        }
        chown_to_user(&dir.join("work"));
        Bench {
            root,
            sandbox,
            cgroups_before: cgroup_dirs(),
            fixed_paths_before: FIXED_PATHS.iter().map(|p| Path::new(p).exists()).collect(),
            dir,
            daemon: None,
            gate: None,
            relay: None,
            spare_cpu,
        }
    }

    /// `setpriv` (which runs what follows), pinned to `cpu` under `--spare-cpu`.
    fn setpriv_on(&self, cpu: usize) -> Command {
        if self.spare_cpu {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", &cpu.to_string(), "setpriv"]);
            cmd
        } else {
            Command::new("setpriv")
        }
    }

    fn path_env(&self) -> String {
        format!(
            "{}:{}:{}",
            self.root.join("usr/bin").display(),
            self.root.join("usr/sbin").display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    fn direct_socket(&self) -> PathBuf {
        self.dir.join("run/docker.sock")
    }

    fn gate_socket(&self) -> PathBuf {
        self.dir.join("gate/docker.sock")
    }

    fn relay_socket(&self) -> PathBuf {
        self.dir.join("relay/docker.sock")
    }

    /// The unpacked docker CLI, as root, on the daemon's own socket, in work/.
    fn docker_command(&self) -> Command {
        let mut cmd = Command::new(self.root.join("usr/bin/docker"));
        cmd.arg("-H")
            .arg(format!("unix://{}", self.direct_socket().display()))
            .env("DOCKER_CONFIG", self.dir.join("docker-config"))
            .current_dir(self.dir.join("work"));
        cmd
    }

    /// `docker <args>` ([`Bench::docker_command`]); panics with its stderr on failure.
    fn docker(&self, args: &[&str]) -> String {
        let out = self.docker_command().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn start_daemon(&mut self) {
        let d = |rel: &str| self.dir.join(rel).display().to_string();
        // The daemon's identity key goes to /etc/docker/key.json unless its file says otherwise
        // (there is no flag for it).
        fs::write(
            self.dir.join("daemon.json"),
            format!("{{\"deprecated-key-path\": \"{}\"}}\n", d("key.json")),
        )
        .unwrap();
        let log = fs::File::create(self.dir.join("dockerd.log")).unwrap();
        let child = self
            .setpriv_on(SHARED_CPU)
            .args(["--pdeathsig", "KILL", "--"])
            .arg(self.root.join("usr/sbin/dockerd"))
            .args(["--data-root", &d("data"), "--exec-root", &d("exec")])
            .args(["--pidfile", &d("run/dockerd.pid")])
            .args(["--config-file", &d("daemon.json")])
            .args(["-H", &format!("unix://{}", d("run/docker.sock"))])
            .args(["--group", GROUP, "--storage-driver", "overlay2"])
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
            .args(["--ip-masq=false", "--userland-proxy=false"])
            .env("PATH", self.path_env())
            .env_remove("DOCKER_HOST")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ok = self
                .docker_command()
                .arg("info")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            let exited = self
                .daemon
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "dockerd did not answer (within 120 s, exited: {exited:?}): {}",
                fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// local/busybox (as the VM's image has it), and the load benchmark's image saved to
    /// work/big.tar beside the cp benchmark's work/blob, both the caller's.
    fn prepare_images(&self, mib: usize) {
        self.dir.mkdir("busybox-root/tmp");
        let rootfs = self.dir.mkdir("busybox-root/bin");
        fs::copy(self.root.join("bin/busybox"), rootfs.join("busybox")).unwrap();
        let list = Command::new(rootfs.join("busybox"))
            .arg("--list")
            .output()
            .unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
            if applet != "busybox" {
                std::os::unix::fs::symlink("busybox", rootfs.join(applet)).unwrap();
            }
        }
        let tar = |dir: &Path, out: &Path| {
            let ok = Command::new("tar")
                .arg("-C")
                .arg(dir)
                .arg("-cf")
                .arg(out)
                .arg(".")
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "tar of {}", dir.display());
        };
        let busybox_tar = self.dir.join("busybox-root.tar");
        tar(&self.dir.join("busybox-root"), &busybox_tar);
        self.docker(&[
            "import",
            &busybox_tar.display().to_string(),
            "local/busybox",
        ]);
        let big = self.dir.mkdir("big");
        let mut blob = vec![0u8; mib << 20];
        let mut urandom = fs::File::open("/dev/urandom").unwrap();
        std::io::Read::read_exact(&mut urandom, &mut blob).unwrap();
        fs::write(big.join("blob"), &blob).unwrap();
        fs::write(self.dir.join("work/blob"), &blob).unwrap();
        let big_tar = self.dir.join("big.tar");
        tar(&big, &big_tar);
        self.docker(&["import", &big_tar.display().to_string(), "bench/big"]);
        self.docker(&["save", "-o", "big.tar", "bench/big"]);
        self.docker(&["rmi", "bench/big"]);
        for f in ["work/big.tar", "work/blob"] {
            chown_to_user(&self.dir.join(f));
        }
    }

    fn start_gate(&mut self) {
        self.dir.write(
            "config/resource-limits.yaml",
            "enforcement:\n  aggregate_limits: true\n  cgroup_driver: systemd\ngroups:\n  student:\n    aggregate:\n      memory_max: \"4G\"\n      tasks_max: 4096\n",
        );
        self.dir
            .write("config/groups/student.members", &format!("{USER}\n"));
        let log = fs::File::create(self.dir.join("gate.log")).unwrap();
        let child = self
            .setpriv_on(GATE_CPU)
            .args(["--pdeathsig", "KILL", "--", BIN])
            .arg("--config")
            .arg(self.dir.join("config/resource-limits.yaml"))
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("gate")
            .arg("--listen")
            .arg(self.gate_socket())
            .args(["--socket-group", GROUP])
            .arg("--docker")
            .arg(self.direct_socket())
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.sandbox.bus_address())
            .env("DS01_CGROUP_ROOT", self.sandbox.host_path("/sys/fs/cgroup"))
            .env("DS01_TRACE", "1")
            .env_remove("DS01_CONFIG")
            .env_remove("DS01_STATE_DIR")
            .env_remove("DS01_ROOT")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.gate = Some(child);
        wait_for_socket(&self.gate_socket(), || {
            format!(
                "the gate: {}",
                fs::read_to_string(self.dir.join("gate.log")).unwrap_or_default()
            )
        });
    }

    /// The bare relay (gate/relay.rs): this benchmark's own binary, on the gate's CPU.
    fn start_relay(&mut self) {
        let child = self
            .setpriv_on(GATE_CPU)
            .args(["--pdeathsig", "KILL", "--"])
            .arg(std::env::current_exe().unwrap())
            .arg(RELAY_FLAG)
            .arg(self.relay_socket())
            .arg(self.direct_socket())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.relay = Some(child);
        wait_for_socket(&self.relay_socket(), || "the relay".to_owned());
        // As the daemon's own socket: root and the caller's group.
        let ok = Command::new("chgrp")
            .arg(GROUP)
            .arg(self.relay_socket())
            .status()
            .unwrap()
            .success();
        assert!(ok, "chgrp {GROUP} {}", self.relay_socket().display());
        fs::set_permissions(self.relay_socket(), fs::Permissions::from_mode(0o660)).unwrap();
    }

    fn measure(&self, args: &Args) -> Value {
        let work = self.dir.join("work");
        fs::write(work.join("measure.py"), MEASURE).unwrap();
        let pid = |c: &Option<Child>| c.as_ref().map_or(0, Child::id).to_string();
        let out = self
            .setpriv_on(SHARED_CPU)
            .args(["--reuid", USER, "--regid", GROUP, "--clear-groups", "--"])
            .args(["/usr/bin/python3", "measure.py"])
            .arg(args.creates.to_string())
            .arg(args.runs.to_string())
            .arg(args.mib.to_string())
            .arg(pid(&self.gate))
            .arg(pid(&self.daemon))
            .arg(self.direct_socket())
            .arg(self.gate_socket())
            .arg(self.relay_socket())
            .arg(pid(&self.relay))
            .current_dir(&work)
            .env("PATH", self.path_env())
            .env("HOME", &work)
            .env("DOCKER_CONFIG", work.join(".docker"))
            .env_remove("DOCKER_HOST")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "measuring: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: the figures"))
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        for mut child in [self.gate.take(), self.relay.take()].into_iter().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut daemon) = self.daemon.take() {
            let ids = self
                .docker_command()
                .args(["ps", "-aq"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = self
                    .docker_command()
                    .args(["rm", "-f"])
                    .args(&ids)
                    .stdout(Stdio::null())
                    .status();
            }
            // SIGTERM: the daemon stops containerd and unmounts what it mounted.
            let group = daemon.id() as i32;
            // SAFETY: kill(2) with a process group id this run created; no memory involved.
            unsafe { libc::kill(-group, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(60);
            while daemon.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            // SAFETY: as above.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            let _ = daemon.wait();
        }
        unmount_below(self.dir.path());
        // Only the daemon's: new since the start, under a parent it names (`docker`, or a
        // `ds01-*.slice` the gate placed a container in), outside the sandbox (whose own go with
        // it). Another process's new cgroups on this machine are not this run's to remove.
        let sandbox_dirs = self.sandbox.host_cgroup_dirs();
        let now = cgroup_dirs();
        let new: Vec<&PathBuf> = now.difference(&self.cgroups_before).collect();
        for dir in new.into_iter().rev() {
            let the_daemons = dir.iter().any(|c| {
                let c = c.to_string_lossy();
                c == "docker" || (c.starts_with("ds01-") && c.ends_with(".slice"))
            });
            if the_daemons && !sandbox_dirs.iter().any(|s| dir.starts_with(s)) {
                let _ = fs::remove_dir(dir);
            }
        }
        for (path, existed) in FIXED_PATHS.iter().zip(&self.fixed_paths_before) {
            if !existed {
                let _ = fs::remove_dir_all(path);
            }
        }
    }
}

/// Waits until `socket` exists (what listens on it has started); panics after 30 s with
/// `what()`: who should have listened, and what it said.
fn wait_for_socket(socket: &Path, what: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "nothing listened on {} within 30 s: {}",
            socket.display(),
            what()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn chown_to_user(path: &Path) {
    let ok = Command::new("chown")
        .arg("-R")
        .arg(format!("{USER}:{GROUP}"))
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "chown {USER} {}", path.display());
}

/// Every cgroup directory of every hierarchy, in path order (children after their parents).
fn cgroup_dirs() -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut stack = vec![PathBuf::from("/sys/fs/cgroup")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
                found.insert(e.path());
            }
        }
    }
    found
}

/// Unmounts (lazily, deepest first) whatever is still mounted below `dir`.
fn unmount_below(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").args(["-l", p]).status();
    }
}
