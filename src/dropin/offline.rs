//! The data of `verify --offline`: the [`TreePlan`] read as a report, one line per file a
//! render would look at, so that what the report calls drift is exactly what `render` would
//! change.

use std::path::PathBuf;

use serde::Serialize;

use super::decide::{FileAction, Shadow, TreePlan};
use super::format::{display_setting_value, property_for_setting};
use crate::model::names::SliceName;
use crate::model::property::Property;

/// `verify --offline`: one line per file that is not as the plan wants it.
#[derive(Debug, Clone, Serialize)]
pub struct FileCheck {
    pub slice: SliceName,
    pub path: PathBuf,
    pub status: FileStatus,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    Ok,
    Missing,
    Different,
    /// Written by the old generator: `render` takes it over.
    Legacy,
    Stale,
    /// Someone else's file stands where ours must go.
    Foreign,
    /// A D-Bus drop-in sets another value, and wins.
    Shadowed,
    /// Someone else's file on a slice that needs none: not drift, just noted.
    Ignored,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct OfflineCounts {
    pub files: usize,
    pub ok: usize,
    pub drift: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct OfflineReport {
    pub holds: bool,
    pub root: PathBuf,
    pub counts: OfflineCounts,
    pub files: Vec<FileCheck>,
}

pub fn offline_check(tp: &TreePlan) -> OfflineReport {
    let mut files = Vec::new();
    for f in &tp.files {
        let (status, detail) = match &f.action {
            FileAction::Unchanged => (FileStatus::Ok, None),
            FileAction::Create(_) => (FileStatus::Missing, None),
            FileAction::Update(_) => (
                FileStatus::Different,
                Some("content differs from the configuration".to_owned()),
            ),
            FileAction::TakeOver(_) => (
                FileStatus::Legacy,
                Some("written by the old generator; 'ds01-slices render' takes it over".to_owned()),
            ),
            FileAction::Remove(_) => (
                FileStatus::Stale,
                Some("the slice needs no file now".to_owned()),
            ),
            FileAction::Refuse { reason, .. } => (FileStatus::Foreign, Some(reason.clone())),
            FileAction::KeepForeign { reason } => (FileStatus::Ignored, Some(reason.clone())),
        };
        files.push(FileCheck {
            slice: f.slice.clone(),
            path: f.path.clone(),
            status,
            detail,
        });
    }
    for s in &tp.shadows {
        files.push(FileCheck {
            slice: s.slice.clone(),
            path: s.dbus_file.clone(),
            status: FileStatus::Shadowed,
            detail: Some(format!(
                "{}: {} ({}) shadows {} ({})",
                s.property,
                s.dbus_file.display(),
                display_setting_value(property_of(s), &s.dbus_value),
                s.rendered_file.display(),
                display_setting_value(property_of(s), &s.rendered_value),
            )),
        });
    }
    let drift = files
        .iter()
        .filter(|f| !matches!(f.status, FileStatus::Ok | FileStatus::Ignored))
        .count();
    let ok = files.iter().filter(|f| f.status == FileStatus::Ok).count();
    OfflineReport {
        holds: drift == 0,
        root: tp.root.clone(),
        counts: OfflineCounts {
            files: files.len(),
            ok,
            drift,
        },
        files,
    }
}

fn property_of(s: &Shadow) -> Property {
    property_for_setting(s.property).unwrap_or(Property::MemoryMax)
}
