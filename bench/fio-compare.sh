#!/bin/bash
# Run the same jobs with fio and with 'lsm-sync bench' on the same file,
# interleaved, the page cache dropped before every run, and print a markdown
# table of the medians with ratios (lsm-sync / fio).
#
#   bench/fio-compare.sh [--lsm-sync PATH] [--file PATH] [--size SIZE]
#                        [--runtime SECONDS] [--runs N] [--engines "uring aio psync"]
#                        [--mem huge|plain]
#
# Needs root (to drop the page cache), fio and jq.  The file is laid out by
# fio once and reused; delete it afterwards.  fio's psync engine keeps one
# request in flight whatever iodepth says, so psync rows run at iodepth 1
# on both sides.  --mem gives both tools the same buffer memory (it decides
# how many segments a request is; docs/bench-harness.md): huge (default):
# lsm-sync mem=mmaphuge, fio mem=shmhuge on hugetlb pages reserved for the
# run; plain: lsm-sync mem=malloc, fio's default malloc.
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
LSM=${LSM_SYNC:-$here/../build/lsm-sync}
FILE=/var/tmp/lsm-bench-compare.dat
SIZE=1G
RUNTIME=5
RUNS=3
ENGINES="uring aio psync"
MEM=huge
while [[ $# -gt 0 ]]; do
    case $1 in
    --lsm-sync) LSM=$2; shift 2 ;;
    --file) FILE=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --runtime) RUNTIME=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --engines) ENGINES=$2; shift 2 ;;
    --mem) MEM=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "fio-compare: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
for c in fio jq; do
    command -v $c >/dev/null || { echo "fio-compare: '$c' is needed" >&2; exit 1; }
done
[[ -x $LSM ]] || { echo "fio-compare: no lsm-sync at $LSM (--lsm-sync PATH)" >&2; exit 1; }
[[ -w /proc/sys/vm/drop_caches ]] || { echo "fio-compare: must run as root (drops the page cache)" >&2; exit 1; }

# name rw bs iodepth
JOBS=("seqread-1M-qd32 read 1M 32" "randread-4k-qd32 randread 4k 32"
      "seqwrite-1M-qd16 write 1M 16" "randwrite-4k-qd16 randwrite 4k 16")
fio_engine() { case $1 in uring) echo io_uring ;; aio) echo libaio ;; *) echo "$1" ;; esac; }

work=$(mktemp -d "${TMPDIR:-/tmp}/fio-compare.XXXXXX")
hp_file=/proc/sys/vm/nr_hugepages
hp_old=$(cat $hp_file)
trap 'rm -rf "$work"; echo "$hp_old" >$hp_file' EXIT
case $MEM in
huge)
    # fio's mem=shmhuge needs hugetlb pages: enough for 32 x 1 MiB buffers.
    LSM_MEM=mmaphuge FIO_MEM=shmhuge
    want=$((hp_old + 40))
    echo $want >$hp_file
    if (($(awk '/HugePages_Free/ { print $2 }' /proc/meminfo) < 40)); then
        echo "fio-compare: cannot reserve 40 huge pages for fio; use --mem plain" >&2
        exit 1
    fi ;;
plain) LSM_MEM=malloc FIO_MEM=malloc ;;
*) echo "fio-compare: --mem huge or plain" >&2; exit 2 ;;
esac

drop_cache() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# Lay the file out once (fio writes it in full), so both tools find data.
if [[ ! -f $FILE ]]; then
    echo "laying out $FILE ($SIZE) ..." >&2
    fio --name=layout --filename="$FILE" --size="$SIZE" --rw=write --bs=1M --direct=1 \
        --ioengine=psync --output=/dev/null
fi

run_one() {   # tool engine rw bs qd out.json
    local tool=$1 engine=$2 rw=$3 bs=$4 qd=$5 out=$6
    drop_cache
    if [[ $tool == fio ]]; then
        fio --name=cmp --mem="$FIO_MEM" --filename="$FILE" --size="$SIZE" --rw="$rw" --bs="$bs" --iodepth="$qd" \
            --ioengine="$(fio_engine "$engine")" --direct=1 --runtime="$RUNTIME" --time_based \
            --output-format=json >"$out"
    else
        "$LSM" bench --eta=never --name=cmp --filename="$FILE" --size="$SIZE" --rw="$rw" \
            --bs="$bs" --iodepth="$qd" --ioengine="$engine" --direct=1 --runtime="$RUNTIME" \
            --time_based --mem="$LSM_MEM" --output-format=json >"$out"
    fi
}

# Interleave: every run does every job and engine with both tools, the order
# of the two tools alternating from run to run.
for ((run = 1; run <= RUNS; run++)); do
    for job in "${JOBS[@]}"; do
        read -r name rw bs qd <<<"$job"
        for engine in $ENGINES; do
            [[ $engine == psync ]] && qd=1
            if ((run % 2)); then order="fio lsm"; else order="lsm fio"; fi
            for tool in $order; do
                echo "run $run/$RUNS: $name $engine $tool" >&2
                run_one $tool $engine $rw $bs $qd "$work/$name.$engine.$tool.$run.json"
            done
        done
    done
done

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
values() {  # name engine tool dir jqpath: one value per run
    for ((run = 1; run <= RUNS; run++)); do
        jq -r ".jobs[0].$4.$5" "$work/$1.$2.$3.$run.json"
    done
}
# Median over the runs of lsm/fio of the same run (the two ran back to back,
# so they shared the machine's load of the moment).
paired() {
    paste <(values "$@" | sed 's/^/x /') <(values "$1" "$2" fio "$4" "$5") |
        awk '{ print ($3 > 0) ? $2 / $3 : 0 }' | median
}
mib() { awk '{ printf "%.0f ", $1 / 1048576 }'; }

cat <<HEAD
Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')), \
$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, \
kernel $(uname -r), $(fio --version), $("$LSM" --version); buffers: lsm-sync mem=$LSM_MEM, fio mem=$FIO_MEM, \
THP $(sed 's/.*\[\(.*\)\].*/\1/' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo '?').
File: $FILE ($SIZE) on $(df -T "$FILE" | awk 'NR == 2 { print $1 " (" $2 ")" }'), \
$(d=$(lsblk -no PKNAME "$(df "$FILE" | awk 'NR == 2 { print $1 }')" 2>/dev/null | head -1); \
  d=${d:-$(basename "$(df "$FILE" | awk 'NR == 2 { print $1 }')")}; \
  echo "disk $d, scheduler $(sed 's/.*\[\(.*\)\].*/\1/' /sys/block/$d/queue/scheduler 2>/dev/null || echo '?')").

HEAD
echo "| job | engine | fio MiB/s | lsm-sync MiB/s | BW ratio | paired | fio p50 µs | lsm-sync p50 µs | p50 ratio | paired |"
echo "|-----|--------|----------:|---------------:|---------:|-------:|-----------:|----------------:|----------:|-------:|"
raw=()
for job in "${JOBS[@]}"; do
    read -r name rw bs qd <<<"$job"
    dir=read
    [[ $rw == *write ]] && dir=write
    for engine in $ENGINES; do
        label=$name
        [[ $engine == psync ]] && label=${name%-qd*}-qd1
        p50='clat_ns.percentile."50.000000"'
        fbw=$(values $name $engine fio $dir bw_bytes | median)
        lbw=$(values $name $engine lsm $dir bw_bytes | median)
        fp=$(values $name $engine fio $dir "$p50" | median)
        lp=$(values $name $engine lsm $dir "$p50" | median)
        pbw=$(paired $name $engine lsm $dir bw_bytes)
        pp=$(paired $name $engine lsm $dir "$p50")
        awk -v n="$label" -v e="$engine" -v fb="$fbw" -v lb="$lbw" -v fp="$fp" -v lp="$lp" \
            -v pb="$pbw" -v pp="$pp" 'BEGIN {
            br = fb > 0 ? lb / fb : 0; pr = fp > 0 ? lp / fp : 0
            printf "| %s | %s | %.0f | %.0f | %.2f%s | %.2f | %.0f | %.0f | %.2f%s | %.2f |\n", n, e,
                fb / 1048576, lb / 1048576, br, (br >= 0.85 && br <= 1.15) ? "" : " (!)", pb,
                fp / 1000, lp / 1000, pr, (pr >= 0.75 && pr <= 1.25) ? "" : " (!)", pp }'
        raw+=("| $label | $engine | $(values $name $engine fio $dir bw_bytes | mib)| $(values $name $engine lsm $dir bw_bytes | mib)|")
    done
done
echo
echo "Medians of $RUNS interleaved runs of ${RUNTIME}s each, O_DIRECT, page cache dropped"
echo "before each run.  BW/p50 ratio: lsm-sync median / fio median; paired: median over the"
echo "runs of lsm-sync/fio of the same round (the two ran back to back).  (!) marks a"
echo "median ratio outside 0.85-1.15 (bandwidth) or 0.75-1.25 (p50)."
echo
echo "Every run's bandwidth (MiB/s), in the order run:"
echo
echo "| job | engine | fio | lsm-sync |"
echo "|-----|--------|-----|----------|"
printf '%s\n' "${raw[@]}"
