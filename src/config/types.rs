//! What a validated configuration is: its errors, its groups, members and overrides, and
//! [`Config`], which resolves every user. No stage's code: `read.rs`, `yaml.rs` and
//! `validate.rs` build these, and everything outside the module uses them.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::Value as Json;

use crate::error::{Exit, ExitStatus};
use crate::model::diagnostics::{Diagnostic, Diagnostics, Location};
use crate::model::names::{GroupName, SanitizedUser, SliceName, UserName};
use crate::model::values::{CpuQuota, MemoryLimit, TasksLimit};
pub const DEFAULT_CONFIG_PATH: &str = "/opt/ds01-infra/config/resource-limits.yaml";
pub const OVERRIDES_FILE: &str = "user-overrides.yaml";
pub const GROUPS_DIR: &str = "groups";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {reason}; pass --config PATH or set DS01_CONFIG to the resource-limits.yaml to use")]
    Unreadable { path: PathBuf, reason: String },
    #[error("refusing configuration file {path}: {reason}; nothing was changed")]
    Untrusted { path: PathBuf, reason: String },
    /// Every attempt found a file changing: a non-atomic write, or a writer that never stops.
    #[error("{path} changed while it was read ({attempts} reads in {millis} ms); rerun, and replace configuration files atomically (write a copy, then `mv` it over); nothing was changed")]
    Changed {
        path: PathBuf,
        attempts: usize,
        millis: u128,
    },
    #[error("{}", render_invalid(.0))]
    Invalid(Diagnostics),
    /// Only from `state::cache::for_hook`: the configuration is valid but gives the hook's user no slice.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
}

impl ExitStatus for ConfigError {
    fn exit_code(&self) -> Exit {
        Exit::Usage
    }
}

fn render_invalid(d: &Diagnostics) -> String {
    let mut out = String::new();
    for item in &d.items {
        let _ = writeln!(out, "{item}");
    }
    let n = d.errors().count();
    let _ = write!(
        out,
        "configuration has {n} error{}; nothing was changed",
        if n == 1 { "" } else { "s" }
    );
    out
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Name(#[from] crate::model::names::NameError),
    #[error("user {0:?} is in no members file and the configuration has no default_group; add the user to a groups/<group>.members file or set default_group")]
    NoGroup(String),
}

impl ExitStatus for ResolveError {
    fn exit_code(&self) -> Exit {
        Exit::Usage
    }
}

/// Limits of one aggregate section, or of a user's effective (merged) aggregate.
/// `None` means the key is not set; `Infinity` values lift a limit explicitly.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Aggregate {
    pub cpu_quota: Option<CpuQuota>,
    pub memory_max: Option<MemoryLimit>,
    pub memory_high: Option<MemoryLimit>,
    pub tasks_max: Option<TasksLimit>,
    pub gpu_limit: Option<Written>,
    /// The section as written (keys in file order, values as in the YAML), for `show`.
    pub raw: Vec<(String, Written)>,
}

/// A value as the YAML wrote it, for `show`: JSON, or the infinite float YAML writes `.inf`
/// (a `gpu_limit` may be one), which JSON cannot hold and Python's `json.dumps` prints as
/// `Infinity`.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    Json(Json),
    Infinity,
}

impl Written {
    /// As strict JSON: `Infinity` has no JSON form and becomes null, as serde_json makes it.
    pub fn to_json(&self) -> Json {
        match self {
            Written::Json(v) => v.clone(),
            Written::Infinity => Json::Null,
        }
    }
}

impl std::fmt::Display for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Written::Json(v) => write!(f, "{v}"),
            Written::Infinity => f.write_str("Infinity"),
        }
    }
}

impl Aggregate {
    /// Key-by-key merge: every key the override sets replaces the base's.
    fn merged_with(&self, over: &Aggregate) -> Aggregate {
        let mut raw = self.raw.clone();
        for (key, value) in &over.raw {
            match raw.iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1 = value.clone(),
                None => raw.push((key.clone(), value.clone())),
            }
        }
        Aggregate {
            cpu_quota: over.cpu_quota.or(self.cpu_quota),
            memory_max: over.memory_max.or(self.memory_max),
            memory_high: over.memory_high.or(self.memory_high),
            tasks_max: over.tasks_max.or(self.tasks_max),
            gpu_limit: over.gpu_limit.clone().or_else(|| self.gpu_limit.clone()),
            raw,
        }
    }

    /// The section as strict JSON (see [`Written::to_json`]).
    pub fn raw_json(&self) -> Json {
        Json::Object(
            self.raw
                .iter()
                .map(|(k, v)| (k.clone(), v.to_json()))
                .collect(),
        )
    }
}

#[derive(Debug, Clone)]
pub struct Group {
    pub name: GroupName,
    /// `None`: the group has no aggregate section, so its users are uncapped.
    pub aggregate: Option<Aggregate>,
    pub members_file: PathBuf,
    pub location: Location,
}

/// A user listed in a members file, with the group that file gives them.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: UserName,
    pub sanitized: SanitizedUser,
    pub group: GroupName,
    pub location: Location,
}

#[derive(Debug, Clone)]
pub enum OverrideAggregate {
    /// `aggregate: null`: this user is uncapped.
    Uncapped,
    Merge(Aggregate),
}

#[derive(Debug, Clone)]
pub struct UserOverride {
    pub user: UserName,
    pub aggregate: Option<OverrideAggregate>,
    pub location: Location,
}

/// The whole configuration, validated: every value parsed, every name checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub aggregate_limits: bool,
    pub default_group: Option<GroupName>,
    pub groups: Vec<Group>,
    /// Every listed user once, in group order then file order.
    pub members: Vec<Member>,
    pub overrides: Vec<UserOverride>,
    pub warnings: Vec<Diagnostic>,
    pub(super) member_index: MemberIndex,
    // Resolution runs once per user in a plan: indexed, not scanned. The hook's record
    // (`state::cache`) reproduces exactly these two maps, so it reads them rather than rebuild them.
    pub(crate) override_by_name: HashMap<String, usize>,
    pub(crate) override_by_sanitized: HashMap<String, usize>,
}

/// Finds members by name, then by sanitized name (the first listed wins). Built on the first
/// lookup: `check-config` never needs it, and building it for 1,000 members is not free.
#[derive(Debug, Default, Clone)]
pub(super) struct MemberIndex(OnceLock<(HashMap<String, usize>, HashMap<String, usize>)>);

impl MemberIndex {
    fn find(&self, members: &[Member], user: &UserName) -> Option<usize> {
        let (by_name, by_sanitized) = self.0.get_or_init(|| {
            let mut by_name = HashMap::with_capacity(members.len());
            let mut by_sanitized = HashMap::with_capacity(members.len());
            for (i, m) in members.iter().enumerate() {
                by_name.entry(m.name.as_str().to_owned()).or_insert(i);
                by_sanitized
                    .entry(m.sanitized.as_str().to_owned())
                    .or_insert(i);
            }
            (by_name, by_sanitized)
        });
        by_name
            .get(user.as_str())
            .or_else(|| by_sanitized.get(user.sanitized().ok()?.as_str()))
            .copied()
    }
}

/// A user as every command sees them: group, slice and effective limits.
#[derive(Debug, Clone)]
pub struct ResolvedUser {
    pub name: UserName,
    pub group: GroupName,
    pub slice: SliceName,
    /// Listed in a members file (otherwise: the default group's user).
    pub listed: bool,
    /// `None`: uncapped.
    pub aggregate: Option<Aggregate>,
}

impl Config {
    pub(super) fn new(
        path: PathBuf,
        aggregate_limits: bool,
        default_group: Option<GroupName>,
        groups: Vec<Group>,
        members: Vec<Member>,
        overrides: Vec<UserOverride>,
    ) -> Config {
        let mut override_by_name = HashMap::new();
        let mut override_by_sanitized = HashMap::new();
        for (i, o) in overrides.iter().enumerate() {
            override_by_name.insert(o.user.as_str().to_owned(), i);
            if let Ok(s) = o.user.sanitized() {
                override_by_sanitized
                    .entry(s.as_str().to_owned())
                    .or_insert(i);
            }
        }
        Config {
            path,
            aggregate_limits,
            default_group,
            groups,
            members,
            overrides,
            warnings: Vec::new(),
            member_index: MemberIndex::default(),
            override_by_name,
            override_by_sanitized,
        }
    }

    pub fn group(&self, name: &GroupName) -> Option<&Group> {
        self.groups.iter().find(|g| &g.name == name)
    }

    /// The member entry for a name: by the name as listed, then by its sanitized form.
    pub fn member(&self, user: &UserName) -> Option<&Member> {
        let index = self.member_index.find(&self.members, user)?;
        self.members.get(index)
    }

    pub(crate) fn override_for(
        &self,
        user: &UserName,
        sanitized: &SanitizedUser,
    ) -> Option<&UserOverride> {
        let index = self
            .override_by_name
            .get(user.as_str())
            .or_else(|| self.override_by_sanitized.get(sanitized.as_str()))?;
        self.overrides.get(*index)
    }

    /// The limits of a user of `group` whose override is `over`: the one merge rule that both
    /// [`Config::resolve`] and the hook's record apply.
    pub(crate) fn effective(
        &self,
        group: &GroupName,
        over: Option<&UserOverride>,
    ) -> Option<Aggregate> {
        let base = self.group(group).and_then(|g| g.aggregate.clone());
        match over.and_then(|o| o.aggregate.as_ref()) {
            None => base,
            Some(OverrideAggregate::Uncapped) => None,
            Some(OverrideAggregate::Merge(over)) => {
                Some(base.unwrap_or_default().merged_with(over))
            }
        }
    }

    /// Group, slice and effective limits of any user, listed or not.
    pub fn resolve(&self, user: &UserName) -> Result<ResolvedUser, ResolveError> {
        let (name, sanitized, group, slice, listed) = match self.member(user) {
            Some(m) => (
                m.name.clone(),
                m.sanitized.clone(),
                m.group.clone(),
                SliceName::user(&m.group, &m.sanitized),
                true,
            ),
            None => {
                let sanitized = user.sanitized()?;
                let group = self
                    .default_group
                    .clone()
                    .ok_or_else(|| ResolveError::NoGroup(user.to_string()))?;
                let slice = SliceName::user(&group, &sanitized);
                (user.clone(), sanitized, group, slice, false)
            }
        };
        let aggregate = self.effective(&group, self.override_for(&name, &sanitized));
        Ok(ResolvedUser {
            name,
            group,
            slice,
            listed,
            aggregate,
        })
    }

    /// Users named only in overrides (not in any members file): they belong to the default
    /// group, and the configuration still names their limits.
    pub fn override_only_users(&self) -> Vec<UserName> {
        self.overrides
            .iter()
            .filter(|o| self.member(&o.user).is_none())
            .map(|o| o.user.clone())
            .collect()
    }
}

pub(super) const MIB: u64 = 1 << 20;

/// Which file of the configuration, for its size cap and its name in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Main,
    Members,
    Overrides,
}

impl Kind {
    /// The largest file accepted: the production file is 14 KiB, a members file of 10,000
    /// users ~300 KiB. Anything far larger is a mistake (a link to a log, to /dev/zero).
    pub(super) const fn cap(self) -> u64 {
        match self {
            Kind::Main => MIB,
            Kind::Members | Kind::Overrides => 4 * MIB,
        }
    }

    pub(super) const fn noun(self) -> &'static str {
        match self {
            Kind::Main => "configuration file",
            Kind::Members => "members file",
            Kind::Overrides => "overrides file",
        }
    }
}

/// `memory_high` above `memory_max`, as the error at `location` (a group's or an override's,
/// before and after merging).
pub(super) fn check_high_below_max(
    agg: &Aggregate,
    location: &Location,
    owner: &str,
    diags: &mut Diagnostics,
) {
    if let (Some(MemoryLimit::Bytes(high)), Some(MemoryLimit::Bytes(max))) =
        (agg.memory_high, agg.memory_max)
    {
        if high > max {
            diags.error(location.clone(), format!(
                "memory_high of {owner} ({}) is above its memory_max ({}): the soft limit must not exceed the hard limit; lower memory_high or raise memory_max",
                MemoryLimit::Bytes(high),
                MemoryLimit::Bytes(max)
            ));
        }
    }
}
