//! Phase timings when `DS01_TRACE=1`: where a slow apply or hook spends its time (reads,
//! systemd's writes, our own work), without a profiler on the production host. Lines are
//! kept here and printed by the command line when the process ends.

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Whether `DS01_TRACE=1`.
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("DS01_TRACE").is_ok_and(|v| v == "1"))
}

fn process_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn lines() -> &'static Mutex<Vec<String>> {
    static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());
    &LINES
}

fn push(line: String) {
    // A poisoned list only means a panic elsewhere; its lines are still whole.
    lines()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(line);
}

/// Marks the start of the process, which every phase line is also timed from.
pub fn start() {
    process_start();
}

/// Notes `phase` and the time since `since`, returning now for the next phase.
pub fn phase(phase: &str, since: Instant) -> Instant {
    let now = Instant::now();
    if enabled() {
        push(format!(
            "ds01-slices: trace: {phase}: {:.1} ms (done at {:.1} ms)",
            (now - since).as_secs_f64() * 1000.0,
            (now - process_start()).as_secs_f64() * 1000.0
        ));
    }
    now
}

/// Notes how long `what` waited for systemd in total (see `BusStats`).
pub fn report_bus(what: &str, waiting_ms: f64) {
    if enabled() {
        push(format!(
            "ds01-slices: trace: {what}: waiting for systemd: {waiting_ms:.1} ms"
        ));
    }
}

/// The lines noted so far, to print.
pub fn take() -> Vec<String> {
    std::mem::take(
        &mut *lines()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    )
}
