//! The commands that only read the configuration: `show`, `plan` and `check-config`.

use serde::Serialize;

use super::args::Globals;
use super::exit::CliResult;
use super::setup::parse_user;
use super::{out, pyjson};
use crate::config::{self, Config};
use crate::error::Exit;
use crate::model::diagnostics::{Diagnostic, Location, Severity};
use crate::model::names::SliceKind;
use crate::model::property::{Properties, Property};
use crate::plan::{self, Plan};

#[derive(Debug, Serialize)]
struct ShowReport {
    user: String,
    group: String,
    slice: String,
    aggregate: serde_json::Value,
    #[serde(skip)]
    listed: bool,
    #[serde(skip)]
    properties: Properties,
}

pub fn show(globals: &Globals, config: &Config, user: &str, aggregate_only: bool) -> CliResult {
    let resolved = config.resolve(&parse_user(user)?)?;
    let report = ShowReport {
        user: resolved.name.to_string(),
        group: resolved.group.to_string(),
        slice: resolved.slice.to_string(),
        aggregate: resolved
            .aggregate
            .as_ref()
            .map(|a| a.raw_json())
            .unwrap_or(serde_json::Value::Null),
        listed: resolved.listed,
        properties: plan::user_spec(&resolved).properties,
    };
    if aggregate_only {
        let text = match &resolved.aggregate {
            Some(a) => pyjson::dumps_section(&a.raw),
            None => pyjson::dumps(&serde_json::Value::Null),
        };
        out::stdout(&format!("{text}\n"))?;
    } else if globals.json {
        out::json(&report)?;
    } else {
        let mut text = format!("user:   {}\n", report.user);
        let how = if report.listed {
            ""
        } else {
            " (in no members file: default_group)"
        };
        text.push_str(&format!("group:  {}{how}\n", report.group));
        text.push_str(&format!("slice:  {}\n", report.slice));
        if resolved.aggregate.is_none() {
            text.push_str("limits: none (no aggregate cap)\n");
        } else {
            text.push_str(&format!(
                "limits: {}\n",
                human_properties(&report.properties)
            ));
            if let Some(gpu) = resolved
                .aggregate
                .as_ref()
                .and_then(|a| a.gpu_limit.as_ref())
            {
                text.push_str(&format!(
                    "gpu:    gpu_limit {gpu} (read by other DS01 tools, not a slice property)\n"
                ));
            }
        }
        if !config.aggregate_limits {
            text.push_str("note:   enforcement.aggregate_limits is false: nothing is applied\n");
        }
        out::stdout(&text)?;
    }
    Ok(Exit::Ok)
}

/// `CPUQuota=9600% MemoryMax=96G ...` in unit-file terms.
pub fn human_properties(props: &Properties) -> String {
    let parts: Vec<String> = props
        .iter()
        .filter(|(p, _)| Property::LIMITS.contains(p))
        .map(|(p, v)| format!("{}={}", p.unit_setting(), p.display(v)))
        .collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(" ")
    }
}

pub fn plan_command(globals: &Globals, config: &Config, user: Option<&str>) -> CliResult {
    let plan = match user {
        Some(u) => plan::plan_user(config, &parse_user(u)?)?,
        None => plan::plan(config)?,
    };
    if globals.json {
        out::json(&plan)?;
    } else if !config.aggregate_limits {
        out::stdout(
            "enforcement.aggregate_limits is false in the configuration: nothing to apply\n",
        )?;
    } else {
        out::stdout(&plan_table(&plan))?;
    }
    Ok(Exit::Ok)
}

pub fn plan_table(plan: &Plan) -> String {
    let cell = |spec: &plan::SliceSpec, p: Property| {
        spec.properties
            .get(p)
            .map(|v| p.display(v))
            .unwrap_or_else(|| "-".to_owned())
    };
    let mut rows: Vec<[String; 7]> = vec![[
        "SLICE".into(),
        "KIND".into(),
        "USER".into(),
        "CPUQuota".into(),
        "MemoryMax".into(),
        "MemoryHigh".into(),
        "TasksMax".into(),
    ]];
    for spec in &plan.slices {
        let kind = match spec.kind {
            SliceKind::Root => "root",
            SliceKind::Group => "group",
            SliceKind::User => "user",
        };
        let user = spec
            .user
            .as_ref()
            .map(|u| u.to_string())
            .unwrap_or_else(|| "-".into());
        let limits = if spec.kind == SliceKind::User && !spec.properties.has_limits() {
            ["uncapped".to_owned(), "-".into(), "-".into(), "-".into()]
        } else if spec.kind != SliceKind::User {
            ["accounting".to_owned(), "-".into(), "-".into(), "-".into()]
        } else {
            [
                cell(spec, Property::CpuQuotaPerSecUSec),
                cell(spec, Property::MemoryMax),
                cell(spec, Property::MemoryHigh),
                cell(spec, Property::TasksMax),
            ]
        };
        let [a, b, c, d] = limits;
        rows.push([spec.slice.to_string(), kind.into(), user, a, b, c, d]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[derive(Debug, Serialize)]
struct CheckReport {
    ok: bool,
    groups: usize,
    users: usize,
    overrides: usize,
    problems: Vec<Diagnostic>,
}

pub fn check_config(globals: &Globals) -> CliResult {
    let report = match config::load(&globals.config) {
        Ok(c) => CheckReport {
            ok: true,
            groups: c.groups.len(),
            users: c.members.len(),
            overrides: c.overrides.len(),
            problems: c.warnings.clone(),
        },
        Err(config::ConfigError::Invalid(d)) => CheckReport {
            ok: false,
            groups: 0,
            users: 0,
            overrides: 0,
            problems: d.items,
        },
        Err(
            e @ (config::ConfigError::Unreadable { .. }
            | config::ConfigError::Untrusted { .. }
            | config::ConfigError::Changed { .. }),
        ) if globals.json => CheckReport {
            ok: false,
            groups: 0,
            users: 0,
            overrides: 0,
            problems: vec![Diagnostic::error(
                Location::new(&globals.config, None),
                e.to_string(),
            )],
        },
        Err(e) => return Err(e.into()),
    };
    if globals.json {
        out::json(&report)?;
    } else {
        for p in &report.problems {
            out::stderr(&p.to_string());
        }
        let errors = report
            .problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .count();
        if report.ok {
            out::stdout(&format!(
                "{}: ok ({} groups, {} listed users, {} overrides, {} warnings)\n",
                globals.config.display(),
                report.groups,
                report.users,
                report.overrides,
                report.problems.len()
            ))?;
        } else {
            out::stderr(&format!(
                "{}: {errors} error(s); fix them and run check-config again",
                globals.config.display()
            ));
        }
    }
    Ok(if report.ok { Exit::Ok } else { Exit::Usage })
}
