//! Phase timings on stderr when `DS01_TRACE=1`: where a slow apply or hook spends its time
//! (reads, systemd's writes, our own work), without a profiler on the production host.

use std::sync::OnceLock;
use std::time::Instant;

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("DS01_TRACE").is_ok_and(|v| v == "1"))
}

fn process_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Marks the start of the process, which every phase line is also timed from.
pub fn start() {
    process_start();
}

/// Prints `phase` and the time since `since`, returning now for the next phase.
pub fn phase(phase: &str, since: Instant) -> Instant {
    let now = Instant::now();
    if enabled() {
        eprintln!(
            "ds01-slices: trace: {phase}: {:.1} ms (done at {:.1} ms)",
            (now - since).as_secs_f64() * 1000.0,
            (now - process_start()).as_secs_f64() * 1000.0
        );
    }
    now
}

/// Prints how long `what` waited for systemd in total (see `BusStats`).
pub fn report_bus(what: &str, waiting_ms: f64) {
    if enabled() {
        eprintln!("ds01-slices: trace: {what}: waiting for systemd: {waiting_ms:.1} ms");
    }
}
