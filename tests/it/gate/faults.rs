//! The gate under faults: killed while a `logs -f` stream is open (the daemon and the
//! container run on, the next request after the restart works); dockerd stopped (each request
//! gets an error, the gate keeps serving, and serves again once dockerd is back); systemd
//! stopped (creates refused, never placed outside the slice); 50 creates at once by 5 users
//! (each in its own slice, none lost).

use std::process::Command;
use std::time::Duration;

use super::{
    all_containers, as_user, sh, sh_ok, slice_of, Containers, Gate, ALICE, BAKER, BOB, CAROL, DAVE,
    IMAGE,
};
use crate::docker::docker;
use crate::support::{sandbox_or_skip, wait_until, Run};

#[test]
fn a_killed_gate_breaks_its_streams_never_the_daemon_and_a_stopped_daemon_is_an_error() {
    let Some(_docker) = docker() else { return };
    let gate = Gate::start(&[]);
    let mut made = Containers::default();
    let ticker = as_user(
        ALICE,
        &format!(
            "docker run -d --network none {IMAGE} sh -c 'while :; do echo tick; sleep 1; done'"
        ),
    );
    assert_eq!(ticker.code, Some(0), "{ticker}");
    let id = ticker.stdout.trim().to_owned();
    made.0.push(id.clone());
    // A stream open through the gate.
    let follower = Command::new("runuser")
        .args(["-u", ALICE, "--", "env", "HOME=/tmp"])
        .arg(format!("DOCKER_HOST=unix://{}", super::GATE_SOCKET))
        .args([
            "sh",
            "-c",
            &format!("exec docker logs -f {id} >/tmp/gate-follow.txt 2>&1"),
        ])
        .spawn()
        .expect("docker logs -f");
    let mut follower = crate::support::Reaped(follower);
    wait_until(Duration::from_secs(30), "lines through the stream", || {
        let text = std::fs::read_to_string("/tmp/gate-follow.txt").ok()?;
        (text.lines().count() >= 3).then_some(())
    })
    .unwrap();
    sh_ok(&format!("systemctl kill --signal=KILL {}", gate.unit));
    // The stream ends with the gate; the daemon and the container do not.
    let ended = wait_until(Duration::from_secs(30), "the stream's end", || {
        follower.0.try_wait().ok().flatten()
    })
    .unwrap();
    eprintln!("docker logs -f when the gate was killed: {ended}");
    assert_eq!(
        sh_ok(&format!("docker inspect -f '{{{{.State.Running}}}}' {id}")).trim(),
        "true"
    );
    gate.run(&[]);
    let after = as_user(ALICE, &format!("docker logs --tail 1 {id}"));
    assert_eq!(
        after.code,
        Some(0),
        "the first request after the restart: {after}"
    );
    assert_eq!(after.stdout.trim(), "tick");
    let _ = std::fs::remove_file("/tmp/gate-follow.txt");

    // dockerd stopped: every request gets the gate's error, and the gate keeps serving.
    let pid = gate.pid();
    sh_ok("systemctl stop docker.socket docker.service");
    let stopped = as_user(ALICE, "docker ps");
    let created = as_user(
        ALICE,
        &format!("docker run --rm --network none {IMAGE} true"),
    );
    sh_ok("systemctl start docker.socket docker.service");
    wait_until(Duration::from_secs(120), "dockerd answers again", || {
        sh("docker info >/dev/null 2>&1").ok()
    })
    .unwrap();
    for out in [&stopped, &created] {
        assert_ne!(out.code, Some(0), "{out}");
        assert!(
            out.stderr
                .contains("ds01-slices gate: cannot reach the Docker daemon at /run/docker.sock"),
            "{out}"
        );
    }
    assert_eq!(gate.pid(), pid, "the gate restarted:\n{}", gate.journal());
    let back = as_user(ALICE, "docker ps -q");
    assert_eq!(back.code, Some(0), "{back}");
}

#[test]
fn with_systemd_stopped_creates_are_refused_never_placed_elsewhere() {
    let Some(_docker) = docker() else { return };
    let Some(sandbox) = sandbox_or_skip() else {
        return;
    };
    let bus = sandbox.bus_address();
    let gate = Gate::start(&["--bus", &bus, "--timeout", "3"]);
    let before = all_containers();
    // A first create through the sandbox's systemd works: the hook wrote the limits there.
    let out = as_user(ALICE, &format!("docker create --network none {IMAGE} true"));
    assert_eq!(out.code, Some(0), "{out}\n{}", gate.journal());
    let mut made = Containers(vec![out.stdout.trim().to_owned()]);
    let shown = sandbox.systemctl(&["show", "--property=MemoryMax", "--value", &slice_of(ALICE)]);
    assert_eq!(String::from_utf8_lossy(&shown.stdout).trim(), "536870912");
    let before_stop = all_containers();
    // systemd stopped (SIGSTOP): calls time out, the container is refused. A new user's
    // slice must be written, so the gate has to ask systemd.
    sh_ok(&format!("kill -STOP {}", sandbox.pid()));
    let hung = as_user(BOB, &format!("docker create --network none {IMAGE} true"));
    sh_ok(&format!("kill -CONT {}", sandbox.pid()));
    assert_ne!(hung.code, Some(0), "{hung}");
    assert!(
        hung.stderr
            .contains("the container of gate-bob was not created")
            && hung.stderr.contains("no answer from systemd"),
        "{hung}\n{}",
        gate.journal()
    );
    assert_eq!(all_containers(), before_stop, "{hung}");
    // systemd gone.
    let pid = sandbox.pid();
    drop(sandbox);
    let gone = as_user(CAROL, &format!("docker create --network none {IMAGE} true"));
    assert_ne!(gone.code, Some(0), "{gone}");
    assert!(
        gone.stderr.contains("was not created"),
        "{gone}\n{}",
        gate.journal()
    );
    assert_eq!(all_containers(), before_stop, "{gone}");
    eprintln!("systemd {pid} stopped: {}", hung.stderr.trim());
    eprintln!("systemd gone: {}", gone.stderr.trim());
    sh_ok(&format!("docker rm -f {} >/dev/null", made.0.join(" ")));
    made.0.clear();
    assert_eq!(all_containers(), before);
}

/// Ten creates at once on ten connections of the gate's socket: ids to `ids`, errors to
/// `errors`, in the user's home.
const FIFTY: &str = r#"
import http.client, json, socket, threading
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect("/run/ds01-gate-test/docker.sock")
body = json.dumps({"Image": "local/busybox", "Cmd": ["true"], "Labels": {"gate-test": "fifty"}, "HostConfig": {"NetworkMode": "none"}})
ids, errors, go = [], [], threading.Barrier(10)
def create():
    c = C("docker")
    go.wait()
    try:
        c.request("POST", "/v1.41/containers/create", body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse(); data = r.read().decode()
        if r.status == 201:
            ids.append(json.loads(data)["Id"])
        else:
            errors.append("%d %s" % (r.status, data))
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=create) for _ in range(10)]
for t in threads: t.start()
for t in threads: t.join()
open("ids", "w").write("".join(i + "\n" for i in ids))
open("errors", "w").write("".join(e + "\n" for e in errors))
"#;

#[test]
fn fifty_creates_at_once_by_five_users_land_each_in_its_slice() {
    let Some(_docker) = docker() else { return };
    let gate = Gate::start(&[]);
    let before = all_containers();
    let users = [ALICE, BOB, BAKER, CAROL, DAVE];
    // 10 creates per user, all 50 at once: one python3 process per user, a thread (and a
    // connection) per create.
    let mut clients = Vec::new();
    for user in users {
        let home = format!("/home/{}", super::home_dir_name(user));
        std::fs::write(format!("{home}/fifty.py"), FIFTY).unwrap();
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", user, "--", "python3"])
            .arg(format!("{home}/fifty.py"))
            .current_dir(&home);
        clients.push(std::thread::spawn(move || Run::of(&mut cmd)));
    }
    for c in clients {
        let run = c.join().unwrap();
        assert_eq!(run.code, Some(0), "{run}");
    }
    let made = Containers(
        sh_ok("docker ps -aq --no-trunc --filter label=gate-test=fifty")
            .lines()
            .map(str::to_owned)
            .collect(),
    );
    let errors: String = users
        .iter()
        .map(|u| sh(&format!("cat /home/{}/errors", super::home_dir_name(u))).unwrap_or_default())
        .collect();
    assert_eq!(
        made.0.len(),
        50,
        "creates lost: {errors}\n{}",
        gate.journal()
    );
    // One inspect of all 50: id, cgroup parent, ds01.user.
    let placed = sh_ok(&format!(
        "docker inspect -f '{{{{.Id}}}} {{{{.HostConfig.CgroupParent}}}} {{{{index .Config.Labels \"ds01.user\"}}}}' {}",
        made.0.join(" ")
    ));
    for user in users {
        let ids = sh_ok(&format!("cat /home/{}/ids", super::home_dir_name(user)));
        assert_eq!(ids.lines().count(), 10, "{user}: {ids}");
        for id in ids.lines() {
            let want = format!("{id} {} {user}", slice_of(user));
            assert!(
                placed.lines().any(|l| l == want),
                "{want} not in:\n{placed}"
            );
        }
    }
    let journal = gate.journal();
    assert_eq!(journal.matches(": placed").count(), 50, "{journal}");
    drop(made);
    assert_eq!(all_containers(), before);
}
