//! What the tree tests of scan, decide and commit share: a scratch `--root`, a one-group
//! configuration, and the tree as a sorted list of names.

use std::fs;
use std::path::{Path, PathBuf};

use crate::config::{parse_texts, Config};

pub struct TempRoot(pub PathBuf);
impl TempRoot {
    pub fn new(label: &str) -> TempRoot {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "ds01-render-unit-{}-{}-{label}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&p).unwrap();
        TempRoot(p)
    }
}
impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn config(members: &str) -> Config {
    config_with("default_group: student\n", members)
}

pub fn config_with(head: &str, members: &str) -> Config {
    parse_texts(
        Path::new("/c/resource-limits.yaml"),
        &format!("{head}groups:\n  student:\n    aggregate: {{memory_max: 96G, tasks_max: 100}}\n"),
        &[("student", members)],
        None,
    )
    .unwrap()
}

pub fn all_files(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.push(format!("{}/", p.strip_prefix(base).unwrap().display()));
                walk(&p, base, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}
