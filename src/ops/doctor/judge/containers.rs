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
