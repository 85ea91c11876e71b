# Supervisor of one test VM; run by support/vm.rs as `sh -c <this> ds01-vm-supervisor QEMU ARGS...`.
#
# The only owner of the QEMU process and the VM's work directory, so that there is one teardown
# path whether the test passes, panics or is SIGKILLed: stdin is a pipe whose write end only the
# test process holds, and EOF on it means "tear down now".
#
# Environment: DS01_VM_WORKDIR (created by the harness; removed here at the end).
# Stdout: "qemu <pid>" once QEMU runs, or "error <reason>"; after EOF, teardown diagnostics.
set -u
WORKDIR=$DS01_VM_WORKDIR
exec 2>&1
trap '' HUP INT TERM PIPE

"$@" </dev/null >>"$WORKDIR/qemu.log" 2>&1 &
qemu=$!
echo "qemu $qemu"

while read -r _; do :; done

# QMP's quit is the clean way; the PID (a child of this shell, so not reused while unreaped) the
# sure one.
if [ -S "$WORKDIR/qmp.sock" ] && command -v socat >/dev/null 2>&1; then
    printf '%s\n' '{"execute":"qmp_capabilities"}' '{"execute":"quit"}' |
        timeout 5 socat - "UNIX-CONNECT:$WORKDIR/qmp.sock" >/dev/null 2>&1
fi
# Running, as opposed to gone or a zombie waiting for the wait below.
running() {
    state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
    case $state in Z* | X*) return 1 ;; esac
}
n=0
while running "$qemu"; do
    n=$((n + 1))
    [ $n -eq 50 ] && kill -9 "$qemu" 2>/dev/null
    [ $n -ge 200 ] && { echo "teardown: QEMU (PID $qemu) survives SIGKILL"; exit 1; }
    sleep 0.1
done
wait "$qemu" 2>/dev/null
rm -rf "$WORKDIR"
exit 0
