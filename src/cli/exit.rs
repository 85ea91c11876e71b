//! The one place that prints errors and chooses the exit code.

use crate::config::{ConfigError, ResolveError};
use crate::error::{Exit, UsageError};
use crate::model::names::NameError;

/// Chooses the exit code for an error by what it is about.
pub fn exit_code_for(err: &anyhow::Error) -> Exit {
    for cause in err.chain() {
        if let Some(crate::ops::apply::HookError::Resolve(_)) = cause.downcast_ref() {
            return Exit::Usage;
        }
        if let Some(crate::ops::apply::ApplyError::Resolve(_)) = cause.downcast_ref() {
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
