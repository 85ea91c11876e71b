//! The installed package's watcher under edits an admin makes (issue 23, item 1), in the cgroup
//! v2 VM: ten edits of user-overrides.yaml in twenty seconds, the last one's values in force
//! within the bound (`POLL + QUIET` plus two applies' time, with the applies' time read from the
//! watcher's journal); then a bad file for two minutes (the units stay active, the limits as
//! they were, the journal says why for each bad version, and the watcher does not busy-loop);
//! then a good file, applied within the same bound. Times are taken in the guest: from the edit
//! to the end of the first `systemctl show` that shows its value.

use std::time::Duration;

use ds01_slices::model::watch::{POLL, QUIET};

use crate::package::{
    diagnosis, install, install_example_config, package_for_the_vm, ALICE_MEMORY_MAX,
};
use crate::support::guest_deadline;
use crate::support::vm::Vm;

const MARIA: &str = "ds01-researcher-maria_garcia.slice";
/// How long the bad configuration stays (the issue's two minutes).
const BAD_FOR: Duration = Duration::from_secs(120);

/// maria.garcia's overrides (as in the example) with TasksMax `tasks`.
fn overrides(tasks: u32) -> String {
    format!(
        "maria.garcia:\n  aggregate:\n    memory_max: \"512G\"\n    memory_high: \"480G\"\n    tasks_max: {tasks}\n"
    )
}

/// A guest shell function `edit N TEXT`: writes the overrides file, every other time as an
/// editor saves (a new file renamed over it), else in place; prints `edit N <time>`.
const EDIT: &str = r#"
f=/opt/ds01-infra/config/user-overrides.yaml
edit() {
  if [ $(($1 % 2)) = 0 ]; then printf '%s' "$2" >"$f.new" && mv "$f.new" "$f"; else printf '%s' "$2" >"$f"; fi
  echo "edit $1 $(date +%s.%N)"
}
"#;

/// A guest script fragment that polls maria's TasksMax every 200 ms until it is `want` (or
/// `limit` seconds passed) and prints `in_force <end of that show> <its start>` or `timeout`.
fn until_tasks(want: u32, limit: u64) -> String {
    format!(
        r#"
give_up=$(( $(date +%s) + {limit} ))
while :; do
  a=$(date +%s.%N); v=$(systemctl show -p TasksMax --value {MARIA}); b=$(date +%s.%N)
  if [ "$v" = "{want}" ]; then echo "in_force $b $a"; break; fi
  if [ "$(date +%s)" -gt "$give_up" ]; then echo "timeout TasksMax=$v"; break; fi
  sleep 0.2
done
"#
    )
}

/// The `word <seconds>` values a guest script printed, in order.
fn times(out: &str, word: &str) -> Vec<f64> {
    out.lines()
        .filter_map(|l| {
            l.strip_prefix(word)?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .collect()
}

/// `in_force END START` of a guest script: the end of the show that saw the value, and how
/// long that show took.
fn in_force(vm: &Vm, out: &str) -> (f64, f64) {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("in_force "))
        .unwrap_or_else(|| {
            panic!(
                "the last edit's value was never in force:\n{out}\n{}",
                diagnosis(vm)
            )
        });
    let t: Vec<f64> = line
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    (t[0], t[0] - t[1])
}

/// The watcher's journal since `since` (guest time, seconds): `(time, message)`.
fn journal(vm: &Vm, since: f64) -> Vec<(f64, String)> {
    vm.sh_ok(&format!(
        "journalctl -u 'ds01-slices-*' -o short-unix --no-pager --since @{since:.0}"
    ))
    .lines()
    .filter_map(|l| {
        let (time, rest) = l.split_once(' ')?;
        let message = rest.split_once(": ")?.1;
        Some((time.parse().ok()?, message.to_owned()))
    })
    .collect()
}

/// The longest apply the watcher reported (`in force|refused|failed after X s`).
fn longest_apply(lines: &[(f64, String)]) -> f64 {
    lines
        .iter()
        .filter_map(|(_, m)| {
            let rest = m.strip_prefix("ds01-slices: watch: ")?;
            let after = rest.split_once(" after ")?.1;
            after.split_once(" s")?.0.parse::<f64>().ok()
        })
        .fold(0.0, f64::max)
}

/// Every ds01-slices unit that failed, and each enabled long-running one that is not active.
fn units_not_running(vm: &Vm) -> String {
    vm.sh_ok(
        "systemctl list-units --failed --no-legend --plain 'ds01-slices*'; \
         for u in $(systemctl list-unit-files --state=enabled --no-legend 'ds01-slices*' | cut -d' ' -f1); do \
           [ \"$u\" = ds01-slices-apply.service ] || systemctl is-active --quiet \"$u\" || echo \"$u $(systemctl is-active \"$u\")\"; \
         done",
    )
}

/// The limits of every ds01 slice systemd has loaded.
fn all_limits(vm: &Vm) -> String {
    vm.sh_ok("systemctl show -p Id -p CPUQuotaPerSecUSec -p MemoryMax -p MemoryHigh -p TasksMax 'ds01*.slice'")
}

/// The bound for applies that take `apply` seconds: an apply under way when the edit lands
/// ends, the next poll sees the edit, it is applied once unchanged for QUIET; 1 s more for
/// the polls' reads and timers. Asserted as a [`guest_deadline`]: a loaded machine slows
/// everything in the VM, the reads and timers as much as the applies.
fn bound(apply: f64) -> Duration {
    (POLL + QUIET + Duration::from_secs(1)) + Duration::from_secs_f64(2.0 * apply)
}

#[test]
fn the_installed_watcher_follows_every_edit_refuses_a_bad_file_and_never_stops_watching() {
    let Some(deb) = package_for_the_vm() else {
        return;
    };
    let vm = Vm::boot("bookworm").unwrap_or_else(|e| panic!("booting the VM: {e}"));
    // The configuration first, then the package: its postinst starts the units.
    install_example_config(&vm);
    let installed = install(&vm, &deb);
    let settled = "systemctl show -p TasksMax --value ds01-researcher-maria_garcia.slice";
    let started = vm.sh_ok(&format!(
        "for i in $(seq 600); do [ \"$({settled})\" = 327680 ] && [ -z \"$(systemctl list-jobs --no-legend 'ds01-slices*')\" ] && break; sleep 0.2; done; date +%s.%N"
    ));
    let t0: f64 = started.trim().parse().unwrap();
    assert_eq!(
        units_not_running(&vm).trim(),
        "",
        "after dpkg -i:\n{installed}\n{}",
        diagnosis(&vm)
    );

    // Ten edits in twenty seconds.
    let mut script = EDIT.to_owned();
    for i in 1..=10 {
        script.push_str(&format!("edit {i} '{}'\n", overrides(1000 + i)));
        if i < 10 {
            script.push_str("sleep 2\n");
        }
    }
    script.push_str(&until_tasks(1010, 120));
    let out = vm
        .sh(&script, Duration::from_secs(400))
        .unwrap_or_else(|e| panic!("{e}"));
    let edits = times(&out.stdout, "edit ");
    let (seen, show) = in_force(&vm, &out.stdout);
    let last_edit = edits[9];
    let lines = journal(&vm, t0);
    let apply = longest_apply(&lines);
    let took = seen - last_edit;
    // Each apply, from its "applying" line to its outcome's: how many edits landed in one.
    let applying: Vec<(f64, f64)> = lines
        .iter()
        .filter(|(_, m)| m.contains("watch: the configuration changed: applying it"))
        .filter_map(|(start, _)| {
            let end = lines
                .iter()
                .find(|(t, m)| t >= start && m.contains("watch: ") && m.contains(" after "))?;
            Some((*start, end.0))
        })
        .collect();
    let during = edits
        .iter()
        .filter(|&&e| applying.iter().any(|(start, end)| *start < e && e < *end))
        .count();
    let applies = lines
        .iter()
        .filter(|(t, m)| *t > edits[0] && m.contains("watch: in force after"))
        .count();
    println!(
        "ten edits in {:.1} s: the last in force {took:.2} s after it (the show that saw it took {show:.2} s); {applies} applies, the longest {apply:.2} s; {during} edits landed during an apply; bound {:.1} s",
        last_edit - edits[0],
        bound(apply).as_secs_f64()
    );
    assert!(
        Duration::from_secs_f64(took - show) <= guest_deadline(bound(apply)),
        "the last edit took {took:.2} s to be in force (bound {:.1} s)\n{}",
        bound(apply).as_secs_f64(),
        diagnosis(&vm)
    );
    assert_eq!(units_not_running(&vm).trim(), "", "{}", diagnosis(&vm));

    // A bad file for two minutes: a syntax error, then (halfway) a bad value.
    let before = all_limits(&vm);
    let cpu = "systemctl show -p CPUUsageNSec --value ds01-slices-watch.service";
    let cpu_before: f64 = vm.sh_ok(cpu).trim().parse().unwrap_or(0.0);
    let half = BAD_FOR.as_secs() / 2;
    let script = format!(
        "{EDIT}\nedit 11 'maria.garcia:\n  aggregate: [tasks_max\n'\nsleep {half}\n\
         edit 12 'maria.garcia:\n  aggregate:\n    tasks_max: lots\n'\nsleep {half}\n\
         systemctl show -p TasksMax --value {MARIA}"
    );
    let out = vm
        .sh(&script, BAD_FOR + Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}"));
    let bad_edits = times(&out.stdout, "edit ");
    let cpu_after: f64 = vm.sh_ok(cpu).trim().parse().unwrap_or(0.0);
    assert_eq!(out.stdout.lines().last(), Some("1010"), "{out}");
    assert_eq!(
        all_limits(&vm),
        before,
        "a bad configuration changed limits"
    );
    assert_eq!(units_not_running(&vm).trim(), "", "{}", diagnosis(&vm));
    let lines = journal(&vm, bad_edits[0] - 1.0);
    let refusals: Vec<&(f64, String)> = lines
        .iter()
        .filter(|(_, m)| m.contains("watch: refused after"))
        .collect();
    let why: Vec<&String> = lines
        .iter()
        .filter(|(_, m)| m.contains("user-overrides.yaml:") && m.contains("error"))
        .map(|(_, m)| m)
        .collect();
    assert_eq!(
        (refusals.len(), why.len()),
        (2, 2),
        "each bad version is refused once, saying why:\n{lines:#?}"
    );
    let cpu_used = (cpu_after - cpu_before) / 1e9;
    println!(
        "a bad file for {} s: 2 refusals ({}), limits unchanged, the watcher used {cpu_used:.2} s of CPU",
        BAD_FOR.as_secs(),
        why.iter()
            .map(|m| m.split("error: ").last().unwrap_or(m))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    // Polling every second costs milliseconds; a busy loop would use the whole time.
    assert!(
        cpu_used < BAD_FOR.as_secs_f64() / 4.0,
        "the watcher used {cpu_used:.1} s of CPU in {} s",
        BAD_FOR.as_secs()
    );

    // A good one after it.
    let script = format!(
        "{EDIT}\nedit 13 '{}'\n{}",
        overrides(4242),
        until_tasks(4242, 120)
    );
    let out = vm
        .sh(&script, Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}"));
    let edit = times(&out.stdout, "edit ")[0];
    let (seen, show) = in_force(&vm, &out.stdout);
    let apply = longest_apply(&journal(&vm, edit - 1.0));
    let took = seen - edit;
    println!(
        "the good file after it: in force {took:.2} s after the edit (the show took {show:.2} s; the apply {apply:.2} s; bound {:.1} s)",
        bound(apply).as_secs_f64()
    );
    assert!(
        Duration::from_secs_f64(took - show) <= guest_deadline(bound(apply)),
        "the good file took {took:.2} s to be in force (bound {:.1} s)\n{}",
        bound(apply).as_secs_f64(),
        diagnosis(&vm)
    );
    assert_eq!(units_not_running(&vm).trim(), "", "{}", diagnosis(&vm));
    assert!(vm
        .sh_ok("systemctl show -p MemoryMax ds01-student-alice.slice")
        .contains(ALICE_MEMORY_MAX));
}
