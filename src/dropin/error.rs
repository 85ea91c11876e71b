//! The one error type of the file backend, so that every message can say what was and was
//! not changed: an admin reading it must know whether the tree is as before.

use std::io;
use std::path::{Path, PathBuf};

use crate::state::StateError;

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
