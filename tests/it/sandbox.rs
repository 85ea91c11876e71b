//! The harness itself: a sandboxed systemd enforces what is set over its bus, and leaves
//! nothing behind, also when several run at once or the test process is SIGKILLed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::sandbox::SANDBOX_CGROUP;
use crate::support::{
    killed_after_saying, ok_stdout, processes_in_cgroup_named, sandbox_available_or_skip,
    sandbox_or_skip, two_sandboxes_or_skip, wait_until, Limit, Sandbox,
};

const ALICE: &str = "ds01-student-alice.slice";
const ALICE_CGROUP: &str = "/ds01.slice/ds01-student.slice/ds01-student-alice.slice";

/// SetUnitProperties through the sandbox's bus from outside, as busctl (the reference client)
/// sends it; persistent (runtime=false), like the product's writes.
fn set_limits(
    sb: &Sandbox,
    unit: &str,
    cpu_quota_per_sec_us: u64,
    memory_max: u64,
    tasks_max: u64,
) {
    let (cpu, mem, tasks) = (
        cpu_quota_per_sec_us.to_string(),
        memory_max.to_string(),
        tasks_max.to_string(),
    );
    let out = sb.busctl(&[
        "call",
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
        "SetUnitProperties",
        "sba(sv)",
        unit,
        "false",
        "3",
        "CPUQuotaPerSecUSec",
        "t",
        &cpu,
        "MemoryMax",
        "t",
        &mem,
        "TasksMax",
        "t",
        &tasks,
    ]);
    ok_stdout("busctl SetUnitProperties", out).expect("systemd accepts the limits");
}

#[test]
fn limits_set_over_the_bus_are_enforced_by_the_kernel() {
    let Some(sb) = sandbox_or_skip() else { return };
    eprintln!("sandbox {} ready in {:?}", sb.name(), sb.boot_time());

    set_limits(&sb, ALICE, 500_000, 64 << 20, 20);
    sb.start_busy_loop("busy.service", ALICE)
        .expect("a busy loop starts in the slice");

    let cg = sb.control_group(ALICE).expect("systemctl show works");
    assert_eq!(cg, ALICE_CGROUP);
    let e = sb
        .enforcement(&cg)
        .expect("the slice's cgroup files are readable");
    assert_eq!(e.cpu_quota_us, Some(Limit::Value(50_000)), "{e:?}");
    assert_eq!(e.cpu_period_us, Some(100_000), "{e:?}");
    assert_eq!(e.memory_max, Some(Limit::Value(67_108_864)), "{e:?}");
    assert_eq!(e.pids_max, Some(Limit::Value(20)), "{e:?}");
    let throttled = wait_until(Duration::from_secs(10), "nr_throttled > 0", || {
        sb.enforcement(&cg).ok()?.nr_throttled.filter(|&n| n > 0)
    })
    .expect("the busy loop gets throttled at 50%");
    eprintln!("nr_throttled reached {throttled}");

    // The persistent drop-ins are in the sandbox's /etc, and did not escape to the machine's.
    let dropins = "/etc/systemd/system.control/ds01-student-alice.slice.d";
    for f in ["50-CPUQuota.conf", "50-MemoryMax.conf", "50-TasksMax.conf"] {
        let p = sb.host_path(dropins).join(f);
        assert!(p.is_file(), "{} is missing", p.display());
    }
    assert!(
        !Path::new(dropins).exists(),
        "{dropins} was written on the machine"
    );
}

#[test]
fn teardown_leaves_no_process_no_cgroup_and_no_file() {
    let own_cgroups = fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    let Some(sb) = sandbox_or_skip() else { return };
    assert_eq!(
        fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup"),
        own_cgroups,
        "booting moved the test process itself"
    );
    sb.start_busy_loop("busy.service", ALICE)
        .expect("busy loop");
    sb.start_memory_hog("hog.service", ALICE, 16)
        .expect("memory hog");
    // Lives in the sandbox's PID namespace but in the test's cgroups.
    let mut entered = Command::new("nsenter")
        .args([
            "-t",
            &sb.pid().to_string(),
            "-p",
            "-m",
            "--",
            "sleep",
            "600",
        ])
        .stdin(Stdio::null())
        .spawn()
        .expect("nsenter starts");

    let name = sb.name().to_string();
    let dirs = sb.host_cgroup_dirs().to_vec();
    let workdir = std::env::temp_dir().join(&name);
    if sb.unified() {
        let parent = std::env::var_os(SANDBOX_CGROUP).expect("set on cgroup v2");
        assert_eq!(dirs[0].parent(), Some(Path::new(&parent)), "{dirs:?}");
    } else {
        assert!(dirs.len() > 2, "one directory per hierarchy: {dirs:?}");
    }
    assert!(dirs.iter().all(|d| d.is_dir()), "{dirs:?}");
    assert!(workdir.is_dir());
    assert!(!processes_in_cgroup_named(&name).is_empty());
    let memory = sb.systemd_cgroup_root("memory");
    assert!(
        memory.join("ds01.slice").is_dir(),
        "systemd's tree nests under {}",
        memory.display()
    );

    drop(sb);

    assert_eq!(processes_in_cgroup_named(&name), Vec::<u32>::new());
    let left: Vec<&PathBuf> = dirs.iter().filter(|d| d.exists()).collect();
    assert!(left.is_empty(), "cgroups left: {left:?}");
    assert!(!workdir.exists(), "{} left", workdir.display());
    let status = wait_until(Duration::from_secs(5), "nsenter'd process dies", || {
        entered.try_wait().expect("try_wait")
    })
    .expect("the nsenter'd process dies with the sandbox");
    assert!(!status.success());
}

#[test]
fn two_sandboxes_run_at_once_without_sharing_state() {
    let Some((a, b)) = two_sandboxes_or_skip() else {
        return;
    };
    eprintln!(
        "booted in parallel: {:?} and {:?}",
        a.boot_time(),
        b.boot_time()
    );
    // The same slice in both, with different limits: each must see only its own.
    set_limits(&a, ALICE, 500_000, 64 << 20, 20);
    set_limits(&b, ALICE, 300_000, 32 << 20, 30);
    a.start_busy_loop("busy.service", ALICE)
        .expect("busy loop in a");
    b.start_busy_loop("busy.service", ALICE)
        .expect("busy loop in b");

    let ea = a.enforcement(ALICE_CGROUP).expect("a's slice");
    let eb = b.enforcement(ALICE_CGROUP).expect("b's slice");
    assert_eq!(
        (ea.cpu_quota_us, ea.memory_max, ea.pids_max),
        (
            Some(Limit::Value(50_000)),
            Some(Limit::Value(64 << 20)),
            Some(Limit::Value(20))
        )
    );
    assert_eq!(
        (eb.cpu_quota_us, eb.memory_max, eb.pids_max),
        (
            Some(Limit::Value(30_000)),
            Some(Limit::Value(32 << 20)),
            Some(Limit::Value(30))
        )
    );
    let dropin = "/etc/systemd/system.control/ds01-student-alice.slice.d/50-TasksMax.conf";
    let read = |sb: &Sandbox| fs::read_to_string(sb.host_path(dropin)).expect("drop-in");
    assert!(read(&a).contains("TasksMax=20"), "{}", read(&a));
    assert!(read(&b).contains("TasksMax=30"), "{}", read(&b));

    // Both memory trees are separate children of this process's memory cgroup (v1), or of the
    // cgroup delegated to this run (v2).
    let (ma, mb) = (
        a.systemd_cgroup_root("memory"),
        b.systemd_cgroup_root("memory"),
    );
    let parent = |sb: &Sandbox, root: &Path| -> PathBuf {
        let dir = if sb.unified() {
            root.parent().unwrap()
        } else {
            root
        };
        dir.parent().unwrap().to_path_buf()
    };
    assert_ne!(ma, mb);
    assert_eq!(parent(&a, &ma), parent(&b, &mb));
    assert_eq!(parent(&a, &ma), accounting_cgroup());
    assert!(ma.join(&ALICE_CGROUP[1..]).is_dir() && mb.join(&ALICE_CGROUP[1..]).is_dir());
}

/// The stock early-boot units change the machine itself (systemd-sysctl its kernel settings,
/// systemd-tmpfiles-setup /etc/mtab and /root/.ssh, the journal sockets /dev/log), and every
/// service requires sysinit.target, which pulls them in. The sandbox must not even find them.
#[test]
fn machine_changing_stock_units_are_out_of_reach() {
    let Some(sb) = sandbox_or_skip() else { return };
    sb.start_busy_loop("busy.service", ALICE)
        .expect("busy loop");
    for unit in [
        "systemd-sysctl.service",
        "systemd-tmpfiles-setup.service",
        "systemd-tmpfiles-setup-dev.service",
        "systemd-sysusers.service",
        "systemd-remount-fs.service",
        "systemd-journald.socket",
        "dev-mqueue.mount",
    ] {
        let out = sb.systemctl(&["show", "--property=LoadState,FragmentPath", unit]);
        let state = ok_stdout("systemctl show", out).expect("systemctl show works");
        // A mount unit is also made from the mount table (the v2 VM mounts /dev/mqueue, and
        // the sandbox sees it): loaded, but from no unit file.
        let from_mount_table = unit.ends_with(".mount") && state.contains("LoadState=loaded");
        assert!(
            state.contains("LoadState=not-found") || from_mount_table,
            "{unit} is loadable in the sandbox: {state}"
        );
        assert!(
            state.contains("FragmentPath=\n") || state.ends_with("FragmentPath="),
            "{unit}: {state}"
        );
    }
    let out = sb.systemctl(&["start", "systemd-tmpfiles-setup.service"]);
    assert!(!out.status.success(), "{out:?}");
}

/// The sandbox's memory stays accounted to this job's memory cgroup (the machine's job
/// tracking), because the sandbox's memory tree is a child of it with hierarchical accounting.
#[test]
fn sandbox_memory_is_accounted_to_the_test_memory_cgroup() {
    let Some(sb) = sandbox_or_skip() else { return };
    sb.start_memory_hog("hog.service", ALICE, 32)
        .expect("memory hog");
    let hog_cg = format!("{ALICE_CGROUP}/hog.service");
    let file = if sb.unified() {
        "memory.current"
    } else {
        "memory.usage_in_bytes"
    };
    let usage = |dir: &Path| -> u64 {
        fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    let held = wait_until(Duration::from_secs(10), "the hog holds 32 MiB", || {
        Some(usage(&sb.cgroup_dir("memory", &hog_cg))).filter(|&u| u >= 32 << 20)
    })
    .expect("the hog's memory is charged to its unit");

    let own = accounting_cgroup();
    if !sb.unified() {
        // v2 always counts the subtree.
        let hierarchical =
            fs::read_to_string(own.join("memory.use_hierarchy")).expect("use_hierarchy");
        assert_eq!(
            hierarchical.trim(),
            "1",
            "{} does not count its children",
            own.display()
        );
    }
    // Everything in the subtree is included in the parent's usage, so this holds whatever else
    // runs in this cgroup meanwhile.
    assert!(
        usage(&own) >= held,
        "{}: {} < {held}",
        own.display(),
        usage(&own)
    );
}

/// The cgroup that the sandboxes' memory is charged to: on v1 this process's memory cgroup
/// (where the machine tracks the job), on v2 the cgroup delegated to the run.
fn accounting_cgroup() -> PathBuf {
    if let Some(dir) = std::env::var_os(SANDBOX_CGROUP) {
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            return PathBuf::from(dir);
        }
    }
    let cgroups = fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    let path = cgroups
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p))
        .expect("a v1 memory cgroup");
    Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'))
}

const HANG_ENV: &str = "DS01_SANDBOX_SIGKILL_HELPER";

/// Not a test on its own: the process that `teardown_survives_sigkill_of_the_test_process`
/// starts and kills. It boots a sandbox, reports it on stdout and waits to be killed.
#[test]
#[ignore = "helper of teardown_survives_sigkill_of_the_test_process"]
fn sigkill_helper() {
    if std::env::var_os(HANG_ENV).is_none() {
        return;
    }
    let sb = Sandbox::boot().expect("sandbox boots");
    sb.start_busy_loop("busy.service", ALICE)
        .expect("busy loop");
    let dirs: Vec<String> = sb
        .host_cgroup_dirs()
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    println!("READY {} {}", sb.name(), dirs.join(" "));
    // Long enough to be killed; short enough not to outlive a parent that died first by much.
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn teardown_survives_sigkill_of_the_test_process() {
    if !sandbox_available_or_skip() {
        return;
    }
    let ready = killed_after_saying(
        "sandbox::sigkill_helper",
        HANG_ENV,
        "READY ",
        Duration::from_secs(60),
    )
    .expect("the helper reported its sandbox within 60 s");
    let mut fields = ready.split_whitespace();
    let name = fields.next().expect("sandbox name").to_string();
    let dirs: Vec<PathBuf> = fields.map(PathBuf::from).collect();
    assert!(!dirs.is_empty(), "{ready}");

    // The supervisor sees EOF when the kernel closes the dead helper's descriptors.
    wait_until(Duration::from_secs(20), "sandbox torn down", || {
        let gone = processes_in_cgroup_named(&name).is_empty() && dirs.iter().all(|d| !d.exists());
        gone.then_some(())
    })
    .expect("the supervisor tears the sandbox down after SIGKILL of the test process");
    let workdir = std::env::temp_dir().join(&name);
    wait_until(Duration::from_secs(5), "workdir removed", || {
        (!workdir.exists()).then_some(())
    })
    .expect("the supervisor removes the sandbox's scratch directory");
}

/// Boot-to-ready and teardown times, sequential:
/// `cargo test --test it boot_time -- --ignored --nocapture`.
#[test]
#[ignore = "measurement"]
fn boot_time() {
    if !sandbox_available_or_skip() {
        return;
    }
    let (mut boots, mut teardowns): (Vec<Duration>, Vec<Duration>) = (0..9)
        .map(|_| {
            let sb = Sandbox::boot().expect("sandbox boots");
            let boot = sb.boot_time();
            let started = Instant::now();
            drop(sb);
            (boot, started.elapsed())
        })
        .unzip();
    boots.sort();
    teardowns.sort();
    println!(
        "9 sequential sandboxes: boot to SystemState=running min {:?} median {:?} max {:?}; \
         teardown min {:?} median {:?} max {:?}",
        boots[0], boots[4], boots[8], teardowns[0], teardowns[4], teardowns[8]
    );
}
