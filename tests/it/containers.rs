//! Every container accounted for, against a real systemd (the v1 sandbox here, a v2 one in the
//! VM): container-like scopes (`systemd-run --scope --unit=docker-ID.scope`) placed in a user's
//! slice and outside it (in `ds01.slice`, a group's slice, `system.slice`), and a BuildKit-like
//! plain cgroup; `verify`, `status`, `metrics` and `doctor` name those outside and only those,
//! and `verify` holds again once they are gone. The same with real Docker containers runs in
//! the VM (docker.rs's `docker()` lock).

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::support::prometheus;
use crate::support::vm::in_vm_guest;
use crate::support::{ok_stdout, wait_until, World, EXAMPLE};

const ALICE: &str = "ds01-student-alice.slice";

/// A full container id whose short form (12 characters) tells it from the others.
fn id(n: u8) -> String {
    format!("{n:02x}c0ffee{}", "0".repeat(56))
}

/// A scope named as a container's, with one sleeping process, in `slice`.
pub(crate) fn start_scope(w: &World, unit: &str, slice: &str) {
    w.sb.start_sleeping_scope(unit, slice).unwrap();
}

/// A plain cgroup as BuildKit makes one for a build step (`system.slice:docker:ID`), with one
/// sleeping process in it; its directory as the machine sees it.
fn start_build_step(w: &World, name: &str) -> PathBuf {
    let cg = format!("/system.slice/{name}");
    let dir = w.sb.cgroup_dir("systemd", &cg);
    fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    // The path inside the sandbox, where the sleeper writes its own PID.
    let inside = if w.sb.unified() {
        format!("/sys/fs/cgroup{cg}")
    } else {
        format!("/sys/fs/cgroup/systemd{cg}")
    };
    let script = format!(
        "sh -c 'echo $$ >\"{inside}/cgroup.procs\" && exec sleep infinity' >/dev/null 2>&1 </dev/null &"
    );
    ok_stdout("a build step's sleeper", w.sb.exec(&["sh", "-c", &script])).unwrap();
    wait_until(
        Duration::from_secs(10),
        "the sleeper in the build step",
        || {
            fs::read_to_string(dir.join("cgroup.procs"))
                .ok()
                .filter(|p| !p.trim().is_empty())
        },
    )
    .unwrap();
    dir
}

fn stop_build_step(dir: &PathBuf) {
    for pid in fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
    {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", pid])
            .status();
    }
    wait_until(
        Duration::from_secs(10),
        "the build step's cgroup removed",
        || fs::remove_dir(dir).ok(),
    )
    .unwrap();
}

fn outside(report: &Value) -> Vec<Value> {
    report["containers"]["outside"]
        .as_array()
        .unwrap_or_else(|| panic!("no containers.outside in {report:#}"))
        .clone()
}

#[test]
fn containers_outside_their_users_slice_are_named_by_verify_status_metrics_and_doctor() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    w.expect(&["apply"], 0);
    start_scope(&w, &format!("docker-{}.scope", id(1)), ALICE);
    // One container, in its user's slice: everything holds.
    let report = w.json(&["verify", "--json"], 0);
    assert_eq!(report["containers"]["in_user_slices"], 1, "{report:#}");
    assert_eq!(outside(&report).len(), 0);
    assert_eq!(report["counts"]["outside_containers"], 0);
    let text = w.expect(&["verify"], 0).stdout;
    assert!(
        text.contains("containers: none outside a user's slice (1 in users' slices)"),
        "{text}"
    );

    // Four placed wrong: the root and a group's slice (daemon.json's default parent, a
    // client that skipped the hook), system.slice (Docker's default), and a build step.
    let wrong = [
        (format!("docker-{}.scope", id(2)), "ds01.slice"),
        (format!("docker-{}.scope", id(3)), "ds01-student.slice"),
        (format!("libpod-{}.scope", id(4)), "system.slice"),
    ];
    for (unit, slice) in &wrong {
        start_scope(&w, unit, slice);
    }
    let step = "system.slice:docker:k2x4n7q9w0e1r2t3y4u5i6o7p";
    let step_dir = start_build_step(&w, step);

    let report = w.json(&["verify", "--json"], 3);
    assert_eq!(report["holds"], false);
    assert_eq!(report["counts"]["outside_containers"], 4, "{report:#}");
    assert!(
        report["counts"]["not_holding"].as_u64().unwrap() >= 4,
        "{report:#}"
    );
    assert_eq!(report["containers"]["in_user_slices"], 1, "{report:#}");
    let found = outside(&report);
    let placed: Vec<(String, String, String)> = found
        .iter()
        .map(|c| {
            (
                c["kind"].as_str().unwrap().to_owned(),
                c["id"].as_str().unwrap().to_owned(),
                c["slice"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (kind, id, slice) in [
        ("docker", id(2), "ds01.slice"),
        ("docker", id(3), "ds01-student.slice"),
        ("podman", id(4), "system.slice"),
        (
            "build_step",
            "k2x4n7q9w0e1r2t3y4u5i6o7p".to_owned(),
            "system.slice",
        ),
    ] {
        assert!(
            placed.contains(&(kind.to_owned(), id.clone(), slice.to_owned())),
            "{kind} {id} in {slice} not among {placed:#?}"
        );
    }
    for c in &found {
        assert_eq!(
            c["owner"],
            Value::Null,
            "no Docker here: owner unknown: {c}"
        );
        // v1: this plain cgroup is made in the systemd hierarchy only, with no memory or pids
        // cgroup of its own (BuildKit's, on v1, has).
        if w.sb.unified() || c["kind"] != "build_step" {
            assert!(c["memory_bytes"].is_u64(), "memory read: {c}");
            assert_eq!(c["tasks"], 1, "{c}");
        }
    }
    let sources = report["containers"]["sources"].to_string();
    assert!(
        sources.contains("systemd") && sources.contains("cgroup tree"),
        "{sources}"
    );
    let text = w.expect(&["verify"], 3).stdout;
    assert!(
        text.contains("containers outside their user's slice: 4 (no per-user limit holds for them; 1 in users' slices)"),
        "{text}"
    );
    let short = &id(2)[..12];
    assert!(
        text.contains(&format!("docker {short} in ds01.slice, owner unknown")),
        "{text}"
    );
    assert!(
        text.contains(
            "buildkit k2x4n7q9w0e1 (a BuildKit build step) in system.slice, owner unknown"
        ),
        "{text}"
    );
    assert!(
        text.contains("fix: start containers through the hook"),
        "{text}"
    );
    assert!(
        text.trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("DRIFT: ")
            && text.contains(
                "4 containers outside their user's slice (no per-user limit holds for them)"
            ),
        "{text}"
    );
    // One user's verify lists that user's containers only (these have no known owner).
    let mine = w.run(&["verify", "--user", "alice", "--json"]);
    let mine_report: Value = serde_json::from_str(&mine.stdout).unwrap();
    assert_eq!(outside(&mine_report).len(), 0, "{mine}");
    assert!(
        mine.stderr.contains("4 more containers run outside"),
        "{mine}"
    );

    // status: the same list after the table.
    let status = w.expect(&["status", "--interval", "0"], 0).stdout;
    let table_end = status
        .find("containers outside their user's slice: 4")
        .unwrap_or_else(|| panic!("{status}"));
    assert!(status[..table_end].contains(ALICE), "{status}");
    assert!(
        status
            .trim_end()
            .lines()
            .last()
            .unwrap()
            .contains("; 4 containers outside their user's slice"),
        "{status}"
    );
    let json = w.json(&["status", "--json", "--interval", "0"], 0);
    assert_eq!(outside(&json).len(), 4, "{json:#}");

    // metrics: the gauge and one info series per container.
    let metrics = w.expect(&["metrics"], 0).stdout;
    assert!(
        metrics.contains("\nds01_containers_outside_user_slice 4\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nds01_containers_accounted 1\n"),
        "{metrics}"
    );
    let info: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("ds01_container_outside_user_slice_info{"))
        .collect();
    assert_eq!(info.len(), 4, "{metrics}");
    assert!(
        info.iter().any(|l| l.contains(&format!(
            "id=\"{}\",kind=\"docker\",slice=\"ds01.slice\",owner=\"unknown\"",
            id(2)
        ))),
        "{info:#?}"
    );
    assert!(
        info.iter().any(|l| l.contains("kind=\"buildkit\"")
            && l.contains(&format!("cgroup=\"/system.slice/{step}\""))),
        "{info:#?}"
    );
    if !in_vm_guest() && prometheus::unavailable().is_none() {
        prometheus::promtool_check(&metrics).unwrap();
    }

    // doctor: a finding that fails, with the fix.
    let doctor = w.run(&["doctor", "--json"]);
    let doctor: Value =
        serde_json::from_str(&doctor.stdout).unwrap_or_else(|e| panic!("{e}: {doctor}"));
    let finding = doctor["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "containers")
        .unwrap_or_else(|| panic!("no containers finding: {doctor:#}"));
    assert_eq!(finding["status"], "fail", "{finding}");
    let said = finding["found"].as_str().unwrap();
    assert!(
        said.starts_with("4 containers run outside their user's slice"),
        "{said}"
    );
    let fix = finding["fix"].as_str().unwrap();
    assert!(
        fix.contains("hook pre-create") && fix.contains("Docker API gate"),
        "{fix}"
    );
    assert_eq!(doctor["in_force"], false);

    // Gone again: verify holds.
    for (unit, _) in &wrong {
        ok_stdout("systemctl stop", w.sb.systemctl(&["stop", unit])).unwrap();
    }
    stop_build_step(&step_dir);
    let report = w.json(&["verify", "--json"], 0);
    assert_eq!(outside(&report).len(), 0, "{report:#}");
    assert_eq!(report["containers"]["in_user_slices"], 1);
}

/// `sh -c script` (in the VM): its stdout, or a panic with everything it printed.
#[track_caller]
fn sh_ok(script: &str) -> String {
    let run = crate::support::Run::of(
        std::process::Command::new("sh")
            .args(["-c", script])
            .stdin(std::process::Stdio::null()),
    );
    assert_eq!(run.code, Some(0), "{script}: {run}");
    run.stdout
}

/// Real Docker containers in the VM, on its own systemd: one started in the slice the hook
/// gives, two without it (Docker's default parent `system.slice`, and `ds01.slice` as DS01's
/// daemon.json sets it), one of them labelled with its owner as the Docker API gate labels
/// them, and a BuildKit build whose `RUN` step runs in a plain cgroup of `system.slice`.
#[test]
fn docker_containers_started_without_the_hooks_slice_are_found_with_their_names_and_owners() {
    let Some(_docker) = crate::docker::docker() else {
        return;
    };
    let dir = crate::support::Scratch::new("outside");
    dir.write(
        "config/resource-limits.yaml",
        "default_group: out\nenforcement:\n  aggregate_limits: true\n  cgroup_driver: systemd\ngroups:\n  out:\n    aggregate:\n      memory_max: \"512M\"\n      tasks_max: 64\n",
    );
    dir.write("config/groups/out.members", "alice\n");
    dir.mkdir("state");
    let run = |args: &[&str]| {
        let mut cmd = crate::support::ds01(args);
        cmd.arg("--config")
            .arg(dir.join("config/resource-limits.yaml"))
            .arg("--state-dir")
            .arg(dir.join("state"));
        crate::support::Run::of(&mut cmd)
    };
    let hook = run(&["hook", "pre-create", "alice"]);
    assert_eq!(hook.code, Some(0), "{hook}");
    let slice = hook.stdout.trim().to_owned();
    assert_eq!(slice, "ds01-out-alice.slice");
    let image = "local/busybox";
    let start = |options: &str| {
        sh_ok(&format!(
            "docker run -d --network none {options} {image} sleep 600"
        ))
        .trim()
        .to_owned()
    };
    // Removed whatever happens below.
    struct Containers(Vec<String>);
    impl Drop for Containers {
        fn drop(&mut self) {
            let _ = std::process::Command::new("sh")
                .args([
                    "-c",
                    &format!("docker rm -f {} >/dev/null 2>&1", self.0.join(" ")),
                ])
                .status();
        }
    }
    let mut started = Containers(Vec::new());
    let inside = start(&format!("--cgroup-parent={slice} --label ds01.user=alice"));
    started.0.push(inside.clone());
    let default_parent = start("--name ds01-outside-default --label ds01.user=alice");
    started.0.push(default_parent.clone());
    let root_parent = start("--name ds01-outside-root --cgroup-parent=ds01.slice");
    started.0.push(root_parent.clone());

    // A BuildKit build whose RUN step sleeps; its step's cgroup is looked for while it runs.
    dir.write("build/Dockerfile", &format!("FROM {image}\nRUN sleep 45\n"));
    let log = dir.join("build.log");
    let build = std::process::Command::new("sh")
        .args([
            "-c",
            &format!(
                "DOCKER_BUILDKIT=1 exec docker build --no-cache --progress=plain --network none -t ds01-outside-build {} >{} 2>&1",
                dir.join("build").display(),
                log.display()
            ),
        ])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut build = crate::support::Reaped(build);
    let build_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let step = wait_until(
        Duration::from_secs(120),
        "BuildKit's RUN step running",
        || {
            if let Ok(Some(status)) = build.0.try_wait() {
                panic!(
                    "the build ended ({status}) before its step was seen:\n{}",
                    build_log()
                );
            }
            let found = sh_ok("ls -d /sys/fs/cgroup/system.slice/*:docker:* 2>/dev/null || true");
            found
                .lines()
                .next()
                .map(|l| l.rsplit(':').next().unwrap().to_owned())
        },
    )
    .unwrap_or_else(|e| panic!("{e}:\n{}", build_log()));

    let out = run(&["verify", "--json"]);
    assert_eq!(out.code, Some(3), "{out}");
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let found = outside(&report);
    let by_id = |id: &str| {
        found
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("{id} not outside: {report:#}"))
            .clone()
    };
    assert!(
        found.iter().all(|c| c["id"] != inside.as_str()),
        "{report:#}"
    );
    assert!(report["containers"]["in_user_slices"].as_u64().unwrap() >= 1);
    let d = by_id(&default_parent);
    assert_eq!(
        (
            &d["kind"],
            &d["name"],
            &d["owner"],
            &d["slice"],
            &d["owner_slice"]
        ),
        (
            &Value::from("docker"),
            &Value::from("ds01-outside-default"),
            &Value::from("alice"),
            &Value::from("system.slice"),
            &Value::from("ds01-out-alice.slice")
        ),
        "{d:#}"
    );
    assert!(
        d["memory_bytes"].as_u64().unwrap() > 0 && d["tasks"].as_u64().unwrap() >= 1,
        "{d:#}"
    );
    let r = by_id(&root_parent);
    assert_eq!(
        (&r["name"], &r["owner"], &r["slice"]),
        (
            &Value::from("ds01-outside-root"),
            &Value::Null,
            &Value::from("ds01.slice")
        ),
        "{r:#}"
    );
    let b = by_id(&step);
    assert_eq!(
        (&b["kind"], &b["slice"]),
        (&Value::from("build_step"), &Value::from("system.slice")),
        "{b:#}"
    );
    let sources = report["containers"]["sources"].to_string();
    assert!(sources.contains("docker api"), "{sources}");
    eprintln!("container cgroup: outside, {}", d["cgroup"]);
    eprintln!("container cgroup: BuildKit step, {}", b["cgroup"]);

    // alice's own view: her container outside, and under her slice in status.
    let mine = run(&["verify", "--user", "alice", "--json"]);
    assert_eq!(mine.code, Some(3), "{mine}");
    let mine: Value = serde_json::from_str(&mine.stdout).unwrap();
    assert_eq!(outside(&mine).len(), 1, "{mine:#}");
    assert_eq!(outside(&mine)[0]["id"], default_parent.as_str());
    let status = run(&["status", "alice", "--interval", "0"]);
    assert_eq!(status.code, Some(0), "{status}");
    let block: String = status
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with(&slice))
        .take_while(|l| l.starts_with(&slice) || l.starts_with(' '))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        block.contains(&format!(
            "outside docker {} (ds01-outside-default) in system.slice, owner alice",
            &default_parent[..12]
        )),
        "{}",
        status.stdout
    );
    let metrics = run(&["metrics"]);
    assert!(
        metrics
            .stdout
            .lines()
            .any(|l| l.starts_with("ds01_container_outside_user_slice_info{")
                && l.contains(&format!("id=\"{default_parent}\""))
                && l.contains("owner=\"alice\"")
                && l.contains("name=\"ds01-outside-default\"")),
        "{}",
        metrics.stdout
    );

    // Gone: only the container in alice's slice is left, and verify holds.
    sh_ok(&format!(
        "docker rm -f {default_parent} {root_parent} >/dev/null"
    ));
    wait_until(Duration::from_secs(120), "the build finished", || {
        build.0.try_wait().ok().flatten()
    })
    .unwrap();
    let _ = sh_ok("docker rmi ds01-outside-build >/dev/null 2>&1 || true");
    // (Other tests' slices, stale in this configuration, keep a full verify from holding.)
    let out = run(&["verify", "--user", "alice", "--json"]);
    assert_eq!(out.code, Some(0), "{out}");
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(outside(&report).len(), 0, "{report:#}");
    assert!(
        report["containers"]["in_user_slices"].as_u64().unwrap() >= 1,
        "{report:#}"
    );
}
