//! The command-line contract: arguments, subcommands, and what each prints.

pub mod exit;
pub mod offline;
pub mod pyjson;

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Serialize;

use std::time::Duration;

use crate::cgroupfs::DEFAULT_CGROUP_ROOT;
use crate::config::{self, Config, DEFAULT_CONFIG_PATH};
use crate::error::{Exit, UsageError};
use crate::model::diagnostics::{Diagnostic, Severity};
use crate::model::names::SliceKind;
use crate::model::names::UserName;
use crate::model::property::Property;
use crate::ops::apply::{self, ApplyOptions, ApplyReport, Scope};
use crate::plan::{self, Plan};
use crate::state::ownership::{Ownership, DEFAULT_STATE_DIR};

use crate::dropin;
use crate::model::values::MemoryLimit;
use crate::ops::render;
use crate::ops::verify;
use crate::systemd::{BusSystemd, Systemd, WriteMode};

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
    #[command(flatten)]
    pub globals: Globals,

    #[command(subcommand)]
    pub command: Command,
}

/// The options every command takes.
#[derive(Debug, clap::Args)]
pub struct Globals {
    /// resource-limits.yaml; members are read from groups/*.members beside it.
    #[arg(long, global = true, env = "DS01_CONFIG", default_value = DEFAULT_CONFIG_PATH, value_name = "PATH")]
    pub config: PathBuf,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// D-Bus address of the system bus (default: the system bus).
    #[arg(
        long,
        global = true,
        env = "DBUS_SYSTEM_BUS_ADDRESS",
        value_name = "ADDRESS"
    )]
    pub bus: Option<String>,

    /// Seconds to wait for any one answer from systemd.
    #[arg(long, global = true, default_value_t = 30, value_name = "SECONDS")]
    pub timeout: u64,

    /// Where ds01-slices records which properties it set (and its writer lock).
    #[arg(long, global = true, env = "DS01_STATE_DIR", default_value = DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,

    /// The cgroup file system `verify` reads the kernel's limits from.
    #[arg(long, global = true, env = "DS01_CGROUP_ROOT", default_value = DEFAULT_CGROUP_ROOT, value_name = "DIR")]
    pub cgroup_root: PathBuf,

    /// The file-system root of the host whose systemd is managed: `render` writes under it,
    /// `apply` removes rendered files under it, `verify` reads drop-ins under it.
    #[arg(
        long,
        global = true,
        env = "DS01_ROOT",
        default_value = "/",
        value_name = "DIR"
    )]
    pub root: PathBuf,
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
    /// Set the configured limits on every slice over D-Bus, writing only what differs.
    Apply {
        /// Only this user's slice (and its parents; their old slices in other groups too).
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// Print what would change and write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Write runtime properties (/run, gone at reboot) instead of persistent ones.
        #[arg(long)]
        runtime: bool,
        /// Lower MemoryMax even below the memory a running slice uses now (OOM-kills jobs).
        #[arg(long)]
        force: bool,
        /// How to apply: over D-Bus, as rendered drop-in files, or D-Bus when systemd answers
        /// and files otherwise.
        #[arg(long, value_enum, default_value_t = Backend::Auto)]
        backend: Backend,
    },
    /// Write the limits as drop-in files under --root (etc/systemd/system/<slice>.d/10-resource-limits.conf),
    /// for hosts whose systemd cannot be reached; then reload systemd if --root is / (or --bus is given).
    Render {
        /// Only this user's slice and its parents.
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// Print what would change and write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask systemd to reload afterwards.
        #[arg(long)]
        no_reload: bool,
    },
    /// Hooks for the container runtime.
    #[command(subcommand)]
    Hook(HookCommand),
    /// Read every managed slice back (systemd and kernel) and report drift; exit 3 on drift.
    Verify {
        /// Only this user's slice and its parents.
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// Output format (`--json` is the same as `--format json`).
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Check the rendered files under --root against the configuration, without systemd.
        #[arg(long)]
        offline: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Auto,
    Dbus,
    Files,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum HookCommand {
    /// Ensure USER's slice holds its limits, then print exactly the slice name, for
    /// `docker run --cgroup-parent=$(ds01-slices hook pre-create "$USER")`.
    PreCreate {
        user: String,
        /// Write runtime properties instead of persistent ones.
        #[arg(long)]
        runtime: bool,
    },
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
        Command::Apply {
            user,
            dry_run,
            runtime,
            force,
            backend,
        } => {
            // A deploy also tells the hooks after it that this configuration is valid.
            let config = if *dry_run {
                load(&cli)?
            } else {
                load_remembered(&cli)?
            };
            let mode = if *runtime {
                WriteMode::Runtime
            } else {
                WriteMode::Persistent
            };
            let opts = ApplyOptions {
                mode,
                dry_run: *dry_run,
                force: *force,
            };
            let user = user.as_deref().map(parse_user).transpose()?;
            if *backend == Backend::Files && *runtime {
                return Err(UsageError(
                    "--runtime applies to the D-Bus backend only; rendered files are persistent (drop --runtime or use --backend dbus)".into(),
                )
                .into());
            }
            block_on(apply_command(&cli, &config, user.as_ref(), opts, *backend))
        }
        Command::Render {
            user,
            dry_run,
            no_reload,
        } => {
            let config = load(&cli)?;
            let user = user.as_deref().map(parse_user).transpose()?;
            let opts = render::RenderOptions {
                dry_run: *dry_run,
                no_reload: *no_reload,
                systemd_unreachable: false,
            };
            block_on(render::render(
                &render_context(&cli),
                &config,
                user.as_ref(),
                opts,
            ))
        }
        Command::Hook(HookCommand::PreCreate { user, runtime }) => {
            run_hook(&cli.globals, user, *runtime)
        }
        Command::Verify {
            user,
            format,
            offline,
        } => {
            let config = load(&cli)?;
            let user = user.as_deref().map(parse_user).transpose()?;
            let json = cli.globals.json || *format == Format::Json;
            if *offline {
                return render::verify_offline(&render_context(&cli), &config, user.as_ref(), json);
            }
            block_on(verify_command(&cli, &config, user.as_ref(), json))
        }
    }
}

/// Only `hook pre-create` (with the global options): a hook runs before every container
/// start, and building this small parser instead of every command's takes ~0.3 ms less.
#[derive(Debug, Parser)]
#[command(name = "ds01-slices")]
pub struct HookCli {
    #[command(flatten)]
    pub globals: Globals,

    #[command(subcommand)]
    pub command: HookOnly,
}

#[derive(Debug, Subcommand)]
pub enum HookOnly {
    #[command(subcommand)]
    Hook(HookCommand),
}

impl HookCli {
    /// The command line parsed as a hook, or `None` for anything else (other commands,
    /// `--help`, a usage error), which the full [`Cli`] then parses and reports.
    pub fn parse_hook() -> Option<HookCli> {
        HookCli::try_parse().ok()
    }

    pub fn run(self) -> anyhow::Result<Exit> {
        let HookOnly::Hook(HookCommand::PreCreate { user, runtime }) = self.command;
        run_hook(&self.globals, &user, runtime)
    }
}

fn run_hook(globals: &Globals, user: &str, runtime: bool) -> anyhow::Result<Exit> {
    let t = std::time::Instant::now();
    let user = parse_user(user)?;
    let config = hook_config(globals, &user)?;
    let t = crate::trace::phase("hook: load configuration", t);
    let rt = async_runtime()?;
    let sd = rt.block_on(connect(globals))?;
    crate::trace::phase("hook: connect", t);
    let mode = if runtime {
        WriteMode::Runtime
    } else {
        WriteMode::Persistent
    };
    let exit = rt.block_on(hook_command(globals, &sd, &config, &user, mode));
    // The process ends right here and the kernel closes the socket: shutting the runtime and
    // connection down cost a hook ~0.2 ms (and freeing the configuration as much again at
    // 1,000 users) for nothing.
    std::mem::forget((config, sd, rt));
    exit
}

/// The configuration as far as `user` needs it. A configuration that a full validation
/// accepted before (same digest of every file) is not validated again: only the user's own
/// lines are taken. Any change to any file means a full validation, as for every command.
fn hook_config(globals: &Globals, user: &UserName) -> anyhow::Result<Config> {
    let ownership = Ownership::new(&globals.state_dir);
    let record = ownership.validated_config();
    let sources = config::Sources::read_trusting(&globals.config, record.as_deref())?;
    if sources.trusted() {
        return Ok(sources.trusted_for_user(user)?);
    }
    remember_validated(&ownership, sources)
}

/// Validates `sources` in full and keeps their record for later hooks.
fn remember_validated(ownership: &Ownership, sources: config::Sources) -> anyhow::Result<Config> {
    let record = sources.remembered();
    let config = sources.validate()?;
    if let Some(record) = record {
        ownership.record_validated_config(&record);
    }
    Ok(config)
}

fn block_on<F: std::future::Future<Output = anyhow::Result<Exit>>>(f: F) -> anyhow::Result<Exit> {
    async_runtime()?.block_on(f)
}

fn async_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn connect(globals: &Globals) -> anyhow::Result<BusSystemd> {
    Ok(BusSystemd::connect(
        globals.bus.as_deref(),
        Duration::from_secs(globals.timeout.max(1)),
    )
    .await?)
}

fn render_context(cli: &Cli) -> render::Context<'_> {
    render::Context {
        root: &cli.globals.root,
        bus: cli.globals.bus.as_deref(),
        timeout: Duration::from_secs(cli.globals.timeout.max(1)),
        state_dir: &cli.globals.state_dir,
        json: cli.globals.json,
    }
}

async fn apply_command(
    cli: &Cli,
    config: &Config,
    user: Option<&UserName>,
    opts: ApplyOptions,
    backend: Backend,
) -> anyhow::Result<Exit> {
    let render_opts = |systemd_unreachable| render::RenderOptions {
        dry_run: opts.dry_run,
        no_reload: false,
        systemd_unreachable,
    };
    let timeout = Duration::from_secs(cli.globals.timeout.max(1));
    let sd = match backend {
        Backend::Files => {
            return render::render(&render_context(cli), config, user, render_opts(false)).await
        }
        Backend::Dbus => render::connect_checked(cli.globals.bus.as_deref(), timeout).await?,
        Backend::Auto => {
            match render::connect_checked(cli.globals.bus.as_deref(), timeout).await {
                Ok(sd) => sd,
                Err(e) => {
                    // Runtime limits promise to vanish at reboot; rendered files would not.
                    // A named bus may be another machine's (or a sandbox's): rendering into
                    // this host's /etc would be the wrong files, so that needs --root.
                    let local =
                        cli.globals.bus.is_none() || cli.globals.root != std::path::Path::new("/");
                    let Some(why) = render::systemd_absent(&e)
                        .filter(|_| opts.mode == WriteMode::Persistent && local)
                    else {
                        return Err(e.into());
                    };
                    eprintln!(
                        "ds01-slices: {why}: rendering drop-in files under {} instead",
                        cli.globals.root.display()
                    );
                    let exit =
                        render::render(&render_context(cli), config, user, render_opts(true))
                            .await?;
                    if !opts.dry_run {
                        eprintln!("ds01-slices: rendered drop-in files instead of applying over D-Bus; run 'systemctl daemon-reload' or boot to activate them");
                    }
                    return Ok(exit);
                }
            }
        }
    };
    let ownership = Ownership::new(&cli.globals.state_dir);
    let scope = match user {
        Some(u) => Scope::User(u),
        None => Scope::All,
    };
    if !config.aggregate_limits {
        eprintln!("enforcement.aggregate_limits is false: nothing to apply; limits ds01-slices set earlier are taken back");
    }
    // Files rendered earlier are taken over: D-Bus first gets every value they hold (hidden
    // from apply's reads so that it writes them), then they are removed.
    // With --bus naming another systemd, the default --root (this host) is not its root:
    // this host's files are only taken over when --root is given with --bus, or without it.
    let plan = render::plan_for(config, user)?;
    let sanitized = user.and_then(|u| u.sanitized().ok());
    let rendered = if render::root_is_host(&cli.globals.root) && cli.globals.bus.is_some() {
        dropin::Rendered::default()
    } else {
        dropin::find_rendered(&cli.globals.root, |s| {
            dropin::in_scope(s, &plan, sanitized.as_ref())
        })?
    };
    for f in &rendered.foreign {
        eprintln!(
            "ds01-slices: warning: {} was not written by ds01-slices: left alone (values set over D-Bus override it)",
            f.display()
        );
    }
    let masked = crate::ops::take_over::RenderedMask::new(&sd, rendered.files.clone());
    let report = apply::apply(&masked, config, scope, &ownership, opts).await?;
    let exit = print_apply_report(cli, &report, opts, Some(sd.stats()))?;
    if opts.dry_run {
        if !rendered.files.is_empty() {
            eprintln!(
                "dry run: would remove {} rendered drop-in files under {} once their values are set over D-Bus",
                rendered.files.len(),
                cli.globals.root.display()
            );
        }
        return Ok(exit);
    }
    // A slice whose write failed keeps its file: it is all that holds its limits.
    let kept: std::collections::BTreeSet<&crate::model::names::SliceName> = report
        .failures
        .iter()
        .map(|(s, _)| s)
        .chain(report.refused.iter().map(|c| &c.slice))
        .collect();
    let slices: Vec<crate::model::names::SliceName> = rendered
        .files
        .keys()
        .filter(|s| !kept.contains(s))
        .cloned()
        .collect();
    let removed = dropin::take_over_rendered(&cli.globals.root, &slices)?;
    if !removed.is_empty() {
        for f in &removed {
            eprintln!("ds01-slices: removed {} (now set over D-Bus)", f.display());
        }
        sd.reload()
            .await
            .context("rendered drop-ins were removed, but systemd did not reload; run 'systemctl daemon-reload'")?;
    }
    Ok(exit)
}

fn print_apply_report(
    cli: &Cli,
    report: &ApplyReport,
    opts: ApplyOptions,
    bus: Option<crate::systemd::client::BusStatsSnapshot>,
) -> anyhow::Result<Exit> {
    let failed = !report.failures.is_empty() || !report.refused.is_empty();
    if cli.globals.json {
        let change_json = |c: &crate::diff::Change| {
            serde_json::json!({
                "slice": c.slice,
                "kind": c.kind,
                "set": c.sets.iter().map(|s| serde_json::json!({
                    "property": s.property.bus_name(),
                    "from": s.from,
                    "to": s.to,
                })).collect::<Vec<_>>(),
            })
        };
        print_json(&serde_json::json!({
            "dry_run": opts.dry_run,
            "slices_checked": report.slices_checked,
            "writes": report.writes,
            "changes": report.changes.iter().map(change_json).collect::<Vec<_>>(),
            "refused": report.refused.iter().map(change_json).collect::<Vec<_>>(),
            "failures": report.failures.iter().map(|(s, e)| serde_json::json!({"slice": s, "error": e})).collect::<Vec<_>>(),
            "bus": bus,
        }))?;
    } else {
        let mut text = apply::render_changes(&report.changes);
        let writing = report.changes.iter().filter(|c| c.writes()).count();
        if writing == 0 && !failed {
            text.push_str(&format!(
                "nothing to do: {} slices already as configured\n",
                report.slices_checked
            ));
        } else if opts.dry_run {
            text.push_str(&format!(
                "dry run: would write to {writing} of {} slices; nothing was changed\n",
                report.slices_checked
            ));
        } else {
            text.push_str(&format!(
                "applied: {} writes, {} slices checked\n",
                report.writes, report.slices_checked
            ));
        }
        write_stdout(&text)?;
    }
    for c in &report.refused {
        if let Some((usage, max)) = c.memory_below_usage {
            eprintln!(
                "ds01-slices: refused {}: MemoryMax {} is below the {} it uses now; writing it would OOM-kill running jobs. Rerun with --force to apply anyway.",
                c.slice,
                MemoryLimit::Bytes(max),
                MemoryLimit::Bytes(usage)
            );
        }
    }
    for (slice, error) in &report.failures {
        eprintln!("ds01-slices: failed {slice}: {error}");
    }
    if failed {
        eprintln!(
            "ds01-slices: {} slice(s) failed, {} refused; the others were applied. Fix the cause and rerun: apply converges.",
            report.failures.len(),
            report.refused.len()
        );
        return Ok(Exit::Failure);
    }
    Ok(Exit::Ok)
}

async fn hook_command(
    globals: &Globals,
    sd: &BusSystemd,
    config: &Config,
    user: &UserName,
    mode: WriteMode,
) -> anyhow::Result<Exit> {
    let t = std::time::Instant::now();
    let ownership = Ownership::new(&globals.state_dir);
    let (slice, _report) = apply::hook(sd, config, user, &ownership, mode).await?;
    crate::trace::phase("hook: done", t);
    crate::trace::report_bus("hook", sd.stats().waiting_ms);
    write_stdout(&format!("{slice}\n"))?;
    Ok(Exit::Ok)
}

async fn verify_command(
    cli: &Cli,
    config: &Config,
    user: Option<&UserName>,
    json: bool,
) -> anyhow::Result<Exit> {
    let sd = connect(&cli.globals).await?;
    let ownership = Ownership::new(&cli.globals.state_dir);
    let scope = match user {
        Some(u) => Scope::User(u),
        None => Scope::All,
    };
    let mut report =
        verify::verify(&sd, config, scope, &ownership, &cli.globals.cgroup_root).await?;
    verify::explain(&mut report, &cli.globals.root);
    if json {
        print_json(&report)?;
    } else {
        write_stdout(&verify::render_text(&report))?;
    }
    Ok(if report.holds { Exit::Ok } else { Exit::Drift })
}

/// Loads the configuration and prints its warnings on stderr.
pub fn load(cli: &Cli) -> anyhow::Result<Config> {
    Ok(with_warnings_shown(config::load(&cli.globals.config)?))
}

/// [`load`], keeping the record of the validated configuration for later hooks (see
/// `hook_config`).
fn load_remembered(cli: &Cli) -> anyhow::Result<Config> {
    let sources = config::Sources::read(&cli.globals.config)?;
    let ownership = Ownership::new(&cli.globals.state_dir);
    Ok(with_warnings_shown(remember_validated(
        &ownership, sources,
    )?))
}

fn with_warnings_shown(config: Config) -> Config {
    for w in &config.warnings {
        eprintln!("{w}");
    }
    config
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
    properties: crate::model::property::Properties,
}

fn show(cli: &Cli, config: &Config, user: &str, aggregate_only: bool) -> anyhow::Result<Exit> {
    let resolved = config.resolve(&parse_user(user)?)?;
    let report = ShowReport {
        user: resolved.name.to_string(),
        group: resolved.group.to_string(),
        slice: resolved.slice.to_string(),
        aggregate: resolved
            .aggregate
            .as_ref()
            .map(|a| a.raw_json())
            .unwrap_or(serde_json::Value::Null),
        listed: resolved.listed,
        properties: plan::user_spec(&resolved).properties,
    };
    if aggregate_only {
        write_stdout(&format!("{}\n", pyjson::dumps(&report.aggregate)))?;
    } else if cli.globals.json {
        print_json(&report)?;
    } else {
        let mut text = format!("user:   {}\n", report.user);
        let how = if report.listed {
            ""
        } else {
            " (in no members file: default_group)"
        };
        text.push_str(&format!("group:  {}{how}\n", report.group));
        text.push_str(&format!("slice:  {}\n", report.slice));
        if resolved.aggregate.is_none() {
            text.push_str("limits: none (no aggregate cap)\n");
        } else {
            text.push_str(&format!(
                "limits: {}\n",
                human_properties(&report.properties)
            ));
            if let Some(gpu) = resolved
                .aggregate
                .as_ref()
                .and_then(|a| a.gpu_limit.as_ref())
            {
                text.push_str(&format!(
                    "gpu:    gpu_limit {gpu} (read by other DS01 tools, not a slice property)\n"
                ));
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
pub fn human_properties(props: &crate::model::property::Properties) -> String {
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
    if cli.globals.json {
        print_json(&plan)?;
    } else if !config.aggregate_limits {
        write_stdout(
            "enforcement.aggregate_limits is false in the configuration: nothing to apply\n",
        )?;
    } else {
        write_stdout(&plan_table(&plan))?;
    }
    Ok(Exit::Ok)
}

pub fn plan_table(plan: &Plan) -> String {
    let cell = |spec: &plan::SliceSpec, p: Property| {
        spec.properties
            .get(p)
            .map(|v| p.display(v))
            .unwrap_or_else(|| "-".to_owned())
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
        let user = spec
            .user
            .as_ref()
            .map(|u| u.to_string())
            .unwrap_or_else(|| "-".into());
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
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
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
    let report = match config::load(&cli.globals.config) {
        Ok(c) => CheckReport {
            ok: true,
            groups: c.groups.len(),
            users: c.members.len(),
            overrides: c.overrides.len(),
            problems: c.warnings.clone(),
        },
        Err(config::ConfigError::Invalid(d)) => CheckReport {
            ok: false,
            groups: 0,
            users: 0,
            overrides: 0,
            problems: d.items,
        },
        Err(e @ config::ConfigError::Unreadable { .. }) if cli.globals.json => CheckReport {
            ok: false,
            groups: 0,
            users: 0,
            overrides: 0,
            problems: vec![Diagnostic::error(
                crate::model::diagnostics::Location::new(&cli.globals.config, None),
                e.to_string(),
            )],
        },
        Err(e) => return Err(e.into()),
    };
    if cli.globals.json {
        print_json(&report)?;
    } else {
        for p in &report.problems {
            eprintln!("{p}");
        }
        let errors = report
            .problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .count();
        if report.ok {
            write_stdout(&format!(
                "{}: ok ({} groups, {} listed users, {} overrides, {} warnings)\n",
                cli.globals.config.display(),
                report.groups,
                report.users,
                report.overrides,
                report.problems.len()
            ))?;
        } else {
            eprintln!(
                "{}: {errors} error(s); fix them and run check-config again",
                cli.globals.config.display()
            );
        }
    }
    Ok(if report.ok { Exit::Ok } else { Exit::Usage })
}
