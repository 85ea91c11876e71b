//! Stage two: the members files and the overrides joined to the main file's [`RawConfig`]
//! into a [`Config`], every user checked against every other, so that any problem surfaces
//! when the configuration is loaded, not when a container starts.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::types::check_high_below_max;
use super::{Config, ConfigError, Member, RawConfig, UserOverride};
use crate::model::diagnostics::{Diagnostics, Location};
use crate::model::names::{GroupName, SanitizedUser, SliceName, UserName};

/// One members file's content.
#[derive(Debug, Clone)]
pub struct MembersFile {
    pub group: GroupName,
    pub path: PathBuf,
    pub text: String,
}

/// The user names of a members file with their line numbers: `#` starts a comment.
fn member_entries(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(index, line)| {
        // A byte order mark (files joined with `cat`) is no part of a name.
        let entry = line
            .split('#')
            .next()
            .unwrap_or_default()
            .trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
        (!entry.is_empty()).then_some((index + 1, entry))
    })
}

/// The overrides of the main file, each replaced by the overrides file's entry for the
/// same user.
fn merge_overrides(inline: Vec<UserOverride>, file: Vec<UserOverride>) -> Vec<UserOverride> {
    let mut overrides = inline;
    for o in file {
        overrides.retain(|existing| existing.user != o.user);
        overrides.push(o);
    }
    overrides
}

/// Groups that list no one: most likely the members files are not where they are looked
/// for (a copy of the main file elsewhere, a wrong `--config`), and everyone would get the
/// default group's limits.
fn no_members_warning(
    path: &Path,
    group_names: &[(GroupName, Location)],
    default_group: Option<&GroupName>,
    diags: &mut Diagnostics,
) {
    let Some((_, first)) = group_names.first() else {
        return;
    };
    let groups_dir = path
        .parent()
        .unwrap_or(Path::new(""))
        .join(super::GROUPS_DIR);
    let everyone = match default_group {
        Some(g) => format!("every user is in default_group {g}"),
        None => "no user has a group".to_owned(),
    };
    diags.warning(first.clone(), format!(
        "no members file lists any user: none of the {} groups has a file in {} with a name in it, so {everyone}; if that is not meant, point --config at the configuration whose groups/ holds the members files",
        group_names.len(),
        groups_dir.display()
    ));
}

/// `file_overrides` are the entries of `user-overrides.yaml`, already walked (their problems
/// are in `diags`).
pub(super) fn validate(
    raw: RawConfig,
    members_files: &[MembersFile],
    file_overrides: Vec<UserOverride>,
    mut diags: Diagnostics,
) -> Result<Config, ConfigError> {
    let overrides = merge_overrides(raw.inline_overrides, file_overrides);

    // First every line on its own, then the lines against each other with maps that borrow
    // from the first pass: no key is copied, which at thousands of members is most of the
    // cost of a full validation (a hook pays it after every change to any file).
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

    if members.is_empty() {
        let default_group = raw.default_group.as_ref().map(|(g, _)| g);
        no_members_warning(&raw.path, &raw.group_names, default_group, &mut diags);
    }
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

    for o in &config.overrides {
        let names_a_group = config
            .groups
            .iter()
            .any(|g| g.name.as_str() == o.user.as_str());
        if names_a_group && config.member(&o.user).is_none() {
            diags.warning(o.location.clone(), format!(
                "the override `{0}` is named like the group {0}, but overrides are for users: it applies only to a user account named {0}; to change the limits of group {0}, edit `groups: {0}: aggregate:` in the main file",
                o.user
            ));
        }
    }

    if diags.has_errors() {
        return Err(ConfigError::Invalid(diags));
    }
    let warnings = diags.warnings().cloned().collect();
    Ok(Config { warnings, ..config })
}
