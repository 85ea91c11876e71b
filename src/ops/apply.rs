//! `apply`: read live state, compute changes, write only what differs — one
//! SetUnitProperties call per changed slice — within systemd's safe limits.

use std::collections::{BTreeMap, BTreeSet};

use super::{desired_in_scope, hold, release, Notes, Scope};
use crate::config::{Config, ResolveError};
use crate::diff::{self, Change};
use crate::error::{Exit, ExitStatus};
use crate::model::live::LiveSlice;
use crate::model::names::SliceName;
use crate::model::property::Property;
use crate::plan::SliceSpec;
use crate::state::ownership::Ownership;
use crate::state::StateError;
use crate::systemd::{pipeline, BusError, Systemd, WriteMode};
use crate::trace;

#[derive(Debug, Clone, Copy)]
pub struct ApplyOptions {
    pub mode: WriteMode,
    pub dry_run: bool,
    pub force: bool,
}

#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Changes that were (or, with --dry-run, would be) made.
    pub changes: Vec<Change>,
    /// Changes refused because they would OOM-kill running jobs (needs --force).
    pub refused: Vec<Change>,
    pub failures: Vec<(SliceName, String)>,
    /// SetUnitProperties calls made.
    pub writes: usize,
    pub slices_checked: usize,
    /// Stale slices that keep their limits while their jobs run, with the number of tasks
    /// (`None`: unknown, which counts as running).
    pub kept: Vec<(SliceName, Option<u64>)>,
    pub notes: Vec<String>,
}

impl ApplyReport {
    /// Every slice was brought to its desired state.
    pub fn complete(&self) -> bool {
        self.failures.is_empty() && self.refused.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("--runtime cannot take effect on {slice}: {file} holds a persistent {setting} set over D-Bus earlier, which shadows runtime values of the same setting; nothing was changed. Apply without --runtime, or remove the persistent values first ('systemctl revert {slice}' removes every value set over D-Bus)")]
    RuntimeShadowed {
        slice: SliceName,
        setting: &'static str,
        file: String,
    },
    /// A run ended by one error of the connection or of systemd as a whole.
    #[error("{error} ({left} of {total} slices not done)")]
    Stopped {
        error: BusError,
        left: usize,
        total: usize,
    },
}

impl ApplyError {
    /// `e` with how far the run got, when it ended the run.
    fn stopped(e: ApplyError, left: usize, total: usize) -> ApplyError {
        match e {
            ApplyError::Bus(error) if error.is_fatal() => {
                ApplyError::Stopped { error, left, total }
            }
            other => other,
        }
    }
}

impl ExitStatus for ApplyError {
    fn exit_code(&self) -> Exit {
        match self {
            ApplyError::Resolve(e) => e.exit_code(),
            ApplyError::Bus(e) | ApplyError::Stopped { error: e, .. } => e.exit_code(),
            ApplyError::State(e) => e.exit_code(),
            ApplyError::RuntimeShadowed { .. } => Exit::Usage,
        }
    }
}

pub async fn apply<S: Systemd>(
    sd: &S,
    config: &Config,
    scope: Scope<'_>,
    ownership: &Ownership,
    opts: ApplyOptions,
) -> Result<ApplyReport, ApplyError> {
    let _lock = if opts.dry_run {
        None
    } else {
        Some(ownership.lock()?)
    };
    let owned = ownership.read_all()?;
    let desired = desired_in_scope(sd, config, scope, &owned).await?;
    let notes = Notes::default();
    if !opts.dry_run {
        for orphan in pipeline::orphan_holders(sd).await {
            release(sd, Some(orphan), &notes).await;
        }
    }
    let mut report = reconcile_and_write(sd, &desired, &owned, ownership, opts, &notes).await?;
    report.notes = ownership.take_notes();
    report.notes.extend(notes.into_vec());
    Ok(report)
}

/// Apply's core: read, compare, write.
async fn reconcile_and_write<S: Systemd>(
    sd: &S,
    desired: &BTreeMap<SliceName, Option<SliceSpec>>,
    owned: &BTreeMap<SliceName, BTreeSet<Property>>,
    ownership: &Ownership,
    opts: ApplyOptions,
    notes: &Notes,
) -> Result<ApplyReport, ApplyError> {
    // Every slice is read, even one we have no record of: writing only what differs is what
    // keeps the drop-ins identical to one call per slice (tests/it/scale.rs).
    let slices: Vec<SliceName> = desired.keys().cloned().collect();
    let t = std::time::Instant::now();
    let holder = if opts.dry_run {
        None
    } else {
        hold(sd, &slices, notes).await
    };
    let t = trace::phase("hold", t);
    let live = match pipeline::read_all(sd, &slices).await {
        Ok(live) => live,
        Err(e) => {
            release(sd, holder, notes).await;
            return Err(ApplyError::stopped(e.into(), slices.len(), slices.len()));
        }
    };
    let (report, todo) = compare(desired, &slices, &live, owned, opts.force);
    trace::phase("read and compare", t);
    write_changes(sd, report, todo, owned, ownership, opts, holder, notes).await
}

/// The changes that bring `live` to `desired`; slices that could not be read are failures,
/// and lowering MemoryMax below use is refused unless `force`.
pub(super) fn compare(
    desired: &BTreeMap<SliceName, Option<SliceSpec>>,
    slices: &[SliceName],
    live: &[Result<LiveSlice, BusError>],
    owned: &BTreeMap<SliceName, BTreeSet<Property>>,
    force: bool,
) -> (ApplyReport, Vec<Change>) {
    let empty = BTreeSet::new();
    let mut report = ApplyReport {
        slices_checked: slices.len(),
        ..Default::default()
    };
    let mut todo = Vec::new();
    for (slice, live) in slices.iter().zip(live) {
        let live = match live {
            Ok(l) => l,
            Err(e) => {
                report.failures.push((slice.clone(), e.to_string()));
                continue;
            }
        };
        let owned = owned.get(slice).unwrap_or(&empty);
        if diff::kept_while_busy(desired[slice].as_ref(), live, owned) {
            report.kept.push((slice.clone(), live.tasks_current));
            continue;
        }
        let Some(change) = diff::diff(desired[slice].as_ref(), live, owned) else {
            continue;
        };
        if change.memory_below_usage.is_some() && !force {
            report.refused.push(change);
        } else {
            todo.push(change);
        }
    }
    (report, todo)
}

/// Writes `todo`, parents first, records what we own, and releases `read_holder`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn write_changes<S: Systemd>(
    sd: &S,
    mut report: ApplyReport,
    mut todo: Vec<Change>,
    owned: &BTreeMap<SliceName, BTreeSet<Property>>,
    ownership: &Ownership,
    opts: ApplyOptions,
    read_holder: Option<String>,
    notes: &Notes,
) -> Result<ApplyReport, ApplyError> {
    let mut t = std::time::Instant::now();
    todo.sort_by_key(|c| (c.slice.kind(), c.slice.clone()));
    // Every write to a slice makes systemd walk all loaded siblings in its parent slice, so
    // well past one chunk of writes the read holder goes and each chunk is held on its own;
    // below that, one more holder (and the name-map rebuild it costs) would not pay off.
    let writes = todo.iter().filter(|c| c.writes()).count();
    let mut chunk = pipeline::write_chunk();
    let mut read_holder = read_holder;
    if opts.dry_run || writes > chunk + chunk / 2 {
        release(sd, read_holder.take(), notes).await;
    } else {
        chunk = todo.len().max(1);
    }
    if opts.dry_run {
        report.changes = todo;
        return Ok(report);
    }
    if opts.mode == WriteMode::Runtime {
        if let Err(e) = check_runtime_takes_effect(sd, &todo).await {
            release(sd, read_holder.take(), notes).await;
            return Err(e);
        }
    }
    let mut result = Ok(());
    for chunk in todo.chunks(chunk) {
        let writing: Vec<SliceName> = chunk
            .iter()
            .filter(|c| c.writes())
            .map(|c| c.slice.clone())
            .collect();
        let holder = match read_holder.take() {
            Some(h) => Some(h),
            None => hold(sd, &writing, notes).await,
        };
        for batch in chunk.chunks(pipeline::PIN_BATCH) {
            result = write_batch(
                sd,
                batch,
                owned,
                ownership,
                opts.mode,
                holder.is_none(),
                &mut report,
            )
            .await;
            if result.is_err() {
                break;
            }
        }
        release(sd, holder, notes).await;
        t = trace::phase("write chunk", t);
        if result.is_err() {
            break;
        }
    }
    // With nothing to write the loop above never took the read holder.
    release(sd, read_holder.take(), notes).await;
    let left = writes.saturating_sub(report.writes + report.failures.len());
    result
        .map(|()| report)
        .map_err(|e| ApplyError::stopped(e, left, writes))
}

/// systemd reads `/etc/systemd/system.control` before `/run/systemd/system.control`, so a
/// persistent `50-<Setting>.conf` hides the runtime file of the same name: a runtime write
/// of that setting would report success and change nothing.
async fn check_runtime_takes_effect<S: Systemd>(sd: &S, todo: &[Change]) -> Result<(), ApplyError> {
    let writing: Vec<&Change> = todo.iter().filter(|c| c.writes()).collect();
    let states = pipeline::bounded(&writing, |c| sd.read_unit_state(&c.slice)).await;
    for (change, state) in writing.iter().zip(states) {
        let state = state?;
        for set in &change.sets {
            let name = format!(
                "/etc/systemd/system.control/{}.d/50-{}.conf",
                change.slice,
                set.property.unit_setting()
            );
            if let Some(file) = state.drop_in_paths.iter().find(|p| p.ends_with(&name)) {
                return Err(ApplyError::RuntimeShadowed {
                    slice: change.slice.clone(),
                    setting: set.property.unit_setting(),
                    file: file.clone(),
                });
            }
        }
    }
    Ok(())
}

async fn write_batch<S: Systemd>(
    sd: &S,
    batch: &[Change],
    owned: &BTreeMap<SliceName, BTreeSet<Property>>,
    ownership: &Ownership,
    mode: WriteMode,
    pin: bool,
    report: &mut ApplyReport,
) -> Result<(), ApplyError> {
    let writing: Vec<&Change> = batch.iter().filter(|c| c.writes()).collect();
    // Record intent first: a crash between the two leaves a record that claims at most
    // what was about to be written, never a limit we set but forgot.
    for change in &writing {
        ownership.record_now(&change.slice, &intent_of(change, owned))?;
    }
    // A write to a unit that is not loaded makes systemd reload its unit-name map, whose
    // cost grows with every drop-in directory: pinned units are written in ~2 ms instead.
    // One write gains nothing from a pin: pins only spare the loads between writes.
    let pin_results = if pin && writing.len() > 1 {
        pipeline::bounded(&writing, |c| sd.pin(&c.slice)).await
    } else {
        Vec::new()
    };
    // The records' flush runs while the writes are on the wire: `join` sends them first.
    let (results, synced) = tokio::join!(
        pipeline::bounded(&writing, |c| async move {
            let props = c.properties();
            sd.set_properties(&c.slice, mode, &props).await
        }),
        async {
            let slices: Vec<SliceName> = writing.iter().map(|c| c.slice.clone()).collect();
            ownership.sync(&slices)
        }
    );
    synced?;
    for (change, pinned) in writing.iter().zip(&pin_results) {
        if pinned.is_ok() {
            // Losing a pin only costs speed; the write result is what matters.
            let _ = sd.unpin(&change.slice).await;
        }
    }
    let mut ok: BTreeSet<SliceName> = BTreeSet::new();
    for (change, result) in writing.iter().zip(results) {
        match result {
            Ok(()) => {
                report.writes += 1;
                ok.insert(change.slice.clone());
            }
            Err(e) if e.is_fatal() => return Err(e.into()),
            Err(e) => report.failures.push((change.slice.clone(), e.to_string())),
        }
    }
    for change in batch {
        if !change.writes() || ok.contains(&change.slice) {
            // The intent recorded above is usually exactly this already.
            if intent_of(change, owned) != change.owned_after || !change.writes() {
                ownership.record(&change.slice, &change.owned_after)?;
            }
            report.changes.push(change.clone());
        }
    }
    Ok(())
}

/// What a change may have set once its write starts: what we owned, what it sets, and what
/// we own after it.
fn intent_of(
    change: &Change,
    owned: &BTreeMap<SliceName, BTreeSet<Property>>,
) -> BTreeSet<Property> {
    let mut intent = owned.get(&change.slice).cloned().unwrap_or_default();
    intent.extend(change.sets.iter().map(|s| s.property));
    intent.extend(change.owned_after.iter().copied());
    intent
}
