//! Child programs that start programs of their own (ssh and its ProxyCommand): each runs as
//! the leader of a process group of its own, so that it goes together with whatever it
//! started when it is given up on. A [`Group`] kills its group when dropped unless its leader
//! was seen to exit; [`kill_live`] kills every such group now, for a signal handler.
//!
//! A process group of its own is out of reach of a terminal's Ctrl-C (which goes to the
//! foreground group): whoever starts one handles SIGINT, SIGTERM and SIGHUP with
//! [`kill_live`] (the CLI does).

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

/// The groups whose leader has not been seen to exit, for [`kill_live`].
static LIVE: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

fn live() -> MutexGuard<'static, BTreeSet<u32>> {
    // A set of numbers: a panic elsewhere cannot leave it half-changed.
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The process group a child leads (it was spawned with `process_group(0)`), killed when
/// dropped: a run abandoned at its deadline, by an error or by a dropped future takes
/// everything its program started along. The caller must not have reaped the leader before
/// the group is killed (until then its number cannot name another group).
#[derive(Debug)]
pub struct Group {
    leader: u32,
    armed: bool,
}

impl Group {
    /// The group led by the child with process id `leader`.
    pub fn led_by(leader: u32) -> Group {
        live().insert(leader);
        Group {
            leader,
            armed: true,
        }
    }

    /// SIGKILL to every process in the group, now.
    pub fn kill(&mut self) {
        kill_group(self.leader);
        self.forget();
    }

    /// The leader exited by itself: what it left running in its group is left alone (OpenSSH's
    /// ControlPersist master, which serves later runs, may be there).
    pub fn leader_exited(mut self) {
        self.forget();
    }

    fn forget(&mut self) {
        self.armed = false;
        live().remove(&self.leader);
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.armed {
            self.kill();
        }
    }
}

/// SIGKILL to every group whose leader has not been seen to exit: what a signal that ends
/// this process does first.
pub fn kill_live() {
    for leader in std::mem::take(&mut *live()) {
        kill_group(leader);
    }
}

/// SIGKILL to the process group `leader` leads.
fn kill_group(leader: u32) {
    if let Some(pid) = i32::try_from(leader)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}
