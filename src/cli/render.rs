//! What `render` and `verify --offline` print.

use std::path::PathBuf;

use serde::Serialize;
use serde_json::json;

use super::args::Globals;
use super::exit::{CliError, CliResult};
use super::out;
use crate::config::Config;
use crate::dropin::{display_setting_value, property_for_setting};
use crate::dropin::{FileAction, FileStatus, OfflineReport};
use crate::error::Exit;
use crate::ops::reload_guard::{self, Reload};
use crate::ops::render::RenderReport;

#[derive(Debug, Serialize)]
struct FileLine {
    slice: String,
    path: PathBuf,
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

fn action_name(a: &FileAction) -> &'static str {
    match a {
        FileAction::Unchanged => "unchanged",
        FileAction::Create(_) => "create",
        FileAction::Update(_) => "update",
        FileAction::TakeOver(_) => "take_over",
        FileAction::Remove(_) => "remove",
        FileAction::Refuse { .. } => "refused",
        FileAction::KeepForeign { .. } => "ignored",
    }
}

/// The files written or to be written, then every file left alone and why; exit 1 when a
/// slice could not be rendered.
pub fn print(globals: &Globals, config: &Config, report: &RenderReport) -> CliResult {
    if !config.aggregate_limits {
        out::stderr("enforcement.aggregate_limits is false: no files are rendered; files ds01-slices rendered earlier are removed");
    }
    out::notes(&report.notes);
    print_files(globals, report)?;
    let tp = &report.tree;
    for f in &tp.files {
        match &f.action {
            FileAction::KeepForeign { reason } => {
                out::say(&format!("warning: {reason}: left alone"));
            }
            FileAction::Refuse { reason, .. } => out::say(&format!(
                "refused {}: {reason}; it was left alone and {} was not rendered: move it away (keeping what you need from it in another drop-in) and rerun",
                f.path.display(),
                f.slice
            )),
            _ => {}
        }
    }
    for s in tp.shadows.iter().filter(|s| !s.owned) {
        let human = |text: &str| match property_for_setting(s.property) {
            Some(p) => display_setting_value(p, text),
            None => text.to_owned(),
        };
        out::say(&format!(
            "warning: {} sets {}={}, which shadows {}={} in {}: it was not set by ds01-slices, so it stays; delete it if that value is not wanted (it stays in force until systemd's next reload: run 'systemctl daemon-reload' once no containers run in ds01 slices, or boot)",
            s.dbus_file.display(),
            s.property,
            human(&s.dbus_value),
            s.property,
            human(&s.rendered_value),
            s.rendered_file.display()
        ));
    }
    let refused = report.refused();
    if refused > 0 {
        out::say(&format!("{refused} slice(s) not rendered; the others were. Fix the cause and rerun: render converges."));
        return Ok(Exit::Failure);
    }
    Ok(Exit::Ok)
}

fn print_files(globals: &Globals, report: &RenderReport) -> Result<(), CliError> {
    let tp = &report.tree;
    let executed = &report.executed;
    let dry_run = report.dry_run;
    let reload = report.reload.as_deref();
    let unchanged = tp
        .files
        .iter()
        .filter(|f| f.action == FileAction::Unchanged)
        .count();
    let dbus: Vec<&PathBuf> = if dry_run {
        tp.dbus
            .iter()
            .filter(|d| d.recognised)
            .map(|d| &d.path)
            .collect()
    } else {
        executed.dbus_removed.iter().collect()
    };
    if globals.json {
        let files: Vec<FileLine> = tp
            .files
            .iter()
            .filter(|f| f.action != FileAction::Unchanged)
            .map(|f| FileLine {
                slice: f.slice.to_string(),
                path: f.path.clone(),
                action: action_name(&f.action),
                reason: match &f.action {
                    FileAction::Refuse { reason, .. } | FileAction::KeepForeign { reason } => {
                        Some(reason.clone())
                    }
                    _ => None,
                },
            })
            .collect();
        let value = json!({
            "root": tp.root,
            "dry_run": dry_run,
            "files": files,
            "unchanged": unchanged,
            "dbus_drop_ins_removed": dbus,
            "shadowed": tp.shadows.iter().filter(|s| !s.owned).collect::<Vec<_>>(),
            "reload": reload,
        });
        return out::json(&value);
    }
    let mut text = String::new();
    let mut written = 0;
    let mut removed = 0;
    for f in &tp.files {
        let line = match &f.action {
            FileAction::Create(_) => format!("+ {}", f.path.display()),
            FileAction::Update(_) => format!("~ {}", f.path.display()),
            FileAction::TakeOver(_) => {
                format!("~ {} (the old generator's: taken over)", f.path.display())
            }
            FileAction::Remove(_) => format!("- {} (stale)", f.path.display()),
            _ => continue,
        };
        if matches!(f.action, FileAction::Remove(_)) {
            removed += 1;
        } else {
            written += 1;
        }
        text.push_str(&line);
        text.push('\n');
    }
    for d in &dbus {
        text.push_str(&format!(
            "- {} (set over D-Bus by ds01-slices; it would shadow the rendered file)\n",
            d.display()
        ));
    }
    if dry_run {
        text.push_str(&format!(
            "dry run: would write {written} and remove {} files under {}; {unchanged} unchanged; nothing was changed\n",
            removed + dbus.len(),
            tp.root.display()
        ));
    } else if written + removed + dbus.len() == 0 {
        text.push_str(&format!(
            "nothing to do: {unchanged} rendered files under {} already as configured\n",
            tp.root.display()
        ));
    } else {
        text.push_str(&format!(
            "rendered: {written} written, {} removed, {unchanged} unchanged under {}\n",
            removed + dbus.len(),
            tp.root.display()
        ));
    }
    if let Some(r) = reload {
        text.push_str(r);
        text.push('\n');
    }
    out::stdout(&text)
}

/// `verify --offline`: a line per file that is not as the plan wants it, then the verdict.
pub fn print_offline(json: bool, report: &OfflineReport) -> CliResult {
    if json {
        out::json(report)?;
    } else {
        out::stdout(&offline_text(report))?;
    }
    Ok(if report.holds { Exit::Ok } else { Exit::Drift })
}

fn offline_text(report: &OfflineReport) -> String {
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

/// `daemon-reload`: the reload's outcome in one line; exit 1 when systemd was not reloaded.
pub async fn daemon_reload(globals: &Globals, allow_reload: bool) -> CliResult {
    let sd = crate::ops::render::connect_checked(globals.bus.as_deref(), globals.timeout()).await?;
    match reload_guard::reload(&sd, &globals.cgroup_root, allow_reload).await? {
        Reload::Done(what) => {
            out::say(&what);
            Ok(Exit::Ok)
        }
        Reload::Withheld(hazard) => {
            out::say(&format!(
                "systemd not reloaded: {hazard}. Run 'systemctl daemon-reload' once no containers run in ds01 slices (or 'ds01-slices daemon-reload --allow-reload' to reload anyway)"
            ));
            Ok(Exit::Failure)
        }
    }
}
