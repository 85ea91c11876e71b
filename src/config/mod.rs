//! The DS01 configuration: `resource-limits.yaml`, `groups/<group>.members` and
//! `user-overrides.yaml`, read in stages — text → raw YAML → validated [`Config`].
//!
//! Every YAML call of the crate lives in this module (serde_yaml is deprecated upstream;
//! replacing it must stay a one-file change). Parsing is pure (`parse_*` take text);
//! only [`load`] touches the file system.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

use crate::model::diagnostics::{Diagnostic, Diagnostics, Location};
use crate::model::names::{self, GroupName, SanitizedUser, SliceName, UserName};
use crate::model::values::{CpuQuota, MemoryLimit, TasksLimit, ValueError};

pub const DEFAULT_CONFIG_PATH: &str = "/opt/ds01-infra/config/resource-limits.yaml";
pub const OVERRIDES_FILE: &str = "user-overrides.yaml";
pub const GROUPS_DIR: &str = "groups";

/// Keys of `aggregate:` that become slice properties.
const APPLIED_KEYS: [&str; 4] = ["cpu_quota", "memory_max", "memory_high", "tasks_max"];
/// Keys of `aggregate:` other DS01 tools read; shown, never applied.
const KNOWN_UNAPPLIED_KEYS: [&str; 1] = ["gpu_limit"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {reason}; pass --config PATH or set DS01_CONFIG to the resource-limits.yaml to use")]
    Unreadable { path: PathBuf, reason: String },
    #[error("{}", render_invalid(.0))]
    Invalid(Diagnostics),
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

/// Limits of one aggregate section, or of a user's effective (merged) aggregate.
/// `None` means the key is not set; `Infinity` values lift a limit explicitly.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Aggregate {
    pub cpu_quota: Option<CpuQuota>,
    pub memory_max: Option<MemoryLimit>,
    pub memory_high: Option<MemoryLimit>,
    pub tasks_max: Option<TasksLimit>,
    pub gpu_limit: Option<Json>,
    /// The section as written (keys in file order, values as in the YAML), for `show`.
    pub raw: Vec<(String, Json)>,
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

    pub fn raw_json(&self) -> Json {
        Json::Object(self.raw.iter().cloned().collect())
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
    member_index: MemberIndex,
    // Resolution runs once per user in a plan: indexed, not scanned.
    override_by_name: HashMap<String, usize>,
    override_by_sanitized: HashMap<String, usize>,
}

/// Finds members by name, then by sanitized name (the first listed wins). Built on the first
/// lookup: a hook's configuration, taken for one user, holds at most one member, and a plan
/// looks up every member.
#[derive(Debug, Default, Clone)]
struct MemberIndex(OnceLock<(HashMap<String, usize>, HashMap<String, usize>)>);

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

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Name(#[from] crate::model::names::NameError),
    #[error("user {0:?} is in no members file and the configuration has no default_group; add the user to a groups/<group>.members file or set default_group")]
    NoGroup(String),
}

impl Config {
    fn new(
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

    fn override_for(&self, user: &UserName, sanitized: &SanitizedUser) -> Option<&UserOverride> {
        let index = self
            .override_by_name
            .get(user.as_str())
            .or_else(|| self.override_by_sanitized.get(sanitized.as_str()))?;
        self.overrides.get(*index)
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
        let base = self.group(&group).and_then(|g| g.aggregate.clone());
        let aggregate = match self
            .override_for(&name, &sanitized)
            .and_then(|o| o.aggregate.as_ref())
        {
            None => base,
            Some(OverrideAggregate::Uncapped) => None,
            Some(OverrideAggregate::Merge(over)) => {
                Some(base.unwrap_or_default().merged_with(over))
            }
        };
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

/// Reads the configuration rooted at `path` (the YAML; members and overrides beside it).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    Sources::read(path)?.validate()
}

/// Every file a configuration is made of, as read, with its YAML parsed (the main file
/// names the members files). Stage one of loading; [`Sources::validate`] is stage two.
#[derive(Debug)]
pub struct Sources {
    main: String,
    /// The main file's document; `None` when it is not valid YAML (an error in `diags`).
    main_yaml: Option<Yaml>,
    raw: Option<RawConfig>,
    members: Vec<MembersFile>,
    overrides: Option<OverridesFile>,
    diags: Diagnostics,
    /// Read through a record whose configuration is byte for byte the one on disk now.
    trusted: bool,
}

#[derive(Debug)]
struct OverridesFile {
    path: PathBuf,
    text: String,
    /// `None`: not valid YAML (an error in the sources' diagnostics).
    yaml: Option<Yaml>,
}

/// First line of a record written by [`Sources::remembered`]; another first line (an older
/// format) is not trusted.
const RECORD_HEADER: &str = "ds01-slices validated configuration, format 2";

/// What [`Sources::remembered`] keeps of a configuration that a full validation accepted:
/// the digest of every file, and the parts of both YAML documents that this tool reads,
/// already parsed. A hook whose files still have that digest parses no YAML at all:
/// serde_yaml reads ~7 MB/s, and the overrides of 1,000 users took a hook ~1 ms.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    digest: String,
    main: Yaml,
    /// Null when there is no overrides file (the digest tells the two apart).
    overrides: Yaml,
}

impl Sources {
    pub fn read(path: &Path) -> Result<Sources, ConfigError> {
        Sources::read_trusting(path, None)
    }

    /// [`Sources::read`], taking the parsed YAML from `record` (what [`Sources::remembered`]
    /// returned after a full validation) when every file is still exactly as it was then.
    /// [`Sources::trusted`] says whether it was.
    pub fn read_trusting(path: &Path, record: Option<&str>) -> Result<Sources, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        if let Some(record) = record.and_then(Record::parse) {
            let mut diags = Diagnostics::default();
            let raw = parse_main_yaml(path, &text, &record.main, &mut diags);
            let mut sources = Sources::read_beside(path, text, raw, diags);
            if sources.trust(record) {
                return Ok(sources);
            }
            // Something changed: read again as if there were no record (the main file may
            // now name other members files).
            return Ok(Sources::parse_and_read_beside(path, sources.main));
        }
        Ok(Sources::parse_and_read_beside(path, text))
    }

    fn parse_and_read_beside(path: &Path, text: String) -> Sources {
        let mut diags = Diagnostics::default();
        let (main_yaml, raw) = parse_main(path, &text, &mut diags);
        Sources::read_beside(path, text, raw, diags).with_yaml_parsed(main_yaml)
    }

    /// Takes the YAML of `record` if it is the record of exactly these files; false (and
    /// nothing taken) otherwise.
    fn trust(&mut self, record: Record) -> bool {
        if self.digest() != record.digest {
            return false;
        }
        self.main_yaml = Some(record.main);
        if let Some(o) = &mut self.overrides {
            o.yaml = Some(record.overrides);
        }
        self.trusted = true;
        true
    }

    /// Sources without a record: the main document as parsed, and the overrides parsed.
    fn with_yaml_parsed(mut self, main_yaml: Option<Yaml>) -> Sources {
        self.main_yaml = main_yaml;
        if let Some(o) = &mut self.overrides {
            o.yaml = parse_yaml(&o.path, &o.text, &mut self.diags);
        }
        self
    }

    /// The members files that `raw` names and the overrides file, read; the overrides not
    /// parsed yet.
    fn read_beside(
        path: &Path,
        text: String,
        raw: Option<RawConfig>,
        mut diags: Diagnostics,
    ) -> Sources {
        let dir = path.parent().map(Path::to_owned).unwrap_or_default();
        let mut members = Vec::new();
        for (group, _) in raw
            .as_ref()
            .map(|r| r.group_names.as_slice())
            .unwrap_or_default()
        {
            let file = dir.join(GROUPS_DIR).join(format!("{group}.members"));
            match std::fs::read(&file) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(text) => members.push(MembersFile { group: group.clone(), path: file, text }),
                    Err(_) => diags.error(
                        Location::new(&file, None),
                        "members file is not valid UTF-8; save it as UTF-8 text, one user name per line",
                    ),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => diags.error(
                    Location::new(&file, None),
                    format!("cannot read members file: {e}; fix its permissions or type (it must be a readable text file)"),
                ),
            }
        }
        let overrides_path = dir.join(OVERRIDES_FILE);
        let overrides = match std::fs::read_to_string(&overrides_path) {
            Ok(text) => Some(OverridesFile {
                path: overrides_path,
                text,
                yaml: None,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                diags.error(
                    Location::new(&overrides_path, None),
                    format!(
                        "cannot read overrides file: {e}; fix its permissions or encoding (UTF-8 YAML)"
                    ),
                );
                None
            }
        };
        Sources {
            main: text,
            main_yaml: None,
            raw,
            members,
            overrides,
            diags,
            trusted: false,
        }
    }

    /// The same stage from texts in memory (tests and tools).
    pub fn from_texts(
        path: &Path,
        main: &str,
        members: &[(&str, &str)],
        overrides: Option<&str>,
    ) -> Sources {
        let mut diags = Diagnostics::default();
        let (main_yaml, raw) = parse_main(path, main, &mut diags);
        Sources::beside_texts(path, main, raw, diags, members, overrides)
            .with_yaml_parsed(main_yaml)
    }

    /// [`Sources::read_trusting`] from texts in memory: `None` unless `record` is the record
    /// of exactly these texts.
    pub fn from_texts_trusting(
        path: &Path,
        main: &str,
        members: &[(&str, &str)],
        overrides: Option<&str>,
        record: &str,
    ) -> Option<Sources> {
        let record = Record::parse(record)?;
        let mut diags = Diagnostics::default();
        let raw = parse_main_yaml(path, main, &record.main, &mut diags);
        let mut sources = Sources::beside_texts(path, main, raw, diags, members, overrides);
        sources.trust(record).then_some(sources)
    }

    fn beside_texts(
        path: &Path,
        main: &str,
        raw: Option<RawConfig>,
        diags: Diagnostics,
        members: &[(&str, &str)],
        overrides: Option<&str>,
    ) -> Sources {
        let dir = path.parent().unwrap_or(Path::new(""));
        let members = members
            .iter()
            .filter_map(|(group, text)| {
                Some(MembersFile {
                    group: GroupName::new(group).ok()?,
                    path: dir.join(GROUPS_DIR).join(format!("{group}.members")),
                    text: (*text).to_owned(),
                })
            })
            .collect();
        Sources {
            main: main.to_owned(),
            main_yaml: None,
            raw,
            members,
            overrides: overrides.map(|text| OverridesFile {
                path: dir.join(OVERRIDES_FILE),
                text: text.to_owned(),
                yaml: None,
            }),
            diags,
            trusted: false,
        }
    }

    /// A digest of every input and of this build's rules: two equal digests mean the same
    /// configuration under the same validation.
    pub fn digest(&self) -> String {
        use md5::{Digest as _, Md5};
        let mut md5 = Md5::new();
        let mut part = |label: &str, text: &str| {
            // Lengths keep the parts apart: no two different inputs hash the same stream.
            md5.update(format!("{label}\0{}\0", text.len()));
            md5.update(text);
        };
        part("ds01-slices", env!("CARGO_PKG_VERSION"));
        part("main", &self.main);
        for m in &self.members {
            part(m.group.as_str(), &m.text);
        }
        if let Some(o) = &self.overrides {
            part("overrides", &o.text);
        }
        md5.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether these sources were read through a record of a configuration that a full
    /// validation accepted, unchanged since (see [`Sources::read_trusting`]).
    pub fn trusted(&self) -> bool {
        self.trusted
    }

    /// The record to keep once [`Sources::validate`] has accepted these sources, for
    /// [`Sources::read_trusting`]. `None` when the parts of the YAML this tool reads would not
    /// come back from the record exactly as parsed (YAML that JSON cannot hold, such as a
    /// NaN): such a configuration is then validated in full by every hook.
    pub fn remembered(&self) -> Option<String> {
        let main = reduced_main(self.main_yaml.as_ref()?);
        let overrides = match &self.overrides {
            Some(o) => reduced_overrides(o.yaml.as_ref()?),
            None => Yaml::Null,
        };
        let record = Record {
            digest: self.digest(),
            main,
            overrides,
        };
        let json = serde_json::to_string(&record).ok()?;
        let back = Record::parse(&format!("{RECORD_HEADER}\n{json}"))?;
        // The record must give every later hook exactly what the files give now.
        let path = self.raw.as_ref()?.path.as_path();
        let same_main = {
            let (mut a, mut b) = (Diagnostics::default(), Diagnostics::default());
            let from_file = parse_main_yaml(path, &self.main, self.main_yaml.as_ref()?, &mut a);
            let from_record = parse_main_yaml(path, &self.main, &back.main, &mut b);
            format!("{from_file:?}{a:?}") == format!("{from_record:?}{b:?}")
        };
        let same_overrides = match &self.overrides {
            None => true,
            Some(o) => {
                let (mut a, mut b) = (Diagnostics::default(), Diagnostics::default());
                let from_file = parse_overrides_yaml(&o.path, &o.text, o.yaml.as_ref()?, &mut a);
                let from_record = parse_overrides_yaml(&o.path, &o.text, &back.overrides, &mut b);
                format!("{from_file:?}{a:?}") == format!("{from_record:?}{b:?}")
            }
        };
        (same_main && same_overrides).then(|| format!("{RECORD_HEADER}\n{json}\n"))
    }

    /// Stage two: every user, every value checked.
    pub fn validate(self) -> Result<Config, ConfigError> {
        match self.raw {
            Some(raw) => validate(
                raw,
                &self.members,
                self.overrides.as_ref().and_then(OverridesFile::parsed),
                self.diags,
            ),
            None => Err(ConfigError::Invalid(self.diags)),
        }
    }

    /// Stage two for sources whose [`digest`](Sources::digest) a full validation accepted
    /// before: only the lines that decide `user` are taken, so a hook does not check
    /// thousands of other members again. Resolves `user` exactly as [`Sources::validate`]
    /// would (a property test holds it to that).
    pub fn trusted_for_user(self, user: &UserName) -> Result<Config, ConfigError> {
        let Some(raw) = self.raw else {
            return Err(ConfigError::Invalid(self.diags));
        };
        let mut diags = self.diags;
        let wanted = user.sanitized().ok();
        let mut scratch = String::new();
        let mut may_be_the_users = |key: &Yaml| {
            yaml_key(key).is_some_and(|k| {
                k == user.as_str()
                    || wanted
                        .as_ref()
                        .is_some_and(|w| names::sanitizes_to(&k, w, &mut scratch))
            })
        };
        // Only the entries that can be this user's override (by name or by sanitized form,
        // as `Config::override_for` looks them up), in their order: the others were checked
        // by the validation the record stands for, and typing them all costs a hook more
        // than anything else it does with the configuration.
        let own_entries = self.overrides.as_ref().and_then(|o| {
            let yaml = match o.yaml.as_ref()? {
                Yaml::Mapping(m) => Yaml::Mapping(
                    m.iter()
                        .filter(|(k, _)| may_be_the_users(k))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                ),
                other => other.clone(),
            };
            Some((o, yaml))
        });
        let overrides = merge_overrides(
            raw.inline_overrides,
            own_entries
                .as_ref()
                .map(|(o, yaml)| (o.path.as_path(), o.text.as_str(), yaml)),
            &mut diags,
        );
        // As `Config::member`: the first line with the name, else the first with its
        // sanitized form (which is always a line the full validation keeps).
        let files: Vec<(&GroupName, &MembersFile)> = raw
            .group_names
            .iter()
            .filter_map(|(group, _)| {
                Some((group, self.members.iter().find(|f| &f.group == group)?))
            })
            .collect();
        let found = |group: &GroupName, file: &MembersFile, line, name, sanitized| Member {
            name,
            sanitized,
            group: group.clone(),
            location: Location::new(&file.path, Some(line)),
        };
        let by_name = files.iter().find_map(|(group, file)| {
            let (line, _) = member_entries(&file.text).find(|(_, e)| *e == user.as_str())?;
            Some(found(
                group,
                file,
                line,
                user.clone(),
                user.sanitized().ok()?,
            ))
        });
        let member = by_name.or_else(|| {
            let wanted = wanted.as_ref()?;
            files.iter().find_map(|(group, file)| {
                member_entries(&file.text).find_map(|(line, entry)| {
                    if !names::sanitizes_to(entry, wanted, &mut scratch) {
                        return None;
                    }
                    let name = UserName::new(entry).ok()?;
                    Some(found(group, file, line, name, wanted.clone()))
                })
            })
        });
        if diags.has_errors() {
            return Err(ConfigError::Invalid(diags));
        }
        Ok(Config::new(
            raw.path,
            raw.aggregate_limits,
            raw.default_group.map(|(g, _)| g),
            raw.groups,
            member.into_iter().collect(),
            overrides,
        ))
    }
}

impl OverridesFile {
    fn parsed(&self) -> Option<(&Path, &str, &Yaml)> {
        Some((&self.path, &self.text, self.yaml.as_ref()?))
    }
}

impl Record {
    /// `None` for anything but a record in this format: it is then as if there were none.
    fn parse(text: &str) -> Option<Record> {
        let json = text.strip_prefix(RECORD_HEADER)?.strip_prefix('\n')?;
        serde_json::from_str(json).ok()
    }
}

/// The parts of the main document that [`parse_main_yaml`] reads; DS01's other sections may hold
/// any YAML and are no business of the record.
fn reduced_main(root: &Yaml) -> Yaml {
    let Yaml::Mapping(root) = root else {
        return root.clone();
    };
    let mut out = serde_yaml::Mapping::new();
    for (key, value) in root {
        let value = match key.as_str() {
            Some("enforcement") => only_keys(value, &["aggregate_limits", "cgroup_driver"]),
            Some("groups") => each_entry(value, |v| only_keys(v, &["aggregate"])),
            Some("user_overrides") => reduced_overrides(value),
            Some("default_group") => value.clone(),
            _ => continue,
        };
        out.insert(key.clone(), value);
    }
    Yaml::Mapping(out)
}

/// The parts of an overrides mapping that [`parse_overrides`] reads.
fn reduced_overrides(value: &Yaml) -> Yaml {
    each_entry(value, |v| only_keys(v, &["aggregate"]))
}

fn each_entry(value: &Yaml, f: impl Fn(&Yaml) -> Yaml) -> Yaml {
    match value {
        Yaml::Mapping(m) => Yaml::Mapping(m.iter().map(|(k, v)| (k.clone(), f(v))).collect()),
        other => other.clone(),
    }
}

fn only_keys(value: &Yaml, keys: &[&str]) -> Yaml {
    match value {
        Yaml::Mapping(m) => Yaml::Mapping(
            m.iter()
                .filter(|(k, _)| k.as_str().is_some_and(|k| keys.contains(&k)))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The user names of a members file with their line numbers: `#` starts a comment.
fn member_entries(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(index, line)| {
        let entry = line.split('#').next().unwrap_or_default().trim();
        (!entry.is_empty()).then_some((index + 1, entry))
    })
}

/// The overrides of the main file, each replaced by the overrides file's entry for the
/// same user.
fn merge_overrides(
    inline: Vec<UserOverride>,
    file: Option<(&Path, &str, &Yaml)>,
    diags: &mut Diagnostics,
) -> Vec<UserOverride> {
    let mut overrides = inline;
    if let Some((path, text, yaml)) = file {
        for o in parse_overrides_yaml(path, text, yaml, diags) {
            overrides.retain(|existing| existing.user != o.user);
            overrides.push(o);
        }
    }
    overrides
}

/// One members file's content.
#[derive(Debug, Clone)]
pub struct MembersFile {
    pub group: GroupName,
    pub path: PathBuf,
    pub text: String,
}

/// The main file after the YAML stage: structure checked, values parsed.
#[derive(Debug)]
pub struct RawConfig {
    path: PathBuf,
    aggregate_limits: bool,
    default_group: Option<(GroupName, Location)>,
    group_names: Vec<(GroupName, Location)>,
    groups: Vec<Group>,
    inline_overrides: Vec<UserOverride>,
}

/// Finds the line of a key path in block-style YAML by indentation, so that problems found
/// after parsing can still name their line. Flow-style documents fall back to the nearest
/// enclosing key found.
struct LineIndex<'a> {
    /// Indentation and content of each significant line (comments and blanks are `None`),
    /// computed once: every key lookup walks them.
    lines: Vec<Option<(usize, &'a str)>>,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> Self {
        let lines = text
            .lines()
            .map(|l| {
                let t = l.trim_start();
                let significant = !t.is_empty() && !t.starts_with('#') && !t.starts_with("---");
                significant.then_some((l.len() - t.len(), t))
            })
            .collect();
        LineIndex { lines }
    }

    /// Every key directly under `path` (the top level for an empty path) with its line, in
    /// one pass: for mappings with many entries, where one `find` per entry would be
    /// quadratic.
    fn child_lines(&self, path: &[&str]) -> HashMap<String, usize> {
        let (start, end, parent_indent) = match path.is_empty() {
            true => (0, self.lines.len(), None),
            false => {
                let Some(line) = self.find(path) else {
                    return HashMap::new();
                };
                let indent = self.lines[line - 1].map(|(i, _)| i).unwrap_or(0);
                let end = (line..self.lines.len())
                    .find(|&j| self.lines[j].is_some_and(|(i, _)| i <= indent))
                    .unwrap_or(self.lines.len());
                (line, end, Some(indent))
            }
        };
        let Some(child_indent) = self.lines[start..end]
            .iter()
            .flatten()
            .find(|(indent, _)| parent_indent.is_none_or(|p| *indent > p))
            .map(|(indent, _)| *indent)
        else {
            return HashMap::new();
        };
        let mut out = HashMap::new();
        for (i, line) in self.lines.iter().enumerate().take(end).skip(start) {
            let Some((indent, content)) = line else {
                continue;
            };
            if *indent != child_indent {
                continue;
            }
            let Some((key, _)) = content.split_once(':') else {
                continue;
            };
            let key = key.trim().trim_matches('"').trim_matches('\'');
            out.entry(key.to_owned()).or_insert(i + 1);
        }
        out
    }

    fn find(&self, path: &[&str]) -> Option<usize> {
        let (mut start, mut end) = (0, self.lines.len());
        let mut parent_indent: Option<usize> = None;
        let mut found = None;
        for key in path {
            let child_indent = self.lines[start..end]
                .iter()
                .flatten()
                .find(|(indent, _)| parent_indent.is_none_or(|p| *indent > p))
                .map(|(indent, _)| *indent)?;
            let hit = (start..end).find(|&i| {
                self.lines[i].is_some_and(|(indent, content)| {
                    indent == child_indent && key_matches(content, key)
                })
            });
            let Some(i) = hit else { return found };
            found = Some(i + 1);
            let block_end = (i + 1..end)
                .find(|&j| self.lines[j].is_some_and(|(indent, _)| indent <= child_indent))
                .unwrap_or(end);
            start = i + 1;
            end = block_end;
            parent_indent = Some(child_indent);
        }
        found
    }
}

fn key_matches(content: &str, key: &str) -> bool {
    // Runs for every line of every lookup: no allocation here.
    let quoted = |q: char| {
        content
            .strip_prefix(q)
            .and_then(|c| c.strip_prefix(key))
            .and_then(|c| c.strip_prefix(q))
    };
    let rest = content
        .strip_prefix(key)
        .or_else(|| quoted('"'))
        .or_else(|| quoted('\''));
    rest.is_some_and(|r| {
        let r = r.trim_start();
        r.starts_with(':') && (r.len() == 1 || r[1..].starts_with(char::is_whitespace))
    })
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

fn parse_yaml(path: &Path, text: &str, diags: &mut Diagnostics) -> Option<Yaml> {
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

/// Stage one: the main YAML's text to its document and a [`RawConfig`].
fn parse_main(
    path: &Path,
    text: &str,
    diags: &mut Diagnostics,
) -> (Option<Yaml>, Option<RawConfig>) {
    let root = parse_yaml(path, text, diags);
    let raw = root
        .as_ref()
        .and_then(|root| parse_main_yaml(path, text, root, diags));
    (root, raw)
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
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
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
                Yaml::Number(_) | Yaml::Null => agg.gpu_limit = Some(to_json(v)),
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
        agg.raw.push((key.clone(), to_json(v)));
    }
    Some(agg)
}

fn check_high_below_max(
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

/// The document of `user-overrides.yaml`, parsed from `text` (which gives the lines): a
/// mapping `username: {settings...}`; empty is fine.
fn parse_overrides_yaml(
    path: &Path,
    text: &str,
    value: &Yaml,
    diags: &mut Diagnostics,
) -> Vec<UserOverride> {
    let doc = Doc {
        path,
        lines: LineIndex::new(text),
    };
    match value {
        Yaml::Null => Vec::new(),
        v => parse_overrides(&doc, &[], v, diags),
    }
}

/// Stage two: members and overrides joined to the main file; resolution checked for every
/// user so that any problem surfaces here, not when a container starts.
pub fn validate(
    raw: RawConfig,
    members_files: &[MembersFile],
    overrides_file: Option<(&Path, &str, &Yaml)>,
    mut diags: Diagnostics,
) -> Result<Config, ConfigError> {
    let overrides = merge_overrides(raw.inline_overrides, overrides_file, &mut diags);

    // First every line on its own, then the lines against each other with maps that borrow
    // from the first pass: no key is copied, which at thousands of members is most of the
    // cost of loading (and a hook loads the whole configuration before every container).
    struct Listed<'t> {
        entry: &'t str,
        name: UserName,
        sanitized: SanitizedUser,
        group: &'t GroupName,
        location: Location,
    }
    let mut listed: Vec<Listed> = Vec::new();
    let members_diags_from = diags.items.len();
    let mut member_paths: Vec<Arc<Path>> = Vec::new();
    for (group, _) in &raw.group_names {
        let Some(file) = members_files.iter().find(|f| &f.group == group) else {
            continue;
        };
        let path: Arc<Path> = Arc::from(file.path.as_path());
        member_paths.push(Arc::clone(&path));
        listed.reserve(file.text.len() / 8);
        for (line, entry) in member_entries(&file.text) {
            let location = Location::shared(&path, Some(line));
            let name = match UserName::new(entry) {
                Ok(n) => n,
                Err(e) => {
                    diags.error(location, e.to_string());
                    continue;
                }
            };
            let sanitized = match name.sanitized() {
                Ok(s) => s,
                Err(e) => {
                    diags.error(location, e.to_string());
                    continue;
                }
            };
            listed.push(Listed {
                entry,
                name,
                sanitized,
                group,
                location,
            });
        }
    }
    let mut kept = vec![false; listed.len()];
    let mut by_name: HashMap<&str, usize> = HashMap::with_capacity(listed.len());
    let mut by_sanitized: HashMap<&str, usize> = HashMap::with_capacity(listed.len());
    let mut by_slice: HashMap<(&GroupName, &str), usize> = HashMap::with_capacity(listed.len());
    for (index, l) in listed.iter().enumerate() {
        let (entry, group, location) = (l.entry, l.group, &l.location);
        let sanitized = l.sanitized.as_str();
        let name_slot = match by_name.entry(entry) {
            Entry::Vacant(slot) => slot,
            Entry::Occupied(first) => {
                let first = &listed[*first.get()];
                if first.group != group {
                    diags.warning(location.clone(), format!(
                        "user {entry} is also listed for group {} at {}; the first group wins, so they stay in {}; remove one of the entries",
                        first.group, first.location, first.group
                    ));
                }
                continue;
            }
        };
        let slice_slot = match by_slice.entry((group, sanitized)) {
            Entry::Vacant(slot) => slot,
            Entry::Occupied(other) => {
                let other = &listed[*other.get()];
                let slice = SliceName::user(group, &l.sanitized);
                diags.error(location.clone(), format!(
                    "users {entry:?} and {:?} (at {}) both map to slice {slice}; their limits would be shared — rename one account or remove one entry",
                    other.name.as_str(),
                    other.location
                ));
                continue;
            }
        };
        match by_sanitized.entry(sanitized) {
            Entry::Vacant(slot) => {
                slot.insert(index);
            }
            Entry::Occupied(other) => {
                let other = &listed[*other.get()];
                diags.warning(location.clone(), format!(
                    "user {entry:?} has the same sanitized name as {:?} (at {}) in group {}; lookups by the sanitized name find the first",
                    other.name.as_str(),
                    other.location,
                    other.group
                ));
            }
        }
        name_slot.insert(index);
        slice_slot.insert(index);
        kept[index] = true;
    }
    drop((by_name, by_sanitized, by_slice));
    // Both passes report in file and line order, as one pass would.
    diags.items[members_diags_from..].sort_by_key(|d| {
        let file = member_paths
            .iter()
            .position(|p| Arc::ptr_eq(p, &d.location.file));
        (file, d.location.line)
    });
    let members: Vec<Member> = listed
        .into_iter()
        .zip(kept)
        .filter(|(_, kept)| *kept)
        .map(|(l, _)| Member {
            name: l.name,
            sanitized: l.sanitized,
            group: l.group.clone(),
            location: l.location,
        })
        .collect();

    let config = Config::new(
        raw.path,
        raw.aggregate_limits,
        raw.default_group.map(|(g, _)| g),
        raw.groups,
        members,
        overrides,
    );

    // Effective limits of every overridden user must hold together (high ≤ max after merge).
    let mut override_slices: BTreeMap<SliceName, (UserName, Location)> = BTreeMap::new();
    for o in &config.overrides {
        match config.resolve(&o.user) {
            Ok(resolved) => {
                if let Some(agg) = &resolved.aggregate {
                    check_high_below_max(
                        agg,
                        &o.location,
                        &format!(
                            "user {} (group {} merged with the override)",
                            o.user, resolved.group
                        ),
                        &mut diags,
                    );
                }
                // Two override entries for one slice (`maria.garcia` and `maria_garcia`):
                // one would silently win, so neither is guessed.
                if let Some(first) = override_slices.get(&resolved.slice) {
                    diags.error(
                        o.location.clone(),
                        format!(
                            "override for {:?} and override for {:?} (at {first_at}) both apply to slice {}; keep one entry",
                            o.user.as_str(),
                            first.0.as_str(),
                            resolved.slice,
                            first_at = first.1
                        ),
                    );
                } else {
                    override_slices
                        .insert(resolved.slice.clone(), (o.user.clone(), o.location.clone()));
                }
            }
            Err(e) => diags.error(o.location.clone(), e.to_string()),
        }
    }

    if diags.has_errors() {
        return Err(ConfigError::Invalid(diags));
    }
    let warnings = diags.warnings().cloned().collect();
    Ok(Config { warnings, ..config })
}

/// Pure entry point for tests and tools: the whole configuration from in-memory texts.
pub fn parse_texts(
    path: &Path,
    main: &str,
    members: &[(&str, &str)],
    overrides: Option<&str>,
) -> Result<Config, ConfigError> {
    Sources::from_texts(path, main, members, overrides).validate()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: &str = "\
default_group: student
enforcement:
  aggregate_limits: true
  cgroup_driver: systemd
groups:
  student:
    max_cpus: 32
    aggregate:
      cpu_quota: \"9600%\"
      memory_max: \"96G\"
      memory_high: \"86G\"
      tasks_max: 12288
      gpu_limit: 2.0
  admin:
    max_cpus: 64
";

    fn parse(
        main: &str,
        members: &[(&str, &str)],
        overrides: Option<&str>,
    ) -> Result<Config, ConfigError> {
        parse_texts(
            Path::new("/cfg/resource-limits.yaml"),
            main,
            members,
            overrides,
        )
    }

    fn errors(result: Result<Config, ConfigError>) -> Vec<Diagnostic> {
        match result {
            Err(ConfigError::Invalid(d)) => d.errors().cloned().collect(),
            other => panic!("expected invalid config, got {other:?}"),
        }
    }

    #[test]
    fn line_index_finds_nested_keys() {
        let idx = LineIndex::new(MAIN);
        assert_eq!(
            idx.find(&["groups", "student", "aggregate", "memory_high"]),
            Some(11)
        );
        assert_eq!(idx.find(&["groups", "admin"]), Some(14));
        assert_eq!(idx.find(&["enforcement", "cgroup_driver"]), Some(4));
        assert_eq!(idx.find(&["groups", "student", "nope"]), Some(6));
        let groups = idx.child_lines(&["groups"]);
        assert_eq!((groups["student"], groups["admin"]), (6, 14));
        assert_eq!(idx.child_lines(&[])["enforcement"], 2);
    }

    #[test]
    fn resolves_members_defaults_and_overrides() {
        let config = parse(
            MAIN,
            &[("student", "alice\n# comment\n  h.baker@hertie-school.lan  \n\n"), ("admin", "root_like\nalice\n")],
            Some("alice:\n  aggregate:\n    memory_max: infinity\n    memory_high: 100G\nbob:\n  aggregate: null\n"),
        )
        .unwrap();
        assert_eq!(config.members.len(), 3);
        assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
        assert!(config.warnings[0].message.contains("first group wins"));
        let alice = config.resolve(&UserName::new("alice").unwrap()).unwrap();
        assert_eq!(alice.group.as_str(), "student");
        let agg = alice.aggregate.unwrap();
        assert_eq!(agg.memory_max, Some(MemoryLimit::Infinity));
        assert_eq!(agg.memory_high, Some(MemoryLimit::Bytes(100 << 30)));
        assert_eq!(agg.cpu_quota, Some(CpuQuota::Percent(9600)));
        let baker = config.resolve(&UserName::new("h_baker").unwrap()).unwrap();
        assert_eq!(baker.name.as_str(), "h.baker@hertie-school.lan");
        assert_eq!(baker.slice.as_str(), "ds01-student-h_baker.slice");
        let admin = config
            .resolve(&UserName::new("root_like").unwrap())
            .unwrap();
        assert!(admin.aggregate.is_none());
        let bob = config.resolve(&UserName::new("bob").unwrap()).unwrap();
        assert!(!bob.listed && bob.aggregate.is_none());
        let carol = config.resolve(&UserName::new("carol").unwrap()).unwrap();
        assert_eq!(carol.group.as_str(), "student");
        assert!(carol.aggregate.is_some());
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let main = MAIN
            .replace("memory_high: \"86G\"", "memory_high: \"99G\"")
            .replace("tasks_max: 12288", "taskmax: 12288");
        let errs = errors(parse(&main, &[], None));
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs.iter()
                .any(|e| e.location.line == Some(12)
                    && e.message.contains("did you mean `tasks_max`"))
        );
    }

    /// Names chosen to collide: the same person as `a.b`, `a_b`, `A.B@x` (sanitized alike in
    /// part), listed in several groups, some twice.
    const NAMES: [&str; 8] = ["a.b", "a_b", "a.b@x", "A.B", "cc", "cc@y", "d-e", "d_e"];

    struct Texts {
        main: String,
        members: Vec<(&'static str, String)>,
        overrides: String,
    }

    impl Texts {
        fn members(&self) -> Vec<(&str, &str)> {
            self.members.iter().map(|(g, t)| (*g, t.as_str())).collect()
        }

        fn sources(&self) -> Sources {
            Sources::from_texts(
                Path::new(SAMPLE_PATH),
                &self.main,
                &self.members(),
                Some(&self.overrides),
            )
        }

        fn trusting(&self, record: &str) -> Option<Sources> {
            Sources::from_texts_trusting(
                Path::new(SAMPLE_PATH),
                &self.main,
                &self.members(),
                Some(&self.overrides),
                record,
            )
        }
    }

    const SAMPLE_PATH: &str = "/c/resource-limits.yaml";

    fn sample_texts(student: &[usize], researcher: &[usize], overridden: &[usize]) -> Texts {
        let list = |idx: &[usize]| {
            idx.iter()
                .map(|&i| format!("{}\n", NAMES[i]))
                .collect::<String>()
        };
        let overrides: String = overridden
            .iter()
            .map(|&i| {
                format!(
                    "{:?}:\n  aggregate:\n    tasks_max: {}\n",
                    NAMES[i],
                    100 + i
                )
            })
            .collect();
        Texts {
            main: format!("{MAIN}  researcher:\n    aggregate:\n      memory_max: \"200G\"\n"),
            members: vec![("student", list(student)), ("researcher", list(researcher))],
            overrides,
        }
    }

    fn sample_sources(student: &[usize], researcher: &[usize], overridden: &[usize]) -> Sources {
        sample_texts(student, researcher, overridden).sources()
    }

    proptest::proptest! {
        /// The hook's shortcut (the record of a configuration validated before, and only the
        /// user's own lines) resolves every user exactly as the full validation does.
        #[test]
        fn trusted_resolution_equals_full_validation(
            student in proptest::collection::vec(0..NAMES.len(), 0..6),
            researcher in proptest::collection::vec(0..NAMES.len(), 0..6),
            overridden in proptest::collection::btree_set(0..NAMES.len(), 0..4),
            asked in 0..NAMES.len() + 2,
        ) {
            let overridden: Vec<usize> = overridden.into_iter().collect();
            let texts = sample_texts(&student, &researcher, &overridden);
            let sources = texts.sources();
            let record = sources.remembered();
            let full = sources.validate();
            // Only configurations a full validation accepts are ever trusted.
            proptest::prop_assume!(full.is_ok());
            let full = full.unwrap();
            let record = record.expect("a validated configuration has a record");
            let user = UserName::new(NAMES.get(asked).copied().unwrap_or("nobody.listed")).unwrap();
            let trusted = texts.trusting(&record).expect("the record of these texts");
            proptest::prop_assert!(trusted.trusted());
            let trusted = trusted.trusted_for_user(&user).unwrap();
            proptest::prop_assert_eq!(
                format!("{:?}", trusted.resolve(&user)),
                format!("{:?}", full.resolve(&user))
            );
        }
    }

    #[test]
    fn a_record_is_trusted_only_for_the_texts_it_was_made_from() {
        let texts = sample_texts(&[0, 4], &[6], &[4]);
        let record = texts.sources().remembered().unwrap();
        assert!(texts.trusting(&record).is_some_and(|s| s.trusted()));
        let edits: [fn(&mut Texts); 4] = [
            |t| t.main.push_str("# edited\n"),
            |t| t.members[0].1.push_str("cc\n"),
            |t| t.members[1].1.clear(),
            |t| t.overrides.push(' '),
        ];
        for edit in edits {
            let mut changed = sample_texts(&[0, 4], &[6], &[4]);
            edit(&mut changed);
            assert!(changed.trusting(&record).is_none());
        }
        assert!(texts
            .trusting(&record.replace("format 2", "format 1"))
            .is_none());
        assert!(texts.trusting("").is_none());
    }

    #[test]
    fn a_value_json_cannot_hold_leaves_no_record() {
        // JSON has no NaN: it would come back as null, which is no driver at all.
        let mut texts = sample_texts(&[0], &[6], &[4]);
        texts.main = texts
            .main
            .replace("cgroup_driver: systemd", "cgroup_driver: .nan");
        assert!(texts.main.contains("cgroup_driver: .nan"));
        let sources = texts.sources();
        let record = sources.remembered();
        assert!(sources.validate().is_ok());
        assert_eq!(record, None);
    }

    #[test]
    fn the_record_keeps_only_what_the_tool_reads() {
        let mut texts = sample_texts(&[0], &[6], &[4]);
        texts
            .main
            .push_str("container_types:\n  1: {gpu: .nan}\n  !tagged x: [1, 2]\n");
        texts.overrides.push_str("  comment: {1: 2}\n");
        let record = texts.sources().remembered().expect("a record");
        assert!(!record.contains("container_types") && !record.contains("max_cpus"));
        assert!(!record.contains("comment"));
        assert!(texts.trusting(&record).is_some());
    }

    #[test]
    fn the_digest_changes_with_every_file() {
        let base = sample_sources(&[0, 4], &[6], &[4]).digest();
        assert_eq!(base, sample_sources(&[0, 4], &[6], &[4]).digest());
        for other in [
            sample_sources(&[0], &[6], &[4]),
            sample_sources(&[0, 4], &[6, 1], &[4]),
            sample_sources(&[0, 4], &[6], &[]),
            sample_sources(&[4, 0], &[6], &[4]),
        ] {
            assert_ne!(other.digest(), base);
        }
    }
}
