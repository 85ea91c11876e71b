//! Failures of the file system under render (read-only, full), each in a private mount
//! namespace: the file is named, and nothing partial or temporary is left.

use std::fs;
use std::process::{Command, Stdio};

use super::{contents, golden, show_diff, tree, Offline, DROP_IN};
use crate::support::{clear_tool_env, main_file, skip, Run, BIN, EXAMPLE, PRODUCTION};

/// Root and `unshare` are needed to mount in a private namespace. Skips like the sandbox
/// harness: a printed SKIPPED, or a panic under CI=true or DS01_REQUIRE_SYSTEMD=1.
fn mount_namespaces_or_skip() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let unshare = Command::new("unshare")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let reason = match (root, unshare) {
        (false, _) => "not root (mounting needs it)",
        (_, false) => "no unshare on PATH",
        _ => return true,
    };
    skip("a private mount namespace", reason)
}

/// Runs `script` (sh, with $BIN, $ROOT, $STATE, $OUT and the configs set) in a private mount
/// namespace: whatever it mounts is gone when it exits, so nothing can stay mounted.
fn in_mount_namespace(s: &Offline, script: &str) -> Run {
    let out = Run::of(
        clear_tool_env(&mut Command::new("unshare"))
            .args(["--mount", "--propagation", "private", "sh", "-c", script])
            // libmount creates its utab's directory (/run/mount) on every mount, and /run is
            // the machine's here: point it where no directory can be made.
            .env("LIBMOUNT_UTAB", "/proc/ds01-no-utab/utab")
            .env("BIN", BIN)
            .env("ROOT", s.root())
            .env("STATE", s.state())
            .env("OUT", s.path().join("out"))
            .env("EXAMPLE", main_file(EXAMPLE))
            .env("PRODUCTION", main_file(PRODUCTION))
            .stdin(Stdio::null()),
    );
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(&s.path().display().to_string()),
        "a mount was left behind:\n{mounts}"
    );
    out
}

#[test]
fn a_read_only_directory_fails_with_the_file_named_and_nothing_left() {
    if !mount_namespaces_or_skip() {
        return;
    }
    let s = Offline::new("ro", EXAMPLE);
    s.run(None, &["render"])
        .assert_code(0, "render before the directory turns read-only");
    let before = tree(&s.root());
    let out = in_mount_namespace(
        &s,
        r#"mount --bind "$ROOT" "$ROOT" && mount -o remount,bind,ro "$ROOT" || exit 99
"$BIN" --config "$PRODUCTION" --root "$ROOT" --state-dir "$STATE" render
echo "rc=$?""#,
    );
    let Run {
        code,
        stdout,
        stderr,
    } = out;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("rc=1"), "{stdout}\n{stderr}");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    let named = stderr
        .lines()
        .find_map(|l| l.strip_prefix("ds01-slices: error: cannot write "))
        .and_then(|l| l.split(": ").next())
        .unwrap_or_default();
    assert!(
        named.starts_with(&s.root().display().to_string()) && named.ends_with(DROP_IN),
        "the error names the file: {stderr}"
    );
    assert_eq!(tree(&s.root()), before, "a failed render changed the tree");

    // A read-only, empty root: the file that could not be created is named too.
    let empty = Offline::new("ro-empty", EXAMPLE);
    let out = in_mount_namespace(
        &empty,
        r#"mount --bind "$ROOT" "$ROOT" && mount -o remount,bind,ro "$ROOT" || exit 99
"$BIN" --config "$EXAMPLE" --root "$ROOT" --state-dir "$STATE" render
echo "rc=$?""#,
    );
    let Run { stdout, stderr, .. } = out;
    assert!(stdout.contains("rc=1"), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot write {}",
            empty
                .root()
                .join("etc/systemd/system/ds01.slice.d")
                .join(DROP_IN)
                .display()
        )),
        "{stderr}"
    );
    assert!(tree(&empty.root()).is_empty());
}

#[test]
fn a_full_file_system_fails_with_the_file_named_and_nothing_partial_or_temporary_left() {
    if !mount_namespaces_or_skip() {
        return;
    }
    let s = Offline::new("full", EXAMPLE);
    // 64 KiB holds the example's 13 files (a page each) but not the production's changes on
    // top of them. The tree is copied out before the namespace (and its tmpfs) goes.
    let out = in_mount_namespace(
        &s,
        r#"mount -t tmpfs -o size=64k,mode=755 ds01-render-test "$ROOT" || exit 99
"$BIN" --config "$EXAMPLE" --root "$ROOT" --state-dir "$STATE" render >/dev/null
echo "first=$?"
"$BIN" --config "$PRODUCTION" --root "$ROOT" --state-dir "$STATE" render
echo "second=$?"
mkdir -p "$OUT" && cp -a "$ROOT/." "$OUT/""#,
    );
    let Run {
        code,
        stdout,
        stderr,
    } = out;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("first=0"), "{stdout}\n{stderr}");
    assert!(stdout.contains("second=1"), "{stdout}\n{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot write {}", s.root().display())),
        "{stderr}"
    );
    assert!(stderr.contains(DROP_IN), "{stderr}");
    // Exactly the first render's files: none half-written, no temporary file, no new dir.
    let after = contents(&s.path().join("out"));
    assert!(
        after == contents(&golden("example")),
        "{}",
        show_diff(&contents(&golden("example")), &after)
    );
    let dirs: Vec<String> = tree(&s.path().join("out"))
        .into_iter()
        .filter(|(_, (dir, ..))| *dir)
        .map(|(p, _)| p)
        .filter(|p| p.matches('/').count() == 4)
        .collect();
    assert_eq!(dirs.len(), 13, "only the example's slice dirs: {dirs:?}");
}
