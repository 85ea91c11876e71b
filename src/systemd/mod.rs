//! The D-Bus side: proxies, the client trait, and the bounded pipelining that keeps a busy
//! systemd safe.

pub mod client;
pub mod proxies;

pub use client::{BusError, BusSystemd, Systemd, WriteMode};
