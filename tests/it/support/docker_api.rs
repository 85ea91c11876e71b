//! The real docker CLI pointed (DOCKER_HOST) at a stand-in for the daemon's socket that
//! records what the CLI asks for and creates nothing: what `docker run` really sends the daemon
//! for a command line, without a daemon (this machine has the docker client only).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::Value;

/// Where .ci/docker-cli unpacks Debian's docker client on a machine that has none.
const UNPACKED: &str = "/var/cache/ds01-slices-test-docker-cli/usr/bin/docker";

/// The docker CLI: `docker` on PATH, else the one .ci/docker-cli unpacked.
pub fn docker_cli() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("docker"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| Some(PathBuf::from(UNPACKED)).filter(|p| p.is_file()))
}

/// One request the CLI sent: method, path, and the body as JSON (Null when none).
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Value,
}

/// A Unix socket that answers `/_ping` as a daemon of API 1.41 would and every other request
/// with a 500 (so `docker run` stops after its create, exit 125), recording them all. Stops
/// and removes its socket on drop.
pub struct DockerApiRecorder {
    socket: PathBuf,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DockerApiRecorder {
    pub fn start(socket: &Path) -> DockerApiRecorder {
        let listener = UnixListener::bind(socket)
            .unwrap_or_else(|e| panic!("binding {}: {e}", socket.display()));
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (log, stopped) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let log = log.clone();
                std::thread::spawn(move || serve(conn, &log));
            }
        });
        DockerApiRecorder {
            socket: socket.to_owned(),
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// `unix://<socket>`, for DOCKER_HOST.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Takes the requests recorded so far.
    pub fn take(&self) -> Vec<Request> {
        std::mem::take(&mut *self.requests.lock().unwrap())
    }

    /// The bodies of the `POST /containers/create` recorded so far, taking every request.
    pub fn creates(&self) -> Vec<Value> {
        self.take()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.contains("/containers/create"))
            .map(|r| r.body)
            .collect()
    }
}

impl Drop for DockerApiRecorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the stop (a socket already gone with its
        // directory cannot wake it: then the thread is left to end with the process).
        if UnixStream::connect(&self.socket).is_ok() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// HTTP/1.1 requests on one connection, until the client closes it.
fn serve(conn: UnixStream, log: &Mutex<Vec<Request>>) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut words = line.split_whitespace();
        let (method, path) = (
            words.next().unwrap_or_default().to_owned(),
            words.next().unwrap_or_default().to_owned(),
        );
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let answer = if path.ends_with("/_ping") {
            let body = if method == "HEAD" { "" } else { "OK" };
            format!(
                "HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nOstype: linux\r\nContent-Length: {}\r\n\r\n{body}",
                if method == "HEAD" { 2 } else { body.len() }
            )
        } else {
            let body = r#"{"message":"ds01-slices test: recorded, nothing created"}"#;
            format!(
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        log.lock().unwrap().push(Request {
            method,
            path,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        });
        if out.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}
