//! The command-line contract: global options, subcommands and their arguments.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::cgroupfs::DEFAULT_CGROUP_ROOT;
use crate::config::DEFAULT_CONFIG_PATH;
use crate::model::fleet::{Host, DEFAULT_REMOTE_BIN};
use crate::ops;
use crate::state::DEFAULT_STATE_DIR;

/// Where `serve` listens unless told: loopback only, so that nothing is exposed by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9851";

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

    /// Read HOST's systemd over ssh instead of this machine's, as `systemctl -H` does: ssh
    /// runs systemd-stdio-bridge there (no ds01-slices is needed on HOST). Only `verify`,
    /// `status` and `apply --dry-run` take it: they compare the configuration given here
    /// (--config) with HOST's systemd; HOST's cgroup files and ownership records are not
    /// read (kernel checks are left out). Every other command refuses it (exit 2). ssh never
    /// prompts (BatchMode) and waits at most --timeout to connect. DS01_SSH names another
    /// ssh program (a name or an absolute path, e.g. a wrapper), run as `$DS01_SSH -xT
    /// -oBatchMode=yes -oConnectTimeout=SECONDS -- HOST systemd-stdio-bridge`. Not with
    /// --bus (DBUS_SYSTEM_BUS_ADDRESS in the environment is ignored).
    #[arg(long, global = true, value_name = "[USER@]HOST")]
    pub host: Option<Host>,

    /// Seconds to wait for any one answer from systemd (and, for doctor, from Docker: a
    /// loaded daemon can take seconds to answer `docker info`).
    #[arg(long, global = true, default_value_t = 30, value_name = "SECONDS")]
    pub timeout: u64,

    /// Where ds01-slices records which properties it set (and its writer lock).
    #[arg(long, global = true, env = "DS01_STATE_DIR", default_value = DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,

    /// The cgroup file system `verify` reads the kernel's limits from, and where `render` and
    /// `apply` look for processes below ds01.slice before they reload systemd.
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
        /// Reload systemd where rendered files change (--backend files, or the take-over of
        /// files rendered earlier) even while containers run in ds01 slices: a daemon-reload
        /// takes away the GPUs that NVIDIA's runtime gave running containers.
        #[arg(long)]
        allow_reload: bool,
        /// Keep running: apply now, then again whenever the configuration's files change
        /// (read every second; applied once unchanged for 2 s). A bad configuration is
        /// refused and tried again when its files change; a failed apply is retried after
        /// 10 s, doubling up to 5 minutes. Stops on SIGTERM or SIGINT, after the apply under
        /// way.
        #[arg(long, conflicts_with_all = ["user", "dry_run"])]
        watch: bool,
    },
    /// Reload systemd (as `systemctl daemon-reload` does) only when nothing runs in ds01
    /// slices: a daemon-reload makes systemd re-apply its own device rules, which takes away
    /// the GPUs that NVIDIA's runtime gave running containers. Exit 0: reloaded; 1: not
    /// reloaded, the reason on stderr (also when what runs cannot be told). The Debian
    /// package's maintainer scripts reload through it.
    DaemonReload {
        /// Reload even while containers run in ds01 slices (or when that cannot be told).
        #[arg(long)]
        allow_reload: bool,
    },
    /// Write the limits as drop-in files under --root (etc/systemd/system/<slice>.d/10-resource-limits.conf),
    /// for hosts whose systemd cannot be reached; then reload systemd if --root is / (or --bus is given).
    /// While containers run in ds01 slices it refuses to reload (and writes nothing) without
    /// --allow-reload: a daemon-reload takes away the GPUs of running GPU containers.
    Render {
        /// Only this user's slice and its parents.
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// Print what would change and write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask systemd to reload afterwards.
        #[arg(long, conflicts_with = "allow_reload")]
        no_reload: bool,
        /// Reload systemd even while containers run in ds01 slices (or when that cannot be
        /// told): a daemon-reload makes systemd re-apply its own device rules, which takes away
        /// the GPUs that NVIDIA's runtime gave running containers.
        #[arg(long)]
        allow_reload: bool,
    },
    /// Hooks for the container runtime.
    #[command(subcommand)]
    Hook(HookCommand),
    /// What each slice uses against its limits (memory, tasks, CPU, pressure, OOM kills),
    /// active slices first, then the containers running outside their user's slice.
    Status {
        /// Only this user's slice and its parents.
        user: Option<String>,
        /// Show again every SECONDS until interrupted (CPU rates over the last interval); at
        /// least 1 (each round reads every slice from systemd).
        #[arg(long, value_name = "SECONDS")]
        watch: Option<f64>,
        /// Seconds between the two CPU readings a single run takes its rates from (0: none).
        #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
        interval: f64,
        /// List every slice: without it, inactive slices with nothing to report (no drift, no
        /// error, no container outside) are summed up in one line. --json always has all.
        #[arg(long)]
        all: bool,
    },
    /// Print Prometheus metrics (text exposition format) of every managed slice.
    Metrics {
        /// Write them to FILE (through a temporary file renamed over it, as node_exporter's
        /// textfile collector needs) instead of stdout.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Serve the metrics over HTTP at /metrics.
    Serve {
        /// IP address and port to listen on (TCP; a host name is not resolved).
        #[arg(long, default_value = DEFAULT_LISTEN, value_name = "IP:PORT", value_parser = parse_listen)]
        listen: SocketAddr,
        /// Seconds a scrape's answer is reused for the next scrapes (0: never).
        #[arg(long, default_value_t = 5, value_name = "SECONDS")]
        cache: u64,
    },
    /// Serve the Docker Engine API on the users' socket, in front of the daemon's own: every
    /// container a user creates lands in their slice, admitted against its limits; what would
    /// leave a slice is refused; everything else passes through (docs/gate.md).
    ///
    /// Run by ds01-slices-gate.socket/.service, which hand it /run/docker.sock (not enabled
    /// by default: switching it on moves the daemon's socket, see docs/gate.md). Each create
    /// is one line on stderr (the journal): user, slice, decision.
    Gate {
        /// Bind this Unix socket (mode 0660, group --socket-group) instead of the one systemd
        /// passes (LISTEN_FDS).
        #[arg(long, value_name = "PATH")]
        listen: Option<PathBuf>,
        /// The group of the socket bound with --listen.
        #[arg(long, default_value = "docker", value_name = "GROUP")]
        socket_group: String,
        /// The daemon's own socket, where requests go.
        #[arg(long, default_value = crate::gate::DAEMON_SOCKET, value_name = "PATH")]
        docker: PathBuf,
        /// Refuse a container when the user's usage cannot be read (as `hook pre-create
        /// --strict`; default: admit it with a warning in the journal).
        #[arg(long)]
        strict: bool,
    },
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
    /// Run `apply`, `verify` or `status` on many hosts over ssh, each with its own
    /// configuration and ds01-slices, and print one table (or, with --json, one document).
    ///
    /// Each host runs `$DS01_SSH -xT -oBatchMode=yes -oConnectTimeout=S -- HOST REMOTE-BIN
    /// COMMAND --json` (DS01_SSH: the ssh program, `ssh` unless set): each host uses its
    /// own configuration and state; of the global options only --json applies here (to
    /// this table). Stdin is closed, so ssh must log in without a prompt. The exit code is the
    /// worst of the hosts': ok 0 < drift 3 < failure 1 < bad usage or configuration 2; a
    /// host that is unreachable (ssh's 255) or timed out counts as a failure.
    #[command(subcommand)]
    Fleet(FleetAction),
    /// Check whether this host can enforce what the configuration asks (cgroups, systemd,
    /// Docker's cgroup driver, NVIDIA's runtime with it, files, drift); each finding with its fix. Exit 1 when a finding
    /// means limits are not in force.
    Doctor,
}

#[derive(Debug, Subcommand)]
pub enum FleetAction {
    /// `ds01-slices apply --json` on every host: `changed N` where it wrote.
    Apply {
        #[command(flatten)]
        fleet: FleetArgs,
        /// Run `apply --dry-run` on every host: what would change, nothing written.
        #[arg(long)]
        dry_run: bool,
    },
    /// `ds01-slices verify --json` on every host: `drift N` where limits do not hold.
    Verify {
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// `ds01-slices status --json` on every host: slices, those with drift or errors.
    Status {
        #[command(flatten)]
        fleet: FleetArgs,
    },
}

/// How `fleet` reaches its hosts.
#[derive(Debug, clap::Args)]
pub struct FleetArgs {
    /// The hosts: one [USER@]HOST a line; blank lines and `#` comments are ignored, a host
    /// listed twice is refused.
    #[arg(long, value_name = "FILE")]
    pub hosts: PathBuf,
    /// How many hosts run at once.
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel: u16,
    /// Seconds a host may take; then its ssh is killed and the host reported as timed out
    /// (ssh's ConnectTimeout is this, at most 30).
    #[arg(long, default_value_t = 300, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub host_timeout: u64,
    /// The ds01-slices binary on each host (where the Debian package installs it).
    #[arg(long, default_value = DEFAULT_REMOTE_BIN, value_name = "PATH")]
    pub remote_bin: String,
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
    ///
    /// Before that, the container is admitted: when the memory it asks for (--memory) and the
    /// memory the user's containers use now would exceed the user's MemoryMax, it is refused
    /// (exit 1, nothing on stdout, the figures on stderr); tasks at 90% of TasksMax warn.
    PreCreate {
        user: String,
        /// Write runtime properties instead of persistent ones.
        #[arg(long)]
        runtime: bool,
        /// The container's memory limit, as given to `docker run --memory` (4g, 512m, bytes;
        /// 0 is docker's "no limit": no request).
        #[arg(long, value_name = "BYTES", value_parser = parse_memory_request, allow_hyphen_values = true)]
        memory: Option<u64>,
        /// The container's process limit, as given to `docker run --pids-limit` (0 or below,
        /// e.g. -1, is docker's "unlimited": no request).
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        pids: Option<i64>,
        /// Refuse the container when the user's usage cannot be read (default: admit it with
        /// a warning, as DS01's wrapper did).
        #[arg(long)]
        strict: bool,
    },
}

fn parse_memory_request(text: &str) -> Result<u64, String> {
    crate::model::admission::parse_request_bytes(text).map_err(|e| e.to_string())
}

/// `serve --listen`: the address is bound exactly as given, so a mistake in it is a usage
/// error said here (exit 2), not a failure to listen later.
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let ip = |s: &str| {
        s.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok()
    };
    let why = if text.starts_with("unix:") || text.starts_with('/') {
        "a Unix socket: serve listens on TCP only".to_owned()
    } else if ip(text) {
        "no port".to_owned()
    } else if let Some((host, port)) = text.rsplit_once(':') {
        if port.parse::<u16>().is_err() {
            format!("{port:?} is not a port number (0 to 65535)")
        } else if ip(host) {
            "an IPv6 address goes in brackets".to_owned()
        } else {
            format!("{host:?} is not an IP address (a host name is not resolved)")
        }
    } else {
        "not an address".to_owned()
    };
    Err(format!(
        "{why}; expected IP:PORT, such as {DEFAULT_LISTEN} or [::1]:9851"
    ))
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
}

impl Globals {
    /// `--timeout`, at least one second.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout.max(1))
    }

    /// The options the file backend and take-over need.
    pub fn context(&self) -> ops::render::Context<'_> {
        ops::render::Context {
            root: &self.root,
            bus: self.bus.as_deref(),
            timeout: self.timeout(),
            state_dir: &self.state_dir,
            cgroup_root: &self.cgroup_root,
        }
    }
}

impl From<Backend> for ops::deploy::Backend {
    fn from(b: Backend) -> Self {
        match b {
            Backend::Auto => ops::deploy::Backend::Auto,
            Backend::Dbus => ops::deploy::Backend::Dbus,
            Backend::Files => ops::deploy::Backend::Files,
        }
    }
}
