#!/usr/bin/env bash
# `flint-boot render`'s static set behind the plainest web server there is (python3 -m http.server),
# booted by real iPXE: QEMU's SeaBIOS runs QEMU's iPXE NIC ROM (Debian's iPXE 1.0.0+git-20190125),
# which gets its address and the URL of boot.ipxe from QEMU's own user-mode network (restrict=on:
# the VM reaches nothing but the one forwarded address, which leads to the web server on a
# loopback address). Two machines:
#   known    the inventory's node: boot.ipxe fetches its script by file name, which boots the
#            node's kernel and initramfs to a marker line on the serial console;
#   unknown  not in the inventory (policy refuse): its own and its UUID's names are missing (404),
#            the unknown policy's script refuses it, iPXE exits and SeaBIOS moves on.
# Before, the static boot.ipxe chained to `ipxe?mac=...`, which http.server answers with a redirect
# to a folder listing: iPXE ran the HTML as a PXE program and the BIOS machine hung.
#
# Usage: static-boot-test.sh FLINT_BOOT_BINARY. Needs QEMU and its firmware from lab-setup.sh,
# python3 and curl. Prints "all scenarios passed" and exits 0, or says what failed and exits 1.
set -euo pipefail

flint_boot=${1:?usage: static-boot-test.sh FLINT_BOOT_BINARY}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for tool in python3 curl; do
    command -v "$tool" >/dev/null || {
        echo "static-boot-test.sh: needs $tool" >&2
        exit 1
    }
done
lab=$("$here/lab-setup.sh")
qemu=$lab/usr/bin/qemu-system-x86_64
export QEMU_MODULE_DIR=$lab/usr/lib/x86_64-linux-gnu/qemu

work=$(mktemp -d /var/tmp/flint-static-test.XXXXXX)
# What runs in the background, by PID. Only these are ever signalled.
pids=()
cleanup() {
    local status=$? pid
    trap '' INT TERM
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'trap "" INT TERM; exit 130' INT
trap 'trap "" INT TERM; exit 143' TERM

serial_text() {
    [[ -e $1 ]] || return 0
    tr -d '\r' <"$1" | sed -E 's/\x1b\[[0-9;?=]*[A-Za-z]//g; s/\x1bc//g'
}

# --- the static set ----------------------------------------------------------------------------
mkdir -p "$work/initramfs"/{bin,dev,proc}
cp "$lab/bin/busybox" "$work/initramfs/bin/"
install -m 755 "$here/init.sh" "$work/initramfs/init"
cat >"$work/inventory.json" <<'JSON'
{"profiles": {"worker": {"kernel": "debian/vmlinuz", "initrds": ["flint-test/initrd.img"],
                         "cmdline": "console=ttyS0 quiet panic=-1 flint.profile=worker"}},
 "nodes": [{"name": "node01", "mac": "52:54:00:5a:00:01", "profile": "worker"}],
 "unknown": {"policy": "refuse"}}
JSON
"$flint_boot" render --inventory "$work/inventory.json" "$work/www" 2>"$work/render.log"
# The images beside the scripts, where their relative URLs (images/...) lead.
mkdir -p "$work/www/images/debian" "$work/www/images/flint-test"
cp -L "$lab/vmlinuz" "$work/www/images/debian/vmlinuz"
(cd "$work/initramfs" && find . | "$lab/bin/busybox" cpio -o -H newc 2>/dev/null) \
    >"$work/www/images/flint-test/initrd.img"

# --- the web server ----------------------------------------------------------------------------
addr=127.$((RANDOM % 200 + 20)).$((RANDOM % 250)).$((RANDOM % 250 + 1))
port=$((RANDOM % 20000 + 20000))
python3 -m http.server --bind "$addr" "$port" --directory "$work/www" >"$work/http.log" 2>&1 </dev/null &
pids+=($!)
for ((i = 0; i < 100; i++)); do
    curl -sf -o /dev/null "http://$addr:$port/boot.ipxe" && break
    sleep 0.1
done

# --- the machines ------------------------------------------------------------------------------
# boot_vm NAME MAC: starts the VM in the background; its serial console goes to $work/NAME.serial.
boot_vm() {
    local name=$1 mac=$2
    # One connection to the web server for each the VM opens (busybox nc per connection).
    local net="user,id=n0,restrict=on,bootfile=http://10.0.2.100/boot.ipxe"
    net+=",guestfwd=tcp:10.0.2.100:80-cmd:$lab/bin/busybox nc $addr $port"
    "$qemu" -accel tcg -m 512 -nographic -no-reboot -monitor none -serial "file:$work/$name.serial" \
        -L "$lab/usr/share/qemu" -L "$lab/usr/share/seabios" -L "$lab/usr/lib/ipxe/qemu" \
        -netdev "$net" -boot n -device "virtio-net-pci,netdev=n0,mac=$mac" \
        >"$work/$name.qemu.log" 2>&1 </dev/null &
    pids+=($!)
}
boot_vm known 52:54:00:5a:00:01
boot_vm unknown 52:54:00:5a:00:99

# wait_for NAME TEXT: the VM's console shows TEXT within 150 s (two VMs under TCG on 2 cores).
wait_for() {
    local i
    for ((i = 0; i < 1500; i++)); do
        serial_text "$work/$1.serial" | grep -qF -- "$2" && return 0
        sleep 0.1
    done
    return 1
}
failed=()
wait_for known "FLINT-PXE-MARKER profile=worker" || failed+=(known)
{ wait_for unknown "is not in the inventory, refused" && wait_for unknown "No bootable device"; } ||
    failed+=(unknown)
if ((${#failed[@]})); then
    for name in "${failed[@]}"; do
        echo "--- $name: serial console" >&2
        serial_text "$work/$name.serial" | tail -30 >&2
    done
    echo "--- web server" >&2
    cat "$work/http.log" >&2
    echo "static-boot-test.sh: failed: ${failed[*]}" >&2
    exit 1
fi
echo "all scenarios passed"
