//! The house's one HTTP server (hyper 1), for `serve` and the Docker API gate: an accept loop
//! that stays up whatever its local clients do. Both run as root and any local user can
//! connect, so nothing a client does may cost more than a bounded share of the process:
//!
//! - each connection is a task of its own and nothing is written on the accept loop, so a
//!   client that asks and never reads holds only its own connection;
//! - a request's head is bounded ([`Limits::max_header_bytes`], 431; the target,
//!   [`Limits::max_target_bytes`], 414), so memory is bounded per connection, and connections
//!   are capped ([`Limits::max_connections`], lowered to what the descriptor limit leaves), so
//!   memory and descriptors are bounded per process;
//! - past the cap the connection idle longest (no request being answered) is closed to make
//!   room, so idle connections cannot lock honest clients out; only when every connection is
//!   answering does a newcomer get a 503 (and is closed);
//! - an accept that fails (EMFILE and the like) is waited out, never fatal: when descriptors
//!   ran out the idlest connection gives one back, otherwise the loop backs off;
//! - a connection waiting for a request's head ([`Limits::header_timeout`]) or on which nothing
//!   moves while no request is being answered ([`Limits::idle_timeout`]) is closed. A request
//!   being answered is never timed out: a stream (`docker logs -f`) lasts as long as it lasts,
//!   and an upgraded connection is the caller's.
//!
//! - a [`Takeover`] may answer a request itself at its start, from the stream (the gate's
//!   spliced archives); the connection stays counted as answering until it has.
//!
//! Nothing here prints: what the loop survives is reported as an [`Event`] for the caller to
//! log.

mod conn;
mod stream;
#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, UnixListener};

use conn::{Admission, Registry, Tracked};
pub use conn::{Answer, BoxError, Busy};
use stream::Watched;
pub use stream::{Peek, Takeover};

/// What one process lets its clients cost. Each bound is explained in the module's doc.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections held at once. Lowered at start to what `RLIMIT_NOFILE` leaves after a
    /// reserve for the process's own files ([`Server::max_connections`] says the result).
    pub max_connections: usize,
    /// Descriptors one connection costs: 1, or 2 for a proxy that opens one upstream.
    pub descriptors_per_connection: usize,
    /// From when a connection is ready for a request (accepted, or its last answer handed
    /// to the socket) until the request's whole head has arrived: keep-alive idleness and a
    /// slowly sent head together (hyper runs one timer for both).
    pub header_timeout: Duration,
    /// How long nothing may move either way on a connection with no request being answered
    /// (a client that stopped reading its answer).
    pub idle_timeout: Duration,
    /// Request line and headers together; past it the answer is 431 and the connection closes.
    pub max_header_bytes: usize,
    /// The request target (path and query); past it the answer is 414. A target that makes
    /// the head itself too large gets the head's 431.
    pub max_target_bytes: usize,
    /// Serve connections with HTTP upgrades (101, Docker's hijacks): the service takes the
    /// connection over with `hyper::upgrade::on`, and keeps it counted by keeping its [`Busy`].
    pub upgrades: bool,
}

/// Descriptors kept for the process's own use (configuration files, the bus, the runtime)
/// when the connection cap is fitted to `RLIMIT_NOFILE`.
const RESERVED_DESCRIPTORS: u64 = 64;

/// The accept loop's pause after a failure: doubled on each failure in a row, up to the most.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

/// 503s being written at once to newcomers past the cap; past that they are closed unanswered
/// (each 503 holds a descriptor until it is written, at most [`REFUSAL_TIME`]).
const MAX_REFUSALS: usize = 32;
pub const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// Something the server survived, for the caller to log.
#[derive(Debug)]
pub enum Event {
    /// `accept` failed; the loop waits `pause` and accepts again.
    AcceptFailed { error: io::Error, pause: Duration },
    /// `accept` failed for want of descriptors; the connection idle longest was closed to
    /// free one, and the loop accepts again at once.
    IdleClosedForDescriptor { error: io::Error },
    /// At the cap, the connection idle longest was closed for a new one.
    IdleClosed,
    /// At the cap with every connection answering a request: a newcomer got 503.
    Refused,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::AcceptFailed { error, pause } => write!(
                f,
                "cannot accept a connection ({error}); accepting again in {pause:?}"
            ),
            Event::IdleClosedForDescriptor { error } => write!(
                f,
                "cannot accept a connection ({error}); closed the connection idle longest to free a descriptor"
            ),
            Event::IdleClosed => f.write_str(
                "closed the connection idle longest to make room for a new one (connection cap reached)",
            ),
            Event::Refused => f.write_str(
                "answered a new connection 503: the connection cap is reached and every connection is answering a request",
            ),
        }
    }
}

/// What accepts connections: a TCP or a Unix listener (the gate's comes from systemd).
pub trait Listener: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Peek + Unpin + Send + 'static;
    type Addr: Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Io, Self::Addr)>> + Send;
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Io, Self::Addr)>> + Send {
        TcpListener::accept(self)
    }
}

impl Listener for UnixListener {
    type Io = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Io, Self::Addr)>> + Send {
        UnixListener::accept(self)
    }
}

/// The accept loop with its limits.
pub struct Server {
    limits: Limits,
    max_connections: usize,
}

impl Server {
    pub fn new(limits: Limits) -> Server {
        let max_connections = fitted_to_descriptors(&limits);
        Server {
            limits,
            max_connections,
        }
    }

    /// The connection cap in force: [`Limits::max_connections`], or less where the descriptor
    /// limit leaves room for fewer.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Accepts connections until the listener fails for good (a descriptor that is not a
    /// listening socket); every other accept error is waited out. `connect` runs on the
    /// accept loop for each accepted connection, sees the stream (peer credentials) and the
    /// peer's address, and gives the connection's service, or None to close it; it must not
    /// block. `takeover` may answer a request itself at its start ([`Takeover`]). `on_event`
    /// is called from any task.
    pub async fn serve<L, C, S, B>(
        self,
        listener: L,
        mut connect: C,
        takeover: Option<Arc<dyn Takeover<L::Io>>>,
        on_event: impl Fn(Event) + Send + Sync + 'static,
    ) -> io::Result<Infallible>
    where
        L: Listener,
        C: FnMut(&L::Io, &L::Addr) -> Option<S>,
        S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let registry = Registry::new(self.max_connections);
        let refusing = Arc::new(AtomicUsize::new(0));
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            .max_header_size(self.limits.max_header_bytes);
        let http = Arc::new(http);
        let mut pause = FIRST_PAUSE;
        loop {
            let (io, addr) = match listener.accept().await {
                Ok(accepted) => {
                    pause = FIRST_PAUSE;
                    accepted
                }
                Err(error) if listener_is_gone(&error) => return Err(error),
                Err(error) => {
                    // Out of descriptors, the idlest connection gives one back: only as long
                    // as its task takes to close it. The one freed may be numbered above the
                    // limit (it was lowered under the process), so this may take several.
                    if out_of_descriptors(&error) && registry.close_idlest() {
                        on_event(Event::IdleClosedForDescriptor { error });
                        tokio::task::yield_now().await;
                        continue;
                    }
                    on_event(Event::AcceptFailed { error, pause });
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(LONGEST_PAUSE);
                    continue;
                }
            };
            let Some(service) = connect(&io, &addr) else {
                continue;
            };
            let slot = match registry.admit() {
                Admission::Admitted { slot, closed_idle } => {
                    if closed_idle {
                        on_event(Event::IdleClosed);
                    }
                    slot
                }
                Admission::Full => {
                    on_event(Event::Refused);
                    refuse(io, self.max_connections, &refusing);
                    continue;
                }
            };
            let idle_timeout = self.limits.idle_timeout;
            let service = Tracked::new(service, Arc::clone(&slot), self.limits.max_target_bytes);
            let io = TokioIo::new(Watched::new(io, Arc::clone(&slot), takeover.clone()));
            let http = Arc::clone(&http);
            let upgrades = self.limits.upgrades;
            tokio::spawn(async move {
                let idle = slot.until_idle_or_closed(idle_timeout);
                // The connection's own errors (a reset, a bad request already answered 400,
                // a timeout) are its client's business, not the server's.
                if upgrades {
                    tokio::select! {
                        _ = http.serve_connection(io, service).with_upgrades() => {}
                        () = idle => {}
                    }
                } else {
                    tokio::select! {
                        _ = http.serve_connection(io, service) => {}
                        () = idle => {}
                    }
                }
            });
        }
    }
}

/// [`Limits::max_connections`], lowered so that the connections and the reserve fit in the
/// soft `RLIMIT_NOFILE` (at least one connection).
fn fitted_to_descriptors(limits: &Limits) -> usize {
    let wanted = limits.max_connections.max(1);
    let Some(soft) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current else {
        return wanted;
    };
    let per = limits.descriptors_per_connection.max(1) as u64;
    let room = soft.saturating_sub(RESERVED_DESCRIPTORS) / per;
    wanted
        .min(usize::try_from(room).unwrap_or(usize::MAX))
        .max(1)
}

/// The errors after which accepting again cannot work: the descriptor is no listening socket.
fn listener_is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF | libc::ENOTSOCK | libc::EINVAL | libc::EOPNOTSUPP)
    )
}

fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// A 503 to a newcomer past the cap, written on a task of its own (bounded in number and
/// time), then the connection is closed. Whatever the client sent is read first and thrown
/// away, so that closing does not reset the connection before the client reads the 503.
fn refuse<I>(mut io: I, cap: usize, refusing: &Arc<AtomicUsize>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSALS {
        refusing.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let refusing = Arc::clone(refusing);
    tokio::spawn(async move {
        let body = format!("busy: {cap} connections open, each answering a request; try again\n");
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        answer_and_close(&mut io, answer.as_bytes(), REFUSAL_TIME).await;
        refusing.fetch_sub(1, Ordering::AcqRel);
    });
}

/// Writes `answer` (a whole HTTP answer that says `Connection: close`), ends the writing side,
/// and reads and throws away what the client still sends until it closes, all within `within`:
/// closing a socket with unread bytes resets the connection, and the client could lose the
/// answer before reading it.
pub async fn answer_and_close<I>(io: &mut I, answer: &[u8], within: Duration)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(within, async {
        io.write_all(answer).await?;
        io.shutdown().await?;
        let mut sink = [0u8; 4096];
        while io.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}
