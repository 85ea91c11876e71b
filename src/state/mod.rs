//! What the tool keeps on disk under `--state-dir`: the ownership records (which properties
//! it set on which slice), the writer lock, and the hook's cache of the last validated
//! configuration. Every write goes through [`crate::atomic`].

pub mod cache;
pub mod lock;
pub mod ownership;

use std::path::PathBuf;

use crate::error::{Exit, ExitStatus};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/ds01-slices";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot use state directory {path}: {source}; it must be writable by root (pass --state-dir or set DS01_STATE_DIR to use another)")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read ownership record {path}: {source}; check its permissions (it must be readable by root), or remove it to forget what it records")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write ownership record {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot take the lock {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another ds01-slices {} has held the writer lock {path} for over {secs} s; nothing was changed. If it is stopped (Ctrl-Z), resume it (`kill -CONT`) or end it; if it is busy, retry later or raise --timeout", holder.map(|p| format!("(PID {p})")).unwrap_or_default())]
    Busy {
        path: PathBuf,
        holder: Option<u32>,
        secs: u64,
    },
}

impl ExitStatus for StateError {
    fn exit_code(&self) -> Exit {
        Exit::Failure
    }
}

/// What a directory such as `--state-dir` is on disk, looked at without following a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirFacts {
    Missing,
    Symlink { target: PathBuf },
    NotADirectory,
    Directory { uid: u32, gid: u32, mode: u32 },
    Unreadable(String),
}

/// Looks at `path` itself (`lstat`): a link there is reported, not followed.
pub fn inspect_dir(path: &std::path::Path) -> DirFacts {
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => DirFacts::Missing,
        Err(e) => DirFacts::Unreadable(e.to_string()),
        Ok(m) if m.file_type().is_symlink() => DirFacts::Symlink {
            target: std::fs::read_link(path).unwrap_or_default(),
        },
        Ok(m) if !m.is_dir() => DirFacts::NotADirectory,
        Ok(m) => DirFacts::Directory {
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode() & 0o7777,
        },
    }
}
