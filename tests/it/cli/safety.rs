//! Fail closed on configuration files that are not what they seem: special files, huge or
//! deeply nested files, files others could change (run as root), a linked `--config`, and
//! the small traps (a byte order mark, an override named like a group, odd gpu_limits).
//! Every refusal is exit 2, quickly, naming the file and the fix.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::bad_input::{default_files, main_sub};
use super::*;
use crate::support::{clear_tool_env, skip, BIN};

/// Longer than any of these runs may take; a run still going then hangs, which is a failure.
const HANG: Duration = Duration::from_secs(20);

fn as_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Runs `cmd` and kills it if it is still running after [`HANG`]; returns what it did and
/// how long it took.
fn timed(mut cmd: Command) -> (Run, Duration) {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ds01-slices");
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > HANG {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still ran after {HANG:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = started.elapsed();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.code().is_some(), "killed by a signal");
    let out = Run::from(out);
    (out, took)
}

/// check-config, and a hook (which stops at the configuration, before any bus).
fn config_commands(scratch: &Scratch) -> [Vec<String>; 2] {
    let config = config_of(scratch);
    let state = scratch.join("state").display().to_string();
    [
        vec!["check-config".into(), "--config".into(), config.clone()],
        vec![
            "hook".into(),
            "pre-create".into(),
            "alice".into(),
            "--config".into(),
            config,
            "--state-dir".into(),
            state,
            "--bus".into(),
            "unix:path=/nonexistent".into(),
        ],
    ]
}

/// Both commands exit 2 within `limit`, with nothing on stdout and every one of `expect`
/// on one stderr line that names `at` (relative to the scratch dir).
fn refused_quickly(scratch: &Scratch, at: &str, expect: &[&str], limit: Duration) {
    let place = scratch.join(at).display().to_string();
    for args in config_commands(scratch) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (out, took) = timed(ds01(&args));
        assert_eq!(out.code, Some(2), "{args:?}\n{}", out);
        assert!(out.stdout.is_empty(), "{args:?}\n{}", out);
        let named = out
            .stderr
            .lines()
            .any(|l| l.contains(&place) && expect.iter().all(|e| l.contains(e)));
        assert!(
            named,
            "{args:?}: no line names {place} with {expect:?}\n{}",
            out
        );
        assert!(took < limit, "{args:?} took {took:?}");
        println!("{} {at}: exit 2 in {took:?}", args[0]);
    }
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success());
}

#[test]
fn a_fifo_as_any_configuration_file_is_refused_at_once() {
    for (at, noun) in [
        (MAIN, "cannot read configuration file"),
        (STUDENTS, "cannot read members file"),
        (OVERRIDES, "cannot read overrides file"),
    ] {
        let scratch = Scratch::new(&format!("fifo-{at}"));
        let mut files = default_files();
        files.push(absent(at));
        write_files(&scratch, &files);
        mkfifo(&scratch.join(at));
        refused_quickly(
            &scratch,
            at,
            &[noun, "it is a FIFO (named pipe), not a regular file"],
            Duration::from_secs(2),
        );
    }
}

#[test]
fn a_members_file_linked_to_dev_zero_is_refused_quickly_in_bounded_memory() {
    let scratch = Scratch::new("dev-zero");
    let mut files = default_files();
    files.push(absent(STUDENTS));
    write_files(&scratch, &files);
    std::os::unix::fs::symlink("/dev/zero", scratch.join(STUDENTS)).unwrap();
    let config = config_of(&scratch);
    // 1 GiB of address space: reading /dev/zero to its end would fail to allocate.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ulimit -v 1048576 && exec \"$0\" \"$@\""])
        .arg(BIN)
        .args(["check-config", "--config", &config])
        .env_remove("DS01_CONFIG")
        .stdin(Stdio::null());
    let (out, took) = timed(cmd);
    assert_eq!(out.code, Some(2), "{}", out);
    let place = scratch.join(STUDENTS).display().to_string();
    assert!(
        out.stderr.contains(&format!(
            "{place}: error: cannot read members file: it is a character device, not a regular file"
        )),
        "{}",
        out
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
    println!("check-config, members file -> /dev/zero: exit 2 in {took:?}");
    refused_quickly(
        &scratch,
        STUDENTS,
        &["character device"],
        Duration::from_secs(2),
    );
}

#[test]
fn files_over_their_cap_are_refused() {
    let scratch = Scratch::new("too-large");
    let mut files = default_files();
    let huge = "# padding\n".repeat(450_000);
    files.push(text(STUDENTS, &format!("alice\n{huge}")));
    write_files(&scratch, &files);
    refused_quickly(
        &scratch,
        STUDENTS,
        &[
            "cannot read members file",
            "more than the 4 MiB a members file may have",
        ],
        Duration::from_secs(5),
    );
    let mut files = default_files();
    files.push(text(MAIN, &format!("{BASE}{}", "#".repeat(1 << 20))));
    write_files(&scratch, &files);
    refused_quickly(
        &scratch,
        MAIN,
        &["more than the 1 MiB a configuration file may have"],
        Duration::from_secs(5),
    );
}

/// The fastest of three runs of `args`, each of which must be refused (exit 2).
fn fastest_refusal(args: &[String]) -> Duration {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (0..3)
        .map(|_| {
            let (out, took) = timed(ds01(&args));
            assert_eq!(out.code, Some(2), "{args:?}\n{}", out);
            took
        })
        .min()
        .unwrap()
}

/// A parser that followed 200 000 brackets down would take seconds or overflow its stack;
/// one that stops at the depth cap costs what a one-line error costs. Compared against that
/// error in the same run, not against a clock, because a TCG guest under a parallel suite
/// starts a process ten times slower than the host does.
#[test]
fn deeply_nested_yaml_is_refused_as_fast_as_a_one_line_error() {
    for at in [OVERRIDES, MAIN] {
        let deep = Scratch::new(&format!("deep-{at}"));
        let mut files = default_files();
        files.push(text(at, &"[".repeat(200_000)));
        write_files(&deep, &files);
        refused_quickly(
            &deep,
            &format!("{at}:1"),
            &["error: the YAML nests deeper than 32 levels here"],
            HANG,
        );
        let shallow = Scratch::new(&format!("shallow-{at}"));
        let mut files = default_files();
        files.push(text(at, "["));
        write_files(&shallow, &files);
        for (deep_args, shallow_args) in config_commands(&deep)
            .iter()
            .zip(config_commands(&shallow).iter())
        {
            let (deep_took, shallow_took) =
                (fastest_refusal(deep_args), fastest_refusal(shallow_args));
            println!(
                "{} {at}: 200 000 levels refused in {deep_took:?}, one bracket in {shallow_took:?}",
                deep_args[0]
            );
            assert!(
                deep_took < shallow_took * 3 + Duration::from_millis(300),
                "{}: 200 000 levels took {deep_took:?}, one bracket {shallow_took:?}",
                deep_args[0]
            );
        }
    }
}

/// A tree every test below starts from: files 0644, directories 0755, all root's.
fn clean_tree(label: &str) -> Scratch {
    clean_tree_in(Scratch::new(label))
}

fn clean_tree_in(scratch: Scratch) -> Scratch {
    write_files(&scratch, &default_files());
    for dir in ["", "groups"] {
        fs::set_permissions(scratch.join(dir), fs::Permissions::from_mode(0o755)).unwrap();
    }
    for file in [MAIN, STUDENTS, ADMINS] {
        fs::set_permissions(scratch.join(file), fs::Permissions::from_mode(0o644)).unwrap();
    }
    scratch
}

fn check_config(scratch: &Scratch) -> Run {
    run(&["check-config", "--config", &config_of(scratch)])
}

#[test]
fn as_root_only_files_that_only_root_can_change_are_read() {
    if !as_root() {
        skip(
            "root",
            "not root, so the tool only reads and refuses nothing",
        );
        return;
    }
    let scratch = clean_tree("trust-clean");
    let out = check_config(&scratch);
    assert_eq!(out.code, Some(0), "{}", out);

    let refused = |scratch: &Scratch, at: &str, expect: &[&str]| {
        let out = check_config(scratch);
        assert_eq!(out.code, Some(2), "{}", out);
        let place = scratch.join(at).display().to_string();
        assert!(
            out.stderr
                .lines()
                .any(|l| l.contains(&place) && expect.iter().all(|e| l.contains(e))),
            "no line names {place} with {expect:?}\n{}",
            out
        );
    };
    let scratch = clean_tree("trust-0666");
    let members = scratch.join(STUDENTS);
    fs::set_permissions(&members, fs::Permissions::from_mode(0o666)).unwrap();
    refused(
        &scratch,
        STUDENTS,
        &[
            "error: refusing members file: the members file can be changed by every user (owner uid 0, group gid 0, mode 0666)",
            &format!("run `chown root:root '{}' && chmod go-w '{}'`", members.display(), members.display()),
        ],
    );

    let scratch = clean_tree("trust-nobody");
    std::os::unix::fs::chown(scratch.join(MAIN), Some(65534), None).unwrap();
    refused(
        &scratch,
        MAIN,
        &[
            "refusing configuration file",
            "can be changed by its owner, uid 65534, who is not root",
            "nothing was changed",
        ],
    );

    let out = run(&["--json", "check-config", "--config", &config_of(&scratch)]);
    assert_eq!(out.code, Some(2), "{}", out);
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let message = report["problems"][0]["message"].as_str().unwrap();
    assert!(message.contains("who is not root"), "{message}");

    let scratch = clean_tree("trust-group");
    let groups = scratch.join("groups");
    std::os::unix::fs::chown(&groups, None, Some(65534)).unwrap();
    fs::set_permissions(&groups, fs::Permissions::from_mode(0o775)).unwrap();
    refused(
        &scratch,
        STUDENTS,
        &[&format!("directory {} can be written by group gid 65534 (owner uid 0, group gid 65534, mode 0775)", groups.display())],
    );

    // A missing overrides file could be created in a directory others can write.
    let scratch = clean_tree("trust-dir");
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o757)).unwrap();
    refused(&scratch, MAIN, &["can be written by every user"]);
}

#[test]
fn a_sticky_directory_on_the_way_is_fine_when_what_is_below_it_is_roots() {
    if !as_root() {
        skip("root", "not root");
        return;
    }
    let scratch = Scratch::new("sticky");
    let shared = scratch.join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    let config = shared.join("cfg");
    for (rel, content) in default_files() {
        let path = config.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        if let Content::Text(t) = content {
            fs::write(&path, t).unwrap();
        }
    }
    let main = config.join(MAIN).display().to_string();
    let out = run(&["check-config", "--config", &main]);
    assert_eq!(out.code, Some(0), "{}", out);
    // Without the sticky bit anyone could rename cfg/ away and put their own in its place.
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    let out = run(&["check-config", "--config", &main]);
    assert_eq!(out.code, Some(2), "{}", out);
    assert!(
        out.stderr.contains(&format!(
            "directory {} can be written by every user",
            shared.display()
        )),
        "{}",
        out
    );
    // Owned by someone else, cfg/ could be renamed by its owner even in a sticky directory.
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::chown(&config, Some(65534), None).unwrap();
    let out = run(&["check-config", "--config", &main]);
    assert_eq!(out.code, Some(2), "{}", out);
    assert!(
        out.stderr.contains(&format!(
            "{} is not root's, and it is in {}",
            config.display(),
            shared.display()
        )),
        "{}",
        out
    );
}

#[test]
fn not_as_root_nothing_is_refused_for_its_owner() {
    if !as_root() || Command::new("setpriv").arg("--version").output().is_err() {
        skip(
            "root and setpriv",
            "needs root and setpriv to run as nobody",
        );
        return;
    }
    // Under /tmp, which every user can reach (TMPDIR may be below a directory only root may
    // enter).
    let scratch = clean_tree_in(Scratch::new_in(Path::new("/tmp"), "nobody-reads"));
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(scratch.join(STUDENTS), fs::Permissions::from_mode(0o666)).unwrap();
    let config = config_of(&scratch);
    let out = Run::of(
        clear_tool_env(&mut Command::new("setpriv"))
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
            .args(["check-config", "--config", &config])
            .stdin(Stdio::null()),
    );
    assert_eq!(out.code, Some(0), "{}", out);
}

#[test]
fn a_linked_config_reads_the_files_beside_its_target() {
    let scratch = Scratch::new("linked");
    let link = scratch.join(MAIN);
    std::os::unix::fs::symlink(production(), &link).unwrap();
    let real = run(&["check-config", "--config", &production()]);
    let linked = run(&["check-config", "--config", &link.display().to_string()]);
    assert_eq!(real.code, Some(0), "{}", real);
    assert_eq!(linked.code, Some(0), "{}", linked);
    let counts = |o: &Run| o.stdout.split_once(": ok").map(|(_, c)| c.to_owned());
    assert_eq!(counts(&linked), counts(&real), "{}", linked);
    assert!(!linked.stdout.contains(" 0 listed users"), "{}", linked);
    let shown =
        |config: &str| run(&["show", "r.chen@hertie-school.lan", "--config", config]).stdout;
    assert_eq!(shown(&link.display().to_string()), shown(&production()));
    assert!(shown(&production()).contains("ds01-researcher-r_chen.slice"));

    // A copy without its members files: everyone would be a student, which is said.
    fs::remove_file(&link).unwrap();
    fs::copy(production(), &link).unwrap();
    let out = run(&["check-config", "--config", &link.display().to_string()]);
    assert_eq!(out.code, Some(0), "{}", out);
    assert!(
        out.stderr
            .contains("warning: no members file lists any user")
            && out
                .stderr
                .contains("every user is in default_group student"),
        "{}",
        out
    );
    let out = run(&["plan", "--config", &link.display().to_string()]);
    assert!(
        out.stderr.contains("no members file lists any user"),
        "{}",
        out
    );
}

#[test]
fn a_byte_order_mark_is_read_past_in_every_file() {
    let scratch = Scratch::new("bom");
    let mut files = default_files();
    files.push(text(MAIN, &format!("\u{feff}{BASE}")));
    files.push(text(STUDENTS, "\u{feff}alice\njohn.doe\n"));
    files.push(text(
        OVERRIDES,
        "\u{feff}alice:\n  aggregate:\n    tasks_max: 99\n",
    ));
    write_files(&scratch, &files);
    let config = config_of(&scratch);
    let out = run(&["show", "alice", "--json", "--config", &config]);
    assert_eq!(out.code, Some(0), "{}", out);
    let shown: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(shown["user"], "alice");
    assert_eq!(shown["slice"], "ds01-student-alice.slice");
    assert_eq!(shown["aggregate"]["tasks_max"], 99);
}

#[test]
fn an_override_named_like_a_group_is_a_warning() {
    let scratch = Scratch::new("group-override");
    let mut files = default_files();
    files.push(text(
        OVERRIDES,
        "student:\n  aggregate:\n    tasks_max: 5\n",
    ));
    write_files(&scratch, &files);
    let out = check_config(&scratch);
    assert_eq!(out.code, Some(0), "{}", out);
    let place = scratch.join(OVERRIDES).display().to_string();
    assert!(
        out.stderr.contains(&format!("{place}:1: warning: the override `student` is named like the group student, but overrides are for users")),
        "{}",
        out
    );
}

#[test]
fn gpu_limits_negative_and_infinite() {
    let scratch = Scratch::new("gpu");
    let mut files = default_files();
    files.push(main_sub("gpu_limit: 2.0", "gpu_limit: .inf"));
    write_files(&scratch, &files);
    let out = run(&[
        "show",
        "alice",
        "--aggregate",
        "--config",
        &config_of(&scratch),
    ]);
    assert_eq!(out.code, Some(0), "{}", out);
    assert_eq!(
        out.stdout,
        "{\"cpu_quota\": \"9600%\", \"memory_max\": \"96G\", \"memory_high\": \"86G\", \"tasks_max\": 12288, \"gpu_limit\": Infinity}\n"
    );
    for bad in ["-1", "-0.5", "-.inf", ".nan"] {
        let mut files = default_files();
        files.push(main_sub("gpu_limit: 2.0", &format!("gpu_limit: {bad}")));
        write_files(&scratch, &files);
        let out = check_config(&scratch);
        assert_eq!(out.code, Some(2), "{bad}: {}", out);
        assert!(
            out.stderr
                .contains("resource-limits.yaml:11: error: gpu_limit of group student"),
            "{bad}: {}",
            out
        );
    }
}

#[test]
fn a_cpu_quota_that_is_no_number_is_not_told_memory_syntax() {
    let scratch = Scratch::new("cpu-1e3");
    let mut files = default_files();
    files.push(main_sub("\"9600%\"", "\"1e3%\""));
    write_files(&scratch, &files);
    let out = check_config(&scratch);
    assert_eq!(out.code, Some(2), "{}", out);
    assert!(
        out.stderr.contains("resource-limits.yaml:7: error: cpu_quota of group student: \"1e3%\" is not a percentage of one CPU"),
        "{}",
        out
    );
    assert!(
        !out.stderr.contains("96G") && !out.stderr.contains("512M"),
        "{}",
        out
    );
}
