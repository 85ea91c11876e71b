//! Shared by the integration tests: a real, sandboxed systemd to run the product against, and
//! readers for what the kernel then enforces.

// Each test module uses its own part of the harness; what one of them leaves unused is not dead.
#![allow(dead_code)]

pub mod cgroup;
pub mod sandbox;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

pub use cgroup::Limit;
pub use sandbox::{
    ok_stdout, sandbox_available_or_skip, sandbox_or_skip, two_sandboxes_or_skip, Sandbox,
};

/// `n` generated user names for scale runs: every third an LDAP-style address (sanitized to
/// its local part), the others `user00000`-style.
pub fn user_names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            if i % 3 == 0 {
                format!("first{i}.last@uni.example")
            } else {
                format!("user{i:05}")
            }
        })
        .collect()
}

/// Polls `probe` (every 20 ms) until it returns Some, or fails after `timeout`.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let started = Instant::now();
    loop {
        if let Some(v) = probe() {
            return Ok(v);
        }
        if started.elapsed() > timeout {
            return Err(format!("{what}: not within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// PIDs of the machine's processes that are in a cgroup with a path component `name` in any
/// hierarchy (zombies included, as /proc lists them until they are reaped).
pub fn processes_in_cgroup_named(name: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("cgroup")).is_ok_and(
                |cgroups| {
                    cgroups
                        .lines()
                        .filter_map(|l| l.splitn(3, ':').nth(2))
                        .any(|path| path.split('/').any(|c| c == name))
                },
            )
        })
        .collect()
}
