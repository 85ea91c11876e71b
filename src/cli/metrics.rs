//! `metrics`: the Prometheus exposition on stdout, or into a file for node_exporter's
//! textfile collector (through a temporary file renamed over it, so a scrape never reads
//! half a file).

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use super::args::Globals;
use super::exit::{CliError, CliResult};
use super::out;
use crate::config::Config;
use crate::error::Exit;
use crate::ops::status::{self, StatusOptions};
use crate::ops::{metrics, Scope};
use crate::systemd::BusSystemd;

pub fn metrics(globals: &Globals, config: &Config, output: Option<&Path>) -> CliResult {
    let text = super::setup::async_runtime()?.block_on(async {
        let sd = BusSystemd::connect(globals.bus.as_deref(), globals.timeout()).await?;
        collect(globals, config, &sd).await
    })?;
    match output {
        None => out::stdout(&text)?,
        Some(path) => crate::atomic::replace(path, text.as_bytes())
            .with_context(|| {
                format!(
                    "cannot write the metrics to {}; check that its directory exists and is writable",
                    path.display()
                )
            })
            .map_err(CliError::failure)?,
    }
    Ok(Exit::Ok)
}

/// One exposition: every managed slice read once (no CPU rate: Prometheus takes rates of
/// the counter itself), with verify's comparison and the time of the last full apply.
pub async fn collect(
    globals: &Globals,
    config: &Config,
    sd: &BusSystemd,
) -> Result<String, CliError> {
    let ownership = globals.ownership();
    let opts = StatusOptions {
        cpu_interval: Duration::ZERO,
        previous: None,
    };
    let (report, _) = status::status(
        sd,
        config,
        Scope::All,
        &ownership,
        Some(&globals.cgroup_root),
        opts,
    )
    .await?;
    out::notes(&report.notes);
    let apply = metrics::ApplyRecord::read(&ownership, config);
    Ok(metrics::exposition(&report, &apply))
}
