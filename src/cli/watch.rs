//! `apply --watch`: the configuration applied whenever its files change, until stopped, each
//! apply reported as `apply` reports it. The rule of when (polling, quiet period, retries) is
//! `model::watch`; here are the reads, the applies and what the journal is told. The package
//! runs it as ds01-slices-watch.service.

use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};

use super::args::Globals;
use super::exit::{CliError, CliResult};
use super::setup::{record_apply_attempt, remember_validated, with_warnings_shown};
use super::{apply, out};
use crate::config::{ConfigError, Digests, Sources};
use crate::error::Exit;
use crate::model::watch::{Outcome, Reason, Seen, Watcher, POLL, QUIET};
use crate::ops::deploy::DeployOptions;

/// What the watcher compares from one poll to the next: the digests of every file of the
/// configuration, or why it could not be read.
type Files = Result<Digests, String>;

pub async fn watch(globals: &Globals, opts: DeployOptions) -> CliResult {
    let listen = |kind: SignalKind| {
        signal(kind)
            .map_err(|e| CliError::failure(anyhow::Error::new(e).context("cannot handle signals")))
    };
    // Handled, so that a stop waits for the apply under way to end instead of cutting it off.
    let (mut term, mut interrupt) = (
        listen(SignalKind::terminate())?,
        listen(SignalKind::interrupt())?,
    );
    out::say(&format!(
        "watch: watching {} and the members and overrides files beside it (read every {} s; applied once unchanged for {} s)",
        globals.config.display(),
        POLL.as_secs(),
        QUIET.as_secs()
    ));
    let mut watcher = Watcher::default();
    loop {
        let (seen, read) = poll(globals);
        if let Some((reason, files)) = watcher.observe(Instant::now(), seen) {
            out::say(match reason {
                Reason::Start => "watch: applying the configuration as it is now",
                Reason::Changed => "watch: the configuration changed: applying it",
                Reason::Retry => "watch: trying the apply that failed again",
            });
            let started = Instant::now();
            let outcome = apply_once(globals, read, opts).await;
            record_apply_attempt(globals, outcome == Outcome::Applied);
            let took = started.elapsed().as_secs_f64();
            let retry = watcher.finished(Instant::now(), files, outcome);
            out::say(&match (outcome, retry) {
                (Outcome::Applied, _) => format!("watch: in force after {took:.2} s"),
                (Outcome::Refused, _) => format!(
                    "watch: refused after {took:.2} s: the limits in force are unchanged; the next change of the configuration's files is tried"
                ),
                (Outcome::Failed, retry) => format!(
                    "watch: failed after {took:.2} s; trying again in {} s, or at the next change of the configuration",
                    retry.unwrap_or(Duration::ZERO).as_secs()
                ),
            });
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = term.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    out::say("watch: stopped");
    Ok(Exit::Ok)
}

/// One poll: the configuration's files read whole, what the watcher compares of them, and
/// the read itself for an apply.
fn poll(globals: &Globals) -> (Seen<Files>, Result<Sources, ConfigError>) {
    match Sources::read(&globals.config) {
        Ok(sources) => (Seen::Read(Ok(sources.digests())), Ok(sources)),
        Err(e @ ConfigError::Changed { .. }) => (Seen::Changing, Err(e)),
        Err(e) => (Seen::Read(Err(e.to_string())), Err(e)),
    }
}

/// Validates and applies one read of the configuration, printing what `apply` prints.
async fn apply_once(
    globals: &Globals,
    read: Result<Sources, ConfigError>,
    opts: DeployOptions,
) -> Outcome {
    let validated = read.and_then(crate::state::cache::validate_recorded);
    let config = match validated {
        Ok((config, record)) => {
            remember_validated(&globals.ownership(), record);
            with_warnings_shown(config)
        }
        Err(e) => {
            out::stderr(&CliError::from(e).message());
            return Outcome::Refused;
        }
    };
    match apply::apply(globals, &config, None, opts).await {
        Ok(Exit::Ok) => Outcome::Applied,
        Ok(_) => Outcome::Failed,
        Err(e) => {
            out::stderr(&e.message());
            // Bad usage does not mend itself (nothing was changed); anything else may.
            if e.exit() == Exit::Usage {
                Outcome::Refused
            } else {
                Outcome::Failed
            }
        }
    }
}
