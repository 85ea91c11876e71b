//! `--host`: another machine's systemd over ssh, as `systemctl -H` reaches it. Only for the
//! commands that read systemd and nothing of this machine's that belongs to that host.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};

use super::args::{Backend, Command, Globals};
use super::exit::CliError;
use crate::error::{Exit, ExitStatus, UsageError};
use crate::model::fleet::{self, Host, DEFAULT_SSH};
use crate::process::{self, Group};
use crate::state::ownership::Ownership;
use crate::systemd::{BusError, BusSystemd};

/// The environment variable that names the ssh program (`--host` and `fleet`).
pub const SSH_ENV: &str = "DS01_SSH";

/// The ssh program: `DS01_SSH`, or `ssh`.
pub fn ssh_program() -> String {
    std::env::var(SSH_ENV)
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_SSH.to_owned())
}

/// Why `command` does not run with `--host`, if it does not.
pub fn check_allowed(globals: &Globals, host: &Host, command: &Command) -> Result<(), UsageError> {
    // clap cannot tell `--bus` from the environment's address, which --host overrides.
    let from_env = std::env::var("DBUS_SYSTEM_BUS_ADDRESS").ok();
    if globals.bus.is_some() && globals.bus != from_env {
        return Err(UsageError(format!(
            "--host {host} and --bus name two systemds; give one of them"
        )));
    }
    let why = match command {
        Command::Verify { offline: true, .. } => {
            "`verify --offline` reads rendered files of this machine"
        }
        Command::Verify { .. } | Command::Status { .. } => return Ok(()),
        Command::Apply {
            dry_run: true,
            backend: Backend::Auto | Backend::Dbus,
            ..
        } => return Ok(()),
        Command::Apply { dry_run: true, .. } => {
            "`apply --backend files` renders this machine's files"
        }
        Command::Apply { .. } => "`apply` writes (only `apply --dry-run` reads)",
        Command::Render { .. } => "`render` writes files of this machine",
        Command::Hook(_) => "a hook writes and admits containers on this machine",
        Command::Gate { .. } => "the gate serves this machine's Docker socket",
        Command::Metrics { .. } | Command::Serve { .. } => {
            "metrics are read from this machine's cgroup files"
        }
        Command::Doctor => "`doctor` checks this machine",
        Command::DaemonReload { .. } => "`daemon-reload` reloads this machine's systemd",
        Command::Fleet(_) => "`fleet` takes its hosts from --hosts",
        Command::Show { .. } | Command::Plan { .. } | Command::CheckConfig => {
            "this command reads only the configuration here"
        }
    };
    Err(refusal(host, why))
}

pub fn refusal(host: &Host, why: &str) -> UsageError {
    UsageError(format!(
        "--host {host}: {why}; --host works with verify, status and apply --dry-run, which only read {host}'s systemd (run the command on {host}, or `ds01-slices fleet` over many hosts)"
    ))
}

/// The note every `--host` run adds to its report.
pub fn note(host: &Host) -> String {
    format!(
        "note: {host}: read from its systemd over ssh; its cgroup files and its records are not read here (run `ds01-slices fleet verify` for the host's full check)"
    )
}

#[derive(Debug, thiserror::Error)]
#[error("cannot reach the systemd of {host} over ssh: `{ssh} -xT -oBatchMode=yes -oConnectTimeout={secs} -- {host} {bridge}` gave no D-Bus connection ({reason}); check that `{ssh} {host} true` logs in without a prompt (BatchMode: a key or an agent, a known host key) and that {host} runs systemd; ssh's own message, if any, is above")]
pub struct Unreachable {
    host: Host,
    ssh: String,
    secs: u64,
    bridge: &'static str,
    reason: String,
}

impl ExitStatus for Unreachable {
    fn exit_code(&self) -> Exit {
        Exit::Failure
    }
}

impl Globals {
    /// The systemd this run reads: `--host`'s over ssh, or `--bus` (the system bus).
    pub async fn connect(&self) -> Result<BusSystemd, CliError> {
        let Some(host) = &self.host else {
            return Ok(BusSystemd::connect(self.bus.as_deref(), self.timeout()).await?);
        };
        let ssh = ssh_program();
        let secs = self.timeout().as_secs();
        // What `systemctl -H` would connect to, for messages: the same program and arguments.
        let address = fleet::remote_bus_address(&ssh, host, secs)?;
        let (stream, carrier) = Carrier::spawn(&ssh, host, secs).map_err(|e| {
            CliError::from(Unreachable {
                host: host.clone(),
                ssh: ssh.clone(),
                secs,
                bridge: fleet::STDIO_BRIDGE,
                reason: e,
            })
        })?;
        BusSystemd::connect_over(stream, address, self.timeout(), carrier)
            .await
            .map_err(|e| {
                // Once ssh or its bridge ends, zbus sees the end of its stream: whatever it
                // calls that, it is this one error.
                let reason = match e {
                    BusError::Unreachable { reason, .. } => reason,
                    BusError::Disconnected { detail, .. } => detail,
                    BusError::Timeout { secs, .. } => format!("no answer within {secs} s"),
                    other => return CliError::from(other),
                };
                CliError::from(Unreachable {
                    host: host.clone(),
                    ssh,
                    secs,
                    bridge: fleet::STDIO_BRIDGE,
                    reason,
                })
            })
    }

    /// The cgroup file system to read the kernel's values from: none for `--host`, whose
    /// cgroup files are on the other machine.
    pub fn kernel_root(&self) -> Option<&Path> {
        match self.host {
            Some(_) => None,
            None => Some(&self.cgroup_root),
        }
    }

    /// The ownership records: `--state-dir`'s, or none for `--host` (this machine's
    /// records are not that host's).
    pub fn ownership(&self) -> Ownership {
        match self.host {
            Some(_) => Ownership::none(),
            None => Ownership::new(&self.state_dir).with_lock_wait(self.timeout()),
        }
    }

    /// The note of a `--host` run, if this is one.
    pub fn remote_note(&self) -> Option<String> {
        self.host.as_ref().map(note)
    }
}

/// The ssh that carries a `--host` connection: `ssh ... HOST systemd-stdio-bridge` with its
/// stdin and stdout on one end of a socket pair, in a process group of its own so that ssh and
/// whatever it started (a ProxyCommand) go together: killed and reaped when the connection is
/// dropped (the run's end, an error, a timeout: a server that stalls after its banner holds
/// ssh for good otherwise) and on SIGINT, SIGTERM or SIGHUP ([`exit_on_signals`]).
struct Carrier {
    child: Mutex<Child>,
    group: Group,
    signals: tokio::task::JoinHandle<()>,
}

impl Carrier {
    fn spawn(
        ssh: &str,
        host: &Host,
        secs: u64,
    ) -> Result<(tokio::net::UnixStream, Arc<dyn Send + Sync>), String> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
        let out = theirs.try_clone().map_err(|e| e.to_string())?;
        let child = std::process::Command::new(ssh)
            .args(fleet::ssh_args(
                host,
                secs,
                &[fleet::STDIO_BRIDGE.to_owned()],
            ))
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::from(OwnedFd::from(out)))
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot run {ssh:?}: {e}; install ssh or set {SSH_ENV}"))?;
        let group = Group::led_by(child.id());
        let signals = exit_on_signals();
        ours.set_nonblocking(true).map_err(|e| e.to_string())?;
        let stream = tokio::net::UnixStream::from_std(ours).map_err(|e| e.to_string())?;
        let carrier = Carrier {
            child: Mutex::new(child),
            group,
            signals,
        };
        Ok((stream, Arc::new(carrier)))
    }
}

impl Drop for Carrier {
    fn drop(&mut self) {
        self.signals.abort();
        // Killed before its leader is reaped, so that the group's number is still its own.
        self.group.kill();
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = child.wait();
    }
}

/// Ends this process on SIGINT, SIGTERM or SIGHUP (exit 130, 143, 129), killing first every
/// process group it started ([`process::kill_live`]): ssh in a group of its own is out of reach
/// of a terminal's Ctrl-C, and a process killed by a signal runs no destructor. Runs on the
/// current runtime until aborted.
pub fn exit_on_signals() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let kinds = [
            (SignalKind::interrupt(), 130),
            (SignalKind::terminate(), 143),
            (SignalKind::hangup(), 129),
        ];
        let mut streams = Vec::new();
        for (kind, code) in kinds {
            if let Ok(s) = signal(kind) {
                streams.push((s, code));
            }
        }
        let waits = streams.iter_mut().map(|(s, code)| {
            Box::pin(async move {
                s.recv().await;
                *code
            })
        });
        let (code, ..) = futures_util::future::select_all(waits).await;
        process::kill_live();
        std::process::exit(code);
    })
}
