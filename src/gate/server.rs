//! The gate on its listener: each accepted connection's peer (`SO_PEERCRED`, read once, as
//! the kernel recorded it at connect time) and its requests served by [`service::handle`].

use std::convert::Infallible;
use std::io;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;

use super::identity::Peer;
use super::service::{self, Gate};

pub async fn serve(gate: Arc<Gate>, listener: UnixListener) -> io::Result<Infallible> {
    loop {
        let (io, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(cred) = io.peer_cred() else { continue };
        let peer = Peer {
            uid: cred.uid(),
            pid: cred.pid(),
        };
        let gate = gate.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let gate = gate.clone();
                async move { Ok::<_, Infallible>(service::handle(gate, peer, req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades()
                .await;
        });
    }
}
