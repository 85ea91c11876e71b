//! The gate's request rules, as pure functions: which requests are looked into ([`route`]),
//! what a body asks for and what in it would leave a slice ([`create`]), over JSON read as
//! Docker's daemon reads it ([`json`]). No sockets, no files: tested on bytes.

pub mod bulk;
pub mod create;
pub mod json;
pub mod route;
