#!/usr/bin/env bash
# Prints the path of a folder holding root.img.lzo, the root file system the flow's installer puts
# on every machine's disk (an lzop'd ext4 image: busybox unpacks lzop three times as fast as gzip,
# which is most of an installation under emulation), from tests/flow/image.sh's Debian 12 root:
#   - flint as an operator installs it: its Debian packages (scripts/release.sh), flint and
#     flint-etcd, with dpkg, maintainer scripts and all: the units enabled as the packages enable
#     them, etcd's pulled in by its drop-in;
#   - Debian's etcd enabled; its settings (/etc/default/etcd, pointing at the certificates
#     `flint-boot prepare` writes to /etc/nixos/secrets, docs/prepare.md) come with the node's
#     files from the workstation;
#   - chainfire, flaredb and IAM played by flint-testserver in member mode (chainfire.service, ...):
#     the only stand-ins, test scaffolding, configured by /etc/flint-lab/SERVICE.env, which the
#     workstation pushes with the node's files;
#   - systemd-networkd asking DHCP on the NIC, and what a console-less VM needs (no getty, the
#     multi-user target).
# Built once into /var/tmp/flint-flow-root/<key> and reused; the key names the image folder, both
# packages, the test server and this script.
#
#   tests/flow/node-root.sh IMAGE_DIR PACKAGES FLINT_TESTSERVER
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
if [[ ${1:-} != --build ]]; then
    if (($# != 3)); then
        echo "usage: tests/flow/node-root.sh IMAGE_DIR PACKAGES FLINT_TESTSERVER" >&2
        exit 64
    fi
    flint_deb=$(compgen -G "$2/flint_*_amd64.deb") ||
        { echo "node-root.sh: no flint package in $2 (scripts/release.sh)" >&2; exit 1; }
    flint_etcd_deb=$(compgen -G "$2/flint-etcd_*_amd64.deb") ||
        { echo "node-root.sh: no flint-etcd package in $2 (scripts/release.sh)" >&2; exit 1; }
    packages=("$flint_deb" "$flint_etcd_deb")
    key=$( (echo "$1" && cat "${packages[@]}" "$3" "$here/node-root.sh" "$here/../lib/cache.sh" "$here/../lib/packages.sh" "$repo/systemd/etcd-cluster-join.service") |
        sha256sum | cut -c1-16)
    # shellcheck source=tests/lib/cache.sh
    source "$here/../lib/cache.sh"
    cache_folder /var/tmp/flint-flow-root "$key" "$here/node-root.sh" --build "$1" "${packages[@]}" "$3"
    exit 0
fi

# node-root.sh --build IMAGE_DIR FLINT_DEB FLINT_ETCD_DEB FLINT_TESTSERVER OUT: what cache_folder
# runs; the root is assembled beside OUT, in the build folder it removes.
image=$2 testserver=$5 out=$6
debs=("$3" "$4")
root=$(dirname "$out")/root
cp -a "$image/base/." "$root"
# What an image keeps out to be small: apt's caches and lists, documentation, translations.
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/doc \
    "$root"/usr/share/man "$root"/usr/share/locale "$root"/usr/share/info

# flint, installed from its packages in the root (a chroot: the maintainer scripts enable the
# units offline; the textfile folder the postinst would make comes from tmpfiles.d at boot).
# shellcheck source=tests/lib/packages.sh
source "$here/../lib/packages.sh"
dpkg_install "$root" "$(dirname "$out")/dpkg.log" "${debs[@]}"
wants=$root/etc/systemd/system/multi-user.target.wants
mkdir -p "$wants" "$root/etc/systemd/system/etcd.service.d"
ln -sf /lib/systemd/system/etcd.service "$wants/etcd.service"

# etcd's own settings (/etc/default/etcd, read by Debian's etcd.service) come with the node's
# files from the workstation, as a site's configuration management would write them. Debian's
# etcd runs as user etcd, and the node's keys are root's (0600): it gets them as systemd
# credentials, as docs/prepare.md shows.
install -m 644 /dev/stdin "$root/etc/systemd/system/etcd.service.d/secrets.conf" <<'EOF'
[Service]
LoadCredential=ca.pem:/etc/nixos/secrets/ca.pem
LoadCredential=server.pem:/etc/nixos/secrets/server.pem
LoadCredential=server-key.pem:/etc/nixos/secrets/server-key.pem
LoadCredential=etcd-peer.pem:/etc/nixos/secrets/etcd-peer.pem
LoadCredential=etcd-peer-key.pem:/etc/nixos/secrets/etcd-peer-key.pem
EOF

# The stand-ins for chainfire, flaredb and IAM: flint-testserver in member mode.
install -m 755 "$testserver" "$root/usr/local/bin/flint-testserver"
for service in chainfire flaredb iam; do
    cat >"$root/etc/systemd/system/$service.service" <<UNIT
[Unit]
Description=Stand-in for this node's $service: flint-testserver in member mode (flow scaffolding)
After=network-online.target
Wants=network-online.target
[Service]
EnvironmentFile=/etc/flint-lab/$service.env
ExecStart=/usr/local/bin/flint-testserver member \$ARGS
Restart=on-failure
RestartSec=1s
[Install]
WantedBy=multi-user.target
UNIT
    ln -sf "/etc/systemd/system/$service.service" "$wants/$service.service"
done

# What the flow reads from outside as it happens: the journal, forwarded to the serial console
# (systemd's "Finished X.service" and "X.service: Main process exited" lines, flint's own lines);
# nothing polls systemd, which costs an emulated machine a tenth of its CPU. The journal reaches
# the disk every 5 s, so the copy read after the machine is switched off is whole.
install -D -m 644 /dev/stdin "$root/etc/systemd/journald.conf.d/flow-console.conf" <<'EOF'
[Journal]
ForwardToConsole=yes
TTYPath=/dev/ttyS0
MaxLevelConsole=info
SyncIntervalSec=5s
EOF
# /bin/true in the sandbox of flint's units, once per boot: its CPU is what systemd spends setting
# up that sandbox (namespaces, mounts), which it counts to each unit; the flow subtracts it to
# tell flint's own CPU.
sed -e 's|^ExecStart=.*|ExecStart=/bin/true|' -e '/^Condition/d' -e '/^Before=/d' -e '/^Restart/d' \
    -e "s|^Description=.*|Description=/bin/true in the sandbox of flint's units (flow scaffolding)|" \
    "$repo/systemd/etcd-cluster-join.service" >"$root/etc/systemd/system/flint-flow-sandbox.service"
ln -sf /etc/systemd/system/flint-flow-sandbox.service "$wants/flint-flow-sandbox.service"
# Every 30 s, where the machine's CPU went since boot: its busy share and the busiest commands
# (CPU seconds), so a slow run says which process starved the others.
install -D -m 755 /dev/stdin "$root/usr/local/lib/flint-lab/cpu-report" <<'SCRIPT'
#!/bin/bash
flint_units="chainfire-cluster-join.service flaredb-cluster-join.service iam-initial-setup.service
    etcd-cluster-join.service etcd-cluster-promote.service cluster-health-check.service
    flint-flow-sandbox.service"
while :; do
    top=$(awk '{sub(/^[0-9]+ \(/, ""); sub(/\) /, " "); t[$1] += ($13 + $14) / 100}
        END {for (c in t) if (t[c] >= 0.5) printf "%.1f %s\n", t[c], c}' /proc/[0-9]*/stat 2>/dev/null |
        sort -rn | head -6 | awk '{printf " %s=%s", $2, $1}')
    awk -v top="$top" 'NR == 1 {busy = $2 + $3 + $4; all = busy + $5 + $6;
        getline up < "/proc/uptime"; split(up, u, " ");
        printf "FLINT-FLOW cpu up=%d busy=%d%%%s\n", u[1], 100 * busy / all, top}' /proc/stat
    # The CPU of flint's join units: they stay active once done (RemainAfterExit), so systemd
    # logs no "Consumed" line for them; it still counts their CPU.
    systemctl show -p Id -p CPUUsageNSec $flint_units | awk -F= '
        /^Id=/ {id = $2} /^CPUUsageNSec=/ {ns = $2}
        /^$/ {if (id != "") line = line " " id "=" ns; id = ""; ns = ""}
        END {if (id != "") line = line " " id "=" ns; print "FLINT-FLOW flint-cpu" line}'
    sleep 30
done
SCRIPT
cat >"$root/etc/systemd/system/flint-flow-cpu.service" <<'UNIT'
[Unit]
Description=Report where the machine's CPU went on the serial console (flow scaffolding)
DefaultDependencies=no
[Service]
ExecStart=/usr/local/lib/flint-lab/cpu-report
StandardOutput=tty
TTYPath=/dev/ttyS0
[Install]
WantedBy=sysinit.target
UNIT
mkdir -p "$root/etc/systemd/system/sysinit.target.wants"
ln -sf /etc/systemd/system/flint-flow-cpu.service "$root/etc/systemd/system/sysinit.target.wants/flint-flow-cpu.service"

# The network: DHCP on the NIC; network-online.target waits for it.
install -D -m 644 /dev/stdin "$root/etc/systemd/network/10-nic.network" <<'EOF'
[Match]
Name=en* eth*
[Network]
DHCP=ipv4
EOF
ln -sf /lib/systemd/system/systemd-networkd.service "$wants/systemd-networkd.service"
mkdir -p "$root/etc/systemd/system/network-online.target.wants"
ln -sf /lib/systemd/system/systemd-networkd-wait-online.service \
    "$root/etc/systemd/system/network-online.target.wants/systemd-networkd-wait-online.service"
# A VM without a console login: no serial getty (it waits for a device udev would announce), and
# the multi-user target rather than debootstrap's graphical one.
ln -sf /dev/null "$root/etc/systemd/system/serial-getty@.service"
ln -sf /lib/systemd/system/multi-user.target "$root/etc/systemd/system/default.target"
# What such a VM has no use for, masked as an appliance image does: each costs PID 1 and the
# emulated CPU seconds at every boot (the journal of a first boot showed 8 s of generators before
# the first unit starts, 3 s in systemd-update-utmp, 3 s in systemd-random-seed, with three
# machines sharing two cores). No logins (logind, utmp), no disks but the root (the generators for
# GPT, crypt, integrity, verity and hibernation), no SysV scripts (every service here has a
# unit), no modules but the kernel's own, no periodic maintenance within a run.
for generator in systemd-gpt-auto-generator systemd-cryptsetup-generator systemd-integritysetup-generator \
    systemd-veritysetup-generator systemd-hibernate-resume-generator systemd-sysv-generator \
    systemd-rc-local-generator systemd-system-update-generator; do
    mkdir -p "$root/etc/systemd/system-generators"
    ln -sf /dev/null "$root/etc/systemd/system-generators/$generator"
done
for unit in systemd-logind.service systemd-update-utmp.service systemd-update-utmp-runlevel.service \
    systemd-random-seed.service \
    modprobe@drm.service modprobe@efi_pstore.service modprobe@fuse.service modprobe@dm_mod.service \
    modprobe@loop.service modprobe@configfs.service e2scrub_reap.service \
    apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer \
    systemd-tmpfiles-clean.timer; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
# Each machine is its own: systemd makes a machine ID on first boot (every copy would share it).
: >"$root/etc/machine-id"

truncate -s 512M "$root.img"
mkfs.ext4 -q -F -L flint-root -d "$root" "$root.img" 2>/dev/null
lzop -1 -c "$root.img" >"$out/root.img.lzo"
