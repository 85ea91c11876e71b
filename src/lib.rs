//! ds01-slices: per-user aggregate resource limits on DS01's systemd slices.

pub mod atomic;
pub mod cgroupfs;
pub mod cli;
pub mod config;
pub mod diff;
pub mod dropin;
pub mod error;
pub mod model;
pub mod ops;
pub mod plan;
pub mod state;
pub mod systemd;
pub mod trace;
