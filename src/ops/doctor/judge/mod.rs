//! What the facts `doctor` gathered mean: one [`Finding`] per check, with its fix. Pure
//! functions of those facts, so each rule is tested without a host to probe.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

mod cgroup;
mod containers;
mod gate;
mod gpu;
pub use cgroup::{cgroup, memory_high};
pub use containers::containers;
pub use gate::{gate, Access, Front};
pub use gpu::gpu;

use crate::cgroupfs::Layout;
use crate::docker::{DaemonJson, Info};
use crate::state::DirFacts;
use crate::systemd::AccountingDefaults;

/// `Fail` means the limits the configuration asks for are not (or cannot be) in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Warning,
    Fail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    Config,
    Cgroup,
    Controllers,
    MemoryHigh,
    Systemd,
    Accounting,
    Docker,
    Gpu,
    StateDir,
    Drift,
    Containers,
    Gate,
}

impl Check {
    pub fn name(self) -> &'static str {
        match self {
            Check::Config => "config",
            Check::Cgroup => "cgroup",
            Check::Controllers => "controllers",
            Check::MemoryHigh => "memory_high",
            Check::Systemd => "systemd",
            Check::Accounting => "accounting",
            Check::Docker => "docker",
            Check::Gpu => "gpu",
            Check::StateDir => "state_dir",
            Check::Drift => "drift",
            Check::Containers => "containers",
            Check::Gate => "gate",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: Check,
    pub status: Status,
    /// What was found, in words.
    pub found: String,
    /// What to do about it (none when all is well).
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: Check, found: impl Into<String>) -> Finding {
        Finding {
            check,
            status: Status::Ok,
            found: found.into(),
            fix: None,
        }
    }

    fn bad(
        check: Check,
        status: Status,
        found: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            check,
            status,
            found: found.into(),
            fix: Some(fix.into()),
        }
    }
}

/// The configuration as loaded: enough to say what it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSummary {
    pub groups: usize,
    pub users: usize,
    pub slices: usize,
    pub aggregate_limits: bool,
    pub warnings: usize,
}

pub fn config(path: &Path, loaded: &Result<ConfigSummary, String>, trust_checked: bool) -> Finding {
    let path = path.display();
    match loaded {
        Err(e) => Finding::bad(
            Check::Config,
            Status::Fail,
            format!("{path} cannot be used: {e}"),
            "fix what the message names (`ds01-slices check-config` lists every problem); until then apply and the hook refuse to set limits",
        ),
        Ok(c) => {
            let mut found = format!(
                "{path}: {} groups, {} users, {} slices planned",
                c.groups, c.users, c.slices
            );
            if c.warnings > 0 {
                let _ = write!(found, ", {} warnings (`ds01-slices check-config` shows them)", c.warnings);
            }
            if !c.aggregate_limits {
                return Finding::bad(
                    Check::Config,
                    Status::Warning,
                    format!("{found}; enforcement.aggregate_limits is false: no limits are asked for"),
                    "set `enforcement: {aggregate_limits: true}` in the configuration if the limits should apply",
                );
            }
            if !trust_checked {
                return Finding::bad(
                    Check::Config,
                    Status::Warning,
                    format!("{found}; not run as root, so who may change the files (they must be root's and writable by no one else) was not checked"),
                    "run `ds01-slices doctor` as root",
                );
            }
            Finding::ok(
                Check::Config,
                format!("{found}; the files are root's and writable by no one else"),
            )
        }
    }
}

/// `version`: systemd's Version, or why it could not be had (the bus error's message, which
/// says what to do).
pub fn systemd(address: &str, version: &Result<String, String>) -> Finding {
    match version {
        Ok(v) => Finding::ok(Check::Systemd, format!("systemd {v} at {address}")),
        Err(e) => Finding::bad(
            Check::Systemd,
            Status::Fail,
            format!("systemd cannot be asked: {e}"),
            "limits are set and held by systemd: make it reachable as the message says, then rerun `ds01-slices doctor`",
        ),
    }
}

pub fn accounting(defaults: &Result<AccountingDefaults, String>) -> Finding {
    let d = match defaults {
        Ok(d) => d,
        Err(e) => {
            return Finding::bad(
                Check::Accounting,
                Status::Warning,
                format!("systemd's accounting defaults cannot be read: {e}"),
                "see the systemd finding",
            )
        }
    };
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let found = format!(
        "DefaultCPUAccounting={} DefaultMemoryAccounting={} DefaultTasksAccounting={}",
        yes_no(d.cpu),
        yes_no(d.memory),
        yes_no(d.tasks)
    );
    if d.cpu && d.memory && d.tasks {
        Finding::ok(Check::Accounting, found)
    } else {
        Finding::bad(
            Check::Accounting,
            Status::Warning,
            format!("{found}: limits hold anyway (ds01-slices turns accounting on for ds01.slice and the group slices, and a limit turns on its controller), but usage of other units is not accounted"),
            "to account every unit: set the Default*Accounting=yes that are off in /etc/systemd/system.conf, then `systemctl daemon-reexec`",
        )
    }
}

/// Docker's cgroup driver and where the answer came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DockerDriver {
    pub driver: String,
    pub source: String,
}

/// `info`: what the daemon said; `daemon_json` at `json_path`; `layout` and whether systemd
/// answered decide Docker's default.
pub fn docker(
    info: &Info,
    json_path: &Path,
    daemon_json: &DaemonJson,
    layout: Option<Layout>,
    systemd_up: bool,
) -> (Finding, Option<DockerDriver>) {
    let json = json_path.display();
    let asked = match info {
        Info::Driver(driver, _) => {
            return driver_finding(
                DockerDriver {
                    driver: driver.clone(),
                    source: "docker info (the running daemon)".to_owned(),
                },
                json_path,
            )
        }
        Info::NotInstalled => "no docker client on PATH".to_owned(),
        Info::Failed(e) => format!("`docker info` failed: {e}"),
        Info::TimedOut(t) => format!("`docker info` gave no answer within {} s", t.as_secs()),
    };
    match daemon_json {
        DaemonJson::Driver(driver) => driver_finding(DockerDriver {
            driver: driver.clone(),
            source: format!("{json} (exec-opts; {asked})"),
        }, json_path),
        DaemonJson::Invalid(e) => (
            Finding::bad(
                Check::Docker,
                Status::Fail,
                format!("{json} is not usable: {e}; dockerd refuses to start with it ({asked})"),
                format!("fix {json} (valid JSON with \"exec-opts\": [\"native.cgroupdriver=systemd\"]) and restart Docker (`systemctl restart docker`)"),
            ),
            None,
        ),
        DaemonJson::Missing if *info == Info::NotInstalled => (
            Finding::bad(
                Check::Docker,
                Status::Warning,
                format!("Docker not found ({asked}, no {json}): containers cannot be checked"),
                format!("if Docker runs here, put the docker client on PATH (or set DOCKER_HOST) and give {json} \"exec-opts\": [\"native.cgroupdriver=systemd\"]"),
            ),
            None,
        ),
        DaemonJson::Missing | DaemonJson::NoDriver => {
            let (driver, why) = match layout {
                Some(Layout::V2) if systemd_up => ("systemd", "on cgroup v2 with systemd"),
                Some(Layout::V2) => ("cgroupfs", "on cgroup v2 without systemd"),
                _ => ("cgroupfs", "on cgroup v1"),
            };
            let file = match daemon_json {
                DaemonJson::Missing => format!("no {json}"),
                _ => format!("{json} sets no native.cgroupdriver"),
            };
            driver_finding(DockerDriver {
                driver: driver.to_owned(),
                source: format!("Docker's default {why} ({asked}; {file})"),
            }, json_path)
        }
    }
}

fn driver_finding(d: DockerDriver, json: &Path) -> (Finding, Option<DockerDriver>) {
    let found = format!("Docker's cgroup driver is {}, from {}", d.driver, d.source);
    let finding = if d.driver == "systemd" {
        Finding::ok(Check::Docker, found)
    } else {
        Finding::bad(
            Check::Docker,
            Status::Fail,
            format!("{found}: containers started with --cgroup-parent=ds01-...slice do not land in the user's slice, so its limits do not hold them"),
            format!("add \"exec-opts\": [\"native.cgroupdriver=systemd\"] to {} and restart Docker (`systemctl restart docker`)", json.display()),
        )
    };
    (finding, Some(d))
}

pub fn state_dir(path: &Path, facts: &DirFacts) -> Finding {
    let p = path.display();
    let make = format!("`install -d -m 0755 -o root -g root '{p}'`");
    match facts {
        DirFacts::Missing => Finding::bad(
            Check::StateDir,
            Status::Warning,
            format!("state directory {p} does not exist yet: the first apply creates it, with no record of which limits ds01-slices set"),
            format!("create it: {make} (or pass --state-dir the one apply uses)"),
        ),
        DirFacts::Unreadable(e) => Finding::bad(
            Check::StateDir,
            Status::Fail,
            format!("state directory {p} cannot be looked at: {e}; apply cannot record or read which limits it set"),
            format!("make it a directory root can use: {make}"),
        ),
        DirFacts::NotADirectory => Finding::bad(
            Check::StateDir,
            Status::Fail,
            format!("state directory {p} is not a directory: apply and the hook fail to record which limits they set, so none are set"),
            format!("move it away and create the directory: {make}"),
        ),
        DirFacts::Symlink { target } => Finding::bad(
            Check::StateDir,
            Status::Warning,
            format!("state directory {p} is a symbolic link (to {}): whoever can change the link or its target chooses which records apply trusts", target.display()),
            format!("replace the link with a real directory ({make}), or pass --state-dir '{}'", target.display()),
        ),
        DirFacts::Directory { uid, gid, mode } => {
            let who = if *uid != 0 {
                Some(format!("it is owned by uid {uid}, not root"))
            } else if mode & 0o002 != 0 {
                Some("every user can write it".to_owned())
            } else if mode & 0o020 != 0 && *gid != 0 {
                Some(format!("group gid {gid} can write it"))
            } else {
                None
            };
            match who {
                None => Finding::ok(
                    Check::StateDir,
                    format!("state directory {p}: root's, mode {mode:04o}"),
                ),
                Some(who) => Finding::bad(
                    Check::StateDir,
                    Status::Warning,
                    format!("state directory {p} (uid {uid}, gid {gid}, mode {mode:04o}): {who}, so someone other than root could forge the records of which limits ds01-slices set, or hold its writer lock"),
                    format!("run `chown root:root '{p}' && chmod go-w '{p}'`"),
                ),
            }
        }
    }
}

/// What verify found, in brief.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftSummary {
    pub holds: bool,
    pub slices: usize,
    /// "drift 1, missing 2, ..." for each non-zero count that means drift.
    pub counts: Vec<(&'static str, usize)>,
    /// A few of the properties that do not hold: "slice Setting: expected X, actual Y".
    pub examples: Vec<String>,
}

/// `summary`: verify's answer, or why it could not be asked.
pub fn drift(summary: &Result<DriftSummary, String>) -> Finding {
    match summary {
        Err(why) => Finding::bad(
            Check::Drift,
            Status::Warning,
            format!("not checked: {why}"),
            "fix the findings above, then rerun `ds01-slices doctor` (or `ds01-slices verify`)",
        ),
        Ok(s) if s.holds => Finding::ok(
            Check::Drift,
            format!(
                "{} slices hold what the configuration asks (verify)",
                s.slices
            ),
        ),
        Ok(s) => {
            let counts: Vec<String> = s
                .counts
                .iter()
                .map(|(what, n)| format!("{what} {n}"))
                .collect();
            let mut found = format!("{} slices checked: {}", s.slices, counts.join(", "));
            if !s.examples.is_empty() {
                let _ = write!(found, " ({})", s.examples.join("; "));
            }
            Finding::bad(
                Check::Drift,
                Status::Fail,
                found,
                "`ds01-slices verify` shows every difference; `ds01-slices apply` puts the configured values back",
            )
        }
    }
}

#[cfg(test)]
mod tests;
