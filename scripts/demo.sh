#!/usr/bin/env bash
# README command one: the deployment flow, bare machines to a validated cluster, on this
# machine (tests/flow/run.sh): four QEMU machines PXE-boot from flint-boot, install, boot from their
# disks and form etcd, chainfire, flaredb and IAM through flint's first-boot units, then a timeline.
#
#   sudo scripts/demo.sh            the whole flow (about 5 minutes on 2 cores, more the first time:
#                                   it builds a Debian root and fetches QEMU's packages, then caches them)
#   sudo scripts/demo.sh --quick    the etcd-only demo on loopback, under a minute (scripts/demo-quick.sh)
#
# Debian 12, as root; installs what it needs through scripts/setup.sh. Exits non-zero when a step
# fails; stops every machine and process it started and removes its namespaces and files.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

case ${1:-} in
--quick) exec bash scripts/demo-quick.sh ;;
"") ;;
*)
    echo "usage: scripts/demo.sh [--quick]" >&2
    exit 64
    ;;
esac
((EUID == 0)) || { echo "scripts/demo.sh: run it as root (network namespaces, a bridge, VMs)" >&2; exit 1; }

printf '== Installing what the flow needs (scripts/setup.sh)\n'
bash scripts/setup.sh
printf '\n== Building the release (scripts/release.sh): static flint and flint-boot, their Debian packages\n'
scripts/release.sh
printf '\n== Building the test server that plays chainfire, flaredb and IAM\n'
cargo build --release --locked --target x86_64-unknown-linux-musl -p flint-testserver
exec tests/flow/run.sh target/release-dist target/x86_64-unknown-linux-musl/release/flint-testserver
