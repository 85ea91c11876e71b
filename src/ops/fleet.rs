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
            // A run abandoned at its deadline (or by an interrupted fleet) takes its ssh along.
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
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let finished = tokio::time::timeout(timeout, async {
            let (out, err, status) = tokio::join!(
                read_capped(stdout, MAX_STDOUT),
                read_capped(stderr, MAX_STDERR),
                child.wait()
            );
            (out, err, status)
        })
        .await;
        match finished {
            Ok((stdout, stderr, status)) => RunFacts {
                code: status.ok().and_then(|s| s.code()),
                timed_out: false,
                spawn_error: None,
                stdout,
                stderr,
            },
            Err(_) => {
                // Killed and reaped now, not left to kill_on_drop's lazy reaping.
                let _ = child.kill().await;
                RunFacts {
                    timed_out: true,
                    ..RunFacts::default()
                }
            }
        }
    }
}

/// Up to `cap` bytes of a pipe, as text; the rest is not read (the writer gets EPIPE).
async fn read_capped<R: AsyncRead + Unpin>(pipe: Option<R>, cap: u64) -> String {
    let mut bytes = Vec::new();
    if let Some(pipe) = pipe {
        let _ = pipe.take(cap).read_to_end(&mut bytes).await;
    }
    String::from_utf8_lossy(&bytes).into_owned()
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
