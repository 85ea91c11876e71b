//! The command line: parse, run a use case, print its report, exit. The only module that
//! prints (`out`) and the only one that turns errors into exit codes ([`exit`]).

mod apply;
pub mod args;
mod containers;
pub mod docs;
mod doctor;
pub mod exit;
mod fleet;
mod gate;
mod hook;
mod inspect;
mod metrics;
mod out;
pub mod pyjson;
mod remote;
mod render;
mod serve;
mod setup;
mod status;
mod verify;
mod watch;

use std::process::ExitCode;

use clap::Parser;

use crate::ops::apply::ApplyOptions;
use crate::ops::deploy::DeployOptions;
use crate::ops::render::RenderOptions;
use crate::systemd::WriteMode;
use args::{Cli, Command, Format};
use exit::CliResult;
use setup::{async_runtime, block_on, load, load_remembered, parse_user, record_apply_attempt};

/// The program: the hook's own fast parser first, the full one otherwise.
pub fn main() -> ExitCode {
    crate::trace::start();
    let result = match hook::parse() {
        Some(cli) => hook::run(cli),
        None => run(Cli::parse()),
    };
    for line in crate::trace::take() {
        out::stderr(&line);
    }
    match result {
        Ok(exit) => exit.into(),
        Err(err) => {
            out::stderr(&err.message());
            err.exit().into()
        }
    }
}

pub fn run(cli: Cli) -> CliResult {
    let g = &cli.globals;
    if let Some(host) = &g.host {
        remote::check_allowed(g, host, &cli.command)?;
    }
    match &cli.command {
        Command::CheckConfig => inspect::check_config(g),
        Command::Show { user, aggregate } => inspect::show(g, &load(&cli)?, user, *aggregate),
        Command::Plan { user } => inspect::plan_command(g, &load(&cli)?, user.as_deref()),
        Command::Apply {
            user,
            dry_run,
            runtime,
            force,
            backend,
            allow_reload,
            watch,
        } => {
            let opts = DeployOptions {
                apply: ApplyOptions {
                    mode: if *runtime {
                        WriteMode::Runtime
                    } else {
                        WriteMode::Persistent
                    },
                    dry_run: *dry_run,
                    force: *force,
                },
                backend: (*backend).into(),
                allow_reload: *allow_reload,
            };
            if *watch {
                // Reads the configuration itself, at every poll: a bad one at the start is
                // refused like any later one, and the watcher goes on.
                return block_on(watch::watch(g, opts));
            }
            let result = apply_command(&cli, user.as_deref(), opts);
            if user.is_none() && !*dry_run {
                record_apply_attempt(g, matches!(result, Ok(crate::error::Exit::Ok)));
            }
            result
        }
        Command::Render {
            user,
            dry_run,
            no_reload,
            allow_reload,
        } => {
            let config = load(&cli)?;
            let user = user.as_deref().map(parse_user).transpose()?;
            let opts = RenderOptions {
                dry_run: *dry_run,
                no_reload: *no_reload,
                systemd_unreachable: false,
                allow_reload: *allow_reload,
            };
            let report = async_runtime()?.block_on(crate::ops::render::render(
                &g.context(),
                &config,
                user.as_ref(),
                opts,
            ))?;
            render::print(g, &config, &report)
        }
        Command::Hook(command) => hook::run_hook(g, command),
        Command::Status {
            user,
            watch,
            interval,
            all,
        } => {
            let config = load(&cli)?;
            let user = user.as_deref().map(parse_user).transpose()?;
            status::status(g, &config, user.as_ref(), *watch, *interval, *all)
        }
        Command::Metrics { output } => {
            let config = load(&cli)?;
            metrics::metrics(g, &config, output.as_deref())
        }
        Command::Serve { listen, cache } => {
            // Checked once here, so that a bad configuration stops the server at its start;
            // every fresh answer reads it again.
            load(&cli)?;
            serve::serve(g, *listen, std::time::Duration::from_secs(*cache))
        }
        Command::Gate {
            listen,
            socket_group,
            docker,
            strict,
        } => {
            // Checked once here, so that a bad configuration stops the gate at its start; each
            // request reads it again, as a hook does.
            load(&cli)?;
            gate::gate(g, listen.as_deref(), socket_group, docker, *strict)
        }
        Command::Verify {
            user,
            format,
            offline,
        } => {
            let config = load(&cli)?;
            let user = user.as_deref().map(parse_user).transpose()?;
            let json = g.json || *format == Format::Json;
            if *offline {
                let report =
                    crate::ops::render::verify_offline(&g.context(), &config, user.as_ref())?;
                return render::print_offline(json, &report);
            }
            block_on(verify::verify(g, &config, user.as_ref(), json))
        }
        Command::Doctor => block_on(doctor::doctor(g)),
        Command::DaemonReload { allow_reload } => block_on(render::daemon_reload(g, *allow_reload)),
        Command::Fleet(action) => fleet::fleet(g, action),
    }
}

fn apply_command(cli: &Cli, user: Option<&str>, opts: DeployOptions) -> CliResult {
    // A deploy also tells the hooks after it that this configuration is valid.
    let config = if opts.apply.dry_run {
        load(cli)?
    } else {
        load_remembered(cli)?
    };
    let user = user.map(parse_user).transpose()?;
    block_on(apply::apply(&cli.globals, &config, user.as_ref(), opts))
}
