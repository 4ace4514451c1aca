#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (cargo fuzz, libFuzzer with AddressSanitizer) for a set time and
# prints one table: executions, executions per second, corpus size and crashes per target.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 60; CI runs 10)
#   FUZZ_TARGETS="dhcp tftp" scripts/fuzz.sh  (a subset)
#   FUZZ_RUNS=10000000 scripts/fuzz.sh 3600   (each target stops at 10 million executions, or
#                                              after an hour if it is slower than that)
#
# Needs cargo-fuzz (scripts/setup.sh installs it). The machine has one (stable) toolchain and no
# other can be fetched, so the sanitizer's -Z flags are let through with RUSTC_BOOTSTRAP=1: the
# AddressSanitizer runtime ships with the standard library of this target. The corpus of each
# target starts from seeds written here, by code, from the formats flint reads (fuzz/corpus/ keeps
# what the fuzzer adds, between runs). A crash, a leak or a timeout fails the script; libFuzzer
# leaves the input in fuzz/artifacts/TARGET/, and `RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET FILE`
# replays it.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=${1:-60}
if ! [[ $seconds =~ ^[0-9]+$ ]] || ((seconds == 0)); then
    echo "usage: scripts/fuzz.sh [SECONDS]" >&2
    exit 64
fi
runs_limit=${FUZZ_RUNS:--1}
if ! [[ $runs_limit =~ ^(-1|[0-9]+)$ ]]; then
    echo "FUZZ_RUNS must be a number of executions, not '$runs_limit'" >&2
    exit 64
fi
read -r -a targets <<<"${FUZZ_TARGETS:-config inventory dhcp tftp answers marker http}"
cd "$repo/fuzz"
export RUSTC_BOOTSTRAP=1

# The first bytes of an answers seed: status = 100 + (big-endian u16 % 500), then the
# Content-Type (1: application/json) and allow_plaintext; the Location line, if any, and the body
# follow (fuzz/fuzz_targets/answers.rs).
# seed TARGET NAME: writes stdin as one seed file of TARGET's corpus.
seed() { mkdir -p "corpus/$1" && cat >"corpus/$1/seed-$2"; }

# A BOOTP header (236 bytes) for a PXE client with MAC 52:54:00:aa:bb:01, then the DHCP cookie.
# dhcp_packet GIADDR_HEX: GIADDR as 8 hex digits (00000000 when not relayed).
dhcp_packet() {
    printf '\x01\x01\x06\x00\x12\x34\x56\x78\x00\x00\x80\x00'
    head -c 12 /dev/zero
    local giaddr=$1 i
    for ((i = 0; i < 8; i += 2)); do
        printf '%b' "\\x${giaddr:i:2}"
    done
    printf '\x52\x54\x00\xaa\xbb\x01'
    head -c $((10 + 64 + 128)) /dev/zero
    printf '\x63\x82\x53\x63'
}
# dhcp_seed NAME PORT_SELECTOR GIADDR_HEX OPTIONS: a packet for the dhcp target, whose first byte
# picks the port (even: 67, odd: 4011).
dhcp_seed() {
    { printf '%b' "$2"; dhcp_packet "$3"; printf '%b' "$4"; } | seed dhcp "$1"
}

write_seeds() {
    seed config minimal <<<'{"node_id": "node04", "bootstrap": false, "leader_url": "https://node01.example.com:2379", "raft_addr": "10.0.200.13:2380"}'
    seed config full <<'EOF'
{"node_id": "node04", "bootstrap": false, "leader_url": "https://10.0.200.11:2379",
 "raft_addr": "10.0.200.13:2380", "peers": ["https://10.0.200.12:2379"],
 "tls": {"ca": "ca.pem", "cert": "node.pem", "key": "node-key.pem"}, "join_token_file": "token",
 "etcd": {"leader_url": "https://10.0.200.11:2379", "peer_url": "https://10.0.200.13:2380"},
 "flaredb": {"raft_addr": "10.0.200.13:2480"},
 "iam": {"url": "https://10.0.200.11:8080", "org": "acme", "bootstrap_token_file": "iam-token",
         "admin": {"name": "root", "public_key_file": "admin.pub"}},
 "timeouts": {"total": "5m", "request": "10s"}}
EOF
    seed inventory readme <<'EOF'
{"images_url": "http://10.0.200.2:8080/images",
 "profiles": {"worker": {"kernel": "debian/vmlinuz", "initrds": ["debian/initrd.img"],
   "cmdline": "console=ttyS0 ip=dhcp",
   "arch": {"arm64": {"kernel": "debian-arm64/vmlinuz", "initrds": ["debian-arm64/initrd.img"]}}}},
 "nodes": [{"name": "node01", "mac": "52:54:00:12:34:56", "profile": "worker",
   "uuid": "01234567-89ab-cdef-0123-456789abcdef", "addresses": ["10.0.200.10"]}],
 "unknown": {"policy": "default", "profile": "worker"}}
EOF
    seed inventory menu <<<'{"profiles": {"a": {"kernel": "k"}, "b": {"kernel": "k2", "initrds": ["i"]}}, "unknown": {"policy": "menu"}}'
    local pxe='\x35\x01\x01\x3c\x20PXEClient:Arch:00000:UNDI:002001\x5d\x02\x00\x00\x61\x11\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10'
    dhcp_seed bios '\x00' 00000000 "$pxe\\xff"
    dhcp_seed efi-x64 '\x00' 00000000 '\x35\x01\x01\x3c\x20PXEClient:Arch:00007:UNDI:003016\x5d\x02\x00\x07\xff'
    dhcp_seed ipxe '\x00' 00000000 "$pxe\\x4d\\x04iPXE\\xaf\\x03\\x13\\x01\\x01\\xff"
    dhcp_seed http-boot '\x00' 00000000 '\x35\x01\x01\x3c\x21HTTPClient:Arch:00016:UNDI:003000\x5d\x02\x00\x10\xff'
    dhcp_seed relayed '\x00' 0a000001 "$pxe\\xff"
    dhcp_seed pxe-4011 '\x01' 00000000 '\x35\x01\x03\x3c\x20PXEClient:Arch:00009:UNDI:003016\x5d\x02\x00\x09\xff'
    printf '\x00\x01undionly.kpxe\x00octet\x00tsize\x000\x00blksize\x001468\x00' | seed tftp rrq
    printf '\x00\x01efi/ipxe.efi\x00octet\x00windowsize\x0016\x00timeout\x001\x00' | seed tftp window
    printf '\x00\x01../outside\x00netascii\x00' | seed tftp escape
    printf '\x00\x64\x01\x00{"header": {"member_id": "1"}, "members": [{"ID": "10", "name": "node01", "peerURLs": ["https://10.0.200.11:2380"], "clientURLs": ["https://10.0.200.11:2379"]}]}' | seed answers etcd-members
    printf '\x01\x2c\x01\x00{"error": "etcdserver: too many learner members in cluster", "code": 9, "message": "etcdserver: too many learner members in cluster"}' | seed answers etcd-refusal
    printf '\x00\x65\x01\x00{"id": "node04", "raft_addr": "10.0.200.13:2380", "role": "learner", "org": "acme", "admin": {"name": "root"}}' | seed answers created
    printf '\x01\x35\x01\x00{"member": {"id": "node04", "raft_addr": "10.0.200.13:2380", "role": "follower"}}' | seed answers conflict
    printf '\x00\xcf\x01\x01https://node02.example.com:2379/admin/member/add\n' | seed answers redirect
    printf '\x01\x93\x01\x00{"leader": "http://10.0.200.12:2379"}' | seed answers leader-hint
    # http: a method selector byte (0 GET, 1 HEAD, 2 POST, 3 OPTIONS), the target, then headers.
    printf '\x00/images/debian/vmlinuz\nRange: bytes=10-20' | seed http range
    printf '\x00/images/debian/vmlinuz\nIf-Modified-Since: Wed, 25 Nov 2026 10:00:00 GMT\nRange: bytes=-100' | seed http conditional-range
    printf '\x01/images/debian/vmlinuz' | seed http head
    printf '\x00/firmware/ipxe.efi\nIf-None-Match: "x", W/"y"\nIf-Match: *' | seed http etag
    printf '\x00/images/%%2e%%2e/secret' | seed http escape
    printf '\x00/ipxe?mac=52-54-00-12-34-56&uuid=01234567-89ab-cdef-0123-456789abcdef&platform=efi&buildarch=x86_64' | seed http ipxe
    printf '\x00/boot.ipxe' | seed http boot
    printf '\x00/metrics' | seed http metrics
    seed marker etcd <<<'{"service": "etcd", "node_id": "node04", "member_id": "8e9e05c52164694d", "leader": "node01", "joined_at": 1764000000, "flint_version": "0.1.0"}'
    seed marker iam <<<'{"service": "iam", "node_id": "node04", "org": "acme", "joined_at": 1764000000, "flint_version": "0.1.0"}'
}

echo "==> building the fuzz targets (AddressSanitizer)"
cargo fuzz build
write_seeds

failed=0
rows=()
for t in "${targets[@]}"; do
    log=$(mktemp "/tmp/flint-fuzz-$t.XXXXXX")
    echo "==> $t: ${seconds} s"
    rc=0
    started=$SECONDS
    # -rss_limit_mb and -timeout turn a memory blow-up or a hang into a failure with its input;
    # -runs=-1 (libFuzzer's default) means no bound on executions.
    cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$seconds" -runs="$runs_limit" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || rc=$?
    elapsed=$((SECONDS - started > 0 ? SECONDS - started : 1))
    runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo 0)
    crashes=$(find "artifacts/$t" -type f -newer "$log" 2>/dev/null | wc -l)
    corpus=$(find "corpus/$t" -type f | wc -l)
    if ((rc != 0)); then
        failed=1
        grep -E 'panicked|ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)|SUMMARY' "$log" | head -5 || true
        echo "    full log: $log"
    else
        rm -f "$log"
    fi
    rows+=("$(printf '%-10s %14s %10s %8s %8s %s' "$t" "$runs" "$((runs / elapsed))" "$corpus" "$crashes" \
        "$( ((rc == 0)) && echo ok || echo FAILED)")")
done

printf '\n%-10s %14s %10s %8s %8s %s\n' target executions "exec/s" corpus crashes verdict
printf '%s\n' "${rows[@]}"
exit "$failed"
