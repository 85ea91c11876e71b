//! The documented exit codes, and how an error chooses one: every error type of the crate
//! says which code it means ([`ExitStatus`]); only the command line turns them into a
//! process exit (`cli::exit`).

use std::process::ExitCode;

/// The documented exit codes (docs/operations.md, "Exit codes").
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

/// The exit code an error stands for.
pub trait ExitStatus {
    fn exit_code(&self) -> Exit;
}

/// An error that is the user's input, not the system's state: exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl ExitStatus for UsageError {
    fn exit_code(&self) -> Exit {
        Exit::Usage
    }
}
