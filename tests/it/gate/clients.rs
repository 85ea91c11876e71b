//! Clients that never call the hook: Debian's python3-docker (the SDK) and docker-compose
//! 1.29 (which uses it), through the gate: their containers land in the caller's slice.

use super::{as_user, cgroup_of, sh_ok, slice_of, Containers, Gate, BOB, IMAGE};
use crate::docker::docker;

const SDK: &str = r#"
import docker, sys
client = docker.from_env()
c = client.containers.run("local/busybox", ["sleep", "600"], detach=True, network_mode="none")
print(c.id)
# An exec through the SDK's own hijack, bytes both ways.
rc, out = c.exec_run(["sh", "-c", "echo from-exec"])
assert rc == 0 and out == b"from-exec\n", (rc, out)
# An attach socket (Upgrade: tcp), as the SDK opens it.
sock = client.api.attach_socket(c.id, params={"stdout": 1, "stream": 1, "logs": 1})
sock.close()
"#;

#[test]
fn the_python_sdk_and_compose_land_in_the_callers_slice() {
    let Some(_docker) = docker() else { return };
    let gate = Gate::start(&[]);
    let slice = slice_of(BOB);
    let mut made = Containers::default();
    std::fs::write(format!("/home/{BOB}/sdk.py"), SDK).unwrap();
    let sdk = as_user(BOB, "python3 sdk.py");
    assert_eq!(sdk.code, Some(0), "{sdk}\n{}", gate.journal());
    let id = sdk.stdout.trim().to_owned();
    made.0.push(id.clone());
    let cgroup = cgroup_of(&id);
    assert!(
        cgroup.starts_with(&format!(
            "0::/ds01.slice/ds01-student.slice/{slice}/docker-"
        )),
        "{cgroup}"
    );
    eprintln!("container cgroup: python3-docker: {cgroup}");

    // compose: two services of one project, both in the caller's slice; down removes them.
    sh_ok(&format!(
        "mkdir -p /home/{BOB}/proj && chown {BOB} /home/{BOB}/proj"
    ));
    std::fs::write(
        format!("/home/{BOB}/proj/docker-compose.yml"),
        format!(
            "version: \"2.4\"\nservices:\n  web:\n    image: {IMAGE}\n    command: sleep 600\n    network_mode: none\n  worker:\n    image: {IMAGE}\n    command: sleep 600\n    network_mode: none\n    mem_limit: 64m\n"
        ),
    )
    .unwrap();
    let up = as_user(BOB, "cd proj && docker-compose -p gatetest up -d");
    assert_eq!(up.code, Some(0), "{up}\n{}", gate.journal());
    let ids = sh_ok("docker ps -q --no-trunc --filter label=com.docker.compose.project=gatetest");
    assert_eq!(ids.lines().count(), 2, "{ids}");
    for id in ids.lines() {
        let cgroup = cgroup_of(id);
        assert!(
            cgroup.starts_with(&format!(
                "0::/ds01.slice/ds01-student.slice/{slice}/docker-"
            )),
            "compose service {id}: {cgroup}"
        );
        eprintln!("container cgroup: docker-compose: {cgroup}");
    }
    let down = as_user(BOB, "cd proj && docker-compose -p gatetest down");
    assert_eq!(down.code, Some(0), "{down}");
    assert_eq!(
        sh_ok("docker ps -aq --filter label=com.docker.compose.project=gatetest").trim(),
        ""
    );
}
