#!/bin/bash
# Checksum benchmark: `lsm-sync checksum` of a 2 GiB qcow2 with 1 GiB of
# data (1 MiB written with a byte pattern, 1 MiB left unallocated, in turn;
# the hashing speed does not depend on the bytes), and of its
# raw conversion (sparse), against `sha256sum` of that raw file.  Every run
# starts with `echo 3 > /proc/sys/vm/drop_caches`; the tools take turns in
# each round; medians of N rounds.  See docs/checksum.md.
#
#   bench/checksum-bench.sh [--lsm-sync PATH] [--dir DIR] [--runs N]
#
# Needs root (drop_caches), qemu-img, qemu-io.
set -euo pipefail
export LC_ALL=C

LSM=${LSM_SYNC:-}
DIR=${BENCH_DIR:-/var/tmp/lsm-checksum-bench}
RUNS=3
while (($#)); do
    case $1 in
    --lsm-sync) LSM=$2; shift 2 ;;
    --dir) DIR=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    *) echo "usage: $0 [--lsm-sync PATH] [--dir DIR] [--runs N]" >&2; exit 2 ;;
    esac
done
: "${LSM:=$(cd "$(dirname "$0")/.." && pwd)/build/lsm-sync}"
[[ -x $LSM ]] || { echo "checksum-bench: $LSM is not an executable" >&2; exit 1; }
((EUID == 0)) || { echo "checksum-bench: needs root to drop the page cache" >&2; exit 1; }
for c in qemu-img qemu-io sha256sum; do
    command -v "$c" >/dev/null || { echo "checksum-bench: '$c' not found" >&2; exit 1; }
done

mkdir -p "$DIR"
cd "$DIR"
if [[ ! -s data.qcow2 || ! -s data.raw ]]; then
    echo "checksum-bench: making data.qcow2 (2 GiB, 1 GiB of data) in $DIR" >&2
    rm -f data.qcow2 data.raw
    qemu-img create -q -f qcow2 data.qcow2 2G
    for ((i = 0; i < 1024; i += 64)); do
        args=()
        for ((k = i; k < i + 64; k++)); do
            args+=(-c "write -P $(((k * 7 + 1) % 255 + 1)) $((k * 2 << 20)) 1M")
        done
        qemu-io -f qcow2 "${args[@]}" data.qcow2 >/dev/null
    done
    qemu-img convert -O raw data.qcow2 data.raw
fi

drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# run NAME CMD...: one timed run after dropping the cache; appends "NAME SECONDS".
run() {
    local name=$1 t0 t1
    shift
    drop
    t0=$(date +%s%N)
    "$@" >/dev/null
    t1=$(date +%s%N)
    echo "$name $(( (t1 - t0) / 1000000 ))" >>samples.txt
}

: >samples.txt
for ((r = 1; r <= RUNS; r++)); do
    run lsm-checksum-qcow2 "$LSM" checksum data.qcow2
    run lsm-checksum-raw "$LSM" checksum data.raw
    run lsm-checksum-blake2b-qcow2 "$LSM" checksum --algorithm=blake2b data.qcow2
    run sha256sum-raw sha256sum data.raw
done

printf '%-28s %10s   %s\n' tool median_ms samples_ms
for name in lsm-checksum-qcow2 lsm-checksum-raw lsm-checksum-blake2b-qcow2 sha256sum-raw; do
    mapfile -t s < <(awk -v n="$name" '$1 == n { print $2 }' samples.txt | sort -n)
    printf '%-28s %10s   %s\n' "$name" "${s[$(( ${#s[@]} / 2 ))]}" "${s[*]}"
done
