#!/bin/bash
# sync --journal/--resume and sync --checksum (docs/resume.md, "sync";
# docs/chains.md).
#
# SIGKILL at random points (time- and byte-based, as resume.sh's
# killed_run) during `sync --type=ALL` of two 3-layer chains, one with a
# raw base (raw and qcow2 destination volumes) and one all qcow2; then
# --resume.  Every destination volume must be what qemu-img compare calls
# identical to its source volume and (qcow2) what qemu-img check calls
# clean, the journals (FILE and FILE.N) gone, and the JSON result's
# bytes_redone within one checkpoint interval (plus the requests in
# flight) for each volume, so within that bound times the volumes in
# flight for the sync.  A sync killed again while resuming, too.  A source
# or a finished destination volume changed between kill and resume:
# refused with one line, exit 1.  And sync --checksum: every volume's
# digest equals `lsm-sync checksum` of the source volume and of the
# destination volume.
. "$(dirname "$0")/lib.sh"
need_cmd qemu-img qemu-io jq

KILLS=${KILLS:-11}        # per chain (scripts/test.sh sets 4 under the sanitizers)
# At least this many kills must land and be resumed from a journal (with 11:
# 20 and 10; a kill can land before the journal is saved or after the end).
MIN_KILLS=$((2 * KILLS - 2)) MIN_RESUMED=$((KILLS - 1))
RATE=8M                  # per volume: the three volumes run at once
REQS=4
IV_BYTES=$((2 * 1024 * 1024))
BOUND=$((IV_BYTES + (REQS + 1) * 1024 * 1024))
SYNC=("$LSM_SYNC" sync --type=ALL -m "$REQS" --rate="$RATE" --checkpoint-interval=2M,0.1)
# resumes run at full speed (the rate is not part of the job)
RESUME=("$LSM_SYNC" sync --type=ALL -m "$REQS" --checkpoint-interval=2M,0.1 --resume)

# Two chains of three layers, 8 MiB of data in each layer (48 MiB disks).
mkdir a b
qemu-img create -q -f raw a/base.raw 48M
qemu-io -f raw -c 'write -P 0x11 0 6M' -c 'write -P 0x12 20M 2M' a/base.raw >/dev/null
qemu-img create -q -f qcow2 b/base.qcow2 48M
qio b/base.qcow2 -- "write -P 0x21 0 6M" "write -z 8M 4M" "write -P 0x22 20M 2M"
for c in a b; do
    base=$(cd $c && ls base.*)
    qemu-img create -q -f qcow2 -b "$base" -F "${base##*.}" $c/mid.qcow2
    qio $c/mid.qcow2 -- "write -P 0x31 4M 5M" "write -z 16M 1M" "write -P 0x32 30M 3M"
    qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 $c/top.qcow2
    qio $c/top.qcow2 -- "write -P 0x41 10M 4M" "write -P 0x42 36M 4M" "write -P 0x43 47M 4k"
done
LAYERS_a="base.raw mid.qcow2 top.qcow2"
LAYERS_b="base.qcow2 mid.qcow2 top.qcow2"

# fresh_dst C: an empty destination chain d/ of chain C's structure.
fresh_dst() {
    rm -rf d sj sj.*
    mkdir d
    "$LSM_SYNC" clone-structure "$1/top.qcow2" --dst-dir d >/dev/null
}

# killed_run (lib.sh) kills between 2 and 22 MiB into the progress.
KILL_MIN_MB=2 KILL_SPAN_MB=20

# resume OUT CMD...: CMD to completion, retrying while a destination's lock
# is still held by the killed run's io_uring (docs/copy.md).
resume() {
    local out=$1; shift
    after_kill "$out" "$out.err" timeout -k 5 120 "$@" --output=json
}

# check_chain CASE C: every destination volume identical to its source
# volume, qcow2 ones clean, no journal left.
check_chain() {
    local case=$1 c=$2 l layers
    layers=LAYERS_$c
    for l in ${!layers}; do
        if ! qemu-img compare -q "$c/$l" "d/$l" 2>cmp.log; then
            fail "$case" "$l not identical: $(cat cmp.log)"
            return 1
        fi
        if [[ $l == *.qcow2 ]] && ! qemu-img check -q "d/$l" >chk.log 2>&1; then
            fail "$case" "qemu-img check d/$l: $(head -n3 chk.log)"
            return 1
        fi
    done
    if compgen -G 'sj*' >/dev/null; then
        fail "$case" "journal files left after success: $(echo sj*)"
        return 1
    fi
    return 0
}

# check_redone CASE OUT: each volume's bytes_redone within BOUND, the
# sync's the sum.
REDONE_LIST=()
check_redone() {
    local case=$1 out=$2 total sum=0 r
    total=$(jq -r .bytes_redone "$out")
    for r in $(jq -r '.volumes[] | .bytes_redone // 0' "$out"); do
        if ! [[ $r =~ ^[0-9]+$ ]] || ((r > BOUND)); then
            fail "$case" "a volume's bytes_redone $r over the bound $BOUND"
            return 1
        fi
        sum=$((sum + r))
    done
    if [[ $total != "$sum" ]]; then
        fail "$case" "bytes_redone $total is not the volumes' sum $sum"
        return 1
    fi
    REDONE_LIST+=("$total")
    return 0
}

kills=0 resumed=0
for c in a b; do
    for i in $(seq 1 "$KILLS"); do
        case="kill-$c-$i"
        fresh_dst $c
        killed_run run.log "${SYNC[@]}" --journal=sj $c/top.qcow2 d/top.qcow2
        if ((KILLED == 0)); then
            check_chain "$case-unkilled" $c && pass "$case-unkilled"
            continue
        fi
        kills=$((kills + 1))
        if [[ ! -e sj ]]; then
            pass "$case-before-journal"   # killed before the sync's journal was saved
            continue
        fi
        resume res.json "${RESUME[@]}" --journal=sj $c/top.qcow2 d/top.qcow2
        if ((RC != 0)); then
            fail "$case" "resume exit $RC: $(head -n3 res.json.err)"
            continue
        fi
        resumed=$((resumed + 1))
        if [[ $(jq -r .resumed res.json) != true ]]; then
            fail "$case" "the JSON result does not say resumed"
            continue
        fi
        check_chain "$case" $c && check_redone "$case" res.json && pass "$case"
    done
    # killed, killed again while resuming, then resumed to the end
    case="kill-twice-$c"
    fresh_dst $c
    killed_run run.log "${SYNC[@]}" --journal=sj $c/top.qcow2 d/top.qcow2
    kills=$((kills + KILLED))
    if ((KILLED)) && [[ ! -e sj ]]; then
        # killed before the sync's journal was saved: nothing to resume
        pass "$case-before-journal"
        continue
    fi
    if [[ -e sj ]]; then
        sleep 0.5
        killed_run run.log "${SYNC[@]}" --journal=sj --resume $c/top.qcow2 d/top.qcow2
        kills=$((kills + KILLED))
    fi
    if [[ -e sj ]]; then
        resume res.json "${RESUME[@]}" --journal=sj $c/top.qcow2 d/top.qcow2
        if ((RC != 0)); then
            fail "$case" "resume exit $RC: $(head -n3 res.json.err)"
        else
            check_chain "$case" $c && check_redone "$case" res.json && pass "$case"
        fi
    else
        # the first run finished, or the resume did (it removes the journal
        # only at its very end)
        check_chain "$case" $c && pass "$case-done"
    fi
done
log "kills: $kills, resumed: $resumed; bytes_redone of each resume: ${REDONE_LIST[*]:-none}"
((kills >= MIN_KILLS)) && pass kill-count || fail kill-count "only $kills kills landed (want $MIN_KILLS)"
((resumed >= MIN_RESUMED)) && pass resume-count || fail resume-count "only $resumed resumes from a journal (want $MIN_RESUMED)"

# expect_refused CASE PATTERN CMD...: exit 1, one line matching PATTERN.
expect_refused() {
    local case=$1 pat=$2; shift 2
    RC=0
    "$@" >out.txt 2>err.txt || RC=$?
    if ((RC != 1)) || [[ $(wc -l <err.txt) != 1 ]] || ! grep -q "$pat" err.txt; then
        fail "$case" "exit $RC, expected 1 and one line matching '$pat': $(head -n3 err.txt)"
        return 1
    fi
    return 0
}

# kill_when TEST CMD...: CMD in the background, SIGKILLed once TEST (a
# shell command) succeeds (or after 20 s).
kill_when() {
    local test=$1; shift
    "$@" >/dev/null 2>run.err &
    local pid=$! t0=$SECONDS
    while kill -0 "$pid" 2>/dev/null && ((SECONDS - t0 < 20)); do
        eval "$test" && break
        sleep 0.02
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || KILL_RC=$?
}

# A journal is never overwritten by a new sync, and a volume journal of an
# earlier sync is not either.
fresh_dst a
kill_when '[[ -e sj.0 ]]' "${SYNC[@]}" --journal=sj a/top.qcow2 d/top.qcow2
if [[ -e sj ]]; then
    expect_refused journal-exists 'journal sj exists' \
        "${SYNC[@]}" --journal=sj a/top.qcow2 d/top.qcow2 && pass journal-exists
else
    fail journal-exists "the killed sync left no journal"
fi
rm -f sj sj.*; : >sj.1
expect_refused volume-journal-exists 'volume journal sj.1 exists' \
    "${SYNC[@]}" --journal=sj a/top.qcow2 d/top.qcow2 && pass volume-journal-exists
rm -f sj sj.*
expect_refused resume-no-journal 'sj' "${RESUME[@]}" --journal=sj a/top.qcow2 d/top.qcow2 &&
    pass resume-no-journal
expect_refused journal-is-source 'refusing journal' \
    "${SYNC[@]}" --journal=a/mid.qcow2 a/top.qcow2 d/top.qcow2 && pass journal-is-source

# A source changed between kill and resume: refused, nothing written.
cp -a b b0
fresh_dst b0
kill_when '[[ -e sj.1 ]]' "${SYNC[@]}" --journal=sj b0/top.qcow2 d/top.qcow2
if [[ -e sj ]]; then
    qio b0/mid.qcow2 -- "write -P 0x77 40M 64k"
    before=$(sha256sum d/* | sha256sum)
    if expect_refused source-changed \
        'cannot resume from sj: source (volume 1) b0/mid.qcow2 \(was modified\|changed size\)' \
        "${RESUME[@]}" --journal=sj b0/top.qcow2 d/top.qcow2; then
        [[ $(sha256sum d/* | sha256sum) == "$before" ]] && pass source-changed ||
            fail source-changed "the refused resume changed a destination volume"
    fi
else
    fail source-changed "the killed sync left no journal"
fi
rm -rf b0

# A destination volume finished before the kill, changed before the
# resume: refused.  One volume at a time, killed once the journal says the
# base is done.
fresh_dst a
kill_when '[[ -e sj && $(head -n1 sj | jq -c .done 2>/dev/null) == "[[0,1]]" ]]' \
    "${SYNC[@]}" --parallel 1 --journal=sj a/top.qcow2 d/top.qcow2
if [[ $(head -n1 sj | jq -c .done) == '[[0,1]]' ]]; then
    qemu-io -f raw -c 'write -P 0x66 44M 4k' d/base.raw >/dev/null
    expect_refused done-volume-changed 'destination (volume 0) d/base.raw was modified' \
        "${RESUME[@]}" --parallel 1 --journal=sj a/top.qcow2 d/top.qcow2 &&
        pass done-volume-changed
else
    fail done-volume-changed "no kill with the base done and the rest not: $(head -c 300 sj)"
fi

# Killed after a volume's copy finished (the qcow2 writer cleared its
# incomplete mark) but before the sync journal said so: its copy journal
# is still there.  Made by finishing the top volume's copy by hand from its
# journal and putting the journal back.  The resume takes the volume as
# done (not copied again, the copy journal removed) and completes.
fresh_dst b
kill_when '[[ -e sj.2 ]]' "${SYNC[@]}" --journal=sj b/top.qcow2 d/top.qcow2
if [[ -e sj.2 ]]; then
    cp sj.2 saved.2
    resume copy.json "$LSM_SYNC" copy --journal=sj.2 --resume -n -O qcow2 -B mid.qcow2 -F qcow2 \
        b/top.qcow2 d/top.qcow2
    cp saved.2 sj.2
    resume res.json "${RESUME[@]}" --journal=sj b/top.qcow2 d/top.qcow2
    st=$(jq -r '.volumes[2].status' res.json 2>/dev/null)
    if ((RC == 0)) && [[ $st == already-synced ]]; then
        check_chain finished-before-record b && pass finished-before-record
    else
        fail finished-before-record "exit $RC, top volume $st: $(head -n3 res.json.err)"
    fi
else
    fail finished-before-record "the killed sync left no journal for the top volume"
fi

# sync --checksum: each destination volume's digest is `lsm-sync checksum`
# of its source volume and of itself; with a journal and a resume too.
if "$LSM_SYNC" checksum a/base.raw >/dev/null 2>&1; then
    for alg in sha256 blake2b; do
        fresh_dst a
        RC=0
        "$LSM_SYNC" sync --type=ALL --checksum=$alg --output=json a/top.qcow2 d/top.qcow2 >cs.json \
            2>cs.err || RC=$?
        ok=1
        ((RC == 0)) || { ok=0; fail "checksum-$alg" "exit $RC: $(head -n3 cs.err)"; }
        for l in $LAYERS_a; do
            ((ok)) || break
            got=$(jq -r --arg d "d/$l" '.volumes[] | select(.destination == $d) | .checksum.checksum' cs.json)
            s=$("$LSM_SYNC" checksum --algorithm=$alg "a/$l" | cut -d' ' -f1)
            t=$("$LSM_SYNC" checksum --algorithm=$alg "d/$l" | cut -d' ' -f1)
            if [[ -z $got || $got != "$s" || $got != "$t" ]]; then
                ok=0
                fail "checksum-$alg" "$l: sync says '$got', source $s, destination $t"
            fi
        done
        ((ok)) && pass "checksum-$alg"
    done
    # the human lines: CHECKSUM  DESTINATION, as `lsm-sync checksum` prints
    fresh_dst b
    "$LSM_SYNC" sync --type=ALL --checksum b/top.qcow2 d/top.qcow2 >cs.txt
    want=$(for l in $LAYERS_b; do "$LSM_SYNC" checksum "b/$l" | sed "s|b/|d/|"; done)
    [[ $(grep '  d/' cs.txt) == "$want" ]] && pass checksum-human ||
        fail checksum-human "got $(cat cs.txt), want $want"
    # killed, resumed with --checksum: the volumes done before are read back too
    fresh_dst b
    kill_when '[[ -e sj.2 ]]' "${SYNC[@]}" --journal=sj b/top.qcow2 d/top.qcow2
    if [[ -e sj ]]; then
        resume cs.json "${RESUME[@]}" --journal=sj --checksum b/top.qcow2 d/top.qcow2
        got=$(jq -r '[.volumes[].checksum.checksum] | join(" ")' cs.json)
        want=$(for l in $LAYERS_b; do "$LSM_SYNC" checksum "b/$l" | cut -d' ' -f1; done | xargs)
        ((RC == 0)) && [[ $got == "$want" ]] && check_chain checksum-resume b && pass checksum-resume ||
            fail checksum-resume "exit $RC, got '$got', want '$want'"
    else
        pass checksum-resume-unkilled
    fi
else
    skip_case checksum "this lsm-sync has no checksum command (built without libsodium)"
fi

finish
