#!/usr/bin/env bash
# Prints the path of a folder holding what the PXE boot test (tests/pxe/boot-test.sh) runs besides
# flint-boot and dnsmasq: QEMU with its firmware (SeaBIOS, iPXE NIC ROMs, OVMF), iPXE's
# undionly.kpxe and ipxe.efi, Debian's kernel and a static busybox. Built once from Debian's
# packages into /var/tmp/flint-pxe-lab/<key> and reused; the key names the package versions, so
# a new kernel or QEMU from the mirror makes a new folder.
#
# Why extracted and not installed: `apt-get install qemu-system-x86` removes the machine's
# qemu-utils 10 from backports (its Breaks: qemu-system-common << 8.0). So the debs are unpacked
# with dpkg-deb -x into the folder, and only the shared libraries QEMU links against are
# installed, after `apt-get -s` has shown that doing so removes and upgrades nothing.
set -euo pipefail

cache=/var/tmp/flint-pxe-lab
# Bump when what goes into the folder changes, so that old folders are not reused.
revision=1
# Unpacked whole into the folder (boot-test.sh points QEMU at the firmware in there with -L).
debs=(qemu-system-x86 qemu-system-common qemu-system-data seabios ipxe-qemu ipxe ovmf busybox-static)

say() { echo "lab-setup.sh: $*" >&2; }

# The kernel package that Debian's linux-image-amd64 currently points at (linux-image-6.1.0-NN-amd64).
kernel_package() {
    apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -1
}

# versions: one "package=version" line per package, or nothing when apt's lists lack one.
versions() {
    local kernel out
    kernel=$(kernel_package)
    [[ -n $kernel ]] || return 0
    # One apt-cache call for all of them (each costs half a second).
    out=$(apt-cache policy "${debs[@]}" "$kernel" 2>/dev/null | awk '
        /^[^ ]/ { pkg = substr($1, 1, length($1) - 1) }
        $1 == "Candidate:" && $2 != "(none)" { print pkg "=" $2 }')
    (($(wc -l <<<"$out") == ${#debs[@]} + 1)) && echo "$out"
    return 0
}

# find_lab: sets $wanted and $lab, the folder for the versions in apt's lists (empty when the
# lists lack a package).
find_lab() {
    wanted=$(versions)
    lab=""
    [[ -n $wanted ]] && lab=$cache/r$revision-$(sha256sum <<<"$wanted" | cut -c1-16)
    return 0
}

find_lab
if [[ -n $lab && -f $lab/.complete ]]; then
    echo "$lab"
    exit 0
fi

mkdir -p "$cache"
# One builder at a time; a second run waits, then finds the folder complete.
exec 9>"$cache/.lock"
flock -w 600 9 || { say "another lab-setup.sh has held $cache/.lock for 10 minutes"; exit 1; }
# Building is rare, so apt's lists are refreshed first: a fresh machine has none, and old ones
# name debs that a security update has since replaced on the mirror.
say "apt-get update"
apt-get update -qq >&2
find_lab
[[ -n $lab ]] || { say "cannot find ${debs[*]} and linux-image-amd64 in apt's lists"; exit 1; }
if [[ -f $lab/.complete ]]; then
    echo "$lab"
    exit 0
fi

# With the lock held no other build runs: a build folder left here was cut short (SIGKILL).
rm -rf "$cache"/build.*
build=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$build"' EXIT
say "building $lab from: $(tr '\n' ' ' <<<"$wanted")"
mkdir "$build/debs" "$build/lab"
mapfile -t specs <<<"$wanted"
# The build folder is root's alone (mktemp -d), so apt downloads as root instead of its _apt user.
(cd "$build/debs" && apt-get download -qq -o APT::Sandbox::User=root "${specs[@]}" >&2)

# The shared libraries behind qemu-system-x86_64: its deb's Depends, less the packages unpacked
# here, less what is installed already (naming an installed library to apt-get would upgrade it).
qemu_deb=$(echo "$build"/debs/qemu-system-x86_*.deb)
libs=()
while read -r dep; do
    dep=${dep%%[ |(]*}
    case $dep in qemu-system-* | seabios | ipxe-qemu) continue ;; esac
    if ! dpkg-query -W -f='${Status}' "$dep" 2>/dev/null | grep -q 'install ok installed'; then
        libs+=("$dep")
    fi
done < <(dpkg-deb -f "$qemu_deb" Depends | tr ',' '\n' | sed 's/^ *//')
if ((${#libs[@]})); then
    plan=$(apt-get -s install --no-install-recommends "${libs[@]}")
    # "Remv pkg" is a removal and "Inst pkg [old-version] ..." an upgrade: either changes the machine.
    if grep -E '^Remv |^Inst [^ ]+ \[' <<<"$plan" >&2; then
        say "installing QEMU's libraries (${libs[*]}) would remove or upgrade the packages above; not doing it"
        exit 1
    fi
    say "installing QEMU's libraries: ${libs[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${libs[@]}" >/dev/null
fi

for deb in "$build"/debs/*.deb; do
    case $(dpkg-deb -f "$deb" Package) in
    linux-image-*)
        # Only the kernel; its 300 MB of modules are not needed (virtio-net is never probed: iPXE
        # and the firmware do the network part, and the initramfs only prints a line).
        dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$build/lab" ./boot/
        ln -s "$(cd "$build/lab" && echo boot/vmlinuz-*)" "$build/lab/vmlinuz"
        ;;
    *) dpkg-deb -x "$deb" "$build/lab" ;;
    esac
done
rm -rf "$build/lab/usr/share/doc" "$build/lab/usr/share/man"
# Some links are absolute (ipxe's /usr/lib/ipxe/ipxe.efi -> /boot/ipxe.efi): point them inside.
while IFS= read -r -d '' link; do
    target=$(readlink "$link")
    if [[ $target == /* ]]; then
        ln -sfnr "$build/lab$target" "$link"
    fi
done < <(find "$build/lab" -type l -print0)
printf '%s\n' "$wanted" >"$build/lab/versions"

if ! "$build/lab/usr/bin/qemu-system-x86_64" --version >/dev/null 2>&1; then
    ldd "$build/lab/usr/bin/qemu-system-x86_64" | grep 'not found' >&2 || true
    say "the unpacked qemu-system-x86_64 does not run"
    exit 1
fi
touch "$build/lab/.complete"
rm -rf "$lab"
mv "$build/lab" "$lab"
echo "$lab"
