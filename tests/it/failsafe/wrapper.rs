//! contrib/ds01-docker-run: the container starts in the user's slice or not at all.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::{clear_tool_env, wait_until, Run, Scratch, World, BIN, EXAMPLE, MANIFEST_DIR};

/// A stand-in `docker` that records its arguments, one per line.
fn fake_docker(dir: &Scratch) -> std::path::PathBuf {
    let path = dir.join("docker");
    let log = dir.join("docker.args");
    fs::write(
        &path,
        format!("#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\n", log.display()),
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
fn fake_hook(dir: &Scratch) -> std::path::PathBuf {
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
        let mut lines = vec!["hook", "pre-create"];
        if let Some(m) = memory {
            lines.extend(["--memory", m]);
        }
        if let Some(p) = pids {
            lines.extend(["--pids", p]);
        }
        lines.extend(["--", "alice"]);
        lines.iter().map(|l| format!("{l}\n")).collect::<String>()
    };
    for (args, memory, pids) in [
        (
            &[
                "-it",
                "--rm",
                "-m",
                "4g",
                "--pids-limit=100",
                "-e",
                "X=1",
                "busybox",
                "sh",
                "-c",
                "x --memory 9g",
            ][..],
            Some("4g"),
            Some("100"),
        ),
        (&["-dm2g", "busybox"][..], Some("2g"), None),
        (&["-itm", "3g", "busybox"][..], Some("3g"), None),
        (&["-m=1g", "busybox"][..], Some("1g"), None),
        (
            &[
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
            ][..],
            Some("512m"),
            None,
        ),
        (
            &["--pids-limit", "7", "--", "busybox", "-m", "9g"][..],
            None,
            Some("7"),
        ),
        // A value that looks like the option is the value of the option before it.
        (&["-e", "--memory", "busybox"][..], None, None),
        // After IMAGE, the container's own arguments.
        (
            &["busybox", "--cgroup-parent=/", "-m", "9g"][..],
            None,
            None,
        ),
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
            &["-it", "--cgroup-parent", "x.slice", "busybox"][..],
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
    let run = |memory: &str| {
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
            .args(["-d", "--memory", memory, "busybox", "sleep", "600"]);
        let out = Run::of(&mut cmd);
        (out, fs::read_to_string(dir.join("docker.args")).ok())
    };
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
}
