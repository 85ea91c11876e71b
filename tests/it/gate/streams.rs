//! The docker CLI through the gate, as a user: a container lands in the caller's slice, and
//! everything else passes through: stdin and exec hijacks (bytes round-trip, the input's end
//! passed on), `logs -f` and `events` streams, `cp` both ways, `load` of a large tarball, a
//! classic build (its RUN step in the caller's slice).

use super::{
    as_user, build_step_cgroup, cgroup_of, sh_ok, slice_of, Containers, Gate, ALICE, IMAGE,
};
use crate::docker::docker;

#[test]
fn the_docker_cli_runs_containers_in_the_callers_slice_through_the_gate() {
    let Some(_docker) = docker() else { return };
    let gate = Gate::start(&[]);
    let slice = slice_of(ALICE);
    let mut made = Containers::default();

    // run --rm: the container's own view of its cgroup, and the host's.
    let run = as_user(
        ALICE,
        &format!("docker run --rm --network none {IMAGE} cat /proc/self/cgroup"),
    );
    assert_eq!(run.code, Some(0), "{run}\n{}", gate.journal());
    // cgroup namespace: the container sees itself at its root; the host's view follows.
    let id = as_user(
        ALICE,
        &format!("docker run -d --network none {IMAGE} sleep 600"),
    );
    assert_eq!(id.code, Some(0), "{id}\n{}", gate.journal());
    let id = id.stdout.trim().to_owned();
    made.0.push(id.clone());
    let cgroup = cgroup_of(&id);
    assert_eq!(
        cgroup,
        format!("0::/ds01.slice/ds01-student.slice/{slice}/docker-{id}.scope"),
        "{}",
        gate.journal()
    );
    eprintln!("container cgroup: {cgroup}");
    let labels = sh_ok(&format!(
        "docker inspect -f '{{{{index .Config.Labels \"ds01.user\"}}}} {{{{index .Config.Labels \"ds01.slice\"}}}}' {id}"
    ));
    assert_eq!(labels.trim(), format!("{ALICE} {slice}"));
    // The limits the hook's use case wrote hold on the slice.
    assert_eq!(
        sh_ok(&format!(
            "systemctl show --property=MemoryMax --value {slice}"
        ))
        .trim(),
        "536870912"
    );
    let journal = gate.journal();
    assert!(
        journal.contains(&format!("create by {ALICE} (uid "))
            && journal.contains(&format!("in {slice}: placed")),
        "one journal line per create:\n{journal}"
    );

    // run -i with stdin piped, and exec -i: 800 KB round-trip, the input's end passed on.
    sh_ok(&format!(
        "head -c 600000 /dev/urandom | base64 >/home/{ALICE}/in.txt && chown {ALICE} /home/{ALICE}/in.txt"
    ));
    let piped = as_user(
        ALICE,
        &format!("docker run -i --rm --network none {IMAGE} cat <in.txt >out-run.txt && cmp in.txt out-run.txt && wc -c <out-run.txt"),
    );
    assert_eq!(piped.code, Some(0), "run -i: {piped}");
    let exec = as_user(
        ALICE,
        &format!("docker exec -i {id} sh -c 'cat; echo done' <in.txt >out-exec.txt && head -c -5 out-exec.txt | cmp - in.txt && tail -n 1 out-exec.txt"),
    );
    assert_eq!(exec.code, Some(0), "exec -i: {exec}");
    assert_eq!(exec.stdout.trim(), "done", "{exec}");

    // logs -f: a stream that ends when the container does; every line arrives.
    let logs = as_user(
        ALICE,
        &format!("c=$(docker run -d --network none {IMAGE} sh -c 'for i in 1 2 3 4 5; do echo line $i; sleep 1; done') && docker logs -f $c && docker rm $c >/dev/null"),
    );
    assert_eq!(logs.code, Some(0), "logs -f: {logs}");
    assert_eq!(
        logs.stdout
            .lines()
            .filter(|l| l.starts_with("line "))
            .count(),
        5,
        "{logs}"
    );

    // events: a stream that stays open and passes on what happens. `--since` a moment before
    // the create: the event arrives whether the stream was subscribed before the create (sent
    // live) or after (replayed first), so no sleep waits for the subscription; either way it
    // comes through a response that has not ended (the stream runs on until `timeout`).
    let events = as_user(
        ALICE,
        &format!("t=$(date +%s); timeout 120 docker events --since $t --filter event=create --format '{{{{.Actor.Attributes.name}}}}' >events.txt 2>&1 & ev=$!; docker create --name gate-events-probe --network none {IMAGE} true >/dev/null; for i in $(seq 1 600); do grep -q gate-events-probe events.txt && break; sleep 0.2; done; docker rm gate-events-probe >/dev/null; kill $ev; cat events.txt"),
    );
    assert!(
        events.stdout.contains("gate-events-probe"),
        "the create event did not arrive: {events}"
    );

    // cp both ways.
    let cp = as_user(
        ALICE,
        &format!("docker cp in.txt {id}:/tmp/in.txt && docker cp {id}:/tmp/in.txt back.txt && cmp in.txt back.txt"),
    );
    assert_eq!(cp.code, Some(0), "cp: {cp}");

    // load of a large tarball: an image with a 20 MiB layer, saved, removed, loaded back
    // (tens of MiB: far beyond any buffer of the gate, cheap enough for the TCG guest).
    let load = as_user(
        ALICE,
        "mkdir -p big && head -c 20971520 /dev/urandom >big/blob && tar -C big -c . | docker import - gate-test/big >/dev/null && docker save gate-test/big >big.tar && docker rmi gate-test/big >/dev/null && docker load -i big.tar && docker rmi gate-test/big >/dev/null && rm -rf big big.tar",
    );
    assert_eq!(load.code, Some(0), "load: {load}");
    assert!(load.stdout.contains("Loaded image"), "{load}");

    // A classic build: its RUN step is a container in the caller's slice.
    sh_ok(&format!(
        "mkdir -p /home/{ALICE}/ctx && printf 'FROM {IMAGE}\\nRUN sleep 600.345 || true\\n' >/home/{ALICE}/ctx/Dockerfile && chown -R {ALICE} /home/{ALICE}/ctx"
    ));
    let (build, step) = build_step_cgroup(
        ALICE,
        "600.345",
        "DOCKER_BUILDKIT=0 docker build -q -t gate-test/built ctx && docker rmi gate-test/built >/dev/null",
    );
    assert_eq!(build.code, Some(0), "build: {build}\n{}", gate.journal());
    let step = step.unwrap_or_else(|e| panic!("{e}\n{build}"));
    assert!(
        step.starts_with(&format!(
            "0::/ds01.slice/ds01-student.slice/{slice}/docker-"
        )),
        "the classic build's step: {step}"
    );
    assert!(
        gate.journal().contains(&format!("build by {ALICE} (uid ")),
        "{}",
        gate.journal()
    );
    // "container cgroup:": the VM suite passes such lines on to its log (tests/it/vm.rs).
    eprintln!("container cgroup: a classic build's RUN step: {step}");
}

/// BuildKit through the gate: the build works (its `/session` is an h2c upgrade), and its RUN
/// step runs where Docker's embedded BuildKit puts it, which no per-build cgroup parent
/// changes (docs/gate.md, "BuildKit"): this test says where that is. `--network none`: the
/// VM's dockerd has no bridge (`--bridge=none`), and BuildKit's steps default to it ("network
/// bridge not found"; the classic builder's do not).
#[test]
fn a_buildkit_build_works_through_the_gate_and_its_steps_run_where_docker_puts_them() {
    let Some(_docker) = docker() else { return };
    let gate = Gate::start(&[]);
    let marker = "600.4567";
    sh_ok(&format!(
        "mkdir -p /home/{ALICE}/bk && printf 'FROM {IMAGE}\\nRUN sleep {marker} || true\\n' >/home/{ALICE}/bk/Dockerfile && chown -R {ALICE} /home/{ALICE}/bk"
    ));
    let (build, step) = build_step_cgroup(
        ALICE,
        marker,
        "DOCKER_BUILDKIT=1 docker build --progress=plain --network none -t gate-test/bk bk 2>&1; echo exit=$?",
    );
    let _ = sh_ok("docker rmi gate-test/bk >/dev/null 2>&1 || true");
    assert!(
        build.stdout.contains("exit=0"),
        "BuildKit through the gate: {build}\n{}",
        gate.journal()
    );
    let step = step.unwrap_or_else(|e| panic!("{e}\n{build}"));
    eprintln!("container cgroup: a BuildKit RUN step: {}", step.trim());
    assert!(
        !step.contains("/ds01-student.slice/"),
        "BuildKit's step is in a user's slice now: docs/gate.md's BuildKit section is out of date: {step}"
    );
}
