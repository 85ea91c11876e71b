//! Reading what is under `--root`: our rendered files (and whatever stands where they go),
//! leftovers of an interrupted run, and the D-Bus drop-ins next to them. Nothing here
//! changes the tree, so `verify --offline` and `render --dry-run` can use all of it.
//!
//! Everything happens in `etc/systemd/system/ds01*.slice.d/` and (for the D-Bus drop-ins we
//! wrote earlier) `{etc,run}/systemd/system.control/ds01*.slice.d/`. Names come from
//! validated [`SliceName`]s, and no symlink below `--root` is followed ([`Root`]), so no path
//! can leave those directories.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::error::RenderError;
use super::format::{classify, is_leftover_temp, Provenance, CONTROL_DIRS, DROP_IN_FILE, UNIT_DIR};
use super::root::{is_symlink_error, open_nofollow, Dir, Root};
use crate::model::names::SliceName;

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

/// Reads the rendered tree. Read-only: leftovers are only listed here. A symlink (or a
/// non-directory) on the way to any directory a render uses fails the whole scan, also for
/// the D-Bus directories no slice may need this time: whether a run is refused must not
/// depend on which slices it happens to look at.
pub fn scan(root: &Root) -> Result<Scan, RenderError> {
    for control in CONTROL_DIRS {
        root.dir(&root.path().join(control))?;
    }
    let unit_dir = root.path().join(UNIT_DIR);
    let mut scan = Scan::default();
    if root.dir(&unit_dir)? == Dir::Absent {
        return Ok(scan);
    }
    let entries = fs::read_dir(&unit_dir).map_err(|source| RenderError::Read {
        path: unit_dir.clone(),
        source,
    })?;
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
        if file_type.is_symlink() {
            // Refused with the link and its target named.
            root.dir(&dir)?;
        }
        if !file_type.is_dir() {
            // Someone's file where a slice's directory goes cannot lead out of the root: only
            // that slice is refused.
            scan.files.insert(
                slice,
                Found {
                    path,
                    provenance: Provenance::Foreign,
                    text: None,
                    odd: Some(format!(
                        "{} is not a directory; ds01-slices writes only into real directories under --root",
                        dir.display()
                    )),
                },
            );
            continue;
        }
        root.dir(&dir)?;
        scan.leftover_temps.extend(leftover_temps(&dir)?);
        if let Some(found) = read_found(root, &path)? {
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
        if entry.file_name().to_str().is_some_and(is_leftover_temp) {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// The file at `path` (under `root`), if any, with who wrote it. A symlink on the way to it
/// fails; the file itself is opened without following one.
pub fn read_found(root: &Root, path: &Path) -> Result<Option<Found>, RenderError> {
    if root.file_dir(path)? == Dir::Absent {
        return Ok(None);
    }
    let odd = |why: &str| Found {
        path: path.to_owned(),
        provenance: Provenance::Foreign,
        text: None,
        odd: Some(format!(
            "{} is {why}; ds01-slices only manages files it wrote",
            path.display()
        )),
    };
    let bytes = match read_file(path)? {
        Content::Missing => return Ok(None),
        Content::Symlink => return Ok(Some(odd("a symlink"))),
        Content::NotAFile => return Ok(Some(odd("not a regular file"))),
        Content::Bytes(bytes) => bytes,
    };
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

/// `None`: no such file (or no such directory). `Some(None)`: there, but not text we could
/// read as a drop-in. A symlink on the way to it fails.
pub fn read_optional(root: &Root, path: &Path) -> Result<Option<Option<String>>, RenderError> {
    if root.file_dir(path)? == Dir::Absent {
        return Ok(None);
    }
    Ok(match read_file(path)? {
        Content::Missing => None,
        Content::Symlink | Content::NotAFile => Some(None),
        Content::Bytes(bytes) => Some(String::from_utf8(bytes).ok()),
    })
}

enum Content {
    Missing,
    Symlink,
    NotAFile,
    Bytes(Vec<u8>),
}

/// A regular file's bytes, checked again on the file opened (not only on its name), so that
/// what is read is what was checked.
fn read_file(path: &Path) -> Result<Content, RenderError> {
    let read_err = |source| RenderError::Read {
        path: path.to_owned(),
        source,
    };
    // Looked at before opening too: opening a device can have effects of its own.
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Content::Missing),
        Err(source) => return Err(read_err(source)),
        Ok(m) if m.file_type().is_symlink() => return Ok(Content::Symlink),
        Ok(m) if !m.is_file() => return Ok(Content::NotAFile),
        Ok(_) => {}
    }
    let mut file = match open_nofollow(path) {
        Ok(Some(f)) => f,
        Ok(None) => return Ok(Content::Missing),
        Err(e) if is_symlink_error(&e) => return Ok(Content::Symlink),
        Err(source) => return Err(read_err(source)),
    };
    if !file.metadata().map_err(read_err)?.is_file() {
        return Ok(Content::NotAFile);
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(read_err)?;
    Ok(Content::Bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dropin::testutil::TempRoot;

    #[test]
    fn leftover_temporary_files_are_found_by_name_only() {
        let root = TempRoot::new("leftover");
        let dir = root.0.join(UNIT_DIR).join("ds01.slice.d");
        fs::create_dir_all(&dir).unwrap();
        for name in [
            ".10-resource-limits.conf.123.tmp",
            ".10-resource-limits.conf.x.tmp",
            ".10-resource-limits.conf.aB3xY9zQ.tmp",
            ".10-resource-limits.conf.x-y.tmp",
            "keep.tmp",
            ".10-resource-limits.conf..tmp",
        ] {
            fs::write(dir.join(name), "").unwrap();
        }
        let mut found = scan(&Root::open(&root.0).unwrap()).unwrap().leftover_temps;
        found.sort();
        assert_eq!(
            found,
            [
                // A PID, as versions before `atomic` named them.
                dir.join(".10-resource-limits.conf.123.tmp"),
                // The random middle `atomic::stage` gives them.
                dir.join(".10-resource-limits.conf.aB3xY9zQ.tmp"),
                dir.join(".10-resource-limits.conf.x.tmp"),
            ]
        );
    }
}
