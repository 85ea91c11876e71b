//! `status`: usage against limits per slice, closest to a limit first; a bar per resource
//! on a terminal (green, yellow, red at the thresholds of `model::usage`), `--json` the same
//! data, `--watch` again every few seconds with CPU rates over the last interval.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use super::args::Globals;
use super::exit::{CliError, CliResult};
use super::out;
use crate::config::Config;
use crate::error::{Exit, UsageError};
use crate::model::containers::OutsideContainer;
use crate::model::names::{SliceKind, UserName};
use crate::model::usage::human_bytes;
use crate::model::usage::{Level, Meter};
use crate::ops::status::{self, CpuSamples, SliceStatus, StatusOptions, StatusReport};
use crate::ops::Scope;
use crate::systemd::BusSystemd;

const BAR_WIDTH: usize = 20;

/// The shortest `--watch` interval. Any user may run `status`, and each round reads every
/// slice from systemd: at 0.1 s rounds PID 1 spent 26-43% of a CPU on them (issue 23); at
/// 1 s it is a tenth of that, and a CPU rate over less than a second says little anyway.
pub const MIN_WATCH: Duration = Duration::from_secs(1);

pub fn status(
    globals: &Globals,
    config: &Config,
    user: Option<&UserName>,
    watch: Option<f64>,
    interval: f64,
    all: bool,
) -> CliResult {
    let seconds = |v: f64, what: &str| {
        if v.is_finite() && (0.0..=86_400.0).contains(&v) {
            Ok(Duration::from_secs_f64(v))
        } else {
            Err(UsageError(format!(
                "{what} {v} is not a number of seconds between 0 and 86400"
            )))
        }
    };
    let interval = seconds(interval, "--interval")?;
    let watch = watch.map(|w| seconds(w, "--watch")).transpose()?;
    if let Some(w) = watch.filter(|w| *w < MIN_WATCH) {
        return Err(UsageError(format!(
            "--watch {} is below the {} s floor: each round reads every slice from systemd, and faster rounds load systemd (PID 1) for every user of this machine; use --watch {} or more",
            w.as_secs_f64(),
            MIN_WATCH.as_secs(),
            MIN_WATCH.as_secs()
        ))
        .into());
    }
    let terminal = std::io::stdout().is_terminal();
    let style = Style {
        bars: terminal,
        colour: terminal && std::env::var_os("NO_COLOR").is_none(),
        all,
    };
    let rt = super::setup::async_runtime()?;
    let Some(every) = watch else {
        let sd = rt.block_on(globals.connect())?;
        let opts = StatusOptions {
            cpu_interval: interval,
            previous: None,
        };
        let (report, _) = rt.block_on(run(globals, config, user, &sd, opts))?;
        show(globals, &report, style)?;
        return Ok(exit_of(&report));
    };
    // Until interrupted; a lost connection is said once per round and made again.
    let mut previous: Option<CpuSamples> = None;
    let mut sd: Option<BusSystemd> = None;
    loop {
        let started = Instant::now();
        let round = rt.block_on(async {
            let bus = match sd.take() {
                Some(b) => b,
                None => globals.connect().await?,
            };
            let opts = StatusOptions {
                cpu_interval: if previous.is_some() {
                    Duration::ZERO
                } else {
                    interval.min(every)
                },
                previous: previous.as_ref(),
            };
            let result = run(globals, config, user, &bus, opts).await;
            Ok::<_, CliError>((bus, result))
        });
        match round {
            Ok((bus, Ok((report, samples)))) => {
                sd = Some(bus);
                previous = Some(samples);
                if style.bars {
                    // Clear the screen and go home, as watch(1) does.
                    out::stdout("\x1b[H\x1b[2J")?;
                }
                show(globals, &report, style)?;
            }
            Ok((_, Err(e))) | Err(e) => out::stderr(&e.message()),
        }
        // On the runtime, so that what waits for signals (`--host`'s ssh) is served meanwhile.
        let pause = every.saturating_sub(started.elapsed());
        rt.block_on(async { tokio::time::sleep(pause).await });
    }
}

async fn run(
    globals: &Globals,
    config: &Config,
    user: Option<&UserName>,
    sd: &BusSystemd,
    opts: StatusOptions<'_>,
) -> Result<(StatusReport, CpuSamples), CliError> {
    let ownership = globals.ownership();
    let (mut report, samples) = status::status(
        sd,
        config,
        Scope::from(user),
        &ownership,
        globals.kernel_root(),
        opts,
    )
    .await?;
    report.notes.extend(globals.remote_note());
    Ok((report, samples))
}

fn exit_of(report: &StatusReport) -> Exit {
    if report.slices.iter().any(|s| s.error.is_some()) {
        Exit::Failure
    } else {
        Exit::Ok
    }
}

fn show(globals: &Globals, report: &StatusReport, style: Style) -> Result<(), CliError> {
    out::notes(&report.notes);
    if globals.json {
        out::json(report)
    } else {
        out::stdout(&text(report, style))
    }
}

#[derive(Debug, Clone, Copy)]
struct Style {
    bars: bool,
    colour: bool,
    /// Every slice, the inactive ones with nothing to report too.
    all: bool,
}

/// Inactive, its limits as configured, nothing to report: hundreds of these are one line.
fn quiet(s: &SliceStatus) -> bool {
    !s.active && s.error.is_none() && s.planned.is_some() && !s.drift.values().any(|d| *d)
}

fn text(report: &StatusReport, style: Style) -> String {
    let mut out = String::new();
    let outside = report
        .containers
        .as_ref()
        .map_or(&[][..], |c| c.outside.as_slice());
    let mut quiet_by_group: BTreeMap<&str, u64> = BTreeMap::new();
    for s in &report.slices {
        let theirs: Vec<&OutsideContainer> = outside
            .iter()
            .filter(|c| c.owner_slice.as_ref() == Some(&s.slice))
            .collect();
        if !style.all && quiet(s) && theirs.is_empty() {
            *quiet_by_group
                .entry(s.group.as_deref().unwrap_or("-"))
                .or_default() += 1;
            continue;
        }
        slice_text(&mut out, s, style);
        for c in theirs {
            let _ = writeln!(
                out,
                "    outside {} (not under these limits)",
                super::containers::line(c)
            );
        }
    }
    if !quiet_by_group.is_empty() {
        let groups: Vec<String> = quiet_by_group
            .iter()
            .map(|(g, n)| format!("{g} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "{} with their limits as configured ({}); 'ds01-slices status --all' lists them",
            out::counted(
                quiet_by_group.values().sum(),
                "inactive slice",
                "inactive slices"
            ),
            groups.join(", ")
        );
    }
    if let Some(found) = &report.containers {
        out.push_str(&super::containers::section(found));
    }
    let active = report.slices.iter().filter(|s| s.active).count();
    let level_count = |l: Level| {
        report
            .slices
            .iter()
            .filter(|s| s.closeness.map(Level::of) == Some(l))
            .count()
    };
    let errors = report.slices.iter().filter(|s| s.error.is_some()).count();
    let _ = write!(
        out,
        "{} slices, {active} active; {} at 85% or more of a limit, {} at 70% or more",
        report.slices.len(),
        level_count(Level::Critical),
        level_count(Level::Warn),
    );
    if let Some(secs) = report.cpu_interval_secs {
        let _ = write!(out, "; CPU over the last {secs:.1} s");
    }
    if errors > 0 {
        let _ = write!(out, "; {errors} could not be read");
    }
    if !outside.is_empty() {
        let n = outside.len() as u64;
        let _ = write!(
            out,
            "; {}",
            out::counted(
                n,
                "container outside its user's slice",
                "containers outside their user's slice"
            )
        );
    }
    out.push('\n');
    out
}

fn slice_text(out: &mut String, s: &SliceStatus, style: Style) {
    let who = match (&s.group, &s.user) {
        (Some(g), Some(u)) => format!(" ({g}, {u})"),
        (Some(g), None) => format!(" ({g})"),
        _ => String::new(),
    };
    if let Some(e) = &s.error {
        let _ = writeln!(out, "{}{who}: unreadable: {e}", s.slice);
        return;
    }
    let mut state = vec![if s.active { "active" } else { "inactive" }.to_owned()];
    if s.active {
        if let Some(t) = s.tasks {
            state.push(out::counted(t, "task", "tasks"));
        }
        if let Some(c) = s.cgroup.children {
            // Below a user slice, its containers; below the others, the slices under them.
            state.push(if s.kind == SliceKind::User {
                out::counted(c, "container", "containers")
            } else {
                out::counted(c, "child cgroup", "child cgroups")
            });
        }
    }
    match (s.cgroup.oom_kills, s.cgroup.memory_failcnt) {
        (Some(k), _) if k > 0 => state.push(out::counted(k, "OOM kill", "OOM kills")),
        (_, Some(f)) if f > 0 => state.push(format!(
            "memory limit hit {}",
            out::counted(f, "time", "times")
        )),
        _ => {}
    }
    if s.planned.is_none() {
        state.push("no longer configured".to_owned());
    }
    let drifted: Vec<&str> = s
        .drift
        .iter()
        .filter(|(_, d)| **d)
        .map(|(p, _)| p.as_str())
        .collect();
    if !drifted.is_empty() {
        state.push(format!(
            "drift: {} (run 'ds01-slices verify')",
            drifted.join(", ")
        ));
    }
    if !s.active {
        // Nothing runs, so nothing to measure: one line with the limits (thousands of idle
        // users stay readable).
        let _ = writeln!(
            out,
            "{}{who}: {}; limits: {}",
            s.slice,
            state.join(", "),
            limits_text(s)
        );
        return;
    }
    let _ = writeln!(out, "{}{who}: {}", s.slice, state.join(", "));
    let r = &s.resources;
    let bytes = |v: f64| human_bytes(v as u64);
    let mut memory = reading(r.memory, bytes, "no MemoryMax");
    if let Some(high) = s.limits.memory_high_bytes {
        let _ = write!(memory, " (MemoryHigh {})", human_bytes(high));
    }
    let pressure = |p: Option<f64>| p.map(|p| format!("  pressure {p:.1}%")).unwrap_or_default();
    // Shown against MemoryMax, coloured by MemoryHigh too (where throttling starts).
    let memory_meter = Meter {
        level: r.memory.level.max(r.memory_high.level),
        ..r.memory
    };
    line(
        out,
        "memory",
        memory_meter,
        &memory,
        &pressure(s.cgroup.memory_pressure_avg10),
        style,
    );
    let tasks = reading(r.tasks, |v| format!("{v:.0}"), "no TasksMax");
    line(out, "tasks", r.tasks, &tasks, "", style);
    let cpu = match (r.cpu.used, r.cpu.limit) {
        (None, Some(q)) if s.active => format!("- / {q:.2} cores"),
        (None, Some(q)) => format!("0 / {q:.2} cores"),
        (None, None) => "no CPUQuota".to_owned(),
        (Some(u), Some(q)) => format!("{u:.2} / {q:.2} cores"),
        (Some(u), None) => format!("{u:.2} cores, no CPUQuota"),
    };
    line(
        out,
        "cpu",
        r.cpu,
        &cpu,
        &pressure(s.cgroup.cpu_pressure_avg10),
        style,
    );
}

fn limits_text(s: &SliceStatus) -> String {
    let l = &s.limits;
    let mut parts = Vec::new();
    if let Some(m) = l.memory_max_bytes {
        parts.push(format!("memory {}", human_bytes(m)));
    }
    if let Some(m) = l.memory_high_bytes {
        parts.push(format!("MemoryHigh {}", human_bytes(m)));
    }
    if let Some(t) = l.tasks_max {
        parts.push(format!("tasks {t}"));
    }
    if let Some(c) = l.cpu_quota_cores {
        parts.push(format!("cpu {c:.2} cores"));
    }
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

fn reading(m: Meter, fmt: impl Fn(f64) -> String, unlimited: &str) -> String {
    match (m.used, m.limit) {
        (Some(u), Some(l)) => format!("{} / {}", fmt(u), fmt(l)),
        (Some(u), None) => format!("{}, {unlimited}", fmt(u)),
        (None, Some(l)) => format!("- / {}", fmt(l)),
        (None, None) => unlimited.to_owned(),
    }
}

fn line(out: &mut String, name: &str, m: Meter, reading: &str, extra: &str, style: Style) {
    let percent = m
        .ratio
        .map(|r| format!("{:>4.0}%", r * 100.0))
        .unwrap_or_else(|| "    -".to_owned());
    let bar = if style.bars {
        format!("{} ", bar(m, style.colour))
    } else {
        String::new()
    };
    let _ = writeln!(out, "    {name:<7}{bar}{percent}  {reading}{extra}");
}

fn bar(m: Meter, colour: bool) -> String {
    let filled = m
        .ratio
        .map(|r| ((r.clamp(0.0, 1.0) * BAR_WIDTH as f64).round()) as usize)
        .unwrap_or(0);
    let body = format!("{}{}", "#".repeat(filled), ".".repeat(BAR_WIDTH - filled));
    let code = match m.level {
        Some(Level::Ok) => "32",
        Some(Level::Warn) => "33",
        Some(Level::Critical) => "31",
        None => "2",
    };
    if colour {
        format!("[\x1b[{code}m{body}\x1b[0m]")
    } else {
        format!("[{body}]")
    }
}
