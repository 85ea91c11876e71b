//! What this tool owns on the system, recorded by the tool itself.
//!
//! systemd cannot say who set a property: `systemctl set-property` and our
//! SetUnitProperties calls write the same drop-ins. So before the tool sets a property on a
//! slice it records the property's name in `<state-dir>/owned/<slice>`; a slice that is no
//! longer desired only gets back what that record lists, and a slice without a record is
//! never changed by cleanup. The record also finds stale slices that systemd no longer has
//! loaded. `<state-dir>/lock` serialises writers (apply, render, concurrent hooks).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::lock::{self, WriterLock};
pub use super::StateError;
use crate::atomic;
use crate::model::names::SliceName;
use crate::model::property::Property;

/// Holds the hook's cache of the configuration last accepted by a full validation.
const VALIDATED_CONFIG: &str = "validated-config";

#[derive(Debug, Clone)]
pub struct Ownership {
    dir: PathBuf,
}

impl Ownership {
    pub fn new(state_dir: &Path) -> Self {
        Ownership {
            dir: state_dir.to_owned(),
        }
    }

    fn owned_dir(&self) -> PathBuf {
        self.dir.join("owned")
    }

    fn ensure_dirs(&self) -> Result<(), StateError> {
        let owned = self.owned_dir();
        fs::create_dir_all(&owned).map_err(|source| StateError::Dir {
            path: owned,
            source,
        })
    }

    /// Blocks until no other ds01-slices writer runs. Readers (verify, plan) never lock.
    pub fn lock(&self) -> Result<WriterLock, StateError> {
        self.ensure_dirs()?;
        lock::lock(&self.dir.join("lock"))
    }

    /// Every slice with a record, and the properties recorded for it.
    pub fn read_all(&self) -> Result<BTreeMap<SliceName, BTreeSet<Property>>, StateError> {
        let dir = self.owned_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(source) => return Err(StateError::Dir { path: dir, source }),
        };
        let mut out = BTreeMap::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            // Names that are not ds01 slices (a temporary file, something foreign) are skipped.
            let Some(slice) = name.to_str().and_then(|n| SliceName::parse(n).ok()) else {
                continue;
            };
            out.insert(slice.clone(), self.read(&slice)?);
        }
        Ok(out)
    }

    pub fn read(&self, slice: &SliceName) -> Result<BTreeSet<Property>, StateError> {
        let path = self.owned_dir().join(slice.as_str());
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text
                .split_whitespace()
                .filter_map(Property::from_bus_name)
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
            Err(source) => Err(StateError::Dir { path, source }),
        }
    }

    /// The record of the last configuration a full validation accepted (see
    /// [`crate::config::Sources::remembered`]); `None` when there is none or it cannot be read.
    pub fn validated_config(&self) -> Option<String> {
        fs::read_to_string(self.dir.join(VALIDATED_CONFIG)).ok()
    }

    /// Keeps `record` of a configuration that passed a full validation, so that a hook can
    /// take only its user's lines from it. Best effort: without the record a hook only
    /// validates everything again.
    pub fn record_validated_config(&self, record: &str) {
        let _ = fs::create_dir_all(&self.dir)
            .and_then(|()| atomic::replace(&self.dir.join(VALIDATED_CONFIG), record.as_bytes()));
    }

    /// Records the full set of properties owned on `slice` (empty: forget the slice).
    /// Written before the properties are set, so a crash leaves a record that claims at
    /// most what we were about to write.
    pub fn record(&self, slice: &SliceName, props: &BTreeSet<Property>) -> Result<(), StateError> {
        self.ensure_dirs()?;
        let path = self.owned_dir().join(slice.as_str());
        if props.is_empty() {
            return match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(StateError::Write { path, source: e })
                }
                _ => Ok(()),
            };
        }
        let text: String = props
            .iter()
            .map(|p| format!("{}\n", p.bus_name()))
            .collect();
        atomic::replace(&path, text.as_bytes()).map_err(|source| StateError::Write { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_skip_foreign_names() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("state");
        let own = Ownership::new(&dir);
        let slice = SliceName::parse("ds01-student-alice.slice").unwrap();
        let props: BTreeSet<Property> = [Property::MemoryMax, Property::TasksMax].into();
        own.record(&slice, &props).unwrap();
        fs::write(dir.join("owned").join("user.slice"), "MemoryMax\n").unwrap();
        let all = own.read_all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[&slice], props);
        let _lock = own.lock().unwrap();
        own.record(&slice, &BTreeSet::new()).unwrap();
        assert!(own.read_all().unwrap().is_empty());
    }
}
