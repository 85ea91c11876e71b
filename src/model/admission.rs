//! Whether a new container fits in its user's aggregate limits, as DS01's Docker wrapper
//! decided it (`check_aggregate_quota`): the memory the user's slice uses now plus what the
//! container asks for must fit under MemoryMax, or the container is refused; tasks above
//! 90% of TasksMax only warn. The kernel enforces the limits whatever is decided here: this
//! is about refusing early with a clear message instead of an OOM kill later.

use serde::Serialize;

use super::values::{MemoryLimit, ValueError};

/// Tasks at or above this share of TasksMax warn (DS01's wrapper).
pub const TASKS_WARN_AT: f64 = 0.90;

/// What the container asks for (`docker run --memory`, `--pids-limit`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Request {
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
}

impl Request {
    /// The request from docker's own values, where "no limit" has its own spellings: a
    /// `--memory` of 0 (in any unit) sets none (moby sets a memory limit only above 0), and
    /// a `--pids-limit` of 0 or below is unlimited (moby's `getPidsLimit`: "docker API allows
    /// 0 and negative values to unset this"; the CLI's help says "-1 for unlimited").
    pub fn from_docker(memory_bytes: Option<u64>, pids_limit: Option<i64>) -> Request {
        Request {
            memory_bytes: memory_bytes.filter(|&b| b > 0),
            pids: pids_limit
                .and_then(|p| u64::try_from(p).ok())
                .filter(|&p| p > 0),
        }
    }
}

/// What the user's slice uses now. `None`: it could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InUse {
    pub memory_bytes: Option<u64>,
    pub tasks: Option<u64>,
}

impl InUse {
    /// A slice with no cgroup runs nothing.
    pub const NOTHING: InUse = InUse {
        memory_bytes: Some(0),
        tasks: Some(0),
    };
}

/// The user's limits the request is measured against (`None`: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    pub memory_max: Option<u64>,
    pub tasks_max: Option<u64>,
}

/// What to do when a reading the decision needs is missing (documented in docs/containers.md, "Admission").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Admit with a warning, as DS01's wrapper did.
    Allow,
    /// Refuse (`--strict`).
    Strict,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "finding", rename_all = "snake_case")]
pub enum Finding {
    /// Memory in use plus the request exceeds MemoryMax.
    MemoryOver {
        in_use: u64,
        requested: u64,
        limit: u64,
    },
    /// Tasks in use (plus the request's pids limit) at or above 90% of TasksMax.
    TasksNear {
        in_use: u64,
        requested: u64,
        limit: u64,
    },
    /// A reading the decision needs could not be taken.
    Unread { what: &'static str },
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// Why the container is refused; `None`: admitted.
    pub refusal: Option<Finding>,
    pub warnings: Vec<Finding>,
}

pub fn decide(request: Request, in_use: InUse, allowed: Allowed, policy: Policy) -> Decision {
    let mut d = Decision::default();
    let unread = |what: &'static str, d: &mut Decision| match policy {
        Policy::Allow => d.warnings.push(Finding::Unread { what }),
        Policy::Strict => {
            if d.refusal.is_none() {
                d.refusal = Some(Finding::Unread { what });
            }
        }
    };
    if let Some(limit) = allowed.memory_max {
        let requested = request.memory_bytes.unwrap_or(0);
        match in_use.memory_bytes {
            Some(used) if used.saturating_add(requested) > limit => {
                d.refusal = Some(Finding::MemoryOver {
                    in_use: used,
                    requested,
                    limit,
                });
            }
            Some(_) => {}
            None => unread("the memory the user's slice uses", &mut d),
        }
    }
    if let Some(limit) = allowed.tasks_max {
        let requested = request.pids.unwrap_or(0);
        match in_use.tasks {
            Some(used)
                if (used.saturating_add(requested) as f64) >= TASKS_WARN_AT * limit as f64 =>
            {
                d.warnings.push(Finding::TasksNear {
                    in_use: used,
                    requested,
                    limit,
                });
            }
            Some(_) => {}
            None => unread("the tasks the user's slice runs", &mut d),
        }
    }
    d
}

/// A container's memory request as Docker takes it (`--memory 4g`: a number with b, k, m,
/// g, t or p, any case, base 1024, also `4gib`) or as systemd writes sizes (`4G`, `1.5G`,
/// bytes). 0 (in any unit) is docker's "no limit": `Ok(0)`, which
/// [`Request::from_docker`] takes as no request.
pub fn parse_request_bytes(text: &str) -> Result<u64, ValueError> {
    let upper = text.trim().to_ascii_uppercase();
    let unit = |rest: &str| rest.ends_with(|c: char| "KMGTPE".contains(c));
    let t = match upper.strip_suffix('B') {
        Some(rest) if rest.ends_with(|c: char| c.is_ascii_digit()) || unit(rest) => rest,
        Some(rest) => match rest.strip_suffix('I') {
            Some(r) if unit(r) => r,
            _ => &upper,
        },
        None => match upper.strip_suffix('I') {
            Some(r) if unit(r) => r,
            _ => &upper,
        },
    };
    match MemoryLimit::parse(t) {
        Ok(MemoryLimit::Bytes(b)) => Ok(b),
        Ok(MemoryLimit::Infinity) => Err(ValueError::NotANumber(text.to_owned())),
        Err(ValueError::Zero(_)) => Ok(0),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOWED: Allowed = Allowed {
        memory_max: Some(1000),
        tasks_max: Some(100),
    };

    fn req(memory: u64) -> Request {
        Request {
            memory_bytes: Some(memory),
            pids: None,
        }
    }

    #[test]
    fn memory_must_fit_under_memory_max() {
        let used = InUse {
            memory_bytes: Some(600),
            tasks: Some(10),
        };
        assert_eq!(
            decide(req(400), used, ALLOWED, Policy::Allow),
            Decision::default()
        );
        assert_eq!(
            decide(req(401), used, ALLOWED, Policy::Allow).refusal,
            Some(Finding::MemoryOver {
                in_use: 600,
                requested: 401,
                limit: 1000
            })
        );
        // No limit (an admin, or aggregate limits off): never refused.
        let admin = Allowed {
            memory_max: None,
            tasks_max: None,
        };
        assert_eq!(
            decide(req(u64::MAX), used, admin, Policy::Strict),
            Decision::default()
        );
    }

    #[test]
    fn tasks_near_the_limit_only_warn() {
        let used = InUse {
            memory_bytes: Some(0),
            tasks: Some(85),
        };
        let d = decide(
            Request {
                memory_bytes: None,
                pids: Some(5),
            },
            used,
            ALLOWED,
            Policy::Strict,
        );
        assert_eq!(d.refusal, None);
        assert!(matches!(
            d.warnings[..],
            [Finding::TasksNear {
                in_use: 85,
                requested: 5,
                limit: 100
            }]
        ));
        assert!(decide(req(0), used, ALLOWED, Policy::Allow)
            .warnings
            .is_empty());
    }

    #[test]
    fn an_unread_value_follows_the_policy() {
        let unknown = InUse {
            memory_bytes: None,
            tasks: Some(1),
        };
        let allow = decide(req(1), unknown, ALLOWED, Policy::Allow);
        assert_eq!(allow.refusal, None);
        assert!(matches!(allow.warnings[..], [Finding::Unread { .. }]));
        let strict = decide(req(1), unknown, ALLOWED, Policy::Strict);
        assert!(matches!(strict.refusal, Some(Finding::Unread { .. })));
    }

    #[test]
    fn requests_parse_as_docker_writes_them() {
        assert_eq!(parse_request_bytes("4g").unwrap(), 4 << 30);
        assert_eq!(parse_request_bytes("512m").unwrap(), 512 << 20);
        assert_eq!(parse_request_bytes("512MB").unwrap(), 512 << 20);
        assert_eq!(parse_request_bytes("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_request_bytes("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_request_bytes("100b").unwrap(), 100);
        assert!(parse_request_bytes("infinity").is_err());
        assert!(parse_request_bytes("lots").is_err());
        assert_eq!(parse_request_bytes("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_request_bytes("2mi").unwrap(), 2 << 20);
        assert!(parse_request_bytes("-1").is_err());
    }

    #[test]
    fn dockers_spellings_of_no_limit_are_no_request() {
        for zero in ["0", "0b", "0k", "0m", "0.0g", "0GiB"] {
            assert_eq!(parse_request_bytes(zero).unwrap(), 0, "{zero}");
        }
        assert_eq!(Request::from_docker(Some(0), Some(0)), Request::default());
        assert_eq!(Request::from_docker(None, Some(-1)), Request::default());
        assert_eq!(
            Request::from_docker(None, Some(i64::MIN)),
            Request::default()
        );
        assert_eq!(
            Request::from_docker(Some(1 << 30), Some(100)),
            Request {
                memory_bytes: Some(1 << 30),
                pids: Some(100)
            }
        );
    }
}
