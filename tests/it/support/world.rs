//! One sandboxed systemd with a private copy of a configuration and a state directory: the
//! binary run against it as on a server, and readers for what systemd then holds.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use serde_json::Value;

use super::cmd::{clear_tool_env, ds01, dying_with_test, Reaped, Run, BIN};
use super::sandbox::{sandbox_or_skip, two_sandboxes_or_skip, Sandbox};
use super::scratch::{copy_dir, Scratch};

/// The example configuration's student limits as `systemctl show` prints them.
pub const STUDENT_LIMITS: [&str; 4] = ["1min 36s", "103079215104", "92341796864", "12288"];
pub const NO_LIMITS: [&str; 4] = ["infinity", "infinity", "infinity", "infinity"];

/// A booted sandbox, plus `config/` (a copy of a configuration directory, free to edit) and
/// `state/` in a scratch directory. Dropping it tears the sandbox down and removes both.
pub struct World {
    pub sb: Sandbox,
    dir: Scratch,
}

impl World {
    /// A fresh sandbox with a copy of the configuration directory `config_from`; None after
    /// printing SKIPPED where no sandbox can boot (see [`sandbox_or_skip`]).
    pub fn new(config_from: &str) -> Option<World> {
        Some(World::on(sandbox_or_skip()?, config_from))
    }

    /// Two worlds on two sandboxes booted in parallel, each with its own copy of `config_from`.
    pub fn two(config_from: &str) -> Option<(World, World)> {
        let (a, b) = two_sandboxes_or_skip()?;
        Some((World::on(a, config_from), World::on(b, config_from)))
    }

    fn on(sb: Sandbox, config_from: &str) -> World {
        let dir = Scratch::new("world");
        copy_dir(Path::new(config_from), &dir.join("config"));
        dir.mkdir("state");
        World { sb, dir }
    }

    /// The copy of the configuration directory.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }

    /// Its main file, as passed to --config.
    pub fn config(&self) -> PathBuf {
        self.config_dir().join("resource-limits.yaml")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The sandbox's file system as seen from here: the binary's --root.
    pub fn root(&self) -> PathBuf {
        self.sb.host_path("/")
    }

    /// A file of the configuration (`rel` to its directory).
    pub fn read(&self, rel: &str) -> String {
        let p = self.config_dir().join(rel);
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// Writes a file of the configuration (`rel` to its directory).
    pub fn write(&self, rel: &str, text: &str) {
        self.dir.write(&format!("config/{rel}"), text);
    }

    /// Appends `names` to the members file of `group`.
    pub fn add_members<S: AsRef<str>>(&self, group: &str, names: &[S]) {
        let file = format!("groups/{group}.members");
        let mut members = self.read(&file);
        for n in names {
            members.push_str(n.as_ref());
            members.push('\n');
        }
        self.write(&file, &members);
    }

    /// The ownership record of `slice`, if there is one.
    pub fn record(&self, slice: &str) -> Option<String> {
        fs::read_to_string(self.state().join("owned").join(slice)).ok()
    }

    /// Every file in the state directory's `owned/` (none if it does not exist): name → bytes.
    pub fn records(&self) -> BTreeMap<String, Vec<u8>> {
        fs::read_dir(self.state().join("owned"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| {
                let bytes = fs::read(e.path()).unwrap();
                (e.file_name().to_string_lossy().into_owned(), bytes)
            })
            .collect()
    }

    /// `ds01-slices <args>` on this world: its configuration, state directory, bus, cgroups
    /// and file system (where rendered drop-ins go and are looked for), nothing of the caller's.
    pub fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_on_cgroups(args, &self.sb.host_path("/sys/fs/cgroup"))
    }

    /// [`World::cmd`] with another `--cgroup-root` (e.g. a directory that is no cgroup file
    /// system).
    pub fn cmd_on_cgroups(&self, args: &[&str], cgroup_root: &Path) -> Command {
        let mut c = ds01(args);
        c.arg("--config")
            .arg(self.config())
            .arg("--bus")
            .arg(self.sb.bus_address())
            .arg("--state-dir")
            .arg(self.state())
            .arg("--cgroup-root")
            .arg(cgroup_root)
            .arg("--root")
            .arg(self.root());
        c
    }

    /// `ds01-slices <args>` on this world, left running (a server, a watch): killed and reaped
    /// when the result is dropped, and with the test process if that dies first. Stdin and
    /// stderr are null; stdout is piped when `read_stdout`.
    pub fn spawn(&self, args: &[&str], read_stdout: bool) -> Reaped {
        let argv: Vec<String> = self
            .cmd(args)
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let mut cmd = dying_with_test(BIN, &argv);
        clear_tool_env(&mut cmd);
        let stdout = if read_stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        Reaped(
            cmd.stdin(Stdio::null())
                .stdout(stdout)
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn ds01-slices {args:?}: {e}")),
        )
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::of(&mut self.cmd(args))
    }

    /// Runs and asserts the exit code.
    #[track_caller]
    pub fn expect(&self, args: &[&str], code: i32) -> Run {
        self.run(args).assert_code(code, format!("{args:?}"))
    }

    /// Runs, asserts the exit code and parses stdout as JSON.
    #[track_caller]
    pub fn json(&self, args: &[&str], code: i32) -> Value {
        let out = self.expect(args, code);
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}):\n{out}"))
    }

    /// One property of `unit` as `systemctl show` prints it.
    pub fn show(&self, unit: &str, prop: &str) -> String {
        let out = self
            .sb
            .systemctl(&["show", "--value", &format!("--property={prop}"), unit]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// The four limit properties as `systemctl show` prints them.
    pub fn limits(&self, unit: &str) -> [String; 4] {
        ["CPUQuotaPerSecUSec", "MemoryMax", "MemoryHigh", "TasksMax"].map(|p| self.show(unit, p))
    }

    /// `systemctl set-property UNIT ASSIGNMENTS...` inside the sandbox (persistent, like ours).
    pub fn set_property(&self, unit: &str, assignments: &[&str]) {
        let out = self
            .sb
            .systemctl(&[&["set-property", unit], assignments].concat());
        assert!(
            out.status.success(),
            "set-property {unit} {assignments:?}: {out:?}"
        );
    }

    /// Every file one directory below the sandbox's `dir` (e.g. /etc/systemd/system.control),
    /// as "<unit>.d/<file>" → its path seen from here.
    pub fn drop_ins(&self, dir: &str) -> BTreeMap<String, PathBuf> {
        let mut out = BTreeMap::new();
        for d in fs::read_dir(self.sb.host_path(dir)).into_iter().flatten() {
            let d = d.unwrap();
            let unit = d.file_name().to_string_lossy().into_owned();
            for f in fs::read_dir(d.path()).into_iter().flatten() {
                let f = f.unwrap();
                out.insert(
                    format!("{unit}/{}", f.file_name().to_string_lossy()),
                    f.path(),
                );
            }
        }
        out
    }

    /// Files in ds01 slices' drop-in directories under the sandbox's `dir`, "<unit>.d/<file>".
    pub fn ds01_drop_ins(&self, dir: &str) -> Vec<String> {
        self.drop_ins(dir)
            .into_keys()
            .filter(|k| {
                let unit = k.split('/').next().unwrap_or_default();
                unit.starts_with("ds01") && unit.ends_with(".slice.d")
            })
            .collect()
    }

    /// The names of the D-Bus drop-ins of `unit` (in /etc/systemd/system.control), sorted.
    pub fn control_dropins(&self, unit: &str) -> Vec<String> {
        let prefix = format!("{unit}.d/");
        self.drop_ins("/etc/systemd/system.control")
            .into_keys()
            .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
            .collect()
    }

    /// Every file under the sandbox's /etc/systemd/system.control ("<unit>.d/<file>") with its
    /// mtime.
    pub fn control_mtimes(&self) -> BTreeMap<String, SystemTime> {
        self.drop_ins("/etc/systemd/system.control")
            .into_iter()
            .map(|(k, p)| {
                let mtime = fs::metadata(&p).unwrap().modified().unwrap();
                (k, mtime)
            })
            .collect()
    }

    /// `plan --json`: every slice with its properties, in plan order.
    pub fn plan(&self) -> Vec<(String, BTreeMap<String, Value>)> {
        let v = self.json(&["plan", "--json"], 0);
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

    /// A property of a slice read over the bus with busctl (`t 123`, `b true`), as JSON.
    pub fn bus_value(&self, unit: &str, prop: &str) -> Value {
        let path = unit_path(unit);
        let out = self.sb.busctl(&[
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

    /// Asserts that every property `plan --user USER` wants is on the bus.
    pub fn assert_user_as_planned(&self, user: &str) {
        let v = self.json(&["plan", "--json", "--user", user], 0);
        for s in v["slices"].as_array().unwrap() {
            let slice = s["slice"].as_str().unwrap();
            for (prop, want) in s["properties"].as_object().unwrap() {
                assert_eq!(&self.bus_value(slice, prop), want, "{user}: {slice} {prop}");
            }
        }
    }
}

/// systemd's object path of `unit`, escaped here independently of the library's.
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
