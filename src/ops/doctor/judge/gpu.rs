//! GPU containers and systemd: NVIDIA's runtime gives containers their GPUs behind systemd's
//! back, and with Docker's `systemd` cgroup driver a daemon-reload makes systemd re-apply the
//! device rules it knows of, which do not include the GPUs.

use std::path::Path;

use super::{Check, DockerDriver, Finding, Status};
use crate::docker::Runtimes;

/// What to do: this tool's side, and NVIDIA's documented workaround (checked against NVIDIA's
/// notice, nvidia-container-toolkit issue 48, and runc issue 3708).
const FIX: &str = "never run `systemctl daemon-reload` while GPU containers run (ds01-slices applies over D-Bus and never reloads unless told: `render` and the take-over of rendered files withhold the reload while containers run in ds01 slices, `--allow-reload` overrides that); make a reload harmless as NVIDIA documents it (NVIDIA Container Toolkit 1.12 or later): once the driver is loaded at boot, run `nvidia-ctk system create-dev-char-symlinks --create-all` (e.g. from a udev rule), so that the NVIDIA devices have the /dev/char links through which runc hands their rules to systemd; a container that lost its GPUs must be restarted. See https://github.com/NVIDIA/nvidia-container-toolkit/issues/48";

/// `daemon`: the runtimes the running daemon reported (None when it did not answer); `file`:
/// those of daemon.json at `json_path`; `driver`: Docker's cgroup driver as the docker check
/// found it (None when unknown).
pub fn gpu(
    daemon: Option<&Runtimes>,
    file: &Runtimes,
    json_path: &Path,
    driver: Option<&DockerDriver>,
) -> Finding {
    let json = json_path.display().to_string();
    let mut sources = Vec::new();
    if let Some(r) = daemon {
        sources.push(("docker info", r));
    }
    sources.push((json.as_str(), file));
    let default = sources
        .iter()
        .find(|(_, r)| r.default_is_nvidia())
        .and_then(|(source, r)| Some((*source, r.default.as_deref()?)));
    let beside = sources
        .iter()
        .find_map(|(source, r)| Some((*source, r.nvidia().first().copied()?)));
    let what = match (default, beside) {
        (Some((source, name)), _) => format!(
            "Docker's default runtime is NVIDIA's ({name}, from {source}): every container gets its GPUs from it"
        ),
        (None, Some((source, (name, _)))) => format!(
            "Docker has NVIDIA's runtime `{name}` (from {source}) beside its default: containers started with --runtime={name} get their GPUs from it"
        ),
        (None, None) => {
            let checked = sources
                .iter()
                .map(|(source, _)| *source)
                .collect::<Vec<_>>()
                .join(" and ");
            return Finding::ok(
                Check::Gpu,
                format!("no NVIDIA runtime configured for Docker ({checked})"),
            );
        }
    };
    let hazard = "NVIDIA's runtime adds the GPUs to a container's device rules behind systemd's back, so a `systemctl daemon-reload` (by an admin, a package's install script, anything) makes systemd re-apply its own rules to the container's cgroup and the container loses its GPUs (\"Failed to initialize NVML: Unknown Error\") until it is restarted";
    match driver.map(|d| d.driver.as_str()) {
        Some("systemd") => Finding::bad(
            Check::Gpu,
            Status::Warning,
            format!("{what}, and Docker's cgroup driver is systemd: {hazard}"),
            FIX,
        ),
        None => Finding::bad(
            Check::Gpu,
            Status::Warning,
            format!("{what}; Docker's cgroup driver is not known, and with the systemd driver (the one ds01 slices need) {hazard}"),
            FIX,
        ),
        Some(other) => Finding::ok(
            Check::Gpu,
            format!("{what}; Docker's cgroup driver is {other}, so systemd does not manage the containers' device rules and a daemon-reload leaves their GPUs alone (containers miss their slices with it, though: see the docker finding)"),
        ),
    }
}
