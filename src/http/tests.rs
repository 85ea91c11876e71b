//! The server against real loopback sockets, with limits small enough to reach in a test.
//! Waits are deadlines for what must happen; a timeout is checked not to fire early.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

use super::*;

/// Long enough for anything that must happen on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(20);

fn limits() -> Limits {
    Limits {
        max_connections: 64,
        descriptors_per_connection: 1,
        header_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        max_header_bytes: 16 << 10,
        max_target_bytes: 8 << 10,
        upgrades: false,
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn text(s: &'static str) -> Body {
    use http_body_util::BodyExt as _;
    Full::new(Bytes::from_static(s.as_bytes())).boxed()
}

/// `/big`: 8 MiB; `/hang`: never answered; `/drip`: five chunks 300 ms apart; `/upgrade`:
/// 101, then the connection echoes; anything else: "ok".
async fn answer(mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    use http_body_util::BodyExt as _;
    Ok(match req.uri().path() {
        "/big" => Response::new(Full::new(Bytes::from(vec![b'x'; 8 << 20])).boxed()),
        "/hang" => std::future::pending().await,
        "/drip" => {
            let chunks = futures_util::stream::unfold(0, |i| async move {
                if i == 5 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                Some((Ok(Frame::data(Bytes::from(format!("chunk{i}\n")))), i + 1))
            });
            Response::new(StreamBody::new(chunks).boxed())
        }
        "/upgrade" => {
            let busy = req.extensions_mut().remove::<Busy>();
            let upgrading = hyper::upgrade::on(req);
            tokio::spawn(async move {
                let _busy = busy;
                if let Ok(up) = upgrading.await {
                    let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            let mut a = Response::new(text(""));
            *a.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            a.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            a.headers_mut().insert("upgrade", "tcp".parse().unwrap());
            a
        }
        _ => Response::new(text("ok")),
    })
}

struct Running {
    addr: SocketAddr,
    events: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<io::Result<Infallible>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(limits: Limits) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    start_on(listener, addr, limits)
}

fn start_on<L: Listener>(listener: L, addr: SocketAddr, limits: Limits) -> Running {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&events);
    let task = tokio::spawn(Server::new(limits).serve(
        listener,
        |_, _| Some(service_fn(answer)),
        None,
        move |e| seen.lock().unwrap().push(e.to_string()),
    ));
    Running { addr, events, task }
}

/// One request on a fresh connection: the whole raw answer.
async fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let answer = ask(&mut s, path, true).await;
    answer
}

/// One request on `s`: the answer's head and body as text (`close`: read to the end).
async fn ask(s: &mut TcpStream, path: &str, close: bool) -> String {
    let connection = if close { "close" } else { "keep-alive" };
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: {connection}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    if close {
        timeout(DEADLINE, s.read_to_end(&mut raw))
            .await
            .unwrap()
            .unwrap();
    } else {
        // Small answers only: read until the body ("ok") is there.
        let mut buf = [0u8; 4096];
        while !raw.ends_with(b"\r\n\r\nok") {
            let n = timeout(DEADLINE, s.read(&mut buf)).await.unwrap().unwrap();
            assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&raw));
            raw.extend_from_slice(&buf[..n]);
        }
    }
    String::from_utf8_lossy(&raw).into_owned()
}

/// Whether the server closed `s`: waits up to DEADLINE for EOF or a reset.
async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64 << 10];
    loop {
        match timeout(DEADLINE, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Whether `s` is still open now (no EOF or reset waiting to be read).
async fn still_open(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    // Nothing to read within 50 ms: neither EOF nor a reset is waiting.
    timeout(Duration::from_millis(50), s.read(&mut buf))
        .await
        .is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_holds_only_its_own_connection() {
    let server = start(limits()).await;
    let mut greedy = TcpStream::connect(server.addr).await.unwrap();
    let many = "GET /big HTTP/1.1\r\nHost: t\r\n\r\n".repeat(50);
    greedy.write_all(many.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let answer = timeout(DEADLINE, get(server.addr, "/")).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_cap_the_connection_idle_longest_makes_room() {
    let server = start(Limits {
        max_connections: 2,
        ..limits()
    })
    .await;
    let mut first = TcpStream::connect(server.addr).await.unwrap();
    assert!(ask(&mut first, "/", false)
        .await
        .starts_with("HTTP/1.1 200 "));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    assert!(ask(&mut second, "/", false)
        .await
        .starts_with("HTTP/1.1 200 "));

    let third = get(server.addr, "/").await;
    assert!(third.starts_with("HTTP/1.1 200 "), "{third}");
    assert!(closed(&mut first).await, "the idlest was not closed");
    assert!(still_open(&mut second).await, "the other one was closed");
    assert!(server.events.lock().unwrap()[0].starts_with("closed the connection idle longest"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_cap_with_every_connection_answering_a_newcomer_gets_503() {
    let server = start(Limits {
        max_connections: 2,
        ..limits()
    })
    .await;
    // A newcomer before both requests are being answered closes one of them as idle: then
    // it is opened again.
    let (answer, mut hanging) = timeout(DEADLINE, async {
        let mut hanging: Vec<TcpStream> = Vec::new();
        loop {
            let mut open = Vec::new();
            for mut s in hanging.drain(..) {
                if still_open(&mut s).await {
                    open.push(s);
                }
            }
            hanging = open;
            while hanging.len() < 2 {
                let mut s = TcpStream::connect(server.addr).await.unwrap();
                s.write_all(b"GET /hang HTTP/1.1\r\nHost: t\r\n\r\n")
                    .await
                    .unwrap();
                hanging.push(s);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            let a = get(server.addr, "/").await;
            if a.starts_with("HTTP/1.1 503 ") {
                return (a, hanging);
            }
        }
    })
    .await
    .unwrap();
    assert!(answer.contains("busy: 2 connections open"), "{answer}");
    for s in &mut hanging {
        assert!(still_open(s).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_too_long_is_431_and_a_target_too_long_414() {
    let server = start(limits()).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let big = "a".repeat(64 << 10);
    // The server answers and closes as soon as it has read its limit; the rest may not go.
    let _ = s
        .write_all(format!("GET / HTTP/1.1\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await;
    let mut raw = Vec::new();
    let _ = timeout(DEADLINE, s.read_to_end(&mut raw)).await.unwrap();
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.1 431 "), "{raw}");

    let long = format!("/{}", "a".repeat(10 << 10));
    let answer = get(server.addr, &long).await;
    assert!(answer.starts_with("HTTP/1.1 414 "), "{answer}");
    assert!(
        answer.contains("request target of 10241 bytes; at most 8192"),
        "{answer}"
    );
    let answer = get(server.addr, &format!("/{}", "a".repeat(8000))).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_not_sent_in_time_or_a_keep_alive_left_idle_is_closed() {
    let server = start(Limits {
        header_timeout: Duration::from_millis(300),
        ..limits()
    })
    .await;
    let started = Instant::now();
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    let mut kept = TcpStream::connect(server.addr).await.unwrap();
    assert!(ask(&mut kept, "/", false)
        .await
        .starts_with("HTTP/1.1 200 "));
    assert!(closed(&mut slow).await);
    assert!(closed(&mut kept).await);
    // Both timers started after `started`; a timer never fires early.
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_answer_is_closed_when_idle() {
    let server = start(Limits {
        idle_timeout: Duration::from_millis(300),
        ..limits()
    })
    .await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    // Ten times the timeout for the server to notice that nothing moves.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut raw = Vec::new();
    let _ = timeout(DEADLINE, s.read_to_end(&mut raw)).await.unwrap();
    assert!(raw.len() < 8 << 20, "the whole answer came: not closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_being_answered_is_never_timed_out() {
    let server = start(Limits {
        header_timeout: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(100),
        ..limits()
    })
    .await;
    let answer = get(server.addr, "/drip").await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("chunk4\n"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_is_the_services_and_stays_counted() {
    let server = start(Limits {
        max_connections: 1,
        idle_timeout: Duration::from_millis(100),
        header_timeout: Duration::from_millis(100),
        upgrades: true,
        ..limits()
    })
    .await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(
        b"POST /upgrade HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        timeout(DEADLINE, s.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101 "),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // Past both timeouts, the upgraded stream still echoes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    timeout(DEADLINE, s.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"ping");
    // It holds the only slot, busy: a newcomer is refused.
    let answer = get(server.addr, "/").await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
}

/// A listener whose accept fails with `errno` while `errors` is above zero, counting it down.
struct Failing {
    inner: TcpListener,
    errno: i32,
    errors: Arc<Mutex<usize>>,
}

impl Failing {
    async fn new(errno: i32, errors: usize) -> (Failing, SocketAddr, Arc<Mutex<usize>>) {
        let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = inner.local_addr().unwrap();
        let errors = Arc::new(Mutex::new(errors));
        let failing = Failing {
            inner,
            errno,
            errors: Arc::clone(&errors),
        };
        (failing, addr, errors)
    }
}

impl Listener for Failing {
    type Io = TcpStream;
    type Addr = SocketAddr;
    async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        {
            let mut errors = self.errors.lock().unwrap();
            if *errors > 0 {
                *errors -= 1;
                return Err(io::Error::from_raw_os_error(self.errno));
            }
        }
        self.inner.accept().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_errors_are_waited_out_with_growing_pauses() {
    let (listener, addr, _) = Failing::new(libc::ECONNABORTED, 4).await;
    let server = start_on(listener, addr, limits());
    let answer = get(server.addr, "/").await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let events = server.events.lock().unwrap().clone();
    let pauses: Vec<_> = events
        .iter()
        .map(|e| e.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(pauses, ["10ms", "20ms", "40ms", "80ms"], "{events:?}");
    assert!(events[0].starts_with("cannot accept a connection (Software caused connection abort"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_idlest_connection_gives_one_back() {
    let (listener, addr, errors) = Failing::new(libc::EMFILE, 0).await;
    let server = start_on(listener, addr, limits());
    let mut idle = TcpStream::connect(addr).await.unwrap();
    assert!(ask(&mut idle, "/", false)
        .await
        .starts_with("HTTP/1.1 200 "));
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The loop is waiting in an accept that will succeed; the one after it fails.
    *errors.lock().unwrap() = 1;
    let mut newer = TcpStream::connect(addr).await.unwrap();
    assert!(closed(&mut idle).await, "the idle connection was kept");
    assert!(ask(&mut newer, "/", false)
        .await
        .starts_with("HTTP/1.1 200 "));
    let events = server.events.lock().unwrap().clone();
    assert_eq!(
        events,
        ["cannot accept a connection (Too many open files (os error 24)); closed the connection idle longest to free a descriptor"]
    );
}

#[tokio::test]
async fn a_listener_that_is_gone_ends_the_loop() {
    let (listener, _, _) = Failing::new(libc::EBADF, 1).await;
    let result = timeout(
        DEADLINE,
        Server::new(limits()).serve(listener, |_, _| Some(service_fn(answer)), None, |_| {}),
    )
    .await
    .unwrap();
    assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::EBADF));
}

#[test]
fn the_cap_fits_in_the_descriptor_limit() {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    let huge = Server::new(Limits {
        max_connections: usize::MAX,
        descriptors_per_connection: 2,
        ..limits()
    });
    assert!(huge.max_connections() as u64 <= soft.saturating_sub(RESERVED_DESCRIPTORS) / 2);
    assert!(huge.max_connections() >= 1);
    assert_eq!(
        Server::new(limits()).max_connections(),
        64.min(huge.max_connections() * 2)
    );
}
