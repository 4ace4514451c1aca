#!/bin/busybox sh
# shellcheck shell=sh
# PID 1 of the initramfs that tests/pxe/boot-test.sh builds and PXE-boots: says on the console which
# profile the boot server's script booted (flint.profile= on the kernel command line), then
# powers the VM off so that QEMU exits and the test knows the boot is over.
/bin/busybox mount -t proc proc /proc
profile=
for word in $(/bin/busybox cat /proc/cmdline); do
    case $word in
    flint.profile=*) profile=${word#flint.profile=} ;;
    esac
done
echo "FLINT-PXE-MARKER profile=$profile"
/bin/busybox poweroff -f
