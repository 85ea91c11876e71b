//! `serve`: the metrics over HTTP at `/metrics`, for Prometheus to scrape. It runs as root and
//! any local user can connect, so it is served by the house's HTTP server ([`crate::http`]:
//! each connection on its own, bounded heads, a connection cap, timeouts) with the limits
//! below. An answer is reused for `--cache` seconds: two scrapers (or a scraper and a curious
//! admin) cost one reading of systemd, not two. The readings are made one at a time on this
//! thread, apart from the connections (served on the runtime's workers), so a slow reading
//! delays only the scrapes that wait for it. The configuration is read again for every fresh
//! answer, so that a new user appears without a restart; one that does not load makes the
//! scrape fail (HTTP 500 with the reason) rather than report limits of a configuration that
//! is not there.

use std::convert::Infallible;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, oneshot};

use super::args::Globals;
use super::exit::{CliError, CliResult};
use super::out;
use crate::config;
use crate::http::{Event, Limits, Server};
use crate::ops::metrics::CONTENT_TYPE as EXPOSITION;
use crate::systemd::BusSystemd;

/// What any local client may cost the exporter. 256 connections are far more than the
/// scrapers and admins of one server; past them the idlest is closed for a newcomer, so idle
/// connections cannot lock a scraper out (the unit's LimitNOFILE=512 leaves room for them
/// and the process's own files). A scrape's head is a few hundred bytes: 16 KiB of head,
/// 8 KiB of target bound what a connection can make the server hold before it answers.
/// Prometheus scrapes every 15 s by default, so it keeps its connection within 30 s.
const LIMITS: Limits = Limits {
    max_connections: 256,
    descriptors_per_connection: 1,
    header_timeout: Duration::from_secs(30),
    idle_timeout: Duration::from_secs(30),
    max_header_bytes: 16 << 10,
    max_target_bytes: 8 << 10,
    upgrades: false,
};

/// Each connection's kernel buffers, each way: enough for an answer to stream at the speed of
/// a LAN (128 KiB per round trip), small enough that the cap bounds them.
const SOCKET_BUFFER: u32 = 128 << 10;
/// Connections the kernel queues before serve accepts them (tokio's own default).
const BACKLOG: u32 = 1024;

/// Threads serving connections, beside this one, which makes the readings.
const WORKERS: usize = 2;
/// Threads for blocking work (the runtime's file and DNS helpers, if anything uses them).
const BLOCKING_THREADS: usize = 2;

/// At most one line of what the server survived per this long (a flood of connections must
/// not flood the journal); the next line counts the ones not said.
const LOG_EVERY: Duration = Duration::from_secs(10);

const TEXT: &str = "text/plain; charset=utf-8";

/// A reading: the exposition, or why there is none (both as sent).
type Scraped = Result<Bytes, Bytes>;

/// A connection's request for the current answer.
type Ask = oneshot::Sender<Scraped>;

pub fn serve(globals: &Globals, listen: SocketAddr, cache: Duration) -> CliResult {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_name("ds01-serve")
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .map_err(CliError::failure)?
        .block_on(run(globals, listen, cache))
}

async fn run(globals: &Globals, listen: SocketAddr, cache: Duration) -> CliResult {
    let listener = bind(listen).map_err(|e| cannot_listen(listen, e))?;
    let bound = listener.local_addr().unwrap_or(listen);
    let server = Server::new(LIMITS);
    out::say(&format!(
        "serving metrics on http://{bound}/metrics (at most {} connections)",
        server.max_connections()
    ));
    // Each connection asks at most once at a time: the channel never fills.
    let (asks, mut asked) = mpsc::channel::<Ask>(server.max_connections());
    let log = EventLog::default();
    let mut serving = tokio::spawn(server.serve(
        listener,
        move |_, _| {
            let asks = asks.clone();
            Some(service_fn(move |req| answer(req, asks.clone())))
        },
        None,
        move |event| log.say(event),
    ));
    let mut scraper = Scraper {
        globals,
        cache,
        bus: None,
        cached: None,
    };
    loop {
        tokio::select! {
            Some(ask) = asked.recv() => {
                // A client that went away while waiting is its own business.
                let _ = ask.send(scraper.answer().await);
            }
            stopped = &mut serving => {
                let why = match stopped {
                    Ok(Err(e)) => e.to_string(),
                    Ok(Ok(never)) => match never {},
                    Err(e) => format!("the server's task ended: {e}"),
                };
                return Err(CliError::failure(anyhow::anyhow!(
                    "serve stopped accepting connections on {bound}: {why}"
                )));
            }
        }
    }
}

/// The listening socket, with small kernel buffers that its connections inherit: the kernel
/// grows a connection's send buffer up to 4 MiB for a client that does not read, and keeps it
/// after the connection is closed until the data is taken or given up (measured: 256 such
/// connections, 970 MB outside the process). With these, at most 256 × 128 KiB at the cap.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    // The kernel doubles what it is given.
    socket.set_send_buffer_size(SOCKET_BUFFER / 2)?;
    socket.set_recv_buffer_size(SOCKET_BUFFER / 2)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

fn cannot_listen(addr: SocketAddr, e: std::io::Error) -> CliError {
    let hint = match e.kind() {
        ErrorKind::AddrInUse => {
            "the address is in use: another program listens on it (`ss -ltnp` shows which); \
             stop it or pass another --listen"
        }
        ErrorKind::AddrNotAvailable => {
            "no interface of this host has that address (`ip -brief address` lists them)"
        }
        ErrorKind::PermissionDenied => {
            "a port below 1024 needs CAP_NET_BIND_SERVICE; pass a higher port"
        }
        _ => "check the address and the host's network",
    };
    CliError::failure(anyhow::Error::new(e).context(format!("cannot listen on {addr}: {hint}")))
}

/// One request. Only `/metrics` waits for the reader; the rest is answered at once.
async fn answer(
    req: Request<Incoming>,
    asks: mpsc::Sender<Ask>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut refused = response(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET and HEAD\n");
        refused
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(refused);
    }
    Ok(match req.uri().path() {
        "/metrics" => {
            let (reply, replied) = oneshot::channel();
            let scraped = match asks.send(reply).await {
                Ok(()) => replied.await.ok(),
                Err(_) => None,
            };
            match scraped {
                Some(Ok(text)) => response(StatusCode::OK, EXPOSITION, text),
                Some(Err(reason)) => response(StatusCode::INTERNAL_SERVER_ERROR, TEXT, reason),
                None => response(StatusCode::SERVICE_UNAVAILABLE, TEXT, "stopping\n"),
            }
        }
        "/" => response(
            StatusCode::OK,
            "text/html; charset=utf-8",
            "<html><body><h1>ds01-slices</h1><p><a href=\"/metrics\">/metrics</a></p></body></html>\n",
        ),
        _ => response(StatusCode::NOT_FOUND, TEXT, "not found: try /metrics\n"),
    })
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The readings, one at a time, and the last one.
struct Scraper<'a> {
    globals: &'a Globals,
    cache: Duration,
    bus: Option<BusSystemd>,
    cached: Option<Cached>,
}

/// The last answer and when it was made.
struct Cached {
    at: Instant,
    answer: Scraped,
}

impl Scraper<'_> {
    /// The cached answer while it is fresh, else a new one. With `--cache 0` no answer is
    /// ever fresh: nothing elapses in less than zero.
    async fn answer(&mut self) -> Scraped {
        if let Some(cached) = &self.cached {
            if cached.at.elapsed() < self.cache {
                return cached.answer.clone();
            }
        }
        let answer = scrape(self.globals, &mut self.bus)
            .await
            .map(Bytes::from)
            .map_err(|e| Bytes::from(format!("{e}\n")));
        self.cached = Some(Cached {
            at: Instant::now(),
            answer: answer.clone(),
        });
        answer
    }
}

/// One fresh answer. The connection is kept between scrapes and made again after one that
/// ended it (systemd restarted, the bus went away).
async fn scrape(globals: &Globals, bus: &mut Option<BusSystemd>) -> Result<String, String> {
    let config = config::load(&globals.config).map_err(|e| CliError::from(e).message())?;
    let sd = match bus.take() {
        Some(sd) => sd,
        None => BusSystemd::connect(globals.bus.as_deref(), globals.timeout())
            .await
            .map_err(|e| CliError::from(e).message())?,
    };
    match super::metrics::collect(globals, &config, &sd).await {
        Ok(text) => {
            *bus = Some(sd);
            Ok(text)
        }
        // The connection is dropped: after a failed scrape a fresh one costs one connect,
        // and a connection systemd has closed would fail every scrape after it.
        Err(e) => {
            out::stderr(&e.message());
            Err(e.message())
        }
    }
}

/// What the server survived, said on stderr (the journal) at most once per [`LOG_EVERY`].
#[derive(Default)]
struct EventLog(Mutex<Said>);

#[derive(Default)]
struct Said {
    last: Option<Instant>,
    unsaid: u64,
}

impl EventLog {
    fn say(&self, event: Event) {
        // The state is two plain numbers: whole whatever panicked while holding it.
        let mut said = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if said.last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            said.unsaid += 1;
            return;
        }
        said.last = Some(Instant::now());
        let unsaid = std::mem::take(&mut said.unsaid);
        drop(said);
        let more = if unsaid > 0 {
            format!(" ({unsaid} more such events before it not shown)")
        } else {
            String::new()
        };
        out::say(&format!("serve: {event}{more}"));
    }
}
