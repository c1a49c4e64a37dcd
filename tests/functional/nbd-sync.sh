#!/bin/bash
# `lsm-sync sync --job` into NBD destinations (docs/nbd.md, "sync"): a
# 3-layer qcow2 chain (data, zero clusters and holes in every layer) is
# cloned into a directory, each destination layer is served ALONE (its
# backing null) by its own writable qemu-nbd on a Unix socket, and the job
# names the exports.  Once the servers are stopped: the destination chain
# equals the source chain (qemu-img compare), every destination layer maps
# alone as its source layer does (data, zero and present per range: zero
# clusters stay zero clusters, holes stay holes), and qemu-img check is
# clean.  Refused with one line, exit 1 and nothing written: an export of
# the wrong size, a job mixing exports and local volumes, an NBD source,
# --checksum and -C.  --type=INTERNAL connects only to the exports
# it writes (the leaf's need not be served).  A chain whose base is raw:
# the base's export is served with -f raw.  Then the pull (docs/nbd.md,
# "sync from NBD exports"): each SOURCE layer served alone by qemu-nbd -r -A,
# the destinations a local clone; the same comparisons, and its refusals.
. "$(dirname "$0")/lib.sh"
need_cmd qemu-nbd qemu-img qemu-io jq
. "$TESTS_DIR/nbd-netns-lib.sh"   # qemu_nbd_on, uri, stop_servers

rc=0
"$LSM_SYNC" copy probe.raw "nbd+unix:///?socket=$T/none.sock" 2>probe.log || rc=$?
if grep -q "built without libnbd" probe.log; then
    skip "lsm-sync was built without libnbd"
fi
trap 'stop_servers; cleanup' EXIT

# The source chain, 16 MiB: each layer has data, zero clusters (write -z)
# and holes (never written, or discarded).
qemu-img create -q -f qcow2 base.qcow2 16M
qio base.qcow2 -- "write -P 0x61 0 3M" "write -z 4M 1M" "write -P 0x62 8M 512k" \
    "write -P 0x63 15M 1M" "discard 15M 64k"
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
qio mid.qcow2 -- "write -P 0x64 1M 1M" "write -z 8M 256k" "write -P 0x65 12M 128k"
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
qio top.qcow2 -- "write -P 0x66 2M 64k" "write -z 0 64k" "write -z 12M 64k" \
    "write -P 0x67 14M 1M"

LAYERS=(top.qcow2 mid.qcow2 base.qcow2)

# One layer alone, as QEMU opens it: its backing null.
alone() { printf '{"driver":"qcow2","file":{"driver":"file","filename":"%s"},"backing":null}' "$1"; }
# Its map as (start, length, data, zero, present) runs, neighbours of one
# kind merged (where data lives in the file is not compared).
layer_map() {
    qemu-img map --output=json "json:$(alone "$1")" |
        jq -c 'map({start, length, data, zero, present}) |
               reduce .[] as $e ([]; if length > 0 and .[-1].data == $e.data and
                   .[-1].zero == $e.zero and .[-1].present == $e.present
                   then .[-1].length += $e.length else . + [$e] end)'
}
# the source layers really have the three kinds
for l in "${LAYERS[@]}"; do
    m=$(layer_map "$T/$l")
    for kind in '.data' '(.zero and .present)' '(.present | not)'; do
        [[ $(jq "map(select($kind)) | length" <<<"$m") -gt 0 ]] ||
            die "source layer $l has no range of kind $kind: $m"
    done
done

# serve DIR: every layer of DIR alone, writable, on DIR-NAME.sock
serve() {
    local d=$1 l
    for l in "${LAYERS[@]}"; do
        qemu_nbd_on "$T/$d-$l.sock" "json:$(alone "$T/$d/$l")"
    done
}
# job DIR CLONE_JSON: the clone's job with every destination an export
job() {
    jq --arg t "$T" --arg d "$1" '{volumes: [.volumes[] | .destination = {
            path: ("nbd+unix:///?socket=" + $t + "/" + $d + "-" + (.destination.path | split("/") | last) + ".sock"),
            format: .destination.format}]}' "$2"
}
# untouched DIR: every layer of DIR still allocates nothing
untouched() {
    local l
    for l in "${LAYERS[@]}"; do
        [[ $(layer_map "$T/$1/$l" | jq -c 'map(select(.present)) | length') == 0 ]] || return 1
    done
}
# one_line CASE LOG PATTERN: exit 1 was seen, the log is one line matching PATTERN
one_line() {
    if [[ $(wc -l <"$2") == 1 ]] && grep -q -- "$3" "$2"; then
        pass "$1"
    else
        fail "$1" "$(cat "$2")"
    fi
}

# 1. The sync into three exports.
mkdir dst
"$LSM_SYNC" clone-structure --output=json top.qcow2 --dst-dir "$T/dst" >clone.json
job dst clone.json >job.json
serve dst
rc=0
"$LSM_SYNC" sync --type=ALL --output=json --connections=2 --timeout=20 --job job.json >sync.json 2>sync.err || rc=$?
stop_servers
if [[ $rc == 0 && $(jq -r '[.volumes[].status] | unique | join(",")' sync.json) == synced ]]; then
    pass sync
else
    fail sync "exit $rc: $(cat sync.err)"
fi
if qemu-img compare -q -f qcow2 -F qcow2 top.qcow2 dst/top.qcow2; then
    pass compare
else
    fail compare "the destination chain differs from the source chain"
fi
for l in "${LAYERS[@]}"; do
    want=$(layer_map "$T/$l")
    got=$(layer_map "$T/dst/$l")
    if [[ $got == "$want" ]]; then
        pass "map $l"
    else
        fail "map $l" "source layer $want, destination layer $got"
    fi
    if qemu-img check -q -f qcow2 "dst/$l"; then
        pass "check $l"
    else
        fail "check $l"
    fi
done

# 2. A fresh clone whose top is served by an export 1 MiB too large:
# refused before anything is written to any of the exports.
mkdir dst2
"$LSM_SYNC" clone-structure --output=json top.qcow2 --dst-dir "$T/dst2" >clone2.json
qemu-img create -q -f qcow2 -F qcow2 -b mid.qcow2 "$T/dst2/top.qcow2" 17M
job dst2 clone2.json >job2.json
serve dst2
rc=0
"$LSM_SYNC" sync --type=ALL --job job2.json >/dev/null 2>size.err || rc=$?
stop_servers
if [[ $rc == 1 ]] && untouched dst2; then
    one_line "wrong size" size.err "is 17825792 bytes, but its source"
else
    fail "wrong size" "exit $rc or something was written: $(cat size.err)"
fi

# 3. Refused before any connection: exports mixed with local volumes, an
# NBD source, -C and --checksum (the exports of dst2 are served for the
# last two, and must stay untouched).
jq --arg t "$T" '.volumes[0].destination = {path: ("nbd+unix:///?socket=" + $t + "/dst2-top.qcow2.sock")}' \
    clone2.json >mixed.json
rc=0
"$LSM_SYNC" sync --type=ALL --job mixed.json >/dev/null 2>mixed.err || rc=$?
if [[ $rc == 1 ]]; then one_line mixed mixed.err "mixes NBD exports"; else fail mixed "exit $rc"; fi
jq '.volumes[0].source.path = .volumes[0].destination.path' job.json >nbdsrc.json
rc=0
"$LSM_SYNC" sync --type=ALL --job nbdsrc.json >/dev/null 2>nbdsrc.err || rc=$?
if [[ $rc == 1 ]]; then one_line "both ends nbd" nbdsrc.err "are both NBD exports"; else fail "both ends nbd" "exit $rc"; fi
rm -f dst2/top.qcow2
"$LSM_SYNC" clone-structure --reuse top.qcow2 --dst-dir "$T/dst2" >/dev/null
serve dst2
rc=0
"$LSM_SYNC" sync --type=ALL -C --job job2.json >/dev/null 2>offload.err || rc=$?
if [[ $rc == 1 ]]; then one_line offload offload.err "needs destination files"; else fail offload "exit $rc"; fi
rc=0
"$LSM_SYNC" sync --type=ALL --checksum --job job2.json >/dev/null 2>checksum.err || rc=$?
if [[ $rc == 1 ]]; then
    one_line checksum checksum.err "not the guest view\|without libsodium"
else
    fail checksum "exit $rc"
fi
stop_servers
if untouched dst2; then pass "refusals wrote nothing"; else fail "refusals wrote nothing"; fi

# 4. --type=INTERNAL into dst2 with only its mid and base layers served
# (the leaf's export is not there: the VM host mirrors the leaf): those two
# are synced, the leaf is untouched.
for l in mid.qcow2 base.qcow2; do
    qemu_nbd_on "$T/dst2-$l.sock" "json:$(alone "$T/dst2/$l")"
done
rc=0
"$LSM_SYNC" sync --type=INTERNAL --job job2.json >internal.out 2>internal.err || rc=$?
stop_servers
ok=$((rc == 0))
for l in mid.qcow2 base.qcow2; do
    [[ $(layer_map "$T/dst2/$l") == "$(layer_map "$T/$l")" ]] || ok=0
done
[[ $(layer_map "$T/dst2/top.qcow2" | jq -c 'map(select(.present)) | length') == 0 ]] || ok=0
if ((ok)); then pass internal; else fail internal "exit $rc: $(cat internal.err)"; fi

# 5. A chain whose base is raw (qemu-img create -b base.raw -F raw): the
# raw base is served with -f raw (it has no backing to hide), the qcow2
# top alone.  The chains compare equal, the top layer maps as its source,
# the raw base reads as its source.
qemu-img create -q -f raw rbase.raw 16M
qemu-io -f raw -c "write -P 0x71 0 2M" -c "write -P 0x72 9M 1M" rbase.raw >/dev/null
qemu-img create -q -f qcow2 -b rbase.raw -F raw rtop.qcow2
qio rtop.qcow2 -- "write -P 0x73 1M 2M" "write -z 9M 256k" "write -P 0x74 15M 64k"
mkdir rdst
"$LSM_SYNC" clone-structure --output=json rtop.qcow2 --dst-dir "$T/rdst" >rclone.json
job rdst rclone.json >rjob.json
qemu_nbd_on "$T/rdst-rtop.qcow2.sock" "json:$(alone "$T/rdst/rtop.qcow2")"
qemu_nbd_on "$T/rdst-rbase.raw.sock" -f raw "$T/rdst/rbase.raw"
rc=0
"$LSM_SYNC" sync --type=ALL --job rjob.json >/dev/null 2>rsync.err || rc=$?
stop_servers
ok=$((rc == 0))
qemu-img compare -q -f qcow2 -F qcow2 rtop.qcow2 rdst/rtop.qcow2 || ok=0
qemu-img compare -q -f raw -F raw rbase.raw rdst/rbase.raw || ok=0
[[ $(layer_map "$T/rdst/rtop.qcow2") == "$(layer_map "$T/rtop.qcow2")" ]] || ok=0
qemu-img check -q -f qcow2 rdst/rtop.qcow2 || ok=0
if ((ok)); then pass "raw base"; else fail "raw base" "exit $rc: $(cat rsync.err)"; fi

# 6. The pull: each SOURCE layer served alone, read-only, and the job's
# destinations a local clone.  The zero clusters of mid and top (over data
# of the layers below) must stay zero clusters, what a layer does not
# allocate must stay unallocated: the chains and every volume alone compare
# equal, every layer maps alone as its source, check is clean.
serve_src() {   # serve_src LAYER...: source layers alone, read-only, on src-NAME.sock
    local l
    for l in "$@"; do
        qemu_nbd_on "$T/src-$l.sock" -r -A "json:$(alone "$T/$l")"
    done
}
# pull_job CLONE_JSON: the clone's job with every source an export
pull_job() {
    jq --arg t "$T" '{volumes: [.volumes[] | .source = {
            path: ("nbd+unix:///?socket=" + $t + "/src-" + (.source.path | split("/") | last) + ".sock")}]}' "$1"
}
mkdir pull
"$LSM_SYNC" clone-structure --output=json top.qcow2 --dst-dir "$T/pull" >pclone.json
pull_job pclone.json >pjob.json
serve_src "${LAYERS[@]}"
rc=0
"$LSM_SYNC" sync --type=ALL --output=json --job pjob.json >pull.json 2>pull.err || rc=$?
stop_servers
ok=$((rc == 0))
[[ $(jq -r '[.volumes[].status] | unique | join(",")' pull.json) == synced ]] || ok=0
if ((ok)); then pass pull; else fail pull "exit $rc: $(cat pull.err)"; fi
ok=1
for l in "${LAYERS[@]}"; do
    qemu-img compare -q -f qcow2 -F qcow2 "$l" "pull/$l" || { ok=0; echo "chain of $l differs"; }
    qemu-img compare -q "json:$(alone "$T/$l")" "json:$(alone "$T/pull/$l")" ||
        { ok=0; echo "layer $l alone differs"; }
    [[ $(layer_map "$T/pull/$l") == "$(layer_map "$T/$l")" ]] || { ok=0; echo "map of $l differs"; }
    qemu-img check -q -f qcow2 "pull/$l" || { ok=0; echo "check of $l"; }
done
if ((ok)); then pass "pull: compare, map, check"; else fail "pull: compare, map, check"; fi

# --type=INTERNAL into a fresh clone, the leaf's export not served.
mkdir pull2
"$LSM_SYNC" clone-structure --output=json top.qcow2 --dst-dir "$T/pull2" >pclone2.json
pull_job pclone2.json >pjob2.json
serve_src mid.qcow2 base.qcow2
rc=0
"$LSM_SYNC" sync --type=INTERNAL --job pjob2.json >/dev/null 2>pint.err || rc=$?
ok=$((rc == 0))
for l in mid.qcow2 base.qcow2; do
    [[ $(layer_map "$T/pull2/$l") == "$(layer_map "$T/$l")" ]] || ok=0
done
qemu-img compare -q -f qcow2 mid.qcow2 pull2/mid.qcow2 || ok=0
[[ $(layer_map "$T/pull2/top.qcow2" | jq -c 'map(select(.present)) | length') == 0 ]] || ok=0
if ((ok)); then pass "pull internal"; else fail "pull internal" "exit $rc: $(cat pint.err)"; fi

# Refusals (exit 1, one line, pull2's leaf untouched): the same URI twice,
# an export of the wrong size, an export without qemu:allocation-depth
# (nbdkit serving the file).
jq '.volumes[1].source.path = .volumes[2].source.path' pjob2.json >pdup.json
rc=0
"$LSM_SYNC" sync --type=INTERNAL --job pdup.json >/dev/null 2>pdup.err || rc=$?
if [[ $rc == 1 ]]; then one_line "pull duplicate" pdup.err "have the same source"; else fail "pull duplicate" "exit $rc"; fi
stop_servers
qemu-img create -q -f qcow2 big.qcow2 17M
qemu_nbd_on "$T/src-top.qcow2.sock" -r -A "json:$(alone "$T/big.qcow2")"
rc=0
"$LSM_SYNC" sync --type=LEAF --job pjob2.json >/dev/null 2>psize.err || rc=$?
stop_servers
if [[ $rc == 1 ]]; then one_line "pull wrong size" psize.err "is 17825792 bytes, but its destination"; else fail "pull wrong size" "exit $rc"; fi
if command -v nbdkit >/dev/null; then
    truncate -s 16M flat.raw
    nbdkit -U "$T/src-top.qcow2.sock" -P "$T/nbdkit.pid" -r file "$T/flat.raw" 2>>"$T/server.log"
    wait_file "$T/nbdkit.pid"
    PIDS+=("$(cat "$T/nbdkit.pid")")
    rc=0
    "$LSM_SYNC" sync --type=LEAF --job pjob2.json >/dev/null 2>pdepth.err || rc=$?
    stop_servers
    if [[ $rc == 1 ]]; then one_line "pull no depth" pdepth.err "does not offer qemu:allocation-depth"; else fail "pull no depth" "exit $rc"; fi
else
    skip_case "pull no depth" "nbdkit is not installed (scripts/deps.sh --tests installs it)"
fi
if [[ $(layer_map "$T/pull2/top.qcow2" | jq -c 'map(select(.present)) | length') == 0 ]]; then
    pass "pull refusals wrote nothing"
else
    fail "pull refusals wrote nothing"
fi


# 7. --journal / --resume with exports (docs/resume.md, "sync"), a push
# and a pull: a sync of one volume at a time at 2 MiB/s is SIGKILLed once
# the sync journal counts the base done and the mid volume's copy journal
# counts some of it done.  Refused then, exit 1, one line, nothing written
# (every file of the sync and its journals byte-identical): a rerun
# without --resume, and a resume whose job names another export for the
# leaf.  The resume exits 0, says the base was synced before (not copied
# again) and that the mid volume's copy skipped what was done; the chains
# and every layer alone compare equal, map alike, check clean.
SJOB=("$LSM_SYNC" sync --type=ALL --parallel=1 --checkpoint-interval=1M,0.05
      --journal="$T/sj" --output=json --job)
# killed_sync LOG JOB: the sync of JOB, killed as above (at most 10 s)
killed_sync() {
    local log=$1 job=$2 pid t0 rc=0
    rm -f sj sj.*
    "${SJOB[@]}" "$job" --rate=2M >"$log.out" 2>"$log" &
    pid=$!
    t0=$SECONDS
    while kill -0 "$pid" 2>/dev/null && ((SECONDS - t0 < 10)); do
        if [[ -s sj && -s sj.1 ]] && (($(head -n1 sj | jq '[.done[][1]] | add // 0') >= 1)) &&
           (($(head -n1 sj.1 | jq '[.done[][1]] | add // 0') > 0)); then
            break
        fi
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || die "$log: the sync ended before the kill: $(cat "$log")"
    { wait "$pid"; } 2>/dev/null || rc=$?   # (not bash's "Killed" line)
    ((rc != 0)) || die "$log: the sync exited 0 after SIGKILL"
    [[ -s sj && -s sj.1 ]] || die "$log: no journals after the kill"
}
# sums DIR FILE...: checksums of DIR's files and the journals (not the
# temporary files of saves the kill cut short: a resume that loads the
# journal removes them), for "nothing written".  A push's exports are
# flushed first: qemu-nbd keeps qcow2 metadata the killed run's writes
# changed in its cache, and writes it out at the next flush or disconnect.
sums() {
    local s
    for s in "$T/$1"-*.sock; do
        [[ -S $s ]] || continue
        qemu-io -f raw -c flush "nbd+unix:///?socket=$s" >/dev/null || die "cannot flush $s"
    done
    md5sum "$1"/* sj sj.[0-9] "${@:2}"
}
# refused_resumes LOG JOB OTHER_JOB DIR: the two refusals above
refused_resumes() {
    local log=$1 job=$2 other=$3 dir=$4 before
    before=$(sums "$dir" other.qcow2)
    after_kill /dev/null "$log.exists" "${SJOB[@]}" "$job"
    if [[ $RC == 1 ]]; then one_line "$log: no --resume" "$log.exists" "journal .*sj exists: add --resume"
    else fail "$log: no --resume" "exit $RC"; fi
    after_kill /dev/null "$log.uri" "${SJOB[@]}" "$other" --resume
    if [[ $RC == 1 ]]; then
        one_line "$log: another export" "$log.uri" "volume 2) nbd+unix:.*other.sock is not the export this journal was written for"
    else
        fail "$log: another export" "exit $RC: $(cat "$log.uri")"
    fi
    if [[ $(sums "$dir" other.qcow2) == "$before" ]]; then pass "$log: refusals wrote nothing"
    else fail "$log: refusals wrote nothing"; fi
}
# resumed LOG JOB DIR: the resume, then the servers stopped and DIR checked
resumed() {
    local log=$1 job=$2 dir=$3 ok l
    after_kill "$log.rout" "$log.rerr" "${SJOB[@]}" "$job" --resume
    stop_servers
    ok=$((RC == 0))
    [[ ! -e sj && ! -e sj.0 && ! -e sj.1 && ! -e sj.2 ]] || { ok=0; echo "journals left"; }
    jq -e '.resumed and .volumes[0].status == "already-synced" and
           .volumes[1].status == "synced" and .volumes[1].bytes_already_done > 0 and
           .volumes[2].status == "synced" and .volumes[2].bytes_already_done == 0' \
        "$log.rout" >/dev/null || { ok=0; echo "resume output: $(cat "$log.rout")"; }
    if ((ok)); then pass "$log: resume"; else fail "$log: resume" "exit $RC: $(cat "$log.rerr")"; fi
    log "$log: resume: $(jq -r '.bytes_redone as $r |
        [.volumes[] | "\(.status) \(.bytes_already_done // "-")/\(.bytes_total)"] |
        "volumes (base first: status bytes_already_done/bytes_total): " + join(", ") + "; bytes_redone \($r)"' \
        "$log.rout")"
    ok=1
    for l in "${LAYERS[@]}"; do
        qemu-img compare -q -f qcow2 -F qcow2 "$l" "$dir/$l" || { ok=0; echo "chain of $l differs"; }
        qemu-img compare -q "json:$(alone "$T/$l")" "json:$(alone "$T/$dir/$l")" ||
            { ok=0; echo "layer $l alone differs"; }
        [[ $(layer_map "$T/$dir/$l") == "$(layer_map "$T/$l")" ]] || { ok=0; echo "map of $l differs"; }
        qemu-img check -q -f qcow2 "$dir/$l" || { ok=0; echo "check of $l"; }
    done
    if ((ok)); then pass "$log: compare, map, check"; else fail "$log: compare, map, check"; fi
}
# A chain of its own whose mid layer is the largest (3 MiB of data: the
# limiter's 1 MiB burst and 1 s at the rate), so that the kill lands in it.
qemu-img create -q -f qcow2 jbase.qcow2 16M
qio jbase.qcow2 -- "write -P 0x41 0 1M" "write -z 4M 1M"
qemu-img create -q -f qcow2 -b jbase.qcow2 -F qcow2 jmid.qcow2
qio jmid.qcow2 -- "write -P 0x42 2M 3M" "write -z 0 64k" "write -P 0x43 12M 64k"
qemu-img create -q -f qcow2 -b jmid.qcow2 -F qcow2 jtop.qcow2
qio jtop.qcow2 -- "write -P 0x44 1M 64k" "write -z 3M 64k"
LAYERS=(jtop.qcow2 jmid.qcow2 jbase.qcow2)
qemu-img create -q -f qcow2 other.qcow2 16M
mkdir jpush
"$LSM_SYNC" clone-structure --output=json jtop.qcow2 --dst-dir "$T/jpush" >jpclone.json
job jpush jpclone.json >jpjob.json
jq --arg t "$T" '.volumes[0].destination.path = ("nbd+unix:///?socket=" + $t + "/other.sock")' \
    jpjob.json >jpother.json
serve jpush
qemu_nbd_on "$T/other.sock" "json:$(alone "$T/other.qcow2")"
killed_sync journal-push jpjob.json
refused_resumes journal-push jpjob.json jpother.json jpush
resumed journal-push jpjob.json jpush

mkdir jpull
"$LSM_SYNC" clone-structure --output=json jtop.qcow2 --dst-dir "$T/jpull" >jlclone.json
pull_job jlclone.json >jljob.json
jq --arg t "$T" '.volumes[0].source.path = ("nbd+unix:///?socket=" + $t + "/other.sock")' \
    jljob.json >jlother.json
serve_src "${LAYERS[@]}"
qemu_nbd_on "$T/other.sock" -r -A "json:$(alone "$T/other.qcow2")"
killed_sync journal-pull jljob.json
refused_resumes journal-pull jljob.json jlother.json jpull
resumed journal-pull jljob.json jpull

finish
