//! Containers in the cgroup tree: every container's cgroup below any slice, whether systemd
//! knows it as a unit or not (BuildKit's build steps are plain cgroups), and the memory and
//! tasks one uses. The tree read is the one systemd keeps every unit in: v2's single
//! hierarchy, v1's `name=systemd` one (or, without it, the hybrid `unified` one).

use std::path::{Path, PathBuf};

use super::{layout, v1_dir, Layout};
use crate::model::containers::{cgroupfs_id, identify, ContainerKind};

/// A tree this deep or this large is not one systemd made; the walk stops there and says so.
const MAX_DEPTH: usize = 16;
const MAX_CGROUPS: usize = 200_000;

/// A container's cgroup as the tree shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub kind: ContainerKind,
    pub id: String,
    /// The scope unit the directory is named after; none for a plain cgroup.
    pub unit: Option<String>,
    /// From the hierarchy's root, as systemd's `ControlGroup` (`/system.slice/docker-ID.scope`).
    pub cgroup: String,
}

#[derive(Debug, Clone, Default)]
pub struct Tree {
    /// The directory walked.
    pub dir: PathBuf,
    pub found: Vec<Found>,
    /// The walk stopped at [`MAX_CGROUPS`] or [`MAX_DEPTH`]: there may be more.
    pub truncated: bool,
}

/// The hierarchy that holds every unit's cgroup under `root`.
fn unit_tree(root: &Path) -> Option<PathBuf> {
    match layout(root) {
        Layout::V2 => Some(root.to_path_buf()),
        Layout::V1 => ["systemd", "unified"]
            .iter()
            .map(|h| root.join(h))
            .find(|d| d.is_dir()),
    }
}

/// Walks the slices of the tree (and the user managers' `user@UID.service`, where rootless
/// containers run) and collects every container cgroup in them, without going into the
/// containers themselves. Err when the tree's root cannot be read: then nothing is known.
pub fn find(root: &Path) -> Result<Tree, String> {
    let dir = unit_tree(root).ok_or_else(|| {
        format!(
            "{}: neither a cgroup v2 hierarchy nor a v1 one with a systemd or unified hierarchy",
            root.display()
        )
    })?;
    let mut tree = Tree {
        dir,
        ..Tree::default()
    };
    let mut seen = 0;
    let mut level = vec![String::new()];
    for depth in 0..MAX_DEPTH {
        let mut next = Vec::new();
        for rel in &level {
            let here = tree.dir.join(rel);
            let entries = match std::fs::read_dir(&here) {
                Ok(entries) => entries,
                Err(e) if depth == 0 => return Err(format!("{}: {e}", here.display())),
                // A cgroup removed while it is walked holds nothing any more.
                Err(_) => continue,
            };
            for entry in entries.flatten() {
                // cgroupfs has no symlinks; not following any keeps the walk in the tree.
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                seen += 1;
                if seen > MAX_CGROUPS {
                    tree.truncated = true;
                    return Ok(tree);
                }
                let path = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                if let Some((kind, id)) = identify(&name) {
                    tree.found.push(Found {
                        kind,
                        id,
                        unit: name.ends_with(".scope").then(|| name.clone()),
                        cgroup: format!("/{path}"),
                    });
                } else if name.ends_with(".slice")
                    || (name.starts_with("user@") && name.ends_with(".service"))
                {
                    next.push(path);
                } else if depth == 0 && name == "docker" {
                    cgroupfs_driver(&tree.dir.join("docker"), &mut tree.found);
                }
            }
        }
        if next.is_empty() {
            return Ok(tree);
        }
        level = next;
    }
    tree.truncated = true;
    Ok(tree)
}

/// Docker's cgroupfs driver puts each container in `/docker/ID`.
fn cgroupfs_driver(dir: &Path, found: &mut Vec<Found>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some((kind, id)) = name.to_str().and_then(cgroupfs_id) else {
            continue;
        };
        found.push(Found {
            kind,
            cgroup: format!("/docker/{id}"),
            id,
            unit: None,
        });
    }
}

/// Bytes and tasks in use in the cgroup `cgroup` (v2 `memory.current`, `pids.current`; v1
/// the memory and pids hierarchies' `memory.usage_in_bytes`, `pids.current`).
pub fn usage(root: &Path, cgroup: &str) -> (Option<u64>, Option<u64>) {
    let rel = cgroup.trim_start_matches('/');
    let number =
        |file: PathBuf| -> Option<u64> { std::fs::read_to_string(file).ok()?.trim().parse().ok() };
    match layout(root) {
        Layout::V2 => {
            let dir = root.join(rel);
            (
                number(dir.join("memory.current")),
                number(dir.join("pids.current")),
            )
        }
        Layout::V1 => (
            number(v1_dir(root, &["memory"], rel).join("memory.usage_in_bytes")),
            number(v1_dir(root, &["pids"], rel).join("pids.current")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn finds_containers_below_slices_and_user_managers_only() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::write(r.join("cgroup.controllers"), "memory pids").unwrap();
        let dirs = [
            format!("ds01.slice/ds01-s.slice/ds01-s-alice.slice/docker-{ID}.scope/inner"),
            format!("ds01.slice/docker-{ID}.scope"),
            "system.slice/system.slice:docker:abc123".to_owned(),
            "system.slice/docker.service".to_owned(),
            format!("user.slice/user-1000.slice/user@1000.service/app.slice/libpod-{ID}.scope"),
            format!("user.slice/user-1000.slice/session-1.scope/docker-{ID}.scope"),
            format!("docker/{ID}"),
            "docker/buildkit".to_owned(),
        ];
        for d in &dirs {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::write(r.join("ds01.slice/memory.current"), "1").unwrap();
        std::fs::write(
            r.join(format!("ds01.slice/docker-{ID}.scope/memory.current")),
            "4096\n",
        )
        .unwrap();
        std::fs::write(
            r.join(format!("ds01.slice/docker-{ID}.scope/pids.current")),
            "3\n",
        )
        .unwrap();
        let tree = find(r).unwrap();
        let mut found: Vec<(ContainerKind, String)> = tree
            .found
            .iter()
            .map(|f| (f.kind, f.cgroup.clone()))
            .collect();
        found.sort();
        assert_eq!(
            found,
            [
                (
                    ContainerKind::Docker,
                    format!("/ds01.slice/docker-{ID}.scope")
                ),
                (
                    ContainerKind::Docker,
                    format!("/ds01.slice/ds01-s.slice/ds01-s-alice.slice/docker-{ID}.scope")
                ),
                (
                    ContainerKind::Podman,
                    format!(
                        "/user.slice/user-1000.slice/user@1000.service/app.slice/libpod-{ID}.scope"
                    )
                ),
                (
                    ContainerKind::BuildStep,
                    "/system.slice/system.slice:docker:abc123".to_owned()
                ),
                (ContainerKind::DockerCgroupfs, format!("/docker/{ID}")),
            ]
        );
        assert!(!tree.truncated);
        assert_eq!(
            usage(r, &format!("/ds01.slice/docker-{ID}.scope")),
            (Some(4096), Some(3))
        );
        assert!(find(&r.join("none")).is_err());
    }
}
