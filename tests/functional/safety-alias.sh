#!/bin/bash
# `lsm-sync copy` never writes a file of its source, whatever path spells
# the destination, and never removes or waits on what it did not create:
# - DST is SRC or a file of SRC's chain (same path, symlink, hard link,
#   ../ and absolute spellings, a symlinked directory, /proc/self/fd/N, a
#   backing file, an external data file, a loop device over a source file):
#   exit 1 with "same file", every source file byte-identical afterwards;
# - DST is a FIFO or a character device: exit 1 within 5 s, the node is
#   still there;
# - a copy that fails after opening a pre-existing DST leaves it in place;
# - SRC, a backing file or a data file that is a FIFO: exit 1 within 5 s.
. "$(dirname "$0")/lib.sh"
need_cmd qemu-img qemu-io sha256sum timeout

LOOPS=()
cleanup_loops() {
    local l
    for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null || log "cannot detach $l"; done
    cleanup
}
trap cleanup_loops EXIT

# Sources: a raw file, a qcow2 over a raw base, a three-layer qcow2 chain,
# a standalone qcow2 and a qcow2 with an external data file.
head -c 3M /dev/urandom >a.raw
head -c 2M /dev/urandom >base.raw
qemu-img create -q -f qcow2 -b base.raw -F raw top.qcow2 2M
qio top.qcow2 -- "write -P 0x11 64k 64k"
qcow2 c0.qcow2 2M
qio c0.qcow2 -- "write -P 0x21 0 128k"
qemu-img create -q -f qcow2 -b c0.qcow2 -F qcow2 c1.qcow2
qio c1.qcow2 -- "write -P 0x22 128k 128k"
qemu-img create -q -f qcow2 -b c1.qcow2 -F qcow2 c2.qcow2
qio c2.qcow2 -- "write -P 0x23 256k 128k"
qcow2 b.qcow2 2M
qio b.qcow2 -- "write -P 0x31 0 1M"
qemu-img create -q -f raw ext.raw 2M
qcow2 ext.qcow2 2M data_file=ext.raw
qio ext.qcow2 -- "write -P 0x41 0 256k"
SOURCES=(a.raw base.raw top.qcow2 c0.qcow2 c1.qcow2 c2.qcow2 b.qcow2 ext.raw ext.qcow2)
sha256sum "${SOURCES[@]}" >sums.before

# unchanged CASE: every source file is byte-identical to the start.
unchanged() {
    if ! sha256sum --quiet -c sums.before >sums.log 2>&1; then
        fail "$1" "a source changed: $(tr '\n' ' ' <sums.log)"
        return 1
    fi
    return 0
}

# refused CASE WANT CMD...: exit 1 (${WANT_RC:-1}) within 5 s, one line on
# stderr that says WANT, and every source unchanged.
refused() {
    local case=$1 want=$2 rc=0 want_rc=${WANT_RC:-1}
    shift 2
    timeout 5 "$@" >out.log 2>err.log || rc=$?
    if ((rc != want_rc)); then
        fail "$case" "exit $rc, want $want_rc (124: it hung): $(head -n3 err.log)"
        return 0   # counted; go on with the next case
    fi
    if [[ $(wc -l <err.log) != 1 ]]; then
        fail "$case" "want one line on stderr, got: $(head -n5 err.log)"
        return 0   # counted; go on with the next case
    fi
    if ! grep -qi -- "$want" err.log; then
        fail "$case" "message lacks '$want': $(cat err.log)"
        return 0   # counted; go on with the next case
    fi
    unchanged "$case" || return 0
    pass "$case"
}

# ---- Aliasing spellings of a raw source ----
ln -s a.raw link.raw
ln a.raw hard.raw
ln -s . selfdir
mkdir sub
ln -s .. sub/up
ln -s "$T" absdir
here=$(basename "$T")
exec 9<a.raw   # inherited: /proc/self/fd/9 in lsm-sync names a.raw
for dst in a.raw ./a.raw "$T/a.raw" "../$here/a.raw" sub/../a.raw link.raw "$T/link.raw" \
           hard.raw selfdir/a.raw sub/up/a.raw absdir/hard.raw /proc/self/fd/9; do
    refused "raw -> $dst" "same file" "$LSM_SYNC" copy a.raw "$dst"
    refused "raw -n -> $dst" "same file" "$LSM_SYNC" copy -n a.raw "$dst"
    refused "raw -O qcow2 -> $dst" "same file" "$LSM_SYNC" copy -O qcow2 a.raw "$dst"
done
refused "raw via symlink -> itself" "same file" "$LSM_SYNC" copy link.raw hard.raw
exec 9<&-

# ---- qcow2 sources: itself, and every file of its chain ----
for mode in --physical --no-physical ""; do
    refused "qcow2 $mode -> itself" "same file" "$LSM_SYNC" copy $mode -O qcow2 b.qcow2 b.qcow2
    refused "qcow2 $mode -> itself via ../" "same file" "$LSM_SYNC" copy $mode -O qcow2 b.qcow2 "../$here/b.qcow2"
done
refused "top -> its raw base" "same file" "$LSM_SYNC" copy -O raw top.qcow2 base.raw
refused "top -> its raw base -n" "same file" "$LSM_SYNC" copy -n -O raw top.qcow2 base.raw
refused "top -> its raw base via symlinked dir" "same file" "$LSM_SYNC" copy -O raw top.qcow2 selfdir/base.raw
for layer in c0.qcow2 c1.qcow2; do
    refused "chain -> $layer" "same file" "$LSM_SYNC" copy -O qcow2 c2.qcow2 "$layer"
    refused "chain -n -> $layer" "same file" "$LSM_SYNC" copy -n -O qcow2 c2.qcow2 "$layer"
    refused "chain -B -> $layer" "same file" "$LSM_SYNC" copy -O qcow2 -B c1.qcow2 -F qcow2 c2.qcow2 "$layer"
done
refused "qcow2 -> its external data file" "same file" "$LSM_SYNC" copy ext.qcow2 ext.raw
refused "qcow2 -> its external data file -n" "same file" "$LSM_SYNC" copy -n ext.qcow2 ext.raw

# ---- -B naming DST itself: the copy would empty its own backing file ----
qcow2 keep.qcow2 2M
qio keep.qcow2 -- "write -P 0x71 0 64k"
keep_sum=$(sha256sum <keep.qcow2)
for b in keep.qcow2 ./keep.qcow2 "../$here/keep.qcow2" "$T/keep.qcow2"; do
    refused "-B $b onto itself" "own backing file" \
        "$LSM_SYNC" copy -O qcow2 -B "$b" -F qcow2 c2.qcow2 keep.qcow2
done
[[ $(sha256sum <keep.qcow2) == "$keep_sum" ]] && pass "-B onto itself: unchanged" ||
    fail "-B onto itself: unchanged"

# ---- A loop device over a source file ----
if ! command -v losetup >/dev/null; then
    log "losetup not found: loop device cases skipped"
elif ! loop=$(losetup -f --show a.raw 2>losetup.err); then
    log "cannot set up a loop device here ($(cat losetup.err)): loop device cases skipped"
else
    LOOPS+=("$loop")
    refused "raw -> loop over it" "same file" "$LSM_SYNC" copy a.raw "$loop"
    refused "raw -n -> loop over it" "same file" "$LSM_SYNC" copy -n a.raw "$loop"
    if loop2=$(losetup -f --show base.raw 2>losetup.err); then
        LOOPS+=("$loop2")
        refused "top -> loop over its base" "same file" "$LSM_SYNC" copy -O raw top.qcow2 "$loop2"
    else
        log "cannot set up a second loop device ($(cat losetup.err)): that case skipped"
    fi
    # The loop device as the source, its backing file as the destination.
    refused "loop -> the file behind it" "same file" "$LSM_SYNC" copy "$loop" a.raw
fi

# ---- Destinations that are not files: refused, never removed ----
mkfifo fifo
refused "raw -> FIFO" "FIFO" "$LSM_SYNC" copy a.raw fifo
refused "raw -n -> FIFO" "FIFO" "$LSM_SYNC" copy -n a.raw fifo
[[ -p fifo ]] && pass "FIFO destination still there" || fail "FIFO destination still there"
if mknod null c 1 3 2>mknod.err; then
    refused "raw -> character device" "character device" "$LSM_SYNC" copy a.raw null
    refused "qcow2 -O qcow2 -> character device" "character device" "$LSM_SYNC" copy -O qcow2 b.qcow2 null
    [[ -c null ]] && pass "character device still there" || fail "character device still there"
else
    log "mknod refused here ($(cat mknod.err)): character device cases skipped"
fi

# ---- A failing copy onto a pre-existing regular file leaves it there ----
for out in raw qcow2; do
    head -c 1M /dev/urandom >old.$out
    case="failed copy keeps existing $out"
    rc=0
    LSM_IO_FAULT=write:1:EIO timeout 20 "$LSM_SYNC" copy --no-physical -O $out b.qcow2 old.$out \
        2>err.log || rc=$?
    if ((rc != 1)); then
        fail "$case" "exit $rc, want 1: $(cat err.log)"
    elif [[ ! -f old.$out ]]; then
        fail "$case" "old.$out was removed: $(cat err.log)"
    elif grep -q "removed" err.log; then
        fail "$case" "says removed: $(cat err.log)"
    else
        pass "$case"
    fi
done
# ...and one that it created is removed.
rm -f new.raw
rc=0
LSM_IO_FAULT=write:1:EIO timeout 20 "$LSM_SYNC" copy b.qcow2 new.raw 2>err.log || rc=$?
if ((rc == 1)) && [[ ! -e new.raw ]]; then pass "failed copy removes what it created"
else fail "failed copy removes what it created" "exit $rc: $(cat err.log)"; fi

# ---- FIFOs as source, backing file and data file: refused at once ----
refused "FIFO source" "FIFO" "$LSM_SYNC" copy fifo out.raw
[[ ! -e out.raw ]] && pass "FIFO source: nothing created" || fail "FIFO source: nothing created"
qemu-img create -q -u -f qcow2 -b fifo -F raw overfifo.qcow2 2M
refused "FIFO backing file" "FIFO" "$LSM_SYNC" copy overfifo.qcow2 out.raw
refused "FIFO backing file (map)" "FIFO" "$LSM_SYNC" map overfifo.qcow2
refused "FIFO backing file (info)" "FIFO" "$LSM_SYNC" info --backing-chain overfifo.qcow2
WANT_RC=2 refused "FIFO source (compare: 2 is its error status)" "FIFO" "$LSM_SYNC" compare a.raw fifo
python3 - ext.qcow2 fifodata.qcow2 <<'EOF'
# A copy of ext.qcow2 whose data file name (same length) is "fifo.ra", a FIFO.
import sys
data = open(sys.argv[1], 'rb').read()
assert data.count(b'ext.raw') == 1
open(sys.argv[2], 'wb').write(data.replace(b'ext.raw', b'fifo.ra'))
EOF
mkfifo fifo.ra
refused "FIFO data file" "FIFO" "$LSM_SYNC" copy fifodata.qcow2 out.raw

# ---- The same copies to new files work ----
ok=0
"$LSM_SYNC" copy a.raw new-a.raw && qemu-img compare -q a.raw new-a.raw || ok=1
"$LSM_SYNC" copy -O qcow2 c2.qcow2 new-c.qcow2 && qemu-img compare -q c2.qcow2 new-c.qcow2 || ok=1
qemu-img check -q new-c.qcow2 || ok=1
((ok == 0)) && pass "copies to new files" || fail "copies to new files"
unchanged "end" && pass "sources unchanged"

finish
