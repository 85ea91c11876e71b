//! The D-Bus side: proxies generated from systemd's interfaces (`dbus/`), the client trait,
//! the one connection that implements it, and the bounded pipelining (calls in flight,
//! holders, pins) that keeps a busy systemd on its bus.

mod bus;
pub mod client;
mod error;
pub mod pipeline;
pub mod proxies;
pub mod stats;

pub use bus::{AccountingDefaults, BusSystemd, HOLDER_PREFIX};
pub use client::{Systemd, WriteMode};
pub use error::BusError;
pub use stats::BusStatsSnapshot;
