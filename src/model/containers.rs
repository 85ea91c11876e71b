//! Containers and where they run: which cgroup names are containers (Docker's and podman's
//! scopes, the plain cgroups Docker's BuildKit runs build steps in), whether a cgroup path is
//! inside a user's slice, and the report of those that are not. Pure: the cgroup tree, systemd
//! and Docker's API are read elsewhere (`cgroupfs::containers`, `ops::containers`).

use serde::{Deserialize, Serialize};

use super::names::{SliceIdentity, SliceName};

/// The unit names of container scopes, as `ListUnitsByPatterns` takes them.
pub const SCOPE_PATTERNS: [&str; 2] = ["docker-*.scope", "libpod-*.scope"];

/// What made a container's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerKind {
    /// `docker-ID.scope`: Docker with the systemd cgroup driver.
    Docker,
    /// `libpod-ID.scope`: podman.
    Podman,
    /// `SLICE:docker:ID`: a plain cgroup (not a systemd unit) that Docker's BuildKit runs a
    /// build step in.
    BuildStep,
    /// `/docker/ID`: Docker with the cgroupfs driver, which never uses a slice.
    DockerCgroupfs,
}

impl ContainerKind {
    pub fn name(self) -> &'static str {
        match self {
            ContainerKind::Docker => "docker",
            ContainerKind::Podman => "podman",
            ContainerKind::BuildStep => "buildkit",
            ContainerKind::DockerCgroupfs => "docker-cgroupfs",
        }
    }
}

fn is_full_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The container a cgroup directory's name stands for, with its id: `docker-ID.scope`,
/// `libpod-ID.scope` (not podman's `libpod-conmon-ID.scope`, its monitor) or BuildKit's
/// `SLICE:docker:ID`. Docker's cgroupfs driver's bare ids are told by their parent
/// ([`cgroupfs_id`]).
pub fn identify(name: &str) -> Option<(ContainerKind, String)> {
    let scope = |prefix: &str| {
        name.strip_prefix(prefix)?
            .strip_suffix(".scope")
            .filter(|id| is_full_id(id))
            .map(str::to_owned)
    };
    if let Some(id) = scope("docker-") {
        return Some((ContainerKind::Docker, id));
    }
    if let Some(id) = scope("libpod-") {
        return Some((ContainerKind::Podman, id));
    }
    let (_, id) = name.split_once(":docker:")?;
    let plain = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    plain.then(|| (ContainerKind::BuildStep, id.to_owned()))
}

/// A container id below the cgroupfs driver's `/docker` cgroup.
pub fn cgroupfs_id(name: &str) -> Option<(ContainerKind, String)> {
    is_full_id(name).then(|| (ContainerKind::DockerCgroupfs, name.to_owned()))
}

/// Where a cgroup path (`/ds01.slice/ds01-g.slice/ds01-g-u.slice/docker-ID.scope`) runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Below a user's slice: that user's limits hold for it.
    UserSlice(SliceName),
    /// Anywhere else; `slice` is the slice unit it runs in (`-.slice`: the root cgroup).
    Outside { slice: String },
}

/// systemd names a slice's cgroup after its unit, one directory per level of the name, so a
/// user's slice can only be `/ds01.slice/ds01-GROUP.slice/ds01-GROUP-USER.slice`.
pub fn placement(cgroup: &str) -> Placement {
    let parts: Vec<&str> = cgroup.split('/').filter(|p| !p.is_empty()).collect();
    if let [root, group, user, _, ..] = parts.as_slice() {
        if let Ok(slice) = SliceName::parse(user) {
            let nested = *root == SliceName::root().as_str()
                && matches!(slice.identity(), SliceIdentity::User(g, _) if SliceName::group(&g).as_str() == *group);
            if nested {
                return Placement::UserSlice(slice);
            }
        }
    }
    let slice = parts
        .iter()
        .rev()
        .skip(1)
        .find(|p| p.ends_with(".slice"))
        .map_or("-.slice", |p| p);
    Placement::Outside {
        slice: slice.to_owned(),
    }
}

/// A container found running outside every user's slice: no per-user limit holds for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutsideContainer {
    pub kind: ContainerKind,
    pub id: String,
    /// Docker's name for it, when its API could be asked.
    pub name: Option<String>,
    /// The systemd unit (`docker-ID.scope`); none for a plain cgroup.
    pub unit: Option<String>,
    /// The slice it runs in (`system.slice`, `ds01.slice`, a group's slice; `-.slice`: the
    /// root cgroup).
    pub slice: String,
    pub cgroup: String,
    /// The user it belongs to: its `ds01.user` label (set by the Docker API gate); `None`:
    /// unknown.
    pub owner: Option<String>,
    /// The owner's slice, where the configuration knows the owner.
    pub owner_slice: Option<SliceName>,
    pub memory_bytes: Option<u64>,
    pub tasks: Option<u64>,
}

impl OutsideContainer {
    /// The first 12 characters of the id, as `docker ps` shows it.
    pub fn short_id(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }

    pub fn owner_or_unknown(&self) -> &str {
        self.owner.as_deref().unwrap_or("unknown")
    }
}

/// Every container found, in brief: those outside a user's slice one by one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerReport {
    /// Sorted by owner, slice and id.
    pub outside: Vec<OutsideContainer>,
    /// Containers found in a user's slice.
    pub in_user_slices: usize,
    /// What was read: `systemd`, `cgroup tree DIR`, `docker api`.
    pub sources: Vec<String>,
    /// Why nothing could be looked at (neither systemd nor the cgroup tree answered): then
    /// nothing can be said of any container.
    pub error: Option<String>,
    #[serde(skip)]
    pub notes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn names_of_container_cgroups() {
        assert_eq!(
            identify(&format!("docker-{ID}.scope")),
            Some((ContainerKind::Docker, ID.to_owned()))
        );
        assert_eq!(
            identify(&format!("libpod-{ID}.scope")),
            Some((ContainerKind::Podman, ID.to_owned()))
        );
        assert_eq!(identify(&format!("libpod-conmon-{ID}.scope")), None);
        assert_eq!(identify("docker-abc.scope"), None);
        assert_eq!(identify("docker.service"), None);
        assert_eq!(
            identify("system.slice:docker:k2x4n7q9w0e1r2t3y4u5i6o7p"),
            Some((ContainerKind::BuildStep, "k2x4n7q9w0e1r2t3y4u5i6o7p".into()))
        );
        assert_eq!(identify("system.slice:docker:"), None);
        assert_eq!(identify("x:docker:a/b"), None);
        assert_eq!(
            cgroupfs_id(ID),
            Some((ContainerKind::DockerCgroupfs, ID.into()))
        );
        assert_eq!(cgroupfs_id("buildkit"), None);
    }

    #[test]
    fn only_a_users_slice_holds_a_container() {
        let inside =
            format!("/ds01.slice/ds01-student.slice/ds01-student-alice.slice/docker-{ID}.scope");
        assert_eq!(
            placement(&inside),
            Placement::UserSlice(SliceName::parse("ds01-student-alice.slice").unwrap())
        );
        // A sub-slice of the user's slice is under the user's limits too.
        let nested =
            "/ds01.slice/ds01-student.slice/ds01-student-alice.slice/x.slice/docker-a.scope";
        assert!(matches!(placement(nested), Placement::UserSlice(_)));
        let outside = |cg: &str, slice: &str| {
            assert_eq!(
                placement(cg),
                Placement::Outside {
                    slice: slice.into()
                },
                "{cg}"
            );
        };
        outside(&format!("/ds01.slice/docker-{ID}.scope"), "ds01.slice");
        outside(
            &format!("/ds01.slice/ds01-student.slice/docker-{ID}.scope"),
            "ds01-student.slice",
        );
        outside(&format!("/system.slice/docker-{ID}.scope"), "system.slice");
        outside("/system.slice/system.slice:docker:abc", "system.slice");
        outside(&format!("/docker/{ID}"), "-.slice");
        // A slice named like a user's, but not where systemd puts one.
        outside(
            &format!("/system.slice/ds01-student-alice.slice/x/docker-{ID}.scope"),
            "ds01-student-alice.slice",
        );
    }
}
