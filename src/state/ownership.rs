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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::lock::{self, WriterLock};
use super::StateError;
use crate::atomic;
use crate::model::names::SliceName;
use crate::model::property::Property;

/// Holds the hook's cache of the configuration last accepted by a full validation.
const VALIDATED_CONFIG: &str = "validated-config";
/// Holds when the last full apply brought every slice to its limits (Unix seconds).
const LAST_APPLY: &str = "last-apply";
const LAST_APPLY_ATTEMPT: &str = "last-apply-attempt";

#[derive(Debug, Clone)]
pub struct Ownership {
    dir: PathBuf,
    /// False for another machine's systemd (`--host`): this machine's records are not its.
    records: bool,
    lock_wait: Duration,
    notes: Arc<Mutex<Vec<String>>>,
}

/// A record lists at most the eight property names: anything near this size is not one.
const MAX_RECORD_BYTES: u64 = 4096;
/// The hook's cache holds a line per user: ~42 KB at 1,000 users, so 16 MiB is far beyond
/// any real configuration (whose files are capped at 1 + 4 + 4 MiB).
const MAX_CACHE_BYTES: u64 = 16 << 20;

enum Capped {
    Missing,
    NotAFile,
    TooLarge,
    NotText,
    Text(String),
}

/// Reads `path` if it is a regular file of at most `cap` bytes, without following a symlink
/// and without blocking on a FIFO.
fn read_capped(path: &Path, cap: u64) -> std::io::Result<Capped> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Capped::Missing),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(Capped::NotAFile),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Ok(Capped::NotAFile);
    }
    let mut bytes = Vec::new();
    file.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Ok(Capped::TooLarge);
    }
    Ok(match String::from_utf8(bytes) {
        Ok(text) => Capped::Text(text),
        Err(_) => Capped::NotText,
    })
}

/// How long a writer waits for the lock unless told otherwise (`--timeout`'s default).
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(30);

impl Ownership {
    pub fn new(state_dir: &Path) -> Self {
        Ownership {
            dir: state_dir.to_owned(),
            records: true,
            lock_wait: DEFAULT_LOCK_WAIT,
            notes: Arc::default(),
        }
    }

    /// No records at all, for a systemd whose records are on another machine (`--host`):
    /// every read finds none, and taking the writer lock fails (only readers run there).
    pub fn none() -> Self {
        Ownership {
            records: false,
            ..Ownership::new(Path::new(""))
        }
    }

    /// The same state, with writers waiting at most `wait` for the lock.
    pub fn with_lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// Fails for [`Ownership::none`]: nothing may be written for another machine here.
    fn writable(&self) -> Result<(), StateError> {
        if self.records {
            return Ok(());
        }
        Err(StateError::Dir {
            path: PathBuf::new(),
            source: std::io::Error::other(
                "no state directory for another machine's systemd: only reading commands run with --host",
            ),
        })
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
        self.writable()?;
        self.ensure_dirs()?;
        lock::lock(&self.dir.join("lock"), self.lock_wait)
    }

    /// Every slice with a record, and the properties recorded for it.
    pub fn read_all(&self) -> Result<BTreeMap<SliceName, BTreeSet<Property>>, StateError> {
        if !self.records {
            return Ok(BTreeMap::new());
        }
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

    /// The properties recorded for `slice`. A record that is not a small regular text
    /// file of property names is corrupt: it is read as owning every limit (so none we may
    /// have set is forgotten), noted, and rewritten by the next write to that slice.
    pub fn read(&self, slice: &SliceName) -> Result<BTreeSet<Property>, StateError> {
        if !self.records {
            return Ok(BTreeSet::new());
        }
        let path = self.owned_dir().join(slice.as_str());
        let corrupt = |why: String| {
            self.note(format!(
                "warning: ownership record {} is corrupt ({why}): read as owning every limit of {slice}; the next write to it replaces the record",
                path.display()
            ));
            Ok(Property::LIMITS.into_iter().collect())
        };
        let text = match read_capped(&path, MAX_RECORD_BYTES) {
            Ok(Capped::Text(text)) => text,
            Ok(Capped::Missing) => return Ok(BTreeSet::new()),
            Ok(Capped::NotAFile) => return corrupt("not a regular file".into()),
            Ok(Capped::TooLarge) => return corrupt(format!("over {MAX_RECORD_BYTES} bytes")),
            Ok(Capped::NotText) => return corrupt("not UTF-8 text".into()),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let mut props = BTreeSet::new();
        for word in text.split_whitespace() {
            match Property::from_bus_name(word) {
                Some(p) => {
                    props.insert(p);
                }
                None => return corrupt(format!("unknown property {word:?}")),
            }
        }
        Ok(props)
    }

    fn note(&self, text: String) {
        self.notes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(text);
    }

    /// What reading the records noticed (corrupt records), for the run's report.
    pub fn take_notes(&self) -> Vec<String> {
        std::mem::take(
            &mut *self
                .notes
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// The record of the last configuration a full validation accepted (see
    /// `crate::state::cache`); `None` when there is none or it cannot be read.
    /// Read like the ownership records (no symlink, no FIFO, capped): anything else is no
    /// record, and the hook validates in full.
    pub fn validated_config(&self) -> Option<String> {
        if !self.records {
            return None;
        }
        match read_capped(&self.dir.join(VALIDATED_CONFIG), MAX_CACHE_BYTES) {
            Ok(Capped::Text(text)) => Some(text),
            _ => None,
        }
    }

    /// Keeps `record` of a configuration that passed a full validation, so that a hook can
    /// take only its user's lines from it. Best effort: without the record a hook only
    /// validates everything again.
    pub fn record_validated_config(&self, record: &str) {
        if !self.records {
            return;
        }
        let _ = fs::create_dir_all(&self.dir)
            .and_then(|()| atomic::replace(&self.dir.join(VALIDATED_CONFIG), record.as_bytes()));
    }

    /// Notes that a full apply has just brought every slice to its limits, for the metric
    /// `ds01_slices_last_apply_timestamp_seconds`. Best effort: without it the metric is
    /// absent, which alerts on its own.
    pub fn record_applied(&self, unix_secs: u64) {
        if !self.records {
            return;
        }
        let _ = fs::create_dir_all(&self.dir).and_then(|()| {
            atomic::replace(
                &self.dir.join(LAST_APPLY),
                format!("{unix_secs}\n").as_bytes(),
            )
        });
    }

    /// When the last full apply completed, if it is recorded.
    pub fn last_applied(&self) -> Option<u64> {
        if !self.records {
            return None;
        }
        match read_capped(&self.dir.join(LAST_APPLY), 64) {
            Ok(Capped::Text(text)) => text.trim().parse().ok(),
            _ => None,
        }
    }

    /// Notes that a full apply has just ended, and whether it brought every slice to its
    /// limits (a configuration refused, a slice that failed: not), for the metrics
    /// `ds01_slices_last_apply_attempt_timestamp_seconds` and `ds01_slices_last_apply_success`.
    /// Best effort, as [`Ownership::record_applied`].
    pub fn record_apply_attempt(&self, unix_secs: u64, complete: bool) {
        if !self.records {
            return;
        }
        let text = format!("{unix_secs} {}\n", if complete { "ok" } else { "failed" });
        let _ = fs::create_dir_all(&self.dir)
            .and_then(|()| atomic::replace(&self.dir.join(LAST_APPLY_ATTEMPT), text.as_bytes()));
    }

    /// When the last full apply ended, and whether it was complete, if it is recorded.
    pub fn last_apply_attempt(&self) -> Option<(u64, bool)> {
        if !self.records {
            return None;
        }
        let Ok(Capped::Text(text)) = read_capped(&self.dir.join(LAST_APPLY_ATTEMPT), 64) else {
            return None;
        };
        let (when, outcome) = text.trim().split_once(' ')?;
        let complete = match outcome {
            "ok" => true,
            "failed" => false,
            _ => return None,
        };
        Some((when.parse().ok()?, complete))
    }

    /// Records the full set of properties owned on `slice` (empty: forget the slice).
    /// Written before the properties are set, so a crash leaves a record that claims at
    /// most what we were about to write.
    pub fn record(&self, slice: &SliceName, props: &BTreeSet<Property>) -> Result<(), StateError> {
        self.record_now(slice, props)?;
        self.sync(std::slice::from_ref(slice))
    }

    /// [`Ownership::record`] without flushing the directory: the record is in place for every
    /// reader and survives a crash of this process; [`Ownership::sync`] makes it survive a
    /// crash of the machine. Apply and the hook record their intent this way and flush while
    /// the write it announces is on the wire, which takes the flush off the hook's path.
    pub fn record_now(
        &self,
        slice: &SliceName,
        props: &BTreeSet<Property>,
    ) -> Result<(), StateError> {
        self.writable()?;
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
        atomic::replace_now(&path, text.as_bytes())
            .map_err(|source| StateError::Write { path, source })
    }

    /// Flushes the records of `slices` written by [`Ownership::record_now`] to disk (a
    /// record since removed is skipped).
    pub fn sync(&self, slices: &[SliceName]) -> Result<(), StateError> {
        self.writable()?;
        let dir = self.owned_dir();
        let files: Vec<PathBuf> = slices
            .iter()
            .map(|s| dir.join(s.as_str()))
            .filter(|p| p.exists())
            .collect();
        atomic::flush(&dir, &files).map_err(|source| StateError::Write { path: dir, source })
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

    #[test]
    fn a_cache_that_is_no_regular_small_file_is_no_cache() {
        let scratch = tempfile::tempdir().unwrap();
        let own = Ownership::new(scratch.path());
        own.record_validated_config("record\n");
        assert_eq!(own.validated_config().as_deref(), Some("record\n"));
        let path = scratch.path().join(VALIDATED_CONFIG);
        fs::remove_file(&path).unwrap();
        let fifo = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(fifo.success());
        assert_eq!(
            own.validated_config(),
            None,
            "a FIFO is read without blocking"
        );
    }

    #[test]
    fn a_lock_file_that_is_a_fifo_fails_at_once() {
        let scratch = tempfile::tempdir().unwrap();
        let own = Ownership::new(scratch.path());
        fs::create_dir_all(scratch.path().join("owned")).unwrap();
        let fifo = std::process::Command::new("mkfifo")
            .arg(scratch.path().join("lock"))
            .status()
            .unwrap();
        assert!(fifo.success());
        let err = own.lock().unwrap_err().to_string();
        assert!(err.contains("cannot take the lock"), "{err}");
    }

    #[test]
    fn a_corrupt_record_owns_every_limit_of_its_slice_only() {
        let scratch = tempfile::tempdir().unwrap();
        let own = Ownership::new(scratch.path());
        let good = SliceName::parse("ds01-student-alice.slice").unwrap();
        let bad = SliceName::parse("ds01-student-bob.slice").unwrap();
        let big = SliceName::parse("ds01-student-carol.slice").unwrap();
        own.record(&good, &[Property::TasksMax].into()).unwrap();
        let owned = scratch.path().join("owned");
        fs::write(owned.join(bad.as_str()), b"Memory\xffMax\n").unwrap();
        fs::write(owned.join(big.as_str()), vec![b'M'; 10_000]).unwrap();
        let all = own.read_all().unwrap();
        let limits: BTreeSet<Property> = Property::LIMITS.into_iter().collect();
        assert_eq!(all[&good], [Property::TasksMax].into());
        assert_eq!(all[&bad], limits);
        assert_eq!(all[&big], limits);
        let notes = own.take_notes();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes
            .iter()
            .any(|n| n.contains("ds01-student-bob.slice") && n.contains("not UTF-8")));
        assert!(notes.iter().any(|n| n.contains("over 4096 bytes")));
    }

    #[test]
    fn no_records_reads_nothing_and_writes_nothing() {
        let own = Ownership::none();
        let slice = SliceName::parse("ds01-student-alice.slice").unwrap();
        assert!(own.read_all().unwrap().is_empty());
        assert!(own.read(&slice).unwrap().is_empty());
        assert_eq!(own.validated_config(), None);
        assert!(own.lock().is_err());
        let e = own
            .record(&slice, &[Property::TasksMax].into())
            .unwrap_err();
        assert!(e.to_string().contains("--host"), "{e}");
    }
}
