//! `hook pre-create`: its own small parser and path, since it runs before every container.

use std::time::Instant;

use super::args::{Globals, HookCli, HookCommand, HookOnly};
use super::exit::{CliError, CliResult};
use super::{out, parse_user, remember_validated};
use crate::config::{self, Config};
use crate::error::Exit;
use crate::model::names::UserName;
use crate::ops;
use crate::systemd::{BusSystemd, WriteMode};
use crate::trace;

/// The hook's command line, or `None` for anything else (other commands, `--help`, a usage
/// error), which the full parser then parses and reports.
pub fn parse() -> Option<HookCli> {
    HookCli::parse_hook()
}

pub fn run(cli: HookCli) -> CliResult {
    let HookOnly::Hook(HookCommand::PreCreate { user, runtime }) = cli.command;
    run_hook(&cli.globals, &user, runtime)
}

pub fn run_hook(globals: &Globals, user: &str, runtime: bool) -> CliResult {
    let t = Instant::now();
    let user = parse_user(user)?;
    let config = hook_config(globals, &user)?;
    let t = trace::phase("hook: load configuration", t);
    let rt = super::async_runtime()?;
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
    let exit = rt.block_on(hook_command(globals, &sd, &config, &user, mode));
    // The process ends right after this and the kernel closes the socket: shutting the
    // runtime and connection down cost a hook ~0.2 ms (and freeing the configuration as much
    // again at 1,000 users) for nothing.
    std::mem::forget((config, sd, rt));
    exit
}

/// The configuration as far as `user` needs it. A configuration that a full validation
/// accepted before (same digest of every file) is not validated again: only the user's own
/// lines are taken. Any change to any file means a full validation, as for every command.
fn hook_config(globals: &Globals, user: &UserName) -> Result<Config, CliError> {
    let ownership = globals.ownership();
    let record = ownership.validated_config();
    let sources = config::Sources::read_trusting(&globals.config, record.as_deref())?;
    if sources.trusted() {
        return Ok(sources.trusted_for_user(user)?);
    }
    remember_validated(&ownership, sources)
}

async fn hook_command(
    globals: &Globals,
    sd: &BusSystemd,
    config: &Config,
    user: &UserName,
    mode: WriteMode,
) -> CliResult {
    let t = Instant::now();
    let ownership = globals.ownership();
    let opts = ops::hook::HookOptions {
        mode,
        cgroup_root: &globals.cgroup_root,
    };
    let (slice, report) = ops::hook::hook(sd, config, user, &ownership, opts).await?;
    trace::phase("hook: done", t);
    trace::report_bus("hook", sd.stats().waiting_ms);
    out::notes(&report.notes);
    out::stdout(&format!("{slice}\n"))?;
    Ok(Exit::Ok)
}
