# shellcheck shell=bash
# tests/lib/cache.sh: a folder the VM tests build once and reuse (tests/flow's images and root
# file system), named by a key that changes with whatever goes into it.

# cache_folder CACHE KEY BUILD [ARG...]: prints CACHE/KEY, building it first unless it is complete.
# `BUILD ARG... OUT` fills a fresh folder OUT with CACHE/.lock held (a second caller waits for it,
# then finds the folder complete); OUT is moved into place whole, so a build cut short is never
# reused; folders of other keys are never used again and are removed. Call it as a plain command
# (not in `$(...)` or beside `||`), so that errexit stops a failing BUILD.
cache_folder() {
    local cache=$1 key=$2
    shift 2
    local out=$cache/$key
    if [[ ! -f $out/.complete ]]; then
        mkdir -p "$cache"
        (
            exec 9>"$cache/.lock"
            flock -w 600 9 || { echo "cache: another build has held $cache/.lock for 10 minutes" >&2; exit 1; }
            [[ -f $out/.complete ]] && exit 0
            # With the lock held no other build runs: a build folder left here was cut short.
            rm -rf "$cache"/build.*
            build=$(mktemp -d "$cache/build.XXXXXX")
            trap 'rm -rf "$build"' EXIT
            mkdir "$build/out"
            "$@" "$build/out" >&2
            touch "$build/out/.complete"
            rm -rf "$out"
            mv "$build/out" "$out"
            find "$cache" -mindepth 1 -maxdepth 1 -type d ! -name "$key" ! -name 'build.*' -exec rm -rf {} +
        )
    fi
    echo "$out"
}
