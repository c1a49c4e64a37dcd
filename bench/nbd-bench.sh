#!/bin/bash
# NBD benchmark (docs/nbd.md, results in docs/benchmarks.md): the same copy
# by `lsm-sync copy`, `nbdcopy` and `qemu-img convert`, interleaved in every
# round, medians of N rounds, ratios against nbdcopy.
#
#   bench/nbd-bench.sh [--lsm-sync PATH] [--runs N] [--size SIZE] [--rows "..."]
#                      [--source chain|frag] [--tools "lsm lsm-buf lsm-unsafe nbdcopy qemu"]
#                      [--sweep]
#
# --source chain (the default): a sparse qcow2 chain (a base of SIZE with
# 25% random data in runs of 16 MiB on average, from nbdkit sparse-random,
# and a top layer over it with 64 MiB more), and its raw image (a sparse
# file) for the copies to NBD.  --source frag: one fragmented qcow2 of
# SIZE, where allocation matters: the same generator with runs of 64 KiB
# on average (1 GiB: about 5100 extents, 455 MiB of data), and its raw image.
# --tools: the columns to run (qemu-img asks for block status one extent
# at a time: on frag behind the delay rows it takes minutes a run).
# Rows (LINK-DIRECTION):
#   LINK  unix    qemu-nbd on a Unix socket on this host
#         veth    qemu-nbd in a network namespace of its own, over a veth
#                 pair (tests/functional/nbd-netns-lib.sh): real TCP
#         tbf     the same link limited to 1 Gbit/s each way (tc tbf)
#         delay   veth, with nbdkit's delay filter ($DELAY, default 2ms, per request:
#                 reads, writes, zeroes, trims and block status alike, as a longer
#                 link delays them) in front of the far qemu-nbd
#   DIRECTION  pull   the far chain (read-only export) to a local raw file
#              push   the local sparse raw file into a new qcow2 the far
#                     qemu-nbd serves (made again before every run, untimed)
# Every tool with its defaults (lsm-sync's NBD defaults: docs/nbd.md);
# lsm-sync writes and reads local files with O_DIRECT by default, the
# others through the page cache, so "lsm-buf" is lsm-sync --direct=never,
# the like-for-like column; "lsm-unsafe" (not run unless --tools names it)
# is lsm-sync -t unsafe: buffered and never flushed, as nbdcopy without
# --flush and qemu-img convert by default.  Ratios are speed-ups over nbdcopy / qemu-img
# (their median time over lsm-sync's).  Every sample: $SAMPLES.  Between
# runs an untimed sync: each starts with nothing dirty in the page cache.
# --sweep: lsm-sync alone over veth, request size x requests in flight x
# connections (how the defaults were chosen; SWEEP_LINK, SWEEP_DIRS,
# SWEEP_SIZES, SWEEP_M and SWEEP_C in the environment narrow it).  Needs root (namespaces),
# qemu-img, qemu-io, qemu-nbd, nbdkit, nbdcopy, ip, tc.
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "$0")/.." && pwd)
LSM=${LSM_SYNC:-$HERE/build/lsm-sync}
RUNS=5
SIZE=1G
ROWS="unix-pull unix-push veth-pull veth-push tbf-pull tbf-push delay-pull delay-push"
SWEEP=0
SOURCE=chain
TOOLS=(lsm lsm-buf nbdcopy qemu)
DELAY=${DELAY:-2ms}   # per request, the delay rows (nbdkit delay filter)
# Options for the others: by default neither makes its output durable
# (nbdcopy flushes only with --flush, qemu-img convert's output cache is
# "unsafe"), lsm-sync always does (an fsync, NBD_CMD_FLUSH).
# NBDCOPY_OPTS=--flush QEMU_OPTS="-t writeback" compares like with like.
NBDCOPY_OPTS=${NBDCOPY_OPTS:-}
QEMU_OPTS=${QEMU_OPTS:-}
while (($#)); do
    case $1 in
    --lsm-sync) LSM=$(realpath "$2"); shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --rows) ROWS=$2; shift 2 ;;
    --source) SOURCE=$2; shift 2 ;;
    --tools) read -ra TOOLS <<<"$2"; shift 2 ;;
    --sweep) SWEEP=1; shift ;;
    -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ $SOURCE == chain || $SOURCE == frag ]] || { echo "--source is chain or frag" >&2; exit 2; }
for t in "${TOOLS[@]}"; do
    [[ $t =~ ^(lsm|lsm-buf|lsm-unsafe|nbdcopy|qemu)$ ]] || { echo "unknown tool $t" >&2; exit 2; }
done
[[ -x $LSM ]] || { echo "lsm-sync not found: give --lsm-sync PATH" >&2; exit 2; }
for c in qemu-img qemu-io qemu-nbd nbdkit nbdcopy ip tc; do
    command -v "$c" >/dev/null || { echo "missing $c" >&2; exit 2; }
done

T=$(mktemp -d /var/tmp/lsm-nbd-bench.XXXXXX)
SAMPLES=${SAMPLES:-/var/tmp/nbd-bench-samples.txt}
: >"$SAMPLES"
cd "$T"
. "$HERE/tests/functional/nbd-netns-lib.sh"
stop_far() {
    local p
    for p in "$T"/*.pid; do
        [[ -s $p ]] || continue
        kill "$(cat "$p")" 2>/dev/null
        for _ in $(seq 200); do
            alive "$(cat "$p")" || break
            sleep 0.05
        done
        rm -f "$p"
    done
    return 0
}
trap 'stop_far; netns_down; cd /; rm -rf "$T"' EXIT
netns_up || { echo "cannot make namespaces: $NETNS_WHY" >&2; exit 2; }

if [[ $SOURCE == chain ]]; then
    echo "# making the source ($SIZE, 25% data, and a top layer)" >&2
    nbdkit -U - sparse-random size="$SIZE" percent=25 seed=3 random-content=true \
        --run 'qemu-img convert -q -f raw -O qcow2 "$uri" base.qcow2'
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
    qemu-io -c "write -P 0x5a 0 32M" -c "write -P 0x5b $(( $(numfmt --from=iec "$SIZE") / 2 )) 32M" top.qcow2 >/dev/null
else
    echo "# making the source ($SIZE, 25% data in runs of 64 KiB on average)" >&2
    nbdkit -U - sparse-random size="$SIZE" percent=25 runlength=65536 seed=5 random-content=true \
        --run 'qemu-img convert -q -f raw -O qcow2 "$uri" top.qcow2'
fi
qemu-img convert -q -O raw top.qcow2 top.raw    # sparse
DATA=$(qemu-img map --output=json top.qcow2 | python3 -c '
import json,sys; print(sum(e["length"] for e in json.load(sys.stdin) if e["data"]))')
VSIZE=$(qemu-img info --output=json top.qcow2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')

# serve LINK DIRECTION: the far export for this row; sets URI.
serve() {
    local link=$1 dir=$2 args=(-t -e 16)
    if [[ $dir == pull ]]; then
        args+=(-r -f qcow2 "$T/top.qcow2")
    else
        rm -f far.qcow2
        qemu-img create -q -f qcow2 far.qcow2 "$VSIZE"
        args+=(-f qcow2 "$T/far.qcow2")
    fi
    case $link in
    unix)
        rm -f q.sock
        qemu-nbd "${args[@]}" -k "$T/q.sock" --pid-file="$T/q.pid" --fork
        URI="nbd+unix:///?socket=$T/q.sock" ;;
    veth|tbf)
        # (the last server's port may take a moment to be free again)
        for _ in $(seq 50); do
            on_far qemu-nbd "${args[@]}" -b "$FAR_IP" -p 10809 --pid-file="$T/q.pid" \
                --fork 2>"$T/serve.err" && break
            sleep 0.1
        done
        [[ -s q.pid ]] || { cat "$T/serve.err" >&2; exit 1; }
        URI="nbd://$FAR_IP:10809/" ;;
    delay)
        rm -f q.sock
        on_far qemu-nbd "${args[@]}" -k "$T/q.sock" --pid-file="$T/q.pid" --fork
        for _ in $(seq 50); do
            on_far nbdkit -i "$FAR_IP" -p 10809 -P "$T/k.pid" --filter=delay nbd \
                socket="$T/q.sock" rdelay=$DELAY wdelay=$DELAY delay-zero=$DELAY \
                delay-trim=$DELAY delay-extents=$DELAY 2>"$T/serve.err" && break
            sleep 0.1
        done
        for _ in $(seq 100); do [[ -s k.pid ]] && break; sleep 0.05; done
        [[ -s k.pid ]] || { cat "$T/serve.err" >&2; exit 1; }
        URI="nbd://$FAR_IP:10809/" ;;
    esac
}

# run TOOL DIRECTION: one copy; prints seconds.
run() {
    local tool=$1 dir=$2; shift 2
    local t0 t1
    rm -f out.raw
    t0=$(date +%s%N)
    local rc=0
    if [[ $dir == pull ]]; then
        case $tool in
        lsm) on_near "$LSM" copy "$@" "$URI" out.raw || rc=$? ;;
        lsm-buf) on_near "$LSM" copy --direct=never "$@" "$URI" out.raw || rc=$? ;;
        lsm-unsafe) on_near "$LSM" copy -t unsafe "$@" "$URI" out.raw || rc=$? ;;
        nbdcopy) truncate -s 0 out.raw; on_near nbdcopy $NBDCOPY_OPTS "$URI" out.raw || rc=$? ;;
        qemu) on_near qemu-img convert $QEMU_OPTS -f raw -O raw "$URI" out.raw || rc=$? ;;
        esac
    else
        case $tool in
        lsm) on_near "$LSM" copy "$@" top.raw "$URI" || rc=$? ;;
        lsm-buf) on_near "$LSM" copy --direct=never "$@" top.raw "$URI" || rc=$? ;;
        lsm-unsafe) on_near "$LSM" copy -t unsafe "$@" top.raw "$URI" || rc=$? ;;
        nbdcopy) on_near nbdcopy $NBDCOPY_OPTS top.raw "$URI" || rc=$? ;;
        qemu) on_near qemu-img convert $QEMU_OPTS -n -f raw -O raw top.raw "$URI" || rc=$? ;;
        esac
    fi
    t1=$(date +%s%N)
    # a failed copy is no sample (and the command substitution does not
    # inherit set -e): stop the whole run
    ((rc == 0)) || { echo "nbd-bench: $tool $dir failed (exit $rc)" >&2; exit 1; }
    echo "scale=3; ($t1 - $t0) / 1000000000" | bc
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

echo "# $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), kernel $(uname -r)," \
     "$(nbdcopy --version | head -1), $(qemu-img --version | head -1)" >&2
echo "# source: $VSIZE bytes virtual, $DATA bytes of data; $RUNS rounds, medians" >&2

if ((SWEEP)); then
    printf '%-6s %-6s %5s %4s %5s %8s\n' row dir size m conn seconds
    for dir in ${SWEEP_DIRS:-pull push}; do
        for s in ${SWEEP_SIZES:-256K 1M}; do
            for m in ${SWEEP_M:-16 64}; do
                for c in ${SWEEP_C:-1 2 4}; do
                    samples=()
                    for _ in $(seq "$RUNS"); do
                        serve "${SWEEP_LINK:-veth}" $dir
                        samples+=("$(run lsm $dir --request-size=$s -m $m --connections=$c)")
                        stop_far
                    done
                    printf '%-6s %-6s %5s %4s %5s %8s\n' "${SWEEP_LINK:-veth}" $dir $s $m $c \
                        "$(printf '%s\n' "${samples[@]}" | median)"
                done
            done
        done
    done
    exit 0
fi

printf '%-12s %9s %9s %10s %9s %9s %9s %9s %9s %9s\n' row lsm lsm-buf lsm-unsafe nbdcopy \
    qemu-img "lsm/nbdc" "buf/nbdc" "uns/nbdc" "lsm/qemu"
for row in $ROWS; do
    link=${row%-*} dir=${row#*-}
    if [[ $link == tbf ]]; then netns_rate 1gbit; else netns_rate none; fi
    declare -A S=()
    for r in $(seq "$RUNS"); do
        # interleaved, in a rotating order
        for i in "${!TOOLS[@]}"; do
            tool=${TOOLS[$(( (i + r) % ${#TOOLS[@]} ))]}
            serve "$link" "$dir"
            S[$tool]+="$(run "$tool" "$dir") "
            stop_far
            # untimed: the next run starts with nothing dirty in the page
            # cache (a tool that exits before its data is on the disk
            # would otherwise slow whichever tool comes after it)
            sync
        done
        echo "$row round $r: ${S[*]}" >>"$SAMPLES"
    done
    med() { [[ -n ${S[$1]:-} ]] || { echo -; return; }; tr ' ' '\n' <<<"${S[$1]}" | grep . | median; }
    # speed-up: the other tool's time over lsm-sync's ("-": a column not run)
    ratio() { [[ $1 == - || $2 == - ]] && { echo -; return; }; printf '%.2fx' "$(echo "$1 / $2" | bc -l)"; }
    lsm=$(med lsm) buf=$(med lsm-buf) uns=$(med lsm-unsafe) nbc=$(med nbdcopy) qem=$(med qemu)
    printf '%-12s %9s %9s %10s %9s %9s %9s %9s %9s %9s\n' "$row" "$lsm" "$buf" "$uns" "$nbc" "$qem" \
        "$(ratio "$nbc" "$lsm")" "$(ratio "$nbc" "$buf")" "$(ratio "$nbc" "$uns")" \
        "$(ratio "$qem" "$lsm")"
    unset S
done
netns_rate none
