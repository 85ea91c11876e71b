//! `doctor`: one screen of findings, each with its fix (or the report as JSON); exit 1 when
//! any finding means limits are not in force.

use std::fmt::Write as _;

use super::args::Globals;
use super::exit::CliResult;
use super::out;
use crate::error::Exit;
use crate::ops::doctor::judge::Status;
use crate::ops::doctor::{self, DoctorReport, Options};

pub async fn doctor(globals: &Globals) -> CliResult {
    let report = doctor::doctor(Options {
        config: &globals.config,
        cgroup_root: &globals.cgroup_root,
        root: &globals.root,
        state_dir: &globals.state_dir,
        bus: globals.bus.as_deref(),
        timeout: globals.timeout(),
    })
    .await;
    if globals.json {
        out::json(&report)?;
    } else {
        out::stdout(&text(&report))?;
    }
    Ok(if report.in_force {
        Exit::Ok
    } else {
        Exit::Failure
    })
}

/// Width of the check names' column.
const CHECK_WIDTH: usize = 12;

pub fn text(report: &DoctorReport) -> String {
    let mut out = String::new();
    for f in &report.findings {
        let status = match f.status {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Fail => "FAIL",
        };
        let _ = writeln!(
            out,
            "{status:<8} {:<CHECK_WIDTH$} {}",
            f.check.name(),
            f.found
        );
        if let Some(fix) = &f.fix {
            let _ = writeln!(out, "{:<8} {:<CHECK_WIDTH$} fix: {fix}", "", "");
        }
    }
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let verdict = if report.in_force {
        "the configured limits can be enforced here"
    } else {
        "limits are NOT in force as configured"
    };
    let _ = writeln!(
        out,
        "\n{}, {}: {verdict}",
        plural(report.failures, "failure"),
        plural(report.warnings, "warning")
    );
    out
}
