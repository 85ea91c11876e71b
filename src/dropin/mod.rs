//! The drop-in file backend: the plan rendered as `10-resource-limits.conf` files, for hosts
//! (or images) whose systemd cannot be reached over D-Bus, and the rules that keep that world
//! and the D-Bus world from contradicting each other.
//!
//! Two worlds, one rule each way (docs/rendering.md, "Two worlds"):
//! - systemd applies drop-ins in file-name order, so a D-Bus write
//!   (`system.control/<slice>.d/50-<Setting>.conf`) always shadows our `10-resource-limits.conf`.
//!   `render` therefore removes the D-Bus drop-ins that the ownership records say we wrote.
//! - `apply` over D-Bus removes our rendered files of the slices it manages, once D-Bus holds
//!   every value they held.
//!
//! A render reads, decides, then writes, and only the last step changes anything, so
//! `--dry-run` and `verify --offline` stop before it and still say exactly what it would do:
//! - `format`: the bytes of our files and the recognition of files found (pure);
//! - `root`: `--root` and the rule below it: no symlink is followed;
//! - `scan`: what is on disk under `--root`;
//! - `decide`: scan and plan into a [`TreePlan`], an action for every file;
//! - `commit`: a [`TreePlan`] carried out, all new contents staged before any is renamed
//!   into place ([`crate::atomic`]);
//! - `offline`: a [`TreePlan`] as the `verify --offline` report;
//! - `takeover`: the files `apply` takes over, and their removal;
//! - [`explain`]: which drop-in wins, for `verify` against a live systemd.
//!
//! Callers use the re-exports below; the modules are private so that the split stays free to
//! change.

mod commit;
mod decide;
mod error;
pub mod explain;
mod format;
mod offline;
mod root;
mod scan;
mod takeover;
#[cfg(test)]
mod testutil;

pub use commit::{execute, Executed};
pub use decide::{in_scope, plan_tree, FileAction, FilePlan, OwnedDbusDropIn, Shadow, TreePlan};
pub use error::RenderError;
pub use format::{
    classify, dbus_drop_in_name, display_setting_value, drop_in_dir_name, only_settings,
    parse_assignments, parse_setting_value, property_for_setting, relative_path, render_plan,
    render_spec, same_setting_value, setting_value, DropIn, Provenance, CONTROL_DIRS, DROP_IN_FILE,
    MARKER, UNIT_DIR,
};
pub use offline::{offline_check, FileCheck, FileStatus, OfflineCounts, OfflineReport};
pub use root::Root;
pub use scan::{read_found, scan, Found, Scan};
pub use takeover::{find_rendered, take_over_rendered, Rendered};
