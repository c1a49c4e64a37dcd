#!/bin/bash
# `lsm-sync copy` to NBD destinations (docs/nbd.md), real servers only:
# nbdkit's memory plugin (multi-conn on, and off through the multi-conn
# filter: the log filter counts the connections), qemu-nbd serving a
# writable qcow2, sources from a qcow2 chain, nbdkit's sparse-random and
# pattern plugins and qemu-nbd; zero ranges of a destination that held
# data; background flushes during a copy (the log filter shows them before
# the last write); a destination that reads as zeroes is not zeroed; nbdkit's error
# filter (transient errors retried, permanent ones: exit 1 naming the
# offset), the delay filter (requests in flight overlap; a stalled write
# times out; SIGTERM ends a stalled copy within 1 s), a server that fails
# every flush, a server killed in the middle of a copy, a read-only export
# and one too small refused.
# Results: qemu-img compare through the same URI, and sha256 of what
# nbdcopy reads back.
. "$(dirname "$0")/lib.sh"
need_cmd nbdkit qemu-nbd qemu-img qemu-io nbdcopy sha256sum
. "$TESTS_DIR/nbd-netns-lib.sh"   # alive

rc=0
"$LSM_SYNC" copy probe.raw "nbd+unix:///?socket=$T/none.sock" 2>probe.log || rc=$?
if grep -q "built without libnbd" probe.log; then
    skip "lsm-sync was built without libnbd"
fi

# the servers: nbdkit_on, qemu_nbd_on, uri, stop_servers (nbd-netns-lib.sh)
trap 'stop_servers; cleanup' EXIT
sha() { nbdcopy "$1" - | sha256sum | cut -d' ' -f1; }

# The source: a 3-deep chain with data, zeroes, holes and a backing file.
qemu-img create -q -f qcow2 base.qcow2 48M
qio base.qcow2 -- "write -P 0x61 0 3M" "write -P 0x62 20M 1M" "write -z 30M 2M" "write -P 0x63 47M 1M"
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
qio mid.qcow2 -- "write -P 0x64 1M 2M" "write -z 20M 256k"
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
qio top.qcow2 -- "write -P 0x65 10M 3M" "discard 47M 64k"
qemu-img convert -f qcow2 -O raw top.qcow2 top.raw
want=$(sha256sum top.raw | cut -d' ' -f1)

# 1. nbdkit memory, multi-conn on (the plugin offers it) and off (the
# multi-conn filter hides it): the copy equals the chain, 4 connections
# or 1.
for mc in on off; do
    case=$([[ $mc == on ]] && echo "memory multi-conn" || echo "memory single-conn")
    filt=(--filter=log) params=(logfile="$T/log.$mc")
    [[ $mc == off ]] && filt+=(--filter=multi-conn) params+=(multi-conn-mode=disable)
    nbdkit_on "$T/m.sock" "${filt[@]}" memory 48M "${params[@]}"
    if ! "$LSM_SYNC" copy top.qcow2 "$(uri m.sock)" 2>err.log; then
        fail "$case" "$(head -n3 err.log)"
    elif ! qemu-img compare -q -f qcow2 top.qcow2 "$(uri m.sock)"; then
        fail "$case" "qemu-img compare: the export differs from top.qcow2"
    elif [[ $(sha "$(uri m.sock)") != "$want" ]]; then
        fail "$case" "sha256 of the export differs"
    else
        n=$(awk '/connection=.* Connect|Connect export/ { n++ } END { print n + 0 }' "$T/log.$mc")
        if [[ $mc == on ]] && ((n < 4 + 2)); then   # 4 of ours, qemu-img's, nbdcopy's
            fail "$case" "$n connections in the log, want ours 4 (+2)"
        elif [[ $mc == off ]] && ((n != 1 + 2)); then
            fail "$case" "$n connections in the log, want ours 1 (+2)"
        else
            pass "$case"
        fi
    fi
    # 2. The same export, now full of data, from a source with other zero
    # ranges: they must be zeroed (and --connections=2 used).
    if [[ $mc == on ]]; then
        truncate -s 48M z.raw
        qio z.raw raw -- "write -P 0x66 5M 1M"
        if ! "$LSM_SYNC" copy --connections=2 -v z.raw "$(uri m.sock)" >out.log 2>err.log; then
            fail "zeroes over data" "$(head -n3 err.log)"
        elif ! qemu-img compare -q -f raw z.raw "$(uri m.sock)"; then
            fail "zeroes over data" "the export differs from z.raw"
        elif ! grep -q "47 MiB zeroed" err.log; then
            fail "zeroes over data" "want 47 MiB zeroed: $(cat err.log)"
        else
            pass "zeroes over data"
        fi
    fi
    stop_servers
done

# 2b. Background flushes: 96 MiB of data on one connection get an
# NBD_CMD_FLUSH every 32 MiB written (docs/nbd.md), sent while writes are
# still to come (the log filter shows the order), and the final one.
truncate -s 96M f.raw
qio f.raw raw -- "write -P 0x41 0 96M"
nbdkit_on "$T/m.sock" --filter=log memory 96M logfile="$T/log.flush"
if ! "$LSM_SYNC" copy --connections=1 f.raw "$(uri m.sock)" 2>err.log; then
    fail "background flush" "$(head -n3 err.log)"
elif ! qemu-img compare -q -f raw -F raw f.raw "$(uri m.sock)"; then
    fail "background flush" "qemu-img compare: the export differs"
else
    # flushes sent before the last write was sent, and in all
    n=$(awk '/ Write id=.* \.\.\.$/ { w = NR } / Flush id=.* \.\.\.$/ { f[++k] = NR }
             END { b = 0; for (i = 1; i <= k; i++) if (f[i] < w) b++; print b, k + 0 }' "$T/log.flush")
    if [[ ${n% *} -ge 2 && ${n#* } -ge 3 ]]; then
        pass "background flush"
    else
        fail "background flush" "flushes before the last write, in all: $n (want >= 2, >= 3)"
    fi
fi
stop_servers
rm -f f.raw

# 3. A fresh export reads as zeroes (base:allocation says so): nothing is
# zeroed, the zero ranges are skipped; --target-is-zero says the same.
for how in probe flag; do
    nbdkit_on "$T/m.sock" memory 48M
    args=(); [[ $how == flag ]] && args=(--target-is-zero)
    if ! "$LSM_SYNC" copy -v "${args[@]}" top.qcow2 "$(uri m.sock)" >out.log 2>err.log; then
        fail "reads as zeroes ($how)" "$(head -n3 err.log)"
    elif ! grep -q " 0 B zeroed" err.log; then
        fail "reads as zeroes ($how)" "zeroed anyway: $(cat err.log)"
    elif ! qemu-img compare -q -f qcow2 top.qcow2 "$(uri m.sock)"; then
        fail "reads as zeroes ($how)" "the export differs"
    else
        pass "reads as zeroes ($how)"
    fi
    stop_servers
done

# 4. qemu-nbd serving a writable qcow2 (4 clients allowed), from the chain
# and from an NBD source (qemu-nbd serving the chain read-only): qemu-img
# compare through the URI, then of the qcow2 file itself.
for from in file nbd; do
    qemu-img create -q -f qcow2 dst.qcow2 48M
    qemu_nbd_on "$T/q.sock" -e 4 -f qcow2 dst.qcow2
    src=top.qcow2
    if [[ $from == nbd ]]; then
        qemu_nbd_on "$T/r.sock" -r -e 4 -f qcow2 top.qcow2
        src=$(uri r.sock)
    fi
    if ! "$LSM_SYNC" copy "$src" "$(uri q.sock)" 2>err.log; then
        fail "qemu-nbd qcow2 target from $from" "$(head -n3 err.log)"
    elif ! qemu-img compare -q -f qcow2 top.qcow2 "$(uri q.sock)"; then
        fail "qemu-nbd qcow2 target from $from" "the export differs"
    else
        stop_servers
        if ! qemu-img compare -q -f qcow2 -F qcow2 top.qcow2 dst.qcow2 ||
           ! qemu-img check -q dst.qcow2; then
            fail "qemu-nbd qcow2 target from $from" "dst.qcow2 differs or fails check"
        else
            pass "qemu-nbd qcow2 target from $from"
        fi
    fi
    stop_servers
    rm -f dst.qcow2
done

# 5. nbdkit sources: sparse-random (holes, random data) and pattern, to a
# memory export, NBD to NBD.
for plugin in "sparse-random size=64M percent=25 seed=7 random-content=true" "pattern size=24M"; do
    name=${plugin%% *}
    nbdkit_on "$T/s.sock" --read-only $plugin
    nbdkit_on "$T/m.sock" memory 64M
    if ! "$LSM_SYNC" copy "$(uri s.sock)" "$(uri m.sock)" 2>err.log; then
        fail "$name to memory" "$(head -n3 err.log)"
    elif ! qemu-img compare -q -f raw -F raw "$(uri s.sock)" "$(uri m.sock)"; then
        fail "$name to memory" "qemu-img compare: the export differs"
    else
        pass "$name to memory"
    fi
    stop_servers
done

# 6. Refused: a read-only export, an export smaller than the source, -O qcow2,
# and what needs a destination file (-C, creation options; --bitmaps is
# refused by the command line already: -O raw).
nbdkit_on "$T/ro.sock" --read-only memory 48M
nbdkit_on "$T/small.sock" memory 16M
for c in "read-only export|$(uri ro.sock)|read-only" "small export|$(uri small.sock)|is smaller" \
         "-O qcow2|-O qcow2 $(uri small.sock)|-O raw only" \
         "-C|-C $(uri ro.sock)|needs a destination file" \
         "-o preallocation|-o preallocation=full $(uri ro.sock)|no effect on an NBD destination"; do
    IFS='|' read -r case dst want <<<"$c"
    rc=0
    # shellcheck disable=SC2086
    "$LSM_SYNC" copy top.qcow2 $dst 2>err.log || rc=$?
    if ((rc != 1)) || ! grep -q -e "$want" err.log || (($(wc -l <err.log) != 1)); then
        fail "refuses $case" "exit $rc, want 1 and one line with '$want': $(cat err.log)"
    else
        pass "refuses $case"
    fi
done
stop_servers

# 6b. -l: an internal snapshot's view of a qcow2 source.
qemu-img create -q -f qcow2 snap.qcow2 8M
qio snap.qcow2 -- "write -P 0x71 0 2M"
qemu-img snapshot -c s1 snap.qcow2
qio snap.qcow2 -- "write -P 0x72 1M 2M"
qemu-img convert -l snapshot.name=s1 -O raw snap.qcow2 s1.raw
nbdkit_on "$T/m.sock" memory 8M
if ! "$LSM_SYNC" copy -l s1 snap.qcow2 "$(uri m.sock)" 2>err.log; then
    fail "-l snapshot to NBD" "$(head -n3 err.log)"
elif ! qemu-img compare -q -f raw -F raw s1.raw "$(uri m.sock)"; then
    fail "-l snapshot to NBD" "the export is not the snapshot's view"
else
    pass "-l snapshot to NBD"
fi
stop_servers

# 7. Faults.  Transient: 3% of writes fail with EIO, each retried (up to
# 3 times): the copy completes and is right.
nbdkit_on "$T/e.sock" --filter=error memory 48M error=EIO error-pwrite-rate=3%
if ! "$LSM_SYNC" copy --request-size=256K top.qcow2 "$(uri e.sock)" 2>err.log; then
    fail "transient write errors retried" "$(head -n3 err.log)"
elif ! qemu-img compare -q -f qcow2 top.qcow2 "$(uri e.sock)"; then
    fail "transient write errors retried" "the export differs"
else
    pass "transient write errors retried"
fi
stop_servers
# Permanent: every write fails: exit 1, one line naming the offset, bounded
# time (3 retries: 0.1 + 0.2 + 0.4 s of backoff).
nbdkit_on "$T/e.sock" --filter=error memory 48M error=EIO error-pwrite-rate=100%
elapsed_ms "$LSM_SYNC" copy top.qcow2 "$(uri e.sock)" 2>err.log
if ((RC != 1)) || ! grep -q "cannot write $(uri e.sock) at offset [0-9]* .*after retries.*Input/output error" err.log; then
    fail "permanent write errors" "exit $RC: $(cat err.log)"
elif (($(wc -l <err.log) != 1)) || ((MS > 10000)); then
    fail "permanent write errors" "$(wc -l <err.log) lines, $MS ms: $(cat err.log)"
else
    pass "permanent write errors"
fi
stop_servers

# Slowness: every write takes 0.2 s; 48 writes of 256 KiB (12 MiB of data)
# one by one would take 9.6 s: in flight together, well under 4 s.
nbdkit_on "$T/d.sock" --filter=delay memory 48M wdelay=200ms
elapsed_ms "$LSM_SYNC" copy --request-size=256K top.qcow2 "$(uri d.sock)" 2>err.log
if ((RC != 0)); then
    fail "slow writes overlap" "exit $RC: $(head -n3 err.log)"
elif ((MS > 4000)); then
    fail "slow writes overlap" "$MS ms (one by one: 9600 ms)"
elif ! qemu-img compare -q -f qcow2 top.qcow2 "$(uri d.sock)"; then
    fail "slow writes overlap" "the export differs"
else
    pass "slow writes overlap"
fi
stop_servers

# A write that never comes back: the per-request time-out.
nbdkit_on "$T/w.sock" --filter=delay memory 48M wdelay=3600
elapsed_ms "$LSM_SYNC" copy --timeout=1 top.qcow2 "$(uri w.sock)" 2>err.log
if ((RC != 1)) || ((MS > 3500)) || ! grep -q "cannot write $(uri w.sock) at offset [0-9]*: no answer from the NBD server within 1.000 s" err.log; then
    fail "write time-out" "exit $RC in $MS ms: $(cat err.log)"
else
    pass "write time-out"
fi
stop_servers
# SIGTERM and SIGINT during a stalled copy: exit 1 within 1 s.  (A fresh
# server each time: nbdkit 1.32 can abort on the assertion `sock >= 0` in
# raw_send_socket when a client goes away while the delay filter holds a
# reply.)
for sig in TERM INT; do
    nbdkit_on "$T/w$sig.sock" --filter=delay memory 48M wdelay=3600
    "$LSM_SYNC" copy top.qcow2 "$(uri w$sig.sock)" 2>err.log &
    pid=$!
    sleep 1
    t0=$(date +%s%N)
    if ! kill -$sig $pid; then
        rc=0
        wait $pid || rc=$?
        fail "SIG$sig during a stalled write" "the copy ended (exit $rc) before the signal: $(cat err.log)"
        continue
    fi
    rc=0
    wait $pid || rc=$?
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    if ((rc != 1)) || ((ms > 1000)) || ! grep -q "incomplete" err.log; then
        fail "SIG$sig during a stalled write" "exit $rc after $ms ms: $(cat err.log)"
    else
        pass "SIG$sig during a stalled write"
    fi
done
stop_servers

# A server that fails NBD_CMD_FLUSH (nbdkit's eval plugin over a file: the
# error filter cannot fail flushes): the data all arrive, but nothing says
# they are durable, so exit 1 with one line naming the flush.
truncate -s 4M fl.img fl.raw
qio fl.raw raw -- "write -P 0x67 0 1M" "write -P 0x68 3M 512k"
nbdkit_on "$T/fl.sock" eval get_size='echo 4194304' \
    pread="dd if=$T/fl.img skip=\$4 count=\$3 iflag=skip_bytes,count_bytes status=none" \
    pwrite="dd of=$T/fl.img seek=\$4 oflag=seek_bytes conv=notrunc status=none" \
    can_flush='exit 0' flush='echo "EIO the test fails every flush" >&2; exit 1'
rc=0
"$LSM_SYNC" copy fl.raw "$(uri fl.sock)" 2>err.log || rc=$?
if ((rc != 1)) || [[ $(wc -l <err.log) != 1 ]] || ! grep -q "failed a flush" err.log ||
    ! grep -q "incomplete" err.log; then
    fail "failed flush" "exit $rc: $(cat err.log)"
elif ! cmp -s fl.raw fl.img; then
    fail "failed flush" "the data written before the flush differ"
else
    pass "failed flush"
fi
# -t unsafe sends no flush (the same server fails every one): exit 0, the
# same bytes; with --journal it is refused before anything is sent
: >fl.img
truncate -s 4M fl.img
rc=0
"$LSM_SYNC" copy -t unsafe fl.raw "$(uri fl.sock)" 2>err.log || rc=$?
if ((rc != 0)); then
    fail "-t unsafe: no flush" "exit $rc: $(cat err.log)"
elif ! cmp -s fl.raw fl.img; then
    fail "-t unsafe: no flush" "the export's file differs from fl.raw"
else
    pass "-t unsafe: no flush"
fi
rc=0
"$LSM_SYNC" copy -t unsafe --journal=fl.journal fl.raw "$(uri fl.sock)" 2>err.log || rc=$?
if ((rc != 2)) || [[ $(grep -c '^lsm-sync: ' err.log) != 1 ]] || ! grep -q "not combined with --journal" err.log ||
    [[ -e fl.journal ]]; then
    fail "-t unsafe --journal refused" "exit $rc: $(cat err.log)"
else
    pass "-t unsafe --journal refused"
fi
stop_servers

# A server killed in the middle of a copy: exit 1 soon, the destination
# said to be incomplete.
nbdkit_on "$T/k.sock" --filter=delay memory 48M wdelay=100ms
"$LSM_SYNC" copy --request-size=64K -m 4 top.qcow2 "$(uri k.sock)" 2>err.log &
pid=$!
sleep 1.5   # connected and writing (the copy takes ~9 s at 4 x 64 KiB per 100 ms)
kill -KILL "$LAST_PID"
t0=$(date +%s%N)
rc=0
wait $pid || rc=$?
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
if ((rc != 1)) || ((ms > 2000)) || ! grep -q "incomplete" err.log; then
    fail "server killed mid-copy" "exit $rc after $ms ms: $(cat err.log)"
else
    pass "server killed mid-copy"
fi
PIDS=()

finish
