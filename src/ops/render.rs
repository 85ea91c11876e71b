//! `render` and `verify --offline`: the plan as drop-in files under `--root`, then a reload of
//! systemd when it manages this host (or a bus was named) and answers, and nothing runs in
//! ds01 slices that the reload could cut off its GPUs ([`reload_guard`]) unless the admin
//! allowed it.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::reload_guard::{self, Census, ACTIVATE};
use crate::config::{Config, ResolveError};
use crate::dropin::{self, TreePlan};
use crate::dropin::{Executed, OfflineReport, RenderError};
use crate::error::{Exit, ExitStatus};
use crate::model::names::UserName;
use crate::plan::{self, Plan};
use crate::state::ownership::Ownership;
use crate::state::StateError;
use crate::systemd::{BusError, BusSystemd};

/// The global options the file backend needs.
pub struct Context<'a> {
    pub root: &'a Path,
    /// `--bus` (or DBUS_SYSTEM_BUS_ADDRESS), when given.
    pub bus: Option<&'a str>,
    pub timeout: Duration,
    pub state_dir: &'a Path,
    /// The cgroup file system of the systemd that is reloaded (`--cgroup-root`): where the
    /// reload guard looks for running containers.
    pub cgroup_root: &'a Path,
}

#[derive(Debug, Clone, Copy)]
pub struct RenderOptions {
    pub dry_run: bool,
    pub no_reload: bool,
    /// Set when `apply --backend auto` fell back to files: systemd was asked and is not there.
    pub systemd_unreachable: bool,
    /// `--allow-reload`: reload even while containers run in ds01 slices.
    pub allow_reload: bool,
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
    #[error("the drop-ins under {} were written, but systemd did not reload; {ACTIVATE}", .root.display())]
    Reload {
        root: PathBuf,
        #[source]
        source: BusError,
    },
    #[error("refusing to render: the new files need a reload of systemd, and {hazard}. Nothing was written. Apply over D-Bus instead ('ds01-slices apply', which never reloads), or render with --no-reload and {ACTIVATE}, or rerun with --allow-reload to reload anyway")]
    ReloadRefused { hazard: String },
    #[error("the drop-ins under {} were written, but systemd was not reloaded: {hazard} (started while the files were written). {ACTIVATE}; or rerun with --allow-reload", .root.display())]
    ReloadWithheld { root: PathBuf, hazard: String },
}

impl ExitStatus for RenderRunError {
    fn exit_code(&self) -> Exit {
        match self {
            RenderRunError::Resolve(e) => e.exit_code(),
            RenderRunError::Files(e) => e.exit_code(),
            RenderRunError::State(e) => e.exit_code(),
            RenderRunError::Reload { .. }
            | RenderRunError::ReloadRefused { .. }
            | RenderRunError::ReloadWithheld { .. } => Exit::Failure,
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
/// reloads systemd when it manages this host (or a bus was named) and is reachable. When the
/// files need a reload that the guard withholds, nothing is written.
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
    if opts.dry_run {
        return Ok(RenderReport {
            tree: tp,
            executed: Executed::default(),
            dry_run: true,
            reload: None,
            notes: ownership.take_notes(),
        });
    }
    let reloader = if tp.changes_units() {
        Some(prepare_reload(ctx, &opts).await?)
    } else {
        None
    };
    let executed = dropin::execute(&tp, &ownership)?;
    let reload = match reloader {
        Some(r) => Some(reload(ctx, r, opts.allow_reload).await?),
        None => None,
    };
    Ok(RenderReport {
        tree: tp,
        executed,
        dry_run: false,
        reload,
        notes: ownership.take_notes(),
    })
}

/// What becomes of the reload after the files are written.
enum Reloader {
    /// No reload; the message says why and what must happen instead.
    Skip(String),
    Reload(BusSystemd),
}

/// Decides, before anything is written, whether systemd will be reloaded: Err when the
/// reload guard withholds it.
async fn prepare_reload(
    ctx: &Context<'_>,
    opts: &RenderOptions,
) -> Result<Reloader, RenderRunError> {
    if opts.no_reload {
        return Ok(Reloader::Skip(format!(
            "not reloaded (--no-reload): {ACTIVATE}"
        )));
    }
    if opts.systemd_unreachable {
        return Ok(Reloader::Skip(format!(
            "not reloaded (systemd is not reachable): {ACTIVATE}"
        )));
    }
    if !root_is_host(ctx.root) && ctx.bus.is_none() {
        return Ok(Reloader::Skip(format!(
            "not reloaded (--root {} is not this host's root and no --bus was given): {ACTIVATE} on that host",
            ctx.root.display()
        )));
    }
    let sd = match connect_checked(ctx.bus, ctx.timeout).await {
        Ok(sd) => sd,
        Err(e) => {
            let why = e.absence().unwrap_or_else(|| e.to_string());
            return Ok(Reloader::Skip(format!("not reloaded ({why}): {ACTIVATE}")));
        }
    };
    reload_guard::check(&sd, ctx.cgroup_root, opts.allow_reload)
        .await
        .map_err(|hazard| RenderRunError::ReloadRefused { hazard })?;
    Ok(Reloader::Reload(sd))
}

/// Reloads systemd after the files changed, asking the guard again: a container may have
/// started while they were written.
async fn reload(
    ctx: &Context<'_>,
    reloader: Reloader,
    allow: bool,
) -> Result<String, RenderRunError> {
    let sd = match reloader {
        Reloader::Skip(message) => return Ok(message),
        Reloader::Reload(sd) => sd,
    };
    let census: Census = reload_guard::check(&sd, ctx.cgroup_root, allow)
        .await
        .map_err(|hazard| RenderRunError::ReloadWithheld {
            root: ctx.root.to_owned(),
            hazard,
        })?;
    reload_guard::reload_after(&sd, ctx.cgroup_root, &census)
        .await
        .map_err(|source| RenderRunError::Reload {
            root: ctx.root.to_owned(),
            source,
        })
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
