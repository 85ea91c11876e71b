//! The two worlds on a real systemd: rendered files and D-Bus drop-ins give the same live
//! values, a D-Bus value that contradicts a rendered one is reported with both files, and
//! switching between the backends leaves no contradicting files of ours.

use serde_json::Value;

use super::{contents, golden, ALICE, DROP_IN};
use crate::support::{live_values, sources, verify_slice, Run, World, EXAMPLE, PRODUCTION};

/// `--json verify` on `w`, with the exit code it must have.
fn verify_json(w: &World, code: i32) -> Value {
    w.json(&["--json", "verify"], code)
}

#[test]
fn render_and_reload_give_the_same_live_values_as_apply() {
    let Some((applied, rendered)) = World::two(PRODUCTION) else {
        return;
    };
    applied.expect(&["apply", "--backend", "dbus"], 0);
    let stdout = rendered.expect(&["render"], 0).stdout;
    assert!(stdout.contains("systemd reloaded"), "{stdout}");
    assert!(
        rendered
            .ds01_drop_ins("/etc/systemd/system.control")
            .is_empty(),
        "render wrote over D-Bus"
    );

    let va = verify_json(&applied, 0);
    let vb = verify_json(&rendered, 0);
    let (la, lb) = (live_values(&va), live_values(&vb));
    assert!(la.len() >= 19, "{la:?}");
    assert_eq!(la, lb, "apply and render+reload disagree");
    // Spot checks against systemd's own view.
    let h_baker = "ds01-student-h_baker.slice";
    for prop in ["MemoryMax", "MemoryHigh", "TasksMax", "CPUQuotaPerSecUSec"] {
        assert_eq!(
            applied.show(h_baker, prop),
            rendered.show(h_baker, prop),
            "{prop}"
        );
    }
    assert_eq!(rendered.show(h_baker, "MemoryMax"), "infinity");

    let rendered_file = format!("/etc/systemd/system/{ALICE}.d/{DROP_IN}");
    assert!(
        sources(&vb, ALICE).values().all(|f| f == &rendered_file),
        "{:?}",
        sources(&vb, ALICE)
    );
    assert!(
        sources(&va, ALICE)
            .values()
            .all(|f| f.starts_with(&format!("/etc/systemd/system.control/{ALICE}.d/50-"))),
        "{:?}",
        sources(&va, ALICE)
    );
    let text = rendered.expect(&["verify"], 0).stdout;
    assert!(
        text.contains(&format!("ok       MemoryMax=96G  (from {rendered_file})")),
        "{text}"
    );
}

#[test]
fn a_dbus_value_contradicting_a_rendered_one_is_reported_with_both_files() {
    let Some(w) = World::new(EXAMPLE) else { return };
    w.expect(&["render"], 0);
    w.expect(&["verify"], 0);
    w.set_property(ALICE, &["MemoryMax=64G"]);

    let dbus = format!("/etc/systemd/system.control/{ALICE}.d/50-MemoryMax.conf");
    let rendered = format!("/etc/systemd/system/{ALICE}.d/{DROP_IN}");
    let text = w.expect(&["verify"], 3).stdout;
    assert!(
        text.contains(&format!(
            "conflict MemoryMax: {dbus} (64G) shadows {rendered} (96G)"
        )),
        "{text}"
    );
    assert!(
        text.contains("MemoryMax: expected 96G, actual 64G"),
        "{text}"
    );
    let v = verify_json(&w, 3);
    let alice = verify_slice(&v, ALICE);
    assert_eq!(alice["shadowed"][0]["winner"], dbus.as_str());
    assert_eq!(alice["shadowed"][0]["loser"], rendered.as_str());
    assert_eq!(v["counts"]["contradictions"], 1);

    // Offline, from the files alone, too.
    let text = w.expect(&["verify", "--offline"], 3).stdout;
    assert!(text.contains("shadowed "), "{text}");
    assert!(text.contains("(64G) shadows"), "{text}");

    // Not set by ds01-slices: render leaves it, and says so.
    let stderr = w.expect(&["render"], 0).stderr;
    assert!(
        stderr.contains("it was not set by ds01-slices, so it stays"),
        "{stderr}"
    );
    assert!(w.sb.host_path(&dbus).exists());
    // Setting the configured value over D-Bus settles it; verify holds again.
    w.set_property(ALICE, &["MemoryMax=96G"]);
    w.expect(&["verify"], 0);
}

#[test]
fn switching_between_render_and_apply_leaves_no_contradicting_files_of_ours() {
    let Some(w) = World::new(PRODUCTION) else {
        return;
    };
    let control = "/etc/systemd/system.control";
    let units = "/etc/systemd/system";

    w.expect(&["render"], 0);
    let after_render = live_values(&verify_json(&w, 0));
    let rendered_files = w.ds01_drop_ins(units);
    assert_eq!(
        rendered_files.len(),
        contents(&golden("production")).len(),
        "{rendered_files:?}"
    );

    // apply (auto: systemd answers, so D-Bus) takes the rendered files over.
    let stderr = w.expect(&["apply"], 0).stderr;
    assert!(stderr.contains("(now set over D-Bus)"), "{stderr}");
    assert_eq!(
        w.ds01_drop_ins(units),
        Vec::<String>::new(),
        "rendered files left"
    );
    assert!(!w.ds01_drop_ins(control).is_empty());
    let after_apply = verify_json(&w, 0);
    assert_eq!(live_values(&after_apply), after_render);
    for s in after_apply["slices"].as_array().unwrap() {
        assert_eq!(s["shadowed"], Value::Array(vec![]), "{s}");
    }
    // A second apply has nothing left to take over or write.
    let Run { stdout, stderr, .. } = w.expect(&["apply"], 0);
    assert!(stdout.contains("nothing to do"), "{stdout}");
    assert!(!stderr.contains("now set over D-Bus"), "{stderr}");

    // And back: render removes the D-Bus drop-ins ds01-slices wrote, and its records.
    let stdout = w.expect(&["render"], 0).stdout;
    assert!(stdout.contains("set over D-Bus by ds01-slices"), "{stdout}");
    assert_eq!(
        w.ds01_drop_ins(control),
        Vec::<String>::new(),
        "D-Bus drop-ins left"
    );
    assert_eq!(w.ds01_drop_ins(units), rendered_files);
    let owned: Vec<String> = w.records().into_keys().collect();
    assert!(owned.is_empty(), "ownership records left: {owned:?}");
    assert_eq!(live_values(&verify_json(&w, 0)), after_render);
    w.expect(&["verify", "--offline"], 0);
}
