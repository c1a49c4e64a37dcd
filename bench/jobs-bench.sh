#!/bin/bash
# The job library's costs, side by side (as root: drops the page cache):
#   1. copy of a 1 GiB raw file of random data, without and with --checksum
#      (sha256), each taking turns in ROUNDS rounds;
#   2. sync --type=ALL of a 4-volume chain (256 MiB of data per layer) with
#      --parallel=1 and --parallel=4, taking turns.
# Prints every run and the medians.  Usage: bench/jobs-bench.sh [BUILD_DIR] [DIR]
set -euo pipefail
BUILD=${1:-build}
LSM=$(cd "$BUILD" && pwd)/lsm-sync
DIR=${2:-$(mktemp -d /var/tmp/lsm-jobs-bench.XXXXXX)}
ROUNDS=${ROUNDS:-3}
mkdir -p "$DIR"
cd "$DIR"
trap 'cd /; rm -rf "$DIR"' EXIT

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
ms() { local t0 t1; t0=$(date +%s%N); "$@" >/dev/null; t1=$(date +%s%N); echo $(((t1 - t0) / 1000000)); }
median() { printf '%s\n' "$@" | sort -n | sed -n "$((($# + 1) / 2))p"; }

head -c 1G /dev/urandom > src.raw
plain=() sum=()
for ((i = 0; i < ROUNDS; i++)); do
    rm -f d.raw; drop; plain+=("$(ms "$LSM" copy -q src.raw d.raw)")
    rm -f d.raw; drop; sum+=("$(ms "$LSM" copy -q --checksum src.raw d.raw)")
done
echo "copy 1 GiB:            runs ${plain[*]} ms, median $(median "${plain[@]}") ms"
echo "copy 1 GiB --checksum: runs ${sum[*]} ms, median $(median "${sum[@]}") ms"

rm -f src.raw d.raw
mkdir -p chain
head -c 256M /dev/urandom > chain/v0.raw
qemu-img create -q -f qcow2 -b v0.raw -F raw chain/v1.qcow2 1G
qemu-img create -q -f qcow2 -b v1.qcow2 -F qcow2 chain/v2.qcow2
qemu-img create -q -f qcow2 -b v2.qcow2 -F qcow2 chain/v3.qcow2
for v in 1 2 3; do   # 256 MiB of data per layer, each at its own place
    qemu-io -f qcow2 -c "write -P $v $((v * 256))M 256M" chain/v$v.qcow2 >/dev/null
done
p1=() p4=()
for ((i = 0; i < ROUNDS; i++)); do
    for par in 1 4; do
        rm -rf dst; mkdir dst
        "$LSM" clone-structure chain/v3.qcow2 --dst-dir dst >/dev/null
        drop
        t=$(ms "$LSM" sync --type=ALL --parallel=$par chain/v3.qcow2 dst/v3.qcow2)
        if ((par == 1)); then p1+=("$t"); else p4+=("$t"); fi
    done
done
echo "sync 4 volumes --parallel=1: runs ${p1[*]} ms, median $(median "${p1[@]}") ms"
echo "sync 4 volumes --parallel=4: runs ${p4[*]} ms, median $(median "${p4[@]}") ms"
