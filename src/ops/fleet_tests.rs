use std::cell::Cell;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;

use super::*;

/// Answers each host from a table, after a delay, counting how many run at once.
struct FakeRunner {
    answers: BTreeMap<&'static str, (Duration, RunFacts)>,
    running: Cell<usize>,
    most: Cell<usize>,
}

impl FakeRunner {
    fn new(answers: &[(&'static str, u64, Option<i32>, &str, &str)]) -> FakeRunner {
        FakeRunner {
            answers: answers
                .iter()
                .map(|(h, ms, code, out, err)| {
                    let facts = RunFacts {
                        code: *code,
                        stdout: (*out).into(),
                        stderr: (*err).into(),
                        ..Default::default()
                    };
                    (*h, (Duration::from_millis(*ms), facts))
                })
                .collect(),
            running: Cell::new(0),
            most: Cell::new(0),
        }
    }
}

impl RemoteRunner for FakeRunner {
    async fn run(&self, host: &Host, remote: &[String], timeout: Duration) -> RunFacts {
        assert_eq!(remote[1], "verify");
        self.running.set(self.running.get() + 1);
        self.most.set(self.most.get().max(self.running.get()));
        let (delay, facts) = self.answers[host.as_str()].clone();
        let facts = if delay > timeout {
            tokio::time::sleep(timeout).await;
            RunFacts {
                timed_out: true,
                ..Default::default()
            }
        } else {
            tokio::time::sleep(delay).await;
            facts
        };
        self.running.set(self.running.get() - 1);
        facts
    }
}

const HOLDS: &str =
    r#"{"holds": true, "counts": {"slices": 3, "ok": 9, "drift": 0, "not_holding": 0}}"#;
const DRIFT: &str =
    r#"{"holds": false, "counts": {"slices": 3, "ok": 8, "drift": 1, "not_holding": 1}}"#;

fn opts(parallel: usize) -> FleetOptions {
    FleetOptions {
        command: FleetCommand::Verify,
        dry_run: false,
        parallel,
        host_timeout: Duration::from_millis(500),
    }
}

fn hosts(names: &[&str]) -> Vec<Host> {
    names.iter().map(|h| Host::parse(h).unwrap()).collect()
}

#[tokio::test]
async fn hosts_run_at_most_parallel_at_once_and_report_in_file_order() {
    let runner = FakeRunner::new(&[
        ("a", 300, Some(0), HOLDS, ""),
        ("b", 10, Some(3), DRIFT, ""),
        ("c", 20, Some(0), HOLDS, ""),
        ("d", 5, Some(0), HOLDS, ""),
    ]);
    let remote = remote_command("/usr/sbin/ds01-slices", &opts(2));
    let report = fleet(&runner, &hosts(&["a", "b", "c", "d"]), &remote, opts(2)).await;
    assert_eq!(runner.most.get(), 2);
    let order: Vec<&str> = report.hosts.iter().map(|h| h.host.as_str()).collect();
    assert_eq!(order, ["a", "b", "c", "d"]);
    assert_eq!(report.hosts[1].result, "drift 1");
    assert_eq!((report.exit, report.exit_code()), (3, Exit::Drift));
}

#[tokio::test]
async fn a_slow_host_times_out_and_a_down_one_fails_the_fleet() {
    let down = "ssh: connect to host down port 22: Connection refused";
    let runner = FakeRunner::new(&[
        ("ok", 10, Some(0), HOLDS, ""),
        ("hung", 600_000, Some(0), HOLDS, ""),
        ("down", 1, Some(255), "", down),
    ]);
    let remote = remote_command("ds01-slices", &opts(8));
    let report = fleet(&runner, &hosts(&["ok", "hung", "down"]), &remote, opts(8)).await;
    assert_eq!(runner.most.get(), 3);
    let results: Vec<&str> = report.hosts.iter().map(|h| h.result.as_str()).collect();
    assert_eq!(results, ["ok", "timed out", "unreachable"]);
    assert_eq!(report.hosts[2].error.as_deref(), Some(down));
    assert_eq!(report.exit, 1);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["command"], "verify");
    assert_eq!(json["hosts"][0]["report"]["holds"], true);
    assert_eq!(json["hosts"][1]["report"], serde_json::Value::Null);
}

#[test]
fn apply_dry_run_is_asked_of_the_remote() {
    let mut o = opts(1);
    o.command = FleetCommand::Apply;
    o.dry_run = true;
    assert_eq!(
        remote_command("x", &o),
        ["x", "apply", "--json", "--dry-run"]
    );
    o.command = FleetCommand::Verify;
    assert_eq!(remote_command("x", &o), ["x", "verify", "--json"]);
}

/// A stand-in for ssh: drops the options and the host, runs the rest.
fn fake_ssh(dir: &Path) -> String {
    let path = dir.join("ssh");
    std::fs::write(&path, "#!/bin/sh\nshift 5\nexec \"$@\"\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn the_ssh_runner_captures_output_and_kills_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let runner = SshRunner::new(fake_ssh(dir.path()), Duration::from_secs(300));
    assert_eq!(runner.connect_timeout, 30);
    let host = Host::parse("h").unwrap();
    let say = ["sh", "-c", "echo '{\"writes\": 0}'; echo oops >&2; exit 3"].map(String::from);
    let facts = runner.run(&host, &say, Duration::from_secs(20)).await;
    assert_eq!(facts.code, Some(3));
    assert_eq!(facts.stdout.trim(), r#"{"writes": 0}"#);
    assert_eq!(facts.stderr.trim(), "oops");

    let started = Instant::now();
    let sleep = ["sleep", "600"].map(String::from);
    let facts = runner.run(&host, &sleep, Duration::from_millis(300)).await;
    assert!(facts.timed_out, "{facts:?}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let missing = SshRunner::new(
        dir.path().join("none").display().to_string(),
        Duration::ZERO,
    );
    assert_eq!(missing.connect_timeout, 1);
    let facts = missing.run(&host, &say, Duration::from_secs(5)).await;
    assert!(facts.spawn_error.unwrap().contains("DS01_SSH"));
}

/// OpenSSH's ControlPersist leaves a master behind that keeps the first ssh's stderr open:
/// the run is over when the process exits, with what it wrote. Before: timed out.
#[tokio::test]
async fn a_run_ends_with_its_process_though_another_holds_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let runner = SshRunner::new(fake_ssh(dir.path()), Duration::from_secs(300));
    let host = Host::parse("h").unwrap();
    let holder = dir.path().join("holder.pid");
    let script = format!(
        "echo '{{\"writes\": 0}}'; echo note >&2; sleep 60 </dev/null >/dev/null & echo $! > '{}'; exit 0",
        holder.display()
    );
    let run = ["sh".to_owned(), "-c".to_owned(), script];
    let facts = runner.run(&host, &run, Duration::from_secs(20)).await;
    let pid = std::fs::read_to_string(&holder).unwrap();
    let _ = std::process::Command::new("kill").arg(pid.trim()).status();
    assert!(!facts.timed_out, "{facts:?}");
    assert_eq!(facts.code, Some(0));
    assert_eq!(facts.stdout.trim(), r#"{"writes": 0}"#);
    assert_eq!(facts.stderr.trim(), "note");
}

#[test]
fn a_hosts_file_must_be_a_small_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hosts");
    std::fs::write(&file, "a\n# b\nroot@c\n").unwrap();
    assert_eq!(read_hosts_file(&file).unwrap(), hosts(&["a", "root@c"]));
    let e = read_hosts_file(dir.path()).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    let e = read_hosts_file(&dir.path().join("none"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("none") && e.contains("--hosts"), "{e}");
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let e = read_hosts_file(&fifo).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    std::fs::write(&file, "a\n-b\n").unwrap();
    let e = read_hosts_file(&file).unwrap_err();
    assert!(e.to_string().contains("hosts:2:"), "{e}");
    assert_eq!(e.exit_code(), Exit::Usage);
}
