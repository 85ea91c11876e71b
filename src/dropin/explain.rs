//! Where a slice's effective values come from: its drop-ins, in the order systemd applies
//! them (`DropInPaths`), read under `--root`; and which of our rendered values a D-Bus
//! drop-in shadows.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::{classify, display_setting_value, parse_assignments, same_setting_value, DROP_IN_FILE};
use crate::model::property::Property;

/// One assignment of a property we manage, in one drop-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The file as systemd names it (a path inside the managed host).
    pub file: String,
    pub property: Property,
    pub value: String,
    pub origin: Origin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A SetUnitProperties (or `systemctl set-property`) drop-in under `system.control`.
    Dbus,
    /// Our rendered `10-resource-limits.conf` (or the old generator's).
    Rendered,
    Other,
}

/// A rendered value that a D-Bus drop-in overrides with another one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shadowing {
    pub property: &'static str,
    pub winner: String,
    pub winner_value: String,
    pub loser: String,
    pub loser_value: String,
}

impl std::fmt::Display for Shadowing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} ({}) shadows {} ({})",
            self.property, self.winner, self.winner_value, self.loser, self.loser_value
        )
    }
}

/// Every assignment in `drop_in_paths` (in that order), reading each file under `root`.
/// Files that cannot be read are returned apart, with the reason.
pub fn read_assignments(
    root: &Path,
    drop_in_paths: &[String],
) -> (Vec<Assignment>, Vec<(String, String)>) {
    let mut out = Vec::new();
    let mut unreadable = Vec::new();
    for file in drop_in_paths {
        let on_disk = root.join(file.trim_start_matches('/'));
        let text = match std::fs::read_to_string(&on_disk) {
            Ok(t) => t,
            Err(e) => {
                unreadable.push((file.clone(), format!("{}: {e}", on_disk.display())));
                continue;
            }
        };
        let origin = origin_of(file, &text);
        out.extend(
            parse_assignments(&text)
                .into_iter()
                .map(|(property, value)| Assignment {
                    file: file.clone(),
                    property,
                    value,
                    origin,
                }),
        );
    }
    (out, unreadable)
}

fn origin_of(file: &str, text: &str) -> Origin {
    if file.contains("/system.control/") {
        Origin::Dbus
    } else if file.ends_with(&format!(".slice.d/{DROP_IN_FILE}")) && classify(text).is_ours() {
        Origin::Rendered
    } else {
        Origin::Other
    }
}

/// The assignment that wins for each property: the last one, as systemd applies them.
pub fn effective(assignments: &[Assignment]) -> BTreeMap<Property, &Assignment> {
    let mut out = BTreeMap::new();
    for a in assignments {
        out.insert(a.property, a);
    }
    out
}

/// Properties whose last rendered and last D-Bus assignments disagree, naming both files.
pub fn shadowings(assignments: &[Assignment]) -> Vec<Shadowing> {
    let mut last: BTreeMap<(Property, u8), (usize, &Assignment)> = BTreeMap::new();
    for (i, a) in assignments.iter().enumerate() {
        match a.origin {
            Origin::Dbus => last.insert((a.property, 0), (i, a)),
            Origin::Rendered => last.insert((a.property, 1), (i, a)),
            Origin::Other => None,
        };
    }
    let mut out = Vec::new();
    for p in Property::ACCOUNTING.into_iter().chain(Property::LIMITS) {
        let (Some(&(di, d)), Some(&(ri, r))) = (last.get(&(p, 0)), last.get(&(p, 1))) else {
            continue;
        };
        if same_setting_value(p, &d.value, &r.value) {
            continue;
        }
        let (winner, loser) = if di > ri { (d, r) } else { (r, d) };
        out.push(Shadowing {
            property: p.unit_setting(),
            winner: winner.file.clone(),
            winner_value: display_setting_value(p, &winner.value),
            loser: loser.file.clone(),
            loser_value: display_setting_value(p, &loser.value),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(file: &str, property: Property, value: &str, origin: Origin) -> Assignment {
        Assignment {
            file: file.into(),
            property,
            value: value.into(),
            origin,
        }
    }

    #[test]
    fn the_later_file_wins_and_disagreements_name_both() {
        let rendered = "/etc/systemd/system/X.d/10-resource-limits.conf";
        let dbus = "/etc/systemd/system.control/X.d/50-MemoryMax.conf";
        let list = vec![
            a(
                rendered,
                Property::MemoryMax,
                "68719476736",
                Origin::Rendered,
            ),
            a(rendered, Property::TasksMax, "100", Origin::Rendered),
            a(dbus, Property::MemoryMax, "103079215104", Origin::Dbus),
            a(
                "/etc/systemd/system.control/X.d/50-TasksMax.conf",
                Property::TasksMax,
                "100",
                Origin::Dbus,
            ),
        ];
        assert_eq!(effective(&list)[&Property::MemoryMax].file, dbus);
        let s = shadowings(&list);
        assert_eq!(s.len(), 1, "equal values are not a contradiction");
        assert_eq!(
            s[0].to_string(),
            format!("MemoryMax: {dbus} (96G) shadows {rendered} (64G)")
        );
    }

    #[test]
    fn origins_are_told_apart() {
        let ours = format!("{}\n[Slice]\n", super::super::MARKER);
        assert_eq!(
            origin_of("/etc/systemd/system.control/X.slice.d/50-CPUQuota.conf", ""),
            Origin::Dbus
        );
        assert_eq!(
            origin_of(
                "/etc/systemd/system/X.slice.d/10-resource-limits.conf",
                &ours
            ),
            Origin::Rendered
        );
        assert_eq!(
            origin_of(
                "/etc/systemd/system/X.slice.d/10-resource-limits.conf",
                "[Slice]\nCPUWeight=1\n"
            ),
            Origin::Other
        );
        assert_eq!(
            origin_of("/etc/systemd/system/X.slice.d/20-x.conf", &ours),
            Origin::Other
        );
    }
}
