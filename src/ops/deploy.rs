//! `apply` as the command runs it on a host: over D-Bus, as rendered files, or D-Bus when
//! systemd answers and files otherwise; and the take-over of files rendered earlier once
//! D-Bus holds their values. The take-over reloads systemd only when nothing runs in ds01
//! slices or the admin allowed it ([`reload_guard`](super::reload_guard)): the files can go
//! without one, since D-Bus already holds every value they held.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::apply::{self, ApplyError, ApplyOptions, ApplyReport};
use super::reload_guard;
use super::render::{self, Context, RenderOptions, RenderReport, RenderRunError};
use super::take_over::RenderedMask;
use super::Scope;
use crate::config::Config;
use crate::dropin::{self, RenderError};
use crate::error::{Exit, ExitStatus, UsageError};
use crate::model::names::{SliceName, UserName};
use crate::state::ownership::Ownership;
use crate::systemd::stats::BusStatsSnapshot;
use crate::systemd::{BusError, WriteMode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Auto,
    Dbus,
    Files,
}

/// What `apply` was asked to do, and how.
#[derive(Debug, Clone, Copy)]
pub struct DeployOptions {
    pub apply: ApplyOptions,
    pub backend: Backend,
    /// `--allow-reload`: reload systemd even while containers run in ds01 slices.
    pub allow_reload: bool,
}

#[derive(Debug)]
pub enum DeployReport {
    Dbus(DbusDeploy),
    Rendered {
        /// Why D-Bus was not used, when `--backend auto` fell back.
        fallback: Option<String>,
        report: RenderReport,
    },
}

#[derive(Debug)]
pub struct DbusDeploy {
    pub apply: ApplyReport,
    pub bus: BusStatsSnapshot,
    /// Rendered files found that are not ours: left alone, and D-Bus values override them.
    pub foreign: Vec<PathBuf>,
    /// Rendered files of ours that D-Bus now holds: removed (or, dry run, would be).
    pub taken_over: Vec<PathBuf>,
    /// With --dry-run: how many rendered files would be removed.
    pub would_take_over: usize,
    /// After a take-over: what became of systemd's reload (None when nothing was taken over).
    pub reload: Option<TakeOverReload>,
}

/// What became of the reload after a take-over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakeOverReload {
    /// Reloaded; what ran then, in words.
    Done(String),
    /// Not reloaded, and why: systemd lists the removed files until its next reload, which
    /// changes no limit.
    Withheld(String),
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Usage(#[from] UsageError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Render(#[from] RenderRunError),
    #[error(transparent)]
    Files(#[from] RenderError),
    #[error("rendered drop-ins were removed (D-Bus holds their values), but systemd did not reload: it lists the removed files until its next reload or boot, which changes no limit")]
    Reload(#[source] BusError),
}

impl ExitStatus for DeployError {
    fn exit_code(&self) -> Exit {
        match self {
            DeployError::Usage(e) => e.exit_code(),
            DeployError::Apply(e) => e.exit_code(),
            DeployError::Render(e) => e.exit_code(),
            DeployError::Files(e) => e.exit_code(),
            _ => Exit::Failure,
        }
    }
}

pub async fn deploy(
    ctx: &Context<'_>,
    config: &Config,
    user: Option<&UserName>,
    options: DeployOptions,
) -> Result<DeployReport, DeployError> {
    let opts = options.apply;
    let report = deploy_with(ctx, config, user, options).await?;
    let complete = match &report {
        DeployReport::Dbus(d) => d.apply.complete(),
        DeployReport::Rendered { report, .. } => report.refused() == 0,
    };
    if complete && user.is_none() && !opts.dry_run {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ownership::new(ctx.state_dir).record_applied(now);
    }
    Ok(report)
}

async fn deploy_with(
    ctx: &Context<'_>,
    config: &Config,
    user: Option<&UserName>,
    options: DeployOptions,
) -> Result<DeployReport, DeployError> {
    let DeployOptions {
        apply: opts,
        backend,
        allow_reload,
    } = options;
    if backend == Backend::Files && opts.mode == WriteMode::Runtime {
        return Err(UsageError(
            "--runtime applies to the D-Bus backend only; rendered files are persistent (drop --runtime or use --backend dbus)".into(),
        )
        .into());
    }
    let render_opts = |systemd_unreachable| RenderOptions {
        dry_run: opts.dry_run,
        no_reload: false,
        systemd_unreachable,
        allow_reload,
    };
    let sd = match backend {
        Backend::Files => {
            let report = render::render(ctx, config, user, render_opts(false)).await?;
            return Ok(DeployReport::Rendered {
                fallback: None,
                report,
            });
        }
        Backend::Dbus => render::connect_checked(ctx.bus, ctx.timeout).await?,
        Backend::Auto => match render::connect_checked(ctx.bus, ctx.timeout).await {
            Ok(sd) => sd,
            Err(e) => {
                // Runtime limits promise to vanish at reboot; rendered files would not.
                // A named bus may be another machine's (or a sandbox's): rendering into
                // this host's /etc would be the wrong files, so that needs --root.
                let local = ctx.bus.is_none() || ctx.root != Path::new("/");
                let Some(why) = e
                    .absence()
                    .filter(|_| opts.mode == WriteMode::Persistent && local)
                else {
                    return Err(e.into());
                };
                let report = render::render(ctx, config, user, render_opts(true)).await?;
                return Ok(DeployReport::Rendered {
                    fallback: Some(why),
                    report,
                });
            }
        },
    };
    let ownership = Ownership::new(ctx.state_dir).with_lock_wait(ctx.timeout);
    // Files rendered earlier are taken over: D-Bus first gets every value they hold (hidden
    // from apply's reads so that it writes them), then they are removed.
    // With --bus naming another systemd, the default --root (this host) is not its root:
    // this host's files are only taken over when --root is given with --bus, or without it.
    let plan = render::plan_for(config, user).map_err(ApplyError::from)?;
    let sanitized = user.and_then(|u| u.sanitized().ok());
    let rendered = if render::root_is_host(ctx.root) && ctx.bus.is_some() {
        dropin::Rendered::default()
    } else {
        dropin::find_rendered(ctx.root, |s| dropin::in_scope(s, &plan, sanitized.as_ref()))?
    };
    let masked = RenderedMask::new(&sd, rendered.files.clone());
    let report = apply::apply(&masked, config, Scope::from(user), &ownership, opts).await?;
    let mut out = DbusDeploy {
        bus: sd.stats(),
        foreign: rendered.foreign,
        taken_over: Vec::new(),
        would_take_over: 0,
        reload: None,
        apply: report,
    };
    if opts.dry_run {
        out.would_take_over = rendered.files.len();
        return Ok(DeployReport::Dbus(out));
    }
    // A slice whose write failed keeps its file: it is all that holds its limits.
    let kept: BTreeSet<&SliceName> = out
        .apply
        .failures
        .iter()
        .map(|(s, _)| s)
        .chain(out.apply.refused.iter().map(|c| &c.slice))
        .collect();
    let slices: Vec<SliceName> = rendered
        .files
        .keys()
        .filter(|s| !kept.contains(s))
        .cloned()
        .collect();
    out.taken_over = dropin::take_over_rendered(ctx.root, &slices)?;
    if !out.taken_over.is_empty() {
        out.reload = Some(
            match reload_guard::check(&sd, ctx.cgroup_root, allow_reload).await {
                Ok(census) => TakeOverReload::Done(
                    reload_guard::reload_after(&sd, ctx.cgroup_root, &census)
                        .await
                        .map_err(DeployError::Reload)?,
                ),
                Err(hazard) => TakeOverReload::Withheld(hazard),
            },
        );
    }
    Ok(DeployReport::Dbus(out))
}
