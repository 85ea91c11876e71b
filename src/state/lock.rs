//! The writer lock: apply, render and hooks that write take it, so that two writers never
//! interleave their records and calls. Readers (verify, plan, a hook whose slice is already
//! right) never lock.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

use super::StateError;

/// Holds the exclusive writer lock until dropped (the kernel releases it with the file, also
/// when the process dies).
#[derive(Debug)]
pub struct WriterLock {
    _file: File,
}

/// Blocks until no other ds01-slices writer holds `path`.
pub fn lock(path: &Path) -> Result<WriterLock, StateError> {
    let err = |source: io::Error| StateError::Lock {
        path: path.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(err)?;
    file.lock().map_err(err)?;
    Ok(WriterLock { _file: file })
}
