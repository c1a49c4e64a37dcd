#!/bin/bash
# Install (only if missing) the Debian 12 packages lsm-sync needs.
#   bash scripts/deps.sh           what building and the demo need
#   bash scripts/deps.sh --tests   that plus what the test suite adds (a second
#                                  kernel, libvirtd, QEMU system, LVM, ...)
# Idempotent: a second run installs nothing and does not touch the network.
set -euo pipefail

# Building (with every optional feature) and scripts/demo.sh.
PACKAGES=(
    build-essential meson ninja-build pkg-config python3
    liburing-dev libaio-dev libvirt-dev libdevmapper-dev
    libjson-c-dev zlib1g-dev libzstd-dev libnbd-dev libsodium-dev libssl-dev
    qemu-utils
)

# What scripts/test.sh adds.
TEST_PACKAGES=(
    # sanitizer and fuzzing builds, unit tests, the independent libqcow reader
    clang libclang-rt-14-dev libcmocka-dev libqcow-dev libqcow-utils
    # functional tests and benchmarks
    libnbd-bin nbdkit fio xfsprogs jq time man-db strace
    # the debian-package test (dpkg-buildpackage)
    debhelper dpkg-dev fakeroot
    # replication through libvirt: a real libvirtd running QEMU domains
    libxml2-dev libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86
    # LVM and device-mapper tests: the distribution kernel booted under QEMU
    # (tests/vm/vm-run.sh), since the host kernel has no device-mapper
    linux-image-amd64 busybox-static lvm2 dmsetup
)

case ${1:-} in
'') ;;
--tests) PACKAGES+=("${TEST_PACKAGES[@]}") ;;
*) echo "usage: bash $0 [--tests]" >&2; exit 2 ;;
esac

missing=()
for p in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
    [[ $status == ii* ]] || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
    echo "deps: all ${#PACKAGES[@]} packages already installed"
    exit 0
fi

if ((EUID != 0)); then
    echo "deps: missing packages: ${missing[*]}; run this as root (bash $0), or with sudo (sudo bash $0)" >&2
    exit 1
fi

echo "deps: apt-get update && apt-get install ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
