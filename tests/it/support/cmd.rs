//! The binary under test, started with a clean environment, and what one run of it did.

use std::fmt;
use std::process::{Child, Command, Output, Stdio};

/// The `ds01-slices` binary cargo built for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_ds01-slices");

/// Every environment variable `ds01-slices` reads (`grep -rn env src/`): the global options'
/// stand-ins, the bus address (also read by the client), phase tracing, the write-chunk
/// override and the ssh program. A test that wants one sets it on the command after [`ds01`].
pub const TOOL_ENV: [&str; 8] = [
    "DS01_CONFIG",
    "DS01_STATE_DIR",
    "DS01_CGROUP_ROOT",
    "DS01_ROOT",
    "DBUS_SYSTEM_BUS_ADDRESS",
    "DS01_TRACE",
    "DS01_WRITE_CHUNK",
    "DS01_SSH",
];

/// Removes [`TOOL_ENV`] from `cmd`'s environment, so that nothing of the caller's (a developer's
/// DS01_CONFIG, a CI machine's bus address) reaches the binary: also for commands that start it
/// indirectly (a shell script, nsenter, setpriv).
pub fn clear_tool_env(cmd: &mut Command) -> &mut Command {
    for var in TOOL_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// `ds01-slices <args>` with none of [`TOOL_ENV`] inherited and stdin from /dev/null.
pub fn ds01(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    clear_tool_env(&mut cmd).args(args).stdin(Stdio::null());
    cmd
}

/// What one run of a command did. Output that is not UTF-8 fails the test.
#[derive(Debug, Clone)]
pub struct Run {
    /// None when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Runs `cmd` to completion.
    pub fn of(cmd: &mut Command) -> Run {
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
            .into()
    }

    /// Asserts the exit code; `what` says which run this is.
    #[track_caller]
    pub fn assert_code(self, code: i32, what: impl fmt::Display) -> Run {
        assert_eq!(self.code, Some(code), "{what}\n{self}");
        self
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl From<Output> for Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
            stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
        }
    }
}

/// The stdout of a successful command, or an error with its status and stderr.
pub fn ok_stdout(what: &str, out: Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what} failed ({}): stderr: {}; stdout: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

/// `cmd` made to die with the calling thread (`setpriv --pdeathsig KILL`).
pub fn dying_with_test(program: &str, args: &[String]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--pdeathsig", "KILL", "--", program]).args(args);
    cmd
}

/// A child process killed and reaped on drop.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the ignored test `name` of this test binary as a process of its own, with `env` set (the
/// test does nothing without it), until it prints a line with `marker`; then SIGKILLs and reaps
/// it. What followed the marker, or None if it said nothing of the kind within `within` (read
/// in a thread: a process that never says it must fail the test, not hang it). For the tests of
/// what outlives a SIGKILLed test process.
pub fn killed_after_saying(
    name: &str,
    env: &str,
    marker: &str,
    within: std::time::Duration,
) -> Option<String> {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(env, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the test binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let marker = marker.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // libtest prints "test <name> ... " before the test's own output, on the same line.
        let said = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.split_once(&marker).map(|(_, rest)| rest.to_owned()));
        let _ = tx.send(said);
    });
    let said = rx.recv_timeout(within).ok().flatten();
    child.kill().expect("SIGKILL the test process");
    child.wait().expect("reap the test process");
    said
}
