//! `verify --offline` as text: one line per file with its status first, so that a column of
//! statuses can be read (and grepped) at a glance, and a summary line last.

use crate::dropin::{FileStatus, OfflineReport};

pub fn render_offline_text(report: &OfflineReport) -> String {
    let mut out = String::new();
    for f in &report.files {
        let status = match f.status {
            FileStatus::Ok => "ok",
            FileStatus::Missing => "missing",
            FileStatus::Different => "differs",
            FileStatus::Legacy => "legacy",
            FileStatus::Stale => "stale",
            FileStatus::Foreign => "foreign",
            FileStatus::Shadowed => "shadowed",
            FileStatus::Ignored => "ignored",
        };
        out.push_str(&format!("{status:<9}{}", f.path.display()));
        if let Some(d) = &f.detail {
            out.push_str(&format!(": {d}"));
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "{}: {} files under {}, {} ok, {} drift\n",
        if report.holds {
            "rendered files match the configuration"
        } else {
            "DRIFT"
        },
        report.counts.files,
        report.root.display(),
        report.counts.ok,
        report.counts.drift
    ));
    out
}
