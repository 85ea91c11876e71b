//! `doctor`: whether this host can enforce what the configuration asks. It gathers the facts
//! (the configuration, the cgroup file system, systemd over D-Bus, Docker and its runtimes,
//! the state directory, verify's answer, the containers outside their user's slice) and has
//! [`judge`] say what each means. A check that cannot be made is itself a finding; no check
//! stops the others.

mod gate;
pub mod judge;

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use self::judge::{ConfigSummary, DockerDriver, DriftSummary, Finding, Status};
use super::verify::{self, Status as VerifyStatus, VerifyReport};
use super::{containers, Scope};
use crate::cgroupfs::{self, controllers, Layout};
use crate::config::{self, Config};
use crate::docker;
use crate::model::names::SliceName;
use crate::model::property::{BusValue, Property};
use crate::plan::{self, Plan};
use crate::state::{self, ownership::Ownership};
use crate::systemd::BusSystemd;

/// Where to look, as the global options say.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    pub config: &'a Path,
    pub cgroup_root: &'a Path,
    pub root: &'a Path,
    pub state_dir: &'a Path,
    pub bus: Option<&'a str>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    /// No finding fails: the configured limits can be, and are, in force.
    pub in_force: bool,
    pub failures: usize,
    pub warnings: usize,
    pub cgroup: Option<Layout>,
    pub systemd_version: Option<String>,
    pub docker: Option<DockerDriver>,
    pub findings: Vec<Finding>,
}

pub async fn doctor(opts: Options<'_>) -> DoctorReport {
    let mut findings = Vec::new();

    let loaded = config::load(opts.config);
    let plan = loaded
        .as_ref()
        .map_err(ToString::to_string)
        .and_then(|c| plan::plan(c).map_err(|e| e.to_string()));
    let summary = match (&loaded, &plan) {
        (Ok(c), Ok(p)) => Ok(summarize_config(c, p)),
        (Err(e), _) => Err(e.to_string()),
        (_, Err(e)) => Err(e.clone()),
    };
    findings.push(judge::config(opts.config, &summary, config::checks_trust()));

    let facts = controllers::probe(opts.cgroup_root);
    let layout = facts.is_some().then(|| cgroupfs::layout(opts.cgroup_root));
    findings.extend(judge::cgroup(opts.cgroup_root, facts.as_ref()));
    let memory_high = plan.as_ref().ok().map(slices_with_memory_high);
    findings.push(judge::memory_high(facts.as_ref(), memory_high.as_deref()));

    let sd = BusSystemd::connect(opts.bus, opts.timeout).await;
    let (address, version) = match &sd {
        Ok(sd) => (
            sd.address().to_owned(),
            sd.version().await.map_err(|e| e.to_string()),
        ),
        Err(e) => (
            opts.bus.unwrap_or("the system bus").to_owned(),
            Err(e.to_string()),
        ),
    };
    findings.push(judge::systemd(&address, &version));
    let sd = sd.ok().filter(|_| version.is_ok());
    let defaults = match &sd {
        Some(sd) => sd.accounting_defaults().await.map_err(|e| e.to_string()),
        None => Err("systemd cannot be asked".to_owned()),
    };
    findings.push(judge::accounting(&defaults));

    // A blocking wait on the runtime's only thread, harmless here: no bus call is in flight,
    // and docker::info bounds its own wait.
    let info = docker::info(opts.timeout);
    let json_path = docker::daemon_json_path(opts.root);
    let (daemon_json, json_runtimes) = docker::daemon_json(opts.root);
    let (docker_finding, docker_driver) =
        judge::docker(&info, &json_path, &daemon_json, layout, sd.is_some());
    findings.push(docker_finding);
    let daemon_runtimes = match &info {
        docker::Info::Driver(_, runtimes) => Some(runtimes),
        _ => None,
    };
    findings.push(judge::gpu(
        daemon_runtimes,
        &json_runtimes,
        &json_path,
        docker_driver.as_ref(),
    ));

    // Bounded by --timeout like `docker info`: a gate or daemon that hangs must not hang doctor.
    let users = Path::new(docker::USERS_SOCKET);
    let front = gate::front(users, opts.timeout);
    let daemon_socket = gate::daemon_socket(&front);
    let access = gate::access(Path::new(&daemon_socket));
    findings.push(judge::gate(docker::USERS_SOCKET, &front, access.as_ref()));

    findings.push(judge::state_dir(
        opts.state_dir,
        &state::inspect_dir(opts.state_dir),
    ));

    let drift = match (&sd, &loaded) {
        (Some(sd), Ok(config)) => drift(sd, config, opts).await,
        (None, _) => Err("systemd cannot be asked".to_owned()),
        (_, Err(_)) => Err("the configuration cannot be loaded".to_owned()),
    };
    findings.push(judge::drift(&drift));

    let found = match (&sd, &loaded) {
        (Some(sd), Ok(config)) => {
            let sources = containers::Sources::local(Some(opts.cgroup_root));
            Ok(containers::find(sd, config, Scope::All, sources).await)
        }
        (None, _) => Err("systemd cannot be asked".to_owned()),
        (_, Err(_)) => Err("the configuration cannot be loaded".to_owned()),
    };
    findings.push(judge::containers(&found));

    let count = |s: Status| findings.iter().filter(|f| f.status == s).count();
    let failures = count(Status::Fail);
    DoctorReport {
        in_force: failures == 0,
        failures,
        warnings: count(Status::Warning),
        cgroup: layout,
        systemd_version: version.ok(),
        docker: docker_driver,
        findings,
    }
}

fn summarize_config(config: &Config, plan: &Plan) -> ConfigSummary {
    ConfigSummary {
        groups: config.groups.len(),
        users: config.members.len() + config.override_only_users().len(),
        slices: plan.slices.len(),
        aggregate_limits: config.aggregate_limits,
        warnings: config.warnings.len(),
    }
}

/// The slices whose plan sets a MemoryHigh other than infinity (which sets none).
fn slices_with_memory_high(plan: &Plan) -> Vec<SliceName> {
    plan.slices
        .iter()
        .filter(|s| {
            matches!(s.properties.get(Property::MemoryHigh), Some(BusValue::U64(v)) if v != u64::MAX)
        })
        .map(|s| s.slice.clone())
        .collect()
}

/// verify over every managed slice, in brief.
async fn drift(
    sd: &BusSystemd,
    config: &Config,
    opts: Options<'_>,
) -> Result<DriftSummary, String> {
    let ownership = Ownership::new(opts.state_dir).with_lock_wait(opts.timeout);
    let mut report = verify::verify(sd, config, Scope::All, &ownership, Some(opts.cgroup_root))
        .await
        .map_err(|e| format!("verify failed: {e}"))?;
    verify::explain(&mut report, opts.root);
    Ok(summarize_drift(&report))
}

/// How many examples of what does not hold the summary names.
const EXAMPLES: usize = 3;

pub fn summarize_drift(report: &VerifyReport) -> DriftSummary {
    let c = &report.counts;
    let counts = [
        ("drift", c.drift),
        ("missing", c.missing),
        ("stale", c.stale),
        ("kernel mismatch", c.kernel_mismatch),
        ("kernel unreadable", c.kernel_unreadable),
        ("unreadable slices", c.errors),
        ("contradicting drop-ins", c.contradictions),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .collect();
    let examples = report
        .slices
        .iter()
        .flat_map(|s| {
            let error = s.error.iter().map(move |e| format!("{}: {e}", s.slice));
            let props = s
                .properties
                .iter()
                .filter(|p| !matches!(p.status, VerifyStatus::Ok | VerifyStatus::Kept))
                .map(move |p| {
                    let setting = Property::from_bus_name(p.property)
                        .map(Property::unit_setting)
                        .unwrap_or(p.property);
                    let expected = p.expected.as_deref().unwrap_or("-");
                    let what = match p.status {
                        VerifyStatus::Missing => format!("expected {expected}, not set"),
                        VerifyStatus::Stale => format!("{} still in force", p.actual),
                        VerifyStatus::KernelMismatch => format!(
                            "systemd holds {}, the kernel {}",
                            p.actual,
                            p.kernel
                                .as_ref()
                                .and_then(|k| k.value.as_deref())
                                .unwrap_or("does not")
                        ),
                        VerifyStatus::KernelUnreadable => format!(
                            "systemd holds {}, the kernel's file cannot be read",
                            p.actual
                        ),
                        _ => format!("expected {expected}, actual {}", p.actual),
                    };
                    format!("{} {setting}: {what}", s.slice)
                });
            error.chain(props)
        })
        .take(EXAMPLES)
        .collect();
    DriftSummary {
        holds: report.holds,
        slices: report.counts.slices,
        counts,
        examples,
    }
}
