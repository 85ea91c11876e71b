//! Many servers: `fleet` and `--host` against real sandboxed systemds, reached through a
//! stand-in for ssh (`DS01_SSH`) that runs the "remote" command on this machine with that
//! sandbox's bus, configuration, state and cgroups, plus a host that is down and one that
//! hangs.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{ds01, Run, Scratch, World, BIN, EXAMPLE};

const ALICE: &str = "ds01-student-alice.slice";
const DOWN: &str = "ssh: connect to host down port 22: Connection refused";

/// A stand-in for ssh in `dir`: takes `[OPTIONS] -- HOST CMD ARGS...` as ssh does; for a
/// world's host it runs ds01-slices (CMD replaced by the binary under test) with that
/// world's environment, or bridges stdio to its bus for `systemd-stdio-bridge`; `down`
/// fails as ssh does, `hung` sleeps `hang` seconds as the process ssh was.
pub(crate) fn fake_ssh(dir: &Scratch, worlds: &[(&str, &World)], hang: &str) -> PathBuf {
    let mut cases = String::new();
    for (name, w) in worlds {
        let address = w.sb.bus_address();
        let socket = address.strip_prefix("unix:path=").unwrap();
        cases.push_str(&format!(
            "  {name})\n    export DBUS_SYSTEM_BUS_ADDRESS='{address}' DS01_CONFIG='{}' \
             DS01_STATE_DIR='{}' DS01_CGROUP_ROOT='{}' DS01_ROOT='{}'\n    socket='{socket}' ;;\n",
            w.config().display(),
            w.state().display(),
            w.sb.host_path("/sys/fs/cgroup").display(),
            w.root().display(),
        ));
    }
    let script = format!(
        "#!/bin/sh\n\
         while [ \"$1\" != -- ]; do shift; done\n\
         shift; host=$1; shift; command=$1; shift\n\
         case \"$host\" in\n\
         {cases}  \
           down) echo '{DOWN}' >&2; exit 255 ;;\n  \
           hung) exec sleep {hang} ;;\n  \
           *) echo \"ssh: Could not resolve hostname $host\" >&2; exit 255 ;;\n\
         esac\n\
         if [ \"$command\" = systemd-stdio-bridge ]; then\n  \
           exec socat - UNIX-CONNECT:\"$socket\"\n\
         fi\n\
         exec '{BIN}' \"$@\"\n"
    );
    let path = dir.join("ssh");
    fs::write(&path, script).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

pub(crate) fn hosts_file(dir: &Scratch, name: &str, hosts: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let text: String = hosts.iter().map(|h| format!("{h}\n")).collect();
    fs::write(&path, format!("# the test's fleet\n\n{text}")).unwrap();
    path
}

fn run(ssh: &Path, args: &[&str]) -> Run {
    Run::of(ds01(args).env("DS01_SSH", ssh))
}

#[track_caller]
fn json(ssh: &Path, args: &[&str], code: i32) -> Value {
    let out = run(ssh, args).assert_code(code, format!("{args:?}"));
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: no JSON ({e})\n{out}"))
}

/// The table's row of `host`, split into its columns' words.
#[track_caller]
fn row<'a>(out: &'a Run, host: &str) -> &'a str {
    out.stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(host))
        .unwrap_or_else(|| panic!("no row for {host}:\n{out}"))
}

pub(crate) fn results(report: &Value) -> Vec<(String, String, u64)> {
    report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["host"].as_str().unwrap().to_owned(),
                h["result"].as_str().unwrap().to_owned(),
                h["exit"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn fleet_applies_and_verifies_two_hosts_and_names_the_one_that_is_down() {
    let Some((a, b)) = World::two(EXAMPLE) else {
        return;
    };
    let dir = Scratch::new("fleet");
    let ssh = fake_ssh(&dir, &[("sandbox-a", &a), ("sandbox-b", &b)], "600");
    let all = hosts_file(
        &dir,
        "all",
        &["sandbox-a", "sandbox-b # the second", "down"],
    );
    let all = all.to_str().unwrap();

    let out = run(&ssh, &["fleet", "apply", "--hosts", all]).assert_code(1, "fleet apply");
    for host in ["sandbox-a", "sandbox-b"] {
        let r = row(&out, host);
        assert!(
            r.contains("changed ") && r.contains("writes "),
            "{host}: {r}\n{out}"
        );
    }
    let r = row(&out, "down");
    assert!(r.contains("unreachable") && r.contains(DOWN), "{r}");
    assert!(
        out.stderr.contains(&format!("down: unreachable: {DOWN}")),
        "{out}"
    );
    a.assert_user_as_planned("alice");
    b.assert_user_as_planned("alice");

    let report = json(&ssh, &["fleet", "verify", "--hosts", all, "--json"], 1);
    assert_eq!(report["command"], "verify");
    assert_eq!(report["exit"], 1);
    assert_eq!(
        results(&report),
        [
            ("sandbox-a".into(), "ok".into(), 0),
            ("sandbox-b".into(), "ok".into(), 0),
            ("down".into(), "unreachable".into(), 1),
        ]
    );
    let down = &report["hosts"][2];
    assert_eq!(down["error"], DOWN);
    assert_eq!(down["report"], Value::Null);
    assert_eq!(report["hosts"][0]["report"]["holds"], true);
    assert_eq!(report["hosts"][0]["summary"]["drift"], 0);

    // Drift on one host is that host's only; without the down host it is the fleet's exit.
    a.set_property(ALICE, &["MemoryMax=1G"]);
    let up = hosts_file(&dir, "up", &["sandbox-a", "sandbox-b"]);
    let up = up.to_str().unwrap();
    let out = run(&ssh, &["fleet", "verify", "--hosts", up]).assert_code(3, "fleet verify");
    assert!(row(&out, "sandbox-a").contains("drift 1"), "{out}");
    assert!(row(&out, "sandbox-b").contains(" ok "), "{out}");
    let report = json(&ssh, &["fleet", "verify", "--hosts", all, "--json"], 1);
    let got: Vec<String> = results(&report).into_iter().map(|r| r.1).collect();
    assert_eq!(got, ["drift 1", "ok", "unreachable"]);
    assert_eq!(report["hosts"][0]["summary"]["drift"], 1);

    let report = json(
        &ssh,
        &[
            "fleet",
            "apply",
            "--dry-run",
            "--hosts",
            up,
            "--json",
            "--parallel",
            "1",
        ],
        0,
    );
    let got: Vec<String> = results(&report).into_iter().map(|r| r.1).collect();
    assert_eq!(got, ["would change 1", "ok"]);
    assert_eq!(report["hosts"][0]["report"]["dry_run"], true);
    assert_eq!(
        a.show(ALICE, "MemoryMax"),
        "1073741824",
        "a dry run writes nothing"
    );
}

/// Processes whose command line is `sleep <seconds>`.
fn sleeping(seconds: &str) -> usize {
    let want = format!("sleep\0{seconds}\0");
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| fs::read(e.path().join("cmdline")).is_ok_and(|c| c == want.as_bytes()))
        .count()
}

#[test]
fn a_hung_host_is_killed_at_its_deadline_and_reported() {
    // No systemd needed: neither host gets as far as one.
    let dir = Scratch::new("fleet-hung");
    let hang = format!("600.{}", std::process::id());
    let ssh = fake_ssh(&dir, &[], &hang);
    let hosts = hosts_file(&dir, "hosts", &["hung", "down"]);
    let started = Instant::now();
    let out = run(
        &ssh,
        &[
            "fleet",
            "status",
            "--hosts",
            hosts.to_str().unwrap(),
            "--host-timeout",
            "3",
        ],
    )
    .assert_code(1, "fleet status");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "took {took:?}\n{out}");
    assert!(row(&out, "hung").contains("timed out"), "{out}");
    assert!(row(&out, "down").contains("unreachable"), "{out}");
    assert_eq!(
        sleeping(&hang),
        0,
        "the hung host's process was left running"
    );
}

/// A host that hangs, reached through an ssh that started a program of its own (as ssh starts
/// its ProxyCommand, in its process group): at --host-timeout the whole group goes; and when
/// the fleet is interrupted (SIGINT to its PID) while the host hangs. Before: only the ssh was
/// killed at the deadline and its proxy ran on; on SIGINT both ran on.
#[test]
fn a_timed_out_host_leaves_no_process_of_its_ssh_behind() {
    let dir = Scratch::new("fleet-group");
    let id = std::process::id();
    let (proxy, hung) = (format!("sleep 601.{id}"), format!("sleep 602.{id}"));
    let ssh = dir.join("ssh");
    fs::write(
        &ssh,
        format!("#!/bin/sh\n{proxy} </dev/null >/dev/null &\nexec {hung}\n"),
    )
    .unwrap();
    fs::set_permissions(&ssh, fs::Permissions::from_mode(0o755)).unwrap();
    let hosts = hosts_file(&dir, "hosts", &["hung"]);
    let ours = || -> Vec<(u32, String)> {
        [&proxy, &hung]
            .iter()
            .flat_map(|n| processes_with(&format!("{n} ")))
            .collect()
    };
    let left_after = || left_behind(&ours);
    let fleet = |timeout: &str| {
        let mut cmd = ds01(&[
            "fleet",
            "status",
            "--hosts",
            hosts.to_str().unwrap(),
            "--host-timeout",
            timeout,
        ]);
        cmd.env("DS01_SSH", &ssh);
        cmd
    };

    let out = Run::of(&mut fleet("2"));
    let left = left_after();
    assert_eq!(out.code, Some(1), "{out}");
    assert!(row(&out, "hung").contains("timed out"), "{out}");
    assert!(
        left.is_empty(),
        "left running after the host timed out: {left:?}\n{out}"
    );

    let mut child = fleet("600")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = crate::support::wait_until(Duration::from_secs(30), "ssh and its proxy", || {
        (ours().len() == 2).then_some(())
    });
    let status = interrupt(&mut child);
    let left = left_after();
    started.unwrap();
    let status = status.unwrap();
    assert_eq!(status.code(), Some(130), "exit on SIGINT: {status:?}");
    assert!(left.is_empty(), "left running after SIGINT: {left:?}");
}

/// An ssh that leaves a process behind holding its stderr, as OpenSSH's ControlPersist master
/// does: the host that answered is judged on its exit, not reported as timed out.
#[test]
fn a_host_whose_ssh_leaves_stderr_open_is_judged_when_ssh_exits() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    w.expect(&["apply"], 0);
    let dir = Scratch::new("fleet-persist");
    let ssh = fake_ssh(&dir, &[("sandbox-a", &w)], "1");
    let holders = dir.join("holders");
    let persist = dir.join("persist-ssh");
    fs::write(
        &persist,
        format!(
            "#!/bin/sh\nsleep 600 </dev/null >/dev/null &\necho $! >> '{}'\nexec '{}' \"$@\"\n",
            holders.display(),
            ssh.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&persist, fs::Permissions::from_mode(0o755)).unwrap();
    let hosts = hosts_file(&dir, "hosts", &["sandbox-a"]);
    let started = Instant::now();
    let out = run(
        &persist,
        &[
            "fleet",
            "verify",
            "--hosts",
            hosts.to_str().unwrap(),
            "--json",
            "--host-timeout",
            "60",
        ],
    );
    let took = started.elapsed();
    for pid in fs::read_to_string(&holders).unwrap_or_default().lines() {
        let _ = std::process::Command::new("kill").arg(pid).status();
    }
    let report: Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("no JSON ({e}):\n{out}"));
    assert_eq!(
        results(&report),
        [("sandbox-a".into(), "ok".into(), 0)],
        "after {took:?}: {report:#}"
    );
    assert_eq!(out.code, Some(0), "{out}");
}

#[test]
fn bad_hosts_files_are_refused_naming_file_and_line() {
    let dir = Scratch::new("fleet-bad");
    let ssh = fake_ssh(&dir, &[], "1");
    let hosts = dir.join("hosts");
    let hosts_arg = hosts.to_str().unwrap();
    for (text, want) in [
        (
            "a\n-oProxyCommand=x\n",
            ":2: host \"-oProxyCommand=x\" starts with '-'",
        ),
        ("a\nb\na\n", ":3: a is listed twice (first on line 1)"),
        // One machine: host names are case-insensitive, and the user does not make another.
        (
            "hostA\nHOSTA\n",
            ":2: HOSTA is the machine hostA of line 1 names",
        ),
        (
            "\u{feff}hostA\nroot@hostA\n",
            ":2: root@hostA is the machine hostA of line 1 names",
        ),
        ("# none\n", "lists no hosts"),
    ] {
        fs::write(&hosts, text).unwrap();
        let out = run(&ssh, &["fleet", "verify", "--hosts", hosts_arg]).assert_code(2, text);
        assert!(out.stderr.contains(want), "{text:?}: {out}");
        assert!(out.stdout.is_empty(), "{out}");
    }
}

/// A byte order mark (which some editors write first) is no part of the first host's name: the
/// host ssh is given is `down`, not U+FEFF `down`.
#[test]
fn a_byte_order_mark_in_the_hosts_file_is_not_part_of_a_name() {
    let dir = Scratch::new("fleet-bom");
    let ssh = fake_ssh(&dir, &[], "1");
    let hosts = dir.join("hosts");
    fs::write(&hosts, "\u{feff}down\n").unwrap();
    let report = json(
        &ssh,
        &[
            "fleet",
            "verify",
            "--hosts",
            hosts.to_str().unwrap(),
            "--json",
        ],
        1,
    );
    assert_eq!(report["hosts"][0]["host"], "down", "{report:#}");
    assert_eq!(report["hosts"][0]["error"], DOWN, "{report:#}");
}

/// `verify --json` with what differs by design between a run on the host and one over ssh
/// taken out: the kernel's values (not read over ssh), the drop-in each value comes from
/// (files of the host), whether ds01-slices set it (its records), and where containers were
/// looked for (the host's cgroup tree, its Docker).
pub(crate) fn without_local_reads(mut report: Value) -> Value {
    report["containers"]["sources"] = Value::Null;
    for s in report["slices"].as_array_mut().unwrap() {
        for p in s["properties"].as_array_mut().unwrap() {
            for key in ["kernel", "source", "owned"] {
                p[key] = Value::Null;
            }
        }
    }
    report
}

#[test]
fn host_reads_a_remote_systemd_as_bus_does_and_writes_nothing() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    let dir = Scratch::new("host");
    let ssh = fake_ssh(&dir, &[("sandbox-a", &w)], "600");
    let config = w.config();
    let config = config.to_str().unwrap();
    w.expect(&["apply"], 0);
    w.set_property(ALICE, &["TasksMax=77"]);

    let direct = w.json(&["verify", "--json"], 3);
    let remote = Run::of(
        ds01(&[
            "--config",
            config,
            "verify",
            "--host",
            "sandbox-a",
            "--json",
        ])
        .env("DS01_SSH", &ssh),
    )
    .assert_code(3, "verify --host");
    let over_ssh: Value = serde_json::from_str(&remote.stdout).unwrap();
    for s in over_ssh["slices"].as_array().unwrap() {
        for p in s["properties"].as_array().unwrap() {
            assert_eq!(p["kernel"], Value::Null, "{p}");
        }
    }
    assert_eq!(without_local_reads(over_ssh), without_local_reads(direct));
    let notes: Vec<&str> = remote.stderr.lines().collect();
    assert_eq!(
        notes,
        ["ds01-slices: note: sandbox-a: read from its systemd over ssh; its cgroup files and its records are not read here (run `ds01-slices fleet verify` for the host's full check)"],
        "{remote}"
    );

    let status = Run::of(
        ds01(&[
            "--config",
            config,
            "status",
            "--host",
            "sandbox-a",
            "--json",
            "--interval",
            "0",
        ])
        .env("DS01_SSH", &ssh),
    )
    .assert_code(0, "status --host");
    let status: Value = serde_json::from_str(&status.stdout).unwrap();
    let alice = status["slices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["slice"] == ALICE)
        .unwrap_or_else(|| panic!("no {ALICE}: {status}"));
    assert_eq!(alice["drift"]["TasksMax"], true, "{alice}");

    let dry = Run::of(
        ds01(&[
            "--config",
            config,
            "apply",
            "--dry-run",
            "--host",
            "sandbox-a",
            "--json",
        ])
        .env("DS01_SSH", &ssh),
    )
    .assert_code(0, "apply --dry-run --host");
    let dry: Value = serde_json::from_str(&dry.stdout).unwrap();
    let changed: Vec<&Value> = dry["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["slice"])
        .collect();
    assert_eq!(changed, [ALICE], "{dry}");
    assert_eq!(w.show(ALICE, "TasksMax"), "77", "a dry run writes nothing");

    let write =
        Run::of(ds01(&["--config", config, "apply", "--host", "sandbox-a"]).env("DS01_SSH", &ssh))
            .assert_code(2, "apply --host");
    assert!(
        write.stderr.contains("--host sandbox-a: `apply` writes"),
        "{write}"
    );
    assert_eq!(w.show(ALICE, "TasksMax"), "77");
}

#[test]
fn an_unreachable_host_is_one_error_at_once() {
    let dir = Scratch::new("host-down");
    let ssh = fake_ssh(&dir, &[], "1");
    let config = crate::support::main_file(EXAMPLE);
    let started = Instant::now();
    let out = Run::of(
        ds01(&[
            "--config",
            config.to_str().unwrap(),
            "verify",
            "--host",
            "down",
        ])
        .env("DS01_SSH", &ssh),
    )
    .assert_code(1, "verify --host down");
    assert!(started.elapsed() < Duration::from_secs(10), "{out}");
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("ds01-slices:"))
        .collect();
    assert_eq!(errors.len(), 1, "{out}");
    assert!(
        errors[0].starts_with("ds01-slices: error: cannot reach the systemd of down over ssh"),
        "{out}"
    );
    assert!(
        out.stderr.contains(DOWN),
        "ssh's own message is passed on: {out}"
    );
    assert!(out.stdout.is_empty(), "{out}");

    // What writes, or reads this machine's files, refuses --host before ssh runs.
    let config = config.to_str().unwrap();
    for command in [
        &["apply"][..],
        &["apply", "--dry-run", "--backend", "files"],
        &["render", "--dry-run"],
        &["hook", "pre-create", "alice"],
        &["metrics"],
        &["doctor"],
        &["verify", "--offline"],
        &["check-config"],
        &["fleet", "verify", "--hosts", "/dev/null"],
    ] {
        let args = [&["--config", config, "--host", "down"][..], command].concat();
        let out = Run::of(ds01(&args).env("DS01_SSH", &ssh)).assert_code(2, format!("{args:?}"));
        assert!(
            out.stderr.starts_with("ds01-slices: error: --host down: "),
            "{out}"
        );
        assert!(!out.stderr.contains(DOWN), "ssh was run: {out}");
    }
    let out = Run::of(
        ds01(&[
            "--config",
            config,
            "verify",
            "--host",
            "down",
            "--bus",
            "unix:path=/x",
        ])
        .env("DS01_SSH", &ssh),
    )
    .assert_code(2, "--host with --bus");
    assert!(out.stderr.contains("give one of them"), "{out}");

    // A host that would be read as an option is refused before ssh runs.
    let out = Run::of(ds01(&["verify", "--host=-oProxyCommand=x"]).env("DS01_SSH", &ssh))
        .assert_code(2, "verify --host=-o...");
    assert!(out.stderr.contains("-oProxyCommand=x"), "{out}");
}

/// Processes whose command line contains `needle`, with their PIDs.
fn processes_with(needle: &str) -> Vec<(u32, String)> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(needle).then_some((pid, cmdline))
        })
        .collect()
}

/// `--host` gives up at --timeout on a server that stalls after its banner, and leaves no ssh
/// (nor the ProxyCommand ssh started) behind; nor when it is interrupted (SIGINT) meanwhile.
/// Real OpenSSH, to a stand-in server on loopback that sends its banner and then nothing.
/// Before: each run left its ssh running for good.
#[test]
fn host_leaves_no_ssh_behind_when_the_server_stalls_after_its_banner() {
    use std::io::{Read as _, Write as _};
    let dir = Scratch::new("host-stall");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let server = std::thread::spawn(move || {
        let deadline = Instant::now() + crate::support::deadline(Duration::from_secs(120));
        while Instant::now() < deadline && !stopped.load(std::sync::atomic::Ordering::SeqCst) {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    std::thread::spawn(move || {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.write_all(b"SSH-2.0-OpenSSH_9.2p1 ds01-stall\r\n");
                        // Reads what the client sends and answers nothing, until it is gone.
                        let mut sink = [0u8; 4096];
                        while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    let proxy = dir.join("proxy");
    fs::write(&proxy, format!("#!/bin/sh\nsocat - TCP:127.0.0.1:{port}\n")).unwrap();
    fs::write(
        dir.join("ssh_config"),
        format!(
            "Host stall\n  ProxyCommand {}\n  UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n  LogLevel ERROR\n",
            proxy.display()
        ),
    )
    .unwrap();
    let ssh = dir.join("ssh");
    fs::write(
        &ssh,
        format!(
            "#!/bin/sh\nexec ssh -F '{}' \"$@\"\n",
            dir.join("ssh_config").display()
        ),
    )
    .unwrap();
    for f in [&proxy, &ssh] {
        fs::set_permissions(f, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let config = crate::support::main_file(EXAMPLE);
    let verify = |timeout: &str| {
        let mut cmd = ds01(&[
            "--config",
            config.to_str().unwrap(),
            "verify",
            "--host",
            "stall",
            "--timeout",
            timeout,
        ]);
        cmd.env("DS01_SSH", &ssh);
        cmd
    };
    // ssh (its -F names the directory) and the ProxyCommand (its socat names the port).
    let needles = [
        dir.path().display().to_string(),
        format!("TCP:127.0.0.1:{port}"),
    ];
    let ours =
        || -> Vec<(u32, String)> { needles.iter().flat_map(|n| processes_with(n)).collect() };
    let left_after = || left_behind(&ours);

    // Its output into files, not pipes: an ssh left behind would hold a pipe open for good.
    let started = Instant::now();
    let (out_file, err_file) = (dir.join("out"), dir.join("err"));
    let mut child = verify("3")
        .stdout(fs::File::create(&out_file).unwrap())
        .stderr(fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap();
    let code = crate::support::wait_until(Duration::from_secs(60), "--host to give up", || {
        child.try_wait().ok().flatten()
    })
    .map(|s| s.code());
    if code.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let took = started.elapsed();
    let out = Run {
        code: code.unwrap_or(None),
        stdout: fs::read_to_string(&out_file).unwrap_or_default(),
        stderr: fs::read_to_string(&err_file).unwrap_or_default(),
    };
    let left = left_after();
    assert_eq!(out.code, Some(1), "after {took:?}: {out}");
    assert!(
        out.stderr
            .contains("cannot reach the systemd of stall over ssh"),
        "{out}"
    );
    assert!(
        left.is_empty(),
        "left running after --host gave up: {left:?}\n{out}"
    );

    // Interrupted while ssh waits: ssh is in a process group of its own, which the terminal's
    // SIGINT does not reach; it goes with ds01-slices all the same.
    let mut child = verify("120")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let waited = crate::support::wait_until(Duration::from_secs(30), "ssh started", || {
        (!processes_with(&needles[1]).is_empty()).then_some(())
    });
    let status = interrupt(&mut child);
    let left = left_after();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = server.join();
    waited.unwrap();
    let status = status.unwrap();
    assert!(
        status.code() == Some(130) || status.code().is_none(),
        "exit on SIGINT: {status:?}"
    );
    assert!(left.is_empty(), "left running after SIGINT: {left:?}");
}

/// What `ours` still finds 10 s after a run, killed by PID so that a failure leaves nothing.
fn left_behind(ours: &dyn Fn() -> Vec<(u32, String)>) -> Vec<(u32, String)> {
    let gone = crate::support::wait_until(Duration::from_secs(10), "ssh gone", || {
        ours().is_empty().then_some(())
    });
    let left = if gone.is_ok() { Vec::new() } else { ours() };
    for (pid, _) in &left {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    left
}

/// SIGINT to `child`, then its exit status within 30 s; killed and reaped if it has not
/// exited by then, so that a failure leaves nothing running.
fn interrupt(child: &mut std::process::Child) -> Result<std::process::ExitStatus, String> {
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = crate::support::wait_until(Duration::from_secs(30), "exit on SIGINT", || {
        child.try_wait().ok().flatten()
    });
    if status.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}
