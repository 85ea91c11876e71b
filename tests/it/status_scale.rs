//! `status` on a server with hundreds of users, against a real systemd: the active slices (and
//! those with something to report) come first, one block each, and the hundreds of idle slices
//! are summed up in one line unless `--all` is given; `--json` always has every slice.

use std::time::Duration;

use serde_json::Value;

use crate::support::{user_names, wait_until, World, EXAMPLE};

#[test]
fn status_of_hundreds_of_users_lists_the_active_first_and_sums_up_the_idle() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    w.add_members("student", &user_names(300));
    w.expect(&["apply"], 0);
    // Two users at work, one idle user whose limit was changed behind apply's back.
    w.sb.start_memory_hog("hog.service", "ds01-student-alice.slice", 20)
        .unwrap();
    w.sb.start_busy_loop("busy.service", "ds01-student-user00001.slice")
        .unwrap();
    w.set_property("ds01-student-user00002.slice", &["TasksMax=99"]);
    wait_until(Duration::from_secs(30), "both slices active", || {
        let active = |s: &str| w.show(s, "ActiveState") == "active";
        (active("ds01-student-alice.slice") && active("ds01-student-user00001.slice")).then_some(())
    })
    .unwrap();

    let report = w.json(&["status", "--json", "--interval", "0"], 0);
    let slices = report["slices"].as_array().unwrap();
    let total = slices.len();
    assert!(total > 300, "{total} slices");
    // Active first, then the rest.
    let first_inactive = slices.iter().position(|s| s["active"] == false).unwrap();
    assert!(
        slices[first_inactive..]
            .iter()
            .all(|s| s["active"] == false),
        "an active slice after an inactive one"
    );
    let active: Vec<&str> = slices[..first_inactive]
        .iter()
        .map(|s| s["slice"].as_str().unwrap())
        .collect();
    for s in [
        "ds01.slice",
        "ds01-student.slice",
        "ds01-student-alice.slice",
        "ds01-student-user00001.slice",
    ] {
        assert!(active.contains(&s), "{s} not among the active {active:?}");
    }

    let text = w.expect(&["status", "--interval", "0"], 0).stdout;
    let lines: Vec<&str> = text.lines().collect();
    let blocks: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("ds01"))
        .copied()
        .collect();
    // One block per active slice, the drifted idle one, nothing more.
    assert_eq!(blocks.len(), active.len() + 1, "{text}");
    assert!(
        blocks[..active.len()]
            .iter()
            .all(|b| b.contains(": active")),
        "{text}"
    );
    let drifted = blocks.last().unwrap();
    assert!(
        drifted.starts_with("ds01-student-user00002.slice") && drifted.contains("drift: TasksMax"),
        "{text}"
    );
    let quiet = total - active.len() - 1;
    let summary = lines
        .iter()
        .find(|l| l.contains("inactive slices with their limits as configured"))
        .unwrap_or_else(|| panic!("no summary line:\n{text}"));
    assert!(
        summary.starts_with(&format!("{quiet} inactive slices"))
            && summary.contains("'ds01-slices status --all' lists them"),
        "{quiet} expected: {summary}"
    );
    assert!(lines.len() < 40, "{} lines:\n{text}", lines.len());

    // --all: every slice, an idle one on one line.
    let all = w.expect(&["status", "--all", "--interval", "0"], 0).stdout;
    let all_blocks = all.lines().filter(|l| l.starts_with("ds01")).count();
    assert_eq!(all_blocks, total, "{all}");
    assert!(!all.contains("inactive slices with their limits"), "{all}");
    let v: Value = serde_json::from_str(
        &w.expect(&["status", "--all", "--json", "--interval", "0"], 0)
            .stdout,
    )
    .unwrap();
    assert_eq!(v["slices"].as_array().unwrap().len(), total);
    eprintln!(
        "status: {total} slices, {} active: {} lines (--all: {} lines)",
        active.len(),
        lines.len(),
        all.lines().count()
    );
}
