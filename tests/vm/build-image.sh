#!/usr/bin/env bash
# Builds the cgroup v2 test VM (tests/it/support/vm.rs) from the Debian archive:
#   build-image.sh SUITE OUTDIR
# writes OUTDIR/{root.img,vmlinuz,initrd.img,versions}: an ext4 image of a minimal Debian SUITE
# (systemd, dbus, Docker, busybox) with the harness's agent and bus bridge socket, the suite's own
# kernel, and a tiny initramfs. No loop device, no mount: mmdebstrap --mode=root into a
# directory, mkfs.ext4 -d from it. The harness keys its cache by a hash of this directory.
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# mmdebstrap mounts /proc, /sys and /dev in the chroot with util-linux's mount, which creates
# /run/mount (its utab directory) on a machine that has none: point libmount somewhere it
# cannot create, so the build leaves the machine's /run as it was (.ci/hygiene checks it).
export LIBMOUNT_UTAB=/proc/ds01-no-utab/utab
suite=$1
out=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mirror=${DS01_VM_MIRROR:-http://deb.debian.org/debian}

work=$(mktemp -d "${out%/}.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs

# openssh-server: the fleet tests' real ssh; man-db and init-system-helpers: the package test
# (`man ds01-slices`, deb-systemd-helper in the maintainer scripts); socat: the fleet tests' stand-in
# for ssh bridges a sandbox's bus with it, inside the VM too.
# bpftool: the GPU test reads the BPF device programs attached to a container's cgroup.
packages=systemd,systemd-sysv,dbus,udev,kmod,procps,busybox-static,docker.io,e2fsprogs,openssh-server,man-db,init-system-helpers,socat,bpftool
if [ "$suite" = bookworm ]; then
    # Real Docker clients that no one here wrote, for the gate's tests: the Python SDK and
    # docker-compose 1.29 (which uses it); python3 is also what Ansible needs on its target.
    packages=$packages,python3-docker,docker-compose
else
    # trixie's docker.io only recommends the client.
    packages=$packages,docker-cli
fi

# The suite's own kernel, unpacked without its maintainer scripts (they would build the stock
# initramfs, ~80 s, that the VM does not use).
kernel_hook='set -e
pkg=$(chroot "$1" apt-cache depends linux-image-amd64 | sed -n "s/^ *Depends: \(linux-image-[0-9].*\)$/\1/p" | head -n1)
[ -n "$pkg" ]
mkdir -p "$1/var/tmp/kernel"
(cd "$1/var/tmp/kernel" && chroot "$1" sh -c "cd /var/tmp/kernel && apt-get download -q $pkg")
# Unpacked aside and copied: dpkg-deb -x into the root would replace the /lib -> usr/lib link.
dpkg-deb -x "$1"/var/tmp/kernel/*.deb "$1/var/tmp/kernel/x"
mkdir -p "$1/usr/lib/modules" "$1/boot"
# bookworm ships the modules under /lib, trixie under /usr/lib.
for m in "$1"/var/tmp/kernel/x/lib/modules "$1"/var/tmp/kernel/x/usr/lib/modules; do
    if [ -d "$m" ]; then cp -a "$m/." "$1/usr/lib/modules/"; fi
done
cp -a "$1"/var/tmp/kernel/x/boot/. "$1/boot/"
rm -rf "$1/var/tmp/kernel"
kver=$(ls "$1/lib/modules" | head -n1)
# busybox insmod in the initramfs reads plain .ko files only; trixie ships them xz-compressed.
find "$1/lib/modules/$kver" -name "*.ko.xz" -exec xz -d {} +
chroot "$1" /sbin/depmod "$kver"'

guest_hook='set -e
g='"$here"'/guest
install -m 755 "$g/ds01-agent" "$1/usr/local/sbin/"
install -m 644 "$g/ds01-agent.service" "$g/ds01-bus.socket" "$g/ds01-bus@.service" "$g/mnt-ds01.mount" "$1/etc/systemd/system/"
printf "%s\n" "PermitRootLogin prohibit-password" "PasswordAuthentication no" "UseDNS no" >"$1/etc/ssh/sshd_config.d/ds01.conf"
mkdir -p "$1/mnt/ds01" "$1/etc/docker"
printf "%s\n" 9pnet_virtio 9p virtio_console overlay >"$1/etc/modules-load.d/ds01.conf"
# Docker as DS01 runs it, offline; started by the tests that need it (it costs ~9 s of boot).
printf "%s\n" "{\"exec-opts\": [\"native.cgroupdriver=systemd\"], \"bridge\": \"none\", \"iptables\": false, \"ip6tables\": false}" >"$1/etc/docker/daemon.json"
echo ds01-vm >"$1/etc/hostname"
: >"$1/etc/fstab"
# ssh.service is started by the tests that use ssh (support/ssh.rs); ds01-bus.socket listens from
# boot on. The NIC QEMU forwards to both stays down until the harness brings it up (Vm::network_up).
chroot "$1" systemctl enable ds01-agent.service mnt-ds01.mount ds01-bus.socket
chroot "$1" systemctl disable ssh.service ssh.socket docker.service docker.socket containerd.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer 2>/dev/null || true
# An image for docker import: busybox with relative applet links (absolute ones break inside a
# container).
img=$1/var/tmp/busybox-root
mkdir -p "$img/bin" "$img/tmp"
cp "$1/bin/busybox" "$img/bin/busybox"
for a in $(chroot "$1" /bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$img/bin/$a"; done
mkdir -p "$1/usr/local/share/ds01"
tar -C "$img" -cf "$1/usr/local/share/ds01/busybox-root.tar" .
rm -rf "$img"
# The image leaves out man pages and docs to stay small, but a package installed later (the
# package test'"'"'s dpkg -i) installs as on any Debian machine.
rm -f "$1/etc/dpkg/dpkg.cfg.d/99mmdebstrap"'

mmdebstrap --variant=minbase --mode=root --include="$packages" \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --customize-hook="$kernel_hook" --customize-hook="$guest_hook" \
    "$suite" "$rootfs" "$mirror"

kver=$(ls "$rootfs/lib/modules" | head -n1)
cp "$rootfs/boot/vmlinuz-$kver" "$work/vmlinuz"

# The tiny initramfs: busybox, the root disk's drivers, /init.
initrd=$work/initrd
mkdir -p "$initrd/bin" "$initrd/proc" "$initrd/sys" "$initrd/dev" "$initrd/lib/modules"
cp "$rootfs/bin/busybox" "$initrd/bin/busybox"
install -m 755 "$here/guest/init" "$initrd/init"
# One module per call: modprobe takes further arguments as module parameters.
for m in virtio_pci virtio_blk crc32c_generic ext4; do
    chroot "$rootfs" /sbin/modprobe -S "$kver" --show-depends "$m" 2>/dev/null
done | sed -n 's|^insmod .*/lib/modules/[^/]*/\(.*\.ko\).*$|\1|p' | awk '!seen[$0]++' >"$initrd/modules.order"
while read -r m; do
    mkdir -p "$initrd/lib/modules/$(dirname "$m")"
    cp "$rootfs/lib/modules/$kver/$m" "$initrd/lib/modules/$m"
done <"$initrd/modules.order"
(cd "$initrd" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.img"

{
    echo "suite $suite"
    echo "kernel $kver"
    echo "systemd $(chroot "$rootfs" dpkg-query -W -f='${Version}' systemd)"
    echo "docker $(chroot "$rootfs" dpkg-query -W -f='${Version}' docker.io)"
} >"$work/versions"

rm -rf "$rootfs/boot"/* "$rootfs/var/cache/apt"/*.bin
mkfs.ext4 -q -F -O ^has_journal -L ds01-root -d "$rootfs" "$work/root.img" 3G
rm -rf "$rootfs"

mkdir -p "$out"
mv "$work/root.img" "$work/vmlinuz" "$work/initrd.img" "$work/versions" "$out/"
