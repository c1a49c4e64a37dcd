#!/bin/bash
# copy --journal/--resume: SIGKILL at random points (time- and byte-based)
# during copies to raw and to qcow2, then --resume; the result must be what
# qemu-img compare calls identical and (qcow2) what qemu-img check calls
# clean, the journal gone, and the JSON result's bytes_redone within one
# checkpoint interval (plus the requests in flight).  Chains of several
# kills before one resume too.  A source or destination changed between
# kill and resume is refused with one line, exit 1, and the destination
# stays incomplete.  SIGTERM/SIGINT end with a last checkpoint: nothing
# is redone.  And the refusals of the options themselves.
#
# The source (320 MiB) has data, zero clusters, unallocated ranges, zeroes
# written as data and 4 KiB pieces; copies are slowed with --rate so that a
# kill lands between checkpoints (--checkpoint-interval=8M,0.25).
# KILLS (default 12) pairs per format, plus 2 chains of 3 kills: 30 kills.
. "$(dirname "$0")/lib.sh"
need_cmd qemu-img qemu-io jq

KILLS=${KILLS:-12}        # scripts/test.sh sets 4 under the sanitizers
# Kills that must land: two thirds of the most there can be (20 with 12).
MIN_KILLS=$(((2 * KILLS + 6) * 2 / 3))
RATE=160M
INTERVAL=8M
IV_BYTES=$((8 * 1024 * 1024))
REQS=4
# Redone data is bounded by one interval plus what was in flight when the
# checkpoint started draining (REQS requests of 1 MiB) and the request that
# crossed the interval.
BOUND=$((IV_BYTES + (REQS + 1) * 1024 * 1024))
COPY=("$LSM_SYNC" copy -m "$REQS" --rate="$RATE" --checkpoint-interval="$INTERVAL",0.25)

qcow2 src.qcow2 320M
qio src.qcow2 -- "write -P 0x11 0 40M" "write -z 40M 24M" "write -P 0x22 64M 3M" \
    "write -P 0x00 67M 5M" "write -P 0x33 90M 60M" "write -P 0x44 160M 4k" \
    "write -P 0x45 160M 4k" "write -P 0x46 170M 64k" "write -P 0x55 200M 50M" \
    "write -z 260M 4M" "write -P 0x66 300M 19M"
for i in $(seq 0 31); do qio src.qcow2 -- "write -P $((i + 1)) $((180 + i / 2))M 4k"; done
SRC_SUM=$(sha256sum src.qcow2 | cut -d' ' -f1)

# killed_run (lib.sh): a SIGKILL at a random point, 4 to 124 MiB in.

# resume OUT CMD...: run CMD (a --resume) to completion, retrying while the
# destination's lock is still held by the killed run's io_uring (released
# within about a second of the kill: docs/copy.md).  RC, and OUT holds the
# JSON result.
resume() {
    local out=$1; shift
    after_kill "$out" "$out.err" timeout -k 5 120 "$@" --output=json
}

# check_result CASE FMT DST OUT: complete, identical, clean, journal gone,
# redone within the bound.  Adds the redone bytes to REDONE_LIST.
REDONE_LIST=()
check_result() {
    local case=$1 fmt=$2 dst=$3 out=$4 redone
    if ((RC != 0)); then
        fail "$case" "resume exit $RC: $(head -n3 "$out.err")"
        return
    fi
    if ! qemu-img compare -q -f qcow2 -F "$fmt" "${SRC_FOR_CHECK:-src.qcow2}" "$dst" 2>cmp.log; then
        fail "$case" "not identical: $(cat cmp.log)"
        return
    fi
    if [[ $fmt == qcow2 ]] && ! qemu-img check -q "$dst" >chk.log 2>&1; then
        fail "$case" "qemu-img check: $(head -n5 chk.log)"
        return
    fi
    if [[ -e j ]]; then
        fail "$case" "the journal is still there after success"
        return
    fi
    redone=$(jq -r .bytes_redone "$out")
    if ! [[ $redone =~ ^[0-9]+$ ]] || ((redone > BOUND)); then
        fail "$case" "bytes_redone $redone over the bound $BOUND"
        return
    fi
    REDONE_LIST+=("$redone")
    pass "$case"
}

kills=0
for fmt in raw qcow2; do
    for i in $(seq 1 "$KILLS"); do
        case="kill-$fmt-$i"
        rm -f "d.$fmt" j
        killed_run run.log "${COPY[@]}" --journal=j -O "$fmt" src.qcow2 "d.$fmt"
        if ((KILLED == 0)); then
            # finished before the kill: complete, journal removed
            if [[ -e j ]] || ! qemu-img compare -q -f qcow2 -F "$fmt" src.qcow2 "d.$fmt"; then
                fail "$case" "finished run left a journal or a wrong copy"
            else
                pass "$case-unkilled"
            fi
            continue
        fi
        kills=$((kills + 1))
        if [[ ! -e j ]]; then
            # killed before the first journal was saved: nothing to resume
            # (the destination is then not marked resumable either)
            pass "$case-before-journal"
            continue
        fi
        # what a kill during a save leaves: removed by the resume when its
        # process is gone, kept while it lives (this shell: a save elsewhere)
        temps=0
        if [[ $fmt == raw && -z ${TEMPS_DONE:-} ]]; then
            TEMPS_DONE=1 temps=1
            (exit 0) & deadpid=$!; wait "$deadpid"
            : >"j.tmp.$deadpid.1"; : >"j.tmp.$$.1"
        fi
        resume res.json "${COPY[@]}" --journal=j --resume -O "$fmt" src.qcow2 "d.$fmt"
        check_result "$case" "$fmt" "d.$fmt" res.json
        if ((temps)); then
            if [[ -e j.tmp.$deadpid.1 || ! -e j.tmp.$$.1 ]]; then
                fail "$case-temps" "a dead save's temporary file kept, or a live one's removed"
            else
                pass "$case-temps"
            fi
            rm -f "j.tmp.$$.1"
        fi
    done
    # a chain: killed three times, resumed each time, then completed
    case="chain-$fmt"
    rm -f "d.$fmt" j
    killed_run run.log "${COPY[@]}" --journal=j -O "$fmt" src.qcow2 "d.$fmt"
    kills=$((kills + KILLED))
    if ((KILLED)) && [[ ! -e j ]]; then
        # killed before the first journal was saved (a loaded machine):
        # nothing to resume, and not a finished copy either
        pass "$case-before-journal"
        continue
    fi
    for k in 1 2; do
        [[ -e j ]] || break
        sleep 1
        killed_run run.log "${COPY[@]}" --journal=j --resume -O "$fmt" src.qcow2 "d.$fmt"
        kills=$((kills + KILLED))
    done
    if [[ -e j ]]; then
        resume res.json "${COPY[@]}" --journal=j --resume -O "$fmt" src.qcow2 "d.$fmt"
        check_result "$case" "$fmt" "d.$fmt" res.json
    else
        qemu-img compare -q -f qcow2 -F "$fmt" src.qcow2 "d.$fmt" && pass "$case-done" ||
            fail "$case" "no journal and not identical"
    fi
done
[[ -n ${TEMPS_DONE:-} ]] || fail temps "no resume of a raw copy ran"
log "kills: $kills; bytes_redone after each resume: ${REDONE_LIST[*]:-none}"
((kills >= MIN_KILLS)) && pass kill-count || fail kill-count "only $kills kills landed (want $MIN_KILLS)"

# Kills at fixed points of a checkpoint (LSM_TEST_CHECKPOINT_KILL, a test
# hook of engine/copy.c): right after the qcow2 writer's checkpoint, before
# the journal says so (the journal must accept the image's new metadata),
# and right after a journal save.  The source spreads its data over four
# L1 entries (512 MiB each with 64 KiB clusters), so that checkpoints
# change the destination's L1 table as the copy moves on.  Checkpoints here
# come every 8 MiB of data only (no time trigger).
CK_COPY=("${COPY[@]:0:${#COPY[@]}-1}" --checkpoint-interval="$INTERVAL",86400)
qcow2 wide.qcow2 2G
qio wide.qcow2 -- "write -P 0x71 0 10M" "write -P 0x72 600M 10M" "write -P 0x73 1200M 10M" \
    "write -P 0x74 1800M 10M"
for where in writer save; do
    for fmt in qcow2 raw; do
        [[ $where == writer && $fmt == raw ]] && continue
        case="ckpt-kill-$where-$fmt"
        # Which checkpoint first changes L1 depends on how the requests in
        # flight fall around the interval (two CI runs saw the third one
        # leave L1 as the second had): the kill at checkpoint 3, else 2, else 4
        # until the journal names new metadata; at least one must.
        ok=0
        for k in 3 2 4; do
            rm -f "d.$fmt" j
            RC=0
            LSM_TEST_CHECKPOINT_KILL="$k:$where" "${CK_COPY[@]}" --journal=j -O "$fmt" wide.qcow2 \
                "d.$fmt" >/dev/null 2>err.log || RC=$?
            if ((RC != 137)) || [[ ! -e j ]]; then
                ok=2
                break
            fi
            if [[ $where == writer ]]; then
                # the journal names the metadata the writer was about to
                # leave, and it differs from the last checkpoint's
                h=$(head -n1 j | jq -r '.files[-1] | "\(.hash) \(.hash_next)"')
                read -r h0 h1 <<<"$h"
                [[ $h1 == null || $h0 == "$h1" ]] && continue
            fi
            ok=1
            break
        done
        if ((ok == 2)); then
            fail "$case" "expected a SIGKILL (137) leaving a journal at checkpoint $k, got $RC"
            continue
        elif ((ok == 0)); then
            fail "$case" "no checkpoint of 2, 3, 4 left a distinct hash_next (last: $h)"
            continue
        fi
        sleep 1
        resume res.json "${CK_COPY[@]}" --journal=j --resume -O "$fmt" wide.qcow2 "d.$fmt"
        SRC_FOR_CHECK=wide.qcow2 check_result "$case" "$fmt" "d.$fmt" res.json
    done
done
rm -f wide.qcow2

# SIGTERM (and SIGINT): the copy drains, makes a last checkpoint and says
# how to continue; the resume redoes nothing.
for sig in TERM INT; do
    for fmt in raw qcow2; do
        case="sig$sig-$fmt"
        rm -f "d.$fmt" j
        "${COPY[@]}" --journal=j -O "$fmt" src.qcow2 "d.$fmt" >/dev/null 2>sig.err &
        pid=$!
        sleep 0.5
        kill -"$sig" "$pid"
        RC=0
        wait "$pid" || RC=$?
        if ((RC != 1)) || ! grep -q -- "--resume" sig.err || [[ ! -e j ]]; then
            fail "$case" "exit $RC, $(cat sig.err)"
            continue
        fi
        resume res.json "${COPY[@]}" --journal=j --resume -O "$fmt" src.qcow2 "d.$fmt"
        check_result "$case" "$fmt" "d.$fmt" res.json
        redone=$(jq -r .bytes_redone res.json 2>/dev/null || echo none)
        [[ $redone == 0 ]] && pass "$case-nothing-redone" ||
            fail "$case-nothing-redone" "bytes_redone $redone after a SIG$sig"
    done
done

# A kill that leaves a journal, for the refusals below.
killed_once() {  # killed_once FMT
    local n
    for n in 1 2 3 4 5; do
        rm -f "d.$1" j
        "${COPY[@]}" --journal=j -O "$1" src.qcow2 "d.$1" >/dev/null 2>&1 &
        local pid=$!
        sleep 0.5
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        [[ -e j && -e d.$1 ]] && { sleep 1; return 0; }
    done
    return 1
}

# refused CASE EXPECT CMD...: exit 1, one line mentioning EXPECT.
refused() {
    local case=$1 expect=$2; shift 2
    RC=0
    "$@" >out.log 2>err.log || RC=$?
    if ((RC != 1)); then
        fail "$case" "exit $RC, expected 1: $(head -n3 err.log)"
    elif (($(wc -l <err.log) != 1)) || ! grep -q -- "$expect" err.log; then
        fail "$case" "expected one line with '$expect': $(cat err.log)"
    else
        pass "$case"
    fi
}

# still_incomplete CASE FMT: the destination was not made complete.
still_incomplete() {
    if [[ $2 == qcow2 ]]; then
        if qemu-img info d.qcow2 >/dev/null 2>&1; then
            fail "$1-incomplete" "qemu-img opens the destination: it was made complete"
        else
            pass "$1-incomplete"
        fi
    elif [[ -e j ]]; then
        pass "$1-incomplete"
    else
        fail "$1-incomplete" "the journal went away"
    fi
}

for fmt in raw qcow2; do
    # the destination replaced by another file (a copy of it)
    if killed_once "$fmt"; then
        cp "d.$fmt" d.copy
        mv d.copy "d.$fmt"
        refused "dst-replaced-$fmt" "destination d.$fmt is another file" \
            "${COPY[@]}" --journal=j --resume -O "$fmt" src.qcow2 "d.$fmt"
        still_incomplete "dst-replaced-$fmt" "$fmt"
    else
        fail "dst-replaced-$fmt" "no kill left a journal"
    fi
    # the source changed (data written into it; restored afterwards)
    if killed_once "$fmt"; then
        cp src.qcow2 src.save
        qio src.qcow2 -- "write -P 0x77 100M 64k"
        refused "src-changed-$fmt" "source src.qcow2" \
            "${COPY[@]}" --journal=j --resume -O "$fmt" src.qcow2 "d.$fmt"
        still_incomplete "src-changed-$fmt" "$fmt"
        mv src.save src.qcow2
    else
        fail "src-changed-$fmt" "no kill left a journal"
    fi
done
# the destination's content changed: raw by size, qcow2 by its metadata
if killed_once raw; then
    truncate -s +64k d.raw
    refused dst-grown-raw "changed size" "${COPY[@]}" --journal=j --resume src.qcow2 d.raw
fi
if killed_once qcow2; then
    # a byte of the header cluster no field uses: still a valid image, but
    # not the one the checkpoint left
    printf '\x01' | dd of=d.qcow2 bs=1 seek=4000 conv=notrunc status=none
    refused dst-metadata-qcow2 "metadata" "${COPY[@]}" --journal=j --resume -O qcow2 src.qcow2 d.qcow2
    still_incomplete dst-metadata-qcow2 qcow2
    # other options than the journal's
    refused options-other "another copy" "${COPY[@]}" --journal=j --resume -O raw src.qcow2 d.qcow2
fi

# Refusals before anything is written.
rm -f j d.raw
echo '{}' >j
refused journal-exists "exists" "$LSM_SYNC" copy --journal=j src.qcow2 d.raw
[[ ! -e d.raw ]] && pass journal-exists-no-dst || fail journal-exists-no-dst "a destination was made"
refused journal-invalid "invalid journal" "$LSM_SYNC" copy --journal=j --resume src.qcow2 d.raw
rm -f j
refused journal-missing "cannot open journal" "$LSM_SYNC" copy --journal=j --resume src.qcow2 d.raw
refused journal-is-dst "is the destination" "$LSM_SYNC" copy --journal=d.raw src.qcow2 d.raw
refused journal-is-src "exists" "$LSM_SYNC" copy --journal=src.qcow2 src.qcow2 d.raw
refused journal-is-src-resume "invalid journal" "$LSM_SYNC" copy --journal=src.qcow2 --resume src.qcow2 d.raw
[[ -e src.qcow2 && ! -e d.raw ]] && pass journal-alias-nothing-written ||
    fail journal-alias-nothing-written "a file was made or removed"
RC=0; "$LSM_SYNC" copy --resume src.qcow2 d.raw 2>err.log || RC=$?
((RC == 2)) && pass resume-needs-journal || fail resume-needs-journal "exit $RC"
RC=0; "$LSM_SYNC" copy --checkpoint-interval=1x src.qcow2 d.raw 2>err.log || RC=$?
((RC == 2)) && pass interval-bad || fail interval-bad "exit $RC"
RC=0; "$LSM_SYNC" copy --journal=j --checkpoint-interval=8M,0 src.qcow2 d.raw 2>err.log || RC=$?
((RC == 2)) && pass interval-seconds-bad || fail interval-seconds-bad "exit $RC"

[[ $(sha256sum src.qcow2 | cut -d' ' -f1) == "$SRC_SUM" ]] && pass source-unchanged ||
    fail source-unchanged "the source's bytes changed"
finish
