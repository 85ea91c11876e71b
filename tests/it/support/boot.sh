# PID 1 of fresh PID/mount/cgroup/UTS/IPC/net namespaces, until it execs systemd; see
# supervisor.sh. $1: lines "mountpoint fstype options" of the cgroup hierarchies to mount.
#
# The namespaces share the machine's file systems: whatever is not on a tmpfs mounted here is the
# machine's own. Hence set -e (systemd must never start with a tmpfs below missing: it would wipe
# the machine's /tmp, write drop-ins into its /etc/systemd, its journal) and a unit search path
# that holds only units on those tmpfs mounts (see the end).
set -eu
IFS='
'
# libmount creates the directory of its utab on every mount, and /run is the machine's until the
# tmpfs below covers it.
export LIBMOUNT_UTAB=/proc/ds01-sandbox-no-utab/utab

# Fresh hierarchies, rooted at this cgroup namespace; the inherited ones show the machine's root.
# On v2 the namespace is entered at the end (see there); until then the machine's tree stays.
if [ -n "${DS01_SANDBOX_PAYLOAD:-}" ]; then
    echo 0 >"$DS01_SANDBOX_PAYLOAD/cgroup.procs"
    unified=1
else
    unified=0
    umount -R /sys/fs/cgroup
    mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup
fi
[ "$unified" = 1 ] || for m in $1; do
    mp=${m%% *}; rest=${m#* }; type=${rest%% *}; opts=${rest#* }
    mkdir -p "$mp"
    if [ "$type" = cgroup2 ]; then
        mount -t cgroup2 cgroup2 "$mp"
    else
        mount -t cgroup -o "$opts" cgroup "$mp"
    fi
done
# /var/log rather than /var/log/journal: the latter need not exist, and creating it would be a
# change to the machine.
for d in /run /var/lib/systemd /var/log /etc/systemd; do
    mount -t tmpfs -o mode=755 tmpfs "$d"
done
for d in /tmp /var/tmp; do
    mount -t tmpfs -o mode=1777 tmpfs "$d"
done
mkdir -p /etc/systemd/system /run/systemd/system

# Both are the machine's: its console (where systemd in a container logs, though only to a tty)
# and its kernel log (where we have it log). A FIFO, drained into our stdout (the console log
# the harness shows when boot fails), keeps every writer's lines whole and in order, which a
# plain file that each writer opens at offset 0 would not.
mkfifo /run/ds01-console
cat <>/run/ds01-console &
mount --bind /run/ds01-console /dev/console
mount --bind /run/ds01-console /dev/kmsg

# dbus.* so that systemd registers itself on this bus. sysinit.target and basic.target stand in
# for the stock ones, which every service (systemd-run's too) requires by default, and which pull
# in the early boot: systemd-sysctl sets the machine's kernel, systemd-tmpfiles-setup creates
# /etc/mtab and /root/.ssh, the journal socket /dev/log, mount units /dev/mqueue (all seen).
unit() {
    printf '%s\n' "$2" >"/run/systemd/system/$1"
}
unit ds01-sandbox.target '[Unit]
Description=ds01 test sandbox
DefaultDependencies=no
Wants=dbus.socket dbus.service'
unit sysinit.target '[Unit]
DefaultDependencies=no'
unit basic.target '[Unit]
DefaultDependencies=no'
unit dbus.socket '[Unit]
DefaultDependencies=no
[Socket]
ListenStream=/run/dbus/system_bus_socket'
unit dbus.service '[Unit]
DefaultDependencies=no
Requires=dbus.socket
After=dbus.socket
[Service]
ExecStart=/usr/bin/dbus-daemon --system --address=systemd: --nofork --nopidfile --systemd-activation --syslog-only'

# Only the tmpfs unit directories, in systemd's own order of precedence (system.control first, so
# that SetUnitProperties drop-ins are found): none of the machine's units, so none of the above
# can be started even by name. No generators either: they read the machine's configuration
# (fstab, init.d, postgresql) to make units nobody here wants.
# v2: a cgroup namespace rooted at the payload leaf (this process is there now), and the unified
# hierarchy mounted afresh inside it, so that systemd sees its leaf as the root.
enter=""
[ "$unified" = 1 ] && enter='umount -R /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup &&'
exec unshare $([ "$unified" = 1 ] && echo --cgroup) sh -c "$enter"' exec "$@"' ds01-sandbox-boot \
    env -i container=ds01-sandbox PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    SYSTEMD_PROC_CMDLINE="systemd.unified_cgroup_hierarchy=$unified systemd.log_target=kmsg systemd.show_status=0" \
    SYSTEMD_UNIT_PATH=/etc/systemd/system.control:/run/systemd/system.control:/run/systemd/transient:/etc/systemd/system:/run/systemd/system \
    SYSTEMD_GENERATOR_PATH=/run/ds01-sandbox-no-generators \
    SYSTEMD_ENVIRONMENT_GENERATOR_PATH=/run/ds01-sandbox-no-generators \
    /usr/lib/systemd/systemd --system --unit=ds01-sandbox.target
