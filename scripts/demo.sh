#!/usr/bin/env bash
# README command one: flint joins a fourth node to a 3-member etcd cluster, on this machine's loopback.
#
#   sudo scripts/demo.sh        (Debian 12; installs what it needs through scripts/setup.sh)
#
# Builds flint (static, x86_64-unknown-linux-musl), starts a 3-member etcd cluster with TLS on the client
# and peer side on a free 127.A.B.0/24, runs `flint join etcd --phase add` (node04 becomes a learner),
# starts etcd #4 from the environment file flint wrote, runs `flint join etcd --phase promote` (node04
# becomes a voter), validates it with `flint health --expect-members 4 --write-check`, then stops everything it started and removes its files.
# Exits non-zero when a step fails. LAB_KEEP=1 keeps the temp dir; LAB_SCHEME=http runs without TLS.
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

step "Building flint: release, static, x86_64-unknown-linux-musl"
# shellcheck source=scripts/lib/etcd-lab.sh
source "$repo/scripts/lib/etcd-lab.sh"
lab_build_flint "$repo"
ok "$(demo_short "$FLINT"): $(stat -c %s "$FLINT") bytes, $(file -b "$FLINT" | grep -o 'stati[^,]*linked' || echo "not static")"

demo_failed() {
    printf '\nerror: the demo failed at step %d (line %d); stopping what it started\n' "$step_no" "$1" >&2
}
trap 'demo_failed $LINENO' ERR
started=$SECONDS
lab_init 120
step "Starting a 3-member etcd cluster on loopback ($LAB_SCHEME on the client and peer side)"
lab_pick_net
lab_make_certs
lab_start_cluster 3
show etcdctl member list -w table | indent

step "node04's cluster-config.json (as systemd's LoadCredential= would hand it over)"
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

step "flint health, as the seed validates: 4 members expected, one leader, a write read back from each"
show "${flint_cmd[@]}" health --expect-members 4 --write-check 2>&1 | indent
health=$("${flint_cmd[@]}" health --json --expect-members 4 --write-check) \
    || lab_die "flint health --json --expect-members 4 --write-check exited non-zero: $health"
jq -e '.healthy == true and ([.services[] | select(.service == "etcd")][0]
        | (.members | length) == 4
          and ([.members[] | select(.role == "leader")] | length) == 1
          and all(.members[]; .healthy)
          and .write_check.written and ([.write_check.members[] | select(.seen)] | length) == 4)' \
    <<<"$health" >/dev/null \
    || lab_die "flint health --json does not show 4 healthy members, one leader and the write on each: $health"
ok "flint health --json: healthy, 4 members, leader $(jq -r '.services[] | select(.service == "etcd") | .leader' <<<"$health"), the write read back from all 4"

step "Run once: with the marker present, a second join exits at once"
show "${flint_cmd[@]}" join etcd 2>&1 | indent
ok "exit 0, nothing sent to the cluster"

step "Stopping the 4 etcd members and removing $(demo_short "$LAB_DIR")"
stopped=("${!LAB_PROCS[@]}")
lab_teardown
for pid in "${stopped[@]}"; do
    if lab_alive "$pid"; then lab_die "PID $pid still runs"; fi
done
[[ ! -e $LAB_DIR ]] || [[ ${LAB_KEEP:-0} == 1 ]] || lab_die "$LAB_DIR is still there"
ok "stopped PIDs ${stopped[*]}; nothing left behind"

printf '\n%sDemo done in %d s after the build:%s node04 joined as a learner, was promoted to a voter,\nand flint health saw 4 healthy members, one leader, and a write read back from each.\n' \
    "$bold" $((SECONDS - started)) "$off"
