//! GPU containers and systemd's reload. NVIDIA's runtime adds a container's GPU device rules
//! behind systemd's back; a daemon-reload makes systemd re-apply its own, and the container
//! loses its GPUs. These tests add (v1) or observe (v2) such rules on a unit below a user's
//! slice and check that apply, the hook, verify and status leave them in place, and that the
//! paths that reload (render on a live systemd, `apply --backend files`, the take-over of
//! rendered files) do not reload while anything runs in ds01 slices unless told
//! `--allow-reload`, nor when what runs cannot be told.
//!
//! What a unit's device rules are: on cgroup v1 its `devices.list`, where a rule written to
//! `devices.allow` by hand stands for NVIDIA's; on v2 the ids of the BPF device programs
//! attached to its cgroup (`bpftool cgroup show`): systemd replaces its own program when it
//! re-applies its rules, so an id that stays means nothing was re-applied. On v2 the real
//! thing, a Docker container whose runc program systemd knows nothing of, is tested in the VM
//! (the last test).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::docker::{docker, sh_ok, Site};
use crate::support::{wait_until, Run, World, EXAMPLE};

/// NVIDIA's character devices (/dev/nvidia*, /dev/nvidiactl: major 195), as NVIDIA's runtime
/// allows them on cgroup v1.
const GPU_RULE: &str = "c 195:* rwm";
const JOB: &str = "gpu-job.service";
const ALICE: &str = "ds01-student-alice.slice";

/// The ids of the BPF device programs attached to the cgroup `dir` (v2), in order.
fn device_programs(dir: &Path) -> Vec<u64> {
    let out = Command::new("bpftool")
        .args(["--json", "cgroup", "show"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("bpftool (in the VM image): {e}"));
    let run = Run::from(out);
    assert_eq!(
        run.code,
        Some(0),
        "bpftool cgroup show {}: {run}",
        dir.display()
    );
    device_program_ids(&run.stdout)
}

/// The ids of the BPF device programs in what `bpftool --json cgroup show` printed.
pub(crate) fn device_program_ids(printed: &str) -> Vec<u64> {
    let listed: Value = serde_json::from_str(printed.trim())
        .unwrap_or_else(|e| panic!("bpftool printed no JSON ({e}): {printed}"));
    listed
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["attach_type"] == "cgroup_device")
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

/// A container-like unit in alice's slice whose device rules systemd set (DevicePolicy=closed,
/// as Docker's scopes have) and, on v1, one more added behind systemd's back.
struct Job<'a> {
    w: &'a World,
    /// Its cgroup in the devices hierarchy (v1) or the unified one (v2).
    dir: PathBuf,
}

impl<'a> Job<'a> {
    fn start(w: &'a World) -> Job<'a> {
        let out = w.sb.systemd_run(&[
            &format!("--unit={JOB}"),
            &format!("--slice={ALICE}"),
            "-p",
            "DevicePolicy=closed",
            "-p",
            "DeviceAllow=/dev/null rw",
            "sleep",
            "infinity",
        ]);
        assert!(out.status.success(), "systemd-run {JOB}: {out:?}");
        let cg = w.sb.control_group(JOB).expect("the job's cgroup");
        let job = Job {
            w,
            dir: w.sb.cgroup_dir("devices", &cg),
        };
        job.add_gpu_rule();
        job
    }

    /// On v1, NVIDIA's rule written behind systemd's back (v2 needs a BPF program of ours,
    /// which the test has none of: there systemd's own program is watched).
    fn add_gpu_rule(&self) {
        if !self.w.sb.unified() {
            fs::write(self.dir.join("devices.allow"), format!("{GPU_RULE}\n"))
                .expect("devices.allow of the job");
            assert!(self.rules().contains(GPU_RULE), "{}", self.rules());
        }
    }

    /// Its device rules as the kernel holds them: devices.list (v1), the device programs'
    /// ids (v2).
    fn rules(&self) -> String {
        if self.w.sb.unified() {
            format!("device programs {:?}", device_programs(&self.dir))
        } else {
            fs::read_to_string(self.dir.join("devices.list")).expect("devices.list of the job")
        }
    }

    fn stop(&self) {
        let out = self.w.sb.systemctl(&["stop", JOB]);
        assert!(out.status.success(), "stop {JOB}: {out:?}");
    }
}

/// alice's MemoryMax changed, so that apply and the hook write to her slice.
const ALICE_OVERRIDE: &str = "alice:\n  aggregate:\n    memory_max: \"90G\"\n";

#[test]
fn a_device_rule_added_behind_systemds_back_survives_apply_the_hook_verify_and_status() {
    let Some(w) = World::new(EXAMPLE) else { return };
    w.expect(&["apply"], 0);
    let job = Job::start(&w);
    let before = job.rules();
    eprintln!("gpu: {JOB} device rules before: {before:?}");
    w.write("user-overrides.yaml", ALICE_OVERRIDE);
    let applied = w.expect(&["apply"], 0);
    assert!(
        applied.stdout.contains("~ ds01-student-alice.slice"),
        "{applied}"
    );
    assert_eq!(job.rules(), before, "apply re-applied the device rules");
    w.write(
        "user-overrides.yaml",
        "alice:\n  aggregate:\n    memory_max: \"92G\"\n",
    );
    let hook = w.expect(&["hook", "pre-create", "alice"], 0);
    assert_eq!(hook.stdout, format!("{ALICE}\n"), "{hook}");
    assert_eq!(job.rules(), before, "the hook re-applied the device rules");
    w.expect(&["verify"], 0);
    w.expect(&["status", "--interval", "0"], 0);
    let doctor = w.run(&["doctor"]);
    assert!(matches!(doctor.code, Some(0 | 1)), "{doctor}");
    assert_eq!(
        job.rules(),
        before,
        "verify, status or doctor re-applied them"
    );
    eprintln!(
        "gpu: {JOB} device rules after apply, hook, verify, status: {:?}",
        job.rules()
    );
}

/// `render`'s refusal: what it says, and that nothing was written.
#[track_caller]
fn assert_refused(w: &World, run: &Run) {
    assert_eq!(run.code, Some(1), "{run}");
    for said in [
        "refusing to render",
        &format!("{JOB} in {ALICE}: 1 process"),
        "Failed to initialize NVML",
        "Nothing was written",
        "ds01-slices apply",
        "--no-reload",
        "--allow-reload",
    ] {
        assert!(run.stderr.contains(said), "no {said:?} in: {run}");
    }
    assert_eq!(
        w.ds01_drop_ins("/etc/systemd/system"),
        Vec::<String>::new(),
        "rendered files written"
    );
}

#[test]
fn render_and_the_take_over_reload_only_when_nothing_runs_or_the_admin_says_so() {
    let Some(w) = World::new(EXAMPLE) else { return };
    w.expect(&["apply"], 0);
    let job = Job::start(&w);
    let before = job.rules();
    let dbus_files = w.control_mtimes();

    // Render on that systemd's root would reload it: refused, nothing written or reloaded.
    let render = w.run(&["render"]);
    eprintln!("gpu: render while {JOB} runs: {render}");
    assert_refused(&w, &render);
    assert_eq!(
        w.control_mtimes(),
        dbus_files,
        "render changed D-Bus drop-ins"
    );
    assert_eq!(job.rules(), before, "render reloaded systemd");
    // apply's file backend takes the same path.
    assert_refused(&w, &w.run(&["apply", "--backend", "files"]));
    assert_eq!(job.rules(), before);

    // Files without a reload are the admin's call; then apply takes them over, without one.
    let stdout = w.expect(&["render", "--no-reload"], 0).stdout;
    assert!(stdout.contains("not reloaded (--no-reload)"), "{stdout}");
    assert!(stdout.contains("once no containers run"), "{stdout}");
    assert!(!w.ds01_drop_ins("/etc/systemd/system").is_empty());
    let take_over = w.expect(&["apply"], 0);
    assert!(
        take_over.stderr.contains("(now set over D-Bus)"),
        "{take_over}"
    );
    assert!(
        take_over
            .stderr
            .contains("systemd was not reloaded after the take-over"),
        "{take_over}"
    );
    assert!(take_over.stderr.contains(JOB), "{take_over}");
    assert_eq!(w.ds01_drop_ins("/etc/systemd/system"), Vec::<String>::new());
    assert_eq!(job.rules(), before, "the take-over reloaded systemd");
    w.expect(&["verify"], 0);

    // The admin's word: the reload happens, and takes the rule away (v1) or replaces
    // systemd's device program (v2), as a daemon-reload does.
    let allowed = w.expect(&["render", "--allow-reload"], 0).stdout;
    assert!(
        allowed.contains("systemd reloaded with --allow-reload while 1 unit ran"),
        "{allowed}"
    );
    let reloaded = job.rules();
    eprintln!("gpu: {JOB} device rules after render --allow-reload: {reloaded:?}");
    assert_ne!(reloaded, before, "no reload, or it re-applied nothing");
    if !w.sb.unified() {
        assert!(!reloaded.contains(GPU_RULE), "{reloaded}");
    }
    job.add_gpu_rule();
    let before = job.rules();
    let take_over = w.expect(&["apply", "--allow-reload"], 0);
    assert!(
        take_over
            .stderr
            .contains("systemd reloaded with --allow-reload"),
        "{take_over}"
    );
    assert_ne!(job.rules(), before, "apply --allow-reload did not reload");

    // Nothing runs: render and the take-over reload as before.
    job.stop();
    let stdout = w.expect(&["render"], 0).stdout;
    assert!(
        stdout.contains("systemd reloaded (nothing ran in ds01 slices)"),
        "{stdout}"
    );
    let take_over = w.expect(&["apply"], 0);
    assert!(
        take_over
            .stderr
            .contains("systemd reloaded (nothing ran in ds01 slices)"),
        "{take_over}"
    );
    w.expect(&["verify"], 0);
}

#[test]
fn a_reload_is_refused_when_what_runs_cannot_be_told() {
    let Some(w) = World::new(EXAMPLE) else { return };
    // Nothing runs; but the kernel's tree given is not a cgroup file system.
    let nowhere = crate::support::Scratch::new("no-cgroups");
    let render = |args: &[&str]| Run::of(&mut w.cmd_on_cgroups(args, nowhere.path()));
    let refused = render(&["render"]);
    eprintln!("gpu: render with an unreadable cgroup tree: {refused}");
    assert_eq!(refused.code, Some(1), "{refused}");
    assert!(
        refused.stderr.contains(
            "whether containers run in ds01 slices cannot be told (the kernel's cgroup tree:"
        ),
        "{refused}"
    );
    assert!(refused.stderr.contains("Nothing was written"), "{refused}");
    assert_eq!(w.ds01_drop_ins("/etc/systemd/system"), Vec::<String>::new());
    let allowed = render(&["render", "--allow-reload"]);
    assert_eq!(allowed.code, Some(0), "{allowed}");
    assert!(allowed.stdout.contains("could not be told"), "{allowed}");
}

/// The device programs of `dir` once a reload has attached a new one of systemd's (an id not in
/// `previous`) and detached `replaced`, the one the reload before attached. systemd does both
/// after the reload's reply, from its queue of cgroups to realize, the new one first: read at
/// once, the list can be the old one, or hold both. The container keeps runc's own program
/// throughout. Err with what was seen when that did not happen within the deadline.
fn reloaded_programs(
    dir: &Path,
    previous: &[u64],
    replaced: Option<u64>,
) -> Result<(Vec<u64>, u64), String> {
    let mut seen = previous.to_vec();
    wait_until(
        Duration::from_secs(30),
        &format!("a new device program on {}", dir.display()),
        || {
            seen = device_programs(dir);
            let new = seen.iter().copied().find(|id| !previous.contains(id))?;
            (!replaced.is_some_and(|old| seen.contains(&old))).then(|| (seen.clone(), new))
        },
    )
    .map_err(|e| format!("{e}: last seen {seen:?}, before {previous:?}, to go {replaced:?}"))
}

/// The rendered files of the site's slices on the VM's own root.
fn rendered_files(group: &str, user: &str) -> Vec<PathBuf> {
    [
        "ds01.slice".to_owned(),
        format!("ds01-{group}.slice"),
        format!("ds01-{group}-{user}.slice"),
    ]
    .iter()
    .map(|s| Path::new("/etc/systemd/system").join(format!("{s}.d/10-resource-limits.conf")))
    .collect()
}

/// Removes what a failed run of the Docker test may leave in the VM's /etc.
struct RenderedGuard(Vec<PathBuf>);

impl Drop for RenderedGuard {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = fs::remove_file(f);
            if let Some(dir) = f.parent() {
                let _ = fs::remove_dir(dir);
            }
        }
    }
}

#[test]
fn a_containers_device_program_is_left_alone_and_a_reload_waits_for_the_admins_word() {
    let Some(_docker) = docker() else { return };
    let (group, user) = ("gpu", "gina");
    let mut site = Site::new(
        group,
        user,
        "      memory_max: \"256M\"\n      tasks_max: 64\n",
    );
    let files = rendered_files(group, user);
    assert!(
        files.iter().all(|f| !f.exists()),
        "rendered files on the VM's root before the test: {files:?}"
    );
    let _guard = RenderedGuard(files.clone());
    let id = site.run_container("sleep 600");
    let scope = format!("docker-{id}.scope");
    let dir = site.cgroup().join(&scope);
    let before = device_programs(&dir);
    assert!(!before.is_empty(), "no device program on {}", dir.display());
    let mut seen = vec![format!("before {before:?}")];

    site.write(
        "user-overrides.yaml",
        &format!("{user}:\n  aggregate:\n    memory_max: \"300M\"\n"),
    );
    let applied = site.ds01(&["apply"]);
    assert_eq!(applied.code, Some(0), "{applied}");
    assert!(
        applied.stdout.contains("MemoryMax"),
        "apply wrote nothing: {applied}"
    );
    assert_eq!(device_programs(&dir), before, "after apply");
    site.write(
        "user-overrides.yaml",
        &format!("{user}:\n  aggregate:\n    memory_max: \"310M\"\n"),
    );
    site.hook();
    assert_eq!(device_programs(&dir), before, "after the hook");
    // Only gina's slice: the other Docker tests on this VM's systemd leave their users' slices
    // behind, active and still limited, which a verify of every slice reports as stale (exit 3).
    for args in [
        &["verify", "--user", user][..],
        &["status", user, "--interval", "0"],
    ] {
        let run = site.ds01(args);
        assert_eq!(run.code, Some(0), "{args:?}: {run}");
    }
    assert_eq!(device_programs(&dir), before, "after verify and status");
    seen.push(format!(
        "after apply, hook, verify, status {:?}",
        device_programs(&dir)
    ));

    // render on the VM's live root would reload its systemd: refused.
    let refused = site.ds01(&["render"]);
    assert_eq!(refused.code, Some(1), "{refused}");
    assert!(refused.stderr.contains("refusing to render"), "{refused}");
    assert!(refused.stderr.contains(&scope), "{refused}");
    assert!(files.iter().all(|f| !f.exists()), "render wrote {files:?}");
    assert_eq!(device_programs(&dir), before, "after the refused render");
    seen.push(format!("refused render {:?}", device_programs(&dir)));

    // With the word: systemd reloads and attaches a device program of its own.
    let allowed = site.ds01(&["render", "--allow-reload"]);
    assert_eq!(allowed.code, Some(0), "{allowed}");
    assert!(
        allowed
            .stdout
            .contains("systemd reloaded with --allow-reload while"),
        "{allowed}"
    );
    let (reloaded, systemds) = reloaded_programs(&dir, &before, None)
        .unwrap_or_else(|e| panic!("render --allow-reload: {e}"));
    seen.push(format!("render --allow-reload {reloaded:?}"));
    let reload_again = sh_ok("systemctl daemon-reload && echo ok");
    assert_eq!(reload_again.trim(), "ok");
    let (by_hand, _) = reloaded_programs(&dir, &reloaded, Some(systemds))
        .unwrap_or_else(|e| panic!("systemctl daemon-reload: {e}"));
    seen.push(format!("systemctl daemon-reload {by_hand:?}"));

    // The take-over of those files: done, without a reload.
    let take_over = site.ds01(&["apply"]);
    assert_eq!(take_over.code, Some(0), "{take_over}");
    assert!(
        take_over
            .stderr
            .contains("systemd was not reloaded after the take-over"),
        "{take_over}"
    );
    assert!(files.iter().all(|f| !f.exists()), "left {files:?}");
    assert_eq!(device_programs(&dir), by_hand, "the take-over reloaded");
    seen.push(format!("take-over {:?}", device_programs(&dir)));
    eprintln!("gpu: device programs of {scope}: {}", seen.join("; "));
}

/// `daemon-reload`, through which the Debian package's scripts reload: refused while a unit
/// runs in a user's slice (its device rules stay), done with `--allow-reload`, done when
/// nothing runs, refused when what runs cannot be told.
#[test]
fn daemon_reload_reloads_only_when_nothing_runs_or_the_admin_says_so() {
    let Some(w) = World::new(EXAMPLE) else { return };
    w.expect(&["apply"], 0);
    let job = Job::start(&w);
    let before = job.rules();
    let refused = w.run(&["daemon-reload"]);
    eprintln!("gpu: daemon-reload while {JOB} runs: {refused}");
    assert_eq!(refused.code, Some(1), "{refused}");
    for said in [
        "ds01-slices: systemd not reloaded: 1 unit runs in ds01 slices",
        &format!("{JOB} in {ALICE}: 1 process"),
        "Failed to initialize NVML",
        "Run 'systemctl daemon-reload' once no containers run in ds01 slices",
    ] {
        assert!(refused.stderr.contains(said), "no {said:?} in: {refused}");
    }
    assert_eq!(refused.stderr.lines().count(), 1, "{refused}");
    assert_eq!(job.rules(), before, "daemon-reload reloaded systemd");

    let allowed = w.expect(&["daemon-reload", "--allow-reload"], 0);
    assert!(
        allowed
            .stderr
            .contains("systemd reloaded with --allow-reload while 1 unit ran"),
        "{allowed}"
    );
    let reloaded = job.rules();
    assert_ne!(
        reloaded, before,
        "daemon-reload --allow-reload did not reload"
    );
    if !w.sb.unified() {
        assert!(!reloaded.contains(GPU_RULE), "{reloaded}");
    }

    job.stop();
    let idle = w.expect(&["daemon-reload"], 0);
    assert!(
        idle.stderr
            .contains("systemd reloaded (nothing ran in ds01 slices)"),
        "{idle}"
    );
    let nowhere = crate::support::Scratch::new("no-cgroups");
    let unknown = Run::of(&mut w.cmd_on_cgroups(&["daemon-reload"], nowhere.path()));
    assert_eq!(unknown.code, Some(1), "{unknown}");
    assert!(
        unknown
            .stderr
            .contains("systemd not reloaded: whether containers run in ds01 slices cannot be told"),
        "{unknown}"
    );
}
