use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::cgroupfs::controllers::{Controllers, Listing, V1Hierarchy, V2Facts, V2Slice, NEEDED};
use crate::model::names::SliceName;

fn set(names: &str) -> Listing {
    Ok(names
        .split_whitespace()
        .map(String::from)
        .collect::<BTreeSet<_>>())
}

fn v1(mounted: &[&'static str], realized: bool) -> Controllers {
    Controllers::V1(
        NEEDED
            .iter()
            .map(|&c| V1Hierarchy {
                controller: c,
                mount: mounted
                    .contains(&c)
                    .then(|| PathBuf::from(format!("/cg/{c}"))),
                slice_realized: realized && mounted.contains(&c),
            })
            .collect(),
    )
}

fn v2(root: &str, slice: Option<(&str, &str, bool)>) -> Controllers {
    Controllers::V2(V2Facts {
        root: PathBuf::from("/cg"),
        root_controllers: set(root),
        root_subtree_control: set(""),
        slice: slice.map(|(controllers, subtree, children)| V2Slice {
            dir: PathBuf::from("/cg/ds01.slice"),
            controllers: set(controllers),
            subtree_control: set(subtree),
            children_realized: children,
        }),
    })
}

fn alice() -> Vec<SliceName> {
    vec![SliceName::parse("ds01-student-alice.slice").unwrap()]
}

#[test]
fn memory_high_on_v1_fails_only_when_configured() {
    let facts = v1(&NEEDED, true);
    let f = memory_high(Some(&facts), Some(&alice()));
    assert_eq!(f.status, Status::Fail);
    assert!(
        f.found.contains("MemoryHigh not enforced: cgroup v1"),
        "{f:?}"
    );
    assert!(f.found.contains("ds01-student-alice.slice"), "{f:?}");
    assert!(f
        .fix
        .unwrap()
        .contains("systemd.unified_cgroup_hierarchy=1"));
    assert_eq!(memory_high(Some(&facts), Some(&[])).status, Status::Ok);
    assert_eq!(memory_high(Some(&facts), None).status, Status::Warning);
}

#[test]
fn memory_high_on_v2_is_enforced_with_the_memory_controller() {
    let realized = v2(
        "cpu memory pids",
        Some(("cpu memory pids", "cpu memory pids", true)),
    );
    let f = memory_high(Some(&realized), Some(&alice()));
    assert_eq!(f.status, Status::Ok);
    assert!(f.found.starts_with("MemoryHigh enforced"), "{f:?}");
    let unrealized = v2("cpu memory pids", None);
    assert_eq!(
        memory_high(Some(&unrealized), Some(&alice())).status,
        Status::Ok
    );
    let no_memory = v2("cpu pids", Some(("cpu pids", "cpu pids", true)));
    assert_eq!(
        memory_high(Some(&no_memory), Some(&alice())).status,
        Status::Fail
    );
    assert_eq!(memory_high(Some(&no_memory), Some(&[])).status, Status::Ok);
}

#[test]
fn v1_controllers_need_their_hierarchies() {
    let root = Path::new("/cg");
    let f = cgroup(root, Some(&v1(&NEEDED, false)));
    assert_eq!(f[0].status, Status::Warning);
    assert!(f[0].found.starts_with("cgroup v1"));
    assert_eq!(f[1].status, Status::Ok);
    assert!(
        f[1].found.contains("ds01.slice not realized yet"),
        "{:?}",
        f[1]
    );
    let f = cgroup(root, Some(&v1(&["cpu", "memory"], true)));
    assert_eq!(f[1].status, Status::Fail);
    assert!(f[1].found.contains("no pids hierarchy"), "{:?}", f[1]);
    let none = cgroup(root, None);
    assert_eq!(none.len(), 1);
    assert_eq!(none[0].status, Status::Fail);
}

#[test]
fn v2_controllers_must_reach_ds01_slice_and_its_children() {
    let root = Path::new("/cg");
    let judge = |c: &Controllers| cgroup(root, Some(c)).remove(1);
    let all = "cpu memory pids";
    let ok = judge(&v2(all, Some((all, all, true))));
    assert_eq!(ok.status, Status::Ok, "{ok:?}");
    assert!(ok.found.contains("enables cpu memory pids"), "{ok:?}");
    // Not passed on to children that do not run yet: systemd does that when they start.
    assert_eq!(
        judge(&v2(all, Some((all, "memory", false)))).status,
        Status::Ok
    );
    let f = judge(&v2(all, Some((all, "memory", true))));
    assert_eq!(f.status, Status::Fail);
    assert!(f.found.contains("cpu, pids not enabled"), "{f:?}");
    let f = judge(&v2(all, Some(("memory pids", "memory pids", true))));
    assert_eq!(f.status, Status::Fail);
    assert!(f.found.contains("cpu not available"), "{f:?}");
    // Not realized: what the root offers decides.
    let f = judge(&v2(all, None));
    assert_eq!(f.status, Status::Ok);
    assert!(f.found.contains("not realized yet"), "{f:?}");
    assert_eq!(judge(&v2("memory pids", None)).status, Status::Fail);
}

#[test]
fn docker_driver_comes_from_info_then_daemon_json_then_the_default() {
    let json = Path::new("/r/etc/docker/daemon.json");
    let (f, d) = docker(
        &Info::Driver("systemd".into(), Default::default()),
        json,
        &DaemonJson::Driver("cgroupfs".into()),
        Some(Layout::V1),
        true,
    );
    assert_eq!(f.status, Status::Ok);
    assert!(d.unwrap().source.starts_with("docker info"));

    let down = Info::Failed("Cannot connect to the Docker daemon".into());
    let (f, d) = docker(
        &down,
        json,
        &DaemonJson::Driver("cgroupfs".into()),
        Some(Layout::V2),
        true,
    );
    assert_eq!(f.status, Status::Fail);
    assert!(f.fix.unwrap().contains("native.cgroupdriver=systemd"));
    let d = d.unwrap();
    assert_eq!(d.driver, "cgroupfs");
    assert!(d.source.starts_with("/r/etc/docker/daemon.json"), "{d:?}");
    assert!(d.source.contains("Cannot connect"), "{d:?}");

    let default = |layout, systemd_up| {
        docker(&down, json, &DaemonJson::Missing, layout, systemd_up)
            .1
            .unwrap()
    };
    let d = default(Some(Layout::V1), true);
    assert_eq!(d.driver, "cgroupfs");
    assert!(
        d.source.starts_with("Docker's default on cgroup v1"),
        "{d:?}"
    );
    assert_eq!(default(Some(Layout::V2), true).driver, "systemd");
    assert_eq!(default(Some(Layout::V2), false).driver, "cgroupfs");
    let (f, _) = docker(
        &Info::TimedOut(Duration::from_secs(5)),
        json,
        &DaemonJson::NoDriver,
        Some(Layout::V2),
        true,
    );
    assert_eq!(f.status, Status::Ok);
    assert!(f.found.contains("no answer within 5 s"), "{f:?}");
}

#[test]
fn docker_missing_is_a_warning_and_a_broken_daemon_json_a_failure() {
    let json = Path::new("/etc/docker/daemon.json");
    let (f, d) = docker(
        &Info::NotInstalled,
        json,
        &DaemonJson::Missing,
        Some(Layout::V2),
        true,
    );
    assert_eq!((f.status, d), (Status::Warning, None));
    assert!(f.found.starts_with("Docker not found"), "{f:?}");
    let (f, _) = docker(
        &Info::NotInstalled,
        json,
        &DaemonJson::Invalid("not valid JSON".into()),
        Some(Layout::V2),
        true,
    );
    assert_eq!(f.status, Status::Fail);
}

#[test]
fn the_state_dir_must_be_roots_real_directory() {
    let p = Path::new("/var/lib/ds01-slices");
    let dir = |uid, gid, mode| state_dir(p, &DirFacts::Directory { uid, gid, mode });
    assert_eq!(dir(0, 0, 0o755).status, Status::Ok);
    assert_eq!(
        dir(0, 0, 0o775).status,
        Status::Ok,
        "root's group may write"
    );
    for (uid, gid, mode, who) in [
        (0, 0, 0o777, "every user"),
        (0, 100, 0o775, "gid 100"),
        (1000, 0, 0o755, "uid 1000"),
    ] {
        let f = dir(uid, gid, mode);
        assert_eq!(f.status, Status::Warning, "{f:?}");
        assert!(f.found.contains(who), "{f:?}");
        assert!(f.fix.unwrap().contains("chmod go-w"));
    }
    assert_eq!(state_dir(p, &DirFacts::Missing).status, Status::Warning);
    assert_eq!(state_dir(p, &DirFacts::NotADirectory).status, Status::Fail);
    let link = state_dir(
        p,
        &DirFacts::Symlink {
            target: "/tmp/x".into(),
        },
    );
    assert_eq!(link.status, Status::Warning);
    assert!(link.found.contains("symbolic link (to /tmp/x)"), "{link:?}");
}

#[test]
fn config_systemd_and_drift_findings() {
    let p = Path::new("/c/resource-limits.yaml");
    let summary = ConfigSummary {
        groups: 2,
        users: 3,
        slices: 6,
        aggregate_limits: true,
        warnings: 0,
    };
    assert_eq!(config(p, &Ok(summary.clone()), true).status, Status::Ok);
    assert_eq!(
        config(p, &Ok(summary.clone()), false).status,
        Status::Warning
    );
    let off = ConfigSummary {
        aggregate_limits: false,
        ..summary
    };
    assert_eq!(config(p, &Ok(off), true).status, Status::Warning);
    let bad = config(p, &Err("refusing configuration file".into()), true);
    assert_eq!(bad.status, Status::Fail);
    assert!(bad.found.contains("refusing configuration file"), "{bad:?}");

    assert_eq!(
        systemd("unix:path=/b", &Ok("252".into())).status,
        Status::Ok
    );
    let down = systemd("unix:path=/b", &Err("cannot connect".into()));
    assert_eq!(down.status, Status::Fail);
    assert!(down.found.contains("cannot connect"));

    let holds = DriftSummary {
        holds: true,
        slices: 6,
        counts: vec![],
        examples: vec![],
    };
    assert_eq!(drift(&Ok(holds)).status, Status::Ok);
    let drifted = drift(&Ok(DriftSummary {
        holds: false,
        slices: 6,
        counts: vec![("drift", 1)],
        examples: vec!["ds01-student-alice.slice TasksMax: expected 12288, actual 7".into()],
    }));
    assert_eq!(drifted.status, Status::Fail);
    assert!(drifted.found.contains("drift 1"), "{drifted:?}");
    assert!(drifted.found.contains("actual 7"), "{drifted:?}");
    assert_eq!(
        drift(&Err("systemd cannot be asked".into())).status,
        Status::Warning
    );
}

#[test]
fn accounting_defaults_off_are_a_warning() {
    let on = AccountingDefaults {
        cpu: true,
        memory: true,
        tasks: true,
    };
    assert_eq!(accounting(&Ok(on)).status, Status::Ok);
    let f = accounting(&Ok(AccountingDefaults { cpu: false, ..on }));
    assert_eq!(f.status, Status::Warning);
    assert!(f.found.contains("DefaultCPUAccounting=no"), "{f:?}");
}

#[test]
fn nvidias_runtime_with_the_systemd_driver_is_the_reload_hazard() {
    use crate::docker::{parse_daemon_json, Runtimes};
    let json = Path::new("/r/etc/docker/daemon.json");
    let systemd = DockerDriver {
        driver: "systemd".into(),
        source: "docker info".into(),
    };
    let cgroupfs = DockerDriver {
        driver: "cgroupfs".into(),
        ..systemd.clone()
    };
    let (_, default) = parse_daemon_json(
        r#"{"default-runtime": "nvidia", "runtimes": {"nvidia": {"path": "nvidia-container-runtime"}}}"#,
    );
    let f = gpu(None, &default, json, Some(&systemd));
    assert_eq!((f.check, f.status), (Check::Gpu, Status::Warning));
    assert!(
        f.found.starts_with(
            "Docker's default runtime is NVIDIA's (nvidia, from /r/etc/docker/daemon.json)"
        ),
        "{f:?}"
    );
    assert!(f.found.contains("daemon-reload"), "{f:?}");
    assert!(f.found.contains("Failed to initialize NVML"), "{f:?}");
    let fix = f.fix.unwrap();
    assert!(fix.contains("never run `systemctl daemon-reload` while GPU containers run"));
    assert!(fix.contains("nvidia-ctk system create-dev-char-symlinks --create-all"));
    assert!(fix.contains("--allow-reload"));

    // The running daemon's answer counts as much as the file's.
    let (_, beside) =
        parse_daemon_json(r#"{"runtimes": {"nvidia": {"path": "nvidia-container-runtime"}}}"#);
    let f = gpu(Some(&beside), &Runtimes::default(), json, Some(&systemd));
    assert_eq!(f.status, Status::Warning);
    assert!(f.found.contains("--runtime=nvidia"), "{f:?}");
    assert!(f.found.contains("from docker info"), "{f:?}");
    // Driver unknown: warned all the same.
    assert_eq!(gpu(None, &default, json, None).status, Status::Warning);
    // cgroupfs: systemd does not touch the containers' device rules.
    let f = gpu(None, &default, json, Some(&cgroupfs));
    assert_eq!(f.status, Status::Ok);
    assert!(f.found.contains("leaves their GPUs alone"), "{f:?}");
    // No NVIDIA runtime anywhere.
    let f = gpu(
        Some(&Runtimes::default()),
        &Runtimes::default(),
        json,
        Some(&systemd),
    );
    assert_eq!(f.status, Status::Ok);
    assert_eq!(
        f.found,
        "no NVIDIA runtime configured for Docker (docker info and /r/etc/docker/daemon.json)"
    );
}
