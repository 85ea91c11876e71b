//! The D-Bus backend against a real systemd: apply, read-back, drift, stale cleanup, errors,
//! and what the kernel then enforces. Each test runs the real binary on its own
//! [`World`](crate::support::World).

mod converge;
mod failures;
mod kernel;
mod watch;
