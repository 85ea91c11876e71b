//! Exit codes and the one place that prints errors.

use std::process::ExitCode;

use crate::config::{ConfigError, ResolveError};
use crate::names::NameError;

/// The documented exit codes (README, "Exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// A runtime failure: systemd unreachable, a write refused, a file not writable.
    Failure = 1,
    /// Bad usage or bad configuration; nothing was changed.
    Usage = 2,
    /// `verify` found drift.
    Drift = 3,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

/// An error that is the user's input, not the system's state: exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Chooses the exit code for an error by what it is about.
pub fn exit_code_for(err: &anyhow::Error) -> Exit {
    for cause in err.chain() {
        if let Some(crate::apply::HookError::Resolve(_)) = cause.downcast_ref() {
            return Exit::Usage;
        }
        if let Some(crate::apply::ApplyError::Resolve(_)) = cause.downcast_ref() {
            return Exit::Usage;
        }
        if cause.is::<ConfigError>()
            || cause.is::<ResolveError>()
            || cause.is::<NameError>()
            || cause.is::<UsageError>()
        {
            return Exit::Usage;
        }
    }
    Exit::Failure
}

/// Prints an error with its causes on stderr and returns its exit code.
pub fn report(err: &anyhow::Error) -> Exit {
    let mut message = format!("ds01-slices: error: {err}");
    for cause in err.chain().skip(1) {
        message.push_str(&format!("\n  caused by: {cause}"));
    }
    eprintln!("{message}");
    exit_code_for(err)
}
