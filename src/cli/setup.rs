//! What the commands set up before they work: the async runtime, the configuration (its
//! warnings shown, the hook's record of it kept), the user named on the command line, and the
//! record of a full apply's outcome.

use anyhow::Context as _;

use super::args::{self, Cli};
use super::exit::{CliError, CliResult};
use super::out;
use crate::config::{self, Config};
use crate::model::names::UserName;
use crate::state::ownership::Ownership;

/// A full apply's outcome, whatever ended it (a refused configuration too), for the metrics an
/// alert on a failed apply needs; `apply` and the watcher alike. Not for `--host`, whose
/// records are another machine's.
pub(super) fn record_apply_attempt(globals: &args::Globals, succeeded: bool) {
    if globals.host.is_some() {
        return;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    globals.ownership().record_apply_attempt(now, succeeded);
}

pub(super) fn block_on<F: std::future::Future<Output = CliResult>>(f: F) -> CliResult {
    async_runtime()?.block_on(f)
}

pub(super) fn async_runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .map_err(CliError::failure)
}

/// Loads the configuration and prints its warnings on stderr.
pub(super) fn load(cli: &Cli) -> Result<Config, CliError> {
    Ok(with_warnings_shown(config::load(&cli.globals.config)?))
}

/// [`load`], keeping the record of the validated configuration for later hooks.
pub(super) fn load_remembered(cli: &Cli) -> Result<Config, CliError> {
    let (config, record) = crate::state::cache::load_recorded(&cli.globals.config)?;
    remember_validated(&cli.globals.ownership(), record);
    Ok(with_warnings_shown(config))
}

/// Keeps the record of a full validation for later hooks.
pub(super) fn remember_validated(ownership: &Ownership, record: Option<String>) {
    if let Some(record) = record {
        ownership.record_validated_config(&record);
    }
}

pub(super) fn with_warnings_shown(config: Config) -> Config {
    for w in &config.warnings {
        out::stderr(&w.to_string());
    }
    config
}

pub(super) fn parse_user(raw: &str) -> Result<UserName, CliError> {
    UserName::new(raw).map_err(|e| CliError::context(e, format!("invalid user name {raw:?}")))
}
