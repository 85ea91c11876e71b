//! What `apply` prints: the plan-style diff, the summary line, and why anything failed.

use super::args::Globals;
use super::exit::CliResult;
use super::{out, render};
use crate::config::Config;
use crate::diff::{Change, ChangeKind};
use crate::error::Exit;
use crate::model::names::UserName;
use crate::model::values::MemoryLimit;
use crate::ops::apply::{self, ApplyOptions, ApplyReport};
use crate::ops::deploy::{self, DeployOptions, DeployReport, TakeOverReload};
use crate::ops::reload_guard::ACTIVATE;
use crate::ops::Scope;
use crate::systemd::BusStatsSnapshot;

pub async fn apply(
    globals: &Globals,
    config: &Config,
    user: Option<&UserName>,
    options: DeployOptions,
) -> CliResult {
    let opts = options.apply;
    if let Some(note) = globals.remote_note() {
        // `--host` is a dry run (cli::remote): the diff against that systemd, without this
        // machine's records or rendered files, which are not that host's.
        let sd = globals.connect().await?;
        let mut report =
            apply::apply(&sd, config, Scope::from(user), &globals.ownership(), opts).await?;
        // A change that only records a slice as ours is about this machine's records,
        // which are not that host's.
        report.changes.retain(|c| !c.sets.is_empty());
        report.notes.push(note);
        return print_report(globals, &report, opts, Some(sd.stats()));
    }
    let report = deploy::deploy(&globals.context(), config, user, options).await;
    match report? {
        DeployReport::Rendered { fallback, report } => {
            if let Some(why) = &fallback {
                out::say(&format!(
                    "{why}: rendering drop-in files under {} instead",
                    globals.root.display()
                ));
            }
            let exit = render::print(globals, config, &report)?;
            if fallback.is_some() && !opts.dry_run {
                out::say(&format!(
                    "rendered drop-in files instead of applying over D-Bus; {ACTIVATE}"
                ));
            }
            Ok(exit)
        }
        DeployReport::Dbus(d) => {
            if !config.aggregate_limits {
                out::stderr("enforcement.aggregate_limits is false: nothing to apply; limits ds01-slices set earlier are taken back");
            }
            for f in &d.foreign {
                out::say(&format!(
                    "warning: {} was not written by ds01-slices: left alone (values set over D-Bus override it)",
                    f.display()
                ));
            }
            let exit = print_report(globals, &d.apply, opts, Some(d.bus))?;
            if opts.dry_run && d.would_take_over > 0 {
                out::stderr(&format!(
                    "dry run: would remove {} rendered drop-in files under {} once their values are set over D-Bus",
                    d.would_take_over,
                    globals.root.display()
                ));
            }
            for f in &d.taken_over {
                out::say(&format!("removed {} (now set over D-Bus)", f.display()));
            }
            match &d.reload {
                Some(TakeOverReload::Done(what)) => out::say(what),
                Some(TakeOverReload::Withheld(hazard)) => out::say(&format!(
                    "systemd was not reloaded after the take-over: {hazard}. Nothing needs the reload: D-Bus holds every value the removed files held, and systemd lists them until its next reload or boot (rerun with --allow-reload to reload now)"
                )),
                None => {}
            }
            Ok(exit)
        }
    }
}

fn print_report(
    globals: &Globals,
    report: &ApplyReport,
    opts: ApplyOptions,
    bus: Option<BusStatsSnapshot>,
) -> CliResult {
    out::notes(&report.notes);
    let failed = !report.complete();
    if globals.json {
        let change_json = |c: &Change| {
            serde_json::json!({
                "slice": c.slice,
                "kind": c.kind,
                "set": c.sets.iter().map(|s| serde_json::json!({
                    "property": s.property.bus_name(),
                    "from": s.from,
                    "to": s.to,
                })).collect::<Vec<_>>(),
            })
        };
        out::json(&serde_json::json!({
            "dry_run": opts.dry_run,
            "slices_checked": report.slices_checked,
            "writes": report.writes,
            "changes": report.changes.iter().map(change_json).collect::<Vec<_>>(),
            "refused": report.refused.iter().map(change_json).collect::<Vec<_>>(),
            "failures": report.failures.iter().map(|(s, e)| serde_json::json!({"slice": s, "error": e})).collect::<Vec<_>>(),
            "kept": report.kept.iter().map(|(s, tasks)| serde_json::json!({"slice": s, "tasks": tasks})).collect::<Vec<_>>(),
            "bus": bus,
        }))?;
    } else {
        let mut text = changes_text(&report.changes);
        for (slice, tasks) in &report.kept {
            text.push_str(&format!(
                "  {slice} (stale, still active: {}; keeps its limits until they end)\n",
                tasks_text(*tasks)
            ));
        }
        let writing = report.changes.iter().filter(|c| c.writes()).count();
        if writing == 0 && !failed {
            text.push_str(&format!(
                "nothing to do: {} slices already as configured\n",
                report.slices_checked
            ));
        } else if opts.dry_run {
            text.push_str(&format!(
                "dry run: would write to {writing} of {} slices; nothing was changed\n",
                report.slices_checked
            ));
        } else {
            text.push_str(&format!(
                "applied: {} writes, {} slices checked\n",
                report.writes, report.slices_checked
            ));
        }
        out::stdout(&text)?;
    }
    for c in &report.refused {
        if let Some((usage, max)) = c.memory_below_usage {
            out::say(&format!(
                "refused {}: MemoryMax {} is below the {} it uses now; writing it would OOM-kill running jobs. Rerun with --force to apply anyway.",
                c.slice,
                MemoryLimit::Bytes(max),
                MemoryLimit::Bytes(usage)
            ));
        }
    }
    for (slice, error) in &report.failures {
        out::say(&format!("failed {slice}: {error}"));
    }
    if failed {
        out::say(&format!(
            "{} slice(s) failed, {} refused; the others were applied. Fix the cause and rerun: apply converges.",
            report.failures.len(),
            report.refused.len()
        ));
        return Ok(Exit::Failure);
    }
    Ok(Exit::Ok)
}

/// The plan-style diff: `+` new slice, `~` changed, `-` limits removed, in human units.
pub fn changes_text(changes: &[Change]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for c in changes {
        let mark = match c.kind {
            ChangeKind::New => '+',
            ChangeKind::Update => '~',
            ChangeKind::Remove => '-',
        };
        if c.sets.is_empty() {
            let _ = writeln!(
                out,
                "  {} (already as configured; now recorded as managed)",
                c.slice
            );
            continue;
        }
        let _ = writeln!(out, "{mark} {}", c.slice);
        for s in &c.sets {
            let setting = s.property.unit_setting();
            match c.kind {
                ChangeKind::New => {
                    let _ = writeln!(out, "    + {setting}={}", s.property.display(s.to));
                }
                _ => {
                    let _ = writeln!(
                        out,
                        "    ~ {setting} {} -> {}",
                        s.property.display(s.from),
                        s.property.display(s.to)
                    );
                }
            }
        }
    }
    out
}

/// `5 tasks`, or that the count is unknown.
pub fn tasks_text(tasks: Option<u64>) -> String {
    match tasks {
        Some(1) => "1 task".to_owned(),
        Some(n) => format!("{n} tasks"),
        None => "tasks unknown".to_owned(),
    }
}
