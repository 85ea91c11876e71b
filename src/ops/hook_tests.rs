//! The hook's admission with a fake systemd: what it decides when the user's usage cannot be
//! read (the policy), and that a request is measured against the limits it has just made hold.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::config::parse_texts;
use crate::model::live::UnitState;
use crate::model::names::UserName;
use crate::model::property::BusValue;

const MAIN: &str = "default_group: student\ngroups:\n  student:\n    aggregate:\n      cpu_quota: \"200%\"\n      memory_max: 4G\n      tasks_max: 100\n";

/// Every slice active and already as planned, the user's slice using `memory` and `tasks`
/// (`None`: systemd does not say).
struct Fake {
    slices: BTreeMap<SliceName, LiveSlice>,
}

impl Fake {
    fn new(target: &HookTarget, memory: Option<u64>, tasks: Option<u64>) -> Fake {
        let slices = plan::plan_hook(target)
            .slices
            .into_iter()
            .map(|spec| {
                let user = spec.slice == target.slice;
                let live = LiveSlice {
                    slice: spec.slice.clone(),
                    load_state: "loaded".into(),
                    active_state: "active".into(),
                    control_group: Some(format!("/{}", spec.slice)),
                    memory_current: if user { memory } else { Some(1 << 20) },
                    tasks_current: if user { tasks } else { Some(1) },
                    cpu_usage_nsec: Some(0),
                    values: spec.properties.iter().collect(),
                    drop_in_paths: vec![],
                };
                (spec.slice, live)
            })
            .collect();
        Fake { slices }
    }
}

impl Systemd for Fake {
    async fn read_slice(&self, slice: &SliceName) -> Result<LiveSlice, BusError> {
        Ok(self.slices[slice].clone())
    }
    async fn read_unit_state(&self, _: &SliceName) -> Result<UnitState, BusError> {
        Ok(UnitState {
            active_state: "active".into(),
            drop_in_paths: vec![],
        })
    }
    async fn set_properties(
        &self,
        slice: &SliceName,
        _: WriteMode,
        _: &[(Property, BusValue)],
    ) -> Result<(), BusError> {
        panic!("{slice} is as planned: nothing to write")
    }
    async fn loaded_slices(&self) -> Result<Vec<SliceName>, BusError> {
        Ok(self.slices.keys().cloned().collect())
    }
    async fn pin(&self, _: &SliceName) -> Result<(), BusError> {
        Ok(())
    }
    async fn unpin(&self, _: &SliceName) -> Result<(), BusError> {
        Ok(())
    }
    async fn reload(&self) -> Result<(), BusError> {
        Ok(())
    }
}

fn alice() -> HookTarget {
    let config = parse_texts(
        Path::new("/c/r.yaml"),
        MAIN,
        &[("student", "alice\n")],
        None,
    )
    .unwrap();
    HookTarget::from_config(&config, &UserName::new("alice").unwrap()).unwrap()
}

/// The hook of alice's container asking for `memory`, against `fake`, with `policy`.
fn admit(
    fake: &Fake,
    memory: Option<u64>,
    policy: Policy,
) -> Result<(SliceName, ApplyReport), HookError> {
    let target = alice();
    // The user's cgroup exists, so the hook reads the slice rather than writing it unread.
    let cgroups = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(
        cgroups
            .path()
            .join("ds01.slice/ds01-student.slice")
            .join(target.slice.as_str()),
    )
    .unwrap();
    let opts = HookOptions {
        mode: WriteMode::Persistent,
        cgroup_root: cgroups.path(),
        admission: Some((
            Request {
                memory_bytes: memory,
                pids: None,
            },
            policy,
        )),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    rt.block_on(hook(fake, &target, &Ownership::new(state.path()), opts))
}

#[test]
fn usage_systemd_does_not_give_admits_with_a_warning_by_default_and_refuses_when_strict() {
    let target = alice();
    let fake = Fake::new(&target, None, Some(3));

    let (slice, report) = admit(&fake, Some(1 << 30), Policy::Allow).unwrap();
    assert_eq!(slice, target.slice);
    let warning = report
        .notes
        .iter()
        .find(|n| n.starts_with("warning: could not read"))
        .unwrap_or_else(|| panic!("no warning in {:?}", report.notes));
    assert!(warning.contains("--strict"), "{warning}");
    assert!(warning.contains(target.slice.as_str()), "{warning}");

    match admit(&fake, Some(1 << 30), Policy::Strict) {
        Err(HookError::Refused { slice, finding, .. }) => {
            assert_eq!(slice, target.slice);
            assert!(matches!(finding, Finding::Unread { .. }), "{finding:?}");
        }
        other => panic!("strict admitted an unread slice: {other:?}"),
    }
    // Without a request, what is in use is still measured against MemoryMax: strict refuses.
    assert!(matches!(
        admit(&fake, None, Policy::Strict),
        Err(HookError::Refused { .. })
    ));
    assert!(admit(&fake, None, Policy::Allow).is_ok());
}

#[test]
fn a_request_is_measured_against_the_limit_the_hook_makes_hold() {
    let target = alice();
    // 3G in use of alice's 4G.
    let fake = Fake::new(&target, Some(3 << 30), Some(3));
    assert!(admit(&fake, Some(512 << 20), Policy::Strict).is_ok());
    match admit(&fake, Some(2 << 30), Policy::Allow) {
        Err(HookError::Refused { finding, .. }) => assert_eq!(
            finding,
            Finding::MemoryOver {
                in_use: 3 << 30,
                requested: 2 << 30,
                limit: 4 << 30
            }
        ),
        other => panic!("3G + 2G admitted under a 4G MemoryMax: {other:?}"),
    }
}
