//! One request, from the client to the daemon and back: passed through as it is, unless the
//! rules apply to it ([`Route`]) and the caller is not root; then its body is read (bounded),
//! decided on a blocking thread ([`admit::decide`]), and forwarded as decided or refused with
//! a Docker-style error. Each create (and build, and refusal) is one [`Event`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{header, HeaderMap, Request, Response};
use tokio::sync::Semaphore;

use super::admit::{self, Asked, Outcome, Settings, Spent, Systemd, Verdict};
use super::identity::Peer;
use super::proxy::{error_response, full, pass_on, Body, Daemon};
use super::rules::route::{self, Route};
use super::GATE_HEADER;
use crate::model::names::SliceName;

/// The largest body the gate reads to decide (a create's JSON is a few KiB; 1 MiB is far
/// beyond any real one): 413 above it.
pub const MAX_BODY: usize = 1 << 20;
/// Bodies being read at once; the others wait. Bounds the gate's memory for bodies (with
/// [`MAX_BODY`]: 64 MiB); a client that sends its body slowly holds one of these for at most
/// [`BODY_TIMEOUT`], never one of the [`MAX_DECIDING`].
pub const MAX_READING: usize = 64;
/// Requests being decided at once (each on a blocking thread, which may wait for the writer
/// lock); the others wait.
pub const MAX_DECIDING: usize = 32;
/// How long a client may take to send a body the gate reads.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// A request the gate decided on, for the journal (the command line writes it).
#[derive(Debug, Clone)]
pub struct Event {
    pub peer: Peer,
    pub what: &'static str,
    pub user: Option<String>,
    pub slice: Option<SliceName>,
    /// `placed`, `passed` (an admin's own choice) or `refused (STATUS): why`.
    pub decision: String,
    pub notes: Vec<String>,
}

pub type Events = Box<dyn Fn(Event) + Send + Sync>;

pub struct Gate {
    settings: Settings,
    systemd: Systemd,
    daemon: Daemon,
    reading: Semaphore,
    deciding: Semaphore,
    events: Events,
}

impl Gate {
    pub fn new(settings: Settings, events: Events) -> Gate {
        Gate {
            systemd: Systemd::new(settings.bus.clone(), settings.timeout),
            daemon: Daemon::new(&settings.daemon),
            reading: Semaphore::new(MAX_READING),
            deciding: Semaphore::new(MAX_DECIDING),
            events,
            settings,
        }
    }

    pub fn daemon(&self) -> &Daemon {
        &self.daemon
    }

    /// For the journal.
    pub fn tell(&self, event: Event) {
        (self.events)(event);
    }
}

fn what(route: &Route) -> &'static str {
    match route {
        Route::ContainerCreate => "create",
        Route::ContainerStart => "start",
        Route::ExecCreate => "exec",
        Route::Build => "build",
        Route::VolumeCreate => "volume create",
        Route::Creating | Route::Other => "request",
    }
}

/// Whether the request carries no body at all.
fn no_body(headers: &HeaderMap) -> bool {
    !headers.contains_key(header::TRANSFER_ENCODING)
        && headers
            .get(header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0")
}

pub async fn handle(gate: Arc<Gate>, peer: Peer, request: Request<Incoming>) -> Response<Body> {
    let route = match route::classify(request.method().as_str(), request.uri().path()) {
        Ok(route) => route,
        Err(_) if peer.uid == 0 => Route::Other,
        Err(e) => return error_response(400, &format!("ds01-slices gate: {e}")),
    };
    let passes = peer.uid == 0
        || route == Route::Other
        || (route == Route::ContainerStart && no_body(request.headers()));
    if passes {
        let ping = request.uri().path().ends_with("/_ping");
        let mut response = gate.daemon.pass(request.map(super::proxy::streamed)).await;
        if ping {
            // How `doctor` tells the gate from the daemon, and finds the daemon's socket.
            if let Ok(v) = header::HeaderValue::from_str(&gate.settings.daemon.to_string_lossy()) {
                response.headers_mut().insert(GATE_HEADER, v);
            }
        }
        return response;
    }
    let (mut parts, body) = request.into_parts();
    // A build's body is its context (an image load's, an archive): streamed to the daemon,
    // only the request's head is decided on.
    let mut read_started = None;
    let (bytes, streamed_body) = if matches!(route, Route::Build | Route::Creating) {
        (Bytes::new(), Some(body))
    } else {
        read_started = Some(Instant::now());
        let Ok(_reading) = gate.reading.acquire().await else {
            return error_response(503, "ds01-slices gate: shutting down");
        };
        match read_body(&parts.headers, body).await {
            Ok(bytes) => (bytes, None),
            Err(refused) => return refused,
        }
    };
    let Ok(deciding) = gate.deciding.acquire().await else {
        return error_response(503, "ds01-slices gate: shutting down");
    };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let query = parts.uri.query().map(str::to_owned);
    let deciding_started = Instant::now();
    let verdict = {
        let gate = gate.clone();
        let body = bytes.clone();
        let route = route.clone();
        let rt = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let asked = Asked {
                route: &route,
                uid: peer.uid,
                body: &body,
                query: query.as_deref(),
                content_type: content_type.as_deref(),
            };
            admit::decide(&gate.settings, &gate.systemd, &rt, &asked)
        })
        .await
    };
    let decided = deciding_started.elapsed();
    let verdict = match verdict {
        Ok(v) => v,
        Err(e) => {
            return error_response(
                500,
                &format!(
                    "ds01-slices gate: deciding on the request failed ({e}); nothing was created"
                ),
            )
        }
    };
    drop(deciding);
    report(&gate, peer, &route, &verdict);
    let body = match streamed_body {
        Some(streamed) => super::proxy::streamed(streamed),
        None => full(bytes),
    };
    let traced = Traced {
        gate: &gate,
        peer,
        route: &route,
        user: verdict.user.clone(),
        slice: verdict.slice.clone(),
        spent: verdict.spent,
        read: read_started.map(|t| deciding_started - t),
        decided,
    };
    match verdict.outcome {
        Outcome::Refused(r) => error_response(r.status, &r.message),
        Outcome::Pass => traced.pass(Request::from_parts(parts, body)).await,
        Outcome::Body(placed) => {
            parts.headers.remove(header::TRANSFER_ENCODING);
            parts.headers.insert(
                header::CONTENT_LENGTH,
                header::HeaderValue::from(placed.len()),
            );
            traced.pass(Request::from_parts(parts, full(placed))).await
        }
        Outcome::Query(query) => {
            let path_and_query = format!("{}?{query}", parts.uri.path());
            let mut uri = parts.uri.clone().into_parts();
            uri.path_and_query = match path_and_query.parse() {
                Ok(pq) => Some(pq),
                Err(e) => {
                    return error_response(
                        400,
                        &format!("ds01-slices gate: the build's query: {e}"),
                    )
                }
            };
            parts.uri = match hyper::Uri::from_parts(uri) {
                Ok(uri) => uri,
                Err(e) => {
                    return error_response(
                        400,
                        &format!("ds01-slices gate: the build's query: {e}"),
                    )
                }
            };
            traced.pass(Request::from_parts(parts, body)).await
        }
    }
}

/// The body, at most [`MAX_BODY`] bytes, within [`BODY_TIMEOUT`].
async fn read_body(headers: &HeaderMap, body: Incoming) -> Result<Bytes, Response<Body>> {
    let too_large = || {
        error_response(
            413,
            &format!(
                "ds01-slices gate: the body of this request is larger than the gate reads ({} KiB)",
                MAX_BODY >> 10
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(error_response(
            400,
            &format!("ds01-slices gate: reading the request's body: {e}"),
        )),
        Err(_) => Err(error_response(
            408,
            &format!(
                "ds01-slices gate: the request's body did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            ),
        )),
    }
}

fn report(gate: &Gate, peer: Peer, route: &Route, verdict: &Verdict) {
    let decision = match &verdict.outcome {
        Outcome::Refused(r) => format!(
            "refused ({}): {}",
            r.status,
            r.message.trim().replace('\n', " | ")
        ),
        Outcome::Body(_) | Outcome::Query(_) => "placed".to_owned(),
        Outcome::Pass if verdict.admin => "passed (admin)".to_owned(),
        Outcome::Pass => "passed".to_owned(),
    };
    let logged = matches!(route, Route::ContainerCreate | Route::Build)
        || matches!(verdict.outcome, Outcome::Refused(_));
    if logged {
        (gate.events)(Event {
            peer,
            what: what(route),
            user: verdict.user.clone(),
            slice: verdict.slice.clone(),
            decision,
            notes: verdict.notes.clone(),
        });
    }
}

/// A decided request on its way to the daemon, with what it cost so far: with `DS01_TRACE=1`
/// one more journal line per create (and build) says where its time went, up to the daemon's
/// answer (the benchmark's breakdown).
struct Traced<'a> {
    gate: &'a Gate,
    peer: Peer,
    route: &'a Route,
    user: Option<String>,
    slice: Option<SliceName>,
    spent: Spent,
    /// Reading the body (None: streamed, not read).
    read: Option<Duration>,
    decided: Duration,
}

impl Traced<'_> {
    /// Connects to the daemon once the request is decided (a refused one never reaches it) and
    /// passes the request on.
    async fn pass(&self, request: Request<Body>) -> Response<Body> {
        let connecting = Instant::now();
        let upstream = self.gate.daemon.connect().await;
        let connected = connecting.elapsed();
        let sent = Instant::now();
        let response = pass_on(upstream, request).await;
        if crate::trace::enabled() && matches!(self.route, Route::ContainerCreate | Route::Build) {
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            let spent = &self.spent;
            (self.gate.events)(Event {
                peer: self.peer,
                what: "trace",
                user: self.user.clone(),
                slice: self.slice.clone(),
                decision: format!(
                    "{}: body read {:.1} ms, decided {:.1} ms (identity {:.1} ms, slice {:.1} ms, of which waiting for systemd {:.1} ms), daemon connected in {:.1} ms, daemon's answer {} in {:.1} ms",
                    what(self.route),
                    self.read.map_or(0.0, ms),
                    ms(self.decided),
                    ms(spent.identity),
                    ms(spent.slice),
                    ms(spent.systemd),
                    ms(connected),
                    response.status().as_u16(),
                    ms(sent.elapsed()),
                ),
                notes: Vec::new(),
            });
        }
        response
    }
}
