//! Docker's Engine API, asked for the names and labels of given containers: one
//! `GET /containers/json` over the daemon's Unix socket, bounded in time and size. Only facts
//! the caller may do without: anything that goes wrong is an `Err` to note, never a stop.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;

/// The daemon's socket when `DOCKER_HOST` does not name one.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// How long the answer may take: the metrics and status must not wait on a stuck daemon.
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// At most this much of an answer is read.
const MAX_BYTES: usize = 8 << 20;
/// The label the Docker API gate puts on every container it creates.
pub const OWNER_LABEL: &str = "ds01.user";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// The full id.
    pub id: String,
    /// Its name, without the leading `/`.
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// The socket `DOCKER_HOST` names (`unix://PATH`), or the default one. Another transport
/// (tcp, ssh) is not this machine's daemon as the cgroup tree shows it: Err.
pub fn socket() -> Result<PathBuf, String> {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => host
            .strip_prefix("unix://")
            .map(PathBuf::from)
            .ok_or_else(|| format!("DOCKER_HOST={host} is not a unix:// socket")),
        _ => Ok(PathBuf::from(DEFAULT_SOCKET)),
    }
}

/// The containers among `ids` that the daemon knows (running or not), within `timeout`.
pub async fn containers(ids: &[&str], timeout: Duration) -> Result<Vec<ContainerInfo>, String> {
    let socket = socket()?;
    let filters = serde_json::json!({ "id": ids }).to_string();
    let path = format!(
        "/containers/json?all=1&filters={}",
        percent_encode(&filters)
    );
    let ask = get(&socket, &path);
    let body = match tokio::time::timeout(timeout, ask).await {
        Ok(answer) => answer?,
        Err(_) => {
            return Err(format!(
                "Docker at {} did not answer within {} s",
                socket.display(),
                timeout.as_secs()
            ))
        }
    };
    parse(&body)
}

/// GET `path` from the daemon at `socket`: the body of a 200 answer.
async fn get(socket: &std::path::Path, path: &str) -> Result<Bytes, String> {
    let at = || socket.display().to_string();
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("cannot connect to Docker at {}: {e}", at()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("Docker at {}: {e}", at()))?;
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, "docker")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("a request to Docker: {e}"))?;
    let exchange = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("Docker at {}: {e}", at()))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BYTES)
            .collect()
            .await
            .map_err(|e| format!("Docker's answer from {}: {e}", at()))?
            .to_bytes();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            return Err(format!(
                "Docker at {} answered {status}: {}",
                at(),
                text.trim()
            ));
        }
        Ok(body)
    };
    let mut exchange = std::pin::pin!(exchange);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        biased;
        answer = &mut exchange => answer,
        // The connection ended: what it delivered is in the body, or the body fails.
        _ = &mut connection => exchange.await,
    }
}

fn parse(body: &[u8]) -> Result<Vec<ContainerInfo>, String> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("Docker's list of containers is not JSON: {e}"))?;
    let list = value
        .as_array()
        .ok_or("Docker's list of containers is not a JSON array")?;
    Ok(list
        .iter()
        .filter_map(|c| {
            let id = c.get("Id")?.as_str()?.to_owned();
            let name = c
                .get("Names")
                .and_then(|n| n.get(0))
                .and_then(|n| n.as_str())
                .map(|n| n.trim_start_matches('/').to_owned());
            let labels = c
                .get("Labels")
                .and_then(|l| l.as_object())
                .map(|l| {
                    l.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default();
            Some(ContainerInfo { id, name, labels })
        })
        .collect())
}

/// Everything but RFC 3986's unreserved characters as `%XX`.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_and_labels_of_the_list() {
        let body = br#"[{"Id":"abc","Names":["/web"],"Labels":{"ds01.user":"alice","n":1}},
            {"Id":"def","Names":null,"Labels":null},{"Names":["/no-id"]}]"#;
        let list = parse(body).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name.as_deref(), Some("web"));
        assert_eq!(
            list[0].labels.get(OWNER_LABEL).map(String::as_str),
            Some("alice")
        );
        assert_eq!(list[0].labels.len(), 1);
        assert_eq!(list[1].name, None);
        assert!(parse(b"{}").is_err());
        assert_eq!(
            percent_encode(r#"{"id":["a"]}"#),
            "%7B%22id%22%3A%5B%22a%22%5D%7D"
        );
    }
}
