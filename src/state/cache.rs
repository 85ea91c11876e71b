//! The hook's record of a full validation (`<state-dir>/validated-config`): not the
//! configuration, but its answer for every user, with the digest of every file it came from.
//! A hook whose files all still have those digests parses no YAML and validates nothing: it
//! finds its user's line and is done. Pure: the caller reads and writes the files.
//!
//! The format, one line each, fields separated by tabs:
//!
//! ```text
//! ds01-slices validated-config format 3 md5 <MD5 of everything after this line>
//! build      <version of the ds01-slices that wrote it>
//! main       <MD5 of resource-limits.yaml>
//! members    <group>  <MD5 of groups/<group>.members, or "absent">   (each group, in file order)
//! overrides  <MD5 of user-overrides.yaml, or "absent">
//! aggregate_limits  true|false
//! p  <id>  <properties: CPUQuotaPerSecUSec=…,MemoryMax=…,… or "uncapped">  (each distinct set)
//! d  <default group>  <properties id>                 (when there is a default group)
//! m  <user>  <sanitized>  <group>  <properties id>    (each listed user, in members order)
//! o  <user>  <sanitized>  <n|s|ns>  <properties id>   (each override an unlisted user can get)
//! ```
//!
//! A lookup goes as [`Config::resolve`] does: the first `m` line with the user's name, else
//! the first with their sanitized name (listed users: the configuration's member index keeps the first), else
//! the user is the default group's, with the `o` line that holds the override
//! `Config::override_for` finds by name (`n`), else by sanitized name (`s`). The slice is
//! not stored: it is [`SliceName::user`] of the group and the sanitized name, as in resolve.
//!
//! It lives with the state the tool keeps, not with the configuration: it is the hook's, and
//! it needs the plan (the properties), which itself builds on the configuration.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::config::{self, Config, ConfigError, Digest, Digests, Sources};
use crate::model::names::{GroupName, SliceName, UserName};
use crate::model::property::{BusValue, Properties, Property};
use crate::plan::{self, HookTarget};

/// Another header (an older format) means no record: the hook validates in full.
const HEADER: &str = "ds01-slices validated-config format 3 md5 ";
const ABSENT: &str = "absent";
const UNCAPPED: &str = "uncapped";

/// The record of `config`, validated from files with `sources` digests. `None` when a name
/// cannot be written on a line of its own: a tab or a line break would split it. A
/// [`UserName`] holds no control character, so this does not happen; were it to, no record
/// is safer than one that misses one user and finds another in their place.
pub fn encode(config: &Config, sources: &Digests) -> Option<String> {
    let mut table = PropertyTable::default();
    let mut rows = String::new();
    if let Some(default) = &config.default_group {
        let id = table.id(&plan::limits(config.effective(default, None).as_ref()))?;
        let _ = writeln!(rows, "d\t{default}\t{id}");
    }
    // Resolve's own steps once it has found the member (`effective` of the member's group
    // and override), without the lookup it would repeat for each of thousands of members.
    // Most members have no override: their group's properties are written down once.
    let mut group_ids: HashMap<&GroupName, usize> = HashMap::new();
    for m in &config.members {
        let id = match config.override_for(&m.name, &m.sanitized) {
            Some(o) => table.id(&plan::limits(config.effective(&m.group, Some(o)).as_ref()))?,
            None => match group_ids.get(&m.group) {
                Some(id) => *id,
                None => {
                    let id = table.id(&plan::limits(config.effective(&m.group, None).as_ref()))?;
                    group_ids.insert(&m.group, id);
                    id
                }
            },
        };
        let user = field(m.name.as_str())?;
        let _ = writeln!(rows, "m\t{user}\t{}\t{}\t{id}", m.sanitized, m.group);
    }
    if let Some(default) = &config.default_group {
        for (i, o) in config.overrides.iter().enumerate() {
            // A name that does not sanitize is refused before any override applies.
            let Ok(sanitized) = o.user.sanitized() else {
                continue;
            };
            let holds = |map: &HashMap<String, usize>, key: &str| map.get(key) == Some(&i);
            let by_name = holds(&config.override_by_name, o.user.as_str());
            let by_sanitized = holds(&config.override_by_sanitized, sanitized.as_str());
            let flags = match (by_name, by_sanitized) {
                (true, true) => "ns",
                (true, false) => "n",
                (false, true) => "s",
                (false, false) => continue,
            };
            let id = table.id(&plan::limits(config.effective(default, Some(o)).as_ref()))?;
            let user = field(o.user.as_str())?;
            let _ = writeln!(rows, "o\t{user}\t{sanitized}\t{flags}\t{id}");
        }
    }

    let mut body = String::with_capacity(rows.len() + 1024);
    let _ = writeln!(body, "build\t{}", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(body, "main\t{}", sources.main);
    for (group, digest) in &sources.members {
        let _ = writeln!(body, "members\t{group}\t{}", or_absent(digest.as_ref()));
    }
    let _ = writeln!(body, "overrides\t{}", or_absent(sources.overrides.as_ref()));
    let _ = writeln!(body, "aggregate_limits\t{}", config.aggregate_limits);
    for (id, values) in table.values.iter().enumerate() {
        let _ = writeln!(body, "p\t{id}\t{values}");
    }
    body.push_str(&rows);
    Some(format!("{HEADER}{}\n{body}", Digest::of(body.as_bytes())))
}

fn field(name: &str) -> Option<&str> {
    (!name.contains(['\t', '\n', '\r'])).then_some(name)
}

fn or_absent(digest: Option<&Digest>) -> String {
    digest.map_or_else(|| ABSENT.to_owned(), Digest::to_string)
}

/// Distinct property sets, written once each: most users share their group's, and every
/// byte of the record is hashed by every hook.
#[derive(Default)]
struct PropertyTable {
    values: Vec<String>,
    ids: HashMap<String, usize>,
}

impl PropertyTable {
    fn id(&mut self, properties: &Properties) -> Option<usize> {
        let mut text = String::new();
        for (p, v) in properties.iter() {
            let BusValue::U64(v) = v else {
                return None;
            };
            let sep = if text.is_empty() { "" } else { "," };
            let _ = write!(text, "{sep}{}={v}", p.bus_name());
        }
        if text.is_empty() {
            text.push_str(UNCAPPED);
        }
        let next = self.values.len();
        let id = *self.ids.entry(text.clone()).or_insert(next);
        if id == next {
            self.values.push(text);
        }
        Some(id)
    }
}

fn decode_properties(text: &str) -> Option<Properties> {
    if text == UNCAPPED {
        return Some(Properties::default());
    }
    let mut pairs = Vec::with_capacity(Property::LIMITS.len());
    for pair in text.split(',') {
        let (name, value) = pair.split_once('=')?;
        let property = Property::from_bus_name(name).filter(|p| Property::LIMITS.contains(p))?;
        pairs.push((property, BusValue::U64(value.parse().ok()?)));
    }
    Some(Properties::from_pairs(pairs))
}

/// A record whose header, checksum and build are right; what it says about the files is
/// for [`Record::lookup`] to hold against the files as they are now.
#[derive(Debug)]
pub struct Record<'a> {
    sources: Digests,
    aggregate_limits: bool,
    /// The `p`, `d`, `m` and `o` lines.
    rows: &'a str,
}

/// The next line of `rest`, which moves past it.
fn next_line<'a>(rest: &mut &'a str) -> Option<&'a str> {
    let (line, tail) = rest.split_once('\n')?;
    *rest = tail;
    Some(line)
}

fn labelled<'a>(line: Option<&'a str>, label: &str) -> Option<&'a str> {
    line?.strip_prefix(label)?.strip_prefix('\t')
}

fn parse_digest(text: &str) -> Option<Option<Digest>> {
    match text {
        ABSENT => Some(None),
        d => Some(Some(Digest::parse(d)?)),
    }
}

impl<'a> Record<'a> {
    /// `None` for anything but an intact record of this format written by this build: it is
    /// then as if there were none.
    pub fn parse(text: &'a str) -> Option<Record<'a>> {
        let (header, body) = text.split_once('\n')?;
        let checksum = header.strip_prefix(HEADER)?;
        if Digest::parse(checksum)? != Digest::of(body.as_bytes()) {
            return None;
        }
        let mut rest = body;
        if labelled(next_line(&mut rest), "build")? != env!("CARGO_PKG_VERSION") {
            return None;
        }
        let main = Digest::parse(labelled(next_line(&mut rest), "main")?)?;
        let mut members = Vec::new();
        while rest.starts_with("members\t") {
            let line = labelled(next_line(&mut rest), "members")?;
            let (group, digest) = line.split_once('\t')?;
            members.push((GroupName::new(group).ok()?, parse_digest(digest)?));
        }
        let overrides = parse_digest(labelled(next_line(&mut rest), "overrides")?)?;
        let aggregate_limits = match labelled(next_line(&mut rest), "aggregate_limits")? {
            "true" => true,
            "false" => false,
            _ => return None,
        };
        Some(Record {
            sources: Digests {
                main,
                members,
                overrides,
            },
            aggregate_limits,
            rows: rest,
        })
    }

    /// The files the record was computed from.
    pub fn sources(&self) -> &Digests {
        &self.sources
    }

    /// The groups whose members files the record was computed from, present or absent.
    pub fn members_groups(&self) -> impl Iterator<Item = &GroupName> + Clone {
        self.sources.members.iter().map(|(group, _)| group)
    }

    /// What a full validation of files with the `current` digests would give `user`, or
    /// `None` when this record cannot say: the files changed, or the user is one that
    /// resolve refuses (which only a full validation reports as it should).
    pub fn lookup(&self, current: &Digests, user: &UserName) -> Option<HookTarget> {
        if *current != self.sources {
            return None;
        }
        let sanitized = user.sanitized().ok()?;
        let mut properties: Vec<&str> = Vec::new();
        let mut default = None;
        let mut by_sanitized = None;
        let (mut override_by_name, mut override_by_sanitized) = (None, None);
        let mut rest = self.rows;
        while let Some(line) = next_line(&mut rest) {
            let mut fields = line.split('\t');
            match fields.next()? {
                "p" => {
                    let id: usize = fields.next()?.parse().ok()?;
                    (id == properties.len()).then_some(())?;
                    properties.push(fields.next()?);
                }
                "d" => default = Some((fields.next()?, fields.next()?)),
                "m" => {
                    let row = (
                        fields.next()?,
                        fields.next()?,
                        fields.next()?,
                        fields.next()?,
                    );
                    if row.0 == user.as_str() {
                        // Names are looked up before sanitized names: no later line matters.
                        return self.listed(row, &properties);
                    }
                    if by_sanitized.is_none() && row.1 == sanitized.as_str() {
                        by_sanitized = Some(row);
                    }
                }
                "o" => {
                    let (name, key, flags) = (fields.next()?, fields.next()?, fields.next()?);
                    let id = fields.next()?;
                    if flags.contains('n') && name == user.as_str() {
                        override_by_name.get_or_insert(id);
                    }
                    if flags.contains('s') && key == sanitized.as_str() {
                        override_by_sanitized.get_or_insert(id);
                    }
                }
                _ => return None,
            }
        }
        if let Some(row) = by_sanitized {
            return self.listed(row, &properties);
        }
        let (group, id) = default?;
        let id = override_by_name.or(override_by_sanitized).unwrap_or(id);
        let group = GroupName::new(group).ok()?;
        Some(HookTarget {
            user: user.clone(),
            slice: SliceName::user(&group, &sanitized),
            group,
            listed: false,
            properties: properties_by_id(&properties, id)?,
            aggregate_limits: self.aggregate_limits,
        })
    }

    /// The answer of an `m` line: (user, sanitized, group, properties id).
    fn listed(&self, row: (&str, &str, &str, &str), properties: &[&str]) -> Option<HookTarget> {
        let (name, sanitized_as_recorded, group, id) = row;
        let user = UserName::new(name).ok()?;
        let sanitized = user.sanitized().ok()?;
        // The key the line was found by must be what this build makes of the name.
        (sanitized.as_str() == sanitized_as_recorded).then_some(())?;
        let group = GroupName::new(group).ok()?;
        Some(HookTarget {
            slice: SliceName::user(&group, &sanitized),
            user,
            group,
            listed: true,
            properties: properties_by_id(properties, id)?,
            aggregate_limits: self.aggregate_limits,
        })
    }
}

fn properties_by_id(properties: &[&str], id: &str) -> Option<Properties> {
    decode_properties(properties.get(id.parse::<usize>().ok()?)?)
}

/// [`Record::lookup`] from the text of a record.
pub fn lookup(record: &str, current: &Digests, user: &UserName) -> Option<HookTarget> {
    Record::parse(record)?.lookup(current, user)
}

/// [`config::load`], with the record of the validated configuration for later hooks
/// ([`for_hook`]); `None` when it cannot be written down (see [`encode`]).
pub fn load_recorded(path: &Path) -> Result<(Config, Option<String>), ConfigError> {
    validate_recorded(Sources::read(path)?)
}

/// [`Sources::validate`], and the record of its answer for later hooks.
pub fn validate_recorded(sources: Sources) -> Result<(Config, Option<String>), ConfigError> {
    let digests = sources.digests();
    let config = sources.validate()?;
    let record = encode(&config, &digests);
    Ok((config, record))
}

/// What the hook needs for `user`, from `record` (what [`load_recorded`] or an earlier hook
/// returned) when every file it names is unchanged — then no YAML is parsed at all — and
/// from a full validation otherwise, as every other command does it. Whoever runs it, the
/// files are held to the trust rule (`config/trust.rs`): a hook's answer places a container.
/// The second value is the record to keep for the hooks after this one (`None`: keep the one
/// there is).
pub fn for_hook(
    path: &Path,
    record: Option<&str>,
    user: &UserName,
) -> Result<(HookTarget, Option<String>), ConfigError> {
    let mut in_sync = false;
    if let Some(record) = record.and_then(Record::parse) {
        // Digests of a stable read of every file: a torn file never matches the record.
        if let Some(current) = config::current_digests(path, record.members_groups())? {
            in_sync = current == *record.sources();
            if let Some(target) = record.lookup(&current, user) {
                return Ok((target, None));
            }
        }
    }
    // The record is missing, stale, or cannot answer for this user (who then most likely
    // fails to resolve, which only the full validation reports in full).
    let (config, record) = validate_recorded(Sources::read_held(path, true)?)?;
    let target = HookTarget::from_config(&config, user)?;
    Ok((target, if in_sync { None } else { record }))
}
