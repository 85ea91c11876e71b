//! Who is asking: the uid the kernel gives for the connection's peer (`SO_PEERCRED`, read
//! when the connection is accepted), its account name through NSS (so that domain accounts
//! such as `h.baker@hertie-school.lan` resolve as `id -un` shows them), and the user's
//! target in the configuration, found exactly as `hook pre-create` finds it.

use std::path::Path;

use crate::config::ConfigError;
use crate::model::names::UserName;
use crate::plan::HookTarget;
use crate::state::cache;
use crate::state::ownership::Ownership;

/// The peer of a connection, as the kernel reported it when the connection was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub pid: Option<i32>,
}

/// Who a uid is, for the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// uid 0: every request passes unchanged.
    Root,
    User {
        uid: u32,
        name: UserName,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("uid {0} has no account name on this host (NSS: getpwuid found none); only users with an account may create containers through the gate")]
    NoAccount(u32),
    #[error("the account name of uid {uid} could not be read from NSS ({reason}); try again, or ask an admin to check the name service (sssd)")]
    Lookup { uid: u32, reason: String },
    #[error("the account name {name:?} of uid {uid} is not a user name the configuration can hold: {reason}")]
    BadName {
        uid: u32,
        name: String,
        reason: String,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The caller behind `uid`. Blocks on NSS (sssd may take its time): call it off the async
/// threads.
pub fn caller(uid: u32) -> Result<Caller, IdentityError> {
    if uid == 0 {
        return Ok(Caller::Root);
    }
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).map_err(|e| {
        IdentityError::Lookup {
            uid,
            reason: e.desc().to_owned(),
        }
    })?;
    let user = user.ok_or(IdentityError::NoAccount(uid))?;
    let name = UserName::new(&user.name).map_err(|e| IdentityError::BadName {
        uid,
        name: user.name.clone(),
        reason: e.to_string(),
    })?;
    Ok(Caller::User { uid, name })
}

/// What the configuration says about `user`, as `hook pre-create` reads it: from the record
/// of the last full validation while every file is unchanged, and by a full validation
/// otherwise (whose record is kept for the next ones). Blocking file I/O.
pub fn target(
    config_path: &Path,
    ownership: &Ownership,
    user: &UserName,
) -> Result<HookTarget, ConfigError> {
    let record = ownership.validated_config();
    let (target, record) = cache::for_hook(config_path, record.as_deref(), user)?;
    if let Some(record) = record {
        ownership.record_validated_config(&record);
    }
    Ok(target)
}

/// Admins, to whom the escape rules do not apply: the configuration's uncapped users (no
/// limit on their slice), and root.
pub fn is_admin(target: &HookTarget) -> bool {
    !target.properties.has_limits()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_root_and_a_uid_without_an_account_is_named() {
        assert_eq!(caller(0).unwrap(), Caller::Root);
        // No account has the highest uid (it is (uid_t)-1, "no uid").
        let err = caller(u32::MAX - 1).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("uid 4294967294 has no account name"),
            "{err}"
        );
    }

    #[test]
    fn an_account_resolves_to_its_name() {
        // Every Debian system has uid 1 (daemon) in /etc/passwd.
        match caller(1).unwrap() {
            Caller::User { uid, name } => assert_eq!((uid, name.as_str()), (1, "daemon")),
            other => panic!("{other:?}"),
        }
    }
}
