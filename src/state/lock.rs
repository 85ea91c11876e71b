//! The writer lock: apply, render and hooks that write take it, so that two writers never
//! interleave their records and calls. Readers (verify, plan, a hook whose slice is already
//! right) never lock.
//!
//! The wait is bounded (by `--timeout`): a writer that is stopped (Ctrl-Z) or hung while
//! holding the lock must not block every container start forever. The holder's PID is kept in
//! the lock file, so that the error can name it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::StateError;

/// Holds the exclusive writer lock until dropped (the kernel releases it with the file, also
/// when the process dies).
#[derive(Debug)]
pub struct WriterLock {
    _file: File,
}

/// Takes the lock at `path`, waiting at most `wait` for another writer to finish.
pub fn lock(path: &Path, wait: Duration) -> Result<WriterLock, StateError> {
    let err = |source: io::Error| StateError::Lock {
        path: path.to_owned(),
        source,
    };
    // O_NONBLOCK | O_NOFOLLOW: a FIFO or a link in its place fails at once instead of
    // blocking every writer or locking some other file.
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .map_err(err)?;
    if !file.metadata().map_err(err)?.is_file() {
        return Err(err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file; remove it (ds01-slices makes a new one)",
        )));
    }
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(1);
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(StateError::Busy {
                    path: path.to_owned(),
                    holder: holder_of(&mut file),
                    secs: wait.as_secs(),
                })
            }
            Err(TryLockError::Error(e)) => return Err(err(e)),
        }
    }
    // Only the holder writes here; a holder that dies leaves its PID, which the next holder
    // overwrites.
    let pid = format!("{}\n", std::process::id());
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(pid.as_bytes()))
        .map_err(err)?;
    Ok(WriterLock { _file: file })
}

fn holder_of(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_waited_for_only_so_long_and_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let held = lock(&path, Duration::ZERO).unwrap();
        let started = Instant::now();
        let err = lock(&path, Duration::from_millis(200)).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(2));
        let text = err.to_string();
        assert!(
            text.contains(&format!("PID {}", std::process::id())),
            "{text}"
        );
        drop(held);
        lock(&path, Duration::ZERO).unwrap();
    }
}
