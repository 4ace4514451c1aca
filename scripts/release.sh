#!/usr/bin/env bash
# A release of flint from this checkout, in OUT (default target/release-dist):
#   flint-VERSION-x86_64-linux-musl, flint-boot-VERSION-x86_64-linux-musl   the static binaries
#   flint_VERSION-1_amd64.deb        every node: flint, node-join, the first-boot and health units
#   flint-etcd_VERSION-1_amd64.deb   the nodes whose etcd flint joins: etcd's units and drop-in
#   flint-boot_VERSION-1_amd64.deb   the boot host: flint-boot and its unit
#   SHA256SUMS
# The packages are built by cargo-deb from the same binaries, with the man pages and completions
# flint-dist writes, and must be lintian-clean (errors and warnings fail the release).
#
#   scripts/release.sh [--out DIR] [--check-reproducible]
#
# Reproducible: every timestamp is the commit's (SOURCE_DATE_EPOCH), and rustc and cargo-deb
# write the same bytes for the same input. --check-reproducible proves it: it copies the source
# (tracked and untracked files, nothing ignored) to a folder elsewhere, builds it there from
# nothing, and fails unless every file of SHA256SUMS is the same.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
readonly target=x86_64-unknown-linux-musl
out=$repo/target/release-dist
check_reproducible=0
while (($#)); do
    case $1 in
    --out) out=$(realpath -m "$2"); shift 2 ;;
    --check-reproducible) check_reproducible=1; shift ;;
    *) echo "usage: scripts/release.sh [--out DIR] [--check-reproducible]" >&2; exit 64 ;;
    esac
done

fail() {
    printf 'release: %s\n' "$*" >&2
    exit 1
}
command -v cargo-deb >/dev/null || fail "cargo-deb is missing: scripts/setup.sh installs it"
# One release at a time per checkout: two would write the same pages and packages.
mkdir -p target
exec {lock}>target/.release.lock
flock "$lock"
command -v lintian >/dev/null || fail "lintian is missing: scripts/setup.sh installs it"

if [[ -z ${SOURCE_DATE_EPOCH:-} ]]; then
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null) ||
        fail "not a git checkout: set SOURCE_DATE_EPOCH to the source's time"
fi
export SOURCE_DATE_EPOCH
# Flags from the environment would change the bytes; a release takes only the manifest's.
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS
metadata=$(cargo metadata --locked --no-deps --format-version 1)
version=$(jq -r '.packages[] | select(.name == "flint") | .version' <<<"$metadata")
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || fail "cannot read flint's version from Cargo.toml: '$version'"

echo "release: flint $version, SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH, into $out"
cargo build --release --locked --target "$target" -p flint -p flint-boot
target_dir=$(jq -r .target_directory <<<"$metadata")
bin=$target_dir/$target/release

# flint-dist's output, where the packages' assets name it (target/release/dist in Cargo.toml's
# package.metadata.deb is cargo-deb's name for this folder). FLINT_DIST: a flint-dist already
# built from this source (the reproducibility check's second build runs the first one's: what it
# writes comes from the clap definitions, not from where it was built).
if [[ -z ${FLINT_DIST:-} ]]; then
    cargo build --locked --quiet -p flint-dist
    FLINT_DIST=$target_dir/debug/flint-dist
fi
rm -rf "$bin/dist"
"$FLINT_DIST" "$bin/dist" >/dev/null
# cargo-deb compresses no page under the target folder; -n leaves out name and time.
gzip -9n "$bin"/dist/*/man/*.1

rm -rf "$out"
mkdir -p "$out"
debs=()
for package in "flint" "flint --variant etcd" "flint-boot"; do
    read -ra args <<<"$package"
    # --no-strip: the release profile strips already.
    deb=$(cargo deb --locked --no-build --no-strip --target "$target" --output "$out" -p "${args[@]}" |
        tail -1)
    [[ -f $deb ]] || fail "cargo deb -p $package wrote no package"
    debs+=("$deb")
done
install -m 755 "$bin/flint" "$out/flint-$version-x86_64-linux-musl"
install -m 755 "$bin/flint-boot" "$out/flint-boot-$version-x86_64-linux-musl"

# cargo-deb writes no version into a dependency: flint-etcd's must be the flint built here.
flint_version=$(dpkg-deb -f "$out/flint_${version}-1_amd64.deb" Version)
depends=$(dpkg-deb -f "$out/flint-etcd_${version}-1_amd64.deb" Depends)
[[ $depends == *"flint (= $flint_version)"* ]] ||
    fail "flint-etcd depends on '$depends', not on flint (= $flint_version): update Cargo.toml's variant"

# Errors and warnings fail the release. The packages carry their own overrides, each with its
# reason (pkg/debian/lintian/), so they are clean for anyone who runs lintian on them.
lintian --fail-on error,warning --tag-display-limit 0 "${debs[@]}"

(cd "$out" && sha256sum -- *.deb flint-*-x86_64-linux-musl >SHA256SUMS)
cat "$out/SHA256SUMS"

if ((check_reproducible)); then
    copy=$(mktemp -d /var/tmp/flint-release-check.XXXXXX)
    trap 'rm -rf "$copy"' EXIT
    mkdir "$copy/src"
    git ls-files -z --cached --others --exclude-standard |
        tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$copy/src"
    echo "release: building again from a copy in $copy/src, from nothing"
    (cd "$copy/src" && env -u CARGO_TARGET_DIR FLINT_DIST="$(realpath "$FLINT_DIST")" scripts/release.sh --out "$copy/out") \
        >"$copy/build.log" 2>&1 ||
        fail "the second build failed: $(tail -20 "$copy/build.log")"
    if ! diff "$out/SHA256SUMS" "$copy/out/SHA256SUMS"; then
        fail "two builds of the same source differ (< here, > the copy)"
    fi
    echo "release: reproducible: a second build from a copy elsewhere gave the same $(wc -l <"$out/SHA256SUMS") files"
fi
