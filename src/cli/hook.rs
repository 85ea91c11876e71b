//! `hook pre-create`: its own small parser and path, since it runs before every container.

use std::time::Instant;

use super::args::{Globals, HookCli, HookCommand, HookOnly};
use super::exit::{CliError, CliResult};
use super::out;
use super::setup::{async_runtime, parse_user, remember_validated};
use crate::config;
use crate::error::{Exit, UsageError};
use crate::model::admission::{Policy, Request};
use crate::model::names::UserName;
use crate::ops;
use crate::ops::hook::HookError;
use crate::plan::HookTarget;
use crate::state::cache;
use crate::systemd::{BusSystemd, WriteMode, SYSTEM_BUS_ADDRESS};
use crate::trace;

/// The hook's command line, or `None` for anything else (other commands, `--help`, a usage
/// error), which the full parser then parses and reports.
pub fn parse() -> Option<HookCli> {
    HookCli::parse_hook()
}

pub fn run(cli: HookCli) -> CliResult {
    let HookOnly::Hook(command) = cli.command;
    run_hook(&cli.globals, &command)
}

pub fn run_hook(globals: &Globals, command: &HookCommand) -> CliResult {
    if let Some(host) = &globals.host {
        return Err(super::remote::refusal(
            host,
            "a hook writes and admits containers on this machine",
        )
        .into());
    }
    let HookCommand::PreCreate {
        user,
        runtime,
        memory,
        pids,
        strict,
    } = command;
    let runtime = *runtime;
    let admission = (
        Request::from_docker(*memory, *pids),
        if *strict {
            Policy::Strict
        } else {
            Policy::Allow
        },
    );
    let t = Instant::now();
    let user = parse_user(user)?;
    let as_root = config::checks_trust();
    if !as_root {
        system_bus_only(globals)?;
    }
    let (target, record) = hook_config(globals, &user, as_root)?;
    let t = trace::phase("hook: load configuration", t);
    let rt = async_runtime()?;
    let sd = rt.block_on(BusSystemd::connect(
        globals.bus.as_deref(),
        globals.timeout(),
    ))?;
    trace::phase("hook: connect", t);
    let mode = if runtime {
        WriteMode::Runtime
    } else {
        WriteMode::Persistent
    };
    // A new record of the configuration is written (and flushed) while the hook's calls are
    // on the wire: `join` polls the hook first, which sends them.
    let (exit, ()) = rt.block_on(async {
        tokio::join!(
            hook_command(globals, &sd, &target, mode, admission),
            async { remember_validated(&globals.ownership(), record) }
        )
    });
    // The process ends right after this and the kernel closes the socket: shutting the
    // runtime and connection down cost a hook ~0.2 ms for nothing.
    std::mem::forget((sd, rt));
    exit
}

/// What the configuration says about `user`. The answer of a full validation whose files are
/// all unchanged (same digest of every file) is taken from its record; any change to any file
/// means a full validation, as for every command.
/// Also returns the record to keep, when the configuration was validated in full.
///
/// Run by a user other than root, the hook neither reads nor keeps a record: the state
/// directory is the caller's to name, and a record written there could answer anything for
/// the user (a full validation instead, whose files are root's: [`cache::for_hook`]).
fn hook_config(
    globals: &Globals,
    user: &UserName,
    as_root: bool,
) -> Result<(HookTarget, Option<String>), CliError> {
    let record = as_root
        .then(|| globals.ownership().validated_config())
        .flatten();
    let (target, keep) = cache::for_hook(&globals.config, record.as_deref(), user)?;
    Ok((target, keep.filter(|_| as_root)))
}

/// A hook run by a user other than root talks to systemd on the system bus only: a bus of the
/// caller's choosing (`--bus`, DBUS_SYSTEM_BUS_ADDRESS) could answer anything about the
/// user's slice (limits in force that are not, no memory in use).
fn system_bus_only(globals: &Globals) -> Result<(), UsageError> {
    let system = [
        SYSTEM_BUS_ADDRESS.to_owned(),
        SYSTEM_BUS_ADDRESS.replacen("/run/", "/var/run/", 1),
    ];
    match &globals.bus {
        Some(address) if !system.contains(address) => Err(UsageError(format!(
            "a hook run by a user other than root talks only to the system bus ({SYSTEM_BUS_ADDRESS}), not to {address} (--bus or DBUS_SYSTEM_BUS_ADDRESS): another bus could answer anything about the user's limits; unset it, or run the hook as root"
        ))),
        _ => Ok(()),
    }
}

async fn hook_command(
    globals: &Globals,
    sd: &BusSystemd,
    target: &HookTarget,
    mode: WriteMode,
    admission: (Request, Policy),
) -> CliResult {
    let t = Instant::now();
    let ownership = globals.ownership();
    let opts = ops::hook::HookOptions {
        mode,
        cgroup_root: &globals.cgroup_root,
        admission: Some(admission),
    };
    let (slice, report) = match ops::hook::hook(sd, target, &ownership, opts).await {
        Ok(done) => done,
        Err(HookError::Refused {
            user,
            slice,
            finding,
        }) => {
            out::stderr(&ops::hook::refusal_box(&user, &slice, &finding));
            return Ok(Exit::Failure);
        }
        Err(e) => return Err(e.into()),
    };
    trace::phase("hook: done", t);
    trace::report_bus("hook", sd.stats().waiting_ms);
    out::notes(&report.notes);
    out::stdout(&format!("{slice}\n"))?;
    Ok(Exit::Ok)
}
