//! Which configuration root may act on: one that only root can change. ds01-slices run as
//! root sets limits on every user, so a file or directory that another user could write
//! would let that user lift their own limits. The rule, as sudo applies it to sudoers:
//!
//! - every configuration file is owned by root and writable by nobody else: not by a group
//!   other than root's (gid 0), not by every user;
//! - so is the directory that holds it, or would hold it (a missing members or overrides
//!   file could be created there), sticky bit or not;
//! - every directory above, on the way from `/` with every symbolic link followed, is owned
//!   by root, and writable by nobody else unless it has the sticky bit (like /tmp) and what
//!   the path takes from it is root's: then no one else can rename or replace that entry.
//!
//! Run as another user the tool only reads, and nothing here applies, except in a hook: its
//! answer (the slice) places a container, whoever asks.

use std::collections::HashSet;
use std::fs::Metadata;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use super::types::Kind;

/// At most this many symbolic links on the way to one file, as the kernel allows.
const MAX_LINKS: usize = 40;

/// One directory in which the way to a file looked a name up.
#[derive(Debug)]
pub(super) struct Lookup {
    dir: PathBuf,
    /// The entry the name found in `dir` (or would have).
    entry: PathBuf,
    /// Whether what the name found there is root's; `None`: nothing is there.
    entry_is_roots: Option<bool>,
}

/// The way to a file: every lookup, the last in the directory that holds the file.
#[derive(Debug)]
pub(super) struct Reached {
    lookups: Vec<Lookup>,
    /// The file with every link resolved (so it can be opened without following one).
    pub(super) file: PathBuf,
}

/// Directories already judged in this read, with whether they were held to the strict
/// rule: the members files of one directory share all of theirs.
#[derive(Debug, Default)]
pub(super) struct Verdicts(HashSet<(PathBuf, bool)>);

/// The way from `/` to `path`, link by link, looking at each entry without following it.
pub(super) fn reach(path: &Path) -> io::Result<Reached> {
    let absolute = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()?.join(path)
    };
    let mut pending: Vec<PathBuf> = components_reversed(&absolute);
    let mut dir = PathBuf::from("/");
    let mut lookups = Vec::new();
    let mut links = 0;
    while let Some(name) = pending.pop() {
        if name.as_os_str() == ".." {
            dir.pop();
            continue;
        }
        let next = dir.join(&name);
        let entry = match std::fs::symlink_metadata(&next) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                lookups.push(Lookup {
                    dir,
                    entry: next.clone(),
                    entry_is_roots: None,
                });
                // What is left cannot be reached: the path as it is, which opening finds
                // missing too.
                let rest = pending.iter().rev().fold(next, |p, c| p.join(c));
                return Ok(Reached {
                    lookups,
                    file: rest,
                });
            }
            Err(e) => return Err(e),
        };
        lookups.push(Lookup {
            dir: dir.clone(),
            entry: next.clone(),
            entry_is_roots: Some(entry.uid() == 0),
        });
        if entry.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Err(io::Error::other(format!(
                    "more than {MAX_LINKS} symbolic links on the way to it"
                )));
            }
            let target = std::fs::read_link(&next)?;
            if target.is_absolute() {
                dir = PathBuf::from("/");
            }
            pending.extend(components_reversed(&target));
        } else if pending.is_empty() {
            return Ok(Reached {
                lookups,
                file: next,
            });
        } else {
            dir = next;
        }
    }
    // A path that ends in `/` or `..`: the directory itself, which opening refuses.
    Ok(Reached { lookups, file: dir })
}

fn components_reversed(path: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    out.reverse();
    out
}

/// Who besides root could write a file or directory with this owner and mode, in words.
fn others_who_write(m: &Metadata) -> Option<String> {
    let mode = m.mode();
    if m.uid() != 0 {
        Some(format!("its owner, uid {}, who is not root", m.uid()))
    } else if mode & 0o002 != 0 {
        Some("every user".to_owned())
    } else if mode & 0o020 != 0 && m.gid() != 0 {
        Some(format!("group gid {}", m.gid()))
    } else {
        None
    }
}

fn fix(path: &Path) -> String {
    let p = path.display();
    format!("run `chown root:root '{p}' && chmod go-w '{p}'`")
}

fn owner_and_mode(m: &Metadata) -> String {
    format!(
        "owner uid {}, group gid {}, mode {:04o}",
        m.uid(),
        m.gid(),
        m.mode() & 0o7777
    )
}

/// The configuration file itself, as opened.
pub(super) fn check_file(path: &Path, m: &Metadata, kind: Kind) -> Result<(), String> {
    match others_who_write(m) {
        None => Ok(()),
        Some(who) => Err(format!(
            "the {} can be changed by {who} ({}), so someone other than root could lift limits; {} (ds01-slices run as root, and every hook, reads only configuration that only root can change)",
            kind.noun(),
            owner_and_mode(m),
            fix(path)
        )),
    }
}

/// Every directory on the way to a file of `kind` (see the module's rule).
pub(super) fn check_dirs(
    reached: &Reached,
    verdicts: &mut Verdicts,
    kind: Kind,
) -> Result<(), String> {
    let last = reached.lookups.len().saturating_sub(1);
    for (i, lookup) in reached.lookups.iter().enumerate() {
        let holds = i == last;
        // A directory judged strictly is fine for the lenient rule too.
        if verdicts.0.contains(&(lookup.dir.clone(), true))
            || verdicts.0.contains(&(lookup.dir.clone(), holds))
        {
            continue;
        }
        let m = std::fs::metadata(&lookup.dir)
            .map_err(|e| format!("cannot look at directory {}: {e}", lookup.dir.display()))?;
        if let Some(who) = others_who_write(&m) {
            let sticky = m.uid() == 0 && m.mode() & 0o1000 != 0;
            let why = if holds && sticky {
                format!(
                    "the directory that holds the {} can be written by {who} ({}): with the sticky bit too, anyone can create a missing members or overrides file there; move the configuration into a directory that only root can write",
                    kind.noun(),
                    owner_and_mode(&m),
                )
            } else if sticky && lookup.entry_is_roots == Some(false) {
                format!(
                    "{} is not root's, and it is in {} which {who} can write ({}): its owner could replace it and lift limits; run `chown -h root:root '{}'` or move the configuration out of {}",
                    lookup.entry.display(),
                    lookup.dir.display(),
                    owner_and_mode(&m),
                    lookup.entry.display(),
                    lookup.dir.display(),
                )
            } else if sticky && !holds {
                String::new()
            } else {
                format!(
                    "directory {} can be written by {who} ({}), so someone other than root could replace the {} and lift limits; {}",
                    lookup.dir.display(),
                    owner_and_mode(&m),
                    kind.noun(),
                    fix(&lookup.dir)
                )
            };
            if !why.is_empty() {
                return Err(format!(
                    "{why} (ds01-slices run as root, and every hook, reads only configuration that only root can change)"
                ));
            }
        }
        verdicts.0.insert((lookup.dir.clone(), holds));
    }
    Ok(())
}
