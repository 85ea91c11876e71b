//! ds01-slices: per-user aggregate resource limits on DS01's systemd slices.
//!
//! The layers, from the inside out (docs/development.md, "The module map", has a line per module):
//! - the pure domain: [`model`] (names, values, properties, live state), [`config`] (files →
//!   raw YAML → validated configuration; only `config::read` touches files), [`plan`] and
//!   [`diff`]. None of them imports zbus, tokio or `std::fs` (`tests/it/architecture.rs`);
//! - the I/O behind small types: [`systemd`] (the client trait and its D-Bus connection),
//!   [`dropin`] (rendered files), [`state`] (ownership records, lock, the hook's cache),
//!   [`cgroupfs`] (the kernel's limit files and controllers), [`docker`] (Docker's cgroup
//!   driver), [`atomic`] (the one way files are replaced), [`http`] (the one HTTP server:
//!   `serve` and the Docker API gate), [`process`] (child programs in process groups of their
//!   own, killed together);
//! - the use cases in [`ops`], which return reports and print nothing;
//! - [`gate`], the Docker API gate: its request rules (pure), served over [`http`], with the
//!   hook's use case for each user's slice;
//! - [`cli`], the only module that prints and that maps errors to exit codes ([`error`]).
#![forbid(unsafe_code)]
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod atomic;
pub mod cgroupfs;
pub mod cli;
pub mod config;
pub mod diff;
pub mod docker;
pub mod dropin;
pub mod error;
pub mod gate;
pub mod http;
pub mod model;
pub mod ops;
pub mod plan;
pub mod process;
pub mod state;
pub mod systemd;
pub mod trace;
