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
