//! `serve`: the metrics over HTTP at `/metrics`, for Prometheus to scrape. Requests are
//! answered one at a time, and an answer is reused for `--cache` seconds: two scrapers (or a
//! scraper and a curious admin) cost one reading of systemd, not two. The configuration is
//! read again for every fresh answer, so that a new user appears without a restart; one that
//! does not load makes the scrape fail (HTTP 500 with the reason) rather than report limits
//! of a configuration that is not there. Answers are written on threads of their own: any
//! local user can connect, and one who asks and never reads would otherwise stop every
//! scrape after theirs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::args::Globals;
use super::exit::{CliError, CliResult};
use super::out;
use crate::config;
use crate::ops::metrics::CONTENT_TYPE;
use crate::systemd::BusSystemd;

/// Answers being written at once. A writer whose client does not read waits until the
/// client goes away; past this many the server answers 503 rather than start more threads.
const MAX_WRITERS: usize = 16;

/// The last answer and when it was made.
struct Cached {
    at: Instant,
    answer: Result<String, String>,
}

pub fn serve(globals: &Globals, listen: &str, cache: Duration) -> CliResult {
    let server = tiny_http::Server::http(listen)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| {
            format!(
                "cannot listen on {listen}; is another program using it? (pass --listen ADDR:PORT)"
            )
        })
        .map_err(CliError::failure)?;
    out::say(&format!(
        "serving metrics on http://{}/metrics",
        server.server_addr()
    ));
    let rt = super::async_runtime()?;
    let mut bus: Option<BusSystemd> = None;
    let mut cached: Option<Cached> = None;
    let writers = Arc::new(AtomicUsize::new(0));
    for request in server.incoming_requests() {
        let (status, content_type, body) = match (request.method(), path(request.url())) {
            (tiny_http::Method::Get | tiny_http::Method::Head, "/metrics") => {
                // With --cache 0 no answer is ever fresh: nothing elapses in less than zero.
                let fresh = cached.as_ref().is_some_and(|c| c.at.elapsed() < cache);
                if !fresh {
                    let answer = rt.block_on(scrape(globals, &mut bus));
                    cached = Some(Cached {
                        at: Instant::now(),
                        answer,
                    });
                }
                match cached.as_ref().map(|c| &c.answer) {
                    Some(Ok(text)) => (200, CONTENT_TYPE, text.clone()),
                    Some(Err(e)) => (500, "text/plain; charset=utf-8", format!("{e}\n")),
                    None => (500, "text/plain; charset=utf-8", "no answer\n".to_owned()),
                }
            }
            (tiny_http::Method::Get | tiny_http::Method::Head, "/") => (
                200,
                "text/html; charset=utf-8",
                "<html><body><h1>ds01-slices</h1><p><a href=\"/metrics\">/metrics</a></p></body></html>\n"
                    .to_owned(),
            ),
            (tiny_http::Method::Get | tiny_http::Method::Head, _) => {
                (404, "text/plain; charset=utf-8", "not found: try /metrics\n".to_owned())
            }
            _ => (405, "text/plain; charset=utf-8", "only GET and HEAD\n".to_owned()),
        };
        if writers.load(Ordering::Acquire) >= MAX_WRITERS {
            // Small enough for the socket's buffer: written at once, whoever reads it.
            let _ = request.respond(response(
                503,
                "text/plain; charset=utf-8",
                "busy: too many answers not yet read; try again\n".to_owned(),
            ));
            continue;
        }
        let writing = Writing::start(&writers);
        let answer = response(status, content_type, body);
        let spawned = std::thread::Builder::new()
            .name("ds01-serve-write".into())
            .spawn(move || {
                let _writing = writing;
                // A scraper that went away is its own problem, not the server's.
                let _ = request.respond(answer);
            });
        if let Err(e) = spawned {
            // The request went with the closure; tiny_http answers a dropped one with 500.
            out::stderr(&format!(
                "serve: cannot start a thread to answer a scrape: {e}"
            ));
        }
    }
    Ok(crate::error::Exit::Ok)
}

fn response(
    status: u16,
    content_type: &str,
    body: String,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let mut response = tiny_http::Response::from_string(body).with_status_code(status);
    if let Ok(h) = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes()) {
        response = response.with_header(h);
    }
    response
}

/// One answer being written: counted in `writers` until dropped, however its thread ends.
struct Writing(Arc<AtomicUsize>);

impl Writing {
    fn start(writers: &Arc<AtomicUsize>) -> Writing {
        writers.fetch_add(1, Ordering::AcqRel);
        Writing(Arc::clone(writers))
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn path(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
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
