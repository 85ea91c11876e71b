//! The one error that ends a connection for a whole run, with its cause named.
//!
//! systemd leaving the bus is what a client sees first in two different events. When systemd
//! re-executes, it leaves and comes back on the same bus. When dbus.service stops (`systemctl
//! restart dbus`), systemd drops its own connection as soon as the service begins to stop,
//! before dbus-daemon exits: calls in flight are answered "NoReply: recipient disconnected",
//! calls sent after that "ServiceUnknown", and only then does the bus close this connection.
//! Under load either the first or the last of these reaches apply first. The next event tells
//! them apart: the bus closes this connection (the bus went away) or systemd owns its name again
//! (it re-executed). [`Ended`] waits for that, bounded by the call timeout, once for all callers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::proxies::SERVICE;
use super::BusError;

/// How often the bus is asked whether systemd is back while the cause is being named.
const POLL: Duration = Duration::from_millis(100);

/// The first error that ended the connection ([`BusError::ends_connection`]) and that error
/// with its cause named: every later call fails with it at once, so a lost connection or a
/// stopped systemd is one error, not one per slice, and nothing more goes on the wire.
pub(super) struct Ended {
    connection: zbus::Connection,
    /// How long to wait for the event that names the cause: the run's call timeout.
    within: Duration,
    first: Mutex<Option<BusError>>,
    named: tokio::sync::OnceCell<BusError>,
    /// systemd has answered on this connection: a later "nobody owns org.freedesktop.systemd1"
    /// means that it left the bus, not that it was never there (which is answered at once,
    /// so that `--backend auto` renders files without waiting).
    answered: AtomicBool,
}

impl Ended {
    pub(super) fn new(connection: zbus::Connection, within: Duration) -> Ended {
        Ended {
            connection,
            within,
            first: Mutex::default(),
            named: tokio::sync::OnceCell::new(),
            answered: AtomicBool::new(false),
        }
    }

    /// systemd answered a call.
    pub(super) fn answered(&self) {
        self.answered.store(true, Ordering::Relaxed);
    }

    /// Ends the connection with `e` unless an earlier error did; returns the run's one error.
    pub(super) async fn end(&self, e: BusError) -> BusError {
        let first = self.first().get_or_insert(e).clone();
        self.named(first).await
    }

    /// The run's one error, once the connection has ended.
    pub(super) async fn get(&self) -> Option<BusError> {
        let first = self.first().clone()?;
        Some(self.named(first).await)
    }

    fn first(&self) -> std::sync::MutexGuard<'_, Option<BusError>> {
        // Plain data: a panic elsewhere cannot leave it half-written.
        self.first
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Concurrent callers wait for one naming; should its caller be dropped midway, the next
    /// one names it again.
    async fn named(&self, first: BusError) -> BusError {
        self.named
            .get_or_init(|| self.name_the_cause(first))
            .await
            .clone()
    }

    async fn name_the_cause(&self, first: BusError) -> BusError {
        let left = match &first {
            BusError::SystemdLeft { .. } => true,
            BusError::ServiceUnknown { .. } => self.answered.load(Ordering::Relaxed),
            _ => false,
        };
        if !left {
            return first;
        }
        tokio::select! {
            () = self.connection.closed() => first.then_bus_closed(),
            () = self.systemd_back() => first,
            () = tokio::time::sleep(self.within) => first,
        }
    }

    /// Returns once the bus says that systemd owns its name again.
    async fn systemd_back(&self) {
        loop {
            let owned = self
                .connection
                .call_method(
                    Some("org.freedesktop.DBus"),
                    "/org/freedesktop/DBus",
                    Some("org.freedesktop.DBus"),
                    "NameHasOwner",
                    &(SERVICE,),
                )
                .await;
            if let Ok(reply) = owned {
                if reply.body().deserialize::<bool>().unwrap_or(false) {
                    return;
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
