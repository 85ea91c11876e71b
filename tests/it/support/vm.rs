//! The cgroup v2 test host: a Debian VM under QEMU (TCG) with systemd as PID 1 on the unified
//! hierarchy, Docker, and no network but the forwards to its sshd and its bus bridge. The
//! measured recipe: /work/shared/docs/test-vm.md; the image: tests/vm/build-image.sh, cached
//! under [`CACHE_DIR`] by a hash of tests/vm/.
//!
//! The harness reaches the guest three ways:
//! - a shared directory (9p tag `ds01`, /mnt/ds01 inside) and the agent on virtio port
//!   `org.ds01.ctl` ([`Vm::sh`]: root shell scripts, their output and exit code);
//! - the work tree and the build directory, shared read-only at the same paths, so that the
//!   binaries cargo built (and the paths compiled into them) work inside unchanged;
//! - systemd's bus on TCP ([`Vm::bus_address`]): a zbus/busctl address that runs socat to the
//!   port QEMU forwards to [`GUEST_BUS_PORT`], where the guest's socket unit starts a
//!   systemd-stdio-bridge (as `systemctl -H` uses) for each connection;
//! - sshd on TCP, forwarded the same way ([`Vm::ssh_address`]). QEMU's user-mode network forwards
//!   both from ports on this machine's loopback; the guest is otherwise cut off (`restrict=on`).
//!
//! One supervisor shell (vm-supervisor.sh) owns QEMU and the VM's directory: dropping the Vm, or
//! the test process dying, stops QEMU and removes the directory.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};

use super::boot_watch::BootWatch;
use super::cmd::{Run, BIN};
use super::qmp;
use super::MANIFEST_DIR;

/// Built images, one directory per suite and recipe hash; outside the work tree so that clones
/// and `cargo clean` keep it. Older builds of a suite are removed when a new one is made.
pub const CACHE_DIR: &str = "/var/cache/ds01-slices-test-vm";
/// The Debian suites the harness can build: bookworm (systemd 252, kernel 6.1, DS01's own) and
/// trixie (systemd 257, kernel 6.12).
pub const SUITES: [&str; 2] = ["bookworm", "trixie"];
const SUPERVISOR: &str = include_str!("vm-supervisor.sh");
/// Under TCG the guest reaches its agent in ~10 s; generous for a loaded CI machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// The end of the guest's sshd log (a shell command), for failure reports.
pub const SSHD_LOG: &str = "timeout 20 journalctl -u ssh.service -n 40 --no-pager; true";
/// The guest's address on QEMU's user-mode network, where the forwards go.
pub const GUEST_ADDRESS: &str = "10.0.2.15";
/// The guest's sshd, where QEMU forwards a port of this machine's loopback.
const GUEST_SSH_PORT: u16 = 22;
/// Where the guest's ds01-bus.socket (tests/vm/guest/) listens: a systemd-stdio-bridge for each
/// connection. The unit names the same port.
pub const GUEST_BUS_PORT: u16 = 5555;

/// Why no VM can run here, if that is so.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (mmdebstrap --mode=root and the image cache need it)".into());
    }
    if std::env::consts::ARCH != "x86_64" {
        return Some("not an x86_64 machine".into());
    }
    for tool in [
        "qemu-system-x86_64",
        "mmdebstrap",
        "socat",
        "cpio",
        "mkfs.ext4",
    ] {
        if !on_path(tool) {
            return Some(format!("no {tool} on PATH (.ci/vm-packages installs it)"));
        }
    }
    None
}

/// A built image: root file system, kernel, initramfs, and what versions they hold.
pub struct Image {
    pub dir: PathBuf,
    pub suite: String,
}

impl Image {
    /// The image of `suite`, built first when the cache has none for the current recipe.
    /// Concurrent callers (other tests, other test processes) wait for one build.
    pub fn get(suite: &str) -> Result<Image, String> {
        let key = recipe_hash(suite)?;
        let cache = Path::new(CACHE_DIR);
        fs::create_dir_all(cache).map_err(|e| format!("{CACHE_DIR}: {e}"))?;
        let dir = cache.join(format!("{suite}-{key}"));
        let image = Image {
            dir: dir.clone(),
            suite: suite.into(),
        };
        if image.complete() {
            return Ok(image);
        }
        let lock_path = cache.join(format!("{suite}.lock"));
        let lock = fs::File::create(&lock_path).map_err(|e| format!("{lock_path:?}: {e}"))?;
        lock.lock()
            .map_err(|e| format!("locking {lock_path:?}: {e}"))?;
        if image.complete() {
            return Ok(image);
        }
        // Older recipes' images of this suite, and a half-built one of this recipe.
        for e in fs::read_dir(cache).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{suite}-")) && e.path().is_dir() {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        let script = Path::new(MANIFEST_DIR).join("tests/vm/build-image.sh");
        let log = cache.join(format!("{suite}.build.log"));
        let started = Instant::now();
        let log_file = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let status = Command::new("bash")
            .arg(&script)
            .arg(suite)
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .status()
            .map_err(|e| format!("running {script:?}: {e}"))?;
        if !status.success() || !image.complete() {
            let _ = fs::remove_dir_all(&dir);
            let text = fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            return Err(format!(
                "building the {suite} image failed ({status}); the end of {}:\n{}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        let _ = writeln!(
            std::io::stderr(),
            "built the {suite} VM image in {:.0} s ({})",
            started.elapsed().as_secs_f64(),
            dir.display()
        );
        Ok(image)
    }

    fn complete(&self) -> bool {
        ["root.img", "vmlinuz", "initrd.img", "versions"]
            .iter()
            .all(|f| self.dir.join(f).is_file())
    }

    /// "suite …", "kernel …", "systemd …", "docker …" lines written by the build.
    pub fn versions(&self) -> String {
        fs::read_to_string(self.dir.join("versions")).unwrap_or_default()
    }

    /// The version of `what` ("systemd", "kernel", …) from [`Image::versions`].
    pub fn version(&self, what: &str) -> String {
        self.versions()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{what} ")).map(str::to_owned))
            .unwrap_or_default()
    }
}

/// md5 of the suite's name and every file of tests/vm/ (names and contents, in name order).
fn recipe_hash(suite: &str) -> Result<String, String> {
    let root = Path::new(MANIFEST_DIR).join("tests/vm");
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))? {
            let p = e.map_err(|e| format!("{}: {e}", d.display()))?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut h = Md5::new();
    h.update(suite.as_bytes());
    for f in files {
        h.update(
            f.strip_prefix(&root)
                .unwrap_or(&f)
                .to_string_lossy()
                .as_bytes(),
        );
        h.update(fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?);
    }
    Ok(h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// A booted VM. Jobs may run concurrently from several threads.
pub struct Vm {
    pub image: Image,
    workdir: PathBuf,
    boot_time: Duration,
    ctl: Mutex<UnixStream>,
    next_job: AtomicUsize,
    ssh_port: u16,
    bus_port: u16,
    bin_dir: PathBuf,
    teardown: Option<OwnedFd>,
    supervisor: Child,
    supervisor_out: BufReader<ChildStdout>,
}

impl Vm {
    /// Boots the image of `suite` and waits for its agent; the work tree and the build directory
    /// are mounted read-only at their own paths.
    pub fn boot(suite: &str) -> Result<Vm, String> {
        Self::boot_with(suite, false)
    }

    /// [`Vm::boot`] for a test that reboots the guest ([`Vm::reboot`]): QEMU resets instead of
    /// exiting when the guest reboots (a panicking kernel then reboots too, until the test's
    /// own timeouts end it).
    pub fn boot_rebootable(suite: &str) -> Result<Vm, String> {
        Self::boot_with(suite, true)
    }

    fn boot_with(suite: &str, rebootable: bool) -> Result<Vm, String> {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let image = Image::get(suite)?;
        let started = Instant::now();
        let workdir = std::env::temp_dir().join(format!(
            "ds01-vm-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(workdir.join("share/jobs"))
            .map_err(|e| format!("{}: {e}", workdir.display()))?;
        let bin_dir = Path::new(BIN).parent().unwrap_or(Path::new("/"));
        let w = |f: &str| workdir.join(f).display().to_string();
        let img = |f: &str| image.dir.join(f).display().to_string();
        let mut qemu: Vec<String> = [
            "qemu-system-x86_64",
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            "4096",
            "-nodefaults",
            "-display",
            "none",
        ]
        .map(String::from)
        .to_vec();
        if !rebootable {
            qemu.push("-no-reboot".into());
        }
        qemu.extend([
            "-kernel".into(),
            img("vmlinuz"),
            "-initrd".into(),
            img("initrd.img"),
            "-append".into(),
            "root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=1 quiet \
             mitigations=off apparmor=0 panic=-1 net.ifnames=0"
                .into(),
            "-drive".into(),
            format!("file={},format=raw,if=virtio,snapshot=on", img("root.img")),
            "-serial".into(),
            format!("file:{}", w("console.log")),
            "-pidfile".into(),
            w("qemu.pid"),
            "-qmp".into(),
            format!(
                "unix:{},server=on,wait=off",
                qmp::socket(&workdir).display()
            ),
            "-virtfs".into(),
            format!(
                "local,path={},mount_tag=ds01,security_model=none,id=ds01",
                w("share")
            ),
            "-virtfs".into(),
            format!(
                "local,path={MANIFEST_DIR},mount_tag=repo,security_model=none,readonly=on,id=repo"
            ),
            "-virtfs".into(),
            format!(
                "local,path={},mount_tag=bin,security_model=none,readonly=on,id=bin",
                bin_dir.display()
            ),
            // ioeventfd=off: a guest's notification that it has room for more input is then
            // handled on the vCPU's own write, not passed on through an eventfd. With it on, a
            // port stopped reading its host socket for good under CPU contention (seen in the
            // Ansible test: the guest's 70 free receive buffers, QEMU's `x-query-virtio-queue-
            // status` all caught up, the host's request still unread, sshd idle in poll for 15
            // minutes). The same lost wakeup and fix: github.com/lmb/vimto issue 29.
            "-device".into(),
            "virtio-serial-pci,ioeventfd=off".into(),
            // sshd and the bus bridge over TCP, not virtio ports: under CPU contention an ssh
            // session on a port stalled for good even with ioeventfd=off (CI, the Ansible test
            // at a copy: QEMU's end of the host socket empty, the guest's sshd idle in poll), and
            // so did a bus port ("no answer from systemd within 30 s"). The user-mode network is
            // QEMU's most used path; restrict=on keeps the guest off every network but these
            // forwards.
            "-netdev".into(),
            // Host port 0: QEMU binds a free one, asked for below (a port chosen here and bound
            // by QEMU later could be taken in between). Loopback only: the bridge makes whoever
            // connects root on the guest's bus, unauthenticated, which a throwaway guest can
            // afford only while nothing beyond this machine reaches it.
            format!(
                "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:0-{GUEST_ADDRESS}:{GUEST_SSH_PORT},\
                 hostfwd=tcp:127.0.0.1:0-{GUEST_ADDRESS}:{GUEST_BUS_PORT}"
            ),
            "-device".into(),
            "virtio-net-pci,netdev=net0".into(),
        ]);
        qemu.extend([
            "-chardev".into(),
            format!("socket,id=ctl,path={},server=on,wait=off", w("ctl.sock")),
            "-device".into(),
            "virtserialport,chardev=ctl,name=org.ds01.ctl".into(),
        ]);
        let (read_end, write_end) =
            super::sandbox::cloexec_pipe().map_err(|e| format!("pipe: {e}"))?;
        let mut supervisor = Command::new("sh")
            .arg("-c")
            .arg(SUPERVISOR)
            .arg("ds01-vm-supervisor")
            .args(&qemu)
            .env("DS01_VM_WORKDIR", &workdir)
            // QEMU's snapshot=on overlay goes to $TMPDIR: keep it in the VM's directory.
            .env("TMPDIR", &workdir)
            .stdin(Stdio::from(read_end))
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("spawning the VM supervisor: {e}"))?;
        let Some(stdout) = supervisor.stdout.take() else {
            unreachable!("stdout was piped")
        };
        let mut supervisor_out = BufReader::new(stdout);
        let mut line = String::new();
        let _ = supervisor_out.read_line(&mut line);
        let teardown = Some(write_end);
        if !line.starts_with("qemu ") {
            drop(teardown);
            return Err(format!("the VM supervisor said {line:?}"));
        }
        let (ctl, ssh_port, bus_port) = match connect_agent(&workdir, started).and_then(|ctl| {
            let monitor = qmp::socket(&workdir);
            let ssh = qmp::forwarded_port(&monitor, GUEST_SSH_PORT)?;
            let bus = qmp::forwarded_port(&monitor, GUEST_BUS_PORT)?;
            Ok((ctl, ssh, bus))
        }) {
            Ok(connected) => connected,
            Err(e) => {
                let console = fs::read_to_string(workdir.join("console.log")).unwrap_or_default();
                let qemu_log = fs::read_to_string(workdir.join("qemu.log")).unwrap_or_default();
                drop(teardown);
                let mut rest = String::new();
                let _ = supervisor_out.read_to_string(&mut rest);
                let _ = supervisor.wait();
                return Err(format!(
                    "{e}\nQEMU: {}\nconsole (end):\n{}",
                    qemu_log.trim(),
                    tail(&console, 40)
                ));
            }
        };
        let vm = Vm {
            image,
            workdir,
            boot_time: Duration::ZERO,
            ctl: Mutex::new(ctl),
            next_job: AtomicUsize::new(0),
            ssh_port,
            bus_port,
            bin_dir: bin_dir.to_path_buf(),
            teardown,
            supervisor,
            supervisor_out,
        };
        vm.mount_shares()?;
        let mut vm = vm;
        vm.boot_time = started.elapsed();
        Ok(vm)
    }

    /// The work tree and the build directory, read-only at their host paths.
    fn mount_shares(&self) -> Result<(), String> {
        let mount = |tag: &str, path: &str| {
            format!(
                "mkdir -p '{path}' && mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 {tag} '{path}'\n"
            )
        };
        let script =
            mount("repo", MANIFEST_DIR) + &mount("bin", &self.bin_dir.display().to_string());
        let mounted = self.sh(&script, Duration::from_secs(60))?;
        if mounted.code != Some(0) {
            return Err(format!("mounting the shares in the guest:\n{mounted}"));
        }
        Ok(())
    }

    /// Reboots the guest (a VM from [`Vm::boot_rebootable`]) and waits until it runs again with
    /// a new boot id and the shares mounted; returns how long that took.
    pub fn reboot(&self) -> Result<Duration, String> {
        let boot_id = "cat /proc/sys/kernel/random/boot_id";
        let before = self.sh(boot_id, Duration::from_secs(60))?.stdout;
        let started = Instant::now();
        let mut watch = BootWatch::new(&self.workdir);
        // In the background, so that the job reports before the guest goes down.
        self.sh(
            "(sleep 1; systemctl reboot) </dev/null >/dev/null 2>&1 &",
            Duration::from_secs(60),
        )?;
        loop {
            watch.check()?;
            if started.elapsed() > watch.deadline(BOOT_TIMEOUT * 2) {
                return Err(format!(
                    "the guest did not come back within {:?} of its reboot; console (end):\n{}",
                    watch.deadline(BOOT_TIMEOUT * 2),
                    tail(&self.console_log(), 40)
                ));
            }
            // Jobs sent while the guest is down wait in QEMU's socket and run after the boot.
            match self.sh(boot_id, Duration::from_secs(10)) {
                Ok(run)
                    if run.code == Some(0) && !run.stdout.is_empty() && run.stdout != before =>
                {
                    break
                }
                _ => std::thread::sleep(Duration::from_secs(2)),
            }
        }
        self.mount_shares()?;
        Ok(started.elapsed())
    }

    /// Where this machine reaches the guest's sshd (QEMU forwards it to port 22; the guest's
    /// network is [`Vm::network_up`]'s, its sshd is started by [`super::ssh::SshAccess`]).
    pub fn ssh_address(&self) -> (&'static str, u16) {
        ("127.0.0.1", self.ssh_port)
    }

    /// Brings up the guest's end of QEMU's forwards: the NIC (eth0, as net.ifnames=0 names it)
    /// with [`GUEST_ADDRESS`]. The image leaves it down, as nothing else in the guest uses it,
    /// and a reboot takes it down again; idempotent.
    pub fn network_up(&self) -> Result<(), String> {
        let up = self.sh(
            &format!(
                "set -e; for i in $(seq 100); do [ -e /sys/class/net/eth0 ] && break; sleep 0.2; done; busybox ip link set eth0 up; busybox ip addr show dev eth0 | grep -q '{GUEST_ADDRESS}/' || busybox ip addr add {GUEST_ADDRESS}/24 dev eth0"
            ),
            Duration::from_secs(60),
        )?;
        if up.code != Some(0) {
            return Err(format!("bringing up the guest's network:\n{up}"));
        }
        Ok(())
    }

    /// The end of the guest's sshd log, for a failure report.
    pub fn sshd_log(&self) -> String {
        self.sh_ok(SSHD_LOG)
    }

    /// From QEMU's start until the agent answered and the shares were mounted.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// The CPU time QEMU has used so far (user and system, every thread): what the guest's
    /// work cost, which depends far less than wall time on what else the machine runs.
    pub fn cpu_time(&self) -> Option<Duration> {
        let pid = fs::read_to_string(self.workdir.join("qemu.pid")).ok()?;
        let stat = fs::read_to_string(format!("/proc/{}/stat", pid.trim())).ok()?;
        // After the command name (in parentheses, which may hold spaces) come the state
        // (field 3), ..., utime (14) and stime (15), in clock ticks.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
        (hz > 0).then(|| Duration::from_millis(ticks * 1000 / hz))
    }

    /// Runs `script` with `sh` as root in the guest (cwd: its job directory, stdin empty) and
    /// returns what it printed and its exit code; Err if it has not ended within `timeout` (the
    /// script goes on in the guest until the VM stops).
    pub fn sh(&self, script: &str, timeout: Duration) -> Result<Run, String> {
        self.sh_watched(script, timeout, timeout, &mut || {})
    }

    /// [`Vm::sh`] that calls `tick` every `every` while the job runs (e.g. to show what a long
    /// job is doing: other jobs may run meanwhile).
    pub fn sh_watched(
        &self,
        script: &str,
        timeout: Duration,
        every: Duration,
        tick: &mut dyn FnMut(),
    ) -> Result<Run, String> {
        let id = format!("j{}", self.next_job.fetch_add(1, Ordering::Relaxed));
        let dir = self.workdir.join("share/jobs").join(&id);
        fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        fs::write(dir.join("script"), script).map_err(|e| format!("{id}: {e}"))?;
        {
            let mut ctl = self.ctl.lock().unwrap_or_else(|e| e.into_inner());
            ctl.write_all(format!("run {id}\n").as_bytes())
                .map_err(|e| format!("sending job {id} to the agent: {e}"))?;
        }
        let started = Instant::now();
        let mut last_tick = started;
        let rc = loop {
            if let Ok(rc) = fs::read_to_string(dir.join("rc")) {
                break rc;
            }
            if last_tick.elapsed() >= every {
                last_tick = Instant::now();
                tick();
            }
            if started.elapsed() > timeout {
                return Err(format!(
                    "guest job {id} did not end within {timeout:?}; its script:\n{script}\nits output so far:\n{}",
                    fs::read_to_string(dir.join("out")).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let read = |f: &str| {
            String::from_utf8_lossy(&fs::read(dir.join(f)).unwrap_or_default()).into_owned()
        };
        let run = Run {
            code: rc.trim().parse().ok(),
            stdout: read("out"),
            stderr: read("err"),
        };
        let _ = fs::remove_dir_all(&dir);
        Ok(run)
    }

    /// [`Vm::sh`] that must exit 0; its stdout.
    #[track_caller]
    pub fn sh_ok(&self, script: &str) -> String {
        match self.sh(script, Duration::from_secs(300)) {
            Ok(run) if run.code == Some(0) => run.stdout,
            Ok(run) => panic!("guest script failed:\n{script}\n{run}"),
            Err(e) => panic!("{e}"),
        }
    }

    /// A D-Bus address of the guest's system bus: socat to QEMU's forward to [`GUEST_BUS_PORT`],
    /// where each connection gets a systemd-stdio-bridge of its own, so any number of clients
    /// may use it at once. Brings the guest's network up first ([`Vm::network_up`]).
    pub fn bus_address(&self) -> Result<String, String> {
        self.network_up()?;
        // The socket unit listens from sockets.target on, before the agent answers; a guest
        // where it failed says so here, not as a bus client's connection closed unanswered.
        let listening = self.sh(
            "systemctl is-active ds01-bus.socket",
            Duration::from_secs(60),
        )?;
        if listening.code != Some(0) {
            return Err(format!("the guest's ds01-bus.socket:\n{listening}"));
        }
        Ok(format!(
            "unixexec:path=/usr/bin/socat,argv1=-lf/dev/null,argv2=-,argv3=TCP:127.0.0.1:{}",
            self.bus_port
        ))
    }

    /// A host directory shared with the guest at the same path (/mnt/ds01/<name>), for a test's
    /// files; removed with the VM.
    pub fn shared_dir(&self, name: &str) -> (PathBuf, String) {
        let host = self.workdir.join("share").join(name);
        let _ = fs::create_dir_all(&host);
        (host, format!("/mnt/ds01/{name}"))
    }

    /// What the guest's kernel and systemd wrote to the serial console.
    pub fn console_log(&self) -> String {
        fs::read_to_string(self.workdir.join("console.log")).unwrap_or_default()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        drop(self.teardown.take());
        let mut report = String::new();
        let _ = self.supervisor_out.read_to_string(&mut report);
        let status = self.supervisor.wait();
        let clean = status.as_ref().is_ok_and(|s| s.success()) && !self.workdir.exists();
        if !clean {
            let msg = format!(
                "teardown of the VM in {} was not clean: supervisor {status:?}\n{}",
                self.workdir.display(),
                report.trim()
            );
            if std::thread::panicking() {
                let _ = writeln!(std::io::stderr(), "{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

/// Connects to the agent's port and pings until it answers.
fn connect_agent(workdir: &Path, started: Instant) -> Result<UnixStream, String> {
    let mut watch = BootWatch::new(workdir);
    let sock = workdir.join("ctl.sock");
    let stream = loop {
        match UnixStream::connect(&sock) {
            Ok(s) => break s,
            Err(e) if started.elapsed() > Duration::from_secs(30) => {
                return Err(format!("QEMU's agent socket {}: {e}", sock.display()))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut n = 0u32;
    loop {
        watch.check()?;
        if started.elapsed() > watch.deadline(BOOT_TIMEOUT) {
            return Err(format!(
                "the guest's agent did not answer within {:?}",
                watch.deadline(BOOT_TIMEOUT)
            ));
        }
        n += 1;
        writer
            .write_all(format!("ping {n}\n").as_bytes())
            .map_err(|e| format!("writing to the agent's port: {e}"))?;
        let mut line = String::new();
        // Any pong will do: the earlier pings were buffered until the agent started.
        if reader.read_line(&mut line).is_ok() && line.starts_with("pong ") {
            break;
        }
    }
    // Answers ("done …", late pongs) are drained so that the port never fills; results are
    // read from the shared directory.
    std::thread::spawn(move || {
        let mut sink = [0u8; 4096];
        let _ = reader.get_mut().set_read_timeout(None);
        while matches!(reader.get_mut().read(&mut sink), Ok(n) if n > 0) {}
    });
    stream.set_read_timeout(None).map_err(|e| e.to_string())?;
    Ok(stream)
}

fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// On PATH, or in the sbin directories (mkfs.ext4), which root's PATH may lack under cargo.
fn on_path(tool: &str) -> bool {
    super::sandbox::on_path(tool)
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(tool).is_file())
}

/// Set by the guest runner ([`GUEST_RUNNER`]) for the test binary it runs inside the VM.
pub const GUEST_MARK: &str = "DS01_TEST_HOST";

/// Whether this test process is the one running inside the VM (on the cgroup v2 host).
pub fn in_vm_guest() -> bool {
    std::env::var(GUEST_MARK).is_ok_and(|v| v == "vm-guest")
}

/// Runs the test binary `exe` inside the VM with `args`, as root in a transient scope with
/// Delegate=yes: the scope's cgroup becomes DS01_SANDBOX_CGROUP, below which the v2 sandboxes
/// (support/sandbox.rs) are made, each a systemd of its own; the runner itself moves to a leaf.
/// CI=true there too: nothing may skip.
pub fn run_test_binary(
    vm: &Vm,
    exe: &Path,
    args: &[&str],
    timeout: Duration,
) -> Result<Run, String> {
    run_in_guest(vm, exe, args, timeout, false)
}

/// [`run_test_binary`] with each line of the binary's output led by the time it was written
/// (seconds, as bash's $EPOCHREALTIME): see [`test_times`].
pub fn run_test_binary_timed(
    vm: &Vm,
    exe: &Path,
    args: &[&str],
    timeout: Duration,
) -> Result<Run, String> {
    run_in_guest(vm, exe, args, timeout, true)
}

fn run_in_guest(
    vm: &Vm,
    exe: &Path,
    args: &[&str],
    timeout: Duration,
    timed: bool,
) -> Result<Run, String> {
    // Every 5 minutes (DS01_VM_WATCH seconds), what runs in the guest: a test that hangs there
    // shows in the log.
    let mut tick = || {
        if let Ok(ps) = vm.sh(
            "ps -eo pid,etimes,args --forest | grep -v -e ' \\[' -e 'ps -eo' | cut -c1-160 | tail -n 60",
            Duration::from_secs(60),
        ) {
            let _ = writeln!(std::io::stderr(), "still running in the VM:\n{}", ps.stdout);
        }
    };
    let quoted: Vec<String> = args
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    let run = format!("'{}' {}", exe.display(), quoted.join(" "));
    let run = if timed {
        // $EPOCHREALTIME costs no process per line.
        format!(
            "set -o pipefail; {run} | while IFS= read -r l; do printf '%s %s\\n' \"$EPOCHREALTIME\" \"$l\"; done"
        )
    } else {
        format!("exec {run}")
    };
    let inner = format!(
        r#"cg=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)
mkdir "$cg/runner" && echo 0 >"$cg/runner/cgroup.procs"
for c in $(cat "$cg/cgroup.controllers"); do echo "+$c" >"$cg/cgroup.subtree_control"; done
export {GUEST_MARK}=vm-guest {sandbox}="$cg" CI=true TMPDIR=/var/tmp RUST_BACKTRACE=1
cd '{MANIFEST_DIR}' && {run}
"#,
        sandbox = super::sandbox::SANDBOX_CGROUP,
    );
    let (host_dir, guest_dir) = vm.shared_dir(&format!(
        "runner-{}",
        vm.next_job.fetch_add(1, Ordering::Relaxed)
    ));
    fs::write(host_dir.join("inner.sh"), inner)
        .map_err(|e| format!("{}: {e}", host_dir.display()))?;
    // systemd-run expands $VAR in its arguments (252): the script is a file.
    vm.sh_watched(
        &format!("exec systemd-run --quiet --scope -p Delegate=yes -- bash {guest_dir}/inner.sh\n"),
        timeout,
        Duration::from_secs(
            std::env::var("DS01_VM_WATCH")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(300),
        ),
        &mut tick,
    )
}

/// The time of each test of a `timed` run of [`run_test_binary`] with one test thread (libtest
/// prints "test NAME ... ok" as each ends, and the next starts right then): (name, seconds),
/// slowest first; and `stdout` without the times.
pub fn test_times(stdout: &str) -> (Vec<(String, f64)>, String) {
    let mut times = Vec::new();
    let mut plain = String::new();
    let mut previous: Option<f64> = None;
    for line in stdout.lines() {
        let (at, text) = match line.split_once(' ') {
            Some((t, rest)) => match t.parse::<f64>() {
                Ok(t) => (Some(t), rest),
                Err(_) => (None, line),
            },
            None => (line.parse::<f64>().ok(), ""),
        };
        plain.push_str(text);
        plain.push('\n');
        let Some(at) = at else { continue };
        if text.starts_with("running ") {
            previous = Some(at);
        } else if let Some(name) = text
            .strip_prefix("test ")
            .and_then(|t| t.split(" ... ").next())
        {
            if text.contains(" ... ") {
                times.push((name.to_owned(), at - previous.unwrap_or(at)));
                previous = Some(at);
            }
        }
    }
    times.sort_by(|a, b| b.1.total_cmp(&a.1));
    (times, plain)
}

#[test]
fn test_times_are_the_gaps_between_results() {
    let out = "10.0 running 3 tests\n12.5 test a ... ok\n20.0 test b ... FAILED\n20.25 test c ... ignored\n21.0 \n21.0 test result: ok.\n";
    let (times, plain) = test_times(out);
    assert_eq!(
        times,
        [("b".into(), 7.5), ("a".into(), 2.5), ("c".into(), 0.25)]
    );
    assert_eq!(
        plain,
        "running 3 tests\ntest a ... ok\ntest b ... FAILED\ntest c ... ignored\n\ntest result: ok.\n"
    );
}
