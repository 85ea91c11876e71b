//! What this process did on the bus: calls, calls in flight, pins, and the time spent
//! waiting for systemd; for `--json` output, `DS01_TRACE` and the benchmark's safety checks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// What this process did on the bus, for `--json` output and the benchmark's safety checks.
#[derive(Debug, Default)]
pub struct BusStats {
    pub(super) calls: AtomicUsize,
    pub(super) in_flight: AtomicUsize,
    pub(super) max_in_flight: AtomicUsize,
    pub(super) pinned: AtomicUsize,
    pub(super) max_pinned: AtomicUsize,
    /// Wall time with at least one call outstanding: systemd's (and the bus's) share of a run.
    busy: std::sync::Mutex<BusyClock>,
}

#[derive(Debug, Default)]
pub(super) struct BusyClock {
    pub(super) since: Option<std::time::Instant>,
    pub(super) total: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct BusStatsSnapshot {
    pub calls: usize,
    pub max_in_flight: usize,
    pub max_pinned: usize,
    /// Milliseconds with at least one call outstanding.
    pub waiting_ms: f64,
}

impl BusStats {
    pub fn snapshot(&self) -> BusStatsSnapshot {
        BusStatsSnapshot {
            calls: self.calls.load(Ordering::Relaxed),
            max_in_flight: self.max_in_flight.load(Ordering::Relaxed),
            max_pinned: self.max_pinned.load(Ordering::Relaxed),
            waiting_ms: self.busy().total.as_secs_f64() * 1000.0,
        }
    }

    pub(super) fn busy(&self) -> std::sync::MutexGuard<'_, BusyClock> {
        // The clock is plain data: a panic elsewhere cannot leave it inconsistent.
        self.busy
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One call on the wire: holds a slot of the in-flight budget until dropped.
pub(super) struct CallSlot<'a> {
    pub(super) stats: &'a BusStats,
    pub(super) _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Drop for CallSlot<'_> {
    fn drop(&mut self) {
        if self.stats.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            let mut clock = self.stats.busy();
            if let Some(since) = clock.since.take() {
                clock.total += since.elapsed();
            }
        }
    }
}
