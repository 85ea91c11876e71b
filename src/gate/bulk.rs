//! `docker cp`'s archives passed on by the kernel: the request ([`rules::bulk`]) is taken over
//! from hyper at its start ([`crate::http::Takeover`]) and its bytes are spliced (splice(2))
//! from one socket through a pipe into the other, never through the gate's memory. Through
//! hyper each chunk is read into the gate, decoded, re-encoded and written out, on the cores
//! the daemon and the client use; spliced, the gate looks at each chunk's size line only, and
//! costs the transfer what a bare relay costs (BENCHMARKS.md: the gate per MiB, and the
//! throughput beside the relay's). Only the framing is read: the head (replaced by one that
//! asks the daemon to close after its answer) and, for a chunked body, each size line; the
//! daemon's answer goes back as it comes, until the daemon closes.
//!
//! Each spliced request ends its connection, so nothing the client sends after its body is
//! read; a body framed in a way the gate does not read exactly one way ends the exchange (a
//! 400 when the daemon has not answered yet).

use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::Semaphore;

use super::identity::Peer;
use super::proxy::error_body;
use super::rules::bulk::{self, Chunk, Framing, MAX_CHUNK_LINE, MAX_HEAD};
use super::service::{Event, Gate};
use crate::http::{Busy, Peek, Takeover};

/// Exchanges spliced at once; past it requests go through hyper. Each holds four descriptors
/// more than a connection through hyper (two pipes), within the gate's descriptor reserve.
pub const MAX_SPLICING: usize = 32;

/// The gate's [`Takeover`]: archive requests, spliced.
pub struct Splicer {
    gate: Arc<Gate>,
    splicing: Arc<Semaphore>,
}

impl Splicer {
    pub fn new(gate: Arc<Gate>) -> Splicer {
        Splicer {
            gate,
            splicing: Arc::new(Semaphore::new(MAX_SPLICING)),
        }
    }
}

impl Takeover<UnixStream> for Splicer {
    fn window(&self) -> usize {
        MAX_HEAD
    }

    fn claims(&self, arrived: &[u8]) -> bool {
        self.splicing.available_permits() > 0 && bulk::bulk_request(arrived).is_some()
    }

    fn answer(
        &self,
        mut client: UnixStream,
        busy: Busy,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let gate = Arc::clone(&self.gate);
        let splicing = Arc::clone(&self.splicing);
        Box::pin(async move {
            // Another claim may have taken the last permit since: wait for one.
            let Ok(_permit) = splicing.acquire_owned().await else {
                return;
            };
            let outcome = exchange(&client, &gate).await;
            if crate::trace::enabled() {
                trace(&gate, &client, &outcome);
            }
            if let Err(refusal) = outcome {
                refuse(&mut client, refusal).await;
            }
            drop(busy);
        })
    }
}

/// What the client is told when the exchange fails before the daemon answered.
struct Refusal {
    status: u16,
    message: String,
}

/// With `DS01_TRACE=1`, a journal line per spliced exchange (the benchmark counts them).
fn trace(gate: &Gate, client: &UnixStream, outcome: &Result<Spliced, Refusal>) {
    let peer = client.peer_cred().ok();
    let decision = match outcome {
        Ok(s) => format!("{} bytes in, {} bytes out", s.sent, s.answered),
        Err(r) => format!("refused ({}): {}", r.status, r.message),
    };
    gate.tell(Event {
        peer: Peer {
            uid: peer.map_or(u32::MAX, |c| c.uid()),
            pid: peer.and_then(|c| c.pid()),
        },
        what: "archive spliced",
        user: None,
        slice: None,
        decision,
        notes: Vec::new(),
    });
}

/// What passed in an exchange: the request's body and the daemon's answer, in bytes.
struct Spliced {
    sent: u64,
    answered: u64,
}

/// One request and its answer; a [`Refusal`] when the client is still owed an answer.
async fn exchange(client: &UnixStream, gate: &Gate) -> Result<Spliced, Refusal> {
    let daemon = gate.daemon();
    let mut window = vec![0; MAX_HEAD];
    let arrived = peek(client, &mut window)
        .await
        .map_err(|e| refusal(400, format!("reading the request: {e}")))?;
    // What was claimed is still there, and more may have come: the same head.
    let request = bulk::bulk_request(&window[..arrived])
        .ok_or_else(|| refusal(400, "the request's head changed while it was read".into()))?;
    read_exact(client, &mut window[..request.head_len])
        .await
        .map_err(|e| refusal(400, format!("reading the request: {e}")))?;
    drop(window);
    let upstream = daemon
        .stream()
        .await
        .map_err(|e| refusal(502, e.to_string()))?;
    let unanswered = || {
        refusal(
            502,
            format!(
                "the Docker daemon at {} did not answer",
                daemon.socket.display()
            ),
        )
    };
    write_all(&upstream, &request.head)
        .await
        .map_err(|_| unanswered())?;
    let (to_daemon, to_client) = match (Pipe::new(), Pipe::new()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            return Err(refusal(
                503,
                format!("no pipe to pass the archive on ({e}); try again"),
            ))
        }
    };
    let (sent, answered) = (AtomicU64::new(0), AtomicU64::new(0));
    let spliced = || Spliced {
        sent: sent.load(Ordering::Acquire),
        answered: answered.load(Ordering::Acquire),
    };
    let body = async {
        match request.body {
            Framing::Length(n) => splice_exact(client, &to_daemon, &upstream, n, &sent).await,
            Framing::Chunked => chunked(client, &to_daemon, &upstream, &sent).await,
        }
    };
    let answer = splice_to_end(&upstream, &to_client, client, &answered);
    tokio::pin!(body, answer);
    let mut body_sent = false;
    loop {
        tokio::select! {
            sent = &mut body, if !body_sent => match sent {
                Ok(()) => body_sent = true,
                // The client is owed nothing more.
                Err(_) if answered.load(Ordering::Acquire) > 0 => return Ok(spliced()),
                Err(Failure::Framing(e)) => return Err(refusal(400, format!("the request's body: {e}; nothing after it was passed on"))),
                Err(Failure::Client(e)) => return Err(refusal(400, format!("reading the request's body: {e}"))),
                // The daemon stopped reading: its answer (or its end) says why.
                Err(Failure::Daemon) => body_sent = true,
            },
            // The daemon closed: its answer is whole, or it failed after answering (the
            // client sees the connection end) or before (the client is told).
            _ = &mut answer => {
                if answered.load(Ordering::Acquire) == 0 {
                    return Err(unanswered());
                }
                return Ok(spliced());
            }
        }
    }
}

fn refusal(status: u16, message: String) -> Refusal {
    Refusal { status, message }
}

/// Why a request's body stopped before its end.
enum Failure {
    /// Framing the gate does not read one way only.
    Framing(bulk::FramingError),
    /// Reading it from the client.
    Client(io::Error),
    /// Passing it to the daemon (which may have answered early, and closed).
    Daemon,
}

/// A chunked body, chunk by chunk: each size line looked at where it starts, then passed on
/// with its chunk's data in one splice (the framing as it came, which is what was read).
async fn chunked(
    client: &UnixStream,
    pipe: &Pipe,
    daemon: &UnixStream,
    sent: &AtomicU64,
) -> Result<(), Failure> {
    let mut window = [0u8; MAX_CHUNK_LINE + 4];
    // Framing consumed before its size line was whole: it arrived in pieces.
    let mut framing: Vec<u8> = Vec::new();
    let mut after_data = false;
    loop {
        let arrived = peek(client, &mut window).await.map_err(Failure::Client)?;
        if arrived == 0 {
            return Err(Failure::Client(ended()));
        }
        // Framing that came in pieces is looked at whole (rare: Go writes a size line at once).
        let joined;
        let seen = if framing.is_empty() {
            &window[..arrived]
        } else {
            joined = [&framing[..], &window[..arrived]].concat();
            &joined[..]
        };
        let (framing_len, size) = match bulk::chunk(seen, after_data).map_err(Failure::Framing)? {
            Chunk::Partial => {
                // All that arrived is framing: consumed, so that the next look waits for more.
                let start = framing.len();
                framing.resize(start + arrived, 0);
                read_exact(client, &mut framing[start..])
                    .await
                    .map_err(Failure::Client)?;
                continue;
            }
            Chunk::Data { head_len, size } => (head_len, size),
            Chunk::Last { len } => (len, 0),
        };
        if !framing.is_empty() {
            write_all(daemon, &framing)
                .await
                .map_err(|_| Failure::Daemon)?;
        }
        let rest = (framing_len - framing.len()) as u64;
        framing.clear();
        splice_exact(client, pipe, daemon, rest.saturating_add(size), sent).await?;
        if size == 0 {
            return Ok(());
        }
        after_data = true;
    }
}

fn ended() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the client closed the connection before its body ended",
    )
}

/// A pipe between the two sockets, non-blocking: always emptied before it is filled again.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

/// Moved at a time, and each pipe's capacity (the default is 64 KiB; the gate's CPU per MiB
/// spliced was lower with 1 MiB in short benchmark runs, though within their noise). What a
/// pipe holds are references to the sockets' own pages, at most this much in flight.
const PIPE_BYTES: usize = 1 << 20;

const SPLICE: SpliceFlags = SpliceFlags::NONBLOCK
    .union(SpliceFlags::MOVE)
    .union(SpliceFlags::MORE);

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        // Past fs.pipe-max-size this fails, and the default capacity serves (each fill moves
        // at most what the pipe takes).
        let _ = rustix::pipe::fcntl_setpipe_size(&write, PIPE_BYTES);
        Ok(Pipe { read, write })
    }

    /// Up to `most` bytes from `from` into the (empty) pipe; 0 at `from`'s end.
    async fn fill(&self, from: &UnixStream, most: usize) -> io::Result<usize> {
        loop {
            from.readable().await?;
            let moved = from.try_io(Interest::READABLE, || {
                rustix::pipe::splice(from, None, &self.write, None, most, SPLICE)
                    .map_err(io::Error::from)
            });
            match moved {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }

    /// The `held` bytes in the pipe into `to`.
    async fn drain(&self, to: &UnixStream, mut held: usize) -> io::Result<()> {
        while held > 0 {
            to.writable().await?;
            let moved = to.try_io(Interest::WRITABLE, || {
                rustix::pipe::splice(&self.read, None, to, None, held, SPLICE)
                    .map_err(io::Error::from)
            });
            match moved {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => held -= n,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Exactly `n` bytes from `from` to `to`, counted in `moved`.
async fn splice_exact(
    from: &UnixStream,
    pipe: &Pipe,
    to: &UnixStream,
    mut n: u64,
    moved: &AtomicU64,
) -> Result<(), Failure> {
    while n > 0 {
        let most = usize::try_from(n).unwrap_or(usize::MAX).min(PIPE_BYTES);
        let got = pipe.fill(from, most).await.map_err(Failure::Client)?;
        if got == 0 {
            return Err(Failure::Client(ended()));
        }
        pipe.drain(to, got).await.map_err(|_| Failure::Daemon)?;
        moved.fetch_add(got as u64, Ordering::AcqRel);
        n -= got as u64;
    }
    Ok(())
}

/// Everything from `from` to `to` until `from` ends, counted in `moved`.
async fn splice_to_end(
    from: &UnixStream,
    pipe: &Pipe,
    to: &UnixStream,
    moved: &AtomicU64,
) -> io::Result<()> {
    loop {
        let got = pipe.fill(from, PIPE_BYTES).await?;
        if got == 0 {
            return Ok(());
        }
        pipe.drain(to, got).await?;
        moved.fetch_add(got as u64, Ordering::AcqRel);
    }
}

async fn peek(stream: &UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    std::future::poll_fn(|cx| stream.poll_peek(cx, buf)).await
}

async fn read_exact(stream: &UnixStream, buf: &mut [u8]) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        stream.readable().await?;
        match stream.try_read(&mut buf[got..]) {
            Ok(0) => return Err(ended()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn write_all(stream: &UnixStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The refusal as a Docker-style error, then the connection closed
/// ([`crate::http::answer_and_close`]).
async fn refuse(client: &mut UnixStream, refusal: Refusal) {
    let body = error_body(&format!("ds01-slices gate: {}", refusal.message));
    let reason = hyper::StatusCode::from_u16(refusal.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let answer = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        refusal.status,
        body.len()
    );
    crate::http::answer_and_close(client, answer.as_bytes(), crate::http::REFUSAL_TIME).await;
}
