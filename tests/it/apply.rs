//! The D-Bus backend against a real systemd: apply, read-back, drift, stale cleanup, the
//! pre-create hook, errors, and what the kernel then enforces.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::support::cgroup::CgroupVersion;
use crate::support::{sandbox_available_or_skip, sandbox_or_skip, wait_until, Limit, Sandbox};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_ds01-slices");
pub(crate) const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config");

/// The example configuration's student limits as `systemctl show` prints them.
pub(crate) const STUDENT_LIMITS: [&str; 4] = ["1min 36s", "103079215104", "92341796864", "12288"];
pub(crate) const NO_LIMITS: [&str; 4] = ["infinity", "infinity", "infinity", "infinity"];

/// A sandboxed systemd plus a private copy of a configuration and a state directory, all
/// removed on drop.
pub(crate) struct World {
    pub(crate) sb: Sandbox,
    pub(crate) dir: PathBuf,
}

/// What one run of the binary did.
pub(crate) struct Run {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl From<Output> for Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl World {
    pub(crate) fn new(config_from: &Path) -> Option<World> {
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

    pub(crate) fn config(&self) -> PathBuf {
        self.dir.join("config/resource-limits.yaml")
    }

    pub(crate) fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The ownership record of `slice`, if there is one.
    pub(crate) fn record(&self, slice: &str) -> Option<String> {
        fs::read_to_string(self.state().join("owned").join(slice)).ok()
    }

    pub(crate) fn write(&self, rel: &str, text: &str) {
        let p = self.dir.join("config").join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    pub(crate) fn cmd(&self, args: &[&str]) -> Command {
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
            // The sandbox's file system, not this machine's: where rendered drop-ins are
            // looked for (and, should apply ever fall back to rendering, written).
            .arg("--root")
            .arg(self.sb.host_path("/"))
            .env_remove("DBUS_SYSTEM_BUS_ADDRESS")
            .env_remove("DS01_CONFIG")
            .env_remove("DS01_STATE_DIR")
            .env_remove("DS01_CGROUP_ROOT")
            .env_remove("DS01_ROOT")
            .stdin(Stdio::null());
        c
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    pub(crate) fn go(&self, args: &[&str]) -> Run {
        self.run(args).into()
    }

    /// Runs and asserts the exit code, returning stdout.
    pub(crate) fn ok(&self, args: &[&str], code: i32) -> String {
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

    pub(crate) fn show(&self, unit: &str, prop: &str) -> String {
        let out = self
            .sb
            .systemctl(&["show", "--value", &format!("--property={prop}"), unit]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// The four limit properties as `systemctl show` prints them.
    pub(crate) fn limits(&self, unit: &str) -> [String; 4] {
        ["CPUQuotaPerSecUSec", "MemoryMax", "MemoryHigh", "TasksMax"].map(|p| self.show(unit, p))
    }

    pub(crate) fn control_dropins(&self, unit: &str) -> Vec<String> {
        let dir = self
            .sb
            .host_path(&format!("/etc/systemd/system.control/{unit}.d"));
        let mut v: Vec<String> = fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl World {
    /// `systemctl set-property UNIT ASSIGNMENTS...` inside the sandbox (persistent, like ours).
    pub(crate) fn set_property(&self, unit: &str, assignments: &[&str]) {
        let out = self
            .sb
            .systemctl(&[&["set-property", unit], assignments].concat());
        assert!(
            out.status.success(),
            "set-property {unit} {assignments:?}: {out:?}"
        );
    }

    /// Every file under the sandbox's /etc/systemd/system.control with its mtime.
    pub(crate) fn control_mtimes(&self) -> BTreeMap<PathBuf, SystemTime> {
        let mut out = BTreeMap::new();
        let root = self.sb.host_path("/etc/systemd/system.control");
        for d in fs::read_dir(root).into_iter().flatten().flatten() {
            for f in fs::read_dir(d.path()).into_iter().flatten().flatten() {
                out.insert(f.path(), f.metadata().unwrap().modified().unwrap());
            }
        }
        out
    }

    /// Asserts that every property `plan --user USER` wants is on the bus.
    pub(crate) fn assert_user_as_planned(&self, user: &str) {
        let text = self.ok(&["plan", "--json", "--user", user], 0);
        let v: Value = serde_json::from_str(&text).unwrap();
        for s in v["slices"].as_array().unwrap() {
            let slice = s["slice"].as_str().unwrap();
            for (prop, want) in s["properties"].as_object().unwrap() {
                assert_eq!(
                    &bus_value(self, slice, prop),
                    want,
                    "{user}: {slice} {prop}"
                );
            }
        }
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

pub(crate) fn plan_json(w: &World) -> Vec<(String, BTreeMap<String, Value>)> {
    let text = w.ok(&["plan", "--json"], 0);
    let v: Value = serde_json::from_str(&text).unwrap();
    v["slices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let props = s["properties"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (s["slice"].as_str().unwrap().to_owned(), props)
        })
        .collect()
}

/// Reads a property over the bus as a number, as busctl prints `t 123`.
pub(crate) fn bus_value(w: &World, unit: &str, prop: &str) -> Value {
    let path = unit_path(unit);
    let out = w.sb.busctl(&[
        "get-property",
        "org.freedesktop.systemd1",
        &path,
        "org.freedesktop.systemd1.Slice",
        prop,
    ]);
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
    let Some(w) = World::new(Path::new(EXAMPLE)) else {
        return;
    };
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
        [
            "1min 36s".to_owned(),
            (96u64 << 30).to_string(),
            (86u64 << 30).to_string(),
            "12288".to_owned()
        ]
    );
    assert_eq!(w.show("ds01-student.slice", "MemoryAccounting"), "yes");
    assert_eq!(
        w.control_dropins("ds01-student-alice.slice"),
        [
            "50-CPUQuota.conf",
            "50-MemoryHigh.conf",
            "50-MemoryMax.conf",
            "50-TasksMax.conf"
        ]
    );
    // Admins have no cap: nothing is written for them.
    assert!(w
        .control_dropins("ds01-admin-datasciencelab.slice")
        .is_empty());

    let mtimes = |w: &World| -> Vec<_> {
        plan.iter()
            .flat_map(|(s, _)| {
                w.control_dropins(s)
                    .into_iter()
                    .map(move |f| (s.clone(), f))
            })
            .map(|(s, f)| {
                let p =
                    w.sb.host_path(&format!("/etc/systemd/system.control/{s}.d/{f}"));
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
    let Some(w) = World::new(Path::new(EXAMPLE)) else {
        return;
    };
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
    wait_until(Duration::from_secs(10), "throttling", || {
        w.sb.enforcement(&cg).ok()?.nr_throttled.filter(|n| *n > 0)
    })
    .unwrap();
    // verify reads the same from the kernel and says so.
    let report: Value =
        serde_json::from_str(&w.ok(&["verify", "--user", "alice", "--format", "json"], 0)).unwrap();
    let alice = report["slices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["slice"] == slice)
        .unwrap();
    assert_eq!(alice["active"], true);
    let kernel: Vec<&str> = alice["properties"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kernel"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        kernel,
        ["ok", "ok", "not enforced on cgroup v1", "ok"],
        "{report}"
    );
}

/// The lines `verify` prints for `slice`: its header and its indented property lines.
pub(crate) fn verify_block(text: &str, slice: &str) -> String {
    let mut lines = text
        .lines()
        .skip_while(|l| !l.starts_with(&format!("{slice} (")));
    let mut out = String::new();
    if let Some(head) = lines.next() {
        out.push_str(head);
        out.push('\n');
        for l in lines.take_while(|l| l.starts_with(' ')) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// One property's entry of `verify --format json`.
fn verify_entry(report: &Value, slice: &str, property: &str) -> Value {
    let s = report["slices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["slice"] == slice)
        .unwrap_or_else(|| panic!("{slice} not in {report}"));
    s["properties"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["property"] == property)
        .unwrap_or_else(|| panic!("{property} of {slice} not in {report}"))
        .clone()
}

#[test]
fn drift_made_with_systemctl_is_reported_repaired_and_left_alone_by_dry_run() {
    let Some(w) = World::new(Path::new(EXAMPLE)) else {
        return;
    };
    w.ok(&["apply"], 0);
    let alice = "ds01-student-alice.slice";
    let john = "ds01-student-john_doe.slice";
    w.set_property(alice, &["MemoryMax=1G"]);
    w.set_property(john, &["TasksMax=infinity"]);

    let out = w.go(&["verify"]);
    assert_eq!(out.code, Some(3), "{out}");
    let block = verify_block(&out.stdout, alice);
    assert!(
        block.contains("    drift    MemoryMax: expected 96G, actual 1G"),
        "{out}"
    );
    assert!(block.contains("    ok       TasksMax=12288"), "{out}");
    let block = verify_block(&out.stdout, john);
    assert!(
        block.contains("    missing  TasksMax: expected 12288, not set"),
        "{out}"
    );
    assert!(out.stdout.contains("DRIFT: "), "{out}");

    let report: Value = serde_json::from_str(&w.ok(&["verify", "--format", "json"], 3)).unwrap();
    assert_eq!(report["holds"], false);
    assert_eq!(report["counts"]["drift"], 1, "{report}");
    assert_eq!(report["counts"]["missing"], 1, "{report}");
    let m = verify_entry(&report, alice, "MemoryMax");
    assert_eq!(m["status"], "drift", "{m}");
    assert_eq!(
        (m["expected"].as_str(), m["actual"].as_str()),
        (Some("96G"), Some("1G")),
        "{m}"
    );
    assert_eq!(m["actual_value"], 1u64 << 30, "{m}");
    assert_eq!(verify_entry(&report, john, "TasksMax")["status"], "missing");

    let diff = "~ ds01-student-alice.slice\n    ~ MemoryMax 1G -> 96G\n\
                ~ ds01-student-john_doe.slice\n    ~ TasksMax infinity -> 12288\n";
    let dropins = w.control_mtimes();
    let records: Vec<_> = fs::read_dir(w.state().join("owned"))
        .unwrap()
        .flatten()
        .map(|e| (e.file_name(), fs::read(e.path()).unwrap()))
        .collect();
    std::thread::sleep(Duration::from_millis(20));
    let out = w.ok(&["apply", "--dry-run"], 0);
    assert!(out.starts_with(diff), "{out}");
    assert!(out.contains("dry run: would write to 2 of "), "{out}");
    assert_eq!(w.control_mtimes(), dropins, "--dry-run wrote a drop-in");
    let records_after: Vec<_> = fs::read_dir(w.state().join("owned"))
        .unwrap()
        .flatten()
        .map(|e| (e.file_name(), fs::read(e.path()).unwrap()))
        .collect();
    assert_eq!(
        records_after, records,
        "--dry-run changed the ownership records"
    );
    w.ok(&["verify"], 3);

    let out = w.ok(&["apply"], 0);
    assert!(out.starts_with(diff), "{out}");
    assert!(out.contains("applied: 2 writes"), "{out}");
    // Only the two drifted drop-ins were rewritten.
    let after = w.control_mtimes();
    let rewritten: Vec<String> = after
        .iter()
        .filter(|(p, t)| dropins.get(*p) != Some(t))
        .map(|(p, _)| {
            p.to_string_lossy()
                .rsplit('/')
                .take(2)
                .collect::<Vec<_>>()
                .join(" in ")
        })
        .collect();
    assert_eq!(
        rewritten,
        [
            format!("50-MemoryMax.conf in {alice}.d"),
            format!("50-TasksMax.conf in {john}.d")
        ]
    );
    assert_eq!(w.limits(alice), STUDENT_LIMITS);
    assert_eq!(w.limits(john), STUDENT_LIMITS);
    w.ok(&["verify"], 0);
}

#[test]
fn old_slices_of_moved_removed_and_promoted_users_lose_only_our_limits() {
    let Some(w) = World::new(Path::new(EXAMPLE)) else {
        return;
    };
    w.ok(&["apply"], 0);
    let (alice, r_chen, john, h_baker) = (
        "ds01-student-alice.slice",
        "ds01-researcher-r_chen.slice",
        "ds01-student-john_doe.slice",
        "ds01-student-h_baker.slice",
    );
    // What others set: on a slice of ours, on a ds01 slice we never touched, outside ds01.
    let ghost = "ds01-faculty-ghost.slice";
    w.set_property(alice, &["CPUWeight=50"]);
    w.set_property(ghost, &["TasksMax=77"]);
    // Active, so that apply surely sees it among the loaded ds01 slices.
    let out = w.sb.systemd_run(&[
        "--unit=ghost.service",
        &format!("--slice={ghost}"),
        "sleep",
        "infinity",
    ]);
    assert!(out.status.success(), "{out:?}");
    w.set_property("user.slice", &["MemoryMax=1G"]);
    // A record for a foreign unit (planted, or left by some other tool) is no licence either.
    fs::write(w.state().join("owned/user.slice"), "MemoryMax\nTasksMax\n").unwrap();

    // alice moves to researcher, r.chen leaves the researcher file (and so falls back to the
    // default group, where nobody asked for a slice yet), john.doe becomes an admin, and
    // h.baker leaves the default group's own file: still a student, served by the hook.
    w.write(
        "groups/student.members",
        "204214@hertie-school.lan\nAnna-Lena.Mueller\n",
    );
    w.write("groups/researcher.members", "maria.garcia\nalice\n");
    w.write("groups/admin.members", "datasciencelab\njohn.doe\n");

    let out = w.ok(&["apply"], 0);
    let heads: Vec<&str> = out.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(
        heads[..heads.len() - 1],
        [
            "+ ds01-researcher-alice.slice",
            &format!("- {r_chen}"),
            &format!("- {alice}"),
            &format!("- {john}"),
        ],
        "{out}"
    );
    assert!(
        heads[heads.len() - 1].starts_with("applied: 4 writes, "),
        "{out}"
    );
    assert!(out.contains(&format!("- {alice}\n    ~ CPUQuota 9600% -> infinity\n    ~ MemoryMax 96G -> infinity\n    ~ MemoryHigh 86G -> infinity\n    ~ TasksMax 12288 -> infinity\n")), "{out}");
    for slice in [alice, r_chen, john] {
        assert_eq!(w.limits(slice), NO_LIMITS, "{slice}");
        assert_eq!(w.record(slice), None, "{slice} is still recorded as ours");
    }
    // Gone for good, not just until the next reload or reboot.
    let out = w.sb.systemctl(&["daemon-reload"]);
    assert!(out.status.success(), "{out:?}");
    for slice in [alice, r_chen, john] {
        assert_eq!(w.limits(slice), NO_LIMITS, "{slice} after daemon-reload");
    }
    assert_eq!(
        w.limits(h_baker),
        STUDENT_LIMITS,
        "the hook's user lost limits"
    );
    assert!(w.record(h_baker).is_some());
    w.assert_user_as_planned("alice");
    assert_eq!(w.limits("ds01-admin-john_doe.slice"), NO_LIMITS);
    // What others set is still there.
    assert_eq!(w.show(alice, "CPUWeight"), "50");
    assert_eq!(w.show(ghost, "TasksMax"), "77");
    assert_eq!(w.show("user.slice", "MemoryMax"), (1u64 << 30).to_string());
    assert_eq!(w.show("user.slice", "TasksMax"), "infinity");
    assert!(w.record("user.slice").is_some());

    let out = w.ok(&["apply"], 0);
    assert!(out.starts_with("nothing to do"), "{out}");
    // verify still points at the foreign limit, and says whose it is.
    let out = w.go(&["verify"]);
    assert_eq!(out.code, Some(3), "{out}");
    let block = verify_block(&out.stdout, ghost);
    assert!(
        block.starts_with(&format!(
            "{ghost} (active, stale: not in the configuration)\n    stale    TasksMax=77 still in \
             force (not set by ds01-slices: left alone by apply)"
        )),
        "{out}"
    );
    assert_eq!(block.lines().count(), 2, "{out}");
    w.ok(&["verify", "--user", "alice"], 0);
    w.ok(&["verify", "--user", "h.baker@hertie-school.lan"], 0);
    w.ok(&["verify", "--user", "john.doe"], 0);
}

/// `211157K`, `96G`, `1234` (as MemoryLimit prints them) in bytes.
fn parse_memory(text: &str) -> u64 {
    let (digits, shift) = match text.chars().last() {
        Some('K') => (&text[..text.len() - 1], 10),
        Some('M') => (&text[..text.len() - 1], 20),
        Some('G') => (&text[..text.len() - 1], 30),
        Some('T') => (&text[..text.len() - 1], 40),
        _ => (text, 0),
    };
    digits
        .parse::<u64>()
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
        << shift
}

#[test]
fn lowering_memory_below_use_is_refused_without_force() {
    let Some(w) = World::new(Path::new(EXAMPLE)) else {
        return;
    };
    w.ok(&["apply"], 0);
    let alice = "ds01-student-alice.slice";
    w.sb.start_memory_hog("hog.service", alice, 200).unwrap();
    let used = || w.show(alice, "MemoryCurrent").parse::<u64>().ok();
    wait_until(Duration::from_secs(10), "the hog holds 200M", || {
        used().filter(|u| *u >= 200 << 20)
    })
    .unwrap();

    w.write(
        "user-overrides.yaml",
        "alice:\n  aggregate: {memory_max: 100M, memory_high: 90M}\njohn.doe:\n  aggregate: {tasks_max: 500}\n",
    );
    let out = w.go(&["apply"]);
    assert_eq!(out.code, Some(1), "{out}");
    let refusal = out
        .stderr
        .lines()
        .find(|l| l.contains(&format!("refused {alice}")))
        .unwrap_or_else(|| panic!("no refusal for {alice}\n{out}"));
    assert!(
        refusal.contains("MemoryMax 100M is below the "),
        "{refusal}"
    );
    assert!(refusal.contains("--force"), "{refusal}");
    let usage = refusal
        .split("is below the ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .map(parse_memory)
        .unwrap();
    assert!(usage >= 200 << 20, "{refusal}");
    assert!(!out.stdout.contains(alice), "{out}");
    assert!(
        out.stdout
            .contains("~ ds01-student-john_doe.slice\n    ~ TasksMax 12288 -> 500\n"),
        "{out}"
    );
    // The others went through; alice's slice and the job in it are untouched.
    assert_eq!(w.show("ds01-student-john_doe.slice", "TasksMax"), "500");
    w.assert_user_as_planned("maria.garcia");
    assert_eq!(w.limits(alice), STUDENT_LIMITS);
    assert_eq!(w.show("hog.service", "ActiveState"), "active");
    assert!(
        used().is_some_and(|u| u >= 200 << 20),
        "the hog lost its memory"
    );
    w.ok(&["verify", "--user", "alice"], 3);

    let out = w.ok(&["apply", "--force"], 0);
    assert!(
        out.contains(&format!("~ {alice}\n    ~ MemoryMax 96G -> 100M\n")),
        "{out}"
    );
    assert_eq!(w.show(alice, "MemoryMax"), (100u64 << 20).to_string());
    assert_eq!(w.show(alice, "MemoryHigh"), (90u64 << 20).to_string());
    let cg = w.sb.control_group(alice).unwrap();
    let kernel_max = || w.sb.enforcement(&cg).unwrap().memory_max;
    if w.sb.enforcement(&cg).unwrap().version == CgroupVersion::V1 {
        // cgroup v1 refuses (EBUSY) a memory.limit_in_bytes below what is in use and kills
        // nothing: systemd holds the new limit, the kernel keeps the old one, verify says so.
        assert_eq!(kernel_max(), Some(Limit::Value(96 << 30)));
        assert_eq!(w.show("hog.service", "ActiveState"), "active");
        let out = w.go(&["verify", "--user", "alice"]);
        assert_eq!(out.code, Some(3), "{out}");
        assert!(
            verify_block(&out.stdout, alice)
                .contains("    kernel   MemoryMax: systemd holds 100M, the kernel does not"),
            "{out}"
        );
        // Once the memory is freed, systemd's next realization puts the limit in force.
        let out = w.sb.systemctl(&["stop", "hog.service"]);
        assert!(out.status.success(), "{out:?}");
    }
    wait_until(Duration::from_secs(10), "the kernel holds 100M", || {
        (kernel_max() == Some(Limit::Value(100 << 20))).then_some(())
    })
    .unwrap();
    w.ok(&["verify", "--user", "alice"], 0);
}

#[test]
fn one_failing_slice_does_not_stop_the_others_and_a_rerun_converges() {
    let Some(w) = World::new(Path::new(EXAMPLE)) else {
        return;
    };
    // Enough users that apply holds the slices with a transient unit rather than pins.
    let mut students = fs::read_to_string(w.dir.join("config/groups/student.members")).unwrap();
    for i in 0..ds01_slices::systemd::pipeline::HOLD_THRESHOLD {
        students.push_str(&format!("extra{i:02}\n"));
    }
    w.write("groups/student.members", &students);
    // A masked unit is refused by systemd (UnitMasked) but can still be read.
    let john = "ds01-student-john_doe.slice";
    let out = w.sb.systemctl(&["mask", john]);
    assert!(out.status.success(), "{out:?}");

    let out = w.go(&["apply"]);
    assert_eq!(out.code, Some(1), "{out}");
    let failure = out
        .stderr
        .lines()
        .find(|l| l.starts_with(&format!("ds01-slices: failed {john}: ")))
        .unwrap_or_else(|| panic!("no failure line for {john}\n{out}"));
    assert!(failure.contains("masked"), "{failure}");
    assert!(
        out.stderr
            .contains("1 slice(s) failed, 0 refused; the others were applied"),
        "{out}"
    );
    for user in ["alice", "extra00", "extra63", "maria.garcia"] {
        w.assert_user_as_planned(user);
    }
    assert_eq!(w.limits(john), NO_LIMITS);
    w.ok(&["verify", "--user", "john.doe"], 3);
    assert_no_holders_left(&w);

    let out = w.sb.systemctl(&["unmask", john]);
    assert!(out.status.success(), "{out:?}");
    let out = w.ok(&["apply"], 0);
    let heads: Vec<&str> = out.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(heads.len(), 2, "{out}");
    assert_eq!(heads[0], format!("~ {john}"), "{out}");
    assert!(heads[1].starts_with("applied: 1 writes, "), "{out}");
    assert_eq!(w.limits(john), STUDENT_LIMITS);
    w.ok(&["verify"], 0);
    assert!(w.ok(&["apply"], 0).starts_with("nothing to do"));
    assert_no_holders_left(&w);
}

/// The transient units apply holds slices with are gone once it exits.
fn assert_no_holders_left(w: &World) {
    wait_until(Duration::from_secs(10), "holder units gone", || {
        let out = w.sb.systemctl(&[
            "list-units",
            "--all",
            "--no-legend",
            "--plain",
            "ds01-slices-hold-*",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .is_empty()
            .then_some(())
    })
    .unwrap();
}

#[test]
fn without_root_systemd_denies_writes_and_the_message_says_run_as_root() {
    use std::os::unix::fs::PermissionsExt;
    let Some(w) = World::new(Path::new(EXAMPLE)) else {
        return;
    };
    // Everything nobody needs goes on the sandbox's own /tmp (a tmpfs, gone with it), so that
    // no directory of this machine has to be open to nobody: the configuration, a state
    // directory nobody may write, and a copy of the binary (a bind mount could not reach a
    // checkout under the machine's /tmp, which that tmpfs covers).
    let inside = "/tmp/ds01-nobody";
    copy_dir(
        &w.dir.join("config"),
        &w.sb.host_path(&format!("{inside}/config")),
    );
    for d in ["", "/config", "/config/groups"] {
        let p = w.sb.host_path(&format!("{inside}{d}"));
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let state = format!("{inside}/state");
    fs::create_dir(w.sb.host_path(&state)).unwrap();
    fs::set_permissions(w.sb.host_path(&state), fs::Permissions::from_mode(0o777)).unwrap();
    let bin = format!("{inside}/ds01-slices");
    fs::copy(BIN, w.sb.host_path(&bin)).unwrap();
    fs::set_permissions(w.sb.host_path(&bin), fs::Permissions::from_mode(0o755)).unwrap();
    let config = format!("{inside}/config/resource-limits.yaml");
    let as_nobody = |args: &[&str]| -> Run {
        let mut argv = vec![
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &bin,
        ];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&[
            "--bus",
            "unix:path=/run/dbus/system_bus_socket",
            "--config",
            &config,
            "--state-dir",
            &state,
        ]);
        w.sb.exec(&argv).into()
    };
    let out = as_nobody(&["check-config"]);
    assert_eq!(out.code, Some(0), "nobody cannot read the fixtures: {out}");
    // Reading needs no privilege: everything is simply missing.
    let out = as_nobody(&["verify"]);
    assert_eq!(out.code, Some(3), "{out}");

    for args in [&["apply"][..], &["hook", "pre-create", "alice"]] {
        let out = as_nobody(args);
        assert_eq!(out.code, Some(1), "{args:?}: {out}");
        assert!(out.stdout.is_empty(), "{args:?}: {out}");
        assert!(
            out.stderr.contains("access denied by systemd"),
            "{args:?}: {out}"
        );
        assert!(
            out.stderr.contains("run ds01-slices as root"),
            "{args:?}: {out}"
        );
        assert!(!out.stderr.contains("caused by"), "one clear line: {out}");
    }
    assert!(w.control_mtimes().is_empty(), "{:?}", w.control_mtimes());
}

const DBUS_DAEMON: &str = "/usr/bin/dbus-daemon";

/// A private bus daemon with no systemd on it, killed on drop. With `activatable`, it knows
/// a service file for org.freedesktop.systemd1 that fails to start, as the system bus of a
/// machine whose systemd is not connected does.
struct PrivateBus {
    child: std::process::Child,
    dir: PathBuf,
    address: String,
}

impl PrivateBus {
    fn start(dir: PathBuf, activatable: bool) -> PrivateBus {
        use std::io::BufRead;
        fs::create_dir_all(dir.join("services")).unwrap();
        let servicedir = if activatable {
            fs::write(
                dir.join("services/org.freedesktop.systemd1.service"),
                "[D-BUS Service]\nName=org.freedesktop.systemd1\nExec=/bin/false\n",
            )
            .unwrap();
            format!(
                "<servicedir>{}</servicedir>",
                dir.join("services").display()
            )
        } else {
            String::new()
        };
        let conf = format!(
            "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\" \
             \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n\
             <busconfig><type>session</type><listen>unix:path={}</listen>{servicedir}\
             <policy context=\"default\"><allow send_destination=\"*\" eavesdrop=\"true\"/>\
             <allow eavesdrop=\"true\"/><allow own=\"*\"/></policy></busconfig>\n",
            dir.join("bus").display()
        );
        fs::write(dir.join("bus.conf"), conf).unwrap();
        let mut child = Command::new(DBUS_DAEMON)
            .arg(format!("--config-file={}", dir.join("bus.conf").display()))
            .args(["--nofork", "--nopidfile", "--nosyslog", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let read = std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        let bus = PrivateBus {
            child,
            dir,
            address: line.trim().to_owned(),
        };
        // It prints its address once it listens.
        assert!(
            read.is_ok() && bus.address.starts_with("unix:"),
            "dbus-daemon printed {line:?}"
        );
        bus
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A directory removed on drop, also when the test fails.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "ds01-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn without_systemd_on_the_bus_every_command_says_so_and_exits_1() {
    if !Path::new(DBUS_DAEMON).is_file() {
        // Reports the missing tool as the sandbox tests do (a panic under CI).
        assert!(!sandbox_available_or_skip());
        return;
    }
    let scratch = Scratch::new("nobus");
    let (state, root) = (scratch.0.join("state"), scratch.0.join("root"));
    let run = |bus: &str, args: &[&str]| -> Run {
        Command::new(BIN)
            .args(args)
            .args([
                "--config",
                &format!("{EXAMPLE}/resource-limits.yaml"),
                "--bus",
                bus,
            ])
            .arg("--state-dir")
            .arg(&state)
            // Never this machine's /, whatever a command might write there.
            .arg("--root")
            .arg(&root)
            .args(["--timeout", "10"])
            .env_remove("DBUS_SYSTEM_BUS_ADDRESS")
            .env_remove("DS01_ROOT")
            .stdin(Stdio::null())
            .output()
            .unwrap()
            .into()
    };
    // `apply` over D-Bus only: its default backend renders files instead when systemd is absent.
    let commands: [&[&str]; 3] = [
        &["apply", "--backend", "dbus"],
        &["verify"],
        &["hook", "pre-create", "alice"],
    ];
    for args in commands {
        let out = run("unix:path=/nonexistent", args);
        assert_eq!(out.code, Some(1), "{args:?}: {out}");
        assert!(out.stdout.is_empty(), "{args:?}: {out}");
        assert!(
            out.stderr
                .contains("cannot connect to the system bus at unix:path=/nonexistent")
                && out.stderr.contains("is dbus running?"),
            "{args:?}: {out}"
        );
    }
    for (i, activatable) in [false, true].into_iter().enumerate() {
        let bus = PrivateBus::start(scratch.0.join(format!("bus{i}")), activatable);
        for args in commands {
            let out = run(&bus.address, args);
            assert_eq!(
                out.code,
                Some(1),
                "{args:?} (activatable: {activatable}): {out}"
            );
            assert!(out.stdout.is_empty(), "{args:?}: {out}");
            assert!(
                out.stderr
                    .contains(&format!("systemd is not on the bus at {}", bus.address)),
                "{args:?} (activatable: {activatable}): {out}"
            );
        }
    }
    assert!(!root.exists(), "something was written under --root");
}
