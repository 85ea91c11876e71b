//! The one error type of the file backend, so that every message can say what was and was
//! not changed: an admin reading it must know whether the tree is as before.

use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Exit, ExitStatus};
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
    /// A symlink below `--root` (docs/rendering.md): refused before anything
    /// is read through it, so the whole run is.
    #[error("{} is a symlink (to {}); ds01-slices follows no symlink below --root {}, so that nothing it writes or removes can land outside it. Nothing was changed: replace it with a real directory, or pass --root the target itself", .link.display(), .target.display(), .root.display())]
    Symlink {
        root: PathBuf,
        link: PathBuf,
        target: PathBuf,
    },
    #[error("{} is not a directory; ds01-slices reads and writes drop-ins only through real directories below --root {}. Nothing was changed: replace it with a real directory and rerun", .path.display(), .root.display())]
    NotADirectory { root: PathBuf, path: PathBuf },
    /// A path of ours not below the root: a bug, refused rather than followed.
    #[error("internal error: {} is not below --root {}; nothing was changed: please report this", .path.display(), .root.display())]
    OutsideRoot { root: PathBuf, path: PathBuf },
    #[error(transparent)]
    State(#[from] StateError),
}

impl ExitStatus for RenderError {
    fn exit_code(&self) -> Exit {
        match self {
            RenderError::State(e) => e.exit_code(),
            _ => Exit::Failure,
        }
    }
}
