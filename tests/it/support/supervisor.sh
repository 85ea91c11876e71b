# Supervisor of one systemd sandbox; run by support/sandbox.rs as `sh -c <this> ds01-sandbox-supervisor`.
#
# It is the only owner of the sandbox's cgroups and processes, so there is one teardown path for a
# test that passes, panics or is SIGKILLed: stdin is a pipe whose write end only the test process
# holds, and EOF on it (the Sandbox was dropped, or the test process died) means "tear down now".
#
# Environment: DS01_SANDBOX_NAME (cgroup name, ds01-sandbox-*), DS01_SANDBOX_WORKDIR (scratch
# dir to create, removed at the end), DS01_SANDBOX_BOOT (boot.sh, PID 1 until it execs systemd).
# Stdout: a line "cgroup <dir>" per cgroup directory it owns, then "launcher <pid>" (unshare) or
# "error <reason>"; after EOF on stdin, teardown diagnostics, if any.
set -u
NAME=$DS01_SANDBOX_NAME
WORKDIR=$DS01_SANDBOX_WORKDIR
exec 2>&1
# A Ctrl-C or a closed terminal must not kill the supervisor before it has cleaned up; it leaves
# when the test process is gone, which the pipe tells it. PIPE: the test may be dead when we write.
trap '' HUP INT TERM PIPE
IFS='
'

# On the unified hierarchy (cgroup v2) the sandbox is one directory below DS01_SANDBOX_CGROUP, a
# cgroup delegated to this test run (the VM's runner makes it, tests/it/support/vm.rs), with two
# leaves: "launcher" (unshare, outside the sandbox's namespaces) and "payload" (its PID 1 moves
# there itself and roots its cgroup namespace at it). Two leaves because v2 lets no cgroup both
# hold processes and pass controllers down.
if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
    v2=yes
    dirs="${DS01_SANDBOX_CGROUP:?no DS01_SANDBOX_CGROUP on a cgroup v2 machine}/$NAME$IFS"
    mounts="/sys/fs/cgroup cgroup2 -$IFS"
else
    v2=no
fi

# v1: every cgroup hierarchy gets a ds01-sandbox-* child, except memory: the machine tracks this job
# by its memory cgroup, so the sandbox's memory tree is a child of the current one instead. A child
# per sandbox (not the current cgroup itself) keeps parallel sandboxes' systemd trees apart.
# mountinfo: field 5 is the mount point; after the "-" separator come fstype, source, options.
[ "$v2" = yes ] || hierarchies=$(awk '{ for (i = 7; i <= NF; i++) if ($i == "-") {
    if (($(i+1) == "cgroup" || $(i+1) == "cgroup2") && $5 ~ "^/sys/fs/cgroup/") print $5 " " $(i+1) " " $(i+3)
    break } }' /proc/self/mountinfo)
[ "$v2" = yes ] || { dirs=""; mounts=""; }
[ "$v2" = yes ] || for h in $hierarchies; do
    mp=${h%% *}; rest=${h#* }; type=${rest%% *}; opts=${rest#* }
    # What to mount inside: the same controllers, minus mount flags.
    ctl=$(printf '%s\n' "$opts" | tr ',' '\n' | grep -v -x -e rw -e ro -e xattr -e nsdelegate | paste -sd, -)
    case ",$ctl," in
        *,memory,*) continue ;;
        ,name=*) ctl="none,$ctl" ;;
    esac
    dirs="$dirs$mp/$NAME$IFS"
    mounts="$mounts$mp $type $ctl$IFS"
done
if [ "$v2" = no ]; then
    memcg=$(sed -n 's/^[0-9]*:memory:\(.*\)$/\1/p' /proc/self/cgroup)
    mounts="$mounts/sys/fs/cgroup/memory cgroup memory$IFS"
    dirs="$dirs/sys/fs/cgroup/memory${memcg%/}/$NAME$IFS"
fi

status=0
launcher=""

teardown() {
    # Everything the sandbox runs is in its cgroups (systemd only moves processes within them), so
    # killing by membership cannot hit a process that merely reused a PID. Killing its PID 1 takes
    # the rest of the PID namespace, including processes that nsenter put there. The launcher
    # (unshare) is spared while it has a child to reap: killed first, it would leave systemd a
    # zombie for the machine's init to collect.
    n=0
    while :; do
        pids=$(find $dirs -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
        [ -z "$pids" ] && break
        others=$(printf '%s\n' "$pids" | grep -v -x -e "$launcher")
        if [ -n "$others" ]; then
            kill -9 $others 2>/dev/null
        elif [ $n -ge 40 ]; then
            kill -9 $pids 2>/dev/null
        fi
        n=$((n + 1))
        if [ $n -ge 200 ]; then
            echo "teardown: processes survive SIGKILL:" $pids
            status=1
            break
        fi
        sleep 0.05
    done
    [ -n "$launcher" ] && wait "$launcher" 2>/dev/null
    # Depth-first; a cgroup whose last task just died can refuse rmdir (EBUSY) for a moment.
    n=0
    while :; do
        left=$(find $dirs -depth -type d 2>/dev/null)
        [ -z "$left" ] && break
        for d in $left; do rmdir "$d" 2>/dev/null; done
        n=$((n + 1))
        if [ $n -ge 100 ]; then
            echo "teardown: cgroups left:" $left
            status=1
            break
        fi
        sleep 0.05
    done
    rm -rf "$WORKDIR"
}

# Created here rather than by the test process, so that nothing exists before this shell does.
if ! mkdir "$WORKDIR"; then
    echo "error cannot create $WORKDIR"
    exit 1
fi
for d in $dirs; do
    if ! mkdir "$d"; then
        echo "error cannot create cgroup $d"
        teardown
        exit 1
    fi
    echo "cgroup $d"
done
if [ "$v2" = yes ]; then
    # Every controller the delegated parent passes down, then the two leaves.
    d=${dirs%"$IFS"}
    for c in $(tr ' ' '\n' <"$d/cgroup.controllers"); do
        echo "+$c" >"$d/cgroup.subtree_control" || echo "warning: cannot enable $c in $d"
    done
    if ! mkdir "$d/launcher" "$d/payload"; then
        echo "error cannot create the leaves of $d"
        teardown
        exit 1
    fi
    launcher_cgroup=$d/launcher
    export DS01_SANDBOX_PAYLOAD=$d/payload
fi
# Moving a task into a cpuset without cpus/mems fails with ENOSPC.
for d in $dirs; do
    case "$d" in
        */cpuset/"$NAME")
            cat "${d%/*}/cpuset.cpus" >"$d/cpuset.cpus"
            cat "${d%/*}/cpuset.mems" >"$d/cpuset.mems"
            ;;
    esac
done

# Only this subshell moves into the sandbox's cgroups ("echo 0" moves the writer), then becomes
# unshare; the cgroup namespace is rooted where it stands, so systemd's tree lands in our dirs.
# It reports through a FIFO once it is in place: a teardown before that (the test process may
# die at any moment) would find no process in the cgroups and leave the launcher running.
if ! mkfifo "$WORKDIR/placed"; then
    echo "error cannot create $WORKDIR/placed"
    teardown
    exit 1
fi
(
    placed=yes
    if [ "$v2" = yes ]; then
        echo 0 >"$launcher_cgroup/cgroup.procs" || placed=no
        cgroupns=""
    else
        for d in $dirs; do
            echo 0 >"$d/cgroup.procs" || { placed=no; break; }
        done
        cgroupns=--cgroup
    fi
    echo "$placed" >"$WORKDIR/placed"
    [ "$placed" = yes ] || exit 97
    # On v2 boot.sh enters the cgroup namespace itself, once it is in the payload leaf.
    exec unshare --pid --fork --kill-child --mount --uts --ipc --net $cgroupns \
        --propagation private --mount-proc sh -c "$DS01_SANDBOX_BOOT" ds01-sandbox-boot "$mounts"
) </dev/null >>"$WORKDIR/console.log" 2>&1 &
launcher=$!
read -r placed <"$WORKDIR/placed"
if [ "$placed" != yes ]; then
    echo "error cannot move the launcher into the sandbox's cgroups: $(cat "$WORKDIR/console.log")"
    teardown
    exit 1
fi
echo "launcher $launcher"

# Blocks until the test process drops the Sandbox or dies; nobody ever writes to this pipe.
while read -r _; do :; done
teardown
exit $status
