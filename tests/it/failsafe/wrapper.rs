//! contrib/ds01-docker-run: the container starts in the user's slice or not at all.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::support::{clear_tool_env, Run, Scratch, World, BIN, EXAMPLE, MANIFEST_DIR};

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
