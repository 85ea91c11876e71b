//! The only code that writes to the terminal: stdout for results, stderr for diagnostics,
//! notes and errors. Everything else in the crate returns text or data (clippy's
//! `print_stdout`/`print_stderr` are denied outside this file).
#![allow(clippy::print_stderr)]

use std::io::Write;

use anyhow::Context as _;
use serde::Serialize;

use super::exit::CliError;

/// Writes to stdout, treating a closed pipe (`| head`) as success.
pub fn stdout(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other
            .context("cannot write to stdout")
            .map_err(CliError::failure),
    }
}

pub fn json<T: Serialize>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .context("cannot serialize output as JSON")
        .map_err(CliError::failure)?;
    stdout(&format!("{text}\n"))
}

/// One diagnostic line on stderr, as is (already prefixed where it needs to be).
pub fn stderr(line: &str) {
    eprintln!("{line}");
}

/// A line on stderr in the tool's name: `ds01-slices: <text>`.
pub fn say(text: &str) {
    eprintln!("ds01-slices: {text}");
}

/// The notes a run collected (`note: ...`, `warning: ...`).
pub fn notes(notes: &[String]) {
    for n in notes {
        say(n);
    }
}

/// `n` with its noun: "1 task", "2 tasks".
pub fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
