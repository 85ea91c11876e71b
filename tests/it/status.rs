//! `status` and the hook's admission against a real systemd: a user with a memory hog, a fork
//! loop and a busy loop in their slice, read back against the kernel's cgroup files and the
//! plan; a container whose memory would push the user over MemoryMax refused with the box.

use std::fs;
use std::sync::mpsc;
use std::time::Duration;

use ds01_slices::ops::status::StatusReport;
use serde_json::Value;

use crate::support::{ok_stdout, wait_until, World, EXAMPLE};

const ALICE: &str = "ds01-student-alice.slice";
const OVERRIDES: &str = "alice:\n  aggregate:\n    cpu_quota: \"50%\"\n    memory_max: 256M\n    memory_high: 240M\n    tasks_max: 64\n";

/// A world where alice has small limits, applied, with `forks` sleeping tasks in her slice.
fn alice_busy(forks: u32) -> Option<World> {
    let w = World::new(EXAMPLE)?;
    w.write("user-overrides.yaml", OVERRIDES);
    w.expect(&["apply"], 0);
    let script = format!("for i in $(seq {forks}); do sleep infinity & done; wait");
    let out = w.sb.systemd_run(&[
        "--unit=forks.service",
        &format!("--slice={ALICE}"),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    ok_stdout("systemd-run forks.service", out).unwrap();
    Some(w)
}

fn kernel_number(w: &World, controller: &str, cg: &str, files: &[&str]) -> u64 {
    let dir = w.sb.cgroup_dir(controller, cg);
    files
        .iter()
        .find_map(|f| fs::read_to_string(dir.join(f)).ok())
        .unwrap_or_else(|| panic!("none of {files:?} in {}", dir.display()))
        .trim()
        .parse()
        .unwrap()
}

fn within_10_percent(what: &str, ours: f64, kernel: f64) {
    assert!(
        (ours - kernel).abs() <= 0.10 * kernel.max(1.0),
        "{what}: status says {ours}, the kernel {kernel}"
    );
}

#[test]
fn status_reads_usage_against_the_plans_limits() {
    let Some(w) = alice_busy(30) else {
        return;
    };
    w.sb.start_memory_hog("hog.service", ALICE, 120).unwrap();
    w.sb.start_busy_loop("busy.service", ALICE).unwrap();
    let cg = w.sb.control_group(ALICE).unwrap();
    let memory_now = || {
        kernel_number(
            &w,
            "memory",
            &cg,
            &["memory.current", "memory.usage_in_bytes"],
        )
    };
    // Seconds here; up to a minute in the VM (TCG), on a loaded machine.
    wait_until(
        Duration::from_secs(60),
        "the hog holds 120M and the forks run",
        || {
            (memory_now() >= 120 << 20 && kernel_number(&w, "pids", &cg, &["pids.current"]) >= 32)
                .then_some(())
        },
    )
    .unwrap();

    let out = w.expect(&["status", "alice", "--json", "--interval", "1"], 0);
    let kernel_memory = memory_now() as f64;
    let kernel_tasks = kernel_number(&w, "pids", &cg, &["pids.current"]) as f64;
    // --json round-trips: the report type reads its own output back unchanged.
    let value: Value = serde_json::from_str(&out.stdout).unwrap();
    let report: StatusReport = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(serde_json::to_value(&report).unwrap(), value);

    let alice = report
        .slices
        .iter()
        .find(|s| s.slice.as_str() == ALICE)
        .unwrap_or_else(|| panic!("no {ALICE} in {value:#}"));
    // One user and their parents.
    let names: Vec<&str> = report.slices.iter().map(|s| s.slice.as_str()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.contains(&"ds01.slice") && names.contains(&"ds01-student.slice"));
    assert!(alice.active);
    assert_eq!(alice.user.as_deref(), Some("alice"));
    assert_eq!(alice.group.as_deref(), Some("student"));
    within_10_percent("memory", alice.memory_bytes.unwrap() as f64, kernel_memory);
    within_10_percent("tasks", alice.tasks.unwrap() as f64, kernel_tasks);
    assert_eq!(
        alice.cgroup.children,
        Some(3),
        "forks, hog, busy: {value:#}"
    );
    // The limits are the plan's, in force and planned.
    assert_eq!(alice.limits.memory_max_bytes, Some(256 << 20));
    assert_eq!(alice.limits.memory_high_bytes, Some(240 << 20));
    assert_eq!(alice.limits.tasks_max, Some(64));
    assert_eq!(alice.limits.cpu_quota_cores, Some(0.5));
    assert_eq!(alice.planned, Some(alice.limits));
    assert!(alice.drift.values().all(|d| !d), "{:?}", alice.drift);
    // The busy loop is held at the quota: half a core at most (a little over for rounding).
    let cpu = alice.resources.cpu.used.expect("a CPU rate");
    assert!(cpu > 0.05 && cpu <= 0.6, "cpu {cpu}");
    assert!(report.cpu_interval_secs.is_some_and(|s| s >= 1.0));
    let tasks_ratio = alice.resources.tasks.ratio.unwrap();
    within_10_percent("tasks ratio", tasks_ratio * 64.0, kernel_tasks);
    let _ = std::io::Write::write_fmt(
        &mut std::io::stderr(),
        format_args!(
            "status: memory {} (kernel {kernel_memory}), tasks {} (kernel {kernel_tasks}), cpu {cpu:.2} cores\n",
            alice.memory_bytes.unwrap(),
            alice.tasks.unwrap()
        ),
    );
    // v2 reports pressure and OOM kills from memory.events; v1 its oom_control.
    assert!(alice.cgroup.oom_kills.is_some(), "{value:#}");
    if w.sb.unified() {
        assert!(alice.cgroup.memory_pressure_avg10.is_some(), "{value:#}");
        assert!(alice.cgroup.cpu_pressure_avg10.is_some(), "{value:#}");
    }
    // Alice is the closest to a limit (tasks at about half), so she comes first.
    assert_eq!(report.slices[0].slice.as_str(), ALICE);

    // The text: one block per slice, a line per resource, the summary.
    let text = w.expect(&["status", "alice", "--interval", "0"], 0).stdout;
    let block: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with(ALICE))
        .take(4)
        .collect();
    assert!(
        block[0].contains("(student, alice): active") && block[0].contains("3 containers"),
        "{text}"
    );
    assert!(
        block[1].trim_start().starts_with("memory")
            && block[1].contains("/ 256M (MemoryHigh 240M)"),
        "{text}"
    );
    assert!(
        block[2].trim_start().starts_with("tasks") && block[2].contains("/ 64"),
        "{text}"
    );
    assert!(
        block[3].trim_start().starts_with("cpu") && block[3].contains("/ 0.50 cores"),
        "{text}"
    );
    assert!(
        text.trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("3 slices, 3 active"),
        "{text}"
    );
}

#[test]
fn the_hook_refuses_a_container_that_would_exceed_memory_max() {
    let Some(w) = alice_busy(50) else {
        return;
    };
    w.sb.start_memory_hog("hog.service", ALICE, 150).unwrap();
    let show = |p: &str| w.show(ALICE, p).parse::<u64>().ok();
    wait_until(
        Duration::from_secs(60),
        "the hog holds 150M, 54 tasks",
        || (show("MemoryCurrent")? >= 150 << 20 && show("TasksCurrent")? >= 54).then_some(()),
    )
    .unwrap();

    // 150M in use + 200M asked > 256M: refused, nothing on stdout, the box on stderr.
    let refused = w.expect(&["hook", "pre-create", "alice", "--memory", "200m"], 1);
    assert_eq!(refused.stdout, "", "{refused}");
    for part in [
        "Container refused",
        "in use now",
        "requested",
        "200M",
        "limit",
        "256M",
        "docker stop",
    ] {
        assert!(
            refused.stderr.contains(part),
            "{part:?} missing:\n{}",
            refused.stderr
        );
    }
    // 150M + 50M fits: admitted, the slice on stdout; the tasks (54 of 64, 84%, plus the
    // container's 10) warn.
    let admitted = w.expect(
        &[
            "hook",
            "pre-create",
            "alice",
            "--memory",
            "50m",
            "--pids",
            "10",
        ],
        0,
    );
    assert_eq!(admitted.stdout, format!("{ALICE}\n"));
    assert!(
        admitted.stderr.contains("warning:")
            && admitted.stderr.contains("of the 64 TasksMax allows"),
        "{admitted}"
    );
    // Without a request nothing is added: 150M fits, and 54 of 64 is below 90%.
    let plain = w.expect(&["hook", "pre-create", "alice"], 0);
    assert_eq!(plain.stdout, format!("{ALICE}\n"));
    assert_eq!(plain.stderr, "", "{plain}");
    // An admin (no aggregate) is never refused, whatever the request.
    let admin = w.read("groups/admin.members");
    let name = admin
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .unwrap()
        .trim();
    w.expect(&["hook", "pre-create", name, "--memory", "100000g"], 0);
}

#[test]
fn status_watch_shows_again_with_cpu_rates_over_the_last_round() {
    let Some(w) = alice_busy(3) else {
        return;
    };
    w.sb.start_busy_loop("busy.service", ALICE).unwrap();
    // No reading of its own in the first round: every rate comes from the round before.
    let mut child = w.spawn(
        &[
            "status",
            "alice",
            "--json",
            "--watch",
            "1",
            "--interval",
            "0",
        ],
        true,
    );
    let stdout = child.0.stdout.take().unwrap();
    // One JSON document per round, read as they come; the reader ends when the child is killed.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for doc in serde_json::Deserializer::from_reader(stdout).into_iter::<StatusReport>() {
            if tx.send(doc.map_err(|e| e.to_string())).is_err() {
                break;
            }
        }
    });
    // Seconds here; the VM (TCG) is several times slower.
    let round = |n: usize| {
        rx.recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("round {n} of status --watch: {e}"))
            .unwrap_or_else(|e| panic!("round {n} of status --watch is not a report: {e}"))
    };
    let first = round(1);
    assert_eq!(first.cpu_interval_secs, None, "{first:?}");
    for n in 2..=3 {
        let report = round(n);
        let secs = report
            .cpu_interval_secs
            .expect("a rate from the round before");
        // The rounds start 1 s apart; each takes its reading when systemd answers, which
        // moves by the time a round's reads take (0.87 s apart seen under TCG).
        assert!(
            (0.5..30.0).contains(&secs),
            "round {n}: CPU over {secs} s, the rounds start 1 s apart"
        );
        let alice = report
            .slices
            .iter()
            .find(|s| s.slice.as_str() == ALICE)
            .unwrap_or_else(|| panic!("round {n}: no {ALICE}"));
        let cpu = alice.resources.cpu.used.expect("a CPU rate");
        // The busy loop, held at alice's 50% quota.
        assert!(cpu > 0.05 && cpu <= 0.6, "round {n}: cpu {cpu}");
    }
    drop(child);
}

#[test]
fn status_and_metrics_count_the_oom_kills_below_the_slice() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    w.write(
        "user-overrides.yaml",
        "alice:\n  aggregate:\n    memory_max: 128M\n    memory_high: 128M\n    tasks_max: 64\n",
    );
    w.expect(&["apply"], 0);
    // dd's 200M buffer cannot fit in alice's 128M: the kernel kills dd; the service (its shell
    // and sleep) lives on, so its cgroup stays.
    w.sb.start_memory_hog("hog.service", ALICE, 200).unwrap();
    let status = || -> StatusReport {
        let out = w.expect(&["status", "alice", "--json", "--interval", "0"], 0);
        serde_json::from_str(&out.stdout).unwrap()
    };
    let alice = |r: &StatusReport| {
        r.slices
            .iter()
            .find(|s| s.slice.as_str() == ALICE)
            .cloned()
            .unwrap()
    };
    let kills = wait_until(
        Duration::from_secs(60),
        "an OOM kill in alice's slice",
        || alice(&status()).cgroup.oom_kills.filter(|k| *k >= 1),
    );
    let report = status();
    let kills = kills.unwrap_or_else(|e| panic!("{e}: {:#?}", alice(&report)));
    assert_eq!(kills, 1, "{:#?}", alice(&report));
    let text = w.expect(&["status", "alice", "--interval", "0"], 0).stdout;
    assert!(text.contains(", 1 OOM kill"), "{text}");
    let metrics = w.expect(&["metrics"], 0).stdout;
    let sample = format!(
        "ds01_slice_oom_kills_total{{slice=\"{ALICE}\",group=\"student\",user=\"alice\"}} 1"
    );
    assert!(
        metrics.lines().any(|l| l == sample),
        "{sample} not in\n{metrics}"
    );
}
