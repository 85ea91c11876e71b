//! What the tool keeps on disk under `--state-dir`: the ownership records (which properties
//! it set on which slice), the writer lock, and the hook's cache of the last validated
//! configuration. Every write goes through [`crate::atomic`].

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
}

impl ExitStatus for StateError {
    fn exit_code(&self) -> Exit {
        Exit::Failure
    }
}
