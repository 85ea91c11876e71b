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
fn start_scope(w: &World, unit: &str, slice: &str) {
    let out = w.sb.systemd_run(&[
        "--scope",
        &format!("--unit={unit}"),
        &format!("--slice={slice}"),
        "--",
        "sh",
        "-c",
        "sleep infinity >/dev/null 2>&1 </dev/null &",
    ]);
    ok_stdout(&format!("systemd-run --scope {unit}"), out).unwrap();
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
