//! `verify`: every managed slice read back from systemd (and, for active slices, from the
//! kernel's cgroup files) and compared with the plan; and every container that runs outside
//! its user's slice, where the limits do not hold for it ([`account_containers`]).

use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;

use super::{desired_in_scope, hold, release, ApplyError, Notes, Scope};
use crate::cgroupfs::{self, KernelValue};
use crate::config::Config;
use crate::diff;
use crate::dropin::explain::{self, Shadowing};
use crate::model::containers::ContainerReport;
use crate::model::live::LiveSlice;
use crate::model::names::{SliceKind, SliceName};
use crate::model::property::{BusValue, Property};
use crate::plan::SliceSpec;
use crate::state::ownership::Ownership;
use crate::systemd::{pipeline, BusError, Systemd};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    /// Set, but to another value than configured.
    Drift,
    /// Configured, but not set at all.
    Missing,
    /// A limit still in force on a slice that should have none.
    Stale,
    /// The kernel does not hold what systemd says.
    KernelMismatch,
    /// systemd holds the value, but the kernel's file could not be read to confirm it.
    KernelUnreadable,
    /// A stale limit kept on purpose: the slice's jobs still run (see `diff::kept_while_busy`).
    Kept,
}

#[derive(Debug, Clone, Serialize)]
pub struct KernelCheck {
    pub status: &'static str,
    pub value: Option<String>,
    pub file: Option<String>,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PropertyCheck {
    pub property: &'static str,
    pub status: Status,
    pub expected: Option<String>,
    pub actual: String,
    pub expected_value: Option<BusValue>,
    pub actual_value: BusValue,
    pub owned: bool,
    pub kernel: Option<KernelCheck>,
    /// The drop-in the effective value comes from (see [`explain()`]).
    pub source: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SliceCheck {
    pub slice: SliceName,
    pub kind: SliceKind,
    pub active: bool,
    pub stale: bool,
    /// Tasks in the slice, when systemd reports them.
    pub tasks: Option<u64>,
    /// Stale, but keeping its limits while its jobs run.
    pub kept: bool,
    pub properties: Vec<PropertyCheck>,
    pub drop_in_paths: Vec<String>,
    /// Rendered values that a D-Bus drop-in overrides with another value: a contradiction.
    pub shadowed: Vec<Shadowing>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub slices: usize,
    pub ok: usize,
    pub drift: usize,
    pub missing: usize,
    pub stale: usize,
    pub kernel_mismatch: usize,
    pub kernel_unreadable: usize,
    pub kept: usize,
    pub errors: usize,
    pub contradictions: usize,
    /// Containers running outside their user's slice: no per-user limit holds for them.
    pub outside_containers: usize,
    /// Everything above that means the limits do not hold as configured ([`Counts::settle`]):
    /// `holds` is this being zero, and `fleet` shows it as a host's `drift N`.
    pub not_holding: usize,
}

impl Counts {
    /// The one rule of what does not hold; `kept` (a stale limit kept on purpose while the
    /// slice's jobs run) and `ok` do not count.
    fn settle(&mut self) -> bool {
        self.not_holding = self.drift
            + self.missing
            + self.stale
            + self.kernel_mismatch
            + self.kernel_unreadable
            + self.errors
            + self.contradictions
            + self.outside_containers;
        self.not_holding == 0
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub holds: bool,
    pub counts: Counts,
    pub slices: Vec<SliceCheck>,
    /// The containers outside their user's slice ([`account_containers`]); `None`: not looked
    /// for.
    pub containers: Option<ContainerReport>,
    #[serde(skip)]
    pub notes: Vec<String>,
}

pub async fn verify<S: Systemd>(
    sd: &S,
    config: &Config,
    scope: Scope<'_>,
    ownership: &Ownership,
    cgroup_root: Option<&Path>,
) -> Result<VerifyReport, ApplyError> {
    let owned = ownership.read_all()?;
    let desired = desired_in_scope(sd, config, scope, &owned).await?;
    let names: Vec<SliceName> = desired.keys().cloned().collect();
    let notes = Notes::default();
    let holder = hold(sd, &names, &notes).await;
    let read = async {
        let mut live = pipeline::read_all(sd, &names).await?;
        let states = pipeline::bounded(&live, |l| async move {
            match l {
                Ok(l) => Some(sd.read_unit_state(&l.slice).await),
                Err(_) => None,
            }
        })
        .await;
        for (l, state) in live.iter_mut().zip(states) {
            match (l.as_mut(), state) {
                (Ok(l), Some(Ok(state))) => {
                    if !state.active_state.is_empty() {
                        l.active_state = state.active_state;
                    }
                    l.drop_in_paths = state.drop_in_paths;
                }
                (Ok(_), Some(Err(e))) => *l = Err(e),
                _ => {}
            }
        }
        Ok::<_, BusError>(live)
    };
    let live = read.await;
    release(sd, holder, &notes).await;
    let live = live?;
    let empty = BTreeSet::new();
    let mut slices = Vec::new();
    for (name, live) in names.iter().zip(live) {
        let owned = owned.get(name).unwrap_or(&empty);
        slices.push(match live {
            Ok(live) => check_slice(desired[name].as_ref(), &live, owned, cgroup_root),
            Err(e) => SliceCheck {
                slice: name.clone(),
                kind: name.kind(),
                active: false,
                stale: false,
                tasks: None,
                kept: false,
                properties: Vec::new(),
                drop_in_paths: Vec::new(),
                shadowed: Vec::new(),
                error: Some(e.to_string()),
            },
        });
    }
    // Stale slices without any limit left are not worth a line.
    slices.retain(|s| !(s.stale && s.properties.is_empty() && s.error.is_none()));
    slices.sort_by_key(|s| (s.slice.kind(), s.slice.clone()));
    let mut counts = Counts {
        slices: slices.len(),
        ..Default::default()
    };
    for s in &slices {
        if s.error.is_some() {
            counts.errors += 1;
        }
        for p in &s.properties {
            match p.status {
                Status::Ok => counts.ok += 1,
                Status::Drift => counts.drift += 1,
                Status::Missing => counts.missing += 1,
                Status::Stale => counts.stale += 1,
                Status::KernelMismatch => counts.kernel_mismatch += 1,
                Status::KernelUnreadable => counts.kernel_unreadable += 1,
                Status::Kept => counts.kept += 1,
            }
        }
    }
    let holds = counts.settle();
    Ok(VerifyReport {
        holds,
        counts,
        slices,
        containers: None,
        notes: ownership
            .take_notes()
            .into_iter()
            .chain(notes.into_vec())
            .collect(),
    })
}

/// Compares one slice; pure but for reading the kernel's cgroup files under `cgroup_root`
/// (`None`: another machine's, not read; its kernel checks are then absent).
pub fn check_slice(
    desired: Option<&SliceSpec>,
    live: &LiveSlice,
    owned: &BTreeSet<Property>,
    cgroup_root: Option<&Path>,
) -> SliceCheck {
    let mut properties = Vec::new();
    let kernel_for = |p: Property, value: BusValue| -> Option<KernelCheck> {
        let cgroup_root = cgroup_root?;
        let cg = live.control_group.as_deref().filter(|_| live.is_active())?;
        Some(match cgroupfs::kernel_value(cgroup_root, cg, p)? {
            KernelValue::Value { value: k, file } => KernelCheck {
                status: if cgroupfs::matches(p, value, k) {
                    "ok"
                } else {
                    "mismatch"
                },
                value: Some(p.display(BusValue::U64(k))),
                file: Some(file.display().to_string()),
                detail: None,
            },
            KernelValue::NotEnforcedOnV1 => KernelCheck {
                status: "not enforced on cgroup v1",
                value: None,
                file: None,
                detail: None,
            },
            KernelValue::Unreadable { file, reason } => KernelCheck {
                status: "unreadable",
                value: None,
                file: Some(file.display().to_string()),
                detail: Some(reason),
            },
        })
    };
    if let Some(spec) = desired {
        for (p, want) in spec.properties.iter() {
            let have = live.value(p);
            let mut status = if have == want {
                Status::Ok
            } else if have == p.unset_value() {
                Status::Missing
            } else {
                Status::Drift
            };
            let kernel = if Property::LIMITS.contains(&p) {
                kernel_for(p, have)
            } else {
                None
            };
            if status == Status::Ok {
                match kernel.as_ref().map(|k| k.status) {
                    Some("mismatch") => status = Status::KernelMismatch,
                    Some("unreadable") => status = Status::KernelUnreadable,
                    _ => {}
                }
            }
            properties.push(PropertyCheck {
                property: p.bus_name(),
                status,
                expected: Some(p.display(want)),
                actual: p.display(have),
                expected_value: Some(want),
                actual_value: have,
                owned: owned.contains(&p),
                kernel,
                source: None,
            });
        }
    }
    // Every limit in force that the configuration does not ask for, whoever set it (apply
    // takes back only its own; the others are for the admin to see).
    let kept = diff::kept_while_busy(desired, live, owned);
    for (p, have) in diff::stale_limits(desired, live) {
        let mut check = stale_check(p, have, owned.contains(&p), kernel_for(p, have));
        if kept && check.owned {
            check.status = Status::Kept;
        }
        properties.push(check);
    }
    SliceCheck {
        slice: live.slice.clone(),
        kind: live.slice.kind(),
        active: live.is_active(),
        stale: desired.is_none(),
        tasks: live.tasks_current,
        kept,
        properties,
        drop_in_paths: live.drop_in_paths.clone(),
        shadowed: Vec::new(),
        error: None,
    }
}

fn stale_check(
    p: Property,
    have: BusValue,
    owned: bool,
    kernel: Option<KernelCheck>,
) -> PropertyCheck {
    PropertyCheck {
        property: p.bus_name(),
        status: Status::Stale,
        expected: Some(p.display(p.unset_value())),
        actual: p.display(have),
        expected_value: Some(p.unset_value()),
        actual_value: have,
        owned,
        kernel,
        source: None,
    }
}

/// Says where each effective value comes from, reading the slices' drop-ins (their
/// `DropInPaths`) under `root`, and counts every rendered value that a D-Bus drop-in
/// contradicts: with both in place, which one holds depends only on file names, and the next
/// `render` or `apply` would silently flip it.
pub fn explain(report: &mut VerifyReport, root: &Path) {
    for s in &mut report.slices {
        let (assignments, _unreadable) = explain::read_assignments(root, &s.drop_in_paths);
        let effective = explain::effective(&assignments);
        for p in &mut s.properties {
            p.source = Property::from_bus_name(p.property)
                .and_then(|q| effective.get(&q))
                .map(|a| a.file.clone());
        }
        s.shadowed = explain::shadowings(&assignments);
        report.counts.contradictions += s.shadowed.len();
    }
    report.holds = report.counts.settle();
}

/// Adds what runs outside the users' slices: each such container does not hold, and so does
/// a search that could not be made (nothing can then be said of any container).
pub fn account_containers(report: &mut VerifyReport, mut containers: ContainerReport) {
    report.counts.outside_containers = containers.outside.len();
    if containers.error.is_some() {
        report.counts.errors += 1;
    }
    report.notes.append(&mut containers.notes);
    report.containers = Some(containers);
    report.holds = report.counts.settle();
}

#[cfg(test)]
mod tests {
    use super::Counts;

    #[test]
    fn what_does_not_hold_counts_contradictions_and_not_kept_limits() {
        let mut counts = Counts {
            ok: 5,
            kept: 2,
            ..Counts::default()
        };
        assert!(counts.settle());
        assert_eq!(counts.not_holding, 0);
        counts.contradictions = 1;
        counts.kernel_unreadable = 1;
        assert!(!counts.settle());
        assert_eq!(counts.not_holding, 2);
        counts.outside_containers = 2;
        assert!(!counts.settle());
        assert_eq!(counts.not_holding, 4);
    }
}
