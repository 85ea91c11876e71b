//! `apply --watch` against a real systemd: what it finds at its start is applied; a burst of
//! edits is applied as its last; an edit that lands while an apply runs is applied after it; a
//! bad configuration is refused once, changes nothing and is not retried until it changes; a
//! good one after it is applied; SIGTERM ends it. The installed unit is tested in the VM
//! (tests/it/package_watch.rs).

use std::fs::{self, File, OpenOptions};
use std::process::Stdio;
use std::time::Duration;

use crate::support::{
    clear_tool_env, dying_with_test, wait_until, Reaped, Scratch, World, BIN, EXAMPLE,
};

const MARIA: &str = "ds01-researcher-maria_garcia.slice";
const ALICE: &str = "ds01-student-alice.slice";

/// maria.garcia's overrides file with TasksMax `tasks`.
fn overrides(tasks: u32) -> String {
    format!("maria.garcia:\n  aggregate:\n    tasks_max: {tasks}\n")
}

struct Watching {
    process: Reaped,
    log: std::path::PathBuf,
    _dir: Scratch,
}

impl Watching {
    fn start(w: &World) -> Watching {
        let dir = Scratch::new("watch");
        let log = dir.join("watch.log");
        let argv: Vec<String> = w
            .cmd(&["apply", "--watch"])
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let out = File::create(&log).unwrap();
        let mut cmd = dying_with_test(BIN, &argv);
        clear_tool_env(&mut cmd);
        let process = Reaped(
            cmd.stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap_or_else(|e| panic!("apply --watch: {e}")),
        );
        Watching {
            process,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many lines of the log start with `prefix`.
    fn count(&self, prefix: &str) -> usize {
        self.log().lines().filter(|l| l.starts_with(prefix)).count()
    }

    /// Waits until `count(prefix)` reaches `n`.
    fn until_count(&self, prefix: &str, n: usize) {
        wait_until(
            Duration::from_secs(30),
            &format!("{n} × {prefix:?}"),
            || (self.count(prefix) >= n).then_some(()),
        )
        .unwrap_or_else(|e| panic!("{e}; the watcher's log:\n{}", self.log()));
    }

    fn until_shown(&self, w: &World, unit: &str, prop: &str, want: &str) {
        wait_until(
            Duration::from_secs(30),
            &format!("{unit} {prop}={want}"),
            || (w.show(unit, prop) == want).then_some(()),
        )
        .unwrap_or_else(|e| panic!("{e}; the watcher's log:\n{}", self.log()));
    }
}

const APPLYING: &str = "ds01-slices: watch: the configuration changed: applying it";
const IN_FORCE: &str = "ds01-slices: watch: in force after ";
const REFUSED: &str = "ds01-slices: watch: refused after ";

#[test]
fn the_watcher_applies_the_last_of_each_burst_refuses_a_bad_configuration_and_keeps_watching() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    let mut watching = Watching::start(&w);
    // What is there at its start.
    watching.until_shown(&w, ALICE, "MemoryMax", "103079215104");
    watching.until_count(IN_FORCE, 1);

    // A burst of ten edits, one every 200 ms: one apply (or a few), of the last.
    for tasks in 1001..=1010 {
        w.write("user-overrides.yaml", &overrides(tasks));
        std::thread::sleep(Duration::from_millis(200));
    }
    watching.until_shown(&w, MARIA, "TasksMax", "1010");
    watching.until_count(IN_FORCE, 2);
    let burst = watching.count(APPLYING);
    assert!(
        (1..=3).contains(&burst),
        "ten edits 200 ms apart were applied {burst} times:\n{}",
        watching.log()
    );

    // An edit while an apply runs: the apply of 2001 waits for the writer lock, which this
    // test holds, and 2002 is written meanwhile; 2002 is applied after it.
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .open(w.state().join("lock"))
        .unwrap();
    lock.lock().unwrap();
    w.write("user-overrides.yaml", &overrides(2001));
    watching.until_count(APPLYING, burst + 1);
    w.write("user-overrides.yaml", &overrides(2002));
    std::thread::sleep(Duration::from_millis(300));
    drop(lock);
    watching.until_shown(&w, MARIA, "TasksMax", "2002");
    assert_eq!(watching.count(APPLYING), burst + 2, "{}", watching.log());

    // A bad file: refused once, naming it, nothing changed; not tried again while it stays.
    let applies = watching.count(APPLYING);
    w.write(
        "user-overrides.yaml",
        "maria.garcia:\n  aggregate: [tasks_max\n",
    );
    watching.until_count(REFUSED, 1);
    let log = watching.log();
    assert!(
        log.contains("user-overrides.yaml") && log.contains("nothing was changed"),
        "{log}"
    );
    std::thread::sleep(crate::support::deadline(Duration::from_secs(5)));
    assert_eq!(watching.count(REFUSED), 1, "retried: {}", watching.log());
    assert_eq!(watching.count(APPLYING), applies + 1);
    assert_eq!(w.show(MARIA, "TasksMax"), "2002");
    assert_eq!(w.show(ALICE, "MemoryMax"), "103079215104");

    // A good one after it.
    w.write("user-overrides.yaml", &overrides(3000));
    watching.until_shown(&w, MARIA, "TasksMax", "3000");

    // SIGTERM: it ends, saying so, with exit 0.
    let pid = watching.process.0.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = wait_until(Duration::from_secs(30), "the watcher's exit", || {
        watching.process.0.try_wait().unwrap()
    })
    .unwrap();
    assert_eq!(status.code(), Some(0), "{}", watching.log());
    assert!(watching.log().ends_with("ds01-slices: watch: stopped\n"));
    println!("the watcher's log:\n{}", watching.log());
}
