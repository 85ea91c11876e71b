//! A connection's stream as hyper sees it ([`Watched`]): each byte that moves noted, and the
//! connection offered to a takeover at each request's start.
//!
//! A connection taken over at a request's start: before hyper reads a request, the server's
//! [`Takeover`] may look at what has arrived of it (peeked, nothing consumed) and answer that
//! request itself from the stream; hyper then sees the connection end. The gate splices
//! `docker cp`'s archives so (gate/bulk.rs).
//!
//! Only a request's start is looked at: when no request is being answered and none has
//! started since the last look. A look that does not claim lets hyper read as usual, and the
//! connection is not looked at again before its next request, so a takeover never sees the
//! middle of a request hyper is reading, however its bytes arrive.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

use super::conn::{Busy, Slot};

/// What may answer a connection's next request instead of hyper.
pub trait Takeover<I>: Send + Sync + 'static {
    /// The most of what has arrived that [`Takeover::claims`] is shown.
    fn window(&self) -> usize;
    /// Whether the request that starts `arrived` is answered by [`Takeover::answer`].
    fn claims(&self, arrived: &[u8]) -> bool;
    /// Answers the request `claims` accepted, from the stream (nothing of it consumed yet);
    /// the connection ends with it. `busy` keeps it counted as answering until then.
    fn answer(&self, io: I, busy: Busy) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// A stream that can show what has arrived without consuming it.
pub trait Peek {
    fn poll_peek(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>>;
}

impl Peek for tokio::net::UnixStream {
    fn poll_peek(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.poll_read_ready(cx))?;
            let peeked = self.try_io(Interest::READABLE, || {
                rustix::net::recv(
                    self,
                    &mut *buf,
                    rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
                )
                .map(|(n, _)| n)
                .map_err(io::Error::from)
            });
            match peeked {
                // Readiness was cleared: wait for it again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }
}

impl Peek for tokio::net::TcpStream {
    fn poll_peek(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        tokio::net::TcpStream::poll_peek(self, cx, &mut ReadBuf::new(buf))
    }
}

/// The connection's stream, noting each byte that moves, and offered to the server's
/// [`Takeover`] at each request's start.
pub(super) struct Watched<I: 'static> {
    /// None once taken over: hyper then reads an end and writes nowhere.
    io: Option<I>,
    slot: Arc<Slot>,
    takeover: Option<Arc<dyn Takeover<I>>>,
    /// How many requests had started when the takeover last looked and did not claim.
    looked_at: Option<u64>,
}

impl<I> Watched<I> {
    pub(super) fn new(
        io: I,
        slot: Arc<Slot>,
        takeover: Option<Arc<dyn Takeover<I>>>,
    ) -> Watched<I> {
        Watched {
            io: Some(io),
            slot,
            takeover,
            looked_at: None,
        }
    }

    fn moved<T>(&self, r: &Poll<io::Result<T>>, amount: impl Fn(&T) -> usize) {
        if let Poll::Ready(Ok(v)) = r {
            if amount(v) > 0 {
                self.slot.moved();
            }
        }
    }

    /// At a request's start, not looked at yet.
    fn takeover_due(&self) -> Option<u64> {
        let started = self.slot.between_requests()?;
        (self.takeover.is_some() && self.looked_at != Some(started)).then_some(started)
    }
}

fn taken() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the connection was taken over")
}

impl<I: AsyncRead + Peek + Unpin + Send> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let (Some(started), Some(takeover), Some(io)) =
            (self.takeover_due(), self.takeover.clone(), self.io.as_ref())
        {
            let mut window = vec![0; takeover.window()];
            match io.poll_peek(cx, &mut window) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(n)) if n > 0 && takeover.claims(&window[..n]) => {
                    if let Some(io) = self.io.take() {
                        let busy = self.slot.busy();
                        tokio::spawn(takeover.answer(io, busy));
                    }
                    // An end, at a request's start: hyper closes the connection quietly.
                    return Poll::Ready(Ok(()));
                }
                // An end, an error or another request: hyper reads it as usual.
                Poll::Ready(_) => self.looked_at = Some(started),
            }
        }
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let before = buf.filled().len();
        let r = Pin::new(io).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.moved(&r, |()| read);
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Err(taken()));
        };
        let r = Pin::new(io).poll_write(cx, buf);
        self.moved(&r, |n| *n);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Err(taken()));
        };
        let r = Pin::new(io).poll_write_vectored(cx, bufs);
        self.moved(&r, |n| *n);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(I::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}
