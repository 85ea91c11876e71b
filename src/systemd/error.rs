//! What can go wrong on the bus, classified once: which errors mean systemd is absent, which
//! end a whole run, and which concern one unit only.

use std::time::Duration;

use crate::error::{Exit, ExitStatus};

#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to the system bus at {address}: {reason}; is dbus running? (pass --bus ADDRESS or set DBUS_SYSTEM_BUS_ADDRESS to use another bus, or `--backend files` to render drop-ins instead)")]
    Unreachable { address: String, reason: String },
    #[error("systemd is not on the bus at {address} (nobody owns the name org.freedesktop.systemd1 there); is systemd PID 1 and connected to dbus? `systemctl status dbus` and `busctl status org.freedesktop.systemd1` tell")]
    ServiceUnknown { what: String, address: String },
    #[error(
        "{what}: access denied by systemd ({detail}); run ds01-slices as root (e.g. with sudo)"
    )]
    AccessDenied { what: String, detail: String },
    #[error("{what}: no such unit ({detail})")]
    NoSuchUnit { what: String, detail: String },
    #[error("{what}: the bus refused the call because too many are pending (LimitsExceeded: {detail}); this is a bug in ds01-slices' pipelining, please report it")]
    LimitsExceeded { what: String, detail: String },
    #[error("{what}: no answer from systemd within {secs} s; systemd may be stopped or overloaded (check `systemctl status`); nothing more was sent. Retry later or raise --timeout: a rerun converges")]
    Timeout { what: String, secs: u64 },
    #[error("{what}: lost the connection to the system bus at {address} ({detail}); was dbus restarted? Nothing more was sent; rerun: it converges")]
    Disconnected {
        what: String,
        address: String,
        detail: String,
    },
    #[error("{what}: systemd left the bus at {address} without replying (re-executed or restarted?); nothing more was sent; rerun once `systemctl is-system-running` answers: it converges")]
    SystemdLeft { what: String, address: String },
    #[error("{what}: systemd refused it: {name}: {detail}")]
    Refused {
        what: String,
        name: String,
        detail: String,
    },
    #[error("{what}: unexpected reply from systemd: {detail}")]
    Protocol { what: String, detail: String },
    #[error("{what}: D-Bus error: {detail}")]
    Other { what: String, detail: String },
}

/// D-Bus error names that mean nobody owns org.freedesktop.systemd1 on the bus: the daemon's
/// answer when systemd is absent, or, when a service file makes the name activatable (its
/// `Exec=/bin/false`), the failed activation.
const ABSENT_NAMES: [&str; 3] = [
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.Spawn.",
];

fn lost_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        BrokenPipe | ConnectionReset | ConnectionAborted | NotConnected | UnexpectedEof
    )
}

fn names_absent_systemd(text: &str) -> bool {
    ABSENT_NAMES.iter().any(|n| text.contains(n))
}

impl BusError {
    /// Classifies a zbus error for the operation `what` (naming the unit and call) on the bus
    /// at `address`.
    pub fn from_zbus(
        what: impl Into<String>,
        err: zbus::Error,
        timeout: Duration,
        address: &str,
    ) -> BusError {
        let what = what.into();
        // Property reads report D-Bus errors as `FDO`, method calls as `MethodError`: both
        // are classified by the error name.
        let (name, detail) = match err {
            zbus::Error::MethodError(name, detail, _) => {
                (name.to_string(), detail.unwrap_or_default())
            }
            zbus::Error::FDO(e) => {
                use zbus::DBusError;
                (
                    e.name().to_string(),
                    e.description().unwrap_or_default().to_owned(),
                )
            }
            other => return Self::from_transport(what, other, timeout, address),
        };
        Self::from_error_name(what, &name, detail, timeout, address)
    }

    fn from_error_name(
        what: String,
        name: &str,
        detail: String,
        timeout: Duration,
        address: &str,
    ) -> BusError {
        if names_absent_systemd(name) {
            return BusError::ServiceUnknown {
                what,
                address: address.to_owned(),
            };
        }
        let short = name.rsplit('.').next().unwrap_or_default();
        match short {
            "AccessDenied" | "InteractiveAuthorizationRequired" | "AuthFailed" => {
                BusError::AccessDenied { what, detail }
            }
            "NoSuchUnit" | "LoadFailed" => BusError::NoSuchUnit { what, detail },
            "LimitsExceeded" => BusError::LimitsExceeded { what, detail },
            // dbus-daemon answers NoReply both when its reply timeout expires and when the
            // callee left the bus (systemd re-executing) with the call unanswered.
            "NoReply" if detail.contains("disconnected") => BusError::SystemdLeft {
                what,
                address: address.to_owned(),
            },
            "NoReply" | "Timeout" | "TimedOut" => BusError::Timeout {
                what,
                secs: timeout.as_secs(),
            },
            _ => BusError::Refused {
                what,
                name: name.to_owned(),
                detail,
            },
        }
    }

    fn from_transport(
        what: String,
        err: zbus::Error,
        timeout: Duration,
        address: &str,
    ) -> BusError {
        match err {
            zbus::Error::InputOutput(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                BusError::Timeout {
                    what,
                    secs: timeout.as_secs(),
                }
            }
            zbus::Error::InputOutput(e) | zbus::Error::Connection(e, _) if lost_connection(&e) => {
                BusError::Disconnected {
                    what,
                    address: address.to_owned(),
                    detail: e.to_string(),
                }
            }
            zbus::Error::Variant(e) => BusError::Protocol {
                what,
                detail: e.to_string(),
            },
            other => {
                let detail = other.to_string();
                if names_absent_systemd(&detail) {
                    BusError::ServiceUnknown {
                        what,
                        address: address.to_owned(),
                    }
                } else if detail.contains("timed out") || detail.contains("Timeout") {
                    BusError::Timeout {
                        what,
                        secs: timeout.as_secs(),
                    }
                } else {
                    BusError::Other { what, detail }
                }
            }
        }
    }

    /// There is no systemd to talk to (rather than one that refused or is slow): the only
    /// errors that let `apply --backend auto` render files instead.
    pub fn is_absent(&self) -> bool {
        matches!(
            self,
            BusError::Unreachable { .. } | BusError::ServiceUnknown { .. }
        )
    }

    /// The error is about the connection, systemd as a whole or our rights, not one unit:
    /// going on with the other slices would only repeat it, so the whole run stops with
    /// this one message.
    pub fn is_fatal(&self) -> bool {
        self.ends_connection()
            || matches!(
                self,
                BusError::AccessDenied { .. } | BusError::LimitsExceeded { .. }
            )
    }

    /// After this error no further call is sent on the connection: systemd is gone, slow
    /// beyond the timeout (a timed-out call still holds one of the bus's pending replies,
    /// so sending more could exceed its limit), or the connection is lost.
    pub fn ends_connection(&self) -> bool {
        self.is_absent()
            || matches!(
                self,
                BusError::Timeout { .. }
                    | BusError::Disconnected { .. }
                    | BusError::SystemdLeft { .. }
            )
    }

    /// This error (systemd gone from the bus) followed by the bus closing the connection: the
    /// bus itself went away (dbus stopped or restarted), and systemd with it (ended.rs).
    pub(super) fn then_bus_closed(self) -> BusError {
        match self {
            BusError::SystemdLeft { what, address }
            | BusError::ServiceUnknown { what, address } => BusError::Disconnected {
                what,
                address,
                detail: "systemd left the bus, then the bus closed this connection".to_owned(),
            },
            other => other,
        }
    }

    /// Why systemd counts as absent, for the message of a fallback to files.
    pub fn absence(&self) -> Option<String> {
        match self {
            BusError::Unreachable { address, reason } => {
                Some(format!("systemd is not reachable at {address} ({reason})"))
            }
            BusError::ServiceUnknown { address, .. } => Some(format!(
                "systemd is not reachable at {address} (org.freedesktop.systemd1 is not on that bus)"
            )),
            _ => None,
        }
    }
}

impl ExitStatus for BusError {
    fn exit_code(&self) -> Exit {
        Exit::Failure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn an_unowned_systemd_name_is_an_absent_systemd() {
        for name in [
            "org.freedesktop.DBus.Error.ServiceUnknown",
            "org.freedesktop.DBus.Error.NameHasNoOwner",
            "org.freedesktop.DBus.Error.Spawn.ChildExited",
        ] {
            let e = BusError::from_error_name("x".into(), name, "d".into(), T, "unix:path=/b");
            assert!(
                matches!(&e, BusError::ServiceUnknown { address, .. } if address == "unix:path=/b"),
                "{name}: {e:?}"
            );
            assert!(e.is_absent() && e.is_fatal());
        }
        let failed = BusError::from_error_name(
            "x".into(),
            "org.freedesktop.DBus.Error.Failed",
            "no".into(),
            T,
            "a",
        );
        assert!(matches!(failed, BusError::Refused { .. }) && !failed.is_fatal());
    }

    #[test]
    fn systemd_leaving_then_the_bus_closing_is_the_bus_going_away() {
        for left in [
            BusError::SystemdLeft {
                what: "setting MemoryMax on ds01.slice".into(),
                address: "unix:path=/b".into(),
            },
            BusError::ServiceUnknown {
                what: "setting MemoryMax on ds01.slice".into(),
                address: "unix:path=/b".into(),
            },
        ] {
            let e = left.then_bus_closed();
            assert!(e.ends_connection() && !e.is_absent(), "{e:?}");
            let text = e.to_string();
            assert!(
                text.starts_with("setting MemoryMax on ds01.slice: lost the connection to the system bus at unix:path=/b")
                    && text.contains("was dbus restarted?"),
                "{text}"
            );
        }
        let slow = BusError::Timeout {
            what: "x".into(),
            secs: 1,
        };
        assert!(matches!(slow.then_bus_closed(), BusError::Timeout { .. }));
    }

    #[test]
    fn only_a_missing_systemd_falls_back() {
        let gone = BusError::Unreachable {
            address: "unix:path=/x".into(),
            reason: "No such file or directory".into(),
        };
        assert_eq!(
            gone.absence().as_deref(),
            Some("systemd is not reachable at unix:path=/x (No such file or directory)")
        );
        let slow = BusError::Timeout {
            what: "x".into(),
            secs: 1,
        };
        assert!(slow.absence().is_none() && slow.is_fatal());
        let denied = BusError::AccessDenied {
            what: "x".into(),
            detail: "y".into(),
        };
        assert!(denied.absence().is_none() && denied.is_fatal());
    }
}
