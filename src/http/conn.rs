//! One connection's bookkeeping: its slot under the cap, whether it is answering a request
//! ([`Busy`]), when a byte last moved on it ([`Watched`]), and the wrapper around the caller's
//! service that keeps both up to date ([`Tracked`], [`Answer`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::Service;
use hyper::{Request, Response, StatusCode, Uri};
use tokio::sync::Notify;
use tokio::time::Instant;

/// An error a service or a body may end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The open connections, for the cap and for closing the idlest.
pub(super) struct Registry {
    cap: usize,
    /// What every connection's `last_moved` counts from, so that they compare.
    epoch: Instant,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    slots: HashMap<u64, Arc<Activity>>,
}

pub(super) enum Admission {
    /// A slot, and whether an idle connection was closed to make it.
    Admitted { slot: Arc<Slot>, closed_idle: bool },
    /// At the cap and every connection is answering.
    Full,
}

impl Registry {
    pub(super) fn new(cap: usize) -> Arc<Registry> {
        Arc::new(Registry {
            cap,
            epoch: Instant::now(),
            open: Mutex::new(Open::default()),
        })
    }

    // A panic elsewhere while the lock was held leaves the map whole (each change is one
    // insert or remove), so a poisoned lock is used as it is.
    fn open(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn admit(self: &Arc<Self>) -> Admission {
        let mut open = self.open();
        let mut closed_idle = false;
        if open.slots.len() >= self.cap {
            if !close_idlest(&mut open) {
                return Admission::Full;
            }
            closed_idle = true;
        }
        let id = open.next_id;
        open.next_id += 1;
        let activity = Arc::new(Activity::new(self.epoch));
        open.slots.insert(id, Arc::clone(&activity));
        Admission::Admitted {
            slot: Arc::new(Slot {
                id,
                activity,
                registry: Arc::clone(self),
            }),
            closed_idle,
        }
    }

    /// Closes the connection idle longest, if one is idle: false if every one is answering.
    pub(super) fn close_idlest(&self) -> bool {
        close_idlest(&mut self.open())
    }
}

fn close_idlest(open: &mut Open) -> bool {
    let idlest = open
        .slots
        .iter()
        .filter(|(_, a)| a.answering.load(Ordering::Acquire) == 0)
        // Of two idle as long, the older connection.
        .min_by_key(|(id, a)| (a.last_moved.load(Ordering::Acquire), **id))
        .map(|(id, _)| *id);
    let Some(activity) = idlest.and_then(|id| open.slots.remove(&id)) else {
        return false;
    };
    // Removed at once, so that its slot is free now; its task drops the connection when it
    // next runs (a stored permit if it is not waiting yet).
    activity.close.notify_one();
    true
}

/// What the registry knows of one connection.
struct Activity {
    epoch: Instant,
    /// Microseconds after `epoch` when the connection was opened, a byte last moved on it,
    /// or it last finished answering a request.
    last_moved: AtomicU64,
    /// Requests (and upgraded connections) being answered: [`Busy`] guards alive.
    answering: AtomicUsize,
    /// Requests hyper has read on the connection.
    started: AtomicU64,
    close: Notify,
}

impl Activity {
    fn new(epoch: Instant) -> Activity {
        Activity {
            epoch,
            last_moved: AtomicU64::new(since(epoch)),
            answering: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            close: Notify::new(),
        }
    }

    fn moved(&self) {
        self.last_moved
            .fetch_max(since(self.epoch), Ordering::AcqRel);
    }

    fn last_moved(&self) -> Instant {
        self.epoch + Duration::from_micros(self.last_moved.load(Ordering::Acquire))
    }
}

fn since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// A connection's place under the cap, held by its task and by every [`Busy`] of it: the
/// place is given back when the last of them goes.
pub(super) struct Slot {
    id: u64,
    activity: Arc<Activity>,
    registry: Arc<Registry>,
}

impl Slot {
    /// Returns when the connection must be closed: idle for `idle` (nothing moved and no
    /// request being answered), or chosen to make room.
    pub(super) async fn until_idle_or_closed(&self, idle: Duration) {
        let activity = &self.activity;
        loop {
            let now = Instant::now();
            // While a request is being answered the clock does not run; the answer's end
            // counts as movement, so it starts again from there.
            let wake = if activity.answering.load(Ordering::Acquire) > 0 {
                now + idle
            } else {
                activity.last_moved() + idle
            };
            if wake <= now {
                return;
            }
            tokio::select! {
                () = activity.close.notified() => return,
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

impl Slot {
    /// A byte moved on the connection.
    pub(super) fn moved(&self) {
        self.activity.moved();
    }

    /// Between requests (none being answered): how many have started on the connection.
    pub(super) fn between_requests(&self) -> Option<u64> {
        let activity = &self.activity;
        let started = activity.started.load(Ordering::Acquire);
        (activity.answering.load(Ordering::Acquire) == 0).then_some(started)
    }

    /// The connection marked as answering, for as long as the [`Busy`] lives.
    pub(super) fn busy(self: &Arc<Self>) -> Busy {
        Busy::new(Arc::clone(self))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry.open().slots.remove(&self.id);
    }
}

/// Marks its connection as answering a request while it lives: such a connection is never
/// closed for idleness or to make room. One lives in each request's extensions; a service
/// that takes a connection over (an upgrade) keeps it with the upgraded stream, so that the
/// connection stays counted under the cap for as long as it is open.
pub struct Busy(Arc<Slot>);

impl Busy {
    fn new(slot: Arc<Slot>) -> Busy {
        slot.activity.answering.fetch_add(1, Ordering::AcqRel);
        Busy(slot)
    }
}

impl Clone for Busy {
    fn clone(&self) -> Busy {
        Busy::new(Arc::clone(&self.0))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.0.activity;
        activity.moved();
        activity.answering.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The caller's service, with each request marked [`Busy`] until its answer's body ends and
/// the target's length checked first.
pub(super) struct Tracked<S> {
    inner: S,
    slot: Arc<Slot>,
    max_target_bytes: usize,
}

impl<S> Tracked<S> {
    pub(super) fn new(inner: S, slot: Arc<Slot>, max_target_bytes: usize) -> Tracked<S> {
        Tracked {
            inner,
            slot,
            max_target_bytes,
        }
    }
}

type Pending<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

impl<S, B> Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Answer<B>>;
    type Error = BoxError;
    type Future = Pending<Self::Response>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let busy = Busy::new(Arc::clone(&self.slot));
        self.slot.activity.started.fetch_add(1, Ordering::AcqRel);
        let target = target_len(req.uri());
        if target > self.max_target_bytes {
            let mut answer = Response::new(Full::new(Bytes::from(format!(
                "request target of {target} bytes; at most {} are read\n",
                self.max_target_bytes
            ))));
            *answer.status_mut() = StatusCode::URI_TOO_LONG;
            answer.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            let answer = answer.map(|b| Answer::new(Either::Right(b), busy));
            return Box::pin(std::future::ready(Ok(answer)));
        }
        req.extensions_mut().insert(busy.clone());
        let answering = self.inner.call(req);
        Box::pin(async move {
            let answer = answering.await.map_err(Into::into)?;
            Ok(answer.map(|b| Answer::new(Either::Left(Box::pin(b)), busy)))
        })
    }
}

/// The request target as it came on the request line (origin or absolute form).
fn target_len(uri: &Uri) -> usize {
    let scheme = uri.scheme_str().map_or(0, |s| s.len() + 3);
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let path = uri.path_and_query().map_or(0, |p| p.as_str().len());
    scheme + authority + path
}

/// An answer's body (the caller's, or the 414), keeping its connection [`Busy`] until the
/// body has ended.
pub struct Answer<B> {
    body: Either<Pin<Box<B>>, Full<Bytes>>,
    busy: Option<Busy>,
}

impl<B> Answer<B> {
    fn new(body: Either<Pin<Box<B>>, Full<Bytes>>, busy: Busy) -> Answer<B> {
        Answer {
            body,
            busy: Some(busy),
        }
    }
}

impl<B> Body for Answer<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
            self.busy = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
