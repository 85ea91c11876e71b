//! Which resource controllers the kernel gives `ds01.slice`, read from the cgroup file
//! system for `doctor`: on v2 the `cgroup.controllers` (available) and
//! `cgroup.subtree_control` (enabled for the children) of the root and of `ds01.slice`; on v1
//! which controller hierarchies are mounted and whether `ds01.slice` has a cgroup in each.
//! Only facts: what they mean is for the caller to judge.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{layout, Layout};
use crate::model::names::SliceName;

/// The controllers the four limits need: CPUQuota (cpu), MemoryMax and MemoryHigh
/// (memory), TasksMax (pids).
pub const NEEDED: [&str; 3] = ["cpu", "memory", "pids"];

/// A list of controller names as a cgroup file holds it, or why it could not be read.
pub type Listing = Result<BTreeSet<String>, String>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Controllers {
    V2(V2Facts),
    V1(Vec<V1Hierarchy>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2Facts {
    pub root: PathBuf,
    pub root_controllers: Listing,
    pub root_subtree_control: Listing,
    /// `None` when ds01.slice has no cgroup: systemd has not started (realized) it.
    pub slice: Option<V2Slice>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2Slice {
    pub dir: PathBuf,
    /// What its parent lets it use (`cgroup.controllers`).
    pub controllers: Listing,
    /// What it passes on to its children, the group slices (`cgroup.subtree_control`).
    pub subtree_control: Listing,
    /// Whether any child slice (`ds01-*.slice`) has a cgroup: then systemd has had reason
    /// to enable the controllers the children's settings need.
    pub children_realized: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Hierarchy {
    pub controller: &'static str,
    /// Where the hierarchy is mounted (`cpu` or `cpu,cpuacct` below the root), if it is.
    pub mount: Option<PathBuf>,
    /// Whether ds01.slice has a cgroup in it.
    pub slice_realized: bool,
}

/// The version of the cgroup file system at `root`, and which of [`NEEDED`] it gives
/// ds01.slice. `None` when `root` is not there at all.
pub fn probe(root: &Path) -> Option<Controllers> {
    if !root.is_dir() {
        return None;
    }
    let slice = SliceName::root();
    Some(match layout(root) {
        Layout::V2 => {
            let dir = root.join(slice.as_str());
            let slice = dir.is_dir().then(|| V2Slice {
                controllers: listing(&dir.join("cgroup.controllers")),
                subtree_control: listing(&dir.join("cgroup.subtree_control")),
                children_realized: has_child_slice(&dir),
                dir,
            });
            Controllers::V2(V2Facts {
                root: root.to_owned(),
                root_controllers: listing(&root.join("cgroup.controllers")),
                root_subtree_control: listing(&root.join("cgroup.subtree_control")),
                slice,
            })
        }
        Layout::V1 => Controllers::V1(
            NEEDED
                .iter()
                .map(|&controller| {
                    let mount = v1_mount(root, controller);
                    let slice_realized = mount
                        .as_ref()
                        .is_some_and(|m| m.join(slice.as_str()).is_dir());
                    V1Hierarchy {
                        controller,
                        mount,
                        slice_realized,
                    }
                })
                .collect(),
        ),
    })
}

fn listing(file: &Path) -> Listing {
    std::fs::read_to_string(file)
        .map(|text| parse_listing(&text))
        .map_err(|e| format!("cannot read {}: {e}", file.display()))
}

/// `cgroup.controllers` and `cgroup.subtree_control` hold names separated by spaces.
pub fn parse_listing(text: &str) -> BTreeSet<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

fn has_child_slice(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name.starts_with("ds01-") && name.ends_with(".slice") && e.path().is_dir()
    })
}

/// A v1 hierarchy holding `controller`: a directory named after it alone or among others
/// (`cpu,cpuacct`), with the `cgroup.procs` every mounted hierarchy's root has.
fn v1_mount(root: &Path, controller: &str) -> Option<PathBuf> {
    let mounted = |p: &Path| p.join("cgroup.procs").is_file();
    let plain = root.join(controller);
    if mounted(&plain) {
        return Some(plain);
    }
    std::fs::read_dir(root)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.split(',').any(|c| c == controller))
                && mounted(p)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ds01-ctl-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn reads_a_v2_tree() {
        let root = scratch("v2");
        std::fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        std::fs::write(root.join("cgroup.subtree_control"), "memory pids\n").unwrap();
        let Some(Controllers::V2(facts)) = probe(&root) else {
            panic!("not v2");
        };
        assert_eq!(facts.slice, None);
        assert_eq!(
            facts.root_subtree_control,
            Ok(["memory", "pids"].map(String::from).into())
        );
        let slice = root.join("ds01.slice");
        std::fs::create_dir_all(slice.join("ds01-student.slice")).unwrap();
        std::fs::write(slice.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        let Some(Controllers::V2(facts)) = probe(&root) else {
            panic!("not v2");
        };
        let s = facts.slice.unwrap();
        assert!(s.children_realized);
        assert_eq!(s.controllers.unwrap().len(), 3);
        assert!(s
            .subtree_control
            .unwrap_err()
            .contains("cgroup.subtree_control"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn finds_v1_hierarchies_also_when_named_with_others() {
        let root = scratch("v1");
        for (dir, procs) in [("cpu,cpuacct", true), ("memory", true), ("pids", false)] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            if procs {
                std::fs::write(root.join(dir).join("cgroup.procs"), "").unwrap();
            }
        }
        std::fs::create_dir_all(root.join("memory/ds01.slice")).unwrap();
        let Some(Controllers::V1(h)) = probe(&root) else {
            panic!("not v1");
        };
        assert_eq!(h[0].mount, Some(root.join("cpu,cpuacct")));
        assert!(!h[0].slice_realized);
        assert!(h[1].slice_realized);
        assert_eq!(h[2].mount, None, "no cgroup.procs: not mounted");
        assert_eq!(probe(&root.join("nothing")), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
