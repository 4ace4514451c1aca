#!/usr/bin/env bash
# Prints the path of a Debian 12 root file system with systemd (and etcd) for the tests that boot
# flint's units under a real systemd in a container. Built once with debootstrap from Debian's
# mirror into /var/tmp/flint-systemd-root/ and reused: each test copies it before booting.
set -euo pipefail

version=bookworm-v2
cache=/var/tmp/flint-systemd-root
root=$cache/$version
# udev: systemd-networkd configures a link only once udev has seen it (the flow's VMs, tests/flow);
# in a container it does not run.
packages=systemd,systemd-sysv,udev,kmod,dbus,etcd-server,etcd-client,iproute2,procps

if [[ -f $root/.complete ]]; then
    echo "$root"
    exit 0
fi
if ! command -v debootstrap >/dev/null || ! command -v systemd-nspawn >/dev/null; then
    echo "make-root.sh: needs debootstrap and systemd-nspawn (scripts/setup.sh installs them)" >&2
    exit 1
fi
mkdir -p "$cache"
build=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$build"' EXIT
echo "make-root.sh: debootstrap $version into $build (about a minute)" >&2
debootstrap --variant=minbase --include="$packages" bookworm "$build/root" http://deb.debian.org/debian \
    >"$build/debootstrap.log" 2>&1 || {
    tail -20 "$build/debootstrap.log" >&2
    exit 1
}
# The image's own etcd must not start on its own: the tests start it when they mean to.
rm -f "$build/root/etc/systemd/system/multi-user.target.wants/etcd.service"
# No getty or login prompts in a test container.
chroot "$build/root" systemctl mask console-getty.service getty@.service >/dev/null 2>&1 || true
touch "$build/root/.complete"
rm -rf "$root"
mv "$build/root" "$root"
echo "$root"
