#!/usr/bin/env bash
# Checks every unit in systemd/: `systemd-analyze verify` (syntax, dependencies, executables)
# inside a throw-away root that has the system's own units, stand-ins for the services flint's
# units order against (chainfire, flaredb, iam, etcd), and the flint binary; then
# `systemd-analyze security --offline=true --threshold=20` (exposure 2.0 at most: --threshold
# counts on the 0-100 scale behind the 0.0-10.0 figure systemd prints, so 20 is 2.0); and that
# tmpfiles.d/flint.conf creates the folder the health units write their textfile to.
#
#   scripts/check-units.sh [FLINT_BINARY [FLINT_BOOT_BINARY]]
#                          (default: target/debug/flint, target/debug/flint-boot)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
flint=${1:-$repo/target/debug/flint}
flint_boot=${2:-$repo/target/debug/flint-boot}
for bin in "$flint" "$flint_boot"; do
    [[ -x $bin ]] || { echo "no binary at $bin (build it first)" >&2; exit 1; }
done

root=$(mktemp -d /tmp/flint-units.XXXXXX)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/bin" "$root/usr/lib/systemd" "$root/etc/systemd/system"
cp -r /usr/lib/systemd/system "$root/usr/lib/systemd/"
cp "$flint" "$root/usr/bin/flint"
cp "$flint_boot" "$root/usr/bin/flint-boot"
# flint-boot.service reloads with /bin/kill.
mkdir -p "$root/bin"
cp "$(type -P kill)" "$root/bin/kill"
for stub in chainfire flaredb iam etcd; do
    printf '[Unit]\nDescription=stand-in for %s\n\n[Service]\nExecStart=/usr/bin/flint --version\n' \
        "$stub" >"$root/etc/systemd/system/$stub.service"
done
cp -r "$repo"/systemd/. "$root/etc/systemd/system/"

failed=0
for path in "$repo"/systemd/*.service "$repo"/systemd/*.timer; do
    unit=$(basename "$path")
    if ! out=$(systemd-analyze verify --man=no --root="$root" "$unit" 2>&1) || [[ -n $out ]]; then
        printf 'verify %s:\n%s\n' "$unit" "$out"
        failed=1
    fi
    [[ $unit == *.service ]] || continue
    if ! out=$(systemd-analyze security --offline=true --threshold=20 "$path" 2>&1); then
        printf 'security %s: exposure above 2.0\n%s\n' "$unit" "$(grep -E '✗|Overall' <<<"$out")"
        failed=1
    else
        printf '%-32s %s\n' "$unit" "$(grep -o 'Overall exposure level.*' <<<"$out")"
    fi
done
# Every unit's sandbox is systemd/sandbox.conf's, line for line (flint-boot.service's with its
# own capability and address families), so that a hardening change cannot reach some units only.
sandbox_settings() { sed -n '/^CapabilityBoundingSet=/,/^UMask=/p' "$1"; }
own_to_boot='^(CapabilityBoundingSet|AmbientCapabilities|RestrictAddressFamilies)=|^# AF_|^# journal'
for path in "$repo"/systemd/*.service; do
    unit=$(basename "$path")
    if [[ $unit == flint-boot.service ]]; then
        differs=$(diff <(grep -Ev "$own_to_boot" "$repo/systemd/sandbox.conf" | sed -n '/^NoNewPrivileges=/,$p') \
            <(sandbox_settings "$path" | grep -Ev "$own_to_boot") || true)
    else
        differs=$(diff <(sed -n '/^CapabilityBoundingSet=/,$p' "$repo/systemd/sandbox.conf") <(sandbox_settings "$path") || true)
    fi
    if [[ -n $differs ]]; then
        printf 'sandbox %s: not systemd/sandbox.conf'"'"'s (< sandbox.conf, > the unit):\n%s\n' "$unit" "$differs"
        failed=1
    fi
done
((failed)) || printf '%-32s %s\n' sandbox.conf "every unit's sandbox is this file's"
# tmpfiles.d/flint.conf, applied to an empty root: the textfile folder the health units write to
# must come out of it, or those units would fail on a node without node_exporter.
tmpfiles_root=$root/tmpfiles
mkdir -p "$tmpfiles_root"
if ! out=$(systemd-tmpfiles --create --root="$tmpfiles_root" "$repo/systemd/tmpfiles.d/flint.conf" 2>&1) \
    || [[ -n $out ]] || [[ $(stat -c '%a %u' "$tmpfiles_root/var/lib/prometheus/node-exporter" 2>&1) != '755 0' ]]; then
    printf 'tmpfiles.d/flint.conf does not create /var/lib/prometheus/node-exporter (root, 0755):\n%s\n' "$out"
    failed=1
else
    printf '%-32s %s\n' tmpfiles.d/flint.conf "creates /var/lib/prometheus/node-exporter"
fi
if ((failed)); then
    echo "unit checks failed"
    exit 1
fi
echo "every unit verifies and has an exposure of 2.0 or less"
