//! What the kernel enforces for a cgroup, read from its control files under either cgroup
//! version. Parsing is separate from file access so that both layouts can be tested anywhere.

/// A limit as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// No limit: "max" (v2, pids.max), -1 (v1 CFS quota) or v1's page-rounded i64::MAX.
    Max,
    Value(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// Each field is None when its file is absent: systemd creates a controller's files only for
/// units that use the controller, and v1 has no counterpart of memory.high.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enforcement {
    pub version: CgroupVersion,
    /// v1 cpu.cfs_quota_us; v2 the first field of cpu.max.
    pub cpu_quota_us: Option<Limit>,
    /// v1 cpu.cfs_period_us; v2 the second field of cpu.max.
    pub cpu_period_us: Option<u64>,
    /// nr_throttled in cpu.stat (both versions).
    pub nr_throttled: Option<u64>,
    /// v1 memory.limit_in_bytes; v2 memory.max.
    pub memory_max: Option<Limit>,
    /// v2 memory.high; always None on v1.
    pub memory_high: Option<Limit>,
    /// pids.max (both versions).
    pub pids_max: Option<Limit>,
}

/// Reads the enforcement values through `read`, which maps a control file name (for example
/// "cpu.max" or "memory.limit_in_bytes") to its contents, or None if there is no such file.
/// The version is the one whose CPU file exists; the caller decides where each file lives (one
/// directory on v2, one per controller on v1).
pub fn parse_enforcement(read: &dyn Fn(&str) -> Option<String>) -> Result<Enforcement, String> {
    let nr_throttled = read("cpu.stat")
        .map(|s| stat_field(&s, "nr_throttled"))
        .transpose()?;
    let pids_max = read("pids.max")
        .map(|s| limit("pids.max", &s))
        .transpose()?;
    let e = if let Some(cpu_max) = read("cpu.max") {
        let (quota, period) = cpu_max_fields(&cpu_max)?;
        Enforcement {
            version: CgroupVersion::V2,
            cpu_quota_us: Some(quota),
            cpu_period_us: Some(period),
            nr_throttled,
            memory_max: read("memory.max")
                .map(|s| limit("memory.max", &s))
                .transpose()?,
            memory_high: read("memory.high")
                .map(|s| limit("memory.high", &s))
                .transpose()?,
            pids_max,
        }
    } else {
        Enforcement {
            version: CgroupVersion::V1,
            cpu_quota_us: read("cpu.cfs_quota_us").map(|s| v1_quota(&s)).transpose()?,
            cpu_period_us: read("cpu.cfs_period_us")
                .map(|s| number("cpu.cfs_period_us", &s))
                .transpose()?,
            nr_throttled,
            memory_max: read("memory.limit_in_bytes")
                .map(|s| v1_memory(&s))
                .transpose()?,
            memory_high: None,
            pids_max,
        }
    };
    let nothing = e.cpu_quota_us.is_none()
        && e.cpu_period_us.is_none()
        && e.nr_throttled.is_none()
        && e.memory_max.is_none()
        && e.memory_high.is_none()
        && e.pids_max.is_none();
    if nothing {
        return Err("no cgroup control file is readable (is the unit active?)".into());
    }
    Ok(e)
}

fn number(file: &str, s: &str) -> Result<u64, String> {
    s.trim()
        .parse()
        .map_err(|e| format!("{file}: {:?} is not a number: {e}", s.trim()))
}

fn limit(file: &str, s: &str) -> Result<Limit, String> {
    match s.trim() {
        "max" => Ok(Limit::Max),
        _ => number(file, s).map(Limit::Value),
    }
}

fn v1_quota(s: &str) -> Result<Limit, String> {
    match s.trim() {
        "-1" => Ok(Limit::Max),
        _ => number("cpu.cfs_quota_us", s).map(Limit::Value),
    }
}

fn v1_memory(s: &str) -> Result<Limit, String> {
    // v1 reports "no limit" as i64::MAX rounded down to the page size, which depends on the
    // architecture; no real limit comes anywhere near 2^62 bytes.
    let v = number("memory.limit_in_bytes", s)?;
    Ok(if v >= 1 << 62 {
        Limit::Max
    } else {
        Limit::Value(v)
    })
}

fn cpu_max_fields(s: &str) -> Result<(Limit, u64), String> {
    let mut it = s.split_whitespace();
    match (it.next(), it.next(), it.next()) {
        (Some(quota), Some(period), None) => {
            Ok((limit("cpu.max", quota)?, number("cpu.max", period)?))
        }
        _ => Err(format!(
            "cpu.max: {:?} is not \"<quota|max> <period>\"",
            s.trim()
        )),
    }
}

fn stat_field(stat: &str, key: &str) -> Result<u64, String> {
    stat.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(' '))
        .ok_or_else(|| format!("cpu.stat has no {key}"))
        .and_then(|v| number("cpu.stat", v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(files: &[(&str, &str)]) -> Result<Enforcement, String> {
        let files: HashMap<String, String> = files
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_enforcement(&|name| files.get(name).cloned())
    }

    #[test]
    fn v1_limits_as_systemd_writes_them() {
        let e = parse(&[
            ("cpu.cfs_quota_us", "50000\n"),
            ("cpu.cfs_period_us", "100000\n"),
            (
                "cpu.stat",
                "nr_periods 22\nnr_throttled 20\nthrottled_time 1558004609\n",
            ),
            ("memory.limit_in_bytes", "67108864\n"),
            ("pids.max", "20\n"),
        ])
        .expect("valid v1 files");
        assert_eq!(
            e,
            Enforcement {
                version: CgroupVersion::V1,
                cpu_quota_us: Some(Limit::Value(50000)),
                cpu_period_us: Some(100000),
                nr_throttled: Some(20),
                memory_max: Some(Limit::Value(67108864)),
                memory_high: None,
                pids_max: Some(Limit::Value(20)),
            }
        );
    }

    #[test]
    fn v1_unlimited() {
        let e = parse(&[
            ("cpu.cfs_quota_us", "-1\n"),
            ("cpu.cfs_period_us", "100000\n"),
            ("memory.limit_in_bytes", "9223372036854771712\n"),
            ("pids.max", "max\n"),
        ])
        .expect("valid v1 files");
        assert_eq!(e.cpu_quota_us, Some(Limit::Max));
        assert_eq!(e.memory_max, Some(Limit::Max));
        assert_eq!(e.pids_max, Some(Limit::Max));
        assert_eq!(e.nr_throttled, None);
    }

    #[test]
    fn v2_limits() {
        let e = parse(&[
            ("cpu.max", "50000 100000\n"),
            (
                "cpu.stat",
                "usage_usec 9\nnr_periods 3\nnr_throttled 2\nthrottled_usec 7\n",
            ),
            ("memory.max", "67108864\n"),
            ("memory.high", "max\n"),
            ("pids.max", "20\n"),
        ])
        .expect("valid v2 files");
        assert_eq!(
            e,
            Enforcement {
                version: CgroupVersion::V2,
                cpu_quota_us: Some(Limit::Value(50000)),
                cpu_period_us: Some(100000),
                nr_throttled: Some(2),
                memory_max: Some(Limit::Value(67108864)),
                memory_high: Some(Limit::Max),
                pids_max: Some(Limit::Value(20)),
            }
        );
    }

    #[test]
    fn v2_unlimited_cpu() {
        let e = parse(&[("cpu.max", "max 100000\n")]).expect("valid cpu.max");
        assert_eq!(e.cpu_quota_us, Some(Limit::Max));
        assert_eq!(e.cpu_period_us, Some(100000));
    }

    #[test]
    fn v2_files_win_when_both_are_present() {
        // A v2 directory never has v1 files; if both appear, cpu.max decides, and v1-only
        // names are not consulted.
        let e = parse(&[
            ("cpu.max", "1000 100000\n"),
            ("cpu.cfs_quota_us", "5\n"),
            ("memory.limit_in_bytes", "5\n"),
        ])
        .expect("valid cpu.max");
        assert_eq!(e.version, CgroupVersion::V2);
        assert_eq!(e.cpu_quota_us, Some(Limit::Value(1000)));
        assert_eq!(e.memory_max, None);
    }

    #[test]
    fn partial_files_are_none_not_errors() {
        let e = parse(&[("pids.max", "7\n")]).expect("pids.max alone is enough");
        assert_eq!(e.version, CgroupVersion::V1);
        assert_eq!(e.pids_max, Some(Limit::Value(7)));
        assert_eq!(e.cpu_quota_us, None);
    }

    #[test]
    fn errors_name_the_file() {
        let err = parse(&[]).expect_err("no files");
        assert!(err.contains("no cgroup control file"), "{err}");
        let err = parse(&[("cpu.max", "50000\n")]).expect_err("one field");
        assert!(err.contains("cpu.max"), "{err}");
        let err = parse(&[("pids.max", "lots\n")]).expect_err("not a number");
        assert!(err.contains("pids.max"), "{err}");
        let err = parse(&[("cpu.cfs_quota_us", "-1\n"), ("cpu.stat", "nr_periods 1\n")])
            .expect_err("no nr_throttled");
        assert!(err.contains("nr_throttled"), "{err}");
    }

    #[test]
    fn nr_throttled_is_not_confused_with_a_longer_key() {
        let e = parse(&[
            ("cpu.max", "max 100000\n"),
            ("cpu.stat", "nr_throttled_extra 9\nnr_throttled 4\n"),
        ])
        .expect("valid");
        assert_eq!(e.nr_throttled, Some(4));
    }
}
