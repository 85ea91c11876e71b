//! The plan: the desired state of every slice this tool manages, as a pure function of the
//! configuration. Every backend (D-Bus, rendered files) and every check works from it.

use std::fmt;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::config::{Aggregate, Config, ResolveError, ResolvedUser};
use crate::names::{GroupName, SliceName, UserName};
use crate::values::{CpuQuota, MemoryLimit, TasksLimit};

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

    fn accounting() -> Self {
        Properties(
            Property::ACCOUNTING
                .iter()
                .map(|p| (*p, BusValue::Bool(true)))
                .collect(),
        )
    }

    /// The properties for a user's aggregate. `Infinity` is sent explicitly so that a lifted
    /// limit replaces an earlier finite one.
    pub fn limits(aggregate: &Aggregate) -> Self {
        let mut out = Vec::new();
        if let Some(q) = aggregate.cpu_quota {
            out.push((Property::CpuQuotaPerSecUSec, BusValue::U64(q.to_bus())));
        }
        if let Some(m) = aggregate.memory_max {
            out.push((Property::MemoryMax, BusValue::U64(m.to_bus())));
        }
        if let Some(m) = aggregate.memory_high {
            out.push((Property::MemoryHigh, BusValue::U64(m.to_bus())));
        }
        if let Some(t) = aggregate.tasks_max {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SliceKind {
    Root,
    Group,
    User,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SliceSpec {
    pub slice: SliceName,
    pub kind: SliceKind,
    pub group: Option<GroupName>,
    pub user: Option<UserName>,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub slices: Vec<SliceSpec>,
}

impl Plan {
    pub fn get(&self, slice: &SliceName) -> Option<&SliceSpec> {
        self.slices.iter().find(|s| &s.slice == slice)
    }
}

fn root_spec() -> SliceSpec {
    SliceSpec {
        slice: SliceName::root(),
        kind: SliceKind::Root,
        group: None,
        user: None,
        properties: Properties::accounting(),
    }
}

fn group_spec(group: &GroupName) -> SliceSpec {
    SliceSpec {
        slice: SliceName::group(group),
        kind: SliceKind::Group,
        group: Some(group.clone()),
        user: None,
        properties: Properties::accounting(),
    }
}

pub fn user_spec(user: &ResolvedUser) -> SliceSpec {
    SliceSpec {
        slice: user.slice.clone(),
        kind: SliceKind::User,
        group: Some(user.group.clone()),
        user: Some(user.name.clone()),
        properties: user
            .aggregate
            .as_ref()
            .map(Properties::limits)
            .unwrap_or_default(),
    }
}

/// The desired state of every managed slice: `ds01.slice`, each group's slice, and each
/// listed user's slice (plus users named only in overrides, who belong to the default
/// group). Empty when `enforcement.aggregate_limits` is false.
pub fn plan(config: &Config) -> Result<Plan, ResolveError> {
    if !config.aggregate_limits {
        return Ok(Plan { slices: Vec::new() });
    }
    let mut slices = vec![root_spec()];
    slices.extend(config.groups.iter().map(|g| group_spec(&g.name)));
    for member in &config.members {
        slices.push(user_spec(&config.resolve(&member.name)?));
    }
    for user in config.override_only_users() {
        slices.push(user_spec(&config.resolve(&user)?));
    }
    Ok(Plan { slices })
}

/// The plan for one user: their parents and their own slice (listed or not).
pub fn plan_user(config: &Config, user: &UserName) -> Result<Plan, ResolveError> {
    Ok(plan_resolved(config, &config.resolve(user)?))
}

/// [`plan_user`] for a user already resolved.
pub fn plan_resolved(config: &Config, resolved: &ResolvedUser) -> Plan {
    if !config.aggregate_limits {
        return Plan { slices: Vec::new() };
    }
    Plan {
        slices: vec![
            root_spec(),
            group_spec(&resolved.group),
            user_spec(resolved),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_texts;
    use std::path::Path;

    #[test]
    fn plan_has_parents_groups_and_users() {
        let main = "default_group: student\ngroups:\n  student:\n    aggregate:\n      cpu_quota: \"9600%\"\n      memory_max: 96G\n  admin: {}\n";
        let config = parse_texts(
            Path::new("/c/r.yaml"),
            main,
            &[("student", "a\nb\n"), ("admin", "root1\n")],
            None,
        )
        .unwrap();
        let plan = plan(&config).unwrap();
        let names: Vec<&str> = plan.slices.iter().map(|s| s.slice.as_str()).collect();
        assert_eq!(
            names,
            [
                "ds01.slice",
                "ds01-student.slice",
                "ds01-admin.slice",
                "ds01-student-a.slice",
                "ds01-student-b.slice",
                "ds01-admin-root1.slice"
            ]
        );
        let a = &plan.slices[3];
        assert_eq!(
            a.properties.get(Property::CpuQuotaPerSecUSec),
            Some(BusValue::U64(96_000_000))
        );
        assert_eq!(
            a.properties.get(Property::MemoryMax),
            Some(BusValue::U64(96 << 30))
        );
        assert_eq!(a.properties.get(Property::TasksMax), None);
        assert!(plan.slices[5].properties.is_empty());
        assert_eq!(
            plan.slices[0].properties.get(Property::IoAccounting),
            Some(BusValue::Bool(true))
        );
        let json = serde_json::to_value(&plan).unwrap();
        assert_eq!(
            json["slices"][3]["properties"]["CPUQuotaPerSecUSec"],
            96_000_000
        );
        assert_eq!(json["slices"][3]["kind"], "user");
    }

    #[test]
    fn disabled_enforcement_plans_nothing() {
        let main = "enforcement: {aggregate_limits: false}\ngroups:\n  student:\n    aggregate: {tasks_max: 5}\n";
        let config =
            parse_texts(Path::new("/c/r.yaml"), main, &[("student", "a\n")], None).unwrap();
        assert!(plan(&config).unwrap().slices.is_empty());
    }
}
