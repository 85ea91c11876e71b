//! Validated names: users as configured, their slice component, groups and slice units.
//!
//! Every name that reaches systemd is built here, so the rest of the crate can only ever
//! name a `ds01-*` slice.

use std::fmt::{self, Write as _};

use md5::{Digest, Md5};
use serde::Serialize;

/// Longest sanitized component the original Python generator produced; longer names are
/// shortened to a prefix plus an md5 tag so two long names stay distinct.
const MAX_SANITIZED_LEN: usize = 32;
const SHORTENED_PREFIX_LEN: usize = 27;
/// Every unit this tool manages starts with this prefix; anything else is never touched.
pub const SLICE_PREFIX: &str = "ds01";

/// A user name exactly as configured (members file, overrides, command line). Not empty,
/// no control characters (they could never come from a members file line).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct UserName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("user name is empty")]
    EmptyUser,
    #[error("user name {0:?} contains a control character")]
    ControlCharacter(String),
    #[error(
        "user name {0:?} has nothing left after sanitization (slice names keep only letters, digits, '_' and ':' before any '@'); rename the account or remove it from the members file"
    )]
    EmptySanitized(String),
    #[error(
        "group name {0:?} is not a safe slice component: use only letters, digits and '_' (a '-' would nest slices)"
    )]
    BadGroup(String),
    #[error("{0:?} is not a ds01 slice name (expected ds01.slice, ds01-GROUP.slice or ds01-GROUP-USER.slice)")]
    NotOurSlice(String),
}

impl crate::error::ExitStatus for NameError {
    fn exit_code(&self) -> crate::error::Exit {
        crate::error::Exit::Usage
    }
}

impl UserName {
    pub fn new(raw: &str) -> Result<Self, NameError> {
        if raw.is_empty() {
            return Err(NameError::EmptyUser);
        }
        if raw.chars().any(char::is_control) {
            return Err(NameError::ControlCharacter(raw.to_owned()));
        }
        Ok(UserName(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The slice component for this user; fails when nothing usable is left.
    pub fn sanitized(&self) -> Result<SanitizedUser, NameError> {
        let s = sanitize_username(&self.0);
        if s.is_empty() {
            Err(NameError::EmptySanitized(self.0.clone()))
        } else {
            Ok(SanitizedUser(s))
        }
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The sanitized, non-empty form of a user name as it appears in the slice name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct SanitizedUser(String);

impl SanitizedUser {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SanitizedUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The original DS01 `sanitize_username_for_slice`, reproduced exactly (see
/// tests/data/username-vectors.json): strip the domain at the first '@', replace every
/// character outside `[A-Za-z0-9_:]` with '_', collapse runs of '_', trim '_' at both ends,
/// and shorten names over 32 characters to 27 characters + '_' + 4 hex digits of the md5 of
/// the original name. An empty result means the name cannot be used.
pub fn sanitize_username(raw: &str) -> String {
    let mut out = String::new();
    sanitize_username_into(raw, &mut out);
    out
}

/// Whether `raw` sanitizes to `wanted`, with `buf` as scratch space: a hook looking for a
/// sanitized name among thousands of members allocates once, not twice per line.
pub fn sanitizes_to(raw: &str, wanted: &SanitizedUser, buf: &mut String) -> bool {
    sanitize_username_into(raw, buf);
    *buf == wanted.0
}

/// [`sanitize_username`] into `out`, which is cleared first.
fn sanitize_username_into(raw: &str, out: &mut String) {
    out.clear();
    let local = raw.split('@').next().unwrap_or_default();
    for c in local.chars() {
        let keep = c.is_ascii_alphanumeric() || c == '_' || c == ':';
        let c = if keep { c } else { '_' };
        if c == '_' && out.ends_with('_') {
            continue;
        }
        out.push(c);
    }
    // Everything left is ASCII, so byte length is character length and slicing is safe.
    let end = out.trim_end_matches('_').len();
    out.truncate(end);
    let start = out.len() - out.trim_start_matches('_').len();
    out.drain(..start);
    if out.len() <= MAX_SANITIZED_LEN {
        return;
    }
    let end = out[..SHORTENED_PREFIX_LEN].trim_end_matches('_').len();
    out.truncate(end);
    let digest = Md5::digest(raw.as_bytes());
    // Writing to a String cannot fail.
    let _ = write!(out, "_{:02x}{:02x}", digest[0], digest[1]);
}

/// A group name that is safe as one slice-name component.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct GroupName(String);

impl GroupName {
    pub fn new(raw: &str) -> Result<Self, NameError> {
        let ok = !raw.is_empty() && raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ok {
            Ok(GroupName(raw.to_owned()))
        } else {
            Err(NameError::BadGroup(raw.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A slice unit this tool manages: `ds01.slice`, `ds01-GROUP.slice` or
/// `ds01-GROUP-USER.slice`. Only constructible from validated parts or by parsing a name
/// of exactly that shape, so nothing outside `ds01-*` can ever be addressed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct SliceName(String);

impl TryFrom<String> for SliceName {
    type Error = NameError;
    fn try_from(unit: String) -> Result<Self, NameError> {
        SliceName::parse(&unit)
    }
}

impl From<SliceName> for String {
    fn from(s: SliceName) -> String {
        s.0
    }
}

/// What a managed slice is, recovered from its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SliceIdentity {
    Root,
    Group(GroupName),
    User(GroupName, SanitizedUser),
}

/// The level of a slice in the tree, without its names (for reports and ordering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SliceKind {
    Root,
    Group,
    User,
}

impl SliceName {
    pub fn root() -> Self {
        SliceName(format!("{SLICE_PREFIX}.slice"))
    }

    pub fn group(group: &GroupName) -> Self {
        SliceName(format!("{SLICE_PREFIX}-{group}.slice"))
    }

    pub fn user(group: &GroupName, user: &SanitizedUser) -> Self {
        SliceName(format!("{SLICE_PREFIX}-{group}-{user}.slice"))
    }

    /// Parses a unit name found on the system; anything that is not one of ours is refused.
    pub fn parse(unit: &str) -> Result<Self, NameError> {
        Self::identify(unit).map(|_| SliceName(unit.to_owned()))
    }

    fn identify(unit: &str) -> Result<SliceIdentity, NameError> {
        let not_ours = || NameError::NotOurSlice(unit.to_owned());
        let stem = unit.strip_suffix(".slice").ok_or_else(not_ours)?;
        if stem == SLICE_PREFIX {
            return Ok(SliceIdentity::Root);
        }
        let rest = stem
            .strip_prefix(SLICE_PREFIX)
            .and_then(|r| r.strip_prefix('-'))
            .ok_or_else(not_ours)?;
        match rest.split_once('-') {
            None => GroupName::new(rest)
                .map(SliceIdentity::Group)
                .map_err(|_| not_ours()),
            Some((group, user)) => {
                let group = GroupName::new(group).map_err(|_| not_ours())?;
                let valid_user = !user.is_empty()
                    && sanitize_username(user) == user
                    && user.len() <= MAX_SANITIZED_LEN;
                if valid_user {
                    Ok(SliceIdentity::User(group, SanitizedUser(user.to_owned())))
                } else {
                    Err(not_ours())
                }
            }
        }
    }

    pub fn identity(&self) -> SliceIdentity {
        // Every SliceName is built from validated parts or checked by `parse`, so it
        // always identifies; Root is an unreachable fallback that keeps this total.
        Self::identify(&self.0).unwrap_or(SliceIdentity::Root)
    }

    pub fn kind(&self) -> SliceKind {
        match self.identity() {
            SliceIdentity::Root => SliceKind::Root,
            SliceIdentity::Group(_) => SliceKind::Group,
            SliceIdentity::User(..) => SliceKind::User,
        }
    }

    /// Whether this is a slice of `user` in any group: the slices a one-user run covers
    /// besides its plan (left behind by a move between groups).
    pub fn is_users(&self, user: &SanitizedUser) -> bool {
        matches!(self.identity(), SliceIdentity::User(_, u) if &u == user)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SliceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(serde::Deserialize)]
    struct Vectors {
        vectors: Vec<Vector>,
    }
    #[derive(serde::Deserialize)]
    struct Vector {
        input: String,
        sanitized: String,
    }

    #[test]
    fn every_shared_vector_matches_the_original() {
        let text = include_str!("../../tests/data/username-vectors.json");
        let vectors: Vectors = serde_json::from_str(text).unwrap();
        assert!(vectors.vectors.len() >= 20);
        // One scratch buffer through all of them, as a hook scanning a members file uses it.
        let mut scratch = String::new();
        for v in vectors.vectors {
            assert_eq!(
                sanitize_username(&v.input),
                v.sanitized,
                "input {:?}",
                v.input
            );
            let wanted = SanitizedUser(v.sanitized.clone());
            assert!(
                sanitizes_to(&v.input, &wanted, &mut scratch),
                "input {:?}",
                v.input
            );
            let other = SanitizedUser(format!("{}x", v.sanitized));
            assert!(
                !sanitizes_to(&v.input, &other, &mut scratch),
                "input {:?}",
                v.input
            );
        }
    }

    #[test]
    fn empty_sanitized_name_is_an_error() {
        let u = UserName::new("@domain").unwrap();
        assert!(matches!(u.sanitized(), Err(NameError::EmptySanitized(_))));
    }

    #[test]
    fn group_names_reject_dashes_and_dots() {
        for bad in ["", "a-b", "a.b", "a b", "é", "a/b"] {
            assert!(GroupName::new(bad).is_err(), "{bad:?}");
        }
        for good in ["student", "Phd_2", "x"] {
            assert!(GroupName::new(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn slice_names_round_trip_through_parse() {
        let g = GroupName::new("student").unwrap();
        let u = UserName::new("h.baker@hertie-school.lan")
            .unwrap()
            .sanitized()
            .unwrap();
        let s = SliceName::user(&g, &u);
        assert_eq!(s.as_str(), "ds01-student-h_baker.slice");
        assert_eq!(SliceName::parse(s.as_str()).unwrap(), s);
        assert_eq!(s.identity(), SliceIdentity::User(g.clone(), u));
        assert_eq!(SliceName::group(&g).identity(), SliceIdentity::Group(g));
        assert_eq!(SliceName::root().identity(), SliceIdentity::Root);
    }

    #[test]
    fn foreign_units_are_never_ours() {
        for unit in [
            "user.slice",
            "system.slice",
            "ds01.service",
            "ds01-.slice",
            "ds01x.slice",
            "ds01-a-b-c.slice",
            "ds01-student-_x.slice",
            "ds01-stu.dent.slice",
            "user-1000.slice",
        ] {
            assert!(SliceName::parse(unit).is_err(), "{unit}");
        }
    }

    proptest! {
        #[test]
        fn sanitized_names_are_safe_and_stable(raw in "\\PC{0,80}") {
            let s = sanitize_username(&raw);
            prop_assert!(s.len() <= MAX_SANITIZED_LEN);
            prop_assert!(s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'));
            prop_assert!(!s.starts_with('_') && !s.ends_with('_') && !s.contains("__"));
            // Sanitizing twice changes nothing for names that were not shortened.
            if s.len() < MAX_SANITIZED_LEN { prop_assert_eq!(sanitize_username(&s), s.clone()); }
            if let Ok(g) = GroupName::new("g") {
                if !s.is_empty() {
                    let slice = SliceName::user(&g, &SanitizedUser(s.clone()));
                    prop_assert!(SliceName::parse(slice.as_str()).is_ok());
                }
            }
        }
    }
}
