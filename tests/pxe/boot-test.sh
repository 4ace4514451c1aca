#!/usr/bin/env bash
# PXE-boots QEMU VMs against flint-boot, as a machine in a rack would boot, and checks what each
# one ran:
#   bios-known:     SeaBIOS, a MAC in the inventory: the NIC ROM (iPXE) asks DHCP, flint-boot's
#                   ProxyDHCP hands it the URL of boot.ipxe straight away, boot.ipxe chains to
#                   /ipxe, whose script boots the node's profile (worker);
#   uefi-known:     OVMF with its own PXE client (the NIC's iPXE ROM is left out): ProxyDHCP hands
#                   it ipxe.efi, fetched over flint-boot's TFTP, then iPXE asks DHCP again and
#                   goes on as above (profile control-plane);
#   bios-unknown:   a MAC not in the inventory, unknown policy "default": the default profile;
#   bios-refused:   a MAC not in the inventory, unknown policy "refuse": the refusal line, no
#                   kernel, and iPXE hands the machine back to its firmware.
# Each boot ends with the kernel's initramfs (tests/pxe/init.sh) printing
# "FLINT-PXE-MARKER profile=<flint.profile= of its command line>" on the serial console.
#
#   tests/pxe/boot-test.sh FLINT_BOOT
#
# The network: two namespaces of our own, linked to nothing else. "site" holds a bridge with the
# VM's tap and runs the site's ordinary DHCP server (dnsmasq, addresses only, no PXE options);
# "boot" holds flint-boot on the other end of a veth, so its ProxyDHCP, TFTP and HTTP are reached
# the way a boot server on a rack's network is. QEMU runs without KVM (none works here), from the
# Debian packages tests/pxe/lab-setup.sh unpacks.
set -euo pipefail

# shellcheck source=tests/lib/bounded.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/bounded.sh"
bounded "${FLINT_PXE_TIMEOUT:-300}" "${BASH_SOURCE[0]}" "$@"

if (($# != 1)); then
    echo "usage: tests/pxe/boot-test.sh FLINT_BOOT" >&2
    exit 2
fi
if ((EUID != 0)); then
    echo "boot-test.sh: needs root (network namespaces, a bridge and a tap)" >&2
    exit 1
fi
flint_boot=$(realpath "$1")
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for tool in dnsmasq curl ip; do
    command -v "$tool" >/dev/null || {
        echo "boot-test.sh: needs $tool (scripts/setup.sh installs it)" >&2
        exit 1
    }
done
lab=$("$here/lab-setup.sh")
qemu=$lab/usr/bin/qemu-system-x86_64
# QEMU's TCG accelerator is a loadable module; the unpacked binary looks for it in /usr/lib.
export QEMU_MODULE_DIR=$lab/usr/lib/x86_64-linux-gnu/qemu

work=$(mktemp -d /var/tmp/flint-pxe-test.XXXXXX)
site=flint-pxe-$$-site
boot=flint-pxe-$$-boot
# shellcheck source=tests/lib/lab.sh
source "$here/../lib/lab.sh"

# until_true SECONDS COMMAND...: runs COMMAND every 0.1 s until it succeeds (0) or time is up (1).
until_true() {
    local limit=$1 start=$EPOCHREALTIME
    shift
    until "$@"; do
        (($(elapsed_ms "$start") < limit * 1000)) || return 1
        sleep 0.1
    done
}

# elapsed_ms START: milliseconds since START, an earlier $EPOCHREALTIME (its separator is the
# locale's decimal point, hence the digits only).
elapsed_ms() {
    local now=${EPOCHREALTIME//[!0-9]/} then=${1//[!0-9]/}
    echo $(((now - then) / 1000))
}

# seconds START: "12.3", the seconds since START.
seconds() {
    local ms
    ms=$(elapsed_ms "$1")
    echo "$((ms / 1000)).$((ms % 1000 / 100))"
}


# --- the boot server's files -------------------------------------------------------------------
mkdir -p "$work/images/debian" "$work/images/flint-test" "$work/tftp" "$work/initramfs"/{bin,dev,proc}
# Copies, not links: flint-boot serves nothing outside these folders.
cp -L "$lab/vmlinuz" "$work/images/debian/vmlinuz"
cp -L "$lab/usr/lib/ipxe/undionly.kpxe" "$lab/usr/lib/ipxe/ipxe.efi" "$work/tftp/"
cp "$lab/bin/busybox" "$work/initramfs/bin/"
install -m 755 "$here/init.sh" "$work/initramfs/init"
(cd "$work/initramfs" && find . | "$lab/bin/busybox" cpio -o -H newc 2>/dev/null) >"$work/images/flint-test/initrd.img"

# Kernel parameters of every profile:
# - console=ttyS0: the kernel and the marker on the serial port the test reads;
# - quiet: a short serial log;
# - panic=-1: a kernel that cannot start its initramfs powers off at once (QEMU runs with
#   -no-reboot) instead of waiting for the test's deadline.
# flint-ipxe adds initrd=initrd.img itself: without it Debian 12's ipxe.efi (2019, no LoadFile2)
# leaves Linux 6.1's EFI stub without its initrd and the UEFI boot panics "Unable to mount root fs".
cmdline="console=ttyS0 quiet panic=-1"
# inventory FILE UNKNOWN_POLICY_JSON
inventory() {
    local profile profiles=""
    for profile in worker control-plane rescue; do
        profiles+="${profiles:+,}
    \"$profile\": {\"kernel\": \"debian/vmlinuz\", \"initrds\": [\"flint-test/initrd.img\"],
                   \"cmdline\": \"$cmdline flint.profile=$profile\"}"
    done
    cat >"$1" <<JSON
{
  "profiles": {$profiles
  },
  "nodes": [
    {"name": "bios01", "mac": "52:54:00:f1:00:01", "profile": "worker"},
    {"name": "uefi01", "mac": "52:54:00:f1:00:02", "profile": "control-plane"}
  ],
  "unknown": $2
}
JSON
}
inventory "$work/inventory.json" '{"policy": "default", "profile": "rescue"}'

# --- the network -------------------------------------------------------------------------------
ip netns add "$site"
ip netns add "$boot"
ip -n "$site" link set lo up
ip -n "$boot" link set lo up
ip -n "$site" link add br0 type bridge
ip -n "$site" link add veth0 type veth peer name eth0 netns "$boot"
ip -n "$site" tuntap add tap0 mode tap
ip -n "$site" link set veth0 master br0 up
ip -n "$site" link set tap0 master br0 up
ip -n "$site" addr add 10.99.0.1/24 dev br0
# An IPv6 prefix announced by router advertisements: without one, iPXE waits ~16 s for IPv6
# autoconfiguration on every DHCP step. nodad: usable at once, so dnsmasq advertises it at start.
ip -n "$site" addr add fd99::1/64 dev br0 nodad
ip -n "$site" link set br0 up
ip -n "$boot" addr add 10.99.0.2/24 dev eth0
ip -n "$boot" link set eth0 up

# The site's DHCP server: addresses only. --no-ping: dnsmasq would otherwise ping each address for
# 3 s before offering it.
background dnsmasq ip netns exec "$site" dnsmasq --conf-file=/dev/null --keep-in-foreground --pid-file= \
    --no-resolv --no-hosts --port=0 --interface=br0 --bind-interfaces --dhcp-authoritative --no-ping \
    --dhcp-range=10.99.0.100,10.99.0.199,255.255.255.0,10m --enable-ra --dhcp-range=::,constructor:br0,ra-only \
    --dhcp-leasefile="$work/dnsmasq.leases" --log-dhcp --log-facility=-
dnsmasq_pid=$last_pid
dnsmasq_ready() { grep -q 'DHCP, sockets bound' "$work/dnsmasq.log"; }
until_true 10 dnsmasq_ready || {
    echo "boot-test.sh: dnsmasq did not start:" >&2
    tail -20 "$work/dnsmasq.log" >&2
    exit 1
}

# --- flint-boot --------------------------------------------------------------------------------
# ProxyDHCP on eth0, TFTP and HTTP on every address of the boot namespace. Debug logs show the
# DHCP packets it leaves alone and EDK2's TFTP size probe.
flint_log=$work/flint-boot.log
FLINT_LOG=debug background flint-boot ip netns exec "$boot" "$flint_boot" serve --inventory "$work/inventory.json" \
    --images "$work/images" --http 0.0.0.0:8080 --tftp 0.0.0.0:69 --tftp-root "$work/tftp" --proxy-dhcp eth0
flint_pid=$last_pid
boot_server() { ip netns exec "$boot" curl -fsS --max-time 2 "http://10.99.0.2:8080$1"; }
healthy() { boot_server /healthz >/dev/null 2>&1; }
until_true 10 healthy || {
    echo "boot-test.sh: flint-boot did not answer /healthz within 10 s:" >&2
    tail -30 "$flint_log" >&2
    exit 1
}

# --- the scenarios -----------------------------------------------------------------------------
failed=()
passed=()

# boot_vm NAME FIRMWARE MAC: starts the VM (FIRMWARE bios or uefi) on tap0; sets $vm_pid, $serial.
boot_vm() {
    local name=$1 firmware=$2 mac=$3
    # shellcheck disable=SC2054 # the commas are QEMU's, inside single arguments
    local -a args=(-accel tcg -m 512 -nographic -no-reboot -monitor none -serial "file:$work/$name.serial"
        -L "$lab/usr/share/qemu" -L "$lab/usr/share/seabios" -L "$lab/usr/lib/ipxe/qemu"
        -netdev tap,id=n0,ifname=tap0,script=no,downscript=no)
    serial=$work/$name.serial
    case $firmware in
    bios)
        # SeaBIOS runs the NIC's option ROM, which is iPXE itself (QEMU's pxe-virtio.rom).
        args+=(-boot n -device "virtio-net-pci,netdev=n0,mac=$mac")
        ;;
    uefi)
        # romfile= leaves iPXE's EFI ROM out, so OVMF's own PXE client (VirtioNetDxe and the
        # PXE base code) boots, as a server's firmware would. OVMF ignores -boot n and would
        # try QEMU's empty DVD drive first; bootindex puts the NIC first in the boot order it
        # reads from QEMU. Each VM gets its own copy of the variable store.
        cp "$lab/usr/share/OVMF/OVMF_VARS_4M.fd" "$work/$name.vars.fd"
        args+=(-drive "if=pflash,format=raw,unit=0,readonly=on,file=$lab/usr/share/OVMF/OVMF_CODE_4M.fd"
            -drive "if=pflash,format=raw,unit=1,file=$work/$name.vars.fd"
            -device "virtio-net-pci,netdev=n0,mac=$mac,romfile=,bootindex=1")
        ;;
    esac
    background "$name.qemu" ip netns exec "$site" "$qemu" "${args[@]}"
    vm_pid=$last_pid
}

# serial_has TEXT: the VM's serial output has TEXT.
serial_has() { serial_shows "$serial" -F -- "$1"; }
vm_gone() { ! kill -0 "$vm_pid" 2>/dev/null; }
# What the firmware or the kernel prints once the boot has failed (SeaBIOS out of boot devices,
# OVMF's IPv4 PXE entry failed, a kernel without its initramfs); waiting longer would change
# nothing. stopped_at prints that line.
stopped_at() {
    grep -m1 -E 'No bootable device|BdsDxe: failed to load Boot[0-9A-F]+ "UEFI PXEv4|Kernel panic' < <(serial_text "$serial")
}
gave_up() { stopped_at >/dev/null; }
vm_done() { vm_gone || gave_up; }
shows_or_done() { serial_has "$1" || vm_done; }

# scenario_failed NAME REASON: records the failure and shows what the VM and the servers said.
scenario_failed() {
    local name=$1 reason=$2
    failed+=("$name")
    printf 'FAIL %s (%s s): %s\n' "$name" "$(seconds "$t0")" "$reason"
    echo "--- serial console ($name), last 25 lines"
    serial_text "$serial" | tail -25
    echo "--- flint-boot stderr, last 40 lines"
    tail -40 "$flint_log"
    echo "--- dnsmasq (site DHCP), last 10 lines"
    tail -10 "$work/dnsmasq.log"
    echo "---"
}

scenario_passed() {
    passed+=("$1")
    printf 'PASS %s (%s s): %s\n' "$1" "$(seconds "$t0")" "$2"
}

# server_saw MAC FIRMWARE SERVED: flint-boot's log shows the chain for MAC: its ProxyDHCP answers
# (for UEFI first ipxe.efi, fetched over TFTP, then the script URL to iPXE) and the /ipxe script it
# served (a profile, or "refuse"). Sets $missing to the first pattern not found.
server_saw() {
    local mac=$1 firmware=$2 served=$3 pattern
    local -a want=()
    case $firmware in
    bios) want+=("proxydhcp answered port=[0-9]+ mac=$mac firmware=\"bios\" boot=\"script\"") ;;
    uefi)
        want+=("proxydhcp answered port=[0-9]+ mac=$mac firmware=\"efi-x64\" boot=\"tftp\" file=ipxe.efi"
            "tftp sent .*file=\"ipxe.efi\""
            "proxydhcp answered port=[0-9]+ mac=$mac firmware=\"efi-x64\" boot=\"script\"")
        ;;
    esac
    want+=("script peer=[^ ]+ mac=$mac .*served=\"$served\"")
    for pattern in "${want[@]}"; do
        missing=$pattern
        grep -qE -- "$pattern" "$flint_log" || return 1
    done
}

# boots NAME FIRMWARE MAC PROFILE SCRIPT_LINE: the VM must show SCRIPT_LINE (the echo of its
# script) and the marker of PROFILE, then power itself off.
boots() {
    local name=$1 firmware=$2 mac=$3 profile=$4 line=$5 limit=45
    # OVMF alone takes ~10 s to reach its PXE client under TCG.
    [[ $firmware == uefi ]] && limit=90
    t0=$EPOCHREALTIME
    boot_vm "$name" "$firmware" "$mac"
    until_true "$limit" vm_done || true
    if gave_up; then
        stop "$vm_pid"
        scenario_failed "$name" "the boot stopped at: $(stopped_at)"
    elif ! vm_gone; then
        stop "$vm_pid"
        scenario_failed "$name" "the VM was still running after $limit s"
    elif ! serial_has "$line"; then
        scenario_failed "$name" "no '$line' on the serial console"
    elif ! serial_shows "$serial" "FLINT-PXE-MARKER profile=$profile\$"; then
        # (the marker may follow iPXE's last "... ok" on the same line: a quiet kernel prints
        # nothing before it)
        scenario_failed "$name" "no marker of profile $profile on the serial console"
    elif ! server_saw "$mac" "$firmware" "$profile"; then
        scenario_failed "$name" "flint-boot's log has no line matching: $missing"
    else
        stop "$vm_pid"
        scenario_passed "$name" "$firmware, $mac booted profile $profile"
    fi
}

# refused NAME FIRMWARE MAC: the VM must show the refusal line and boot no kernel. iPXE then
# returns to the firmware, which would retry forever: the VM is stopped once the line is there.
refused() {
    local name=$1 firmware=$2 mac=$3 limit=45
    local line="flint: machine $mac is not in the inventory, refused"
    t0=$EPOCHREALTIME
    boot_vm "$name" "$firmware" "$mac"
    until_true "$limit" shows_or_done "$line" || true
    stop "$vm_pid"
    if ! serial_has "$line" && gave_up; then
        scenario_failed "$name" "no '$line'; the boot stopped at: $(stopped_at)"
    elif ! serial_has "$line"; then
        scenario_failed "$name" "no '$line' on the serial console within $limit s"
    elif serial_has "FLINT-PXE-MARKER"; then
        scenario_failed "$name" "a refused machine booted a kernel"
    elif ! server_saw "$mac" "$firmware" refuse; then
        scenario_failed "$name" "flint-boot's log has no line matching: $missing"
    else
        scenario_passed "$name" "$firmware, $mac refused, no kernel booted"
    fi
}

boots bios-known bios 52:54:00:f1:00:01 worker "flint: booting bios01 profile worker"
boots uefi-known uefi 52:54:00:f1:00:02 control-plane "flint: booting uefi01 profile control-plane"
boots bios-unknown bios 52:54:00:f1:00:03 rescue "flint: unknown machine, default profile rescue"
# The same flint-boot, now refusing unknown machines: the inventory file is replaced by a rename,
# as an operator's tooling would, and SIGHUP reloads it.
inventory "$work/inventory.json.new" '{"policy": "refuse"}'
mv "$work/inventory.json.new" "$work/inventory.json"
kill -HUP "$flint_pid"
reloaded() { grep -q 'inventory reloaded' "$flint_log"; }
until_true 5 reloaded || {
    echo "boot-test.sh: flint-boot did not reload its inventory within 5 s:" >&2
    tail -20 "$flint_log" >&2
    exit 1
}
refused bios-refused bios 52:54:00:f1:00:04

# Each machine fetched its script once (a second fetch would be a chainload loop), and flint-boot
# counted no error of its own.
boot_server /metrics >"$work/metrics.txt" || echo "boot-test.sh: /metrics did not answer" >>"$work/metrics.txt"
metric_problems=()
for served in worker control-plane rescue refuse; do
    grep -qx "flint_boot_scripts_served_total{profile=\"$served\"} 1" "$work/metrics.txt" ||
        metric_problems+=("scripts served for $served is not 1")
done
grep -qx 'flint_boot_inventory_reloads_total{result="ok"} [1-9][0-9]*' "$work/metrics.txt" ||
    metric_problems+=("no successful inventory reload")
# Every kind is exported from the start, at 0: only a count above it is an error.
if grep -E '^flint_boot_errors_total\{.*\} [1-9]' "$work/metrics.txt"; then
    metric_problems+=("flint-boot counted errors")
fi
if ((${#metric_problems[@]})); then
    failed+=(metrics)
    printf 'FAIL metrics: %s\n' "${metric_problems[@]}"
    grep -v '^#' "$work/metrics.txt"
else
    passed+=(metrics)
    echo "PASS metrics: one script per machine, inventory reloaded, no server error"
fi

stop "$dnsmasq_pid"
stop "$flint_pid"
printf '%d passed, %d failed\n' "${#passed[@]}" "${#failed[@]}"
if ((${#failed[@]})); then
    exit 1
fi
echo "all scenarios passed"
