//! Fail closed: each way a limit could be lifted, bypassed or silently mis-held, tried against
//! the real systemd (issue "Fail safe"). Each test failed on the code before its fix.

mod bus;
mod limits;
mod wrapper;
pub(crate) mod wrapper_cli;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{user_names, World, EXAMPLE};

/// The example configuration with `n` more students, so that a run takes long enough to be
/// interrupted in the middle.
fn world_with_students(n: usize) -> Option<World> {
    let w = World::new(EXAMPLE)?;
    let mut members = w.read("groups/student.members");
    for name in user_names(n) {
        members.push_str(&name);
        members.push('\n');
    }
    w.write("groups/student.members", &members);
    Some(w)
}

/// A process stopped with SIGSTOP; continued when dropped, so that a failing test never
/// leaves it stopped.
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        signal("-STOP", pid);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal("-CONT", self.0);
    }
}

fn signal(which: &str, pid: u32) {
    let status = Command::new("kill")
        .arg(which)
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {which} {pid}");
}

/// `w`'s command started in the background, its output collected by [`finish`].
fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts")
}

/// Waits for `child` at most [`deadline`](crate::support::deadline)`(limit)`, reading its
/// output all along (a full pipe would stall it); kills it after that (and the test then
/// fails on it).
fn finish(child: Child, limit: Duration) -> (Output, Duration) {
    let limit = crate::support::deadline(limit);
    let started = Instant::now();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output().expect("output"));
    });
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out,
        Err(_) => {
            signal("-KILL", pid);
            rx.recv().expect("output after kill")
        }
    };
    (out, started.elapsed())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
