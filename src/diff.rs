//! What must change: desired state against live state, as pure functions.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::Config;
use crate::model::live::LiveSlice;
use crate::model::names::{SliceIdentity, SliceName, UserName};
use crate::model::property::{BusValue, Property};
use crate::plan::{user_spec, Plan, SliceSpec};

/// Every slice an apply must look at, and what is desired of it (`None`: stale — only what
/// we recorded owning is taken back).
pub fn desired_state(
    config: &Config,
    plan: &Plan,
    known: &BTreeSet<SliceName>,
) -> BTreeMap<SliceName, Option<SliceSpec>> {
    let mut out: BTreeMap<SliceName, Option<SliceSpec>> = plan
        .slices
        .iter()
        .map(|s| (s.slice.clone(), Some(s.clone())))
        .collect();
    for slice in known {
        if out.contains_key(slice) {
            continue;
        }
        out.insert(
            slice.clone(),
            hook_served(config, slice).filter(|_| config.aggregate_limits),
        );
    }
    out
}

/// A known user slice of the default group whose user is in no members file is the hook's
/// (the user started a container): it stays desired with the default group's limits.
fn hook_served(config: &Config, slice: &SliceName) -> Option<SliceSpec> {
    let SliceIdentity::User(group, sanitized) = slice.identity() else {
        return None;
    };
    if Some(&group) != config.default_group.as_ref() {
        return None;
    }
    let user = UserName::new(sanitized.as_str()).ok()?;
    let resolved = config.resolve(&user).ok()?;
    (!resolved.listed && &resolved.slice == slice).then(|| user_spec(&resolved))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// Never managed before.
    New,
    Update,
    /// No longer desired: our limits are taken back.
    Remove,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertyChange {
    pub property: Property,
    pub from: BusValue,
    pub to: BusValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub slice: SliceName,
    pub kind: ChangeKind,
    pub sets: Vec<PropertyChange>,
    /// What we own on the slice once the change is done.
    pub owned_after: BTreeSet<Property>,
    /// Memory in use above the new MemoryMax: writing it would OOM-kill running jobs.
    pub memory_below_usage: Option<(u64, u64)>,
}

impl Change {
    pub fn writes(&self) -> bool {
        !self.sets.is_empty()
    }

    pub fn properties(&self) -> Vec<(Property, BusValue)> {
        self.sets.iter().map(|c| (c.property, c.to)).collect()
    }
}

/// The limits in force on `live` that the configuration does not ask for: every limit of a
/// slice that is no longer desired, or the limits its spec lacks. The one definition of
/// "stale" for apply (which lifts those it set) and verify (which reports them).
pub fn stale_limits<'a>(
    desired: Option<&'a SliceSpec>,
    live: &'a LiveSlice,
) -> impl Iterator<Item = (Property, BusValue)> + 'a {
    Property::LIMITS
        .into_iter()
        .filter(move |p| desired.is_none_or(|spec| spec.properties.get(*p).is_none()))
        .map(|p| (p, live.value(p)))
        .filter(|(p, have)| *have != p.unset_value())
}

/// Whether a slice that is no longer desired (a group move, a removed user, a user made
/// admin) keeps the limits we set on it for now: while its jobs still run, lifting them
/// would set those jobs free. The next apply after they end lifts them.
pub fn kept_while_busy(
    desired: Option<&SliceSpec>,
    live: &LiveSlice,
    owned: &BTreeSet<Property>,
) -> bool {
    desired.is_none() && live.busy() && stale_limits(None, live).any(|(p, _)| owned.contains(&p))
}

/// The change that brings `live` to `desired`; `None` when nothing (not even our record)
/// needs to change.
pub fn diff(
    desired: Option<&SliceSpec>,
    live: &LiveSlice,
    owned: &BTreeSet<Property>,
) -> Option<Change> {
    if kept_while_busy(desired, live, owned) {
        return None;
    }
    let mut sets = Vec::new();
    if let Some(spec) = desired {
        for (p, want) in spec.properties.iter() {
            let have = live.value(p);
            if have != want {
                sets.push(PropertyChange {
                    property: p,
                    from: have,
                    to: want,
                });
            }
        }
    }
    // Only limits we set are taken back; someone else's stay until they remove them.
    for (p, have) in stale_limits(desired, live).filter(|(p, _)| owned.contains(p)) {
        sets.push(PropertyChange {
            property: p,
            from: have,
            to: p.unset_value(),
        });
    }
    let (owned_after, kind): (BTreeSet<Property>, _) = match desired {
        Some(spec) if owned.is_empty() => (
            spec.properties.iter().map(|(p, _)| p).collect(),
            ChangeKind::New,
        ),
        Some(spec) => (
            spec.properties.iter().map(|(p, _)| p).collect(),
            ChangeKind::Update,
        ),
        None => (BTreeSet::new(), ChangeKind::Remove),
    };
    if sets.is_empty() && &owned_after == owned {
        return None;
    }
    let memory_below_usage = sets
        .iter()
        .find(|c| c.property == Property::MemoryMax)
        .and_then(|c| {
            let (BusValue::U64(new_max), Some(usage)) = (c.to, live.memory_current) else {
                return None;
            };
            (live.is_active() && usage > new_max).then_some((usage, new_max))
        });
    Some(Change {
        slice: live.slice.clone(),
        kind,
        sets,
        owned_after,
        memory_below_usage,
    })
}

/// The change for a slice with no record of ours, made without reading it first, as
/// [`diff`] would make it for a slice that holds systemd's defaults: every desired property
/// that is not the default is set. Only the hook takes this way, for a user slice it has
/// never written (if someone else set a limit there that the configuration leaves at its
/// default, it stays until the next apply reads it as drift).
pub fn unread(desired: &SliceSpec) -> Change {
    Change {
        slice: desired.slice.clone(),
        kind: ChangeKind::New,
        sets: desired
            .properties
            .iter()
            .filter(|(p, want)| *want != p.unset_value())
            .map(|(p, want)| PropertyChange {
                property: p,
                from: p.unset_value(),
                to: want,
            })
            .collect(),
        owned_after: desired.properties.iter().map(|(p, _)| p).collect(),
        memory_below_usage: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_texts;
    use crate::plan::plan;
    use std::path::Path;

    fn live(slice: &str, values: &[(Property, BusValue)]) -> LiveSlice {
        LiveSlice {
            slice: SliceName::parse(slice).unwrap(),
            load_state: "loaded".into(),
            active_state: "inactive".into(),
            control_group: None,
            memory_current: None,
            tasks_current: None,
            cpu_usage_nsec: None,
            values: values.iter().copied().collect(),
            drop_in_paths: vec![],
        }
    }

    fn config() -> Config {
        let main = "default_group: student\ngroups:\n  student:\n    aggregate: {memory_max: 96G, tasks_max: 100}\n  admin: {}\n";
        parse_texts(
            Path::new("/c/r.yaml"),
            main,
            &[("student", "alice\n"), ("admin", "root1\n")],
            None,
        )
        .unwrap()
    }

    #[test]
    fn stale_and_hook_served_slices_are_told_apart() {
        let config = config();
        let plan = plan(&config).unwrap();
        let known: BTreeSet<SliceName> = [
            "ds01-student-bob.slice",
            "ds01-admin-carol.slice",
            "ds01-student-root1.slice",
            "ds01-gone.slice",
        ]
        .iter()
        .map(|s| SliceName::parse(s).unwrap())
        .collect();
        let desired = desired_state(&config, &plan, &known);
        let get = |s: &str| desired[&SliceName::parse(s).unwrap()].clone();
        assert!(
            get("ds01-student-bob.slice").is_some(),
            "unlisted default-group user keeps limits"
        );
        assert!(
            get("ds01-admin-carol.slice").is_none(),
            "removed from a non-default group"
        );
        assert!(get("ds01-student-root1.slice").is_none(), "moved to admin");
        assert!(get("ds01-gone.slice").is_none());
        assert!(get("ds01-student-alice.slice").is_some());
    }

    #[test]
    fn diff_sets_only_what_differs_and_takes_back_only_what_we_own() {
        let config = config();
        let plan = plan(&config).unwrap();
        let spec = plan
            .get(&SliceName::parse("ds01-student-alice.slice").unwrap())
            .unwrap();
        let l = live(
            "ds01-student-alice.slice",
            &[
                (Property::MemoryMax, BusValue::U64(96 << 30)),
                (Property::TasksMax, BusValue::U64(5)),
                (Property::CpuQuotaPerSecUSec, BusValue::U64(7)),
            ],
        );
        let owned: BTreeSet<Property> = [Property::MemoryMax, Property::TasksMax].into();
        let c = diff(Some(spec), &l, &owned).unwrap();
        assert_eq!(c.kind, ChangeKind::Update);
        assert_eq!(
            c.sets,
            vec![PropertyChange {
                property: Property::TasksMax,
                from: BusValue::U64(5),
                to: BusValue::U64(100)
            }]
        );
        // CPU quota was not set by us: untouched even though the plan has none.
        let owned_cpu: BTreeSet<Property> = [
            Property::MemoryMax,
            Property::TasksMax,
            Property::CpuQuotaPerSecUSec,
        ]
        .into();
        let c = diff(Some(spec), &l, &owned_cpu).unwrap();
        assert!(
            c.sets
                .iter()
                .any(|s| s.property == Property::CpuQuotaPerSecUSec
                    && s.to == BusValue::U64(u64::MAX))
        );
        // Stale: everything owned goes back to unset; nothing else.
        let c = diff(None, &l, &owned).unwrap();
        assert_eq!(c.kind, ChangeKind::Remove);
        assert_eq!(c.sets.len(), 2);
        assert!(c.owned_after.is_empty());
        // In sync and recorded: nothing to do.
        let l2 = live(
            "ds01-student-alice.slice",
            &[
                (Property::MemoryMax, BusValue::U64(96 << 30)),
                (Property::TasksMax, BusValue::U64(100)),
            ],
        );
        assert_eq!(diff(Some(spec), &l2, &owned), None);
    }

    #[test]
    fn lowering_memory_below_usage_is_flagged() {
        let config = config();
        let plan = plan(&config).unwrap();
        let spec = plan
            .get(&SliceName::parse("ds01-student-alice.slice").unwrap())
            .unwrap();
        let mut l = live("ds01-student-alice.slice", &[]);
        l.active_state = "active".into();
        l.memory_current = Some(100 << 30);
        let c = diff(Some(spec), &l, &BTreeSet::new()).unwrap();
        assert_eq!(c.memory_below_usage, Some((100 << 30, 96 << 30)));
    }
}
