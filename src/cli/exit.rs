//! The one exit path: every command returns an [`Exit`] or a [`CliError`], whose exit code
//! was chosen by the error's own type ([`ExitStatus`]) when it was raised.

use std::fmt::Display;

use crate::error::{Exit, ExitStatus};

/// An error on its way out, with the exit code it stands for.
#[derive(Debug)]
pub struct CliError {
    exit: Exit,
    error: anyhow::Error,
}

pub type CliResult = Result<Exit, CliError>;

impl<E> From<E> for CliError
where
    E: ExitStatus + std::error::Error + Send + Sync + 'static,
{
    fn from(e: E) -> Self {
        CliError {
            exit: e.exit_code(),
            error: e.into(),
        }
    }
}

impl CliError {
    /// A runtime failure that has no type of its own (writing our output, starting the
    /// runtime).
    pub fn failure(error: impl Into<anyhow::Error>) -> Self {
        CliError {
            exit: Exit::Failure,
            error: error.into(),
        }
    }

    /// `e`, explained by `context` in front of it.
    pub fn context<E>(e: E, context: impl Display + Send + Sync + 'static) -> Self
    where
        E: ExitStatus + std::error::Error + Send + Sync + 'static,
    {
        CliError {
            exit: e.exit_code(),
            error: anyhow::Error::new(e).context(context),
        }
    }

    /// The message, each cause on a line of its own.
    pub fn message(&self) -> String {
        let mut message = format!("ds01-slices: error: {}", self.error);
        for cause in self.error.chain().skip(1) {
            message.push_str(&format!("\n  caused by: {cause}"));
        }
        message
    }

    pub fn exit(&self) -> Exit {
        self.exit
    }
}
