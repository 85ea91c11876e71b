//! `fleet`: one command run on many hosts over ssh, a bounded number at a time, each within
//! its own deadline, judged into one report (`model::fleet`). The processes are behind
//! [`RemoteRunner`], so that the use case is tested without ssh.

use std::future::Future;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{Exit, ExitStatus};
use crate::model::fleet::{self, FleetCommand, Host, HostResult, HostsFileError, RunFacts};
use crate::process::Group;

/// A hosts file lists a few hundred names at most: anything larger is the wrong file.
const MAX_HOSTS_FILE: u64 = 1 << 20;
/// A remote report of 1,000 slices is ~2 MiB of JSON; more is not a ds01-slices report.
const MAX_STDOUT: u64 = 16 << 20;
/// Only the first line of stderr is shown; the rest is kept for nobody.
const MAX_STDERR: u64 = 64 << 10;
/// ssh's own connection wait, at most: a host that answers in no 30 s is down.
const MAX_CONNECT_TIMEOUT: u64 = 30;

/// Runs one remote command; never fails: every outcome is in the [`RunFacts`].
pub trait RemoteRunner {
    fn run(
        &self,
        host: &Host,
        remote: &[String],
        timeout: Duration,
    ) -> impl Future<Output = RunFacts>;
}

/// The real runner: the ssh program (`DS01_SSH`, or `ssh`) with options that never prompt.
pub struct SshRunner {
    pub program: String,
    /// ssh's ConnectTimeout, in seconds.
    pub connect_timeout: u64,
}

impl SshRunner {
    pub fn new(program: String, host_timeout: Duration) -> SshRunner {
        SshRunner {
            program,
            connect_timeout: host_timeout.as_secs().clamp(1, MAX_CONNECT_TIMEOUT),
        }
    }
}

impl RemoteRunner for SshRunner {
    async fn run(&self, host: &Host, remote: &[String], timeout: Duration) -> RunFacts {
        let mut child = match tokio::process::Command::new(&self.program)
            .args(fleet::ssh_args(host, self.connect_timeout, remote))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // ssh and what it starts (a ProxyCommand) in a group of their own, which goes
            // together when the run is given up on: at its deadline, or abandoned.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                return RunFacts {
                    spawn_error: Some(format!(
                        "cannot run the ssh program {:?}: {e}; install ssh or set DS01_SSH to the program to use",
                        self.program
                    )),
                    ..RunFacts::default()
                }
            }
        };
        // Declared after the child, so dropped (the group killed) before the child is.
        let group = child.id().map(Group::led_by);
        let stdout = Pipe::read(child.stdout.take(), MAX_STDOUT);
        let stderr = Pipe::read(child.stderr.take(), MAX_STDERR);
        // The exit status decides, not the pipes' ends: with OpenSSH's ControlPersist, the
        // master ssh leaves behind keeps stderr open for as long as it persists, so a run that
        // waited for both ends timed out on every host that answered.
        let finished = tokio::time::timeout(timeout, child.wait()).await;
        match finished {
            Ok(status) => {
                if let Some(group) = group {
                    group.leader_exited();
                }
                RunFacts {
                    code: status.ok().and_then(|s| s.code()),
                    timed_out: false,
                    spawn_error: None,
                    stdout: stdout.drained().await,
                    stderr: stderr.drained().await,
                }
            }
            Err(_) => {
                // The whole group killed before its leader is reaped (the group's number is
                // then still its own), and the leader reaped now, not left to kill_on_drop's
                // lazy reaping.
                if let Some(mut group) = group {
                    group.kill();
                }
                let _ = child.kill().await;
                RunFacts {
                    timed_out: true,
                    ..RunFacts::default()
                }
            }
        }
    }
}

/// How long a pipe is still read after its process exited, for what it wrote before it
/// ended (already in the pipe): a deadline for bytes that are there, not a claim about speed.
/// A pipe that another process keeps open (ControlPersist's master) ends no sooner.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// A child's pipe read in the background as it writes, up to a cap (the rest is not read:
/// the writer gets EPIPE).
struct Pipe {
    bytes: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Pipe {
    fn read<R: AsyncRead + Unpin + Send + 'static>(pipe: Option<R>, cap: u64) -> Pipe {
        let bytes: std::sync::Arc<std::sync::Mutex<Vec<u8>>> = Default::default();
        let into = bytes.clone();
        let reader = tokio::spawn(async move {
            let Some(pipe) = pipe else { return };
            let mut pipe = pipe.take(cap);
            let mut chunk = [0u8; 8192];
            while let Ok(n @ 1..) = pipe.read(&mut chunk).await {
                lock(&into).extend_from_slice(&chunk[..n]);
            }
        });
        Pipe { bytes, reader }
    }

    /// What was read, once the pipe ended or [`DRAIN_AFTER_EXIT`] passed, as text.
    async fn drained(mut self) -> String {
        if tokio::time::timeout(DRAIN_AFTER_EXIT, &mut self.reader)
            .await
            .is_err()
        {
            self.reader.abort();
        }
        String::from_utf8_lossy(&lock(&self.bytes)).into_owned()
    }
}

impl Drop for Pipe {
    /// A run abandoned at its deadline leaves no reader behind.
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Plain bytes: a panic elsewhere cannot leave them half-written.
fn lock(bytes: &std::sync::Mutex<Vec<u8>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
    bytes
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Debug, Clone, Copy)]
pub struct FleetOptions {
    pub command: FleetCommand,
    /// `apply --dry-run`.
    pub dry_run: bool,
    /// Hosts run at once.
    pub parallel: usize,
    /// Each host's run is killed after this long.
    pub host_timeout: Duration,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FleetReport {
    pub command: FleetCommand,
    pub dry_run: bool,
    /// In the hosts file's order.
    pub hosts: Vec<HostResult>,
    /// The worst of the hosts' exit codes ([`fleet::worst`]).
    pub exit: u8,
}

impl FleetReport {
    pub fn exit_code(&self) -> Exit {
        fleet::worst(self.hosts.iter().map(HostResult::exit_code))
    }
}

/// What each host is asked to run: `<remote-bin> <command> --json [--dry-run]`.
pub fn remote_command(remote_bin: &str, opts: &FleetOptions) -> Vec<String> {
    let mut args = vec![
        remote_bin.to_owned(),
        opts.command.name().to_owned(),
        "--json".to_owned(),
    ];
    if opts.dry_run && opts.command == FleetCommand::Apply {
        args.push("--dry-run".to_owned());
    }
    args
}

/// Runs `remote` on every host, at most `opts.parallel` at a time.
pub async fn fleet<R: RemoteRunner>(
    runner: &R,
    hosts: &[Host],
    remote: &[String],
    opts: FleetOptions,
) -> FleetReport {
    let mut rows: Vec<(usize, HostResult)> = stream::iter(hosts.iter().enumerate())
        .map(|(i, host)| async move {
            let started = Instant::now();
            let facts = runner.run(host, remote, opts.host_timeout).await;
            let seconds = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
            let row = fleet::judge(host.clone(), opts.command, opts.dry_run, &facts, seconds);
            (i, row)
        })
        .buffer_unordered(opts.parallel.max(1))
        .collect()
        .await;
    rows.sort_by_key(|(i, _)| *i);
    let hosts: Vec<HostResult> = rows.into_iter().map(|(_, r)| r).collect();
    let mut report = FleetReport {
        command: opts.command,
        dry_run: opts.dry_run,
        hosts,
        exit: 0,
    };
    report.exit = report.exit_code() as u8;
    report
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("cannot read the hosts file {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error(transparent)]
    Hosts(#[from] HostsFileError),
}

impl ExitStatus for FleetError {
    fn exit_code(&self) -> Exit {
        Exit::Usage
    }
}

/// The hosts of the file at `path`, read as carefully as the configuration: a regular file
/// only (a FIFO is refused, not waited on), at most [`MAX_HOSTS_FILE`] bytes, UTF-8.
pub fn read_hosts_file(path: &Path) -> Result<Vec<Host>, FleetError> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let shown = path.display().to_string();
    let unreadable = |reason: String| FleetError::Unreadable {
        path: shown.clone(),
        reason,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            unreadable(format!(
                "{e}; pass --hosts FILE with one [USER@]HOST a line"
            ))
        })?;
    let meta = file.metadata().map_err(|e| unreadable(e.to_string()))?;
    if !meta.is_file() {
        return Err(unreadable(
            "it is not a regular file; make it a text file with one [USER@]HOST a line".into(),
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_HOSTS_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| unreadable(e.to_string()))?;
    if bytes.len() as u64 > MAX_HOSTS_FILE {
        return Err(unreadable(format!(
            "it is over {} MiB, far more than a list of hosts; point --hosts at the right file",
            MAX_HOSTS_FILE >> 20
        )));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| unreadable("it is not UTF-8 text; save it as UTF-8".into()))?;
    Ok(fleet::parse_hosts(&text, &shown)?)
}

#[cfg(test)]
#[path = "fleet_tests.rs"]
mod tests;
