//! A watch over a VM's boot for one failure of the emulated machine rather than of the guest's
//! software: under QEMU's TCG, with this machine's cores shared by several VMs, a guest vCPU's
//! timer can stop waking it. The kernel then reports "rcu_preempt kthread timer wakeup didn't
//! happen" every minute and the boot makes no progress (CI, the package test's reboot: stalled
//! at 64 s of uptime, before the RCU grace periods of early boot were done; not back after six
//! minutes). Such a boot is restarted with a hard reset over QEMU's monitor (QMP), at most
//! [`MAX_RESETS`] times per boot, and each reset is printed with the test's output. Any other
//! boot failure still fails the test.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::qmp;

/// The line of the guest kernel's RCU stall report that names a timer which never fired.
const STALLED_TIMER: &str = "timer wakeup didn't happen";
/// A stall after this many resets of the same boot is a failure, not bad luck.
const MAX_RESETS: usize = 2;

pub struct BootWatch {
    console: PathBuf,
    monitor: PathBuf,
    /// How much of the console the last reset (or the start of the watch) left behind.
    seen: usize,
    resets: usize,
}

impl BootWatch {
    /// Watches the boot of the VM in `workdir` from now on: what its console already holds is
    /// an earlier boot's.
    pub fn new(workdir: &Path) -> BootWatch {
        let console = workdir.join("console.log");
        let seen = fs::metadata(&console).map_or(0, |m| m.len() as usize);
        BootWatch {
            console,
            monitor: qmp::socket(workdir),
            seen,
            resets: 0,
        }
    }

    /// How long the boot may take: `first`, and as long again for each reset.
    pub fn deadline(&self, first: Duration) -> Duration {
        first * (1 + self.resets as u32)
    }

    /// Resets the guest if its kernel reported a stalled timer since the last look; Err when it
    /// did so again after [`MAX_RESETS`] resets, or the reset failed.
    pub fn check(&mut self) -> Result<(), String> {
        let console = fs::read(&self.console).unwrap_or_default();
        let new = String::from_utf8_lossy(console.get(self.seen..).unwrap_or_default());
        let Some(at) = new.find(STALLED_TIMER) else {
            return Ok(());
        };
        let start = new[..at].rfind('\n').map_or(0, |i| i + 1);
        let line = new[start..]
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        if self.resets >= MAX_RESETS {
            return Err(format!(
                "the guest's boot stalled again after {MAX_RESETS} resets: {line}"
            ));
        }
        // The machine restarts from its firmware, as at power-on; the disk keeps what the
        // guest wrote.
        qmp::execute(&self.monitor, r#"{"execute":"system_reset"}"#)?;
        self.resets += 1;
        self.seen = console.len();
        println!(
            "VM: the guest kernel reported a stalled timer during the boot ({line}): reset over QMP ({} of at most {MAX_RESETS})",
            self.resets
        );
        Ok(())
    }
}
