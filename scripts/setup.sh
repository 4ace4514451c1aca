#!/usr/bin/env bash
# Installs what scripts/demo.sh (and its --quick demo), scripts/test.sh and bench/run need on a Debian 12 machine, as root.
# Idempotent: apt-get update runs only when a package is missing, the Rust musl target and
# components are added only when missing, cargo-nextest, cargo-fuzz and cargo-deb are installed only
# when absent.
# No daemon a package ships is started by the install.
# Run it (bash scripts/setup.sh); it changes nothing that is already in place.
set -euo pipefail

setup_main() {
    local -a wanted=(
        etcd-server etcd-client   # the cluster the demo and bench join
        musl-tools                # musl-gcc: ring's C code for the static x86_64-unknown-linux-musl build
        gcc libc6-dev             # the host linker and C compiler for cargo builds and tests
        openssl                   # the lab's CA, server and client certificates
        curl jq                   # health checks and JSON answers in the demo and bench
        hyperfine time            # the bench's timers (time: /usr/bin/time for peak RSS)
        valgrind qemu-user        # bench/instructions: callgrind counts what each flint process executes; qemu-x86_64 runs it emulated
        procps iproute2           # ps, ss: free loopback addresses and our own processes
        file                      # tells whether the release binary is static
        shellcheck                # lints these scripts in scripts/test.sh
        systemd                   # systemd-analyze verify and security on the units in systemd/
        nix-bin                   # nix-instantiate --parse on the NixOS modules
        debootstrap systemd-container  # a Debian root booted with systemd as PID 1 (tests/systemd)
        tftp-hpa                  # a real TFTP client against flint-boot's TFTP server
        dnsmasq-base              # the site's ordinary DHCP server in the PXE boot test (tests/pxe); ProxyDHCP and TFTP beside flint-boot in bench/storm
        nginx                     # bench/storm: HTTP beside flint-boot; the reference of the HTTP conformance test (its service is not started)
        nftables ethtool          # tests/chaos: loss and partitions (nft), checksum offload off at the delay lines
        prometheus-node-exporter  # node_exporter reading flint health's textfile as its own user (tests/textfile_collector.rs)
        ipxe                      # Debian's iPXE files as installed (ipxe.efi is a link into /boot), served in tests/links.rs
        lzop                      # tests/flow: the root file system image, which the installer stand-in unpacks with busybox
        chromium                  # tests/flow: flint-boot's fleet page in a real browser (headless: its DOM and a screenshot)
        lintian                   # scripts/release.sh: the Debian packages must be lintian-clean
    )
    local -a missing=()
    local pkg
    for pkg in "${wanted[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]})); then
        if ((EUID != 0)); then
            echo "setup: missing Debian packages: ${missing[*]}; run scripts/setup.sh as root" >&2
            return 1
        fi
        echo "setup: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # Some of these packages start a daemon of their own (prometheus-node-exporter on *:9100,
        # etcd-server): the tests and the demo start their own copies on loopback addresses and
        # ports of their own, and need none. A policy-rc.d that denies every start keeps them off
        # while installing, unless the machine already has a policy.
        local policy=/usr/sbin/policy-rc.d made_policy=0 status=0
        if [[ ! -e $policy ]]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy"
            chmod 755 "$policy"
            made_policy=1
        fi
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || status=$?
        if ((made_policy)); then
            rm -f "$policy"
        fi
        ((status == 0)) || return "$status"
    fi

    # The Rust toolchain comes with the machine (rustup); it cannot be fetched from here.
    if ! command -v cargo >/dev/null 2>&1 && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
        export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "setup: cargo not found; flint needs a rustup toolchain (edition 2024) on PATH" >&2
        return 1
    fi
    if command -v rustup >/dev/null 2>&1; then
        if ! rustup target list --installed | grep -qx 'x86_64-unknown-linux-musl'; then
            echo "setup: adding the Rust target x86_64-unknown-linux-musl"
            rustup target add x86_64-unknown-linux-musl
        fi
        local comp
        for comp in rustfmt clippy; do
            if ! rustup component list --installed | grep -q "^${comp}"; then
                echo "setup: adding the Rust component ${comp}"
                rustup component add "$comp"
            fi
        done
    elif ! rustc --print target-libdir --target x86_64-unknown-linux-musl >/dev/null 2>&1; then
        echo "setup: no rustup and no x86_64-unknown-linux-musl standard library" >&2
        return 1
    fi
    if ! cargo nextest --version >/dev/null 2>&1; then
        echo "setup: installing cargo-nextest"
        cargo install cargo-nextest --locked
    fi
    # The fuzz targets (scripts/fuzz.sh).
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "setup: installing cargo-fuzz"
        cargo install cargo-fuzz --locked
    fi
    # The Debian packages (scripts/release.sh). One version, so that a release is the same bytes
    # on every machine that builds it.
    local cargo_deb=3.8.0
    if [[ $(cargo deb --version 2>/dev/null) != *" $cargo_deb"* ]]; then
        echo "setup: installing cargo-deb $cargo_deb"
        cargo install cargo-deb --version "$cargo_deb" --locked
    fi
}

setup_main "$@"
