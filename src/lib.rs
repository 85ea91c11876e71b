//! ds01-slices: per-user aggregate resource limits on DS01's systemd slices.
//!
//! The domain (`names`, `values`, `config`, `plan`) is pure; I/O lives in the backends.

pub mod config;
pub mod diagnostics;
pub mod names;
pub mod plan;
pub mod values;
pub mod cli;
pub mod error;
pub mod pyjson;
