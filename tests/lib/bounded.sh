# shellcheck shell=bash
# tests/lib/bounded.sh: what bounds a VM test's whole run in time (tests/pxe/boot-test.sh,
# tests/flow/run.sh).

# bounded SECONDS SCRIPT [ARG...]: runs SCRIPT again under timeout(1), once (FLINT_LAB_BOUNDED
# marks the second run), and never returns from the first. On expiry timeout(1) sends SIGTERM to
# the script, whose EXIT trap (tests/lib/lab.sh) stops what it started and removes its
# namespaces; --foreground keeps everything in the caller's process group, where a Ctrl-C, or the
# SIGTERM of a test runner whose own limit expired, reaches the script too.
bounded() {
    local seconds=$1
    shift
    [[ -n ${FLINT_LAB_BOUNDED:-} ]] && return 0
    export FLINT_LAB_BOUNDED=1
    exec timeout --foreground --kill-after=20 "$seconds" "$@"
}
