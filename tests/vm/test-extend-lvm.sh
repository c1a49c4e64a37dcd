#!/bin/bash
# The extender's LVM backend for real, inside the test VM: qemu-io writes
# 192 MiB of patterned data into a qcow2 (virtual 1 GiB) on a 64 MiB LV,
# while tests/vm/extend-lvm-driver.c (the extender's policy and backends,
# polling the LV's allocation: there is no libvirt in the VM) grows the LV
# with lvextend + lvchange --refresh.  Checks: every write succeeded, the
# data reads back, the image checks clean, the LV grew in steps of at least
# one chunk, and prints the measured extension latency (docs/benchmarks.md).
# Then an LV in a full VG: the extension fails with ENOSPC naming the VG.
set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

if [ "${1:-}" != --inner ]; then
    cc=${CC:-gcc}
    command -v "$cc" >/dev/null || { echo "SKIP: no C compiler ($cc)" >&2; exit 77; }
    command -v qemu-io >/dev/null || { echo "SKIP: no qemu-io (qemu-utils)" >&2; exit 77; }
    tmp=$(mktemp -d /tmp/lsm-extend-lvm.XXXXXX) || exit 1
    trap 'rm -rf "$tmp"' EXIT
    srcs=("$here/extend-lvm-driver.c" "$repo/monitor/extend-policy.c" "$repo/monitor/extend-backend.c"
          "$repo/common/error.c" "$repo/common/util.c")
    flags=(-std=gnu11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -g -O1 -Wall -Wextra -Werror
           -Wno-unused-parameter -I"$repo/common" -I"$repo/monitor")
    if ! "$cc" "${flags[@]}" "${srcs[@]}" -lm -o "$tmp/driver" 2>"$tmp/cc.err"; then
        echo "FAIL: cannot build the driver: $(cat "$tmp/cc.err")" >&2
        exit 1
    fi
    "$here/vm-run.sh" --timeout "${LSM_VM_TIMEOUT:-300}" --mem 1536 "$0" --inner "$tmp/driver"
    exit $?
fi

# ---- in the guest -------------------------------------------------------
driver=$2
. "$here/lvm-helpers.sh"
trap vm_cleanup EXIT
fails=0
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
ok() { echo "ok   $*"; }
scratch=${LSM_VM_SCRATCH:-/run/lsm-vm/scratch}

vm_make_vg lsmext 2G 4M || exit 1
vm_lvm lvcreate -q -y -n thin -L 64M lsmext >/dev/null || { echo "FAIL lvcreate"; exit 1; }
vm_lvm vgmknodes lsmext >/dev/null 2>&1
dev=/dev/lsmext/thin
[ -b "$dev" ] || { echo "FAIL no $dev"; exit 1; }
qemu-img create -q -f qcow2 "$dev" 1G || { echo "FAIL qemu-img create"; exit 1; }

# 192 writes of 1 MiB with a pattern, 200 ms apart: a steady writer of
# about 5 MiB/s.  lvextend + lvchange --refresh take 20-25 s under TCG here
# (much slower than on hardware), so the watermark is 160 MiB: what a
# caller who knows its storage would configure.
cmds=()
for ((i = 0; i < 192; i++)); do
    cmds+=(-c "write -P 0x5a $((i))M 1M" -c "sleep 200")
done
qemu-io -f qcow2 -t none "${cmds[@]}" "$dev" >"$scratch/writer.out" 2>&1 &
wpid=$!
"$driver" "$dev" "$wpid" 128M 4M 160M >"$scratch/driver.out" 2>&1
drc=$?
wait "$wpid"
wrc=$?
cat "$scratch/driver.out"
[ "$drc" = 0 ] && ok "driver" || fail "driver exited $drc"
[ "$wrc" = 0 ] && ok "writer" || fail "writer exited $wrc"
if grep -qiE "error|failed" "$scratch/writer.out"; then
    fail "writes failed: $(grep -iE 'error|failed' "$scratch/writer.out" | head -3)"
else
    ok "every write succeeded"
fi
n=$(grep -c '^extended' "$scratch/driver.out")
[ "$n" -ge 2 ] && ok "$n extensions" || fail "only $n extensions"
awk '/^extended/ { if ($3 - $2 < 128 * 1048576) bad = 1 } END { exit bad }' "$scratch/driver.out" &&
    ok "steps of at least a chunk" || fail "a step below one chunk"
out=$(qemu-io -f qcow2 -c "read -P 0x5a 0 192M" "$dev" 2>&1)
case $out in *"Pattern verification failed"*) fail "data: $out" ;; *) ok "data reads back" ;; esac
qemu-img check -q -f qcow2 "$dev" && ok "image checks" || fail "qemu-img check"
size=$(blockdev --getsize64 "$dev")
last=$(awk '/^extended/ { s = $3 } END { print s }' "$scratch/driver.out")
[ "$size" = "$last" ] && ok "final size $size reported" || fail "size $size, last reported $last"
awk '/^extended/ { n++; t += $4; e += $5; r += $6; if ($4 > m) m = $4 }
     END { if (n) printf "latency: %d extensions, mean total %.3f s (lvextend %.3f s, refresh %.3f s), max %.3f s\n", n, t / n / 1e9, e / n / 1e9, r / n / 1e9, m / 1e9 }' \
    "$scratch/driver.out"

# A VG without room: fail fast with the VG named.
vm_lvm lvcreate -q -y -n filler -l 100%FREE lsmext >/dev/null || fail "lvcreate filler"
sleep 600 &
spid=$!
out=$("$driver" "$dev" "$spid" 128M 4M 2G 2>&1)
rc=$?
kill "$spid" 2>/dev/null
echo "$out" | tail -n 1
[ "$rc" = 1 ] && ok "full VG: exit 1" || fail "full VG: exit $rc"
case $out in *"No space left"*"lsmext"*|*"lsmext"*"free"*) ok "full VG: clear message" ;;
             *) fail "full VG message: $out" ;; esac

[ "$fails" = 0 ] || exit 1
echo "all passed"
