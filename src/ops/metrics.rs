//! The Prometheus text exposition of [`super::status`]: one family per reading and limit,
//! labelled `{slice, group, user}`, in base units (bytes, seconds, cores, ratios). A limit
//! that is not set has no sample at all: absence is Prometheus's own "no value", and a
//! query such as `ds01_slice_memory_bytes / ds01_slice_memory_max_bytes` then simply has no
//! result for an unlimited slice instead of dividing by a made-up number.

use std::fmt::Write as _;

use std::path::Path;

use super::status::{SliceStatus, StatusReport};
use crate::config::{Config, OVERRIDES_FILE};
use crate::model::containers::{ContainerReport, OutsideContainer};
use crate::state::ownership::Ownership;

/// The exposition format's content type (version 0.0.4), for `serve`.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&SliceStatus) -> Option<f64>,
}

const FAMILIES: &[Family] = &[
    Family {
        name: "ds01_slice_active",
        kind: "gauge",
        help: "1 while the slice is started (has a cgroup), else 0.",
        value: |s| Some(if s.active { 1.0 } else { 0.0 }),
    },
    Family {
        name: "ds01_slice_containers",
        kind: "gauge",
        help: "Child cgroups: of a user slice its containers (and any other units in it), of the others the slices below.",
        value: |s| s.cgroup.children.map(|n| n as f64),
    },
    Family {
        name: "ds01_slice_memory_bytes",
        kind: "gauge",
        help: "Memory in use by the slice (systemd's MemoryCurrent).",
        value: |s| s.memory_bytes.map(|n| n as f64),
    },
    Family {
        name: "ds01_slice_memory_max_bytes",
        kind: "gauge",
        help: "MemoryMax in force; no sample when the slice has no memory limit.",
        value: |s| s.limits.memory_max_bytes.map(|n| n as f64),
    },
    Family {
        name: "ds01_slice_memory_high_bytes",
        kind: "gauge",
        help: "MemoryHigh in force; no sample when none is set.",
        value: |s| s.limits.memory_high_bytes.map(|n| n as f64),
    },
    Family {
        name: "ds01_slice_tasks",
        kind: "gauge",
        help: "Tasks (processes and threads) in the slice (systemd's TasksCurrent).",
        value: |s| s.tasks.map(|n| n as f64),
    },
    Family {
        name: "ds01_slice_tasks_max",
        kind: "gauge",
        help: "TasksMax in force; no sample when the slice has no task limit.",
        value: |s| s.limits.tasks_max.map(|n| n as f64),
    },
    Family {
        name: "ds01_slice_cpu_usage_seconds_total",
        kind: "counter",
        help: "CPU time used by the slice since its cgroup was made (systemd's CPUUsageNSec).",
        value: |s| s.cpu_usage_nsec.map(|n| n as f64 / 1e9),
    },
    Family {
        name: "ds01_slice_cpu_quota_cores",
        kind: "gauge",
        help: "CPUQuota in force, in cores (100% = 1); no sample when the slice has no quota.",
        value: |s| s.limits.cpu_quota_cores,
    },
    Family {
        name: "ds01_slice_oom_kills_total",
        kind: "counter",
        help: "Processes OOM-killed in the slice since its cgroup was made (cgroup v2 memory.events oom_kill). On cgroup v1: the sum of memory.oom_control's oom_kill over the slice and the cgroups below it that exist now, so a kill in a container since removed drops out.",
        value: |s| s.cgroup.oom_kills.map(|n| n as f64),
    },
    Family {
        name: "ds01_slice_memory_high_events_total",
        kind: "counter",
        help: "Times the slice's memory went over MemoryHigh and the kernel throttled and reclaimed it (cgroup v2 memory.events high). No sample on cgroup v1, which has no MemoryHigh.",
        value: |s| s.cgroup.memory_high_events.map(|n| n as f64),
    },
    Family {
        name: "ds01_slice_memory_max_events_total",
        kind: "counter",
        help: "Times the slice's memory reached MemoryMax (cgroup v2 memory.events max). On cgroup v1: memory.failcnt, the charges that failed against the limit.",
        value: |s| s.cgroup.memory_max_events.map(|n| n as f64),
    },
    Family {
        name: "ds01_slice_memory_oom_events_total",
        kind: "counter",
        help: "Times the slice was at MemoryMax and the OOM killer was invoked (cgroup v2 memory.events oom). No sample on cgroup v1, which does not count it (ds01_slice_oom_kills_total counts the kills).",
        value: |s| s.cgroup.memory_oom_events.map(|n| n as f64),
    },
    Family {
        name: "ds01_slice_cpu_periods_total",
        kind: "counter",
        help: "CPU bandwidth periods (100 ms each) in which the slice had tasks to run under its CPUQuota (cpu.stat nr_periods; on cgroup v1 the cpu hierarchy's cpu.stat).",
        value: |s| s.cgroup.cpu_periods.map(|n| n as f64),
    },
    Family {
        name: "ds01_slice_cpu_throttled_periods_total",
        kind: "counter",
        help: "CPU bandwidth periods in which the slice used up its CPUQuota and its tasks were held back (cpu.stat nr_throttled).",
        value: |s| s.cgroup.cpu_throttled_periods.map(|n| n as f64),
    },
    Family {
        name: "ds01_slice_cpu_throttled_seconds_total",
        kind: "counter",
        help: "Time the slice's tasks were held back by its CPUQuota (cgroup v2 cpu.stat throttled_usec; on cgroup v1 throttled_time, in ns).",
        value: |s| s.cgroup.cpu_throttled_usec.map(|n| n as f64 / 1e6),
    },
    Family {
        name: "ds01_slice_pressure_memory_some_avg10_ratio",
        kind: "gauge",
        help: "Share of the last 10 s in which some task of the slice waited for memory (PSI).",
        value: |s| s.cgroup.memory_pressure_avg10.map(|p| p / 100.0),
    },
    Family {
        name: "ds01_slice_pressure_cpu_some_avg10_ratio",
        kind: "gauge",
        help: "Share of the last 10 s in which some task of the slice waited for CPU (PSI).",
        value: |s| s.cgroup.cpu_pressure_avg10.map(|p| p / 100.0),
    },
];

/// `value` escaped for a label (backslash, double quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(s: &SliceStatus) -> String {
    format!(
        "slice=\"{}\",group=\"{}\",user=\"{}\"",
        escape(s.slice.as_str()),
        escape(s.group.as_deref().unwrap_or("")),
        escape(s.user.as_deref().unwrap_or(""))
    )
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        // Integers as integers (byte counts beyond 2^53 keep their digits); others shortest.
        if v.fract() == 0.0 && v.abs() < 1e19 {
            format!("{}", v as i128)
        } else {
            format!("{v}")
        }
    }
}

/// What the state directory and the configuration's files say of applying it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyRecord {
    /// When a full apply last brought every slice to its limits (Unix time).
    pub last_complete: Option<u64>,
    /// When a full apply last ended, and whether it was complete.
    pub last_attempt: Option<(u64, bool)>,
    /// The newest modification time of the configuration's files.
    pub config_modified: Option<u64>,
}

impl ApplyRecord {
    pub fn read(ownership: &Ownership, config: &Config) -> ApplyRecord {
        ApplyRecord {
            last_complete: ownership.last_applied(),
            last_attempt: ownership.last_apply_attempt(),
            config_modified: config_modified(config),
        }
    }
}

/// The newest modification time of the main file (a symbolic link's target too), the
/// overrides beside it and the members files.
fn config_modified(config: &Config) -> Option<u64> {
    let main = std::fs::canonicalize(&config.path).unwrap_or_else(|_| config.path.clone());
    let dir = main.parent().map(Path::to_path_buf).unwrap_or_default();
    let files = [config.path.clone(), main, dir.join(OVERRIDES_FILE)]
        .into_iter()
        .chain(config.groups.iter().map(|g| g.members_file.clone()));
    files
        .filter_map(|f| std::fs::metadata(f).ok()?.modified().ok())
        .filter_map(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .max()
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The whole exposition: the status of every slice, drift, the containers outside their
/// user's slice, when apply last ran and completed, and whether every slice could be read.
pub fn exposition(report: &StatusReport, apply: &ApplyRecord) -> String {
    let mut out = String::new();
    for f in FAMILIES {
        header(&mut out, f.name, f.kind, f.help);
        for s in report.slices.iter().filter(|s| s.error.is_none()) {
            if let Some(v) = (f.value)(s) {
                let _ = writeln!(out, "{}{{{}}} {}", f.name, labels(s), number(v));
            }
        }
    }
    header(
        &mut out,
        "ds01_slices_drift",
        "gauge",
        "1 when the property does not hold what the configuration asks (verify's comparison), else 0.",
    );
    for s in &report.slices {
        for (property, drifted) in &s.drift {
            let _ = writeln!(
                out,
                "ds01_slices_drift{{{},property=\"{}\"}} {}",
                labels(s),
                escape(property),
                u8::from(*drifted)
            );
        }
    }
    header(
        &mut out,
        "ds01_slices_read_errors",
        "gauge",
        "Slices whose properties could not be read in this scrape.",
    );
    let errors = report.slices.iter().filter(|s| s.error.is_some()).count();
    let _ = writeln!(out, "ds01_slices_read_errors {errors}");
    if let Some(found) = &report.containers {
        containers(&mut out, found);
    }
    apply_families(&mut out, apply);
    out
}

/// One reading of a container.
type Reading = fn(&OutsideContainer) -> Option<u64>;

/// The containers outside their user's slice: how many, and one series of each family per
/// container (`id` joins them).
fn containers(out: &mut String, found: &ContainerReport) {
    header(
        out,
        "ds01_containers_accounted",
        "gauge",
        "1 when every container on the host could be placed (systemd's scopes and the cgroup tree read), else 0: then ds01_containers_outside_user_slice has no sample.",
    );
    let _ = writeln!(
        out,
        "ds01_containers_accounted {}",
        u8::from(found.error.is_none())
    );
    header(
        out,
        "ds01_containers_outside_user_slice",
        "gauge",
        "Containers (Docker or podman scopes, BuildKit build steps) running outside every user's slice, where no per-user limit holds for them.",
    );
    if found.error.is_none() {
        let _ = writeln!(
            out,
            "ds01_containers_outside_user_slice {}",
            found.outside.len()
        );
    }
    let id_labels = |c: &OutsideContainer| {
        format!(
            "id=\"{}\",kind=\"{}\",slice=\"{}\",owner=\"{}\"",
            escape(&c.id),
            c.kind.name(),
            escape(&c.slice),
            escape(c.owner_or_unknown())
        )
    };
    header(
        out,
        "ds01_container_outside_user_slice_info",
        "gauge",
        "1 for each container outside every user's slice: its id, kind (docker, podman, buildkit, docker-cgroupfs), Docker name, the slice and cgroup it runs in, its unit, and its owner (the ds01.user label, else unknown).",
    );
    for c in &found.outside {
        let _ = writeln!(
            out,
            "ds01_container_outside_user_slice_info{{{},name=\"{}\",unit=\"{}\",cgroup=\"{}\"}} 1",
            id_labels(c),
            escape(c.name.as_deref().unwrap_or("")),
            escape(c.unit.as_deref().unwrap_or("")),
            escape(&c.cgroup)
        );
    }
    let per_container: [(&str, &str, Reading); 2] = [
        (
            "ds01_container_outside_user_slice_memory_bytes",
            "Memory in use by a container outside every user's slice.",
            |c| c.memory_bytes,
        ),
        (
            "ds01_container_outside_user_slice_tasks",
            "Tasks in a container outside every user's slice.",
            |c| c.tasks,
        ),
    ];
    for (name, help, value) in per_container {
        header(out, name, "gauge", help);
        for c in &found.outside {
            if let Some(v) = value(c) {
                let _ = writeln!(out, "{name}{{{}}} {v}", id_labels(c));
            }
        }
    }
}

fn apply_families(out: &mut String, apply: &ApplyRecord) {
    let families = [
        (
            "ds01_slices_last_apply_timestamp_seconds",
            "When a full apply last brought every slice to its limits (Unix time).",
            apply.last_complete,
        ),
        (
            "ds01_slices_last_apply_attempt_timestamp_seconds",
            "When a full apply last ended, complete or not (Unix time).",
            apply.last_attempt.map(|(t, _)| t),
        ),
        (
            "ds01_slices_last_apply_success",
            "1 when the last full apply brought every slice to its limits, 0 when it failed (a configuration refused, a slice not written).",
            apply.last_attempt.map(|(_, ok)| u64::from(ok)),
        ),
        (
            "ds01_slices_config_timestamp_seconds",
            "The newest modification time of the configuration's files (Unix time): newer than the last complete apply means edits not in force.",
            apply.config_modified,
        ),
    ];
    for (name, help, value) in families {
        if let Some(v) = value {
            header(out, name, "gauge", help);
            let _ = writeln!(out, "{name} {v}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::names::SliceName;
    use crate::model::usage::{CgroupReadings, Limits, Resources};

    fn slice(name: &str, user: &str, limits: Limits) -> SliceStatus {
        SliceStatus {
            slice: SliceName::parse(name).unwrap(),
            kind: crate::model::names::SliceKind::User,
            group: Some("student".into()),
            user: Some(user.into()),
            active: true,
            tasks: Some(3),
            memory_bytes: Some(1 << 30),
            cpu_usage_nsec: Some(1_500_000_000),
            limits,
            planned: Some(limits),
            resources: Resources::new(Some(1 << 30), Some(3), None, &limits),
            cgroup: CgroupReadings {
                oom_kills: Some(1),
                ..Default::default()
            },
            closeness: None,
            drift: [
                ("MemoryMax".to_owned(), false),
                ("TasksMax".to_owned(), true),
            ]
            .into(),
            error: None,
        }
    }

    #[test]
    fn limits_absent_when_unset_and_values_in_base_units() {
        let limited = Limits {
            memory_max_bytes: Some(96 << 30),
            memory_high_bytes: None,
            tasks_max: Some(12288),
            cpu_quota_cores: Some(96.0),
        };
        let report = StatusReport {
            cpu_interval_secs: None,
            slices: vec![
                slice("ds01-student-alice.slice", "alice", limited),
                slice("ds01-student-bob.slice", "b\"o\\b", Limits::default()),
            ],
            containers: None,
            notes: Vec::new(),
        };
        let apply = ApplyRecord {
            last_complete: Some(1_700_000_000),
            ..Default::default()
        };
        let text = exposition(&report, &apply);
        let alice = r#"slice="ds01-student-alice.slice",group="student",user="alice""#;
        assert!(
            text.contains(&format!(
                "ds01_slice_memory_max_bytes{{{alice}}} 103079215104\n"
            )),
            "{text}"
        );
        assert!(text.contains(&format!(
            "ds01_slice_cpu_usage_seconds_total{{{alice}}} 1.5\n"
        )));
        assert!(text.contains(&format!("ds01_slice_cpu_quota_cores{{{alice}}} 96\n")));
        assert!(text.contains(&format!(
            "ds01_slices_drift{{{alice},property=\"TasksMax\"}} 1\n"
        )));
        assert!(!text.contains("ds01_slice_memory_max_bytes{slice=\"ds01-student-bob.slice\""));
        assert!(text.contains(r#"user="b\"o\\b""#));
        assert!(text.contains("ds01_slices_last_apply_timestamp_seconds 1700000000\n"));
        assert_eq!(
            text.matches("# TYPE ds01_slice_memory_bytes gauge").count(),
            1
        );
    }

    #[test]
    fn containers_outside_and_the_apply_record() {
        use crate::model::containers::{ContainerKind, ContainerReport, OutsideContainer};
        let mut report = StatusReport::default();
        let none = exposition(&report, &ApplyRecord::default());
        assert!(
            !none.contains("ds01_containers") && !none.contains("last_apply"),
            "{none}"
        );
        report.containers = Some(ContainerReport {
            outside: vec![OutsideContainer {
                kind: ContainerKind::BuildStep,
                id: "k2x4".into(),
                name: None,
                unit: None,
                slice: "system.slice".into(),
                cgroup: "/system.slice/system.slice:docker:k2x4".into(),
                owner: None,
                owner_slice: None,
                memory_bytes: Some(4096),
                tasks: None,
            }],
            ..ContainerReport::default()
        });
        let apply = ApplyRecord {
            last_complete: Some(100),
            last_attempt: Some((200, false)),
            config_modified: Some(150),
        };
        let text = exposition(&report, &apply);
        let labels = r#"id="k2x4",kind="buildkit",slice="system.slice",owner="unknown""#;
        for line in [
            "ds01_containers_accounted 1".to_owned(),
            "ds01_containers_outside_user_slice 1".to_owned(),
            format!("ds01_container_outside_user_slice_info{{{labels},name=\"\",unit=\"\",cgroup=\"/system.slice/system.slice:docker:k2x4\"}} 1"),
            format!("ds01_container_outside_user_slice_memory_bytes{{{labels}}} 4096"),
            "ds01_slices_last_apply_timestamp_seconds 100".to_owned(),
            "ds01_slices_last_apply_attempt_timestamp_seconds 200".to_owned(),
            "ds01_slices_last_apply_success 0".to_owned(),
            "ds01_slices_config_timestamp_seconds 150".to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        assert!(
            !text.contains("ds01_container_outside_user_slice_tasks{"),
            "{text}"
        );
        // A search that failed: no count that could read as "none outside".
        if let Some(c) = report.containers.as_mut() {
            c.error = Some("neither could be read".into());
        }
        let failed = exposition(&report, &apply);
        assert!(
            failed.contains("\nds01_containers_accounted 0\n"),
            "{failed}"
        );
        assert!(
            !failed.contains("\nds01_containers_outside_user_slice "),
            "{failed}"
        );
    }
}
