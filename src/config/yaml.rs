//! Stage "raw": YAML text to a [`RawConfig`] whose every problem names its line. Every
//! serde_yaml call of the crate is in this file (serde_yaml is deprecated upstream; replacing
//! it must touch nothing else), and nothing here reads a file.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

use super::lines::LineIndex;
use super::nesting;
use super::types::check_high_below_max;
use super::{Aggregate, Group, OverrideAggregate, UserOverride, Written, GROUPS_DIR};
use crate::model::diagnostics::{Diagnostics, Location};
use crate::model::names::{GroupName, UserName};
use crate::model::values::{CpuQuota, MemoryLimit, TasksLimit, ValueError};

/// Keys of `aggregate:` that become slice properties.
const APPLIED_KEYS: [&str; 4] = ["cpu_quota", "memory_max", "memory_high", "tasks_max"];
/// Keys of `aggregate:` other DS01 tools read; shown, never applied.
const KNOWN_UNAPPLIED_KEYS: [&str; 1] = ["gpu_limit"];
/// Unknown keys this close to a known one (in edits) are named as the likely typo.
const TYPO_DISTANCE: usize = 3;

/// The main file after the YAML stage: structure checked, values parsed.
#[derive(Debug)]
pub struct RawConfig {
    pub(super) path: PathBuf,
    pub(super) aggregate_limits: bool,
    pub(super) default_group: Option<(GroupName, Location)>,
    /// Every group in file order: each names a members file to read.
    pub(super) group_names: Vec<(GroupName, Location)>,
    pub(super) groups: Vec<Group>,
    pub(super) inline_overrides: Vec<UserOverride>,
}

/// Context for walking one YAML document: where it is, and how to find lines in it.
struct Doc<'a> {
    path: &'a Path,
    lines: LineIndex<'a>,
}

impl Doc<'_> {
    fn at(&self, keys: &[&str]) -> Location {
        Location::new(self.path, self.lines.find(keys).or(Some(1)))
    }
}

fn yaml_key(key: &Yaml) -> Option<String> {
    match key {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn type_name(v: &Yaml) -> &'static str {
    match v {
        Yaml::Null => "null",
        Yaml::Bool(_) => "a boolean",
        Yaml::Number(_) => "a number",
        Yaml::String(_) => "a string",
        Yaml::Sequence(_) => "a list",
        Yaml::Mapping(_) => "a mapping",
        Yaml::Tagged(_) => "a tagged value",
    }
}

fn to_json(v: &Yaml) -> Json {
    match v {
        Yaml::Null => Json::Null,
        Yaml::Bool(b) => Json::Bool(*b),
        Yaml::Number(n) => {
            if let Some(i) = n.as_i64() {
                Json::from(i)
            } else if let Some(u) = n.as_u64() {
                Json::from(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map(Json::Number)
                    .unwrap_or(Json::Null)
            }
        }
        Yaml::String(s) => Json::String(s.clone()),
        Yaml::Sequence(items) => Json::Array(items.iter().map(to_json).collect()),
        Yaml::Mapping(m) => Json::Object(
            m.iter()
                .filter_map(|(k, v)| Some((yaml_key(k)?, to_json(v))))
                .collect(),
        ),
        Yaml::Tagged(t) => to_json(&t.value),
    }
}

/// `v` as written, an infinite float included (JSON alone would make it null).
fn written(v: &Yaml) -> Written {
    match v {
        Yaml::Number(n) if n.as_f64() == Some(f64::INFINITY) => Written::Infinity,
        other => Written::Json(to_json(other)),
    }
}

fn parse_yaml(path: &Path, text: &str, diags: &mut Diagnostics) -> Option<Yaml> {
    if nesting::refused(path, text, diags) {
        return None;
    }
    match serde_yaml::from_str::<Yaml>(text) {
        Ok(v) => Some(v),
        Err(e) => {
            let line = e.location().map(|l| l.line());
            diags.error(
                Location::new(path, line),
                format!(
                    "not valid YAML: {e}; fix the syntax (indentation, quotes, ':' after keys)"
                ),
            );
            None
        }
    }
}

/// The main file's text to a [`RawConfig`]; `None` when it is not even a YAML mapping (the
/// reason is in `diags`).
pub(super) fn parse_main(path: &Path, text: &str, diags: &mut Diagnostics) -> Option<RawConfig> {
    let root = parse_yaml(path, text, diags)?;
    parse_main_yaml(path, text, &root, diags)
}

/// A main document parsed from `text` (which gives the lines) to a [`RawConfig`]. Sections
/// this tool does not use are ignored; inside `aggregate:` every key must be known.
fn parse_main_yaml(
    path: &Path,
    text: &str,
    root: &Yaml,
    diags: &mut Diagnostics,
) -> Option<RawConfig> {
    let doc = Doc {
        path,
        lines: LineIndex::new(text),
    };
    let Yaml::Mapping(root) = root else {
        diags.error(
            Location::new(path, Some(1)),
            format!(
                "the configuration must be a YAML mapping with a `groups:` section, found {}",
                type_name(root)
            ),
        );
        return None;
    };

    let mut aggregate_limits = true;
    match root.get("enforcement") {
        None | Some(Yaml::Null) => {}
        Some(Yaml::Mapping(e)) => {
            match e.get("aggregate_limits") {
                None => {}
                Some(Yaml::Bool(b)) => aggregate_limits = *b,
                Some(other) => diags.error(
                    doc.at(&["enforcement", "aggregate_limits"]),
                    format!(
                        "enforcement.aggregate_limits must be true or false, found {}",
                        type_name(other)
                    ),
                ),
            }
            match e.get("cgroup_driver") {
                None | Some(Yaml::Null) => {}
                Some(Yaml::String(s)) if s == "systemd" => {}
                Some(other) => diags.warning(
                    doc.at(&["enforcement", "cgroup_driver"]),
                    format!(
                        "enforcement.cgroup_driver is {:?}: Docker only places containers in ds01 slices with the systemd cgroup driver, so these limits would not cover containers",
                        to_json(other)
                    ),
                ),
            }
        }
        Some(other) => diags.error(
            doc.at(&["enforcement"]),
            format!(
                "`enforcement` must be a mapping, found {}",
                type_name(other)
            ),
        ),
    }

    let mut group_names = Vec::new();
    let mut groups = Vec::new();
    match root.get("groups") {
        Some(Yaml::Mapping(m)) => {
            for (key, body) in m {
                let Some(key) = yaml_key(key) else {
                    diags.error(doc.at(&["groups"]), "a group name must be a plain string");
                    continue;
                };
                let location = doc.at(&["groups", &key]);
                let name = match GroupName::new(&key) {
                    Ok(n) => n,
                    Err(e) => {
                        diags.error(location, format!("{e}; rename the group and its members file"));
                        continue;
                    }
                };
                let aggregate = match body {
                    Yaml::Null => None,
                    Yaml::Mapping(body) => match body.get("aggregate") {
                        None | Some(Yaml::Null) => None,
                        Some(agg) => parse_aggregate(&doc, &["groups", &key, "aggregate"], agg, &format!("group {key}"), diags),
                    },
                    other => {
                        diags.error(location.clone(), format!("group `{key}` must be a mapping of settings, found {}", type_name(other)));
                        None
                    }
                };
                if let Some(agg) = &aggregate {
                    check_high_below_max(agg, &doc.at(&["groups", &key, "aggregate", "memory_high"]), &format!("group {key}"), diags);
                }
                group_names.push((name.clone(), location.clone()));
                groups.push(Group {
                    members_file: path
                        .parent()
                        .unwrap_or(Path::new(""))
                        .join(GROUPS_DIR)
                        .join(format!("{key}.members")),
                    name,
                    aggregate,
                    location,
                });
            }
        }
        None => diags.error(Location::new(path, Some(1)), "no `groups:` section: define at least one group (e.g. student) with an `aggregate:` section"),
        Some(other) => diags.error(doc.at(&["groups"]), format!("`groups` must be a mapping of group names, found {}", type_name(other))),
    }

    let default_group = match root.get("default_group") {
        None | Some(Yaml::Null) => None,
        Some(Yaml::String(s)) => {
            let location = doc.at(&["default_group"]);
            match GroupName::new(s) {
                Ok(g) if group_names.iter().any(|(n, _)| n == &g) => Some((g, location)),
                Ok(g) => {
                    diags.error(location, format!("default_group `{g}` is not defined under `groups:`; name one of the groups defined there"));
                    None
                }
                Err(e) => {
                    diags.error(location, e.to_string());
                    None
                }
            }
        }
        Some(other) => {
            diags.error(
                doc.at(&["default_group"]),
                format!(
                    "default_group must be a group name, found {}",
                    type_name(other)
                ),
            );
            None
        }
    };

    let inline_overrides = match root.get("user_overrides") {
        None | Some(Yaml::Null) => Vec::new(),
        Some(v) => parse_overrides(&doc, &["user_overrides"], v, diags),
    };

    Some(RawConfig {
        path: path.to_owned(),
        aggregate_limits,
        default_group,
        group_names,
        groups,
        inline_overrides,
    })
}

fn closest_key(key: &str) -> Option<&'static str> {
    APPLIED_KEYS
        .iter()
        .chain(KNOWN_UNAPPLIED_KEYS.iter())
        .map(|k| (strsim::levenshtein(key, k), *k))
        .filter(|(d, _)| *d <= TYPO_DISTANCE)
        .min()
        .map(|(_, k)| k)
}

fn parse_aggregate(
    doc: &Doc,
    at: &[&str],
    value: &Yaml,
    owner: &str,
    diags: &mut Diagnostics,
) -> Option<Aggregate> {
    let Yaml::Mapping(m) = value else {
        diags.error(doc.at(at), format!("aggregate of {owner} must be a mapping (cpu_quota, memory_max, memory_high, tasks_max), found {}", type_name(value)));
        return None;
    };
    // Problems are recorded in `diags`; the partial result still goes on to the cross-key
    // checks so that one run reports everything.
    let mut agg = Aggregate::default();
    for (key, v) in m {
        let Some(key) = yaml_key(key) else {
            diags.error(
                doc.at(at),
                format!("aggregate of {owner} has a key that is not a string"),
            );
            continue;
        };
        let mut path = at.to_vec();
        path.push(&key);
        // Only a problem needs its line: finding it scans the file.
        let location = || doc.at(&path);
        let scalar = match v {
            Yaml::String(s) => Some(s.clone()),
            Yaml::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let wrong_type = |diags: &mut Diagnostics, expected: &str| {
            diags.error(
                location(),
                format!(
                    "{key} of {owner} must be {expected}, found {}",
                    type_name(v)
                ),
            );
        };
        let report = |diags: &mut Diagnostics, e: ValueError| {
            diags.error(location(), format!("{key} of {owner}: {e}"));
        };
        match key.as_str() {
            "cpu_quota" => match (v, &scalar) {
                (Yaml::String(_) | Yaml::Number(_), Some(s)) => match CpuQuota::parse(s) {
                    Ok(parsed) => {
                        if let Some(from) = parsed.rounded_up_from {
                            diags.warning(location(), format!(
                                "cpu_quota of {owner}: {from}% is not a whole percent; rounded up to {} because older systemd truncates fractions at the next reload",
                                parsed.quota
                            ));
                        }
                        agg.cpu_quota = Some(parsed.quota);
                    }
                    Err(e) => report(diags, e),
                },
                _ => wrong_type(diags, "a percentage string such as \"9600%\""),
            },
            "memory_max" | "memory_high" => {
                let parsed = match v {
                    Yaml::String(s) => Some(MemoryLimit::parse(s)),
                    Yaml::Number(n) => {
                        match n.as_i64().map(i128::from).or(n.as_u64().map(i128::from)) {
                            Some(i) => Some(MemoryLimit::from_integer(i, &n.to_string())),
                            None => Some(Err(ValueError::NotANumber(n.to_string()))),
                        }
                    }
                    _ => None,
                };
                match parsed {
                    Some(Ok(m)) if key == "memory_max" => agg.memory_max = Some(m),
                    Some(Ok(m)) => agg.memory_high = Some(m),
                    Some(Err(e)) => report(diags, e),
                    None => wrong_type(diags, "a size such as \"96G\" or \"infinity\""),
                }
            }
            "tasks_max" => {
                let parsed = match v {
                    Yaml::String(s) => Some(TasksLimit::parse(s)),
                    Yaml::Number(n) => {
                        match n.as_i64().map(i128::from).or(n.as_u64().map(i128::from)) {
                            Some(i) => Some(TasksLimit::from_integer(i, &n.to_string())),
                            None => Some(Err(ValueError::NotATaskCount(n.to_string()))),
                        }
                    }
                    _ => None,
                };
                match parsed {
                    Some(Ok(t)) => agg.tasks_max = Some(t),
                    Some(Err(e)) => report(diags, e),
                    None => wrong_type(diags, "an integer or \"infinity\""),
                }
            }
            "gpu_limit" => match v {
                Yaml::Number(n) if n.as_f64().is_some_and(f64::is_nan) => {
                    report(diags, ValueError::NotANumber(n.to_string()));
                }
                Yaml::Number(n) if n.as_f64().is_some_and(|f| f < 0.0) => {
                    report(diags, ValueError::Negative(n.to_string()));
                }
                Yaml::Number(_) | Yaml::Null => agg.gpu_limit = Some(written(v)),
                _ => wrong_type(diags, "a number (GPU-equivalents) or null"),
            },
            other => {
                let hint = match closest_key(other) {
                    Some(k) => format!("did you mean `{k}`?"),
                    None => "known keys: cpu_quota, memory_max, memory_high, tasks_max, gpu_limit"
                        .to_owned(),
                };
                diags.error(location(), format!(
                    "unknown key `{other}` in the aggregate of {owner} in {}; {hint} (an unknown key would silently drop a limit)",
                    doc.path.display()
                ));
            }
        }
        agg.raw.push((key.clone(), written(v)));
    }
    Some(agg)
}

fn parse_overrides(
    doc: &Doc,
    at: &[&str],
    value: &Yaml,
    diags: &mut Diagnostics,
) -> Vec<UserOverride> {
    let Yaml::Mapping(m) = value else {
        diags.error(
            doc.at(at),
            format!(
                "user overrides must be a mapping `username: {{aggregate: {{...}}}}`, found {}",
                type_name(value)
            ),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    let lines = doc.lines.child_lines(at);
    for (key, settings) in m {
        let Some(user) = yaml_key(key) else {
            diags.error(doc.at(at), "an override's user name must be a plain string");
            continue;
        };
        let mut path = at.to_vec();
        path.push(&user);
        let location = match lines.get(&user) {
            Some(line) => Location::new(doc.path, Some(*line)),
            None => doc.at(&path),
        };
        let name = match UserName::new(&user) {
            Ok(n) => n,
            Err(e) => {
                diags.error(location, e.to_string());
                continue;
            }
        };
        if let Err(e) = name.sanitized() {
            diags.error(location.clone(), e.to_string());
            continue;
        }
        let aggregate = match settings {
            Yaml::Null => None,
            Yaml::Mapping(s) => match s.get("aggregate") {
                None => None,
                Some(Yaml::Null) => Some(OverrideAggregate::Uncapped),
                Some(agg) => {
                    let mut agg_path = path.clone();
                    agg_path.push("aggregate");
                    parse_aggregate(
                        doc,
                        &agg_path,
                        agg,
                        &format!("the override of user {user}"),
                        diags,
                    )
                    .map(OverrideAggregate::Merge)
                }
            },
            other => {
                diags.error(
                    location.clone(),
                    format!(
                        "override of user {user} must be a mapping of settings, found {}",
                        type_name(other)
                    ),
                );
                None
            }
        };
        out.push(UserOverride {
            user: name,
            aggregate,
            location,
        });
    }
    out
}

/// The text of `user-overrides.yaml`: a mapping `username: {settings...}`; empty is fine.
pub(super) fn parse_overrides_file(
    path: &Path,
    text: &str,
    diags: &mut Diagnostics,
) -> Vec<UserOverride> {
    let Some(value) = parse_yaml(path, text, diags) else {
        return Vec::new();
    };
    let doc = Doc {
        path,
        lines: LineIndex::new(text),
    };
    match value {
        Yaml::Null => Vec::new(),
        v => parse_overrides(&doc, &[], &v, diags),
    }
}

/// Only the syntax of `user-overrides.yaml`: when the main file is unusable its entries mean
/// nothing yet, but a syntax error in it is worth reporting in the same run.
pub(super) fn check_overrides_syntax(path: &Path, text: &str, diags: &mut Diagnostics) {
    parse_yaml(path, text, diags);
}
