//! What `render` (and `verify --offline`) make of the tree: for every slice, the file the plan
//! wants set against the file that is there, and the D-Bus drop-ins of ours that would shadow
//! it. The result, a [`TreePlan`], is computed before anything is touched, so a dry run, the
//! offline report and the real run agree on every file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::error::RenderError;
use super::format::{
    dbus_drop_in_name, drop_in_dir_name, only_settings, parse_assignments, relative_path,
    render_spec, same_setting_value, setting_value, Provenance, CONTROL_DIRS,
};
use super::root::Root;
use super::scan::{read_optional, scan};
use crate::config::Config;
use crate::diff;
use crate::model::names::{SanitizedUser, SliceName, UserName};
use crate::model::property::Property;
use crate::plan::Plan;
use crate::state::ownership::Ownership;

/// What happens to one slice's `10-resource-limits.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileAction {
    Unchanged,
    Create(String),
    /// Ours, with other content.
    Update(String),
    /// The old generator's file, rewritten with our header.
    TakeOver(String),
    /// Ours or the old generator's, for a slice that should have no file.
    Remove(Provenance),
    /// Someone else's file is where ours must go: left alone, and the slice is not rendered.
    Refuse {
        content: String,
        reason: String,
    },
    /// Someone else's file on a slice that needs none: left alone.
    KeepForeign {
        reason: String,
    },
}

#[derive(Debug, Clone)]
pub struct FilePlan {
    pub slice: SliceName,
    pub path: PathBuf,
    pub action: FileAction,
}

/// A `system.control` drop-in that SetUnitProperties wrote for a property our ownership
/// record lists.
#[derive(Debug, Clone)]
pub struct OwnedDbusDropIn {
    pub slice: SliceName,
    pub property: Property,
    pub path: PathBuf,
    /// False when the file holds more than that one setting: then it is left alone.
    pub recognised: bool,
}

/// A D-Bus drop-in that sets a rendered property to another value, and so wins over our file.
#[derive(Debug, Clone, Serialize)]
pub struct Shadow {
    pub slice: SliceName,
    pub property: &'static str,
    pub dbus_file: PathBuf,
    pub dbus_value: String,
    pub rendered_file: PathBuf,
    pub rendered_value: String,
    /// Listed in our ownership records, so `render` removes it.
    pub owned: bool,
}

/// Everything `render` would do, computed without changing anything.
#[derive(Debug)]
pub struct TreePlan {
    pub root: PathBuf,
    pub files: Vec<FilePlan>,
    pub dbus: Vec<OwnedDbusDropIn>,
    /// Ownership records as they must be afterwards (empty: forget the slice).
    pub records: Vec<(SliceName, BTreeSet<Property>)>,
    pub shadows: Vec<Shadow>,
    pub leftover_temps: Vec<PathBuf>,
}

impl TreePlan {
    pub fn writes(&self) -> impl Iterator<Item = (&FilePlan, &str)> {
        self.files.iter().filter_map(|f| match &f.action {
            FileAction::Create(c) | FileAction::Update(c) | FileAction::TakeOver(c) => {
                Some((f, c.as_str()))
            }
            _ => None,
        })
    }

    pub fn removals(&self) -> impl Iterator<Item = &FilePlan> {
        self.files
            .iter()
            .filter(|f| matches!(f.action, FileAction::Remove(_)))
    }

    pub fn refused(&self) -> impl Iterator<Item = &FilePlan> {
        self.files
            .iter()
            .filter(|f| matches!(f.action, FileAction::Refuse { .. }))
    }

    /// Whether systemd would see anything different after this plan is carried out.
    pub fn changes_units(&self) -> bool {
        self.writes().next().is_some()
            || self.removals().next().is_some()
            || self.dbus.iter().any(|d| d.recognised)
    }
}

/// Which slices a render covers besides the plan's: `None` for all of them; for one user,
/// that user's slices in any group (left behind by a move between groups).
pub fn in_scope(slice: &SliceName, plan: &Plan, user: Option<&SanitizedUser>) -> bool {
    match user {
        None => true,
        Some(u) => plan.get(slice).is_some() || slice.is_users(u),
    }
}

/// Computes what `render` does to the tree under `root` for `plan` (all slices, or one
/// user's when `user` is given and `plan` is that user's plan).
pub fn plan_tree(
    config: &Config,
    plan: &Plan,
    user: Option<&UserName>,
    root: &Path,
    ownership: &Ownership,
) -> Result<TreePlan, RenderError> {
    let sanitized = user.and_then(|u| u.sanitized().ok());
    let scope = |s: &SliceName| in_scope(s, plan, sanitized.as_ref());
    let tree = Root::open(root)?;
    let scan = scan(&tree)?;
    let owned: BTreeMap<SliceName, BTreeSet<Property>> = ownership
        .read_all()?
        .into_iter()
        .filter(|(s, _)| scope(s))
        .collect();
    let known: BTreeSet<SliceName> = scan
        .files
        .keys()
        .chain(owned.keys())
        .filter(|s| scope(s))
        .cloned()
        .collect();
    let desired = diff::desired_state(config, plan, &known);
    let mut order: Vec<&SliceName> = desired.keys().collect();
    order.sort_by_key(|s| (s.kind(), *s));

    let mut tp = TreePlan {
        root: root.to_owned(),
        files: Vec::new(),
        dbus: Vec::new(),
        records: Vec::new(),
        shadows: Vec::new(),
        leftover_temps: scan.leftover_temps,
    };
    for slice in order {
        let want = desired[slice].as_ref().and_then(render_spec);
        let path = root.join(relative_path(slice));
        let found = scan.files.get(slice);
        let action = match (&want, found) {
            (None, None) => None,
            (Some(c), None) => Some(FileAction::Create(c.clone())),
            (Some(c), Some(f)) => Some(match (f.provenance, &f.odd) {
                (_, Some(reason)) => FileAction::Refuse {
                    content: c.clone(),
                    reason: reason.clone(),
                },
                _ if f.text.as_deref() == Some(c.as_str()) => FileAction::Unchanged,
                (Provenance::Ours, _) => FileAction::Update(c.clone()),
                (Provenance::Legacy, _) => FileAction::TakeOver(c.clone()),
                (Provenance::Foreign, _) => FileAction::Refuse {
                    content: c.clone(),
                    reason: format!(
                        "{} was not written by ds01-slices or its old generator",
                        f.path.display()
                    ),
                },
            }),
            (None, Some(f)) => Some(match (f.provenance, &f.odd) {
                (p, None) if p.is_ours() => FileAction::Remove(p),
                (_, odd) => FileAction::KeepForeign {
                    reason: odd.clone().unwrap_or_else(|| {
                        format!(
                            "{} is not in the shape ds01-slices or its old generator wrote (only comments, [Slice] and CPUQuota/MemoryMax/MemoryHigh/TasksMax)",
                            f.path.display()
                        )
                    }),
                },
            }),
        };
        let refused = matches!(action, Some(FileAction::Refuse { .. }));
        if let Some(action) = action {
            tp.files.push(FilePlan {
                slice: slice.clone(),
                path,
                action,
            });
        }
        // A slice we could not render keeps its D-Bus drop-ins: they are all it has.
        if refused {
            continue;
        }
        let owned_here = owned.get(slice).cloned().unwrap_or_default();
        let mut keep = BTreeSet::new();
        for &p in &owned_here {
            for control in CONTROL_DIRS {
                let path = root
                    .join(control)
                    .join(drop_in_dir_name(slice))
                    .join(dbus_drop_in_name(p));
                let Some(text) = read_optional(&tree, &path)? else {
                    continue;
                };
                let recognised = text
                    .as_deref()
                    .is_some_and(|t| only_settings(t, &[p.unit_setting()]));
                if !recognised {
                    keep.insert(p);
                }
                tp.dbus.push(OwnedDbusDropIn {
                    slice: slice.clone(),
                    property: p,
                    path,
                    recognised,
                });
            }
        }
        if !owned_here.is_empty() {
            tp.records.push((slice.clone(), keep));
        }
        if let Some(spec) = desired[slice].as_ref().filter(|_| want.is_some()) {
            for (p, v) in spec.properties.iter() {
                let rendered_value = setting_value(p, v);
                for control in CONTROL_DIRS {
                    let dbus_file = root
                        .join(control)
                        .join(drop_in_dir_name(slice))
                        .join(dbus_drop_in_name(p));
                    let Some(Some(text)) = read_optional(&tree, &dbus_file)? else {
                        continue;
                    };
                    let Some((_, dbus_value)) =
                        parse_assignments(&text).into_iter().rfind(|(q, _)| *q == p)
                    else {
                        continue;
                    };
                    if !same_setting_value(p, &dbus_value, &rendered_value) {
                        tp.shadows.push(Shadow {
                            slice: slice.clone(),
                            property: p.unit_setting(),
                            owned: owned_here.contains(&p),
                            dbus_file,
                            dbus_value,
                            rendered_file: root.join(relative_path(slice)),
                            rendered_value: rendered_value.clone(),
                        });
                    }
                }
            }
        }
    }
    Ok(tp)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::config::parse_texts;
    use crate::dropin::commit::execute;
    use crate::dropin::format::{DROP_IN_FILE, MARKER, UNIT_DIR};
    use crate::dropin::offline::offline_check;
    use crate::dropin::testutil::{all_files, config, config_with, TempRoot};
    use crate::plan::plan;

    #[test]
    fn render_writes_rewrites_and_removes_only_what_it_may() {
        let root = TempRoot::new("cycle");
        let state = TempRoot::new("state");
        let own = Ownership::new(&state.0);
        let c = config("alice\nbob\n");
        let p = plan(&c).unwrap();
        let tp = plan_tree(&c, &p, None, &root.0, &own).unwrap();
        assert_eq!(tp.writes().count(), 4);
        execute(&tp, &own).unwrap();
        let unit = root.0.join(UNIT_DIR);
        let bob = unit.join("ds01-student-bob.slice.d").join(DROP_IN_FILE);
        assert!(fs::read_to_string(&bob).unwrap().contains("TasksMax=100\n"));

        // Unchanged files are not rewritten.
        let tp = plan_tree(&c, &p, None, &root.0, &own).unwrap();
        assert!(!tp.changes_units());

        // Bob leaves; carol's dir holds an old-generator file, dave's an admin's file,
        // erin's dir an admin's other drop-in next to our stale file.
        for (slice, text) in [
            ("ds01-student-carol.slice.d", "[Slice]\nCPUQuota=100%\n"),
            ("ds01-student-dave.slice.d", "[Slice]\nCPUWeight=5\n"),
        ] {
            fs::create_dir_all(unit.join(slice)).unwrap();
            fs::write(unit.join(slice).join(DROP_IN_FILE), text).unwrap();
        }
        let erin = unit.join("ds01-student-erin.slice.d");
        fs::create_dir_all(&erin).unwrap();
        fs::write(erin.join(DROP_IN_FILE), format!("{}\n[Slice]\n", MARKER)).unwrap();
        fs::write(erin.join("20-admin.conf"), "[Slice]\nCPUWeight=5\n").unwrap();
        // With a default group, users in no members file keep its limits, as apply keeps
        // them for slices systemd knows: only the old generator's file is taken over.
        let c = config("alice\n");
        let p = plan(&c).unwrap();
        let tp = plan_tree(&c, &p, None, &root.0, &own).unwrap();
        let actions: Vec<(&str, &FileAction)> = tp
            .files
            .iter()
            .map(|f| (f.slice.as_str(), &f.action))
            .collect();
        assert!(
            matches!(
                actions[3],
                ("ds01-student-bob.slice", FileAction::Unchanged)
            ),
            "{actions:?}"
        );
        assert!(
            matches!(
                actions[4],
                ("ds01-student-carol.slice", FileAction::TakeOver(_))
            ),
            "{actions:?}"
        );
        assert!(
            matches!(
                actions[5],
                ("ds01-student-dave.slice", FileAction::Refuse { .. })
            ),
            "{actions:?}"
        );
        assert!(
            matches!(
                actions[6],
                ("ds01-student-erin.slice", FileAction::Update(_))
            ),
            "{actions:?}"
        );
        let c = config_with("", "alice\n");
        let p = plan(&c).unwrap();
        let tp = plan_tree(&c, &p, None, &root.0, &own).unwrap();
        execute(&tp, &own).unwrap();
        assert_eq!(
            all_files(&unit),
            [
                "ds01-student-alice.slice.d/",
                "ds01-student-alice.slice.d/10-resource-limits.conf",
                "ds01-student-dave.slice.d/",
                "ds01-student-dave.slice.d/10-resource-limits.conf",
                "ds01-student-erin.slice.d/",
                "ds01-student-erin.slice.d/20-admin.conf",
                "ds01-student.slice.d/",
                "ds01-student.slice.d/10-resource-limits.conf",
                "ds01.slice.d/",
                "ds01.slice.d/10-resource-limits.conf",
            ]
        );
    }

    #[test]
    fn owned_dbus_drop_ins_go_and_foreign_ones_stay() {
        let root = TempRoot::new("dbus");
        let state = TempRoot::new("dbus-state");
        let own = Ownership::new(&state.0);
        let alice = SliceName::parse("ds01-student-alice.slice").unwrap();
        own.record(&alice, &[Property::MemoryMax, Property::TasksMax].into())
            .unwrap();
        let control = root
            .0
            .join(CONTROL_DIRS[0])
            .join("ds01-student-alice.slice.d");
        fs::create_dir_all(&control).unwrap();
        let header = "# This is a drop-in unit file extension, created via \"systemctl set-property\"\n# or an equivalent operation. Do not edit.\n[Slice]\n";
        fs::write(
            control.join("50-MemoryMax.conf"),
            format!("{header}MemoryMax=1\n"),
        )
        .unwrap();
        fs::write(
            control.join("50-TasksMax.conf"),
            format!("{header}TasksMax=7\nCPUWeight=1\n"),
        )
        .unwrap();
        // Not in the record: someone's systemctl set-property.
        fs::write(
            control.join("50-MemoryHigh.conf"),
            format!("{header}MemoryHigh=5\n"),
        )
        .unwrap();
        let c = parse_texts(
            Path::new("/c/r.yaml"),
            "groups:\n  student:\n    aggregate: {memory_max: 96G, tasks_max: 100, memory_high: 90G}\n",
            &[("student", "alice\n")],
            None,
        )
        .unwrap();
        let p = plan(&c).unwrap();
        let tp = plan_tree(&c, &p, None, &root.0, &own).unwrap();
        let shadowed: Vec<(&str, bool)> =
            tp.shadows.iter().map(|s| (s.property, s.owned)).collect();
        assert_eq!(
            shadowed,
            [
                ("MemoryMax", true),
                ("MemoryHigh", false),
                ("TasksMax", true)
            ]
        );
        let report = offline_check(&tp);
        assert!(!report.holds);
        execute(&tp, &own).unwrap();
        assert!(!control.join("50-MemoryMax.conf").exists());
        assert!(
            control.join("50-TasksMax.conf").exists(),
            "unrecognised: kept"
        );
        assert!(
            control.join("50-MemoryHigh.conf").exists(),
            "not ours: kept"
        );
        assert_eq!(own.read(&alice).unwrap(), [Property::TasksMax].into());
    }
}
