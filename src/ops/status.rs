//! `status` (and the metrics built on it): what each managed slice uses against the limits in
//! force, and the containers that run outside their user's slice (`super::containers`). Properties come over D-Bus, one uncached `GetAll` per slice pipelined as verify
//! reads; the kernel's cgroup files only for what systemd has no property for (child
//! cgroups, OOM kills, pressure). CPU use is a rate, so it takes two readings of
//! `CPUUsageNSec`: the second one a small `Get` per active slice after the interval.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::verify::{check_slice, Status};
use super::{containers, desired_in_scope, hold, release, ApplyError, Notes, Scope};
use crate::cgroupfs;
use crate::config::Config;
use crate::model::containers::ContainerReport;
use crate::model::live::LiveSlice;
use crate::model::names::{SliceIdentity, SliceKind, SliceName};
use crate::model::property::Property;
use crate::model::usage::{self, CgroupReadings, Limits, Resources};
use crate::plan::SliceSpec;
use crate::state::ownership::Ownership;
use crate::systemd::{pipeline, BusError, Systemd};

/// One slice's state and usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceStatus {
    pub slice: SliceName,
    pub kind: SliceKind,
    pub group: Option<String>,
    /// The user as the configuration names them (for a slice no longer configured: the
    /// name's user part).
    pub user: Option<String>,
    pub active: bool,
    /// Tasks in the slice (systemd's TasksCurrent).
    pub tasks: Option<u64>,
    /// Bytes in use (systemd's MemoryCurrent).
    pub memory_bytes: Option<u64>,
    /// CPU time used since the slice's cgroup was made (systemd's CPUUsageNSec).
    pub cpu_usage_nsec: Option<u64>,
    /// What systemd holds now.
    pub limits: Limits,
    /// What the configuration asks for; `None` for a slice it no longer covers.
    pub planned: Option<Limits>,
    pub resources: Resources,
    pub cgroup: CgroupReadings,
    /// The largest share of any limit in use; the report is sorted by it.
    pub closeness: Option<f64>,
    /// Every property verify would check, and whether it drifted (verify's comparison:
    /// systemd's value, and the kernel's on an active slice).
    pub drift: BTreeMap<String, bool>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Seconds between the two CPU readings the rates come from (`None`: no rate taken).
    pub cpu_interval_secs: Option<f64>,
    /// Active slices first, each group closest to a limit first.
    pub slices: Vec<SliceStatus>,
    /// The containers outside their user's slice (for one user: theirs).
    pub containers: Option<ContainerReport>,
    #[serde(skip)]
    pub notes: Vec<String>,
}

/// The CPU readings of a run, by slice, for the next run of `status --watch` to take its
/// rates from without waiting again.
pub type CpuSamples = BTreeMap<SliceName, (u64, Instant)>;

#[derive(Debug, Clone, Copy)]
pub struct StatusOptions<'a> {
    /// How long to wait between the two CPU readings; zero takes no rate.
    pub cpu_interval: Duration,
    /// Readings of a previous run: rates are taken against them instead of waiting.
    pub previous: Option<&'a CpuSamples>,
}

pub async fn status<S: Systemd>(
    sd: &S,
    config: &Config,
    scope: Scope<'_>,
    ownership: &Ownership,
    cgroup_root: Option<&Path>,
    opts: StatusOptions<'_>,
) -> Result<(StatusReport, CpuSamples), ApplyError> {
    let owned = ownership.read_all()?;
    let desired = desired_in_scope(sd, config, scope, &owned).await?;
    let names: Vec<SliceName> = desired.keys().cloned().collect();
    let notes = Notes::default();
    let holder = hold(sd, &names, &notes).await;
    let read = read_usage(sd, &names, cgroup_root, opts).await;
    release(sd, holder, &notes).await;
    let (live, rates, samples, interval) = read?;
    let empty = BTreeSet::new();
    let mut slices: Vec<SliceStatus> = names
        .iter()
        .zip(live)
        .map(|(name, live)| {
            let spec = desired[name].as_ref();
            match live {
                Ok(live) => {
                    let owned = owned.get(name).unwrap_or(&empty);
                    slice_status(spec, &live, owned, rates.get(name).copied(), cgroup_root)
                }
                Err(e) => unread(name, spec, &e),
            }
        })
        // A slice the configuration no longer covers and that holds nothing is not news.
        .filter(|s| {
            s.planned.is_some() || s.active || s.limits != Limits::default() || s.error.is_some()
        })
        .collect();
    slices.sort_by(|a, b| {
        (b.error.is_some(), b.active)
            .cmp(&(a.error.is_some(), a.active))
            .then_with(|| usage::by_closeness(a.closeness, b.closeness))
            .then_with(|| (a.kind, &a.slice).cmp(&(b.kind, &b.slice)))
    });
    let sources = containers::Sources::local(cgroup_root);
    let mut found = containers::find(sd, config, scope, sources).await;
    let report = StatusReport {
        cpu_interval_secs: interval,
        slices,
        notes: ownership
            .take_notes()
            .into_iter()
            .chain(notes.into_vec())
            .chain(std::mem::take(&mut found.notes))
            .collect(),
        containers: Some(found),
    };
    Ok((report, samples))
}

type Read = (
    Vec<Result<LiveSlice, BusError>>,
    BTreeMap<SliceName, f64>,
    CpuSamples,
    Option<f64>,
);

/// Where a slice's CPU time is read: systemd's property, or the kernel's file when systemd
/// does not report it (see [`cgroupfs::cpu_usage_nsec`]).
#[derive(Debug, Clone)]
enum CpuSource {
    Bus,
    Kernel(String),
}

/// Every slice's properties, each timed as it arrived, then, after the interval, a second
/// CPU reading of the active ones.
async fn read_usage<S: Systemd>(
    sd: &S,
    names: &[SliceName],
    cgroup_root: Option<&Path>,
    opts: StatusOptions<'_>,
) -> Result<Read, BusError> {
    let mut first = pipeline::bounded(names, |s| async move {
        let live = sd.read_slice(s).await;
        (live, Instant::now())
    })
    .await;
    if let Some((Err(e), _)) = first
        .iter()
        .find(|(r, _)| r.as_ref().is_err_and(BusError::is_fatal))
    {
        return Err(e.clone());
    }
    let mut samples = CpuSamples::new();
    let mut sources = BTreeMap::new();
    for (live, at) in &mut first {
        let Ok(l) = live else { continue };
        let Some(cg) = l.control_group.clone().filter(|_| l.is_active()) else {
            continue;
        };
        let source = match l.cpu_usage_nsec {
            Some(_) => CpuSource::Bus,
            None => {
                l.cpu_usage_nsec = cgroup_root.and_then(|r| cgroupfs::cpu_usage_nsec(r, &cg));
                CpuSource::Kernel(cg)
            }
        };
        if let Some(n) = l.cpu_usage_nsec {
            samples.insert(l.slice.clone(), (n, *at));
            sources.insert(l.slice.clone(), source);
        }
    }
    let mut rates = BTreeMap::new();
    let mut interval = None;
    let mut rate = |slice: &SliceName, before: (u64, Instant), after: (u64, Instant)| {
        let secs = after.1.duration_since(before.1).as_secs_f64();
        if let Some(r) = usage::cpu_cores(before.0, after.0, secs) {
            rates.insert(slice.clone(), r);
            interval = Some(secs);
        }
    };
    match opts.previous {
        Some(previous) => {
            for (slice, now) in &samples {
                if let Some(before) = previous.get(slice) {
                    rate(slice, *before, *now);
                }
            }
        }
        None if !opts.cpu_interval.is_zero() && !samples.is_empty() => {
            tokio::time::sleep(opts.cpu_interval).await;
            let active: Vec<(SliceName, CpuSource)> = sources.into_iter().collect();
            let second = pipeline::bounded(&active, |(s, source)| async move {
                let n = match source {
                    CpuSource::Bus => sd.read_cpu_usage(s).await,
                    CpuSource::Kernel(cg) => {
                        Ok(cgroup_root.and_then(|r| cgroupfs::cpu_usage_nsec(r, cg)))
                    }
                };
                (n, Instant::now())
            })
            .await;
            for ((slice, _), (n, at)) in active.iter().zip(second) {
                match n {
                    Ok(Some(n)) => {
                        rate(slice, samples[slice], (n, at));
                        samples.insert(slice.clone(), (n, at));
                    }
                    Ok(None) => {}
                    Err(e) if e.is_fatal() => return Err(e),
                    // One slice's second reading lost: it shows no rate, the rest do.
                    Err(_) => {}
                }
            }
        }
        None => {}
    }
    let live = first.into_iter().map(|(l, _)| l).collect();
    Ok((live, rates, samples, interval))
}

fn planned(spec: &SliceSpec) -> Limits {
    Limits::planned(&spec.properties)
}

fn labels(slice: &SliceName, spec: Option<&SliceSpec>) -> (Option<String>, Option<String>) {
    if let Some(spec) = spec {
        return (
            spec.group.as_ref().map(|g| g.to_string()),
            spec.user.as_ref().map(|u| u.to_string()),
        );
    }
    match slice.identity() {
        SliceIdentity::Root => (None, None),
        SliceIdentity::Group(g) => (Some(g.to_string()), None),
        SliceIdentity::User(g, u) => (Some(g.to_string()), Some(u.to_string())),
    }
}

/// One slice's status from what systemd reported; pure but for reading its cgroup files.
fn slice_status(
    spec: Option<&SliceSpec>,
    live: &LiveSlice,
    owned: &BTreeSet<Property>,
    cpu_cores: Option<f64>,
    cgroup_root: Option<&Path>,
) -> SliceStatus {
    let limits = Limits::in_force(live);
    let active = live.is_active();
    let cgroup = match (
        cgroup_root,
        live.control_group.as_deref().filter(|_| active),
    ) {
        (Some(root), Some(cg)) => cgroupfs::readings(root, cg),
        _ => CgroupReadings::default(),
    };
    // An inactive slice uses nothing: systemd reports no figures for it.
    let zero_if_inactive = |v: Option<u64>| if active { v } else { v.or(Some(0)) };
    let memory_bytes = zero_if_inactive(live.memory_current);
    let tasks = zero_if_inactive(live.tasks_current);
    let resources = Resources::new(memory_bytes, tasks, cpu_cores, &limits);
    let check = check_slice(spec, live, owned, cgroup_root);
    let drift = check
        .properties
        .iter()
        .filter(|p| {
            Property::from_bus_name(p.property).is_some_and(|q| Property::LIMITS.contains(&q))
        })
        .map(|p| {
            let holds = matches!(p.status, Status::Ok | Status::Kept);
            (p.property.to_owned(), !holds)
        })
        .collect();
    let (group, user) = labels(&live.slice, spec);
    SliceStatus {
        slice: live.slice.clone(),
        kind: live.slice.kind(),
        group,
        user,
        active,
        tasks,
        memory_bytes,
        cpu_usage_nsec: live.cpu_usage_nsec,
        limits,
        planned: spec.map(planned),
        closeness: resources.closeness(),
        resources,
        cgroup,
        drift,
        error: None,
    }
}

fn unread(slice: &SliceName, spec: Option<&SliceSpec>, e: &BusError) -> SliceStatus {
    let (group, user) = labels(slice, spec);
    SliceStatus {
        slice: slice.clone(),
        kind: slice.kind(),
        group,
        user,
        active: false,
        tasks: None,
        memory_bytes: None,
        cpu_usage_nsec: None,
        limits: Limits::default(),
        planned: spec.map(planned),
        resources: Resources::new(None, None, None, &Limits::default()),
        cgroup: CgroupReadings::default(),
        closeness: None,
        drift: BTreeMap::new(),
        error: Some(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_texts;
    use crate::model::names::UserName;
    use crate::model::property::BusValue;

    fn alice_spec() -> SliceSpec {
        let main = "default_group: student\ngroups:\n  student:\n    aggregate:\n      cpu_quota: \"200%\"\n      memory_max: 4G\n      tasks_max: 100\n";
        let config = parse_texts(
            Path::new("/c/r.yaml"),
            main,
            &[("student", "alice\n")],
            None,
        )
        .unwrap();
        let plan = crate::plan::plan_user(&config, &UserName::new("alice").unwrap()).unwrap();
        plan.slices
            .into_iter()
            .find(|s| s.kind == SliceKind::User)
            .unwrap()
    }

    fn live(spec: &SliceSpec, values: &[(Property, BusValue)]) -> LiveSlice {
        LiveSlice {
            slice: spec.slice.clone(),
            load_state: "loaded".into(),
            active_state: "inactive".into(),
            control_group: None,
            memory_current: None,
            tasks_current: None,
            cpu_usage_nsec: None,
            values: values.iter().copied().collect(),
            drop_in_paths: Vec::new(),
        }
    }

    #[test]
    fn an_idle_slice_uses_nothing_and_shows_its_limits_and_drift() {
        let spec = alice_spec();
        let in_force = [
            (Property::CpuQuotaPerSecUSec, BusValue::U64(2_000_000)),
            (Property::MemoryMax, BusValue::U64(4 << 30)),
            (Property::TasksMax, BusValue::U64(50)),
        ];
        let s = slice_status(
            Some(&spec),
            &live(&spec, &in_force),
            &BTreeSet::new(),
            None,
            Some(Path::new("/nonexistent")),
        );
        assert!(!s.active);
        assert_eq!((s.memory_bytes, s.tasks), (Some(0), Some(0)));
        assert_eq!(s.limits.cpu_quota_cores, Some(2.0));
        assert_eq!(s.limits.tasks_max, Some(50));
        assert_eq!(s.planned.unwrap().tasks_max, Some(100));
        assert_eq!(s.closeness, Some(0.0));
        assert_eq!(s.drift.get("TasksMax"), Some(&true));
        assert_eq!(s.drift.get("MemoryMax"), Some(&false));
        assert_eq!(
            (s.group.as_deref(), s.user.as_deref()),
            (Some("student"), Some("alice"))
        );
    }

    #[test]
    fn a_slice_no_longer_configured_is_labelled_from_its_name() {
        let slice = SliceName::parse("ds01-student-bob.slice").unwrap();
        let (group, user) = labels(&slice, None);
        assert_eq!(
            (group.as_deref(), user.as_deref()),
            (Some("student"), Some("bob"))
        );
    }
}
