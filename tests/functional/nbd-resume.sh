#!/bin/bash
# `copy --journal` / `--resume` with NBD ends (docs/resume.md, "NBD ends"),
# real servers only: a push to qemu-nbd serving a writable qcow2 and to
# nbdkit memory, rate-limited (-r) and killed with SIGKILL mid-copy, then
# resumed: the result equals the source (qemu-img compare through the same
# URI, qemu-img check of the qcow2 afterwards) and the resume copied less
# than the whole (bytes_already_done > 0, bytes_written below the size).
# A resume against another export of the same size, or of another size, is
# refused with one line ("not the export this journal was written for"),
# exit 1, journal kept.  A pull (an NBD source into a raw file) killed and
# resumed; SIGINT mid-push: a last checkpoint, so the resume redoes nothing;
# SIGINT with a server that never answers: exit 1 within 1.5 s.
. "$(dirname "$0")/lib.sh"
need_cmd nbdkit qemu-nbd qemu-img qemu-io jq
. "$TESTS_DIR/nbd-netns-lib.sh"   # alive, the server helpers

rc=0
"$LSM_SYNC" copy probe.raw "nbd+unix:///?socket=$T/none.sock" 2>probe.log || rc=$?
if grep -q "built without libnbd" probe.log; then
    skip "lsm-sync was built without libnbd"
fi
trap 'stop_servers; cleanup' EXIT

SIZE=$((32 * 1024 * 1024))
# 24 MiB of data with holes and a zero range: about 3 s at 8 MiB/s.
qemu-img create -q -f qcow2 src.qcow2 32M
qio src.qcow2 -- "write -P 0x61 0 8M" "write -z 8M 2M" "write -P 0x62 12M 6M" \
    "write -P 0x63 20M 10M"
dd if=/dev/urandom of=rand.bin bs=1M count=2 status=none
qemu-io -f qcow2 -c "write -s rand.bin 24M 2M" src.qcow2 >/dev/null

COPY=("$LSM_SYNC" copy -m 4 --request-size=1M --checkpoint-interval=2M,0.1)

# killed_copy LOG SIG SRC DST: a copy at 8 MiB/s with journal j, sent SIG
# once it has written 6 MiB (the journal says so) or after 5 s; the copy
# must not have finished.
killed_copy() {
    local log=$1 sig=$2 src=$3 dst=$4 pid t0
    rm -f j
    "${COPY[@]}" -r 8M --journal=j --output=json "$src" "$dst" >"$log.out" 2>"$log" &
    pid=$!
    t0=$SECONDS
    while kill -0 "$pid" 2>/dev/null && ((SECONDS - t0 < 5)); do
        if [[ -s j ]] && (($(head -n1 j | jq '[.done[][1]] | add // 0') * 4096 >= 6 * 1048576)); then
            break
        fi
        sleep 0.05
    done
    kill "-$sig" "$pid" 2>/dev/null || die "$log: the copy ended before the $sig"
    local rc=0
    wait "$pid" || rc=$?
    ((rc != 0)) || die "$log: the copy exited 0 after $sig"
    [[ -s j ]] || die "$log: no journal after $sig"
    KILLED_DONE=$(head -n1 j | jq '[.done[][1]] | add // 0')
    ((KILLED_DONE > 0)) || die "$log: the journal has nothing done after $sig"
}

# resumed LOG SRC DST: the resume finishes, copying less than the whole
# (after_kill: tried again while the killed run's lock is still held).
resumed() {
    local log=$1 src=$2 dst=$3
    after_kill "$log.out" "$log" "${COPY[@]}" --journal=j --resume --output=json "$src" "$dst"
    ((RC == 0)) || die "$log: resume failed (exit $RC): $(cat "$log")"
    [[ ! -e j ]] || die "$log: the journal is still there after the resume"
    local already written
    already=$(jq .bytes_already_done "$log.out")
    written=$(jq .bytes_written "$log.out")
    ((already > 0)) || die "$log: the resume did not skip anything: $(cat "$log.out")"
    ((written <= SIZE - already)) ||
        die "$log: the resume wrote $written bytes, $already were done"
    log "$log: killed run left $((KILLED_DONE * 4096)) bytes done; resume skipped $already," \
        "wrote $written, redid $(jq .bytes_redone "$log.out")"
}

# 1. Push to qemu-nbd serving a writable qcow2, SIGKILL, resume.  (-e 16:
# the resume's 4 connections may arrive before qemu-nbd has counted the
# killed run's 4 as closed.)
qemu-img create -q -f qcow2 dst.qcow2 32M
qemu_nbd_on "$T/q.sock" -e 16 -f qcow2 dst.qcow2
killed_copy push-qemu KILL src.qcow2 "$(uri q.sock)"
resumed resume-qemu src.qcow2 "$(uri q.sock)"
qemu-img compare -q -f qcow2 -F raw src.qcow2 "$(uri q.sock)" || die "push to qemu-nbd: the export differs"
stop_servers
qemu-img compare -q -f qcow2 -F qcow2 src.qcow2 dst.qcow2 || die "push to qemu-nbd: dst.qcow2 differs"
qemu-img check -q dst.qcow2 || die "push to qemu-nbd: dst.qcow2 fails qemu-img check"

# 2. Push to nbdkit memory, SIGKILL; a resume against another export of
# the same size, and one of another size, is refused; then the right one.
nbdkit_on "$T/m.sock" memory 32M
nbdkit_on "$T/o.sock" memory 32M
nbdkit_on "$T/s.sock" memory 48M
killed_copy push-memory KILL src.qcow2 "$(uri m.sock)"
cp j j.saved
for other in o.sock s.sock; do
    rc=0
    "${COPY[@]}" --journal=j --resume src.qcow2 "$(uri "$other")" 2>wrong.log || rc=$?
    ((rc == 1)) || die "resume against $other: exit $rc, want 1"
    (($(wc -l <wrong.log) == 1)) || die "resume against $other: not one line: $(cat wrong.log)"
    grep -q "not the export this journal was written for" wrong.log ||
        die "resume against $other: $(cat wrong.log)"
    cmp -s j j.saved || die "resume against $other: the journal changed"
done
log "refused: $(cat wrong.log)"
# nothing was written into the wrong export of the same size
want_zero=$(qemu-img map --output=json -f raw "$(uri o.sock)" | jq '[.[] | select(.data)] | length')
((want_zero == 0)) || die "the refused resume wrote into the other export"
resumed resume-memory src.qcow2 "$(uri m.sock)"
qemu-img compare -q -f qcow2 -F raw src.qcow2 "$(uri m.sock)" || die "push to nbdkit: the export differs"

# 3. Pull: qemu-nbd serving the source read-only, into a raw file.
qemu_nbd_on "$T/r.sock" -r -e 16 -f qcow2 src.qcow2
killed_copy pull KILL "$(uri r.sock)" pulled.raw
[[ -e pulled.raw ]] || die "pull: the killed copy removed its destination"
resumed resume-pull "$(uri r.sock)" pulled.raw
qemu-img compare -q -f qcow2 -F raw src.qcow2 pulled.raw || die "pull: pulled.raw differs"
# a pull resumed from another export is refused
rm -f pulled2.raw
killed_copy pull2 KILL "$(uri r.sock)" pulled2.raw
after_kill /dev/null wrong.log "${COPY[@]}" --journal=j --resume "$(uri o.sock)" pulled2.raw
((RC == 1)) && grep -q "not the export this journal was written for" wrong.log ||
    die "pull resumed from another export: exit $RC: $(cat wrong.log)"
resumed resume-pull2 "$(uri r.sock)" pulled2.raw
qemu-img compare -q -f qcow2 -F raw src.qcow2 pulled2.raw || die "pull 2: pulled2.raw differs"

# 4. SIGINT mid-push (a fresh export), then a resume.
nbdkit_on "$T/i.sock" memory 32M
killed_copy push-int INT src.qcow2 "$(uri i.sock)"
grep -q "continue with --journal=j --resume" push-int ||
    die "SIGINT: no hint to resume: $(cat push-int)"
resumed resume-int src.qcow2 "$(uri i.sock)"
qemu-img compare -q -f qcow2 -F raw src.qcow2 "$(uri i.sock)" || die "SIGINT: the export differs"
# the interrupted run drained and made a last checkpoint: nothing redone
(($(jq .bytes_redone resume-int.out) == 0)) ||
    die "SIGINT: the resume redid $(jq .bytes_redone resume-int.out) bytes (no last checkpoint?)"

# 5. SIGINT while the server never answers a write: the grace for the last
# checkpoint is bounded, the copy ends within 1.5 s, exit 1.
nbdkit_on "$T/w.sock" --filter=delay memory 32M wdelay=3600
rm -f j
"${COPY[@]}" --journal=j src.qcow2 "$(uri w.sock)" 2>stall.log &
pid=$!
sleep 1
t0=$(date +%s%N)
kill -INT "$pid"
rc=0
wait "$pid" || rc=$?
ms=$((($(date +%s%N) - t0) / 1000000))
((rc == 1)) || die "SIGINT, stalled server: exit $rc, want 1: $(cat stall.log)"
((ms < 1500)) || die "SIGINT, stalled server: ended after $ms ms"
log "SIGINT, stalled server: exit 1 after $ms ms: $(cat stall.log)"
log "ok"
