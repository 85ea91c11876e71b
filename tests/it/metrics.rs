//! `metrics` and `serve` against a real systemd: the exposition passes `promtool check
//! metrics`, carries the plan's limits, and a real Prometheus server scrapes `serve` and
//! answers with them. The Prometheus binaries come from `.ci/prometheus` (on the host; the
//! cgroup v2 VM has none, so there these tests return: the readings behind the exposition are
//! `status`'s, which the VM runs).

use std::time::Duration;

use crate::support::prometheus::{self, free_port, get, Prometheus};
use crate::support::vm::in_vm_guest;
use crate::support::{wait_until, World, EXAMPLE};

const ALICE: &str = "ds01-student-alice.slice";
const ALICE_LABELS: &str = r#"slice="ds01-student-alice.slice",group="student",user="alice""#;

/// The sample of `family` for alice in an exposition.
fn alice_sample(text: &str, family: &str) -> Option<String> {
    let prefix = format!("{family}{{{ALICE_LABELS}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(str::to_owned)
}

#[test]
fn the_exposition_passes_promtool_and_carries_the_plan() {
    if !prometheus::available_or_skip() {
        return;
    }
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    w.expect(&["apply"], 0);
    w.sb.start_memory_hog("hog.service", ALICE, 20).unwrap();
    wait_until(Duration::from_secs(60), "the hog holds 20M", || {
        w.show(ALICE, "MemoryCurrent")
            .parse::<u64>()
            .ok()
            .filter(|m| *m >= 20 << 20)
    })
    .unwrap();
    let text = w.expect(&["metrics"], 0).stdout;
    prometheus::promtool_check(&text).unwrap();
    // The example's student limits, in base units.
    assert_eq!(
        alice_sample(&text, "ds01_slice_memory_max_bytes").as_deref(),
        Some("103079215104"),
        "{text}"
    );
    assert_eq!(
        alice_sample(&text, "ds01_slice_memory_high_bytes").as_deref(),
        Some("92341796864")
    );
    assert_eq!(
        alice_sample(&text, "ds01_slice_tasks_max").as_deref(),
        Some("12288")
    );
    assert_eq!(
        alice_sample(&text, "ds01_slice_cpu_quota_cores").as_deref(),
        Some("96")
    );
    assert_eq!(
        alice_sample(&text, "ds01_slice_active").as_deref(),
        Some("1")
    );
    assert!(alice_sample(&text, "ds01_slice_memory_bytes")
        .is_some_and(|v| v.parse::<u64>().unwrap() >= 20 << 20));
    assert!(alice_sample(&text, "ds01_slice_cpu_usage_seconds_total").is_some());
    assert!(
        text.contains(&format!(
            "ds01_slices_drift{{{ALICE_LABELS},property=\"MemoryMax\"}} 0\n"
        )),
        "{text}"
    );
    assert!(
        text.contains("\nds01_slices_last_apply_timestamp_seconds "),
        "{text}"
    );
    // No limit, no sample: the root slice has none.
    assert!(!text.contains("ds01_slice_memory_max_bytes{slice=\"ds01.slice\""));

    // Drift shows as 1; the file for node_exporter is replaced whole.
    w.set_property(ALICE, &["TasksMax=99"]);
    let file = w.state().join("ds01.prom");
    w.expect(&["metrics", "--output", file.to_str().unwrap()], 0);
    let written = std::fs::read_to_string(&file).unwrap();
    prometheus::promtool_check(&written).unwrap();
    assert!(
        written.contains(&format!(
            "ds01_slices_drift{{{ALICE_LABELS},property=\"TasksMax\"}} 1\n"
        )),
        "{written}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(w.state())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_real_prometheus_scrapes_serve() {
    if !prometheus::available_or_skip() {
        return;
    }
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    w.expect(&["apply"], 0);
    w.sb.start_busy_loop("busy.service", ALICE).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let _serve = w.spawn(&["serve", "--listen", &addr, "--cache", "5"], false);
    let first = wait_until(Duration::from_secs(30), "serve answers", || {
        get(&addr, "/metrics").ok().filter(|(s, _)| *s == 200)
    })
    .unwrap()
    .1;
    prometheus::promtool_check(&first).unwrap();
    // Within the cache's 5 s a second scrape gets the same answer, though alice's CPU
    // counter moves all the time: one reading of systemd for both.
    let (_, second) = get(&addr, "/metrics").unwrap();
    assert_eq!(first, second);
    assert_eq!(get(&addr, "/nothing").unwrap().0, 404);

    let prom = Prometheus::start(&addr).unwrap();
    let up = wait_until(
        Duration::from_secs(60),
        "Prometheus reports the target up",
        || prom.value(r#"up{job="ds01"}"#).filter(|v| v == "1"),
    );
    up.unwrap_or_else(|e| panic!("{e}\n{}", prom.log()));
    let max = wait_until(
        Duration::from_secs(30),
        "alice's MemoryMax in Prometheus",
        || prom.value(r#"ds01_slice_memory_max_bytes{user="alice",group="student"}"#),
    )
    .unwrap();
    // The plan's value: the example's student MemoryMax.
    assert_eq!(max, "103079215104");
    let quota = prom
        .value(r#"ds01_slice_cpu_quota_cores{user="alice"}"#)
        .unwrap();
    assert_eq!(quota, "96");
}

#[test]
fn serve_answers_the_next_scraper_while_one_never_reads_its_answer() {
    use std::io::{Read as _, Write as _};
    use std::net::TcpStream;

    if in_vm_guest() {
        // HTTP, not cgroups: the host's run covers it, and 12,000 slices under TCG take minutes.
        return;
    }
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    // An answer far larger than what the kernel buffers between two loopback sockets (up to
    // 4 MiB of send buffer and the receiver's window), so that writing it to a client that
    // does not read blocks.
    let mut members = w.read("groups/student.members");
    for i in 0..12000 {
        members.push_str(&format!("user{i:05}\n"));
    }
    w.write("groups/student.members", &members);
    let addr = format!("127.0.0.1:{}", free_port());
    let _serve = w.spawn(&["serve", "--listen", &addr, "--cache", "600"], false);
    let (status, body) = wait_until(Duration::from_secs(120), "serve answers", || {
        get(&addr, "/metrics").ok().filter(|(s, _)| *s == 200)
    })
    .unwrap();
    assert_eq!(status, 200);
    assert!(
        body.len() > 8 << 20,
        "only {} bytes: not enough to block",
        body.len()
    );

    // Asks, reads nothing, and stays.
    let mut stalled = TcpStream::connect(&addr).unwrap();
    write!(stalled, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    // The next scraper gets its whole answer.
    let t = std::time::Instant::now();
    let (status, again) = get(&addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert_eq!(again, body, "the cached answer");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    // The stalled client's answer was being written all along: it gets it when it reads.
    let mut first = [0u8; 15];
    stalled.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.0 200 OK");
}
