//! The file backend's side of `apply` taking a rendered host over: which rendered files it
//! must first hide from its reads (so that D-Bus gets every value they hold), and their
//! removal once it does. `ops::take_over` does the hiding.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::commit::{remove_dir_if_empty, remove_if_present, sync_dir};
use super::error::RenderError;
use super::format::{parse_assignments, relative_path};
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
    let scan = scan(root)?;
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
/// Someone else's file is left alone. Returns the files removed.
pub fn take_over_rendered(root: &Path, slices: &[SliceName]) -> Result<Vec<PathBuf>, RenderError> {
    let mut removed = Vec::new();
    let mut dirs_removed = Vec::new();
    for slice in slices {
        let path = root.join(relative_path(slice));
        let Some(found) = read_found(&path)? else {
            continue;
        };
        if found.odd.is_some() || !found.provenance.is_ours() {
            continue;
        }
        if remove_if_present(&path)? {
            sync_dir(parent(&path))?;
            remove_dir_if_empty(parent(&path), &mut dirs_removed);
            removed.push(path);
        }
    }
    Ok(removed)
}
