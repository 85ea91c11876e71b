//! `hook pre-create`: before a container starts, make sure its user's slice and the parents
//! hold the configured limits — cheaply when they already do, which is nearly always — and
//! name the slice to start it in. Any doubt is an error: the container must not start
//! outside its limits.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::apply::{compare, write_changes, ApplyError, ApplyOptions, ApplyReport};
use super::Notes;
use crate::cgroupfs;
use crate::diff::{self, Change};
use crate::error::{Exit, ExitStatus};
use crate::model::admission::{self, Allowed, Finding, InUse, Policy, Request};
use crate::model::live::LiveSlice;
use crate::model::names::{SliceKind, SliceName};
use crate::model::property::Property;
use crate::model::usage::{human_bytes, Limits};
use crate::model::values::MemoryLimit;
use crate::plan::HookTarget;
use crate::plan::{self, SliceSpec};
use crate::state::ownership::Ownership;
use crate::state::StateError;
use crate::systemd::{pipeline, BusError, Systemd, WriteMode};
use crate::trace;

/// `hook pre-create`: make sure the user's slice and its parents hold the configured
/// limits, cheaply when they already do. Returns the slice to use as cgroup parent.
pub async fn hook<S: Systemd>(
    sd: &S,
    target: &HookTarget,
    ownership: &Ownership,
    opts: HookOptions<'_>,
) -> Result<(SliceName, ApplyReport), HookError> {
    let plan = plan::plan_hook(target);
    let notes = Notes::default();
    let (slice, mut report, in_use) =
        ensure(sd, plan, target.slice.clone(), ownership, opts, &notes).await?;
    if let Some((request, policy)) = opts.admission {
        let allowed = allowed(target);
        let decision = admission::decide(request, in_use, allowed, policy);
        for w in &decision.warnings {
            notes.push(warning_text(target, w));
        }
        if let Some(finding) = decision.refusal {
            return Err(HookError::Refused {
                user: target.user.to_string(),
                slice,
                finding,
            });
        }
    }
    report.notes = ownership.take_notes();
    report.notes.extend(notes.into_vec());
    Ok((slice, report))
}

/// The user's limits from the configuration (the values the hook has just made hold).
fn allowed(target: &HookTarget) -> Allowed {
    let limits = Limits::planned(&target.properties);
    Allowed {
        memory_max: limits.memory_max_bytes,
        tasks_max: limits.tasks_max,
    }
}

fn warning_text(target: &HookTarget, finding: &Finding) -> String {
    match finding {
        Finding::TasksNear {
            in_use,
            requested,
            limit,
        } => format!(
            "warning: {}'s containers run {in_use} tasks{} of the {limit} TasksMax allows (90% or more); new processes will fail to start at the limit: stop a container you no longer need",
            target.user,
            if *requested > 0 {
                format!(" (plus {requested} this container may start)")
            } else {
                String::new()
            }
        ),
        Finding::Unread { what } => format!(
            "warning: could not read {what} ({}); the container is admitted without that check (pass --strict to refuse instead)",
            target.slice
        ),
        Finding::MemoryOver { .. } => format!("warning: {}", finding_text(finding)),
    }
}

/// One line for a finding, for logs and `--json`.
pub fn finding_text(finding: &Finding) -> String {
    match finding {
        Finding::MemoryOver {
            in_use,
            requested,
            limit,
        } => format!(
            "memory in use {} + requested {} exceeds MemoryMax {}",
            human_bytes(*in_use),
            human_bytes(*requested),
            human_bytes(*limit)
        ),
        Finding::TasksNear {
            in_use,
            requested,
            limit,
        } => format!("tasks in use {in_use} + requested {requested} near TasksMax {limit}"),
        Finding::Unread { what } => format!("could not read {what}"),
    }
}

#[derive(Debug, Clone, Copy)]
pub struct HookOptions<'a> {
    pub mode: WriteMode,
    /// Where the kernel's cgroups are: a slice with no record of ours is written without
    /// being read only when it has no cgroup (so no task that a lower limit could kill).
    pub cgroup_root: &'a Path,
    /// The container's request and the policy for readings that fail: `None` admits
    /// without looking at usage.
    pub admission: Option<(Request, Policy)>,
}

async fn ensure<S: Systemd>(
    sd: &S,
    plan: plan::Plan,
    slice: SliceName,
    ownership: &Ownership,
    hook_opts: HookOptions<'_>,
    notes: &Notes,
) -> Result<(SliceName, ApplyReport, InUse), HookError> {
    let desired: BTreeMap<SliceName, Option<SliceSpec>> = plan
        .slices
        .into_iter()
        .map(|s| (s.slice.clone(), Some(s)))
        .collect();
    let names: Vec<SliceName> = desired.keys().cloned().collect();
    // Without the lock: most containers start on a slice that is already right.
    let owned_now = read_owned(ownership, &names)?;
    // Never forced: lowering MemoryMax below what a running slice uses would OOM-kill the
    // user's jobs; the hook refuses instead, as apply does without --force.
    let opts = ApplyOptions {
        mode: hook_opts.mode,
        dry_run: false,
        force: false,
    };
    let unrecorded = |owned: &BTreeMap<SliceName, BTreeSet<Property>>| {
        let spec = desired.get(&slice).and_then(Option::as_ref);
        spec.is_some_and(|s| !s.properties.is_empty())
            && owned.get(&slice).is_none_or(BTreeSet::is_empty)
            && !cgroupfs::may_be_realized(hook_opts.cgroup_root, &slice)
    };
    if unrecorded(&owned_now) {
        // A user slice we have never written cannot be in sync with our records: it is
        // written under the lock without being read, while its parents are read, which spares
        // a new user's first container one round trip and one load of the unit.
        let _lock = ownership.lock().map_err(ApplyError::from)?;
        let owned = read_owned(ownership, &names)?;
        if let (true, Some(Some(spec))) = (unrecorded(&owned), desired.get(&slice)) {
            let t = std::time::Instant::now();
            let leaf = diff::unread(spec);
            let report =
                write_unread_leaf(sd, &desired, leaf, &owned, ownership, opts, notes).await?;
            trace::phase("hook: read and write", t);
            // No cgroup: nothing of the user's runs.
            return Ok((slice, report, InUse::NOTHING));
        }
    }
    let t = std::time::Instant::now();
    let live = pipeline::read_all(sd, &names).await?;
    if let Some(Err(e)) = live.iter().find(|l| l.is_err()) {
        return Err(HookError::Bus(e.clone()));
    }
    start_stopped_parents(sd, &desired, &names, &live, notes).await?;
    let in_use = names
        .iter()
        .zip(&live)
        .find(|(n, _)| **n == slice)
        .and_then(|(_, l)| l.as_ref().ok())
        .map_or(InUse::NOTHING, in_use);
    let t = trace::phase("hook: read", t);
    let (checked, todo) = compare(&desired, &names, &live, &owned_now, opts.force);
    refuse_lowering(&checked)?;
    if todo.is_empty() {
        trace::phase("hook: compare", t);
        return Ok((
            slice,
            ApplyReport {
                slices_checked: names.len(),
                ..Default::default()
            },
            in_use,
        ));
    }
    // Under the writer lock, against the records as they are now. The live values are not
    // read again: if another hook has just written the same values, writing them once more
    // changes nothing and costs less than a second round of reads on every write.
    let _lock = ownership.lock().map_err(ApplyError::from)?;
    let owned = read_owned(ownership, &names)?;
    let (report, todo) = compare(&desired, &names, &live, &owned, opts.force);
    let report =
        complete(write_changes(sd, report, todo, &owned, ownership, opts, None, notes).await?)?;
    Ok((slice, report, in_use))
}

/// What the user's slice uses, as systemd reported it. A slice without a cgroup runs
/// nothing; an active one whose figures systemd does not know stays unknown.
fn in_use(live: &LiveSlice) -> InUse {
    if live.is_active() {
        InUse {
            memory_bytes: live.memory_current,
            tasks: live.tasks_current,
        }
    } else {
        InUse::NOTHING
    }
}

/// The hook's write of a user slice it has no record of (`leaf`, not read), made while the
/// parents are read; then the parents, started if stopped, and written if they differ.
async fn write_unread_leaf<S: Systemd>(
    sd: &S,
    desired: &BTreeMap<SliceName, Option<SliceSpec>>,
    leaf: Change,
    owned: &BTreeMap<SliceName, BTreeSet<Property>>,
    ownership: &Ownership,
    opts: ApplyOptions,
    notes: &Notes,
) -> Result<ApplyReport, HookError> {
    let parents: Vec<SliceName> = desired
        .keys()
        .filter(|n| **n != leaf.slice)
        .cloned()
        .collect();
    let (parents_live, leaf_written) = tokio::join!(
        pipeline::read_all(sd, &parents),
        write_changes(
            sd,
            ApplyReport::default(),
            vec![leaf],
            owned,
            ownership,
            opts,
            None,
            notes
        )
    );
    let mut report = complete(leaf_written?)?;
    let parents_live = parents_live?;
    start_stopped_parents(sd, desired, &parents, &parents_live, notes).await?;
    let (checked, todo) = compare(desired, &parents, &parents_live, owned, opts.force);
    refuse_lowering(&checked)?;
    let parents_report =
        complete(write_changes(sd, checked, todo, owned, ownership, opts, None, notes).await?)?;
    report.writes += parents_report.writes;
    report.changes.extend(parents_report.changes);
    report.slices_checked = desired.len();
    Ok(report)
}

/// The error for a MemoryMax that would OOM-kill running jobs, if the comparison refused one.
fn refuse_lowering(report: &ApplyReport) -> Result<(), HookError> {
    match report
        .refused
        .iter()
        .find_map(|c| Some((c, c.memory_below_usage?)))
    {
        Some((change, (usage, max))) => Err(HookError::MemoryBelowUsage {
            slice: change.slice.clone(),
            usage: MemoryLimit::Bytes(usage),
            max: MemoryLimit::Bytes(max),
        }),
        None => Ok(()),
    }
}

/// A hook's report, or the error that keeps the container from starting unlimited.
fn complete(report: ApplyReport) -> Result<ApplyReport, HookError> {
    match report.failures.first() {
        Some((failed, why)) => Err(HookError::Incomplete(failed.clone(), why.clone())),
        None => Ok(report),
    }
}

fn read_owned(
    ownership: &Ownership,
    slices: &[SliceName],
) -> Result<BTreeMap<SliceName, BTreeSet<Property>>, StateError> {
    slices
        .iter()
        .map(|s| Ok((s.clone(), ownership.read(s)?)))
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("could not set the limits of {0}: {1}; the container was not started so that it cannot run unlimited")]
    Incomplete(SliceName, String),
    #[error("refused the container of {user}: {} (in {slice}); stop one of the user's containers or ask for less memory", finding_text(finding))]
    Refused {
        user: String,
        slice: SliceName,
        finding: Finding,
    },
    #[error("refused {slice}: the configured MemoryMax {max} is below the {usage} its jobs use now; writing it would OOM-kill them, so the container was not started. Lower it deliberately with 'ds01-slices apply --force --user USER', or wait until the jobs use less")]
    MemoryBelowUsage {
        slice: SliceName,
        usage: MemoryLimit,
        max: MemoryLimit,
    },
}

impl ExitStatus for HookError {
    fn exit_code(&self) -> Exit {
        match self {
            HookError::Bus(e) => e.exit_code(),
            HookError::Apply(e) => e.exit_code(),
            HookError::State(e) => e.exit_code(),
            HookError::Incomplete(..)
            | HookError::MemoryBelowUsage { .. }
            | HookError::Refused { .. } => Exit::Failure,
        }
    }
}

/// The hook starts `ds01.slice` and the group slices, as the container it runs for is about
/// to. Measured at 1,000 users on cgroup v1: while they are stopped, every write to a user
/// slice makes systemd re-create their cgroups (walking every user cgroup below) and trim
/// them again once they are unloaded, 150-300 ms a write; started, the same write takes
/// ~1-2 ms. `apply` does not: with the parents started, each of its writes also walks every
/// loaded sibling (cold apply of 5,000 users: 27-31 s against 21 s). Returns only errors
/// that end the run; a slice that will not start is noted.
async fn start_stopped_parents<S: Systemd>(
    sd: &S,
    desired: &BTreeMap<SliceName, Option<SliceSpec>>,
    slices: &[SliceName],
    live: &[Result<LiveSlice, BusError>],
    notes: &Notes,
) -> Result<(), BusError> {
    // `is_active` is inferred from the cgroup, which a stopped slice can keep while loaded:
    // such a slice is left as it is, which costs only speed.
    let stopped: Vec<&SliceName> = slices
        .iter()
        .zip(live)
        .filter(|(slice, live)| {
            desired[*slice].is_some()
                && slice.kind() != SliceKind::User
                && live.as_ref().is_ok_and(|l| !l.is_active())
        })
        .map(|(slice, _)| slice)
        .collect();
    for (slice, result) in stopped
        .iter()
        .zip(pipeline::bounded(&stopped, |s| sd.start_slice(s)).await)
    {
        match result {
            Ok(()) => {}
            // Writes need the same right and report it; this is only about speed.
            Err(BusError::AccessDenied { .. }) => {}
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => notes.push(format!(
                "note: {slice} stays stopped: {e}; writes to its user slices are slower"
            )),
        }
    }
    Ok(())
}

/// The refusal as DS01's wrapper showed it: what is in use, what was asked, the limit, and
/// what to do. The hook prints it; the gate answers the client with it (the docker CLI shows
/// it verbatim).
pub fn refusal_box(user: &str, slice: &SliceName, finding: &Finding) -> String {
    let mut lines = vec![format!(
        "Container refused: {user} would exceed their memory limit"
    )];
    match finding {
        Finding::MemoryOver {
            in_use,
            requested,
            limit,
        } => {
            lines.push(String::new());
            lines.push(format!(
                "  in use now   {:>8}  (all of {user}'s containers)",
                human_bytes(*in_use)
            ));
            lines.push(format!(
                "  requested    {:>8}  (--memory)",
                human_bytes(*requested)
            ));
            lines.push(format!(
                "  limit        {:>8}  (MemoryMax of {slice})",
                human_bytes(*limit)
            ));
            lines.push(format!(
                "  available    {:>8}",
                human_bytes(limit.saturating_sub(*in_use))
            ));
            lines.push(String::new());
            lines.push("Stop a container you no longer need (docker ps; docker stop NAME),".into());
            lines.push("or start this one with less memory (--memory).".into());
        }
        other => {
            lines.push(String::new());
            lines.push(format!("  {}", finding_text(other)));
            lines.push(String::new());
            lines.push("The usage could not be read and --strict refuses then; retry, or".into());
            lines.push(
                "ask an admin to check 'ds01-slices status' and 'ds01-slices doctor'.".into(),
            );
        }
    }
    let width = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let mut out = format!("+{}+\n", "-".repeat(width + 2));
    for l in &lines {
        out.push_str(&format!("| {l:<width$} |\n"));
    }
    out.push_str(&format!("+{}+", "-".repeat(width + 2)));
    out
}

#[cfg(test)]
#[path = "hook_tests.rs"]
mod tests;
