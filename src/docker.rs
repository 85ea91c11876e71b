//! Docker's cgroup driver, for `doctor`: asked of the running daemon (`docker info`, bounded
//! in time), or read from the daemon's configuration (`etc/docker/daemon.json` under
//! `--root`). Only facts: which driver that means, and whether it is good enough, is for the
//! caller to judge. Containers land in a user's slice (`--cgroup-parent=ds01-...slice`) only
//! with the `systemd` driver.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long `docker info` may take before it is killed: a daemon that hangs (or a
/// `DOCKER_HOST` nobody answers on) must not hang `doctor`.
pub const INFO_TIMEOUT: Duration = Duration::from_secs(5);

/// At most this much of daemon.json and of docker's output is read.
const MAX_BYTES: u64 = 1 << 20;

/// What `docker info --format '{{.CgroupDriver}}'` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    Driver(String),
    /// No `docker` on PATH.
    NotInstalled,
    /// It ran and failed (the daemon not running, no access to its socket, ...): the first
    /// line of what it said.
    Failed(String),
    TimedOut(Duration),
}

/// What daemon.json says about the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonJson {
    Missing,
    /// `exec-opts` sets `native.cgroupdriver=` to this.
    Driver(String),
    /// The file is there and sets no driver.
    NoDriver,
    /// Not JSON, not an object, unreadable: dockerd would refuse to start with it.
    Invalid(String),
}

/// Asks the daemon that the environment names (`DOCKER_HOST`, `DOCKER_CONTEXT`, or the
/// default socket) through the `docker` client, killing it after `timeout`.
pub fn info(timeout: Duration) -> Info {
    let spawned = Command::new("docker")
        .args(["info", "--format", "{{.CgroupDriver}}"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Info::NotInstalled,
        Err(e) => return Info::Failed(format!("cannot run docker: {e}")),
    };
    // Read on threads of their own: a full pipe would otherwise stall the child, and a
    // grandchild that keeps a pipe open must not stall us (the threads are then left to
    // finish with the process).
    let (tx, rx) = mpsc::channel();
    if let Some(pipe) = child.stdout.take() {
        drain(pipe, true, &tx);
    }
    if let Some(pipe) = child.stderr.take() {
        drain(pipe, false, &tx);
    }
    drop(tx);
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Info::TimedOut(timeout);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Info::Failed(format!("cannot wait for docker: {e}")),
        }
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    let grace = Duration::from_millis(500);
    while let Ok((is_stdout, text)) = rx.recv_timeout(grace) {
        if is_stdout {
            stdout = text;
        } else {
            stderr = text;
        }
    }
    let driver = stdout.trim();
    if status.success() && !driver.is_empty() {
        return Info::Driver(driver.to_owned());
    }
    let said = stderr
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(driver);
    Info::Failed(if said.is_empty() {
        format!("docker info exited with {status} and said nothing")
    } else {
        said.to_owned()
    })
}

fn drain(
    pipe: impl std::io::Read + Send + 'static,
    is_stdout: bool,
    tx: &mpsc::Sender<(bool, String)>,
) {
    let tx = tx.clone();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.take(MAX_BYTES).read_to_string(&mut text);
        let _ = tx.send((is_stdout, text));
    });
}

/// The daemon's configuration file under `root`.
pub fn daemon_json_path(root: &Path) -> PathBuf {
    root.join("etc/docker/daemon.json")
}

/// Reads `etc/docker/daemon.json` under `root` (a regular file only: a FIFO there must not
/// block us).
pub fn daemon_json(root: &Path) -> DaemonJson {
    let path = daemon_json_path(root);
    match std::fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return DaemonJson::Missing,
        Err(e) => return DaemonJson::Invalid(format!("cannot look at it: {e}")),
        Ok(m) if !m.is_file() => return DaemonJson::Invalid("not a regular file".to_owned()),
        Ok(_) => {}
    }
    let mut text = String::new();
    match std::fs::File::open(&path).and_then(|f| f.take(MAX_BYTES).read_to_string(&mut text)) {
        Ok(_) => parse_daemon_json(&text),
        Err(e) => DaemonJson::Invalid(format!("cannot read it: {e}")),
    }
}

/// The driver a daemon.json text sets: the last `native.cgroupdriver=` of `exec-opts`, as
/// dockerd takes it.
pub fn parse_daemon_json(text: &str) -> DaemonJson {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return DaemonJson::Invalid(format!("not valid JSON: {e}")),
    };
    let Some(object) = value.as_object() else {
        return DaemonJson::Invalid("not a JSON object".to_owned());
    };
    let opts = object
        .get("exec-opts")
        .and_then(|o| o.as_array())
        .into_iter()
        .flatten()
        .filter_map(|o| o.as_str());
    let mut driver = None;
    for opt in opts {
        if let Some((key, value)) = opt.split_once('=') {
            if key.trim().eq_ignore_ascii_case("native.cgroupdriver") {
                driver = Some(value.trim().to_owned());
            }
        }
    }
    driver.map_or(DaemonJson::NoDriver, DaemonJson::Driver)
}

/// Where clients find Docker: the users' socket (the daemon's own, or the gate's when the gate
/// is switched on).
pub const USERS_SOCKET: &str = "/run/docker.sock";
/// Where the gate's docker.socket drop-in moves the daemon's own socket (root's only).
pub const DAEMON_SOCKET: &str = "/run/ds01-slices/docker.sock";
/// The header on the gate's answers to `/_ping`: the daemon's socket it forwards to. How
/// `doctor` tells the gate from the daemon.
pub const GATE_HEADER: &str = "ds01-slices-gate";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_driver_from_exec_opts() {
        let d = |t: &str| parse_daemon_json(t);
        assert_eq!(
            d(r#"{"exec-opts": ["native.cgroupdriver=systemd"]}"#),
            DaemonJson::Driver("systemd".into())
        );
        assert_eq!(
            d(
                r#"{"exec-opts": ["native.cgroupdriver=systemd", "native.cgroupdriver = cgroupfs"]}"#
            ),
            DaemonJson::Driver("cgroupfs".into())
        );
        assert_eq!(d(r#"{"log-driver": "json-file"}"#), DaemonJson::NoDriver);
        assert_eq!(
            d(r#"{"exec-opts": ["isolation=hyperv"]}"#),
            DaemonJson::NoDriver
        );
        assert!(matches!(d("{"), DaemonJson::Invalid(_)));
        assert!(matches!(d("[]"), DaemonJson::Invalid(_)));
    }

    #[test]
    fn a_missing_file_is_missing() {
        assert_eq!(
            daemon_json(Path::new("/nonexistent-ds01-root")),
            DaemonJson::Missing
        );
    }
}
