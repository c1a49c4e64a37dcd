#!/bin/bash
# NBD sources that do not answer: `lsm-sync copy nbd://...` never waits
# without a bound.  Real servers: nbdkit with the delay filter (slow reads,
# slow block status, a slow handshake), a listener that accepts and never
# says anything (Unix socket and 127.0.0.1), nbdkit's error filter, and
# qemu-nbd stopped with SIGSTOP in the middle of a copy.  Each stall ends
# with exit 1 within the --timeout and one line naming the server; SIGTERM
# and SIGINT end a stalled copy within 1 s with exit 1; the destination the
# copy created is removed; a normal NBD copy equals the export.
. "$(dirname "$0")/lib.sh"
need_cmd nbdkit qemu-nbd qemu-img qemu-io python3
. "$TESTS_DIR/nbd-netns-lib.sh"   # alive, the server helpers

# Was lsm-sync built with libnbd?
rc=0
"$LSM_SYNC" copy "nbd+unix:///?socket=$T/none.sock" probe.raw 2>probe.log || rc=$?
if grep -q "built without libnbd" probe.log; then
    skip "lsm-sync was built without libnbd"
fi
((rc == 1)) || die "copy from a missing socket: exit $rc, want 1: $(cat probe.log)"

# the servers: nbdkit_on, uri, stop_servers, wait_file (nbd-netns-lib.sh)
trap 'stop_servers; cleanup' EXIT

# 24 MiB with data and holes, served read-only.
truncate -s 32M src.raw
for off in 0 3 7 12 20 27; do
    dd if=/dev/urandom of=src.raw bs=1M count=2 seek=$off conv=notrunc status=none
done

# stalls CASE BUDGET_MS WANT CMD...: exit 1 within BUDGET_MS, one stderr
# line containing WANT, and no destination left behind.
stalls() {
    local case=$1 budget=$2 want=$3; shift 3
    rm -f dst.raw
    elapsed_ms "$@" >out.log 2>err.log
    if ((RC != 1)); then
        fail "$case" "exit $RC, want 1: $(head -n3 err.log)"
    elif ((MS > budget)); then
        fail "$case" "took $MS ms, budget $budget ms"
    elif [[ $(wc -l <err.log) != 1 ]]; then
        fail "$case" "want one line on stderr, got: $(head -n5 err.log)"
    elif ! grep -qF -- "$want" err.log; then
        fail "$case" "message lacks '$want': $(cat err.log)"
    elif [[ -e dst.raw ]]; then
        fail "$case" "dst.raw left behind"
    else
        [[ ${VERBOSE:-0} == 1 ]] && log "$case: $MS ms: $(cat err.log)"
        pass "$case"
    fi
    return 0
}

# 1. A normal copy through nbdkit and through qemu-nbd still matches.
nbdkit_on "$T/plain.sock" --read-only file src.raw
for fmt in raw qcow2; do
    rm -f plain.$fmt
    if "$LSM_SYNC" copy -O $fmt "$(uri plain.sock)" plain.$fmt 2>err.log &&
        qemu-img compare -q -f raw -F $fmt src.raw plain.$fmt; then
        pass "nbdkit copy -O $fmt"
    else
        fail "nbdkit copy -O $fmt" "$(head -n3 err.log)"
    fi
done
# The time-out is per request, not per copy: 24 reads of 1 MiB, each 100 ms
# late, one at a time (-m 1: reads are asynchronous, several would overlap),
# take longer than --timeout=1 in all and still succeed.
nbdkit_on "$T/slowish.sock" --read-only --filter=delay file src.raw rdelay=100ms
rm -f slowish.raw
elapsed_ms "$LSM_SYNC" copy --timeout=1 -m 1 --request-size=1M "$(uri slowish.sock)" slowish.raw 2>err.log
if ((RC == 0)) && cmp -s src.raw slowish.raw && ((MS > 1000)); then
    pass "slow reads, each under the time-out"
else
    fail "slow reads, each under the time-out" "exit $RC in $MS ms: $(head -n3 err.log)"
fi
# The same reads with 16 requests in flight overlap (the endpoint's reads
# are asynchronous on the loop): well under the 2.4 s they take one by one.
rm -f slowish.raw
elapsed_ms "$LSM_SYNC" copy --timeout=1 --request-size=1M "$(uri slowish.sock)" slowish.raw 2>err.log
if ((RC == 0)) && cmp -s src.raw slowish.raw && ((MS < 2000)); then
    pass "slow reads overlap"
else
    fail "slow reads overlap" "exit $RC in $MS ms (one by one: 2400 ms): $(head -n3 err.log)"
fi

# 2. A server whose reads never come back: the per-request time-out.
nbdkit_on "$T/rstall.sock" --read-only --filter=delay file src.raw rdelay=3600
stalls "read time-out" 3500 "no answer from the NBD server within 1.000 s" \
    "$LSM_SYNC" copy --timeout=1 "$(uri rstall.sock)" dst.raw
grep -qF "$(uri rstall.sock)" err.log && grep -q "at offset 0" err.log ||
    fail "read time-out names server and offset" "$(cat err.log)"

# 3. Block status that never comes back.
nbdkit_on "$T/xstall.sock" --read-only --filter=delay file src.raw delay-extents=3600
stalls "block status time-out" 3500 "NBD server $(uri xstall.sock) did not answer a block status request at offset 0 within 1.000 s" \
    "$LSM_SYNC" copy --timeout=1 "$(uri xstall.sock)" dst.raw

# 4. A handshake that never ends: nbdkit delaying open, and a listener
# that accepts and says nothing (Unix socket and TCP on 127.0.0.1).
nbdkit_on "$T/ostall.sock" --read-only --filter=delay file src.raw delay-open=3600
stalls "handshake time-out (nbdkit delay-open)" 3500 "cannot connect to NBD server $(uri ostall.sock): no answer within 1.000 s" \
    "$LSM_SYNC" copy --timeout=1 "$(uri ostall.sock)" dst.raw

cat >mute.py <<'EOF'
# Accept connections and never answer (an NBD server that hangs).
import socket, sys, time
if sys.argv[1] == "unix":
    s = socket.socket(socket.AF_UNIX)
    s.bind(sys.argv[2])
else:
    s = socket.socket(socket.AF_INET)
    s.bind(("127.0.0.1", 0))
    with open(sys.argv[2] + ".tmp", "w") as f:
        f.write(str(s.getsockname()[1]))
    import os
    os.rename(sys.argv[2] + ".tmp", sys.argv[2])
s.listen(16)
held = []
while True:
    held.append(s.accept()[0])
EOF
python3 mute.py unix "$T/mute.sock" & PIDS+=($!)
wait_file "$T/mute.sock"
python3 mute.py tcp "$T/mute.port" & PIDS+=($!)
wait_file "$T/mute.port"
port=$(cat mute.port)
stalls "mute server (unix)" 3500 "cannot connect to NBD server $(uri mute.sock)" \
    "$LSM_SYNC" copy --timeout=1 "$(uri mute.sock)" dst.raw
stalls "mute server (tcp 127.0.0.1)" 3500 "cannot connect to NBD server nbd://127.0.0.1:$port/" \
    "$LSM_SYNC" copy --timeout=1 "nbd://127.0.0.1:$port/" dst.raw

# 5. A server that answers with an error: exit 1 at once, no retry loop.
nbdkit_on "$T/eio.sock" --read-only --filter=error file src.raw error-pread=EIO error-pread-rate=100%
stalls "server EIO" 3000 "Input/output error" \
    "$LSM_SYNC" copy --timeout=10 "$(uri eio.sock)" dst.raw

# 6. SIGTERM and SIGINT while a read, block status or handshake is stalled
# (default time-outs: only the signal can end these in time).
signal_case() {
    local case=$1 sig=$2 src=$3 pid t0 t1 rc=0 ms
    rm -f dst.raw
    "$LSM_SYNC" copy "$src" dst.raw >out.log 2>err.log &
    pid=$!
    sleep 0.7
    if ! kill -0 $pid 2>/dev/null; then
        fail "$case" "copy ended before the signal: $(head -n3 err.log)"
        return 0
    fi
    t0=$(date +%s%N)
    kill -$sig $pid
    wait $pid || rc=$?
    t1=$(date +%s%N)
    ms=$(( (t1 - t0) / 1000000 ))
    if ((rc != 1)); then
        fail "$case" "exit $rc, want 1: $(head -n3 err.log)"
    elif ((ms > 1000)); then
        fail "$case" "ended $ms ms after SIG$sig, want under 1000"
    elif ! grep -q "SIG$sig" err.log; then
        fail "$case" "message does not name SIG$sig: $(cat err.log)"
    elif [[ -e dst.raw ]]; then
        fail "$case" "dst.raw left behind"
    else
        [[ ${VERBOSE:-0} == 1 ]] && log "$case: $ms ms"
        pass "$case"
    fi
    return 0
}
# (A fresh stalled server for each case: nbdkit 1.32 can abort on the
# assertion `sock >= 0` in raw_send_socket when a client goes away while
# the delay filter holds a reply, and a copy now opens several connections.)
for sig in TERM INT; do
    nbdkit_on "$T/rstall$sig.sock" --read-only --filter=delay file src.raw rdelay=3600
    nbdkit_on "$T/xstall$sig.sock" --read-only --filter=delay file src.raw delay-extents=3600
    signal_case "SIG$sig during a stalled read" $sig "$(uri rstall$sig.sock)"
    signal_case "SIG$sig during a stalled block status" $sig "$(uri xstall$sig.sock)"
    signal_case "SIG$sig during a stalled handshake" $sig "$(uri mute.sock)"
done

# 7. qemu-nbd stopped with SIGSTOP in the middle of a copy (rate-limited
# so that the copy is surely running): the time-out ends it.
qemu-img convert -f raw -O qcow2 src.raw src.qcow2
qemu_nbd_on "$T/q.sock" -r -f qcow2 src.qcow2
rm -f dst.raw
"$LSM_SYNC" copy --timeout=1 --rate=4M --request-size=64K "nbd+unix:///?socket=$T/q.sock" dst.raw >out.log 2>err.log &
pid=$!
sleep 1
kill -STOP "$LAST_PID"
t0=$(date +%s%N)
rc=0
wait $pid || rc=$?
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
kill -CONT "$LAST_PID"
if ((rc != 1)); then
    fail "qemu-nbd SIGSTOP" "exit $rc, want 1: $(head -n3 err.log)"
elif ((ms > 3000)); then
    fail "qemu-nbd SIGSTOP" "ended $ms ms after SIGSTOP, want within the 1 s time-out (3 s budget)"
elif ! grep -qF "nbd+unix:///?socket=$T/q.sock" err.log || ! grep -q "within 1.000 s" err.log; then
    fail "qemu-nbd SIGSTOP" "message: $(cat err.log)"
elif [[ -e dst.raw ]]; then
    fail "qemu-nbd SIGSTOP" "dst.raw left behind"
else
    pass "qemu-nbd SIGSTOP"
fi
# The same server, resumed, still serves a complete copy.
rm -f dst.raw
if "$LSM_SYNC" copy --timeout=5 "nbd+unix:///?socket=$T/q.sock" dst.raw 2>err.log &&
    qemu-img compare -q -f qcow2 -F raw src.qcow2 dst.raw; then
    pass "qemu-nbd resumed"
else
    fail "qemu-nbd resumed" "$(head -n3 err.log)"
fi

# 8. --timeout is checked.
for bad in 0 -1 abc 1x 100000; do
    rc=0
    "$LSM_SYNC" copy --timeout=$bad "$(uri plain.sock)" dst.raw 2>err.log || rc=$?
    if ((rc == 2)); then pass "--timeout=$bad refused"; else fail "--timeout=$bad refused" "exit $rc"; fi
done

finish
