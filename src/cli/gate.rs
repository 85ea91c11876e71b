//! `gate`: the Docker API gate (src/gate/) on its socket, with one journal line per create.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

use super::args::Globals;
use super::exit::{CliError, CliResult};
use super::out;
use crate::gate::admit::Settings;
use crate::gate::rules::create::Protected;
use crate::gate::service::{Event, Gate};
use crate::gate::{server, DAEMON_SOCKET, USERS_SOCKET};
use crate::model::admission::Policy;

pub fn gate(
    globals: &Globals,
    listen: Option<&Path>,
    socket_group: &str,
    docker: &Path,
    strict: bool,
) -> CliResult {
    let mut sockets: Vec<String> = [DAEMON_SOCKET, USERS_SOCKET, "/var/run/docker.sock"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    sockets.push(docker.to_string_lossy().into_owned());
    if let Some(l) = listen {
        sockets.push(l.to_string_lossy().into_owned());
    }
    let settings = Settings {
        config: globals.config.clone(),
        state_dir: globals.state_dir.clone(),
        cgroup_root: globals.cgroup_root.clone(),
        bus: globals.bus.clone(),
        timeout: globals.timeout(),
        policy: if strict {
            Policy::Strict
        } else {
            Policy::Allow
        },
        daemon: docker.to_owned(),
        protected: Protected::new(sockets),
    };
    // One thread for every connection: passing a chunk on is a read and a write, and the
    // multi-thread scheduler woke a second worker for each (the gate's CPU per MiB passed was
    // about a third higher: docs/gate.md, "What it costs"). What blocks (each decision: NSS,
    // D-Bus, the lock) runs on the blocking pool, never on this thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .map_err(CliError::failure)?;
    let listener = {
        let _entered = rt.enter();
        listener(listen, socket_group)?
    };
    out::stderr(&format!(
        "ds01-slices gate: serving {} in front of the Docker daemon at {}",
        listen.map_or_else(
            || "the socket systemd passed".to_owned(),
            |p| p.display().to_string()
        ),
        docker.display()
    ));
    let gate = Arc::new(Gate::new(settings, Box::new(|e| out::stderr(&line(&e)))));
    let ended = rt.block_on(server::serve(gate, listener, server::limits(), |e| {
        out::stderr(&format!("ds01-slices gate: {e}"))
    }));
    let Err(e) = ended;
    Err(CliError::failure(
        anyhow::Error::new(e).context("the gate's listening socket failed"),
    ))
}

/// The journal's line for one decision.
fn line(e: &Event) -> String {
    let pid = e.peer.pid.map(|p| format!(", pid {p}")).unwrap_or_default();
    let who = match &e.user {
        Some(user) => format!("{user} (uid {}{pid})", e.peer.uid),
        None => format!("uid {}{pid}", e.peer.uid),
    };
    let slice = e
        .slice
        .as_ref()
        .map(|s| format!(" in {s}"))
        .unwrap_or_default();
    let mut text = format!(
        "ds01-slices gate: {} by {who}{slice}: {}",
        e.what, e.decision
    );
    for note in &e.notes {
        text.push_str(" | ");
        text.push_str(note);
    }
    text
}

/// The socket systemd passed, or `--listen PATH` bound here (a socket file left there by an
/// earlier run is replaced; any other file is not).
fn listener(listen: Option<&Path>, group: &str) -> Result<tokio::net::UnixListener, CliError> {
    let std_listener = match listen {
        Some(path) => bind(path, group)?,
        None => listenfd::ListenFd::from_env()
            .take_unix_listener(0)
            .context("the socket systemd passed (LISTEN_FDS) is not a Unix stream socket")
            .map_err(CliError::failure)?
            .ok_or_else(|| {
                CliError::failure(anyhow::anyhow!(
                    "no socket to serve: run the gate from ds01-slices-gate.socket, or pass --listen PATH"
                ))
            })?,
    };
    std_listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixListener::from_std(std_listener))
        .context("cannot serve the gate's socket")
        .map_err(CliError::failure)
}

fn bind(path: &Path, group: &str) -> Result<std::os::unix::net::UnixListener, CliError> {
    use std::os::unix::fs::FileTypeExt as _;
    let fail = |what: String| {
        move |e: std::io::Error| CliError::failure(anyhow::Error::new(e).context(what))
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(CliError::failure(anyhow::anyhow!(
                "{} exists and is not a socket; remove it or pass another --listen",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(fail(format!("cannot replace {}", path.display())))?;
    }
    let gid = nix::unistd::Group::from_name(group)
        .ok()
        .flatten()
        .ok_or_else(|| {
            CliError::failure(anyhow::anyhow!(
                "no group {group:?} for the socket {}; pass --socket-group",
                path.display()
            ))
        })?
        .gid;
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(fail(format!("cannot listen on {}", path.display())))?;
    std::os::unix::fs::chown(path, Some(0), Some(gid.as_raw()))
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)))
        .map_err(fail(format!(
            "cannot set the owner and mode of {}",
            path.display()
        )))?;
    Ok(listener)
}
