//! Reading what is under `--root`: our rendered files (and whatever stands where they go),
//! leftovers of an interrupted run, and the D-Bus drop-ins next to them. Nothing here
//! changes the tree, so `verify --offline` and `render --dry-run` can use all of it.
//!
//! Everything happens in `etc/systemd/system/ds01*.slice.d/` and (for the D-Bus drop-ins we
//! wrote earlier) `{etc,run}/systemd/system.control/ds01*.slice.d/`. Names come from
//! validated [`SliceName`]s, so no path can leave those directories.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::error::RenderError;
use super::format::{classify, is_leftover_temp, Provenance, DROP_IN_FILE, UNIT_DIR};
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
        if entry.file_name().to_str().is_some_and(is_leftover_temp) {
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

/// `None`: no such file. `Some(None)`: there, but not text we could read as a drop-in.
pub fn read_optional(path: &Path) -> Result<Option<Option<String>>, RenderError> {
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
        let mut found = scan(&root.0).unwrap().leftover_temps;
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
