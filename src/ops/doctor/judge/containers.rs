//! Whether every container runs in its user's slice: one that does not is held by no
//! per-user limit.

use super::{Check, Finding, Status};
use crate::model::containers::ContainerReport;

/// How many containers the finding names.
const EXAMPLES: usize = 3;

/// What to do about containers outside their user's slice.
const FIX: &str = "start containers only through the hook (`docker run --cgroup-parent=$(ds01-slices hook pre-create USER)`, or the ds01-docker-run wrapper) or the Docker API gate, so that no client can skip it; stop these (`docker stop ID`) and start them again that way. `ds01-slices status` lists them with their owners";

/// `found`: the containers found, or why they could not be looked for.
pub fn containers(found: &Result<ContainerReport, String>) -> Finding {
    let why = match found {
        Err(why) => why.clone(),
        Ok(r) => match &r.error {
            Some(e) => e.clone(),
            None if r.outside.is_empty() => {
                return Finding::ok(
                    Check::Containers,
                    format!(
                        "every container runs in its user's slice ({} found, read from {})",
                        r.in_user_slices,
                        r.sources.join(", ")
                    ),
                )
            }
            None => {
                let named: Vec<String> = r
                    .outside
                    .iter()
                    .take(EXAMPLES)
                    .map(|c| {
                        let name = c
                            .name
                            .as_deref()
                            .map(|n| format!(" ({n})"))
                            .unwrap_or_default();
                        format!(
                            "{} {}{name} in {}, owner {}",
                            c.kind.name(),
                            c.short_id(),
                            c.slice,
                            c.owner_or_unknown()
                        )
                    })
                    .collect();
                let more = r.outside.len().saturating_sub(EXAMPLES);
                let more = if more > 0 {
                    format!("; and {more} more")
                } else {
                    String::new()
                };
                return Finding::bad(
                    Check::Containers,
                    Status::Fail,
                    format!(
                        "{} outside their user's slice, where no per-user limit holds: {}{more}",
                        if r.outside.len() == 1 {
                            "1 container runs".to_owned()
                        } else {
                            format!("{} containers run", r.outside.len())
                        },
                        named.join("; ")
                    ),
                    FIX,
                );
            }
        },
    };
    Finding::bad(
        Check::Containers,
        Status::Warning,
        format!("not checked: {why}"),
        "fix the findings above (systemd and the cgroup file system must be readable), then rerun `ds01-slices doctor`",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::containers::{ContainerKind, OutsideContainer};

    fn outside(n: usize) -> ContainerReport {
        ContainerReport {
            outside: (0..n)
                .map(|i| OutsideContainer {
                    kind: ContainerKind::Docker,
                    id: format!("{i:064x}"),
                    name: (i == 0).then(|| "web".to_owned()),
                    unit: None,
                    slice: "system.slice".into(),
                    cgroup: String::new(),
                    owner: (i == 0).then(|| "alice".to_owned()),
                    owner_slice: None,
                    memory_bytes: None,
                    tasks: None,
                })
                .collect(),
            in_user_slices: 2,
            sources: vec!["systemd".into()],
            ..ContainerReport::default()
        }
    }

    #[test]
    fn a_container_outside_fails_with_the_fix_and_a_failed_search_warns() {
        let ok = containers(&Ok(outside(0)));
        assert_eq!(ok.status, Status::Ok);
        assert!(ok.found.contains("(2 found, read from systemd)"), "{ok:?}");
        let four = containers(&Ok(outside(4)));
        assert_eq!(four.status, Status::Fail);
        assert!(
            four.found
                .starts_with("4 containers run outside their user's slice")
                && four
                    .found
                    .contains("docker 000000000000 (web) in system.slice, owner alice")
                && four.found.contains("owner unknown")
                && four.found.ends_with("; and 1 more"),
            "{four:?}"
        );
        assert!(four.fix.unwrap().contains("Docker API gate"));
        let one = containers(&Ok(outside(1)));
        assert!(one.found.starts_with("1 container runs outside"), "{one:?}");
        let failed = ContainerReport {
            error: Some("neither systemd nor the cgroup tree could be read".into()),
            ..ContainerReport::default()
        };
        let warned = containers(&Ok(failed));
        assert_eq!(warned.status, Status::Warning);
        assert!(
            warned.found.starts_with("not checked: neither"),
            "{warned:?}"
        );
        assert_eq!(
            containers(&Err("systemd cannot be asked".into())).status,
            Status::Warning
        );
    }
}
