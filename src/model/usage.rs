//! What a slice uses against what it may use: the readings `status` and the metrics report,
//! the limits they are measured against, and the one rule for how close is too close.

use serde::{Deserialize, Serialize};

use super::live::LiveSlice;
use super::property::{BusValue, Properties, Property};
use super::values::SIZE_SUFFIXES;

/// A resource at or above this share of its limit is shown yellow (DS01's check-limits).
pub const WARN_AT: f64 = 0.70;
/// ... and at or above this share red.
pub const CRITICAL_AT: f64 = 0.85;

/// How close a reading is to its limit (green, yellow, red on a terminal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Critical,
}

impl Level {
    pub fn of(ratio: f64) -> Level {
        if ratio >= CRITICAL_AT {
            Level::Critical
        } else if ratio >= WARN_AT {
            Level::Warn
        } else {
            Level::Ok
        }
    }
}

/// One reading against one limit. `limit: None` means no limit is in force; the ratio is
/// then unknown and the reading can never be "close".
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Meter {
    pub used: Option<f64>,
    pub limit: Option<f64>,
    pub ratio: Option<f64>,
    pub level: Option<Level>,
}

impl Meter {
    pub fn new(used: Option<f64>, limit: Option<f64>) -> Meter {
        let ratio = match (used, limit) {
            (Some(u), Some(l)) if l > 0.0 => Some(u / l),
            // A limit of zero with anything used is as far over as it gets.
            (Some(u), Some(_)) => Some(if u > 0.0 { f64::INFINITY } else { 0.0 }),
            _ => None,
        };
        Meter {
            used,
            limit,
            ratio,
            level: ratio.map(Level::of),
        }
    }
}

/// The limits in force on a slice, in base units: bytes, tasks, CPU cores. `None`: none set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub memory_max_bytes: Option<u64>,
    pub memory_high_bytes: Option<u64>,
    pub tasks_max: Option<u64>,
    pub cpu_quota_cores: Option<f64>,
}

impl Limits {
    /// The limits in `value`'s terms: a property absent or at systemd's "infinity" is none.
    fn from_values(value: impl Fn(Property) -> Option<BusValue>) -> Limits {
        let finite = |p: Property| match value(p) {
            Some(BusValue::U64(n)) if n != u64::MAX => Some(n),
            _ => None,
        };
        Limits {
            memory_max_bytes: finite(Property::MemoryMax),
            memory_high_bytes: finite(Property::MemoryHigh),
            tasks_max: finite(Property::TasksMax),
            cpu_quota_cores: finite(Property::CpuQuotaPerSecUSec).map(|us| us as f64 / 1e6),
        }
    }

    /// The limits systemd holds for `live`.
    pub fn in_force(live: &LiveSlice) -> Limits {
        Limits::from_values(|p| Some(live.value(p)))
    }

    /// The limits `properties` (a plan's) ask for.
    pub fn planned(properties: &Properties) -> Limits {
        Limits::from_values(|p| properties.get(p))
    }
}

/// What the kernel reports of a slice's cgroup that systemd has no property for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CgroupReadings {
    /// Child cgroups: one per container (Docker's `docker-ID.scope`) or other unit.
    pub children: Option<u64>,
    /// OOM kills in the slice since its cgroup was made (v2 `memory.events`, hierarchical);
    /// on v1 the sum of `memory.oom_control` over the slice and the cgroups below it now.
    pub oom_kills: Option<u64>,
    /// Times the v1 memory limit was hit (`memory.failcnt`); v1 only.
    pub memory_failcnt: Option<u64>,
    /// Share of the last 10 s in which some task waited for memory, in percent (v2 PSI).
    pub memory_pressure_avg10: Option<f64>,
    /// ... waited for CPU (v2 PSI).
    pub cpu_pressure_avg10: Option<f64>,
    /// Times the slice's memory went over MemoryHigh and was throttled (v2 `memory.events`
    /// `high`; v1 has no MemoryHigh).
    pub memory_high_events: Option<u64>,
    /// Times the slice's memory reached MemoryMax (v2 `memory.events` `max`; v1
    /// `memory.failcnt`, the charges that failed against the limit).
    pub memory_max_events: Option<u64>,
    /// Times the kernel's OOM killer was invoked for the slice (v2 `memory.events` `oom`; v1
    /// has no such count).
    pub memory_oom_events: Option<u64>,
    /// CPU bandwidth periods in which the slice had tasks to run (`cpu.stat` `nr_periods`).
    pub cpu_periods: Option<u64>,
    /// ... in which it was throttled for its CPUQuota (`nr_throttled`).
    pub cpu_throttled_periods: Option<u64>,
    /// Time its tasks were held back for its CPUQuota, in µs (v2 `throttled_usec`; v1
    /// `throttled_time` in ns, converted).
    pub cpu_throttled_usec: Option<u64>,
}

/// One slice's usage against its limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Bytes in use against MemoryMax.
    pub memory: Meter,
    /// Bytes in use against MemoryHigh (where the kernel starts reclaiming and throttling).
    pub memory_high: Meter,
    pub tasks: Meter,
    /// CPU cores busy on average over the sampled interval, against CPUQuota in cores.
    pub cpu: Meter,
}

impl Resources {
    pub fn new(
        memory_bytes: Option<u64>,
        tasks: Option<u64>,
        cpu_cores: Option<f64>,
        limits: &Limits,
    ) -> Resources {
        let f = |n: Option<u64>| n.map(|n| n as f64);
        Resources {
            memory: Meter::new(f(memory_bytes), f(limits.memory_max_bytes)),
            memory_high: Meter::new(f(memory_bytes), f(limits.memory_high_bytes)),
            tasks: Meter::new(f(tasks), f(limits.tasks_max)),
            cpu: Meter::new(cpu_cores, limits.cpu_quota_cores),
        }
    }

    /// The largest share of any limit in use: how close the slice is to being held back.
    pub fn closeness(&self) -> Option<f64> {
        [self.memory, self.memory_high, self.tasks, self.cpu]
            .iter()
            .filter_map(|m| m.ratio)
            .reduce(f64::max)
    }
}

/// Bytes for people: the largest base-1024 unit under which the value is at least 1, with
/// one decimal below 10 (`1.5G`, `96G`, `812M`, `0B`). Unlike [`MemoryLimit`]'s display it
/// rounds, so it is for readings, never for values written back.
pub fn human_bytes(b: u64) -> String {
    for (suffix, shift) in SIZE_SUFFIXES.iter().rev() {
        let unit = 1u64 << shift;
        if b >= unit {
            let v = b as f64 / unit as f64;
            return if v < 10.0 && !b.is_multiple_of(unit) {
                format!("{v:.1}{suffix}")
            } else {
                format!("{:.0}{suffix}", v)
            };
        }
    }
    format!("{b}B")
}

/// CPU cores busy on average between two readings of a slice's CPU time (ns).
pub fn cpu_cores(before_nsec: u64, after_nsec: u64, elapsed_secs: f64) -> Option<f64> {
    if elapsed_secs <= 0.0 || after_nsec < before_nsec {
        // A counter that went back belongs to a cgroup made again in between.
        return None;
    }
    Some((after_nsec - before_nsec) as f64 / 1e9 / elapsed_secs)
}

/// Orders by closeness to a limit, closest first; slices with no limit (or no reading) last.
pub fn by_closeness(a: Option<f64>, b: Option<f64>) -> std::cmp::Ordering {
    match (a, b) {
        (Some(x), Some(y)) => y.total_cmp(&x),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_check_limits() {
        assert_eq!(Level::of(0.0), Level::Ok);
        assert_eq!(Level::of(0.6999), Level::Ok);
        assert_eq!(Level::of(0.70), Level::Warn);
        assert_eq!(Level::of(0.8499), Level::Warn);
        assert_eq!(Level::of(0.85), Level::Critical);
        assert_eq!(Level::of(1.5), Level::Critical);
    }

    #[test]
    fn no_limit_is_never_close() {
        let m = Meter::new(Some(1e12), None);
        assert_eq!((m.ratio, m.level), (None, None));
        let zero = Meter::new(Some(1.0), Some(0.0));
        assert_eq!(zero.level, Some(Level::Critical));
        let r = Resources::new(
            Some(50),
            Some(9),
            None,
            &Limits {
                memory_max_bytes: Some(100),
                memory_high_bytes: None,
                tasks_max: Some(10),
                cpu_quota_cores: Some(2.0),
            },
        );
        assert_eq!(r.closeness(), Some(0.9));
        assert_eq!(r.tasks.level, Some(Level::Critical));
        assert_eq!(r.cpu.ratio, None);
    }

    #[test]
    fn bytes_for_people() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1023), "1023B");
        assert_eq!(human_bytes(3 << 29), "1.5G");
        assert_eq!(human_bytes(96 << 30), "96G");
        assert_eq!(human_bytes((812 << 20) + 5), "812M");
    }

    #[test]
    fn cpu_rate_from_two_samples() {
        assert_eq!(cpu_cores(0, 2_000_000_000, 1.0), Some(2.0));
        assert_eq!(cpu_cores(5, 4, 1.0), None);
        assert_eq!(cpu_cores(0, 1, 0.0), None);
    }

    #[test]
    fn closest_first_unlimited_last() {
        let mut v = vec![None, Some(0.2), Some(0.9), None, Some(0.5)];
        v.sort_by(|a, b| by_closeness(*a, *b));
        assert_eq!(v, vec![Some(0.9), Some(0.5), Some(0.2), None, None]);
    }
}
