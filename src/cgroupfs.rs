//! What the kernel enforces: a slice's limits read from its cgroup files, on cgroup v2
//! (`cpu.max`, `memory.max`, `memory.high`, `pids.max`) or v1 (`cpu.cfs_quota_us` /
//! `cpu.cfs_period_us`, `memory.limit_in_bytes`, `pids.max`; v1 has no MemoryHigh),
//! which controllers the kernel gives ds01.slice ([`controllers`]), and which processes run
//! below it ([`procs`]).

pub mod containers;
pub mod controllers;
pub mod procs;

use std::path::{Path, PathBuf};

use crate::model::names::{SliceIdentity, SliceName};
use crate::model::property::{BusValue, Property};
use crate::model::usage::CgroupReadings;

pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// v1 reports "no memory limit" as the largest page-aligned signed value, not a keyword.
const V1_UNLIMITED_FLOOR: u64 = 1 << 62;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum KernelValue {
    /// The value in bus terms (CPU in µs per second, bytes, tasks; u64::MAX = no limit).
    Value {
        value: u64,
        file: PathBuf,
    },
    NotEnforcedOnV1,
    Unreadable {
        file: PathBuf,
        reason: String,
    },
}

/// cgroup v2 (the unified hierarchy) or v1 (one hierarchy per controller, legacy or hybrid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    V2,
    V1,
}

/// v2 exactly when the root is the unified hierarchy's, which alone has `cgroup.controllers`.
pub fn layout(root: &Path) -> Layout {
    if root.join("cgroup.controllers").exists() {
        Layout::V2
    } else {
        Layout::V1
    }
}

fn read(file: PathBuf, parse: impl Fn(&str) -> Option<u64>) -> KernelValue {
    match std::fs::read_to_string(&file) {
        Ok(text) => match parse(text.trim()) {
            Some(value) => KernelValue::Value { value, file },
            None => KernelValue::Unreadable {
                file,
                reason: format!("unexpected content {:?}", text.trim()),
            },
        },
        Err(e) => KernelValue::Unreadable {
            file,
            reason: e.to_string(),
        },
    }
}

fn max_or_number(s: &str) -> Option<u64> {
    if s == "max" {
        Some(u64::MAX)
    } else {
        s.parse().ok()
    }
}

/// `cpu.max` ("QUOTA PERIOD" or "max PERIOD") to µs of CPU per second.
pub fn parse_cpu_max(s: &str) -> Option<u64> {
    let mut parts = s.split_whitespace();
    let quota = parts.next()?;
    let period: u64 = parts.next().unwrap_or("100000").parse().ok()?;
    if quota == "max" {
        return Some(u64::MAX);
    }
    per_second(quota.parse().ok()?, period)
}

/// v1 quota and period (µs) to µs per second; a quota of -1 means none.
pub fn parse_cfs(quota: &str, period: &str) -> Option<u64> {
    let quota: i64 = quota.trim().parse().ok()?;
    if quota < 0 {
        return Some(u64::MAX);
    }
    per_second(quota as u64, period.trim().parse().ok()?)
}

fn per_second(quota: u64, period: u64) -> Option<u64> {
    if period == 0 {
        return None;
    }
    Some(((quota as u128) * 1_000_000 / period as u128) as u64)
}

pub fn parse_v1_memory(s: &str) -> Option<u64> {
    let n: u64 = s.parse().ok()?;
    Some(if n >= V1_UNLIMITED_FLOOR { u64::MAX } else { n })
}

/// The kernel's value for `property` on the cgroup `control_group` (as systemd's
/// `ControlGroup` names it) under the cgroup file system at `root`.
pub fn kernel_value(root: &Path, control_group: &str, property: Property) -> Option<KernelValue> {
    let rel = control_group.trim_start_matches('/');
    Some(match layout(root) {
        Layout::V2 => {
            let dir = root.join(rel);
            match property {
                Property::CpuQuotaPerSecUSec => read(dir.join("cpu.max"), parse_cpu_max),
                Property::MemoryMax => read(dir.join("memory.max"), max_or_number),
                Property::MemoryHigh => read(dir.join("memory.high"), max_or_number),
                Property::TasksMax => read(dir.join("pids.max"), max_or_number),
                _ => return None,
            }
        }
        Layout::V1 => match property {
            Property::CpuQuotaPerSecUSec => {
                let dir = v1_dir(root, &["cpu", "cpu,cpuacct"], rel);
                let period =
                    std::fs::read_to_string(dir.join("cpu.cfs_period_us")).unwrap_or_default();
                read(dir.join("cpu.cfs_quota_us"), |q| parse_cfs(q, &period))
            }
            Property::MemoryMax => read(
                v1_dir(root, &["memory"], rel).join("memory.limit_in_bytes"),
                parse_v1_memory,
            ),
            Property::MemoryHigh => KernelValue::NotEnforcedOnV1,
            Property::TasksMax => {
                read(v1_dir(root, &["pids"], rel).join("pids.max"), max_or_number)
            }
            _ => return None,
        },
    })
}

fn v1_dir(root: &Path, controllers: &[&str], rel: &str) -> PathBuf {
    let base = controllers
        .iter()
        .map(|c| root.join(c))
        .find(|p| p.exists())
        .unwrap_or_else(|| root.join(controllers[0]));
    base.join(rel)
}

/// What the kernel reports of the cgroup `control_group` that systemd has no property for:
/// child cgroups, OOM kills, memory events and CPU throttling, and (where the kernel tracks
/// it) pressure. A file that cannot be read leaves its reading unknown.
pub fn readings(root: &Path, control_group: &str) -> CgroupReadings {
    let rel = control_group.trim_start_matches('/');
    let text = |file: PathBuf| std::fs::read_to_string(file).ok();
    match layout(root) {
        Layout::V2 => {
            let dir = root.join(rel);
            let events = text(dir.join("memory.events"));
            let event = |key: &str| events.as_deref().and_then(|t| keyed(t, key));
            let cpu = text(dir.join("cpu.stat"));
            let stat = |key: &str| cpu.as_deref().and_then(|t| keyed(t, key));
            CgroupReadings {
                children: count_children(&dir),
                oom_kills: event("oom_kill"),
                memory_failcnt: None,
                memory_pressure_avg10: text(dir.join("memory.pressure"))
                    .and_then(|t| some_avg10(&t)),
                cpu_pressure_avg10: text(dir.join("cpu.pressure")).and_then(|t| some_avg10(&t)),
                memory_high_events: event("high"),
                memory_max_events: event("max"),
                memory_oom_events: event("oom"),
                cpu_periods: stat("nr_periods"),
                cpu_throttled_periods: stat("nr_throttled"),
                cpu_throttled_usec: stat("throttled_usec"),
            }
        }
        Layout::V1 => {
            let memory = v1_dir(root, &["memory"], rel);
            // On a hybrid host the unified hierarchy tracks every unit and its pressure.
            let unified = root.join("unified").join(rel);
            let tree = [root.join("systemd").join(rel), unified.clone()]
                .into_iter()
                .find(|d| d.is_dir());
            let failcnt = text(memory.join("memory.failcnt")).and_then(|t| t.trim().parse().ok());
            // The unified hierarchy's cpu.stat has no throttling: the v1 cpu controller's has.
            let cpu = text(v1_dir(root, &["cpu", "cpu,cpuacct"], rel).join("cpu.stat"));
            let stat = |key: &str| cpu.as_deref().and_then(|t| keyed(t, key));
            CgroupReadings {
                children: tree.as_deref().and_then(count_children),
                oom_kills: v1_oom_kills(&memory),
                memory_failcnt: failcnt,
                memory_pressure_avg10: text(unified.join("memory.pressure"))
                    .and_then(|t| some_avg10(&t)),
                cpu_pressure_avg10: text(unified.join("cpu.pressure")).and_then(|t| some_avg10(&t)),
                memory_high_events: None,
                memory_max_events: failcnt,
                memory_oom_events: None,
                cpu_periods: stat("nr_periods"),
                cpu_throttled_periods: stat("nr_throttled"),
                cpu_throttled_usec: stat("throttled_time").map(|ns| ns / 1000),
            }
        }
    }
}

/// CPU time used by the cgroup `control_group` so far, in ns, from the kernel: for slices
/// whose CPUUsageNSec systemd does not report (it reports it only with CPUAccounting=yes on
/// the slice itself, which the plan sets on the parents only). `cpu.stat` exists in every
/// cgroup of a unified hierarchy, controller or not (on a hybrid host, the `unified` one);
/// on a pure v1 host only `cpuacct.usage` has it, where the slice has a cpuacct cgroup.
pub fn cpu_usage_nsec(root: &Path, control_group: &str) -> Option<u64> {
    let rel = control_group.trim_start_matches('/');
    let usage_usec = |dir: PathBuf| {
        let text = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
        keyed(&text, "usage_usec")?.checked_mul(1000)
    };
    match layout(root) {
        Layout::V2 => usage_usec(root.join(rel)),
        Layout::V1 => usage_usec(root.join("unified").join(rel)).or_else(|| {
            let dir = v1_dir(root, &["cpuacct", "cpu,cpuacct"], rel);
            std::fs::read_to_string(dir.join("cpuacct.usage"))
                .ok()?
                .trim()
                .parse()
                .ok()
        }),
    }
}

/// OOM kills below a v1 memory cgroup: v1 counts a kill only in the victim's own cgroup (a
/// container's scope, a service) and, unlike v2's `memory.events`, not in its parents, so the
/// slice's own `oom_kill` stays 0 while its containers are killed. The sum over the slice and
/// every cgroup below it that exists now; a kill in a cgroup since removed is gone with it
/// (the kernel keeps no count of it). `None` when the slice's own file cannot be read.
fn v1_oom_kills(slice_dir: &Path) -> Option<u64> {
    // Docker's scopes and their own children are a few levels deep; the bounds keep a
    // pathological tree from making status slow.
    const MAX_DEPTH: usize = 8;
    const MAX_CGROUPS: usize = 4096;
    let read = |dir: &Path| {
        std::fs::read_to_string(dir.join("memory.oom_control"))
            .ok()
            .and_then(|t| keyed(&t, "oom_kill"))
    };
    let mut total = read(slice_dir)?;
    let mut seen = 1;
    let mut level = vec![slice_dir.to_path_buf()];
    for _ in 0..MAX_DEPTH {
        let mut next = Vec::new();
        for dir in &level {
            // A cgroup removed while it is walked is skipped: it counts no more.
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if seen >= MAX_CGROUPS {
                    return Some(total);
                }
                // cgroupfs has no symlinks; not following any keeps the walk in the tree.
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    seen += 1;
                    total = total.saturating_add(read(&entry.path()).unwrap_or(0));
                    next.push(entry.path());
                }
            }
        }
        if next.is_empty() {
            break;
        }
        level = next;
    }
    Some(total)
}

fn count_children(dir: &Path) -> Option<u64> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut n = 0;
    for entry in entries {
        if entry.ok()?.file_type().ok()?.is_dir() {
            n += 1;
        }
    }
    Some(n)
}

/// The value of `key` in a flat keyed file (`memory.events`: "oom_kill 3").
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// `avg10` of the `some` line of a pressure file, in percent.
pub fn some_avg10(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))?
        .parse()
        .ok()
}

/// Whether the kernel may have a cgroup for `slice`, that is, whether systemd has realized it
/// and it may hold tasks. Only a plain "not there" in every hierarchy means no: anything
/// unclear counts as yes, so that the caller takes its careful path.
pub fn may_be_realized(root: &Path, slice: &SliceName) -> bool {
    let rel = control_group(slice);
    [root.join(&rel), root.join("unified").join(&rel), root.join("systemd").join(&rel)]
        .iter()
        .any(|dir| !matches!(std::fs::symlink_metadata(dir), Err(e) if e.kind() == std::io::ErrorKind::NotFound))
}

/// The cgroup systemd gives a slice: one directory per level of the name
/// (`ds01.slice/ds01-g.slice/ds01-g-u.slice`).
fn control_group(slice: &SliceName) -> PathBuf {
    let root = SliceName::root();
    match slice.identity() {
        SliceIdentity::Root => PathBuf::from(root.as_str()),
        SliceIdentity::Group(g) => Path::new(root.as_str()).join(SliceName::group(&g).as_str()),
        SliceIdentity::User(g, _) => Path::new(root.as_str())
            .join(SliceName::group(&g).as_str())
            .join(slice.as_str()),
    }
}

/// Whether the kernel's value matches the bus value systemd holds.
pub fn matches(property: Property, bus: BusValue, kernel: u64) -> bool {
    let BusValue::U64(want) = bus else {
        return true;
    };
    match property {
        // The kernel stores quota per period; allow the rounding of one µs per period.
        Property::CpuQuotaPerSecUSec if want != u64::MAX && kernel != u64::MAX => {
            want.abs_diff(kernel) <= 10
        }
        // The kernel rounds memory limits down to whole pages.
        Property::MemoryMax | Property::MemoryHigh if want != u64::MAX && kernel != u64::MAX => {
            want >= kernel && want - kernel < 65536
        }
        _ => want == kernel,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_oom_kills_are_summed_over_the_cgroups_below_the_slice() {
        let dir = tempfile::tempdir().unwrap();
        let slice = dir.path().join("ds01-g-u.slice");
        let control = |d: &Path, kills: u64| {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(
                d.join("memory.oom_control"),
                format!("oom_kill_disable 0\nunder_oom 0\noom_kill {kills}\n"),
            )
            .unwrap();
        };
        control(&slice, 0);
        control(&slice.join("docker-a.scope"), 2);
        control(&slice.join("docker-b.scope"), 0);
        control(&slice.join("docker-b.scope/init"), 1);
        // A child whose file is gone (being removed) counts nothing.
        std::fs::create_dir_all(slice.join("docker-c.scope")).unwrap();
        assert_eq!(v1_oom_kills(&slice), Some(3));
        assert_eq!(v1_oom_kills(&dir.path().join("none.slice")), None);
    }

    #[test]
    fn parses_v1_and_v2_forms() {
        assert_eq!(parse_cpu_max("50000 100000"), Some(500_000));
        assert_eq!(parse_cpu_max("max 100000"), Some(u64::MAX));
        assert_eq!(parse_cpu_max("9600000 100000"), Some(96_000_000));
        assert_eq!(parse_cfs("50000", "100000"), Some(500_000));
        assert_eq!(parse_cfs("-1", "100000"), Some(u64::MAX));
        assert_eq!(parse_cfs("x", "100000"), None);
        assert_eq!(parse_v1_memory("67108864"), Some(64 << 20));
        assert_eq!(parse_v1_memory("9223372036854771712"), Some(u64::MAX));
        assert_eq!(max_or_number("max"), Some(u64::MAX));
        assert_eq!(max_or_number("20"), Some(20));
        assert!(matches(
            Property::MemoryMax,
            BusValue::U64((64 << 20) + 100),
            64 << 20
        ));
        assert!(!matches(Property::TasksMax, BusValue::U64(20), 21));
    }

    #[test]
    fn parses_events_and_pressure() {
        let events = "low 0\nhigh 12\nmax 3\noom 1\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(keyed(events, "oom_kill"), Some(2));
        assert_eq!(keyed(events, "oom"), Some(1));
        assert_eq!(
            keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 7\n", "oom_kill"),
            Some(7)
        );
        assert_eq!(keyed(events, "absent"), None);
        let psi = "some avg10=12.50 avg60=3.00 avg300=0.10 total=123\nfull avg10=1.00 avg60=0.00 avg300=0.00 total=9\n";
        assert_eq!(some_avg10(psi), Some(12.5));
        assert_eq!(some_avg10("full avg10=1.00"), None);
    }

    #[test]
    fn reads_a_v2_tree() {
        let root = std::env::temp_dir().join(format!("ds01-cg-{}", std::process::id()));
        let dir = root.join("ds01.slice/ds01-s.slice");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(root.join("cgroup.controllers"), "cpu memory pids").unwrap();
        std::fs::write(dir.join("cpu.max"), "50000 100000\n").unwrap();
        std::fs::write(dir.join("memory.high"), "max\n").unwrap();
        let cg = "/ds01.slice/ds01-s.slice";
        assert!(matches!(
            kernel_value(&root, cg, Property::CpuQuotaPerSecUSec),
            Some(KernelValue::Value { value: 500_000, .. })
        ));
        assert!(matches!(
            kernel_value(&root, cg, Property::MemoryHigh),
            Some(KernelValue::Value {
                value: u64::MAX,
                ..
            })
        ));
        assert!(matches!(
            kernel_value(&root, cg, Property::TasksMax),
            Some(KernelValue::Unreadable { .. })
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
