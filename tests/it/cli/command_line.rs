//! The command line itself: the README's first command, global options anywhere, the
//! DS01_CONFIG stand-in, `--help` for every subcommand, usage errors and a failed write.

use std::fs;

use serde_json::Value;

use super::{ok, production, run};
use crate::support::{ds01, Run, MANIFEST_DIR};

#[test]
fn bundled_example_config_plans() {
    // Exactly the README's first command, from the repository root.
    let out = Run::of(
        ds01(&["plan", "--config", "config/resource-limits.yaml"]).current_dir(MANIFEST_DIR),
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.starts_with("SLICE "), "{out}");
    assert!(
        out.stdout.lines().any(|l| l.starts_with("ds01.slice ")),
        "{out}"
    );

    let out = Run::of(
        ds01(&["plan", "--config", "config/resource-limits.yaml", "--json"])
            .current_dir(MANIFEST_DIR),
    );
    assert_eq!(out.code, Some(0), "{out}");
    let plan: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{out}"));
    let slices = plan["slices"].as_array().unwrap();
    assert_eq!(slices[0]["slice"], "ds01.slice");
    assert!(slices.iter().any(|s| s["kind"] == "user"), "{plan:#}");
}

#[test]
fn global_options_go_before_or_after_the_subcommand() {
    let config = production();
    let reference = ok(&["plan", "--config", &config, "--json"]);
    for args in [
        vec!["--config", &config, "--json", "plan"],
        vec!["--json", "--config", &config, "plan"],
        vec!["--config", &config, "plan", "--json"],
        vec!["--json", "plan", "--config", &config],
        vec!["plan", "--json", "--config", &config],
        vec![&format!("--config={config}"), "plan", "--json"],
    ] {
        assert_eq!(ok(&args), reference, "{args:?}");
    }
    let show = ok(&["show", "maria.garcia", "--config", &config]);
    assert_eq!(ok(&["--config", &config, "show", "maria.garcia"]), show);

    // DS01_CONFIG stands in for --config; --config wins over it.
    let out = Run::of(ds01(&["plan", "--json"]).env("DS01_CONFIG", &config));
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), reference.as_str()),
        "{out}"
    );
    let out = Run::of(
        ds01(&["plan", "--json", "--config", &config])
            .env("DS01_CONFIG", "/nonexistent/ds01/resource-limits.yaml"),
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), reference.as_str()),
        "{out}"
    );
}

/// The subcommands `--help` lists under "Commands:" (without clap's `help`).
fn commands_in(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect()
}

/// Every subcommand path of the binary, nested ones included (`hook start`), found by
/// following `--help`, so that subcommands added later are covered too.
fn subcommand_paths() -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut todo: Vec<Vec<String>> = commands_in(&ok(&["--help"]))
        .into_iter()
        .map(|c| vec![c])
        .collect();
    while let Some(path) = todo.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        for child in commands_in(&ok(&args)) {
            let mut child_path = path.clone();
            child_path.push(child);
            todo.push(child_path);
        }
        paths.push(path);
    }
    for required in ["show", "plan", "check-config"] {
        assert!(
            paths.iter().any(|p| p == &[required]),
            "--help does not list {required}: {paths:?}"
        );
    }
    paths
}

#[test]
fn help_works_everywhere() {
    let top = ok(&["--help"]);
    assert!(
        top.contains("Usage: ds01-slices [OPTIONS] <COMMAND>"),
        "{top}"
    );
    assert!(
        top.contains("Exit codes"),
        "--help should list the exit codes:\n{top}"
    );
    for args in [&["-h"][..], &["help"]] {
        assert!(ok(args).contains("Usage: ds01-slices"), "{args:?}");
    }
    for path in subcommand_paths() {
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        let usage = format!("Usage: ds01-slices {}", path.join(" "));
        let help_first: Vec<&str> = std::iter::once("help")
            .chain(path.iter().copied())
            .collect();
        for args in [
            [&path[..], &["--help"]].concat(),
            [&path[..], &["-h"]].concat(),
            help_first,
        ] {
            let out = run(&args);
            assert_eq!(out.code, Some(0), "{args:?}: {out}");
            assert!(out.stdout.contains(&usage), "{args:?}: {out}");
            // Global options are accepted after every subcommand, so its help lists them.
            assert!(out.stdout.contains("--config <PATH>"), "{args:?}: {out}");
            assert!(out.stdout.contains("--json"), "{args:?}: {out}");
        }
    }
    let version = ok(&["--version"]);
    assert_eq!(
        version,
        format!("ds01-slices {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn usage_errors_exit_2() {
    let config = production();
    let cases: [&[&str]; 8] = [
        &[],
        &["frobnicate"],
        &["show"],
        &["plan", "--bogus"],
        &["plan", "--user"],
        &["--json"],
        &["show", "alice", "extra", "--config", &config],
        &["check-config", "--config"],
    ];
    for args in cases {
        let out = run(args);
        assert_eq!(out.code, Some(2), "{args:?}: {out}");
        assert!(out.stdout.is_empty(), "{args:?}: {out}");
        assert!(!out.stderr.is_empty(), "{args:?}: {out}");
    }
    // A user name that cannot become a slice is bad usage too.
    for args in [
        vec!["show", "@hertie-school.lan", "--config", &config],
        vec!["plan", "--user", "...", "--config", &config],
    ] {
        let out = run(&args);
        assert_eq!(out.code, Some(2), "{args:?}: {out}");
        assert!(
            out.stderr.contains("nothing left after sanitization"),
            "{args:?}: {out}"
        );
    }
    let out = run(&["plan", "--user", "", "--config", &config]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("user name is empty"), "{out}");
}

#[test]
fn a_failed_write_exits_1() {
    // Runtime failure (not the user's input): stdout cannot be written.
    let Ok(full) = fs::OpenOptions::new().write(true).open("/dev/full") else {
        eprintln!("skipped: no /dev/full on this machine");
        return;
    };
    let mut cmd = ds01(&["plan", "--config", &production()]);
    cmd.stdout(full);
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot write to stdout"));
}

/// `status --watch` below its floor is refused before anything is read: any user can run it,
/// and a round every 0.1 s kept systemd (PID 1) at 26-43% of a CPU. `timeout` ends a run that
/// would poll instead (what it did before: exit 137 after printing a round's error 10 times a
/// second).
#[test]
fn status_watch_below_its_floor_is_refused() {
    let config = format!("{MANIFEST_DIR}/config/resource-limits.yaml");
    for watch in ["0", "0.5", "0.999"] {
        let mut cmd = std::process::Command::new("timeout");
        cmd.args(["-s", "KILL", "20", crate::support::BIN]);
        crate::support::clear_tool_env(&mut cmd)
            .args(["status", "--watch", watch, "--config", &config])
            .args(["--bus", "unix:path=/nonexistent/ds01-no-bus"])
            .stdin(std::process::Stdio::null());
        let out = Run::of(&mut cmd);
        assert_eq!(out.code, Some(2), "--watch {watch}: {out}");
        assert!(
            out.stderr
                .contains(&format!("--watch {watch} is below the 1 s floor"))
                && !out.stderr.contains("system bus"),
            "--watch {watch}: {out}"
        );
    }
}
