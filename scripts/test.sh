#!/usr/bin/env bash
# README command two: every check flint must pass, as CI runs it (.ci/run).
#
#   sudo scripts/test.sh        (Debian 12; installs what it needs through scripts/setup.sh)
#
# Checks, in order: rustfmt; shellcheck on the scripts; no file citing a document outside the
# repository; no aws-lc-rs in the dependency graph; clippy with warnings denied; the release
# (scripts/release.sh): static x86_64-unknown-linux-musl binaries, flint at most 3 MiB and
# flint-boot at most 4 MiB, lintian-clean Debian packages, the same bytes from a second build; the
# NixOS modules; the systemd units verify and have an exposure of 2.0 or less; the whole test
# suite under cargo-nextest (.config/nextest.toml bounds every test; the systemd boot tests
# install the release's packages); the whole deployment flow in QEMU VMs (tests/flow/run.sh, as
# scripts/demo.sh runs it); every fuzz target for 10 s (scripts/fuzz.sh). Every check runs even
# when an earlier one failed, and the script exits non-zero when any failed.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

readonly target=x86_64-unknown-linux-musl
failed=()
passed=()
started=$SECONDS

section() { printf '\n==> %s\n' "$*"; }
# check NAME COMMAND...: runs one check, records its outcome, never stops the script.
check() {
    local name=$1 t0=$SECONDS
    shift
    section "$name"
    if "$@"; then
        passed+=("$name")
        printf -- '--- ok: %s (%d s)\n' "$name" $((SECONDS - t0))
    else
        failed+=("$name")
        printf -- '--- FAILED: %s (%d s)\n' "$name" $((SECONDS - t0))
    fi
}

shell_scripts() {
    printf '%s\n' scripts/*.sh scripts/lib/*.sh tests/systemd/*.sh tests/pxe/*.sh tests/flow/*.sh tests/lib/*.sh bench/run bench/chain bench/instructions bench/boot bench/chaos bench/inventory bench/storm bench/validate bench/prepare bench/fleet bench/etcd-inventory .ci/run
}

lint_shell() {
    local -a files
    mapfile -t files < <(shell_scripts)
    shellcheck -x "${files[@]}"
}

# docs/ holds the design; a citation of a document outside the repository points nowhere for a
# reader. Tracked and new (not ignored) files are searched; the pattern is built from pieces so
# that this function does not match itself.
no_outside_citations() {
    local d=DESIGN n=notes s=shared hits
    hits=$(git ls-files -z --cached --others --exclude-standard |
        xargs -0 grep -nIsE -- "$d\.md|$d'|$s/$n|\.\./$s/|work/$s/|$n/(pxe-protocol|etcd-gateway|peer-figures|vm-lab)|(pxe-protocol|peer-figures|vm-lab|deployment-flow)\.md") || true
    if [[ -n $hits ]]; then
        printf 'cites a document outside the repository (docs/design.md and its links hold the design):\n%s\n' "$hits"
        return 1
    fi
    echo "no file cites a document outside the repository"
}

# `cargo tree -i` fails with "did not match any packages" when the package is absent: that is the pass.
no_aws_lc_rs() {
    local out rc=0
    out=$(cargo tree --workspace -i aws-lc-rs --target all 2>&1) || rc=$?
    if ((rc == 0)); then
        printf 'aws-lc-rs is in the dependency graph:\n%s\n' "$out"
        return 1
    fi
    if grep -q 'did not match any packages' <<<"$out"; then
        echo "aws-lc-rs: not in the dependency graph"
        return 0
    fi
    printf 'cargo tree failed for another reason:\n%s\n' "$out"
    return 1
}

# static_binary NAME MIB: the musl release binary NAME is static and at most MIB MiB.
static_binary() {
    local bin=target/$target/release/$1 max=$(($2 * 1024 * 1024)) desc size
    [[ -x $bin ]] || { echo "no binary at $bin"; return 1; }
    desc=$(file -b "$bin")
    size=$(stat -c %s "$bin")
    printf '%s: %s\n%s: %d bytes (limit %d, %d MiB)\n' "$bin" "$desc" "$bin" "$size" "$max" "$2"
    if [[ $desc != *"statically linked"* && $desc != *"static-pie linked"* ]] || [[ $desc == *interpreter* ]]; then
        echo "$bin is not a static executable"
        return 1
    fi
    if ((size > max)); then
        echo "$bin is larger than $2 MiB"
        return 1
    fi
}

# The release as scripts/release.sh makes it: the node binary and the boot server each one static
# file, the Debian packages lintian-clean, and a second build from a copy elsewhere the same bytes.
# Its packages are what the tests that boot systemd install (FLINT_PACKAGES).
release() {
    local rc=0
    scripts/release.sh --check-reproducible || return 1
    static_binary flint 3 || rc=1
    static_binary flint-boot 4 || rc=1
    return "$rc"
}
export FLINT_PACKAGES=$repo/target/release-dist

section "setup (scripts/setup.sh)"
bash scripts/setup.sh

check "cargo fmt --all -- --check" cargo fmt --all -- --check
check "shellcheck" lint_shell
check "no citation of documents outside the repository" no_outside_citations
check "no aws-lc-rs (cargo tree -i aws-lc-rs --target all)" no_aws_lc_rs
check "cargo clippy --workspace --all-targets -- -D warnings" \
    cargo clippy --workspace --all-targets --locked -- -D warnings
check "the release (scripts/release.sh): static binaries, flint at most 3 MiB and flint-boot 4 MiB, lintian-clean packages, reproducible" release
units() { cargo build --locked -p flint -p flint-boot && scripts/check-units.sh; }
# Debian's nix-instantiate parses the NixOS modules and evaluates what they render against a
# stand-in for nixpkgs' lib (nixpkgs itself cannot be fetched here).
nix_modules() {
    local f
    for f in nixos-module/*.nix nixos-module/tests/*.nix; do
        nix-instantiate --parse "$f" >/dev/null || { echo "does not parse: $f"; return 1; }
        echo "parses: $f"
    done
    nix-instantiate --eval --strict --json nixos-module/tests/eval.nix
    echo
}
check "NixOS modules parse and render (nix-instantiate)" nix_modules
check "systemd units: systemd-analyze verify and security (scripts/check-units.sh)" units
check "cargo nextest run --workspace --no-fail-fast" cargo nextest run --workspace --no-fail-fast --locked
# The deployment flow, bare machines to a validated cluster in QEMU VMs: after the test suite, whose VM
# tests would otherwise share the two cores with it.
flow() {
    cargo build --release --locked --target "$target" -p flint-testserver || return 1
    tests/flow/run.sh "$FLINT_PACKAGES" "target/$target/release/flint-testserver"
}
check "the deployment flow in QEMU VMs, bare machines to a validated 4-node cluster (tests/flow/run.sh)" flow
check "fuzz targets, 10 s each (scripts/fuzz.sh 10)" scripts/fuzz.sh 10

printf '\n==> scripts/test.sh: %d of %d checks ok in %d s\n' "${#passed[@]}" $((${#passed[@]} + ${#failed[@]})) \
    $((SECONDS - started))
if ((${#failed[@]})); then
    printf 'failed: %s\n' "${failed[@]}"
    exit 1
fi
