#!/bin/bash
# Offload benchmark: lsm-sync copy between two LUNs of one Linux LIO target
# inside the booted distribution kernel, offloaded (SCSI EXTENDED COPY, the
# xcopy plugin) against the software copy (--offload=never) of the same
# volumes.  Per run: wall time, the lsm-sync process's CPU seconds (user +
# system) and the whole guest's CPU seconds (from /proc/stat, which also
# counts the target's own work: the target is emulated by the same kernel).
# Results per GiB copied, medians of N interleaved runs.  See
# docs/benchmarks.md.
#
#   bench/offload-bench.sh [--lsm-sync PATH] [--size MiB] [--runs N]
#
# Runs itself in the VM (tests/vm/vm-run.sh); needs root, qemu-system-x86,
# the distribution kernel and /usr/bin/time.
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LSM=${LSM_SYNC:-$here/../build/lsm-sync}
SIZE=${LSM_BENCH_SIZE:-256}
RUNS=${LSM_BENCH_RUNS:-3}
while [ $# -gt 0 ]; do
    case $1 in
    --lsm-sync) LSM=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    *) echo "usage: $0 [--lsm-sync PATH] [--size MiB] [--runs N]" >&2; exit 2 ;;
    esac
done
case $SIZE$RUNS in *[!0-9]*) echo "--size and --runs take numbers" >&2; exit 2 ;; esac

if [ "${LSM_VM:-}" != 1 ]; then
    LSM_SYNC=$(realpath "$LSM") LSM_BENCH_SIZE=$SIZE LSM_BENCH_RUNS=$RUNS \
        exec "$here/../tests/vm/vm-run.sh" --timeout 1800 --mem $((SIZE * 2 + 768)) "$0"
fi

# ---- in the guest ----
T=/sys/kernel/config/target
S=$LSM_VM_SCRATCH
modprobe -a configfs target_core_mod target_core_file tcm_loop sd_mod || exit 77
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config || exit 77
mount -t tmpfs -o size=$((SIZE * 2 + 64))m tmpfs "$S" || exit 77
tp=$T/loopback/naa.60014050000000c1/tpgt_1
devs=()
for n in 1 2; do
    bs=$T/core/fileio_$n/d$n
    truncate -s "${SIZE}M" "$S/lun$n.img"
    mkdir -p "$bs" "$tp/lun/lun_$n"
    echo "fd_dev_name=$S/lun$n.img,fd_dev_size=$((SIZE << 20))" >"$bs/control"
    printf 'beefcafe%08x\n' "$n" >"$bs/wwn/vpd_unit_serial"
    echo 1 >"$bs/enable"
    [ -e "$tp/nexus" ] && [ -n "$(cat "$tp/nexus" 2>/dev/null)" ] || echo naa.60014050000000cf >"$tp/nexus"
    ln -s "$bs" "$tp/lun/lun_$n/x$n"
done
for i in $(seq 100); do
    devs=()
    for b in /sys/block/sd*; do
        [ -e "$b/device/vpd_pg80" ] && tr -dc '[:alnum:]' <"$b/device/vpd_pg80" | grep -q beefcafe &&
            devs+=("/dev/${b##*/}")
    done
    [ ${#devs[@]} = 2 ] && break
    sleep 0.1
done
[ ${#devs[@]} = 2 ] || { echo "the LUNs did not appear" >&2; exit 1; }
src=${devs[0]} dst=${devs[1]}
dd if=/dev/urandom of="$src" bs=1M count="$SIZE" oflag=direct status=none

cpu_total() {   # jiffies of all CPUs, busy (everything but idle and iowait)
    awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat
}
hz=$(getconf CLK_TCK)
printf 'mode\trun\tseconds\tprocess_cpu_s\tguest_cpu_s\n' >"$S/samples.tsv"
for r in $(seq "$RUNS"); do
    for mode in xcopy never; do
        sync
        echo 3 >/proc/sys/vm/drop_caches
        c0=$(cpu_total)
        /usr/bin/time -f '%e %U %S' -o "$S/time" \
            "$LSM" copy --offload=$mode -f raw "$src" "$dst" 2>"$S/err" || {
            echo "copy --offload=$mode failed: $(cat "$S/err")" >&2; exit 1; }
        c1=$(cpu_total)
        cmp -s "$src" "$dst" || { echo "copy --offload=$mode: $src and $dst differ" >&2; exit 1; }
        read -r e u s <"$S/time"
        awk -v m="$mode" -v r="$r" -v e="$e" -v u="$u" -v s="$s" -v c0="$c0" -v c1="$c1" -v hz="$hz" \
            'BEGIN { printf "%s\t%s\t%s\t%.2f\t%.2f\n", m, r, e, u + s, (c1 - c0) / hz }' >>"$S/samples.tsv"
        dd if=/dev/zero of="$dst" bs=1M count="$SIZE" oflag=direct status=none
    done
done
echo "# offload-bench: $SIZE MiB between two LIO fileio LUNs (tmpfs) of one tcm_loop target, $RUNS runs, medians, per GiB"
echo "# guest: $(nproc) vCPUs under TCG, kernel $(uname -r)"
printf '%-28s %10s %16s %14s\n' mode "s/GiB" "process CPU s/GiB" "guest CPU s/GiB"
for mode in xcopy never; do
    awk -F'\t' -v m=$mode -v g="$SIZE" '
        $1 == m { e[n] = $3; p[n] = $4; c[n] = $5; n++ }
        function med(a, n,   i, j, t) {
            for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
            return n % 2 ? a[int(n / 2)] : (a[n / 2 - 1] + a[n / 2]) / 2
        }
        END {
            f = 1024 / g
            printf "%-28s %10.2f %16.3f %14.2f\n", (m == "xcopy" ? "offloaded (EXTENDED COPY)" : "software (--offload=never)"),
                med(e, n) * f, med(p, n) * f, med(c, n) * f
        }' "$S/samples.tsv"
done
echo "# samples:"
sed 's/^/# /' "$S/samples.tsv"
