//! The containers outside their user's slice as text: one section, shared by `verify` and
//! `status`, and one line per container.

use std::fmt::Write as _;

use super::out;
use crate::model::containers::{ContainerKind, ContainerReport, OutsideContainer};
use crate::model::usage::human_bytes;

/// What to do about a container outside its user's slice.
pub const FIX: &str = "start containers through the hook (`docker run --cgroup-parent=$(ds01-slices hook pre-create USER)`, or the ds01-docker-run wrapper) or through the Docker API gate; one already running keeps running without its user's limits until it is stopped (`docker stop ID`) and started again that way";

/// The section: each container outside, or that there is none; and why nothing can be said
/// when the search failed.
pub fn section(report: &ContainerReport) -> String {
    let mut out = String::new();
    if let Some(e) = &report.error {
        let _ = writeln!(out, "containers: NOT accounted for: {e}");
    }
    if report.outside.is_empty() {
        if report.error.is_none() {
            let _ = writeln!(
                out,
                "containers: none outside a user's slice ({} in users' slices)",
                report.in_user_slices
            );
        }
        return out;
    }
    let _ = writeln!(
        out,
        "containers outside their user's slice: {} (no per-user limit holds for them; {} in users' slices)",
        report.outside.len(),
        report.in_user_slices
    );
    for c in &report.outside {
        let _ = writeln!(out, "    {}", line(c));
    }
    let _ = writeln!(out, "    fix: {FIX}");
    out
}

/// `docker 0123456789ab (web) in system.slice, owner alice: 120M, 5 tasks`.
pub fn line(c: &OutsideContainer) -> String {
    let name = match (&c.name, c.kind) {
        (Some(n), _) => format!(" ({n})"),
        (None, ContainerKind::BuildStep) => " (a BuildKit build step)".to_owned(),
        (None, _) => String::new(),
    };
    let mut usage = Vec::new();
    if let Some(m) = c.memory_bytes {
        usage.push(human_bytes(m));
    }
    if let Some(t) = c.tasks {
        usage.push(out::counted(t, "task", "tasks"));
    }
    let usage = if usage.is_empty() {
        String::new()
    } else {
        format!(": {}", usage.join(", "))
    };
    format!(
        "{} {}{name} in {}, owner {}{usage}",
        c.kind.name(),
        c.short_id(),
        c.slice,
        c.owner_or_unknown()
    )
}
