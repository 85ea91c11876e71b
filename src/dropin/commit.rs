//! Carrying out a [`TreePlan`] so that systemd, reading the tree at any moment (a reload, a
//! boot after a crash), sees each file either as it was or as the plan wants it, and never a
//! slice left with neither its rendered file nor the D-Bus drop-ins that held its values.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::decide::TreePlan;
use super::error::RenderError;
use super::format::{TMP_PREFIX, TMP_SUFFIX};
use super::root::Root;
use crate::atomic::{self, parent};
use crate::state::ownership::Ownership;

/// What [`execute`] did beyond the plan's file actions.
#[derive(Debug, Default)]
pub struct Executed {
    pub dbus_removed: Vec<PathBuf>,
    pub dirs_removed: Vec<PathBuf>,
}

/// Carries out a [`TreePlan`]: new contents are staged first (nothing visible changes if any
/// of them cannot be written), then moved into place; stale files and our D-Bus drop-ins
/// go last, so no slice is ever left with neither.
pub fn execute(tp: &TreePlan, ownership: &Ownership) -> Result<Executed, RenderError> {
    let root = Root::open(&tp.root)?;
    // The tree was checked when it was read; checked again now, before the first change, so
    // that a symlink that appeared since refuses the run with nothing changed (`root` says
    // what this does and does not guard against).
    let touched = tp
        .leftover_temps
        .iter()
        .chain(tp.writes().map(|(f, _)| &f.path))
        .chain(tp.removals().map(|f| &f.path))
        .chain(tp.dbus.iter().filter(|d| d.recognised).map(|d| &d.path));
    for path in touched {
        root.no_symlink_to(parent(path))?;
    }
    let mut done = Executed::default();
    for tmp in &tp.leftover_temps {
        remove_if_present(tmp)?;
    }
    let mut staging = Staging::default();
    for (file, content) in tp.writes() {
        staging.stage(&root, &file.path, content)?;
    }
    staging.commit()?;

    for file in tp.removals() {
        remove_if_present(&file.path)?;
        sync_dir(parent(&file.path))?;
        remove_dir_if_empty(parent(&file.path), &mut done.dirs_removed);
    }
    for d in tp.dbus.iter().filter(|d| d.recognised) {
        if remove_if_present(&d.path)? {
            done.dbus_removed.push(d.path.clone());
        }
        sync_dir(parent(&d.path))?;
        remove_dir_if_empty(parent(&d.path), &mut done.dirs_removed);
    }
    // Records change only once the files they describe are gone: a failure above leaves
    // them claiming what is still there, and the next run retries.
    for (slice, keep) in &tp.records {
        ownership.record(slice, keep)?;
    }
    Ok(done)
}

pub(super) fn remove_if_present(path: &Path) -> Result<bool, RenderError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(RenderError::Remove {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Removes `dir` only if it is empty; only called on directories we just emptied.
pub(super) fn remove_dir_if_empty(dir: &Path, removed: &mut Vec<PathBuf>) {
    if fs::remove_dir(dir).is_ok() {
        removed.push(dir.to_owned());
    }
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), RenderError> {
    atomic::sync_dir(dir).map_err(|source| RenderError::Sync {
        path: dir.to_owned(),
        source,
    })
}

/// Staged files and the directories made for them; dropping it without a commit removes
/// them all (also on panic), so a run that fails before its first rename leaves the tree
/// exactly as it found it.
#[derive(Default)]
struct Staging {
    /// Each final path with its staged content. Dropping an [`atomic::Staged`] removes its
    /// temporary file.
    staged: Vec<(PathBuf, atomic::Staged)>,
    created_dirs: Vec<PathBuf>,
    committed: bool,
}

impl Staging {
    fn stage(&mut self, root: &Root, path: &Path, content: &str) -> Result<(), RenderError> {
        let dir = parent(path);
        root.make_dirs(dir, path, &mut self.created_dirs)?;
        let staged =
            atomic::stage(dir, TMP_PREFIX, TMP_SUFFIX, content.as_bytes()).map_err(|source| {
                RenderError::Write {
                    path: path.to_owned(),
                    source,
                }
            })?;
        self.staged.push((path.to_owned(), staged));
        Ok(())
    }

    /// Moves every staged file into place, then flushes each touched directory once: one
    /// flush per directory instead of one per file, and none before every rename is done.
    fn commit(mut self) -> Result<(), RenderError> {
        let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
        let mut result = Ok(());
        let mut rest = std::mem::take(&mut self.staged).into_iter();
        for (path, staged) in rest.by_ref() {
            if let Err(source) = staged.commit(&path) {
                result = Err(RenderError::Commit { path, source });
                break;
            }
            dirs.insert(parent(&path).to_owned());
        }
        // What was not moved is given back to Drop's cleanup.
        self.staged = rest.collect();
        if result.is_ok() {
            self.committed = true;
        } else {
            // Directories holding files already moved into place must stay.
            self.created_dirs
                .retain(|d| !dirs.iter().any(|m| m.starts_with(d)));
        }
        result?;
        // A new directory's own entry lives in its parent: without flushing that too, a
        // crash could lose the directory and with it the files just flushed inside it.
        let made: Vec<PathBuf> = self
            .created_dirs
            .iter()
            .map(|d| parent(d).to_owned())
            .collect();
        for dir in dirs.into_iter().chain(made).collect::<BTreeSet<_>>() {
            sync_dir(&dir)?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Temporary files first: the directories made for them can only go once empty.
        self.staged.clear();
        if !self.committed {
            for d in self.created_dirs.drain(..).rev() {
                let _ = fs::remove_dir(d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dropin::decide::{plan_tree, FileAction};
    use crate::dropin::format::{is_leftover_temp, DROP_IN_FILE, UNIT_DIR};
    use crate::dropin::testutil::{all_files, config, TempRoot};
    use crate::plan::plan;

    #[test]
    fn named_temporary_files_are_committed_or_removed() {
        for commit in [true, false] {
            let root = TempRoot::new("named");
            let dir = root.0.join(UNIT_DIR).join("ds01.slice.d");
            let path = dir.join(DROP_IN_FILE);
            let mut staging = Staging::default();
            staging
                .stage(&Root::open(&root.0).unwrap(), &path, "new\n")
                .unwrap();
            let staged: Vec<String> = fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert!(
                staged.len() == 1 && is_leftover_temp(&staged[0]),
                "one temporary file, named so that the next run recognises it: {staged:?}"
            );
            if commit {
                staging.commit().unwrap();
                assert_eq!(
                    all_files(&root.0.join(UNIT_DIR)),
                    ["ds01.slice.d/", "ds01.slice.d/10-resource-limits.conf"]
                );
                assert_eq!(fs::read_to_string(&path).unwrap(), "new\n");
            } else {
                drop(staging);
                assert_eq!(
                    all_files(&root.0),
                    Vec::<String>::new(),
                    "temp file and created dirs removed"
                );
            }
        }
    }

    #[test]
    fn a_panic_before_the_commit_leaves_nothing_behind() {
        let root = TempRoot::new("panic");
        let path = root
            .0
            .join(UNIT_DIR)
            .join("ds01.slice.d")
            .join(DROP_IN_FILE);
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut staging = Staging::default();
            staging
                .stage(&Root::open(&root.0).unwrap(), &path, "new\n")
                .unwrap();
            panic!("between staging and commit");
        }));
        assert!(unwound.is_err());
        assert_eq!(all_files(&root.0), Vec::<String>::new());
    }

    #[test]
    fn the_next_render_removes_what_an_interrupted_one_left() {
        let root = TempRoot::new("interrupted");
        let state = TempRoot::new("interrupted-state");
        let own = Ownership::new(&state.0);
        let dir = root.0.join(UNIT_DIR).join("ds01.slice.d");
        fs::create_dir_all(&dir).unwrap();
        // What a killed run leaves: a staged file never committed (here forgotten, as a
        // SIGKILL would), and one of a version that named them by PID.
        std::mem::forget(atomic::stage(&dir, TMP_PREFIX, TMP_SUFFIX, b"half").unwrap());
        fs::write(dir.join(".10-resource-limits.conf.4242.tmp"), "").unwrap();
        fs::write(dir.join("keep.tmp"), "").unwrap();
        let c = config("alice\n");
        let p = plan(&c).unwrap();
        let tp = plan_tree(&c, &p, None, &root.0, &own).unwrap();
        assert_eq!(tp.leftover_temps.len(), 2, "{:?}", tp.leftover_temps);
        execute(&tp, &own).unwrap();
        assert_eq!(
            all_files(&dir),
            ["10-resource-limits.conf", "keep.tmp"],
            "leftovers gone, other files kept"
        );
    }

    #[test]
    fn a_symlink_that_appears_after_the_plan_refuses_the_run_before_any_change() {
        let root = TempRoot::new("late-link");
        let outside = TempRoot::new("late-link-outside");
        let state = TempRoot::new("late-link-state");
        let own = Ownership::new(&state.0);
        let c = config("alice\n");
        let p = plan(&c).unwrap();
        let tp = plan_tree(&c, &p, None, &root.0, &own).unwrap();
        fs::create_dir_all(root.0.join("etc/systemd")).unwrap();
        std::os::unix::fs::symlink(&outside.0, root.0.join(UNIT_DIR)).unwrap();
        let err = execute(&tp, &own).unwrap_err();
        assert!(matches!(err, RenderError::Symlink { .. }), "{err}");
        assert_eq!(all_files(&outside.0), Vec::<String>::new());
        // all_files follows the link: it lists the (empty) outside directory as a directory.
        assert_eq!(
            all_files(&root.0),
            ["etc/", "etc/systemd/", "etc/systemd/system/"]
        );
    }

    #[test]
    fn a_write_that_fails_leaves_nothing_behind() {
        let root = TempRoot::new("fail");
        let state = TempRoot::new("fail-state");
        let own = Ownership::new(&state.0);
        let c = config("alice\n");
        let p = plan(&c).unwrap();
        // A file where a slice directory must go makes its creation fail.
        let unit = root.0.join(UNIT_DIR);
        fs::create_dir_all(&unit).unwrap();
        fs::write(unit.join("ds01-student-alice.slice.d"), "x").unwrap();
        let tp = plan_tree(&c, &p, None, &root.0, &own).unwrap();
        assert_eq!(tp.refused().count(), 1);
        let mut tp = tp;
        // Force the write anyway, as if the directory had appeared meanwhile.
        for f in &mut tp.files {
            if let FileAction::Refuse { content, .. } = &f.action {
                f.action = FileAction::Create(content.clone());
            }
        }
        let err = execute(&tp, &own).unwrap_err();
        assert!(
            err.to_string()
                .contains("ds01-student-alice.slice.d/10-resource-limits.conf"),
            "{err}"
        );
        assert_eq!(
            all_files(&unit),
            ["ds01-student-alice.slice.d"],
            "the staged parent files were rolled back"
        );
    }
}
