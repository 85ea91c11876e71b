//! The properties this tool sets on a slice, and their values as they travel on the bus.

use std::fmt;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::values::{CpuQuota, MemoryLimit, TasksLimit};

/// The D-Bus properties this tool sets, by their systemd names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Property {
    CpuAccounting,
    MemoryAccounting,
    TasksAccounting,
    IoAccounting,
    CpuQuotaPerSecUSec,
    MemoryMax,
    MemoryHigh,
    TasksMax,
}

impl Property {
    pub const ACCOUNTING: [Property; 4] = [
        Property::CpuAccounting,
        Property::MemoryAccounting,
        Property::TasksAccounting,
        Property::IoAccounting,
    ];
    pub const LIMITS: [Property; 4] = [
        Property::CpuQuotaPerSecUSec,
        Property::MemoryMax,
        Property::MemoryHigh,
        Property::TasksMax,
    ];

    /// The property's name on the bus (`org.freedesktop.systemd1.Slice`).
    pub fn bus_name(self) -> &'static str {
        match self {
            Property::CpuAccounting => "CPUAccounting",
            Property::MemoryAccounting => "MemoryAccounting",
            Property::TasksAccounting => "TasksAccounting",
            Property::IoAccounting => "IOAccounting",
            Property::CpuQuotaPerSecUSec => "CPUQuotaPerSecUSec",
            Property::MemoryMax => "MemoryMax",
            Property::MemoryHigh => "MemoryHigh",
            Property::TasksMax => "TasksMax",
        }
    }

    /// The unit-file setting that stores the property (`CPUQuota=` for the quota).
    pub fn unit_setting(self) -> &'static str {
        match self {
            Property::CpuQuotaPerSecUSec => "CPUQuota",
            other => other.bus_name(),
        }
    }

    pub fn from_bus_name(name: &str) -> Option<Property> {
        Self::ACCOUNTING
            .into_iter()
            .chain(Self::LIMITS)
            .find(|p| p.bus_name() == name)
    }

    /// The value that means "not set by anyone" for this property.
    pub fn unset_value(self) -> BusValue {
        match self {
            Property::CpuAccounting
            | Property::MemoryAccounting
            | Property::TasksAccounting
            | Property::IoAccounting => BusValue::Bool(false),
            _ => BusValue::U64(u64::MAX),
        }
    }

    /// A bus value in the human form for this property (`96G`, `9600%`, `yes`).
    pub fn display(self, value: BusValue) -> String {
        match (self, value) {
            (_, BusValue::Bool(b)) => if b { "yes" } else { "no" }.to_owned(),
            (Property::CpuQuotaPerSecUSec, BusValue::U64(v)) => CpuQuota::from_bus(v).to_string(),
            (Property::MemoryMax | Property::MemoryHigh, BusValue::U64(v)) => {
                MemoryLimit::from_bus(v).to_string()
            }
            (Property::TasksMax, BusValue::U64(v)) => TasksLimit::from_bus(v).to_string(),
            (_, BusValue::U64(v)) => v.to_string(),
        }
    }
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.bus_name())
    }
}

/// A property value exactly as it travels on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum BusValue {
    Bool(bool),
    U64(u64),
}

/// The desired properties of one slice, in a fixed order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties(Vec<(Property, BusValue)>);

impl Properties {
    pub fn iter(&self) -> impl Iterator<Item = (Property, BusValue)> + '_ {
        self.0.iter().copied()
    }

    pub fn get(&self, p: Property) -> Option<BusValue> {
        self.0.iter().find(|(q, _)| *q == p).map(|(_, v)| *v)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn has_limits(&self) -> bool {
        self.0.iter().any(|(p, _)| Property::LIMITS.contains(p))
    }

    /// Properties in the order given (a record of [`Properties::iter`]'s, read back).
    pub fn from_pairs(pairs: Vec<(Property, BusValue)>) -> Self {
        Properties(pairs)
    }

    pub fn accounting() -> Self {
        Properties(
            Property::ACCOUNTING
                .iter()
                .map(|p| (*p, BusValue::Bool(true)))
                .collect(),
        )
    }

    /// The properties of a user's limits, those that are set. `Infinity` is sent explicitly
    /// so that a lifted limit replaces an earlier finite one.
    pub fn limits(
        cpu_quota: Option<CpuQuota>,
        memory_max: Option<MemoryLimit>,
        memory_high: Option<MemoryLimit>,
        tasks_max: Option<TasksLimit>,
    ) -> Self {
        let mut out = Vec::new();
        if let Some(q) = cpu_quota {
            out.push((Property::CpuQuotaPerSecUSec, BusValue::U64(q.to_bus())));
        }
        if let Some(m) = memory_max {
            out.push((Property::MemoryMax, BusValue::U64(m.to_bus())));
        }
        if let Some(m) = memory_high {
            out.push((Property::MemoryHigh, BusValue::U64(m.to_bus())));
        }
        if let Some(t) = tasks_max {
            out.push((Property::TasksMax, BusValue::U64(t.to_bus())));
        }
        Properties(out)
    }
}

impl Serialize for Properties {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (p, v) in &self.0 {
            map.serialize_entry(p.bus_name(), v)?;
        }
        map.end()
    }
}
