//! The rendered tree on disk: what is there, what the plan wants there, and the atomic
//! writes that bring the one to the other.
//!
//! Everything happens under `--root`, in `etc/systemd/system/ds01*.slice.d/` and (for the
//! D-Bus drop-ins we wrote earlier) `{etc,run}/systemd/system.control/ds01*.slice.d/`. Names
//! come from validated [`SliceName`]s, so no path can leave those directories.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{
    classify, dbus_drop_in_name, drop_in_dir_name, only_settings, parse_assignments, relative_path,
    render_spec, same_setting_value, setting_value, Provenance, CONTROL_DIRS, DROP_IN_FILE,
    UNIT_DIR,
};
use crate::config::Config;
use crate::diff;
use crate::model::names::{SanitizedUser, SliceIdentity, SliceName, UserName};
use crate::model::property::Property;
use crate::plan::Plan;
use crate::state::ownership::{Ownership, StateError};

/// Temporary files are `.10-resource-limits.conf.<pid>.tmp`: hidden, and without the
/// `.conf` suffix systemd reads, so a leftover is never loaded; the next run removes it.
const TMP_PREFIX: &str = ".10-resource-limits.conf.";
const TMP_SUFFIX: &str = ".tmp";

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("--root {path}: {source}; it must be an existing directory: the file-system root of the host whose systemd ds01-slices manages")]
    Root { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}; ds01-slices must read it to know whether it wrote it: check its permissions and rerun")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}. Nothing was changed: every file of this run goes to a temporary file first, and none had been moved into place. Make {} writable (or free space on its file system) and rerun", .path.parent().unwrap_or(Path::new("/")).display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot move the new {path} into place: {source}; the files listed before it were replaced, later ones were not: fix the cause and rerun (render converges)")]
    Commit { path: PathBuf, source: io::Error },
    #[error("cannot flush directory {path} to disk: {source}; the files in it may not survive a crash: check the file system and rerun")]
    Sync { path: PathBuf, source: io::Error },
    #[error("cannot remove {path}: {source}; make its directory writable and rerun")]
    Remove { path: PathBuf, source: io::Error },
    #[error(transparent)]
    State(#[from] StateError),
}

/// One `10-resource-limits.conf` found under `--root`.
#[derive(Debug, Clone)]
pub struct Found {
    pub path: PathBuf,
    pub provenance: Provenance,
    pub text: Option<String>,
    /// Why a file cannot be ours regardless of its text (a symlink, not a regular file).
    pub odd: Option<String>,
}

/// What is under `<root>/etc/systemd/system` for ds01 slices.
#[derive(Debug, Default)]
pub struct Scan {
    pub files: BTreeMap<SliceName, Found>,
    /// Temporary files of an interrupted run (recognised by name).
    pub leftover_temps: Vec<PathBuf>,
}

/// Reads the rendered tree. Read-only: leftovers are only listed here.
pub fn scan(root: &Path) -> Result<Scan, RenderError> {
    match fs::metadata(root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(RenderError::Root {
                path: root.to_owned(),
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            })
        }
        Err(source) => {
            return Err(RenderError::Root {
                path: root.to_owned(),
                source,
            })
        }
    }
    let unit_dir = root.join(UNIT_DIR);
    let mut scan = Scan::default();
    let entries = match fs::read_dir(&unit_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(scan),
        Err(source) => {
            return Err(RenderError::Read {
                path: unit_dir,
                source,
            })
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| RenderError::Read {
            path: unit_dir.clone(),
            source,
        })?;
        let name = entry.file_name();
        let Some(slice) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".d"))
            .and_then(|n| SliceName::parse(n).ok())
        else {
            continue;
        };
        let dir = entry.path();
        let path = dir.join(DROP_IN_FILE);
        let file_type = entry.file_type().map_err(|source| RenderError::Read {
            path: dir.clone(),
            source,
        })?;
        if !file_type.is_dir() {
            let what = if file_type.is_symlink() {
                "a symlink"
            } else {
                "not a directory"
            };
            scan.files.insert(
                slice,
                Found {
                    path,
                    provenance: Provenance::Foreign,
                    text: None,
                    odd: Some(format!(
                        "{} is {what}; ds01-slices writes only into real directories under --root",
                        dir.display()
                    )),
                },
            );
            continue;
        }
        scan.leftover_temps.extend(leftover_temps(&dir)?);
        if let Some(found) = read_found(&path)? {
            scan.files.insert(slice, found);
        }
    }
    Ok(scan)
}

fn leftover_temps(dir: &Path) -> Result<Vec<PathBuf>, RenderError> {
    let read_err = |source| RenderError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name();
        let Some(middle) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TMP_PREFIX))
            .and_then(|n| n.strip_suffix(TMP_SUFFIX))
        else {
            continue;
        };
        if !middle.is_empty() && middle.bytes().all(|b| b.is_ascii_digit()) {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// The file at `path`, if any, with who wrote it.
pub fn read_found(path: &Path) -> Result<Option<Found>, RenderError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(RenderError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    if !meta.file_type().is_file() {
        return Ok(Some(Found {
            path: path.to_owned(),
            provenance: Provenance::Foreign,
            text: None,
            odd: Some(format!(
                "{} is not a regular file (a symlink?); ds01-slices only manages files it wrote",
                path.display()
            )),
        }));
    }
    let bytes = fs::read(path).map_err(|source| RenderError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(Some(match String::from_utf8(bytes) {
        Ok(text) => Found {
            path: path.to_owned(),
            provenance: classify(&text),
            text: Some(text),
            odd: None,
        },
        Err(_) => Found {
            path: path.to_owned(),
            provenance: Provenance::Foreign,
            text: None,
            odd: Some(format!("{} is not UTF-8 text", path.display())),
        },
    }))
}

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
        Some(u) => {
            plan.get(slice).is_some()
                || matches!(slice.identity(), SliceIdentity::User(_, s) if &s == u)
        }
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
    let scan = scan(root)?;
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
                let Some(text) = read_optional(&path)? else {
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
                    let Some(Some(text)) = read_optional(&dbus_file)? else {
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

/// `None`: no such file. `Some(None)`: there, but not text we could read as a drop-in.
fn read_optional(path: &Path) -> Result<Option<Option<String>>, RenderError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(RenderError::Read {
                path: path.to_owned(),
                source,
            })
        }
        Ok(m) if !m.file_type().is_file() => return Ok(Some(None)),
        Ok(_) => {}
    }
    match fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8(bytes).ok())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RenderError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

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

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("/"))
}

fn remove_if_present(path: &Path) -> Result<bool, RenderError> {
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
fn remove_dir_if_empty(dir: &Path, removed: &mut Vec<PathBuf>) {
    if fs::remove_dir(dir).is_ok() {
        removed.push(dir.to_owned());
    }
}

fn sync_dir(dir: &Path) -> Result<(), RenderError> {
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
#[allow(unsafe_code)]
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

/// Takes over a rendered host for `apply`: removes our (or the old generator's)
/// `10-resource-limits.conf` of each slice in `slices`, once D-Bus holds their values.
/// Someone else's file is left alone. Returns the files removed.
pub fn take_over_rendered(root: &Path, slices: &[SliceName]) -> Result<Vec<PathBuf>, RenderError> {
    let mut removed = Vec::new();
    let mut dirs_removed = Vec::new();
    for slice in slices {
        let path = root.join(relative_path(slice));
        let Some(found) = read_found(&path)? else {
            continue;
        };
        if found.odd.is_some() || !found.provenance.is_ours() {
            continue;
        }
        if remove_if_present(&path)? {
            sync_dir(parent(&path))?;
            remove_dir_if_empty(parent(&path), &mut dirs_removed);
            removed.push(path);
        }
    }
    Ok(removed)
}

/// The rendered files `apply` will take over: slices with a file of ours (or the old
/// generator's) under `root` for which `wanted` holds, with the properties each file sets;
/// and the foreign files it leaves alone.
#[derive(Debug, Default)]
pub struct Rendered {
    pub files: BTreeMap<SliceName, BTreeSet<Property>>,
    pub foreign: Vec<PathBuf>,
}

pub fn find_rendered(
    root: &Path,
    wanted: impl Fn(&SliceName) -> bool,
) -> Result<Rendered, RenderError> {
    let scan = scan(root)?;
    let mut out = Rendered::default();
    for (slice, found) in scan.files {
        if !wanted(&slice) {
            continue;
        }
        match (
            &found.text,
            found.odd.is_none() && found.provenance.is_ours(),
        ) {
            (Some(text), true) => {
                let props = parse_assignments(text)
                    .into_iter()
                    .map(|(p, _)| p)
                    .collect();
                out.files.insert(slice, props);
            }
            _ => out.foreign.push(found.path),
        }
    }
    Ok(out)
}

/// `verify --offline`: one line per file that is not as the plan wants it.
#[derive(Debug, Clone, Serialize)]
pub struct FileCheck {
    pub slice: SliceName,
    pub path: PathBuf,
    pub status: FileStatus,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    Ok,
    Missing,
    Different,
    /// Written by the old generator: `render` takes it over.
    Legacy,
    Stale,
    /// Someone else's file stands where ours must go.
    Foreign,
    /// A D-Bus drop-in sets another value, and wins.
    Shadowed,
    /// Someone else's file on a slice that needs none: not drift, just noted.
    Ignored,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct OfflineCounts {
    pub files: usize,
    pub ok: usize,
    pub drift: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct OfflineReport {
    pub holds: bool,
    pub root: PathBuf,
    pub counts: OfflineCounts,
    pub files: Vec<FileCheck>,
}

pub fn offline_check(tp: &TreePlan) -> OfflineReport {
    let mut files = Vec::new();
    for f in &tp.files {
        let (status, detail) = match &f.action {
            FileAction::Unchanged => (FileStatus::Ok, None),
            FileAction::Create(_) => (FileStatus::Missing, None),
            FileAction::Update(_) => (
                FileStatus::Different,
                Some("content differs from the configuration".to_owned()),
            ),
            FileAction::TakeOver(_) => (
                FileStatus::Legacy,
                Some("written by the old generator; 'ds01-slices render' takes it over".to_owned()),
            ),
            FileAction::Remove(_) => (
                FileStatus::Stale,
                Some("the slice needs no file now".to_owned()),
            ),
            FileAction::Refuse { reason, .. } => (FileStatus::Foreign, Some(reason.clone())),
            FileAction::KeepForeign { reason } => (FileStatus::Ignored, Some(reason.clone())),
        };
        files.push(FileCheck {
            slice: f.slice.clone(),
            path: f.path.clone(),
            status,
            detail,
        });
    }
    for s in &tp.shadows {
        files.push(FileCheck {
            slice: s.slice.clone(),
            path: s.dbus_file.clone(),
            status: FileStatus::Shadowed,
            detail: Some(format!(
                "{}: {} ({}) shadows {} ({})",
                s.property,
                s.dbus_file.display(),
                super::display_setting_value(property_of(s), &s.dbus_value),
                s.rendered_file.display(),
                super::display_setting_value(property_of(s), &s.rendered_value),
            )),
        });
    }
    let drift = files
        .iter()
        .filter(|f| !matches!(f.status, FileStatus::Ok | FileStatus::Ignored))
        .count();
    let ok = files.iter().filter(|f| f.status == FileStatus::Ok).count();
    OfflineReport {
        holds: drift == 0,
        root: tp.root.clone(),
        counts: OfflineCounts {
            files: files.len(),
            ok,
            drift,
        },
        files,
    }
}

fn property_of(s: &Shadow) -> Property {
    super::property_for_setting(s.property).unwrap_or(Property::MemoryMax)
}

pub fn render_offline_text(report: &OfflineReport) -> String {
    let mut out = String::new();
    for f in &report.files {
        let status = match f.status {
            FileStatus::Ok => "ok",
            FileStatus::Missing => "missing",
            FileStatus::Different => "differs",
            FileStatus::Legacy => "legacy",
            FileStatus::Stale => "stale",
            FileStatus::Foreign => "foreign",
            FileStatus::Shadowed => "shadowed",
            FileStatus::Ignored => "ignored",
        };
        out.push_str(&format!("{status:<9}{}", f.path.display()));
        if let Some(d) = &f.detail {
            out.push_str(&format!(": {d}"));
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "{}: {} files under {}, {} ok, {} drift\n",
        if report.holds {
            "rendered files match the configuration"
        } else {
            "DRIFT"
        },
        report.counts.files,
        report.root.display(),
        report.counts.ok,
        report.counts.drift
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_texts;
    use crate::plan::plan;

    struct TempRoot(PathBuf);
    impl TempRoot {
        fn new(label: &str) -> TempRoot {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "ds01-render-unit-{}-{}-{label}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&p).unwrap();
            TempRoot(p)
        }
    }
    impl Drop for TempRoot {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn config(members: &str) -> Config {
        config_with("default_group: student\n", members)
    }

    fn config_with(head: &str, members: &str) -> Config {
        parse_texts(
            Path::new("/c/resource-limits.yaml"),
            &format!(
                "{head}groups:\n  student:\n    aggregate: {{memory_max: 96G, tasks_max: 100}}\n"
            ),
            &[("student", members)],
            None,
        )
        .unwrap()
    }

    fn all_files(root: &Path) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            for e in fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    out.push(format!("{}/", p.strip_prefix(base).unwrap().display()));
                    walk(&p, base, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap().display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        walk(root, root, &mut out);
        out.sort();
        out
    }

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
        fs::write(
            erin.join(DROP_IN_FILE),
            format!("{}\n[Slice]\n", super::super::MARKER),
        )
        .unwrap();
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
    fn leftover_temporary_files_are_found_by_name_only() {
        let root = TempRoot::new("leftover");
        let dir = root.0.join(UNIT_DIR).join("ds01.slice.d");
        fs::create_dir_all(&dir).unwrap();
        for name in [
            ".10-resource-limits.conf.123.tmp",
            ".10-resource-limits.conf.x.tmp",
            "keep.tmp",
            ".10-resource-limits.conf..tmp",
        ] {
            fs::write(dir.join(name), "").unwrap();
        }
        let scan = scan(&root.0).unwrap();
        assert_eq!(
            scan.leftover_temps,
            [dir.join(".10-resource-limits.conf.123.tmp")]
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
