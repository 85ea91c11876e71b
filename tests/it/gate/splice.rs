//! The gate's spliced archives (src/gate/bulk.rs) at the edges of their framing, natively and
//! against a stand-in daemon that records every byte it gets: what no real client sends (a
//! request pipelined behind an archive's body, a broken chunk) and what a real daemon does only
//! when it fails (answering before the body, being away). The docker CLI's own `cp` through the
//! gate, in front of a real dockerd, is in streams.rs.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::CONFIG;
use crate::support::cmd::{clear_tool_env, dying_with_test, Reaped};
use crate::support::{wait_until, Scratch, BIN};

/// What the stand-in daemon got on one connection.
#[derive(Debug, Clone, Default)]
struct Got {
    head: String,
    /// The body as framed (chunks decoded); None if the connection ended before its end.
    body: Option<Vec<u8>>,
    /// Bytes that came after the body.
    after: Vec<u8>,
}

/// A daemon on a Unix socket that reads each connection's request (head and body), answers
/// `{"got": LEN}` (at once, before the body, for a container named `early`) and closes.
struct StandIn {
    socket: PathBuf,
    got: Arc<Mutex<Vec<Got>>>,
    stop: Arc<AtomicBool>,
}

impl StandIn {
    fn start(socket: &Path) -> StandIn {
        let listener = UnixListener::bind(socket).unwrap();
        listener.set_nonblocking(true).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (got2, stop2) = (Arc::clone(&got), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let got = Arc::clone(&got2);
                        std::thread::spawn(move || serve_one(conn, &got));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        StandIn {
            socket: socket.to_owned(),
            got,
            stop,
        }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

fn serve_one(mut conn: UnixStream, got: &Mutex<Vec<Got>>) {
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).to_lowercase();
    let rest = bytes.split_off(head_end);
    let answer = |conn: &mut UnixStream, len: usize| {
        let body = format!("{{\"got\": {len}}}");
        let close = if head.contains("connection: close") {
            "Connection: close\r\n"
        } else {
            ""
        };
        let _ = conn.write_all(
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{close}\r\n{body}", body.len()).as_bytes(),
        );
    };
    if head.contains("/containers/early/") {
        answer(&mut conn, 0);
        got.lock().unwrap().push(Got {
            head,
            body: None,
            after: rest,
        });
        return;
    }
    let mut reader = Reader {
        conn: &mut conn,
        pending: rest,
    };
    let body = if head.contains("transfer-encoding: chunked") {
        reader.chunked()
    } else {
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        reader.exact(len)
    };
    // Whatever else is there already, or comes within a moment.
    let mut after = std::mem::take(&mut reader.pending);
    if let Some(body) = &body {
        answer(&mut conn, body.len());
        conn.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        while let Ok(n @ 1..) = conn.read(&mut buf) {
            after.extend_from_slice(&buf[..n]);
        }
    }
    got.lock().unwrap().push(Got { head, body, after });
}

struct Reader<'a> {
    conn: &'a mut UnixStream,
    pending: Vec<u8>,
}

impl Reader<'_> {
    fn fill(&mut self, want: usize) -> Option<()> {
        let mut buf = [0u8; 65536];
        while self.pending.len() < want {
            match self.conn.read(&mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
            }
        }
        Some(())
    }

    fn exact(&mut self, n: usize) -> Option<Vec<u8>> {
        self.fill(n)?;
        let rest = self.pending.split_off(n);
        Some(std::mem::replace(&mut self.pending, rest))
    }

    fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.pending.windows(2).position(|w| w == b"\r\n") {
                let line = self.exact(i + 2)?;
                return Some(line[..i].to_vec());
            }
            let want = self.pending.len() + 1;
            self.fill(want)?;
        }
    }

    fn chunked(&mut self) -> Option<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.line()?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&line).ok()?.split(';').next()?, 16)
                    .ok()?;
            if size == 0 {
                self.line()?;
                return Some(body);
            }
            body.extend(self.exact(size)?);
            self.line()?;
        }
    }
}

/// A new connection to the gate; a read waits at most 30 s (a gate that never closes fails
/// the test, never hangs it).
fn connect(gate: &Path) -> UnixStream {
    let conn = UnixStream::connect(gate).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    conn
}

/// Sends `bytes` on a new connection to the gate, then reads until the gate closes it.
fn exchange(gate: &Path, bytes: &[u8]) -> String {
    let mut conn = connect(gate);
    conn.write_all(bytes).unwrap();
    read_to_close(&mut conn)
}

fn read_to_close(conn: &mut UnixStream) -> String {
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

const ARCHIVE: &str = "/v1.41/containers/abc/archive?path=%2Ftmp";

#[test]
fn spliced_archives_carry_nothing_behind_them_and_fail_with_an_answer() {
    let dir = Scratch::new("gate-splice");
    dir.write("config/resource-limits.yaml", CONFIG);
    let daemon = StandIn::start(&dir.join("daemon.sock"));
    let gate_socket = dir.join("gate.sock");
    let log = std::fs::File::create(dir.join("gate.log")).unwrap();
    let args: Vec<String> = [
        "gate",
        "--config",
        &dir.join("config/resource-limits.yaml").to_string_lossy(),
        "--state-dir",
        &dir.mkdir("state").to_string_lossy(),
        "--listen",
        &gate_socket.to_string_lossy(),
        "--socket-group",
        "root",
        "--docker",
        &daemon.socket.to_string_lossy(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut gate = dying_with_test(BIN, &args);
    clear_tool_env(&mut gate);
    let _gate = Reaped(
        gate.env("DS01_TRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_until(Duration::from_secs(10), "the gate's socket", || {
        UnixStream::connect(&gate_socket).ok()
    })
    .unwrap();

    // An archive's chunked body with a create pipelined behind it, all in one write.
    let smuggled = "POST /containers/create HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    let answer = exchange(
        &gate_socket,
        format!("PUT {ARCHIVE} HTTP/1.1\r\nHost: docker\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n{smuggled}").as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.ends_with("{\"got\": 11}"),
        "one answer, then the end: {answer}"
    );
    let got = daemon.got();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].head.starts_with("put /v1.41/containers/abc/archive"),
        "{got:?}"
    );
    assert!(got[0].head.contains("connection: close"), "{got:?}");
    assert_eq!(got[0].body.as_deref(), Some(&b"hello world"[..]), "{got:?}");
    assert!(got[0].after.is_empty(), "nothing behind the body: {got:?}");

    // On a kept-alive connection: a stat through hyper, then the copy out spliced.
    let mut conn = connect(&gate_socket);
    conn.write_all(format!("HEAD {ARCHIVE} HTTP/1.1\r\nHost: docker\r\n\r\n").as_bytes())
        .unwrap();
    let mut head = [0u8; 4096];
    let n = conn.read(&mut head).unwrap();
    let stat = String::from_utf8_lossy(&head[..n]).to_lowercase();
    assert!(
        stat.starts_with("http/1.1 200 ok") && !stat.contains("connection: close"),
        "{stat}"
    );
    conn.write_all(
        format!("GET {ARCHIVE} HTTP/1.1\r\nHost: docker\r\nConnection: keep-alive\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let copy = read_to_close(&mut conn);
    assert!(
        copy.starts_with("HTTP/1.1 200 OK\r\n") && copy.contains("Connection: close"),
        "{copy}"
    );
    let got = daemon.got();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got[1].head.starts_with("head ") && !got[1].head.contains("connection: close"),
        "{got:?}"
    );
    assert!(
        got[2].head.starts_with("get ") && got[2].head.contains("connection: close"),
        "{got:?}"
    );
    assert!(!got[2].head.contains("keep-alive"), "{got:?}");

    // A chunk size line that could be read two ways: the exchange ends with a 400, and the
    // daemon sees its connection end before the body does.
    let answer = exchange(
        &gate_socket,
        format!("PUT {ARCHIVE} HTTP/1.1\r\nHost: docker\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6 \r\n world\r\n0\r\n\r\n").as_bytes(),
    );
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("ds01-slices gate: the request's body: a chunk's size line"),
        "{answer}"
    );
    let got = wait_until(Duration::from_secs(10), "the daemon to see the end", || {
        let got = daemon.got();
        (got.len() == 4).then_some(got)
    })
    .unwrap();
    assert_eq!(got[3].body, None, "{got:?}");

    // A daemon that answers before reading the body: its answer reaches the client.
    let mut conn = connect(&gate_socket);
    conn.write_all(b"PUT /containers/early/archive HTTP/1.1\r\nHost: docker\r\nContent-Length: 67108864\r\n\r\n").unwrap();
    let mut writer = conn.try_clone().unwrap();
    let feeding = std::thread::spawn(move || {
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..64 {
            if writer.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let answer = read_to_close(&mut conn);
    assert!(
        answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("{\"got\": 0}"),
        "{answer}"
    );
    drop(conn);
    feeding.join().unwrap();

    // No daemon: a Docker-style error naming its socket.
    std::fs::remove_file(&daemon.socket).unwrap();
    let answer = exchange(
        &gate_socket,
        format!("GET {ARCHIVE} HTTP/1.1\r\nHost: docker\r\n\r\n").as_bytes(),
    );
    assert!(
        answer.starts_with("HTTP/1.1 502 Bad Gateway\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("cannot reach the Docker daemon at"),
        "{answer}"
    );

    let log = std::fs::read_to_string(dir.join("gate.log")).unwrap();
    let spliced = log
        .lines()
        .filter(|l| l.contains("gate: archive spliced by uid"))
        .count();
    assert_eq!(
        spliced, 5,
        "every archive request spliced (and traced): {log}"
    );
}
