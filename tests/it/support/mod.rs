//! Shared by the integration tests (and benches/scale.rs, which includes this module): the
//! binary with a clean environment, scratch directories, a real sandboxed systemd and the world
//! of one test on it, and readers for what the product reports and the kernel enforces.
//!
//! - [`cmd`]: the binary's path, the one clean command builder, what a run did.
//! - [`scratch`]: temporary directories removed on drop.
//! - [`sandbox`]: systemd 252 as PID 1 of private namespaces (boot.sh, supervisor.sh).
//! - [`world`]: a sandbox plus a configuration copy and a state directory.
//! - [`report`]: `verify`'s text and JSON.
//! - [`cgroup`]: what the kernel enforces, from cgroup control files.
//! - [`prometheus`], [`promql`]: Debian's Prometheus and promtool, and PromQL's selectors.
//! - [`vm`]: the cgroup v2 test host under QEMU; [`boot_watch`] resets a boot its emulated
//!   CPUs stalled, through QEMU's monitor ([`qmp`]).

// Each test module (and the benchmark) uses its own part of the harness; what one of them
// leaves unused, item or re-export, is not dead.
#![allow(dead_code, unused_imports)]

pub mod boot_watch;
pub mod cgroup;
pub mod cmd;
pub mod docker_api;
pub mod prometheus;
pub mod promql;
pub mod qmp;
pub mod report;
pub mod sandbox;
pub mod scratch;
pub mod ssh;
pub mod vm;
pub mod world;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use cgroup::{CgroupVersion, Limit};
pub use cmd::{
    clear_tool_env, ds01, dying_with_test, killed_after_saying, ok_stdout, Reaped, Run, BIN,
};
pub use report::{live_values, sources, verify_block, verify_entry, verify_slice};
pub use sandbox::{sandbox_available_or_skip, sandbox_or_skip, two_sandboxes_or_skip, Sandbox};
pub use scratch::{copy_dir, write_file, Scratch};
pub use world::{World, NO_LIMITS, STUDENT_LIMITS};

pub const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
/// The bundled example configuration directory.
pub const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
/// The production configuration (a byte-for-byte copy of the server's main file, with test
/// members and overrides).
pub const PRODUCTION: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/production");
/// The main file's name in a configuration directory.
pub const MAIN: &str = "resource-limits.yaml";

/// The main file of the configuration directory `dir` (e.g. [`EXAMPLE`]).
pub fn main_file(dir: &str) -> PathBuf {
    Path::new(dir).join(MAIN)
}

/// Whether a test that cannot run here must fail rather than skip: under CI=true or
/// DS01_REQUIRE_SYSTEMD=1 a test that skips silently tests nothing.
pub fn skips_forbidden() -> bool {
    let set = |var: &str, value: &str| {
        std::env::var(var).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value))
    };
    set("CI", "true") || set("DS01_REQUIRE_SYSTEMD", "1")
}

/// Skips the calling test: prints "SKIPPED: <reason>" and returns false, or panics where skips
/// are forbidden ([`skips_forbidden`]). `needs` says what the test needs, for that panic.
pub fn skip(needs: &str, reason: &str) -> bool {
    if skips_forbidden() {
        panic!("{needs} is required (CI=true or DS01_REQUIRE_SYSTEMD=1), but {reason}");
    }
    // Past libtest's capture (which takes only the print macros), so that a skip shows even
    // when the test passes.
    let _ = writeln!(io::stderr(), "SKIPPED: {reason}");
    false
}

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

/// How much longer than on this machine a wait may take inside the test VM: QEMU's TCG runs
/// code about ten times slower, and CI runs three VMs at once on two CPUs (there a 200 MB hog
/// took over 10 s to fill).
const VM_SLOWDOWN: u32 = 5;

/// A deadline for something that must happen, not a claim about speed: [`VM_SLOWDOWN`]
/// times longer inside the test VM.
pub fn deadline(on_this_machine: Duration) -> Duration {
    if vm::in_vm_guest() {
        on_this_machine * VM_SLOWDOWN
    } else {
        on_this_machine
    }
}

/// A deadline, taken on this machine, for work done inside the test VM: [`VM_SLOWDOWN`] times
/// longer, as [`deadline`] gives inside it.
pub fn guest_deadline(in_the_guest: Duration) -> Duration {
    in_the_guest * VM_SLOWDOWN
}

/// Polls `probe` (every 20 ms) until it returns Some, or fails after [`deadline`]`(timeout)`.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let timeout = deadline(timeout);
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
