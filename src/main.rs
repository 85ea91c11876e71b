use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    ds01_slices::trace::start();
    let cli = ds01_slices::cli::Cli::parse();
    match ds01_slices::cli::run(cli) {
        Ok(exit) => exit.into(),
        Err(err) => ds01_slices::error::report(&err).into(),
    }
}
