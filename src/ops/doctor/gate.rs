//! The facts of the gate check: what answers `GET /_ping` on the users' socket (the gate says
//! so in a header, with the daemon's socket it forwards to), and who can open the daemon's own
//! socket (write on the socket, search on each directory above it).

use std::io::{Read as _, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::judge::{Access, Front};
use crate::docker::{DAEMON_SOCKET, GATE_HEADER};

/// At most this much of the answer's head is read.
const MAX_HEAD: u64 = 64 << 10;

/// What answers on `socket`, within `timeout`.
pub fn front(socket: &Path, timeout: Duration) -> Front {
    let unreachable = |e: std::io::Error| Front::Unreachable {
        reason: e.to_string(),
    };
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => return unreachable(e),
    };
    let asked = stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .and_then(|()| stream.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n"));
    if let Err(e) = asked {
        return unreachable(e);
    }
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let mut limited = (&stream).take(MAX_HEAD);
    loop {
        match limited.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                head.extend_from_slice(&buf[..n]);
                if head.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(e) => return unreachable(e),
        }
    }
    let head = String::from_utf8_lossy(&head);
    if !head.starts_with("HTTP/") {
        return Front::Unreachable {
            reason: "the answer is not HTTP".into(),
        };
    }
    let gate = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case(GATE_HEADER)
            .then(|| value.trim().to_owned())
    });
    match gate {
        Some(daemon) => Front::Gate { daemon },
        None => Front::Daemon,
    }
}

/// Who can open the socket at `path`; `None` when it is not there.
pub fn access(path: &Path) -> Option<Access> {
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.mode();
    // Every directory above must let the same class search it.
    let dirs: Vec<std::fs::Metadata> = path
        .ancestors()
        .skip(1)
        .filter_map(|d| std::fs::metadata(d).ok())
        .collect();
    let others_search = dirs.iter().all(|d| d.mode() & 0o001 != 0);
    let group_search = |gid: u32| {
        dirs.iter()
            .all(|d| d.mode() & 0o001 != 0 || (d.gid() == gid && d.mode() & 0o010 != 0))
    };
    let everyone = mode & 0o002 != 0 && others_search;
    let group =
        (mode & 0o020 != 0 && group_search(meta.gid())).then(|| group_and_members(meta.gid()));
    let owner = (meta.uid() != 0 && mode & 0o200 != 0).then(|| {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(meta.uid()))
            .ok()
            .flatten()
            .map_or_else(|| format!("uid {}", meta.uid()), |u| u.name)
    });
    Some(Access {
        path: path.display().to_string(),
        everyone,
        group,
        owner,
    })
}

fn group_and_members(gid: u32) -> (String, Vec<String>) {
    match nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)) {
        Ok(Some(g)) => (g.name, g.mem),
        _ => (format!("gid {gid}"), Vec::new()),
    }
}

/// The daemon's socket the gate named, or where the shipped drop-in puts it.
pub fn daemon_socket(front: &Front) -> String {
    match front {
        Front::Gate { daemon } => daemon.clone(),
        _ => DAEMON_SOCKET.to_owned(),
    }
}
