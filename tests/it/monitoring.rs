//! The alert rules (contrib/prometheus/) and the Grafana dashboard (contrib/grafana/) shipped in
//! the package: promtool checks the rules and runs their unit tests (each alert fires when it
//! should and stays quiet when it should not); and every query of the rules and the dashboard
//! (a) parses, (b) uses only metrics the real `metrics` output has, and (c) answers from a real
//! Prometheus that scrapes `serve` and evaluates the rules, with a memory hog, a fork loop, a
//! busy loop, an OOM kill, drift, a failed apply and a container outside its slice on a real
//! systemd. The queries and their metric names come from the files, never from a list here.
//! Prometheus and promtool come from `.ci/prometheus` on the host (the VM has neither; there
//! these tests return: the readings behind the exposition are `counters::`' and `status::`').

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::containers::start_scope;
use crate::support::prometheus::{self, free_port, Prometheus};
use crate::support::promql::{metric_name, selectors};
use crate::support::{ok_stdout, wait_until, Run, Scratch, World, EXAMPLE, MANIFEST_DIR};

const RULES: &str = "contrib/prometheus/ds01-slices.rules.yml";
const RULE_TESTS: &str = "contrib/prometheus/ds01-slices.rules.test.yml";
const DASHBOARD: &str = "contrib/grafana/ds01-slices.dashboard.json";
/// The scrape job the rules expect (DS01ExporterDown).
const JOB: &str = "ds01-slices";
/// The dashboard's user variable in this test.
const USER: &str = "alice";

fn repo(rel: &str) -> PathBuf {
    Path::new(MANIFEST_DIR).join(rel)
}

fn yaml(rel: &str) -> serde_yaml::Value {
    let text = std::fs::read_to_string(repo(rel)).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every alert of the rules file: (name, expression, the whole rule).
fn alerts() -> Vec<(String, String, serde_yaml::Value)> {
    let rules = yaml(RULES);
    let mut out = Vec::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"]
                .as_str()
                .expect("only alerts, no recording rules");
            let expr = rule["expr"].as_str().unwrap();
            out.push((name.to_owned(), expr.to_owned(), rule.clone()));
        }
    }
    out
}

/// Every query of the dashboard: (where it is, the query). A variable's
/// `label_values(SELECTOR, label)` is its selector.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo(DASHBOARD)).unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"));
    let mut out = Vec::new();
    fn panels(list: &Value, out: &mut Vec<(String, String)>) {
        for p in list.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push((
                        format!("panel {:?}", p["title"].as_str().unwrap()),
                        expr.to_owned(),
                    ));
                }
            }
            panels(&p["panels"], out);
        }
    }
    panels(&dash["panels"], &mut out);
    for v in dash["templating"]["list"].as_array().unwrap() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.rsplit_once(','))
            .map(|(sel, _)| sel.trim())
            .unwrap_or_else(|| {
                panic!(
                    "variable {}: {q:?} is not label_values(SELECTOR, label)",
                    v["name"]
                )
            });
        out.push((format!("variable {}", v["name"]), inner.to_owned()));
    }
    assert!(
        out.len() > 20,
        "too few queries found in {DASHBOARD}: {out:#?}"
    );
    out
}

/// Grafana's variables as this test sets them.
fn substitute(expr: &str) -> String {
    let s = expr
        .replace("$__rate_interval", "1m")
        .replace("$instance", ".*")
        .replace("$user", USER);
    assert!(
        !s.contains('$'),
        "a variable the test does not know in {expr:?}"
    );
    s
}

/// (where, query) of every rule and dashboard query, variables set.
fn all_queries() -> Vec<(String, String)> {
    alerts()
        .into_iter()
        .map(|(name, expr, _)| (format!("alert {name}"), expr))
        .chain(dashboard_queries())
        .map(|(at, q)| (at, substitute(&q)))
        .collect()
}

fn promtool(args: &[&str], dir: &Path) -> Run {
    Run::of(
        Command::new(prometheus::bin("promtool"))
            .args(args)
            .current_dir(dir),
    )
}

#[test]
fn the_rules_pass_promtool_and_each_alert_fires_in_its_unit_test() {
    if !prometheus::available_or_skip() {
        return;
    }
    let dir = repo("contrib/prometheus");
    let check = promtool(&["check", "rules", "ds01-slices.rules.yml"], &dir);
    assert_eq!(check.code, Some(0), "{check}");
    let test = promtool(&["test", "rules", "ds01-slices.rules.test.yml"], &dir);
    assert_eq!(test.code, Some(0), "{test}");
    assert!(test.stdout.contains("SUCCESS"), "{test}");

    // Each alert has a case that makes it fire, and says who, what and what to do.
    let tests = yaml(RULE_TESTS);
    let mut fired = BTreeSet::new();
    for case in tests["tests"].as_sequence().unwrap() {
        for t in case["alert_rule_test"].as_sequence().into_iter().flatten() {
            let firing = t["exp_alerts"].as_sequence().is_some_and(|a| !a.is_empty());
            if firing {
                fired.insert(t["alertname"].as_str().unwrap().to_owned());
            }
        }
    }
    for (name, _, rule) in alerts() {
        assert!(fired.contains(&name), "{name} never fires in {RULE_TESTS}");
        for key in ["summary", "description"] {
            let text = rule["annotations"][key].as_str().unwrap_or_default();
            assert!(text.len() > 30, "{name}: {key} {text:?}");
        }
        assert!(
            rule["labels"]["severity"].as_str().is_some(),
            "{name} has no severity"
        );
    }

    // (a) Every query of the rules and the dashboard parses: promtool checks each as a
    // recording rule's expression.
    let queries = all_queries();
    let scratch = Scratch::new("promql");
    let mut file = String::from("groups:\n  - name: queries\n    rules:\n");
    for (n, (_, q)) in queries.iter().enumerate() {
        file.push_str(&format!(
            "      - record: ds01_test:query_{n}\n        expr: {}\n",
            serde_json::to_string(q).unwrap()
        ));
    }
    scratch.write("queries.yml", &file);
    let parsed = promtool(&["check", "rules", "queries.yml"], &scratch.join(""));
    let listing: Vec<String> = queries
        .iter()
        .enumerate()
        .map(|(n, (at, q))| format!("{n}: {at}: {q}"))
        .collect();
    assert_eq!(
        parsed.code,
        Some(0),
        "{parsed}\nthe queries:\n{}",
        listing.join("\n")
    );
    assert!(
        parsed
            .stdout
            .contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{parsed}"
    );
}

/// The samples of a query's result.
fn count(result: &Value) -> usize {
    result.as_array().map_or(0, Vec::len)
}

#[test]
fn every_query_uses_exported_metrics_and_answers_from_a_real_prometheus() {
    if !prometheus::available_or_skip() {
        return;
    }
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    // alice: near MemoryMax; dave: throttled at 1% of a CPU (held back in nearly every period,
    // however busy the machine); bob: OOM-killed; carol: near TasksMax.
    w.write(
        "user-overrides.yaml",
        "alice:\n  aggregate:\n    memory_max: 128M\n    memory_high: 128M\n    tasks_max: 64\n\
         dave:\n  aggregate:\n    cpu_quota: \"1%\"\n    tasks_max: 64\n\
         bob:\n  aggregate:\n    memory_max: 64M\n    memory_high: 64M\n    tasks_max: 64\n\
         carol:\n  aggregate:\n    memory_max: 256M\n    memory_high: 256M\n    tasks_max: 20\n",
    );
    w.add_members("student", &["bob", "carol", "dave"]);
    w.expect(&["apply"], 0);
    w.sb.start_memory_hog("hog.service", "ds01-student-alice.slice", 116)
        .unwrap();
    w.sb.start_busy_loop("busy.service", "ds01-student-dave.slice")
        .unwrap();
    let forks = w.sb.systemd_run(&[
        "--unit=forks.service",
        "--slice=ds01-student-carol.slice",
        "--",
        "sh",
        "-c",
        "for i in $(seq 18); do sleep infinity & done; wait",
    ]);
    ok_stdout("carol's forks", forks).unwrap();
    // Drift behind apply's back, and a container outside every user's slice.
    w.set_property("ds01-student-john_doe.slice", &["TasksMax=99"]);
    start_scope(
        &w,
        &format!("docker-{}.scope", "5ca1ab1e".repeat(8)),
        "ds01.slice",
    );
    // A full apply that fails (the file broken), then the file put back as it was, and so
    // newer than the last complete apply: the edit is not in force.
    let good = w.read("resource-limits.yaml");
    w.write("resource-limits.yaml", "groups: [\n");
    let failed = w.run(&["apply"]);
    assert_ne!(failed.code, Some(0), "{failed}");
    w.write("resource-limits.yaml", &good);
    std::fs::File::options()
        .append(true)
        .open(w.config())
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(60))
        .unwrap();

    let addr = format!("127.0.0.1:{}", free_port());
    let _serve = w.spawn(&["serve", "--listen", &addr, "--cache", "1"], false);
    let rules = repo(RULES);
    let prom = Prometheus::start_with(&addr, JOB, &[&rules]).unwrap();
    wait_until(Duration::from_secs(60), "Prometheus scrapes serve", || {
        prom.value(&format!("up{{job=\"{JOB}\"}}"))
            .filter(|v| v == "1")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", prom.log()));
    // bob's OOM kill, once Prometheus has seen his slice idle (as a container started later).
    wait_until(Duration::from_secs(30), "bob's slice seen idle", || {
        prom.value(r#"ds01_slice_active{user="bob"}"#)
            .filter(|v| v == "0")
    })
    .unwrap();
    w.sb.start_memory_hog("oom.service", "ds01-student-bob.slice", 100)
        .unwrap();

    // (b) Every metric a query uses is in the real output of `metrics` (declared: a family
    // may have no sample on this host, said in its HELP); `up` is Prometheus's own.
    let exposition = w.expect(&["metrics"], 0).stdout;
    let families: BTreeMap<&str, &str> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let queries = all_queries();
    let mut unknown = Vec::new();
    let mut used = BTreeSet::new();
    for (at, q) in &queries {
        let found = selectors(q);
        assert!(!found.is_empty(), "{at}: no selector in {q}");
        for sel in found {
            let name = metric_name(&sel)
                .unwrap_or_else(|| panic!("{at}: a selector without a metric name: {sel}"));
            if name != "up" && !families.contains_key(name) {
                unknown.push(format!("{at}: {name}"));
            }
            used.insert(sel);
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics the exposition does not have:\n{}\n--- the exposition:\n{exposition}",
        unknown.join("\n")
    );

    // (c) Each selector answers from Prometheus, but for the families this host cannot have
    // (cgroup v1: their HELP says "No sample on cgroup v1").
    let absent_here = |sel: &str| {
        let help = families
            .get(metric_name(sel).unwrap())
            .copied()
            .unwrap_or("");
        !w.sb.unified() && help.contains("No sample on cgroup v1")
    };
    let missing = wait_until(Duration::from_secs(90), "every selector answers", || {
        let missing: Vec<&String> = used
            .iter()
            .filter(|s| !absent_here(s) && count(&prom.query_result(s).unwrap()) == 0)
            .collect();
        missing.is_empty().then_some(())
    });
    if missing.is_err() {
        let empty: Vec<&String> = used
            .iter()
            .filter(|s| !absent_here(s) && prom.query(s).is_none_or(|r| count(&r) == 0))
            .collect();
        panic!("selectors with no data: {empty:#?}\n--- the exposition:\n{exposition}");
    }
    // Every query evaluates; every dashboard query shows data.
    let quiet_ok =
        |at: &str, q: &str| at.starts_with("alert ") || selectors(q).iter().any(|s| absent_here(s));
    let shown = wait_until(
        Duration::from_secs(60),
        "every dashboard query has data",
        || {
            let empty: Vec<String> = queries
                .iter()
                .filter(|(at, q)| {
                    let result = prom
                        .query_result(q)
                        .unwrap_or_else(|e| panic!("{at}: {q}: {e}"));
                    count(&result) == 0 && !quiet_ok(at, q)
                })
                .map(|(at, q)| format!("{at}: {q}"))
                .collect();
            empty.is_empty().then_some(())
        },
    );
    shown.unwrap_or_else(|e| panic!("{e}"));

    // The rules, loaded into this Prometheus: what this scene makes true is pending or firing,
    // for the user it is about; what it does not, is quiet.
    let expected: [(&str, &str, &str); 8] = [
        ("DS01UserNearMemoryMax", "user", "alice"),
        ("DS01CPUThrottled", "user", "dave"),
        ("DS01OOMKill", "user", "bob"),
        ("DS01UserNearTasksMax", "user", "carol"),
        ("DS01LimitDrift", "slice", "ds01-student-john_doe.slice"),
        ("DS01ApplyFailed", "job", JOB),
        ("DS01ConfigNotApplied", "job", JOB),
        ("DS01ContainerOutsideUserSlice", "slice", "ds01.slice"),
    ];
    let active = || -> Vec<Value> {
        let (_, body) = prometheus::get(&prom.addr, "/api/v1/alerts").unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"]["alerts"].as_array().cloned().unwrap_or_default()
    };
    let raised = wait_until(Duration::from_secs(90), "the scene's alerts raised", || {
        let now = active();
        expected
            .iter()
            .all(|(name, label, value)| {
                now.iter()
                    .any(|a| a["labels"]["alertname"] == *name && a["labels"][label] == *value)
            })
            .then_some(now)
    });
    let now = raised.unwrap_or_else(|e| panic!("{e}: {:#?}", active()));
    let names: BTreeSet<&str> = now
        .iter()
        .map(|a| a["labels"]["alertname"].as_str().unwrap())
        .collect();
    let all: BTreeSet<String> = alerts().into_iter().map(|(n, _, _)| n).collect();
    let quiet: Vec<&String> = all.iter().filter(|n| !names.contains(n.as_str())).collect();
    for n in [
        "DS01ExporterDown",
        "DS01ContainersUnaccounted",
        "DS01SliceReadErrors",
    ] {
        assert!(
            !names.contains(n),
            "{n} raised in a healthy scene: {now:#?}"
        );
    }
    for a in &now {
        eprintln!(
            "alert: {} ({}): {}",
            a["labels"]["alertname"].as_str().unwrap(),
            a["state"].as_str().unwrap(),
            a["annotations"]["summary"].as_str().unwrap()
        );
    }
    eprintln!(
        "alerts quiet in this scene (each fires in {RULE_TESTS}): {quiet:?}; {} queries, {} selectors checked",
        queries.len(),
        used.len()
    );
}
