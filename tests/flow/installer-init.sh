#!/bin/busybox sh
# shellcheck shell=sh
# PID 1 of the installer stand-in the flow's profile boots (tests/flow): what nixos-anywhere does
# to a machine that PXE-booted its installer, reduced to what flint's part needs. It asks DHCP for
# an address, writes the root file system the boot server serves (flint.root= on the kernel
# command line, an lzop'd ext4 image: Debian, systemd, etcd, flint and its units) to /dev/vda, then
# waits for the provisioning workstation to push the node's own files (a tar stream of a tree
# relative to /, on TCP port 7070, as nixos-anywhere pushes --extra-files over SSH; never from the
# boot server): /etc/nixos/secrets above all, kept with their modes. Then it powers off so the
# machine can boot from its disk.
# Every step prints one FLINT-FLOW line on the serial console, which the flow reads.
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sys /sys
$bb mount -t devtmpfs dev /dev
say() { echo "FLINT-FLOW installer: $*"; }
fail() {
    say "failed: $*"
    $bb poweroff -f
}
root_url=
for word in $($bb cat /proc/cmdline); do
    case $word in
    flint.root=*) root_url=${word#flint.root=} ;;
    esac
done
[ -n "$root_url" ] || fail "no flint.root= on the kernel command line"
for module in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
    virtio_blk failover net_failover virtio_net crc16 mbcache jbd2 crc32c_generic ext4; do
    $bb insmod "/modules/$module.ko" || fail "insmod $module"
done
i=0
while ! $bb ip link show eth0 >/dev/null 2>&1 && [ $i -lt 100 ]; do
    $bb sleep 0.1
    i=$((i + 1))
done
$bb ip link set lo up
$bb ip link set eth0 up
# udhcpc's default script is not in this initramfs: the address is set from its environment.
$bb udhcpc -i eth0 -n -q -t 10 -T 1 -s /udhcpc.sh || fail "no DHCP lease"
# shellcheck disable=SC2016 # awk's own $4
address=$($bb ip -4 -o addr show eth0 | $bb awk '{print $4}')
say "address $address"
say "writing $root_url to /dev/vda"
$bb wget -q -O - "$root_url" | $bb lzop -d -c | $bb dd of=/dev/vda bs=1M conv=fsync 2>/dev/null \
    || fail "writing the root file system"
$bb mkdir -p /mnt
$bb mount -t ext4 /dev/vda /mnt || fail "mounting the written root"
say "installed; waiting for the node's files on port 7070"
# One push, bounded: a workstation that never comes leaves the machine powered off, not waiting.
$bb timeout 300 $bb nc -l -p 7070 | $bb tar -x -p -C /mnt || fail "receiving the node's files"
[ -s /mnt/etc/nixos/secrets/cluster-config.json ] || fail "no etc/nixos/secrets/cluster-config.json in what was pushed"
say "secrets in place: $($bb ls /mnt/etc/nixos/secrets | $bb tr '\n' ' ')"
$bb umount /mnt
$bb sync
say "done"
$bb poweroff -f
