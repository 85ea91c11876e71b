//! `serve` under hostile local clients (it runs as root and any local user can connect), against
//! a real systemd: one client that pipelines requests and reads nothing, more idle connections
//! than the server has room or descriptors for, a 150 MiB header and an over-long request line.
//! Throughout each attack an honest scraper must get its whole answer within a second
//! ([`deadline`]: longer inside the test VM); the figures measured are printed. Also the
//! addresses `--listen` refuses (exit 2) and the one in use (exit 1). HTTP, not cgroups: the
//! host's run covers it, so these are not in the VM's suite.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::prometheus::{free_port, get};
use crate::support::{deadline, ds01, wait_until, Reaped, Run, World, EXAMPLE, MANIFEST_DIR};

/// What an honest scraper waits at most for its whole answer (the "within a second").
const HONEST: Duration = Duration::from_secs(1);

/// `serve` on a free loopback port of `w`: its address and process, once it answers.
fn start_serve(w: &World, extra: &[&str]) -> (String, Reaped) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["serve", "--listen", &addr];
    args.extend_from_slice(extra);
    let serve = w.spawn(&args, false);
    wait_until(Duration::from_secs(60), "serve answers", || {
        scrape(&addr, Duration::from_secs(10)).ok()
    })
    .unwrap();
    (addr, serve)
}

/// One honest scrape: a fresh connection, `GET /metrics`, the whole answer read. Ok(how long
/// it took) when the answer was a 200 with the exposition in it, within `limit`.
fn scrape(addr: &str, limit: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(limit)).ok();
    s.set_write_timeout(Some(limit)).ok();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("read after {:?}: {e}", started.elapsed()))?;
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&raw);
    if !text.starts_with("HTTP/1.1 200") || !text.contains("\nds01_slice_tasks_max{") {
        let head: String = text.chars().take(200).collect();
        return Err(format!("not the exposition after {took:?}: {head:?}"));
    }
    if took > limit {
        return Err(format!("answered after {took:?}"));
    }
    Ok(took)
}

/// Honest scrapes every 100 ms while `attack_lasts` says so (at least `min` of them), each
/// held to [`HONEST`]: the failures, and the slowest answer.
fn scrape_throughout(
    addr: &str,
    min: usize,
    mut attack_lasts: impl FnMut() -> bool,
) -> (usize, Vec<String>, Duration) {
    let limit = deadline(HONEST);
    let (mut n, mut failed, mut slowest) = (0, Vec::new(), Duration::ZERO);
    while n < min || attack_lasts() {
        match scrape(addr, limit) {
            Ok(took) => slowest = slowest.max(took),
            Err(e) => failed.push(format!("scrape {n}: {e}")),
        }
        n += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    (n, failed, slowest)
}

#[track_caller]
fn assert_all_answered(what: &str, (n, failed, slowest): (usize, Vec<String>, Duration)) {
    println!(
        "{what}: {} of {n} honest scrapes answered within {:?}; slowest {slowest:?}",
        n - failed.len(),
        deadline(HONEST)
    );
    assert!(failed.is_empty(), "{what}:\n{}", failed.join("\n"));
}

/// A line of `/proc/PID/status` in kB (`VmRSS`, `VmHWM`).
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Whether the server has closed `s` (EOF or reset), without waiting.
fn closed_by_server(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let closed = match (&*s).read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    };
    s.set_nonblocking(false).unwrap();
    closed
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// One of the three sizes in `/proc/sys/<name>` (tcp_rmem, tcp_wmem: 0 least, 1 first, 2 most).
fn sysctl(name: &str, which: usize) -> usize {
    let text = std::fs::read_to_string(format!("/proc/sys/{name}")).unwrap();
    text.split_whitespace().nth(which).unwrap().parse().unwrap()
}

/// `prlimit --nofile=N:N` on a running process (root lowers a hard limit as it likes).
fn limit_descriptors(pid: u32, n: u32) {
    let out = Run::of(Command::new("prlimit").args([
        "--pid",
        &pid.to_string(),
        &format!("--nofile={n}:{n}"),
    ]));
    assert_eq!(out.code, Some(0), "prlimit: {out}");
}

#[test]
fn serve_answers_others_while_one_client_pipelines_200_requests_and_reads_nothing() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    w.expect(&["apply"], 0);
    // 100 more students, so that 200 answers are far more than the kernel buffers between
    // two loopback sockets: the server's writes to this client block.
    let mut members = w.read("groups/student.members");
    for i in 0..100 {
        members.push_str(&format!("user{i:05}\n"));
    }
    w.write("groups/student.members", &members);
    // The honest scrapes get the cached answer: what is measured is the attack's cost to them,
    // not a reading's (a reading of these 110 slices took up to 0.9 s here: a debug build on a busy
    // machine).
    let (addr, _serve) = start_serve(&w, &["--cache", "600"]);
    let size = get(&addr, "/metrics").unwrap().1.len();
    // A receiver that never reads keeps its first receive buffer (autotuning follows reads);
    // the sender's may grow to its most.
    let buffers = sysctl("net/ipv4/tcp_rmem", 1) + sysctl("net/ipv4/tcp_wmem", 2);
    println!(
        "answer {size} bytes; 200 of them {} MiB",
        (200 * size) >> 20
    );
    assert!(
        200 * size > buffers,
        "{size} bytes, buffers up to {buffers}"
    );

    let mut greedy = TcpStream::connect(&addr).unwrap();
    let one = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    greedy.write_all(one.repeat(200).as_bytes()).unwrap();
    std::thread::sleep(Duration::from_secs(1));

    let until = Instant::now() + Duration::from_secs(5);
    let report = scrape_throughout(&addr, 10, || Instant::now() < until);
    assert_all_answered(
        "one client pipelining 200 requests, reading nothing",
        report,
    );
    // The greedy client was answered too, as far as it reads.
    let mut head = [0u8; 12];
    greedy.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
}

#[test]
fn serve_keeps_answering_past_its_connection_cap_and_out_of_descriptors() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    w.expect(&["apply"], 0);
    // A long cache: in the second part every descriptor is taken, and the answer must not
    // need one (a fresh answer opens the configuration's files).
    let (addr, mut serve) = start_serve(&w, &["--cache", "600"]);
    let pid = serve.0.id();
    // The exporter unit's LimitNOFILE.
    limit_descriptors(pid, 512);

    // More idle connections than the cap (256) and than the descriptors: the oldest idle
    // ones are closed to make room for new ones.
    let mut idle: Vec<TcpStream> = (0..600)
        .map(|i| TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    let report = scrape_throughout(&addr, 10, || false);
    assert_all_answered("600 idle connections, LimitNOFILE 512", report);
    let open = idle.iter().filter(|s| !closed_by_server(s)).count();
    let fds = open_descriptors(pid);
    println!("600 idle connections: {open} still open; serve holds {fds} descriptors");
    assert!(open <= 256, "{open} idle connections kept past the cap");
    assert!(
        !closed_by_server(idle.last().unwrap()),
        "the newest connection was closed"
    );
    assert!(fds < 512, "{fds} descriptors");

    // Now fewer descriptors than connections (as if something else had taken them): accept
    // fails with EMFILE, and the server frees one by closing its oldest idle connection.
    limit_descriptors(pid, 64);
    idle.extend(
        (0..300).map(|i| TcpStream::connect(&addr).unwrap_or_else(|e| panic!("more {i}: {e}"))),
    );
    let report = scrape_throughout(&addr, 10, || false);
    assert_all_answered("300 more idle connections, 64 descriptors", report);

    // The attackers leave: the server still listens, and answers.
    drop(idle);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        matches!(serve.0.try_wait(), Ok(None)),
        "serve exited: {:?}",
        serve.0.try_wait()
    );
    let report = scrape_throughout(&addr, 5, || false);
    assert_all_answered("after the attackers left", report);
}

#[test]
fn serve_answers_431_to_a_150_mib_header_and_its_memory_stays_bounded() {
    let Some(w) = World::new(EXAMPLE) else {
        return;
    };
    w.expect(&["apply"], 0);
    let (addr, serve) = start_serve(&w, &["--cache", "2"]);
    let pid = serve.0.id();
    let hwm_before = status_kb(pid, "VmHWM");

    let sender = TcpStream::connect(&addr).unwrap();
    let mut reader = sender.try_clone().unwrap();
    reader
        .set_read_timeout(Some(deadline(Duration::from_secs(60))))
        .unwrap();
    let answer = std::thread::spawn(move || {
        let mut raw = Vec::new();
        let _ = reader.read_to_end(&mut raw);
        String::from_utf8_lossy(&raw).into_owned()
    });
    let sending = std::thread::spawn(move || {
        let mut sender = sender;
        let mut sent = 0usize;
        let chunk = vec![b'a'; 1 << 20];
        let result = (|| {
            sender.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ")?;
            for _ in 0..150 {
                sender.write_all(&chunk)?;
                sent += chunk.len();
            }
            sender.write_all(b"\r\n\r\n")
        })();
        (sent, result.err().map(|e| e.to_string()))
    });
    let mut rss_max = 0;
    let report = scrape_throughout(&addr, 10, || {
        rss_max = rss_max.max(status_kb(pid, "VmRSS"));
        !sending.is_finished()
    });
    let (sent, stopped) = sending.join().unwrap();
    let answer = answer.join().unwrap();
    let hwm_after = status_kb(pid, "VmHWM");
    println!(
        "150 MiB header: {} MiB sent before {}; VmHWM {hwm_before} kB before, {hwm_after} kB \
         after; VmRSS at most {rss_max} kB during; answer {:?}",
        sent >> 20,
        stopped.as_deref().unwrap_or("the end"),
        answer.lines().next().unwrap_or("(none)")
    );
    assert_all_answered("one 150 MiB header", report);
    assert!(
        answer.starts_with("HTTP/1.1 431 "),
        "answer to the header: {answer:?}"
    );
    assert!(
        hwm_after < hwm_before + 16 * 1024,
        "serve grew from {hwm_before} kB to {hwm_after} kB"
    );

    // An over-long request line: 414, whatever the line asks for.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(deadline(Duration::from_secs(30))))
        .unwrap();
    let long = "a".repeat(10_000);
    write!(s, "GET /{long} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw);
    println!(
        "request line of 10 KB: {:?}",
        raw.lines().next().unwrap_or("(none)")
    );
    assert!(raw.starts_with("HTTP/1.1 414 "), "{raw:?}");
}

#[test]
fn serve_refuses_an_address_it_cannot_listen_on_as_usage() {
    let config = format!("{MANIFEST_DIR}/config/resource-limits.yaml");
    for (listen, says) in [
        ("127.0.0.1", "no port"),
        ("unix:/x", "unix:/x"),
        ("127.0.0.1:99999", "99999"),
        ("localhost:9851", "localhost:9851"),
        ("", "IP:PORT"),
    ] {
        let out = Run::of(&mut ds01(&[
            "serve", "--listen", listen, "--config", &config,
        ]));
        println!(
            "--listen {listen:?}: exit {:?}: {}",
            out.code,
            out.stderr.trim()
        );
        assert_eq!(out.code, Some(2), "--listen {listen:?}: {out}");
        assert!(
            out.stderr.contains(listen) && out.stderr.contains(says),
            "--listen {listen:?}: {out}"
        );
        assert!(out.stderr.contains("IP:PORT"), "{out}");
    }

    // A real address another program holds: a runtime failure (1) that says so.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Run::of(&mut ds01(&[
        "serve", "--listen", &addr, "--config", &config,
    ]));
    println!(
        "--listen {addr} (taken): exit {:?}: {}",
        out.code,
        out.stderr.trim()
    );
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr.contains(&addr) && out.stderr.contains("in use"),
        "{out}"
    );
}
