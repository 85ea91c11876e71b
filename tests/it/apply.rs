//! The D-Bus backend against a real systemd: apply, read-back, drift, stale cleanup, the
//! pre-create hook, errors, and what the kernel then enforces.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::support::{sandbox_or_skip, wait_until, Limit, Sandbox};

const BIN: &str = env!("CARGO_BIN_EXE_ds01-slices");
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config");

/// A sandboxed systemd plus a private copy of a configuration and a state directory, all
/// removed on drop.
struct World {
    sb: Sandbox,
    dir: PathBuf,
}

impl World {
    fn new(config_from: &Path) -> Option<World> {
        let sb = sandbox_or_skip()?;
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ds01-apply-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        copy_dir(config_from, &dir.join("config"));
        fs::create_dir_all(dir.join("state")).unwrap();
        Some(World { sb, dir })
    }

    fn config(&self) -> PathBuf {
        self.dir.join("config/resource-limits.yaml")
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.dir.join("config").join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .arg("--config")
            .arg(self.config())
            .arg("--bus")
            .arg(self.sb.bus_address())
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--cgroup-root")
            .arg(self.sb.host_path("/sys/fs/cgroup"))
            .env_remove("DBUS_SYSTEM_BUS_ADDRESS")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs and asserts the exit code, returning stdout.
    fn ok(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn show(&self, unit: &str, prop: &str) -> String {
        let out = self.sb.systemctl(&["show", "--value", &format!("--property={prop}"), unit]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// The four limit properties as `systemctl show` prints them.
    fn limits(&self, unit: &str) -> [String; 4] {
        ["CPUQuotaPerSecUSec", "MemoryMax", "MemoryHigh", "TasksMax"].map(|p| self.show(unit, p))
    }

    fn control_dropins(&self, unit: &str) -> Vec<String> {
        let dir = self.sb.host_path(&format!("/etc/systemd/system.control/{unit}.d"));
        let mut v: Vec<String> = fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), target).unwrap();
        }
    }
}

fn plan_json(w: &World) -> Vec<(String, BTreeMap<String, Value>)> {
    let text = w.ok(&["plan", "--json"], 0);
    let v: Value = serde_json::from_str(&text).unwrap();
    v["slices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let props = s["properties"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            (s["slice"].as_str().unwrap().to_owned(), props)
        })
        .collect()
}

/// Reads a property over the bus as a number, as busctl prints `t 123`.
fn bus_value(w: &World, unit: &str, prop: &str) -> Value {
    let path = unit_path(unit);
    let out = w.sb.busctl(&["get-property", "org.freedesktop.systemd1", &path, "org.freedesktop.systemd1.Slice", prop]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let (sig, value) = text.trim().split_once(' ').unwrap();
    match sig {
        "t" => Value::from(value.parse::<u64>().unwrap()),
        "b" => Value::from(value == "true"),
        other => panic!("unexpected signature {other}"),
    }
}

fn unit_path(unit: &str) -> String {
    let mut p = String::from("/org/freedesktop/systemd1/unit/");
    for (i, b) in unit.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()) {
            p.push(b as char);
        } else {
            p.push_str(&format!("_{b:02x}"));
        }
    }
    p
}

#[test]
fn apply_sets_exactly_the_plan_and_a_second_apply_writes_nothing() {
    let Some(w) = World::new(Path::new(EXAMPLE)) else { return };
    let out = w.ok(&["apply"], 0);
    assert!(out.contains("+ ds01-student-alice.slice"), "{out}");
    assert!(out.contains("MemoryMax=96G"), "{out}");

    let plan = plan_json(&w);
    assert!(plan.len() >= 10);
    for (slice, props) in &plan {
        for (prop, want) in props {
            assert_eq!(&bus_value(&w, slice, prop), want, "{slice} {prop}");
        }
    }
    // The reference tool agrees, in its own units.
    assert_eq!(
        w.limits("ds01-student-alice.slice"),
        ["1min 36s".to_owned(), (96u64 << 30).to_string(), (86u64 << 30).to_string(), "12288".to_owned()]
    );
    assert_eq!(w.show("ds01-student.slice", "MemoryAccounting"), "yes");
    assert_eq!(
        w.control_dropins("ds01-student-alice.slice"),
        ["50-CPUQuota.conf", "50-MemoryHigh.conf", "50-MemoryMax.conf", "50-TasksMax.conf"]
    );
    // Admins have no cap: nothing is written for them.
    assert!(w.control_dropins("ds01-admin-datasciencelab.slice").is_empty());

    let mtimes = |w: &World| -> Vec<_> {
        plan.iter()
            .flat_map(|(s, _)| {
                w.control_dropins(s).into_iter().map(move |f| (s.clone(), f))
            })
            .map(|(s, f)| {
                let p = w.sb.host_path(&format!("/etc/systemd/system.control/{s}.d/{f}"));
                (p.clone(), fs::metadata(p).unwrap().modified().unwrap())
            })
            .collect()
    };
    let before = mtimes(&w);
    std::thread::sleep(Duration::from_millis(20));
    let out = w.ok(&["apply"], 0);
    assert!(out.contains("nothing to do"), "{out}");
    assert_eq!(mtimes(&w), before, "a second apply rewrote drop-ins");
    let json: Value = serde_json::from_str(&w.ok(&["apply", "--json"], 0)).unwrap();
    assert_eq!(json["writes"], 0);
    w.ok(&["verify"], 0);
}

#[test]
fn a_busy_slice_is_really_capped_by_the_kernel() {
    let Some(w) = World::new(Path::new(EXAMPLE)) else { return };
    w.write(
        "user-overrides.yaml",
        "alice:\n  aggregate:\n    cpu_quota: \"50%\"\n    memory_max: 64M\n    memory_high: 60M\n    tasks_max: 20\n",
    );
    w.ok(&["apply"], 0);
    let slice = "ds01-student-alice.slice";
    w.sb.start_busy_loop("busy.service", slice).unwrap();
    let cg = w.sb.control_group(slice).unwrap();
    let e = w.sb.enforcement(&cg).unwrap();
    assert_eq!(e.cpu_quota_us, Some(Limit::Value(50_000)), "{e:?}");
    assert_eq!(e.memory_max, Some(Limit::Value(64 << 20)), "{e:?}");
    assert_eq!(e.pids_max, Some(Limit::Value(20)), "{e:?}");
    wait_until(Duration::from_secs(10), "throttling", || w.sb.enforcement(&cg).ok()?.nr_throttled.filter(|n| *n > 0)).unwrap();
    // verify reads the same from the kernel and says so.
    let report: Value = serde_json::from_str(&w.ok(&["verify", "--user", "alice", "--format", "json"], 0)).unwrap();
    let alice = report["slices"].as_array().unwrap().iter().find(|s| s["slice"] == slice).unwrap();
    assert_eq!(alice["active"], true);
    let kernel: Vec<&str> = alice["properties"].as_array().unwrap().iter().map(|p| p["kernel"]["status"].as_str().unwrap()).collect();
    assert_eq!(kernel, ["ok", "ok", "not enforced on cgroup v1", "ok"], "{report}");
}
