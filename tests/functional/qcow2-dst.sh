#!/bin/bash
# Existing qcow2 destinations (formats/qcow2/qcow2-writer.c, docs/format-notes.md):
#  - copy -n into a qcow2 that holds other data gives the source's content,
#    as qemu-img convert -n does; one the writer refuses is left unchanged;
#  - the same sync run twice, and a sync killed with SIGKILL then run again,
#    end with the same complete chain;
#  - injected write errors leave the destination unchanged or marked
#    incomplete (QEMU refuses it), and a rerun completes it;
#  - the reader refuses an incomplete image by name, and the zero flag in a
#    version 2 image as QEMU does (so does the writer, as a -n destination).
# Sources are checksummed before and after every case.
. "$(dirname "$0")/lib.sh"
need_cmd qemu-img qemu-io sha256sum python3

sum() { sha256sum "$@" | awk '{print $1}' | tr '\n' ' '; }

# rc_of CMD...: run CMD, its exit status in RC (stdout/stderr in out.log/err.log).
rc_of() {
    set +e
    "$@" >out.log 2>err.log
    RC=$?
    set -e
}

# complete CASE SRC DST: qemu-img check clean and compare identical.
complete() {
    local case=$1 src=$2 dst=$3 why
    if ! why=$(qemu-img check -q "$dst" 2>&1); then
        fail "$case" "qemu-img check $dst: $why"
        return 1
    fi
    if ! why=$(qemu-img compare "$src" "$dst" 2>&1); then
        fail "$case" "qemu-img compare $src $dst: $why"
        return 1
    fi
    return 0
}

# incomplete CASE DST: QEMU refuses DST because of our feature bit.
incomplete() {
    local out
    # -U: the mark is what is tested here, not the locks
    if out=$(qemu-img info -U "$2" 2>&1) || ! grep -q "Unsupported qcow2 feature" <<<"$out"; then
        fail "$1" "qemu-img info does not refuse $2 as incomplete: $out"
        return 1
    fi
    return 0
}

# Sources: raw and qcow2, 24 MiB, data, holes and zeroes.
truncate -s 24M src.raw
for off in 0 3 7 12 20; do
    dd if=/dev/urandom of=src.raw bs=1M count=1 seek=$off conv=notrunc status=none
done
dd if=/dev/urandom of=src.raw bs=64K count=3 seek=$((23 * 16 + 5)) conv=notrunc status=none
qemu-img convert -O qcow2 src.raw src.qcow2
src_sums=$(sum src.raw src.qcow2)
check_sources() {
    [[ $(sum src.raw src.qcow2) == "$src_sums" ]] || fail "$1" "a source changed"
}

# A destination holding other data everywhere: where the source has data,
# holes and zeroes; extended L2 and small clusters too.
make_dst() {   # NAME SIZE OPTS
    rm -f "$1"
    qcow2 "$1" "$2" "$3"
    qio "$1" -- 'write -P 0xa5 0 8M' 'write -P 0x5a 10M 4M' 'write -z 16M 1M' 'write -P 0x3c 22M 2M'
}

# 1. copy -n into a qcow2 with other data: the guest content becomes the source's.
for opts in cluster_size=65536 cluster_size=65536,extended_l2=on cluster_size=4096,refcount_bits=1; do
    for src in src.raw src.qcow2; do
        case="copy -n $src into a full qcow2 ($opts)"
        make_dst dst.qcow2 24M "$opts"
        rc_of "$LSM_SYNC" copy -n -O qcow2 "$src" dst.qcow2
        if ((RC != 0)); then
            fail "$case" "exit $RC: $(cat err.log)"
        elif complete "$case" "$src" dst.qcow2; then
            # and again, into the complete copy
            rc_of "$LSM_SYNC" copy -n -O qcow2 "$src" dst.qcow2
            if ((RC != 0)); then fail "$case, twice" "exit $RC: $(cat err.log)"
            elif complete "$case, twice" "$src" dst.qcow2; then pass "$case"; fi
        fi
        check_sources "$case"
    done
done
# A destination larger than the source: its tail keeps what it has.
case="copy -n into a larger qcow2"
make_dst big.qcow2 32M ""
qio big.qcow2 -- 'write -P 0x77 30M 1M'
rc_of "$LSM_SYNC" copy -n -O qcow2 src.raw big.qcow2
if ((RC != 0)); then
    fail "$case" "exit $RC: $(cat err.log)"
elif ! qemu-img check -q big.qcow2; then
    fail "$case" "qemu-img check big.qcow2"
else
    # the first 24 MiB are the source's, the rest is the old content
    qemu-img convert -O raw big.qcow2 big.raw
    if cmp -s -n $((24 << 20)) src.raw big.raw &&
        qemu-io -f raw -c 'read -P 0x77 30M 1M' big.raw | grep -q "^read 1048576"; then
        pass "$case"
    else
        fail "$case" "content of big.qcow2"
    fi
fi

# 2. Destinations the writer refuses stay byte-identical.
refused() {   # CASE DST [copy options]
    local case=$1 dst=$2 before
    shift 2
    before=$(sum "$dst")
    rc_of "$LSM_SYNC" copy -n -O qcow2 "$@" src.qcow2 "$dst"
    if ((RC != 1)); then
        fail "$case" "exit $RC, want 1: $(cat err.log)"
    elif [[ $(wc -l <err.log) != 1 ]]; then
        fail "$case" "want one line on stderr: $(cat err.log)"
    elif [[ $(sum "$dst") != "$before" ]]; then
        fail "$case" "$dst changed"
    elif grep -q "is incomplete" err.log; then
        fail "$case" "an untouched destination is called incomplete: $(cat err.log)"
    else
        pass "$case"
    fi
    check_sources "$case"
}
qcow2 small.qcow2 16M
qio small.qcow2 -- 'write -P 0xa5 0 8M' 'write -z 10M 1M'
refused "copy -n into a smaller qcow2" small.qcow2
make_dst snap.qcow2 24M ""
qemu-img snapshot -c s1 snap.qcow2
refused "copy -n into a qcow2 with an internal snapshot" snap.qcow2
make_dst comp.qcow2 24M ""
qio comp.qcow2 -- 'write -c -P 0x11 18M 64k'
refused "copy -n into a qcow2 with compressed clusters" comp.qcow2
make_dst bm.qcow2 24M ""
qemu-img bitmap --add bm.qcow2 b0
refused "copy -n into a qcow2 with a persistent bitmap" bm.qcow2
# (copy -n into a version 2 qcow2 works: qemu-img-compat.sh pairs it with
# qemu-img convert -n; one with the zero flag is refused below.)  With
# --journal it is refused: a resumed copy would finish a version 3 image.
qcow2 v2.qcow2 24M compat=0.10
refused "copy -n --journal into a version 2 qcow2" v2.qcow2 --journal v2.journal
[[ ! -e v2.journal ]] || fail "copy -n --journal into a version 2 qcow2" "a journal was left"

# 3. Faults on a copy -n into an existing qcow2: exit 1; the destination
#    is unchanged or marked incomplete; a rerun completes it.
for fault in write:1:EIO write:2:EIO write:3:EIO write:4:EIO write:5:EIO \
             uring/write:2:ENOSPC aio/write:3:EIO psync/write:2:EIO; do
    io=auto
    if [[ $fault == */* ]]; then io=${fault%%/*}; fault=${fault#*/}; fi
    case="$fault ($io) on copy -n into a full qcow2"
    make_dst fault.qcow2 24M ""
    before=$(sum fault.qcow2)
    LSM_IO_FAULT=$fault rc_of "$LSM_SYNC" copy --io=$io -n -O qcow2 src.qcow2 fault.qcow2
    msg="Input/output error"
    [[ $fault == *ENOSPC ]] && msg="No space left on device"
    if ((RC != 1)) || ! grep -q "$msg" err.log; then
        fail "$case" "exit $RC, want 1 with '$msg': $(cat err.log)"
        continue
    fi
    if [[ $(sum fault.qcow2) != "$before" ]]; then
        incomplete "$case" fault.qcow2 || continue
        rc_of "$LSM_SYNC" info fault.qcow2
        if ((RC != 1)) || ! grep -q "incomplete copy" err.log; then
            fail "$case" "lsm-sync info on the incomplete image: exit $RC: $(cat err.log)"
            continue
        fi
    fi
    rc_of "$LSM_SYNC" copy -n -O qcow2 src.qcow2 fault.qcow2
    if ((RC != 0)); then
        fail "$case" "rerun: exit $RC: $(cat err.log)"
    elif complete "$case" src.qcow2 fault.qcow2; then
        pass "$case"
    fi
    check_sources "$case"
done

# 3b. The same on a block device (a loop device): the end of the image
#     comes from its metadata, not from the size of the file.
loop=
detach() {
    # only our own loop device (another test may have reused the number)
    if [[ -n $loop ]] && losetup "$loop" 2>/dev/null | grep -qF "$T/loop.img"; then
        losetup -d "$loop"
    fi
    cleanup
}
trap detach EXIT
if [[ $(id -u) == 0 ]] && command -v losetup >/dev/null && truncate -s 64M loop.img &&
    loop=$(losetup -f --show loop.img 2>/dev/null); then
    case="write:2:EIO on copy -n into a full qcow2 on a loop device"
    make_dst "$loop" 24M ""
    LSM_IO_FAULT=write:2:EIO rc_of "$LSM_SYNC" copy -n -O qcow2 src.qcow2 "$loop"
    if ((RC != 1)); then
        fail "$case" "exit $RC, want 1: $(cat err.log)"
    elif incomplete "$case" "$loop"; then
        rc_of "$LSM_SYNC" copy -n -O qcow2 src.qcow2 "$loop"
        if ((RC != 0)); then
            fail "$case" "rerun: exit $RC: $(cat err.log)"
        elif complete "$case" src.qcow2 "$loop"; then
            pass "$case"
        fi
    fi
    check_sources "$case"
else
    log "no loop device here (not root, or no losetup): block-device case not run"
fi

# 4. sync twice, and a sync killed with SIGKILL then run again.
make_chain() {   # DIR: raw base <- qcow2 <- qcow2, 32 MiB, random data
    mkdir -p "$1"
    truncate -s 32M "$1/base.raw"
    dd if=/dev/urandom of="$1/base.raw" bs=1M count=12 conv=notrunc status=none
    qemu-img create -q -f qcow2 -b base.raw -F raw "$1/mid.qcow2"
    qio "$1/mid.qcow2" -- 'write -P 3 1M 2M' 'write -z 8M 1M' 'write -P 5 20M 6M'
    qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 "$1/top.qcow2"
    qio "$1/top.qcow2" -- 'write -P 4 2M 256k' 'write -z 21M 1M' 'write -P 6 28M 4M'
}
chain_sums() { sum "$1/base.raw" "$1/mid.qcow2" "$1/top.qcow2"; }
chain_complete() {   # CASE SRC DST
    local v
    for v in mid top; do
        qemu-img check -q "$3/$v.qcow2" || { fail "$1" "qemu-img check $3/$v.qcow2"; return 1; }
        qemu-img compare -q "$2/$v.qcow2" "$3/$v.qcow2" || { fail "$1" "$v differs"; return 1; }
    done
    cmp -s "$2/base.raw" "$3/base.raw" || { fail "$1" "base differs"; return 1; }
    return 0
}
make_chain c
csums=$(chain_sums c)
mkdir d
"$LSM_SYNC" clone-structure c/top.qcow2 --dst-dir d >/dev/null
case="sync ALL twice"
rc_of "$LSM_SYNC" sync --type=ALL c/top.qcow2 d/top.qcow2
if ((RC != 0)); then
    fail "$case" "first: exit $RC: $(cat err.log)"
elif chain_complete "$case (first)" c d; then
    rc_of "$LSM_SYNC" sync --type=ALL c/top.qcow2 d/top.qcow2
    if ((RC != 0)); then
        fail "$case" "second: exit $RC: $(cat err.log)"
    elif chain_complete "$case (second)" c d; then
        pass "$case"
    fi
fi
[[ $(chain_sums c) == "$csums" ]] || fail "$case" "the source chain changed"

case="sync failing on write:3:EIO, then run again"
mkdir f
"$LSM_SYNC" clone-structure c/top.qcow2 --dst-dir f >/dev/null
LSM_IO_FAULT=write:3:EIO rc_of "$LSM_SYNC" sync --type=ALL c/top.qcow2 f/top.qcow2
if ((RC != 1)); then
    fail "$case" "exit $RC, want 1: $(cat err.log)"
else
    rc_of "$LSM_SYNC" sync --type=ALL c/top.qcow2 f/top.qcow2
    if ((RC != 0)); then
        fail "$case" "rerun: exit $RC: $(cat err.log)"
    elif chain_complete "$case" c f; then
        pass "$case"
    fi
fi
[[ $(chain_sums c) == "$csums" ]] || fail "$case" "the source chain changed"

case="sync killed with SIGKILL, then run again"
mkdir k
"$LSM_SYNC" clone-structure c/top.qcow2 --dst-dir k >/dev/null
# marked VOLUME: the incomplete bit (63: the top bit of byte 72) is set.
marked() { (( $(od -An -tu1 -j72 -N1 "$1") >= 128 )); }
"$LSM_SYNC" sync --type=ALL --rate=4M c/top.qcow2 k/top.qcow2 >/dev/null 2>&1 &
pid=$!
# kill it while it writes a qcow2 volume (at most 20 s of polling)
for _ in $(seq 200); do
    if marked k/mid.qcow2 || marked k/top.qcow2; then
        sleep 0.3
        break
    fi
    kill -0 $pid 2>/dev/null || break
    sleep 0.1
done
killed=1
kill -KILL $pid 2>/dev/null || killed=0
set +e
wait $pid 2>/dev/null
krc=$?
set -e
if ((killed == 0 || krc != 137)); then
    fail "$case" "the sync ended before the kill (exit $krc): use a slower rate"
else
    # The kernel drops a killed process's image locks when the last
    # reference to its descriptors goes, and io_uring lets go of its
    # references a little after the process is reaped: wait for that
    # (QEMU's read-only open conflicts with a writer's lock), at most 5 s.
    for _ in $(seq 50); do
        qemu-img info -f raw k/mid.qcow2 >/dev/null 2>&1 &&
            qemu-img info -f raw k/top.qcow2 >/dev/null 2>&1 && break
        sleep 0.1
    done
    # what was being written is refused by QEMU and by our reader
    refused_volumes=0
    for v in mid top; do
        if ! qemu-img info -U k/$v.qcow2 >/dev/null 2>&1; then
            incomplete "$case" k/$v.qcow2 && refused_volumes=$((refused_volumes + 1))
        fi
    done
    rc_of "$LSM_SYNC" sync --type=ALL c/top.qcow2 k/top.qcow2
    if ((refused_volumes == 0)); then
        fail "$case" "no volume was left marked incomplete by the kill"
    elif ((RC != 0)); then
        fail "$case" "rerun: exit $RC: $(cat err.log)"
    elif chain_complete "$case" c k; then
        pass "$case"
    fi
fi
[[ $(chain_sums c) == "$csums" ]] || fail "$case" "the source chain changed"

# 5. Reader: the zero flag in a version 2 image is corruption (QEMU:
#    "Zero cluster entry found in pre-v3 image").
case="zero flag in a compat 0.10 image"
qcow2 v2z.qcow2 4M compat=0.10
qio v2z.qcow2 -- 'write -P 0x55 0 128k'
python3 - v2z.qcow2 <<'EOF'
import struct, sys
with open(sys.argv[1], "r+b") as f:
    h = f.read(112)
    l1 = struct.unpack(">Q", h[40:48])[0]
    f.seek(l1)
    l2 = struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00
    f.seek(l2 + 8)
    e = struct.unpack(">Q", f.read(8))[0]
    f.seek(l2 + 8)
    f.write(struct.pack(">Q", e | 1))
EOF
v2sum=$(sum v2z.qcow2)
if qemu-img map v2z.qcow2 >/dev/null 2>&1; then
    fail "$case" "qemu-img map accepts it: the test image is wrong"
else
    rc_of "$LSM_SYNC" map v2z.qcow2
    rc1=$RC
    grep -q "zero cluster entry in a version 2" err.log || rc1=x
    rc_of "$LSM_SYNC" copy -O raw v2z.qcow2 v2z.raw
    if [[ $rc1 != 1 ]] || ((RC != 1)) || [[ -e v2z.raw ]]; then
        fail "$case" "map exit $rc1, copy exit $RC: $(cat err.log)"
    elif [[ $(sum v2z.qcow2) != "$v2sum" ]]; then
        fail "$case" "the image changed"
    else
        pass "$case"
    fi
    # The writer refuses it as a -n destination too (a source of its size),
    # leaving it as it was.
    case="copy -n into a compat 0.10 image with the zero flag"
    qemu-img create -q -f raw v2z-src.raw 4M
    rc_of "$LSM_SYNC" copy -n -O qcow2 v2z-src.raw v2z.qcow2
    if ((RC != 1)) || [[ $(wc -l <err.log) != 1 ]] || ! grep -q "zero cluster entry" err.log; then
        fail "$case" "exit $RC: $(cat err.log)"
    elif [[ $(sum v2z.qcow2) != "$v2sum" ]]; then
        fail "$case" "the image changed"
    else
        pass "$case"
    fi
fi

finish
