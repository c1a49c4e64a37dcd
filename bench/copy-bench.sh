#!/bin/bash
# Copy benchmark: lsm-sync copy against qemu-img convert -t none -T none -W
# -m 16, nbdcopy (through qemu-nbd for qcow2) and dd iflag=direct
# oflag=direct, plus the fio copy ceiling.  See docs/bench-copy.md.
#
#   bench/copy-bench.sh [--lsm-sync PATH] [--dir DIR] [--runs N] [--scale small|full]
#                       [--cases "a b c d"] [--tools "lsm lsm-guest qemu nbdcopy dd"]
#                       [--lsm-b PATH]   (tools "lsm-b", "lsm-b-guest": a second build,
#                                         for before/after)
#
# Images (full scale; small scale divides sizes by 8):
#   a  8 GiB qcow2, 50% random data in runs (nbdkit sparse-random seed=1)
#   b  4 GiB qcow2, 1.5 GiB of 64 KiB clusters written in shuffled order
#   c  4 GiB raw, fully allocated (random data)
#   d  8 TiB empty qcow2
# Every run: destination removed, page cache dropped, tools interleaved in
# each round; medians of N rounds.  Output: a table on stdout and raw
# samples in DIR/samples.tsv.  Needs root (drop_caches), qemu-img, qemu-io,
# qemu-nbd, nbdkit, nbdcopy, fio, /usr/bin/time.
set -euo pipefail
export LC_ALL=C

LSM=${LSM_SYNC:-}
LSM_B=
DIR=${BENCH_DIR:-/var/tmp/lsm-copy-bench}
RUNS=${RUNS:-3}
SCALE=${SCALE:-full}
CASES=${CASES:-"a b c d"}
TOOLS=${TOOLS:-"lsm lsm-guest qemu nbdcopy dd"}
KEEP=${KEEP:-1}   # keep source images between invocations

while (($#)); do
    case $1 in
    --lsm-sync) LSM=$2; shift 2 ;;
    --lsm-b) LSM_B=$2; shift 2 ;;
    --dir) DIR=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --scale) SCALE=$2; shift 2 ;;
    --cases) CASES=$2; shift 2 ;;
    --tools) TOOLS=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
if [[ -z $LSM ]]; then
    here=$(cd "$(dirname "$0")/.." && pwd)
    for b in build-copy build; do
        [[ -x $here/$b/lsm-sync ]] && { LSM=$here/$b/lsm-sync; break; }
    done
fi
[[ -x ${LSM:-} ]] || { echo "lsm-sync not found: give --lsm-sync PATH" >&2; exit 2; }
for c in qemu-img qemu-io qemu-nbd nbdkit nbdcopy fio python3 /usr/bin/time; do
    command -v "$c" >/dev/null || { echo "missing $c" >&2; exit 2; }
done
[[ -w /proc/sys/vm/drop_caches ]] || { echo "need root to drop the page cache" >&2; exit 2; }

case $SCALE in
full) DIV=1 ;;
small) DIV=8 ;;
*) echo "--scale small|full" >&2; exit 2 ;;
esac
G=$((1 << 30))
mkdir -p "$DIR"
cd "$DIR"
SAMPLES=$DIR/samples.tsv
: >"$SAMPLES"

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# ---- images ----
mk_a() {
    local f=a-$SCALE.qcow2
    [[ -s $f && $KEEP == 1 ]] && return 0
    log "making $f (sparse-random, $((8 / DIV)) GiB)"
    rm -f "$f"
    nbdkit -U - sparse-random size=$((8 * G / DIV)) percent=50 random-content=true seed=1 \
        --run "qemu-img convert -W -m 16 -f raw -O qcow2 \"\$uri\" $f"
}
mk_b() {
    local f=b-$SCALE.qcow2 size=$((4 * G / DIV)) data=$((3 * G / 2 / DIV))
    [[ -s $f && $KEEP == 1 ]] && return 0
    log "making $f (shuffled 64K clusters, $((size >> 20)) MiB, $((data >> 20)) MiB data)"
    rm -f "$f"
    qemu-img create -q -f qcow2 "$f" "$size"
    python3 - "$size" "$data" >b-cmds.txt <<'EOF'
import random, sys
size, data = int(sys.argv[1]), int(sys.argv[2])
c = 65536
rng = random.Random(1)
for i, k in enumerate(rng.sample(range(size // c), data // c)):
    print("write -q -P %d %d %d" % (i % 251 + 1, k * c, c))
EOF
    qemu-io -f qcow2 "$f" <b-cmds.txt >/dev/null
    rm -f b-cmds.txt
}
mk_c() {
    local f=c-$SCALE.raw
    [[ -s $f && $KEEP == 1 ]] && return 0
    log "making $f (random, fully allocated, $((4 / DIV)) GiB)"
    rm -f "$f"
    fio --name=fill --filename="$f" --size=$((4 * G / DIV)) --rw=write --bs=1M --direct=1 \
        --ioengine=io_uring --iodepth=16 --refill_buffers --output=/dev/null
}
mk_d() {
    local f=d.qcow2
    [[ -s $f ]] || qemu-img create -q -f qcow2 "$f" 8T
}

src_of() {
    case $1 in a) echo a-$SCALE.qcow2 ;; b) echo b-$SCALE.qcow2 ;; c) echo c-$SCALE.raw ;; d) echo d.qcow2 ;; esac
}
fmt_of() { [[ $1 == c ]] && echo raw || echo qcow2; }

data_bytes() {
    qemu-img map --output=json "$1" | python3 -c '
import json, sys
print(sum(e["length"] for e in json.load(sys.stdin) if e["data"]))'
}

# ---- one timed run: TOOL CASE -> appends "case tool wall user sys maxrss_kb" ----
run_one() {
    local tool=$1 cs=$2 src fmt out
    src=$(src_of "$cs")
    fmt=$(fmt_of "$cs")
    out=out.$fmt
    rm -f out.raw out.qcow2
    local cmd
    case $tool in
    lsm) cmd=("$LSM" copy -f "$fmt" -O "$fmt" "$src" "$out") ;;
    lsm-guest) cmd=("$LSM" copy --no-physical -f "$fmt" -O "$fmt" "$src" "$out") ;;
    lsm-b) cmd=("${LSM_B:?--lsm-b PATH is needed for tool lsm-b}" copy -f "$fmt" -O "$fmt" "$src" "$out") ;;
    lsm-b-guest) cmd=("${LSM_B:?--lsm-b PATH is needed for tool lsm-b-guest}" copy --no-physical -f "$fmt" -O "$fmt" "$src" "$out") ;;
    lsm-raw) out=out.raw; cmd=("$LSM" copy -f "$fmt" -O raw "$src" "$out") ;;
    qemu) cmd=(qemu-img convert -t none -T none -W -m 16 -f "$fmt" -O "$fmt" "$src" "$out") ;;
    qemu-raw) out=out.raw; cmd=(qemu-img convert -t none -T none -W -m 16 -f "$fmt" -O raw "$src" "$out") ;;
    nbdcopy)
        out=out.raw
        if [[ $fmt == qcow2 ]]; then
            truncate -s 0 "$out"
            cmd=(nbdcopy --flush -- "[" qemu-nbd -r -t -f qcow2 --cache=none --aio=native "$src" "]" "$out")
        else
            cmd=(nbdcopy --flush "$src" "$out")
        fi ;;
    dd) out=out.raw; cmd=(dd if="$src" of="$out" bs=1M iflag=direct oflag=direct conv=fsync status=none) ;;
    *) echo "unknown tool $tool" >&2; return 1 ;;
    esac
    drop
    local tf=time.out rc=0
    /usr/bin/time -f "%e %U %S %M" -o "$tf" "${cmd[@]}" >/dev/null 2>run.err || rc=$?
    if ((rc != 0)); then
        log "$tool $cs failed ($rc): $(head -n2 run.err)"
        printf '%s\t%s\tFAIL\n' "$cs" "$tool" >>"$SAMPLES"
        return 0
    fi
    read -r wall user sys rss <"$tf"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$cs" "$tool" "$wall" "$user" "$sys" "$rss" >>"$SAMPLES"
    log "$cs $tool: ${wall}s user ${user}s sys ${sys}s rss ${rss}KB"
    rm -f out.raw out.qcow2
}

# The 8 TiB case: wall time in ms (/usr/bin/time's 10 ms is too coarse)
# with the page cache dropped ("ms", includes loading the binary and its
# shared libraries from disk) and warm ("warm-ms"), and for lsm-sync the
# engine's own time from --output=json ("engine-ms").
run_fast() {
    local tool=$1 t0 t1 cmd warm
    case $tool in
    lsm) cmd=("$LSM" copy --output=json -O qcow2 d.qcow2 out.qcow2) ;;
    lsm-guest) cmd=("$LSM" copy --output=json --no-physical -O qcow2 d.qcow2 out.qcow2) ;;
    lsm-b) cmd=("${LSM_B:?--lsm-b PATH is needed for tool lsm-b}" copy --output=json -O qcow2 d.qcow2 out.qcow2) ;;
    qemu) cmd=(qemu-img convert -t none -T none -W -m 16 -O qcow2 d.qcow2 out.qcow2) ;;
    *) return 0 ;;
    esac
    for warm in 0 1; do
        rm -f out.qcow2
        ((warm)) || drop
        t0=$(date +%s%N)
        "${cmd[@]}" >run.out 2>run.err
        t1=$(date +%s%N)
        printf 'd\t%s\t%s\t%s\n' "$tool" "$( ((warm)) && echo warm-ms || echo ms)" \
            "$(( (t1 - t0) / 1000000 ))" >>"$SAMPLES"
        if [[ $tool == lsm* ]]; then
            printf 'd\t%s\tengine-ms\t%s\n' "$tool" \
                "$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["seconds"] * 1000))' run.out)" >>"$SAMPLES"
        fi
        log "d $tool (warm=$warm): $(( (t1 - t0) / 1000000 )) ms"
    done
    rm -f out.qcow2
}

# fio copy ceiling: O_DIRECT io_uring read of SRC together with a write of a
# new file, 1 MiB, iodepth 32.  PREALLOC=none|native.
ceiling() {
    local src=$1 size=$2 prealloc=$3
    rm -f ceil.out
    drop
    fio --output-format=json --output=fio.json \
        --name=read --filename="$src" --rw=read --bs=1M --iodepth=32 --direct=1 --ioengine=io_uring --size="$size" \
        --name=write --filename=ceil.out --rw=write --bs=1M --iodepth=32 --direct=1 --ioengine=io_uring \
        --size="$size" --fallocate="$prealloc" >/dev/null
    python3 - "$prealloc" <<'EOF' >>"$SAMPLES"
import json, sys
j = json.load(open("fio.json"))
r = [x for x in j["jobs"] if x["jobname"] == "read"][0]["read"]["bw_bytes"]
w = [x for x in j["jobs"] if x["jobname"] == "write"][0]["write"]["bw_bytes"]
print("c\tfio-ceiling-%s\tbw\t%d\t%d" % (sys.argv[1], r, w))
EOF
    log "ceiling ($prealloc): $(tail -n1 "$SAMPLES")"
    rm -f ceil.out fio.json
}

for cs in $CASES; do mk_$cs; done
declare -A DATA
for cs in $CASES; do DATA[$cs]=$(data_bytes "$(src_of "$cs")"); done

for ((round = 1; round <= RUNS; round++)); do
    log "round $round of $RUNS"
    for cs in $CASES; do
        if [[ $cs == d ]]; then
            for tool in $TOOLS; do run_fast "$tool"; done
            continue
        fi
        for tool in $TOOLS; do
            [[ $cs == c && $tool == lsm*-guest ]] && continue    # same as lsm for raw
            run_one "$tool" "$cs"
        done
        if [[ $cs == c ]]; then
            ceiling "$(src_of c)" "$((4 * G / DIV))" none
            ceiling "$(src_of c)" "$((4 * G / DIV))" native
        fi
    done
done

# ---- summary ----
{
    echo "# machine: $(nproc) cpus, $(free -g | awk '/Mem:/{print $2}') GiB RAM, kernel $(uname -r), $(df -hT "$DIR" | awk 'NR==2{print $2 " on " $1}')"
    echo "# lsm-sync: $LSM; scale $SCALE; $RUNS rounds; medians"
    for cs in $CASES; do echo "# data bytes $cs: ${DATA[$cs]}"; done
} >"$DIR/summary.txt"
python3 - "$SAMPLES" $(for cs in $CASES; do echo "$cs=${DATA[$cs]}"; done) <<'EOF' | tee -a "$DIR/summary.txt"
import statistics, sys
from collections import defaultdict
data = dict(a.split("=") for a in sys.argv[2:])
rows = defaultdict(list); ms = defaultdict(list); ceil = defaultdict(list); fails = defaultdict(int)
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    if f[2] == "FAIL": fails[(f[0], f[1])] += 1
    elif f[2].endswith("ms"): ms[(f[0], f[1] + " (" + f[2] + ")")].append(int(f[3]))
    elif f[2] == "bw": ceil[f[1]].append((int(f[3]), int(f[4])))
    else: rows[(f[0], f[1])].append(tuple(float(x) for x in f[2:6]))
G = 1 << 30
print("| case | tool | median s | GiB/s (data) | CPU s/GiB | peak RSS MiB | runs |")
print("|---|---|---|---|---|---|---|")
for (cs, tool), v in sorted(rows.items()):
    wall = statistics.median(x[0] for x in v)
    cpu = statistics.median(x[1] + x[2] for x in v)
    rss = max(x[3] for x in v) / 1024
    gib = int(data[cs]) / G
    print("| %s | %s | %.2f | %.2f | %.2f | %.0f | %d%s |" % (cs, tool, wall, gib / wall if wall else 0,
          cpu / gib if gib else 0, rss, len(v), (" (%d failed)" % fails[(cs, tool)]) if fails[(cs, tool)] else ""))
for (cs, tool), v in sorted(ms.items()):
    print("| %s | %s | %.3f | - | - | - | %d |" % (cs, tool, statistics.median(v) / 1000, len(v)))
for name, v in sorted(ceil.items()):
    r = statistics.median(x[0] for x in v) / G; w = statistics.median(x[1] for x in v) / G
    print("| c | %s | - | read %.2f / write %.2f (copy %.2f) | - | - | %d |" % (name, r, w, min(r, w), len(v)))
EOF
