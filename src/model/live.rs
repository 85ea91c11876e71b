//! What systemd reports of a slice, as plain data: the diff and every report work from it.

use std::collections::BTreeMap;

use super::names::SliceName;
use super::property::{BusValue, Property};

/// A slice as systemd reports it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSlice {
    pub slice: SliceName,
    pub load_state: String,
    pub active_state: String,
    pub control_group: Option<String>,
    /// Bytes in use, when systemd knows (active slices with memory accounting).
    pub memory_current: Option<u64>,
    /// Tasks in the slice's cgroup, when systemd knows (active slices with tasks accounting).
    pub tasks_current: Option<u64>,
    /// CPU time used by the slice's cgroup since it was made, in ns, when systemd knows.
    pub cpu_usage_nsec: Option<u64>,
    pub values: BTreeMap<Property, BusValue>,
    pub drop_in_paths: Vec<String>,
}

impl LiveSlice {
    pub fn is_active(&self) -> bool {
        self.active_state == "active"
            || self.active_state == "activating"
            || self.active_state == "reloading"
    }

    /// Whether jobs may still run in the slice: active with tasks, or active and the count
    /// unknown (which counts as busy).
    pub fn busy(&self) -> bool {
        self.is_active() && self.tasks_current != Some(0)
    }

    pub fn value(&self, p: Property) -> BusValue {
        self.values.get(&p).copied().unwrap_or(p.unset_value())
    }
}

/// What verify adds to a slice's properties: its exact state and drop-in files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitState {
    pub active_state: String,
    pub drop_in_paths: Vec<String>,
}

/// What systemd reports of a running container's scope (`docker-ID.scope`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeState {
    /// Its cgroup; `None` once it has stopped.
    pub control_group: Option<String>,
    pub memory_current: Option<u64>,
    pub tasks_current: Option<u64>,
}
