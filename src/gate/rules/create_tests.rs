use super::*;

const SLICE: &str = "ds01-student-alice.slice";

fn protected() -> Protected {
    Protected::new([
        "/run/docker.sock".to_owned(),
        "/var/run/docker.sock".to_owned(),
        "/run/ds01-slices/docker.sock".to_owned(),
    ])
}

/// The host as the tests see it: /home/alice/cg is a link to the cgroup tree.
fn resolve(path: &str) -> String {
    match path.strip_prefix("/home/alice/cg") {
        Some(rest) => format!("/sys/fs/cgroup{rest}"),
        None => path.to_owned(),
    }
}

fn inspect(body: &str) -> Result<Inspected, Malformed> {
    inspect_create(body.as_bytes(), &protected(), &resolve).map(|(_, i)| i)
}

fn escapes(host_config: &str) -> Vec<Escape> {
    inspect(&format!(r#"{{"Image":"x","HostConfig":{host_config}}}"#))
        .unwrap_or_else(|e| panic!("{host_config}: {e}"))
        .escapes
}

fn placed(body: &str) -> serde_json::Value {
    let (json, _) = inspect_create(body.as_bytes(), &protected(), &resolve).unwrap();
    serde_json::from_slice(&place(json, SLICE, "alice").unwrap()).unwrap()
}

/// What the docker CLI 20.10 sends for `docker run --rm -m 64m busybox true` (shortened).
const CLI_BODY: &str = r#"{"Hostname":"","User":"","AttachStdout":true,"Cmd":["true"],"Image":"busybox","Labels":{},"HostConfig":{"Binds":null,"NetworkMode":"default","AutoRemove":true,"CgroupnsMode":"","Memory":67108864,"PidsLimit":null,"CgroupParent":"","Privileged":false,"CapAdd":null,"Mounts":null},"NetworkingConfig":{"EndpointsConfig":{}}}"#;

#[test]
fn a_cli_create_is_read_and_placed_in_the_slice() {
    let found = inspect(CLI_BODY).unwrap();
    assert_eq!(
        found,
        Inspected {
            memory: Some(64 << 20),
            pids: None,
            cgroup_parent: None,
            escapes: vec![],
        }
    );
    let body = placed(CLI_BODY);
    assert_eq!(body["HostConfig"]["CgroupParent"], SLICE);
    assert_eq!(body["HostConfig"]["Memory"], 64 << 20);
    assert_eq!(body["HostConfig"]["AutoRemove"], true);
    assert_eq!(body["Labels"]["ds01.user"], "alice");
    assert_eq!(body["Labels"]["ds01.slice"], SLICE);
    assert_eq!(body["Cmd"][0], "true");
    assert_eq!(
        body["NetworkingConfig"]["EndpointsConfig"],
        serde_json::json!({})
    );
}

#[test]
fn every_spelling_of_hostconfig_and_cgroupparent_is_read_and_replaced() {
    let body = r#"{"Image":"x","hostconfig":{"CGROUPPARENT":"/","memory":1024}}"#;
    let found = inspect(body).unwrap();
    assert_eq!(found.cgroup_parent.as_deref(), Some("/"));
    assert_eq!(found.memory, Some(1024));
    let out = placed(body);
    let top: Vec<&String> = out.as_object().unwrap().keys().collect();
    assert_eq!(top, ["Image", "Labels", "HostConfig"], "{out}");
    let host: Vec<&String> = out["HostConfig"].as_object().unwrap().keys().collect();
    assert_eq!(host, ["memory", "CgroupParent"], "{out}");
    assert_eq!(out["HostConfig"]["CgroupParent"], SLICE);
    // An escaped key is the key it decodes to.
    let found = inspect(r#"{"HostConfig":{"Cgroup\u0050arent":"x"}}"#).unwrap();
    assert_eq!(found.cgroup_parent.as_deref(), Some("x"));
}

#[test]
fn two_keys_for_one_field_are_refused_not_guessed() {
    for body in [
        r#"{"HostConfig":{},"hostconfig":{"Privileged":true}}"#,
        r#"{"HostConfig":{"Privileged":true},"HostConfig":{}}"#,
        r#"{"HostConfig":{"CgroupParent":"ds01-student-alice.slice","cgroupParent":"/"}}"#,
        r#"{"HostConfig":{"Mounts":[{"Source":"/tmp","source":"/sys"}]}}"#,
        r#"{"Labels":{"a":"1","a":"2"}}"#,
        r#"{"Image":"x","IMAGE":"y"}"#,
    ] {
        assert!(
            matches!(inspect(body), Err(Malformed::Duplicate { .. })),
            "{body}: {:?}",
            inspect(body)
        );
    }
    // Two labels that differ in case are two labels (a map's keys are exact).
    assert!(inspect(r#"{"Labels":{"a":"1","A":"2"}}"#).is_ok());
}

#[test]
fn keys_go_would_fold_from_other_letters_are_refused() {
    // U+017F (long s) folds to 'S' in Go's decoder: "HoſtConfig" is HostConfig to Docker.
    let body = "{\"Ho\u{17f}tConfig\":{\"Privileged\":true}}";
    assert!(
        matches!(inspect(body), Err(Malformed::NonAscii { .. })),
        "{:?}",
        inspect(body)
    );
    let body = "{\"HostConfig\":{\"Privileged\":false,\"\u{212a}\":1}}";
    assert!(matches!(inspect(body), Err(Malformed::NonAscii { .. })));
}

#[test]
fn bodies_docker_would_not_read_are_refused() {
    for body in [
        "",
        "[]",
        "{",
        r#"{"HostConfig":[]}"#,
        r#"{"HostConfig":{"Memory":"1g"}}"#,
        r#"{"HostConfig":{"Memory":1.5}}"#,
        r#"{"HostConfig":{"Memory":-1}}"#,
        r#"{"HostConfig":{"Privileged":"true"}}"#,
        r#"{"HostConfig":{"Binds":"/sys:/x"}}"#,
        r#"{"HostConfig":{"Binds":[1]}}"#,
        r#"{"HostConfig":{"Mounts":{}}}"#,
        r#"{"HostConfig":{"CgroupParent":1}}"#,
        r#"{"Labels":[]}"#,
    ] {
        assert!(inspect(body).is_err(), "{body}");
    }
}

#[test]
fn limits_docker_reads_as_unlimited_ask_for_nothing() {
    let found = inspect(r#"{"HostConfig":{"Memory":0,"PidsLimit":-1}}"#).unwrap();
    assert_eq!((found.memory, found.pids), (None, None));
    let found = inspect(r#"{"HostConfig":{"PidsLimit":0}}"#).unwrap();
    assert_eq!(found.pids, None);
    let found = inspect(r#"{"HostConfig":{"PidsLimit":100}}"#).unwrap();
    assert_eq!(found.pids, Some(100));
    let found = inspect(r#"{"HostConfig":null}"#).unwrap();
    assert_eq!(found, Inspected::default());
    assert_eq!(inspect(r#"{}"#).unwrap(), Inspected::default());
}

#[test]
fn each_way_out_of_a_slice_is_found() {
    let cases: &[(&str, &str)] = &[
        (r#"{"Privileged":true}"#, "privileged"),
        (r#"{"CgroupnsMode":"host"}"#, "\"host\""),
        (r#"{"CgroupnsMode":"HOST"}"#, "\"HOST\""),
        (r#"{"Binds":["/sys/fs/cgroup:/cg"]}"#, "/sys/fs/cgroup"),
        (
            r#"{"Binds":["/sys/fs/cgroup/ds01.slice:/cg:rw"]}"#,
            "/sys/fs/cgroup",
        ),
        (r#"{"Binds":["/sys:/host-sys:ro"]}"#, "/sys"),
        (
            r#"{"Binds":["/:/host"]}"#,
            "of / would give the container /sys/fs/cgroup",
        ),
        (r#"{"Binds":["//sys/./fs/../fs/cgroup:/x"]}"#, "cgroup"),
        (
            r#"{"Binds":["/run/docker.sock:/var/run/docker.sock"]}"#,
            "Docker socket",
        ),
        (r#"{"Binds":["/var/run/docker.sock:/s"]}"#, "Docker socket"),
        (r#"{"Binds":["/run:/host-run"]}"#, "/run/d"),
        (
            r#"{"Binds":["/run/ds01-slices:/d"]}"#,
            "/run/ds01-slices/docker.sock",
        ),
        (r#"{"Binds":["/home/alice/cg:/cg"]}"#, "cgroup"),
        (
            r#"{"Mounts":[{"Type":"bind","Source":"/sys/fs/cgroup","Target":"/cg"}]}"#,
            "cgroup",
        ),
        (
            r#"{"Mounts":[{"type":"bind","source":"/run/docker.sock","target":"/s"}]}"#,
            "socket",
        ),
        (
            r#"{"Mounts":[{"Type":"volume","Target":"/v","VolumeOptions":{"DriverConfig":{"Name":"local","Options":{"type":"none","o":"bind","device":"/sys/fs/cgroup"}}}}]}"#,
            "device",
        ),
        (r#"{"CapAdd":["SYS_ADMIN"]}"#, "SYS_ADMIN"),
        (
            r#"{"CapAdd":["NET_ADMIN","cap_sys_admin"]}"#,
            "cap_sys_admin",
        ),
        (r#"{"CapAdd":["ALL"]}"#, "ALL"),
    ];
    for (host, shown) in cases {
        let found = escapes(host);
        assert_eq!(found.len(), 1, "{host}: {found:?}");
        let text = found[0].to_string();
        assert!(text.contains(shown), "{host}: {text}");
    }
}

#[test]
fn what_stays_in_a_slice_passes() {
    for host in [
        r#"{"Privileged":false,"CgroupnsMode":"private"}"#,
        r#"{"Binds":["/home/alice/work:/work","data:/data","/scratch","/cache:ro","/tmp:/tmp:ro"]}"#,
        r#"{"Binds":["/sys-backup:/x","/running:/y","/run/user/1000:/z"]}"#,
        r#"{"Mounts":[{"Type":"tmpfs","Target":"/t"},{"Type":"volume","Source":"data","Target":"/d"}]}"#,
        r#"{"CapAdd":["NET_ADMIN","SYS_PTRACE"],"Devices":[{"PathOnHost":"/dev/fuse"}]}"#,
    ] {
        assert_eq!(escapes(host), vec![], "{host}");
    }
}

#[test]
fn the_placed_body_keeps_the_clients_labels_and_replaces_ours() {
    let body =
        r#"{"Image":"x","labels":{"app":"web","ds01.user":"root","ds01.slice":"ds01.slice"}}"#;
    let out = placed(body);
    assert_eq!(
        out["Labels"],
        serde_json::json!({"app": "web", "ds01.user": "alice", "ds01.slice": SLICE})
    );
    assert!(out.get("labels").is_none(), "{out}");
    assert_eq!(
        out["HostConfig"],
        serde_json::json!({"CgroupParent": SLICE})
    );
}

#[test]
fn a_start_body_an_exec_and_a_volume_are_read() {
    assert!(inspect_start(b"").is_empty());
    assert!(inspect_start(b" {} ").is_empty());
    assert!(inspect_start(b"null").is_empty());
    assert_eq!(
        inspect_start(br#"{"Binds":["/sys/fs/cgroup:/cg"]}"#),
        vec![Escape::StartBody]
    );
    assert_eq!(
        inspect_exec(br#"{"Cmd":["sh"],"privileged":true}"#).unwrap(),
        vec![Escape::Privileged]
    );
    assert!(inspect_exec(br#"{"Cmd":["sh"],"Privileged":false}"#)
        .unwrap()
        .is_empty());
    let volume = |body: &str| inspect_volume(body.as_bytes(), &protected(), &resolve);
    assert_eq!(
        volume(r#"{"Name":"v","DriverOpts":{"type":"none","o":"bind","device":"/sys/fs/cgroup"}}"#)
            .unwrap()
            .len(),
        1
    );
    assert!(
        volume(r#"{"Name":"v","DriverOpts":{"device":"/home/alice/data"}}"#)
            .unwrap()
            .is_empty()
    );
    assert!(volume(r#"{"Name":"v"}"#).unwrap().is_empty());
}

#[test]
fn paths_are_cleaned_as_go_cleans_them() {
    assert_eq!(clean("/"), "/");
    assert_eq!(clean("//sys/./fs//cgroup/"), "/sys/fs/cgroup");
    assert_eq!(clean("/../.."), "/");
    assert_eq!(clean("/a/b/../c"), "/a/c");
}
