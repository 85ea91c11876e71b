//! The one way this tool replaces a file: the new content goes to a temporary file in the
//! same directory, is flushed to disk, renamed over the old name, and the directory is
//! flushed too. A reader sees the old file or the new one, never a part; a crash leaves at
//! most a hidden temporary file that no reader of ours (or systemd) takes for the real one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tempfile::NamedTempFile;

/// A file's new content, on disk under a temporary name in its final directory, not yet
/// visible under its own. Dropping it without [`Staged::commit`] removes it.
pub struct Staged {
    temp: NamedTempFile,
}

/// Writes `content` to a new temporary file in `dir`, named `<prefix>XXXXXX<suffix>`, with
/// mode 0644, flushed to disk.
pub fn stage(dir: &Path, prefix: &str, suffix: &str, content: &[u8]) -> io::Result<Staged> {
    let staged = stage_unflushed(dir, prefix, suffix, content)?;
    staged.temp.as_file().sync_all()?;
    Ok(staged)
}

fn stage_unflushed(dir: &Path, prefix: &str, suffix: &str, content: &[u8]) -> io::Result<Staged> {
    let mut temp = tempfile::Builder::new()
        .prefix(prefix)
        .suffix(suffix)
        .rand_bytes(8)
        .tempfile_in(dir)?;
    temp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))?;
    temp.write_all(content)?;
    Ok(Staged { temp })
}

impl Staged {
    /// Renames the staged file over `path` (in the same directory). The directory is not
    /// flushed here: a caller committing many files flushes each directory once
    /// ([`sync_dir`]).
    pub fn commit(self, path: &Path) -> io::Result<()> {
        self.temp.persist(path).map(drop).map_err(|e| e.error)
    }
}

/// Replaces `path` with `content` atomically and durably (file and directory flushed).
pub fn replace(path: &Path, content: &[u8]) -> io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    stage(parent(path), &format!(".{name}."), ".tmp", content)?.commit(path)?;
    sync_dir(parent(path))
}

/// Replaces `path` with `content` atomically but not yet durably: a crash of this process
/// leaves the old file or the new one; [`flush`] later (say, while a D-Bus call is on the
/// wire) makes the new one survive a crash of the machine too.
pub fn replace_now(path: &Path, content: &[u8]) -> io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    stage_unflushed(parent(path), &format!(".{name}."), ".tmp", content)?.commit(path)
}

/// Flushes files replaced by [`replace_now`], then their directory.
pub fn flush(dir: &Path, files: &[std::path::PathBuf]) -> io::Result<()> {
    for f in files {
        File::open(f)?.sync_all()?;
    }
    sync_dir(dir)
}

/// Flushes a directory's entries (new names, renames, removals) to disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory a path's file lives in (`/` for a bare name's root).
pub fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("/"))
}

/// Whether `name` is a temporary file [`stage`] made with `prefix` and `suffix`: such a file
/// is left only by a run that died before its commit, and is safe to remove.
pub fn is_staged_name(name: &str, prefix: &str, suffix: &str) -> bool {
    name.strip_prefix(prefix)
        .and_then(|n| n.strip_suffix(suffix))
        .is_some_and(|middle| {
            !middle.is_empty() && middle.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_leaves_only_the_new_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record");
        replace(&path, b"one\n").unwrap();
        replace(&path, b"two\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two\n");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "no temporary file is left");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }

    #[test]
    fn an_uncommitted_stage_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let staged = stage(dir.path(), ".x.", ".tmp", b"data").unwrap();
        let name = fs::read_dir(dir.path()).unwrap().flatten().next().unwrap();
        assert!(is_staged_name(
            name.file_name().to_str().unwrap(),
            ".x.",
            ".tmp"
        ));
        drop(staged);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(!is_staged_name(".x..tmp", ".x.", ".tmp"));
        assert!(!is_staged_name(".x.a/b.tmp", ".x.", ".tmp"));
    }
}
