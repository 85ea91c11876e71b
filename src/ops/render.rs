//! `render` and `verify --offline`: the plan as drop-in files under `--root`, then a reload of
//! systemd when it manages this host (or a bus was named) and answers.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::config::{Config, ResolveError};
use crate::dropin::{self, TreePlan};
use crate::dropin::{Executed, OfflineReport, RenderError};
use crate::error::{Exit, ExitStatus};
use crate::model::names::UserName;
use crate::plan::{self, Plan};
use crate::state::ownership::Ownership;
use crate::state::StateError;
use crate::systemd::{BusError, BusSystemd, Systemd};

/// The global options the file backend needs.
pub struct Context<'a> {
    pub root: &'a Path,
    /// `--bus` (or DBUS_SYSTEM_BUS_ADDRESS), when given.
    pub bus: Option<&'a str>,
    pub timeout: Duration,
    pub state_dir: &'a Path,
}

#[derive(Debug, Clone, Copy)]
pub struct RenderOptions {
    pub dry_run: bool,
    pub no_reload: bool,
    /// Set when `apply --backend auto` fell back to files: systemd was asked and is not there.
    pub systemd_unreachable: bool,
}

/// What a render did (or, with --dry-run, would do).
#[derive(Debug)]
pub struct RenderReport {
    pub tree: TreePlan,
    pub executed: Executed,
    pub dry_run: bool,
    /// What became of the reload: `None` when nothing changed for systemd.
    pub reload: Option<String>,
    pub notes: Vec<String>,
}

impl RenderReport {
    /// Slices whose file could not be rendered (someone else's file stands in the way).
    pub fn refused(&self) -> usize {
        self.tree.refused().count()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RenderRunError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Files(#[from] RenderError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the drop-ins under {} were written, but systemd did not reload; run 'systemctl daemon-reload' to activate them", .root.display())]
    Reload {
        root: PathBuf,
        #[source]
        source: BusError,
    },
}

impl ExitStatus for RenderRunError {
    fn exit_code(&self) -> Exit {
        match self {
            RenderRunError::Resolve(e) => e.exit_code(),
            RenderRunError::Files(e) => e.exit_code(),
            RenderRunError::State(e) => e.exit_code(),
            RenderRunError::Reload { .. } => Exit::Failure,
        }
    }
}

/// The plan for the whole configuration or one user.
pub fn plan_for(config: &Config, user: Option<&UserName>) -> Result<Plan, ResolveError> {
    match user {
        Some(u) => plan::plan_user(config, u),
        None => plan::plan(config),
    }
}

/// `--root /` means this host. Compared by components, not canonicalized: `/proc/<pid>/root`
/// of another mount namespace resolves to `/` too, and is not this host.
pub fn root_is_host(root: &Path) -> bool {
    root.has_root()
        && root
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::CurDir))
}

/// Connects and reads systemd's Version: the check `--backend auto` makes.
pub async fn connect_checked(bus: Option<&str>, timeout: Duration) -> Result<BusSystemd, BusError> {
    let sd = BusSystemd::connect(bus, timeout).await?;
    sd.version().await?;
    Ok(sd)
}

/// `render` (and `apply --backend files`): writes the plan's drop-ins under `--root`, then
/// reloads systemd when it manages this host (or a bus was named) and is reachable.
pub async fn render(
    ctx: &Context<'_>,
    config: &Config,
    user: Option<&UserName>,
    opts: RenderOptions,
) -> Result<RenderReport, RenderRunError> {
    let plan = plan_for(config, user)?;
    let ownership = Ownership::new(ctx.state_dir).with_lock_wait(ctx.timeout);
    let _lock = if opts.dry_run {
        None
    } else {
        Some(ownership.lock()?)
    };
    let tp = dropin::plan_tree(config, &plan, user, ctx.root, &ownership)?;
    let executed = if opts.dry_run {
        Executed::default()
    } else {
        dropin::execute(&tp, &ownership)?
    };
    let reload = if opts.dry_run || !tp.changes_units() {
        None
    } else {
        Some(reload(ctx, &opts).await?)
    };
    Ok(RenderReport {
        tree: tp,
        executed,
        dry_run: opts.dry_run,
        reload,
        notes: ownership.take_notes(),
    })
}

/// Asks systemd to reload after files changed, or says what must happen instead.
async fn reload(ctx: &Context<'_>, opts: &RenderOptions) -> Result<String, RenderRunError> {
    let activate = "run 'systemctl daemon-reload' or boot to activate them";
    if opts.no_reload {
        return Ok(format!("not reloaded (--no-reload): {activate}"));
    }
    if opts.systemd_unreachable {
        return Ok(format!(
            "not reloaded (systemd is not reachable): {activate}"
        ));
    }
    if !root_is_host(ctx.root) && ctx.bus.is_none() {
        return Ok(format!(
            "not reloaded (--root {} is not this host's root and no --bus was given): {activate} on that host",
            ctx.root.display()
        ));
    }
    let sd = match connect_checked(ctx.bus, ctx.timeout).await {
        Ok(sd) => sd,
        Err(e) => {
            let why = e.absence().unwrap_or_else(|| e.to_string());
            return Ok(format!("not reloaded ({why}): {activate}"));
        }
    };
    sd.reload().await.map_err(|source| RenderRunError::Reload {
        root: ctx.root.to_owned(),
        source,
    })?;
    Ok("systemd reloaded".to_owned())
}

/// `verify --offline`: the rendered tree under `--root` against the plan, without systemd.
pub fn verify_offline(
    ctx: &Context<'_>,
    config: &Config,
    user: Option<&UserName>,
) -> Result<OfflineReport, RenderRunError> {
    let plan = plan_for(config, user)?;
    let ownership = Ownership::new(ctx.state_dir).with_lock_wait(ctx.timeout);
    let tp = dropin::plan_tree(config, &plan, user, ctx.root, &ownership)?;
    Ok(dropin::offline_check(&tp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_literal_slash_is_this_host() {
        for (root, host) in [
            ("/", true),
            ("//", true),
            ("/.", true),
            ("/proc/1/root", false),
            ("/tmp/x", false),
            (".", false),
            ("", false),
        ] {
            assert_eq!(root_is_host(Path::new(root)), host, "{root:?}");
        }
    }
}
