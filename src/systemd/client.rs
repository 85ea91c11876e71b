//! The small trait through which apply, the hook and verify see systemd, so that they can be
//! tested against a real systemd and reasoned about without the bus. [`super::BusSystemd`]
//! implements it over D-Bus.

use crate::model::live::{LiveSlice, ScopeState, UnitState};
use crate::model::names::SliceName;
use crate::model::property::{BusValue, Property};

use super::BusError;

/// Whether writes persist across reboots (`/etc/systemd/system.control`) or only until
/// the next reboot (`/run/systemd/system.control`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    Persistent,
    Runtime,
}

/// Everything the tool needs from systemd. Implemented over D-Bus by [`super::BusSystemd`].
#[allow(async_fn_in_trait)]
pub trait Systemd {
    /// The slice's properties (one call). `active_state` is inferred from its cgroup and
    /// `drop_in_paths` is empty: [`Systemd::read_unit_state`] has both.
    async fn read_slice(&self, slice: &SliceName) -> Result<LiveSlice, BusError>;
    /// The slice's exact state and drop-in files (two calls).
    async fn read_unit_state(&self, slice: &SliceName) -> Result<UnitState, BusError>;
    /// The slice's CPU time so far (ns), one small call: `status`'s second sample.
    async fn read_cpu_usage(&self, slice: &SliceName) -> Result<Option<u64>, BusError> {
        Err(BusError::Other {
            what: format!("reading CPUUsageNSec of {slice}"),
            detail: "not supported by this client".into(),
        })
    }
    async fn set_properties(
        &self,
        slice: &SliceName,
        mode: WriteMode,
        props: &[(Property, BusValue)],
    ) -> Result<(), BusError>;
    /// `ds01*.slice` units systemd has loaded now.
    async fn loaded_slices(&self) -> Result<Vec<SliceName>, BusError>;
    /// Keeps a unit loaded (and so cheap to write) until [`Systemd::unpin`].
    async fn pin(&self, slice: &SliceName) -> Result<(), BusError>;
    async fn unpin(&self, slice: &SliceName) -> Result<(), BusError>;
    async fn reload(&self) -> Result<(), BusError>;
    /// Keeps many units loaded at once without pins: a short-lived transient service
    /// ordered `After=` them holds a reference to each, which systemd's garbage collector
    /// honours. Returns the holder's name for [`Systemd::release`].
    async fn hold_loaded(&self, slices: &[SliceName]) -> Result<String, BusError> {
        Err(BusError::Other {
            what: format!("holding {} slices loaded", slices.len()),
            detail: "not supported by this client".into(),
        })
    }
    async fn release(&self, _holder: &str) -> Result<(), BusError> {
        Ok(())
    }
    /// Holders left by an earlier run that died before releasing them.
    async fn stale_holders(&self) -> Result<Vec<String>, BusError> {
        Ok(Vec::new())
    }
    /// The container scopes systemd has loaded that are not stopped: Docker's
    /// `docker-ID.scope` and podman's `libpod-ID.scope`, wherever they run.
    async fn container_scopes(&self) -> Result<Vec<String>, BusError> {
        Err(BusError::Other {
            what: "listing container scopes".into(),
            detail: "not supported by this client".into(),
        })
    }
    /// A scope's cgroup and usage (one call), for a scope the cgroup tree cannot show.
    async fn read_scope(&self, unit: &str) -> Result<ScopeState, BusError> {
        Err(BusError::Other {
            what: format!("reading scope {unit}"),
            detail: "not supported by this client".into(),
        })
    }
    /// Starts a slice (a job; returns once systemd has queued it).
    async fn start_slice(&self, slice: &SliceName) -> Result<(), BusError> {
        Err(BusError::Other {
            what: format!("starting {slice}"),
            detail: "not supported by this client".into(),
        })
    }
}
