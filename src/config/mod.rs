//! The DS01 configuration: `resource-limits.yaml`, `groups/<group>.members` and
//! `user-overrides.yaml`, loaded in two stages with one file for each part:
//!
//! 1. `read.rs` reads the files. It is the only part that touches the file system, so every
//!    other part can be tested on texts; it walks the main file's YAML as it goes (through
//!    `yaml.rs`), because the main file names the members files to read.
//! 2. `validate.rs` joins the members and overrides to the main file into a [`Config`] in
//!    which every user resolves, or reports every problem with its line.
//!
//! `yaml.rs` turns YAML text into a [`RawConfig`], with line positions from `lines.rs`.
//! serde_yaml is deprecated upstream; every serde_yaml call of the crate is in `yaml.rs`, so
//! replacing it touches no other file.
//!
//! A hook runs before every container start, and at thousands of users it cannot afford to
//! parse and validate everything each time. Its record of what the last full validation
//! answered for every user is state the hook keeps (`crate::state::cache`); this module gives
//! it the [`Digests`] of the files, which say whether that answer still holds.

mod digest;
mod files;
mod lines;
mod nesting;
mod read;
mod trust;
mod types;
mod validate;
mod yaml;

#[cfg(test)]
mod read_tests;
#[cfg(test)]
mod tests;

use std::path::Path;

pub use digest::{Digest, Digests};
pub use read::{current_digests, Sources};
pub use types::{
    Aggregate, Config, ConfigError, Group, Member, OverrideAggregate, ResolveError, ResolvedUser,
    UserOverride, Written, DEFAULT_CONFIG_PATH, GROUPS_DIR, OVERRIDES_FILE,
};
pub use validate::MembersFile;
pub use yaml::RawConfig;

/// Whether [`load`] holds the files to the trust rule (`trust.rs`): only when run as root,
/// which alone acts on them.
pub fn checks_trust() -> bool {
    files::running_as_root()
}

/// Reads the configuration rooted at `path` (the YAML; members and overrides beside it).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    Sources::read(path)?.validate()
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
