//! `apply` and `hook pre-create`: read live state, compute changes, write only what
//! differs — one SetUnitProperties call per changed slice — within systemd's safe limits.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use futures_util::stream::{self, StreamExt};

use crate::config::{Config, HookTarget};
use crate::diff::{self, Change, ChangeKind};
use crate::model::live::LiveSlice;
use crate::model::names::{SliceIdentity, SliceName, UserName};
use crate::model::property::Property;
use crate::plan::{self, SliceSpec};
use crate::state::ownership::{Ownership, StateError};
use crate::systemd::{BusError, Systemd, WriteMode};
use crate::trace;

/// Calls in flight at once. The system bus allows 128 pending replies per connection;
/// half of that leaves room for anything else the connection does.
pub const MAX_IN_FLIGHT: usize = 64;
/// Units pinned (Unit.Ref) at once while writing. Each pin costs systemd a bus match rule
/// (512 allowed per connection); ~500 at once knocked systemd off the bus here.
pub const PIN_BATCH: usize = 100;

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
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Resolve(#[from] crate::config::ResolveError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// Runs `f` over `items` with at most [`MAX_IN_FLIGHT`] calls outstanding, results in order.
pub async fn bounded<'a, T, R, F, Fut>(items: &'a [T], f: F) -> Vec<R>
where
    F: Fn(&'a T) -> Fut,
    Fut: std::future::Future<Output = R> + 'a,
{
    stream::iter(items.iter().map(f))
        .buffered(MAX_IN_FLIGHT)
        .collect()
        .await
}

/// Reads every slice, failing on the first error that is not about one unit.
pub async fn read_all<S: Systemd>(
    sd: &S,
    slices: &[SliceName],
) -> Result<Vec<Result<LiveSlice, BusError>>, BusError> {
    let results = bounded(slices, |s| sd.read_slice(s)).await;
    for r in &results {
        if let Err(
            e @ (BusError::ServiceUnknown { .. }
            | BusError::Unreachable { .. }
            | BusError::AccessDenied { .. }
            | BusError::LimitsExceeded { .. }),
        ) = r
        {
            return Err(clone_fatal(e));
        }
    }
    Ok(results)
}

fn clone_fatal(e: &BusError) -> BusError {
    match e {
        BusError::ServiceUnknown { address } => BusError::ServiceUnknown {
            address: address.clone(),
        },
        BusError::Unreachable { address, reason } => BusError::Unreachable {
            address: address.clone(),
            reason: reason.clone(),
        },
        BusError::AccessDenied { what, detail } => BusError::AccessDenied {
            what: what.clone(),
            detail: detail.clone(),
        },
        other => BusError::Other {
            what: "reading slices".into(),
            detail: other.to_string(),
        },
    }
}

/// Which slices an apply covers: the whole configuration, or one user.
pub enum Scope<'a> {
    All,
    User(&'a UserName),
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
    if !opts.dry_run {
        release_orphan_holders(sd).await;
    }
    reconcile_and_write(sd, &desired, &owned, ownership, opts).await
}

/// Every slice `scope` covers and what is desired of it: the plan, plus the slices known
/// from our records (and, for a full run, those systemd has loaded) that the plan lacks.
pub async fn desired_in_scope<S: Systemd>(
    sd: &S,
    config: &Config,
    scope: Scope<'_>,
    owned: &BTreeMap<SliceName, BTreeSet<Property>>,
) -> Result<BTreeMap<SliceName, Option<SliceSpec>>, ApplyError> {
    let (plan, known) = match scope {
        Scope::All => {
            let mut known: BTreeSet<SliceName> = owned.keys().cloned().collect();
            known.extend(sd.loaded_slices().await?);
            (plan::plan(config)?, known)
        }
        Scope::User(user) => {
            // The same user's slices in other groups (moved since) are in scope too.
            let sanitized = user.sanitized().ok();
            let mine = |s: &&SliceName| matches!(s.identity(), SliceIdentity::User(_, u) if Some(&u) == sanitized.as_ref());
            let known = owned.keys().filter(mine).cloned().collect();
            (plan::plan_user(config, user)?, known)
        }
    };
    Ok(diff::desired_state(config, &plan, &known))
}

/// Apply's core: read, compare, write.
async fn reconcile_and_write<S: Systemd>(
    sd: &S,
    desired: &BTreeMap<SliceName, Option<SliceSpec>>,
    owned: &BTreeMap<SliceName, BTreeSet<Property>>,
    ownership: &Ownership,
    opts: ApplyOptions,
) -> Result<ApplyReport, ApplyError> {
    // Every slice is read, even one we have no record of: writing only what differs is what
    // keeps the drop-ins identical to one call per slice (tests/it/scale.rs).
    let slices: Vec<SliceName> = desired.keys().cloned().collect();
    let t = std::time::Instant::now();
    let holder = if opts.dry_run {
        None
    } else {
        hold_if_many(sd, &slices).await
    };
    let t = trace::phase("hold", t);
    let live = match read_all(sd, &slices).await {
        Ok(live) => live,
        Err(e) => {
            release_hold(sd, holder).await;
            return Err(e.into());
        }
    };
    let (report, todo) = compare(desired, &slices, &live, owned, opts.force);
    trace::phase("read and compare", t);
    write_changes(sd, report, todo, owned, ownership, opts, holder).await
}

/// The changes that bring `live` to `desired`; slices that could not be read are failures,
/// and lowering MemoryMax below use is refused unless `force`.
fn compare(
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
        let Some(change) = diff::diff(
            desired[slice].as_ref(),
            live,
            owned.get(slice).unwrap_or(&empty),
        ) else {
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
) -> Result<(), BusError> {
    // `is_active` is inferred from the cgroup, which a stopped slice can keep while loaded:
    // such a slice is left as it is, which costs only speed.
    let stopped: Vec<&SliceName> = slices
        .iter()
        .zip(live)
        .filter(|(slice, live)| {
            desired[*slice].is_some()
                && !matches!(slice.identity(), SliceIdentity::User(..))
                && live.as_ref().is_ok_and(|l| !l.is_active())
        })
        .map(|(slice, _)| slice)
        .collect();
    for (slice, result) in stopped
        .iter()
        .zip(bounded(&stopped, |s| sd.start_slice(s)).await)
    {
        match result {
            Ok(()) => {}
            Err(e @ (BusError::ServiceUnknown { .. } | BusError::Unreachable { .. })) => {
                return Err(e)
            }
            // Writes need the same right and report it; this is only about speed.
            Err(BusError::AccessDenied { .. }) => {}
            Err(e) => eprintln!(
                "ds01-slices: note: {slice} stays stopped: {e}; writes to its user slices are slower"
            ),
        }
    }
    Ok(())
}

/// Writes `todo`, parents first, records what we own, and releases `read_holder`.
async fn write_changes<S: Systemd>(
    sd: &S,
    mut report: ApplyReport,
    mut todo: Vec<Change>,
    owned: &BTreeMap<SliceName, BTreeSet<Property>>,
    ownership: &Ownership,
    opts: ApplyOptions,
    read_holder: Option<String>,
) -> Result<ApplyReport, ApplyError> {
    let mut t = std::time::Instant::now();
    todo.sort_by_key(|c| (c.slice.kind(), c.slice.clone()));
    // Every write to a slice makes systemd walk all loaded siblings in its parent slice, so
    // well past one chunk of writes the read holder goes and each chunk is held on its own;
    // below that, one more holder (and the name-map rebuild it costs) would not pay off.
    let writes = todo.iter().filter(|c| c.writes()).count();
    let mut chunk = write_chunk();
    let mut read_holder = read_holder;
    if opts.dry_run || writes > chunk + chunk / 2 {
        release_hold(sd, read_holder.take()).await;
    } else {
        chunk = todo.len().max(1);
    }
    if opts.dry_run {
        report.changes = todo;
        return Ok(report);
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
            None => hold_if_many(sd, &writing).await,
        };
        for batch in chunk.chunks(PIN_BATCH) {
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
        release_hold(sd, holder).await;
        t = trace::phase("write chunk", t);
        if result.is_err() {
            break;
        }
    }
    // With nothing to write the loop above never took the read holder.
    release_hold(sd, read_holder.take()).await;
    result.map(|()| report)
}

/// Slices written under one holder. Larger chunks mean fewer unit-name-map rebuilds (one per
/// chunk, each costing systemd time proportional to all drop-in directories); smaller ones
/// mean fewer loaded siblings for systemd to walk on every write. Measured: see BENCHMARKS.md.
pub const WRITE_CHUNK: usize = 1000;

fn write_chunk() -> usize {
    std::env::var("DS01_WRITE_CHUNK")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(WRITE_CHUNK)
}

/// Above this many slices, one holder keeps them all loaded while they are read and
/// written: each call on an unloaded unit makes systemd load it, and after a write the first
/// load rebuilds its unit-name map, whose cost grows with every drop-in directory.
pub const HOLD_THRESHOLD: usize = 64;

pub async fn hold_if_many<S: Systemd>(sd: &S, slices: &[SliceName]) -> Option<String> {
    if slices.len() <= HOLD_THRESHOLD {
        return None;
    }
    match sd.hold_loaded(slices).await {
        Ok(h) => Some(h),
        // Without the right to start units (verify as non-root) reads are just slower.
        Err(BusError::AccessDenied { .. }) => None,
        Err(e) => {
            eprintln!("ds01-slices: note: {e}; going on without it (slower)");
            None
        }
    }
}

pub async fn release_hold<S: Systemd>(sd: &S, holder: Option<String>) {
    if let Some(h) = holder {
        if let Err(e) = sd.release(&h).await {
            eprintln!("ds01-slices: warning: {e}; the holder stops by itself within 15 minutes");
        }
    }
}

/// Stops holders whose process is gone (an apply that was killed mid-way).
pub async fn release_orphan_holders<S: Systemd>(sd: &S) {
    let Ok(holders) = sd.stale_holders().await else {
        return;
    };
    for h in holders {
        let pid = h
            .strip_prefix(crate::systemd::client::HOLDER_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            release_hold(sd, Some(h)).await;
        }
    }
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
        ownership.record(&change.slice, &intent_of(change, owned))?;
    }
    // A write to a unit that is not loaded makes systemd reload its unit-name map, whose
    // cost grows with every drop-in directory: pinned units are written in ~2 ms instead.
    // One write gains nothing from a pin: pins only spare the loads between writes.
    let pin_results = if pin && writing.len() > 1 {
        bounded(&writing, |c| sd.pin(&c.slice)).await
    } else {
        Vec::new()
    };
    let results = bounded(&writing, |c| async move {
        let props = c.properties();
        sd.set_properties(&c.slice, mode, &props).await
    })
    .await;
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
            Err(
                e @ (BusError::ServiceUnknown { .. }
                | BusError::Unreachable { .. }
                | BusError::AccessDenied { .. }),
            ) => return Err(e.into()),
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

/// `hook pre-create`: make sure the user's slice and its parents hold the configured
/// limits, cheaply when they already do. Returns the slice to use as cgroup parent.
pub async fn hook<S: Systemd>(
    sd: &S,
    target: &HookTarget,
    ownership: &Ownership,
    mode: WriteMode,
) -> Result<(SliceName, ApplyReport), HookError> {
    let plan = plan::plan_hook(target);
    let slice = target.slice.clone();
    let desired: BTreeMap<SliceName, Option<SliceSpec>> = plan
        .slices
        .into_iter()
        .map(|s| (s.slice.clone(), Some(s)))
        .collect();
    let names: Vec<SliceName> = desired.keys().cloned().collect();
    // Without the lock: most containers start on a slice that is already right.
    let owned_now = read_owned(ownership, &names)?;
    let opts = ApplyOptions {
        mode,
        dry_run: false,
        force: true,
    };
    let unrecorded = |owned: &BTreeMap<SliceName, BTreeSet<Property>>| {
        let spec = desired.get(&slice).and_then(Option::as_ref);
        spec.is_some_and(|s| !s.properties.is_empty())
            && owned.get(&slice).is_none_or(BTreeSet::is_empty)
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
            let report = write_unread_leaf(sd, &desired, leaf, &owned, ownership, opts).await?;
            trace::phase("hook: read and write", t);
            return Ok((slice, report));
        }
    }
    let t = std::time::Instant::now();
    let live = read_all(sd, &names).await?;
    if let Some(Err(e)) = live.iter().find(|l| l.is_err()) {
        return Err(HookError::Bus(clone_fatal(e)));
    }
    start_stopped_parents(sd, &desired, &names, &live).await?;
    let t = trace::phase("hook: read", t);
    let (_, todo) = compare(&desired, &names, &live, &owned_now, opts.force);
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
    let report = complete(write_changes(sd, report, todo, &owned, ownership, opts, None).await?)?;
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
) -> Result<ApplyReport, HookError> {
    let parents: Vec<SliceName> = desired
        .keys()
        .filter(|n| **n != leaf.slice)
        .cloned()
        .collect();
    let (parents_live, leaf_written) = tokio::join!(
        read_all(sd, &parents),
        write_changes(
            sd,
            ApplyReport::default(),
            vec![leaf],
            owned,
            ownership,
            opts,
            None
        )
    );
    let mut report = complete(leaf_written?)?;
    let parents_live = parents_live?;
    start_stopped_parents(sd, desired, &parents, &parents_live).await?;
    let (checked, todo) = compare(desired, &parents, &parents_live, owned, opts.force);
    let parents_report =
        complete(write_changes(sd, checked, todo, owned, ownership, opts, None).await?)?;
    report.writes += parents_report.writes;
    report.changes.extend(parents_report.changes);
    report.slices_checked = desired.len();
    Ok(report)
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
    Resolve(#[from] crate::config::ResolveError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("could not set the limits of {0}: {1}; the container was not started so that it cannot run unlimited")]
    Incomplete(SliceName, String),
}

/// The plan-style diff: `+` new slice, `~` changed, `-` limits removed, in human units.
pub fn render_changes(changes: &[Change]) -> String {
    let mut out = String::new();
    for c in changes {
        let mark = match c.kind {
            ChangeKind::New => '+',
            ChangeKind::Update => '~',
            ChangeKind::Remove => '-',
        };
        if c.sets.is_empty() {
            let _ = writeln!(
                out,
                "  {} (already as configured; now recorded as managed)",
                c.slice
            );
            continue;
        }
        let _ = writeln!(out, "{mark} {}", c.slice);
        for s in &c.sets {
            let setting = s.property.unit_setting();
            match c.kind {
                ChangeKind::New => {
                    let _ = writeln!(out, "    + {setting}={}", s.property.display(s.to));
                }
                _ => {
                    let _ = writeln!(
                        out,
                        "    ~ {setting} {} -> {}",
                        s.property.display(s.from),
                        s.property.display(s.to)
                    );
                }
            }
        }
    }
    out
}
