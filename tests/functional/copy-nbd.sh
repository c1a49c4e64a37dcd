#!/bin/bash
# `lsm-sync copy` from NBD sources: nbdkit's sparse-random plugin (block
# status with holes, random data) to raw and qcow2, and qemu-nbd serving a
# qcow2 chain; each checked against qemu-img reading the same export.  The
# whole test skips (exit 77, with the reason) where nbdkit is missing or
# lsm-sync was built without libnbd.
. "$(dirname "$0")/lib.sh"
. "$TESTS_DIR/copy-lib.sh"
need_cmd qemu-img qemu-io qemu-nbd nbdkit python3

# Built with libnbd?  An NBD name that cannot connect must say so (and not
# "built without libnbd").
rc=0
"$LSM_SYNC" copy "nbd+unix:///?socket=$T/nonexistent.sock" x.raw >probe.log 2>&1 || rc=$?
if grep -q "without libnbd" probe.log; then
    skip "lsm-sync was built without libnbd: $(cat probe.log)"
fi
if ((rc != 1)) || ! grep -q "cannot connect" probe.log; then
    die "a missing NBD socket: exit $rc, want 1 and 'cannot connect': $(cat probe.log)"
fi
[[ ! -e x.raw ]] || die "a failed NBD copy left x.raw"

for out in raw qcow2; do
    rm -f nbd.$out ref.raw
    if nbdkit -U - sparse-random size=256M percent=30 random-content=true seed=5 \
           --run "\"$LSM_SYNC\" copy -O $out \"\$uri\" nbd.$out && qemu-img convert -f raw \"\$uri\" ref.raw" 2>err.log; then
        same "nbd sparse-random $out" ref.raw nbd.$out && sparse "nbd sparse-random $out" ref.raw nbd.$out &&
            pass "nbd sparse-random $out"
    else
        fail "nbd sparse-random $out" "$(head -n3 err.log)"
    fi
    rm -f nbd.$out ref.raw
done

# Background syncs of a raw destination (endpoint/file.c): with psync
# (whose fdatasync strace sees; io_uring's it cannot) and one every 4 MiB,
# a pull of about 77 MiB of data must sync many times, not only at the
# end, and the result must not change.  Then the first background sync
# fails (EIO injected on the first flush): the copy must fail, not exit 0.
# About 1.5 s.
if command -v strace >/dev/null; then
    # LeakSanitizer cannot run under ptrace: leaks are checked by the runs without strace.
    asan_noleak=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
    # synced_pull CASE WANT OPTS...: a pull under strace with OPTS, its
    # fsync/fdatasync calls counted and compared (arithmetic WANT on n)
    synced_pull() {
        local case=$1 want=$2 n
        shift 2
        rm -f bg.raw ref.raw
        if nbdkit -U - sparse-random size=256M percent=30 random-content=true seed=7 \
               --run "LSM_FILE_SYNC_EVERY=4194304 ASAN_OPTIONS=$asan_noleak strace -f -qq -e trace=fdatasync,fsync -o bg.strace \"$LSM_SYNC\" copy $* --io=psync -f raw \"\$uri\" bg.raw && qemu-img convert -f raw \"\$uri\" ref.raw" 2>err.log; then
            n=$(grep -cE '^[0-9]+ +(fdatasync|fsync)\(' bg.strace || :)
            if (($want)); then
                same "$case" ref.raw bg.raw && pass "$case ($n syncs)"
            else
                fail "$case" "$n fsync/fdatasync calls, want $want"
            fi
        else
            fail "$case" "$(head -n3 err.log)"
        fi
        rm -f bg.raw ref.raw bg.strace
    }
    synced_pull "nbd background syncs" 'n >= 5'
    rc=0
    nbdkit -U - sparse-random size=256M percent=30 random-content=true seed=7 \
        --run "LSM_FILE_SYNC_EVERY=4194304 LSM_IO_FAULT=flush:1:EIO \"$LSM_SYNC\" copy --io=psync -f raw \"\$uri\" bg.raw" >err.log 2>&1 || rc=$?
    if ((rc == 1)) && grep -q "background sync failed" err.log; then
        pass "nbd failed background sync"
    else
        fail "nbd failed background sync" "exit $rc, want 1 and 'background sync failed': $(head -n3 err.log)"
    fi
    rm -f bg.raw
    # -t unsafe: no sync at all, background or final, and the same bytes
    synced_pull "nbd -t unsafe: no sync" 'n == 0' -t unsafe
else
    skip_case "nbd background syncs" "strace is not installed (scripts/deps.sh --tests installs it)"
fi

# A 3-deep chain (raw base, two qcow2 layers) served read-only by qemu-nbd.
truncate -s 8M base.raw
qio base.raw raw -- "write -P 0x71 0 2M" "write -P 0x72 6M 1M"
qemu-img create -q -f qcow2 -b base.raw -F raw mid.qcow2
qio mid.qcow2 -- "write -P 0x73 1M 2M" "write -z 6M 512k"
qemu-img create -q -f qcow2 -o cluster_size=4096 -b mid.qcow2 -F qcow2 top.qcow2
qio top.qcow2 -- "write -P 0x74 1M 1M" "write -z 3200k 64k" "discard 2M 64k"
stop_nbd() {
    if [[ -s $T/q.pid ]]; then kill "$(cat "$T/q.pid")"; fi
    rm -f "$T/q.pid"
}
trap 'stop_nbd; cleanup' EXIT
qemu-nbd -r -t -f qcow2 -k "$T/q.sock" --pid-file="$T/q.pid" --fork top.qcow2
for out in raw qcow2; do
    rm -f nbd.$out
    if run "nbd qemu-nbd chain $out" -O $out "nbd+unix:///?socket=$T/q.sock" nbd.$out; then
        same "nbd qemu-nbd chain $out" top.qcow2 nbd.$out && pass "nbd qemu-nbd chain $out"
    fi
    rm -f nbd.$out
done
stop_nbd

# A pull onto the file the export serves (aliasing through the server):
# qemu-nbd holds its lock, so the copy is refused with one line, with and
# without -n, and the file keeps every byte.
qemu-nbd -r -t -f raw -k "$T/q.sock" --pid-file="$T/q.pid" --fork base.raw
sum=$(sha256sum <base.raw)
for n in "" -n; do
    rc=0
    "$LSM_SYNC" copy $n "nbd+unix:///?socket=$T/q.sock" base.raw 2>err.log || rc=$?
    if ((rc != 1)) || [[ $(wc -l <err.log) != 1 ]] || ! grep -q "lock" err.log; then
        fail "pull onto the export's file ${n:-new}" "exit $rc: $(cat err.log)"
    elif [[ $(sha256sum <base.raw) != "$sum" ]]; then
        fail "pull onto the export's file ${n:-new}" "base.raw changed"
    else
        pass "pull onto the export's file ${n:-new}"
    fi
done
stop_nbd

finish
