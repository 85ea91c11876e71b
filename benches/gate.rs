//! The gate's cost: the latency of `POST /containers/create` through the gate against the
//! daemon's own socket, and the throughput of `docker load` and `docker cp` both ways, in the
//! same run, the two paths interleaved sample by sample. Two platforms, each with its own
//! section of BENCHMARKS.md: the cgroup v2 test VM (gate/vm.rs, emulated: slow, but DS01's
//! hierarchy) and this machine natively (gate/native.rs, `--native`: a real CPU's costs, and
//! a bare relay's throughput beside the gate's).
//!
//!     cargo bench --bench gate                      # the VM: 40 creates, 3 loads and cps each way
//!     cargo bench --bench gate -- --native          # natively, beside a sandboxed systemd
//!     cargo bench --bench gate -- --creates 80 --runs 5 --mib 128
//!
//! Needs root, and what the VM needs (tests/it/support/vm.rs) or the sandbox needs
//! (tests/it/support/sandbox.rs) and apt (the native run's Docker packages).

#[path = "gate/native.rs"]
mod native;
#[path = "gate/relay.rs"]
mod relay;
#[path = "../tests/it/support/mod.rs"]
mod support;
#[path = "gate/vm.rs"]
mod vm;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;

/// Where BENCHMARKS.md's gate sections start (the scale benchmark keeps all that follows the
/// first), one per [`Platform`], in its order; a run rewrites its own.
const MARKERS: [&str; 3] = [
    "<!-- gate section: `cargo bench --bench gate` writes from here -->",
    "<!-- gate section, native: `cargo bench --bench gate -- --native` writes from here -->",
    "<!-- gate section, native with a spare CPU: `cargo bench --bench gate -- --native --spare-cpu` writes from here -->",
];

/// Where the benchmark runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// The cgroup v2 test VM, emulated.
    Vm,
    /// This machine's CPUs, shared by the client, the daemon and the gate.
    Native,
    /// This machine's CPUs, the gate on one of its own: as on a server with cores to spare.
    SpareCpu,
}

/// Run by python3 as the capped caller (argv: creates, runs, MiB, the gate's and the daemon's
/// PIDs, the daemon's socket, the gate's, and optionally a bare relay's socket and PID): each
/// create on a new connection, as the CLI makes it; the container removed (untimed) after each.
pub const MEASURE: &str = r#"
import http.client, json, os, socket, subprocess, sys, time
creates, runs, mib = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
pids = {"gate": int(sys.argv[4]), "dockerd": int(sys.argv[5])}
def cpu(pid):
    # (utime + stime, utime): fields 14 and 15 of /proc/PID/stat, in seconds; utime is the
    # process's own code, stime the kernel's work for it (for a relay: mostly the copies)
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(f[11]) + int(f[12])) / tick, int(f[11]) / tick
paths = {"direct": sys.argv[6], "gate": sys.argv[7]}
if len(sys.argv) > 9:
    # A bare relay (natively): what any process between the two costs, for the throughput.
    paths["relay"] = sys.argv[8]; pids["relay"] = int(sys.argv[9])
creating = {k: paths[k] for k in ("direct", "gate")}
class C(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("docker"); self.unix = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(self.unix)
body = json.dumps({"Image": "local/busybox", "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}})
def create(path):
    c = C(path)
    t = time.perf_counter()
    c.request("POST", "/v1.41/containers/create", body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse(); data = r.read()
    dt = time.perf_counter() - t
    assert r.status == 201, data
    c.close()
    c = C(path); c.request("DELETE", "/v1.41/containers/%s?force=1" % json.loads(data)["Id"]); c.getresponse().read(); c.close()
    return dt * 1000
def docker(out, key, path, *args):
    before = {k: cpu(p) for k, p in pids.items()}
    t = time.perf_counter()
    subprocess.run(["docker", "-H", "unix://" + path] + list(args), check=True, stdout=subprocess.DEVNULL)
    out[key + "_s"].append(time.perf_counter() - t)
    for k, p in pids.items():
        (total, user), (total_before, user_before) = cpu(p), before[k]
        out[key + "_" + k + "_cpu_s"].append(total - total_before)
        out[key + "_" + k + "_cpu_user_s"].append(user - user_before)
out = {k: {m + s: [] for m in ("load", "cp_in", "cp_out") for s in ["_s"] + ["_%s_cpu%s_s" % (w, u) for w in pids for u in ("", "_user")]} for k in paths}
for k in paths: out[k]["create_ms"] = []
for i in range(3):
    for k, p in creating.items(): create(p)
for i in range(creates):
    for k, p in (creating.items() if i % 2 == 0 else reversed(list(creating.items()))):
        out[k]["create_ms"].append(create(p))
box = subprocess.run(["docker", "-H", "unix://" + paths["direct"], "run", "-d", "--network", "none", "local/busybox", "sleep", "3600"], check=True, capture_output=True, text=True).stdout.strip()
for i in range(runs):
    # Interleaved, the first path alternating, as for the creates: a load that changes during
    # the run favours neither.
    for k, p in (paths.items() if i % 2 == 0 else reversed(list(paths.items()))):
        docker(out[k], "load", p, "load", "-q", "-i", "big.tar")
        subprocess.run(["docker", "-H", "unix://" + paths["direct"], "rmi", "bench/big"], check=True, stdout=subprocess.DEVNULL)
        docker(out[k], "cp_in", p, "cp", "blob", box + ":/tmp/blob")
        docker(out[k], "cp_out", p, "cp", box + ":/tmp/blob", "back")
        subprocess.run(["rm", "-rf", "back"], check=True)
subprocess.run(["docker", "-H", "unix://" + paths["direct"], "rm", "-f", box], check=True, stdout=subprocess.DEVNULL)
print(json.dumps(out))
"#;

pub struct Args {
    platform: Platform,
    creates: usize,
    runs: usize,
    mib: usize,
    out: PathBuf,
}

fn parse_args() -> Args {
    let mut a = Args {
        platform: Platform::Vm,
        creates: 40,
        runs: 3,
        mib: 64,
        out: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md")),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{arg} takes a value"));
        match arg.as_str() {
            "--creates" => a.creates = value().parse().expect("--creates N"),
            "--runs" => a.runs = value().parse().expect("--runs N"),
            "--mib" => a.mib = value().parse().expect("--mib N"),
            "--out" => a.out = PathBuf::from(value()),
            "--native" if a.platform == Platform::Vm => a.platform = Platform::Native,
            "--native" => {}
            "--spare-cpu" => a.platform = Platform::SpareCpu,
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// What one platform's run produced, for [`report`].
pub struct Measured {
    /// measure.py's JSON.
    figures: Value,
    /// How many creates the gate placed.
    placed: String,
    /// The gate's trace lines.
    traces: String,
    /// How many archive requests (`docker cp`) the gate spliced.
    spliced: String,
    /// What ran where, for the report's first line.
    platform: String,
    /// What the extra hop's copies cost on this platform, for the CPU table.
    copies: &'static str,
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(relay::RELAY_FLAG) && argv.len() == 4 {
        relay::relay(Path::new(&argv[2]), Path::new(&argv[3]));
    }
    let args = parse_args();
    let why_not = match args.platform {
        Platform::Vm => support::vm::unavailable(),
        Platform::Native | Platform::SpareCpu => support::Sandbox::unavailable(),
    };
    if let Some(why) = why_not {
        eprintln!("cannot run the gate benchmark: {why}");
        std::process::exit(1);
    }
    let started = Instant::now();
    let load_before = loadavg();
    let measured = match args.platform {
        Platform::Vm => vm::run(&args),
        Platform::Native | Platform::SpareCpu => native::run(&args),
    };
    let load = format!("{load_before} at the start, {} at the end", loadavg());
    let section = report(&args, &measured, &load);
    let (head, mut parts) = sections(&fs::read_to_string(&args.out).unwrap_or_default());
    parts[args.platform as usize] = section.clone();
    fs::write(&args.out, assemble(&head, &parts)).unwrap();
    println!("{section}");
    eprintln!(
        "gate benchmark: {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
}

/// BENCHMARKS.md as what precedes the gate's sections and each section of [`MARKERS`] (empty
/// where its marker is missing).
fn sections(old: &str) -> (String, Vec<String>) {
    let mut found: Vec<(usize, usize)> = MARKERS
        .iter()
        .enumerate()
        .filter_map(|(k, m)| old.find(m).map(|i| (i, k)))
        .collect();
    found.sort();
    let head = found.first().map_or(old, |&(i, _)| &old[..i]);
    let mut parts = vec![String::new(); MARKERS.len()];
    for (n, &(i, k)) in found.iter().enumerate() {
        let end = found.get(n + 1).map_or(old.len(), |&(j, _)| j);
        parts[k] = old[i + MARKERS[k].len()..end].trim().to_owned();
    }
    (head.trim().to_owned(), parts)
}

fn assemble(head: &str, parts: &[String]) -> String {
    let mut text = head.to_owned();
    for (marker, part) in MARKERS.iter().zip(parts) {
        let _ = write!(text, "\n\n{marker}\n\n{part}");
    }
    text.push('\n');
    text
}

/// This machine's load average over the last minute (the VM competes for its cores).
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The figures of each of the gate's trace lines (`DS01_TRACE=1`), in their order: body read,
/// decided, identity, slice, waiting for systemd, daemon connected, daemon's answer.
fn trace_figures(traces: &str) -> Vec<Vec<f64>> {
    traces
        .lines()
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            words
                .windows(2)
                .filter(|w| w[1].trim_end_matches([',', ')']) == "ms")
                .filter_map(|w| w[0].parse().ok())
                .collect::<Vec<f64>>()
        })
        .filter(|v| v.len() == 7)
        .collect()
}

fn report(args: &Args, m: &Measured, load: &str) -> String {
    let (f, placed) = (&m.figures, &m.placed);
    // The bare relay's columns (natively): what a process between the two costs without the gate.
    let relayed = !numbers(&f["relay"]["load_s"]).is_empty();
    let mut md = String::new();
    let (title, flag) = match args.platform {
        Platform::Vm => ("in the test VM", ""),
        Platform::Native => ("natively", " --native"),
        Platform::SpareCpu => (
            "natively, the gate on a CPU of its own",
            " --native --spare-cpu",
        ),
    };
    let _ = writeln!(
        md,
        "## The Docker API gate: its cost per request, {title}\n"
    );
    let _ = writeln!(
        md,
        "Produced by `cargo bench --bench gate --{flag} --creates {} --runs {} --mib {}` (benches/gate.rs); do not edit by hand.\n",
        args.creates, args.runs, args.mib
    );
    let _ = writeln!(
        md,
        "- Host: {} (this machine's load average: {load}); compare the columns, measured in the same run.",
        m.platform
    );
    let _ = writeln!(md, "- *direct*: the daemon's own socket; *gate*: `ds01-slices gate` (release build) in front of it, the caller a capped user whose slice is in sync (each create reads the user's three slices over D-Bus, admits the request and places it: {placed} creates placed).");
    if relayed {
        let _ = writeln!(md, "- *bare relay* (throughput only): a process that copies bytes between the client and the daemon's socket and nothing else (64 KiB at a time, a thread per direction: benches/gate/relay.rs), where the gate runs: what any process in the gate's place costs here.");
    }
    let _ = writeln!(md, "- Create: `POST /v1.41/containers/create` from python3 (a new connection each, as the CLI makes it), {} samples each way, interleaved, after 3 warm-up creates each; the container removed (untimed) after each.", args.creates);
    let _ = writeln!(md, "- Throughput: `docker load -i` of a {0} MiB image and `docker cp` of a {0} MiB file into and out of a running container, {1} runs each way, whole CLI process; MiB/s of the median. The gate splices `docker cp`'s archive requests past hyper (src/gate/bulk.rs: {2} spliced in the run); `load` goes through hyper.\n", args.mib, args.runs, m.spliced);
    let c = |k: &str| numbers(&f[k]["create_ms"]);
    let (d50, d95) = (percentile(c("direct"), 0.5), percentile(c("direct"), 0.95));
    let (g50, g95) = (percentile(c("gate"), 0.5), percentile(c("gate"), 0.95));
    let _ = writeln!(md, "| create (ms) | p50 | p95 |\n|---|---|---|");
    let _ = writeln!(md, "| direct | {d50:.1} | {d95:.1} |");
    let _ = writeln!(md, "| gate | {g50:.1} | {g95:.1} |");
    let _ = writeln!(
        md,
        "| gate − direct | {:+.1} | {:+.1} |\n",
        g50 - d50,
        g95 - d95
    );
    let traced = trace_figures(&m.traces);
    if !traced.is_empty() {
        let p50 = |i: usize| percentile(traced.iter().map(|v| v[i]).collect(), 0.5);
        let _ = writeln!(md, "Where a create's time goes through the gate: the gate's own trace (`DS01_TRACE=1`, one line per create, {} creates), each figure the p50 of its own; the client's whole request is the *gate* row above.\n", traced.len());
        let _ = writeln!(md, "| create through the gate (ms) | p50 |\n|---|---|");
        let rows = [
            "reading the request's body",
            "deciding (on a blocking thread)",
            "— the caller's account (NSS) and its configuration record",
            "— the hook's use case (three slices read, compared, the container admitted)",
            "—— of which waiting for systemd",
            "connecting to the daemon (after deciding)",
            "the daemon's answer to the placed create, from the gate's send",
        ];
        for (i, row) in rows.iter().enumerate() {
            let _ = writeln!(md, "| {row} | {:.1} |", p50(i));
        }
        let _ = writeln!(
            md,
            "| *direct*: the client's whole create, for comparison | {d50:.1} |\n"
        );
    }
    let _ = writeln!(
        md,
        "| throughput (MiB/s, median) | direct | gate | gate / direct |{}\n|---|---|---|---|{}",
        if relayed {
            " bare relay | relay / direct |"
        } else {
            ""
        },
        if relayed { "---|---|" } else { "" },
    );
    let mut ratios = Vec::new();
    let mut relay_ratios = Vec::new();
    for (key, name) in [
        ("load_s", "docker load"),
        ("cp_in_s", "docker cp into"),
        ("cp_out_s", "docker cp out of"),
    ] {
        let rate = |path: &str| args.mib as f64 / percentile(numbers(&f[path][key]), 0.5);
        let (d, g) = (rate("direct"), rate("gate"));
        ratios.push(g / d);
        let _ = write!(md, "| {name} | {d:.1} | {g:.1} | {:.2}× |", g / d);
        if relayed {
            let r = rate("relay");
            relay_ratios.push(r / d);
            let _ = write!(md, " {r:.1} | {:.2}× |", r / d);
        }
        md.push('\n');
    }
    let _ = writeln!(
        md,
        "\nCPU time spent during the same runs (`/proc/PID/stat`, median): what the extra hop costs. {}\n",
        m.copies
    );
    // The relay's columns show what a process between the two costs at least: the daemon's
    // CPU through it (any framing the gate changes would cost the daemon more than this) and
    // the relay's own, nearly all of it the kernel's copies.
    let _ = writeln!(
        md,
        "| CPU (s, median) | dockerd, direct | dockerd, through the gate |{} the gate | the gate per MiB (ms) | — of which its own code (user time, mean) |{}\n|---|---|---|---|---|---|{}",
        if relayed { " dockerd, through the relay |" } else { "" },
        if relayed {
            " the relay per MiB (ms) | — of which its own code (user time, mean) |"
        } else {
            ""
        },
        if relayed { "---|---|---|" } else { "" },
    );
    for (key, name) in [
        ("load", "docker load"),
        ("cp_in", "docker cp into"),
        ("cp_out", "docker cp out of"),
    ] {
        let med = |path: &str, what: &str| {
            let v = numbers(&f[path][format!("{key}_{what}_s")]);
            if v.is_empty() {
                f64::NAN
            } else {
                percentile(v, 0.5)
            }
        };
        // User time is a few clock ticks (10 ms) per transfer: its mean over the runs, where
        // a median would round it to a whole tick.
        let mean = |path: &str, what: &str| {
            let v = numbers(&f[path][format!("{key}_{what}_s")]);
            v.iter().sum::<f64>() / v.len() as f64
        };
        let per_mib = |s: f64| s * 1000.0 / args.mib as f64;
        let gate = med("gate", "gate_cpu");
        let _ = write!(
            md,
            "| {name} | {:.2} | {:.2} |",
            med("direct", "dockerd_cpu"),
            med("gate", "dockerd_cpu"),
        );
        if relayed {
            let _ = write!(md, " {:.2} |", med("relay", "dockerd_cpu"));
        }
        let _ = write!(
            md,
            " {gate:.2} | {:.2} | {:.2} |",
            per_mib(gate),
            per_mib(mean("gate", "gate_cpu_user"))
        );
        if relayed {
            let _ = write!(
                md,
                " {:.2} | {:.2} |",
                per_mib(med("relay", "relay_cpu")),
                per_mib(mean("relay", "relay_cpu_user"))
            );
        }
        md.push('\n');
    }
    let _ = writeln!(md, "\n### Targets, {title}\n");
    let mark = |ok: bool| if ok { "[x]" } else { "[ ]" };
    let _ = writeln!(
        md,
        "- {} create through the gate at most +10 ms p50: {:+.1} ms",
        mark(g50 - d50 <= 10.0),
        g50 - d50
    );
    let worst = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let _ = writeln!(
        md,
        "- {} load and cp through the gate at least 0.9× direct: worst {worst:.2}×",
        mark(worst >= 0.9)
    );
    if !relay_ratios.is_empty() {
        let worst = relay_ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let _ = writeln!(
            md,
            "- for comparison, the same through the bare relay (what the hop alone costs here): worst {worst:.2}×"
        );
    }
    md
}
