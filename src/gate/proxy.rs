//! The pass-through: each request goes to the daemon's socket on a connection of its own and
//! its answer comes back as it arrives (chunked streams such as `logs -f`, `events`, `pull`
//! and `load` output are never buffered). That connection is driven by the task of the
//! client's connection as it reads the answer, and ends with the answer. A request that
//! switches protocols (`attach`, `exec` start, `/session`, `/grpc`: `Upgrade: tcp` or `h2c`,
//! answered `101`) becomes a byte pipe between the two connections, each direction closed
//! when its sender closes it (`docker run -i` with stdin piped ends its input so).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
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

/// A Docker-style error's body: `{"message": "..."}`, which the docker CLI and the SDKs show.
pub fn error_body(message: &str) -> String {
    serde_json::json!({ "message": message }).to_string()
}

/// A Docker-style error ([`error_body`]).
pub fn error_response(status: u16, message: &str) -> Response<Body> {
    let body = error_body(message);
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

    fn unreachable(&self, reason: String) -> ForwardError {
        ForwardError::Unreachable {
            path: self.socket.clone(),
            reason,
        }
    }

    /// A new stream to the daemon, within [`CONNECT_TIMEOUT`].
    pub async fn stream(&self) -> Result<tokio::net::UnixStream, ForwardError> {
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::UnixStream::connect(&self.socket),
        )
        .await
        .map_err(|_| self.unreachable(format!("no connection within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| self.unreachable(e.to_string()))
    }

    /// A new connection to the daemon, ready for one request.
    pub async fn connect(&self) -> Result<Upstream, ForwardError> {
        let unreachable = |reason: String| self.unreachable(reason);
        let connect = async {
            let stream = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            // 64 KiB read at a time (hyper's default grows to 400 KiB): a bound on each
            // connection's buffer, and as fast (BENCHMARKS.md: the gate's CPU per MiB).
            hyper::client::conn::http1::Builder::new()
                .max_buf_size(64 << 10)
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|e| unreachable(e.to_string()))
        };
        let (sender, connection) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| unreachable(format!("no connection within {CONNECT_TIMEOUT:?}")))??;
        Ok(Upstream {
            sender,
            connection: Box::pin(connection.with_upgrades()),
            socket: self.socket.clone(),
        })
    }

    /// `request` to the daemon, its answer back; an upgrade becomes a pipe, which keeps the
    /// client's connection counted as answering ([`crate::http::Busy`]) while it is open.
    pub async fn pass(&self, request: Request<Body>) -> Response<Body> {
        pass_on(self.connect().await, request).await
    }
}

/// The connection's own work (reading the daemon's answer, writing the request's body), done
/// only while it is polled.
type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send + Sync>>;

/// A connection to the daemon for one request.
pub struct Upstream {
    sender: SendRequest<Body>,
    connection: Driver,
    socket: PathBuf,
}

impl Upstream {
    /// Sends `request` and returns the daemon's answer as it starts, and the connection that
    /// still has to be driven for the rest of the exchange (None: it has ended).
    ///
    /// The connection is driven by the task that asked, not by a task of its own: each chunk
    /// the daemon sends is read and passed on by one task, never handed from one to another
    /// (what that saved is in docs/gate.md, "What it costs").
    async fn send(
        mut self,
        request: Request<Body>,
    ) -> Result<(Response<Incoming>, Option<Driver>), ForwardError> {
        let answer = self.sender.send_request(request);
        tokio::pin!(answer);
        let mut connection = self.connection;
        let mut ended = false;
        let answer = loop {
            tokio::select! {
                answer = &mut answer => break answer,
                // Ended before the answer (the daemon closed it, or failed): the answer's
                // future then ends with the error.
                _ = &mut connection, if !ended => ended = true,
            }
        };
        answer
            .map(|response| (response, (!ended).then_some(connection)))
            .map_err(|e| ForwardError::Failed {
                path: self.socket.clone(),
                reason: e.to_string(),
            })
    }
}

/// The daemon's answer's body, which drives its connection whenever it is asked for more:
/// nothing reads from the daemon while the client does not read (the connection's own
/// backpressure), and the connection ends when the body is dropped.
struct Driving {
    body: Incoming,
    connection: Option<Driver>,
}

impl hyper::body::Body for Driving {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(connection) = self.connection.as_mut() {
            if connection.as_mut().poll(cx).is_ready() {
                self.connection = None;
            }
        }
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
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
        Ok((mut response, connection)) => {
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                // The daemon's side of the pipe comes out of the connection's end.
                if let Some(connection) = connection {
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                }
                if let Some((client_side, busy)) = client_side {
                    let daemon_side = hyper::upgrade::on(&mut response);
                    tokio::spawn(async move {
                        pipe(client_side, daemon_side).await;
                        drop(busy);
                    });
                }
                return response.map(streamed);
            }
            response.map(|body| Driving { body, connection }.boxed())
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
