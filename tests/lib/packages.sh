# shellcheck shell=bash
# release_packages: prints the folder of the Debian packages the systemd tests install:
# $FLINT_PACKAGES when set (scripts/test.sh builds the release before the suite), otherwise
# scripts/release.sh's own folder, the release built now from this source (its log on stderr).
release_packages() {
    if [[ -n ${FLINT_PACKAGES:-} ]]; then
        realpath "$FLINT_PACKAGES"
        return
    fi
    local repo
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    "$repo/scripts/release.sh" >&2 || { echo "scripts/release.sh failed: no packages to test" >&2; return 1; }
    echo "$repo/target/release-dist"
}
