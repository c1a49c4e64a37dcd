#!/bin/bash
# lsm-sync migrate end to end, against a real libvirtd and a QEMU (TCG)
# guest that writes sequence-numbered blocks to vda without pause
# (tests/libvirt/writer-guest.sh, lsmw.mode=seq).  vda is a 3-layer qcow2
# chain (base <- mid <- leaf, each layer with its own data and the leaf a
# zero cluster), vdb a raw disk that must stay untouched, vdc a one-layer
# qcow2 that moves with vda in part 3.  File to file only:
# the host kernel has no device-mapper, so no LVM domain here.
#   1. migrate vda to dst1: exit 0; the VM runs on dst1's overlay and keeps
#      writing there; every block the guest wrote verifies on dst1 (guest
#      paused: QEMU flushed); qemu-img check of every destination layer;
#      qemu-img compare of each internal layer (as a chain) with its source
#      and the same data map layer by layer; base and mid unchanged; the
#      source overlay backs onto the old leaf; vdb untouched; the progress
#      lines name every phase; the journal is gone.
#   2. a failure injected before the pivot (--fail-at pivot): exit 1, one
#      message saying it rolled back; the VM stays on its source, no block
#      job, dst2 empty again, no journal.
#   3. vda and vdc (a one-layer qcow2 the guest does not write) together:
#      SIGKILL during the sync phase (a second run meanwhile is refused),
#      then --resume: it finishes; both disks on dst2, vda's blocks verify
#      there, vdc's content is what it was; vdb still untouched.
#   3b. vda and vdc again with --fail-at commit (every pivot after the first
#      fails): exit 1, outcome partial, vda on dst5 and vdc still mirroring,
#      the journal kept; --rollback refused; --resume pivots vdc; vda's blocks
#      verify, vdc's content is what it was.
#   3c. the pivot deadline, --pivot-timeout 2: (a) vda's pivot held not
#      ready (--fail-at pivot-wait) until it passes: exit 1, one line naming
#      vda and the deadline, rolled back (the VM on its source side, dst6
#      empty, no job, no journal), the guest writes on, and 2 s (not 60)
#      between the start of the pivots and the rollback; (b) vda and vdc,
#      vdc held past the commit point (--fail-at commit-wait): exit 1,
#      partial with vdc's deadline as the reason, vdc still mirroring;
#      --resume pivots it: both on dst6.
#   4. SIGKILL during the sync phase, then --rollback: dst3 empty, VM where
#      it was, no job; and SIGTERM during the sync: exit 1, rolled back.
#   5. a mirror held to 1 KiB/s (--stall-timeout 1): restarted with
#      synchronous writes, then the ready deadline passes: exit 1 with the
#      reason, rolled back.
#   6. bad input: each one line, exit 2 or 1, nothing created.
. "$(dirname "$0")/lib.sh"
. "$SOURCE_DIR/tests/libvirt/libvirt-env.sh"
. "$SOURCE_DIR/tests/libvirt/writer-guest.sh"

need_cmd qemu-img qemu-io python3 sha256sum
"$LSM_SYNC" migrate --help >/dev/null 2>&1 || skip "this lsm-sync has no migrate command (built without libvirt)"
[[ $(id -u) == 0 ]] || skip "needs root (the system libvirtd)"
wg_initrd
lvenv_start

DOM=lsm-mig-$$
STATE=$T/state
MIG=("$LSM_SYNC" migrate --state-dir "$STATE")
PIDS=()
at_exit() {
    local p
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    virsh -q -c "$LVENV_URI" destroy "$DOM"
}
lvenv_at_exit at_exit


mkdir -p src dst1 dst2 dst3 dst4 dst5 dst6 "$STATE"
. "$SOURCE_DIR/tests/functional/migrate-lib.sh"

expect() {
    local name=$1 code=$2 text=$3
    shift 3
    local rc=0
    "$@" >bad.out 2>bad.err || rc=$?
    if [[ $rc == "$code" ]] && grep -q -- "$text" bad.err; then
        pass "$name"
    else
        fail "$name" "rc=$rc: $(cat bad.err)"
    fi
}
# usage errors while the guest boots (exit 2, nothing created)
expect no-disk 2 "name the disks" "${MIG[@]}" "$DOM" --dst-dir "$T/dst4"
expect no-dst 2 "give the destination" "${MIG[@]}" "$DOM" --disk vda
expect two-dsts 2 "one destination" "${MIG[@]}" "$DOM" --disk vda --dst-dir a --dst-vg b
expect bad-sync-writes 2 "auto, always or never" "${MIG[@]}" "$DOM" --disk vda --dst-dir "$T/dst4" --sync-writes=sometimes
expect bad-fail-at 2 "takes a phase" "${MIG[@]}" "$DOM" --disk vda --dst-dir "$T/dst4" --fail-at=never

check guest-writes wait_pass 1 60
log "the guest wrote its first pass at ${SECONDS} s"

# ---- 1. file to file ----
t0=$(date +%s)
rc=0
"${MIG[@]}" "$DOM" --disk vda --dst-dir "$T/dst1" --progress=json --output=json >m1.json 2>m1.err || rc=$?
log "migrate to dst1 took $(($(date +%s) - t0)) s"
check migrate-exit-0 test "$rc" = 0
[[ $rc == 0 ]] || log "$(grep -v '^{' m1.err | tail -n 3)"
top1=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["disks"][0]["destination"])' m1.json)
ovl1=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["disks"][0]["overlay"])' m1.json)
check runs-on-dst1 test "$(source_of vda)" = "$top1"
check top1-in-dst1 test "$(dirname "$top1")" = "$T/dst1"
check vdb-not-moved test "$(source_of vdb)" = "$T/src/vdb.raw"
check journal-removed no_journal
check all-phases test "$(phases_seen m1.err)" = "snapshot clone replicate sync pivot done"
# verified before the pivot: the block hash of the synced layers' guest view
sum1=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["disks"][0].get("checksum", ""))' m1.json)
check checksum-verified test "$sum1" = "$("$LSM_SYNC" checksum -U "$T/dst1/leaf.qcow2" | cut -d' ' -f1)"
check checksum-reported grep -q "internal layers verified: $sum1" m1.err
check no-job-after no_job
p=$(last_pass)
check writes-after-pivot wait_pass $((p + 1)) 60
lvenv_virsh suspend "$DOM" >/dev/null
check blocks-verify-on-dst1 verify "$top1"
for f in dst1/*; do
    if out=$(qemu-img check -U "$f" 2>&1); then pass "check-$f"; else fail "check-$f" "$out"; fi
done
# the internal layers: the same guest view as chains, the same data layer by layer
for l in leaf mid base; do
    check "compare-$l" qemu-img compare -U -q "src/$l.qcow2" "dst1/$l.qcow2"
    check "map-$l" test "$(layer_map "$T/src/$l.qcow2")" = "$(layer_map "$T/dst1/$l.qcow2")"
done
check base-unchanged test "$(sha256sum <src/base.qcow2)" = "$sum_base"
check mid-unchanged test "$(sha256sum <src/mid.qcow2)" = "$sum_mid"
check src-overlay-backing test "$(qemu-img info -U --output=json "$ovl1" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["backing-filename"])')" = leaf.qcow2
for f in src/*.qcow2 "$ovl1"; do
    if out=$(qemu-img check -U "$f" 2>&1); then pass "src-check-$f"; else fail "src-check-$f" "$out"; fi
done
check vdb-untouched test "$(sha256sum <src/vdb.raw)" = "$sum_vdb"
lvenv_virsh resume "$DOM" >/dev/null

log "section 2 at ${SECONDS} s"
# ---- 2. a failure before the pivot rolls back ----
rc=0
"${MIG[@]}" "$DOM" --disk vda --dst-dir "$T/dst2" --fail-at pivot >m2.out 2>m2.err || rc=$?
check fail-exit-1 test "$rc" = 1
check fail-one-line test "$(wc -l <m2.err)" = 1
check fail-says-rolled-back grep -q "failure injected.*rolled back" m2.err
check fail-stays test "$(dirname "$(source_of vda)")" = "$T/dst1"
check fail-no-job no_job
check fail-dst2-empty test -z "$(ls -A dst2)"
check fail-no-journal no_journal
log "$(cat m2.err)"

log "section 3 at ${SECONDS} s"
# ---- 3. SIGKILL during the sync, then --resume ----
before=$(source_of vda)
cp src/vdc.qcow2 vdc-before.qcow2
"${MIG[@]}" "$DOM" --disk vda --disk vdc --dst-dir "$T/dst2" --rate 256K --progress=json >m3.out 2>m3.err &
pid=$!
PIDS+=("$pid")
check reached-sync wait_phase m3.err sync 60
rc=0
"${MIG[@]}" "$DOM" --resume >m3b.out 2>m3b.err || rc=$?
check one-run-at-a-time test "$rc" = 1
check one-run-message grep -q "another lsm-sync migrate of domain '$DOM' is running" m3b.err
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
check kill-left-journal test -s "$STATE/$DOM.json"
rc=0
"${MIG[@]}" "$DOM" --resume --progress=json --output=json >m3r.json 2>m3r.err || rc=$?
check resume-exit-0 test "$rc" = 0
[[ $rc == 0 ]] || log "$(grep -v '^{' m3r.err | tail -n 3)"
top2=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["disks"][0]["destination"])' m3r.json)
check resume-runs-on-dst2 test "$(source_of vda)" = "$top2"
check resume-top-in-dst2 test "$(dirname "$top2")" = "$T/dst2"
check resume-journal-removed no_journal
check resume-no-job no_job
# the killed run's clone and mirrors kept, its syncs continued
check resume-kept-clone grep -q "resuming from the replicate phase" m3r.err
check resume-mirror-kept grep -q "mirror onto .* already running" m3r.err
check resume-no-sync-journal test -z "$(ls "$STATE" | grep sync)"
grep -q "resuming the sync from its journal" m3r.err && log "resume: the syncs continued from their journals" ||
    log "resume: no sync journal was saved before the kill (syncs started again)"

lvenv_virsh suspend "$DOM" >/dev/null
check blocks-verify-on-dst2 verify "$top2"
for f in dst2/*; do
    if out=$(qemu-img check -U "$f" 2>&1); then pass "check-$f"; else fail "check-$f" "$out"; fi
done
check resume-internal-same qemu-img compare -U -q "$before" "dst2/$(basename "$before")"
check resume-vdb-untouched test "$(sha256sum <src/vdb.raw)" = "$sum_vdb"
check resume-vdb-not-moved test "$(source_of vdb)" = "$T/src/vdb.raw"
vdc2=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["disks"][1]["destination"])' m3r.json)
check resume-vdc-on-dst2 test "$(source_of vdc)" = "$vdc2"
check resume-vdc-top-in-dst2 test "$(dirname "$vdc2")" = "$T/dst2"
check resume-vdc-same qemu-img compare -U -q vdc-before.qcow2 "$vdc2"
check resume-vdc-base-same qemu-img compare -U -q src/vdc.qcow2 dst2/vdc.qcow2
lvenv_virsh resume "$DOM" >/dev/null

# ---- 3b. past the commit point: the second pivot fails ----
rc=0
"${MIG[@]}" "$DOM" --disk vda --disk vdc --dst-dir "$T/dst5" --fail-at commit --output=json \
    >m7.json 2>m7.err || rc=$?
check partial-exit-1 test "$rc" = 1
log "$(grep -v "^{" m7.err)"
check partial-message grep -q "past the commit point, not every disk pivoted: vdc: failure injected.*run --resume" m7.err
check partial-outcome grep -q '"outcome":"partial"' <(python3 -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))))' m7.json | tr -d ' ')
check partial-vda-on-dst5 test "$(dirname "$(source_of vda)")" = "$T/dst5"
check partial-vdc-not-yet test "$(dirname "$(source_of vdc)")" = "$T/dst2"
check partial-vdc-still-mirroring has_job vdc
check partial-journal-kept test -s "$STATE/$DOM.json"
rc=0
"${MIG[@]}" "$DOM" --rollback >m7r.out 2>m7r.err || rc=$?
check partial-no-rollback test "$rc" = 1
check partial-no-rollback-message grep -q "past the commit point.*cannot be rolled back" m7r.err
# the partial result's --resume pivots vdc: both disks on DIR, nothing left
resume_partial() {
    local tag=$1 dir=$2 rc=0
    "${MIG[@]}" "$DOM" --resume >"$tag.resume.out" 2>"$tag.resume.err" || rc=$?
    check "$tag-resume-exit-0" test "$rc" = 0
    [[ $rc == 0 ]] || log "$(cat "$tag.resume.err")"
    check "$tag-resume-vdc-on-$(basename "$dir")" test "$(dirname "$(source_of vdc)")" = "$dir"
    check "$tag-resume-vda-on-$(basename "$dir")" test "$(dirname "$(source_of vda)")" = "$dir"
    check "$tag-resume-no-journal" no_journal
    check "$tag-resume-no-job" no_job
    check "$tag-resume-no-vdc-job" no_job vdc
}
resume_partial partial "$T/dst5"
lvenv_virsh suspend "$DOM" >/dev/null
check blocks-verify-on-dst5 verify "$(source_of vda)"
check partial-vdc-same qemu-img compare -U -q vdc-before.qcow2 "$(source_of vdc)"
lvenv_virsh resume "$DOM" >/dev/null

log "section 3c at ${SECONDS} s"
# ---- 3c. the pivot deadline ----
# (a) before the commit point: vda is held not ready until the deadline
before=$(source_of vda)
t0=$(date +%s%N)
rc=0
"${MIG[@]}" "$DOM" --disk vda --dst-dir "$T/dst6" --pivot-timeout 2 --fail-at pivot-wait \
    --progress=json >m8.out 2>m8.err || rc=$?
t8=$((($(date +%s%N) - t0) / 1000000))
grep -v '^{' m8.err >m8.msg
log "$(cat m8.msg) (the run took $t8 ms)"
check wait-exit-1 test "$rc" = 1
check wait-one-line test "$(wc -l <m8.msg)" = 1
check wait-message grep -q "vda was not ready to pivot within 2 s: not ready (injected by --fail-at pivot-wait); rolled back" m8.msg
# from the start of the pivots to the rollback: the 2 s deadline, not the default 60 s
waited=$(python3 -c '
import json, sys
start = end = None
for l in open(sys.argv[1]):
    if not l.startswith("{"):
        continue
    p = json.loads(l)
    if p.get("message") == "every mirror is ready: pivoting":
        start = p["elapsed"]
    elif p["phase"] == "rollback" and start is not None and end is None:
        end = p["elapsed"]
print(-1 if start is None or end is None else int((end - start) * 1000))' m8.err)
log "pivots started to rollback: $waited ms"
check wait-used-deadline test "$waited" -ge 1990 -a "$waited" -lt 10000
check wait-run-short test "$t8" -lt 30000
check wait-stays-dir test "$(dirname "$(source_of vda)")" = "$(dirname "$before")"
check wait-stays-on-source test "$(qemu-img info -U --output=json "$(source_of vda)" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["backing-filename"])')" = "$(basename "$before")"
check wait-no-job no_job
check wait-dst6-empty test -z "$(ls -A dst6)"
check wait-no-journal no_journal
p=$(last_pass)
check wait-writes-on wait_pass $((p + 1)) 60

# (b) past the commit point: vda pivots, vdc is held not ready until the
# deadline (5 s: vda's real pivot must land inside it on a loaded machine)
rc=0
"${MIG[@]}" "$DOM" --disk vda --disk vdc --dst-dir "$T/dst6" --pivot-timeout 5 --fail-at commit-wait \
    --progress=json --output=json >m9.json 2>m9.err || rc=$?
grep -v '^{' m9.err >m9.msg
log "$(cat m9.msg)"
check wait-partial-exit-1 test "$rc" = 1
check wait-partial-one-line test "$(wc -l <m9.msg)" = 1
check wait-partial-message grep -q "past the commit point, not every disk pivoted: vdc was not ready to pivot within 5 s: not ready (injected by --fail-at commit-wait).*run --resume" m9.msg
check wait-partial-outcome python3 -c 'import json, sys; sys.exit(json.load(open(sys.argv[1]))["outcome"] != "partial")' m9.json
check wait-partial-vda-on-dst6 test "$(dirname "$(source_of vda)")" = "$T/dst6"
check wait-partial-vdc-not-yet test "$(dirname "$(source_of vdc)")" = "$T/dst5"
check wait-partial-vdc-mirroring has_job vdc
check wait-partial-journal-kept test -s "$STATE/$DOM.json"
resume_partial wait "$T/dst6"
check wait-resume-vdc-same qemu-img compare -U -q vdc-before.qcow2 "$(source_of vdc)"

log "section 4 at ${SECONDS} s"
# ---- 4. SIGKILL, then --rollback; SIGTERM ----
before=$(source_of vda)
"${MIG[@]}" "$DOM" --disk vda --dst-dir "$T/dst3" --rate 256K --progress=json >m4.out 2>m4.err &
pid=$!
PIDS+=("$pid")
check reached-sync-4 wait_phase m4.err sync 60
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
check kill4-dst3-has-volumes test -n "$(ls -A dst3)"
rc=0
"${MIG[@]}" "$DOM" --rollback >m4r.out 2>m4r.err || rc=$?
check rollback-exit-0 test "$rc" = 0
[[ $rc == 0 ]] || log "$(cat m4r.err)"
check rollback-dst3-empty test -z "$(ls -A dst3)"
# the snapshot stays (the VM writes into it): one layer more, still on src's side
check rollback-on-source test "$(dirname "$(source_of vda)")" = "$(dirname "$before")"
check rollback-no-job no_job
check rollback-journal-removed no_journal
check rollback-no-sync-journal test -z "$(ls "$STATE" | grep sync)"

rc=0
"${MIG[@]}" "$DOM" --resume >m4x.out 2>m4x.err || rc=$?
check resume-nothing-exit-1 test "$rc" = 1
check resume-nothing-message grep -q "no migration of domain '$DOM' is recorded" m4x.err

"${MIG[@]}" "$DOM" --disk vda --dst-dir "$T/dst4" --rate 256K --progress=json >m5.out 2>m5.err &
pid=$!
PIDS+=("$pid")
check reached-sync-5 wait_phase m5.err sync 60
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
check sigterm-exit-1 test "$rc" = 1
check sigterm-message grep -q "interrupted by a signal.*rolled back" m5.err
check sigterm-dst4-empty test -z "$(ls -A dst4)"
check sigterm-no-job no_job
check sigterm-no-journal no_journal

log "section 5 at ${SECONDS} s"
# ---- 5. a mirror that does not converge: restarted with synchronous
# writes, then the deadline, with its reason, and a rollback ----
rc=0
"${MIG[@]}" "$DOM" --disk vda --dst-dir "$T/dst4" --bandwidth 1K --stall-timeout 1 \
    --ready-timeout 3 --progress=json --output=json >m6.json 2>m6.err || rc=$?
check stall-exit-1 test "$rc" = 1
check stall-restarted grep -q "not converging.*restarted with synchronous writes" m6.err
check stall-reason grep -q "not ready 3 s after the sync: vda copying.*synchronous writes, restarted.*rolled back" m6.err
check stall-dst4-empty test -z "$(ls -A dst4)"
check stall-no-job no_job
check stall-no-journal no_journal
log "$(grep -v '^{' m6.err)"

log "section 6 at ${SECONDS} s"
# ---- 6. bad input ----
expect unknown-domain 1 "no domain" "${MIG[@]}" nosuch-$$ --disk vda --dst-dir "$T/dst4"
expect unknown-disk 1 "has no disk 'vdz'" "${MIG[@]}" "$DOM" --disk vdz --dst-dir "$T/dst4"
expect same-disk-twice 1 "named twice" "${MIG[@]}" "$DOM" --disk vda --disk vda --dst-dir "$T/dst4"
expect dst-missing 1 "dst-none" "${MIG[@]}" "$DOM" --disk vda --dst-dir "$T/dst-none"
# a destination holding the chain itself: refused before the snapshot
before=$(source_of vda)
files_before=$(ls "$(dirname "$before")")
expect dst-is-source 1 "$(basename "$before")" "${MIG[@]}" "$DOM" --disk vda --dst-dir "$(dirname "$before")"
check dst-is-source-no-snapshot test "$(source_of vda)" = "$before"
check dst-is-source-no-overlay test "$(ls "$(dirname "$before")")" = "$files_before"
check bad-left-nothing test -z "$(ls -A dst4)"
check bad-no-journal no_journal
check bad-no-job no_job

finish
