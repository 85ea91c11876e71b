use serde_json::json;

use super::*;

fn host(s: &str) -> Host {
    Host::parse(s).unwrap()
}

#[test]
fn hosts_are_one_ssh_destination_each() {
    for good in [
        "gpu01",
        "root@gpu01",
        "admin@10.0.0.7",
        "[::1]",
        "gpu01.example.org",
    ] {
        assert_eq!(Host::parse(good).unwrap().as_str(), good);
    }
    assert_eq!(Host::parse(""), Err(HostError::Empty));
    for (bad, want) in [
        ("gpu 01", "whitespace"),
        ("gpu01\n", "whitespace"),
        ("-oProxyCommand=x", "starts with '-'"),
        ("root@-oProxyCommand=x", "starts with '-'"),
        ("a@b@c", "more than one '@'"),
        ("@gpu01", "empty user or host"),
        ("root@", "empty user or host"),
        ("a,b", "','"),
        ("fe80::1%eth0", "'%'"),
    ] {
        let e = Host::parse(bad).unwrap_err().to_string();
        assert!(e.contains(want), "{bad:?}: {e}");
        if !bad.contains('\n') {
            assert!(e.contains(bad), "names the host: {e}");
        }
    }
}

#[test]
fn the_remote_bus_address_is_what_systemctl_h_runs() {
    assert_eq!(
        remote_bus_address("ssh", &host("root@gpu01"), 7).unwrap(),
        "unixexec:path=ssh,argv1=-xT,argv2=-oBatchMode=yes,argv3=-oConnectTimeout=7,\
         argv4=--,argv5=root@gpu01,argv6=systemd-stdio-bridge"
    );
    assert!(remote_bus_address("/opt/my ssh", &host("a"), 1).is_ok());
    for bad in ["", "ssh,x", "ss%68", "ssh\n"] {
        let e = remote_bus_address(bad, &host("a"), 1).unwrap_err();
        assert!(e.to_string().contains("DS01_SSH"), "{e}");
    }
}

#[test]
fn ssh_gets_the_host_after_a_double_dash() {
    assert_eq!(
        ssh_args(
            &host("gpu01"),
            0,
            &["/usr/sbin/ds01-slices".into(), "verify".into()]
        ),
        [
            "-xT",
            "-oBatchMode=yes",
            "-oConnectTimeout=1",
            "--",
            "gpu01",
            "/usr/sbin/ds01-slices",
            "verify"
        ]
    );
}

#[test]
fn a_hosts_file_skips_comments_and_names_its_bad_lines() {
    let text = "# the GPU servers\n\ngpu01\n  root@gpu02   # the new one\n\t\n";
    assert_eq!(
        parse_hosts(text, "hosts").unwrap(),
        [host("gpu01"), host("root@gpu02")]
    );
    let e = parse_hosts("gpu01\n-x\n", "/etc/hosts.fleet").unwrap_err();
    assert!(
        e.to_string().starts_with("/etc/hosts.fleet:2: host \"-x\""),
        "{e}"
    );
    let e = parse_hosts("gpu01\ngpu02\ngpu01 # again\n", "f").unwrap_err();
    assert_eq!(
        e.to_string(),
        "f:3: gpu01 is listed twice (first on line 1); remove one"
    );
    let e = parse_hosts("# nothing\n\n", "f").unwrap_err();
    assert!(e.to_string().starts_with("f lists no hosts"), "{e}");
    assert_eq!(e.exit_code(), Exit::Usage);
}

#[test]
fn a_byte_order_mark_is_no_part_of_a_name_and_a_machine_is_listed_once() {
    assert_eq!(
        parse_hosts("\u{feff}gpu01\n\u{feff}root@gpu02\n", "hosts").unwrap(),
        [host("gpu01"), host("root@gpu02")]
    );
    for (text, line, first, earlier) in [
        ("hostA\nHOSTA\n", 2, 1, "hostA"),
        ("\u{feff}hostA\n# b\nroot@hostA\n", 3, 1, "hostA"),
        ("alice@gpu01\nbob@GPU01\n", 2, 1, "alice@gpu01"),
    ] {
        let e = parse_hosts(text, "f").unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "f:{line}: {} is the machine {earlier} of line {first} names",
                text.lines().nth(line - 1).unwrap()
            )),
            "{text:?}: {e}"
        );
        assert_eq!(e.exit_code(), Exit::Usage);
    }
    // Another machine, whatever the case of the user.
    assert_eq!(
        parse_hosts("Root@gpu01\nroot@gpu02\n", "f").unwrap().len(),
        2
    );
}

#[test]
fn remote_bins_are_plain_paths() {
    assert!(check_remote_bin("/usr/sbin/ds01-slices").is_ok());
    assert!(check_remote_bin("ds01-slices").is_ok());
    for bad in ["", "-x", "/bin/x;rm", "/a b", "$(x)"] {
        assert!(check_remote_bin(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn the_worst_exit_orders_ok_drift_failure_usage() {
    use Exit::*;
    assert_eq!(worst([]), Ok);
    assert_eq!(worst([Ok, Ok]), Ok);
    assert_eq!(worst([Ok, Drift, Ok]), Drift);
    assert_eq!(worst([Drift, Failure, Ok]), Failure);
    assert_eq!(worst([Failure, Usage, Drift]), Usage);
    assert_eq!(worst([Usage, Ok]), Usage);
}

fn facts(code: Option<i32>, stdout: &str, stderr: &str) -> RunFacts {
    RunFacts {
        code,
        stdout: stdout.into(),
        stderr: stderr.into(),
        ..Default::default()
    }
}

const APPLIED: &str = r#"{"dry_run": false, "slices_checked": 5, "writes": 3,
    "changes": [{"slice": "a", "set": [{"property": "CPUQuotaPerSecUSec"}]},
                {"slice": "b", "set": [1, 2]}, {"slice": "c", "set": []}],
    "refused": [], "failures": [], "kept": [], "bus": null}"#;

#[test]
fn an_apply_row_counts_writes_and_changed_slices() {
    let r = judge(
        host("a"),
        FleetCommand::Apply,
        false,
        &facts(Some(0), APPLIED, ""),
        1.5,
    );
    assert_eq!((r.exit, r.result.as_str()), (0, "changed 3"));
    assert_eq!(
        r.summary,
        json!({"writes": 3, "changes": 2, "refused": 0, "failures": 0})
    );
    assert_eq!(counts_text(&r.summary), "writes 3, changes 2");
    assert_eq!(r.report["slices_checked"], 5);
    assert_eq!(r.error, None);
    let r = judge(
        host("a"),
        FleetCommand::Apply,
        true,
        &facts(Some(0), APPLIED, ""),
        1.5,
    );
    assert_eq!(r.result, "would change 2");
    let none = r#"{"writes": 0, "changes": [], "refused": [], "failures": []}"#;
    let r = judge(
        host("a"),
        FleetCommand::Apply,
        false,
        &facts(Some(0), none, ""),
        0.1,
    );
    assert_eq!(r.result, "ok");
    // An apply that fell back to rendering drop-ins reports as render does.
    let rendered = r#"{"root": "/", "dry_run": false, "files": [{"slice": "a"}, {"slice": "b"}],
        "unchanged": 3, "dbus_drop_ins_removed": [], "shadowed": [], "reload": "ok"}"#;
    let r = judge(
        host("a"),
        FleetCommand::Apply,
        false,
        &facts(Some(0), rendered, ""),
        0.1,
    );
    assert_eq!(r.result, "changed 2");
    assert_eq!(r.summary["rendered"], true);
}

#[test]
fn a_verify_row_shows_drift_and_its_counts() {
    let report = r#"{"holds": false, "counts": {"slices": 4, "ok": 10, "drift": 1,
        "missing": 1, "stale": 0, "kernel_mismatch": 0, "kernel_unreadable": 0, "kept": 0,
        "errors": 0, "contradictions": 0, "not_holding": 2}, "slices": []}"#;
    let r = judge(
        host("b"),
        FleetCommand::Verify,
        false,
        &facts(Some(3), report, ""),
        2.0,
    );
    assert_eq!((r.exit, r.result.as_str()), (3, "drift 2"));
    assert_eq!(r.exit_code(), Exit::Drift);
    assert_eq!(r.summary["not_holding"], 2);
    assert_eq!(counts_text(&r.summary), "slices 4, drift 1, missing 1");
}

#[test]
fn failures_name_their_cause() {
    let down = "ssh: connect to host down port 22: Connection refused\n";
    let r = judge(
        host("down"),
        FleetCommand::Verify,
        false,
        &facts(Some(255), "", down),
        0.0,
    );
    assert_eq!((r.exit, r.result.as_str()), (1, "unreachable"));
    assert_eq!(r.error.as_deref(), Some(down.trim()));
    assert_eq!(r.report, Value::Null);
    assert_eq!(r.summary, json!({}));

    let bad = "\nds01-slices: error: /opt/ds01-infra/config/resource-limits.yaml: line 3\n";
    let r = judge(
        host("c"),
        FleetCommand::Apply,
        false,
        &facts(Some(2), "", bad),
        0.0,
    );
    assert_eq!((r.exit, r.result.as_str()), (2, "bad config"));
    assert_eq!(r.error.as_deref(), Some(bad.trim()));

    let timed_out = RunFacts {
        timed_out: true,
        ..Default::default()
    };
    let r = judge(host("h"), FleetCommand::Status, false, &timed_out, 3.0);
    assert_eq!((r.exit, r.result.as_str()), (1, "timed out"));

    let spawn = RunFacts {
        spawn_error: Some("cannot run ssh: not found".into()),
        ..Default::default()
    };
    let r = judge(host("h"), FleetCommand::Status, false, &spawn, 0.0);
    assert_eq!(
        (r.exit, r.error.as_deref()),
        (1, Some("cannot run ssh: not found"))
    );

    let r = judge(
        host("h"),
        FleetCommand::Verify,
        false,
        &facts(Some(127), "", "sh: 1: /usr/sbin/ds01-slices: not found"),
        0.0,
    );
    assert_eq!((r.exit, r.result.as_str()), (1, "not installed"));
    let r = judge(
        host("h"),
        FleetCommand::Verify,
        false,
        &facts(Some(42), "", ""),
        0.0,
    );
    assert_eq!((r.exit, r.error.as_deref()), (1, Some("exit code 42")));
    let r = judge(
        host("h"),
        FleetCommand::Verify,
        false,
        &facts(None, "", ""),
        0.0,
    );
    assert_eq!(r.exit, 1);
    // Exit 0 without a report is not a success: something else answered.
    let r = judge(
        host("h"),
        FleetCommand::Verify,
        false,
        &facts(Some(0), "hello", ""),
        0.0,
    );
    assert_eq!((r.exit, r.result.as_str()), (1, "failed"));
}

#[test]
fn a_status_row_counts_slices_with_drift_or_errors() {
    let report = json!({"slices": [
        {"slice": "a", "drift": {"MemoryMax": true, "TasksMax": false}, "error": null},
        {"slice": "b", "drift": {"MemoryMax": false}, "error": null},
        {"slice": "c", "drift": {}, "error": "no such unit"},
    ]})
    .to_string();
    let r = judge(
        host("s"),
        FleetCommand::Status,
        false,
        &facts(Some(0), &report, ""),
        0.0,
    );
    assert_eq!(r.summary, json!({"slices": 3, "drift": 1, "errors": 1}));
    assert_eq!(r.result, "ok");
}
