//! The use cases: apply, the container hook, verify, render, the take-over of rendered
//! files, and doctor. Each returns a report (with the notes worth telling the admin) and
//! prints nothing; the command line (`cli/`) decides what is shown and which exit code it
//! means.

pub mod apply;
pub mod containers;
pub mod deploy;
pub mod doctor;
pub mod fleet;
pub mod hook;
pub mod metrics;
pub mod reload_guard;
pub mod render;
pub mod status;
pub mod take_over;
pub mod verify;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use crate::config::Config;
use crate::diff;
use crate::model::names::{SliceName, UserName};
use crate::model::property::Property;
use crate::plan::{self, SliceSpec};
use crate::systemd::{pipeline, Systemd};

pub use apply::ApplyError;

/// Which slices a run covers: the whole configuration, or one user.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    All,
    User(&'a UserName),
}

impl<'a> From<Option<&'a UserName>> for Scope<'a> {
    fn from(user: Option<&'a UserName>) -> Self {
        match user {
            Some(u) => Scope::User(u),
            None => Scope::All,
        }
    }
}

/// Things a run noticed that do not change its outcome (a slower path taken, a holder left
/// to expire by itself), for the command line to show. Shared by reference between the
/// concurrent parts of one run on one thread; never borrowed across an await.
#[derive(Debug, Default)]
pub struct Notes(RefCell<Vec<String>>);

impl Notes {
    /// `text` starts with its level, `note: ` or `warning: `.
    pub fn push(&self, text: impl Into<String>) {
        self.0.borrow_mut().push(text.into());
    }

    pub fn into_vec(self) -> Vec<String> {
        self.0.into_inner()
    }
}

/// Every slice `scope` covers and what is desired of it: the plan, plus the slices known
/// from our records (and, for a full run, those systemd has loaded) that the plan lacks.
pub async fn desired_in_scope<S: Systemd>(
    sd: &S,
    config: &Config,
    scope: Scope<'_>,
    owned: &BTreeMap<SliceName, BTreeSet<Property>>,
) -> Result<BTreeMap<SliceName, Option<SliceSpec>>, ApplyError> {
    let (plan, known) = match scope {
        Scope::All => {
            let mut known: BTreeSet<SliceName> = owned.keys().cloned().collect();
            known.extend(sd.loaded_slices().await?);
            (plan::plan(config)?, known)
        }
        Scope::User(user) => {
            let known = match user.sanitized() {
                Ok(mine) => owned
                    .keys()
                    .filter(|s| s.is_users(&mine))
                    .cloned()
                    .collect(),
                Err(_) => BTreeSet::new(),
            };
            (plan::plan_user(config, user)?, known)
        }
    };
    Ok(diff::desired_state(config, &plan, &known))
}

/// A holder for `slices` if there are many; a holder that cannot be had only costs speed.
async fn hold<S: Systemd>(sd: &S, slices: &[SliceName], notes: &Notes) -> Option<String> {
    match pipeline::hold_if_many(sd, slices).await {
        Ok(h) => h,
        Err(e) => {
            notes.push(format!("note: {e}; going on without it (slower)"));
            None
        }
    }
}

async fn release<S: Systemd>(sd: &S, holder: Option<String>, notes: &Notes) {
    if let Err(e) = pipeline::release_hold(sd, holder).await {
        notes.push(format!(
            "warning: {e}; the holder stops by itself within 15 minutes"
        ));
    }
}
