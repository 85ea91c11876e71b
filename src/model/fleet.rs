//! Many servers, as pure data: the `[USER@]HOST` names `--host` and `fleet --hosts` take,
//! the hosts file, what ssh is given, and how one host's run becomes a row of the fleet's
//! report and the fleet's exit code. The processes themselves are `ops::fleet`'s.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::error::{Exit, ExitStatus};

/// Where the Debian package installs the binary: what `fleet` runs on each host by default.
pub const DEFAULT_REMOTE_BIN: &str = "/usr/sbin/ds01-slices";
/// The ssh program unless `DS01_SSH` names another.
pub const DEFAULT_SSH: &str = "ssh";
/// What `systemctl -H` runs on the far side: it joins its stdio to the host's system bus.
pub const STDIO_BRIDGE: &str = "systemd-stdio-bridge";
/// ssh's exit code for its own errors (host down, authentication refused).
const SSH_FAILED: i32 = 255;
/// A shell's exit code for a command it cannot find: the binary is not installed there.
const NOT_FOUND: i32 = 127;

/// A host as ssh is given it: `[USER@]HOST`, checked so that it cannot be read as an option
/// or split into two arguments.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Host(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("host name is empty; give [USER@]HOST, e.g. root@gpu01")]
    Empty,
    #[error("host {0:?} contains whitespace or a control character; give one [USER@]HOST")]
    Space(String),
    #[error("host {0:?} starts with '-' (ssh would read it as an option); give [USER@]HOST")]
    Dash(String),
    #[error("host {0:?} has more than one '@'; give [USER@]HOST")]
    TwoAts(String),
    #[error("host {0:?} has an empty user or host name around its '@'; give [USER@]HOST")]
    EmptyPart(String),
    #[error("host {0:?} contains ',' or '%', which a D-Bus address cannot carry to ssh; use the host's name or address without them (or an alias from ~/.ssh/config)")]
    Unaddressable(String),
}

impl ExitStatus for HostError {
    fn exit_code(&self) -> Exit {
        Exit::Usage
    }
}

impl Host {
    pub fn parse(raw: &str) -> Result<Host, HostError> {
        if raw.is_empty() {
            return Err(HostError::Empty);
        }
        let owned = || raw.to_owned();
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(HostError::Space(owned()));
        }
        // zbus 5.19 passes unixexec values on without decoding %XX (and ',' separates
        // them): such a host could not reach ssh intact through `--host`'s address.
        if raw.contains([',', '%']) {
            return Err(HostError::Unaddressable(owned()));
        }
        let parts: Vec<&str> = raw.split('@').collect();
        if parts.len() > 2 {
            return Err(HostError::TwoAts(owned()));
        }
        if parts.iter().any(|p| p.is_empty()) {
            return Err(HostError::EmptyPart(owned()));
        }
        if parts.iter().any(|p| p.starts_with('-')) {
            return Err(HostError::Dash(owned()));
        }
        Ok(Host(owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Host {
    type Err = HostError;
    fn from_str(s: &str) -> Result<Host, HostError> {
        Host::parse(s)
    }
}

/// ssh's options before the host: no X11 or terminal, never a password prompt (which would
/// hang a run with nobody to answer), and a bounded wait for the connection.
pub fn ssh_args(host: &Host, connect_timeout_secs: u64, remote: &[String]) -> Vec<String> {
    let mut args = vec![
        "-xT".to_owned(),
        "-oBatchMode=yes".to_owned(),
        format!("-oConnectTimeout={}", connect_timeout_secs.max(1)),
        "--".to_owned(),
        host.as_str().to_owned(),
    ];
    args.extend(remote.iter().cloned());
    args
}

/// The D-Bus address that reaches `host`'s system bus over ssh, as `systemctl -H` does:
/// ssh runs systemd-stdio-bridge there and its stdio is the connection.
///
/// Values are written as they are: the D-Bus specification would have `=` and `@`
/// percent-escaped, but zbus 5.19 hands unixexec values to the program without decoding
/// them (see `systemd::tests`, which pins that), so an escaped value would reach ssh
/// garbled. What cannot be written that way (',' and '%') is refused instead.
pub fn remote_bus_address(
    ssh: &str,
    host: &Host,
    connect_timeout_secs: u64,
) -> Result<String, SshProgramError> {
    check_ssh_program(ssh)?;
    let mut address = format!("unixexec:path={ssh}");
    let args = ssh_args(host, connect_timeout_secs, &[STDIO_BRIDGE.to_owned()]);
    for (i, arg) in args.iter().enumerate() {
        address.push_str(&format!(",argv{}={arg}", i + 1));
    }
    Ok(address)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DS01_SSH={0:?} is not a usable ssh program: it must be a program name or path without ',', '%' or control characters; set DS01_SSH to another program or unset it to use ssh")]
pub struct SshProgramError(pub String);

impl ExitStatus for SshProgramError {
    fn exit_code(&self) -> Exit {
        Exit::Usage
    }
}

fn check_ssh_program(ssh: &str) -> Result<(), SshProgramError> {
    if ssh.is_empty() || ssh.contains([',', '%']) || ssh.chars().any(char::is_control) {
        return Err(SshProgramError(ssh.to_owned()));
    }
    Ok(())
}

/// A problem of the hosts file, at `FILE:LINE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostsFileError {
    #[error("{file}:{line}: {error}")]
    Host {
        file: String,
        line: usize,
        error: HostError,
    },
    #[error("{file}:{line}: {host} is listed twice (first on line {first}); remove one")]
    Duplicate {
        file: String,
        line: usize,
        first: usize,
        host: Host,
    },
    #[error("{file}:{line}: {host} is the machine {earlier} of line {first} names (host names are case-insensitive, and a machine is listed once whatever the user); keep one of the two lines")]
    SameMachine {
        file: String,
        line: usize,
        first: usize,
        host: Host,
        earlier: Host,
    },
    #[error("{file} lists no hosts; put one [USER@]HOST per line ('#' starts a comment)")]
    Empty { file: String },
}

impl ExitStatus for HostsFileError {
    fn exit_code(&self) -> Exit {
        Exit::Usage
    }
}

impl Host {
    /// The machine this host names, for telling duplicates apart: its host part, lower-cased
    /// (DNS names are case-insensitive), without the user (one machine, whoever logs in).
    pub fn machine(&self) -> String {
        let host = self.0.rsplit('@').next().unwrap_or(&self.0);
        host.to_ascii_lowercase()
    }
}

/// The hosts of a hosts file: one `[USER@]HOST` per line; blank lines and everything from a
/// `#` on are ignored, and so is a UTF-8 byte order mark at the start of a line (an editor's,
/// not part of the name). A machine named twice ([`Host::machine`]) is refused, naming both
/// lines. `file` names it in errors.
pub fn parse_hosts(text: &str, file: &str) -> Result<Vec<Host>, HostsFileError> {
    let mut hosts = Vec::new();
    let mut seen: BTreeMap<String, (usize, Host)> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = raw.strip_prefix('\u{feff}').unwrap_or(raw);
        let entry = raw.split('#').next().unwrap_or_default().trim();
        if entry.is_empty() {
            continue;
        }
        let host = Host::parse(entry).map_err(|error| HostsFileError::Host {
            file: file.to_owned(),
            line,
            error,
        })?;
        if let Some((first, earlier)) = seen.get(&host.machine()) {
            let (file, first) = (file.to_owned(), *first);
            return Err(if *earlier == host {
                HostsFileError::Duplicate {
                    file,
                    line,
                    first,
                    host,
                }
            } else {
                HostsFileError::SameMachine {
                    file,
                    line,
                    first,
                    host,
                    earlier: earlier.clone(),
                }
            });
        }
        seen.insert(host.machine(), (line, host.clone()));
        hosts.push(host);
    }
    if hosts.is_empty() {
        return Err(HostsFileError::Empty {
            file: file.to_owned(),
        });
    }
    Ok(hosts)
}

/// The remote program's path, which ssh hands to the remote shell as text: only characters
/// no shell reads specially, so that it is run as given.
pub fn check_remote_bin(path: &str) -> Result<(), String> {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._+-".contains(c);
    if path.is_empty() || path.starts_with('-') || !path.chars().all(safe) {
        return Err(format!(
            "--remote-bin {path:?} must be a path of letters, digits and / . _ + - (the remote shell reads it), not starting with '-'"
        ));
    }
    Ok(())
}

/// The fleet's exit code: the worst of its hosts', in this order (the one place it is
/// decided): ok (0) < drift (3) < failure (1) < bad usage or configuration (2). Drift is
/// what `apply` repairs; a failure (a host unreachable, timed out, a write refused) may pass
/// on a rerun; a bad configuration fails the same way on every rerun until someone fixes it.
pub fn worst(exits: impl IntoIterator<Item = Exit>) -> Exit {
    let rank = |e: &Exit| match e {
        Exit::Ok => 0,
        Exit::Drift => 1,
        Exit::Failure => 2,
        Exit::Usage => 3,
    };
    exits.into_iter().max_by_key(rank).unwrap_or(Exit::Ok)
}

/// Which command the fleet ran on every host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FleetCommand {
    Apply,
    Verify,
    Status,
}

impl FleetCommand {
    pub fn name(self) -> &'static str {
        match self {
            FleetCommand::Apply => "apply",
            FleetCommand::Verify => "verify",
            FleetCommand::Status => "status",
        }
    }
}

/// What one host's run did, as its process ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFacts {
    /// The exit code; `None` when it was killed or never started.
    pub code: Option<i32>,
    pub timed_out: bool,
    /// Why the ssh program could not be started.
    pub spawn_error: Option<String>,
    pub stdout: String,
    pub stderr: String,
}

/// One row of the fleet's report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostResult {
    pub host: Host,
    /// The exit code this host counts as in [`worst`].
    pub exit: u8,
    /// ok, changed N, would change N, drift N, failed, unreachable, timed out, bad config,
    /// not installed.
    pub result: String,
    /// The counts of the remote's report that matter for `command`.
    pub summary: Value,
    /// The remote's JSON report, or null when it printed none.
    pub report: Value,
    pub error: Option<String>,
    pub seconds: f64,
}

impl HostResult {
    pub fn exit_code(&self) -> Exit {
        match self.exit {
            0 => Exit::Ok,
            2 => Exit::Usage,
            3 => Exit::Drift,
            _ => Exit::Failure,
        }
    }
}

/// Judges one host's run of `command` (`dry_run`: `apply --dry-run`).
pub fn judge(
    host: Host,
    command: FleetCommand,
    dry_run: bool,
    facts: &RunFacts,
    seconds: f64,
) -> HostResult {
    let report: Value = serde_json::from_str(facts.stdout.trim()).unwrap_or(Value::Null);
    let summary = summarize(command, &report);
    let first_stderr = facts
        .stderr
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned);
    let failed = |result: &str, error: Option<String>| (Exit::Failure, result.to_owned(), error);
    let (exit, result, error) = if let Some(why) = &facts.spawn_error {
        failed("failed", Some(why.clone()))
    } else if facts.timed_out {
        failed("timed out", Some("no answer in time: killed".to_owned()))
    } else {
        match facts.code {
            Some(0) | Some(3) if report.is_null() => failed(
                "failed",
                Some(first_stderr.unwrap_or_else(|| {
                    "the remote printed no JSON report (is it ds01-slices?)".to_owned()
                })),
            ),
            Some(0) => (Exit::Ok, ok_result(command, dry_run, &summary), None),
            Some(3) => (
                Exit::Drift,
                format!("drift {}", summary_u64(&summary, "not_holding")),
                first_stderr,
            ),
            Some(2) => (Exit::Usage, "bad config".to_owned(), first_stderr),
            Some(SSH_FAILED) => failed("unreachable", first_stderr.or(Some("ssh failed".into()))),
            Some(NOT_FOUND) => failed("not installed", first_stderr),
            Some(code) => failed(
                "failed",
                first_stderr.or_else(|| Some(format!("exit code {code}"))),
            ),
            None => failed("failed", first_stderr.or(Some("killed by a signal".into()))),
        }
    };
    HostResult {
        host,
        exit: exit as u8,
        result,
        summary,
        report,
        error,
        seconds,
    }
}

fn ok_result(command: FleetCommand, dry_run: bool, summary: &Value) -> String {
    if command != FleetCommand::Apply {
        return "ok".to_owned();
    }
    let n = if dry_run {
        summary_u64(summary, "changes")
    } else {
        summary_u64(summary, "writes")
    };
    match (n, dry_run) {
        (0, _) => "ok".to_owned(),
        (n, true) => format!("would change {n}"),
        (n, false) => format!("changed {n}"),
    }
}

fn summary_u64(summary: &Value, key: &str) -> u64 {
    summary.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// The counts of a remote report that a fleet table shows: from `apply --json` its writes,
/// changed slices, refusals and failures (or, rendered instead, its files); from `verify --json` its `counts`
/// (with `not_holding`, verify's own sum of what does not hold); from `status --json` its slices, those
/// with drift and those with errors. An absent or foreign report gives `{}`.
pub fn summarize(command: FleetCommand, report: &Value) -> Value {
    let len = |key: &str| {
        report
            .get(key)
            .and_then(Value::as_array)
            .map_or(0, Vec::len)
    };
    let mut out = serde_json::Map::new();
    match command {
        FleetCommand::Apply => {
            // `apply` that fell back to rendering drop-ins reports as `render` does: the
            // files it wrote (or would write) count as its writes.
            if let Some(files) = report.get("files").and_then(Value::as_array) {
                out.insert("writes".into(), files.len().into());
                out.insert("changes".into(), files.len().into());
                out.insert("rendered".into(), true.into());
                return Value::Object(out);
            }
            let Some(writes) = report.get("writes").and_then(Value::as_u64) else {
                return Value::Object(out);
            };
            // A change without settings only records a slice already as configured.
            let changes = report
                .get("changes")
                .and_then(Value::as_array)
                .map_or(0, |cs| {
                    cs.iter()
                        .filter(|c| {
                            c.get("set")
                                .and_then(Value::as_array)
                                .is_some_and(|s| !s.is_empty())
                        })
                        .count()
                });
            out.insert("writes".into(), writes.into());
            out.insert("changes".into(), changes.into());
            out.insert("refused".into(), len("refused").into());
            out.insert("failures".into(), len("failures").into());
        }
        FleetCommand::Verify => {
            let Some(counts) = report.get("counts").and_then(Value::as_object) else {
                return Value::Object(out);
            };
            // `not_holding` is verify's own sum (ops::verify::Counts::settle), carried in
            // its counts.
            out.extend(counts.clone());
        }
        FleetCommand::Status => {
            let Some(slices) = report.get("slices").and_then(Value::as_array) else {
                return Value::Object(out);
            };
            let drifting = slices
                .iter()
                .filter(|s| {
                    s.get("drift")
                        .and_then(Value::as_object)
                        .is_some_and(|d| d.values().any(|v| v == &Value::Bool(true)))
                })
                .count();
            let errors = slices
                .iter()
                .filter(|s| s.get("error").is_some_and(|e| !e.is_null()))
                .count();
            out.insert("slices".into(), slices.len().into());
            out.insert("drift".into(), drifting.into());
            out.insert("errors".into(), errors.into());
        }
    }
    Value::Object(out)
}

/// The summary as the table's counts column: the total (`writes` of an apply, `slices`
/// otherwise), then only the counts that are not zero: `slices 14, drift 1, missing 1`.
pub fn counts_text(summary: &Value) -> String {
    const TOTALS: [&str; 2] = ["writes", "slices"];
    const SHOWN: [&str; 9] = [
        "changes",
        "refused",
        "failures",
        "drift",
        "missing",
        "stale",
        "kernel_mismatch",
        "kernel_unreadable",
        "errors",
    ];
    let Some(map) = summary.as_object() else {
        return String::new();
    };
    let count = |k: &str| map.get(k).and_then(Value::as_u64);
    TOTALS
        .iter()
        .filter_map(|k| Some((*k, count(k)?)))
        .chain(
            SHOWN
                .iter()
                .filter_map(|k| Some((*k, count(k)?)).filter(|(_, n)| *n > 0)),
        )
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[path = "fleet_tests.rs"]
mod tests;
