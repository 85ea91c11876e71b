use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    ds01_slices::trace::start();
    let result = match ds01_slices::cli::HookCli::parse_hook() {
        Some(hook) => hook.run(),
        None => ds01_slices::cli::run(ds01_slices::cli::Cli::parse()),
    };
    match result {
        Ok(exit) => exit.into(),
        Err(err) => ds01_slices::cli::exit::report(&err).into(),
    }
}
