#!/bin/bash
# `lsm-sync copy` of the qcow2 images that once crashed it (a NULL source
# in physical mode: empty images, files whose size is not a multiple of 512,
# internal snapshots, persistent bitmaps) and physical copies of sources
# that are corrupt or written during the copy.  A copy that is allowed must
# give an image that qemu-img compare calls identical and qemu-img check
# calls clean; a refused one exits 1 with one line and leaves no
# destination; nothing ever dies from a signal; no source is ever changed.
# Physical copies onto a block device, whole and killed, close the list.
. "$(dirname "$0")/lib.sh"
need_cmd qemu-img qemu-io jq sha256sum python3

sum() { sha256sum "$1" | cut -d' ' -f1; }

# run CASE CMD...: run the command; RC and err.log hold what it did.
# Counts a failure (and returns 1) if it died from a signal.
run() {
    local case=$1; shift
    RC=0
    timeout -k 5 60 "$@" >out.log 2>err.log || RC=$?
    if ((RC >= 124)); then
        fail "$case" "exit $RC (signal or time-out): $(head -n5 err.log)"
        return 1
    fi
    return 0
}

# copies CASE SRC [COPY OPTIONS...]: the copy succeeds, the destination is
# the source's guest content and clean, the source unchanged.  OK=1 if so.
copies() {
    local case=$1 src=$2; shift 2
    local before dst="$case.out.qcow2"
    OK=0
    before=$(sum "$src")
    rm -f "$dst"
    run "$case" "$LSM_SYNC" copy -O qcow2 "$@" "$src" "$dst" || return 0
    if ((RC != 0)); then
        fail "$case" "exit $RC: $(head -n3 err.log)"
    elif ! qemu-img compare -q "$src" "$dst" 2>cmp.log; then
        fail "$case" "qemu-img compare: not identical $(cat cmp.log)"
    elif ! qemu-img check -q "$dst" >chk.log 2>&1; then
        fail "$case" "qemu-img check: $(head -n5 chk.log)"
    elif [[ $(sum "$src") != "$before" ]]; then
        fail "$case" "the source changed"
    else
        pass "$case"
        OK=1
    fi
}

# refused CASE WANT SRC [COPY OPTIONS...]: exit 1, one line naming WANT, no
# destination left, the source unchanged.
refused() {
    local case=$1 want=$2 src=$3; shift 3
    local before dst="$case.out.qcow2"
    before=$(sum "$src")
    rm -f "$dst"
    run "$case" "$LSM_SYNC" copy -O qcow2 "$@" "$src" "$dst" || return 0
    if ((RC != 1)); then
        fail "$case" "exit $RC, want 1: $(head -n3 err.log)"
    elif [[ $(wc -l <err.log) != 1 ]]; then
        fail "$case" "want one line on stderr, got: $(head -n5 err.log)"
    elif ! grep -qi -- "$want" err.log; then
        fail "$case" "message lacks '$want': $(cat err.log)"
    elif [[ -e $dst ]]; then
        fail "$case" "$dst left behind"
    elif [[ $(sum "$src") != "$before" ]]; then
        fail "$case" "the source changed"
    else
        pass "$case"
    fi
}

# Empty images: no data cluster at all, and (1M) a file of 3 clusters and
# an 8-byte L1 table, so its size is not a multiple of 512.
qcow2 empty0.qcow2 0
qcow2 empty1m.qcow2 1M
for img in empty0 empty1m; do
    copies "$img-auto" $img.qcow2
    copies "$img-physical" $img.qcow2 --physical
    copies "$img-guest" $img.qcow2 --no-physical
done
(( $(stat -c %s empty1m.qcow2) % 512 != 0 )) || die "empty1m.qcow2 is 512-aligned: the case tests nothing"

# A compressed cluster at the end of the file (size not a multiple of 512).
qcow2 comp.qcow2 4M
qio comp.qcow2 -- 'write -P 1 0 1M' 'write -c -P 2 2M 64k'
(( $(stat -c %s comp.qcow2) % 512 != 0 )) || die "comp.qcow2 is 512-aligned: the case tests nothing"
copies comp-auto comp.qcow2
copies comp-physical comp.qcow2 --physical
# ... and a whole image converted with -c.
qemu-img convert -q -c -O qcow2 comp.qcow2 convc.qcow2
copies convert-c-auto convc.qcow2
copies convert-c-physical convc.qcow2 --physical
# One layer of a chain (-B), its file ending in a compressed cluster: the
# copy is physical, then its backing name is rewritten after the header.
qcow2 cbase.qcow2 4M
qio cbase.qcow2 -- 'write -P 15 0 4M'
qemu-img create -q -f qcow2 -b cbase.qcow2 -F qcow2 ctop.qcow2
qio ctop.qcow2 -- 'write -P 16 1M 64k' 'write -c -P 17 3M 64k'
(( $(stat -c %s ctop.qcow2) % 512 != 0 )) || die "ctop.qcow2 is 512-aligned: the case tests nothing"
mkdir -p bdir && cp cbase.qcow2 bdir/nbase.qcow2
before=$(sum ctop.qcow2)
rm -f bdir/top.qcow2
run B-physical "$LSM_SYNC" copy --physical -O qcow2 -B nbase.qcow2 -F qcow2 ctop.qcow2 bdir/top.qcow2 &&
    if ((RC != 0)); then fail B-physical "exit $RC: $(head -n3 err.log)"
    elif ! qemu-img compare -q ctop.qcow2 bdir/top.qcow2; then fail B-physical "chains differ"
    elif ! qemu-img check -q bdir/top.qcow2; then fail B-physical "qemu-img check failed"
    elif [[ $(qemu-img info --output=json bdir/top.qcow2 | jq -r '."backing-filename"') != nbase.qcow2 ]]; then
        fail B-physical "backing name not rewritten"
    elif [[ $(sum ctop.qcow2) != "$before" ]]; then fail B-physical "the source changed"
    else pass B-physical; fi

# Small and large clusters (a 2M-cluster image whose file ends 8 bytes
# into its last cluster).
qcow2 c512.qcow2 8M cluster_size=512
qio c512.qcow2 -- 'write -P 3 0 1M' 'write -P 4 5M 4k'
copies c512-physical c512.qcow2 --physical
qcow2 c2m.qcow2 16M cluster_size=2M
qio c2m.qcow2 -- 'write -P 5 2M 512'
copies c2m-physical c2m.qcow2 --physical

# Internal snapshots and persistent bitmaps: --physical copies them too (a
# physical copy is the file, cluster for cluster); the snapshot must read
# back the same.
qcow2 snap.qcow2 4M
qio snap.qcow2 -- 'write -P 6 0 1M'
qemu-img snapshot -c s1 snap.qcow2
qio snap.qcow2 -- 'write -P 7 512k 1M'
qemu-img snapshot -c s2 snap.qcow2   # the snapshot table last: an unaligned end
(( $(stat -c %s snap.qcow2) % 512 != 0 )) || die "snap.qcow2 is 512-aligned: the case tests nothing"
copies snap-physical snap.qcow2 --physical
if ((OK)); then
    qemu-img convert -l snapshot.name=s1 -O raw snap.qcow2 s1.want.raw
    qemu-img convert -l snapshot.name=s1 -O raw snap-physical.out.qcow2 s1.got.raw
    if cmp -s s1.want.raw s1.got.raw; then pass snap-physical-snapshot
    else fail snap-physical-snapshot "snapshot s1 reads differently in the copy"; fi
fi
copies snap-auto snap.qcow2
qcow2 bitmap.qcow2 4M
qio bitmap.qcow2 -- 'write -P 8 0 1M'
qemu-img bitmap --add bitmap.qcow2 b0
copies bitmap-physical bitmap.qcow2 --physical
if ((OK)); then
    if [[ $(qemu-img info --output=json bitmap-physical.out.qcow2 |
            jq -r '."format-specific".data.bitmaps[0].name') == b0 ]]; then
        pass bitmap-physical-kept
    else
        fail bitmap-physical-kept "bitmap b0 missing from the copy"
    fi
fi
copies bitmap-auto bitmap.qcow2

# A corrupt source that map refuses: the last L2 table cut off by
# truncating the file.  Refused before anything is written, in both modes.
qcow2 trunc.qcow2 2G
qio trunc.qcow2 -- 'write -P 9 0 1M' 'write -P 10 1G 64k'
off=$(qemu-img map --output=json trunc.qcow2 | jq '.[] | select(.start == 1073741824) | .offset')
truncate -s $((off - 65536 + 4096)) trunc.qcow2   # 4 KiB into its L2 table
run map-trunc "$LSM_SYNC" map trunc.qcow2 &&
    if ((RC == 1)); then pass map-trunc; else fail map-trunc "map exit $RC, want 1"; fi
refused trunc-auto "L2 table" trunc.qcow2
refused trunc-physical "L2 table" trunc.qcow2 --physical

# A data cluster whose refcount is zero (qemu-img check: an error): a
# physical copy, which copies the clusters in use, would lose it.
qcow2 leak.qcow2 4M
qio leak.qcow2 -- 'write -P 11 0 64k' 'write -P 12 1M 64k'
host=$(qemu-img map --output=json leak.qcow2 | jq '.[] | select(.start == 1048576) | .offset')
python3 - leak.qcow2 "$host" <<'EOF'
import struct, sys
path, host = sys.argv[1], int(sys.argv[2])
with open(path, 'r+b') as f:
    h = f.read(104)
    cluster_bits = struct.unpack('>I', h[20:24])[0]
    reftable = struct.unpack('>Q', h[48:56])[0]
    order = struct.unpack('>I', h[96:100])[0]
    assert order == 4, order   # 16-bit refcounts (the default)
    f.seek(reftable)
    block = struct.unpack('>Q', f.read(8))[0]
    f.seek(block + 2 * (host >> cluster_bits))
    f.write(b'\0\0')
EOF
qemu-img check leak.qcow2 >leak.log 2>&1 && die "qemu-img check accepts leak.qcow2: the case tests nothing"
refused leak-physical "refcount is zero" leak.qcow2 --physical
refused leak-auto "refcount is zero" leak.qcow2
# ... and an L2 table whose refcount is zero: the copy would lose it.
qcow2 leakl2.qcow2 4M
qio leakl2.qcow2 -- 'write -P 11 0 64k'
python3 - leakl2.qcow2 <<'EOF2'
import struct, sys
with open(sys.argv[1], 'r+b') as f:
    h = f.read(104)
    cluster_bits = struct.unpack('>I', h[20:24])[0]
    l1 = struct.unpack('>Q', h[40:48])[0]
    reftable = struct.unpack('>Q', h[48:56])[0]
    assert struct.unpack('>I', h[96:100])[0] == 4   # 16-bit refcounts
    f.seek(l1)
    l2 = struct.unpack('>Q', f.read(8))[0] & 0x00fffffffffffe00
    assert l2
    f.seek(reftable)
    block = struct.unpack('>Q', f.read(8))[0]
    f.seek(block + 2 * (l2 >> cluster_bits))
    f.write(b'\0\0')
EOF2
qemu-img check leakl2.qcow2 >leak.log 2>&1 && die "qemu-img check accepts leakl2.qcow2: the case tests nothing"
refused leak-l2-physical "metadata at host offset" leakl2.qcow2 --physical

# A source written during a physical copy (slowed down with --rate): the
# copy must see it and fail; the destination it made is removed.  Writes
# over data clusters already allocated change no metadata, only the data
# (and the file's modification time); a write past them allocates.
#
# Where lsm-sync holds its source with QEMU's image locks, qemu-io is
# refused; the write is then made the way a tool that ignores the locks
# would make it (into the file, at the data cluster's host offset, or
# appended), and the copy must still see it.
raw_write() {   # raw_write FILE OFFSET|end: 64 KiB of 0x0e, locks ignored
    python3 - "$1" "$2" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
off = os.lseek(fd, 0, os.SEEK_END) if sys.argv[2] == 'end' else int(sys.argv[2])
os.pwrite(fd, b'\x0e' * 65536, off)
os.close(fd)
PY
}
for how in overwrite allocate; do
    case=written-$how
    qcow2 w.qcow2 64M
    qio w.qcow2 -- 'write -P 13 0 8M'
    host1m=$(qemu-img map --output=json w.qcow2 | jq '.[0].offset + 1048576')
    rm -f "$case.out.qcow2"
    timeout -k 5 60 "$LSM_SYNC" copy --physical --rate=4M -O qcow2 w.qcow2 "$case.out.qcow2" \
        >out.log 2>err.log &
    pid=$!
    sleep 0.5
    if [[ $how == overwrite ]]; then
        wcmd='write -P 14 1M 64k' where=$host1m
    else
        wcmd='write -P 14 32M 64k' where=end
    fi
    if ! qemu-io -f qcow2 -c "$wcmd" w.qcow2 >qio.log 2>&1; then
        grep -qi lock qio.log || die "qemu-io $wcmd failed: $(head -n2 qio.log)"
        log "$case: qemu-io refused by the lock; writing past it"
        raw_write w.qcow2 "$where"
    fi
    RC=0
    wait "$pid" || RC=$?
    if ((RC != 1)); then
        fail "$case" "exit $RC, want 1: $(head -n3 err.log)"
    elif ! grep -q "during the copy" err.log || [[ $(wc -l <err.log) != 1 ]]; then
        fail "$case" "want one line saying the source changed, got: $(head -n3 err.log)"
    elif [[ -e $case.out.qcow2 ]]; then
        fail "$case" "$case.out.qcow2 left behind"
    else
        pass "$case"
    fi
    rm -f w.qcow2
done

# Onto a block device (a loop device full of random bytes): a device keeps
# what it held, so zeroes inside used clusters must be written and the old
# header must go first.  Allocated zero data, and files ending off 512.
truncate -s 64M loop.img
if dev=$(losetup -f --show loop.img 2>losetup.err); then
    trap 'losetup -d "$dev"; cleanup' EXIT
    qcow2 zdata.qcow2 4M
    qio zdata.qcow2 -- 'write -P 18 0 1M' 'write -P 0 256k 256k'
    for img in zdata empty1m comp c2m snap; do
        case=blockdev-physical-$img
        head -c 64M /dev/urandom | dd of="$dev" bs=1M iflag=fullblock oflag=direct status=none
        before=$(sum $img.qcow2)
        run "$case" "$LSM_SYNC" copy --physical -O qcow2 $img.qcow2 "$dev" || continue
        if ((RC != 0)); then fail "$case" "exit $RC: $(head -n3 err.log)"
        elif ! qemu-img compare -q -f qcow2 -F qcow2 $img.qcow2 "$dev" 2>cmp.log; then
            fail "$case" "not identical: $(cat cmp.log)"
        elif ! qemu-img check -q -f qcow2 "$dev" >chk.log 2>&1; then fail "$case" "check: $(head -n3 chk.log)"
        elif [[ $(sum $img.qcow2) != "$before" ]]; then fail "$case" "the source changed"
        else pass "$case"; fi
    done
    # Killed in the middle (SIGKILL, nothing cleans up): the device held a
    # valid qcow2, and must not look like one now.
    qcow2 kill.qcow2 64M
    qio kill.qcow2 -- 'write -P 19 0 8M'
    qemu-img convert -O qcow2 comp.qcow2 "$dev"   # a valid qcow2 there before
    qemu-img info -f qcow2 "$dev" >/dev/null || die "no qcow2 on $dev before the kill: the case tests nothing"
    "$LSM_SYNC" copy --physical --rate=4M -O qcow2 kill.qcow2 "$dev" >out.log 2>err.log &
    pid=$!
    sleep 0.5
    kill -KILL "$pid"
    RC=0
    wait "$pid" || RC=$?
    if ((RC != 137)); then
        fail blockdev-physical-killed "the copy ended before the kill (exit $RC): the case tests nothing"
    elif qemu-img info -U -f qcow2 "$dev" >info.log 2>&1; then
        fail blockdev-physical-killed "an interrupted copy left a device that opens as qcow2"
    else
        pass blockdev-physical-killed
    fi
    losetup -d "$dev"
    trap cleanup EXIT
else
    skip_case blockdev-physical "no loop device: $(head -n1 losetup.err)"
fi
rm -f loop.img

# The same source, unchanged, copies fine at that rate (the failure above
# is the write, not the rate limit).
qcow2 w.qcow2 64M
qio w.qcow2 -- 'write -P 13 0 2M'
copies rate-physical w.qcow2 --physical --rate=8M

finish
