#!/bin/bash
# Image locks shared with QEMU (common/lock.h), against real qemu-io,
# qemu-img and QEMU processes:
# - an image that qemu-io or a QEMU process holds for writing: lsm-sync
#   does not write it (copy -n, copy without -n), image unchanged; reads
#   it only with -U (copy, map, info, compare, checksum);
# - a backing file that qemu-io holds through its overlay (read-only, as a
#   running VM does): lsm-sync reads it without -U; clone-structure and
#   sync --type=INTERNAL work on the live chain, sync of its leaf does not;
# - while lsm-sync writes a destination: qemu-io cannot write it, qemu-img
#   cannot open it as qcow2, a second lsm-sync cannot write it, and the
#   first copy still ends complete;
# - nothing stale: right after lsm-sync exits, qemu-io writes the image.
. "$(dirname "$0")/lib.sh"
need_cmd qemu-img qemu-io sha256sum timeout

PIDS=()
stop_holders() {
    local p
    for p in "${PIDS[@]}"; do
        if kill -0 "$p" 2>/dev/null; then kill "$p"; fi
    done
    # (a holder ends by our SIGTERM: its status is 143)
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || [[ $? == 143 ]] || log "holder $p ended with $?"; done
    PIDS=()
}
trap 'stop_holders; cleanup' EXIT

# locked FILE: wait (up to 10 s) until some process holds a lock on FILE.
locked() {
    local ino i
    for i in $(seq 100); do
        if [[ -e $1 ]]; then
            ino=$(stat -c %i "$1")
            grep -q ":$ino " /proc/locks && return 0
        fi
        sleep 0.1
    done
    return 1
}

# hold_qemu_io IMG [FMT]: qemu-io holds IMG (read-write) in the background.
hold_qemu_io() {
    qemu-io -f "${2:-qcow2}" -c 'sleep 60000' "$1" >/dev/null 2>&1 &
    PIDS+=($!)
    locked "$1" || die "qemu-io did not lock $1"
}

# expect CASE RC WANT CMD...: exit status RC and, if WANT, stderr says it.
expect() {
    local case=$1 want_rc=$2 want=$3 rc=0
    shift 3
    timeout 30 "$@" >out.log 2>err.log || rc=$?
    if ((rc != want_rc)); then
        fail "$case" "exit $rc, want $want_rc: $(head -n3 err.log)"
        return 0   # counted; go on with the next case
    fi
    if [[ -n $want ]] && ! grep -qi -- "$want" err.log; then
        fail "$case" "stderr lacks '$want': $(head -n3 err.log)"
        return 0   # counted; go on with the next case
    fi
    pass "$case"
}

# same_sum CASE FILE SUM: FILE's sha256 is SUM.
same_sum() {
    if [[ $(sha256sum <"$2") == "$3" ]]; then pass "$1"; else fail "$1" "$2 changed"; fi
}

head -c 4M /dev/urandom >src.raw
qcow2 base.qcow2 4M
qio base.qcow2 -- "write -P 0x51 0 1M" "write -P 0x52 2M 512k"
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
qio top.qcow2 -- "write -P 0x53 1M 512k"
qcow2 held.qcow2 4M
qio held.qcow2 -- "write -P 0x54 0 2M"
head -c 4M /dev/urandom >held.raw

# ---- 1. qemu-io holds images for writing ----
hold_qemu_io held.qcow2
hold_qemu_io held.raw raw
sum_q=$(sha256sum <held.qcow2)
sum_r=$(sha256sum <held.raw)
expect "copy -n into qcow2 qemu-io holds" 1 'Failed to get "write" lock' \
    "$LSM_SYNC" copy -n -O qcow2 src.raw held.qcow2
same_sum "qcow2 qemu-io holds: unchanged (-n)" held.qcow2 "$sum_q"
expect "copy (no -n) over qcow2 qemu-io holds" 1 'lock' \
    "$LSM_SYNC" copy -O qcow2 src.raw held.qcow2
same_sum "qcow2 qemu-io holds: unchanged (no -n)" held.qcow2 "$sum_q"
expect "copy -n into raw qemu-io holds" 1 'lock' "$LSM_SYNC" copy -n src.raw held.raw
expect "copy over raw qemu-io holds" 1 'lock' "$LSM_SYNC" copy src.raw held.raw
same_sum "raw qemu-io holds: unchanged" held.raw "$sum_r"

expect "copy reading a held image, no -U" 1 'force-share' "$LSM_SYNC" copy held.qcow2 out.raw
[[ ! -e out.raw ]] && pass "refused read creates nothing" || fail "refused read creates nothing"
expect "copy -U reading a held image" 0 '' "$LSM_SYNC" copy -U held.qcow2 out.raw
if qemu-img compare -q -U held.qcow2 out.raw; then pass "copy -U content"; else fail "copy -U content"; fi
expect "map of a held image, no -U" 1 'lock' "$LSM_SYNC" map held.qcow2
expect "map -U of a held image" 0 '' "$LSM_SYNC" map -U held.qcow2
expect "info of a held image, no -U" 1 'lock' "$LSM_SYNC" info held.qcow2
expect "info -U of a held image" 0 '' "$LSM_SYNC" info -U held.qcow2
expect "compare with a held image, no -U" 2 'lock' "$LSM_SYNC" compare held.qcow2 out.raw
expect "compare -U with a held image" 0 '' "$LSM_SYNC" compare -U held.qcow2 out.raw
if "$LSM_SYNC" --help | grep -qw checksum; then
    expect "checksum of a held image, no -U" 1 'force-share' "$LSM_SYNC" checksum held.qcow2
    expect "checksum -U of a held image" 0 '' "$LSM_SYNC" checksum -U held.qcow2
fi
stop_holders

# ---- 2. A backing file held read-only through its overlay ----
hold_qemu_io top.qcow2
expect "copy of the top qemu-io holds, no -U" 1 'lock' "$LSM_SYNC" copy top.qcow2 t.raw
expect "copy of its backing file, no -U" 0 '' "$LSM_SYNC" copy base.qcow2 b.raw
if qemu-img compare -q -U base.qcow2 b.raw; then pass "backing copy content"; else fail "backing copy content"; fi
expect "copy of its backing file into qcow2" 0 '' "$LSM_SYNC" copy -O qcow2 base.qcow2 b.qcow2
expect "map of the backing file" 0 '' "$LSM_SYNC" map base.qcow2
expect "copy -U of the whole held chain" 0 '' "$LSM_SYNC" copy -U top.qcow2 t.raw
if qemu-img compare -q -U top.qcow2 t.raw; then pass "chain copy -U content"; else fail "chain copy -U content"; fi
expect "copy into the backing file a VM reads" 1 'lock' "$LSM_SYNC" copy -n -O qcow2 src.raw base.qcow2
# Live storage migration: the structure of the live chain is read (as
# qemu-img info -U reads), its backing files are copied, its leaf is not.
mkdir live
expect "clone-structure of a live chain" 0 '' "$LSM_SYNC" clone-structure top.qcow2 --dst-dir live
expect "sync --type=INTERNAL of a live chain" 0 '' "$LSM_SYNC" sync --type=INTERNAL top.qcow2 live/top.qcow2
if qemu-img compare -q -U base.qcow2 live/base.qcow2; then pass "INTERNAL sync content"
else fail "INTERNAL sync content"; fi
expect "sync --type=LEAF of the live leaf is refused" 1 'lock' \
    "$LSM_SYNC" sync --type=LEAF top.qcow2 live/top.qcow2
stop_holders

# ---- 3. A QEMU process holds a disk ----
if command -v qemu-system-x86_64 >/dev/null; then
    qcow2 vm.qcow2 4M
    qio vm.qcow2 -- "write -P 0x61 0 1M"
    sum_v=$(sha256sum <vm.qcow2)
    qemu-system-x86_64 -machine none -nodefaults -display none -monitor none -serial none \
        -drive if=none,id=d0,file=vm.qcow2,format=qcow2 >qemu.log 2>&1 &
    PIDS+=($!)
    if locked vm.qcow2; then
        expect "copy -n into a disk QEMU holds" 1 'Failed to get "write" lock' \
            "$LSM_SYNC" copy -n -O qcow2 src.raw vm.qcow2
        same_sum "disk QEMU holds: unchanged" vm.qcow2 "$sum_v"
        expect "copy reading a disk QEMU holds, no -U" 1 'force-share' "$LSM_SYNC" copy vm.qcow2 v.raw
        expect "copy -U reading a disk QEMU holds" 0 '' "$LSM_SYNC" copy -U vm.qcow2 v.raw
    else
        fail "QEMU process" "qemu-system-x86_64 did not lock vm.qcow2: $(head -n3 qemu.log)"
    fi
    stop_holders
else
    log "qemu-system-x86_64 not found: QEMU process cases skipped"
fi

# ---- 4. While lsm-sync writes a destination ----
head -c 16M /dev/urandom >big.raw
for fmt in raw qcow2; do
    rm -f busy.$fmt
    # 16 MiB at 4 MiB/s: about 4 s of writing.
    "$LSM_SYNC" copy --rate=4M -O $fmt big.raw busy.$fmt 2>first.err &
    first=$!
    if ! locked busy.$fmt; then
        fail "$fmt: lsm-sync locks its destination" "no lock seen"
        wait $first || log "first copy ended with $?"
        continue
    fi
    expect "$fmt: qemu-io cannot write what lsm-sync writes" 1 'lock' \
        qemu-io -f raw -c 'write -P 0x77 0 4k' busy.$fmt
    # As qcow2, whatever the header says while the copy runs: QEMU's qcow2
    # driver takes "consistent read" and refuses to share "write".
    expect "$fmt: qemu-img info -f qcow2 refused while lsm-sync writes" 1 'lock' \
        qemu-img info -f qcow2 busy.$fmt
    expect "$fmt: a second lsm-sync copy is refused" 1 'Failed to get "write" lock' \
        "$LSM_SYNC" copy -O $fmt src.raw busy.$fmt
    expect "$fmt: a second lsm-sync copy -n is refused" 1 'lock' \
        "$LSM_SYNC" copy -n -O $fmt src.raw busy.$fmt
    rc=0
    wait $first || rc=$?
    if ((rc == 0)) && qemu-img compare -q big.raw busy.$fmt; then
        pass "$fmt: the first copy ends complete"
    else
        fail "$fmt: the first copy ends complete" "exit $rc: $(cat first.err)"
    fi
    # No stale lock once lsm-sync has exited (io_uring keeps closed files
    # open for a while; the locks are released explicitly).
    expect "$fmt: qemu-io writes it right after lsm-sync exits" 0 '' \
        qemu-io -f $fmt -c 'write -P 0x78 0 4k' busy.$fmt
done

finish
