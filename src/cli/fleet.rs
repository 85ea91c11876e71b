//! `fleet`: the hosts' results as one table, or one JSON document; the worst exit code.

use std::time::Duration;

use super::args::{FleetAction, FleetArgs, Globals};
use super::exit::CliResult;
use super::{out, remote};
use crate::error::UsageError;
use crate::model::fleet::{self, FleetCommand, HostResult};
use crate::ops::fleet::{self as run, FleetOptions, FleetReport, SshRunner};

pub fn fleet(globals: &Globals, action: &FleetAction) -> CliResult {
    let (args, command, dry_run) = match action {
        FleetAction::Apply { fleet, dry_run } => (fleet, FleetCommand::Apply, *dry_run),
        FleetAction::Verify { fleet } => (fleet, FleetCommand::Verify, false),
        FleetAction::Status { fleet } => (fleet, FleetCommand::Status, false),
    };
    let FleetArgs {
        hosts,
        parallel,
        host_timeout,
        remote_bin,
    } = args;
    fleet::check_remote_bin(remote_bin).map_err(UsageError)?;
    let hosts = run::read_hosts_file(hosts)?;
    let opts = FleetOptions {
        command,
        dry_run,
        parallel: usize::from(*parallel),
        host_timeout: Duration::from_secs(*host_timeout),
    };
    let runner = SshRunner::new(remote::ssh_program(), opts.host_timeout);
    let remote_args = run::remote_command(remote_bin, &opts);
    let report = super::setup::async_runtime()?.block_on(async {
        // Each host's ssh runs in a process group of its own, out of reach of a terminal's
        // Ctrl-C: a signal that ends the fleet kills them first.
        let signals = remote::exit_on_signals();
        let report = run::fleet(&runner, &hosts, &remote_args, opts).await;
        signals.abort();
        report
    });
    if globals.json {
        out::json(&report)?;
    } else {
        out::stdout(&table(&report))?;
    }
    for h in report.hosts.iter().filter(|h| h.exit != 0) {
        out::say(&format!(
            "{}: {}{}",
            h.host,
            h.result,
            h.error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
    }
    Ok(report.exit_code())
}

/// One line a host: host, result, counts, error; columns as wide as their widest cell.
fn table(report: &FleetReport) -> String {
    let rows: Vec<[String; 4]> = report.hosts.iter().map(row).collect();
    let header = ["HOST", "RESULT", "COUNTS", "ERROR"].map(String::from);
    let mut widths = [0; 3];
    for r in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for r in std::iter::once(&header).chain(&rows) {
        let line = format!(
            "{:w0$}  {:w1$}  {:w2$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        text.push_str(line.trim_end());
        text.push('\n');
    }
    let failed = report.hosts.iter().filter(|h| h.exit != 0).count();
    text.push_str(&format!(
        "{}{}: {} hosts, {} not ok (exit {})\n",
        report.command.name(),
        if report.dry_run { " --dry-run" } else { "" },
        report.hosts.len(),
        failed,
        report.exit
    ));
    text
}

fn row(h: &HostResult) -> [String; 4] {
    [
        h.host.to_string(),
        h.result.clone(),
        fleet::counts_text(&h.summary),
        h.error.clone().unwrap_or_default(),
    ]
}
