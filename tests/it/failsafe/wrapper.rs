//! contrib/ds01-docker-run: the container starts in the user's slice or not at all.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::docker_api::docker_cli;
use crate::support::{
    clear_tool_env, skip, wait_until, Run, Scratch, World, BIN, EXAMPLE, MANIFEST_DIR,
};

/// A stand-in `docker` that records its arguments, one per line; `docker run --help` is the
/// real docker's (the wrapper learns docker's options from it).
fn fake_docker(dir: &Scratch) -> std::path::PathBuf {
    let real = docker_cli().unwrap_or_else(|| {
        skip(
            "a docker CLI",
            "no docker on PATH (.ci/docker-cli puts one there)",
        );
        "docker".into()
    });
    let path = dir.join("docker");
    let log = dir.join("docker.args");
    fs::write(
        &path,
        format!(
            "#!/bin/sh\n[ \"$1 $2\" = 'run --help' ] && exec '{}' run --help\nprintf '%s\\n' \"$@\" > '{}'\n",
            real.display(),
            log.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn wrapper(dir: &Scratch, user: &str) -> Command {
    let mut cmd = Command::new(Path::new(MANIFEST_DIR).join("contrib/ds01-docker-run"));
    clear_tool_env(&mut cmd)
        .env("DS01_SLICES", BIN)
        .env("DOCKER", fake_docker(dir))
        .env("DS01_USER", user)
        .args(["--rm", "busybox", "true"]);
    cmd
}

#[test]
fn the_wrapper_starts_nothing_when_the_hook_fails() {
    let dir = Scratch::new("wrapper");
    let config = Path::new(EXAMPLE).join("resource-limits.yaml");
    // A user name the tool refuses (exit 2), and no systemd to talk to (exit 1).
    for (user, bus, code) in [
        ("@", "unix:path=/nonexistent", 2),
        ("alice", "unix:path=/nonexistent", 1),
    ] {
        let out = Run::of(
            wrapper(&dir, user)
                .env("DS01_CONFIG", &config)
                .env("DS01_STATE_DIR", dir.join("state"))
                .env("DBUS_SYSTEM_BUS_ADDRESS", bus),
        );
        assert_eq!(out.code, Some(code), "{out}");
        assert!(
            out.stderr.contains("the container was not started"),
            "{out}"
        );
        assert!(!dir.join("docker.args").exists(), "docker ran\n{out}");
    }
}

#[test]
fn the_wrapper_starts_the_container_in_the_users_slice() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    let dir = Scratch::new("wrapper");
    let out = Run::of(
        wrapper(&dir, "alice")
            .env("DS01_CONFIG", w.config())
            .env("DS01_STATE_DIR", w.state())
            .env("DS01_CGROUP_ROOT", w.sb.host_path("/sys/fs/cgroup"))
            .env("DBUS_SYSTEM_BUS_ADDRESS", w.sb.bus_address()),
    );
    assert_eq!(out.code, Some(0), "{out}");
    let args = fs::read_to_string(dir.join("docker.args")).unwrap();
    assert_eq!(
        args,
        "run\n--cgroup-parent=ds01-student-alice.slice\n--rm\nbusybox\ntrue\n"
    );
    w.assert_user_as_planned("alice");
}

/// A stand-in `ds01-slices` that records its arguments, one per line, and prints alice's slice.
pub(super) fn fake_hook(dir: &Scratch) -> std::path::PathBuf {
    let path = dir.join("ds01-slices");
    let log = dir.join("hook.args");
    fs::write(
        &path,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\necho ds01-student-alice.slice\n",
            log.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn the_wrapper_passes_the_containers_request_to_the_hook() {
    let hook = |args: &[&str]| -> (Run, Option<String>, Option<String>) {
        let dir = Scratch::new("wrapper");
        let mut cmd = Command::new(Path::new(MANIFEST_DIR).join("contrib/ds01-docker-run"));
        clear_tool_env(&mut cmd)
            .env("DS01_SLICES", fake_hook(&dir))
            .env("DOCKER", fake_docker(&dir))
            .env("DS01_USER", "alice")
            .args(args);
        let out = Run::of(&mut cmd);
        let read = |f: &str| fs::read_to_string(dir.join(f)).ok();
        (out, read("hook.args"), read("docker.args"))
    };
    let request = |memory: Option<&str>, pids: Option<&str>| {
        let mut lines = vec!["hook".to_owned(), "pre-create".to_owned()];
        if let Some(m) = memory {
            lines.push(format!("--memory={m}"));
        }
        if let Some(p) = pids {
            lines.push(format!("--pids={p}"));
        }
        lines.extend(["--".to_owned(), "alice".to_owned()]);
        lines.iter().map(|l| format!("{l}\n")).collect::<String>()
    };
    // Each spelling of a request is compared with the real docker CLI's in wrapper_cli.rs;
    // here, the words the hook and docker get.
    for (args, memory, pids) in [
        (
            &[
                "-i",
                "--rm",
                "-m",
                "4g",
                "--pids-limit=100",
                "busybox",
                "sh",
                "-c",
                "x -m 9",
            ][..],
            Some("4g"),
            Some("100"),
        ),
        (&["--pids-limit", "-1", "busybox"][..], None, Some("-1")),
        // A value with a space reaches the hook as one word (which refuses it).
        (&["-m", "4g *", "busybox"][..], Some("4g *"), None),
    ] {
        let (out, hook_args, docker_args) = hook(args);
        assert_eq!(out.code, Some(0), "{args:?}: {out}");
        assert_eq!(
            hook_args.as_deref(),
            Some(request(memory, pids).as_str()),
            "{args:?}"
        );
        // Docker gets every argument unchanged, after the slice.
        let want: String = ["run", "--cgroup-parent=ds01-student-alice.slice"]
            .iter()
            .chain(args)
            .map(|a| format!("{a}\n"))
            .collect();
        assert_eq!(docker_args.as_deref(), Some(want.as_str()), "{args:?}");
    }
    // Refused before anything runs: a --cgroup-parent of the caller's (Docker takes the last
    // one, so it would win over the slice), and an option that lost its value.
    for (args, why) in [
        (
            &["--cgroup-parent=/", "busybox"][..],
            "--cgroup-parent is set by ds01-docker-run",
        ),
        (
            &["-i", "--cgroup-parent", "x.slice", "busybox"][..],
            "--cgroup-parent is set by ds01-docker-run",
        ),
        (&["--rm", "-m"][..], "has no value"),
    ] {
        let (out, hook_args, docker_args) = hook(args);
        assert_eq!(out.code, Some(2), "{args:?}: {out}");
        assert!(
            out.stderr.contains(why) && out.stderr.contains("the container was not started"),
            "{args:?}: {out}"
        );
        assert_eq!(
            (hook_args, docker_args),
            (None, None),
            "{args:?}: something ran"
        );
    }
}

#[test]
fn the_wrapper_starts_no_container_whose_memory_would_not_fit() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    w.write(
        "user-overrides.yaml",
        "alice:\n  aggregate:\n    memory_max: 256M\n    memory_high: 240M\n    tasks_max: 64\n",
    );
    w.expect(&["apply"], 0);
    w.sb.start_memory_hog("hog.service", "ds01-student-alice.slice", 150)
        .unwrap();
    wait_until(Duration::from_secs(60), "the hog holds 150M", || {
        (w.show("ds01-student-alice.slice", "MemoryCurrent")
            .parse::<u64>()
            .ok()?
            >= 150 << 20)
            .then_some(())
    })
    .unwrap();
    let run_args = |args: &[&str]| {
        let dir = Scratch::new("wrapper");
        let mut cmd = Command::new(Path::new(MANIFEST_DIR).join("contrib/ds01-docker-run"));
        clear_tool_env(&mut cmd)
            .env("DS01_SLICES", BIN)
            .env("DOCKER", fake_docker(&dir))
            .env("DS01_USER", "alice")
            .env("DS01_CONFIG", w.config())
            .env("DS01_STATE_DIR", w.state())
            .env("DS01_CGROUP_ROOT", w.sb.host_path("/sys/fs/cgroup"))
            .env("DBUS_SYSTEM_BUS_ADDRESS", w.sb.bus_address())
            .args(args);
        let out = Run::of(&mut cmd);
        (out, fs::read_to_string(dir.join("docker.args")).ok())
    };
    let run = |memory: &str| run_args(&["-d", "--memory", memory, "busybox", "sleep", "600"]);
    // 150M in use + 200M > 256M: the hook's box, and no docker run.
    let (out, docker) = run("200m");
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr.contains("Container refused")
            && out.stderr.contains("the container was not started"),
        "{out}"
    );
    assert_eq!(docker, None, "docker ran: {out}");
    // 150M + 50M fits.
    let (out, docker) = run("50m");
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        docker
            .is_some_and(|d| d
                .starts_with("run\n--cgroup-parent=ds01-student-alice.slice\n-d\n--memory\n50m\n")),
        "{out}"
    );
    // Docker's own "unlimited" spellings are no request (before: the hook refused `--pids
    // -1` as "unexpected argument '-1'" and a zero memory as a zero limit).
    for args in [
        &["-d", "--pids-limit", "-1", "-m", "0", "busybox"][..],
        &["-d", "--pids-limit=0", "--memory=0g", "busybox"],
    ] {
        let (out, docker) = run_args(args);
        assert_eq!(out.code, Some(0), "{args:?}: {out}");
        assert!(docker.is_some(), "{args:?}: docker did not run: {out}");
    }
    w.expect(
        &[
            "hook",
            "pre-create",
            "--pids",
            "-1",
            "--memory",
            "0",
            "alice",
        ],
        0,
    );
}

/// Stand-ins named as the real programs, in `dir/bin` (for PATH): `ds01-slices` records its
/// arguments in `dir/out/hook.args` and prints the slice of the user it was given; `docker`
/// records its arguments in `dir/out/docker.args`, and `docker run --help` is the real one's.
/// `dir` and `bin` are open to every user, `out` writable by every user.
fn stand_ins(dir: &Scratch) -> std::path::PathBuf {
    let real = docker_cli().unwrap_or_else(|| {
        skip(
            "a docker CLI",
            "no docker on PATH (.ci/docker-cli puts one there)",
        );
        "docker".into()
    });
    let (bin, out) = (dir.mkdir("bin"), dir.mkdir("out"));
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o777)).unwrap();
    let script = |name: &str, text: String| {
        let path = bin.join(name);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    };
    script(
        "ds01-slices",
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}/hook.args'\nfor u; do :; done\necho \"ds01-student-$u.slice\"\n",
            out.display()
        ),
    );
    script(
        "docker",
        format!(
            "#!/bin/sh\n[ \"$1 $2\" = 'run --help' ] && exec '{}' run --help\nprintf '%s\\n' \"$@\" > '{}/docker.args'\n",
            real.display(),
            out.display()
        ),
    );
    bin
}

/// Whose slice the wrapper picks: never another user's for a caller who is not root (before:
/// `DS01_USER=root` put nobody's container in root's slice); under sudo, the slice of the user
/// who ran sudo (before: root's, shared by everyone), and nothing of the caller's environment
/// that root would run or trust (before: `DS01_SLICES` ran the caller's program as root).
#[test]
fn the_wrapper_picks_the_callers_slice_and_never_another_users() {
    if Command::new("setpriv").arg("--version").output().is_err() {
        skip("setpriv", "setpriv is needed to run the wrapper as nobody");
        return;
    }
    // Under /tmp: every user can reach it (the test's TMPDIR may be below a private directory).
    let dir = Scratch::new_in(Path::new("/tmp"), "wrapper-user");
    let bin = stand_ins(&dir);
    let wrapper = Path::new(MANIFEST_DIR).join("contrib/ds01-docker-run");
    let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display());
    let attempt = |as_nobody: bool, env: &[(&str, &str)]| -> (Run, Option<String>) {
        let _ = fs::remove_file(dir.join("out/hook.args"));
        let mut cmd = if as_nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(&wrapper);
            c
        } else {
            Command::new(&wrapper)
        };
        clear_tool_env(&mut cmd)
            .env_remove("DS01_USER")
            .env_remove("DS01_SLICES")
            .env_remove("DOCKER")
            .env_remove("SUDO_USER")
            .env_remove("SUDO_UID")
            .env("PATH", &path)
            .envs(env.iter().copied())
            .args(["--rm", "busybox", "true"]);
        let out = Run::of(&mut cmd);
        let user = fs::read_to_string(dir.join("out/hook.args"))
            .ok()
            .and_then(|a| a.lines().last().map(str::to_owned));
        (out, user)
    };
    let sudo = [("SUDO_USER", "alice"), ("SUDO_UID", "1000")];
    // As nobody or not, the environment, and the user the hook is asked for (or the refusal).
    type Case<'a> = (bool, Vec<(&'a str, &'a str)>, Result<&'a str, &'a str>);
    let cases: Vec<Case> = vec![
        (true, vec![], Ok("nobody")),
        (true, vec![("DS01_USER", "nobody")], Ok("nobody")),
        (
            true,
            vec![("DS01_USER", "root")],
            Err("DS01_USER=root names another user: nobody's containers go in nobody's slice"),
        ),
        (false, sudo.to_vec(), Ok("alice")),
        (
            false,
            [&sudo[..], &[("DS01_USER", "bob")]].concat(),
            Err("DS01_USER=bob names another user: alice's containers go in alice's slice"),
        ),
        (
            false,
            [&sudo[..], &[("DS01_SLICES", "/tmp/evil")]].concat(),
            Err("DS01_SLICES is set, and under sudo it would make root run or trust what alice chose"),
        ),
        (
            false,
            [&sudo[..], &[("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/tmp/fake")]].concat(),
            Err("DBUS_SYSTEM_BUS_ADDRESS is set, and under sudo"),
        ),
        // sudo run by root is root itself.
        (false, vec![("SUDO_USER", "root"), ("SUDO_UID", "0")], Ok("root")),
        // Root itself may start a container for anyone.
        (false, vec![("DS01_USER", "bob")], Ok("bob")),
    ];
    for (as_nobody, env, want) in cases {
        let (out, user) = attempt(as_nobody, &env);
        match want {
            Ok(name) => {
                assert_eq!(out.code, Some(0), "nobody {as_nobody}, {env:?}: {out}");
                assert_eq!(
                    user.as_deref(),
                    Some(name),
                    "nobody {as_nobody}, {env:?}: {out}"
                );
            }
            Err(why) => {
                assert_eq!(out.code, Some(2), "nobody {as_nobody}, {env:?}: {out}");
                assert!(
                    out.stderr.contains(why)
                        && out.stderr.contains("the container was not started"),
                    "nobody {as_nobody}, {env:?}: {out}"
                );
                assert_eq!(
                    user, None,
                    "nobody {as_nobody}, {env:?}: the hook ran: {out}"
                );
            }
        }
    }
}
