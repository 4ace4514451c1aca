# shellcheck shell=bash
# scripts/lib/etcd-lab.sh: a throwaway etcd cluster on loopback, shared by scripts/demo-quick.sh and bench/run.
#
# Source it from a bash script that runs with `set -euo pipefail`, then:
#   lab_build_flint REPO        release build for x86_64-unknown-linux-musl; sets FLINT (or FLINT_BIN)
#   lab_init SECONDS            temp dir, EXIT trap that stops what we started, a watchdog after SECONDS
#   lab_pick_net                a free 127.A.B.0/24: member i is 127.A.B.(10+i), ports 2379 and 2380
#   lab_make_certs              CA, server certificate (SANs: the lab's IPs), client certificate
#   lab_prepare N INITIAL       instead of lab_make_certs: an inventory of N etcd nodes (the first
#                               INITIAL the initial members) and `flint-boot prepare`'s folders for
#                               them (sets LAB_INVENTORY, LAB_PREPARED; needs FLINT_BOOT)
#   lab_start_cluster N         N voting members, TLS on the client and peer side; exports ETCDCTL_*
#   lab_write_flint_config I    node I's cluster-config.json and certificates; sets LAB_CONFIG, LAB_STATE
#                               (after lab_prepare: the config and folder prepare wrote for node I)
#   lab_start_joiner I LOADER ARG
#                               etcd #I with its ETCD_* settings from `LOADER ARG`, run in the child:
#                               lab_env_file FILE (flint's etcd.env) or lab_env_eval TEXT (etcdctl's lines)
#   lab_stop_joiner I           stops etcd #I and wipes its data dir
#   lab_member_id PEER_URL      the member ID (hex) that has this peer URL, as `etcdctl member list` says
#   lab_stop_pid PID            TERM, a bounded wait, then KILL
#   lab_teardown                stops everything started here, removes the temp dir (the EXIT trap does too)
# LAB_SCHEME=http runs the same cluster without TLS (client and peer side).
# Servers listen on 127.0.0.0/8 only; every process is started here, tracked by PID and stopped on exit.

LAB_SCHEME=${LAB_SCHEME:-https}
LAB_QUIET=${LAB_QUIET:-0}
LAB_MAX_MEMBERS=5            # IPs in the server certificate: 127.A.B.11 to .15
LAB_DIR=""
LAB_NET=""
LAB_VOTERS=0
LAB_WATCHDOG_PID=""
declare -A LAB_PROCS=()      # PID -> name, for every process we started and have not yet stopped
declare -A LAB_JOINER_PIDS=() # member index -> PID of a joining member's etcd

lab_info() { ((LAB_QUIET)) || printf '   %s\n' "$*" >&2; }
lab_die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# lab_ip I, lab_name I, lab_client_url I, lab_peer_url I: member I's address, name and URLs.
lab_ip() { printf '%s.%d' "$LAB_NET" $((10 + $1)); }
lab_name() { printf 'node%02d' "$1"; }
lab_client_url() { printf '%s://%s:2379' "$LAB_SCHEME" "$(lab_ip "$1")"; }
lab_peer_url() { printf '%s://%s:2380' "$LAB_SCHEME" "$(lab_ip "$1")"; }

# Builds the static release binary; FLINT is its path. FLINT_BIN=PATH uses a binary built elsewhere.
lab_build_flint() {
    local repo=$1
    if [[ -n ${FLINT_BIN:-} ]]; then
        [[ -x $FLINT_BIN ]] || lab_die "FLINT_BIN=$FLINT_BIN is not an executable"
        FLINT=$(readlink -f "$FLINT_BIN")
        return 0
    fi
    cargo build --release --target x86_64-unknown-linux-musl --manifest-path "$repo/Cargo.toml" \
        || lab_die "cargo build --release --target x86_64-unknown-linux-musl failed"
    FLINT=$repo/target/x86_64-unknown-linux-musl/release/flint
    [[ -x $FLINT ]] || lab_die "no binary at $FLINT after the build"
}

# Builds flint-boot the same way; FLINT_BOOT is its path.
lab_build_flint_boot() {
    local repo=$1
    cargo build --release --target x86_64-unknown-linux-musl --manifest-path "$repo/Cargo.toml" -p flint-boot \
        || lab_die "cargo build --release --target x86_64-unknown-linux-musl -p flint-boot failed"
    FLINT_BOOT=$repo/target/x86_64-unknown-linux-musl/release/flint-boot
    [[ -x $FLINT_BOOT ]] || lab_die "no binary at $FLINT_BOOT after the build"
}

lab_init() {
    local limit=$1
    [[ ${LAB_SCHEME} == https || ${LAB_SCHEME} == http ]] || lab_die "LAB_SCHEME must be https or http"
    local tool
    for tool in etcd etcdctl openssl ss ps jq; do
        command -v "$tool" >/dev/null 2>&1 || lab_die "$tool not found; run scripts/setup.sh as root"
    done
    # flint looks for these before its flags; the lab passes --config and --state-dir.
    unset CREDENTIALS_DIRECTORY STATE_DIRECTORY
    export LC_ALL=C
    LAB_DIR=$(mktemp -d "${TMPDIR:-/tmp}/flint-lab.XXXXXX")
    mkdir -p "$LAB_DIR/logs"
    trap lab_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    lab_start_watchdog "$limit"
}

# After SECONDS the watchdog stops the script: the script's children (the command it is waiting on,
# the etcd members) and the script itself, whose EXIT trap then cleans up.
lab_start_watchdog() {
    local limit=$1 main=$$
    (
        sleep "$limit" &
        sleeper=$!
        trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
        wait "$sleeper"
        # Our script may be gone (killed with no chance to clean up); then its PID is not ours to signal.
        me=$BASHPID
        [[ $(ps -o ppid= -p "$me" | tr -d ' ') == "$main" ]] || exit 0
        printf 'error: still running after %s s; stopping\n' "$limit" >&2
        kill -TERM "$main" 2>/dev/null
        for pid in $(ps -o pid= --ppid "$main"); do
            [[ $pid == "$me" ]] || kill -TERM "$pid" 2>/dev/null
        done
        # The script's cleanup stops this watchdog; if it has not within 30 s, end the script.
        sleep 30 &
        sleeper=$!
        wait "$sleeper"
        kill -KILL "$main" 2>/dev/null
    ) &
    LAB_WATCHDOG_PID=$!
}

lab_track() { LAB_PROCS[$1]=$2; }

# True while PID runs; an exited child that is not yet reaped (a zombie) counts as stopped.
lab_alive() {
    local stat
    read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# Stops the given PIDs: TERM to all, up to 10 s for them to exit, KILL to what is left, reap.
lab_stop_pid() {
    local pid n
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        n=0
        while lab_alive "$pid" && ((n++ < 200)); do sleep 0.05; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        unset "LAB_PROCS[$pid]"
    done
}

# Stops every process we started and removes the temp dir; safe to call more than once.
lab_teardown() {
    if ((${#LAB_PROCS[@]})); then
        lab_info "stopping ${#LAB_PROCS[@]} process(es) we started, by PID: ${!LAB_PROCS[*]}"
        lab_stop_pid "${!LAB_PROCS[@]}"
    fi
    if [[ -n $LAB_WATCHDOG_PID ]]; then
        kill -TERM "$LAB_WATCHDOG_PID" 2>/dev/null || true
        wait "$LAB_WATCHDOG_PID" 2>/dev/null || true
        LAB_WATCHDOG_PID=""
    fi
    if [[ -n $LAB_DIR && -d $LAB_DIR ]]; then
        if [[ ${LAB_KEEP:-0} == 1 ]]; then
            lab_info "kept $LAB_DIR (LAB_KEEP=1)"
        else
            rm -rf -- "$LAB_DIR"
        fi
    fi
}

# The EXIT trap: tears down, keeps the script's exit status.
lab_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    lab_teardown
    exit "$rc"
}

# Shows the last lines of every log we have, for a failure.
lab_show_logs() {
    local f
    for f in "$LAB_DIR"/logs/*.log; do
        [[ -s $f ]] || continue
        printf -- '--- last lines of %s\n' "${f##*/}" >&2
        tail -n 15 "$f" >&2
    done
}

# Picks a random 127.A.B.0/24 with nothing listening in it (never 127.0.x.x, which other software uses).
lab_pick_net() {
    local listening a b try
    listening=$(ss -Hltn | awk '{print $4}')
    if grep -Eq '^(0\.0\.0\.0|\*|\[::\]):(2379|2380)$' <<<"$listening"; then
        lab_die "something listens on port 2379 or 2380 on every address; the lab's members could not bind"
    fi
    for try in $(seq 1 100); do
        a=$((SRANDOM % 254 + 1))
        b=$((SRANDOM % 256))
        if ! grep -q "^127\.$a\.$b\." <<<"$listening"; then
            LAB_NET=127.$a.$b
            lab_info "loopback network ${LAB_NET}.0/24 (picked at try $try)"
            return 0
        fi
    done
    lab_die "no free 127.A.B.0/24 found"
}

# A CA, one server certificate for every member (client and peer side, so serverAuth and clientAuth)
# with the lab's IPs as SANs, and one client certificate for etcdctl and flint. Keys are 0600.
lab_make_certs() {
    local pki=$LAB_DIR/pki san="IP:127.0.0.1" i
    if [[ $LAB_SCHEME == http ]]; then
        lab_info "plain http (LAB_SCHEME=http): no certificates"
        return 0
    fi
    for i in $(seq 1 "$LAB_MAX_MEMBERS"); do san+=",IP:$(lab_ip "$i")"; done
    mkdir -p "$pki"
    cat >"$pki/openssl.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = flint lab
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = $san
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
    (
        umask 077
        cd "$pki"
        local -a key=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
        openssl req -x509 "${key[@]}" -config openssl.cnf -extensions ca_ext -days 2 \
            -subj "/CN=flint lab CA" -keyout ca-key.pem -out ca.pem
        local who
        for who in server client; do
            openssl req -new "${key[@]}" -config openssl.cnf -subj "/CN=flint lab $who" \
                -keyout "$who-key.pem" -out "$who.csr"
            openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca-key.pem -days 2 \
                -set_serial "0x$(openssl rand -hex 16)" -extfile openssl.cnf -extensions "${who}_ext" \
                -out "$who.pem"
        done
        chmod 0600 ./*-key.pem
        chmod 0644 ca.pem server.pem client.pem
    ) >"$LAB_DIR/logs/openssl.log" 2>&1 || {
        cat "$LAB_DIR/logs/openssl.log" >&2
        lab_die "openssl could not make the lab's certificates"
    }
    lab_info "CA, server certificate (SANs 127.0.0.1, ${LAB_NET}.11-$((10 + LAB_MAX_MEMBERS))), client certificate in $pki"
}

# The deployment flow's preparation phase for the lab: an inventory of N nodes that run etcd on its
# registered ports (the first INITIAL the initial members, N members expected in all), and
# `flint-boot prepare`'s folders: each node's certificates, its cluster-config.json, and the
# operator's client certificate for etcdctl. The members and flint then take everything from them.
lab_prepare() {
    local n=$1 initial=$2 i nodes="" first
    [[ $LAB_SCHEME == https ]] || lab_die "prepare makes TLS certificates: LAB_SCHEME must be https"
    ((n <= LAB_MAX_MEMBERS)) || lab_die "the lab has room for $LAB_MAX_MEMBERS members"
    for i in $(seq 1 "$n"); do
        first=false
        ((i <= initial)) && first=true
        nodes+="${nodes:+,
    }{\"name\": \"$(lab_name "$i")\", \"mac\": \"52:54:00:00:00:0$i\", \"profile\": \"node\",
     \"raft_addr\": \"$(lab_ip "$i"):2380\", \"initial\": $first}"
    done
    LAB_INVENTORY=$LAB_DIR/inventory.json
    LAB_PREPARED=$LAB_DIR/secrets
    cat >"$LAB_INVENTORY" <<EOF
{
  "profiles": {"node": {"kernel": "node/vmlinuz", "initrds": ["node/initrd"]}},
  "nodes": [
    $nodes
  ],
  "cluster": {"services": ["etcd"], "ports": {"etcd": 2379, "etcd_peer": 2380}, "expected_members": $n}
}
EOF
    "$FLINT_BOOT" prepare --inventory "$LAB_INVENTORY" "$LAB_PREPARED" >"$LAB_DIR/logs/prepare.log" 2>&1 || {
        cat "$LAB_DIR/logs/prepare.log" >&2
        lab_die "flint-boot prepare failed"
    }
}

# LAB_ARGS: the flags member I always has (data dir, listen and advertise URLs, TLS).
lab_member_args() {
    local i=$1 pki=$LAB_DIR/pki node
    LAB_ARGS=(
        --data-dir "$LAB_DIR/$(lab_name "$i")/etcd-data"
        --listen-client-urls "$(lab_client_url "$i")"
        --advertise-client-urls "$(lab_client_url "$i")"
        --listen-peer-urls "$(lab_peer_url "$i")"
    )
    if [[ -n ${LAB_PREPARED:-} ]]; then
        # The node's own folder, as etcd reads it from /etc/nixos/secrets on the node.
        node=$LAB_PREPARED/nodes/$(lab_name "$i")
        LAB_ARGS+=(
            --cert-file "$node/server.pem" --key-file "$node/server-key.pem"
            --trusted-ca-file "$node/ca.pem" --client-cert-auth
            --peer-cert-file "$node/etcd-peer.pem" --peer-key-file "$node/etcd-peer-key.pem"
            --peer-trusted-ca-file "$node/ca.pem" --peer-client-cert-auth
        )
    elif [[ $LAB_SCHEME == https ]]; then
        LAB_ARGS+=(
            --cert-file "$pki/server.pem" --key-file "$pki/server-key.pem"
            --trusted-ca-file "$pki/ca.pem" --client-cert-auth
            --peer-cert-file "$pki/server.pem" --peer-key-file "$pki/server-key.pem"
            --peer-trusted-ca-file "$pki/ca.pem" --peer-client-cert-auth
        )
    fi
}

lab_start_cluster() {
    local n=$1 i initial="" endpoints=""
    ((n + 1 <= LAB_MAX_MEMBERS)) || lab_die "the lab has room for $((LAB_MAX_MEMBERS - 1)) voters and a joiner"
    for i in $(seq 1 "$n"); do
        initial+="${initial:+,}$(lab_name "$i")=$(lab_peer_url "$i")"
        endpoints+="${endpoints:+,}$(lab_client_url "$i")"
    done
    for i in $(seq 1 "$n"); do
        lab_member_args "$i"
        etcd "${LAB_ARGS[@]}" --name "$(lab_name "$i")" \
            --initial-advertise-peer-urls "$(lab_peer_url "$i")" \
            --initial-cluster "$initial" --initial-cluster-state new \
            --initial-cluster-token "flint-lab-$LAB_NET" \
            >"$LAB_DIR/logs/$(lab_name "$i").log" 2>&1 &
        lab_track $! "etcd $(lab_name "$i")"
    done
    LAB_VOTERS=$n
    # etcdctl reads these; a flag given as well would conflict, so the scripts never pass --endpoints.
    export ETCDCTL_API=3 ETCDCTL_ENDPOINTS=$endpoints ETCDCTL_DIAL_TIMEOUT=2s ETCDCTL_COMMAND_TIMEOUT=5s
    if [[ -n ${LAB_PREPARED:-} ]]; then
        export ETCDCTL_CACERT=$LAB_PREPARED/cluster/ca.pem ETCDCTL_CERT=$LAB_PREPARED/cluster/admin.pem \
            ETCDCTL_KEY=$LAB_PREPARED/cluster/admin-key.pem
    elif [[ $LAB_SCHEME == https ]]; then
        export ETCDCTL_CACERT=$LAB_DIR/pki/ca.pem ETCDCTL_CERT=$LAB_DIR/pki/client.pem \
            ETCDCTL_KEY=$LAB_DIR/pki/client-key.pem
    fi
    lab_wait_healthy 30
    lab_info "$n members healthy, $LAB_SCHEME on the client and peer side: $endpoints"
    # etcd's strict reconfiguration check refuses member changes ("unhealthy cluster") until every
    # voter has been connected to the others for 5 s (etcdserver.HealthInterval).
    lab_info "waiting 5.5 s: etcd accepts membership changes once its members have been connected for 5 s"
    sleep 5.5
}

# Dies with the logs when one of our etcd processes has exited.
lab_check_alive() {
    local pid
    for pid in "${!LAB_PROCS[@]}"; do
        if ! lab_alive "$pid"; then
            lab_show_logs
            lab_die "${LAB_PROCS[$pid]} (PID $pid) exited"
        fi
    done
}

# Waits up to SECONDS until every voting member answers `etcdctl endpoint health`.
lab_wait_healthy() {
    local deadline=$((SECONDS + $1))
    until etcdctl endpoint health >/dev/null 2>&1; do
        lab_check_alive
        if ((SECONDS >= deadline)); then
            lab_show_logs
            lab_die "the cluster was not healthy within $1 s"
        fi
        sleep 0.1
    done
}

# Writes node I's cluster-config.json, as a real node's secrets folder holds it, with the client
# certificate beside it. LAB_CONFIG is the file, LAB_STATE an empty state directory.
lab_write_flint_config() {
    local i=$1 node secrets peers="" p tls=""
    if [[ -n ${LAB_PREPARED:-} ]]; then
        LAB_CONFIG=$LAB_PREPARED/nodes/$(lab_name "$i")/cluster-config.json
        LAB_STATE=$LAB_DIR/$(lab_name "$i")/state
        mkdir -p "$LAB_STATE"
        return 0
    fi
    node=$LAB_DIR/$(lab_name "$i")
    secrets=$node/secrets
    LAB_CONFIG=$secrets/cluster-config.json
    LAB_STATE=$node/state
    mkdir -p "$secrets" "$LAB_STATE"
    chmod 0700 "$secrets"
    for p in $(seq 2 "$LAB_VOTERS"); do peers+="${peers:+, }\"$(lab_client_url "$p")\""; done
    if [[ $LAB_SCHEME == https ]]; then
        cp "$LAB_DIR/pki/ca.pem" "$LAB_DIR/pki/client.pem" "$LAB_DIR/pki/client-key.pem" "$secrets/"
        chmod 0600 "$secrets/client-key.pem"
        tls='
  "tls": {"ca": "ca.pem", "cert": "client.pem", "key": "client-key.pem"},'
    fi
    cat >"$LAB_CONFIG" <<EOF
{
  "node_id": "$(lab_name "$i")",
  "leader_url": "$(lab_client_url 1)",
  "peers": [$peers],
  "raft_addr": "$(lab_ip "$i"):2380",$tls
  "timeouts": {"total": "60s", "request": "5s", "connect": "2s"},
  "etcd": {
    "peer_url": "$(lab_peer_url "$i")",
    "local_url": "$(lab_client_url "$i")"
  }
}
EOF
}

# Exports the ETCD_* lines of an environment file (systemd EnvironmentFile syntax: KEY=value, one a
# line, optionally in double quotes) without running anything from it.
lab_env_file() {
    local line key value
    [[ -r $1 ]] || lab_die "no environment file at $1"
    while IFS= read -r line || [[ -n $line ]]; do
        [[ $line =~ ^(ETCD_[A-Z0-9_]+)=(.*)$ ]] || continue
        key=${BASH_REMATCH[1]}
        value=${BASH_REMATCH[2]}
        if [[ $value =~ ^\"(.*)\"$ ]]; then value=${BASH_REMATCH[1]}; fi
        export "$key=$value"
    done <"$1"
}

# Exports the ETCD_*="..." lines that `etcdctl member add` prints, the way an operator's script does:
# it evaluates them.
lab_env_eval() {
    local line
    set -a
    while IFS= read -r line; do
        if [[ $line == ETCD_* ]]; then eval "$line"; fi
    done <<<"$1"
    set +a
}

# Starts etcd #I as a joining member: its name, initial cluster, state and peer URL come from
# `LOADER ARG`, run in the child just before etcd replaces it. LAB_JOINER_PIDS[I] is its PID.
lab_start_joiner() {
    local i=$1 loader=$2 arg=$3
    lab_member_args "$i"
    rm -rf "$LAB_DIR/$(lab_name "$i")/etcd-data"
    (
        "$loader" "$arg"
        exec etcd "${LAB_ARGS[@]}"
    ) >>"$LAB_DIR/logs/$(lab_name "$i").log" 2>&1 &
    LAB_JOINER_PIDS[$i]=$!
    lab_track $! "etcd $(lab_name "$i")"
}

lab_stop_joiner() {
    local i=$1
    if [[ -n ${LAB_JOINER_PIDS[$i]:-} ]]; then
        lab_stop_pid "${LAB_JOINER_PIDS[$i]}"
        unset "LAB_JOINER_PIDS[$i]"
    fi
    rm -rf "$LAB_DIR/$(lab_name "$i")/etcd-data"
}

# Prints the hex ID of the member whose peer URL is PEER_URL (empty when none has it).
lab_member_id() {
    etcdctl member list | awk -F', ' -v url="$1" '$4 == url { print $1 }'
}
