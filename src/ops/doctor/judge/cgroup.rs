//! The kernel's side: the cgroup version, the controllers ds01.slice gets, and whether
//! MemoryHigh is enforced.

use std::path::Path;

use super::{Check, Finding, Status};
use crate::cgroupfs::controllers::{Controllers, Listing, V2Facts, NEEDED};
use crate::model::names::SliceName;

const V2_FIX: &str = "boot with the unified hierarchy (`systemd.unified_cgroup_hierarchy=1` on the kernel command line, e.g. in GRUB_CMDLINE_LINUX) and reboot";

/// The cgroup version, and (when there is a cgroup file system) which controllers
/// ds01.slice gets.
pub fn cgroup(root: &Path, facts: Option<&Controllers>) -> Vec<Finding> {
    let shown = root.display();
    let Some(facts) = facts else {
        return vec![Finding::bad(
            Check::Cgroup,
            Status::Fail,
            format!("no cgroup file system at {shown}"),
            "pass --cgroup-root the directory where cgroups are mounted (default /sys/fs/cgroup)",
        )];
    };
    let version = match facts {
        Controllers::V2(_) => Finding::ok(
            Check::Cgroup,
            format!("cgroup v2 (unified hierarchy) at {shown}"),
        ),
        Controllers::V1(_) => Finding::bad(
            Check::Cgroup,
            Status::Warning,
            format!("cgroup v1 (legacy or hybrid hierarchy) at {shown}: MemoryHigh is not enforced, and a MemoryMax below the memory in use is refused by the kernel"),
            V2_FIX,
        ),
    };
    let controllers = match facts {
        Controllers::V2(v2) => v2_controllers(v2),
        Controllers::V1(hierarchies) => {
            let missing: Vec<&str> = hierarchies
                .iter()
                .filter(|h| h.mount.is_none())
                .map(|h| h.controller)
                .collect();
            let mounted: Vec<String> = hierarchies
                .iter()
                .filter_map(|h| {
                    Some(format!(
                        "{} at {}",
                        h.controller,
                        h.mount.as_ref()?.display()
                    ))
                })
                .collect();
            let realized: Vec<&str> = hierarchies
                .iter()
                .filter(|h| h.slice_realized)
                .map(|h| h.controller)
                .collect();
            let slice = if realized.is_empty() {
                "ds01.slice not realized yet (no unit runs in it): systemd creates its cgroups when it starts".to_owned()
            } else {
                format!("ds01.slice realized in {}", realized.join(", "))
            };
            if missing.is_empty() {
                Finding::ok(
                    Check::Controllers,
                    format!("v1 hierarchies mounted: {}; {slice}", mounted.join(", ")),
                )
            } else {
                Finding::bad(
                    Check::Controllers,
                    Status::Fail,
                    format!(
                        "no {} hierarchy mounted under {shown} (mounted: {}): its limits are not enforced",
                        missing.join(", "),
                        if mounted.is_empty() { "none".to_owned() } else { mounted.join(", ") }
                    ),
                    "systemd mounts every v1 hierarchy the kernel offers at boot: check /proc/cgroups and the kernel command line (`cgroup_disable=`), or move to cgroup v2",
                )
            }
        }
    };
    vec![version, controllers]
}

fn has(listing: &Listing, controller: &str) -> bool {
    listing.as_ref().is_ok_and(|l| l.contains(controller))
}

fn shown(listing: &Listing) -> String {
    match listing {
        Ok(l) if l.is_empty() => "(empty)".to_owned(),
        Ok(l) => l.iter().cloned().collect::<Vec<_>>().join(" "),
        Err(e) => e.clone(),
    }
}

const V2_CONTROLLER_FIX: &str = "the controllers must be offered at the cgroup root (`cgroup.controllers`; a kernel booted with `cgroup_disable=`, or a container whose manager delegates none, lacks them); systemd enables them for ds01.slice when a slice below it has accounting or limits: run `ds01-slices apply`, then start a unit in a user's slice";

fn v2_controllers(v2: &V2Facts) -> Finding {
    let Some(slice) = &v2.slice else {
        let missing: Vec<&str> = NEEDED
            .iter()
            .copied()
            .filter(|c| !has(&v2.root_controllers, c))
            .collect();
        let found = format!(
            "ds01.slice not realized yet (no unit runs in it); the root offers {} (cgroup.controllers) and enables {} for its children (cgroup.subtree_control)",
            shown(&v2.root_controllers),
            shown(&v2.root_subtree_control)
        );
        return if missing.is_empty() {
            Finding::ok(
                Check::Controllers,
                format!("{found}: systemd enables cpu, memory and pids for ds01.slice when it starts it"),
            )
        } else {
            Finding::bad(
                Check::Controllers,
                Status::Fail,
                format!(
                    "{found}: {} not offered, so its limits cannot be enforced",
                    missing.join(", ")
                ),
                V2_CONTROLLER_FIX,
            )
        };
    };
    let unavailable: Vec<&str> = NEEDED
        .iter()
        .copied()
        .filter(|c| !has(&slice.controllers, c))
        .collect();
    let not_enabled: Vec<&str> = NEEDED
        .iter()
        .copied()
        .filter(|c| !has(&slice.subtree_control, c))
        .collect();
    let found = format!(
        "ds01.slice ({}) has {} (cgroup.controllers) and enables {} for the group slices (cgroup.subtree_control)",
        slice.dir.display(),
        shown(&slice.controllers),
        shown(&slice.subtree_control)
    );
    if !unavailable.is_empty() {
        Finding::bad(
            Check::Controllers,
            Status::Fail,
            format!(
                "{found}: {} not available to it, so those limits are not enforced",
                unavailable.join(", ")
            ),
            V2_CONTROLLER_FIX,
        )
    } else if not_enabled.is_empty() {
        Finding::ok(Check::Controllers, found)
    } else if slice.children_realized {
        Finding::bad(
            Check::Controllers,
            Status::Fail,
            format!("{found}: {} not enabled although group slices run below it, so the user slices' limits are not enforced", not_enabled.join(", ")),
            V2_CONTROLLER_FIX,
        )
    } else {
        Finding::ok(
            Check::Controllers,
            format!(
                "{found}; no group slice runs yet: systemd enables {} when one starts",
                not_enabled.join(", ")
            ),
        )
    }
}

/// `memory_high`: the user slices that set a MemoryHigh (none if the configuration could
/// not be loaded: `None`).
pub fn memory_high(facts: Option<&Controllers>, memory_high: Option<&[SliceName]>) -> Finding {
    let configured = match memory_high {
        None => {
            "the configuration could not be loaded to tell whether it sets MemoryHigh".to_owned()
        }
        Some([]) => "no slice sets MemoryHigh".to_owned(),
        Some(slices) => format!(
            "{} slices set MemoryHigh ({}{})",
            slices.len(),
            slices
                .iter()
                .take(3)
                .map(SliceName::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            if slices.len() > 3 { ", ..." } else { "" }
        ),
    };
    let asked = memory_high.is_none_or(|s| !s.is_empty());
    let not_enforced = |why: String, fix: &str| {
        let status = match memory_high {
            Some([]) => return Finding::ok(Check::MemoryHigh, format!("{why}; {configured}")),
            Some(_) => Status::Fail,
            None => Status::Warning,
        };
        Finding::bad(
            Check::MemoryHigh,
            status,
            format!("{why}; {configured}: only MemoryMax holds"),
            fix,
        )
    };
    match facts {
        None => not_enforced(
            "MemoryHigh not enforced: no cgroup file system".to_owned(),
            "pass --cgroup-root the directory where cgroups are mounted",
        ),
        Some(Controllers::V1(_)) => not_enforced(
            "MemoryHigh not enforced: cgroup v1 has no memory.high".to_owned(),
            &format!("{V2_FIX}, or remove memory_high from the configuration"),
        ),
        Some(Controllers::V2(v2)) => {
            let memory = match &v2.slice {
                Some(s) => has(&s.controllers, "memory"),
                None => has(&v2.root_controllers, "memory"),
            };
            if memory {
                Finding::ok(
                    Check::MemoryHigh,
                    format!("MemoryHigh enforced (memory.high, cgroup v2); {configured}"),
                )
            } else if asked {
                not_enforced(
                    "MemoryHigh not enforced: the memory controller is not available to ds01.slice"
                        .to_owned(),
                    V2_CONTROLLER_FIX,
                )
            } else {
                Finding::ok(
                    Check::MemoryHigh,
                    format!("the memory controller is not available to ds01.slice; {configured}"),
                )
            }
        }
    }
}
