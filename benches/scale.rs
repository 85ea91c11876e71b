//! Scale benchmark: ds01-slices against a real (sandboxed) systemd with N users, and the
//! two baselines it must beat, measured in the same run. Writes BENCHMARKS.md.
//!
//!     cargo bench --bench scale                       # N = 100, 1000, 5000
//!     cargo bench --bench scale -- --sizes 100,1000 --runs 3 --naive-max 1000
//!
//!     cargo bench --bench scale -- --host vm --sizes 100,1000 --runs 3 --naive-max 1000
//!
//! Needs root and unshare (as the systemd tests do). Every figure is a median over
//! `--runs` fresh sandboxes; the naive baseline (quadratic) runs once per size up to
//! `--naive-max`. `--host vm` runs the same benchmark inside the cgroup v2 test VM
//! (tests/it/support/vm.rs: Debian under QEMU/TCG, sandboxes on the unified hierarchy) and
//! replaces only BENCHMARKS.md's cgroup v2 section; the default host (the v1 sandbox on this
//! machine) replaces everything before it.

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ds01_slices::model::names::SliceName;
use ds01_slices::model::property::{BusValue, Property};
use ds01_slices::systemd::{BusSystemd, Systemd, WriteMode};
use serde_json::Value;
use support::{Sandbox, BIN};

struct Args {
    sizes: Vec<usize>,
    runs: usize,
    naive_max: usize,
    plan_users: usize,
    hook_samples: usize,
    out: PathBuf,
    /// Another build of the tool whose hook is measured in the same sandboxes, sample by
    /// sample after ours (e.g. the previous release), for a comparison within one run.
    baseline_bin: Option<PathBuf>,
    /// `vm`: run inside the cgroup v2 VM (see the top).
    host: String,
    /// Set for the run inside the VM: write only the cgroup v2 section, as is.
    section_v2: bool,
}

/// Where benches/gate.rs's section starts; the v2 run keeps it.
const GATE_MARKER: &str = "<!-- gate section: `cargo bench --bench gate` writes from here -->";

/// Where BENCHMARKS.md's cgroup v2 section starts; the v1 run keeps what follows it.
const V2_MARKER: &str =
    "<!-- cgroup v2 section: `cargo bench --bench scale -- --host vm ...` writes from here -->";

fn parse_args() -> Args {
    let mut a = Args {
        sizes: vec![100, 1000, 5000],
        runs: 3,
        naive_max: 1000,
        plan_users: 10_000,
        hook_samples: 40,
        out: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md")),
        baseline_bin: None,
        host: "sandbox".into(),
        section_v2: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().expect("option needs a value");
        match arg.as_str() {
            "--sizes" => {
                a.sizes = value()
                    .split(',')
                    .map(|s| s.parse().expect("size"))
                    .collect()
            }
            "--runs" => a.runs = value().parse().expect("runs"),
            "--naive-max" => a.naive_max = value().parse().expect("naive-max"),
            "--plan-users" => a.plan_users = value().parse().expect("plan-users"),
            "--hook-samples" => a.hook_samples = value().parse().expect("hook-samples"),
            "--out" => a.out = PathBuf::from(value()),
            "--baseline-bin" => a.baseline_bin = Some(PathBuf::from(value())),
            "--host" => a.host = value(),
            "--section-v2" => a.section_v2 = true,
            "--bench" => {}
            other => panic!("unknown option {other}"),
        }
    }
    a
}

/// A generated configuration with `n` users in four groups and some overrides.
struct Fixture {
    dir: PathBuf,
    users: Vec<String>,
}

impl Fixture {
    fn new(n: usize, tag: &str) -> Fixture {
        // In the VM the build directory is a read-only share.
        let base = if support::vm::in_vm_guest() {
            std::env::temp_dir()
        } else {
            PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        };
        let dir = base.join(format!("bench-{tag}-{n}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("groups")).unwrap();
        fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/resource-limits.yaml"),
            dir.join("resource-limits.yaml"),
        )
        .unwrap();
        let users = support::user_names(n);
        let mut groups: [Vec<&str>; 4] = Default::default();
        for (i, u) in users.iter().enumerate() {
            let g = match i % 50 {
                0 => 3,      // admin, 2%
                1..=4 => 2,  // faculty, 8%
                5..=14 => 1, // researcher, 20%
                _ => 0,      // student, 70%
            };
            groups[g].push(u);
        }
        for (g, name) in ["student", "researcher", "faculty", "admin"]
            .iter()
            .enumerate()
        {
            fs::write(
                dir.join(format!("groups/{name}.members")),
                groups[g].join("\n") + "\n",
            )
            .unwrap();
        }
        let f = Fixture { dir, users };
        f.write_overrides(false);
        f
    }

    /// Changes the overrides file without changing what it says.
    fn touch_overrides(&self, i: usize) {
        let path = self.dir.join("user-overrides.yaml");
        let mut text = fs::read_to_string(&path).unwrap();
        let _ = writeln!(text, "# edit {i}");
        fs::write(path, text).unwrap();
        // A file changed less than 50 ms ago may be half-written: every reader waits until
        // it is that old. The figure is of the validation a change costs, not of that wait.
        std::thread::sleep(std::time::Duration::from_millis(60));
    }

    /// 5% of users always have a memory override; with `changed`, 10% more get a new TasksMax.
    fn write_overrides(&self, changed: bool) {
        let mut text = String::new();
        for (i, u) in self.users.iter().enumerate() {
            let memory = i % 20 == 7;
            let tasks = changed && i % 10 == 3;
            if !(memory || tasks) || i % 50 == 0 {
                continue;
            }
            let _ = writeln!(text, "{u:?}:\n  aggregate:");
            if memory {
                text.push_str("    memory_max: 200G\n    memory_high: 180G\n");
            }
            if tasks {
                text.push_str("    tasks_max: 4096\n");
            }
        }
        fs::write(self.dir.join("user-overrides.yaml"), text).unwrap();
    }

    fn config(&self) -> PathBuf {
        self.dir.join("resource-limits.yaml")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

struct Measured {
    wall: Duration,
    max_rss_kib: u64,
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the product as a whole process; peak RSS from wait4's rusage of that child alone.
fn measure(args: &[&str], config: &Path, sb: Option<&Sandbox>, state: &Path) -> Measured {
    measure_bin(Path::new(BIN), args, config, sb, state)
}

fn measure_bin(
    bin: &Path,
    args: &[&str],
    config: &Path,
    sb: Option<&Sandbox>,
    state: &Path,
) -> Measured {
    let out_path = state.with_extension(format!("out{}", std::process::id()));
    let err_path = state.with_extension(format!("err{}", std::process::id()));
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .arg("--state-dir")
        .arg(state);
    if let Some(sb) = sb {
        cmd.arg("--bus")
            .arg(sb.bus_address())
            .arg("--cgroup-root")
            .arg(sb.host_path("/sys/fs/cgroup"));
    }
    cmd.env("DS01_TRACE", "1")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap());
    let start = Instant::now();
    // Reaped by wait4 below, which also gives this child's own peak RSS.
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().unwrap();
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; status and usage are valid out-pointers.
    let rc = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    assert_eq!(rc, child.id() as i32, "wait4");
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    let m = Measured {
        wall,
        max_rss_kib: usage.ru_maxrss as u64,
        code,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
    };
    let _ = fs::remove_file(out_path);
    let _ = fs::remove_file(err_path);
    m
}

fn expect_code(what: &str, m: &Measured, code: i32) {
    assert_eq!(
        m.code, code,
        "{what} exited {}\nstdout: {}\nstderr: {}",
        m.code, m.stdout, m.stderr
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    let idx = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[idx]
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(sb: &Sandbox) -> BusSystemd {
    BusSystemd::connect(Some(&sb.bus_address()), Duration::from_secs(120))
        .await
        .unwrap()
}

/// systemd must still own its name on the bus after every run: a client that knocks it off
/// the bus fails the benchmark. Nor may a run leave a holder unit behind: it would keep every
/// slice loaded, which is not the state a later command finds on a real host.
fn assert_systemd_on_bus(sb: &Sandbox, after: &str) -> String {
    let out = sb.busctl(&["status", "org.freedesktop.systemd1"]);
    assert!(
        out.status.success(),
        "after {after}: org.freedesktop.systemd1 is gone from the bus: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    rt().block_on(async {
        let sd = connect(sb).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let holders = sd.stale_holders().await.unwrap();
            if holders.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "after {after}: holder units left behind: {holders:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sd.version().await.unwrap()
    })
}

#[derive(Default)]
struct SizeResult {
    cold: Vec<f64>,
    warm: Vec<f64>,
    changed: Vec<f64>,
    verify: Vec<f64>,
    status: Vec<f64>,
    metrics: Vec<f64>,
    /// Container scopes running for the two figures below.
    containers: usize,
    /// `ops::containers::find` alone, in-process (ms).
    discovery: Vec<f64>,
    /// `verify` (whole process, s) with those containers running.
    verify_busy: Vec<f64>,
    hook_ok: Vec<f64>,
    hook_write: Vec<f64>,
    hook_write_waiting: Vec<f64>,
    hook_ok_waiting: Vec<f64>,
    hook_revalidate: Vec<f64>,
    base_hook_ok: Vec<f64>,
    base_hook_write: Vec<f64>,
    base_hook_revalidate: Vec<f64>,
    systemd_write: Vec<f64>,
    floor: Option<f64>,
    read_floor: Vec<f64>,
    rss_cold: Vec<f64>,
    rss_warm: Vec<f64>,
    rss_verify: Vec<f64>,
    rss_hook: Vec<f64>,
    naive: Option<f64>,
    files: Vec<f64>,
    rss_render: Vec<f64>,
    max_in_flight: usize,
    max_pinned: usize,
    warm_writes: u64,
}

/// The hook's own account of the time it spent waiting for systemd (DS01_TRACE=1).
fn waiting_ms(stderr: &str) -> f64 {
    stderr
        .lines()
        .find_map(|l| l.split("waiting for systemd: ").nth(1))
        .and_then(|v| v.trim_end_matches(" ms").parse().ok())
        .unwrap_or(f64::NAN)
}

/// Every slice the plan sets something on, with those properties (the library's own plan).
fn plan_writes(config: &Path) -> Vec<(SliceName, Vec<(Property, BusValue)>)> {
    let config = ds01_slices::config::load(config).unwrap();
    ds01_slices::plan::plan(&config)
        .unwrap()
        .slices
        .into_iter()
        .map(|s| (s.slice, s.properties.iter().collect::<Vec<_>>()))
        .filter(|(_, p)| !p.is_empty())
        .collect()
}

/// systemd's own cost of a warm apply's reads with the same strategy (all slices held
/// loaded, one GetAll each, pipelined), from a connected client: the floor for `warm`.
fn systemd_read_floor(sb: &Sandbox, config: &Path) -> f64 {
    let slices: Vec<SliceName> = plan_writes(config).into_iter().map(|(s, _)| s).collect();
    rt().block_on(async {
        let sd = connect(sb).await;
        let t = Instant::now();
        let holder = sd.hold_loaded(&slices).await.unwrap();
        let results = ds01_slices::systemd::pipeline::bounded(&slices, |s| sd.read_slice(s)).await;
        assert!(results.iter().all(|r| r.is_ok()));
        sd.release(&holder).await.unwrap();
        t.elapsed().as_secs_f64()
    })
}

/// systemd's own cost of a cold apply's writes with the same strategy (chunks held loaded,
/// pipelined), with none of our reads, planning or process start: the floor for `cold`.
fn systemd_floor(n: usize) -> f64 {
    let fx = Fixture::new(n, "floor");
    let sb = Sandbox::boot().expect("sandbox boots");
    let writes = plan_writes(&fx.config());
    let rt = rt();
    let secs = rt.block_on(async {
        let sd = connect(&sb).await;
        let t = Instant::now();
        for chunk in writes.chunks(ds01_slices::systemd::pipeline::WRITE_CHUNK) {
            let names: Vec<SliceName> = chunk.iter().map(|(s, _)| s.clone()).collect();
            let holder = sd.hold_loaded(&names).await.unwrap();
            let results = ds01_slices::systemd::pipeline::bounded(chunk, |(s, p)| {
                sd.set_properties(s, WriteMode::Persistent, p)
            })
            .await;
            assert!(results.iter().all(|r| r.is_ok()));
            sd.release(&holder).await.unwrap();
        }
        t.elapsed().as_secs_f64()
    });
    assert_systemd_on_bus(&sb, "systemd floor");
    secs
}

/// One scope named as a Docker container's in each of the first `k` users' slices, with one
/// sleeping process each; started from a service of the sandbox, which systemd may move into
/// each scope as `systemd-run --scope` asks (its arguments carry no `$`: 252 expands them).
fn start_container_scopes(sb: &Sandbox, fx: &Fixture, k: usize) {
    let config = ds01_slices::config::load(&fx.config()).unwrap();
    let script: Vec<String> = fx.users[..k]
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let user = ds01_slices::model::names::UserName::new(u).unwrap();
            let slice = config.resolve(&user).unwrap().slice;
            format!(
                "systemd-run --quiet --scope --unit=docker-{i:064x}.scope --slice={slice} -- sh -c 'sleep infinity >/dev/null 2>&1 </dev/null &'"
            )
        })
        .collect();
    let out = sb.systemd_run(&[
        "--collect",
        "--unit=bench-containers.service",
        "--",
        "sh",
        "-c",
        &script.join("; "),
    ]);
    assert!(out.status.success(), "starting the containers: {out:?}");
    rt().block_on(async {
        let sd = connect(sb).await;
        let deadline = Instant::now() + Duration::from_secs(300);
        while sd.container_scopes().await.unwrap().len() < k {
            assert!(
                Instant::now() < deadline,
                "{k} container scopes not started"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

/// `ops::containers::find` on its own (systemd's list of container scopes and the cgroup
/// tree, from a connected client), median of 5, in ms.
fn discovery_ms(sb: &Sandbox, config: &Path, k: usize) -> f64 {
    use ds01_slices::ops::containers::{find, Sources};
    let config = ds01_slices::config::load(config).unwrap();
    let root = sb.host_path("/sys/fs/cgroup");
    let sources = Sources {
        cgroup_root: Some(&root),
        docker: None,
    };
    rt().block_on(async {
        let sd = connect(sb).await;
        let mut samples = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let found = find(&sd, &config, ds01_slices::ops::Scope::All, sources).await;
            samples.push(t.elapsed().as_secs_f64() * 1000.0);
            assert!(
                found.error.is_none() && found.outside.is_empty(),
                "{found:?}"
            );
            assert_eq!(found.in_user_slices, k, "{found:?}");
        }
        median(samples)
    })
}

fn bus_stats(stdout: &str) -> (usize, usize, u64) {
    let v: Value = serde_json::from_str(stdout).unwrap_or(Value::Null);
    (
        v["bus"]["max_in_flight"].as_u64().unwrap_or(0) as usize,
        v["bus"]["max_pinned"].as_u64().unwrap_or(0) as usize,
        v["writes"].as_u64().unwrap_or(u64::MAX),
    )
}

fn run_size(n: usize, args: &Args, version: &mut String) -> SizeResult {
    let mut r = SizeResult::default();
    for run in 0..args.runs {
        let fx = Fixture::new(n, "apply");
        let sb = Sandbox::boot().expect("sandbox boots");
        let state = fx.dir.join("state");
        let cold = measure(&["apply", "--json"], &fx.config(), Some(&sb), &state);
        expect_code("cold apply", &cold, 0);
        let (inflight, pinned, _) = bus_stats(&cold.stdout);
        r.max_in_flight = r.max_in_flight.max(inflight);
        r.max_pinned = r.max_pinned.max(pinned);
        r.cold.push(cold.wall.as_secs_f64());
        r.rss_cold.push(cold.max_rss_kib as f64);
        *version = assert_systemd_on_bus(&sb, "cold apply");

        let warm = measure(&["apply", "--json"], &fx.config(), Some(&sb), &state);
        expect_code("warm apply", &warm, 0);
        let (inflight, pinned, writes) = bus_stats(&warm.stdout);
        r.max_in_flight = r.max_in_flight.max(inflight);
        r.max_pinned = r.max_pinned.max(pinned);
        r.warm_writes = r.warm_writes.max(writes);
        r.warm.push(warm.wall.as_secs_f64());
        r.rss_warm.push(warm.max_rss_kib as f64);

        assert_systemd_on_bus(&sb, "warm apply");
        r.read_floor.push(systemd_read_floor(&sb, &fx.config()));
        assert_systemd_on_bus(&sb, "systemd's reads");

        let verify = measure(&["verify"], &fx.config(), Some(&sb), &state);
        expect_code("verify", &verify, 0);
        r.verify.push(verify.wall.as_secs_f64());
        r.rss_verify.push(verify.max_rss_kib as f64);
        assert_systemd_on_bus(&sb, "verify");

        // One reading of every slice; a single run waits --interval (1 s) more when a slice
        // is active, for its second CPU reading (none is here).
        let status = measure(
            &["status", "--json", "--interval", "0"],
            &fx.config(),
            Some(&sb),
            &state,
        );
        expect_code("status", &status, 0);
        r.status.push(status.wall.as_secs_f64());
        assert_systemd_on_bus(&sb, "status");
        let metrics = measure(&["metrics"], &fx.config(), Some(&sb), &state);
        expect_code("metrics", &metrics, 0);
        r.metrics.push(metrics.wall.as_secs_f64());
        assert_systemd_on_bus(&sb, "metrics");

        let hook = |what: &str, user: &str| {
            let m = measure(
                &["hook", "pre-create", user],
                &fx.config(),
                Some(&sb),
                &state,
            );
            expect_code(what, &m, 0);
            m
        };
        // The baseline build keeps its own state (its cache record may be of another format)
        // starting from the same ownership records.
        let base_state = fx.dir.join("state-baseline");
        if args.baseline_bin.is_some() {
            let copied = Command::new("cp")
                .arg("-a")
                .arg(&state)
                .arg(&base_state)
                .status()
                .unwrap();
            assert!(copied.success(), "copying the state for the baseline");
        }
        let base_hook = |what: &str, user: &str| {
            args.baseline_bin.as_ref().map(|bin| {
                let m = measure_bin(
                    bin,
                    &["hook", "pre-create", user],
                    &fx.config(),
                    Some(&sb),
                    &base_state,
                );
                expect_code(what, &m, 0);
                m.wall.as_secs_f64() * 1000.0
            })
        };
        // Its first hook writes its own record; not a sample.
        base_hook("baseline hook (warm-up)", &fx.users[run % n]);
        // Hook, slice already right: listed users spread over the file.
        for i in 0..args.hook_samples {
            let m = hook("hook (in sync)", &fx.users[(i * 7919 + run) % n]);
            r.hook_ok.push(m.wall.as_secs_f64() * 1000.0);
            r.hook_ok_waiting.push(waiting_ms(&m.stderr));
            r.rss_hook.push(m.max_rss_kib as f64);
            r.base_hook_ok.extend(base_hook(
                "baseline hook (in sync)",
                &fx.users[(i * 7919 + run) % n],
            ));
        }
        // Hook that must write (a new unlisted user each time), interleaved with systemd's
        // own time for the same kind of write (a fresh slice, one SetUnitProperties call).
        let rt = rt();
        let sd = rt.block_on(connect(&sb));
        let props = [
            (Property::CpuQuotaPerSecUSec, BusValue::U64(96_000_000)),
            (Property::MemoryMax, BusValue::U64(96 << 30)),
            (Property::MemoryHigh, BusValue::U64(86 << 30)),
            (Property::TasksMax, BusValue::U64(12288)),
        ];
        for i in 0..args.hook_samples {
            let probe = SliceName::parse(&format!("ds01-student-probe{run}x{i}.slice")).unwrap();
            let t = Instant::now();
            rt.block_on(sd.set_properties(&probe, WriteMode::Persistent, &props))
                .unwrap();
            r.systemd_write.push(t.elapsed().as_secs_f64() * 1000.0);
            let m = hook("hook (write)", &format!("newcomer{run}x{i}"));
            r.hook_write.push(m.wall.as_secs_f64() * 1000.0);
            r.hook_write_waiting.push(waiting_ms(&m.stderr));
            r.base_hook_write.extend(base_hook(
                "baseline hook (write)",
                &format!("basecomer{run}x{i}"),
            ));
        }
        drop(sd);
        // The first hook after any configuration file changed validates everything again.
        for i in 0..args.hook_samples {
            fx.touch_overrides(i);
            let m = hook(
                "hook (configuration changed)",
                &fx.users[(i * 7919 + run) % n],
            );
            r.hook_revalidate.push(m.wall.as_secs_f64() * 1000.0);
            r.base_hook_revalidate.extend(base_hook(
                "baseline hook (configuration changed)",
                &fx.users[(i * 7919 + run) % n],
            ));
        }
        assert_systemd_on_bus(&sb, "hooks");

        fx.write_overrides(true);
        let changed = measure(&["apply", "--json"], &fx.config(), Some(&sb), &state);
        expect_code("apply after 10% changed", &changed, 0);
        let (inflight, pinned, _) = bus_stats(&changed.stdout);
        r.max_in_flight = r.max_in_flight.max(inflight);
        r.max_pinned = r.max_pinned.max(pinned);
        r.changed.push(changed.wall.as_secs_f64());
        assert_systemd_on_bus(&sb, "apply after changes");

        // Last, as they leave slices active: containers in users' slices, found by verify,
        // status and the metrics on every run.
        r.containers = (n / 10).clamp(1, 100);
        start_container_scopes(&sb, &fx, r.containers);
        r.discovery
            .push(discovery_ms(&sb, &fx.config(), r.containers));
        let busy = measure(&["verify"], &fx.config(), Some(&sb), &state);
        expect_code("verify with containers", &busy, 0);
        r.verify_busy.push(busy.wall.as_secs_f64());
        assert_systemd_on_bus(&sb, "containers");
        drop(sb);

        // Baseline: rendered files + one reload, on a fresh systemd.
        let fx2 = Fixture::new(n, "render");
        let sb = Sandbox::boot().expect("sandbox boots");
        let root = sb.host_path("/");
        let render = measure(
            &["render", "--root", root.to_str().unwrap()],
            &fx2.config(),
            Some(&sb),
            &fx2.dir.join("state"),
        );
        expect_code("render", &render, 0);
        r.files.push(render.wall.as_secs_f64());
        r.rss_render.push(render.max_rss_kib as f64);
        assert_systemd_on_bus(&sb, "render");
        drop(sb);
    }
    r.floor = Some(systemd_floor(n));
    if n <= args.naive_max {
        // Baseline: one SetUnitProperties per user, sequential, no reads, fresh systemd.
        let fx = Fixture::new(n, "naive");
        let sb = Sandbox::boot().expect("sandbox boots");
        let writes = plan_writes(&fx.config());
        let rt = rt();
        let t = Instant::now();
        rt.block_on(async {
            let sd = connect(&sb).await;
            for (slice, props) in &writes {
                sd.set_properties(slice, WriteMode::Persistent, props)
                    .await
                    .unwrap();
            }
        });
        r.naive = Some(t.elapsed().as_secs_f64());
        assert_systemd_on_bus(&sb, "naive loop");
    }
    r
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({cpu}), {:.0} GiB RAM, Linux {}",
        mem as f64 / 1048576.0,
        kernel.trim()
    )
}

fn main() {
    let args = parse_args();
    match args.host.as_str() {
        "vm" if !support::vm::in_vm_guest() => return run_on_vm(&args),
        "vm" | "sandbox" => {}
        other => panic!("--host {other}: the hosts are sandbox (default) and vm"),
    }
    if let Some(why) = Sandbox::unavailable() {
        eprintln!("cannot run the scale benchmark: {why}");
        std::process::exit(1);
    }
    let mut version = String::new();
    let mut rows = Vec::new();
    for &n in &args.sizes {
        eprintln!("benchmark: N = {n} ...");
        let r = run_size(n, &args, &mut version);
        eprintln!(
            "  cold {:.3}s warm {:.3}s naive {:?}",
            median(r.cold.clone()),
            median(r.warm.clone()),
            r.naive
        );
        rows.push((n, r));
    }
    // plan at scale: pure CPU and memory.
    let fx = Fixture::new(args.plan_users, "plan");
    let mut plan_wall = Vec::new();
    let mut plan_rss = Vec::new();
    for _ in 0..args.runs.max(3) {
        let m = measure(
            &["plan", "--json"],
            &fx.config(),
            None,
            &fx.dir.join("state"),
        );
        expect_code("plan", &m, 0);
        plan_wall.push(m.wall.as_secs_f64());
        plan_rss.push(m.max_rss_kib as f64);
    }
    let plan_rss_mib = median(plan_rss) / 1024.0;
    let plan_secs = median(plan_wall);
    let md = report(&args, &rows, &version, plan_secs, plan_rss_mib);
    if args.section_v2 {
        fs::write(&args.out, &md).unwrap();
    } else {
        // Everything before the cgroup v2 section is this run's; the section stays.
        let kept = fs::read_to_string(&args.out)
            .ok()
            .and_then(|old| old.find(V2_MARKER).map(|i| old[i..].to_string()))
            .unwrap_or_else(|| format!("{V2_MARKER}\n\n(not measured yet)\n"));
        fs::write(&args.out, format!("{md}\n{kept}")).unwrap();
    }
    println!("{md}");
    let safety_ok = rows
        .iter()
        .all(|(_, r)| r.max_in_flight <= 64 && r.max_pinned <= 128 && r.warm_writes == 0);
    if !safety_ok {
        eprintln!(
            "benchmark FAILED its safety budget (see {})",
            args.out.display()
        );
        std::process::exit(1);
    }
}

/// The same benchmark inside the cgroup v2 VM: this binary runs there with the same options,
/// writes its section to the shared directory, and it replaces BENCHMARKS.md's v2 section.
fn run_on_vm(args: &Args) {
    if let Some(why) = support::vm::unavailable() {
        eprintln!("cannot run the benchmark on the VM: {why}");
        std::process::exit(1);
    }
    let started = Instant::now();
    let vm = support::vm::Vm::boot("bookworm").unwrap_or_else(|e| panic!("booting the VM: {e}"));
    eprintln!(
        "VM booted in {:.1} s ({})",
        vm.boot_time().as_secs_f64(),
        vm.image.versions().trim().replace('\n', ", ")
    );
    let (host_dir, guest_dir) = vm.shared_dir("bench");
    let mut guest_args: Vec<String> = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--host" | "--out" => {
                it.next();
            }
            "--bench" => {}
            _ => guest_args.push(a),
        }
    }
    guest_args.extend([
        "--host".into(),
        "vm".into(),
        "--section-v2".into(),
        "--out".into(),
        format!("{guest_dir}/v2.md"),
    ]);
    let refs: Vec<&str> = guest_args.iter().map(String::as_str).collect();
    let exe = std::env::current_exe().expect("the benchmark's path");
    let run = support::vm::run_test_binary(&vm, &exe, &refs, Duration::from_secs(6 * 3600))
        .unwrap_or_else(|e| panic!("{e}"));
    eprint!("{}", run.stderr);
    let section = fs::read_to_string(host_dir.join("v2.md")).unwrap_or_else(|e| {
        panic!(
            "the benchmark in the VM wrote no report ({e}): exit {:?}\n{}",
            run.code, run.stdout
        )
    });
    let old = fs::read_to_string(&args.out).unwrap_or_default();
    let v1 = old.find(V2_MARKER).map(|i| &old[..i]).unwrap_or(&old);
    // The gate's section (benches/gate.rs) follows and stays.
    let gate = old.find(GATE_MARKER).map_or("", |i| &old[i..]);
    let gate = if gate.is_empty() {
        String::new()
    } else {
        format!("\n{gate}")
    };
    fs::write(&args.out, format!("{v1}{V2_MARKER}\n\n{section}{gate}")).unwrap();
    println!("{section}");
    eprintln!(
        "benchmark on the VM: {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
    if run.code != Some(0) {
        std::process::exit(run.code.unwrap_or(1));
    }
}

fn report(
    args: &Args,
    rows: &[(usize, SizeResult)],
    version: &str,
    plan_secs: f64,
    plan_rss_mib: f64,
) -> String {
    let mut md = String::new();
    let v2 = args.section_v2;
    let _ = writeln!(
        md,
        "{}",
        if v2 {
            "## On cgroup v2: the test VM\n"
        } else {
            "# Benchmarks\n"
        }
    );
    let _ = writeln!(md, "Produced by `cargo bench --bench scale -- {}--sizes {} --runs {} --naive-max {}` (benches/scale.rs); do not edit by hand.\n",
        if v2 { "--host vm " } else { "" },
        args.sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(","), args.runs, args.naive_max);
    let _ = writeln!(md, "- Machine: {}", machine());
    if v2 {
        let _ = writeln!(md, "- Host: Debian 12 in QEMU under TCG (software emulation: every figure is several times the machine's; compare ratios within this table), kernel booted with `systemd.unified_cgroup_hierarchy=1`");
    }
    let _ = writeln!(
        md,
        "- systemd: {version} (sandboxed, {}), one fresh sandbox per run",
        if v2 {
            "cgroup v2 with cpu, memory, pids, io delegated"
        } else {
            "cgroup v1/hybrid"
        }
    );
    let _ = writeln!(md, "- Figures: median of {} runs (hook: p50/p99 over {} samples per run); whole-process wall time of the release binary", args.runs, args.hook_samples);
    let _ = writeln!(md, "- Baselines in the same run: *naive* = one SetUnitProperties per user slice, sequential, no reads (run once per size ≤ {}); *files* = `ds01-slices render` + one Manager.Reload; *systemd's floor* = the same calls as ours (writes for cold, reads for warm; all slices held loaded, pipelined) from an already-connected client, without our process, configuration or comparison\n", args.naive_max);
    let _ = writeln!(md, "| N | cold apply | systemd's floor for those writes | naive loop | naive / cold | files + reload | cold / files | warm apply | systemd's floor for those reads | apply, 10% changed | verify all |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    for (n, r) in rows {
        let cold = median(r.cold.clone());
        let files = median(r.files.clone());
        let naive = r
            .naive
            .map(|v| format!("{v:.2} s"))
            .unwrap_or_else(|| "not run".into());
        let ratio = r
            .naive
            .map(|v| format!("{:.1}×", v / cold))
            .unwrap_or_else(|| "-".into());
        let floor = r
            .floor
            .map(|v| format!("{v:.2} s"))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(md, "| {n} | {cold:.2} s | {floor} | {naive} | {ratio} | {files:.2} s | {:.1}× | {:.3} s | {:.3} s | {:.2} s | {:.3} s |",
            cold / files,
            median(r.warm.clone()),
            median(r.read_floor.clone()),
            median(r.changed.clone()),
            median(r.verify.clone()));
    }
    let _ = writeln!(md, "\n## The pre-create hook (whole process, ms)\n");
    let _ = writeln!(md, "State: N users applied, no unit kept loaded by anything (the benchmark checks that no holder unit is left), user slices not loaded. The first hook starts `ds01.slice` and the group slice, as the container it runs for would; that one-time cost (systemd re-creating their cgroups under every user cgroup) is the in-sync p99. *In sync*: a listed user, spread over the files. *Writing*: a new unlisted user each time. *After a config change*: the overrides file edited before each sample, so the hook validates the whole configuration again (otherwise it parses no YAML: it takes its user's answer from the record of the last full validation, whose digests its files still have).\n");
    let _ = writeln!(md, "*Waiting for systemd* is the hook's own measure of the time it had a call outstanding (DS01_TRACE); *own part* = total − waiting: process start, configuration, comparison, lock and records. *systemd's write* is one SetUnitProperties on a fresh slice from an already-connected client, taken between the hook's samples.\n");
    let _ = writeln!(md, "| N | in sync p50 / p99 | in sync: own part p50 | writing p50 / p99 | writing: waiting for systemd p50 | writing: own part p50 | systemd's write p50 | writing − systemd's write p50 | after a config change p50 / p99 |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for (n, r) in rows {
        let own = |total: &Vec<f64>, waiting: &Vec<f64>| {
            percentile(total.iter().zip(waiting).map(|(t, w)| t - w).collect(), 0.5)
        };
        let w50 = percentile(r.hook_write.clone(), 0.5);
        let s50 = percentile(r.systemd_write.clone(), 0.5);
        let _ = writeln!(
            md,
            "| {n} | {:.1} / {:.1} | {:.1} | {w50:.1} / {:.1} | {:.1} | {:.1} | {s50:.1} | {:.1} | {:.1} / {:.1} |",
            percentile(r.hook_ok.clone(), 0.5),
            percentile(r.hook_ok.clone(), 0.99),
            own(&r.hook_ok, &r.hook_ok_waiting),
            percentile(r.hook_write.clone(), 0.99),
            percentile(r.hook_write_waiting.clone(), 0.5),
            own(&r.hook_write, &r.hook_write_waiting),
            w50 - s50,
            percentile(r.hook_revalidate.clone(), 0.5),
            percentile(r.hook_revalidate.clone(), 0.99)
        );
    }
    if let Some(bin) = &args.baseline_bin {
        let _ = writeln!(
            md,
            "\n### This build against the baseline build, same sandboxes (p50, ms)\n"
        );
        let _ = writeln!(md, "Baseline: `{}`, each of its samples taken right after ours with the same user (writing: another new user), from a copy of the same state.\n", bin.display());
        let _ = writeln!(md, "| N | in sync: this / baseline | writing: this / baseline | after a config change: this / baseline |");
        let _ = writeln!(md, "|---|---|---|---|");
        for (n, r) in rows {
            let p = |v: &Vec<f64>| percentile(v.clone(), 0.5);
            let _ = writeln!(
                md,
                "| {n} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} |",
                p(&r.hook_ok),
                p(&r.base_hook_ok),
                p(&r.hook_write),
                p(&r.base_hook_write),
                p(&r.hook_revalidate),
                p(&r.base_hook_revalidate)
            );
        }
    }
    let _ = writeln!(
        md,
        "\n## What users and Prometheus see (whole process, s)\n"
    );
    let _ = writeln!(md, "*verify*: every slice read (properties, state, drop-ins) and compared; *status*: every slice's properties and usage read once (`--interval 0`: no second CPU reading, which a single run takes after 1 s when a slice is active); *metrics*: the same reading rendered for Prometheus.\n");
    let _ = writeln!(
        md,
        "| N | verify | status | status / verify | metrics | metrics / verify |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for (n, r) in rows {
        let v = median(r.verify.clone());
        let st = median(r.status.clone());
        let m = median(r.metrics.clone());
        let _ = writeln!(
            md,
            "| {n} | {v:.3} | {st:.3} | {:.2}× | {m:.3} | {:.2}× |",
            st / v,
            m / v
        );
    }
    let _ = writeln!(md, "\n*Finding every container* (what `verify`, `status` and the metrics add for issue 25): one container-like scope (`docker-ID.scope`) in each of N/10 users' slices (at most 100), then `ops::containers::find` alone, in-process (systemd's `ListUnitsByPatterns` and the cgroup tree walked; median of 5 per run, ms), and the whole `verify` with them running (s).\n");
    let _ = writeln!(
        md,
        "| N | containers | finding them (ms) | verify with them (s) | finding / verify |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for (n, r) in rows {
        let d = median(r.discovery.clone());
        let v = median(r.verify_busy.clone());
        let _ = writeln!(
            md,
            "| {n} | {} | {d:.1} | {v:.3} | {:.1}% |",
            r.containers,
            d / 10.0 / v
        );
    }
    let _ = writeln!(md, "\n## Peak RSS (MiB, median)\n");
    let _ = writeln!(
        md,
        "| N | apply (cold) | apply (warm) | verify | hook | render |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for (n, r) in rows {
        let mib = |v: &Vec<f64>| median(v.clone()) / 1024.0;
        let _ = writeln!(
            md,
            "| {n} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            mib(&r.rss_cold),
            mib(&r.rss_warm),
            mib(&r.rss_verify),
            mib(&r.rss_hook),
            mib(&r.rss_render)
        );
    }
    let _ = writeln!(
        md,
        "\n`plan --json` at {} users: {:.3} s, peak RSS {:.1} MiB.\n",
        args.plan_users, plan_secs, plan_rss_mib
    );
    let _ = writeln!(
        md,
        "## Safety budget (checked by the benchmark; it fails otherwise)\n"
    );
    let _ = writeln!(md, "| N | max calls in flight (≤ 64) | max units pinned (≤ 128) | warm apply writes (= 0) | systemd on the bus, no holder unit left, after every run |");
    let _ = writeln!(md, "|---|---|---|---|---|");
    for (n, r) in rows {
        let _ = writeln!(
            md,
            "| {n} | {} | {} | {} | yes |",
            r.max_in_flight, r.max_pinned, r.warm_writes
        );
    }
    if v2 {
        let _ = writeln!(md, "\n### Ratios in this run\n");
        for (n, r) in rows {
            let cold = median(r.cold.clone());
            let naive = r
                .naive
                .map(|v| format!("naive / cold {:.2}×, ", v / cold))
                .unwrap_or_default();
            let _ = writeln!(
                md,
                "- N = {n}: {naive}cold / files + reload {:.1}×, warm / systemd's floor for the reads {:.2}×, warm writes {}",
                cold / median(r.files.clone()),
                median(r.warm.clone()) / median(r.read_floor.clone()),
                r.warm_writes
            );
        }
        return md;
    }
    let _ = writeln!(md, "\n## Targets at N = 1,000\n");
    if let Some((_, r)) = rows.iter().find(|(n, _)| *n == 1000) {
        let cold = median(r.cold.clone());
        let mut t = |name: &str, ok: bool, fig: String| {
            let _ = writeln!(md, "- [{}] {name}: {fig}", if ok { "x" } else { " " });
        };
        if let Some(naive) = r.naive {
            let floor = r
                .floor
                .map(|f| format!("; systemd's own floor for the same writes: {f:.2} s, {:.0}× the naive loop", naive / f))
                .unwrap_or_default();
            t(
                "cold apply ≥ 55× faster than the naive loop",
                naive / cold >= 55.0,
                format!("{:.0}× ({cold:.2} s vs {naive:.1} s){floor}", naive / cold),
            );
        }
        if let Some((_, r5)) = rows.iter().find(|(n, _)| *n == 5000) {
            let c5 = median(r5.cold.clone());
            // What bounds this ratio: systemd's own time for the same writes, same run.
            let floors = match (r5.floor, r.floor) {
                (Some(f5), Some(f1)) => format!(
                    "; systemd's own floor for the same writes: {f5:.2} s vs {f1:.2} s = {:.1}×",
                    f5 / f1
                ),
                _ => String::new(),
            };
            t(
                "cold apply at 5,000 ≤ 8× the cost at 1,000",
                c5 / cold <= 8.0,
                format!("{:.1}× ({c5:.2} s vs {cold:.2} s){floors}", c5 / cold),
            );
        }
        let files = median(r.files.clone());
        t(
            "render + one reload ≤ 0.5 s",
            files <= 0.5,
            format!("{files:.3} s"),
        );
        let warm = median(r.warm.clone());
        t(
            "warm apply: zero writes, ≤ 0.5 s",
            warm <= 0.5 && r.warm_writes == 0,
            format!(
                "{warm:.3} s, {} writes; systemd's own floor for the same reads: {:.3} s",
                r.warm_writes,
                median(r.read_floor.clone())
            ),
        );
        let verify = median(r.verify.clone());
        t(
            "verify of all ≤ 1 s",
            verify <= 1.0,
            format!("{verify:.3} s"),
        );
        let h = percentile(r.hook_ok.clone(), 0.5);
        t(
            "hook p50 ≤ 10 ms when the slice is right",
            h <= 10.0,
            format!("{h:.1} ms"),
        );
        let hw = percentile(r.hook_write.clone(), 0.5) - percentile(r.systemd_write.clone(), 0.5);
        let own = percentile(
            r.hook_write
                .iter()
                .zip(&r.hook_write_waiting)
                .map(|(t, w)| t - w)
                .collect(),
            0.5,
        );
        t(
            "hook that writes ≤ systemd's write + 5 ms (p50)",
            hw <= 5.0,
            format!(
                "{hw:+.1} ms against a bare SetUnitProperties from a connected client; the hook's own part (beyond its time waiting for systemd) is {own:.1} ms"
            ),
        );
    }
    if let Some((n, r)) = rows.iter().max_by_key(|(n, _)| *n) {
        let v = median(r.verify.clone());
        let st = median(r.status.clone());
        let _ = writeln!(
            md,
            "- [{}] `status` of all at {n} users ≤ 2× verify's time: {:.2}× ({st:.3} s vs {v:.3} s)",
            if st <= 2.0 * v { "x" } else { " " },
            st / v
        );
    }
    let _ = writeln!(
        md,
        "- [{}] `plan` at {} users: peak RSS ≤ 30 MiB: {plan_rss_mib:.1} MiB",
        if plan_rss_mib <= 30.0 { "x" } else { " " },
        args.plan_users
    );
    md
}
