//! Every container accounted for: the containers that run outside their user's slice, where no
//! per-user limit holds for them. Found from systemd (its `docker-ID.scope` and
//! `libpod-ID.scope` units, wherever they run) and from the cgroup tree (the same scopes, and
//! the plain cgroups Docker's BuildKit runs build steps in, which are no unit); named and owned
//! through Docker's API (`ds01.user` label) when its socket can be read, never required.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use super::Scope;
use crate::cgroupfs::containers::{self as tree, Found};
use crate::config::Config;
use crate::docker::api;
use crate::model::containers::{
    identify, placement, ContainerKind, ContainerReport, OutsideContainer, Placement,
};
use crate::model::names::{SliceName, UserName};
use crate::systemd::{pipeline, Systemd};

/// Where to look besides systemd.
#[derive(Debug, Clone, Copy)]
pub struct Sources<'a> {
    /// This machine's cgroup file system; `None` for another machine's systemd (`--host`).
    pub cgroup_root: Option<&'a Path>,
    /// How long Docker's API may take to name the containers found; `None`: not asked.
    pub docker: Option<Duration>,
}

impl<'a> Sources<'a> {
    /// The cgroup tree if it is this machine's, and Docker's API with it.
    pub fn local(cgroup_root: Option<&'a Path>) -> Sources<'a> {
        Sources {
            cgroup_root,
            docker: cgroup_root.map(|_| api::TIMEOUT),
        }
    }
}

pub async fn find<S: Systemd>(
    sd: &S,
    config: &Config,
    scope: Scope<'_>,
    sources: Sources<'_>,
) -> ContainerReport {
    let mut report = ContainerReport::default();
    let mut found: Vec<Found> = Vec::new();
    let mut tree_read = false;
    if let Some(root) = sources.cgroup_root {
        match tree::find(root) {
            Ok(t) => {
                tree_read = true;
                report
                    .sources
                    .push(format!("cgroup tree {}", t.dir.display()));
                if t.truncated {
                    report.notes.push(format!(
                        "warning: the cgroup tree under {} is too large or too deep to read whole; containers beyond what was read are not accounted for",
                        t.dir.display()
                    ));
                }
                found = t.found;
            }
            Err(e) => report.notes.push(format!(
                "warning: the cgroup tree could not be read ({e}): only systemd's container scopes are looked at"
            )),
        }
    }
    // Scopes read over the bus: their usage comes with them.
    let mut usage: BTreeMap<String, (Option<u64>, Option<u64>)> = BTreeMap::new();
    let mut unread = Vec::new();
    let listed = sd.container_scopes().await;
    match &listed {
        Ok(units) => {
            report.sources.push("systemd".to_owned());
            let seen: BTreeSet<&str> = found.iter().filter_map(|f| f.unit.as_deref()).collect();
            let missing: Vec<String> = units
                .iter()
                .filter(|u| !seen.contains(u.as_str()))
                .cloned()
                .collect();
            let states = pipeline::bounded(&missing, |u| sd.read_scope(u)).await;
            for (unit, state) in missing.iter().zip(states) {
                let Some((kind, id)) = identify(unit) else {
                    continue;
                };
                match state {
                    Ok(s) => {
                        // A scope with no cgroup has stopped since it was listed.
                        if let Some(cgroup) = s.control_group {
                            usage.insert(cgroup.clone(), (s.memory_current, s.tasks_current));
                            found.push(Found {
                                kind,
                                id,
                                unit: Some(unit.clone()),
                                cgroup,
                            });
                        }
                    }
                    Err(e) => unread.push(format!("{unit}: {e}")),
                }
            }
        }
        Err(e) => report.notes.push(format!(
            "warning: systemd could not list the container scopes ({e})"
        )),
    }
    if !tree_read && listed.is_err() {
        report.error = Some(match sources.cgroup_root {
            Some(_) => {
                "neither systemd nor the cgroup tree could be read: no container is accounted for"
                    .to_owned()
            }
            None => "systemd could not list the container scopes: no container is accounted for"
                .to_owned(),
        });
        return report;
    }
    if !unread.is_empty() {
        let shown: Vec<&str> = unread.iter().take(3).map(String::as_str).collect();
        report.error = Some(format!(
            "{} container scopes could not be read, so where they run is unknown: {}{}",
            unread.len(),
            shown.join("; "),
            if unread.len() > shown.len() {
                "; ..."
            } else {
                ""
            }
        ));
    }
    // Without the cgroup tree (`--host`: another machine's), BuildKit's build steps are not
    // seen; the command line's note for such a run says its cgroup files are not read.
    // One container may show in both the tree and the list (it started in between).
    found.sort_by(|a, b| a.cgroup.cmp(&b.cgroup));
    found.dedup_by(|a, b| a.cgroup == b.cgroup);
    for f in found {
        match placement(&f.cgroup) {
            Placement::UserSlice(_) => report.in_user_slices += 1,
            Placement::Outside { slice } => {
                let (memory_bytes, tasks) = match (usage.get(&f.cgroup), sources.cgroup_root) {
                    (Some(u), _) => *u,
                    (None, Some(root)) => tree::usage(root, &f.cgroup),
                    (None, None) => (None, None),
                };
                report.outside.push(OutsideContainer {
                    kind: f.kind,
                    id: f.id,
                    name: None,
                    unit: f.unit,
                    slice,
                    cgroup: f.cgroup,
                    owner: None,
                    owner_slice: None,
                    memory_bytes,
                    tasks,
                });
            }
        }
    }
    if let Some(timeout) = sources.docker {
        name_from_docker(&mut report, timeout).await;
    }
    for c in &mut report.outside {
        c.owner_slice = c
            .owner
            .as_deref()
            .and_then(|o| UserName::new(o).ok())
            .and_then(|u| config.resolve(&u).ok())
            .map(|r| r.slice);
    }
    if let Scope::User(user) = scope {
        let mine: Option<SliceName> = config.resolve(user).ok().map(|r| r.slice);
        let all = report.outside.len();
        report.outside.retain(|c| {
            c.owner.as_deref() == Some(user.as_str()) || (mine.is_some() && c.owner_slice == mine)
        });
        let others = all - report.outside.len();
        if others > 0 {
            report.notes.push(format!(
                "note: {others} more containers run outside their user's slice, of other or unknown owners; without a user name they are listed"
            ));
        }
    }
    report.outside.sort_by(|a, b| {
        (a.owner.as_deref(), &a.slice, &a.id).cmp(&(b.owner.as_deref(), &b.slice, &b.id))
    });
    report
}

/// Docker's names and `ds01.user` labels of the Docker containers found outside.
async fn name_from_docker(report: &mut ContainerReport, timeout: Duration) {
    let ids: Vec<&str> = report
        .outside
        .iter()
        .filter(|c| {
            matches!(
                c.kind,
                ContainerKind::Docker | ContainerKind::DockerCgroupfs
            )
        })
        .map(|c| c.id.as_str())
        .collect();
    if ids.is_empty() {
        return;
    }
    match api::containers(&ids, timeout).await {
        Ok(list) => {
            report.sources.push("docker api".to_owned());
            let by_id: BTreeMap<&str, &api::ContainerInfo> =
                list.iter().map(|c| (c.id.as_str(), c)).collect();
            for c in &mut report.outside {
                if let Some(info) = by_id.get(c.id.as_str()) {
                    c.name.clone_from(&info.name);
                    c.owner = info.labels.get(api::OWNER_LABEL).cloned();
                }
            }
        }
        Err(e) => report.notes.push(format!(
            "note: Docker's API was not asked for the names and owners of {} containers ({e}); their owner shows as unknown",
            ids.len()
        )),
    }
}
