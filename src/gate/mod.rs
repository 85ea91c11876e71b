//! The Docker Engine API gate: a server on the users' Docker socket in front of the daemon's
//! own (root-only) socket. Every container a non-root caller creates is placed in the
//! caller's slice (made ready by the hook's own use case, [`crate::ops::hook`]), admitted
//! against the slice's limits, and refused when it asks for a way out of it; everything else
//! passes through untouched and unbuffered, upgrades and hijacks included.
//!
//! - [`rules`]: the request rules, pure (routes, bodies as Go reads them, escapes);
//! - [`identity`]: who is asking (the peer's uid, its account name, its target);
//! - [`admit`]: what becomes of a request the rules apply to (the slice made ready,
//!   admission, refusals);
//! - [`proxy`]: the pass-through to the daemon's socket (streams, upgrades);
//! - [`bulk`]: `docker cp`'s archives, spliced past hyper;
//! - [`service`]: one request, from the client to the daemon and back.

pub use crate::docker::{DAEMON_SOCKET, GATE_HEADER, USERS_SOCKET};

pub mod admit;
pub mod bulk;
pub mod identity;
pub mod proxy;
pub mod rules;
pub mod server;
pub mod service;
