//! The requests the gate looks into, decided: who asks, what the configuration says about
//! them, what the rules find in the body, and (for a create or a classic build) the user's
//! slice made ready by the hook's own use case — limits written when needed, the MemoryMax
//! safety rule, the writer lock — with admission of the container's memory and pids.
//!
//! Everything here blocks (NSS, the configuration's files, the writer lock, paths on the
//! host), so it runs on a thread of tokio's blocking pool; the hook's calls to systemd are
//! driven from there on the runtime.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use super::identity::{self, Caller, IdentityError};
use super::rules::create::{self, Escape, Malformed, Protected};
use super::rules::route::{self, Route};
use crate::config::ConfigError;
use crate::model::admission::{Policy, Request};
use crate::model::names::SliceName;
use crate::ops::hook::{self, HookError, HookOptions};
use crate::plan::HookTarget;
use crate::state::ownership::Ownership;
use crate::systemd::{BusError, BusSystemd, WriteMode};

/// What the gate needs to decide.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub cgroup_root: PathBuf,
    /// systemd's bus (`None`: the system bus).
    pub bus: Option<String>,
    /// For each call to systemd, and for the writer lock.
    pub timeout: Duration,
    pub policy: Policy,
    /// The daemon's own socket, where requests go.
    pub daemon: PathBuf,
    pub protected: Protected,
}

/// One connection to systemd for every request, made again after an error that ends it.
pub struct Systemd {
    bus: Option<String>,
    timeout: Duration,
    connection: tokio::sync::Mutex<Option<Arc<BusSystemd>>>,
}

impl Systemd {
    pub fn new(bus: Option<String>, timeout: Duration) -> Systemd {
        Systemd {
            bus,
            timeout,
            connection: tokio::sync::Mutex::new(None),
        }
    }

    async fn get(&self) -> Result<Arc<BusSystemd>, BusError> {
        let mut slot = self.connection.lock().await;
        if let Some(sd) = slot.as_ref() {
            return Ok(sd.clone());
        }
        let sd = Arc::new(BusSystemd::connect(self.bus.as_deref(), self.timeout).await?);
        *slot = Some(sd.clone());
        Ok(sd)
    }

    async fn forget(&self) {
        *self.connection.lock().await = None;
    }
}

/// A request refused, with the status and the message the client is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

/// What became of a request the gate looked into.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub user: Option<String>,
    pub slice: Option<SliceName>,
    pub admin: bool,
    pub outcome: Outcome,
    /// Warnings of the hook (tasks near TasksMax, a reading that failed) and its notes.
    pub notes: Vec<String>,
    pub spent: Spent,
}

/// Where deciding took its time (the gate's trace, `DS01_TRACE=1`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Spent {
    /// The caller's account (NSS) and its target in the configuration.
    pub identity: Duration,
    /// The hook's use case: the slice made ready and the request admitted.
    pub slice: Duration,
    /// Of `slice`, the time with a call to systemd outstanding (on the gate's one connection,
    /// so with other requests' calls when they overlap).
    pub systemd: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forward the request unchanged (root, an admin's request, one with nothing to check).
    Pass,
    /// Forward it with this body (a create placed in the slice).
    Body(Vec<u8>),
    /// Forward it with this query (a build placed in the slice).
    Query(String),
    Refused(Refusal),
}

impl Verdict {
    fn pass() -> Verdict {
        Verdict {
            user: None,
            slice: None,
            admin: false,
            outcome: Outcome::Pass,
            notes: Vec::new(),
            spent: Spent::default(),
        }
    }
}

/// The request in the words the rules need.
pub struct Asked<'a> {
    pub route: &'a Route,
    pub uid: u32,
    pub body: &'a [u8],
    pub query: Option<&'a str>,
    pub content_type: Option<&'a str>,
}

/// Decides a request the rules apply to. Blocking: see the module's comment.
pub fn decide(settings: &Settings, systemd: &Systemd, rt: &Handle, asked: &Asked<'_>) -> Verdict {
    let started = Instant::now();
    let caller = match identity::caller(asked.uid) {
        Ok(Caller::Root) => return Verdict::pass(),
        Ok(Caller::User { name, .. }) => name,
        Err(e) => return refused_identity(None, &e, asked.route),
    };
    let ownership = Ownership::new(&settings.state_dir).with_lock_wait(settings.timeout);
    let target = match identity::target(&settings.config, &ownership, &caller) {
        Ok(t) => t,
        Err(e) => return refused_identity(Some(caller.to_string()), &e.into(), asked.route),
    };
    let mut verdict = Verdict {
        user: Some(target.user.to_string()),
        slice: Some(target.slice.clone()),
        admin: identity::is_admin(&target),
        outcome: Outcome::Pass,
        notes: Vec::new(),
        spent: Spent {
            identity: started.elapsed(),
            ..Spent::default()
        },
    };
    let spent = &mut verdict.spent;
    let result = match asked.route {
        Route::ContainerCreate => place_container(
            settings,
            systemd,
            rt,
            &target,
            verdict.admin,
            asked.body,
            spent,
        )
        .map(|(body, notes)| {
            verdict.notes = notes;
            Outcome::Body(body)
        }),
        Route::Build => {
            place_build(settings, systemd, rt, &target, asked, spent).map(|(query, notes)| {
                verdict.notes = notes;
                Outcome::Query(query)
            })
        }
        Route::ContainerStart => escapes(&target, verdict.admin, create::inspect_start(asked.body)),
        Route::ExecCreate => create::inspect_exec(asked.body)
            .map_err(malformed)
            .and_then(|e| escapes(&target, verdict.admin, e)),
        Route::VolumeCreate => {
            create::inspect_volume(asked.body, &settings.protected, &resolve_on_host)
                .map_err(malformed)
                .and_then(|e| escapes(&target, verdict.admin, e))
        }
        Route::Creating | Route::Other => Ok(Outcome::Pass),
    };
    verdict.outcome = result.unwrap_or_else(Outcome::Refused);
    verdict
}

fn place_container(
    settings: &Settings,
    systemd: &Systemd,
    rt: &Handle,
    target: &HookTarget,
    admin: bool,
    body: &[u8],
    spent: &mut Spent,
) -> Result<(Vec<u8>, Vec<String>), Refusal> {
    let (json, found) =
        create::inspect_create(body, &settings.protected, &resolve_on_host).map_err(malformed)?;
    escapes(target, admin, found.escapes)?;
    if let Some(parent) = &found.cgroup_parent {
        if parent != target.slice.as_str() && !admin {
            return Err(Refusal::new(
                403,
                format!(
                    "ds01-slices gate: refused the container of {}: it asks for the cgroup parent {parent:?}, but {}'s containers run in {}; leave --cgroup-parent out (the gate sets it)",
                    target.user, target.user, target.slice
                ),
            ));
        }
    }
    let request = Request {
        memory_bytes: found.memory,
        pids: found.pids,
    };
    let (slice, notes) = ready_slice(settings, systemd, rt, target, Some(request), spent)?;
    // An admin's own cgroup parent is theirs to choose.
    if admin && found.cgroup_parent.is_some() {
        return Ok((body.to_vec(), notes));
    }
    let placed = create::place(json, slice.as_str(), target.user.as_str()).map_err(malformed)?;
    Ok((placed, notes))
}

fn place_build(
    settings: &Settings,
    systemd: &Systemd,
    rt: &Handle,
    target: &HookTarget,
    asked: &Asked<'_>,
    spent: &mut Spent,
) -> Result<(String, Vec<String>), Refusal> {
    if route::is_form(asked.content_type) {
        return Err(Refusal::new(
            400,
            "ds01-slices gate: a build's body must be its context (a tar archive), not form fields, which Docker would read before the query",
        ));
    }
    let query = route::place_build(asked.query, target.slice.as_str())
        .map_err(|e| Refusal::new(400, format!("ds01-slices gate: {e}")))?;
    if let Some(other) = query
        .cgroup_parents
        .iter()
        .find(|p| !p.is_empty() && *p != target.slice.as_str())
    {
        if !identity::is_admin(target) {
            return Err(Refusal::new(
                403,
                format!(
                    "ds01-slices gate: refused the build of {}: it asks for the cgroup parent {other:?}, but {}'s containers run in {}; leave --cgroup-parent out (the gate sets it)",
                    target.user, target.user, target.slice
                ),
            ));
        }
        return Ok((asked.query.unwrap_or("").to_owned(), Vec::new()));
    }
    let (_, notes) = ready_slice(settings, systemd, rt, target, None, spent)?;
    Ok((query.placed, notes))
}

/// The hook's use case for `target`: the slice made ready (and the request admitted).
fn ready_slice(
    settings: &Settings,
    systemd: &Systemd,
    rt: &Handle,
    target: &HookTarget,
    request: Option<Request>,
    spent: &mut Spent,
) -> Result<(SliceName, Vec<String>), Refusal> {
    let started = Instant::now();
    let ownership = Ownership::new(&settings.state_dir).with_lock_wait(settings.timeout);
    let opts = HookOptions {
        mode: WriteMode::Persistent,
        cgroup_root: &settings.cgroup_root,
        admission: request.map(|r| (r, settings.policy)),
    };
    rt.block_on(async {
        let sd = systemd
            .get()
            .await
            .map_err(|e| not_ready(target, &e.into()))?;
        let waited = sd.stats().waiting_ms;
        let hooked = hook::hook(&*sd, target, &ownership, opts).await;
        spent.slice = started.elapsed();
        spent.systemd = Duration::from_secs_f64((sd.stats().waiting_ms - waited).max(0.0) / 1000.0);
        match hooked {
            Ok((slice, report)) => Ok((slice, report.notes)),
            Err(HookError::Refused {
                user,
                slice,
                finding,
            }) => Err(Refusal::new(
                403,
                format!("\n{}", hook::refusal_box(&user, &slice, &finding)),
            )),
            Err(e) => {
                // Whatever ended this request may have ended the connection too: the next
                // request connects again.
                systemd.forget().await;
                Err(not_ready(target, &e))
            }
        }
    })
}

fn not_ready(target: &HookTarget, e: &HookError) -> Refusal {
    let status = match e {
        HookError::MemoryBelowUsage { .. } => 403,
        _ => 503,
    };
    Refusal::new(
        status,
        format!(
            "ds01-slices gate: the container of {} was not created: {e}",
            target.user
        ),
    )
}

fn escapes(target: &HookTarget, admin: bool, found: Vec<Escape>) -> Result<Outcome, Refusal> {
    if admin || found.is_empty() {
        return Ok(Outcome::Pass);
    }
    let reasons: Vec<String> = found.iter().map(Escape::to_string).collect();
    Err(Refusal::new(
        403,
        format!(
            "ds01-slices gate: refused for {}: {}. Every container of {} stays in {} with its limits; ask an admin if you need this",
            target.user,
            reasons.join("; "),
            target.user,
            target.slice
        ),
    ))
}

fn malformed(e: Malformed) -> Refusal {
    Refusal::new(400, format!("ds01-slices gate: {e}"))
}

fn refused_identity(user: Option<String>, e: &IdentityError, route: &Route) -> Verdict {
    let status = match e {
        IdentityError::Config(
            ConfigError::Unreadable { .. }
            | ConfigError::Untrusted { .. }
            | ConfigError::Changed { .. }
            | ConfigError::Invalid(_),
        )
        | IdentityError::Lookup { .. } => 503,
        _ => 403,
    };
    let what = match route {
        Route::Build => "build",
        Route::VolumeCreate => "volume",
        Route::ExecCreate => "exec",
        Route::ContainerStart => "start",
        Route::Creating | Route::Other => "request",
        Route::ContainerCreate => "container",
    };
    Verdict {
        user,
        slice: None,
        admin: false,
        outcome: Outcome::Refused(Refusal::new(
            status,
            format!("ds01-slices gate: refused this {what}: {e}"),
        )),
        notes: Vec::new(),
        spent: Spent::default(),
    }
}

/// The real path of `path` on the host: symbolic links followed as far as the path exists
/// (Docker creates a missing bind source; what would be created is below the part that
/// exists). A path that cannot be read at all stays as it is, and is judged as written.
pub fn resolve_on_host(path: &str) -> String {
    let mut existing = Path::new(path);
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            let mut real = real;
            for part in rest.iter().rev() {
                real.push(part);
            }
            return real.to_string_lossy().into_owned();
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return path.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_resolve_through_links_and_below_what_exists() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("cg");
        std::os::unix::fs::symlink("/sys/fs/cgroup", &link).unwrap();
        let link = link.to_str().unwrap();
        assert_eq!(resolve_on_host(link), "/sys/fs/cgroup");
        assert_eq!(
            resolve_on_host(&format!("{link}/not/yet")),
            "/sys/fs/cgroup/not/yet"
        );
        assert_eq!(resolve_on_host("/no-such-dir/x"), "/no-such-dir/x");
    }
}
