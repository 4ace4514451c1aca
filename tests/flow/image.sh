#!/usr/bin/env bash
# Prints the path of a folder holding what the flow (tests/flow/run.sh) boots besides flint's own
# binaries, built once into /var/tmp/flint-flow/<key> and reused:
#   vmlinux            Debian's kernel, uncompressed (QEMU boots it as a PVH ELF, ~3 s sooner);
#   modules/           the modules a node needs before its root is mounted (virtio's disk and
#                      network, ext4), from the same kernel package;
#   boot.cpio.gz       the initramfs that boots an installed node from /dev/vda (boot-init.sh);
#   installer.cpio.gz  the installer stand-in's initramfs (installer-init.sh, udhcpc.sh);
#   base/              a link to the Debian 12 root of tests/systemd/make-root.sh (systemd, etcd).
# The key names the kernel and busybox versions (tests/pxe/lab-setup.sh's folder), the base root
# and these scripts, so a change to any of them makes a new folder.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=/var/tmp/flint-flow
say() { echo "image.sh: $*" >&2; }

lab=$("$here/../pxe/lab-setup.sh")
base=$("$here/../systemd/make-root.sh")
kernel=$(sed -n 's/^\(linux-image-[^=]*\)=.*/\1/p' "$lab/versions")
[[ -n $kernel ]] || { say "no kernel package in $lab/versions"; exit 1; }
release=${kernel#linux-image-}
key=$(cat "$lab/versions" <(echo "$base") "$here/image.sh" "$here/boot-init.sh" \
    "$here/installer-init.sh" "$here/udhcpc.sh" "$here/../lib/cache.sh" | sha256sum | cut -c1-16)

# build OUT: fills OUT; its scratch files go beside it, in the build folder cache_folder removes.
build() {
    local out=$1 scratch
    scratch=$(dirname "$1")
    say "building $cache/$key ($kernel)"
    # The kernel package once more, for its modules (lab-setup.sh keeps only /boot).
    (cd "$scratch" && apt-get download -qq -o APT::Sandbox::User=root "$kernel=$(sed -n "s/^$kernel=//p" "$lab/versions")")
    local modules=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk
        failover net_failover virtio_net crc16 mbcache jbd2 crc32c_generic ext4)
    mkdir -p "$out/modules" "$scratch/deb"
    dpkg-deb --fsys-tarfile "$scratch"/linux-image-*.deb | tar -x -C "$scratch/deb" "./lib/modules/$release/kernel"
    local module found
    for module in "${modules[@]}"; do
        found=$(find "$scratch/deb/lib/modules/$release/kernel" -name "$module.ko" | head -1)
        [[ -n $found ]] || { say "no $module.ko in $kernel"; return 1; }
        cp "$found" "$out/modules/"
    done

    # The uncompressed kernel: the xz stream inside vmlinuz, from its magic on (as the kernel's
    # own scripts/extract-vmlinux finds it); xz ends with an error at the padding after the stream.
    local vmlinuz offset
    vmlinuz=$(readlink -f "$lab/vmlinuz")
    offset=$(grep -abo $'\xfd7zXZ' "$vmlinuz" | head -1 | cut -d: -f1)
    [[ -n $offset ]] || { say "no xz stream in $vmlinuz"; return 1; }
    tail -c +"$((offset + 1))" "$vmlinuz" | xz -dc >"$out/vmlinux" 2>/dev/null || true
    [[ $(head -c 4 "$out/vmlinux" | od -An -c | tr -d ' ') == 177ELF ]] \
        || { say "what came out of $vmlinuz is not an ELF kernel"; return 1; }

    initramfs "$out" "$scratch" boot "$here/boot-init.sh"
    initramfs "$out" "$scratch" installer "$here/installer-init.sh" "$here/udhcpc.sh"
    ln -s "$base" "$out/base"
    echo "$release" >"$out/release"
}

# initramfs OUT SCRATCH NAME INIT [FILE...]: OUT/NAME.cpio.gz: busybox, the modules, INIT as
# /init, the files in /.
initramfs() {
    local out=$1 dir=$2/$3 name=$3 init=$4
    shift 4
    mkdir -p "$dir"/{bin,dev,proc,sys,modules}
    cp "$lab/bin/busybox" "$dir/bin/busybox"
    cp "$out/modules/"*.ko "$dir/modules/"
    install -m 755 "$init" "$dir/init"
    local file
    for file in "$@"; do install -m 755 "$file" "$dir/$(basename "$file")"; done
    (cd "$dir" && find . | "$lab/bin/busybox" cpio -o -H newc 2>/dev/null | gzip -1) >"$out/$name.cpio.gz"
}

# shellcheck source=tests/lib/cache.sh
source "$here/../lib/cache.sh"
cache_folder "$cache" "$key" build
