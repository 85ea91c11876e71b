//! The pure types every other module speaks: validated names, limit values, slice
//! properties and what systemd reports of a slice. No I/O here (checked by
//! `tests/it/architecture.rs`).

pub mod admission;
pub mod containers;
pub mod diagnostics;
pub mod fleet;
pub mod live;
pub mod names;
pub mod property;
pub mod usage;
pub mod values;
pub mod watch;
