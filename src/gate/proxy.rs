//! The pass-through: each request goes to the daemon's socket on a connection of its own and
//! its answer comes back as it arrives (chunked streams such as `logs -f`, `events`, `pull`
//! and `load` output are never buffered). A request that switches protocols (`attach`,
//! `exec` start, `/session`, `/grpc`: `Upgrade: tcp` or `h2c`, answered `101`) becomes a
//! byte pipe between the two connections, each direction closed when its sender closes it
//! (`docker run -i` with stdin piped ends its input so).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{header, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// Every body the gate sends, either way.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// How long connecting to the daemon's socket may take (it answers at once when it runs).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn streamed(body: Incoming) -> Body {
    body.boxed()
}

/// A Docker-style error: `{"message": "..."}`, which the docker CLI and the SDKs show.
pub fn error_response(status: u16, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut response = Response::new(full(body));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("cannot reach the Docker daemon at {path}: {reason}; is docker.service running (systemctl status docker.socket docker.service)?")]
    Unreachable { path: PathBuf, reason: String },
    #[error("the Docker daemon at {path} did not answer: {reason}")]
    Failed { path: PathBuf, reason: String },
}

/// The daemon's socket.
#[derive(Debug, Clone)]
pub struct Daemon {
    pub socket: PathBuf,
}

impl Daemon {
    pub fn new(socket: &Path) -> Daemon {
        Daemon {
            socket: socket.to_owned(),
        }
    }

    /// A new connection to the daemon, ready for one request.
    pub async fn connect(&self) -> Result<Upstream, ForwardError> {
        let unreachable = |reason: String| ForwardError::Unreachable {
            path: self.socket.clone(),
            reason,
        };
        let connect = async {
            let stream = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            hyper::client::conn::http1::Builder::new()
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|e| unreachable(e.to_string()))
        };
        let (sender, connection) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| unreachable(format!("no connection within {CONNECT_TIMEOUT:?}")))??;
        // Ends with the exchange (or the pipe an upgrade makes of it).
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        Ok(Upstream {
            sender,
            socket: self.socket.clone(),
        })
    }

    /// `request` to the daemon, its answer back; an upgrade becomes a pipe, which keeps the
    /// client's connection counted as answering ([`crate::http::Busy`]) while it is open.
    pub async fn pass(&self, request: Request<Body>) -> Response<Body> {
        pass_on(self.connect().await, request).await
    }
}

/// A connection to the daemon for one request.
pub struct Upstream {
    sender: hyper::client::conn::http1::SendRequest<Body>,
    socket: PathBuf,
}

impl Upstream {
    /// Sends `request` and returns the daemon's answer as it starts.
    async fn send(mut self, request: Request<Body>) -> Result<Response<Incoming>, ForwardError> {
        self.sender
            .send_request(request)
            .await
            .map_err(|e| ForwardError::Failed {
                path: self.socket.clone(),
                reason: e.to_string(),
            })
    }
}

/// `request` to the daemon on `upstream`, its answer back; an upgrade becomes a pipe, which
/// keeps the client's connection counted as answering ([`crate::http::Busy`]) while it is open.
pub async fn pass_on(
    upstream: Result<Upstream, ForwardError>,
    mut request: Request<Body>,
) -> Response<Body> {
    let client_side = request.headers().contains_key(header::UPGRADE).then(|| {
        let busy = request.extensions_mut().remove::<crate::http::Busy>();
        (hyper::upgrade::on(&mut request), busy)
    });
    let answer = match upstream {
        Ok(upstream) => upstream.send(request).await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(mut response) => {
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                if let Some((client_side, busy)) = client_side {
                    let daemon_side = hyper::upgrade::on(&mut response);
                    tokio::spawn(async move {
                        pipe(client_side, daemon_side).await;
                        drop(busy);
                    });
                }
            }
            response.map(streamed)
        }
        Err(e) => error_response(502, &format!("ds01-slices gate: {e}")),
    }
}

/// Bytes both ways until both directions are closed; a close of one direction (EOF) is
/// passed on as a close of that direction only.
async fn pipe(client: hyper::upgrade::OnUpgrade, daemon: hyper::upgrade::OnUpgrade) {
    let (Ok(client), Ok(daemon)) = tokio::join!(client, daemon) else {
        return;
    };
    let mut client = TokioIo::new(client);
    let mut daemon = TokioIo::new(daemon);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut daemon).await;
}
