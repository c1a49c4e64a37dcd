#!/bin/bash
# `lsm-sync copy` failures: injected EIO/ENOSPC/short transfers (the io
# layer's LSM_IO_FAULT wrapper), a really full file system, SIGTERM/SIGINT
# mid-copy, a source that shrinks, the buffered fallback where O_DIRECT is
# refused.  Every failure: exit 1, one line on stderr, a destination we
# created removed, an existing (-n) one left and called incomplete.
. "$(dirname "$0")/lib.sh"
need_cmd qemu-img qemu-io

# 12 MiB of random data with holes: many reads and writes per copy.
truncate -s 32M src.raw
for off in 0 4 8 12 16 20 24 28; do
    dd if=/dev/urandom of=src.raw bs=1M count=1 seek=$off conv=notrunc status=none
    dd if=/dev/urandom of=src.raw bs=512K count=1 seek=$((2 * off + 3)) conv=notrunc status=none
done
qemu-img convert -O qcow2 src.raw src.qcow2

# fails CASE WANT_IN_MESSAGE CMD...: exit 1 with one line on stderr.
fails() {
    local case=$1 want=$2; shift 2
    local rc=0
    "$@" >out.log 2>err.log || rc=$?
    if ((rc != 1)); then
        fail "$case" "exit $rc, want 1: $(head -n3 err.log)"
        return 1
    fi
    if [[ $(wc -l <err.log) != 1 ]]; then
        fail "$case" "want one line on stderr, got: $(head -n5 err.log)"
        return 1
    fi
    if [[ -n $want ]] && ! grep -qi -- "$want" err.log; then
        fail "$case" "message lacks '$want': $(cat err.log)"
        return 1
    fi
    return 0
}

# unmount DIR: io_uring drops its file references shortly after the
# process exits, so a busy mount is retried for a while.
unmount() {
    local i
    for i in $(seq 50); do
        umount "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    umount -l "$1"
}

gone() {
    if [[ -e $2 ]]; then
        fail "$1" "$2 left behind"
        return 1
    fi
    return 0
}

for io in uring aio psync; do
    for fault in write:3:EIO write:3:ENOSPC read:2:EIO write:1:EIO; do
        err=${fault##*:}
        msg="Input/output error"
        [[ $err == ENOSPC ]] && msg="No space left on device"
        for out in raw qcow2; do
            case="$fault $io -> $out"
            rm -f dst.$out
            if LSM_IO_FAULT=$fault fails "$case" "$msg" "$LSM_SYNC" copy --io=$io --no-physical \
                    -O $out src.qcow2 dst.$out; then
                gone "$case" dst.$out && pass "$case"
            fi
        done
        # -n: the destination stays, the message says it is incomplete.
        case="$fault $io -n"
        truncate -s 32M ndst.raw
        if LSM_IO_FAULT=$fault fails "$case" "incomplete" "$LSM_SYNC" copy --io=$io -n src.qcow2 ndst.raw; then
            if [[ -e ndst.raw ]] && grep -q "$msg" err.log; then pass "$case"; else fail "$case" "$(cat err.log)"; fi
        fi
        rm -f ndst.raw
    done
    # Short transfers are completed by the engine.
    for fault in write:2:short read:3:short; do
        case="$fault $io"
        rm -f dst.raw
        if LSM_IO_FAULT=$fault "$LSM_SYNC" copy --io=$io src.qcow2 dst.raw 2>err.log &&
           qemu-img compare -q src.qcow2 dst.raw; then
            pass "$case"
        else
            fail "$case" "$(cat err.log)"
        fi
    done
done
rm -f dst.raw dst.qcow2

# A physical copy that fails leaves nothing.
rm -f p.qcow2
if LSM_IO_FAULT=write:2:EIO fails "physical EIO" "Input/output error" "$LSM_SYNC" copy --physical -O qcow2 src.qcow2 p.qcow2; then
    gone "physical EIO" p.qcow2 && pass "physical EIO"
fi

# -n onto a destination that is too small.
truncate -s 1M small.raw
fails "-n too small" "smaller" "$LSM_SYNC" copy -n src.raw small.raw && pass "-n too small"
rm -f small.raw
# -n onto nothing.
fails "-n missing" "missing.raw" "$LSM_SYNC" copy -n src.raw missing.raw && gone "-n missing" missing.raw && pass "-n missing"

# A really full file system: an 8 MiB tmpfs for a 12 MiB copy.
mkdir -p full
if mount -t tmpfs -o size=8m lsm-copy-full full 2>/dev/null; then
    for out in raw qcow2; do
        case="tmpfs-full -> $out"
        if fails "$case" "No space left on device" "$LSM_SYNC" copy -O $out --no-physical src.qcow2 full/dst.$out; then
            gone "$case" full/dst.$out && pass "$case"
        fi
    done
    case="tmpfs-full physical"
    if fails "$case" "No space left on device" "$LSM_SYNC" copy -O qcow2 --physical src.qcow2 full/dst.qcow2; then
        gone "$case" full/dst.qcow2 && pass "$case"
    fi
    unmount full
else
    log "cannot mount a tmpfs (not root?): full file system cases skipped"
fi

# Signals mid-copy (the rate limit keeps the copy running for seconds).
for sig in TERM INT; do
    for out in raw qcow2; do
        case="SIG$sig -> $out"
        rm -f sig.$out
        "$LSM_SYNC" copy --rate=4M -O $out --no-physical src.qcow2 sig.$out >out.log 2>err.log &
        pid=$!
        sleep 1
        kill -$sig $pid
        rc=0
        wait $pid || rc=$?
        if ((rc != 1)); then
            fail "$case" "exit $rc: $(cat err.log)"
        elif [[ $(wc -l <err.log) != 1 ]] || ! grep -qE "terminated|interrupted" err.log; then
            fail "$case" "stderr: $(cat err.log)"
        else
            gone "$case" sig.$out && pass "$case"
        fi
    done
done

# SIGTERM mid-copy of a large sparse-random source (nbdkit), guest order
# and physical, without a rate limit: the copy of 1 GiB of data takes
# seconds here; if it ever finishes first the case cannot be judged.
if command -v nbdkit >/dev/null; then
    nbdkit -U - sparse-random size=2G percent=50 random-content=true seed=7 \
        --run 'qemu-img convert -f raw -O qcow2 "$uri" sr.qcow2'
    for mode in --no-physical --physical; do
        case="SIGTERM sparse-random $mode"
        rm -f sr-out.qcow2
        "$LSM_SYNC" copy $mode -O qcow2 sr.qcow2 sr-out.qcow2 >out.log 2>err.log &
        pid=$!
        sleep 0.3
        kill -TERM $pid
        rc=0
        wait $pid || rc=$?
        if ((rc == 0)); then
            log "$case: the copy finished before SIGTERM; not judged"
        elif ((rc != 1)) || [[ $(wc -l <err.log) != 1 ]] || ! grep -q terminated err.log; then
            fail "$case" "exit $rc: $(cat err.log)"
        else
            gone "$case" sr-out.qcow2 && pass "$case"
        fi
    done
    rm -f sr.qcow2 sr-out.qcow2
fi

# A source that shrinks during the copy.
cp --sparse=always src.raw shrink.raw
rm -f sh.raw
"$LSM_SYNC" copy --rate=4M shrink.raw sh.raw >out.log 2>err.log &
pid=$!
sleep 1
truncate -s 2M shrink.raw
rc=0
wait $pid || rc=$?
if ((rc == 1)) && [[ $(wc -l <err.log) == 1 ]] && [[ ! -e sh.raw ]]; then
    pass "source shrinks"
else
    fail "source shrinks" "exit $rc, $(cat err.log), $(ls sh.raw 2>&1)"
fi
rm -f shrink.raw sh.raw

# Buffered fallback: ramfs refuses O_DIRECT.
mkdir -p rfs
if mount -t ramfs lsm-copy-ramfs rfs 2>/dev/null; then
    if python3 -c 'import os,sys; os.open(sys.argv[1], os.O_CREAT|os.O_WRONLY|os.O_DIRECT)' rfs/probe 2>/dev/null; then
        log "ramfs accepts O_DIRECT here: fallback case skipped"
    else
        rm -f rfs/probe
        for out in raw qcow2; do
            case="buffered-fallback -> $out"
            rc=0
            "$LSM_SYNC" copy -v -O $out --no-physical src.qcow2 rfs/dst.$out >out.log 2>err.log || rc=$?
            nwarn=$(grep -c "warning:.*O_DIRECT" err.log || true)
            if ((rc != 0)); then
                fail "$case" "exit $rc: $(cat err.log)"
            elif [[ $nwarn != 1 ]] || ! grep -q "buffered" err.log; then
                fail "$case" "want one O_DIRECT warning and buffered I/O: $(cat err.log)"
            elif ! qemu-img compare -q src.qcow2 rfs/dst.$out; then
                fail "$case" "content differs"
            else
                pass "$case"
            fi
            rm -f rfs/dst.$out
        done
        case="direct=always on ramfs"
        if fails "$case" "O_DIRECT" "$LSM_SYNC" copy --direct=always src.qcow2 rfs/dst.raw; then
            gone "$case" rfs/dst.raw && pass "$case"
        fi
    fi
    unmount rfs
else
    log "cannot mount ramfs: buffered fallback cases skipped"
fi

finish
