//! Which processes run below a cgroup of systemd's tree, read from the kernel's files: the
//! second witness, beside systemd's own answer, of whether containers run in ds01 slices.
//! Whatever cannot be read is an error, never an empty tree: the caller refuses what it
//! cannot prove harmless.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::{layout, Layout};

/// More cgroups than this below the top is not a tree this tool expects: the walk stops with
/// an error rather than take unbounded time.
const MAX_CGROUPS: usize = 65_536;

/// Every process in the cgroup `top` (e.g. `ds01.slice`) and below it: (cgroup path as
/// systemd names it, `/ds01.slice/...`; PID as this process sees it). On cgroup v1 the tree
/// is systemd's own `name=systemd` hierarchy, where every process of a unit is placed. A
/// `top` that does not exist holds nothing; a cgroup removed while it is walked is skipped.
pub fn processes_below(root: &Path, top: &str) -> Result<Vec<(String, u32)>, String> {
    let base = match layout(root) {
        Layout::V2 => root.to_path_buf(),
        Layout::V1 => {
            let named = root.join("systemd");
            if !named.join("cgroup.procs").is_file() {
                return Err(format!(
                    "{} is neither a cgroup v2 root nor has systemd's name=systemd hierarchy (no {})",
                    root.display(),
                    named.join("cgroup.procs").display()
                ));
            }
            named
        }
    };
    let mut found = Vec::new();
    let mut todo: Vec<(PathBuf, String)> = vec![(base.join(top), format!("/{top}"))];
    let mut seen = 0;
    while let Some((dir, cgroup)) = todo.pop() {
        seen += 1;
        if seen > MAX_CGROUPS {
            return Err(format!(
                "more than {MAX_CGROUPS} cgroups below {}",
                base.join(top).display()
            ));
        }
        let procs = dir.join("cgroup.procs");
        match std::fs::read_to_string(&procs) {
            Ok(text) => {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    let pid = line
                        .trim()
                        .parse()
                        .map_err(|_| format!("{}: unexpected line {line:?}", procs.display()))?;
                    found.push((cgroup.clone(), pid));
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{}: {e}", procs.display())),
        }
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        };
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
            // cgroupfs has no symlinks; not following any keeps the walk in the tree.
            let is_dir = entry
                .file_type()
                .map_err(|e| format!("{}: {e}", entry.path().display()))?
                .is_dir();
            if is_dir {
                let name = entry.file_name().to_string_lossy().into_owned();
                todo.push((entry.path(), format!("{cgroup}/{name}")));
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn lists_every_process_below_the_top_on_v2_and_v1() {
        let dir = tempfile::tempdir().unwrap();
        let v2 = dir.path().join("v2");
        fs::create_dir_all(v2.join("ds01.slice/ds01-g.slice/ds01-g-u.slice/docker-a.scope"))
            .unwrap();
        fs::write(v2.join("cgroup.controllers"), "cpu memory pids").unwrap();
        for (cg, procs) in [
            ("ds01.slice", ""),
            ("ds01.slice/ds01-g.slice", ""),
            ("ds01.slice/ds01-g.slice/ds01-g-u.slice", ""),
            (
                "ds01.slice/ds01-g.slice/ds01-g-u.slice/docker-a.scope",
                "12\n13\n",
            ),
        ] {
            fs::write(v2.join(cg).join("cgroup.procs"), procs).unwrap();
        }
        assert_eq!(
            processes_below(&v2, "ds01.slice").unwrap(),
            vec![
                (
                    "/ds01.slice/ds01-g.slice/ds01-g-u.slice/docker-a.scope".to_owned(),
                    12
                ),
                (
                    "/ds01.slice/ds01-g.slice/ds01-g-u.slice/docker-a.scope".to_owned(),
                    13
                ),
            ]
        );
        // No ds01.slice at all: nothing runs there.
        assert_eq!(processes_below(&v2, "none.slice").unwrap(), vec![]);

        // v1: only the name=systemd hierarchy counts; without it nothing can be told.
        let v1 = dir.path().join("v1");
        fs::create_dir_all(v1.join("systemd/ds01.slice/x.service")).unwrap();
        fs::write(v1.join("systemd/cgroup.procs"), "1\n").unwrap();
        fs::write(v1.join("systemd/ds01.slice/cgroup.procs"), "").unwrap();
        fs::write(v1.join("systemd/ds01.slice/x.service/cgroup.procs"), "7\n").unwrap();
        assert_eq!(
            processes_below(&v1, "ds01.slice").unwrap(),
            vec![("/ds01.slice/x.service".to_owned(), 7)]
        );
        let bare = dir.path().join("bare");
        fs::create_dir_all(&bare).unwrap();
        assert!(processes_below(&bare, "ds01.slice")
            .unwrap_err()
            .contains("name=systemd"));
        // A cgroup.procs that is not a list of PIDs is not read as "nothing runs".
        fs::write(v1.join("systemd/ds01.slice/x.service/cgroup.procs"), "x\n").unwrap();
        assert!(processes_below(&v1, "ds01.slice").is_err());
        // Nor is a file that cannot be read.
        fs::remove_file(v1.join("systemd/ds01.slice/x.service/cgroup.procs")).unwrap();
        fs::create_dir(v1.join("systemd/ds01.slice/x.service/cgroup.procs")).unwrap();
        assert!(processes_below(&v1, "ds01.slice").is_err());
    }
}
