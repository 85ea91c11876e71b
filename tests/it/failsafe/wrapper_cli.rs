//! contrib/ds01-docker-run reads a command line as the real docker CLI does: what the hook is
//! told the container asks for is what docker then asks the daemon for. The docker CLI of this
//! machine is pointed at a stand-in socket that records its create request
//! (support::docker_api); tests/it/docker.rs does the same against the VM's real daemon.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use ds01_slices::model::admission::{parse_request_bytes, Request};
use serde_json::Value;

use crate::support::docker_api::{docker_cli, DockerApiRecorder};
use crate::support::{clear_tool_env, skip, Run, Scratch, MANIFEST_DIR};

const SLICE: &str = "ds01-student-alice.slice";

/// The request as the hook's arguments give it (`--memory=X`, `--pids=N`, or the same as two
/// words), read as the hook reads them.
pub(crate) fn hook_request(args: &[String]) -> Request {
    let value = |name: &str| {
        args.iter().enumerate().find_map(|(i, a)| {
            a.strip_prefix(&format!("--{name}="))
                .map(str::to_owned)
                .or_else(|| (a == &format!("--{name}")).then(|| args[i + 1].clone()))
        })
    };
    Request::from_docker(
        value("memory").map(|m| parse_request_bytes(&m).unwrap_or_else(|e| panic!("{m}: {e}"))),
        value("pids").map(|p| p.parse().unwrap_or_else(|e| panic!("{p}: {e}"))),
    )
}

/// The request as docker sends it to the daemon: HostConfig.Memory and PidsLimit.
pub(crate) fn daemon_request(host_config: &Value) -> Request {
    Request::from_docker(
        host_config["Memory"].as_u64(),
        host_config["PidsLimit"].as_i64(),
    )
}

/// Dropped in this order: the recorder before the directory that holds its socket.
struct Bench {
    api: DockerApiRecorder,
    docker: PathBuf,
    dir: Scratch,
}

impl Bench {
    fn new() -> Option<Bench> {
        let Some(docker) = docker_cli() else {
            skip(
                "a docker CLI",
                "no docker on PATH (.ci/docker-cli puts one there)",
            );
            return None;
        };
        let dir = Scratch::new("wrapper-cli");
        let api = DockerApiRecorder::start(&dir.join("docker.sock"));
        Some(Bench { api, docker, dir })
    }

    /// `cmd` pointed at the recording socket, with a configuration directory of its own.
    fn at_recorder<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env("DOCKER_HOST", self.api.host())
            .env("DOCKER_CONFIG", self.dir.join("docker-config"))
            .env_remove("DOCKER_CONTEXT")
    }

    fn docker(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.docker);
        self.at_recorder(&mut cmd).args(args);
        cmd
    }

    /// The wrapper with the real docker and the recording hook: what it did, the hook's
    /// arguments (None: the hook did not run) and docker's create requests.
    fn wrapper(&self, args: &[&str]) -> (Run, Option<Vec<String>>, Vec<Value>) {
        let _ = fs::remove_file(self.dir.join("hook.args"));
        let mut cmd = Command::new(Path::new(MANIFEST_DIR).join("contrib/ds01-docker-run"));
        clear_tool_env(self.at_recorder(&mut cmd))
            .env("DS01_SLICES", super::wrapper::fake_hook(&self.dir))
            .env("DOCKER", &self.docker)
            .env("DS01_USER", "alice")
            .args(args);
        let out = Run::of(&mut cmd);
        let hook = fs::read_to_string(self.dir.join("hook.args"))
            .ok()
            .map(|t| t.lines().map(str::to_owned).collect());
        (out, hook, self.api.creates())
    }
}

/// Every spelling of the request docker 28 (or the installed docker) takes, each compared
/// with what the real CLI then asks the daemon for. Before: `-m 150M --use-api-socket IMAGE
/// -m 1k` told the hook 1k (the container's own command) while docker asked for 150M.
#[test]
fn the_hook_weighs_what_the_docker_cli_asks_the_daemon_for() {
    let Some(b) = Bench::new() else { return };
    let help = Run::of(&mut b.docker(&["run", "--help"]));
    let api_socket = help.stdout.contains("--use-api-socket");
    // (No -t: docker refuses a terminal on a stdin that is not one.)
    let mut cases: Vec<Vec<&str>> = vec![
        vec![
            "-i",
            "--rm",
            "-m",
            "4g",
            "--pids-limit=100",
            "-e",
            "X=1",
            "busybox",
        ],
        vec!["-dm2g", "busybox"],
        vec!["-dim", "3g", "busybox"],
        vec!["-m=1g", "busybox"],
        vec![
            "--memory=512m",
            "--memory-swap",
            "1g",
            "--name",
            "job",
            "-p",
            "80:80",
            "busybox",
            "--pids-limit",
            "5",
        ],
        vec!["--pids-limit", "7", "--", "busybox", "-m", "9g"],
        vec!["-e", "--memory", "busybox"],
        vec!["busybox", "--cgroup-parent=/", "-m", "9g"],
        // Docker's own "no limit": a memory of 0, pids-limit 0 or below.
        vec!["--pids-limit", "-1", "-m", "0", "busybox"],
        vec!["--pids-limit=0", "--memory", "0b", "busybox"],
        // Flags (no value) and options whose value looks like a request.
        vec!["--rm=false", "--sig-proxy=false", "-m", "10m", "busybox"],
        vec!["-d=false", "-m", "11m", "busybox"],
        vec!["--health-cmd", "x -m 1g", "-m", "20m", "busybox"],
        vec!["-h", "myhost", "-c", "512", "-m", "30m", "busybox"],
        vec![
            "--init",
            "--read-only",
            "-P",
            "-q",
            "-m",
            "40m",
            "busybox",
            "sh",
        ],
        // Hidden aliases docker still takes.
        vec![
            "--net",
            "mynet",
            "--net-alias",
            "x",
            "--dns-opt",
            "ndots:1",
            "-m",
            "50m",
            "busybox",
        ],
        vec!["--pids-limit", "64", "-m", "1GiB", "busybox"],
    ];
    // Docker 28's boolean flag, unknown to the old wrapper's guess (and to docker 20.10).
    cases.push(vec![
        "-m",
        "150M",
        "--use-api-socket",
        "busybox",
        "-m",
        "1k",
    ]);
    cases.push(vec!["--use-api-socket", "-m", "150M", "busybox"]);
    let version = Run::of(&mut b.docker(&["--version"])).stdout;
    let mut seen = vec![format!(
        "{} (lists --use-api-socket: {api_socket})",
        version.trim()
    )];
    for args in &cases {
        let (out, hook, creates) = b.wrapper(args);
        if out.code == Some(2) && out.stderr.contains("unknown option") {
            // An option this docker does not know (--use-api-socket, and -q before docker
            // 25): refused by name, as docker itself refuses it.
            assert_eq!((hook, creates.len()), (None, 0), "{args:?}: something ran");
            let direct = Run::of(b.docker(&["run"]).args(args));
            assert!(
                direct.code == Some(125) && direct.stderr.contains("unknown"),
                "{args:?}: the wrapper refused what docker takes: {out}\n{direct}"
            );
            b.api.take();
            seen.push(format!("{args:?}: refused, as docker refuses it"));
            continue;
        }
        // The stand-in refuses every create: docker's exit for a daemon error.
        assert_eq!(out.code, Some(125), "{args:?}: {out}");
        let hook = hook.unwrap_or_else(|| panic!("{args:?}: the hook did not run: {out}"));
        let [create] = &creates[..] else {
            panic!("{args:?}: {} create requests: {out}", creates.len())
        };
        let host_config = &create["HostConfig"];
        assert_eq!(host_config["CgroupParent"], SLICE, "{args:?}");
        let (told, asked) = (hook_request(&hook), daemon_request(host_config));
        assert_eq!(
            told, asked,
            "{args:?}: the hook was told {told:?} ({hook:?}), docker asked the daemon for {asked:?}"
        );
        seen.push(format!("{args:?}: {told:?}"));
    }
    println!("{}", seen.join("\n"));
}

/// An option the installed docker does not list is refused, naming it, before the hook or
/// docker runs; docker itself refuses it too.
#[test]
fn an_option_docker_does_not_list_is_refused_by_name() {
    let Some(b) = Bench::new() else { return };
    for (args, named) in [
        (&["--no-such-option", "busybox"][..], "--no-such-option"),
        (&["--no-such-option=1", "busybox"][..], "--no-such-option"),
        (&["-dZ", "busybox"][..], "-Z (in -dZ)"),
    ] {
        let (out, hook, creates) = b.wrapper(args);
        assert_eq!(out.code, Some(2), "{args:?}: {out}");
        assert!(
            out.stderr.contains(&format!("unknown option {named}: "))
                && out.stderr.contains("does not list it")
                && out.stderr.contains("the container was not started"),
            "{args:?}: {out}"
        );
        assert_eq!((hook, creates.len()), (None, 0), "{args:?}: something ran");
        let direct = Run::of(b.docker(&["run"]).args(args));
        assert_eq!(
            direct.code,
            Some(125),
            "docker itself takes {args:?}: {direct}"
        );
        b.api.take();
    }
}
