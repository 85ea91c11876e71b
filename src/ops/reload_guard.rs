//! Whether systemd may be reloaded now. NVIDIA's runtime gives a container its GPUs behind
//! systemd's back (a rule it adds to the container's cgroup: `devices.allow` on cgroup v1, a
//! BPF device program on v2). A daemon-reload makes systemd re-apply the device rules it knows
//! of to every unit, and such a container loses its GPUs ("Failed to initialize NVML: Unknown
//! Error") until it is restarted. So the paths that reload systemd (render on a live systemd,
//! the take-over of rendered files) first ask whether anything runs in ds01 slices, of
//! systemd and of the kernel, and reload only when nothing does or the admin said
//! `--allow-reload`. What cannot be told counts as running.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::cgroupfs::procs;
use crate::model::names::SliceName;
use crate::systemd::{BusError, BusSystemd, Systemd};

/// What a reload does to running GPU containers, for every message that withholds one.
pub const RELOAD_HAZARD: &str = "a daemon-reload makes systemd re-apply its own device rules to their cgroups, which takes away the GPUs that NVIDIA's runtime gave containers behind systemd's back (\"Failed to initialize NVML: Unknown Error\" inside each until it is restarted)";

/// How files written without a reload take effect, without harming running containers.
pub const ACTIVATE: &str = "activate them with 'systemctl daemon-reload' once no containers run in ds01 slices (a reload takes running GPU containers' GPUs away), or at the next boot";

/// How many running units a message names before it only counts the rest.
const NAMED: usize = 5;

/// A unit below ds01.slice with processes in it: a container's scope, a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningUnit {
    pub unit: String,
    /// The slice it runs in.
    pub slice: String,
    pub processes: usize,
}

/// What runs in ds01 slices now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Census {
    Idle,
    Running(Vec<RunningUnit>),
    /// It could not be told; the reason.
    Unknown(String),
}

impl Census {
    /// Why a reload now could cut containers off their GPUs, in words; None when nothing runs.
    pub fn hazard(&self) -> Option<String> {
        match self {
            Census::Idle => None,
            Census::Running(units) => {
                let runs = if units.len() == 1 {
                    "unit runs"
                } else {
                    "units run"
                };
                let named = name_units(units, |u| {
                    let plural = if u.processes == 1 { "" } else { "es" };
                    format!(
                        "{} in {}: {} process{plural}",
                        u.unit, u.slice, u.processes
                    )
                });
                Some(format!(
                    "{} {runs} in ds01 slices ({named}); {RELOAD_HAZARD}",
                    units.len()
                ))
            }
            Census::Unknown(why) => Some(format!(
                "whether containers run in ds01 slices cannot be told ({why}); if any do, {RELOAD_HAZARD}"
            )),
        }
    }

    /// What became of a reload made with this census: with `--allow-reload`, what it may
    /// have hit.
    pub fn reloaded(&self) -> String {
        match self {
            Census::Idle => "systemd reloaded (nothing ran in ds01 slices)".to_owned(),
            Census::Running(units) => format!(
                "systemd reloaded with --allow-reload while {} ran in ds01 slices: GPU containers among them may have lost their GPUs and need a restart",
                count_units(units)
            ),
            Census::Unknown(why) => format!(
                "systemd reloaded with --allow-reload; whether containers ran in ds01 slices could not be told ({why})"
            ),
        }
    }

    /// What became of a reload made with this census, given what ran once it was done: a unit
    /// that started between the census and the reload's end may have been cut off its GPUs
    /// (nothing holds container starts while systemd reloads), so it is named.
    pub fn reloaded_then(&self, after: &Census) -> String {
        match (self, after) {
            (Census::Idle, Census::Running(units)) => format!(
                "systemd reloaded (nothing ran in ds01 slices when it was checked); since then {} started ({}): one that started before the reload ended may have lost its GPUs; restart any that reports \"Failed to initialize NVML\"",
                count_units(units),
                name_units(units, |u| format!("{} in {}", u.unit, u.slice))
            ),
            (Census::Idle, Census::Unknown(why)) => format!(
                "systemd reloaded (nothing ran in ds01 slices when it was checked; whether anything started before the reload ended cannot be told: {why})"
            ),
            _ => self.reloaded(),
        }
    }
}

/// The first [`NAMED`] units, each as `name` says, and how many more there are.
fn name_units(units: &[RunningUnit], name: impl Fn(&RunningUnit) -> String) -> String {
    let mut text = units
        .iter()
        .take(NAMED)
        .map(name)
        .collect::<Vec<_>>()
        .join(", ");
    if units.len() > NAMED {
        let _ = write!(text, ", and {} more", units.len() - NAMED);
    }
    text
}

/// "1 unit", "3 units".
fn count_units(units: &[RunningUnit]) -> String {
    match units.len() {
        1 => "1 unit".to_owned(),
        n => format!("{n} units"),
    }
}

/// What runs below ds01.slice, as systemd (`GetUnitProcesses`) and the kernel (the cgroup
/// tree under `cgroup_root`) see it: running when either sees a process, unknown when neither
/// does and either cannot be asked.
pub async fn census(sd: &BusSystemd, cgroup_root: &Path) -> Census {
    let top = SliceName::root();
    let systemd = match sd.unit_processes(top.as_str()).await {
        Ok(listed) => Ok(listed),
        // Not loaded: nothing can run below it.
        Err(BusError::NoSuchUnit { .. }) => Ok(Vec::new()),
        Err(e) => Err(format!("systemd: {e}")),
    };
    let kernel = procs::processes_below(cgroup_root, top.as_str())
        .map_err(|e| format!("the kernel's cgroup tree: {e}"));
    judge([systemd, kernel])
}

/// Ok with what runs when systemd may be reloaded now (nothing runs, or the admin allowed
/// it); Err with the hazard in words when it may not.
pub async fn check(sd: &BusSystemd, cgroup_root: &Path, allow: bool) -> Result<Census, String> {
    let census = census(sd, cgroup_root).await;
    match census.hazard() {
        Some(hazard) if !allow => Err(hazard),
        _ => Ok(census),
    }
}

/// Reloads systemd after [`check`] returned `before`, and looks again: what became of it, in
/// words ([`Census::reloaded_then`]). Every guarded reload goes through here.
pub async fn reload_after(
    sd: &BusSystemd,
    cgroup_root: &Path,
    before: &Census,
) -> Result<String, BusError> {
    sd.reload().await?;
    Ok(match before {
        Census::Idle => before.reloaded_then(&census(sd, cgroup_root).await),
        // What ran, or that it could not be told, is already said.
        _ => before.reloaded(),
    })
}

/// What a guarded reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// systemd reloaded; what ran then ([`Census::reloaded`]).
    Done(String),
    /// Not reloaded; why ([`Census::hazard`]).
    Withheld(String),
}

/// `daemon-reload`: reloads systemd when nothing runs in ds01 slices or the admin allowed it;
/// otherwise leaves it as it is and says why. The Debian package's maintainer scripts reload
/// through it, so that an install, upgrade or removal never takes running containers' GPUs.
pub async fn reload(sd: &BusSystemd, cgroup_root: &Path, allow: bool) -> Result<Reload, BusError> {
    match check(sd, cgroup_root, allow).await {
        Err(hazard) => Ok(Reload::Withheld(hazard)),
        Ok(census) => Ok(Reload::Done(reload_after(sd, cgroup_root, &census).await?)),
    }
}

/// The census from each witness's processes (cgroup path, PID). PIDs are not compared
/// across witnesses: systemd may count in another PID namespace than ours.
pub fn judge(witnesses: [Result<Vec<(String, u32)>, String>; 2]) -> Census {
    let mut units: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut unknown = Vec::new();
    for witness in witnesses {
        match witness {
            Ok(processes) => {
                let mut counted: BTreeMap<(String, String), usize> = BTreeMap::new();
                for (cgroup, _) in &processes {
                    if let Some(key) = unit_of(cgroup) {
                        *counted.entry(key).or_default() += 1;
                    }
                }
                for (key, n) in counted {
                    let seen = units.entry(key).or_default();
                    *seen = (*seen).max(n);
                }
            }
            Err(why) => unknown.push(why),
        }
    }
    if !units.is_empty() {
        return Census::Running(
            units
                .into_iter()
                .map(|((slice, unit), processes)| RunningUnit {
                    unit,
                    slice,
                    processes,
                })
                .collect(),
        );
    }
    if unknown.is_empty() {
        Census::Idle
    } else {
        Census::Unknown(unknown.join("; "))
    }
}

/// (slice, unit) of a process in `cgroup`: the first component below the slices (a scope, a
/// service), or the innermost slice for a process in a slice's own cgroup. None outside
/// ds01.slice.
fn unit_of(cgroup: &str) -> Option<(String, String)> {
    let mut parts = cgroup.trim_start_matches('/').split('/');
    let top = parts.next()?;
    if top != SliceName::root().as_str() {
        return None;
    }
    let mut slice = top;
    for part in parts {
        if part.ends_with(".slice") {
            slice = part;
        } else {
            return Some((slice.to_owned(), part.to_owned()));
        }
    }
    Some((slice.to_owned(), slice.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "/ds01.slice/ds01-student.slice/ds01-student-alice.slice";

    fn procs(list: &[(&str, u32)]) -> Result<Vec<(String, u32)>, String> {
        Ok(list.iter().map(|(c, p)| (c.to_string(), *p)).collect())
    }

    #[test]
    fn a_process_in_any_unit_below_ds01_is_running_and_named() {
        let scope = format!("{ALICE}/docker-abc.scope");
        let sub = format!("{ALICE}/job.service/payload");
        let census = judge([
            procs(&[(&scope, 10), (&scope, 11), (&sub, 12)]),
            // The kernel's view in another PID namespace: counted, not added.
            procs(&[(&scope, 1010), (&scope, 1011)]),
        ]);
        let Census::Running(units) = &census else {
            panic!("{census:?}")
        };
        assert_eq!(
            units,
            &vec![
                RunningUnit {
                    unit: "docker-abc.scope".into(),
                    slice: "ds01-student-alice.slice".into(),
                    processes: 2
                },
                RunningUnit {
                    unit: "job.service".into(),
                    slice: "ds01-student-alice.slice".into(),
                    processes: 1
                },
            ]
        );
        let hazard = census.hazard().unwrap();
        assert!(
            hazard.starts_with("2 units run in ds01 slices (docker-abc.scope in ds01-student-alice.slice: 2 processes, job.service in ds01-student-alice.slice: 1 process); a daemon-reload"),
            "{hazard}"
        );
        assert!(hazard.contains("Failed to initialize NVML"), "{hazard}");
    }

    #[test]
    fn running_wins_over_unknown_and_unknown_over_idle() {
        let scope = format!("{ALICE}/docker-abc.scope");
        assert!(matches!(
            judge([Err("systemd: down".into()), procs(&[(&scope, 3)])]),
            Census::Running(_)
        ));
        let unknown = judge([procs(&[]), Err("the kernel's cgroup tree: EACCES".into())]);
        assert_eq!(
            unknown,
            Census::Unknown("the kernel's cgroup tree: EACCES".into())
        );
        assert!(unknown.hazard().unwrap().contains("cannot be told"));
        assert_eq!(judge([procs(&[]), procs(&[])]), Census::Idle);
        assert_eq!(Census::Idle.hazard(), None);
        // Outside ds01.slice is none of our business.
        assert_eq!(
            judge([procs(&[("/system.slice/docker.service", 1)]), procs(&[])]),
            Census::Idle
        );
    }

    #[test]
    fn units_are_found_below_the_slices() {
        assert_eq!(
            unit_of("/ds01.slice/ds01-g.slice/ds01-g-u.slice/docker-1.scope"),
            Some(("ds01-g-u.slice".into(), "docker-1.scope".into()))
        );
        assert_eq!(
            unit_of("/ds01.slice/ds01-g.slice"),
            Some(("ds01-g.slice".into(), "ds01-g.slice".into()))
        );
        assert_eq!(unit_of("/ds01-g-u.slice/abc"), None);
        assert_eq!(unit_of("/"), None);
    }

    #[test]
    fn a_unit_that_started_during_the_reload_is_named_with_what_to_do() {
        let started = Census::Running(vec![RunningUnit {
            unit: "docker-abc.scope".into(),
            slice: "ds01-student-alice.slice".into(),
            processes: 3,
        }]);
        let said = Census::Idle.reloaded_then(&started);
        assert!(
            said.starts_with("systemd reloaded (nothing ran in ds01 slices when it was checked); since then 1 unit started (docker-abc.scope in ds01-student-alice.slice)"),
            "{said}"
        );
        assert!(said.contains("restart any that reports"), "{said}");
        assert_eq!(
            Census::Idle.reloaded_then(&Census::Idle),
            Census::Idle.reloaded()
        );
        // Nothing is known afterwards that was not known before: the census said it.
        assert_eq!(started.reloaded_then(&Census::Idle), started.reloaded());
        let unknown = Census::Idle.reloaded_then(&Census::Unknown("systemd: gone".into()));
        assert!(
            unknown.ends_with("cannot be told: systemd: gone)"),
            "{unknown}"
        );
    }

    #[test]
    fn a_long_list_names_a_few_and_counts_the_rest() {
        let units = (0..8)
            .map(|i| RunningUnit {
                unit: format!("docker-{i}.scope"),
                slice: "ds01-g-u.slice".into(),
                processes: 1,
            })
            .collect();
        let hazard = Census::Running(units).hazard().unwrap();
        assert!(hazard.contains("docker-4.scope"), "{hazard}");
        assert!(!hazard.contains("docker-5.scope"), "{hazard}");
        assert!(hazard.contains(", and 3 more)"), "{hazard}");
    }
}
