#!/usr/bin/env bash
# The quick demo (`scripts/demo.sh --quick`, under a minute after the build): the deployment
# flow's preparation and validation around flint's join, on this machine's loopback, without VMs:
# four nodes prepared from one inventory, a fourth node joined to a 3-member etcd cluster.
#
#   sudo scripts/demo.sh --quick    (Debian 12; installs what it needs through scripts/setup.sh)
#
# Builds flint and flint-boot (static, x86_64-unknown-linux-musl); `flint-boot prepare` writes every
# node's secrets folder from an inventory (CA, certificates, cluster-config.json) on a free
# 127.A.B.0/24; starts a 3-member etcd cluster from those folders, TLS on the client and peer side;
# runs `flint join etcd --phase add` with node04's prepared config (node04 becomes a learner), starts
# etcd #4 from the environment file flint wrote, runs `flint join etcd --phase promote` (node04
# becomes a voter), validates it with `flint health --write-check` (4 members expected, from the
# config), reruns prepare (nothing changes), then stops everything it started and removes its files.
# Exits non-zero when a step fails. LAB_KEEP=1 keeps the temp dir.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

if [[ -t 1 ]]; then bold=$'\e[1m' green=$'\e[32m' off=$'\e[0m'; else bold="" green="" off=""; fi
step_no=0
step() {
    step_no=$((step_no + 1))
    printf '\n%s%d. %s%s\n' "$bold" "$step_no" "$*" "$off"
}
say() { printf '   %s\n' "$*"; }
ok() { printf '   %sok%s %s\n' "$green" "$off" "$*"; }
# Prints a command the way an operator would type it, then runs it.
show() {
    printf '$ %s\n' "$(demo_short "$*")"
    "$@"
}
# Shortens the lab's temp paths in what we print: $LAB is the lab dir, flint the binary.
demo_short() {
    local text=$1
    [[ -n ${LAB_DIR:-} ]] && text=${text//$LAB_DIR/\$LAB}
    [[ -n ${FLINT_BOOT:-} ]] && text=${text//$FLINT_BOOT/flint-boot}
    [[ -n ${FLINT:-} ]] && text=${text//$FLINT/flint}
    printf '%s' "$text"
}
# Indents what a command printed, with the lab's temp dir shortened to $LAB.
indent() {
    if [[ -n ${LAB_DIR:-} ]]; then
        sed -e "s|$LAB_DIR|\$LAB|g" -e 's/^/     /'
    else
        sed 's/^/     /'
    fi
}

step "Installing what the demo needs (scripts/setup.sh)"
bash scripts/setup.sh
ok "etcd $(etcd --version | awk '/^etcd Version/ {print $3}'), openssl, musl-tools, jq in place"

step "Building flint and flint-boot: release, static, x86_64-unknown-linux-musl"
# shellcheck source=scripts/lib/etcd-lab.sh
source "$repo/scripts/lib/etcd-lab.sh"
# prepare makes TLS certificates: the demo runs with TLS on every side.
LAB_SCHEME=https
lab_build_flint "$repo"
lab_build_flint_boot "$repo"
for bin in "$FLINT" "$FLINT_BOOT"; do
    ok "$(demo_short "$bin"): $(stat -c %s "$bin") bytes, $(file -b "$bin" | grep -o 'stati[^,]*linked' || echo "not static")"
done

demo_failed() {
    printf '\nerror: the demo failed at step %d (line %d); stopping what it started\n' "$step_no" "$1" >&2
}
trap 'demo_failed $LINENO' ERR
started=$SECONDS
lab_init 120
step "Preparation (the deployment flow's phase 1): every node's secrets folder from one inventory"
lab_pick_net
lab_prepare 4 3
say "the inventory (the boot server serves the same file): node01-03 the initial members, node04 joins"
indent <"$LAB_INVENTORY"
# lab_prepare ran it; here is what it said.
{
    printf '$ %s\n' "$(demo_short "$FLINT_BOOT prepare --inventory $LAB_INVENTORY $LAB_PREPARED")"
    cat "$LAB_DIR/logs/prepare.log"
} | indent
say "node04's folder, ready for /etc/nixos/secrets (keys 0600):"
(cd "$LAB_PREPARED/nodes/node04" && stat -c '%A %n' ./*) | indent
openssl verify -CAfile "$LAB_PREPARED/cluster/ca.pem" "$LAB_PREPARED"/nodes/*/etcd-peer.pem \
    "$LAB_PREPARED"/nodes/*/server.pem | sed "s|$LAB_PREPARED/||" | indent
ok "openssl verifies every node's certificates against the cluster CA"

step "Starting a 3-member etcd cluster from node01-03's folders (TLS on the client and peer side)"
lab_start_cluster 3
show etcdctl member list -w table | indent

step "node04's cluster-config.json, as prepare wrote it (and systemd's LoadCredential= would hand it over)"
lab_write_flint_config 4
say "$(demo_short "$LAB_CONFIG"):"
indent <"$LAB_CONFIG"
peer4=$(lab_peer_url 4)
flint_cmd=("$FLINT" --config "$LAB_CONFIG" --state-dir "$LAB_STATE")

step "Phase add (etcd-cluster-join.service, before etcd starts): node04 joins as a learner"
show "${flint_cmd[@]}" join etcd --phase add 2>&1 | indent
say "flint wrote etcd's environment file $(demo_short "$LAB_STATE/etcd.env"):"
indent <"$LAB_STATE/etcd.env"
show etcdctl member list -w table | indent
learners=$(etcdctl member list | awk -F', ' -v url="$peer4" '$4 == url && $6 == "true"' | wc -l)
((learners == 1)) || lab_die "node04 ($peer4) is not listed as a learner"
ok "node04 is a learner: it costs the cluster no fault tolerance until it is promoted"

step "Starting etcd #4 with the settings from etcd.env (etcd.service, EnvironmentFile=)"
lab_start_joiner 4 lab_env_file "$LAB_STATE/etcd.env"
say "etcd $(lab_name 4) started, PID ${LAB_JOINER_PIDS[4]}, listening on $(lab_client_url 4) and $peer4"

step "Phase promote (after etcd starts): flint waits for the local member, then promotes it"
show "${flint_cmd[@]}" join etcd --phase promote 2>&1 | indent
show etcdctl member list -w table | indent
members=$(etcdctl member list)
voters=$(awk -F', ' '$2 == "started" && $6 == "false"' <<<"$members" | wc -l)
total=$(wc -l <<<"$members")
((voters == 4 && total == 4)) || lab_die "expected 4 started voters, the member list has $voters of $total"
[[ -s $LAB_STATE/.etcd-joined ]] || lab_die "no marker at $LAB_STATE/.etcd-joined after the promote phase"
ok "4 voting members; flint left its marker: $(jq -c . "$LAB_STATE/.etcd-joined")"

step "flint health, as the deployment flow validates: 4 members expected (the config says so), one leader, a write read back from each"
show "${flint_cmd[@]}" health --write-check 2>&1 | indent
health=$("${flint_cmd[@]}" health --json --write-check) \
    || lab_die "flint health --json --write-check exited non-zero: $health"
jq -e '.healthy == true and ([.services[] | select(.service == "etcd")][0]
        | (.members | length) == 4
          and ([.members[] | select(.role == "leader")] | length) == 1
          and all(.members[]; .healthy)
          and .expected_members == 4
          and .write_check.written and ([.write_check.members[] | select(.seen)] | length) == 4)' \
    <<<"$health" >/dev/null \
    || lab_die "flint health --json does not show 4 healthy members, one leader and the write on each: $health"
ok "flint health --json: healthy, 4 members, leader $(jq -r '.services[] | select(.service == "etcd") | .leader' <<<"$health"), the write read back from all 4"

step "Run once: with the marker present, a second join exits at once"
show "${flint_cmd[@]}" join etcd 2>&1 | indent
ok "exit 0, nothing sent to the cluster"

step "Preparation again: a rerun changes nothing"
rerun=$("$FLINT_BOOT" prepare --inventory "$LAB_INVENTORY" "$LAB_PREPARED")
indent <<<"$rerun"
grep -q '0 files written' <<<"$rerun" || lab_die "a rerun of prepare wrote files: $rerun"
ok "no key, certificate or config rewritten"

step "Stopping the 4 etcd members and removing $(demo_short "$LAB_DIR")"
stopped=("${!LAB_PROCS[@]}")
lab_teardown
for pid in "${stopped[@]}"; do
    if lab_alive "$pid"; then lab_die "PID $pid still runs"; fi
done
[[ ! -e $LAB_DIR ]] || [[ ${LAB_KEEP:-0} == 1 ]] || lab_die "$LAB_DIR is still there"
ok "stopped PIDs ${stopped[*]}; nothing left behind"

printf '\n%sDemo done in %d s after the build:%s four nodes prepared from one inventory; node04 joined as a\nlearner, was promoted to a voter, and flint health saw 4 healthy members, one leader, and a write\nread back from each.\n' \
    "$bold" $((SECONDS - started)) "$off"
