//! The counters an alert needs, against a real systemd and kernel (the v1 sandbox here, a v2
//! one in the VM): a busy loop held at its CPUQuota counts throttled periods and time (alice);
//! memory over MemoryHigh counts `high` events (carol) (v2 only: v1 has no MemoryHigh), memory over MemoryMax
//! counts `max` events (v1: memory.failcnt), `oom` events (v2 only) and an OOM kill (bob). Read from
//! `metrics`, as Prometheus would, and from `status --json`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{wait_until, World, EXAMPLE};

const ALICE: &str = "ds01-student-alice.slice";
const CAROL: &str = "ds01-student-carol.slice";
const BOB: &str = "ds01-student-bob.slice";

/// Every sample of the exposition: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn sample(all: &BTreeMap<String, f64>, family: &str, slice: &str, user: &str) -> Option<f64> {
    all.get(&format!(
        "{family}{{slice=\"{slice}\",group=\"student\",user=\"{user}\"}}"
    ))
    .copied()
}

#[test]
fn cpu_throttling_and_memory_events_are_counted_per_slice() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    w.write(
        "user-overrides.yaml",
        "alice:\n  aggregate:\n    cpu_quota: \"1%\"\n    memory_max: 96M\n    memory_high: 96M\n    tasks_max: 64\n\
         carol:\n  aggregate:\n    memory_max: 96M\n    memory_high: 48M\n    tasks_max: 64\n\
         bob:\n  aggregate:\n    memory_max: 64M\n    memory_high: 64M\n    tasks_max: 64\n",
    );
    w.add_members("student", &["bob", "carol"]);
    w.expect(&["apply"], 0);
    w.sb.start_busy_loop("busy.service", ALICE).unwrap();
    // Over MemoryHigh, under MemoryMax: throttled and reclaimed (v2), never killed.
    // (Not in alice's slice: at her 1% of a CPU, filling 64M takes minutes under TCG.)
    w.sb.start_memory_hog("high.service", CAROL, 64).unwrap();
    // Over MemoryMax: dd is OOM-killed; its shell and sleep live on.
    w.sb.start_memory_hog("oom.service", BOB, 100).unwrap();
    let v2 = w.sb.unified();

    let metrics = || samples(&w.expect(&["metrics"], 0).stdout);
    let counted = wait_until(
        Duration::from_secs(60),
        "throttling, a MemoryMax hit and an OOM kill counted",
        || {
            let m = metrics();
            let positive = |family: &str, slice: &str, user: &str| {
                sample(&m, family, slice, user).is_some_and(|v| v > 0.0)
            };
            let all = positive("ds01_slice_cpu_throttled_periods_total", ALICE, "alice")
                && positive("ds01_slice_cpu_throttled_seconds_total", ALICE, "alice")
                && positive("ds01_slice_memory_max_events_total", BOB, "bob")
                && positive("ds01_slice_oom_kills_total", BOB, "bob")
                && (!v2
                    || (positive("ds01_slice_memory_high_events_total", CAROL, "carol")
                        && positive("ds01_slice_memory_oom_events_total", BOB, "bob")));
            all.then_some(m)
        },
    );
    let m = counted.unwrap_or_else(|e| panic!("{e}:\n{:#?}", metrics()));
    let get = |family: &str, slice: &str, user: &str| sample(&m, family, slice, user);
    let periods = get("ds01_slice_cpu_periods_total", ALICE, "alice").unwrap();
    let throttled = get("ds01_slice_cpu_throttled_periods_total", ALICE, "alice").unwrap();
    let seconds = get("ds01_slice_cpu_throttled_seconds_total", ALICE, "alice").unwrap();
    // A busy loop at 1% of one CPU is held back in most of its periods, however loaded the machine.
    assert!(
        throttled <= periods && throttled >= 0.5 * periods,
        "{throttled} of {periods} periods throttled"
    );
    assert!(seconds > 0.0 && seconds < 3600.0, "{seconds} s throttled");
    eprintln!(
        "counters: cpu {throttled} of {periods} periods throttled ({seconds:.2} s); bob: max events {:?}, oom {:?}, oom kills {:?}; carol: high events {:?}",
        get("ds01_slice_memory_max_events_total", BOB, "bob"),
        get("ds01_slice_memory_oom_events_total", BOB, "bob"),
        get("ds01_slice_oom_kills_total", BOB, "bob"),
        get("ds01_slice_memory_high_events_total", CAROL, "carol"),
    );
    let text = w.expect(&["metrics"], 0).stdout;
    if !v2 {
        // No MemoryHigh and no `oom` count on v1: the family is declared, with no sample.
        for family in [
            "ds01_slice_memory_high_events_total",
            "ds01_slice_memory_oom_events_total",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} counter\n")),
                "{text}"
            );
            assert!(
                !text.lines().any(|l| l.starts_with(&format!("{family}{{"))),
                "{family} has a sample on cgroup v1:\n{text}"
            );
        }
    }
    for family in [
        "ds01_slice_cpu_periods_total",
        "ds01_slice_cpu_throttled_periods_total",
        "ds01_slice_cpu_throttled_seconds_total",
        "ds01_slice_memory_max_events_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} counter\n")),
            "{text}"
        );
    }

    // status --json carries the same readings.
    let report = w.json(&["status", "--json", "--interval", "0"], 0);
    let slice = |name: &str| {
        report["slices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["slice"] == name)
            .unwrap_or_else(|| panic!("no {name} in {report:#}"))
            .clone()
    };
    let alice = slice(ALICE);
    assert!(
        alice["cgroup"]["cpu_throttled_periods"].as_u64().unwrap() >= throttled as u64,
        "{alice:#}"
    );
    let bob = slice(BOB);
    assert!(
        bob["cgroup"]["memory_max_events"].as_u64().unwrap() > 0,
        "{bob:#}"
    );
    assert_eq!(bob["cgroup"]["memory_oom_events"].is_u64(), v2, "{bob:#}");
    let carol = slice(CAROL);
    assert_eq!(
        carol["cgroup"]["memory_high_events"].is_u64(),
        v2,
        "{carol:#}"
    );
}
