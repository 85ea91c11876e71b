//! The rendered trees are byte-exact copies of the golden ones, a second render changes
//! nothing, and a dry run writes nothing.

use std::fs;

use serde_json::Value;

use super::{contents, golden, show_diff, tree, Offline, MARKER};
use crate::support::{copy_dir, EXAMPLE, PRODUCTION};

fn check_golden(name: &str, config: &str) {
    let s = Offline::new(name, config);
    let stdout = s
        .run(None, &["render"])
        .assert_code(0, "first render")
        .stdout;
    assert!(stdout.contains("rendered: "), "{stdout}");
    assert!(
        stdout.contains("not reloaded"),
        "a temporary root is not this host's: no reload\n{stdout}"
    );
    let rendered = contents(&s.root());
    if std::env::var_os("DS01_UPDATE_GOLDEN").is_some() {
        let _ = fs::remove_dir_all(golden(name));
        copy_dir(&s.root(), &golden(name));
        eprintln!("updated {}", golden(name).display());
        return;
    }
    let want = contents(&golden(name));
    assert!(
        !want.is_empty(),
        "no golden tree at {}",
        golden(name).display()
    );
    assert!(
        rendered == want,
        "{name}: rendered tree differs from {}:\n{}",
        golden(name).display(),
        show_diff(&want, &rendered)
    );
    for (rel, (dir, _, _, _, mode)) in tree(&s.root()) {
        let want_mode = if dir { 0o755 } else { 0o644 };
        assert_eq!(mode & 0o777, want_mode, "{rel}: mode {mode:o}");
    }
    for bytes in rendered.values() {
        assert!(bytes.starts_with(MARKER.as_bytes()));
    }

    // A second render changes nothing: same inodes (no rename over them), same mtimes.
    let before = tree(&s.root());
    let stdout = s
        .run(None, &["render"])
        .assert_code(0, "second render")
        .stdout;
    assert!(stdout.starts_with("nothing to do"), "{stdout}");
    assert!(
        !stdout.contains("reload"),
        "nothing changed, nothing to reload: {stdout}"
    );
    assert_eq!(tree(&s.root()), before, "the second render touched files");

    let stdout = s
        .run(None, &["verify", "--offline"])
        .assert_code(0, "verify --offline on a fresh render")
        .stdout;
    assert!(stdout.contains(", 0 drift"), "{stdout}");
}

#[test]
fn golden_example_is_byte_exact_and_a_second_render_changes_nothing() {
    check_golden("example", EXAMPLE);
}

#[test]
fn golden_production_is_byte_exact_and_a_second_render_changes_nothing() {
    check_golden("production", PRODUCTION);
}

#[test]
fn dry_run_writes_nothing_and_json_lists_every_file() {
    let s = Offline::new("dry", EXAMPLE);
    let stdout = s
        .run(None, &["render", "--dry-run"])
        .assert_code(0, "dry run")
        .stdout;
    assert!(
        stdout.contains("dry run: would write 13 and remove 0 files"),
        "{stdout}"
    );
    assert!(tree(&s.root()).is_empty(), "a dry run wrote something");
    let stdout = s
        .run(None, &["--json", "render", "--user", "alice"])
        .assert_code(0, "render --user --json")
        .stdout;
    let v: Value = serde_json::from_str(&stdout).unwrap();
    let files: Vec<&str> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["slice"].as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        [
            "ds01.slice",
            "ds01-student.slice",
            "ds01-student-alice.slice"
        ]
    );
    assert_eq!(contents(&s.root()).len(), 3);
}
