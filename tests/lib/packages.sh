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

# dpkg_install ROOT LOG DEB...: the packages installed in the root file system ROOT as dpkg
# installs them, maintainer scripts and all (in a chroot, which they run in offline: units are
# enabled, nothing is started), dpkg's output appended to LOG; on failure, LOG's last lines on
# stderr and status 1.
dpkg_install() {
    local root=$1 log=$2
    shift 2
    cp "$@" "$root/root/"
    local -a inside=("${@/#*\//\/root\/}")
    if ! chroot "$root" dpkg -i "${inside[@]}" >>"$log" 2>&1; then
        echo "dpkg -i ${*##*/} in $root failed:" >&2
        tail -20 "$log" >&2
        return 1
    fi
    rm -f "${inside[@]/#/$root}"
}
