//! The Prometheus text exposition of [`super::status`]: one family per reading and limit,
//! labelled `{slice, group, user}`, in base units (bytes, seconds, cores, ratios). A limit
//! that is not set has no sample at all: absence is Prometheus's own "no value", and a
//! query such as `ds01_slice_memory_bytes / ds01_slice_memory_max_bytes` then simply has no
//! result for an unlimited slice instead of dividing by a made-up number.

use std::fmt::Write as _;

use super::status::{SliceStatus, StatusReport};

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
        help: "Processes OOM-killed in the slice since its cgroup was made.",
        value: |s| s.cgroup.oom_kills.map(|n| n as f64),
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

/// The whole exposition: the status of every slice, drift, when apply last completed, and
/// whether every slice could be read.
pub fn exposition(report: &StatusReport, last_apply_unix: Option<u64>) -> String {
    let mut out = String::new();
    for f in FAMILIES {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for s in report.slices.iter().filter(|s| s.error.is_none()) {
            if let Some(v) = (f.value)(s) {
                let _ = writeln!(out, "{}{{{}}} {}", f.name, labels(s), number(v));
            }
        }
    }
    out.push_str(
        "# HELP ds01_slices_drift 1 when the property does not hold what the configuration asks (verify's comparison), else 0.\n\
         # TYPE ds01_slices_drift gauge\n",
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
    out.push_str(
        "# HELP ds01_slices_read_errors Slices whose properties could not be read in this scrape.\n\
         # TYPE ds01_slices_read_errors gauge\n",
    );
    let errors = report.slices.iter().filter(|s| s.error.is_some()).count();
    let _ = writeln!(out, "ds01_slices_read_errors {errors}");
    if let Some(t) = last_apply_unix {
        out.push_str(
            "# HELP ds01_slices_last_apply_timestamp_seconds When a full apply last brought every slice to its limits (Unix time).\n\
             # TYPE ds01_slices_last_apply_timestamp_seconds gauge\n",
        );
        let _ = writeln!(out, "ds01_slices_last_apply_timestamp_seconds {t}");
    }
    out
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
            notes: Vec::new(),
        };
        let text = exposition(&report, Some(1_700_000_000));
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
}
