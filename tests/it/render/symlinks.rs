//! A symlink below `--root` (issue 13, item 6): every directory from the root down to a file
//! that render reads, writes or removes must be a real directory, or a render, a dry run,
//! `apply --backend files` and `verify --offline` refuse the whole run and change nothing,
//! neither inside the root nor where the link points. The root itself may be a symlink.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use super::{contents, golden, tree, Offline, ALICE};
use crate::support::EXAMPLE;

/// The directories a render goes through, each made a symlink in one case.
const LINKS: &[&str] = &[
    "etc",
    "etc/systemd",
    "etc/systemd/system",
    "etc/systemd/system/ds01-student-alice.slice.d",
    "etc/systemd/system.control",
    "etc/systemd/system.control/ds01-student-alice.slice.d",
    "run",
    "run/systemd",
    "run/systemd/system.control",
];

/// The commands that read the tree; the first two would also change it.
const COMMANDS: &[&[&str]] = &[
    &["render"],
    &["apply", "--backend", "files"],
    &["render", "--dry-run"],
    &["verify", "--offline"],
];

const DBUS_HEADER: &str = "# This is a drop-in unit file extension, created via \"systemctl set-property\"\n# or an equivalent operation. Do not edit.\n[Slice]\n";

/// `s` with `link` (relative to its root) a symlink to `outside/`, and a D-Bus drop-in that
/// the ownership record says is ours, which a render would remove: in `outside/` when the
/// link leads to it, else in the root. Returns the outside directory.
fn linked(s: &Offline, link: &str) -> std::path::PathBuf {
    let outside = s.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let control = if link.starts_with("run") {
        "run/systemd/system.control"
    } else {
        "etc/systemd/system.control"
    };
    let drop_in = format!("{control}/{ALICE}.d/50-MemoryMax.conf");
    let placed = match Path::new(&drop_in).strip_prefix(link) {
        Ok(rest) => outside.join(rest),
        Err(_) => s.root().join(&drop_in),
    };
    fs::create_dir_all(placed.parent().unwrap()).unwrap();
    fs::write(&placed, format!("{DBUS_HEADER}MemoryMax=1\n")).unwrap();
    fs::create_dir_all(s.state().join("owned")).unwrap();
    fs::write(s.state().join("owned").join(ALICE), "MemoryMax\n").unwrap();
    let at = s.root().join(link);
    fs::create_dir_all(at.parent().unwrap()).unwrap();
    symlink(&outside, &at).unwrap();
    outside
}

#[test]
fn a_symlinked_directory_below_the_root_refuses_the_whole_run_and_changes_nothing() {
    // Every case is run and every miss listed, so that one failure does not hide the others.
    let mut misses = Vec::new();
    for link in LINKS {
        for args in COMMANDS {
            let s = Offline::new("symlink", EXAMPLE);
            let outside = linked(&s, link);
            // The writer lock in the state directory may be taken; the records must not change.
            let records = s.state().join("owned");
            let (root_before, outside_before, records_before) =
                (tree(&s.root()), tree(&outside), tree(&records));
            let what = format!("{} with {link} a symlink", args.join(" "));
            let run = s.run(None, args);
            let named = format!(
                "{} is a symlink (to {})",
                s.root().join(link).display(),
                outside.display()
            );
            let checks = [
                (run.code == Some(1), "exit 1"),
                (run.stderr.contains(&named), "the link and its target named"),
                (
                    run.stderr.contains(
                        "replace it with a real directory, or pass --root the target itself",
                    ),
                    "the fix named",
                ),
                (
                    run.stderr.contains("Nothing was changed"),
                    "nothing changed, said",
                ),
                (run.stdout.is_empty(), "no file listed"),
                (tree(&outside) == outside_before, "outside unchanged"),
                (tree(&s.root()) == root_before, "the root unchanged"),
                (tree(&records) == records_before, "the records unchanged"),
            ];
            let failed: Vec<&str> = checks.iter().filter(|(ok, _)| !ok).map(|c| c.1).collect();
            if !failed.is_empty() {
                misses.push(format!("{what}: not {}\n{run}", failed.join(", not ")));
            }
        }
    }
    assert!(
        misses.is_empty(),
        "{} of {} cases:\n{}",
        misses.len(),
        LINKS.len() * COMMANDS.len(),
        misses.join("\n")
    );
}

/// Also a link that stays inside the root: ds01-slices follows none, wherever it leads.
#[test]
fn a_symlink_within_the_root_is_refused_too() {
    let s = Offline::new("symlink-within", EXAMPLE);
    let real = s.root().join("usr/lib/systemd/system");
    fs::create_dir_all(&real).unwrap();
    fs::create_dir_all(s.root().join("etc/systemd")).unwrap();
    symlink(
        "../../usr/lib/systemd/system",
        s.root().join("etc/systemd/system"),
    )
    .unwrap();
    let before = tree(&s.root());
    let stderr = s
        .run(None, &["render"])
        .assert_code(1, "render with etc/systemd/system linked within the root")
        .stderr;
    assert!(
        stderr.contains(&format!(
            "{} is a symlink (to ../../usr/lib/systemd/system)",
            s.root().join("etc/systemd/system").display()
        )),
        "{stderr}"
    );
    assert_eq!(tree(&s.root()), before);
}

/// A file where a directory must be is refused the same way, with the file named.
#[test]
fn a_file_where_a_directory_must_be_refuses_the_whole_run() {
    let s = Offline::new("not-a-dir", EXAMPLE);
    fs::create_dir_all(s.root().join("etc")).unwrap();
    fs::write(s.root().join("etc/systemd"), "").unwrap();
    let before = tree(&s.root());
    for args in COMMANDS {
        let stderr = s.run(None, args).assert_code(1, args.join(" ")).stderr;
        assert!(
            stderr.contains(&format!(
                "{} is not a directory",
                s.root().join("etc/systemd").display()
            )),
            "{stderr}"
        );
        assert_eq!(tree(&s.root()), before);
    }
}

/// `--root` itself is the admin's choice: a symlink there is followed, once.
#[test]
fn the_root_itself_may_be_a_symlink() {
    let s = Offline::new("symlink-root", EXAMPLE);
    let real = s.path().join("real-root");
    fs::create_dir_all(&real).unwrap();
    fs::remove_dir(s.root()).unwrap();
    symlink(&real, s.root()).unwrap();
    s.run(None, &["render"])
        .assert_code(0, "render with --root a symlink");
    assert_eq!(contents(&real), contents(&golden("example")));
    s.run(None, &["verify", "--offline"])
        .assert_code(0, "verify --offline with --root a symlink");
}
