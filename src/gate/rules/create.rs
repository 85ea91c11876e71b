//! The rules for the bodies the gate reads: `POST /containers/create` (what it asks for, what
//! would let it leave a slice, and the body placed in the caller's slice), an exec's, a
//! volume's, and a start's. Pure: paths on the host are resolved by the caller's function.
//!
//! Docker decodes these bodies with Go's `encoding/json`: a key matches a struct field
//! whatever its case, and of two keys for one field the last wins. So at each struct level
//! the rules read, two keys for one field (`"HostConfig"` and `"hostconfig"`) are refused
//! rather than guessed at, as is a key with a non-ASCII letter (Go folds `ſ` to `S`, `K` to
//! `k`): no real client sends either. Any key given twice verbatim is refused anywhere.

use std::fmt;

use super::json::Json;

/// What a body asked for that the rules care about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inspected {
    /// `HostConfig.Memory` in bytes (0: no limit, so `None`).
    pub memory: Option<u64>,
    /// `HostConfig.PidsLimit` (0 or -1: no limit, so `None`).
    pub pids: Option<u64>,
    /// `HostConfig.CgroupParent`, when set and not empty.
    pub cgroup_parent: Option<String>,
    /// What would let the container leave its slice.
    pub escapes: Vec<Escape>,
}

/// A way out of a slice that capped users may not take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Escape {
    Privileged,
    CgroupnsMode(String),
    /// A bind or volume of a path that holds (or is) the cgroup tree or a Docker socket.
    HostPath {
        field: &'static str,
        source: String,
        protected: String,
    },
    Capability(String),
    StartBody,
}

impl fmt::Display for Escape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Escape::Privileged => f.write_str("a privileged container (--privileged) can leave its slice"),
            Escape::CgroupnsMode(mode) => write!(f, "cgroup namespace mode {mode:?} (--cgroupns=host) shows the host's cgroup tree; only \"private\" is allowed"),
            Escape::HostPath { field, source, protected } if source == protected => {
                write!(f, "{field} of {source} would give the container {}", what_is(protected))
            }
            Escape::HostPath { field, source, protected } => write!(
                f,
                "{field} of {source} would give the container {protected} ({})",
                what_is(protected)
            ),
            Escape::Capability(cap) => write!(f, "capability {cap} (--cap-add) can leave its slice"),
            Escape::StartBody => f.write_str("a start request with a body (a HostConfig, as API versions before 1.24 took it) is not accepted; create the container with its settings and start it with an empty body"),
        }
    }
}

fn what_is(path: &str) -> &'static str {
    if path.starts_with("/sys") {
        "the host's cgroup tree"
    } else {
        "a Docker socket (the whole daemon)"
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("{at} is {kind}, not an object")]
    NotObject { at: String, kind: &'static str },
    #[error("{at} has the key {first:?} and {second:?}: Docker reads both into one field (keys match case-insensitively, the last wins), so the request is ambiguous; send each field once")]
    Duplicate {
        at: String,
        first: String,
        second: String,
    },
    #[error("{at} has the key {key:?} with a non-ASCII letter, which Docker may read as another field; use the field's own name")]
    NonAscii { at: String, key: String },
    #[error("{field} is {kind}: {why}")]
    Field {
        field: String,
        kind: &'static str,
        why: &'static str,
    },
}

/// Paths no capped user's container may bind: the cgroup tree and the daemon's sockets
/// (all cleaned, absolute). A path above one of them (`/sys`, `/run`, `/`) holds it too.
#[derive(Debug, Clone)]
pub struct Protected(Vec<String>);

impl Protected {
    pub fn new<I: IntoIterator<Item = String>>(sockets: I) -> Protected {
        // The cgroup tree first: a path above several is named by it.
        let mut paths = vec!["/sys/fs/cgroup".to_owned()];
        for socket in sockets {
            let socket = clean(&socket);
            if !paths.contains(&socket) {
                paths.push(socket);
            }
        }
        Protected(paths)
    }

    /// The protected path that `path` is, holds, or lies in.
    fn hit(&self, path: &str) -> Option<&str> {
        let within = |inner: &str, outer: &str| {
            inner == outer
                || outer == "/"
                || inner
                    .strip_prefix(outer)
                    .is_some_and(|rest| rest.starts_with('/'))
        };
        self.0
            .iter()
            .find(|p| within(p, path) || within(path, p))
            .map(String::as_str)
    }
}

/// A path as Go's `filepath.Clean` writes it: no `//`, `.` or `..` (`..` above `/` is `/`).
pub fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The value of the one key at this struct level that Go would read into `field`.
fn field<'a>(obj: &'a [(String, Json)], name: &str) -> Option<&'a Json> {
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// An object at a struct level of the body: unambiguous to Go, or refused.
fn struct_level<'a>(value: &'a Json, at: &str) -> Result<&'a [(String, Json)], Malformed> {
    let obj = value.as_object().ok_or_else(|| Malformed::NotObject {
        at: at.to_owned(),
        kind: value.kind(),
    })?;
    for (i, (key, _)) in obj.iter().enumerate() {
        if !key.is_ascii() {
            return Err(Malformed::NonAscii {
                at: at.to_owned(),
                key: key.clone(),
            });
        }
        if let Some((other, _)) = obj[..i].iter().find(|(k, _)| k.eq_ignore_ascii_case(key)) {
            return Err(Malformed::Duplicate {
                at: at.to_owned(),
                first: other.clone(),
                second: key.clone(),
            });
        }
    }
    Ok(obj)
}

/// Refuses a key given twice verbatim in any object (a map's last one wins in Go).
fn no_verbatim_duplicates(value: &Json, at: &str) -> Result<(), Malformed> {
    match value {
        Json::Object(entries) => {
            for (i, (key, v)) in entries.iter().enumerate() {
                if entries[..i].iter().any(|(k, _)| k == key) {
                    return Err(Malformed::Duplicate {
                        at: at.to_owned(),
                        first: key.clone(),
                        second: key.clone(),
                    });
                }
                no_verbatim_duplicates(v, &format!("{at}.{key}"))?;
            }
            Ok(())
        }
        Json::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| no_verbatim_duplicates(v, &format!("{at}[{i}]"))),
        _ => Ok(()),
    }
}

fn parse_object(body: &[u8]) -> Result<Json, Malformed> {
    let json = Json::parse(body).map_err(Malformed::NotJson)?;
    no_verbatim_duplicates(&json, "the body")?;
    struct_level(&json, "the body")?;
    Ok(json)
}

fn bad(field: &str, value: &Json, why: &'static str) -> Malformed {
    Malformed::Field {
        field: field.to_owned(),
        kind: value.kind(),
        why,
    }
}

fn optional_str<'a>(value: Option<&'a Json>, name: &str) -> Result<Option<&'a str>, Malformed> {
    match value {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s)),
        Some(other) => Err(bad(name, other, "Docker takes a string")),
    }
}

fn optional_int(value: Option<&Json>, name: &str) -> Result<Option<i64>, Malformed> {
    match value {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Number(n)) => n.as_i64().map(Some).ok_or_else(|| {
            bad(
                name,
                &Json::Number(n.clone()),
                "Docker takes a whole number",
            )
        }),
        Some(other) => Err(bad(name, other, "Docker takes a whole number")),
    }
}

fn strings<'a>(value: Option<&'a Json>, name: &str) -> Result<Vec<&'a str>, Malformed> {
    match value {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .ok_or_else(|| bad(name, i, "Docker takes a list of strings"))
            })
            .collect(),
        Some(other) => Err(bad(name, other, "Docker takes a list of strings")),
    }
}

/// The host path a `-v SOURCE:TARGET[:MODE]` entry binds, if it binds one: an absolute first
/// part of two or more (a named volume's name is not absolute). `/x:ro` (an anonymous volume
/// at /x) is read as a bind of /x too: refusing it when /x is protected costs nothing.
fn bind_source(spec: &str) -> Option<&str> {
    let mut parts = spec.split(':');
    let first = parts.next()?;
    (parts.next().is_some() && first.starts_with('/')).then_some(first)
}

/// Reads a create body. `resolve` gives the real path of a host path (symbolic links
/// followed as far as the path exists), so that a link to the cgroup tree is seen as such.
pub fn inspect_create(
    body: &[u8],
    protected: &Protected,
    resolve: &dyn Fn(&str) -> String,
) -> Result<(Json, Inspected), Malformed> {
    let json = parse_object(body)?;
    let top = json.as_object().unwrap_or_default();
    match field(top, "Labels") {
        None | Some(Json::Null) | Some(Json::Object(_)) => {}
        Some(other) => return Err(bad("Labels", other, "Docker takes a map of strings")),
    }
    let found = match field(top, "HostConfig") {
        None | Some(Json::Null) => Inspected::default(),
        Some(h) => inspect_host(struct_level(h, "HostConfig")?, protected, resolve)?,
    };
    Ok((json, found))
}

fn inspect_host(
    host: &[(String, Json)],
    protected: &Protected,
    resolve: &dyn Fn(&str) -> String,
) -> Result<Inspected, Malformed> {
    let mut found = Inspected {
        cgroup_parent: optional_str(field(host, "CgroupParent"), "HostConfig.CgroupParent")?
            .filter(|p| !p.is_empty())
            .map(str::to_owned),
        ..Inspected::default()
    };
    found.memory = match optional_int(field(host, "Memory"), "HostConfig.Memory")? {
        Some(m) if m < 0 => {
            return Err(bad(
                "HostConfig.Memory",
                &Json::Number(m.into()),
                "a memory limit cannot be negative",
            ))
        }
        m => m.filter(|m| *m > 0).map(i64::unsigned_abs),
    };
    found.pids = optional_int(field(host, "PidsLimit"), "HostConfig.PidsLimit")?
        .filter(|p| *p > 0)
        .map(i64::unsigned_abs);

    match field(host, "Privileged") {
        None | Some(Json::Null) | Some(Json::Bool(false)) => {}
        Some(Json::Bool(true)) => found.escapes.push(Escape::Privileged),
        Some(other) => {
            return Err(bad(
                "HostConfig.Privileged",
                other,
                "Docker takes true or false",
            ))
        }
    }
    if let Some(mode) = optional_str(field(host, "CgroupnsMode"), "HostConfig.CgroupnsMode")? {
        if !matches!(mode, "" | "private") {
            found.escapes.push(Escape::CgroupnsMode(mode.to_owned()));
        }
    }
    let mut paths = Vec::new();
    for spec in strings(field(host, "Binds"), "HostConfig.Binds")? {
        if let Some(source) = bind_source(spec) {
            paths.push(("a bind (-v)", source));
        }
    }
    match field(host, "Mounts") {
        None | Some(Json::Null) => {}
        Some(Json::Array(mounts)) => {
            for (i, m) in mounts.iter().enumerate() {
                let at = format!("HostConfig.Mounts[{i}]");
                let mount = struct_level(m, &at)?;
                let source = optional_str(field(mount, "Source"), &format!("{at}.Source"))?;
                if let Some(source) = source.filter(|s| s.starts_with('/')) {
                    paths.push(("a mount (--mount)", source));
                }
                if let Some(device) = volume_device(mount, &at)? {
                    paths.push(("a volume's device (--mount volume-opt=device=)", device));
                }
            }
        }
        Some(other) => {
            return Err(bad(
                "HostConfig.Mounts",
                other,
                "Docker takes a list of mounts",
            ))
        }
    }
    for (field, source) in paths {
        if let Some(escape) = host_path(protected, resolve, field, source) {
            found.escapes.push(escape);
        }
    }
    for cap in strings(field(host, "CapAdd"), "HostConfig.CapAdd")? {
        let upper = cap.to_ascii_uppercase();
        let name = upper.strip_prefix("CAP_").unwrap_or(&upper);
        if matches!(name, "SYS_ADMIN" | "ALL") {
            found.escapes.push(Escape::Capability(cap.to_owned()));
        }
    }
    Ok(found)
}

/// The escape of binding `source`: as written (cleaned) or as the host resolves it.
fn host_path(
    protected: &Protected,
    resolve: &dyn Fn(&str) -> String,
    field: &'static str,
    source: &str,
) -> Option<Escape> {
    let cleaned = clean(source);
    let hit = protected
        .hit(&cleaned)
        .or_else(|| protected.hit(&resolve(&cleaned)))?;
    Some(Escape::HostPath {
        field,
        source: source.to_owned(),
        protected: hit.to_owned(),
    })
}

/// `VolumeOptions.DriverConfig.Options.device` of a mount: the host path a local volume
/// binds (`type=none,o=bind`).
fn volume_device<'a>(mount: &'a [(String, Json)], at: &str) -> Result<Option<&'a str>, Malformed> {
    let Some(options) = field(mount, "VolumeOptions").filter(|v| **v != Json::Null) else {
        return Ok(None);
    };
    let options = struct_level(options, &format!("{at}.VolumeOptions"))?;
    let Some(driver) = field(options, "DriverConfig").filter(|v| **v != Json::Null) else {
        return Ok(None);
    };
    let driver = struct_level(driver, &format!("{at}.VolumeOptions.DriverConfig"))?;
    device_option(
        field(driver, "Options"),
        &format!("{at}.VolumeOptions.DriverConfig.Options"),
    )
}

/// The `device` of a volume driver's options (a map: its keys are exact).
fn device_option<'a>(options: Option<&'a Json>, at: &str) -> Result<Option<&'a str>, Malformed> {
    match options {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Object(entries)) => {
            let device = entries.iter().find(|(k, _)| k == "device").map(|(_, v)| v);
            Ok(optional_str(device, &format!("{at}.device"))?.filter(|d| d.starts_with('/')))
        }
        Some(other) => Err(bad(at, other, "Docker takes a map of strings")),
    }
}

/// `POST /volumes/create`: a local volume whose device is a protected path.
pub fn inspect_volume(
    body: &[u8],
    protected: &Protected,
    resolve: &dyn Fn(&str) -> String,
) -> Result<Vec<Escape>, Malformed> {
    let json = parse_object(body)?;
    let top = json.as_object().unwrap_or_default();
    let device = device_option(field(top, "DriverOpts"), "DriverOpts")?;
    Ok(device
        .and_then(|d| {
            host_path(
                protected,
                resolve,
                "a volume's device (docker volume create --opt device=)",
                d,
            )
        })
        .into_iter()
        .collect())
}

/// `POST /containers/{id}/exec`: `Privileged` runs the command with every capability.
pub fn inspect_exec(body: &[u8]) -> Result<Vec<Escape>, Malformed> {
    let json = parse_object(body)?;
    let top = json.as_object().unwrap_or_default();
    match field(top, "Privileged") {
        None | Some(Json::Null) | Some(Json::Bool(false)) => Ok(Vec::new()),
        Some(Json::Bool(true)) => Ok(vec![Escape::Privileged]),
        Some(other) => Err(bad("Privileged", other, "Docker takes true or false")),
    }
}

/// `POST /containers/{id}/start`: an empty body (or one that says nothing: `{}`, `null`).
pub fn inspect_start(body: &[u8]) -> Vec<Escape> {
    let text = String::from_utf8_lossy(body);
    match text.trim() {
        "" | "{}" | "null" => Vec::new(),
        _ => vec![Escape::StartBody],
    }
}

/// The create body placed in `slice`: its one `HostConfig` with `CgroupParent` set to the
/// slice (every other spelling removed), and the labels `ds01.user` and `ds01.slice`.
pub fn place(json: Json, slice: &str, user: &str) -> Result<Vec<u8>, Malformed> {
    let Json::Object(top) = json else {
        return Err(Malformed::NotObject {
            at: "the body".into(),
            kind: json.kind(),
        });
    };
    let mut host: Vec<(String, Json)> = Vec::new();
    let mut labels: Vec<(String, Json)> = Vec::new();
    let mut rest: Vec<(String, Json)> = Vec::with_capacity(top.len() + 2);
    for (key, value) in top {
        if key.eq_ignore_ascii_case("HostConfig") {
            if let Json::Object(entries) = value {
                host = entries;
            }
        } else if key.eq_ignore_ascii_case("Labels") {
            match value {
                Json::Object(entries) => labels = entries,
                Json::Null => {}
                other => return Err(bad("Labels", &other, "Docker takes a map of strings")),
            }
        } else {
            rest.push((key, value));
        }
    }
    host.retain(|(k, _)| !k.eq_ignore_ascii_case("CgroupParent"));
    host.push(("CgroupParent".into(), Json::String(slice.into())));
    labels.retain(|(k, _)| k != LABEL_USER && k != LABEL_SLICE);
    labels.push((LABEL_USER.into(), Json::String(user.into())));
    labels.push((LABEL_SLICE.into(), Json::String(slice.into())));
    rest.push(("Labels".into(), Json::Object(labels)));
    rest.push(("HostConfig".into(), Json::Object(host)));
    Ok(Json::Object(rest).to_vec())
}

/// The labels a placed container carries, to trace it back to its user.
pub const LABEL_USER: &str = "ds01.user";
pub const LABEL_SLICE: &str = "ds01.slice";

#[cfg(test)]
#[path = "create_tests.rs"]
mod tests;
