//! A real systemd 252 booted as PID 1 of private namespaces, one per test, talked to over its
//! own system bus. The recipe and its hazards: /work/shared/docs/systemd-sandbox.md.
//!
//! All process and cgroup handling lives in supervisor.sh (one shell per sandbox, outside it),
//! so that teardown has a single path whether the test passes, panics or is SIGKILLed.

use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::cgroup::{parse_enforcement, Enforcement};
use super::cmd::{clear_tool_env, ok_stdout};

const SUPERVISOR: &str = include_str!("supervisor.sh");
const BOOT: &str = include_str!("boot.sh");
const SYSTEMD: &str = "/usr/lib/systemd/systemd";
/// On cgroup v2: the delegated cgroup directory below which sandboxes are made.
pub const SANDBOX_CGROUP: &str = "DS01_SANDBOX_CGROUP";
/// How long a sandbox's systemd may take to boot: generous, as boot takes about a second on an
/// idle machine but CI machines are shared.
fn boot_timeout() -> Duration {
    super::deadline(Duration::from_secs(30))
}

pub struct Sandbox {
    name: String,
    /// Host PID of the sandbox's systemd; 0 until known.
    pid: u32,
    workdir: PathBuf,
    cgroup_dirs: Vec<PathBuf>,
    boot_time: Duration,
    /// The only write end of the supervisor's stdin: dropping it starts the teardown.
    teardown: Option<OwnedFd>,
    supervisor: Child,
    supervisor_out: BufReader<ChildStdout>,
}

/// A booted sandbox, or None after printing "SKIPPED: <reason>" when this machine cannot boot
/// one. Under CI=true or DS01_REQUIRE_SYSTEMD=1 that is a panic instead: a test that skips
/// silently in CI tests nothing. A machine that should manage but fails to boot always panics.
pub fn sandbox_or_skip() -> Option<Sandbox> {
    if !sandbox_available_or_skip() {
        return None;
    }
    match Sandbox::boot() {
        Ok(sandbox) => Some(sandbox),
        Err(e) => panic!("booting the systemd sandbox failed: {e}"),
    }
}

/// Two sandboxes booted in parallel (the same rules as [`sandbox_or_skip`]).
pub fn two_sandboxes_or_skip() -> Option<(Sandbox, Sandbox)> {
    if !sandbox_available_or_skip() {
        return None;
    }
    Some(std::thread::scope(|s| {
        let a = s.spawn(Sandbox::boot);
        let b = s.spawn(Sandbox::boot);
        (
            a.join().expect("boot thread").expect("sandbox a boots"),
            b.join().expect("boot thread").expect("sandbox b boots"),
        )
    }))
}

/// Whether sandboxes can be booted here; if not, prints "SKIPPED: <reason>" and returns false,
/// or panics under CI=true or DS01_REQUIRE_SYSTEMD=1. For tests that boot sandboxes in other
/// ways than sandbox_or_skip (in other threads or processes).
pub fn sandbox_available_or_skip() -> bool {
    match Sandbox::unavailable() {
        None => true,
        Some(reason) => super::skip("a real systemd", &reason),
    }
}

impl Sandbox {
    /// Why no sandbox can be booted on this machine, if that is so.
    pub fn unavailable() -> Option<String> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Some("not root (namespaces, mounts and cgroups need it)".into());
        }
        if !Path::new(SYSTEMD).is_file() {
            return Some(format!("no {SYSTEMD}"));
        }
        // boot.sh names dbus-daemon by path, as units must.
        if !Path::new("/usr/bin/dbus-daemon").is_file() {
            return Some("no /usr/bin/dbus-daemon".into());
        }
        for tool in ["unshare", "nsenter", "busctl", "systemctl", "systemd-run"] {
            if !on_path(tool) {
                return Some(format!("no {tool} on PATH"));
            }
        }
        if machine_is_unified() {
            // The unified hierarchy: sandboxes go below a cgroup delegated to this run (the
            // VM's runner makes one, support/vm.rs).
            return match std::env::var_os(SANDBOX_CGROUP) {
                Some(dir) if Path::new(&dir).join("cgroup.subtree_control").is_file() => None,
                _ => Some(format!(
                    "cgroup v2 machine without {SANDBOX_CGROUP} (a delegated cgroup for the sandboxes; the v2 VM's runner sets it)"
                )),
            };
        }
        if !Path::new("/sys/fs/cgroup/memory").is_dir() || !Path::new("/sys/fs/cgroup/cpu").is_dir()
        {
            return Some("no v1 cpu and memory cgroup hierarchies under /sys/fs/cgroup".into());
        }
        None
    }

    /// Boots a fresh sandbox and waits until its manager's SystemState is "running".
    pub fn boot() -> Result<Sandbox, String> {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let started = Instant::now();
        let name = format!(
            "ds01-sandbox-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let workdir = std::env::temp_dir().join(&name);
        let (read_end, write_end) = cloexec_pipe().map_err(|e| format!("pipe: {e}"))?;
        let mut supervisor = Command::new("sh")
            .arg("-c")
            .arg(SUPERVISOR)
            .arg("ds01-sandbox-supervisor")
            .env("DS01_SANDBOX_NAME", &name)
            .env("DS01_SANDBOX_WORKDIR", &workdir)
            .env("DS01_SANDBOX_BOOT", BOOT)
            .stdin(Stdio::from(read_end))
            .stdout(Stdio::piped())
            // Away from the terminal's process group: a Ctrl-C must reach only the test
            // process, whose death the supervisor then notices.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("spawning the supervisor shell: {e}"))?;
        let Some(stdout) = supervisor.stdout.take() else {
            unreachable!("stdout was piped")
        };
        // From here on, every early return drops the Sandbox and so tears down what exists.
        let mut sandbox = Sandbox {
            name,
            pid: 0,
            workdir,
            cgroup_dirs: Vec::new(),
            boot_time: Duration::ZERO,
            teardown: Some(write_end),
            supervisor,
            supervisor_out: BufReader::new(stdout),
        };

        let launcher = sandbox.read_launch_report()?;
        sandbox.pid = sandbox.wait_for_pid1(launcher, started)?;
        sandbox.wait_until_running(started)?;
        sandbox.boot_time = started.elapsed();
        Ok(sandbox)
    }

    /// Reads the supervisor's "cgroup <dir>" lines up to "launcher <pid>" or "error <why>".
    fn read_launch_report(&mut self) -> Result<u32, String> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self
                .supervisor_out
                .read_line(&mut line)
                .map_err(|e| format!("reading the supervisor: {e}"))?;
            if n == 0 {
                return Err("the supervisor exited before launching the sandbox".into());
            }
            let line = line.trim_end();
            if let Some(dir) = line.strip_prefix("cgroup ") {
                self.cgroup_dirs.push(PathBuf::from(dir));
            } else if let Some(pid) = line.strip_prefix("launcher ") {
                return pid
                    .parse()
                    .map_err(|e| format!("supervisor reported launcher {pid:?}: {e}"));
            } else if let Some(why) = line.strip_prefix("error ") {
                return Err(format!("supervisor: {why}"));
            } else {
                return Err(format!("unexpected line from the supervisor: {line:?}"));
            }
        }
    }

    /// The launcher is `unshare --fork`; its only child is PID 1 of the new namespaces.
    fn wait_for_pid1(&self, launcher: u32, started: Instant) -> Result<u32, String> {
        let children = format!("/proc/{launcher}/task/{launcher}/children");
        loop {
            if !alive(launcher) {
                return Err(format!(
                    "the launcher (unshare, PID {launcher}) exited; console:\n{}",
                    self.console_log()
                ));
            }
            let listed = fs::read_to_string(&children).map_err(|e| format!("{children}: {e}"))?;
            if let Some(pid) = listed.split_whitespace().next() {
                return pid.parse().map_err(|e| format!("{children}: {pid:?}: {e}"));
            }
            if started.elapsed() > boot_timeout() {
                return Err(format!(
                    "unshare (PID {launcher}) started no child within {:?}; console:\n{}",
                    boot_timeout(),
                    self.console_log()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn wait_until_running(&self, started: Instant) -> Result<(), String> {
        let mut state = String::from("(no answer on the bus yet)");
        // Until boot.sh has mounted the sandbox's own /run and exec'd systemd, the bus address
        // below leads to the machine's /run: on a host whose systemd runs (the v2 VM), its
        // system bus would answer "running" for the sandbox.
        let exe = format!("/proc/{}/exe", self.pid);
        while !fs::read_link(&exe).is_ok_and(|p| p == Path::new(SYSTEMD)) {
            if !alive(self.pid) || started.elapsed() > boot_timeout() {
                return Err(format!(
                    "PID 1 of the sandbox (PID {}) never became {SYSTEMD}; console:\n{}",
                    self.pid,
                    self.console_log()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        loop {
            if !alive(self.pid) {
                return Err(format!(
                    "systemd (PID {}) exited during boot; console:\n{}",
                    self.pid,
                    self.console_log()
                ));
            }
            let out = self.busctl(&[
                "--timeout=2",
                "get-property",
                "org.freedesktop.systemd1",
                "/org/freedesktop/systemd1",
                "org.freedesktop.systemd1.Manager",
                "SystemState",
            ]);
            if out.status.success() {
                // busctl prints: s "running"
                let s = String::from_utf8_lossy(&out.stdout);
                state = s
                    .trim()
                    .trim_start_matches("s ")
                    .trim_matches('"')
                    .to_string();
                match state.as_str() {
                    "running" => return Ok(()),
                    "degraded" | "maintenance" | "stopping" => break,
                    _ => {}
                }
            }
            if started.elapsed() > boot_timeout() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let failed = self.systemctl(&["--failed", "--no-legend", "--no-pager"]);
        Err(format!(
            "SystemState is {state:?}, not \"running\", {:.1} s after boot started; failed units: {}\nconsole:\n{}",
            started.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&failed.stdout).trim(),
            self.console_log()
        ))
    }

    /// The host PID of the sandbox's systemd (PID 1 inside).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The name of the sandbox's cgroup directories (ds01-sandbox-<test pid>-<n>).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// From the start of boot() until SystemState was "running".
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// The machine-side cgroup directories that hold the sandbox (one per hierarchy; the memory
    /// one is a child of the test process's memory cgroup). All are gone after drop.
    pub fn host_cgroup_dirs(&self) -> &[PathBuf] {
        &self.cgroup_dirs
    }

    /// Whether the sandbox runs on the unified hierarchy (cgroup v2: one directory, below
    /// DS01_SANDBOX_CGROUP) rather than v1's one directory per hierarchy.
    pub fn unified(&self) -> bool {
        machine_is_unified()
    }

    /// The machine-side directory that is the sandbox systemd's cgroup root in the hierarchy of
    /// `controller` (v1), or in the single one (v2: the "payload" leaf that boot.sh enters).
    pub fn systemd_cgroup_root(&self, controller: &str) -> PathBuf {
        if self.unified() {
            return self.cgroup_dirs[0].join("payload");
        }
        let hierarchy = Path::new("/sys/fs/cgroup").join(controller);
        self.cgroup_dirs
            .iter()
            .find(|d| d.starts_with(&hierarchy))
            .cloned()
            .unwrap_or_else(|| panic!("sandbox {} has no {controller} cgroup", self.name))
    }

    /// D-Bus address of the sandbox's system bus, usable from outside the sandbox.
    pub fn bus_address(&self) -> String {
        format!(
            "unix:path=/proc/{}/root/run/dbus/system_bus_socket",
            self.pid
        )
    }

    /// Path, as seen from the machine, of `p` inside the sandbox (through /proc/<pid>/root).
    pub fn host_path(&self, p: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid)).join(p.trim_start_matches('/'))
    }

    /// Runs a command inside the sandbox's mount, PID, UTS and IPC namespaces, without the
    /// environment variables ds01-slices reads. The process stays in the test's cgroups but
    /// dies with the sandbox (it is in its PID namespace).
    pub fn exec(&self, args: &[&str]) -> Output {
        clear_tool_env(&mut Command::new("nsenter"))
            .args(["-t", &self.pid.to_string(), "-m", "-p", "-u", "-i", "--"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("nsenter can be spawned (checked by Sandbox::unavailable)")
    }

    /// `systemctl <args>` inside (it refuses to run on a machine not booted with systemd).
    pub fn systemctl(&self, args: &[&str]) -> Output {
        self.exec(&[&["systemctl"], args].concat())
    }

    /// `systemd-run <args>` inside.
    pub fn systemd_run(&self, args: &[&str]) -> Output {
        self.exec(&[&["systemd-run"], args].concat())
    }

    /// `busctl --address=<this sandbox's bus> <args>`, from outside, as the product talks to it.
    pub fn busctl(&self, args: &[&str]) -> Output {
        Command::new("busctl")
            .arg(format!("--address={}", self.bus_address()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("busctl can be spawned (checked by Sandbox::unavailable)")
    }

    /// Starts transient service `unit` in `slice`, spinning one CPU flat out.
    pub fn start_busy_loop(&self, unit: &str, slice: &str) -> Result<(), String> {
        let out = self.systemd_run(&[
            &format!("--unit={unit}"),
            &format!("--slice={slice}"),
            "--",
            "sh",
            "-c",
            "while :; do :; done",
        ]);
        ok_stdout(&format!("systemd-run {unit} (busy loop)"), out).map(drop)
    }

    /// Starts transient service `unit` in `slice` that holds about `mib` MiB of anonymous memory
    /// (plus ~1 MiB): dd fills a buffer of that size and then blocks writing it into a pipe
    /// nobody reads. The memory is in place a few milliseconds after this returns; over the
    /// slice's MemoryMax, dd is OOM-killed and the service keeps running without it.
    pub fn start_memory_hog(&self, unit: &str, slice: &str, mib: u64) -> Result<(), String> {
        let script = format!("dd if=/dev/zero bs={mib}M count=1 status=none | sleep infinity");
        let out = self.systemd_run(&[
            &format!("--unit={unit}"),
            &format!("--slice={slice}"),
            "--",
            "sh",
            "-c",
            &script,
        ]);
        ok_stdout(&format!("systemd-run {unit} (memory hog)"), out).map(drop)
    }

    /// Starts scope `unit` (e.g. named as a Docker container's, `docker-ID.scope`) in `slice`,
    /// with one sleeping process, and waits until it runs. systemd moves the process that asks
    /// for a scope into it, so the scope is asked for from a service of the sandbox: on cgroup
    /// v2 the sandbox's systemd cannot move a process of the test's own cgroup ("Job failed").
    pub fn start_sleeping_scope(&self, unit: &str, slice: &str) -> Result<(), String> {
        let out = self.systemd_run(&[
            "--collect",
            "--",
            "systemd-run",
            "--scope",
            &format!("--unit={unit}"),
            &format!("--slice={slice}"),
            "--",
            "sh",
            "-c",
            "sleep infinity >/dev/null 2>&1 </dev/null &",
        ]);
        ok_stdout(&format!("systemd-run --scope {unit}"), out)?;
        super::wait_until(Duration::from_secs(30), &format!("{unit} running"), || {
            let out = self.systemctl(&["show", "--property=ActiveState,TasksCurrent", unit]);
            let shown = String::from_utf8_lossy(&out.stdout).into_owned();
            let lines: Vec<&str> = shown.lines().collect();
            (lines.contains(&"ActiveState=active") && lines.contains(&"TasksCurrent=1"))
                .then_some(())
        })
    }

    /// The unit's ControlGroup, relative to the sandbox's cgroup root (e.g.
    /// "/ds01.slice/ds01-student.slice/ds01-student-alice.slice"); empty while inactive.
    pub fn control_group(&self, unit: &str) -> Result<String, String> {
        let out = self.systemctl(&["show", "--property=ControlGroup", "--value", unit]);
        ok_stdout(&format!("ControlGroup of {unit}"), out).map(|s| s.trim().to_string())
    }

    /// Directory, seen from the machine, of `control_group` in the sandbox's hierarchy of
    /// `controller` (v1), or in its single hierarchy when it has no per-controller ones (v2).
    pub fn cgroup_dir(&self, controller: &str, control_group: &str) -> PathBuf {
        let root = self.host_path("/sys/fs/cgroup");
        let cg = control_group.trim_start_matches('/');
        let v1 = root.join(controller);
        if v1.is_dir() {
            v1.join(cg)
        } else {
            root.join(cg)
        }
    }

    /// What the kernel enforces on `control_group`, read from its control files.
    pub fn enforcement(&self, control_group: &str) -> Result<Enforcement, String> {
        let read = |file: &str| {
            let controller = file.split('.').next()?;
            fs::read_to_string(self.cgroup_dir(controller, control_group).join(file)).ok()
        };
        parse_enforcement(&read).map_err(|e| format!("{control_group}: {e}"))
    }

    /// What systemd and the boot script wrote to the sandbox's console (systemd logs there).
    pub fn console_log(&self) -> String {
        fs::read_to_string(self.workdir.join("console.log"))
            .unwrap_or_else(|e| format!("(no console log: {e})"))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // EOF on its stdin makes the supervisor kill everything in the sandbox's cgroups, remove
        // them depth-first and remove workdir; it then closes its stdout and exits.
        drop(self.teardown.take());
        let mut report = String::new();
        let _ = self.supervisor_out.read_to_string(&mut report);
        let status = self.supervisor.wait();
        let left: Vec<_> = self
            .cgroup_dirs
            .iter()
            .filter(|d| d.exists())
            .map(|d| d.display().to_string())
            .collect();
        let clean = status.as_ref().is_ok_and(|s| s.success()) && left.is_empty();
        if !clean {
            let msg = format!(
                "teardown of sandbox {} was not clean: supervisor {status:?}, cgroups left {left:?}\n{}",
                self.name,
                report.trim()
            );
            // A second panic while unwinding would abort and hide the first.
            if std::thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

/// Whether this machine runs the unified hierarchy (cgroup v2) at /sys/fs/cgroup, which decides
/// the sandbox recipe here and in supervisor.sh (there by the file system type).
fn machine_is_unified() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// Running, as opposed to gone or a zombie (the launcher stays one until the supervisor reaps it).
fn alive(pid: u32) -> bool {
    // The state follows the parenthesised command name, which may itself contain ") ".
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with(['Z', 'X']))
    })
}

pub(super) fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// Both ends close on exec, so no other child of this process (other tests spawn children
/// concurrently) inherits the write end and keeps the supervisor from seeing EOF; the read end
/// reaches the supervisor only through dup2 onto its stdin.
pub(super) fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fresh descriptors into the array, which we own from here on.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
