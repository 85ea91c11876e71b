//! Debian's Prometheus server and promtool, unpacked by `.ci/prometheus` (not installed), and
//! the one HTTP client the metrics tests need: a GET over a plain socket. Every process is
//! started under `setpriv --pdeathsig KILL`, so that it dies with the test that started it,
//! however that test ends.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::cmd::{dying_with_test, Reaped};
use super::scratch::Scratch;

/// Where `.ci/prometheus` unpacks the package (`DS01_PROMETHEUS_DIR` to use another).
pub const DEFAULT_DIR: &str = "/var/cache/ds01-slices-test-prometheus";

pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var("DS01_PROMETHEUS_DIR").unwrap_or_else(|_| DEFAULT_DIR.to_owned());
    PathBuf::from(dir).join("usr/bin").join(name)
}

/// Why the Prometheus tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    ["prometheus", "promtool"]
        .iter()
        .map(|b| bin(b))
        .find(|p| !p.is_file())
        .map(|p| format!("{} is missing (run .ci/prometheus)", p.display()))
}

/// Whether the Prometheus tests run here: not inside the VM (it has no Prometheus), and
/// elsewhere only with the binaries (else "SKIPPED", or a failure where skips are forbidden).
pub fn available_or_skip() -> bool {
    if super::vm::in_vm_guest() {
        return false;
    }
    match unavailable() {
        Some(reason) => super::skip("Prometheus (.ci/prometheus)", &reason),
        None => true,
    }
}

/// `promtool check metrics` on `text`: Ok(its output) when it finds nothing wrong.
pub fn promtool_check(text: &str) -> Result<String, String> {
    let mut child = Command::new(bin("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool: {e}"))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(text.as_bytes())
        .map_err(|e| format!("promtool stdin: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("promtool: {e}"))?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(said)
    } else {
        Err(format!("promtool check metrics ({}):\n{said}", out.status))
    }
}

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a loopback port")
}

/// GET `path` from `addr` (host:port): (status, body).
pub fn get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("read {addr}{path}: {e}"))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer from {addr}{path}: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

fn url_encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server scraping one target every second, its data in a scratch directory.
pub struct Prometheus {
    pub addr: String,
    _child: Reaped,
    _dir: Scratch,
}

impl Prometheus {
    pub fn start(target: &str) -> Result<Prometheus, String> {
        Prometheus::start_with(target, "ds01", &[])
    }

    /// Scraping `target` as job `job`, and evaluating the rule files `rules` every second.
    pub fn start_with(target: &str, job: &str, rules: &[&Path]) -> Result<Prometheus, String> {
        let dir = Scratch::new("prometheus");
        let rule_files: String = rules
            .iter()
            .map(|r| format!("  - '{}'\n", r.display()))
            .collect();
        dir.write(
            "prometheus.yml",
            &format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nrule_files:\n{rule_files}scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        );
        let addr = format!("127.0.0.1:{}", free_port());
        let args = vec![
            format!("--config.file={}", dir.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address={addr}"),
            "--log.level=warn".to_owned(),
        ];
        let child = dying_with_test(&bin("prometheus").display().to_string(), &args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("starting prometheus: {e}"))?;
        Ok(Prometheus {
            addr,
            _child: Reaped(child),
            _dir: dir,
        })
    }

    /// An instant query's `data.result` (None while the server does not answer yet).
    pub fn query(&self, q: &str) -> Option<serde_json::Value> {
        self.query_result(q).ok()
    }

    /// An instant query's `data.result`, or what Prometheus (or the connection) said instead.
    pub fn query_result(&self, q: &str) -> Result<serde_json::Value, String> {
        let (status, body) = get(
            &self.addr,
            &format!("/api/v1/query?query={}", url_encode(q)),
        )?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
        if status != 200 || v["status"] != "success" {
            return Err(format!("{status}: {body}"));
        }
        Ok(v["data"]["result"].clone())
    }

    /// The first sample's value of an instant query, once it has one.
    pub fn value(&self, q: &str) -> Option<String> {
        let result = self.query(q)?;
        result.get(0)?["value"][1].as_str().map(str::to_owned)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.join("log")).unwrap_or_default()
    }
}
