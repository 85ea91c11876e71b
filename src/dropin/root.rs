//! `--root` and the one rule for every path below it: no symlink is followed. Every directory
//! from the root down to a file that the file backend reads, writes or removes must be a real
//! directory, checked component by component with `lstat`, and the files themselves are
//! opened with `O_NOFOLLOW` (or only renamed over and unlinked, which never follow the last
//! component). A symlink anywhere below the root refuses the whole run before anything is
//! changed: one inside an image or a chroot (`etc -> /etc`, absolute) would resolve on this
//! host and carry our writes and removals out of the tree.
//!
//! The root itself is followed, as the kernel resolves it on every use: where it points is the
//! admin's choice, and resolving it ourselves would be wrong for `/proc/<pid>/root` of another
//! mount namespace, a magic link whose text (`/`) names this host's root instead.
//!
//! What the check guarantees, and what it does not: it is made when the tree is read and again
//! when `render` starts changing it, then the paths are used. A directory swapped for a symlink
//! in between is not caught. Doing so needs write access to a directory below the root, that
//! is (the tree being root's and systemd's) the power to write unit files systemd runs as
//! root; so the check is there to keep a wrongly built tree from redirecting us, not to stand
//! between root and an attacker who already has that power. Closing the window would need
//! `openat` on directory handles, which std does not offer without unsafe code.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fs::{self, DirBuilder, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use super::error::RenderError;

/// A `--root` found to be a directory, with the directories below it already checked in this
/// pass.
pub struct Root {
    path: PathBuf,
    /// Directories found real in this pass, so that each is checked once per pass (a render
    /// of many slices looks at the same few directories many times).
    real: RefCell<BTreeSet<PathBuf>>,
}

/// How far a path's directories exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Every directory down to it exists, and each is a real directory.
    Real,
    /// One of them is missing: so is everything below it.
    Absent,
}

/// Where a walk down from the root stopped.
enum Stop {
    Real,
    Absent(PathBuf),
    NotADirectory(PathBuf),
}

impl Root {
    /// `path` as the root; it must be a directory (reached through symlinks or not).
    pub fn open(path: &Path) -> Result<Root, RenderError> {
        match fs::metadata(path) {
            Ok(m) if m.is_dir() => Ok(Root {
                path: path.to_owned(),
                real: RefCell::default(),
            }),
            Ok(_) => Err(RenderError::Root {
                path: path.to_owned(),
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            }),
            Err(source) => Err(RenderError::Root {
                path: path.to_owned(),
                source,
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `dir` (a path under the root) exists with every directory to it real. A
    /// symlink or a non-directory on the way is an error.
    pub fn dir(&self, dir: &Path) -> Result<Dir, RenderError> {
        match self.walk(dir)? {
            Stop::Real => Ok(Dir::Real),
            Stop::Absent(_) => Ok(Dir::Absent),
            Stop::NotADirectory(path) => Err(RenderError::NotADirectory {
                root: self.path.clone(),
                path,
            }),
        }
    }

    /// Like [`Root::dir`] for the directory `file` is in.
    pub fn file_dir(&self, file: &Path) -> Result<Dir, RenderError> {
        self.dir(file.parent().unwrap_or(&self.path))
    }

    /// Fails only on a symlink on the way to `dir`: what is missing or not a directory makes
    /// the operation itself fail, with the file named, and cannot lead out of the root.
    pub fn no_symlink_to(&self, dir: &Path) -> Result<(), RenderError> {
        self.walk(dir).map(drop)
    }

    /// Creates the missing directories down to `dir`, each a real directory (0755), and
    /// pushes each one made onto `created`. Errors name `file`, the file they are for.
    pub fn make_dirs(
        &self,
        dir: &Path,
        file: &Path,
        created: &mut Vec<PathBuf>,
    ) -> Result<(), RenderError> {
        let write_err = |source| RenderError::Write {
            path: file.to_owned(),
            source,
        };
        // Each round makes one directory, so a round per component suffices; more means names
        // keep appearing and vanishing under us, and we stop rather than chase them.
        let rounds = dir.components().count() + 1;
        for _ in 0..rounds {
            match self.walk(dir)? {
                Stop::Real => return Ok(()),
                Stop::NotADirectory(_) => {
                    return Err(write_err(io::Error::from(io::ErrorKind::NotADirectory)))
                }
                // mkdir never follows a symlink in its last component; a name that appeared
                // meanwhile is looked at again by the next walk.
                Stop::Absent(missing) => match DirBuilder::new().mode(0o755).create(&missing) {
                    Ok(()) => created.push(missing),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(write_err(e)),
                },
            }
        }
        Err(write_err(io::Error::other(
            "its directories keep changing while they are made",
        )))
    }

    /// Walks from the root down to `dir`, `lstat`ing each directory not yet known real.
    fn walk(&self, dir: &Path) -> Result<Stop, RenderError> {
        let outside = || RenderError::OutsideRoot {
            root: self.path.clone(),
            path: dir.to_owned(),
        };
        let rel = dir.strip_prefix(&self.path).map_err(|_| outside())?;
        let mut at = self.path.clone();
        for component in rel.components() {
            let Component::Normal(name) = component else {
                return Err(outside());
            };
            at.push(name);
            if self.real.borrow().contains(&at) {
                continue;
            }
            let meta = match fs::symlink_metadata(&at) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Stop::Absent(at)),
                Err(source) => return Err(RenderError::Read { path: at, source }),
            };
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&at)
                    .unwrap_or_else(|e| PathBuf::from(format!("an unreadable target: {e}")));
                return Err(RenderError::Symlink {
                    root: self.path.clone(),
                    link: at,
                    target,
                });
            }
            if !meta.is_dir() {
                return Ok(Stop::NotADirectory(at));
            }
            self.real.borrow_mut().insert(at.clone());
        }
        Ok(Stop::Real)
    }
}

/// Opens `path` for reading without following a symlink in its last component, and without
/// blocking on a FIFO. `Ok(None)`: no such file; `Err` with `ELOOP`: a symlink.
pub fn open_nofollow(path: &Path) -> io::Result<Option<File>> {
    match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether an open error means the last component is a symlink (`O_NOFOLLOW`).
pub fn is_symlink_error(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ELOOP)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::dropin::testutil::TempRoot;

    #[test]
    fn real_directories_pass_and_missing_ones_are_absent() {
        let t = TempRoot::new("root-real");
        fs::create_dir_all(t.0.join("etc/systemd")).unwrap();
        let root = Root::open(&t.0).unwrap();
        assert_eq!(root.dir(&t.0.join("etc/systemd")).unwrap(), Dir::Real);
        assert_eq!(root.dir(&t.0).unwrap(), Dir::Real);
        assert_eq!(
            root.dir(&t.0.join("etc/systemd/system/x.d")).unwrap(),
            Dir::Absent
        );
    }

    #[test]
    fn a_symlink_is_refused_wherever_it_points() {
        let t = TempRoot::new("root-link");
        fs::create_dir_all(t.0.join("real")).unwrap();
        fs::create_dir_all(t.0.join("etc")).unwrap();
        for target in [
            t.0.join("real"),
            PathBuf::from("../real"),
            "/nowhere".into(),
        ] {
            let _ = fs::remove_file(t.0.join("etc/systemd"));
            symlink(&target, t.0.join("etc/systemd")).unwrap();
            let root = Root::open(&t.0).unwrap();
            let err = root.dir(&t.0.join("etc/systemd/system")).unwrap_err();
            let text = err.to_string();
            assert!(
                text.starts_with(&format!(
                    "{} is a symlink (to {})",
                    t.0.join("etc/systemd").display(),
                    target.display()
                )),
                "{text}"
            );
            assert!(root.no_symlink_to(&t.0.join("etc/systemd")).is_err());
            let mut created = Vec::new();
            let file = t.0.join("etc/systemd/system/f");
            assert!(root
                .make_dirs(&t.0.join("etc/systemd/system"), &file, &mut created)
                .is_err());
            assert!(created.is_empty());
        }
        assert_eq!(fs::read_dir(t.0.join("real")).unwrap().count(), 0);
    }

    #[test]
    fn a_file_on_the_way_is_not_a_directory() {
        let t = TempRoot::new("root-file");
        fs::write(t.0.join("etc"), "").unwrap();
        let root = Root::open(&t.0).unwrap();
        let err = root.dir(&t.0.join("etc/systemd")).unwrap_err();
        assert!(matches!(err, RenderError::NotADirectory { .. }), "{err}");
        // Not a way out of the root: left for the operation to fail on.
        root.no_symlink_to(&t.0.join("etc/systemd")).unwrap();
    }

    #[test]
    fn made_directories_are_real_and_listed() {
        let t = TempRoot::new("root-make");
        let root = Root::open(&t.0).unwrap();
        let dir = t.0.join("etc/systemd/system");
        let mut created = Vec::new();
        root.make_dirs(&dir, &dir.join("f"), &mut created).unwrap();
        assert_eq!(
            created,
            [t.0.join("etc"), t.0.join("etc/systemd"), dir.clone()]
        );
        assert_eq!(root.dir(&dir).unwrap(), Dir::Real);
    }

    #[test]
    fn paths_outside_the_root_are_refused() {
        let t = TempRoot::new("root-outside");
        let root = Root::open(&t.0).unwrap();
        assert!(root.dir(Path::new("/etc")).is_err());
        assert!(root.dir(&t.0.join("../x")).is_err());
    }
}
