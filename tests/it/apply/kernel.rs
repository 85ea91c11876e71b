//! What the kernel enforces after apply: a busy slice capped, and a memory limit below what is
//! in use refused without --force (and how cgroup v1 takes it with --force).

use std::time::Duration;

use crate::support::{
    verify_block, verify_slice, wait_until, CgroupVersion, Limit, World, EXAMPLE, STUDENT_LIMITS,
};

#[test]
fn a_busy_slice_is_really_capped_by_the_kernel() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    w.write(
        "user-overrides.yaml",
        "alice:\n  aggregate:\n    cpu_quota: \"2%\"\n    memory_max: 64M\n    memory_high: 60M\n    tasks_max: 20\n",
    );
    w.expect(&["apply"], 0);
    let slice = "ds01-student-alice.slice";
    w.sb.start_busy_loop("busy.service", slice).unwrap();
    let cg = w.sb.control_group(slice).unwrap();
    let e = w.sb.enforcement(&cg).unwrap();
    assert_eq!(e.cpu_quota_us, Some(Limit::Value(2_000)), "{e:?}");
    assert_eq!(e.memory_max, Some(Limit::Value(64 << 20)), "{e:?}");
    assert_eq!(e.pids_max, Some(Limit::Value(20)), "{e:?}");
    // 2 ms of CPU per 100 ms period: a loop that runs at all is throttled, even on a loaded
    // machine (at 50% a loaded TCG guest went whole periods without giving it half a CPU).
    wait_until(Duration::from_secs(120), "throttling", || {
        w.sb.enforcement(&cg).ok()?.nr_throttled.filter(|n| *n > 0)
    })
    .unwrap();
    // verify reads the same from the kernel and says so.
    let report = w.json(&["verify", "--user", "alice", "--format", "json"], 0);
    let alice = verify_slice(&report, slice);
    assert_eq!(alice["active"], true);
    let kernel: Vec<&str> = alice["properties"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kernel"]["status"].as_str().unwrap())
        .collect();
    // MemoryHigh has no v1 counterpart; on v2 the kernel holds it like the rest.
    let memory_high = match e.version {
        CgroupVersion::V1 => "not enforced on cgroup v1",
        CgroupVersion::V2 => {
            assert_eq!(e.memory_high, Some(Limit::Value(60 << 20)), "{e:?}");
            "ok"
        }
    };
    assert_eq!(kernel, ["ok", "ok", memory_high, "ok"], "{report}");
}

/// `211157K`, `96G`, `1234` (as MemoryLimit prints them) in bytes.
fn parse_memory(text: &str) -> u64 {
    let (digits, shift) = match text.chars().last() {
        Some('K') => (&text[..text.len() - 1], 10),
        Some('M') => (&text[..text.len() - 1], 20),
        Some('G') => (&text[..text.len() - 1], 30),
        Some('T') => (&text[..text.len() - 1], 40),
        _ => (text, 0),
    };
    digits
        .parse::<u64>()
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
        << shift
}

#[test]
fn lowering_memory_below_use_is_refused_without_force() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    w.expect(&["apply"], 0);
    let alice = "ds01-student-alice.slice";
    w.sb.start_memory_hog("hog.service", alice, 200).unwrap();
    let used = || w.show(alice, "MemoryCurrent").parse::<u64>().ok();
    // Seconds here; up to a minute in the VM (TCG), on a loaded machine.
    wait_until(Duration::from_secs(60), "the hog holds 200M", || {
        used().filter(|u| *u >= 200 << 20)
    })
    .unwrap();

    w.write(
        "user-overrides.yaml",
        "alice:\n  aggregate: {memory_max: 100M, memory_high: 90M}\njohn.doe:\n  aggregate: {tasks_max: 500}\n",
    );
    let out = w.run(&["apply"]);
    assert_eq!(out.code, Some(1), "{out}");
    let refusal = out
        .stderr
        .lines()
        .find(|l| l.contains(&format!("refused {alice}")))
        .unwrap_or_else(|| panic!("no refusal for {alice}\n{out}"));
    assert!(
        refusal.contains("MemoryMax 100M is below the "),
        "{refusal}"
    );
    assert!(refusal.contains("--force"), "{refusal}");
    let usage = refusal
        .split("is below the ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .map(parse_memory)
        .unwrap();
    assert!(usage >= 200 << 20, "{refusal}");
    assert!(!out.stdout.contains(alice), "{out}");
    assert!(
        out.stdout
            .contains("~ ds01-student-john_doe.slice\n    ~ TasksMax 12288 -> 500\n"),
        "{out}"
    );
    // The others went through; alice's slice and the job in it are untouched.
    assert_eq!(w.show("ds01-student-john_doe.slice", "TasksMax"), "500");
    w.assert_user_as_planned("maria.garcia");
    assert_eq!(w.limits(alice), STUDENT_LIMITS);
    assert_eq!(w.show("hog.service", "ActiveState"), "active");
    assert!(
        used().is_some_and(|u| u >= 200 << 20),
        "the hog lost its memory"
    );
    w.expect(&["verify", "--user", "alice"], 3);

    let out = w.expect(&["apply", "--force"], 0).stdout;
    assert!(
        out.contains(&format!("~ {alice}\n    ~ MemoryMax 96G -> 100M\n")),
        "{out}"
    );
    assert_eq!(w.show(alice, "MemoryMax"), (100u64 << 20).to_string());
    assert_eq!(w.show(alice, "MemoryHigh"), (90u64 << 20).to_string());
    let cg = w.sb.control_group(alice).unwrap();
    let kernel_max = || w.sb.enforcement(&cg).unwrap().memory_max;
    if w.sb.enforcement(&cg).unwrap().version == CgroupVersion::V1 {
        // cgroup v1 refuses (EBUSY) a memory.limit_in_bytes below what is in use and kills
        // nothing: systemd holds the new limit, the kernel keeps the old one, verify says so.
        assert_eq!(kernel_max(), Some(Limit::Value(96 << 30)));
        assert_eq!(w.show("hog.service", "ActiveState"), "active");
        let out = w.run(&["verify", "--user", "alice"]);
        assert_eq!(out.code, Some(3), "{out}");
        assert!(
            verify_block(&out.stdout, alice)
                .contains("    kernel   MemoryMax: systemd holds 100M, the kernel does not"),
            "{out}"
        );
        // Once the memory is freed, systemd's next realization puts the limit in force.
        let out = w.sb.systemctl(&["stop", "hog.service"]);
        assert!(out.status.success(), "{out:?}");
    }
    wait_until(Duration::from_secs(10), "the kernel holds 100M", || {
        (kernel_max() == Some(Limit::Value(100 << 20))).then_some(())
    })
    .unwrap();
    w.expect(&["verify", "--user", "alice"], 0);
}
