#!/bin/busybox sh
# shellcheck shell=sh
# PID 1 of the small initramfs that boots an installed node from its disk (tests/flow): Debian's
# kernel has virtio's disk and network drivers and ext4 as modules, so they are loaded here, in
# dependency order, before the root on /dev/vda is mounted and systemd takes over. What the
# kernel command line of a bootloader would say (root=/dev/vda) is given by QEMU's -append.
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs dev /dev
for module in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
    virtio_blk failover net_failover virtio_net crc16 mbcache jbd2 crc32c_generic ext4; do
    /bin/busybox insmod "/modules/$module.ko" || echo "FLINT-FLOW boot: insmod $module failed"
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do
    /bin/busybox sleep 0.1
    i=$((i + 1))
done
/bin/busybox mkdir -p /newroot
if ! /bin/busybox mount -t ext4 /dev/vda /newroot; then
    echo "FLINT-FLOW boot: cannot mount /dev/vda"
    /bin/busybox poweroff -f
fi
/bin/busybox umount /proc
/bin/busybox mount --move /dev /newroot/dev
exec /bin/busybox switch_root /newroot /sbin/init
