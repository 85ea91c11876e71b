//! The command-line contract: arguments, subcommands, and what each prints.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::config::{self, Config, DEFAULT_CONFIG_PATH};
use crate::diagnostics::{Diagnostic, Severity};
use crate::error::Exit;
use crate::names::UserName;
use crate::plan::{self, Plan, Property, SliceKind};
use crate::pyjson;

#[derive(Debug, Parser)]
#[command(
    name = "ds01-slices",
    version,
    about = "Per-user aggregate resource limits on DS01's systemd slices",
    long_about = "Turns resource-limits.yaml into CPUQuota, MemoryMax, MemoryHigh and TasksMax on each \
                  user's ds01-GROUP-USER.slice, through systemd's D-Bus API.\n\n\
                  Exit codes: 0 ok, 1 runtime failure, 2 bad usage or bad configuration, 3 drift found."
)]
pub struct Cli {
    /// resource-limits.yaml; members are read from groups/*.members beside it.
    #[arg(long, global = true, env = "DS01_CONFIG", default_value = DEFAULT_CONFIG_PATH, value_name = "PATH")]
    pub config: PathBuf,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show a user's group, slice and effective aggregate limits.
    Show {
        /// The user name as listed in a members file (or its sanitized form).
        user: String,
        /// Print only the effective aggregate mapping as JSON (as get_resource_limits.py USER --aggregate did).
        #[arg(long)]
        aggregate: bool,
    },
    /// Print the desired state of every managed slice.
    Plan {
        /// Only this user's slice and its parents.
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
    },
    /// Validate the configuration and print every problem found.
    CheckConfig,
}

pub fn run(cli: Cli) -> anyhow::Result<Exit> {
    match &cli.command {
        Command::CheckConfig => check_config(&cli),
        Command::Show { user, aggregate } => {
            let config = load(&cli)?;
            show(&cli, &config, user, *aggregate)
        }
        Command::Plan { user } => {
            let config = load(&cli)?;
            plan_command(&cli, &config, user.as_deref())
        }
    }
}

/// Loads the configuration and prints its warnings on stderr.
pub fn load(cli: &Cli) -> anyhow::Result<Config> {
    let config = config::load(&cli.config)?;
    for w in &config.warnings {
        eprintln!("{w}");
    }
    Ok(config)
}

pub fn parse_user(raw: &str) -> anyhow::Result<UserName> {
    UserName::new(raw).with_context(|| format!("invalid user name {raw:?}"))
}

fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("cannot serialize output as JSON")?;
    write_stdout(&format!("{text}\n"))
}

/// Writes to stdout, treating a closed pipe (`| head`) as success.
pub fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to stdout"),
    }
}

#[derive(Debug, Serialize)]
struct ShowReport {
    user: String,
    group: String,
    slice: String,
    aggregate: serde_json::Value,
    #[serde(skip)]
    listed: bool,
    #[serde(skip)]
    properties: plan::Properties,
}

fn show(cli: &Cli, config: &Config, user: &str, aggregate_only: bool) -> anyhow::Result<Exit> {
    let resolved = config.resolve(&parse_user(user)?)?;
    let report = ShowReport {
        user: resolved.name.to_string(),
        group: resolved.group.to_string(),
        slice: resolved.slice.to_string(),
        aggregate: resolved.aggregate.as_ref().map(|a| a.raw_json()).unwrap_or(serde_json::Value::Null),
        listed: resolved.listed,
        properties: plan::user_spec(&resolved).properties,
    };
    if aggregate_only {
        write_stdout(&format!("{}\n", pyjson::dumps(&report.aggregate)))?;
    } else if cli.json {
        print_json(&report)?;
    } else {
        let mut text = format!("user:   {}\n", report.user);
        let how = if report.listed { "" } else { " (in no members file: default_group)" };
        text.push_str(&format!("group:  {}{how}\n", report.group));
        text.push_str(&format!("slice:  {}\n", report.slice));
        if resolved.aggregate.is_none() {
            text.push_str("limits: none (no aggregate cap)\n");
        } else {
            text.push_str(&format!("limits: {}\n", human_properties(&report.properties)));
            if let Some(gpu) = resolved.aggregate.as_ref().and_then(|a| a.gpu_limit.as_ref()) {
                text.push_str(&format!("gpu:    gpu_limit {gpu} (read by other DS01 tools, not a slice property)\n"));
            }
        }
        if !config.aggregate_limits {
            text.push_str("note:   enforcement.aggregate_limits is false: nothing is applied\n");
        }
        write_stdout(&text)?;
    }
    Ok(Exit::Ok)
}

/// `CPUQuota=9600% MemoryMax=96G ...` in unit-file terms.
pub fn human_properties(props: &plan::Properties) -> String {
    let parts: Vec<String> = props
        .iter()
        .filter(|(p, _)| Property::LIMITS.contains(p))
        .map(|(p, v)| format!("{}={}", p.unit_setting(), p.display(v)))
        .collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(" ")
    }
}

fn plan_command(cli: &Cli, config: &Config, user: Option<&str>) -> anyhow::Result<Exit> {
    let plan = match user {
        Some(u) => plan::plan_user(config, &parse_user(u)?)?,
        None => plan::plan(config)?,
    };
    if cli.json {
        print_json(&plan)?;
    } else if !config.aggregate_limits {
        write_stdout("enforcement.aggregate_limits is false in the configuration: nothing to apply\n")?;
    } else {
        write_stdout(&plan_table(&plan))?;
    }
    Ok(Exit::Ok)
}

pub fn plan_table(plan: &Plan) -> String {
    let cell = |spec: &plan::SliceSpec, p: Property| {
        spec.properties.get(p).map(|v| p.display(v)).unwrap_or_else(|| "-".to_owned())
    };
    let mut rows: Vec<[String; 7]> = vec![[
        "SLICE".into(),
        "KIND".into(),
        "USER".into(),
        "CPUQuota".into(),
        "MemoryMax".into(),
        "MemoryHigh".into(),
        "TasksMax".into(),
    ]];
    for spec in &plan.slices {
        let kind = match spec.kind {
            SliceKind::Root => "root",
            SliceKind::Group => "group",
            SliceKind::User => "user",
        };
        let user = spec.user.as_ref().map(|u| u.to_string()).unwrap_or_else(|| "-".into());
        let limits = if spec.kind == SliceKind::User && !spec.properties.has_limits() {
            ["uncapped".to_owned(), "-".into(), "-".into(), "-".into()]
        } else if spec.kind != SliceKind::User {
            ["accounting".to_owned(), "-".into(), "-".into(), "-".into()]
        } else {
            [
                cell(spec, Property::CpuQuotaPerSecUSec),
                cell(spec, Property::MemoryMax),
                cell(spec, Property::MemoryHigh),
                cell(spec, Property::TasksMax),
            ]
        };
        let [a, b, c, d] = limits;
        rows.push([spec.slice.to_string(), kind.into(), user, a, b, c, d]);
    }
    let widths: Vec<usize> = (0..7).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[derive(Debug, Serialize)]
struct CheckReport {
    ok: bool,
    groups: usize,
    users: usize,
    overrides: usize,
    problems: Vec<Diagnostic>,
}

fn check_config(cli: &Cli) -> anyhow::Result<Exit> {
    let report = match config::load(&cli.config) {
        Ok(c) => CheckReport {
            ok: true,
            groups: c.groups.len(),
            users: c.members.len(),
            overrides: c.overrides.len(),
            problems: c.warnings.clone(),
        },
        Err(config::ConfigError::Invalid(d)) => CheckReport { ok: false, groups: 0, users: 0, overrides: 0, problems: d.items },
        Err(e) => return Err(e.into()),
    };
    if cli.json {
        print_json(&report)?;
    } else {
        for p in &report.problems {
            eprintln!("{p}");
        }
        let errors = report.problems.iter().filter(|p| p.severity == Severity::Error).count();
        if report.ok {
            write_stdout(&format!(
                "{}: ok ({} groups, {} listed users, {} overrides, {} warnings)\n",
                cli.config.display(),
                report.groups,
                report.users,
                report.overrides,
                report.problems.len()
            ))?;
        } else {
            eprintln!("{}: {errors} error(s); fix them and run check-config again", cli.config.display());
        }
    }
    Ok(if report.ok { Exit::Ok } else { Exit::Usage })
}
