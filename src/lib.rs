//! ds01-slices: per-user aggregate resource limits on DS01's systemd slices.
//!
//! The domain (`names`, `values`, `config`, `plan`) is pure; I/O lives in the backends.

pub mod apply;
pub mod cgroupfs;
pub mod cli;
pub mod config;
pub mod diagnostics;
pub mod error;
pub mod names;
pub mod ownership;
pub mod plan;
pub mod pyjson;
pub mod reconcile;
pub mod render;
pub mod systemd;
pub mod trace;
pub mod values;
pub mod verify;
