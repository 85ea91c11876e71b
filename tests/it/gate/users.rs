//! Who is asking: each user's containers land in their own slice (a domain-style account
//! too), root passes unchanged, an admin is placed but may ask for what capped users may
//! not, and a uid with no account or a user the configuration has no place for is refused
//! with the reason.

use super::{
    all_containers, as_user, cgroup_of, sh, sh_ok, slice_of, Containers, Gate, ADMIN, ALICE, BAKER,
    BOB, EVE, GATE_SOCKET, IMAGE, NO_ACCOUNT_UID,
};
use crate::docker::docker;

#[test]
fn each_user_lands_in_their_own_slice_root_passes_and_strangers_are_refused() {
    let Some(_docker) = docker() else { return };
    let gate = Gate::start(&[]);
    let mut made = Containers::default();
    let run = |user: &str, made: &mut Containers| {
        let out = as_user(
            user,
            &format!("docker run -d --network none {IMAGE} sleep 600"),
        );
        assert_eq!(out.code, Some(0), "{user}: {out}\n{}", gate.journal());
        let id = out.stdout.trim().to_owned();
        made.0.push(id.clone());
        id
    };
    for user in [ALICE, BOB, BAKER] {
        let id = run(user, &mut made);
        let cgroup = cgroup_of(&id);
        assert!(
            cgroup.starts_with(&format!(
                "0::/ds01.slice/ds01-student.slice/{}/docker-",
                slice_of(user)
            )),
            "{user}: {cgroup}"
        );
        eprintln!("container cgroup: {user}: {cgroup}");
    }
    // An admin (uncapped) is placed in their slice too, and may bind the cgroup tree.
    let admin = as_user(
        ADMIN,
        &format!("docker run -d --network none -v /sys/fs/cgroup:/cg:ro {IMAGE} sleep 600"),
    );
    assert_eq!(admin.code, Some(0), "{admin}\n{}", gate.journal());
    let id = admin.stdout.trim().to_owned();
    made.0.push(id.clone());
    assert!(
        cgroup_of(&id).contains(&format!(
            "/ds01-admin.slice/ds01-admin-{}.slice/docker-",
            ds01_slices::model::names::sanitize_username(ADMIN)
        )),
        "{}",
        cgroup_of(&id)
    );
    // Root passes unchanged: no cgroup parent set, no label.
    let root = as_user(
        "root",
        &format!("docker run -d --network none {IMAGE} sleep 600"),
    );
    assert_eq!(root.code, Some(0), "{root}");
    let id = root.stdout.trim().to_owned();
    made.0.push(id.clone());
    assert_eq!(
        sh_ok(&format!(
            "docker inspect -f '{{{{.HostConfig.CgroupParent}}}}|{{{{index .Config.Labels \"ds01.user\"}}}}' {id}"
        ))
        .trim(),
        "|",
        "root's container was changed"
    );

    let before = all_containers();
    // eve has an account and the docker group, but no place in the configuration.
    let eve = as_user(EVE, &format!("docker run -d --network none {IMAGE} true"));
    assert_ne!(eve.code, Some(0), "{eve}");
    assert!(
        eve.stderr.contains("refused this container")
            && eve
                .stderr
                .contains(&format!("user \"{EVE}\" is in no members file")),
        "{eve}"
    );
    // A uid with no account at all (with the docker group, as a process could have it).
    let nobody = sh(&no_account(&format!(
        "docker run -d --network none {IMAGE} true 2>&1"
    )));
    let nobody = nobody.unwrap_err();
    assert!(
        nobody.contains(&format!("uid {NO_ACCOUNT_UID} has no account name")),
        "{nobody}"
    );
    // And it may still ask what does not create anything.
    let ps = sh(&no_account("docker ps -q"));
    assert!(ps.is_ok(), "{ps:?}");
    assert_eq!(
        all_containers(),
        before,
        "a refused create created something"
    );
    let journal = gate.journal();
    assert!(
        journal.contains(&format!("create by uid {NO_ACCOUNT_UID}, pid "))
            && journal.contains("refused (403)"),
        "{journal}"
    );
}

/// `script` run by [`NO_ACCOUNT_UID`] with the docker group, on the gate's socket.
fn no_account(script: &str) -> String {
    format!(
        "python3 -c 'import grp, os, sys; os.setgroups([grp.getgrnam(\"docker\").gr_gid]); os.setgid({NO_ACCOUNT_UID}); os.setuid({NO_ACCOUNT_UID}); os.execvp(\"sh\", [\"sh\", \"-c\", sys.argv[1]])' 'HOME=/tmp DOCKER_HOST=unix://{GATE_SOCKET} {script}'"
    )
}
