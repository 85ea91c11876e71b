//! Writes the man pages and shell completions of `ds01-slices` under a directory (for the
//! Debian package; see `ds01_slices::cli::docs`). Not installed: a build tool.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!(
            "usage: ds01-slices-assets DIR   (writes DIR/man/*.8 and DIR/completions/SHELL/*)"
        );
        return ExitCode::from(2);
    };
    match ds01_slices::cli::docs::write_assets(&out) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "ds01-slices-assets: cannot write under {}: {e}",
                out.display()
            );
            ExitCode::FAILURE
        }
    }
}
