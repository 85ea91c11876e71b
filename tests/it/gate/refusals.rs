//! What the gate refuses for a capped user, as real clients see it: a different cgroup
//! parent (however the JSON spells it), two keys for one field, each way out of a slice, a
//! start with a body, a memory request over the user's budget. Each refusal is a Docker
//! error with the reason (the CLI shows it verbatim) and creates nothing.

use super::{all_containers, as_user, sh_ok, slice_of, Containers, Gate, ALICE, IMAGE};
use crate::docker::docker;

/// Sends raw requests with python3's http.client as `user` on the gate's socket, each on a
/// connection of its own, all from one python3 process (one start of the interpreter, which
/// costs the TCG guest seconds): reads `[[METHOD, PATH, BODY], ...]` as JSON on stdin, prints
/// `[[STATUS, BODY], ...]`.
const RAW: &str = r#"
import http.client, json, socket, sys
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect("/run/ds01-gate-test/docker.sock")
out = []
for method, path, body in json.load(sys.stdin):
    c = C("docker")
    try:
        c.request(method, path, body=body.encode(), headers={"Content-Type": "application/json"})
    except BrokenPipeError:
        pass  # answered (413) before the whole body was sent: the answer is there to read
    r = c.getresponse()
    out.append([r.status, r.read().decode()])
    c.close()
print(json.dumps(out))
"#;

/// Each of `requests` (method, path, body) sent raw as `user`: (status, the error's message or
/// the success's body), in order.
fn raw_all(user: &str, requests: &[(&str, &str, &str)]) -> Vec<(u16, String)> {
    let home = format!("/home/{user}");
    std::fs::write(format!("{home}/raw.py"), RAW).unwrap();
    std::fs::write(
        format!("{home}/requests.json"),
        serde_json::to_string(requests).unwrap(),
    )
    .unwrap();
    let out = as_user(user, "python3 raw.py <requests.json");
    assert_eq!(out.code, Some(0), "{out}");
    let answers: Vec<(u16, String)> =
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(answers.len(), requests.len(), "{out}");
    answers
        .into_iter()
        .map(|(status, text)| {
            // An error's message, unescaped; a success's body as it is.
            let text = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or(text);
            (status, text)
        })
        .collect()
}

fn raw(user: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    raw_all(user, &[(method, path, body)]).remove(0)
}

#[test]
fn spoofed_bodies_and_ways_out_of_a_slice_are_refused_and_create_nothing() {
    let Some(_docker) = docker() else { return };
    let gate = Gate::start(&[]);
    let slice = slice_of(ALICE);
    let mut made = Containers::default();
    let before = all_containers();

    let image = format!("\"Image\":\"{IMAGE}\",\"Cmd\":[\"true\"]");
    let spoofs = [
        (format!("{{{image},\"HostConfig\":{{\"CgroupParent\":\"/\"}}}}"), 403, "cgroup parent \"/\""),
        (format!("{{{image},\"hostconfig\":{{\"CGROUPPARENT\":\"ds01.slice\"}}}}"), 403, "cgroup parent \"ds01.slice\""),
        (format!("{{{image},\"HostConfig\":{{}},\"hostconfig\":{{\"CgroupParent\":\"/\"}}}}"), 400, "send each field once"),
        (format!("{{{image},\"HostConfig\":{{\"CgroupParent\":\"{slice}\",\"cgroupparent\":\"/\"}}}}"), 400, "send each field once"),
        (format!("{{{image},\"HostConfig\":{{\"Privileged\":false}},\"HostConfig\":{{\"Privileged\":true}}}}"), 400, "send each field once"),
        (format!("{{{image},\"Ho\u{17f}tConfig\":{{\"Privileged\":true}}}}"), 400, "non-ASCII"),
        (format!("{{{image},\"HostConfig\":{{\"Memory\":\"1g\"}}}}"), 400, "whole number"),
    ];
    let paths = [
        "/containers/create",
        "/v1.41/containers/create",
        "/v1.41/containers/%63reate",
    ];
    let mut requests: Vec<(&str, &str, &str)> = spoofs
        .iter()
        .flat_map(|(body, _, _)| paths.iter().map(move |path| ("POST", *path, body.as_str())))
        .collect();
    requests.push(("POST", "/v1.41/containers//create", "{}"));
    let answers = raw_all(ALICE, &requests);
    let expected = spoofs
        .iter()
        .flat_map(|(_, status, says)| paths.iter().map(move |_| (*status, *says)))
        .chain([(400, "")]);
    for (((_, path, body), (got, text)), (status, says)) in
        requests.iter().zip(&answers).zip(expected)
    {
        assert_eq!(*got, status, "{path} {body}: {text}");
        assert!(text.contains(says), "{path} {body}: {text}");
    }
    // A body larger than the gate reads (1 MiB): 413, whatever it holds.
    let padding = "x".repeat(1_200_000);
    let (got, text) = raw(
        ALICE,
        "POST",
        "/containers/create",
        &format!("{{{image},\"Env\":[\"PAD={padding}\"]}}"),
    );
    assert_eq!(got, 413, "{}", &text[..text.len().min(300)]);
    assert!(
        text.contains("larger than the gate reads (1024 KiB)"),
        "{text}"
    );
    // The same placement in every spelling a client may use: placed, not refused.
    let (got, text) = raw(
        ALICE,
        "POST",
        "/v1.41/containers/create",
        &format!(
            "{{{image},\"hostconfig\":{{\"cgroupparent\":\"{slice}\",\"NetworkMode\":\"none\"}}}}"
        ),
    );
    assert_eq!(got, 201, "{text}");
    let id: serde_json::Value = serde_json::from_str(&text).unwrap();
    let id = id["Id"].as_str().unwrap().to_owned();
    made.0.push(id.clone());
    assert_eq!(
        sh_ok(&format!(
            "docker inspect -f '{{{{.HostConfig.CgroupParent}}}}' {id}"
        ))
        .trim(),
        slice
    );

    // Each way out of a slice, as the docker CLI asks for it: refused with the reason.
    let escapes = [
        ("--privileged", "privileged container"),
        ("--cgroupns=host", "cgroup namespace mode \"host\""),
        ("-v /sys/fs/cgroup:/cg", "the host's cgroup tree"),
        ("-v /sys:/host-sys:ro", "the host's cgroup tree"),
        ("-v /:/host", "of / would give"),
        (
            "-v /run/docker.sock:/var/run/docker.sock",
            "a Docker socket",
        ),
        ("-v /var/run/docker.sock:/s", "a Docker socket"),
        ("-v /run/ds01-slices:/d", "a Docker socket"),
        (
            "--mount type=bind,source=/sys/fs/cgroup,target=/cg",
            "a mount (--mount)",
        ),
        ("--cap-add SYS_ADMIN", "capability SYS_ADMIN"),
        ("--cap-add ALL", "capability ALL"),
        ("--cgroup-parent /", "cgroup parent \"/\""),
        (
            "--cgroup-parent ds01-student-gate_bob.slice",
            "cgroup parent",
        ),
    ];
    // A link in the user's home to the cgroup tree is seen through.
    sh_ok(&format!("ln -sfn /sys/fs/cgroup /home/{ALICE}/cg"));
    let escapes = escapes
        .iter()
        .map(|(o, s)| ((*o).to_owned(), *s))
        .chain([(format!("-v /home/{ALICE}/cg:/cg"), "the host's cgroup tree")]);
    for (options, says) in escapes {
        let out = as_user(
            ALICE,
            &format!("docker run --rm --network none {options} {IMAGE} true"),
        );
        assert_ne!(out.code, Some(0), "{options}: {out}");
        assert!(
            out.stderr.contains(says) && out.stderr.contains("ds01-slices gate"),
            "{options}: {out}"
        );
    }
    // A privileged exec in a container of one's own, and a volume bound to the cgroup tree.
    let exec = as_user(ALICE, &format!("docker exec --privileged {id} true"));
    assert!(exec.stderr.contains("privileged container"), "{exec}");
    let volume = as_user(
        ALICE,
        "docker volume create --opt type=none --opt o=bind --opt device=/sys/fs/cgroup gate-cg",
    );
    assert!(volume.stderr.contains("the host's cgroup tree"), "{volume}");
    // A start with a body (a HostConfig, as API 1.23 took it).
    let (got, text) = raw(
        ALICE,
        "POST",
        &format!("/v1.23/containers/{id}/start"),
        "{\"Binds\":[\"/sys/fs/cgroup:/cg\"]}",
    );
    assert_eq!(got, 403, "{text}");
    assert!(text.contains("start request with a body"), "{text}");

    // Over the user's budget: 600M asked, 512M allowed; the same box as the hook's.
    let over = as_user(
        ALICE,
        &format!("docker run --rm --network none -m 600m {IMAGE} true"),
    );
    assert_ne!(over.code, Some(0), "{over}");
    assert!(
        over.stderr
            .contains("Container refused: gate-alice would exceed their memory limit"),
        "{over}"
    );
    let words = |l: &str| l.split_whitespace().collect::<Vec<_>>().join(" ");
    let lines: Vec<String> = over.stderr.lines().map(words).collect();
    for line in [
        "| requested 600M (--memory) |",
        "| limit 512M (MemoryMax of ds01-student-gate_alice.slice) |",
    ] {
        assert!(lines.iter().any(|l| l == line), "{line:?} not in:\n{over}");
    }
    eprintln!(
        "refusal as the docker CLI shows it:\n{}",
        over.stderr.trim()
    );

    // Nothing was created by any refused request.
    sh_ok(&format!("docker rm -f {id} >/dev/null"));
    made.0.clear();
    assert_eq!(all_containers(), before, "{}", gate.journal());
    assert!(sh_ok("docker volume ls -q").lines().all(|v| v != "gate-cg"));
}
