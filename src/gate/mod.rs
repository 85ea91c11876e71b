//! The Docker Engine API gate: a server on the users' Docker socket in front of the daemon's
//! own (root-only) socket. Every container a non-root caller creates is placed in the
//! caller's slice (made ready by the hook's own use case, [`crate::ops::hook`]), admitted
//! against the slice's limits, and refused when it asks for a way out of it; everything else
//! passes through untouched.
//!
//! - [`rules`]: the request rules, pure;

pub mod rules;
