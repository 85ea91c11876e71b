//! Stage one: the files of a configuration, read. With `files.rs` (how a file is read) and
//! `trust.rs` (whose files root may act on), the only part of the configuration that touches
//! the file system, so that every other stage can be tested on texts.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::files::{self, Problem, ReadError, Snapshot};
use super::types::Kind;
use super::validate::{self, MembersFile};
use super::yaml::{self, RawConfig};
use super::{Config, ConfigError, GROUPS_DIR, OVERRIDES_FILE};
use super::{Digest, Digests};
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
/// report problems against. `path` as given: for root, the way to a linked file is checked
/// too.
fn main_text(snapshot: &mut Snapshot, path: &Path) -> Result<String, Problem> {
    let unreadable = |reason: String| ConfigError::Unreadable {
        path: path.to_owned(),
        reason,
    };
    let bytes = match snapshot.read(path, Kind::Main) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            let e = std::io::Error::from(ErrorKind::NotFound);
            return Err(unreadable(e.to_string()).into());
        }
        Err(ReadError::Changed(p)) => return Err(Problem::Changed(p)),
        Err(ReadError::Unreadable(reason)) => return Err(unreadable(reason).into()),
        Err(ReadError::Untrusted(reason)) => {
            return Err(ConfigError::Untrusted {
                path: path.to_owned(),
                reason,
            }
            .into())
        }
    };
    text_of(bytes)
        .map_err(|()| unreadable("it is not valid UTF-8; save it as UTF-8 text".to_owned()).into())
}

/// A file's text, without a byte order mark.
fn text_of(mut bytes: Vec<u8>) -> Result<String, ()> {
    let bom = bytes.len() - files::without_bom(&bytes).len();
    bytes.drain(..bom);
    String::from_utf8(bytes).map_err(|_| ())
}

/// A members or overrides file: its text, `None` when it does not exist, or the problem
/// recorded in `diags` (also `None`).
fn side_text(
    snapshot: &mut Snapshot,
    file: &Path,
    kind: Kind,
    diags: &mut Diagnostics,
) -> Result<Option<String>, Problem> {
    let at = || Location::new(file, None);
    let noun = kind.noun();
    let fix = match kind {
        Kind::Members => "save it as UTF-8 text, one user name per line",
        _ => "save it as UTF-8 YAML",
    };
    match snapshot.read(file, kind) {
        Ok(None) => Ok(None),
        Ok(Some(bytes)) => match text_of(bytes) {
            Ok(text) => Ok(Some(text)),
            Err(()) => {
                diags.error(
                    at(),
                    format!("cannot read {noun}: it is not valid UTF-8; {fix}"),
                );
                Ok(None)
            }
        },
        Err(ReadError::Changed(p)) => Err(Problem::Changed(p)),
        Err(ReadError::Unreadable(reason)) => {
            diags.error(at(), format!("cannot read {noun}: {reason}"));
            Ok(None)
        }
        Err(ReadError::Untrusted(reason)) => {
            diags.error(at(), format!("refusing {noun}: {reason}"));
            Ok(None)
        }
    }
}

fn members_path(dir: &Path, group: &str) -> PathBuf {
    dir.join(GROUPS_DIR).join(format!("{group}.members"))
}

fn dir_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new(""))
}

/// What the files of the configuration at `path` look like now, for a hook to hold against
/// its record: the main file, the members files of `groups` (those the record was computed
/// from) and the overrides file, as bytes, not parsed, read as stably as a full read. `None`
/// when one of them cannot be read: only a full validation can say why.
pub fn current_digests<'g>(
    path: &Path,
    groups: impl Iterator<Item = &'g GroupName> + Clone,
) -> Result<Option<Digests>, ConfigError> {
    let dir = files::resolve_main(path);
    let dir = dir_of(&dir);
    // A hook's answer places a container, whoever runs it: root's configuration only.
    files::stable(true, |snapshot| {
        let mut digest_of = |file: &Path, kind: Kind| match snapshot.read(file, kind) {
            Ok(Some(bytes)) => Ok(Some(Some(Digest::of(files::without_bom(&bytes))))),
            Ok(None) => Ok(Some(None)),
            Err(ReadError::Changed(p)) => Err(Problem::Changed(p)),
            Err(_) => Ok(None),
        };
        let Some(Some(main)) = digest_of(path, Kind::Main)? else {
            return Ok(None);
        };
        let mut members = Vec::new();
        for group in groups.clone() {
            let Some(digest) = digest_of(&members_path(dir, group.as_str()), Kind::Members)? else {
                return Ok(None);
            };
            members.push((group.clone(), digest));
        }
        let Some(overrides) = digest_of(&dir.join(OVERRIDES_FILE), Kind::Overrides)? else {
            return Ok(None);
        };
        Ok(Some(Digests {
            main,
            members,
            overrides,
        }))
    })
}

impl Sources {
    /// Every file of the configuration at `path`, read whole while none of them changes.
    /// A `path` that is a symbolic link is followed: the other files are beside its target.
    pub fn read(path: &Path) -> Result<Sources, ConfigError> {
        Sources::read_held(path, files::running_as_root())
    }

    /// [`Sources::read`] held to the trust rule whoever runs it (`check_owners`), as a hook
    /// is: its answer places a container.
    pub fn read_held(path: &Path, check_owners: bool) -> Result<Sources, ConfigError> {
        let beside = files::resolve_main(path);
        files::stable(check_owners, |snapshot| {
            let main = main_text(snapshot, path)?;
            Sources::read_with_main(snapshot, &beside, main)
        })
    }

    /// [`Sources::read`] for a main file already read.
    fn read_with_main(
        snapshot: &mut Snapshot,
        path: &Path,
        main: String,
    ) -> Result<Sources, Problem> {
        let mut diags = Diagnostics::default();
        let raw = yaml::parse_main(path, &main, &mut diags);
        let dir = dir_of(path);
        let mut members = Vec::new();
        for (group, _) in raw.iter().flat_map(|r| &r.group_names) {
            let file = members_path(dir, group.as_str());
            if let Some(text) = side_text(snapshot, &file, Kind::Members, &mut diags)? {
                members.push(MembersFile {
                    group: group.clone(),
                    path: file,
                    text,
                });
            }
        }
        let overrides_path = dir.join(OVERRIDES_FILE);
        let overrides =
            side_text(snapshot, &overrides_path, Kind::Overrides, &mut diags)?.map(|text| {
                OverridesFile {
                    path: overrides_path,
                    text,
                }
            });
        Ok(Sources {
            main,
            raw,
            members,
            overrides,
            diags,
        })
    }

    /// The same stage from texts in memory (tests and tools).
    pub fn from_texts(
        path: &Path,
        main: &str,
        members: &[(&str, &str)],
        overrides: Option<&str>,
    ) -> Sources {
        // As read from files: without a byte order mark.
        let text = |t: &str| t.strip_prefix('\u{feff}').unwrap_or(t).to_owned();
        let main = text(main);
        let mut diags = Diagnostics::default();
        let raw = yaml::parse_main(path, &main, &mut diags);
        let dir = dir_of(path);
        let members = members
            .iter()
            .filter_map(|(group, t)| {
                Some(MembersFile {
                    group: GroupName::new(group).ok()?,
                    path: members_path(dir, group),
                    text: text(t),
                })
            })
            .collect();
        Sources {
            main,
            raw,
            members,
            overrides: overrides.map(|t| OverridesFile {
                path: dir.join(OVERRIDES_FILE),
                text: text(t),
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
}
