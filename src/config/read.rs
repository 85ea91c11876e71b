//! Stage one: the files of a configuration, read. The only part of the configuration that
//! touches the file system, so that every other stage can be tested on texts.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::cache::{self, Digest, Digests};
use super::validate::{self, MembersFile};
use super::yaml::{self, RawConfig};
use super::{Config, ConfigError, GROUPS_DIR, OVERRIDES_FILE};
use crate::model::diagnostics::{Diagnostics, Location};
use crate::model::names::GroupName;

/// Every file a configuration is made of, as read, the main file's YAML already walked (it
/// names the members files). [`Sources::validate`] is stage two.
#[derive(Debug)]
pub struct Sources {
    main: String,
    /// `None` when the main file is not a usable YAML document (an error in `diags`).
    raw: Option<RawConfig>,
    members: Vec<MembersFile>,
    overrides: Option<OverridesFile>,
    diags: Diagnostics,
}

#[derive(Debug)]
struct OverridesFile {
    path: PathBuf,
    text: String,
}

/// The main file's text: the one read error that stops everything, as there is nothing to
/// report problems against.
pub(super) fn main_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn members_path(dir: &Path, group: &str) -> PathBuf {
    dir.join(GROUPS_DIR).join(format!("{group}.members"))
}

fn dir_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new(""))
}

/// What the files beside `path` look like now, for a hook to hold against its record: the
/// members files of `groups` (those the record was computed from) and the overrides file,
/// as bytes, not parsed. `None` when one of them cannot be read: only a full validation can
/// say why.
pub(super) fn current_digests<'g>(
    path: &Path,
    main: &str,
    groups: impl Iterator<Item = &'g GroupName>,
) -> Option<Digests> {
    let dir = dir_of(path);
    let digest_of = |file: PathBuf| match std::fs::read(file) {
        Ok(bytes) => Some(Some(Digest::of(&bytes))),
        Err(e) if e.kind() == ErrorKind::NotFound => Some(None),
        Err(_) => None,
    };
    let mut members = Vec::new();
    for group in groups {
        members.push((group.clone(), digest_of(members_path(dir, group.as_str()))?));
    }
    Some(Digests {
        main: Digest::of(main.as_bytes()),
        members,
        overrides: digest_of(dir.join(OVERRIDES_FILE))?,
    })
}

impl Sources {
    pub fn read(path: &Path) -> Result<Sources, ConfigError> {
        Ok(Sources::read_with_main(path, main_text(path)?))
    }

    /// [`Sources::read`] for a main file already read.
    pub(super) fn read_with_main(path: &Path, main: String) -> Sources {
        let mut diags = Diagnostics::default();
        let raw = yaml::parse_main(path, &main, &mut diags);
        let dir = dir_of(path);
        let mut members = Vec::new();
        for (group, _) in raw.iter().flat_map(|r| &r.group_names) {
            let file = members_path(dir, group.as_str());
            match std::fs::read(&file) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(text) => members.push(MembersFile { group: group.clone(), path: file, text }),
                    Err(_) => diags.error(
                        Location::new(&file, None),
                        "members file is not valid UTF-8; save it as UTF-8 text, one user name per line",
                    ),
                },
                Err(e) if e.kind() == ErrorKind::NotFound => {}
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
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
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
            main,
            raw,
            members,
            overrides,
            diags,
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
        let raw = yaml::parse_main(path, main, &mut diags);
        let dir = dir_of(path);
        let members = members
            .iter()
            .filter_map(|(group, text)| {
                Some(MembersFile {
                    group: GroupName::new(group).ok()?,
                    path: members_path(dir, group),
                    text: (*text).to_owned(),
                })
            })
            .collect();
        Sources {
            main: main.to_owned(),
            raw,
            members,
            overrides: overrides.map(|text| OverridesFile {
                path: dir.join(OVERRIDES_FILE),
                text: text.to_owned(),
            }),
            diags,
        }
    }

    /// What every file looked like when read: the members files in the order the main file
    /// names their groups, absent ones included, so that a file created later is a change.
    pub fn digests(&self) -> Digests {
        let members = self
            .raw
            .iter()
            .flat_map(|r| &r.group_names)
            .map(|(group, _)| {
                let file = self.members.iter().find(|f| &f.group == group);
                (group.clone(), file.map(|f| Digest::of(f.text.as_bytes())))
            })
            .collect();
        Digests {
            main: Digest::of(self.main.as_bytes()),
            members,
            overrides: self
                .overrides
                .as_ref()
                .map(|o| Digest::of(o.text.as_bytes())),
        }
    }

    /// Stage two: every user, every value checked.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let mut diags = self.diags;
        let Some(raw) = self.raw else {
            if let Some(o) = &self.overrides {
                yaml::check_overrides_syntax(&o.path, &o.text, &mut diags);
            }
            return Err(ConfigError::Invalid(diags));
        };
        let file_overrides = match &self.overrides {
            Some(o) => yaml::parse_overrides_file(&o.path, &o.text, &mut diags),
            None => Vec::new(),
        };
        validate::validate(raw, &self.members, file_overrides, diags)
    }

    /// [`Sources::validate`], and the record of its answer for later hooks.
    pub fn validate_recorded(self) -> Result<(Config, Option<String>), ConfigError> {
        let digests = self.digests();
        let config = self.validate()?;
        let record = cache::encode(&config, &digests);
        Ok((config, record))
    }
}
