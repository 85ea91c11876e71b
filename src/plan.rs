//! The plan: the desired state of every slice this tool manages, as a pure function of the
//! configuration. Every backend (D-Bus, rendered files) and every check works from it.

use serde::Serialize;

use crate::config::{Aggregate, Config, ResolveError, ResolvedUser};
use crate::model::names::SliceKind;
use crate::model::names::{GroupName, SliceName, UserName};
use crate::model::property::Properties;

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
        properties: limits(user.aggregate.as_ref()),
    }
}

/// The properties of a user slice with these effective limits (`None`: uncapped).
pub fn limits(aggregate: Option<&Aggregate>) -> Properties {
    aggregate
        .map(|a| Properties::limits(a.cpu_quota, a.memory_max, a.memory_high, a.tasks_max))
        .unwrap_or_default()
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

/// Everything a hook does with the configuration: the user's slice, its parents, and the
/// properties the user's slice must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookTarget {
    pub user: UserName,
    pub group: GroupName,
    pub slice: SliceName,
    pub listed: bool,
    pub properties: Properties,
    pub aggregate_limits: bool,
}

impl HookTarget {
    /// The answer of a full validation, which the record must reproduce.
    pub fn from_config(config: &Config, user: &UserName) -> Result<HookTarget, ResolveError> {
        let resolved = config.resolve(user)?;
        let properties = user_spec(&resolved).properties;
        Ok(HookTarget {
            user: resolved.name,
            group: resolved.group,
            slice: resolved.slice,
            listed: resolved.listed,
            properties,
            aggregate_limits: config.aggregate_limits,
        })
    }
}

/// The hook's plan, from the record's answer or a full validation's: the same as
/// [`plan_resolved`] for the user the target was made for.
pub fn plan_hook(target: &HookTarget) -> Plan {
    if !target.aggregate_limits {
        return Plan { slices: Vec::new() };
    }
    Plan {
        slices: vec![
            root_spec(),
            group_spec(&target.group),
            SliceSpec {
                slice: target.slice.clone(),
                kind: SliceKind::User,
                group: Some(target.group.clone()),
                user: Some(target.user.clone()),
                properties: target.properties.clone(),
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_texts;
    use crate::model::property::{BusValue, Property};
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
