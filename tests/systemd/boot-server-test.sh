#!/usr/bin/env bash
# Boots flint-boot.service as the flint-boot package installs it (dpkg -i, maintainer scripts and
# all) under a real systemd (PID 1 of a systemd-nspawn container holding a Debian 12 root, with a
# network namespace of its own) and checks:
#   boot 1: with /etc/default/flint-boot, the unit (Type=notify) becomes active with flint-boot's
#           STATUS= text, and a unit ordered after it finds HTTP answering and the TFTP socket
#           bound at its first try: systemd starts it only once flint-boot said READY=1;
#           With the nodes' reports as the unit's comment says to set them up (the listener's
#           key, root's and 0600, loaded as a credential for the dynamic user), the real flint
#           of a prepared node reports a failed join, and the fleet view shows it, under the
#           container's host name;
#   boot 2: without /etc/default/flint-boot, the package's enabled unit is skipped at boot, and
#           systemd says why;
#   boot 3: the reports' key given by its own path, root's and 0600, not as a credential: the
#           dynamic user may not read it, flint-boot exits 77 naming flag and file, and systemd
#           does not restart it.
#
#   tests/systemd/boot-server-test.sh FLINT_BOOT
#
# The packages are the release's (tests/lib/packages.sh): flint-boot's, and flint's for the node
# that reports; FLINT_BOOT prepares node01's folder on the host.
# The container has only its own loopback (--private-network): nothing it binds reaches the host.
set -euo pipefail

flint_boot=$(realpath "$1")
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/lib/packages.sh
source "$here/../lib/packages.sh"
packages=$(release_packages)
flint_boot_deb=$(compgen -G "$packages/flint-boot_*_amd64.deb") ||
    { echo "no flint-boot package in $packages" >&2; exit 1; }
flint_deb=$(compgen -G "$packages/flint_*_amd64.deb") || { echo "no flint package in $packages" >&2; exit 1; }
base=$("$here/make-root.sh")

work=$(mktemp -d /var/tmp/flint-boot-unit-test.XXXXXX)
trap 'rm -rf "$work"' EXIT

fail() {
    printf 'FAILED: %s\n' "$*" >&2
    exit 1
}

# install_root NAME: the base root with the flint-boot package (which enables its unit), an
# inventory, an iPXE binary, and a unit that reports to the host once flint-boot is up.
install_root() {
    local root=$work/$1
    cp -a "$base" "$root"
    dpkg_install "$root" "$work/dpkg.log" "$flint_boot_deb" || fail "the flint-boot package did not install"
    [[ $(systemctl --root="$root" is-enabled flint-boot.service) == enabled ]] ||
        fail "the flint-boot package did not enable flint-boot.service"
    mkdir -p "$root/etc/flint-boot" "$root/srv/flint-boot/images" "$root/usr/lib/ipxe" "$root/results"
    printf '%s\n' '{"profiles": {"w": {"kernel": "k"}}, "unknown": {"policy": "default", "profile": "w"}}' \
        >"$root/etc/flint-boot/inventory.json"
    printf 'ipxe.efi' >"$root/usr/lib/ipxe/ipxe.efi"

    cat >"$root/etc/systemd/system/flint-boot-report.service" <<'UNIT'
[Unit]
Description=Report flint-boot to the host (test)
After=flint-boot.service
[Service]
Type=oneshot
ExecStart=/usr/local/bin/flint-boot-report
UNIT
    ln -sf /etc/systemd/system/flint-boot-report.service "$root/etc/systemd/system/multi-user.target.wants/"
    mkdir -p "$root/usr/local/bin"
    cat >"$root/usr/local/bin/flint-boot-report" <<'SCRIPT'
#!/bin/bash
# First tries only: ordered after a Type=notify unit, this runs once it is ready, or failed.
if exec 3<>/dev/tcp/127.0.0.1/8080; then
    printf 'GET /firmware/ipxe.efi HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3
    timeout 5 cat <&3 >/results/http
fi
if [[ -x /usr/bin/flint ]]; then
    hostname >/results/hostname
    # Nothing listens for chainfire here: the join fails (69) at its 2 s deadline and reports so.
    flint --config /etc/nixos/secrets/cluster-config.json --state-dir /run/flint-test join chainfire \
        >/results/flint.out 2>&1
    echo "$?" >/results/flint.status
    if exec 4<>/dev/tcp/127.0.0.1/8080; then
        printf 'GET /api/machines HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&4
        timeout 5 cat <&4 >/results/machines.http
    fi
fi
# TFTP answers from a port of the transfer's own, which bash's connected /dev/udp never hears.
ss -Hlun 'sport = :69' >/results/tftp
systemctl show -p ActiveState -p SubState -p Result -p StatusText -p ConditionResult -p ExecMainStatus \
    -p NRestarts flint-boot.service >/results/flint-boot.show
journalctl -b -u flint-boot.service -o cat --no-pager >/results/flint-boot.journal
touch /results/done
systemctl poweroff --no-block
SCRIPT
    chmod 755 "$root/usr/local/bin/flint-boot-report"
}

boot() {
    local root=$work/$1
    timeout 120 systemd-nspawn --quiet --register=no --keep-unit --private-network --console=pipe \
        -D "$root" --bind="$root/results:/results" -b >"$work/$1.console" 2>&1 </dev/null \
        || fail "boot of $1 did not end by itself: $(tail -5 "$work/$1.console")"
    [[ -e $root/results/done ]] || fail "boot of $1 produced no report: $(tail -5 "$work/$1.console")"
}

show() { sed -n "s/^$2=//p" "$work/$1/results/flint-boot.show"; }

# --- boot 1: configured ----------------------------------------------------------------------------
install_root configured
# The operator's preparation: node01's folder and the boot server's identity, from one inventory.
cat >"$work/inventory.json" <<'JSON'
{"profiles": {"w": {"kernel": "k"}}, "unknown": {"policy": "default", "profile": "w"},
 "nodes": [{"name": "node01", "mac": "52:54:00:00:00:01", "profile": "w",
            "raft_addr": "127.0.0.1:2380", "initial": true}],
 "cluster": {"services": ["chainfire"], "report_url": "https://127.0.0.1:8443/api/reports"}}
JSON
"$flint_boot" prepare --inventory "$work/inventory.json" "$work/prepared" >/dev/null
r=$work/configured
install -m 644 "$work/inventory.json" "$r/etc/flint-boot/inventory.json"
install -m 644 "$work/prepared/boot-server/ca.pem" "$work/prepared/boot-server/boot-server.pem" "$r/etc/flint-boot/"
install -m 600 "$work/prepared/boot-server/boot-server-key.pem" "$r/etc/flint-boot/"
mkdir -p "$r/etc/systemd/system/flint-boot.service.d" "$r/etc/nixos"
cat >"$r/etc/systemd/system/flint-boot.service.d/reports.conf" <<'UNIT'
[Service]
LoadCredential=boot-server-key.pem:/etc/flint-boot/boot-server-key.pem
UNIT
cp -a "$work/prepared/nodes/node01" "$r/etc/nixos/secrets"
jq '.timeouts = {"total": "2s"}' "$work/prepared/nodes/node01/cluster-config.json" \
    >"$r/etc/nixos/secrets/cluster-config.json"
dpkg_install "$r" "$work/dpkg.log" "$flint_deb" || fail "the flint package did not install"
# This node only reports: its first-boot units are not what this test boots.
systemctl --root="$r" --quiet disable chainfire-cluster-join.service flaredb-cluster-join.service \
    iam-initial-setup.service cluster-health-check.service flint-health.timer
cat >"$r/etc/default/flint-boot" <<'ENV'
FLINT_BOOT_ARGS="--http 127.0.0.1:8080 --inventory /etc/flint-boot/inventory.json --images /srv/flint-boot/images --tftp 127.0.0.1:69 --tftp-root /usr/lib/ipxe --reports 127.0.0.1:8443 --tls-ca /etc/flint-boot/ca.pem --tls-cert /etc/flint-boot/boot-server.pem --tls-key /run/credentials/flint-boot.service/boot-server-key.pem"
ENV
boot configured
journal=$(cat "$work/configured/results/flint-boot.journal")
[[ $(show configured ActiveState)/$(show configured SubState) == active/running ]] ||
    fail "flint-boot.service is $(show configured ActiveState)/$(show configured SubState):"$'\n'"$journal"
[[ $(show configured StatusText) == "serving HTTP on 127.0.0.1:8080, reports on 127.0.0.1:8443, TFTP on 127.0.0.1:69" ]] ||
    fail "status text: '$(show configured StatusText)'"
grep -q $'\r\n\r\nipxe.efi$' "$work/configured/results/http" ||
    fail "HTTP did not answer at once after READY=1: $(cat "$work/configured/results/http" 2>&1)"
grep -q '127.0.0.1:69 ' "$work/configured/results/tftp" ||
    fail "TFTP was not bound at READY=1: $(cat "$work/configured/results/tftp")"
echo "PASS configured: active (Type=notify), status '$(show configured StatusText)', HTTP answers and TFTP is bound at once"
results=$work/configured/results
[[ $(cat "$results/flint.status") == 69 ]] || fail "flint join chainfire exited $(cat "$results/flint.status"), expected 69: $(cat "$results/flint.out")"
grep -q "reported chainfire join to the boot server" "$results/flint.out" ||
    fail "flint did not report its join: $(cat "$results/flint.out")"
sed '1,/^\r$/d' "$results/machines.http" >"$work/machines.json"
node01=$(jq -r '.machines[] | select(.name == "node01") | [.phase, .failed, .last_step.detail] | @tsv' "$work/machines.json") ||
    fail "no fleet view: $(cat "$results/machines.http")"
[[ $node01 == $'first-boot\ttrue\tchainfire join: failed (exit 69)'* ]] ||
    fail "node01 in the fleet view: '$node01'"
[[ $(jq -r .server "$work/machines.json") == "$(cat "$results/hostname")" ]] ||
    fail "the fleet view names its server $(jq -r .server "$work/machines.json"), not the host name $(cat "$results/hostname")"
echo "PASS reports: the key as a credential of the dynamic user; node01's real flint reported its failed join: '$node01', server $(cat "$results/hostname")"

# --- boot 2: no /etc/default/flint-boot --------------------------------------------------------------
install_root unconfigured
boot unconfigured
journal=$(cat "$work/unconfigured/results/flint-boot.journal")
[[ $(show unconfigured ActiveState) == inactive && $(show unconfigured ConditionResult) == no ]] ||
    fail "flint-boot.service without its settings is $(show unconfigured ActiveState), condition $(show unconfigured ConditionResult)"
grep -q 'ConditionPathExists=/etc/default/flint-boot' <<<"$journal" ||
    fail "the journal does not say the settings file is missing:"$'\n'"$journal"
echo "PASS unconfigured: skipped ($(show unconfigured ActiveState), condition $(show unconfigured ConditionResult)); journal: $(grep -m1 ConditionPathExists <<<"$journal")"

# --- boot 3: the key not loaded as a credential ------------------------------------------------------
install_root unreadable
r=$work/unreadable
install -m 644 "$work/inventory.json" "$r/etc/flint-boot/inventory.json"
install -m 644 "$work/prepared/boot-server/ca.pem" "$work/prepared/boot-server/boot-server.pem" "$r/etc/flint-boot/"
install -m 600 "$work/prepared/boot-server/boot-server-key.pem" "$r/etc/flint-boot/"
cat >"$r/etc/default/flint-boot" <<'ENV'
FLINT_BOOT_ARGS="--http 127.0.0.1:8080 --inventory /etc/flint-boot/inventory.json --images /srv/flint-boot/images --tftp 127.0.0.1:69 --tftp-root /usr/lib/ipxe --reports 127.0.0.1:8443 --tls-ca /etc/flint-boot/ca.pem --tls-cert /etc/flint-boot/boot-server.pem --tls-key /etc/flint-boot/boot-server-key.pem"
ENV
boot unreadable
journal=$(cat "$work/unreadable/results/flint-boot.journal")
[[ $(show unreadable Result) == exit-code && $(show unreadable ExecMainStatus) == 77 && $(show unreadable NRestarts) == 0 ]] ||
    fail "flint-boot.service with an unreadable key: $(show unreadable Result), status $(show unreadable ExecMainStatus), $(show unreadable NRestarts) restarts:"$'\n'"$journal"
grep -q -- '--tls-key /etc/flint-boot/boot-server-key.pem: cannot read: Permission denied' <<<"$journal" ||
    fail "the journal does not name the unreadable key:"$'\n'"$journal"
echo "PASS unreadable key: exit 77, not restarted; journal: $(grep -m1 -- '--tls-key' <<<"$journal")"
echo "all boots passed"
