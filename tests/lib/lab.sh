# shellcheck shell=bash disable=SC2154 # $work, $site and $boot are the sourcing script's
# tests/lib/lab.sh: what the VM tests (tests/pxe/boot-test.sh, tests/flow/run.sh) share: their
# background processes, kept by PID (only these are ever signalled); stopping one; the cleanup of
# their processes, network namespaces and folder on every exit; reading a serial console.
# Sourced once the script has set $work (its folder), $site and $boot (its namespaces).
# FLINT_KEEP=1 keeps the folder.

# PID -> name of what runs in the background.
declare -A running=()

# stop PID: SIGTERM, then SIGKILL if it is still there 5 s later.
stop() {
    local pid=$1 i
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "running[$pid]"
}

cleanup() {
    local status=$? pid
    trap '' INT TERM
    for pid in "${!running[@]}"; do
        stop "$pid"
    done
    ip netns del "$site" 2>/dev/null || true
    ip netns del "$boot" 2>/dev/null || true
    if [[ -n ${FLINT_KEEP:-} ]]; then
        echo "kept $work" >&2
    else
        rm -rf "$work"
    fi
    exit "$status"
}
trap cleanup EXIT
# A Ctrl-C or a test runner's SIGTERM reaches the script twice, sent to the process group and
# passed on by timeout(1): the second must not end the first one's cleanup midway, so the first
# thing a handler does is ignore them.
trap 'trap "" INT TERM; exit 130' INT
trap 'trap "" INT TERM; exit 143' TERM

# background NAME COMMAND...: starts COMMAND with its output in $work/NAME.log; sets $last_pid.
background() {
    local name=$1
    shift
    : >"$work/$name.log"
    "$@" >>"$work/$name.log" 2>&1 </dev/null &
    last_pid=$!
    running[$last_pid]=$name
}

# serial_text FILE: a serial console's text, without carriage returns and terminal escapes.
serial_text() {
    [[ -e $1 ]] || return 0
    tr -d '\r' <"$1" | sed -E 's/\x1b\[[0-9;?=]*[A-Za-z]//g; s/\x1bc//g'
}

# serial_shows FILE [GREP OPTION...] PATTERN: whether a console shows PATTERN. Not a pipeline:
# under pipefail, grep -q leaving at its first match would fail it with the writer's SIGPIPE.
serial_shows() {
    local file=$1
    shift
    grep -q "$@" < <(serial_text "$file")
}
