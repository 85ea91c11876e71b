//! `hook pre-create`: before a container starts, make sure its user's slice and the parents
//! hold the configured limits — cheaply when they already do, which is nearly always — and
//! name the slice to start it in. Any doubt is an error: the container must not start
//! outside its limits.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::apply::{compare, write_changes, ApplyError, ApplyOptions, ApplyReport};
use super::Notes;
use crate::cgroupfs;
use crate::config::HookTarget;
use crate::diff::{self, Change};
use crate::error::{Exit, ExitStatus};
use crate::model::live::LiveSlice;
use crate::model::names::{SliceKind, SliceName};
use crate::model::property::Property;
use crate::model::values::MemoryLimit;
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
    let (slice, mut report) =
        ensure(sd, plan, target.slice.clone(), ownership, opts, &notes).await?;
    report.notes = ownership.take_notes();
    report.notes.extend(notes.into_vec());
    Ok((slice, report))
}

#[derive(Debug, Clone, Copy)]
pub struct HookOptions<'a> {
    pub mode: WriteMode,
    /// Where the kernel's cgroups are: a slice with no record of ours is written without
    /// being read only when it has no cgroup (so no task that a lower limit could kill).
    pub cgroup_root: &'a Path,
}

async fn ensure<S: Systemd>(
    sd: &S,
    plan: plan::Plan,
    slice: SliceName,
    ownership: &Ownership,
    hook_opts: HookOptions<'_>,
    notes: &Notes,
) -> Result<(SliceName, ApplyReport), HookError> {
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
            return Ok((slice, report));
        }
    }
    let t = std::time::Instant::now();
    let live = pipeline::read_all(sd, &names).await?;
    if let Some(Err(e)) = live.iter().find(|l| l.is_err()) {
        return Err(HookError::Bus(e.clone()));
    }
    start_stopped_parents(sd, &desired, &names, &live, notes).await?;
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
    Ok((slice, report))
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
            HookError::Incomplete(..) | HookError::MemoryBelowUsage { .. } => Exit::Failure,
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
