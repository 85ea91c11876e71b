//! apply when things go wrong: one slice refused by systemd, no root, no systemd on the bus.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{
    copy_dir, ds01, main_file, sandbox_available_or_skip, wait_until, Run, Scratch, World, BIN,
    EXAMPLE, NO_LIMITS, STUDENT_LIMITS,
};

#[test]
fn one_failing_slice_does_not_stop_the_others_and_a_rerun_converges() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    // Enough users that apply holds the slices with a transient unit rather than pins.
    let mut students = w.read("groups/student.members");
    for i in 0..ds01_slices::systemd::pipeline::HOLD_THRESHOLD {
        students.push_str(&format!("extra{i:02}\n"));
    }
    w.write("groups/student.members", &students);
    // A masked unit is refused by systemd (UnitMasked) but can still be read.
    let john = "ds01-student-john_doe.slice";
    let out = w.sb.systemctl(&["mask", john]);
    assert!(out.status.success(), "{out:?}");

    let out = w.run(&["apply"]);
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
    w.expect(&["verify", "--user", "john.doe"], 3);
    assert_no_holders_left(&w);

    let out = w.sb.systemctl(&["unmask", john]);
    assert!(out.status.success(), "{out:?}");
    let out = w.expect(&["apply"], 0).stdout;
    let heads: Vec<&str> = out.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(heads.len(), 2, "{out}");
    assert_eq!(heads[0], format!("~ {john}"), "{out}");
    assert!(heads[1].starts_with("applied: 1 writes, "), "{out}");
    assert_eq!(w.limits(john), STUDENT_LIMITS);
    w.expect(&["verify"], 0);
    assert!(w.expect(&["apply"], 0).stdout.starts_with("nothing to do"));
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
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    // Everything nobody needs goes on the sandbox's own /tmp (a tmpfs, gone with it), so that
    // no directory of this machine has to be open to nobody: the configuration, a state
    // directory nobody may write, and a copy of the binary (a bind mount could not reach a
    // checkout under the machine's /tmp, which that tmpfs covers).
    let inside = "/tmp/ds01-nobody";
    copy_dir(
        &w.config_dir(),
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

#[test]
fn without_systemd_on_the_bus_every_command_says_so_and_exits_1() {
    if !Path::new(DBUS_DAEMON).is_file() {
        // Reports the missing tool as the sandbox tests do (a panic under CI).
        assert!(!sandbox_available_or_skip());
        return;
    }
    let scratch = Scratch::new("nobus");
    let (state, root) = (scratch.join("state"), scratch.join("root"));
    let run = |bus: &str, args: &[&str]| -> Run {
        Run::of(
            ds01(args)
                .arg("--config")
                .arg(main_file(EXAMPLE))
                .args(["--bus", bus])
                .arg("--state-dir")
                .arg(&state)
                // Never this machine's /, whatever a command might write there.
                .arg("--root")
                .arg(&root)
                .args(["--timeout", "10"]),
        )
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
        let bus = PrivateBus::start(scratch.join(&format!("bus{i}")), activatable);
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
