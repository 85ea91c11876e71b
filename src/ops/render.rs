//! `render`, `apply --backend files|auto` and `verify --offline`, as the command line runs
//! them: what is printed, and when systemd is asked to reload.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use serde_json::json;

use crate::config::Config;
use crate::dropin::{self, FileAction, TreePlan};
use crate::error::Exit;
use crate::model::names::UserName;
use crate::plan::{self, Plan};
use crate::state::ownership::Ownership;
use crate::systemd::{BusError, BusSystemd, Systemd};

/// The global options the file backend needs.
pub struct Context<'a> {
    pub root: &'a Path,
    /// `--bus` (or DBUS_SYSTEM_BUS_ADDRESS), when given.
    pub bus: Option<&'a str>,
    pub timeout: Duration,
    pub state_dir: &'a Path,
    pub json: bool,
}

pub struct RenderOptions {
    pub dry_run: bool,
    pub no_reload: bool,
    /// Set when `apply --backend auto` fell back to files: systemd was asked and is not there.
    pub systemd_unreachable: bool,
}

/// The plan for the whole configuration or one user.
pub fn plan_for(config: &Config, user: Option<&UserName>) -> anyhow::Result<Plan> {
    Ok(match user {
        Some(u) => plan::plan_user(config, u)?,
        None => plan::plan(config)?,
    })
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
    match sd.version().await {
        Ok(_) => Ok(sd),
        Err(e) => Err(name_not_owned(e, sd.address())),
    }
}

/// D-Bus errors that mean nobody owns org.freedesktop.systemd1 on the bus: the daemon's
/// answer when systemd is absent, or, when a service file makes the name activatable, the
/// failed activation.
const NOT_OWNED: [&str; 3] = [
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.Spawn.",
];

/// Property reads come back from zbus as `fdo` errors, which `BusError::from_zbus` files
/// under `Other` with the D-Bus error name in the text; this recovers "systemd is absent"
/// from them so that `--backend auto` falls back and the message says what is wrong.
fn name_not_owned(e: BusError, address: &str) -> BusError {
    match &e {
        BusError::Other { detail, .. } | BusError::Refused { detail, .. }
            if NOT_OWNED.iter().any(|n| detail.contains(n)) =>
        {
            BusError::ServiceUnknown {
                address: address.to_owned(),
            }
        }
        _ if e.is_service_unknown() => BusError::ServiceUnknown {
            address: address.to_owned(),
        },
        _ => e,
    }
}

/// Errors that mean "no systemd to talk to" (rather than "systemd refused" or "systemd is
/// slow"): only these make `--backend auto` render files instead.
pub fn systemd_absent(e: &BusError) -> Option<String> {
    match e {
        BusError::Unreachable { address, reason } => {
            Some(format!("systemd is not reachable at {address} ({reason})"))
        }
        BusError::ServiceUnknown { address } => Some(format!(
            "systemd is not reachable at {address} (org.freedesktop.systemd1 is not on that bus)"
        )),
        other if other.is_service_unknown() => Some(format!("systemd is not reachable ({other})")),
        _ => None,
    }
}

#[derive(Debug, Serialize)]
struct FileLine {
    slice: String,
    path: PathBuf,
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

fn action_name(a: &FileAction) -> &'static str {
    match a {
        FileAction::Unchanged => "unchanged",
        FileAction::Create(_) => "create",
        FileAction::Update(_) => "update",
        FileAction::TakeOver(_) => "take_over",
        FileAction::Remove(_) => "remove",
        FileAction::Refuse { .. } => "refused",
        FileAction::KeepForeign { .. } => "ignored",
    }
}

/// `render` (and `apply --backend files`): writes the plan's drop-ins under `--root`, then
/// reloads systemd when it manages this host (or a bus was named) and is reachable.
pub async fn render(
    ctx: &Context<'_>,
    config: &Config,
    user: Option<&UserName>,
    opts: RenderOptions,
) -> anyhow::Result<Exit> {
    let plan = plan_for(config, user)?;
    if !config.aggregate_limits {
        eprintln!("enforcement.aggregate_limits is false: no files are rendered; files ds01-slices rendered earlier are removed");
    }
    let ownership = Ownership::new(ctx.state_dir);
    let _lock = if opts.dry_run {
        None
    } else {
        Some(ownership.lock()?)
    };
    let tp = dropin::plan_tree(config, &plan, user, ctx.root, &ownership)?;
    let executed = if opts.dry_run {
        dropin::Executed::default()
    } else {
        dropin::execute(&tp, &ownership)?
    };
    let reload = if opts.dry_run || !tp.changes_units() {
        None
    } else {
        Some(reload(ctx, &opts).await?)
    };
    print_render(ctx, &tp, &executed, opts.dry_run, reload.as_deref())?;
    for f in &tp.files {
        match &f.action {
            FileAction::KeepForeign { reason } => {
                eprintln!("ds01-slices: warning: {reason}: left alone");
            }
            FileAction::Refuse { reason, .. } => eprintln!(
                "ds01-slices: refused {}: {reason}; it was left alone and {} was not rendered: move it away (keeping what you need from it in another drop-in) and rerun",
                f.path.display(),
                f.slice
            ),
            _ => {}
        }
    }
    for s in tp.shadows.iter().filter(|s| !s.owned) {
        let human = |text: &str| match crate::dropin::property_for_setting(s.property) {
            Some(p) => crate::dropin::display_setting_value(p, text),
            None => text.to_owned(),
        };
        eprintln!(
            "ds01-slices: warning: {} sets {}={}, which shadows {}={} in {}: it was not set by ds01-slices, so it stays; delete it if that value is not wanted, then run 'systemctl daemon-reload'",
            s.dbus_file.display(),
            s.property,
            human(&s.dbus_value),
            s.property,
            human(&s.rendered_value),
            s.rendered_file.display()
        );
    }
    let refused = tp.refused().count();
    if refused > 0 {
        eprintln!("ds01-slices: {refused} slice(s) not rendered; the others were. Fix the cause and rerun: render converges.");
        return Ok(Exit::Failure);
    }
    Ok(Exit::Ok)
}

/// Asks systemd to reload after files changed, or says what must happen instead.
async fn reload(ctx: &Context<'_>, opts: &RenderOptions) -> anyhow::Result<String> {
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
            let why = systemd_absent(&e).unwrap_or_else(|| e.to_string());
            return Ok(format!("not reloaded ({why}): {activate}"));
        }
    };
    sd.reload().await.with_context(|| {
        format!(
            "the drop-ins under {} were written, but systemd did not reload; run 'systemctl daemon-reload' to activate them",
            ctx.root.display()
        )
    })?;
    Ok("systemd reloaded".to_owned())
}

fn print_render(
    ctx: &Context<'_>,
    tp: &TreePlan,
    executed: &dropin::Executed,
    dry_run: bool,
    reload: Option<&str>,
) -> anyhow::Result<()> {
    let unchanged = tp
        .files
        .iter()
        .filter(|f| f.action == FileAction::Unchanged)
        .count();
    let dbus: Vec<&PathBuf> = if dry_run {
        tp.dbus
            .iter()
            .filter(|d| d.recognised)
            .map(|d| &d.path)
            .collect()
    } else {
        executed.dbus_removed.iter().collect()
    };
    if ctx.json {
        let files: Vec<FileLine> = tp
            .files
            .iter()
            .filter(|f| f.action != FileAction::Unchanged)
            .map(|f| FileLine {
                slice: f.slice.to_string(),
                path: f.path.clone(),
                action: action_name(&f.action),
                reason: match &f.action {
                    FileAction::Refuse { reason, .. } | FileAction::KeepForeign { reason } => {
                        Some(reason.clone())
                    }
                    _ => None,
                },
            })
            .collect();
        let value = json!({
            "root": tp.root,
            "dry_run": dry_run,
            "files": files,
            "unchanged": unchanged,
            "dbus_drop_ins_removed": dbus,
            "shadowed": tp.shadows.iter().filter(|s| !s.owned).collect::<Vec<_>>(),
            "reload": reload,
        });
        let text =
            serde_json::to_string_pretty(&value).context("cannot serialize output as JSON")?;
        return crate::cli::write_stdout(&format!("{text}\n"));
    }
    let mut out = String::new();
    let mut written = 0;
    let mut removed = 0;
    for f in &tp.files {
        let line = match &f.action {
            FileAction::Create(_) => format!("+ {}", f.path.display()),
            FileAction::Update(_) => format!("~ {}", f.path.display()),
            FileAction::TakeOver(_) => {
                format!("~ {} (the old generator's: taken over)", f.path.display())
            }
            FileAction::Remove(_) => format!("- {} (stale)", f.path.display()),
            _ => continue,
        };
        if matches!(f.action, FileAction::Remove(_)) {
            removed += 1;
        } else {
            written += 1;
        }
        out.push_str(&line);
        out.push('\n');
    }
    for d in &dbus {
        out.push_str(&format!(
            "- {} (set over D-Bus by ds01-slices; it would shadow the rendered file)\n",
            d.display()
        ));
    }
    if dry_run {
        out.push_str(&format!(
            "dry run: would write {written} and remove {} files under {}; {unchanged} unchanged; nothing was changed\n",
            removed + dbus.len(),
            tp.root.display()
        ));
    } else if written + removed + dbus.len() == 0 {
        out.push_str(&format!(
            "nothing to do: {unchanged} rendered files under {} already as configured\n",
            tp.root.display()
        ));
    } else {
        out.push_str(&format!(
            "rendered: {written} written, {} removed, {unchanged} unchanged under {}\n",
            removed + dbus.len(),
            tp.root.display()
        ));
    }
    if let Some(r) = reload {
        out.push_str(r);
        out.push('\n');
    }
    crate::cli::write_stdout(&out)
}

/// `verify --offline`: the rendered tree under `--root` against the plan, without systemd.
pub fn verify_offline(
    ctx: &Context<'_>,
    config: &Config,
    user: Option<&UserName>,
    json: bool,
) -> anyhow::Result<Exit> {
    let plan = plan_for(config, user)?;
    let ownership = Ownership::new(ctx.state_dir);
    let tp = dropin::plan_tree(config, &plan, user, ctx.root, &ownership)?;
    let report = dropin::offline_check(&tp);
    if json {
        let text =
            serde_json::to_string_pretty(&report).context("cannot serialize output as JSON")?;
        crate::cli::write_stdout(&format!("{text}\n"))?;
    } else {
        crate::cli::write_stdout(&crate::cli::offline::render_offline_text(&report))?;
    }
    Ok(if report.holds { Exit::Ok } else { Exit::Drift })
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

    #[test]
    fn an_unowned_systemd_name_is_an_absent_systemd() {
        for detail in [
            "org.freedesktop.DBus.Error.ServiceUnknown: The name org.freedesktop.systemd1 was not provided by any .service files",
            "org.freedesktop.DBus.Error.Spawn.ChildExited: Process /bin/false exited with status 1",
        ] {
            let e = BusError::Other {
                what: "reading systemd's Version".into(),
                detail: detail.into(),
            };
            assert!(matches!(
                name_not_owned(e, "unix:path=/b"),
                BusError::ServiceUnknown { address } if address == "unix:path=/b"
            ));
        }
        let other = BusError::Other {
            what: "x".into(),
            detail: "org.freedesktop.DBus.Error.Failed: no".into(),
        };
        assert!(matches!(name_not_owned(other, "a"), BusError::Other { .. }));
    }

    #[test]
    fn only_a_missing_systemd_falls_back() {
        let gone = BusError::Unreachable {
            address: "unix:path=/x".into(),
            reason: "No such file or directory".into(),
        };
        assert_eq!(
            systemd_absent(&gone).as_deref(),
            Some("systemd is not reachable at unix:path=/x (No such file or directory)")
        );
        let slow = BusError::Timeout {
            what: "x".into(),
            secs: 1,
        };
        assert!(systemd_absent(&slow).is_none());
        let denied = BusError::AccessDenied {
            what: "x".into(),
            detail: "y".into(),
        };
        assert!(systemd_absent(&denied).is_none());
    }
}
