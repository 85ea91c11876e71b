//! Scratch directories that are gone after the test, whether it passes, panics or is killed.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// Removes, once the test process has ended however it ended, every scratch directory it
/// registered: their paths arrive one per line on stdin, a pipe whose write end only the test
/// process holds, so EOF means it is gone (a SIGKILL skips every drop). Directories dropped
/// normally are gone already. Retried for a while: a sandbox's processes, killed by their own
/// supervisor at the same moment, may still be writing into theirs.
const REAPER: &str = r#"
set -u
trap '' HUP INT TERM PIPE
dirs=
while IFS= read -r d; do dirs="$dirs$d
"; done
printf '%s' "$dirs" | while IFS= read -r d; do
    n=0
    while [ -e "$d" ] && [ $n -lt 20 ]; do
        rm -rf --one-file-system -- "$d" 2>/dev/null || sleep 0.5
        n=$((n + 1))
    done
done
"#;

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
        reap_when_killed(dir.path());
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

/// Hands `dir` to this process's reaper ([`REAPER`], started with the first scratch directory).
/// Without a reaper (it could not be started) a killed test leaves its directories, as before.
fn reap_when_killed(dir: &Path) {
    static PIPE: OnceLock<Option<Mutex<File>>> = OnceLock::new();
    let pipe = PIPE.get_or_init(|| start_reaper().map(Mutex::new));
    if let Some(pipe) = pipe {
        let mut pipe = pipe.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = writeln!(pipe, "{}", dir.display());
    }
}

fn start_reaper() -> Option<File> {
    let (read_end, write_end) = super::sandbox::cloexec_pipe().ok()?;
    Command::new("sh")
        .arg("-c")
        .arg(REAPER)
        .arg("ds01-scratch-reaper")
        .stdin(Stdio::from(read_end))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Out of the terminal's process group: a Ctrl-C of the test run must not stop it first.
        .process_group(0)
        .spawn()
        .ok()?;
    Some(File::from(write_end))
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

    /// What the killed process of the test below runs: only there (the variable), never alone.
    const KILLED_CHILD: &str = "DS01_SCRATCH_KILLED_CHILD";

    #[test]
    #[ignore = "run by scratch_dirs_are_removed_when_the_test_process_is_killed"]
    fn scratch_dir_of_a_process_about_to_be_killed() {
        if std::env::var_os(KILLED_CHILD).is_none() {
            return;
        }
        let scratch = Scratch::new("killed");
        scratch.mkdir("nested/dir");
        println!("scratch {}", scratch.path().display());
        std::thread::sleep(std::time::Duration::from_secs(300));
    }

    #[test]
    fn scratch_dirs_are_removed_when_the_test_process_is_killed() {
        let path = super::super::killed_after_saying(
            &format!(
                "{}::scratch_dir_of_a_process_about_to_be_killed",
                // The test's name as libtest knows it: its path without the crate's name.
                module_path!().split_once("::").unwrap().1
            ),
            KILLED_CHILD,
            "scratch ",
            std::time::Duration::from_secs(60),
        )
        .map(PathBuf::from)
        .expect("the child printed its scratch directory within 60 s");
        // A deadline for the reaper to see EOF and remove it; never how fast.
        super::super::wait_until(
            std::time::Duration::from_secs(60),
            "the scratch directory of a SIGKILLed test removed",
            || (!path.exists()).then_some(()),
        )
        .unwrap_or_else(|e| panic!("{e}: {} was left behind", path.display()));
    }
}
