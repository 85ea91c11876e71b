//! Many calls at once, within what systemd and the bus can take: the in-flight budget, the
//! holders that keep slices loaded while they are read and written, and pins. Measured costs
//! and the hazards behind each number: `shared/docs/systemd-behaviour.md`, BENCHMARKS.md.

use futures_util::stream::{self, StreamExt};

use super::{BusError, Systemd};
use crate::model::live::LiveSlice;
use crate::model::names::SliceName;

/// Calls outstanding at once on one connection, for every caller. The system bus allows 128
/// pending replies per connection; half of that leaves room for anything else the
/// connection does.
pub const MAX_IN_FLIGHT: usize = 64;

/// Transient services that keep slices loaded during an apply are named with this prefix.
pub const HOLDER_PREFIX: &str = "ds01-slices-hold-";

/// Units pinned (Unit.Ref) at once while writing. Each pin costs systemd a bus match rule
/// (512 allowed per connection); ~500 at once knocked systemd off the bus here.
pub const PIN_BATCH: usize = 100;

/// Above this many slices, one holder keeps them all loaded while they are read and
/// written: each call on an unloaded unit makes systemd load it, and after a write the first
/// load rebuilds its unit-name map, whose cost grows with every drop-in directory.
pub const HOLD_THRESHOLD: usize = 64;

/// Slices written under one holder. Larger chunks mean fewer unit-name-map rebuilds (one per
/// chunk, each costing systemd time proportional to all drop-in directories); smaller ones
/// mean fewer loaded siblings for systemd to walk on every write. Measured: see BENCHMARKS.md.
pub const WRITE_CHUNK: usize = 1000;

/// [`WRITE_CHUNK`], or `DS01_WRITE_CHUNK` for the benchmark's measurements.
pub fn write_chunk() -> usize {
    std::env::var("DS01_WRITE_CHUNK")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(WRITE_CHUNK)
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

/// Reads every slice; an error about one unit stays with that unit, a fatal one
/// ([`BusError::is_fatal`]) ends the read with that one error.
pub async fn read_all<S: Systemd>(
    sd: &S,
    slices: &[SliceName],
) -> Result<Vec<Result<LiveSlice, BusError>>, BusError> {
    let results = bounded(slices, |s| sd.read_slice(s)).await;
    if let Some(Err(e)) = results
        .iter()
        .find(|r| r.as_ref().is_err_and(BusError::is_fatal))
    {
        return Err(e.clone());
    }
    Ok(results)
}

/// A holder for `slices` when there are enough of them to pay for one. `Ok(None)` without
/// the right to start units (verify as non-root): reads are then only slower.
pub async fn hold_if_many<S: Systemd>(
    sd: &S,
    slices: &[SliceName],
) -> Result<Option<String>, BusError> {
    if slices.len() <= HOLD_THRESHOLD {
        return Ok(None);
    }
    match sd.hold_loaded(slices).await {
        Ok(h) => Ok(Some(h)),
        Err(BusError::AccessDenied { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Stops a holder, if there is one.
pub async fn release_hold<S: Systemd>(sd: &S, holder: Option<String>) -> Result<(), BusError> {
    match holder {
        Some(h) => sd.release(&h).await,
        None => Ok(()),
    }
}

/// Holders left by an apply that was killed mid-way: their process (named in the unit
/// name) is gone.
pub async fn orphan_holders<S: Systemd>(sd: &S) -> Vec<String> {
    let Ok(holders) = sd.stale_holders().await else {
        return Vec::new();
    };
    holders
        .into_iter()
        .filter(|h| {
            let pid = h
                .strip_prefix(HOLDER_PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            !pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        })
        .collect()
}
