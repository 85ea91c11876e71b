//! `verify`: the report as text or JSON; exit 3 when anything does not hold.

use std::fmt::Write as _;

use super::args::Globals;
use super::exit::CliResult;
use super::out;
use crate::config::Config;
use crate::error::Exit;
use crate::model::names::UserName;
use crate::model::property::Property;
use crate::ops::verify::{self, KernelCheck, Status, VerifyReport};
use crate::ops::{containers, Scope};

pub async fn verify(
    globals: &Globals,
    config: &Config,
    user: Option<&UserName>,
    json: bool,
) -> CliResult {
    let sd = globals.connect().await?;
    let ownership = globals.ownership();
    let mut report = verify::verify(
        &sd,
        config,
        Scope::from(user),
        &ownership,
        globals.kernel_root(),
    )
    .await?;
    match globals.remote_note() {
        // The drop-ins systemd names are files of the other machine.
        Some(note) => report.notes.push(note),
        None => verify::explain(&mut report, &globals.root),
    }
    let sources = containers::Sources::local(globals.kernel_root());
    let found = containers::find(&sd, config, Scope::from(user), sources).await;
    verify::account_containers(&mut report, found);
    out::notes(&report.notes);
    if json {
        out::json(&report)?;
    } else {
        out::stdout(&text(&report))?;
    }
    Ok(if report.holds { Exit::Ok } else { Exit::Drift })
}

fn text(report: &VerifyReport) -> String {
    let mut out = String::new();
    for s in &report.slices {
        let state = if s.active { "active" } else { "inactive" };
        let stale = if s.kept {
            format!(
                ", stale, still active: {}",
                super::apply::tasks_text(s.tasks)
            )
        } else if s.stale {
            ", stale: not in the configuration".to_owned()
        } else {
            String::new()
        };
        let _ = writeln!(out, "{} ({state}{stale})", s.slice);
        if let Some(e) = &s.error {
            let _ = writeln!(out, "    error    {e}");
        }
        for p in &s.properties {
            let setting = Property::from_bus_name(p.property)
                .map(|q| q.unit_setting())
                .unwrap_or(p.property);
            let line = match p.status {
                Status::Ok => format!("ok       {setting}={}", p.actual),
                Status::Drift => format!(
                    "drift    {setting}: expected {}, actual {}",
                    p.expected.as_deref().unwrap_or("-"),
                    p.actual
                ),
                Status::Missing => format!(
                    "missing  {setting}: expected {}, not set",
                    p.expected.as_deref().unwrap_or("-")
                ),
                Status::Stale => format!(
                    "stale    {setting}={} still in force{}",
                    p.actual,
                    if p.owned {
                        ""
                    } else {
                        " (not set by ds01-slices: left alone by apply)"
                    }
                ),
                Status::KernelMismatch => format!(
                    "kernel   {setting}: systemd holds {}, the kernel does not",
                    p.actual
                ),
                Status::KernelUnreadable => format!(
                    "unread   {setting}={}: the kernel's file could not be read to confirm it",
                    p.actual
                ),
                Status::Kept => format!(
                    "kept     {setting}={} until the slice's jobs end (then apply lifts it)",
                    p.actual
                ),
            };
            let kernel = match &p.kernel {
                Some(KernelCheck {
                    status: "ok",
                    value: Some(v),
                    ..
                }) => format!("  [kernel {v}]"),
                Some(KernelCheck {
                    status,
                    value,
                    file,
                    detail,
                }) => format!(
                    "  [kernel: {status}{}{}{}]",
                    value.as_ref().map(|v| format!(" {v}")).unwrap_or_default(),
                    file.as_ref()
                        .map(|f| format!(" in {f}"))
                        .unwrap_or_default(),
                    detail
                        .as_ref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                ),
                None => String::new(),
            };
            let source = p
                .source
                .as_ref()
                .map(|f| format!("  (from {f})"))
                .unwrap_or_default();
            let _ = writeln!(out, "    {line}{kernel}{source}");
        }
        for sh in &s.shadowed {
            let _ = writeln!(out, "    conflict {sh}");
        }
    }
    if let Some(found) = &report.containers {
        out.push_str(&super::containers::section(found));
    }
    let c = &report.counts;
    let _ = writeln!(
        out,
        "{}: {} slices, {} ok, {} drift, {} missing, {} stale, {} kernel mismatches, {} errors",
        if report.holds {
            "all limits hold"
        } else {
            "DRIFT"
        },
        c.slices,
        c.ok,
        c.drift,
        c.missing,
        c.stale,
        c.kernel_mismatch,
        c.errors
    );
    // Appended, not inserted: scripts may parse the line above.
    let mut extra = Vec::new();
    if c.kernel_unreadable > 0 {
        extra.push(format!("{} kernel values unreadable", c.kernel_unreadable));
    }
    if c.kept > 0 {
        extra.push(format!("{} stale limits kept while their jobs run", c.kept));
    }
    if c.outside_containers > 0 {
        extra.push(if c.outside_containers == 1 {
            "1 container outside its user's slice (no per-user limit holds for it)".to_owned()
        } else {
            format!(
                "{} containers outside their user's slice (no per-user limit holds for them)",
                c.outside_containers
            )
        });
    }
    if !extra.is_empty() {
        out.truncate(out.trim_end().len());
        let _ = writeln!(out, ", {}", extra.join(", "));
    }
    if c.contradictions > 0 {
        out.truncate(out.trim_end().len());
        let _ = writeln!(
            out,
            ", {} contradicting drop-ins (a rendered value shadowed by a D-Bus one: run 'ds01-slices render' or 'ds01-slices apply' to settle on one)",
            c.contradictions
        );
    }
    out
}
