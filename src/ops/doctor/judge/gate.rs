//! Whether containers can bypass the Docker API gate: what answers on the users' socket, and
//! who may open the daemon's own.

use serde::Serialize;

use super::{Check, Finding, Status};

/// What answered `GET /_ping` on the users' socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "front", rename_all = "snake_case")]
pub enum Front {
    /// The gate, forwarding to the daemon's socket at `daemon`.
    Gate { daemon: String },
    /// The daemon itself (no gate header).
    Daemon,
    /// Nothing, or not HTTP: why.
    Unreachable { reason: String },
}

/// Who can connect to a socket: write on the socket file, search on every directory above.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Access {
    pub path: String,
    /// Every user (others have write on it and search on its directories).
    pub everyone: bool,
    /// A group with write on it and search on its directories, with its members as NSS
    /// lists them (the primary members are not listed there).
    pub group: Option<(String, Vec<String>)>,
    /// Its owner, when not root.
    pub owner: Option<String>,
}

impl Access {
    fn root_only(&self) -> bool {
        !self.everyone && self.group.is_none() && self.owner.is_none()
    }

    fn who(&self) -> String {
        let mut who = Vec::new();
        if self.everyone {
            who.push("every user".to_owned());
        }
        if let Some((group, members)) = &self.group {
            let listed = if members.is_empty() {
                String::new()
            } else {
                format!(" ({})", members.join(", "))
            };
            who.push(format!("the members of group {group}{listed}"));
        }
        if let Some(owner) = &self.owner {
            who.push(format!("its owner {owner}"));
        }
        who.join(" and ")
    }
}

/// `users_socket`: where clients connect; `daemon`: who may open the daemon's own socket
/// (`None`: it is not there).
pub fn gate(users_socket: &str, front: &Front, daemon: Option<&Access>) -> Finding {
    let guide = "docs/gate.md (/usr/share/doc/ds01-slices/gate.md)";
    match (front, daemon) {
        (Front::Gate { daemon: path }, Some(access)) if access.root_only() => Finding::ok(
            Check::Gate,
            format!("the Docker API gate serves {users_socket}, in front of the daemon's socket {path}, which only root can open: every user's container goes through the gate"),
        ),
        (Front::Gate { daemon: path }, Some(access)) => Finding::bad(
            Check::Gate,
            Status::Fail,
            format!("the Docker API gate serves {users_socket}, but the daemon's own socket {path} can be opened by {}: their containers can bypass the gate and its slices", access.who()),
            format!("make the daemon's socket root's alone (the docker.socket drop-in of {guide}: SocketMode=0600, SocketGroup=root)"),
        ),
        (Front::Gate { daemon: path }, None) => Finding::bad(
            Check::Gate,
            Status::Fail,
            format!("the Docker API gate serves {users_socket}, but the daemon's socket {path} it forwards to is not there: every request fails"),
            format!("install the docker.socket drop-in and restart docker.socket and docker.service as {guide} says"),
        ),
        (Front::Daemon, _) => Finding::bad(
            Check::Gate,
            Status::Warning,
            format!("the Docker daemon itself serves {users_socket} (no gate in front): a container lands in its user's slice only when it is started through the hook (ds01-docker-run); docker compose, the SDKs, VS Code Dev Containers and /usr/bin/docker put it in the daemon's default parent, outside every user's limits"),
            format!("switch the gate on as {guide} says (it moves the daemon's socket: plan a maintenance window)"),
        ),
        (Front::Unreachable { reason }, _) => Finding::bad(
            Check::Gate,
            Status::Warning,
            format!("nothing answers on {users_socket} ({reason}): whether containers can bypass the gate cannot be told"),
            format!("start Docker (and the gate, if it is switched on: {guide}), then rerun `ds01-slices doctor`"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(everyone: bool, group: Option<&str>) -> Access {
        Access {
            path: "/run/ds01-slices/docker.sock".into(),
            everyone,
            group: group.map(|g| (g.to_owned(), vec!["alice".to_owned()])),
            owner: None,
        }
    }

    #[test]
    fn the_gate_in_front_of_a_root_only_socket_is_ok_and_anything_else_is_said() {
        let front = Front::Gate {
            daemon: "/run/ds01-slices/docker.sock".into(),
        };
        let ok = gate("/run/docker.sock", &front, Some(&access(false, None)));
        assert_eq!(ok.status, Status::Ok, "{ok:?}");
        let open = gate(
            "/run/docker.sock",
            &front,
            Some(&access(false, Some("docker"))),
        );
        assert_eq!(open.status, Status::Fail);
        assert!(
            open.found.contains("members of group docker (alice)"),
            "{open:?}"
        );
        let gone = gate("/run/docker.sock", &front, None);
        assert_eq!(gone.status, Status::Fail);
        let none = gate(
            "/run/docker.sock",
            &Front::Daemon,
            Some(&access(false, Some("docker"))),
        );
        assert_eq!(none.status, Status::Warning);
        assert!(none.found.contains("no gate in front"), "{none:?}");
        let down = gate(
            "/run/docker.sock",
            &Front::Unreachable {
                reason: "No such file or directory".into(),
            },
            None,
        );
        assert_eq!(down.status, Status::Warning);
    }
}
