//! `verify`: every managed slice read back from systemd (and, for active slices, from the
//! kernel's cgroup files) and compared with the plan.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::cgroupfs::{self, KernelValue};
use crate::config::Config;
use crate::dropin::explain::{self, Shadowing};
use crate::model::live::LiveSlice;
use crate::model::names::SliceKind;
use crate::model::names::SliceName;
use crate::model::property::{BusValue, Property};
use crate::ops::apply::{read_all, ApplyError, Scope};
use crate::plan::SliceSpec;
use crate::state::ownership::Ownership;
use crate::systemd::{BusError, Systemd};

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
    /// The drop-in the effective value comes from (see [`explain`]).
    pub source: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SliceCheck {
    pub slice: SliceName,
    pub kind: SliceKind,
    pub active: bool,
    pub stale: bool,
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
    pub errors: usize,
    pub contradictions: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub holds: bool,
    pub counts: Counts,
    pub slices: Vec<SliceCheck>,
}

pub async fn verify<S: Systemd>(
    sd: &S,
    config: &Config,
    scope: Scope<'_>,
    ownership: &Ownership,
    cgroup_root: &Path,
) -> Result<VerifyReport, ApplyError> {
    let owned = ownership.read_all()?;
    let desired = crate::ops::apply::desired_in_scope(sd, config, scope, &owned).await?;
    let names: Vec<SliceName> = desired.keys().cloned().collect();
    let holder = crate::ops::apply::hold_if_many(sd, &names).await;
    let read = async {
        let mut live = read_all(sd, &names).await?;
        let states = crate::ops::apply::bounded(&live, |l| async move {
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
    crate::ops::apply::release_hold(sd, holder).await;
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
            }
        }
    }
    let holds =
        counts.drift + counts.missing + counts.stale + counts.kernel_mismatch + counts.errors == 0;
    Ok(VerifyReport {
        holds,
        counts,
        slices,
    })
}

/// Compares one slice; pure but for reading the kernel's cgroup files.
pub fn check_slice(
    desired: Option<&SliceSpec>,
    live: &LiveSlice,
    owned: &BTreeSet<Property>,
    cgroup_root: &Path,
) -> SliceCheck {
    let mut properties = Vec::new();
    let kernel_for = |p: Property, value: BusValue| -> Option<KernelCheck> {
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
    match desired {
        Some(spec) => {
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
                if status == Status::Ok && kernel.as_ref().is_some_and(|k| k.status == "mismatch") {
                    status = Status::KernelMismatch;
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
            // A limit we set earlier that the configuration dropped is stale too.
            for p in Property::LIMITS {
                let have = live.value(p);
                if spec.properties.get(p).is_none() && owned.contains(&p) && have != p.unset_value()
                {
                    properties.push(stale_check(p, have, true, kernel_for(p, have)));
                }
            }
        }
        None => {
            for p in Property::LIMITS {
                let have = live.value(p);
                if have != p.unset_value() {
                    properties.push(stale_check(
                        p,
                        have,
                        owned.contains(&p),
                        kernel_for(p, have),
                    ));
                }
            }
        }
    }
    SliceCheck {
        slice: live.slice.clone(),
        kind: live.slice.kind(),
        active: live.is_active(),
        stale: desired.is_none(),
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
    if report.counts.contradictions > 0 {
        report.holds = false;
    }
}

pub fn render_text(report: &VerifyReport) -> String {
    let mut out = String::new();
    for s in &report.slices {
        let state = if s.active { "active" } else { "inactive" };
        let stale = if s.stale {
            ", stale: not in the configuration"
        } else {
            ""
        };
        let _ = writeln!(out, "{} ({state}{stale})", s.slice);
        if let Some(e) = &s.error {
            let _ = writeln!(out, "    error    {e}");
        }
        for p in &s.properties {
            let setting = Property::from_bus_name(p.property)
                .map(|q| q.unit_setting())
                .unwrap_or(p.property);
            let line = match p.status {
                Status::Ok => format!("ok       {setting}={}", p.actual),
                Status::Drift => format!(
                    "drift    {setting}: expected {}, actual {}",
                    p.expected.as_deref().unwrap_or("-"),
                    p.actual
                ),
                Status::Missing => format!(
                    "missing  {setting}: expected {}, not set",
                    p.expected.as_deref().unwrap_or("-")
                ),
                Status::Stale => format!(
                    "stale    {setting}={} still in force{}",
                    p.actual,
                    if p.owned {
                        ""
                    } else {
                        " (not set by ds01-slices: left alone by apply)"
                    }
                ),
                Status::KernelMismatch => format!(
                    "kernel   {setting}: systemd holds {}, the kernel does not",
                    p.actual
                ),
            };
            let kernel = match &p.kernel {
                Some(KernelCheck {
                    status: "ok",
                    value: Some(v),
                    ..
                }) => format!("  [kernel {v}]"),
                Some(KernelCheck {
                    status,
                    value,
                    file,
                    detail,
                }) => format!(
                    "  [kernel: {status}{}{}{}]",
                    value.as_ref().map(|v| format!(" {v}")).unwrap_or_default(),
                    file.as_ref()
                        .map(|f| format!(" in {f}"))
                        .unwrap_or_default(),
                    detail
                        .as_ref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                ),
                None => String::new(),
            };
            let source = p
                .source
                .as_ref()
                .map(|f| format!("  (from {f})"))
                .unwrap_or_default();
            let _ = writeln!(out, "    {line}{kernel}{source}");
        }
        for sh in &s.shadowed {
            let _ = writeln!(out, "    conflict {sh}");
        }
    }
    let c = &report.counts;
    let _ = writeln!(
        out,
        "{}: {} slices, {} ok, {} drift, {} missing, {} stale, {} kernel mismatches, {} errors",
        if report.holds {
            "all limits hold"
        } else {
            "DRIFT"
        },
        c.slices,
        c.ok,
        c.drift,
        c.missing,
        c.stale,
        c.kernel_mismatch,
        c.errors
    );
    if c.contradictions > 0 {
        // Appended, not inserted: scripts may parse the line above.
        out.truncate(out.trim_end().len());
        let _ = writeln!(
            out,
            ", {} contradicting drop-ins (a rendered value shadowed by a D-Bus one: run 'ds01-slices render' or 'ds01-slices apply' to settle on one)",
            c.contradictions
        );
    }
    out
}
