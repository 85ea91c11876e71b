//! `doctor` through the real binary: on a sandboxed systemd after apply it names the cgroup
//! version and what that means for MemoryHigh, Docker's driver as it is (the v1 machine has
//! no running dockerd; the v2 VM runs one with the systemd driver), and a fix for every
//! finding; drift made behind apply's back shows up; a state directory anyone can write is a
//! finding; an unreachable systemd is a failure that does not stop the other checks.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::vm::in_vm_guest;
use crate::support::{copy_dir, ds01, Run, Scratch, World, EXAMPLE, MAIN};

/// The finding of `check` in `doctor --json`'s report.
fn finding<'a>(report: &'a Value, check: &str) -> &'a Value {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no {check} finding in {report:#}"))
}

fn text<'a>(f: &'a Value, key: &str) -> &'a str {
    f[key].as_str().unwrap_or_default()
}

/// What this machine's Docker client says the driver is, as doctor should find it: the
/// running daemon's answer, or None when no daemon answers.
fn docker_info_driver() -> Option<String> {
    let out = Command::new("timeout")
        .args(["10", "docker", "info", "--format", "{{.CgroupDriver}}"])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let driver = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !driver.is_empty()).then_some(driver)
}

/// Every FAIL and warning line of the text screen is followed by its fix.
fn assert_every_finding_has_its_fix(out: &Run) {
    let lines: Vec<&str> = out.stdout.lines().collect();
    let mut bad = 0;
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("FAIL") || line.starts_with("warning") {
            bad += 1;
            let next = lines.get(i + 1).copied().unwrap_or_default();
            assert!(
                next.trim_start().starts_with("fix: "),
                "no fix after {line:?}\n{out}"
            );
        }
    }
    assert!(
        lines.last().is_some_and(|l| l.contains(" failure")),
        "no summary line\n{out}"
    );
    assert!(bad > 0 || out.code == Some(0), "{out}");
}

#[test]
fn doctor_names_the_cgroup_version_memory_high_and_dockers_driver() {
    // In the VM: the running dockerd (started once for every Docker test) is what doctor asks.
    let _docker = crate::docker::docker();
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    w.expect(&["apply"], 0);
    // A unit in a user's slice: ds01.slice and its group slice get their cgroups.
    let out = w.sb.systemd_run(&[
        "--unit=doctor-sleep.service",
        "--slice=ds01-student-alice.slice",
        "sleep",
        "infinity",
    ]);
    assert!(out.status.success(), "{out:?}");

    let out = w.run(&["doctor"]);
    let report = w.json(&["doctor", "--json"], out.code.unwrap_or(-1));
    assert_every_finding_has_its_fix(&out);
    let memory_high = finding(&report, "memory_high");
    let controllers = finding(&report, "controllers");
    if w.sb.unified() {
        assert_eq!(report["cgroup"], "v2", "{report:#}");
        assert!(
            out.stdout.contains("cgroup v2 (unified hierarchy)"),
            "{out}"
        );
        assert_eq!(memory_high["status"], "ok", "{report:#}");
        assert!(
            text(memory_high, "found").starts_with("MemoryHigh enforced"),
            "{report:#}"
        );
        assert_eq!(controllers["status"], "ok", "{report:#}");
        // ok with a unit running below: cpu, memory and pids all enabled for the group slices.
        assert!(
            text(controllers, "found").contains("for the group slices (cgroup.subtree_control)"),
            "{report:#}"
        );
    } else {
        assert_eq!(report["cgroup"], "v1", "{report:#}");
        assert!(out.stdout.contains("cgroup v1"), "{out}");
        assert!(out.stdout.contains("MemoryHigh not enforced"), "{out}");
        // The example configuration sets MemoryHigh: on v1 that is not in force.
        assert_eq!(memory_high["status"], "fail", "{report:#}");
        assert!(
            text(memory_high, "found").contains("ds01-student-alice.slice"),
            "{report:#}"
        );
        assert!(
            text(memory_high, "fix").contains("systemd.unified_cgroup_hierarchy=1"),
            "{report:#}"
        );
        assert_eq!(controllers["status"], "ok", "{report:#}");
        assert!(
            text(controllers, "found").contains("ds01.slice realized in cpu, memory, pids"),
            "{report:#}"
        );
        assert_eq!(out.code, Some(1), "{out}");
        assert!(out.stdout.contains("limits are NOT in force"), "{out}");
    }

    // Docker's driver as it is.
    let docker = finding(&report, "docker");
    let driver = &report["docker"];
    match docker_info_driver() {
        Some(d) => {
            assert_eq!(driver["driver"], d.as_str(), "{report:#}");
            assert!(
                text(driver, "source").starts_with("docker info"),
                "{report:#}"
            );
        }
        None => {
            // No daemon answers (this machine): neither is there a daemon.json in the sandbox,
            // so Docker's default for the cgroup version is what it would use.
            assert!(
                !in_vm_guest(),
                "the VM's dockerd did not answer: {report:#}"
            );
            let (want, default) = if w.sb.unified() {
                ("systemd", "Docker's default on cgroup v2 with systemd")
            } else {
                ("cgroupfs", "Docker's default on cgroup v1")
            };
            assert_eq!(driver["driver"], want, "{report:#}");
            assert!(text(driver, "source").starts_with(default), "{report:#}");
            assert!(text(driver, "source").contains("no /proc/"), "{report:#}");
        }
    }
    let good = driver["driver"] == "systemd";
    assert_eq!(
        docker["status"],
        if good { "ok" } else { "fail" },
        "{report:#}"
    );
    if !good {
        assert!(
            text(docker, "fix").contains("native.cgroupdriver=systemd"),
            "{report:#}"
        );
    }
    assert!(
        out.stdout.contains(&format!(
            "Docker's cgroup driver is {}",
            driver["driver"].as_str().unwrap()
        )),
        "{out}"
    );

    // The rest of this world is as it should be.
    for check in ["config", "systemd", "state_dir", "drift"] {
        assert_eq!(
            finding(&report, check)["status"],
            "ok",
            "{check}: {report:#}"
        );
    }
    assert!(
        text(finding(&report, "systemd"), "found").starts_with("systemd 2"),
        "{report:#}"
    );
    let fails = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["status"] == "fail")
        .count();
    assert_eq!(report["failures"], fails);
    assert_eq!(out.code, Some(if fails == 0 { 0 } else { 1 }), "{out}");
    if w.sb.unified() && in_vm_guest() {
        // cgroup v2 with Docker's systemd driver: everything the configuration asks holds.
        assert_eq!(out.code, Some(0), "{out}");
    }
}

#[test]
fn doctor_shows_drift_in_its_summary() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    w.expect(&["apply"], 0);
    // Its exit code depends on the host (v1: MemoryHigh); the drift finding does not.
    let before = w.run(&["doctor", "--json"]);
    let before: Value =
        serde_json::from_str(&before.stdout).unwrap_or_else(|e| panic!("{e}\n{before}"));
    assert_eq!(finding(&before, "drift")["status"], "ok", "{before:#}");
    // Changed behind apply's back: a limit that is no longer the configured one.
    w.set_property("ds01-student-alice.slice", &["TasksMax=7"]);
    let report = w.json(&["doctor", "--json"], 1);
    let drift = finding(&report, "drift");
    assert_eq!(drift["status"], "fail", "{report:#}");
    let found = text(drift, "found");
    assert!(found.contains("drift 1"), "{report:#}");
    assert!(
        found.contains("ds01-student-alice.slice TasksMax: expected 12288, actual 7"),
        "{report:#}"
    );
    assert!(
        text(drift, "fix").contains("ds01-slices apply"),
        "{report:#}"
    );
    assert_eq!(report["in_force"], false);
}

#[test]
fn doctor_flags_a_state_dir_anyone_can_write_and_goes_on_without_systemd() {
    let dir = Scratch::new("doctor");
    copy_dir(std::path::Path::new(EXAMPLE), &dir.join("config"));
    let state = dir.mkdir("state");
    fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).unwrap();
    let started = Instant::now();
    let out = Run::of(
        ds01(&["doctor", "--json", "--timeout", "5"])
            .arg("--config")
            .arg(dir.join(&format!("config/{MAIN}")))
            .arg("--state-dir")
            .arg(&state)
            .arg("--root")
            .arg(dir.path())
            .arg("--bus")
            .arg(format!("unix:path={}", dir.join("no-bus").display())),
    );
    assert!(started.elapsed() < Duration::from_secs(30), "{out}");
    assert_eq!(out.code, Some(1), "{out}");
    let report: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{out}"));

    let state_dir = finding(&report, "state_dir");
    assert_eq!(state_dir["status"], "warning", "{report:#}");
    assert!(
        text(state_dir, "found").contains("every user can write it"),
        "{report:#}"
    );
    assert!(text(state_dir, "fix").contains("chmod go-w"), "{report:#}");

    // No systemd on that bus: a failure naming the bus, and every other check still made.
    let systemd = finding(&report, "systemd");
    assert_eq!(systemd["status"], "fail", "{report:#}");
    assert!(text(systemd, "found").contains("no-bus"), "{report:#}");
    assert_eq!(finding(&report, "drift")["status"], "warning", "{report:#}");
    for check in ["config", "cgroup", "memory_high", "accounting", "docker"] {
        finding(&report, check);
    }
    let as_root = fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    assert_eq!(
        finding(&report, "config")["status"],
        if as_root { "ok" } else { "warning" },
        "{report:#}"
    );

    // A configuration file others could change is a failure with its fix (as root, where the
    // trust rule applies).
    if as_root {
        let main = dir.join(&format!("config/{MAIN}"));
        fs::set_permissions(&main, fs::Permissions::from_mode(0o666)).unwrap();
        let out = Run::of(
            ds01(&["doctor", "--json", "--timeout", "5"])
                .arg("--config")
                .arg(&main)
                .arg("--state-dir")
                .arg(&state)
                .arg("--bus")
                .arg(format!("unix:path={}", dir.join("no-bus").display())),
        );
        let report: Value =
            serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{out}"));
        let config = finding(&report, "config");
        assert_eq!(config["status"], "fail", "{report:#}");
        assert!(text(config, "found").contains("every user"), "{report:#}");
        assert!(text(config, "found").contains("chmod go-w"), "{report:#}");
    }
}

#[test]
fn doctor_names_the_reload_hazard_of_nvidias_runtime_with_the_systemd_driver() {
    // No GPU, no NVIDIA software, no daemon: daemon.json in a test root says it all.
    let dir = Scratch::new("doctor-gpu");
    copy_dir(std::path::Path::new(EXAMPLE), &dir.join("config"));
    dir.mkdir("state");
    let doctor = |daemon_json: &str, json: bool| {
        dir.write("root/etc/docker/daemon.json", daemon_json);
        let mut cmd = ds01(&["doctor", "--timeout", "5"]);
        if json {
            cmd.arg("--json");
        }
        cmd.arg("--config")
            .arg(dir.join(&format!("config/{MAIN}")))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--bus")
            .arg(format!("unix:path={}", dir.join("no-bus").display()))
            // No daemon answers: what the file says is what doctor judges.
            .env(
                "DOCKER_HOST",
                format!("unix://{}", dir.join("no-docker").display()),
            );
        Run::of(&mut cmd)
    };
    let report = |daemon_json: &str| {
        let out = doctor(daemon_json, true);
        let report: Value =
            serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{out}"));
        finding(&report, "gpu").clone()
    };

    // As `nvidia-ctk runtime configure --runtime=docker --set-as-default` leaves it, with the
    // systemd driver DS01's slices need.
    let default = r#"{"default-runtime": "nvidia", "exec-opts": ["native.cgroupdriver=systemd"],
        "runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}}}"#;
    let gpu = report(default);
    assert_eq!(gpu["status"], "warning", "{gpu:#}");
    let found = text(&gpu, "found");
    for said in [
        "Docker's default runtime is NVIDIA's (nvidia, from ",
        "Docker's cgroup driver is systemd",
        "behind systemd's back",
        "`systemctl daemon-reload`",
        "Failed to initialize NVML: Unknown Error",
    ] {
        assert!(found.contains(said), "no {said:?} in {gpu:#}");
    }
    let fix = text(&gpu, "fix");
    for said in [
        "never run `systemctl daemon-reload` while GPU containers run",
        "--allow-reload",
        "nvidia-ctk system create-dev-char-symlinks --create-all",
        "https://github.com/NVIDIA/nvidia-container-toolkit/issues/48",
    ] {
        assert!(fix.contains(said), "no {said:?} in {gpu:#}");
    }
    let screen = doctor(default, false);
    eprintln!(
        "gpu: doctor with NVIDIA's default runtime:\n{}",
        screen.stdout
    );
    assert!(
        screen
            .stdout
            .lines()
            .any(|l| l.starts_with("warning  gpu ")),
        "{screen}"
    );

    // NVIDIA's runtime beside runc: the containers that ask for it.
    let gpu = report(
        r#"{"exec-opts": ["native.cgroupdriver=systemd"],
            "runtimes": {"nvidia": {"path": "/usr/bin/nvidia-container-runtime"}}}"#,
    );
    assert_eq!(gpu["status"], "warning", "{gpu:#}");
    assert!(text(&gpu, "found").contains("--runtime=nvidia"), "{gpu:#}");

    // No NVIDIA runtime; or the cgroupfs driver, whose containers systemd does not manage.
    let gpu = report(r#"{"exec-opts": ["native.cgroupdriver=systemd"]}"#);
    assert_eq!(gpu["status"], "ok", "{gpu:#}");
    assert!(
        text(&gpu, "found").starts_with("no NVIDIA runtime"),
        "{gpu:#}"
    );
    let gpu = report(
        r#"{"default-runtime": "nvidia", "exec-opts": ["native.cgroupdriver=cgroupfs"],
            "runtimes": {"nvidia": {"path": "nvidia-container-runtime"}}}"#,
    );
    assert_eq!(gpu["status"], "ok", "{gpu:#}");
    assert!(
        text(&gpu, "found").contains("leaves their GPUs alone"),
        "{gpu:#}"
    );
}
