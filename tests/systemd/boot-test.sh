#!/usr/bin/env bash
# Boots flint's units under a real systemd (PID 1 of a systemd-nspawn container holding a Debian 12
# root) against the chainfire, flaredb and IAM test servers on this machine's loopback, and checks
# from the container's own systemd what ran, in which order, with which result:
#   boot 1: the first-boot chain runs in order and succeeds, markers written, step lines in the
#           journal, flint's STATUS= text visible while it waits; no node_exporter: the health
#           check's textfile folder comes from tmpfiles.d/flint.conf, the file is root's, 0644;
#   boot 2: the same root again: nothing runs (ConditionPathExists=! on the markers);
#   boot 3: flaredb unreachable: its join fails with 69 and systemd restarts it;
#   boot 4: a configuration with an unknown field: 78, a journal line naming file and field, no restart;
#   boot 5: the configuration file missing: 78 and a journal line naming it, no restart loop;
#   boot 6: /var/lib/flint unusable: systemd's line says so (238), no restart loop;
#   boot 7: etcd: the add unit before etcd.service (which reads etcd.env), the promote unit after,
#           against a real 3-member etcd cluster on the host: the node ends a voting member;
#   boot 8: the simultaneous 3-node bootstrap: three containers boot at once, each with
#           Debian's etcd and flint's etcd units, TLS on both sides, and configuration.md's
#           complete example (relative tls paths, read beside the file in /etc/nixos/secrets):
#           every etcd starts within seconds, every unit succeeds on its first run.
#
#   tests/systemd/boot-test.sh FLINT_TESTSERVER
#
# flint is installed in each root from its Debian packages (tests/lib/packages.sh: the release's)
# with dpkg, maintainer scripts and all, as an operator installs it, so the packages (their
# files, units and the units they enable) are what is tested.
#
# Why a container and not a VM: /dev/kvm does not work here and a TCG-emulated VM boots in tens of
# seconds; systemd-nspawn runs a real systemd as PID 1 in a second, sharing the host's loopback,
# where the test servers listen. Everything runs on 127.0.0.0/8 and stops by PID.
set -euo pipefail

testserver=$(realpath "$1")
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/lib/packages.sh
source "$here/../lib/packages.sh"
packages=$(release_packages)
flint_deb=$(compgen -G "$packages/flint_*_amd64.deb") || { echo "no flint package in $packages" >&2; exit 1; }
flint_etcd_deb=$(compgen -G "$packages/flint-etcd_*_amd64.deb") ||
    { echo "no flint-etcd package in $packages" >&2; exit 1; }
base=$("$here/make-root.sh")

work=$(mktemp -d /var/tmp/flint-boot-test.XXXXXX)
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n ${FLINT_KEEP:-} ]]; then
        echo "kept $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

fail() {
    printf 'FAILED: %s\n' "$*" >&2
    exit 1
}

# A /24 of loopback of our own (the other test labs use 127.20-199.x.x).
net=127.$((200 + RANDOM % 50)).$((RANDOM % 250))
ip() { echo "$net.$((10 + $1))"; }

# --- PKI and secrets, made now -------------------------------------------------------------------
pki=$work/pki
mkdir -p "$pki"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=flint-boot-test-ca \
    -keyout "$pki/ca-key.pem" -out "$pki/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=server \
    -keyout "$pki/server-key.pem" -out "$pki/server.csr" 2>/dev/null
printf 'subjectAltName=IP:%s,IP:%s,IP:%s,IP:%s\n' "$(ip 1)" "$(ip 2)" "$(ip 3)" "$(ip 4)" >"$pki/san"
openssl x509 -req -in "$pki/server.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca-key.pem" -CAcreateserial -days 2 \
    -extfile "$pki/san" -out "$pki/server.pem" 2>/dev/null
openssl genpkey -algorithm ed25519 -out "$pki/admin-key.pem" 2>/dev/null
openssl pkey -in "$pki/admin-key.pem" -pubout -out "$pki/admin.pub"
head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$pki/join-token"
head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$pki/iam-token"
chmod 600 "$pki"/*-key.pem "$pki"/*-token

# --- the test servers: nodes 1-3 are members, node 4 is the container --------------------------
start_server() {
    local name=$1 kind=$2 port=$3 control=$4 token=$5
    local -a listen=()
    local i
    for i in 1 2 3 4; do listen+=(--listen "$(ip "$i"):$port"); done
    local -a extra=()
    [[ $kind == cluster ]] && extra=(--initial-members 3)
    "$testserver" "$kind" "${listen[@]}" "${extra[@]}" --cert "$pki/server.pem" --key "$pki/server-key.pem" \
        --token-file "$token" --control "$net.1:$control" --ready-file "$work/$name.ready" \
        >"$work/$name.log" 2>&1 &
    pids+=($!)
}
start_server chainfire cluster 2379 9101 "$pki/join-token"
start_server flaredb cluster 2479 9102 "$pki/join-token"
start_server iam iam 8080 9103 "$pki/iam-token"
for name in chainfire flaredb iam; do
    for _ in $(seq 100); do [[ -s $work/$name.ready ]] && break; sleep 0.1; done
    [[ -s $work/$name.ready ]] || fail "test server $name did not start: $(tail -3 "$work/$name.log")"
done
control() { curl -sS --max-time 5 -X "$1" "http://$net.1:$2$3" ${4:+-d "$4"}; }

# --- a container root with flint's units --------------------------------------------------------
chain_units=(chainfire flaredb iam chainfire-cluster-join flaredb-cluster-join iam-initial-setup cluster-health-check)

# install_root NAME CONFIG_JSON [UNIT...]: a fresh copy of the base root with flint's packages
# installed, stand-ins for the local services, the secrets, and the units that report to the
# host. The UNITs (default: the first-boot chain) are enabled and reported on; the flint units
# the package enabled and the test does not use are disabled, as an operator would. A root
# whose UNITs include etcd's also gets flint-etcd.
install_root() {
    local name=$1 config=$2 root=$work/$1
    shift 2
    local -a units=("$@")
    ((${#units[@]})) || units=("${chain_units[@]}")
    cp -a "$base" "$root"
    local -a debs=("$flint_deb")
    [[ " ${units[*]} " == *" etcd-cluster-join "* ]] && debs+=("$flint_etcd_deb")
    dpkg_install "$root" "$work/$name.dpkg.log" "${debs[@]}" || fail "flint's packages did not install in $name"
    mkdir -p "$root/etc/nixos/secrets" "$root/results"
    local unit
    for unit in chainfire flaredb iam; do
        printf '[Unit]\nDescription=stand-in for the local %s (its API is the test server on the host)\n\n[Service]\nExecStart=/bin/sleep infinity\n\n[Install]\nWantedBy=multi-user.target\n' \
            "$unit" >"$root/etc/systemd/system/$unit.service"
    done
    # The timer's first run is minutes after boot, past every boot here.
    systemctl --root="$root" --quiet disable flint-health.timer
    for unit in chainfire-cluster-join flaredb-cluster-join iam-initial-setup cluster-health-check; do
        [[ " ${units[*]} " == *" $unit "* ]] || systemctl --root="$root" --quiet disable "$unit.service"
    done
    systemctl --root="$root" --quiet enable "${units[@]/%/.service}"
    printf '%s\n' "${units[*]}" >"$root/etc/flint-report-units"
    ln -sf /etc/systemd/system/flint-report.service "$root/etc/systemd/system/multi-user.target.wants/"
    ln -sf /etc/systemd/system/flint-status-sampler.service "$root/etc/systemd/system/multi-user.target.wants/"
    install -m 600 "$pki/ca.pem" "$pki/join-token" "$pki/iam-token" "$pki/admin.pub" "$root/etc/nixos/secrets/"
    printf '%s\n' "$config" >"$root/etc/nixos/secrets/cluster-config.json"
    chmod 600 "$root/etc/nixos/secrets/cluster-config.json"

    # While chainfire's join runs, record what `systemctl status` shows of it.
    cat >"$root/etc/systemd/system/flint-status-sampler.service" <<'UNIT'
[Unit]
Description=Record flint's STATUS= text while chainfire-cluster-join runs (test)
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'for i in $(seq 600); do systemctl show -p StatusText --value chainfire-cluster-join.service >> /results/status-text; sleep 0.05; done'
UNIT
    # Once every flint unit has settled (none activating or waiting to restart), dump what
    # systemd knows, then power the container off.
    cat >"$root/etc/systemd/system/flint-report.service" <<'UNIT'
[Unit]
Description=Report flint's units to the host (test)
After=cluster-health-check.service iam-initial-setup.service flaredb-cluster-join.service chainfire-cluster-join.service
After=etcd-cluster-join.service etcd.service etcd-cluster-promote.service
[Service]
Type=oneshot
ExecStart=/usr/local/bin/flint-report
UNIT
    mkdir -p "$root/usr/local/bin"
    cat >"$root/usr/local/bin/flint-report" <<'SCRIPT'
#!/bin/sh
units=$(cat /etc/flint-report-units)
for i in $(seq 240); do
    busy=0
    for u in $units; do
        state=$(systemctl show -p ActiveState --value $u.service)
        sub=$(systemctl show -p SubState --value $u.service)
        case "$state/$sub" in activating/*|*/auto-restart) busy=1 ;; esac
    done
    [ $busy = 0 ] && break
    sleep 0.25
done
for u in $units; do
    systemctl show -p ActiveState -p SubState -p Result -p ExecMainStatus -p NRestarts -p ConditionResult \
        -p ExecMainStartTimestampMonotonic -p ExecMainExitTimestampMonotonic -p ActiveEnterTimestampMonotonic \
        $u.service > /results/$u.show
    journalctl -b -u $u.service -o cat --no-pager > /results/$u.journal
    journalctl -b -u $u.service -p err -o cat --no-pager > /results/$u.err
done
ls -A /var/lib/flint > /results/state-dir 2>&1
textfiles=/var/lib/prometheus/node-exporter
ls -A $textfiles > /results/textfile-dir 2>&1
stat -c '%a %U' $textfiles/cluster-health.prom > /results/textfile-mode 2>&1
cp $textfiles/cluster-health.prom /results/ 2>/dev/null
# A test may hold the container up (other containers' units may still need this one's services).
if [ -x /usr/local/bin/flint-report-hold ]; then /usr/local/bin/flint-report-hold; fi
touch /results/done
systemctl poweroff --no-block
SCRIPT
    chmod 755 "$root/usr/local/bin/flint-report"
}

# boot NAME: boots the root until flint-report powers it off (bounded).
boot() {
    local root=$work/$1
    rm -rf "${root:?}/results"/*
    timeout 180 systemd-nspawn --quiet --register=no --keep-unit --console=pipe -D "$root" \
        --bind="$root/results:/results" ${BOOT_BIND:+--bind="$BOOT_BIND"} -b >"$work/$1.console" 2>&1 </dev/null \
        || fail "boot of $1 did not end by itself: $(tail -5 "$work/$1.console")"
    [[ -e $root/results/done ]] || fail "boot of $1 produced no report: $(tail -5 "$work/$1.console")"
}

prop() { sed -n "s/^$2=//p" "$work/$1/results/$3.show"; }

expect_prop() {
    local root=$1 unit=$2 name=$3 want=$4 got
    got=$(prop "$root" "$name" "$unit")
    [[ $got == "$want" ]] || fail "$root: $unit $name is '$got', expected '$want'; what systemd shows of it:
$(cat "$work/$root/results/$unit.show" 2>/dev/null)
its journal:
$(tail -20 "$work/$root/results/$unit.journal" 2>/dev/null)"
}

config() {
    local flaredb_leader=$1 total=$2 more_fields=${3:-}
    cat <<JSON
{"node_id": "node04", "leader_url": "https://$(ip 1):2379", "raft_addr": "$(ip 4):2380",
 "tls": {"ca": "/etc/nixos/secrets/ca.pem"}, "join_token_file": "/etc/nixos/secrets/join-token",
 "timeouts": {"total": "$total", "request": "3s", "connect": "2s"}, $more_fields
 "chainfire": {"local_url": "https://$(ip 4):2379"},
 "flaredb": {"leader_url": "$flaredb_leader", "local_url": "https://$(ip 4):2479"},
 "iam": {"url": "https://$(ip 4):8080", "org": "acme", "bootstrap_token_file": "/etc/nixos/secrets/iam-token",
         "admin": {"name": "root", "public_key_file": "/etc/nixos/secrets/admin.pub"}}}
JSON
}

# --- the packages, as dpkg installs and removes them ----------------------------------------------
echo "packages: dpkg -i, what they enable, dpkg --purge"
pkgroot=$work/packages
cp -a "$base" "$pkgroot"
# In a container (not a chroot): the maintainer scripts' systemd-tmpfiles needs /proc. (Its
# /tmp is a fresh tmpfs: the packages wait in /root.)
cp "$flint_deb" "$flint_etcd_deb" "$pkgroot/root/"
in_root() { systemd-nspawn --quiet --register=no --keep-unit -D "$pkgroot" -- "$@" </dev/null; }
in_root dpkg -i "/root/${flint_deb##*/}" "/root/${flint_etcd_deb##*/}" >"$work/packages.dpkg.log" 2>&1 ||
    fail "dpkg -i: $(tail -5 "$work/packages.dpkg.log")"
enabled() { systemctl --root="$pkgroot" is-enabled "$1" 2>/dev/null || true; }
for unit in chainfire-cluster-join.service flaredb-cluster-join.service iam-initial-setup.service \
    cluster-health-check.service flint-health.timer; do
    [[ $(enabled "$unit") == enabled ]] || fail "the flint package left $unit $(enabled "$unit"), not enabled"
done
# etcd's units run when etcd.service, through the drop-in, wants them; enabled, they would run
# on their own too.
for unit in etcd-cluster-join.service etcd-cluster-promote.service; do
    [[ $(enabled "$unit") == disabled ]] || fail "flint-etcd left $unit $(enabled "$unit"), not disabled"
done
grep -q '^Wants=etcd-cluster-join.service etcd-cluster-promote.service$' \
    "$pkgroot/usr/lib/systemd/system/etcd.service.d/flint.conf" || fail "etcd.service's drop-in is not installed"
[[ $(readlink "$pkgroot/usr/bin/node-join") == flint ]] || fail "no node-join link to flint"
[[ -d $pkgroot/var/lib/prometheus/node-exporter ]] || fail "the postinst did not create the textfile folder"
in_root node-join --help >/dev/null 2>>"$work/packages.dpkg.log" || fail "node-join --help fails in the installed root"
zcat "$pkgroot/usr/share/man/man1/flint-join.1.gz" | grep -q '^\.SH "EXIT STATUS"' ||
    fail "flint-join(1) has no EXIT STATUS section"
in_root dpkg --purge flint-etcd flint >>"$work/packages.dpkg.log" 2>&1 ||
    fail "dpkg --purge: $(tail -5 "$work/packages.dpkg.log")"
left=$(find "$pkgroot/etc/systemd/system" "$pkgroot/usr/lib/systemd/system" \( -name '*cluster-join*' -o \
    -name 'iam-initial-setup*' -o -name 'cluster-health-check*' -o -name 'flint*' -o -name 'etcd-cluster-*' \) -print)
[[ -z $left ]] || fail "dpkg --purge left $left"
[[ ! -e $pkgroot/usr/bin/flint ]] || fail "dpkg --purge left /usr/bin/flint"
rm -rf "$pkgroot"
echo "  ok: installed with dpkg, the chain's units and the timer enabled, etcd's pulled in by etcd's drop-in; purged without a trace"

# --- boot 1: the whole chain ---------------------------------------------------------------------
echo "boot 1: first boot, the chain in order"
install_root good "$(config "https://$(ip 1):2479" 60s)"
# The local chainfire answers 429 with Retry-After: 2 once, so the join visibly waits.
control POST 9101 /faults '{"route": "health", "kind": "too-many", "seconds": 2, "times": 1, "listener": "node04"}' >/dev/null
boot good
for unit in chainfire-cluster-join flaredb-cluster-join iam-initial-setup cluster-health-check; do
    expect_prop good "$unit" Result success
    expect_prop good "$unit" ExecMainStatus 0
    expect_prop good "$unit" ActiveState active
done
# The first-boot order, as systemd ran it: each step started after the previous one ended.
order=(chainfire:ActiveEnterTimestampMonotonic chainfire-cluster-join flaredb:ActiveEnterTimestampMonotonic
    flaredb-cluster-join iam:ActiveEnterTimestampMonotonic iam-initial-setup cluster-health-check)
previous_end=0
previous=""
for step in "${order[@]}"; do
    unit=${step%%:*}
    if [[ $step == *:* ]]; then
        start=$(prop good ActiveEnterTimestampMonotonic "$unit")
        end=$start
    else
        start=$(prop good ExecMainStartTimestampMonotonic "$unit")
        end=$(prop good ExecMainExitTimestampMonotonic "$unit")
    fi
    ((start >= previous_end)) || fail "$unit started ($start) before $previous ended ($previous_end)"
    previous_end=$end
    previous=$unit
done
state=$(cat "$work/good/results/state-dir")
for marker in .chainfire-joined .flaredb-joined .iam-setup-done; do
    grep -qx -- "$marker" <<<"$state" || fail "marker $marker missing: $state"
done
grep -q "adding node04 at $(ip 4):2380 to chainfire" "$work/good/results/chainfire-cluster-join.journal" \
    || fail "no step line in journalctl -u chainfire-cluster-join: $(cat "$work/good/results/chainfire-cluster-join.journal")"
grep -q "joined chainfire as node04" "$work/good/results/chainfire-cluster-join.journal" || fail "no joined line"
grep -q "waiting for the local chainfire to be healthy" "$work/good/results/status-text" \
    || fail "systemctl never showed flint's STATUS= while it waited: $(sort -u "$work/good/results/status-text")"
if grep -h -F -f "$pki/join-token" -f "$pki/iam-token" "$work"/good/results/*; then
    fail "a token reached the journal"
fi
[[ $(cat "$work/good/results/textfile-mode") == "644 root" ]] \
    || fail "the health textfile is not root's with mode 0644: $(cat "$work/good/results/textfile-mode")"
[[ $(cat "$work/good/results/textfile-dir") == cluster-health.prom ]] \
    || fail "the textfile folder holds more than the textfile: $(cat "$work/good/results/textfile-dir")"
grep -qx 'flint_cluster_healthy{service="chainfire"} 1' "$work/good/results/cluster-health.prom" \
    || fail "no healthy chainfire in the textfile: $(cat "$work/good/results/cluster-health.prom")"
for unit in chainfire-cluster-join flaredb-cluster-join iam-initial-setup cluster-health-check; do
    # journalctl prints "-- No entries --" for none; any line of flint's own is a failure.
    if grep -v '^-- No entries --$' "$work/good/results/$unit.err"; then
        fail "$unit succeeded, yet journalctl -p err shows the lines above"
    fi
done
echo "  ok: 4 units succeeded in order; markers; step lines in the journal; STATUS= while waiting;"
echo "      the textfile written 0644 into the folder tmpfiles.d/flint.conf made"

# --- boot 2: run once ----------------------------------------------------------------------------
echo "boot 2: the same root again"
adds_before=$(control GET 9101 /state | tr -d ' \n' | grep -o '"add":[0-9]*' | head -1)
boot good
for unit in chainfire-cluster-join flaredb-cluster-join iam-initial-setup; do
    expect_prop good "$unit" ConditionResult no
    [[ ! -s $work/good/results/$unit.journal ]] || grep -q "skipped because of an unmet condition check" "$work/good/results/$unit.journal" \
        || fail "$unit ran again: $(cat "$work/good/results/$unit.journal")"
done
adds_after=$(control GET 9101 /state | tr -d ' \n' | grep -o '"add":[0-9]*' | head -1)
[[ $adds_before == "$adds_after" ]] || fail "the second boot sent adds: $adds_before -> $adds_after"
echo "  ok: the join units were skipped by their markers; no request reached the cluster"

# --- boot 3: transient failure, restarted --------------------------------------------------------
echo "boot 3: flaredb unreachable"
control POST 9101 /members/remove '{"id": "node04"}' >/dev/null
install_root transient "$(config "https://$(ip 9):2479" 2s)"
mkdir -p "$work/transient/etc/systemd/system/flaredb-cluster-join.service.d"
printf '[Service]\nRestartSec=1s\n[Unit]\nStartLimitBurst=3\n' \
    >"$work/transient/etc/systemd/system/flaredb-cluster-join.service.d/test.conf"
# The health check fails too (flaredb is gone) and would retry every 30 s: not what this boot tests.
mkdir -p "$work/transient/etc/systemd/system/cluster-health-check.service.d"
printf '[Service]\nRestart=no\n' >"$work/transient/etc/systemd/system/cluster-health-check.service.d/test.conf"
boot transient
expect_prop transient chainfire-cluster-join Result success
expect_prop transient flaredb-cluster-join ExecMainStatus 69
restarts=$(prop transient NRestarts flaredb-cluster-join)
((restarts >= 1)) || fail "a join that failed with 69 was not restarted (NRestarts=$restarts)"
grep -q "gave up waiting for" "$work/transient/results/flaredb-cluster-join.journal" || fail "no deadline line"
grep -q "gave up waiting for" "$work/transient/results/flaredb-cluster-join.err" \
    || fail "journalctl -p err -u flaredb-cluster-join does not show the failure: $(cat "$work/transient/results/flaredb-cluster-join.err")"
if grep -q "waiting for the local flaredb" "$work/transient/results/flaredb-cluster-join.err"; then
    fail "journalctl -p err shows flint's info lines too: the priority prefix was not read"
fi
echo "  ok: exit 69, restarted $restarts times by systemd; journalctl -p err shows the failure and only it"

# --- boot 4: configuration error, not restarted --------------------------------------------------
echo "boot 4: an unknown field in the configuration"
install_root badconfig "$(config "https://$(ip 1):2479" 10s '"lader_url": "typo",')"
boot badconfig
for unit in chainfire-cluster-join flaredb-cluster-join iam-initial-setup; do
    expect_prop badconfig "$unit" ExecMainStatus 78
    expect_prop badconfig "$unit" NRestarts 0
    grep -q "cluster-config.json.*lader_url" "$work/badconfig/results/$unit.err" \
        || fail "$unit: no line at priority err naming the file and the field: $(cat "$work/badconfig/results/$unit.journal")"
done
echo "  ok: exit 78, file and field named in the journal at priority err, no restart"

# --- boot 5: the credential is missing -----------------------------------------------------------
echo "boot 5: /etc/nixos/secrets/cluster-config.json missing"
install_root nocred "$(config "https://$(ip 1):2479" 10s)"
rm "$work/nocred/etc/nixos/secrets/cluster-config.json"
boot nocred
for unit in chainfire-cluster-join flaredb-cluster-join iam-initial-setup; do
    expect_prop nocred "$unit" ExecMainStatus 78
    expect_prop nocred "$unit" NRestarts 0
    grep -q "cannot read configuration file /etc/nixos/secrets/cluster-config.json" "$work/nocred/results/$unit.journal" \
        || fail "$unit: no journal line naming the missing file: $(cat "$work/nocred/results/$unit.journal")"
done
echo "  ok: exit 78 naming /etc/nixos/secrets/cluster-config.json, no restart loop"
# --- boot 6: the state directory cannot be set up ---------------------------------------------
echo "boot 6: /var/lib/flint is a file, not a directory"
install_root nostate "$(config "https://$(ip 1):2479" 10s)"
touch "$work/nostate/var/lib/flint"
boot nostate
for unit in chainfire-cluster-join flaredb-cluster-join iam-initial-setup; do
    expect_prop nostate "$unit" ExecMainStatus 238
    expect_prop nostate "$unit" NRestarts 0
done
# systemd writes the reason once, at the first unit that needs the directory.
grep -q "Failed to set up special execution directory in /var/lib: Not a directory" \
    "$work/nostate/results/chainfire-cluster-join.journal" \
    || fail "no journal line naming the state directory: $(cat "$work/nostate/results/chainfire-cluster-join.journal")"
echo "  ok: systemd's line names the state directory under /var/lib (exit 238), no restart loop"

# --- boot 7: etcd's two phases around etcd.service ----------------------------------------------
echo "boot 7: etcd: learner before etcd.service, promoted after"
etcd_cluster=""
for i in 5 6 7; do etcd_cluster+="${etcd_cluster:+,}host$i=http://$(ip "$i"):2380"; done
for i in 5 6 7; do
    etcd --name "host$i" --data-dir "$work/etcd-data/host$i" \
        --listen-client-urls "http://$(ip "$i"):2379" --advertise-client-urls "http://$(ip "$i"):2379" \
        --listen-peer-urls "http://$(ip "$i"):2380" --initial-advertise-peer-urls "http://$(ip "$i"):2380" \
        --initial-cluster "$etcd_cluster" --initial-cluster-state new >"$work/etcd-host$i.log" 2>&1 &
    pids+=($!)
done
etcdctl_host() { ETCDCTL_API=3 etcdctl --endpoints "http://$(ip 5):2379,http://$(ip 6):2379" "$@"; }
for _ in $(seq 150); do etcdctl_host endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
etcdctl_host endpoint health >/dev/null 2>&1 || fail "the host's etcd cluster did not start"
# etcd refuses membership changes until its members have been connected for 5 s.
sleep 5.5
install_root etcd "{\"node_id\": \"node08\", \"leader_url\": \"http://$(ip 5):2379\",
 \"peers\": [\"http://$(ip 6):2379\"], \"raft_addr\": \"$(ip 8):2380\", \"timeouts\": {\"total\": \"60s\"},
 \"etcd\": {\"local_url\": \"http://$(ip 8):2379\"}}" etcd-cluster-join etcd etcd-cluster-promote
# The node's own etcd settings; flint's etcd.env (read after this file) adds the cluster's.
cat >"$work/etcd/etc/default/etcd" <<ENV
ETCD_LISTEN_CLIENT_URLS=http://$(ip 8):2379
ETCD_ADVERTISE_CLIENT_URLS=http://$(ip 8):2379
ETCD_LISTEN_PEER_URLS=http://$(ip 8):2380
ENV
boot etcd
for unit in etcd-cluster-join etcd-cluster-promote; do
    expect_prop etcd "$unit" Result success
    expect_prop etcd "$unit" ExecMainStatus 0
done
expect_prop etcd etcd ActiveState active
add_end=$(prop etcd ExecMainExitTimestampMonotonic etcd-cluster-join)
etcd_start=$(prop etcd ExecMainStartTimestampMonotonic etcd)
promote_start=$(prop etcd ExecMainStartTimestampMonotonic etcd-cluster-promote)
((add_end <= etcd_start)) || fail "etcd.service started before etcd-cluster-join ended"
((etcd_start <= promote_start)) || fail "etcd-cluster-promote started before etcd.service"
grep -qx .etcd-joined "$work/etcd/results/state-dir" || fail "no .etcd-joined: $(cat "$work/etcd/results/state-dir")"
grep -q "adding learner http://$(ip 8):2380" "$work/etcd/results/etcd-cluster-join.journal" \
    || fail "no learner line: $(cat "$work/etcd/results/etcd-cluster-join.journal")"
members=$(etcdctl_host member list)
grep -q "started, node08, http://$(ip 8):2380, http://$(ip 8):2379, false" <<<"$members" \
    || fail "node08 is not a started voter: $members"
echo "  ok: learner added before etcd.service, promoted after it; node08 is a voting member"

# --- boot 8: three bootstrap nodes at once --------------------------------------------------------
echo "boot 8: simultaneous 3-node bootstrap, etcd with TLS, relative tls paths"
boot_ips=("$(ip 21)" "$(ip 22)" "$(ip 23)")
# etcd checks a peer's certificate against the address it connects from, which on loopback is
# 127.0.0.1 whatever address the member listens on.
san="IP:127.0.0.1"
for addr in "${boot_ips[@]}"; do san+=",IP:$addr"; done
# One certificate for every member's client and peer side, one for flint (a client).
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=etcd \
    -keyout "$pki/etcd-key.pem" -out "$pki/etcd.csr" 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$san" >"$pki/etcd.ext"
openssl x509 -req -in "$pki/etcd.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca-key.pem" -CAcreateserial -days 2 \
    -extfile "$pki/etcd.ext" -out "$pki/etcd.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=flint \
    -keyout "$pki/node-key.pem" -out "$pki/node.csr" 2>/dev/null
printf 'extendedKeyUsage=clientAuth\n' >"$pki/node.ext"
openssl x509 -req -in "$pki/node.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca-key.pem" -CAcreateserial -days 2 \
    -extfile "$pki/node.ext" -out "$pki/node.pem" 2>/dev/null
chmod 600 "$pki/etcd-key.pem" "$pki/node-key.pem"
initial=""
for i in 1 2 3; do initial+="${initial:+, }\"node0$i\": \"https://${boot_ips[i - 1]}:2380\""; done
for i in 1 2 3; do
    addr=${boot_ips[i - 1]}
    # configuration.md's complete example, as a bootstrap node of a three-member cluster.
    install_root "bootstrap$i" "{
  \"node_id\": \"node0$i\",
  \"bootstrap\": true,
  \"leader_url\": \"https://${boot_ips[0]}:2379\",
  \"peers\": [\"https://${boot_ips[1]}:2379\", \"https://${boot_ips[2]}:2379\"],
  \"raft_addr\": \"$addr:2380\",
  \"tls\": {\"ca\": \"pki/ca.pem\", \"cert\": \"pki/node0$i.pem\", \"key\": \"pki/node0$i-key.pem\"},
  \"timeouts\": {\"total\": \"60s\"},
  \"etcd\": {\"local_url\": \"https://$addr:2379\", \"initial_cluster\": {$initial}}
}" etcd-cluster-join etcd etcd-cluster-promote
    root=$work/bootstrap$i
    mkdir -p "$root/etc/nixos/secrets/pki" "$root/etc/etcd/pki"
    install -m 600 "$pki/ca.pem" "$root/etc/nixos/secrets/pki/ca.pem"
    install -m 600 "$pki/node.pem" "$root/etc/nixos/secrets/pki/node0$i.pem"
    install -m 600 "$pki/node-key.pem" "$root/etc/nixos/secrets/pki/node0$i-key.pem"
    # Not beside the file: under the units, a relative path must not resolve anywhere else.
    rm "$root/etc/nixos/secrets/ca.pem"
    install -m 600 "$pki/ca.pem" "$pki/etcd.pem" "$pki/etcd-key.pem" "$root/etc/etcd/pki/"
    chroot "$root" chown -R etcd:etcd /etc/etcd/pki
    # Reports the member list once its units settled, then keeps its etcd up until all three
    # have reported: the last node's promote needs a quorum.
    cat >"$root/usr/local/bin/flint-report-hold" <<SCRIPT
#!/bin/sh
ETCDCTL_API=3 etcdctl --endpoints https://$addr:2379 --cacert /etc/etcd/pki/ca.pem --cert /etc/etcd/pki/etcd.pem \\
    --key /etc/etcd/pki/etcd-key.pem --dial-timeout=2s --command-timeout=5s member list > /results/members 2>&1
touch /shared/node0$i
for i in \$(seq 240); do [ \$(ls /shared | wc -l) -ge 3 ] && break; sleep 0.25; done
SCRIPT
    chmod 755 "$root/usr/local/bin/flint-report-hold"
    cat >"$root/etc/default/etcd" <<ENV
ETCD_LISTEN_CLIENT_URLS=https://$addr:2379
ETCD_ADVERTISE_CLIENT_URLS=https://$addr:2379
ETCD_LISTEN_PEER_URLS=https://$addr:2380
ETCD_INITIAL_CLUSTER_TOKEN=flint-boot-test-$net
ETCD_CERT_FILE=/etc/etcd/pki/etcd.pem
ETCD_KEY_FILE=/etc/etcd/pki/etcd-key.pem
ETCD_TRUSTED_CA_FILE=/etc/etcd/pki/ca.pem
ETCD_CLIENT_CERT_AUTH=true
ETCD_PEER_CERT_FILE=/etc/etcd/pki/etcd.pem
ETCD_PEER_KEY_FILE=/etc/etcd/pki/etcd-key.pem
ETCD_PEER_TRUSTED_CA_FILE=/etc/etcd/pki/ca.pem
ETCD_PEER_CLIENT_CERT_AUTH=true
ENV
done
boot_pids=()
mkdir -p "$work/shared"
for i in 1 2 3; do
    (BOOT_BIND=$work/shared:/shared boot "bootstrap$i") &
    boot_pids+=($!)
done
for pid in "${boot_pids[@]}"; do wait "$pid" || fail "a bootstrap container did not boot to its report"; done
etcd_starts=()
for i in 1 2 3; do
    for unit in etcd-cluster-join etcd etcd-cluster-promote; do
        expect_prop "bootstrap$i" "$unit" Result success
        expect_prop "bootstrap$i" "$unit" NRestarts 0
    done
    expect_prop "bootstrap$i" etcd-cluster-join ExecMainStatus 0
    expect_prop "bootstrap$i" etcd-cluster-promote ExecMainStatus 0
    add_start=$(prop "bootstrap$i" ExecMainStartTimestampMonotonic etcd-cluster-join)
    etcd_start=$(prop "bootstrap$i" ExecMainStartTimestampMonotonic etcd)
    ((etcd_start - add_start < 10000000)) \
        || fail "node0$i: etcd started $(((etcd_start - add_start) / 1000)) ms after etcd-cluster-join"
    etcd_starts+=("$etcd_start")
    grep -qx .etcd-joined "$work/bootstrap$i/results/state-dir" \
        || fail "node0$i: no .etcd-joined: $(cat "$work/bootstrap$i/results/state-dir")"
    grep -q "ETCD_INITIAL_CLUSTER_STATE=new" "$work/bootstrap$i/var/lib/flint/etcd.env" \
        || fail "node0$i: etcd.env has no new cluster: $(cat "$work/bootstrap$i/var/lib/flint/etcd.env")"
done
spread=$(printf '%s\n' "${etcd_starts[@]}" | sort -n | sed -n '1p;$p' | paste -sd' ' | awk '{print $2 - $1}')
((spread < 30000000)) || fail "the three etcds started $((spread / 1000)) ms apart"
members=$(cat "$work/bootstrap1/results/members")
for i in 1 2 3; do
    grep -q "started, node0$i, https://${boot_ips[i - 1]}:2380, https://${boot_ips[i - 1]}:2379, false" <<<"$members" \
        || fail "node0$i is not a started voter: $members"
done
echo "  ok: three etcds started within $((spread / 1000)) ms of each other, each within 10 s of its add unit; 9 units succeeded first time"
echo "all boots passed"
