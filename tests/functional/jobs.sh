#!/bin/bash
# The job library in one process (tests/tools/jobs-limit.c): four copy jobs
# under a global limit of 48 MiB/s, aggregate rate at most 10% above it (at least 75%); one
# job's own limit lowered while it runs, effective within a second; a fifth
# job cancelled, returning within a second and leaving nothing behind; the
# four results identical to their sources (qemu-img compare) and clean
# (qemu-img check for the qcow2 ones).  Then a sync of a 3-layer chain run as
# a job (tests/tools/sync-job.c): its summed progress, its volumes copied in
# parallel, and a cancelled sync that `lsm-sync sync` then completes.
. "$(dirname "$0")/lib.sh"
need_cmd qemu-img qemu-io jq
JOBS_LIMIT=${JOBS_LIMIT:-$BUILD_DIR/tests/tools/jobs-limit}
SYNC_JOB=${SYNC_JOB:-$BUILD_DIR/tests/tools/sync-job}
[[ -x $JOBS_LIMIT ]] || die "$JOBS_LIMIT is not built"
[[ -x $SYNC_JOB ]] || die "$SYNC_JOB is not built"

LIMIT=48
# Sources with data (random: not zero-detected), raw and qcow2, 64 MiB each
# so that the jobs are still running at 4 s (4 x 64 MiB at 48 MiB/s: ~5.5 s).
head -c 64M /dev/urandom > s1.raw
head -c 64M /dev/urandom > s2.raw
qemu-img convert -f raw -O qcow2 s2.raw s2.qcow2
rm s2.raw
head -c 48M /dev/urandom > s3.raw
truncate -s 80M s3.raw               # and a sparse tail
qemu-img create -q -f qcow2 s4.qcow2 64M
qemu-io -f qcow2 -c 'write -P 0x5a 0 40M' -c 'write -P 0xa5 48M 16M' s4.qcow2 >/dev/null
head -c 32M /dev/urandom > c.raw

out=$("$JOBS_LIMIT" $LIMIT s1.raw d1.raw s2.qcow2 d2.qcow2 s3.raw d3.qcow2 s4.qcow2 d4.raw \
      c.raw dc.raw) && rc=0 || rc=$?
printf '%s\n' "$out"
if [[ $rc == 0 ]]; then pass jobs-limit; else fail jobs-limit "exit $rc"; fi
grep -q '^aggregate .* ok$' <<<"$out" && pass aggregate || fail aggregate
grep -q '^change .* ok$' <<<"$out" && pass change || fail change
grep -q '^cancel .* ok$' <<<"$out" && pass cancel || fail cancel
[[ ! -e dc.raw ]] && pass cancel-removed || fail cancel-removed "dc.raw left behind"

i=0
for pair in s1.raw:d1.raw s2.qcow2:d2.qcow2 s3.raw:d3.qcow2 s4.qcow2:d4.raw; do
    i=$((i + 1))
    s=${pair%%:*} d=${pair##*:}
    sf=raw df=raw
    [[ $s == *.qcow2 ]] && sf=qcow2
    [[ $d == *.qcow2 ]] && df=qcow2
    if qemu-img compare -q -f $sf -F $df "$s" "$d"; then pass "compare-$i"; else fail "compare-$i" "$s vs $d"; fi
    if [[ $df == qcow2 ]]; then
        if qemu-img check -q -f qcow2 "$d"; then pass "check-$i"; else fail "check-$i" "$d"; fi
    fi
done

# ---- a sync as a job ----
mkdir src dst dst2
head -c 32M /dev/urandom > src/base.raw
truncate -s 64M src/base.raw
qemu-img create -q -f qcow2 -b base.raw -F raw src/mid.qcow2
qemu-io -f qcow2 -c 'write -P 0x11 8M 16M' src/mid.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 src/top.qcow2
qemu-io -f qcow2 -c 'write -P 0x22 32M 16M' -c 'write -z 0 1M' src/top.qcow2 >/dev/null
"$LSM_SYNC" clone-structure src/top.qcow2 --dst-dir dst >/dev/null
"$LSM_SYNC" clone-structure src/top.qcow2 --dst-dir dst2 >/dev/null

# 16 MiB/s per volume: 2 s + 1 s + 1 s one after the other, 2 s in parallel
out=$("$SYNC_JOB" 16 src/top.qcow2 dst/top.qcow2) && rc=0 || rc=$?
printf '%s\n' "$out"
if [[ $rc == 0 ]]; then pass sync-job; else fail sync-job "exit $rc"; fi
grep -q '^parallel .* ok$' <<<"$out" && pass sync-parallel || fail sync-parallel
if qemu-img compare -q src/top.qcow2 dst/top.qcow2; then pass sync-compare; else fail sync-compare; fi
for v in mid top; do
    if qemu-img check -q dst/$v.qcow2; then pass "sync-check-$v"; else fail "sync-check-$v"; fi
    # layer by layer: each destination volume has its source's own layer
    if diff <(qemu-img map --output=json -f qcow2 src/$v.qcow2 | jq -c '.[] | select(.depth == 0) | [.start, .length, .zero, .data]') \
            <(qemu-img map --output=json -f qcow2 dst/$v.qcow2 | jq -c '.[] | select(.depth == 0) | [.start, .length, .zero, .data]') >/dev/null; then
        pass "sync-layer-$v"
    else
        fail "sync-layer-$v" "the own layer of dst/$v.qcow2 differs from src/$v.qcow2"
    fi
done

out=$("$SYNC_JOB" 4 src/top.qcow2 dst2/top.qcow2 cancel) && rc=0 || rc=$?
printf '%s\n' "$out"
if [[ $rc == 0 ]]; then pass sync-cancel; else fail sync-cancel "exit $rc"; fi
# the interrupted destination chain is what the next sync finishes
if "$LSM_SYNC" sync --type=ALL src/top.qcow2 dst2/top.qcow2 >/dev/null; then pass sync-resync; else fail sync-resync; fi
if qemu-img compare -q src/top.qcow2 dst2/top.qcow2; then pass sync-resync-compare; else fail sync-resync-compare; fi
finish
