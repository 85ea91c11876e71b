//! The gate on its listener, through the house's HTTP server ([`crate::http`]): the peer of
//! each accepted connection (`SO_PEERCRED`, as the kernel recorded it at connect time) and its
//! requests served by [`service::handle`], or spliced ([`Splicer`]) when they are archives.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use tokio::net::UnixListener;

use super::bulk::Splicer;
use super::identity::Peer;
use super::service::{self, Gate};
use crate::http::{self, Limits};

/// What the gate lets its clients cost (each bound explained in [`Limits`]).
pub fn limits() -> Limits {
    Limits {
        // Fitted to the unit's LimitNOFILE (8192: 4000 connections of two descriptors, and
        // the pipes of the exchanges spliced at once, bulk::MAX_SPLICING).
        max_connections: 4000,
        // The client's and the daemon's.
        descriptors_per_connection: 2,
        // Docker's clients keep idle connections up to 90 s and reconnect when one is closed.
        header_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(300),
        // Docker's heads carry registry credentials (X-Registry-Auth, X-Registry-Config for a
        // build): a few KiB; 64 KiB leaves room and bounds a connection's head.
        max_header_bytes: 64 << 10,
        // A build's query holds its build args and labels.
        max_target_bytes: 32 << 10,
        upgrades: true,
    }
}

pub async fn serve(
    gate: Arc<Gate>,
    listener: UnixListener,
    limits: Limits,
    on_event: impl Fn(http::Event) + Send + Sync + 'static,
) -> io::Result<Infallible> {
    let server = http::Server::new(limits);
    let splicer: Arc<dyn http::Takeover<tokio::net::UnixStream>> =
        Arc::new(Splicer::new(Arc::clone(&gate)));
    server
        .serve(
            listener,
            move |io: &tokio::net::UnixStream, _| {
                // No credentials, no service: the connection is closed.
                let cred = io.peer_cred().ok()?;
                let peer = Peer {
                    uid: cred.uid(),
                    pid: cred.pid(),
                };
                let gate = gate.clone();
                Some(service_fn(move |req| {
                    let gate = gate.clone();
                    async move { Ok::<_, Infallible>(service::handle(gate, peer, req).await) }
                }))
            },
            Some(splicer),
            on_event,
        )
        .await
}
