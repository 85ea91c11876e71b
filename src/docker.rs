//! Docker, as far as this tool asks it: its cgroup driver and runtimes for `doctor` (asked of
//! the running daemon with `docker info`, bounded in time, or read from the daemon's
//! configuration, `etc/docker/daemon.json` under `--root`), and the names and labels of
//! containers ([`api`]). Only facts: what they mean is for the caller to judge. Containers land
//! in a user's slice (`--cgroup-parent=ds01-...slice`) only with the `systemd` driver; NVIDIA's
//! runtime makes a daemon-reload take running containers' GPUs away with that driver.

pub mod api;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The three facts `doctor` needs, tab-separated, rather than the whole answer (`{{json .}}`,
/// a few KiB): the runtimes' map is JSON, the other two are plain words.
const INFO_FORMAT: &str = "{{.CgroupDriver}}\t{{.DefaultRuntime}}\t{{json .Runtimes}}";

/// At most this much of daemon.json and of docker's output is read.
const MAX_BYTES: u64 = 1 << 20;

/// What `docker info` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    /// The daemon's cgroup driver and runtimes.
    Driver(String, Runtimes),
    /// No `docker` on PATH.
    NotInstalled,
    /// It ran and failed (the daemon not running, no access to its socket, ...): the first
    /// line of what it said.
    Failed(String),
    TimedOut(Duration),
}

/// The OCI runtimes a daemon knows.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Runtimes {
    /// The runtime containers get unless they ask for another (`default-runtime`); None when
    /// not said (Docker's own default, runc).
    pub default: Option<String>,
    /// Each runtime's name and program (`runtimes`: `{"nvidia": {"path": "..."}}`).
    pub configured: BTreeMap<String, String>,
}

impl Runtimes {
    /// The runtimes that are NVIDIA's: named so, or running NVIDIA's program.
    pub fn nvidia(&self) -> Vec<(&str, &str)> {
        self.configured
            .iter()
            .filter(|(name, path)| is_nvidia(name) || is_nvidia(path))
            .map(|(name, path)| (name.as_str(), path.as_str()))
            .collect()
    }

    /// Whether containers get NVIDIA's runtime unless they ask for another.
    pub fn default_is_nvidia(&self) -> bool {
        self.default
            .as_deref()
            .is_some_and(|d| is_nvidia(d) || self.nvidia().iter().any(|(name, _)| *name == d))
    }
}

/// `nvidia`, `nvidia-container-runtime`, `/usr/bin/nvidia-container-runtime`: NVIDIA's.
fn is_nvidia(name_or_path: &str) -> bool {
    let file = name_or_path.rsplit('/').next().unwrap_or(name_or_path);
    file.to_ascii_lowercase().starts_with("nvidia")
}

/// The runtimes of a daemon.json object, or of `docker info`'s JSON (`DefaultRuntime`,
/// `Runtimes`): the two spell the same facts differently.
fn runtimes_of(object: &serde_json::Map<String, serde_json::Value>) -> Runtimes {
    let text = |key: &str| object.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let configured = ["runtimes", "Runtimes"]
        .iter()
        .filter_map(|key| object.get(*key)?.as_object())
        .flatten()
        .map(|(name, spec)| {
            let path = spec
                .get("path")
                .and_then(|p| p.as_str())
                .unwrap_or_default();
            (name.clone(), path.to_owned())
        })
        .collect();
    Runtimes {
        default: text("default-runtime").or_else(|| text("DefaultRuntime")),
        configured,
    }
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
        .args(["info", "--format", INFO_FORMAT])
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
    if status.success() {
        if let Some(info) = parse_info(&stdout) {
            return info;
        }
    }
    let said = stderr
        .lines()
        .chain(stdout.lines())
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    // A line of JSON (a newer client's answer with `ServerErrors`) can be long: its start
    // says enough.
    const SAID: usize = 300;
    Info::Failed(if said.is_empty() {
        format!("docker info exited with {status} and said nothing")
    } else if said.len() > SAID {
        let cut = (0..=SAID)
            .rev()
            .find(|&i| said.is_char_boundary(i))
            .unwrap_or(0);
        format!("{}...", &said[..cut])
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

/// `docker info --format INFO_FORMAT`: the driver and runtimes, or None when it names no
/// driver (the client could not ask the daemon).
pub fn parse_info(text: &str) -> Option<Info> {
    let mut fields = text.trim().splitn(3, '\t');
    let driver = fields.next()?.trim();
    if driver.is_empty() {
        return None;
    }
    let mut object = serde_json::Map::new();
    if let Some(default) = fields.next().map(str::trim).filter(|d| !d.is_empty()) {
        object.insert("DefaultRuntime".to_owned(), default.into());
    }
    if let Some(runtimes) = fields
        .next()
        .and_then(|r| serde_json::from_str::<serde_json::Value>(r.trim()).ok())
    {
        object.insert("Runtimes".to_owned(), runtimes);
    }
    Some(Info::Driver(driver.to_owned(), runtimes_of(&object)))
}

/// The daemon's configuration file under `root`.
pub fn daemon_json_path(root: &Path) -> PathBuf {
    root.join("etc/docker/daemon.json")
}

/// Reads `etc/docker/daemon.json` under `root` (a regular file only: a FIFO there must not
/// block us): the driver it sets, and its runtimes (none when it cannot be read).
pub fn daemon_json(root: &Path) -> (DaemonJson, Runtimes) {
    let path = daemon_json_path(root);
    let refused = |why: String| (DaemonJson::Invalid(why), Runtimes::default());
    match std::fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return (DaemonJson::Missing, Runtimes::default())
        }
        Err(e) => return refused(format!("cannot look at it: {e}")),
        Ok(m) if !m.is_file() => return refused("not a regular file".to_owned()),
        Ok(_) => {}
    }
    let mut text = String::new();
    match std::fs::File::open(&path).and_then(|f| f.take(MAX_BYTES).read_to_string(&mut text)) {
        Ok(_) => parse_daemon_json(&text),
        Err(e) => refused(format!("cannot read it: {e}")),
    }
}

/// The driver a daemon.json text sets (the last `native.cgroupdriver=` of `exec-opts`, as
/// dockerd takes it) and its runtimes.
pub fn parse_daemon_json(text: &str) -> (DaemonJson, Runtimes) {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return (
                DaemonJson::Invalid(format!("not valid JSON: {e}")),
                Runtimes::default(),
            )
        }
    };
    let Some(object) = value.as_object() else {
        return (
            DaemonJson::Invalid("not a JSON object".to_owned()),
            Runtimes::default(),
        );
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
    (
        driver.map_or(DaemonJson::NoDriver, DaemonJson::Driver),
        runtimes_of(object),
    )
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
        let d = |t: &str| parse_daemon_json(t).0;
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
            (DaemonJson::Missing, Runtimes::default())
        );
    }

    #[test]
    fn finds_nvidias_runtime_in_daemon_json_and_docker_info() {
        // As `nvidia-ctk runtime configure --runtime=docker --set-as-default` writes it.
        let (driver, r) = parse_daemon_json(
            r#"{"default-runtime": "nvidia", "exec-opts": ["native.cgroupdriver=systemd"],
                "runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}}}"#,
        );
        assert_eq!(driver, DaemonJson::Driver("systemd".into()));
        assert!(r.default_is_nvidia());
        assert_eq!(r.nvidia(), vec![("nvidia", "nvidia-container-runtime")]);
        // Beside the default, under another name.
        let (_, r) = parse_daemon_json(
            r#"{"runtimes": {"gpu": {"path": "/usr/bin/nvidia-container-runtime"}}}"#,
        );
        assert!(!r.default_is_nvidia());
        assert_eq!(
            r.nvidia(),
            vec![("gpu", "/usr/bin/nvidia-container-runtime")]
        );
        let (_, r) = parse_daemon_json(r#"{"runtimes": {"crun": {"path": "crun"}}}"#);
        assert!(r.nvidia().is_empty() && !r.default_is_nvidia());

        let info = "systemd\tnvidia\t{\"io.containerd.runc.v2\":{\"path\":\"runc\"},\"nvidia\":{\"path\":\"nvidia-container-runtime\"},\"runc\":{\"path\":\"runc\"}}\n";
        let Some(Info::Driver(driver, r)) = parse_info(info) else {
            panic!("{info}")
        };
        assert_eq!(driver, "systemd");
        assert!(r.default_is_nvidia());
        assert_eq!(r.configured.len(), 3);
        // An older client's answer without the runtimes still names the driver.
        assert_eq!(
            parse_info("cgroupfs\n"),
            Some(Info::Driver("cgroupfs".into(), Runtimes::default()))
        );
        assert_eq!(parse_info("\n"), None);
    }
}
