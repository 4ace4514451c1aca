#!/usr/bin/env bash
# The deployment flow, bare machines to a validated cluster, on this machine: QEMU VMs (no
# KVM here: software emulation) on a bridge inside network namespaces of our own.
#   1. Preparation: `flint-boot prepare` writes every node's folder from the inventory; flint-boot
#      serves the same inventory, iPXE and the installer profile; the site's ordinary DHCP
#      server (dnsmasq, addresses only) runs beside it.
#   2. node01-03 power on at once (node02 with UEFI firmware, the others BIOS) and PXE-boot:
#      ProxyDHCP, TFTP, iPXE, boot.ipxe, their script, the installer's kernel and initrd.
#   3. Installation (installer-init.sh, a stand-in for nixos-anywhere): the root file system
#      (Debian 12, systemd, etcd, and flint's packages installed with dpkg, as an operator
#      installs them) onto the disk,
#      then the node's files pushed from the workstation (here: this script in the site
#      namespace, never the boot server); the machine powers off.
#   4. First boot from the disk (QEMU boots the installed kernel directly, in place of a
#      bootloader): systemd runs flint's units; chainfire, flaredb and IAM are flint-testserver
#      in member mode on each machine, etcd is Debian's, forming its cluster.
#   5. node01, the leader_url of every config, is powered off; node04 powers on, PXE-boots,
#      installs, boots and joins every service through its peers; node01 powers on again.
#   6. Validation, from outside (the workstation): `flint health --expect-members 4
#      --write-check`, `etcdctl member list`, flint-boot's /metrics and each machine's journey
#      (its PXE boot, then its units' reports, to healthy); and each node's own
#      first-boot health check, from its journal.
# Prints a timeline (seconds from each machine's power-on to each step) beside the manual
# procedure's stated durations. Bounded in time; stops what it started, removes its namespaces
# and files.
#
#   tests/flow/run.sh RELEASE FLINT_TESTSERVER     (as root)
#
# RELEASE is scripts/release.sh's folder: the nodes get its flint and flint-etcd packages, the
# boot server and the workstation run its static flint-boot and flint.
set -euo pipefail

# shellcheck source=tests/lib/bounded.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/bounded.sh"
bounded "${FLINT_FLOW_TIMEOUT:-900}" "${BASH_SOURCE[0]}" "$@"
if (($# != 2)); then
    echo "usage: tests/flow/run.sh RELEASE FLINT_TESTSERVER" >&2
    exit 64
fi
((EUID == 0)) || { echo "run.sh: needs root (network namespaces, a bridge, taps)" >&2; exit 1; }
release=$(realpath "$1")
flint=$(compgen -G "$release/flint-[0-9]*-x86_64-linux-musl") ||
    { echo "run.sh: no static flint in $release (scripts/release.sh)" >&2; exit 1; }
flint_boot=$(compgen -G "$release/flint-boot-*-x86_64-linux-musl") ||
    { echo "run.sh: no static flint-boot in $release (scripts/release.sh)" >&2; exit 1; }
testserver=$(realpath "$2")
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for tool in dnsmasq ip etcdctl curl jq chromium; do
    command -v "$tool" >/dev/null || { echo "run.sh: needs $tool (scripts/setup.sh installs it)" >&2; exit 1; }
done

say() { printf '%s\n' "$*"; }
step() { printf '\n== %s\n' "$*"; }
started=$EPOCHREALTIME
now_s() {
    local now=${EPOCHREALTIME//[!0-9]/} then=${started//[!0-9]/}
    local ms=$(((now - then) / 1000))
    printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}

lab=$("$here/../pxe/lab-setup.sh")
image=$("$here/image.sh")
qemu=$lab/usr/bin/qemu-system-x86_64
export QEMU_MODULE_DIR=$lab/usr/lib/x86_64-linux-gnu/qemu

work=$(mktemp -d /var/tmp/flint-flow.XXXXXX)
site=flint-flow-$$-site
boot=flint-flow-$$-boot
# shellcheck source=tests/lib/lab.sh
source "$here/../lib/lab.sh"

fail() {
    printf '\nFAILED at %s s: %s\n' "$(now_s)" "$*" >&2
    local f
    for f in "$work"/*.serial; do
        [[ -e $f ]] || continue
        printf -- '--- %s, last 30 lines\n' "${f##*/}" >&2
        serial_text "$f" | tail -30 >&2
    done
    printf -- '--- flint-boot, last 20 lines\n' >&2
    tail -20 "$work/flint-boot.log" >&2 || true
    exit 1
}

# --- the machines: name, MAC, address, firmware --------------------------------------------------
nodes=(node01 node02 node03 node04)
declare -A mac=([node01]=52:54:00:f1:00:01 [node02]=52:54:00:f1:00:02 [node03]=52:54:00:f1:00:03 [node04]=52:54:00:f1:00:04)
declare -A addr=([node01]=10.99.0.11 [node02]=10.99.0.12 [node03]=10.99.0.13 [node04]=10.99.0.14)
declare -A firmware=([node01]=bios [node02]=uefi [node03]=bios [node04]=bios)
declare -A vm_pid=()
declare -A mark=()   # "node phase" -> seconds since that node's power-on
declare -A power_on=()

# --- 1. preparation ------------------------------------------------------------------------------
step "1. Preparation: the root file system, the inventory, every node's folder"
mkdir -p "$work/images/flow" "$work/tftp" "$work/push"
cp -L "$lab/vmlinuz" "$work/images/flow/vmlinuz"
cp "$image/installer.cpio.gz" "$work/images/flow/installer.img"
root=$("$here/node-root.sh" "$image" "$release" "$testserver")
ln "$root/root.img.lzo" "$work/images/flow/root.img.lzo" 2>/dev/null || cp "$root/root.img.lzo" "$work/images/flow/"
say "root file system: $(du -h "$work/images/flow/root.img.lzo" | cut -f1) lzop'd ($(now_s) s)"
cp -L "$lab/usr/lib/ipxe/undionly.kpxe" "$lab/usr/lib/ipxe/ipxe.efi" "$work/tftp/"

inventory_nodes=""
for n in "${nodes[@]}"; do
    initial=false
    [[ $n != node04 ]] && initial=true
    inventory_nodes+="${inventory_nodes:+,
    }{\"name\": \"$n\", \"mac\": \"${mac[$n]}\", \"profile\": \"installer\", \"raft_addr\": \"${addr[$n]}:2380\", \"initial\": $initial}"
done
cat >"$work/inventory.json" <<JSON
{
  "profiles": {
    "installer": {"kernel": "flow/vmlinuz", "initrds": ["flow/installer.img"],
                  "cmdline": "console=ttyS0 quiet panic=-1 flint.root=http://10.99.0.2:8080/images/flow/root.img.lzo"}
  },
  "nodes": [
    $inventory_nodes
  ],
  "cluster": {"services": ["etcd", "chainfire", "flaredb", "iam"],
              "iam": {"org": "acme", "admin": "admin"},
              "report_url": "https://10.99.0.2:8443/api/reports"}
}
JSON
"$flint_boot" prepare --inventory "$work/inventory.json" "$work/prepared" | sed 's/^/   /'
prepared=$work/prepared

# Each node's files as the workstation pushes them: its secrets folder, etcd's settings, and the
# stand-ins' arguments (flow scaffolding).
for n in "${nodes[@]}"; do
    tree=$work/push/$n
    mkdir -p "$tree/etc/nixos" "$tree/etc/default" "$tree/etc/flint-lab"
    echo "$n" >"$tree/etc/hostname"
    cp -a "$prepared/nodes/$n" "$tree/etc/nixos/secrets"
    s=/etc/nixos/secrets
    # etcd runs as its own user: it reads the node's keys as systemd credentials (etcd.service.d/
    # secrets.conf in the root), under /run/credentials/etcd.service.
    c=/run/credentials/etcd.service
    cat >"$tree/etc/default/etcd" <<EOF
ETCD_DATA_DIR=/var/lib/etcd/default
ETCD_LISTEN_CLIENT_URLS=https://${addr[$n]}:2579
ETCD_ADVERTISE_CLIENT_URLS=https://${addr[$n]}:2579
ETCD_LISTEN_PEER_URLS=https://${addr[$n]}:2580
ETCD_CERT_FILE=$c/server.pem
ETCD_KEY_FILE=$c/server-key.pem
ETCD_TRUSTED_CA_FILE=$c/ca.pem
ETCD_CLIENT_CERT_AUTH=true
ETCD_PEER_CERT_FILE=$c/etcd-peer.pem
ETCD_PEER_KEY_FILE=$c/etcd-peer-key.pem
ETCD_PEER_TRUSTED_CA_FILE=$c/ca.pem
ETCD_PEER_CLIENT_CERT_AUTH=true
# Emulated machines share two cores: etcd's 100 ms heartbeat and 1 s election (tuned for real
# hardware) would start elections whenever a VM waits for the CPU; five times both, as etcd's
# tuning guide says for slow networks and machines.
ETCD_HEARTBEAT_INTERVAL=500
ETCD_ELECTION_TIMEOUT=5000
EOF
    for service in chainfire flaredb iam; do
        case $service in
        chainfire) port=2379 kind=cluster token=join-token ;;
        flaredb) port=2479 kind=cluster token=join-token ;;
        iam) port=8080 kind=iam token=iam-bootstrap-token ;;
        esac
        peers=""
        for p in "${nodes[@]}"; do
            [[ $p == "$n" ]] || peers+=" --peer $p=https://${addr[$p]}:$port"
        done
        raft=""
        [[ $service == chainfire ]] && raft=" --raft-addr ${addr[$n]}:2380"
        [[ $service == flaredb ]] && raft=" --raft-addr ${addr[$n]}:2480"
        # Heartbeat and leader timeout ten times the member mode's defaults (every heartbeat is an
        # HTTPS request to each peer: at 1 s the stand-ins took 12% of an emulated machine).
        printf 'ARGS=--kind %s --id %s --listen %s:%s%s%s --initial node01,node02,node03 --heartbeat-ms 2000 --leader-timeout-ms 15000 --cert %s/server.pem --key %s/server-key.pem --client-ca %s/ca.pem --client-cert %s/node.pem --client-key %s/node-key.pem --token-file %s/%s\n' \
            "$kind" "$n" "${addr[$n]}" "$port" "$raft" "$peers" "$s" "$s" "$s" "$s" "$s" "$s" "$token" \
            >"$tree/etc/flint-lab/$service.env"
    done
    tar -c -C "$tree" --numeric-owner --owner=0 --group=0 etc >"$work/push/$n.tar"
done

# --- the network ---------------------------------------------------------------------------------
ip netns add "$site"
ip netns add "$boot"
ip -n "$site" link set lo up
ip -n "$boot" link set lo up
ip -n "$site" link add br0 type bridge
ip -n "$site" link add veth0 type veth peer name eth0 netns "$boot"
ip -n "$site" link set veth0 master br0 up
for n in "${nodes[@]}"; do
    ip -n "$site" tuntap add "tap-$n" mode tap
    ip -n "$site" link set "tap-$n" master br0 up
done
ip -n "$site" addr add 10.99.0.1/24 dev br0
ip -n "$site" addr add fd99::1/64 dev br0 nodad
ip -n "$site" link set br0 up
ip -n "$boot" addr add 10.99.0.2/24 dev eth0
ip -n "$boot" link set eth0 up

dhcp_hosts=()
for n in "${nodes[@]}"; do dhcp_hosts+=("--dhcp-host=${mac[$n]},${addr[$n]},$n"); done
background dnsmasq ip netns exec "$site" dnsmasq --conf-file=/dev/null --keep-in-foreground --pid-file= \
    --no-resolv --no-hosts --port=0 --interface=br0 --bind-interfaces --dhcp-authoritative --no-ping \
    --dhcp-range=10.99.0.100,10.99.0.199,255.255.255.0,1h "${dhcp_hosts[@]}" \
    --enable-ra --dhcp-range=::,constructor:br0,ra-only --dhcp-leasefile="$work/dnsmasq.leases" \
    --log-dhcp --log-facility=-
FLINT_LOG=info background flint-boot ip netns exec "$boot" "$flint_boot" serve --inventory "$work/inventory.json" \
    --images "$work/images" --http 0.0.0.0:8080 --tftp 0.0.0.0:69 --tftp-root "$work/tftp" --proxy-dhcp eth0 \
    --reports 0.0.0.0:8443 --tls-ca "$prepared/boot-server/ca.pem" \
    --tls-cert "$prepared/boot-server/boot-server.pem" --tls-key "$prepared/boot-server/boot-server-key.pem"
for ((i = 0; i < 100; i++)); do
    ip netns exec "$boot" curl -fsS --max-time 1 http://10.99.0.2:8080/healthz >/dev/null 2>&1 && break
    sleep 0.1
done
((i < 100)) || fail "flint-boot did not answer /healthz"
say "dnsmasq (addresses only) and flint-boot (ProxyDHCP, TFTP, HTTP) up at $(now_s) s"

# --- the machines --------------------------------------------------------------------------------
# qemu_args NODE: what every start of NODE's VM shares: one vCPU, its NIC on its tap, its disk.
qemu_args() {
    local n=$1
    # shellcheck disable=SC2054 # the commas are QEMU's
    vm_args=(-accel tcg -cpu max -m 640 -smp 1 -nographic -no-reboot -monitor none
        -serial "file:$work/$n.${phase[$n]}.serial"
        -L "$lab/usr/share/qemu" -L "$lab/usr/share/seabios" -L "$lab/usr/lib/ipxe/qemu"
        -drive "file=$work/$n.disk,if=virtio,format=raw"
        -netdev "tap,id=n0,ifname=tap-$n,script=no,downscript=no")
}
declare -A phase=()

# power_on_pxe NODE: a bare machine with an empty disk, booting from the network.
power_on_pxe() {
    local n=$1
    truncate -s 2G "$work/$n.disk"
    phase[$n]=pxe
    qemu_args "$n"
    if [[ ${firmware[$n]} == uefi ]]; then
        cp "$lab/usr/share/OVMF/OVMF_VARS_4M.fd" "$work/$n.vars.fd"
        vm_args+=(-drive "if=pflash,format=raw,unit=0,readonly=on,file=$lab/usr/share/OVMF/OVMF_CODE_4M.fd"
            -drive "if=pflash,format=raw,unit=1,file=$work/$n.vars.fd"
            -device "virtio-net-pci,netdev=n0,mac=${mac[$n]},romfile=,bootindex=1")
    else
        vm_args+=(-boot n -device "virtio-net-pci,netdev=n0,mac=${mac[$n]}")
    fi
    power_on[$n]=$EPOCHREALTIME
    mark["$n power-on"]=0.0
    background "$n.pxe.qemu" ip netns exec "$site" "$qemu" "${vm_args[@]}"
    vm_pid[$n]=$last_pid
    up_since[$n]=$EPOCHREALTIME
}

# power_on_disk NODE: the installed machine, its installed kernel booted directly; its first boot
# from the disk, or a later one ("reboot": its own console file).
power_on_disk() {
    local n=$1
    if [[ ${phase[$n]:-} == pxe ]]; then
        phase[$n]=disk
        mark["$n rebooted"]=$(since "$n")
    else
        phase[$n]=reboot
    fi
    qemu_args "$n"
    vm_args+=(-kernel "$image/vmlinux" -initrd "$image/boot.cpio.gz"
        -append "root=/dev/vda console=ttyS0 panic=-1 systemd.show_status=false"
        -device "virtio-net-pci,netdev=n0,mac=${mac[$n]}")
    [[ -n ${power_on[$n]:-} ]] || power_on[$n]=$EPOCHREALTIME
    background "$n.${phase[$n]}.qemu" ip netns exec "$site" "$qemu" "${vm_args[@]}"
    vm_pid[$n]=$last_pid
    up_since[$n]=$EPOCHREALTIME
}
# machine_off NODE: NODE's machine is off (it powered itself off, or `stop` pulled its power); its
# running time counts towards the machine time flint's share is measured against.
machine_off() {
    local n=$1 now=${EPOCHREALTIME//[!0-9]/} then=${up_since[$1]//[!0-9]/}
    up_ms[$n]=$((${up_ms[$n]:-0} + (now - then) / 1000))
}
declare -A up_since=() up_ms=()

# since NODE: seconds since NODE's first power-on.
since() {
    local now=${EPOCHREALTIME//[!0-9]/} then=${power_on[$1]//[!0-9]/}
    local ms=$(((now - then) / 1000))
    printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}

flint_units="chainfire-cluster-join|flaredb-cluster-join|iam-initial-setup|etcd-cluster-join|etcd-cluster-promote|cluster-health-check"
# The steps of the timeline, each seen on a machine's serial console (and the site's DHCP log).
# "rebooted" is marked by power_on_disk; "healthy" is the node's own cluster-health-check done.
steps=(power-on dhcp ipxe kernel installer root-written installed rebooted multi-user etcd-cluster-join
    chainfire-cluster-join flaredb-cluster-join iam-initial-setup etcd-cluster-promote healthy)
# seen_on NODE STEP TEXT: whether STEP shows in TEXT (NODE's console in its current phase, as
# serial_text prints it) or in the site's DHCP log.
seen_on() {
    local n=$1 what=$2 text=$3
    case $what in
    dhcp) grep -q "DHCPACK(br0) ${addr[$n]} ${mac[$n]}" "$work/dnsmasq.log" ;;
    ipxe) grep -q 'iPXE' "$text" ;;
    # iPXE's "ok" after the initrd: its "k" is sometimes lost to the booting kernel's first
    # console line (seen on node04: "installer.img... oudhcpc: started").
    kernel) grep -q 'installer\.img\.\.\. o' "$text" ;;
    installer) grep -q 'FLINT-FLOW installer: address' "$text" ;;
    root-written) grep -q 'FLINT-FLOW installer: installed' "$text" ;;
    installed) grep -q 'FLINT-FLOW installer: done' "$text" ;;
    power-on | rebooted) false ;;
    multi-user) [[ ${phase[$n]} == disk ]] && grep -q 'systemd\[1\]: Reached target multi-user.target' "$text" ;;
    healthy) [[ ${phase[$n]} == disk ]] && grep -q 'systemd\[1\]: Finished cluster-health-check.service' "$text" ;;
    *) [[ ${phase[$n]} == disk ]] && grep -q "systemd\[1\]: Finished $what.service" "$text" ;;
    esac
}
# watch NODE...: records the first time each step shows on each node. Each console is cleaned
# once per look: the emulated machines need the host's CPU more than this loop does.
watch() {
    local n s text=$work/console.text
    for n in "$@"; do
        [[ -n ${phase[$n]:-} ]] || continue
        serial_text "$work/$n.${phase[$n]}.serial" >"$text"
        for s in "${steps[@]}"; do
            [[ -n ${mark["$n $s"]:-} ]] && continue
            if seen_on "$n" "$s" "$text"; then mark["$n $s"]=$(since "$n"); fi
        done
    done
}
# failed_unit NODE: a flint unit that failed for good (one systemd restarts is not: the first-boot
# health check of a node that came up first fails until its peers are up, and is run again).
failed_unit() {
    local n=$1
    serial_text "$work/$n.disk.serial" | grep -m1 -E "systemd\[1\]: ($flint_units)\.service: Main process exited, code=exited, status=(64|65|77|78|238|243)/" || true
}

# push NODE: sends NODE's files to its installer. It prints that it waits just before it
# listens, so a refused connection is tried again for a few seconds.
push() {
    local n=$1 try
    for ((try = 0; try < 40; try++)); do
        # shellcheck disable=SC2016 # the inner shell's own $1 and $2
        if ip netns exec "$site" timeout 30 bash -c 'cat "$1" >"/dev/tcp/$2/7070"' push \
            "$work/push/$n.tar" "${addr[$n]}" 2>/dev/null; then
            return 0
        fi
        sleep 0.25
    done
    fail "pushing $n's files to ${addr[$n]}:7070"
}

# install NODE...: waits for each installer to ask for its files, pushes them, waits for the
# power-off, then boots the machine from its disk.
install() {
    local n pending=("$@") left deadline=$((SECONDS + 420))
    declare -A pushed=()
    while ((${#pending[@]})); do
        ((SECONDS < deadline)) || fail "installing ${pending[*]}: not done within 420 s"
        watch "${nodes[@]}"
        left=()
        for n in "${pending[@]}"; do
            local serial=$work/$n.pxe.serial
            if serial_shows "$serial" 'FLINT-FLOW installer: failed'; then
                fail "$n's installer: $(serial_text "$serial" | grep -m1 'installer: failed')"
            fi
            if [[ -z ${pushed[$n]:-} ]] && serial_shows "$serial" "waiting for the node's files"; then
                push "$n"
                pushed[$n]=1
            fi
            if ! kill -0 "${vm_pid[$n]}" 2>/dev/null; then
                wait "${vm_pid[$n]}" 2>/dev/null || true
                unset "running[${vm_pid[$n]}]"
                machine_off "$n"
                serial_shows "$serial" 'FLINT-FLOW installer: done' \
                    || fail "$n powered off before its installation was done"
                watch "$n"
                power_on_disk "$n"
                say "   $n installed at $(since "$n") s, booting from its disk"
                continue
            fi
            left+=("$n")
        done
        pending=("${left[@]}")
        sleep 0.2
    done
}

# first_boot NODE...: waits until each node's first-boot chain has run (its health check done).
first_boot() {
    local n pending=("$@") left deadline=$((SECONDS + 300))
    while ((${#pending[@]})); do
        ((SECONDS < deadline)) || fail "first boot of ${pending[*]}: the chain did not finish within 300 s"
        watch "${nodes[@]}"
        left=()
        for n in "${pending[@]}"; do
            local f
            f=$(failed_unit "$n")
            [[ -z $f ]] || fail "$n: $f"
            if [[ -n ${mark["$n healthy"]:-} ]]; then
                say "   $n: first-boot chain done at $(since "$n") s"
                continue
            fi
            left+=("$n")
        done
        pending=("${left[@]}")
        sleep 0.5
    done
}

# browse_fleet: flint-boot's fleet page as an operator's browser shows it while node01-03 boot
# from their disks: Debian's Chromium, headless, loads it; the DOM it built must show the three
# machines named, none stuck, each in its installer or, when it installed sooner than the others
# and its first units have reported, in its first boot or joined (it cannot be healthy before
# the others are up); a screenshot is kept (FLINT_FLOW_ARTIFACTS).
browse_fleet() {
    local dom=$work/fleet.dom n
    # shellcheck disable=SC2054 # the comma is the window size's
    local chromium=(timeout 60 chromium --headless --no-sandbox --disable-gpu
        --user-data-dir="$work/chromium" --window-size=1280,720)
    ip netns exec "$boot" "${chromium[@]}" --dump-dom http://10.99.0.2:8080/ >"$dom" 2>>"$work/chromium.log" \
        || fail "headless Chromium did not load flint-boot's page: $(tail -3 "$work/chromium.log")"
    local phase counted=0
    for n in node01 node02 node03; do
        grep -qE "data-mac=\"${mac[$n]}\" data-phase=\"(installer|first-boot|joined)\"><td>$n</td>" "$dom" \
            || fail "the fleet page in Chromium has no row of $n in its installer, first boot or joined: $(grep -F "${mac[$n]}" "$dom")"
    done
    for phase in installer first-boot joined; do
        n=$(grep -oE "id=\"count-$phase\">$phase <b>[0-9]+</b>" "$dom" | grep -oE '[0-9]+' | tail -1 || true)
        counted=$((counted + ${n:-0}))
    done
    ((counted == 3)) || fail "the fleet page counts $counted machines in their installer, first boot or joined, not 3"
    grep -qF 'id="count-stuck" class="calm">stuck <b>0</b>' "$dom" || fail "the fleet page shows a stuck machine"
    mkdir -p "$artifacts"
    ip netns exec "$boot" "${chromium[@]}" --screenshot="$artifacts/fleet.png" http://10.99.0.2:8080/ \
        >>"$work/chromium.log" 2>&1 || fail "headless Chromium took no screenshot of flint-boot's page"
    say "   the fleet page in headless Chromium: node01-03 named, in their installer or past it, none stuck (screenshot: $artifacts/fleet.png)"
}
artifacts=${FLINT_FLOW_ARTIFACTS:-/var/tmp/flint-flow-artifacts}

# --- 2-4. the simultaneous 3-node bootstrap ------------------------------------------------------
step "2. node01-03 power on at once and PXE-boot (node02 UEFI, node01 and node03 BIOS)"
for n in node01 node02 node03; do power_on_pxe "$n"; done
step "3. Installation: the root file system, then each node's files from the workstation"
install node01 node02 node03
browse_fleet
step "4. First boot: flint's units under systemd, chainfire/flaredb/IAM stand-ins, Debian's etcd"
first_boot node01 node02 node03

# --- 5. node04 joins while node01 is off --------------------------------------------------------
step "5. node01 (every config's leader_url) powered off; node04 powers on and joins through its peers"
stop "${vm_pid[node01]}"
machine_off node01
unset "phase[node01]"
say "   node01 off at $(now_s) s"
power_on_pxe node04
install node04
# chainfire, flaredb and IAM take node04 through node02 and node03.
deadline=$((SECONDS + 300))
until [[ -n ${mark["node04 iam-initial-setup"]:-} ]]; do
    ((SECONDS < deadline)) || fail "node04 did not join chainfire and flaredb and set up IAM within 300 s"
    f=$(failed_unit node04)
    [[ -z $f ]] || fail "node04: $f"
    watch node04
    sleep 0.5
done
say "   node04 joined chainfire and flaredb and found IAM set up, through its peers, at $(since node04) s"
# etcd refuses every member change while one of its voting members is down (its strict
# reconfiguration check: "unhealthy cluster"); flint keeps asking until node01 is back.
if [[ -n ${mark["node04 etcd-cluster-join"]:-} ]]; then
    say "   (etcd took node04 although node01 is off)"
else
    say "   etcd refuses to add node04 while node01 is off; flint waits (its deadline is 10 min)"
fi
step "   node01 powered on again"
power_on_disk node01
first_boot node04

# --- 6. validation -------------------------------------------------------------------------------
step "6. Validation from outside (the workstation): flint health, etcdctl, flint-boot's /metrics"
validation_started=$(now_s)
# node02's folder for its certificates, without its report URL: the workstation's check is not
# a step of node02's first boot.
cp -a "$prepared/nodes/node02" "$work/outside-config"
jq 'del(.report_url)' "$prepared/nodes/node02/cluster-config.json" >"$work/outside-config/cluster-config.json"
outside=$work/outside-config/cluster-config.json
# --wait: checks again until healthy, up to the config's timeouts.total (10 min).
healthy=yes
ip netns exec "$site" "$flint" --config "$outside" --state-dir "$work/outside-state" health \
    --wait --expect-members 4 --write-check >"$work/health.txt" 2>"$work/health.err" || healthy=""
sed 's/^/   /' "$work/health.err" "$work/health.txt"
[[ -n $healthy ]] || fail "flint health --wait --expect-members 4 --write-check from outside: unhealthy at its deadline"
validated=$(now_s)
say "   flint health --wait --expect-members 4 --write-check: healthy at $validated s"

etcdctl_site() {
    ETCDCTL_API=3 ip netns exec "$site" etcdctl --endpoints "https://${addr[node02]}:2579" --command-timeout=10s \
        --cacert "$prepared/cluster/ca.pem" --cert "$prepared/cluster/admin.pem" --key "$prepared/cluster/admin-key.pem" "$@"
}
etcdctl_site member list -w table | sed 's/^/   /'
etcdctl_site member list -w json >"$work/members.json"
jq -e '[.members[] | select(.isLearner != true and (.clientURLs | length) > 0)] | length == 4' \
    "$work/members.json" >/dev/null || fail "etcdctl member list: not 4 started voting members"
for ((i = 0; i < 10; i++)); do
    etcdctl_site endpoint status --cluster -w json >"$work/endpoints.json" 2>"$work/endpoints.err" &&
        jq -e 'length == 4 and ([.[] | select(.Status.header.member_id == .Status.leader)] | length) == 1
            and ([.[].Status.leader] | unique | length) == 1' "$work/endpoints.json" >/dev/null && break
    sleep 2
done
((i < 10)) || fail "etcdctl endpoint status --cluster: not 4 members agreeing on one leader: $(cat "$work/endpoints.json" "$work/endpoints.err")"
say "   etcdctl: 4 voting members, all 4 endpoints answer and agree on one leader"

ip netns exec "$boot" curl -fsS --max-time 2 http://10.99.0.2:8080/metrics >"$work/metrics.txt"
metric() { awk -v m="$1" '$1 == m {print $2}' "$work/metrics.txt"; }
metric_sum() { awk -v m="$1" 'index($1, m) == 1 {t += $2} END {print t + 0}' "$work/metrics.txt"; }
expect_metric() {
    local got=$1 want=$2 what=$3
    [[ $got == "$want" ]] || fail "flint-boot's /metrics: $what is $got, expected $want"
    say "   /metrics: $what = $got"
}
expect_metric "$(metric 'flint_boot_scripts_served_total{profile="installer"}')" 4 "installer scripts served"
expect_metric "$(metric 'flint_boot_http_requests_total{route="/images",status="200"}')" 12 \
    "kernels, initrds and roots sent whole (3 for each of 4 machines)"
expect_metric "$(metric_sum 'flint_boot_dhcp_answers_total{port="67",arch="bios"')" 3 "ProxyDHCP answers to BIOS firmware"
expect_metric "$(metric 'flint_boot_tftp_transfers_total{outcome="sent"}')" 1 "iPXE sent over TFTP (to the UEFI machine)"
expect_metric "$(metric_sum 'flint_boot_errors_total')" 0 "errors"
expect_metric "$(metric 'flint_boot_machines{phase="healthy"}')" 4 "machines whose first-boot check reported healthy"
expect_metric "$(metric 'flint_boot_stuck_machines')" 0 "stuck machines"
expect_metric "$(metric 'flint_boot_failed_machines')" 0 "machines whose latest report of a step failed"

# The journeys flint-boot recorded, read as an operator reads them: `flint-boot status`, and
# each machine's steps from /api/machines (real firmware and iPXE asking, not a test's client).
ip netns exec "$boot" "$flint_boot" status --url http://10.99.0.2:8080 | sed 's/^/   /'
ip netns exec "$boot" curl -fsS --max-time 5 http://10.99.0.2:8080/api/machines >"$work/machines.json"
for n in "${nodes[@]}"; do
    journey=$(jq -r --arg name "$n" '.machines[] | select(.name == $name) |
        [.mac, .ip, .phase, (.joined | join(",")), (.steps | map(.step + " " + (.detail | sub(": [0-9]+ bytes"; ""))) | join("; "))] | join(" | ")' \
        "$work/machines.json")
    want="${mac[$n]} | ${addr[$n]} | healthy | chainfire,etcd,flaredb,iam | "
    [[ $journey == "$want"* ]] || fail "flint-boot's journey of $n: $journey; expected it to start with $want"
    for seen in "boot-script boot.ipxe" "script $n: installer" "image flow/vmlinuz, whole" \
        "image flow/installer.img, whole" "image flow/root.img.lzo, whole" "report chainfire join: ok" \
        "report flaredb join: ok" "report etcd promote: ok" "report iam setup: ok" "report cluster health: ok"; do
        [[ $journey == *"$seen"* ]] || fail "flint-boot's journey of $n has no '$seen': $journey"
    done
    if [[ ${firmware[$n]} == uefi ]]; then
        [[ $journey == *"binary ipxe.efi over tftp, whole"* ]] || fail "no iPXE over TFTP in $n's journey: $journey"
    else
        [[ $journey == *"dhcp port 67, bios firmware, script"* ]] || fail "no ProxyDHCP answer to $n's iPXE in its journey: $journey"
    fi
done
say "   /api/machines: each machine's journey, from its ProxyDHCP answer to its root file system, named and whole, then its units' reports to healthy"

# --- the journals --------------------------------------------------------------------------------
step "Each machine's journal, copied out of its disk once it is switched off"
# journald writes to the disk every 5 s (the root's journald.conf.d): wait that long, then pull the
# power of every machine, as an operator would inspect a disk after the fact.
sleep 6
declare -A qemu_rss_kib=()
for n in "${nodes[@]}"; do
    qemu_rss_kib[$n]=$(awk '/^VmHWM:/ {print $2}' /proc/"${vm_pid[$n]}"/status)
    stop "${vm_pid[$n]}"
    machine_off "$n"
done
# times(1) in this shell (a command substitution would report its own subshell's children).
times >"$work/times.txt"
qemu_cpu=$(awk 'NR == 2 {gsub(/[ms]/, " "); print $1 * 60 + $2 + $3 * 60 + $4}' "$work/times.txt")
mkdir -p "$work/journal"
for n in "${nodes[@]}"; do
    mkdir -p "$work/journal/$n"
    # What the next mount would do first: replay ext4's own journal (the last seconds' metadata),
    # which debugfs does not.
    e2fsck -y -E journal_only "$work/$n.disk" >/dev/null 2>&1 || (($? == 1)) \
        || fail "$n: e2fsck cannot replay its disk's ext4 journal"
    debugfs -R "rdump /var/log/journal $work/journal/$n" "$work/$n.disk" >/dev/null 2>&1 \
        || fail "$n: cannot copy /var/log/journal out of its disk (debugfs)"
    journalctl -D "$work/journal/$n/journal" -o json --no-pager >"$work/journal/$n.json" 2>/dev/null
    [[ -s $work/journal/$n.json ]] || fail "$n: no journal on its disk"
    gzip -c "$work/journal/$n.json" >"$artifacts/journal-$n.json.gz"
done
say "   each machine's journal (journalctl -o json): $artifacts/journal-node0?.json.gz"

# Each flint unit finished on each machine: systemd's "unit started" record (its "Finished" line).
for n in "${nodes[@]}"; do
    units_done=$(jq -rs --arg units "$flint_units" '
        [.[] | select(.MESSAGE_ID == "39f53479d3a045ac8e11786248231fbf")
             | .UNIT // "" | select(test("^(" + $units + ")\\.service$"))] | unique | length' \
        "$work/journal/$n.json")
    ((units_done == 6)) || fail "$n's journal: $units_done of flint's 6 first-boot units finished"
done
say "   every machine's journal: flint's 6 first-boot units finished"
jq -rs '.[] | select(.SYSLOG_IDENTIFIER == "flint") | .MESSAGE' "$work/journal/node04.json" >"$work/node04-flint.log"
grep -q 'IAM was already set up by another node' "$work/node04-flint.log" \
    || fail "node04's journal: iam-initial-setup did not meet the cluster's IAM already set up"
say "   node04's journal: IAM setup met the organization already set up (409) and succeeded"
grep -m1 'unhealthy cluster' "$work/node04-flint.log" | cut -c1-160 | sed 's/^/   node04: /' || true

# flint's share: each run of one of its units (first boot, recovery, flint-health.timer) from
# systemd's "Starting" to its "Finished" or "Failed", and the CPU systemd says the unit used.
# One line per unit: its runs on all machines, their wall time and CPU time (ms).
cat "$work"/journal/node0?.json | jq -rs --arg units "$flint_units|flint-health" '
    def t: .__MONOTONIC_TIMESTAMP | tonumber;
    [.[] | select((.UNIT // "") | test("^(" + $units + ")\\.service$"))] | group_by(.UNIT)[]
    | (map(select(.MESSAGE_ID == "ae8f7b866b0347b9af31fe1c80b127c0") | .CPU_USAGE_NSEC | tonumber) | add // 0) as $cpu
    | (group_by(._BOOT_ID) | map(sort_by(t) | reduce .[] as $x ({start: null, wall: 0, runs: 0};
        if $x.MESSAGE_ID == "7d4958e842da4a758f6c1cdc7b36dcc5" then .start = ($x | t)
        elif ($x.MESSAGE_ID == "39f53479d3a045ac8e11786248231fbf" or $x.MESSAGE_ID == "be02cf6855d2428ba40df7e9d022f03d")
            and .start != null then .wall += ($x | t) - .start | .runs += 1 | .start = null
        else . end))) as $runs
    | "\(.[0].UNIT | sub("\\.service$"; "")) \($runs | map(.runs) | add) \(($runs | map(.wall) | add) / 1000 | floor) \($cpu / 1000000 | floor)"' \
    >"$work/flint-units.txt"
# The join units stay active once done (RemainAfterExit): systemd logs no "Consumed" line for
# them, so their CPU comes from each boot's last console report (node-root.sh's cpu-report).
declare -A console_cpu_ms=()
sandbox_boots=0
for f in "$work"/*.disk.serial "$work"/*.reboot.serial; do
    [[ -e $f ]] || continue
    report=$(serial_text "$f" | grep -ao 'FLINT-FLOW flint-cpu.*' | tail -1 || true)
    for pair in ${report#FLINT-FLOW flint-cpu}; do
        unit=${pair%%=*} ns=${pair#*=}
        unit=${unit%.service}
        [[ $ns =~ ^[0-9]+$ ]] || continue
        console_cpu_ms[$unit]=$((${console_cpu_ms[$unit]:-0} + ns / 1000000))
        [[ $unit == flint-flow-sandbox ]] && sandbox_boots=$((sandbox_boots + 1))
    done
done
while read -r unit runs wall cpu; do
    ((cpu > 0)) || cpu=${console_cpu_ms[$unit]:-0}
    printf '%s %s %s %s\n' "$unit" "$runs" "$wall" "$cpu"
done <"$work/flint-units.txt" >"$work/flint-units-cpu.txt"
mv "$work/flint-units-cpu.txt" "$work/flint-units.txt"
read -r flint_runs flint_wall_ms flint_cpu_ms < <(awk '{r += $2; w += $3; c += $4} END {print r + 0, w + 0, c + 0}' "$work/flint-units.txt")
machine_ms=0
for n in "${nodes[@]}"; do machine_ms=$((machine_ms + up_ms[$n])); done

# --- the timeline and the figures ----------------------------------------------------------------
step "Timeline: seconds from each machine's power-on"
printf '   %-24s' step
for n in "${nodes[@]}"; do printf '%9s' "$n"; done
printf '\n'
for s in "${steps[@]}"; do
    printf '   %-24s' "$s"
    for n in "${nodes[@]}"; do printf '%9s' "${mark["$n $s"]:--}"; done
    printf '\n'
done
# phase_span FROM TO: the longest FROM -> TO on any machine, in seconds.
phase_span() {
    local n longest=0 a b
    for n in "${nodes[@]}"; do
        a=${mark["$n $1"]:-} b=${mark["$n $2"]:-}
        [[ -n $a && -n $b ]] || continue
        longest=$(awk -v a="$a" -v b="$b" -v l="$longest" 'BEGIN {d = b - a; print (d > l ? d : l)}')
    done
    printf '%.1f' "$longest"
}
say ""
printf '   %-36s %9s    %s\n' "phase (the longest machine)" "this run" "the manual procedure's stated durations"
printf '   %-36s %7s s    %s\n' "PXE (power-on -> kernel)" "$(phase_span power-on kernel)" "2-5 min" \
    "installation (kernel -> installed)" "$(phase_span kernel installed)" "30-60 min" \
    "first boot (rebooted -> healthy)" "$(phase_span rebooted healthy)" "5-10 min"
printf '   %-36s %7s s    %s\n' "validation (from outside)" \
    "$(awk -v a="$validation_started" -v b="$validated" 'BEGIN {printf "%.1f", b - a}')" "5 min"

bootstrap=0
for n in node01 node02 node03; do
    bootstrap=$(awk -v a="${mark["$n healthy"]}" -v l="$bootstrap" 'BEGIN {print (a > l ? a : l)}')
done
step "Figures"
say "   node01-03 powered on at once -> a validated 3-member cluster (each node's own health check): $bootstrap s"
say "   node01-03 powered on -> node04 validated as the fourth member, from outside: $validated s"
# What systemd spends setting up the sandbox of one run (the probe: /bin/true in the same sandbox).
sandbox_ms=0
((sandbox_boots == 0)) || sandbox_ms=$((console_cpu_ms[flint-flow-sandbox] / sandbox_boots))
awk -v w="$flint_wall_ms" -v c="$flint_cpu_ms" -v r="$flint_runs" -v m="$machine_ms" -v s="$sandbox_ms" 'BEGIN {
    own = c - r * s; if (own < 0) own = 0
    printf "   flint: %d runs of its units, %.1f s wall (waiting for services included), %.1f s CPU,\n", r, w / 1000, c / 1000
    printf "          of which systemd setting up each run'"'"'s sandbox %d ms (/bin/true in the same sandbox): flint'"'"'s own %.1f s\n", s, own / 1000
    printf "          over %.0f machine-seconds: %.2f%% of the machines'"'"' time waiting or working; %.2f%% of their CPU, flint'"'"'s own %.2f%%\n", m / 1000, 100 * w / m, 100 * c / m, 100 * own / m }'
awk '{printf "          %-24s %2d runs %7.1f s wall %5.1f s CPU\n", $1, $2, $3 / 1000, $4 / 1000}' "$work/flint-units.txt"
# flint's own account of each first-boot step it finished: "STEP done in T s, W s of it waiting".
cat "$work"/journal/node0?.json | jq -r 'select(.SYSLOG_IDENTIFIER == "flint") | .MESSAGE' |
    sed -n 's/.* done in \([0-9.]*\) s, \([0-9.]*\) s of it waiting for the services it needs$/\1 \2/p' >"$work/flint-done.txt"
read -r done_steps done_s waited_s < <(awk '{n++; t += $1; w += $2} END {printf "%d %.1f %.1f\n", n, t, w}' "$work/flint-done.txt")
((done_steps >= 24)) || fail "flint's journals: $done_steps closing lines of first-boot steps, expected one per join, IAM setup and health check (24 at least)"
say "          flint's own account of its $done_steps finished steps: $done_s s, of which $waited_s s waiting for services and peers,"
say "          $(awk -v t="$done_s" -v w="$waited_s" 'BEGIN {printf "%.1f", t - w}') s working (process start and configuration before each step not included)"
rss=0
for n in "${nodes[@]}"; do rss=$((rss + qemu_rss_kib[$n])); done
say "   resources: $(nproc) host cores; 4 machines of 1 vCPU and 640 MiB (QEMU's peak RSS $((rss / 1024)) MiB together);"
say "              QEMU and the other processes of the run: ${qemu_cpu%.*} CPU-seconds; disk in use: $(du -sh "$work" | cut -f1) (the cached images and roots $(du -shcD "$image" "$image/base" "$root" | tail -1 | cut -f1))"
say "   the whole flow, preparation included: $(now_s) s"
