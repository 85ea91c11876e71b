//! Carrying out a [`TreePlan`] so that systemd, reading the tree at any moment (a reload, a
//! boot after a crash), sees each file either as it was or as the plan wants it, and never a
//! slice left with neither its rendered file nor the D-Bus drop-ins that held its values.

use std::collections::BTreeSet;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::decide::TreePlan;
use super::error::RenderError;
use super::format::{TMP_PREFIX, TMP_SUFFIX};
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
    let mut done = Executed::default();
    for tmp in &tp.leftover_temps {
        remove_if_present(tmp)?;
    }
    let mut staging = Staging::new();
    for (file, content) in tp.writes() {
        staging.stage(&tp.root, &file.path, content)?;
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

pub(super) fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("/"))
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
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| RenderError::Sync {
            path: dir.to_owned(),
            source,
        })
}

/// A file's new content, written and flushed but not yet visible under its name.
enum Temp {
    /// An O_TMPFILE file: it has no name until it is linked, so a crash cannot leave it
    /// behind.
    Unnamed(File),
    /// For file systems without O_TMPFILE.
    Named(PathBuf),
}

struct Staged {
    path: PathBuf,
    temp: Temp,
}

/// Staged files and the directories made for them; dropping it without a commit removes
/// them all (also on panic).
#[derive(Default)]
struct Staging {
    staged: Vec<Staged>,
    created_dirs: Vec<PathBuf>,
    committed: bool,
    /// O_TMPFILE files are linked through /proc/self/fd, which a chroot may lack.
    unnamed: bool,
}

impl Staging {
    fn new() -> Staging {
        Staging {
            staged: Vec::new(),
            created_dirs: Vec::new(),
            committed: false,
            unnamed: Path::new("/proc/self/fd").is_dir(),
        }
    }

    fn stage(&mut self, root: &Path, path: &Path, content: &str) -> Result<(), RenderError> {
        let dir = parent(path);
        let write_err = |source| RenderError::Write {
            path: path.to_owned(),
            source,
        };
        self.ensure_dir(root, dir).map_err(write_err)?;
        let opened = if self.unnamed {
            open_unnamed(dir)
        } else {
            Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
        };
        let temp = match opened {
            Ok(mut file) => {
                file.write_all(content.as_bytes())
                    .and_then(|_| file.sync_all())
                    .map_err(write_err)?;
                Temp::Unnamed(file)
            }
            Err(e) if unnamed_unsupported(&e) => {
                let tmp = temp_name(dir);
                // Registered before it exists, so a failure below still removes it.
                self.staged.push(Staged {
                    path: path.to_owned(),
                    temp: Temp::Named(tmp.clone()),
                });
                write_named(&tmp, content).map_err(write_err)?;
                return Ok(());
            }
            Err(e) => return Err(write_err(e)),
        };
        self.staged.push(Staged {
            path: path.to_owned(),
            temp,
        });
        Ok(())
    }

    /// Creates `dir` and any missing parents (never `root` itself), remembering each.
    fn ensure_dir(&mut self, root: &Path, dir: &Path) -> io::Result<()> {
        let mut missing = Vec::new();
        let mut d = dir;
        while d != root && !d.exists() {
            missing.push(d.to_owned());
            match d.parent() {
                Some(p) => d = p,
                None => break,
            }
        }
        for d in missing.into_iter().rev() {
            match DirBuilder::new().mode(0o755).create(&d) {
                Ok(()) => self.created_dirs.push(d),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn commit(mut self) -> Result<(), RenderError> {
        let staged = std::mem::take(&mut self.staged);
        let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
        let mut result = Ok(());
        let mut rest = staged.into_iter();
        for s in rest.by_ref() {
            let dir = parent(&s.path).to_owned();
            let moved = match &s.temp {
                Temp::Unnamed(file) => link_and_rename(file, &dir, &s.path),
                Temp::Named(tmp) => fs::rename(tmp, &s.path).inspect_err(|_| {
                    let _ = fs::remove_file(tmp);
                }),
            };
            if let Err(source) = moved {
                result = Err(RenderError::Commit {
                    path: s.path.clone(),
                    source,
                });
                break;
            }
            dirs.insert(dir);
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
        for dir in dirs {
            sync_dir(&dir)?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        for s in self.staged.drain(..) {
            if let Temp::Named(tmp) = s.temp {
                let _ = fs::remove_file(tmp);
            }
        }
        if !self.committed {
            for d in self.created_dirs.drain(..).rev() {
                let _ = fs::remove_dir(d);
            }
        }
    }
}

fn open_unnamed(dir: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .mode(0o644)
        .open(dir)
}

fn unnamed_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
    )
}

fn temp_name(dir: &Path) -> PathBuf {
    dir.join(format!("{TMP_PREFIX}{}{TMP_SUFFIX}", std::process::id()))
}

fn write_named(tmp: &Path, content: &str) -> io::Result<()> {
    // A leftover of a crashed run with the same PID is ours by name.
    let _ = fs::remove_file(tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(tmp)?;
    f.write_all(content.as_bytes())?;
    f.sync_all()
}

/// Gives an O_TMPFILE file a temporary name, then renames it over `path`: `linkat` cannot
/// replace an existing file, `rename` can, atomically.
fn link_and_rename(file: &File, dir: &Path, path: &Path) -> io::Result<()> {
    let tmp = temp_name(dir);
    let _ = fs::remove_file(&tmp);
    let proc_path = format!("/proc/self/fd/{}\0", file.as_raw_fd());
    let mut target = tmp.as_os_str().as_bytes().to_vec();
    target.push(0);
    // SAFETY: both arguments are NUL-terminated byte strings that live across the call, and
    // linkat only reads them.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            proc_path.as_ptr().cast(),
            libc::AT_FDCWD,
            target.as_ptr().cast(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dropin::decide::{plan_tree, FileAction};
    use crate::dropin::format::{DROP_IN_FILE, UNIT_DIR};
    use crate::dropin::testutil::{all_files, config, TempRoot};
    use crate::plan::plan;
    use crate::state::ownership::Ownership;

    #[test]
    fn named_temporary_files_are_committed_or_removed() {
        for commit in [true, false] {
            let root = TempRoot::new("named");
            let dir = root.0.join(UNIT_DIR).join("ds01.slice.d");
            let path = dir.join(DROP_IN_FILE);
            let mut staging = Staging::default();
            staging.stage(&root.0, &path, "new\n").unwrap();
            assert!(dir
                .join(format!("{TMP_PREFIX}{}{TMP_SUFFIX}", std::process::id()))
                .exists());
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
