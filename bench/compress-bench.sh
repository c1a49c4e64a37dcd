#!/bin/bash
# Compressed output benchmark: `lsm-sync copy -c -O qcow2` against
# `qemu-img convert -c -O qcow2` on the same source, each with its default
# cache modes (lsm-sync: O_DIRECT; qemu-img: the page cache) and with the
# other's (lsm-sync -t writeback; qemu-img -t none -T none, as vdsm runs it): a 1 GiB qcow2 with 512 MiB of data, three quarters text-like
# (compresses about 1:3 with zlib), one quarter random (does not compress:
# stored as data clusters), in 4 MiB pieces with holes between them.
# zlib and zstd (when qemu-img has it), 64 KiB clusters.  Every run starts
# with `echo 3 > /proc/sys/vm/drop_caches`; the tools take turns in each
# round; medians of N rounds of wall time and of CPU time (user + system),
# the output size of each tool, and the ratios to qemu-img.
#
#   bench/compress-bench.sh [--lsm-sync PATH] [--dir DIR] [--runs N]
#
# Needs root (drop_caches), qemu-img, qemu-io, python3, /usr/bin/time.
set -euo pipefail
export LC_ALL=C

LSM=${LSM_SYNC:-}
DIR=${BENCH_DIR:-/var/tmp/lsm-compress-bench}
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
[[ -x $LSM ]] || { echo "compress-bench: $LSM is not an executable" >&2; exit 1; }
((EUID == 0)) || { echo "compress-bench: needs root to drop the page cache" >&2; exit 1; }
for c in qemu-img qemu-io python3 /usr/bin/time; do
    command -v "$c" >/dev/null || { echo "compress-bench: '$c' not found" >&2; exit 1; }
done

mkdir -p "$DIR"
cd "$DIR"
if [[ ! -s src.qcow2 ]]; then
    echo "compress-bench: making src.qcow2 (1 GiB, 512 MiB of data) in $DIR" >&2
    python3 - <<'EOF'
import random
r = random.Random(1)
words = [b"migration", b"qcow2", b"cluster", b"refcount", b"volume", b"lsm-sync", b"block",
         b"\n", b"0123456789", b"storage", b"domain", b"image"]
out = bytearray()
while len(out) < 4 << 20:
    out += b" ".join(r.choice(words) for _ in range(16)) + bytes([r.randrange(256)])
open("text.bin", "wb").write(out[:4 << 20])
EOF
    qemu-img create -q -f qcow2 src.qcow2 1G
    for ((i = 0; i < 128; i++)); do
        if ((i % 4 == 3)); then
            head -c 4M /dev/urandom >piece.bin
        else
            cp text.bin piece.bin
            printf '%08d' "$i" | dd of=piece.bin bs=8 count=1 conv=notrunc status=none
        fi
        qemu-io -f qcow2 -c "write -s piece.bin $((i * 8))M 4M" src.qcow2 >/dev/null
    done
    rm -f piece.bin
fi

zstd_ok=1
qemu-img create -q -f qcow2 -o compression_type=zstd probe.qcow2 1M 2>/dev/null || zstd_ok=0
rm -f probe.qcow2

drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# run NAME OUT CMD...: one timed run after dropping the cache; appends
# "NAME WALL_MS CPU_MS BYTES" (the output OUT's size).
run() {
    local name=$1 out=$2 t0 t1
    shift 2
    rm -f "$out"
    drop
    t0=$(date +%s%N)
    /usr/bin/time -f '%U %S' -o time.txt "$@" >/dev/null
    t1=$(date +%s%N)
    sync
    read -r u s <time.txt
    echo "$name $(( (t1 - t0) / 1000000 )) $(python3 -c "print(round(($u + $s) * 1000))") $(stat -c %s "$out")" >>samples.txt
    rm -f "$out"
}

types=(zlib)
((zstd_ok)) && types+=(zstd)
: >samples.txt
for ((r = 1; r <= RUNS; r++)); do
    for t in "${types[@]}"; do
        run "lsm-$t" out.qcow2 "$LSM" copy -q -c -O qcow2 -o "compression_type=$t" src.qcow2 out.qcow2
        run "qemu-none-$t" out.qcow2 qemu-img convert -t none -T none -c -O qcow2 \
            -o "compression_type=$t" src.qcow2 out.qcow2
        run "lsm-wb-$t" out.qcow2 "$LSM" copy -q -c -t writeback -T writeback -O qcow2 \
            -o "compression_type=$t" src.qcow2 out.qcow2
        run "qemu-$t" out.qcow2 qemu-img convert -c -O qcow2 -o "compression_type=$t" src.qcow2 out.qcow2
    done
done
run plain-lsm out.qcow2 "$LSM" copy -q -O qcow2 src.qcow2 out.qcow2

python3 - "${types[@]}" <<'EOF'
import sys, statistics
rows = {}
for line in open("samples.txt"):
    n, w, c, b = line.split()
    rows.setdefault(n, []).append((int(w), int(c), int(b)))
med = {n: [statistics.median(x[i] for x in v) for i in range(3)] for n, v in rows.items()}
print("%-14s %10s %10s %12s   %s" % ("tool", "wall_ms", "cpu_ms", "out_bytes", "wall samples"))
for n, v in rows.items():
    m = med[n]
    print("%-14s %10d %10d %12d   %s" % (n, m[0], m[1], m[2], " ".join(str(x[0]) for x in v)))
for t in sys.argv[1:]:
    l, qn, lw, q = med["lsm-" + t], med["qemu-none-" + t], med["lsm-wb-" + t], med["qemu-" + t]
    print("%s: O_DIRECT: qemu-img/lsm-sync wall %.2f, CPU %.0f%%; page cache: qemu-img/lsm-sync "
          "wall %.2f, CPU %.0f%% (lsm-sync's CPU as a share of qemu-img's); output %.4f of "
          "qemu-img's size (uncompressed copy %d bytes)"
          % (t, qn[0] / l[0], 100 * l[1] / qn[1], q[0] / lw[0], 100 * lw[1] / q[1], l[2] / q[2],
             med["plain-lsm"][2]))
EOF
