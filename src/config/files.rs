//! The one way the configuration's files are read: whole and stable, never more than a cap,
//! only regular files, and, for root, only files that nobody but root can change. With
//! [`trust`](super::trust) the only part of the configuration that touches the file system
//! besides `read.rs`, which decides what to read.
//!
//! A read is stable when no file changed while any of them was read: each file's identity
//! and times (a [`Stamp`]) are the same before and after reading it, the bytes read are as
//! many as it holds, none was written in the last [`SETTLE`], and at the end every path still
//! names what was read (or still names nothing). An editor that truncates a file and writes
//! it again in two writes leaves a prefix in between that may be valid YAML with a limit
//! missing: such a read is thrown away and done again, a few times, and then refused.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::trust::{self, Verdicts};
use super::types::{Kind, MIB};
use super::ConfigError;

/// A file changed less than this long ago may be between two writes of one edit: it is
/// read again once it is this old. Two writes of one save are microseconds apart, of a
/// script's `>` then `>>` a few milliseconds, of a writer the scheduler stalls between them
/// sometimes tens of milliseconds. Only a hook right after an edit waits this long.
pub(super) const SETTLE: Duration = Duration::from_millis(50);
/// Waits (at least [`SETTLE`] each: [`waits`]) before the 2nd, 3rd, ... attempt.
const BACKOFF_MS: [u64; 5] = [5, 10, 20, 40, 80];
/// How many times the files are read before a configuration that keeps changing is refused.
pub(super) const ATTEMPTS: usize = BACKOFF_MS.len() + 1;

/// The waits between attempts, in order: 280 ms in all (the README's "under 0.3 s"), so a
/// hook never stalls a container start for long whatever a writer does. The reads
/// themselves take what the machine gives them.
pub(super) fn waits() -> impl Iterator<Item = Duration> {
    BACKOFF_MS
        .iter()
        .map(|ms| Duration::from_millis(*ms).max(SETTLE))
}

/// An empty file is looked at again this much later: truncating a file makes it empty
/// before the kernel has freed its blocks and stamped the change (measured: a reader can
/// see size 0 with the old times), so an empty file may be one being rewritten.
const EMPTY_RECHECK: Duration = Duration::from_millis(5);

/// What one version of a file is: a write, a truncation, a `chmod` (ctime) or a
/// replacement (device and inode) changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    blocks: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            blocks: m.blocks(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    /// Changed within [`SETTLE`] of now, or stamped in the future (a clock set back): it
    /// may be between two writes.
    fn settling(&self, now: SystemTime) -> bool {
        let (secs, nanos) = self.ctime;
        let Ok(secs) = u64::try_from(secs) else {
            return false;
        };
        let changed = SystemTime::UNIX_EPOCH
            + Duration::from_secs(secs)
            + Duration::from_nanos(u64::try_from(nanos).unwrap_or(0));
        match now.duration_since(changed) {
            Ok(age) => age < SETTLE,
            Err(ahead) => ahead.duration() < SETTLE,
        }
    }
}

/// Why a file was not read.
#[derive(Debug)]
pub(super) enum ReadError {
    /// It changed while it was read, or moments before: everything is read again.
    Changed(PathBuf),
    /// It cannot be read as a configuration file: the reason says why and what to do,
    /// without the file's path, which the caller puts where its messages have it.
    Unreadable(String),
    /// Someone other than root could change it ([`trust`]); the reason as above.
    Untrusted(String),
}

/// Why one attempt at reading the configuration stopped.
#[derive(Debug)]
pub(super) enum Problem {
    Changed(PathBuf),
    Fatal(ConfigError),
}

impl From<ConfigError> for Problem {
    fn from(e: ConfigError) -> Problem {
        Problem::Fatal(e)
    }
}

/// The files of one attempt, as they were read, to hold against the paths at the end.
pub(super) struct Snapshot {
    /// Root reads only what only root can change ([`trust`]); anyone else is only reading.
    check_owners: bool,
    verdicts: Verdicts,
    seen: Vec<(PathBuf, Option<Stamp>)>,
}

/// Whether this process runs as root: the owner of `/proc/self` is its effective uid.
/// Without `/proc` the answer is yes, so that the checks are made rather than skipped.
pub(super) fn running_as_root() -> bool {
    match std::fs::metadata("/proc/self") {
        Ok(m) => m.uid() == 0,
        Err(_) => true,
    }
}

/// `attempt` on a fresh [`Snapshot`], again (after a short wait) while a file changed, and
/// the configuration's answer once every file it read is still what it read.
/// `check_owners`: hold every file to the trust rule (`trust.rs`).
pub(super) fn stable<T>(
    check_owners: bool,
    mut attempt: impl FnMut(&mut Snapshot) -> Result<T, Problem>,
) -> Result<T, ConfigError> {
    let started = Instant::now();
    let mut waits = waits();
    loop {
        let mut snapshot = Snapshot {
            check_owners,
            verdicts: Verdicts::default(),
            seen: Vec::new(),
        };
        let changed = match attempt(&mut snapshot).and_then(|v| snapshot.unchanged().map(|()| v)) {
            Ok(value) => return Ok(value),
            Err(Problem::Fatal(e)) => return Err(e),
            Err(Problem::Changed(path)) => path,
        };
        match waits.next() {
            Some(wait) => std::thread::sleep(wait),
            None => {
                return Err(ConfigError::Changed {
                    path: changed,
                    attempts: ATTEMPTS,
                    millis: started.elapsed().as_millis(),
                })
            }
        }
    }
}

/// The file a `--config` that is a symbolic link points to, so that `groups/` and
/// `user-overrides.yaml` are read beside the file, not beside the link. Any other path is
/// kept as given; a link that leads nowhere too (opening it then says so).
pub(super) fn resolve_main(path: &Path) -> PathBuf {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
        }
        _ => path.to_owned(),
    }
}

/// What kind of file a type is, for a message: anything but a regular file is refused.
fn type_name(m: &Metadata) -> Option<&'static str> {
    let t = m.file_type();
    Some(if t.is_file() {
        return None;
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    })
}

/// A file's bytes without the UTF-8 byte order mark some Windows editors put first (it would
/// otherwise become part of the first key or user name).
pub(super) fn without_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

impl Snapshot {
    /// The bytes of the file at `path`; `Ok(None)` when there is none.
    pub(super) fn read(&mut self, path: &Path, kind: Kind) -> Result<Option<Vec<u8>>, ReadError> {
        let refused = |e: std::io::Error| ReadError::Unreadable(e.to_string());
        let open_path = if self.check_owners {
            let reached = trust::reach(path).map_err(refused)?;
            trust::check_dirs(&reached, &mut self.verdicts, kind).map_err(ReadError::Untrusted)?;
            reached.file
        } else {
            path.to_owned()
        };
        let mut options = OpenOptions::new();
        options.read(true);
        // O_NONBLOCK: opening a FIFO must not wait for a writer; it is then refused by type.
        // O_NOFOLLOW: the path was resolved link by link for root, so a link here now is a
        // replacement since; O_NOCTTY: a terminal never becomes ours.
        let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
        if self.check_owners {
            flags |= libc::O_NOFOLLOW;
        }
        options.custom_flags(flags);
        let mut file = match options.open(&open_path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.seen.push((open_path, None));
                return Ok(None);
            }
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) && self.check_owners => {
                return Err(ReadError::Changed(path.to_owned()))
            }
            Err(e) => return Err(refused(e)),
        };
        let before = file.metadata().map_err(refused)?;
        if let Some(what) = type_name(&before) {
            return Err(ReadError::Unreadable(format!(
                "it is {what}, not a regular file; make it a regular text file"
            )));
        }
        if self.check_owners {
            trust::check_file(&open_path, &before, kind).map_err(ReadError::Untrusted)?;
        }
        let stamp = Stamp::of(&before);
        let cap = kind.cap();
        if stamp.size > cap {
            return Err(too_large(kind, stamp.size));
        }
        let bytes = read_capped(&mut file, stamp.size, cap).map_err(refused)?;
        if stamp.size == 0 {
            std::thread::sleep(EMPTY_RECHECK);
        }
        let after = file.metadata().map_err(refused)?;
        if Stamp::of(&after) != stamp
            || bytes.len() as u64 != stamp.size
            || stamp.settling(SystemTime::now())
            || (stamp.size == 0 && stamp.blocks > 0)
        {
            return Err(ReadError::Changed(path.to_owned()));
        }
        self.seen.push((open_path, Some(stamp)));
        Ok(Some(bytes))
    }

    /// Whether every path still names what was read from it (or still names nothing).
    fn unchanged(&self) -> Result<(), Problem> {
        for (path, stamp) in &self.seen {
            let now = match std::fs::metadata(path) {
                Ok(m) => Some(Stamp::of(&m)),
                Err(e) if e.kind() == ErrorKind::NotFound => None,
                Err(_) => return Err(Problem::Changed(path.clone())),
            };
            if now != *stamp {
                return Err(Problem::Changed(path.clone()));
            }
        }
        Ok(())
    }
}

fn too_large(kind: Kind, size: u64) -> ReadError {
    ReadError::Unreadable(format!(
        "it is {size} bytes, more than the {} MiB a {} may have (a file this large is not a DS01 configuration); point it at the right file",
        kind.cap() / MIB,
        kind.noun()
    ))
}

/// At most `cap` + 1 bytes, so that a file that grows while it is read costs no more.
fn read_capped(file: &mut File, size: u64, cap: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(usize::try_from(size.min(cap) + 1).unwrap_or(0));
    file.take(cap + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}
