//! `serve`: the metrics over HTTP at `/metrics`, for Prometheus to scrape. Requests are
//! answered one at a time, and an answer is reused for `--cache` seconds: two scrapers (or a
//! scraper and a curious admin) cost one reading of systemd, not two. The configuration is
//! read again for every fresh answer, so that a new user appears without a restart; one that
//! does not load makes the scrape fail (HTTP 500 with the reason) rather than report limits
//! of a configuration that is not there.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::args::Globals;
use super::exit::{CliError, CliResult};
use super::out;
use crate::config;
use crate::ops::metrics::CONTENT_TYPE;
use crate::systemd::BusSystemd;

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
        let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes());
        let mut response = tiny_http::Response::from_string(body).with_status_code(status);
        if let Ok(h) = header {
            response = response.with_header(h);
        }
        // A scraper that went away is its own problem, not the server's.
        let _ = request.respond(response);
    }
    Ok(crate::error::Exit::Ok)
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
