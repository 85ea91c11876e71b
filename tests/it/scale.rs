//! The fast apply (a holder unit keeping every slice loaded, pipelined calls) must leave
//! systemd exactly as the simple strategy does: one SetUnitProperties per slice, in order.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::time::Duration;

use ds01_slices::diff;
use ds01_slices::plan::SliceSpec;
use ds01_slices::systemd::{BusSystemd, Systemd, WriteMode};

use crate::support::{user_names, World, EXAMPLE};

const USERS: usize = 300;

fn write_config(w: &World) {
    let users = user_names(USERS);
    let (mut student, mut researcher, mut admin) = (Vec::new(), Vec::new(), Vec::new());
    for (i, u) in users.iter().enumerate() {
        match i % 10 {
            0 => admin.push(u.as_str()),
            1..=3 => researcher.push(u.as_str()),
            _ => student.push(u.as_str()),
        }
    }
    w.write("groups/student.members", &student.join("\n"));
    w.write("groups/researcher.members", &researcher.join("\n"));
    w.write("groups/admin.members", &admin.join("\n"));
    w.write("groups/faculty.members", "");
    w.write(
        "user-overrides.yaml",
        "user00004:\n  aggregate:\n    memory_max: infinity\n",
    );
}

/// The plan, from the library itself (the same one the binary computes).
fn plan(w: &World) -> Vec<SliceSpec> {
    let config = ds01_slices::config::load(&w.config()).unwrap();
    ds01_slices::plan::plan(&config).unwrap().slices
}

/// The sandbox's D-Bus drop-ins: "<unit>.d/<file>" → contents.
fn control_files(w: &World) -> BTreeMap<String, String> {
    w.drop_ins("/etc/systemd/system.control")
        .into_iter()
        .map(|(k, p)| (k, fs::read_to_string(p).unwrap()))
        .collect()
}

#[test]
fn fast_apply_leaves_the_same_state_as_one_call_per_slice_at_300_users() {
    let Some(fast) = World::new(EXAMPLE) else {
        return;
    };
    let Some(simple) = World::new(EXAMPLE) else {
        return;
    };
    write_config(&fast);
    write_config(&simple);
    let plan = plan(&fast);
    assert!(plan.len() > USERS);

    let report = fast.json(&["apply", "--json"], 0);
    assert!(
        report["bus"]["max_in_flight"].as_u64().unwrap() <= 64,
        "{}",
        report["bus"]
    );
    assert!(
        report["bus"]["max_pinned"].as_u64().unwrap() <= 128,
        "{}",
        report["bus"]
    );

    // The simple strategy: one slice at a time, read, compare, one call with what differs.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sd = BusSystemd::connect(Some(&simple.sb.bus_address()), Duration::from_secs(60))
            .await
            .unwrap();
        let none = BTreeSet::new();
        for spec in &plan {
            let live = sd.read_slice(&spec.slice).await.unwrap();
            if let Some(change) = diff::diff(Some(spec), &live, &none) {
                if change.writes() {
                    sd.set_properties(&spec.slice, WriteMode::Persistent, &change.properties())
                        .await
                        .unwrap();
                }
            }
        }
    });

    // The same drop-in files, byte for byte...
    let fast_files = control_files(&fast);
    let simple_files = control_files(&simple);
    let differing: Vec<&String> = fast_files
        .keys()
        .chain(simple_files.keys())
        .filter(|k| fast_files.get(*k) != simple_files.get(*k))
        .collect();
    assert!(differing.is_empty(), "drop-ins differ: {differing:?}");
    assert!(fast_files.len() >= 4 * (USERS * 9 / 10));
    // ...and the same live values, every property of every slice, read back over the bus.
    rt.block_on(async {
        let a = BusSystemd::connect(Some(&fast.sb.bus_address()), Duration::from_secs(60))
            .await
            .unwrap();
        let b = BusSystemd::connect(Some(&simple.sb.bus_address()), Duration::from_secs(60))
            .await
            .unwrap();
        for spec in &plan {
            let slice = &spec.slice;
            let (x, y) = (
                a.read_slice(slice).await.unwrap(),
                b.read_slice(slice).await.unwrap(),
            );
            assert_eq!(x.values, y.values, "{slice}");
        }
        // No holder unit is left behind.
        assert!(a.stale_holders().await.unwrap().is_empty());
    });
    fast.expect(&["verify"], 0);
    simple.expect(&["verify"], 0);
}
