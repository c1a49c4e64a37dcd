#!/bin/bash
# NBD over a real TCP path: the far side (qemu-nbd) in a network namespace
# of its own, lsm-sync in another, joined by a veth pair this test makes
# (nbd-netns-lib.sh; removed by the EXIT trap).  A qcow2 chain served
# read-only is copied to a local file, with multi-conn (4 connections) and
# with one; a local chain is copied into a writable qcow2 the far side
# serves; both checked with qemu-img compare through the same URI and the
# far qcow2 with qemu-img check.  Then, under a 40 Mbit/s tbf limit: the
# far server killed in the middle of a copy (exit 1 within 2 s), and a
# connect to an address nobody answers on the link (the connect time-out).
# Skips (77) where namespaces cannot be made (no root, no netns).
. "$(dirname "$0")/lib.sh"
. "$TESTS_DIR/nbd-netns-lib.sh"
need_cmd qemu-nbd qemu-img qemu-io ip tc sha256sum

rc=0
"$LSM_SYNC" copy "nbd+unix:///?socket=$T/none.sock" probe.raw 2>probe.log || rc=$?
if grep -q "built without libnbd" probe.log; then
    skip "lsm-sync was built without libnbd"
fi
trap 'stop_far; netns_down; cleanup' EXIT
stop_far() {
    local p
    for p in "$T"/*.pid; do
        [[ -s $p ]] || continue
        kill "$(cat "$p")" 2>/dev/null
        for _ in $(seq 100); do
            alive "$(cat "$p")" || break
            sleep 0.05
        done
        rm -f "$p"
    done
    return 0
}
netns_up || skip "$NETNS_WHY"

# far_serve NAME ARGS...: qemu-nbd on the far side, port 10809.
far_serve() {
    local name=$1; shift
    # (the last server's port may take a moment to be free again)
    for _ in $(seq 50); do
        on_far qemu-nbd -t -e 8 -b "$FAR_IP" -p 10809 --pid-file="$T/$name.pid" --fork "$@" \
            2>"$T/serve.err" && return 0
        sleep 0.1
    done
    die "qemu-nbd did not start on the far side: $(cat "$T/serve.err")"
}
URI="nbd://$FAR_IP:10809/"

qemu-img create -q -f qcow2 base.qcow2 64M
qio base.qcow2 -- "write -P 0x41 0 8M" "write -P 0x42 30M 4M" "write -z 40M 4M" "write -P 0x43 63M 1M"
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
qio top.qcow2 -- "write -P 0x44 4M 8M" "write -P 0x45 50M 2M" "discard 63M 64k"
qemu-img convert -O raw top.qcow2 top.raw

# 1. Far chain (read-only) to a near file, multi-conn and one connection.
far_serve src -r -f qcow2 top.qcow2
for c in 4 1; do
    rm -f near.raw
    if ! on_near "$LSM_SYNC" copy --connections=$c "$URI" near.raw 2>err.log; then
        fail "far chain to near file ($c conn)" "$(head -n3 err.log)"
    elif ! on_near qemu-img compare -q -f raw -F raw "$URI" near.raw ||
         ! qemu-img compare -q -F raw top.qcow2 near.raw; then
        fail "far chain to near file ($c conn)" "near.raw differs"
    else
        pass "far chain to near file ($c conn)"
    fi
done
stop_far

# 2. Near chain to a writable far qcow2.
qemu-img create -q -f qcow2 far.qcow2 64M
far_serve dst -f qcow2 far.qcow2
if ! on_near "$LSM_SYNC" copy top.qcow2 "$URI" 2>err.log; then
    fail "near chain to far qcow2" "$(head -n3 err.log)"
elif ! on_near qemu-img compare -q -f qcow2 top.qcow2 "$URI"; then
    fail "near chain to far qcow2" "the export differs"
else
    stop_far
    if ! qemu-img check -q far.qcow2 || ! qemu-img compare -q -F qcow2 top.qcow2 far.qcow2 ||
       ! qemu-img convert -O raw far.qcow2 far.raw ||
       [[ $(sha256sum <far.raw) != "$(sha256sum <top.raw)" ]]; then
        fail "near chain to far qcow2" "far.qcow2 differs or fails check"
    else
        pass "near chain to far qcow2"
    fi
fi
stop_far

# 3. At 40 Mbit/s (64 MiB of which 23 MiB data take ~5 s): the far server
# killed mid-copy.
netns_rate 40mbit || die "tc tbf refused"
far_serve src -r -f qcow2 top.qcow2
rm -f near.raw
on_near "$LSM_SYNC" copy "$URI" near.raw 2>err.log &
pid=$!
sleep 1.5
kill -KILL "$(cat src.pid)"
rm -f src.pid
t0=$(date +%s%N)
rc=0
wait $pid || rc=$?
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
if ((rc != 1)) || ((ms > 2000)) || [[ -e near.raw ]]; then
    fail "far server killed mid-copy" "exit $rc after $ms ms: $(cat err.log)"
else
    pass "far server killed mid-copy"
fi

# 4. An address on the link that nobody answers on (ARP fails): the
# connect time-out.
elapsed_ms on_near "$LSM_SYNC" copy --timeout=1 "nbd://10.77.0.5:10809/" near.raw 2>err.log
if ((RC != 1)) || ((MS > 3000)) || ! grep -q "no answer within 1.000 s\|No route to host" err.log; then
    fail "connect to a silent address" "exit $RC in $MS ms: $(cat err.log)"
else
    pass "connect to a silent address"
fi
netns_rate none

finish
