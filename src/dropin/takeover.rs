//! The file backend's side of `apply` taking a rendered host over: which rendered files it
//! must first hide from its reads (so that D-Bus gets every value they hold), and their
//! removal once it does. `ops::take_over` does the hiding.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::commit::{remove_dir_if_empty, remove_if_present, sync_dir};
use super::error::RenderError;
use super::format::{parse_assignments, relative_path};
use super::root::Root;
use super::scan::{read_found, scan};
use crate::atomic::parent;
use crate::model::names::SliceName;
use crate::model::property::Property;

/// The rendered files `apply` will take over: slices with a file of ours (or the old
/// generator's) under `root` for which `wanted` holds, with the properties each file sets;
/// and the foreign files it leaves alone.
#[derive(Debug, Default)]
pub struct Rendered {
    pub files: BTreeMap<SliceName, BTreeSet<Property>>,
    pub foreign: Vec<PathBuf>,
}

pub fn find_rendered(
    root: &Path,
    wanted: impl Fn(&SliceName) -> bool,
) -> Result<Rendered, RenderError> {
    let scan = scan(&Root::open(root)?)?;
    let mut out = Rendered::default();
    for (slice, found) in scan.files {
        if !wanted(&slice) {
            continue;
        }
        match (
            &found.text,
            found.odd.is_none() && found.provenance.is_ours(),
        ) {
            (Some(text), true) => {
                let props = parse_assignments(text)
                    .into_iter()
                    .map(|(p, _)| p)
                    .collect();
                out.files.insert(slice, props);
            }
            _ => out.foreign.push(found.path),
        }
    }
    Ok(out)
}

/// Takes over a rendered host for `apply`: removes our (or the old generator's)
/// `10-resource-limits.conf` of each slice in `slices`, once D-Bus holds their values.
/// Someone else's file is left alone. Returns the files removed. A symlink on the way to any
/// of them refuses them all, before the first is removed.
pub fn take_over_rendered(root: &Path, slices: &[SliceName]) -> Result<Vec<PathBuf>, RenderError> {
    let tree = Root::open(root)?;
    // Everything is read (and its directories checked) before the first removal.
    let mut ours = Vec::new();
    for slice in slices {
        let path = root.join(relative_path(slice));
        if read_found(&tree, &path)?.is_some_and(|f| f.odd.is_none() && f.provenance.is_ours()) {
            ours.push(path);
        }
    }
    let mut removed = Vec::new();
    let mut dirs_removed = Vec::new();
    for path in ours {
        if remove_if_present(&path)? {
            sync_dir(parent(&path))?;
            remove_dir_if_empty(parent(&path), &mut dirs_removed);
            removed.push(path);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::dropin::format::{MARKER, UNIT_DIR};
    use crate::dropin::testutil::{all_files, TempRoot};

    /// `apply` taking over a tree whose `etc/systemd/system` is a symlink: found nothing to
    /// take over, removes nothing, and says which link.
    #[test]
    fn a_symlink_on_the_way_refuses_the_take_over() {
        let root = TempRoot::new("takeover-link");
        let outside = TempRoot::new("takeover-outside");
        let alice = SliceName::parse("ds01-student-alice.slice").unwrap();
        let file = outside
            .0
            .join(relative_path(&alice).strip_prefix(UNIT_DIR).unwrap());
        fs::create_dir_all(parent(&file)).unwrap();
        fs::write(&file, format!("{MARKER}\n[Slice]\nTasksMax=5\n")).unwrap();
        fs::create_dir_all(root.0.join("etc/systemd")).unwrap();
        symlink(&outside.0, root.0.join(UNIT_DIR)).unwrap();

        let link = root.0.join(UNIT_DIR).display().to_string();
        let err = find_rendered(&root.0, |_| true).unwrap_err();
        assert!(matches!(err, RenderError::Symlink { .. }), "{err}");
        assert!(err.to_string().starts_with(&link), "{err}");
        let err = take_over_rendered(&root.0, std::slice::from_ref(&alice)).unwrap_err();
        assert!(err.to_string().starts_with(&link), "{err}");
        assert_eq!(
            all_files(&outside.0),
            [
                "ds01-student-alice.slice.d/",
                "ds01-student-alice.slice.d/10-resource-limits.conf"
            ]
        );

        // Through real directories, the same file is taken over.
        fs::remove_file(root.0.join(UNIT_DIR)).unwrap();
        fs::rename(&outside.0, root.0.join(UNIT_DIR)).unwrap();
        let found = find_rendered(&root.0, |_| true).unwrap();
        assert_eq!(found.files.len(), 1);
        let removed = take_over_rendered(&root.0, &[alice]).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(all_files(&root.0.join(UNIT_DIR)), Vec::<String>::new());
    }
}
