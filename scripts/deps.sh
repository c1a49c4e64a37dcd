#!/bin/bash
# Install (only if missing) every Debian 12 package that building lsm-sync,
# running its demo and its test suite need.  Idempotent: a second run installs
# nothing and does not touch the network.
set -euo pipefail

PACKAGES=(
    # build
    build-essential meson ninja-build pkg-config clang libclang-rt-14-dev
    liburing-dev libaio-dev libvirt-dev libdevmapper-dev libqcow-dev
    libcmocka-dev libjson-c-dev zlib1g-dev libzstd-dev libnbd-dev
    libsodium-dev libssl-dev
    # tests, demo, benchmarks
    libqcow-utils libnbd-bin nbdkit qemu-utils fio xfsprogs python3 jq time
    # replication through libvirt: a real libvirtd running QEMU domains
    libxml2-dev libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86
    # LVM and device-mapper tests: the distribution kernel booted under QEMU
    # (tests/vm/vm-run.sh), since the host kernel has no device-mapper
    linux-image-amd64 busybox-static lvm2 dmsetup
)

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
