//! Scratch directories that are gone after the test, whether it passes or panics.

use std::fs;
use std::path::{Path, PathBuf};

/// A fresh directory `ds01-<label>-XXXXXX` under the temporary directory ($TMPDIR, which
/// .ci/run points under target/; .ci/hygiene reports any `ds01-*` left in /tmp), removed with
/// everything in it on drop.
pub struct Scratch(tempfile::TempDir);

impl Scratch {
    /// `label` is reduced to at most 40 ASCII letters, digits and dashes, so that paths in
    /// messages stay plain.
    pub fn new(label: &str) -> Scratch {
        Scratch::new_in(&std::env::temp_dir(), label)
    }

    /// [`Scratch::new`] under `parent` (for a test whose files another user must reach).
    pub fn new_in(parent: &Path, label: &str) -> Scratch {
        let label: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        let dir = tempfile::Builder::new()
            .prefix(&format!("ds01-{label}-"))
            .tempdir_in(parent)
            .unwrap_or_else(|e| panic!("cannot create a scratch directory for {label}: {e}"));
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.path().join(rel)
    }

    /// Writes `text` to `rel`, creating its parent directories.
    pub fn write(&self, rel: &str, text: &str) {
        write_file(&self.join(rel), text.as_bytes());
    }

    /// Creates the directory `rel` and returns its path.
    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.join(rel);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        p
    }
}

/// Writes `bytes` to `path`, creating its parent directories.
pub fn write_file(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{}: {e}", parent.display()));
    }
    fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Copies the tree `from` into `to` (created if missing): directories, and files with their
/// permissions.
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    for e in fs::read_dir(from)
        .unwrap_or_else(|e| panic!("{}: {e}", from.display()))
        .flatten()
    {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), &target).unwrap_or_else(|err| {
                panic!("{} -> {}: {err}", e.path().display(), target.display())
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_dirs_are_removed_even_on_panic() {
        let path = std::panic::catch_unwind(|| {
            let scratch = Scratch::new("panics");
            scratch.write("groups/student.members", "alice\n");
            scratch.mkdir("nested/dir");
            let path = scratch.path().to_path_buf();
            assert!(path.join("groups/student.members").is_file());
            std::panic::panic_any(path);
        })
        .expect_err("the closure panics")
        .downcast::<PathBuf>()
        .expect("the panic carries the path");
        assert!(!path.exists(), "{} was left behind", path.display());
    }
}
