#!/bin/bash
# lsm-sync migrate onto a loop block domain (docs/chains.md, "Loop
# domains"), end to end against a real libvirtd and a QEMU (TCG) guest that
# writes sequence-numbered blocks to vda without pause
# (tests/libvirt/writer-guest.sh, lsmw.mode=seq).  vda is a 3-layer qcow2
# chain of files, vdb a raw disk that must stay untouched.
#   1. migrate vda file -> loop domain dst1: exit 0; the VM runs on the
#      destination leaf (a block device) and keeps writing there; every
#      block the guest wrote verifies on dst1 (guest paused); qemu-img check
#      of every destination layer; qemu-img compare of each internal layer
#      with its source; base and mid unchanged; vdb untouched; the progress
#      lines name every phase; the journal is gone.
#   2. migrate vda loop domain dst1 -> file dst2: the snapshot's overlay is
#      a new loop volume of dst1 backed by the old leaf; the VM runs on
#      dst2 and keeps writing; its blocks verify there; qemu-img check of
#      dst2 and of dst1; every layer equals its source; vdb untouched.
#   3. file dst2 -> loop domain dst3 and 4. loop dst3 -> loop dst4 (block to
#      block): the same checks, each destination layer equal to its source.
#   5. loop -> loop killed (SIGKILL) in the sync phase, --rollback: the
#      destination domain empty, its loops detached, the VM on its source;
#      killed again, --resume: on the destination, blocks verify, check.
#   6. SIGKILL at the first progress line of snapshot, clone (then
#      --rollback), replicate, pivot (then --resume), and a kill right after
#      asking libvirtd for the pivot (then --resume, which must wait for it
#      to end and find the disk past the commit point), loop -> loop.
#   7. loop -> loop with a 1 MiB extent and chunk while the guest writes a
#      new 2 MiB window each pass (grow mode, through the control disk vdd):
#      the extender extends the source overlay and the mirror's destination
#      (both counted in the result), the VM never pauses, every block the
#      guest wrote verifies on the destination, the checks of part 1.
. "$(dirname "$0")/lib.sh"
. "$SOURCE_DIR/tests/libvirt/libvirt-env.sh"
. "$SOURCE_DIR/tests/libvirt/writer-guest.sh"

need_cmd qemu-img qemu-io python3 sha256sum losetup jq
"$LSM_SYNC" migrate --help >/dev/null 2>&1 || skip "this lsm-sync has no migrate command (built without libvirt)"
[[ $(id -u) == 0 ]] || skip "needs root (the system libvirtd)"
wg_initrd
lvenv_start

DOM=lsm-mig-$$
STATE=$T/state
MIG=("$LSM_SYNC" migrate --state-dir "$STATE")
PIDS=()
at_exit() {
    local p f dev
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    virsh -q -c "$LVENV_URI" destroy "$DOM"
    # the loop devices of the test's loop domains
    for f in "$T"/dst*/.lsm-loop/*; do
        [[ -e $f ]] || continue
        for dev in $(losetup -j "$f" -O NAME -n); do losetup -d "$dev"; done
    done
}
lvenv_at_exit at_exit


mkdir -p src dst1/.lsm-loop "$STATE"
MIG_GROW=1
. "$SOURCE_DIR/tests/functional/migrate-lib.sh"

check guest-writes wait_pass 1 60
log "the guest wrote its first pass at ${SECONDS} s"

# ---- 1. file to loop block domain ----
t0=$(date +%s)
rc=0
"${MIG[@]}" "$DOM" --disk vda --dst-loop "$T/dst1" --progress=json --output=json >m1.json 2>m1.err || rc=$?
log "migrate to dst1 took $(($(date +%s) - t0)) s"
check migrate-exit-0 test "$rc" = 0
[[ $rc == 0 ]] || log "$(grep -v '^{' m1.err | tail -n 3)"
top1=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["disks"][0]["destination"])' m1.json)
ovl1=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["disks"][0]["overlay"])' m1.json)
check runs-on-dst1 test "$(source_of vda)" = "$top1"
check top1-in-dst1 test "$(dirname "$top1")" = "$T/dst1"
check vdb-not-moved test "$(source_of vdb)" = "$T/src/vdb.raw"
check journal-removed no_journal
check no-pause test "$(jq -r '.pauses // 0' m1.json)" = 0
check all-phases test "$(phases_seen m1.err)" = "snapshot clone replicate sync pivot done"
check no-job-after no_job
p=$(last_pass)
check writes-after-pivot wait_pass $((p + 1)) 60
lvenv_virsh suspend "$DOM" >/dev/null
check blocks-verify-on-dst1 verify "$top1"
for f in dst1/*; do
    check "block-$f" test -b "$f"
    if out=$(qemu-img check -U "$f" 2>&1); then pass "check-$f"; else fail "check-$f" "$out"; fi
done
# the internal layers: the same guest view as chains, the same data layer by layer
for l in leaf mid base; do
    check "compare-$l" qemu-img compare -U -q "src/$l.qcow2" "dst1/$l.qcow2"
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


# ---- 2. loop block domain -> file: the source leaf is a loop volume, so
# the snapshot's overlay is a new loop volume of dst1 ----
mkdir -p dst2
t0=$(date +%s)
rc=0
"${MIG[@]}" "$DOM" --disk vda --dst-dir "$T/dst2" --progress=json --output=json >m2.json 2>m2.err || rc=$?
log "migrate dst1 -> dst2 took $(($(date +%s) - t0)) s"
check b2f-exit-0 test "$rc" = 0
[[ $rc == 0 ]] || log "$(grep -v '^{' m2.err | tail -n 3)"
top2=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["disks"][0]["destination"])' m2.json)
ovl2=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["disks"][0]["overlay"])' m2.json)
check b2f-runs-on-dst2 test "$(source_of vda)" = "$top2"
check b2f-top2-in-dst2 test "$(dirname "$top2")" = "$T/dst2"
check b2f-top2-file test -f "$top2"
check b2f-overlay-is-loop-volume test -b "$ovl2" -a -L "$ovl2" -a "$(dirname "$ovl2")" = "$T/dst1"
check b2f-overlay-backing test "$(qemu-img info -U --output=json "$ovl2" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["backing-filename"])')" = "$top1"
check b2f-vdb-not-moved test "$(source_of vdb)" = "$T/src/vdb.raw"
check b2f-journal-removed no_journal
check b2f-no-pause test "$(jq -r '.pauses // 0' m2.json)" = 0
check b2f-all-phases test "$(phases_seen m2.err)" = "snapshot clone replicate sync pivot done"
check b2f-no-job no_job
p=$(last_pass)
check b2f-writes-after-pivot wait_pass $((p + 1)) 60
lvenv_virsh suspend "$DOM" >/dev/null
check b2f-blocks-verify-on-dst2 verify "$top2"
for f in dst2/*; do
    if out=$(qemu-img check -U "$f" 2>&1); then pass "b2f-check-$f"; else fail "b2f-check-$f" "$out"; fi
done
for l in mid base; do
    check "b2f-compare-$l" qemu-img compare -U -q "src/$l.qcow2" "dst2/$l.qcow2"
done
check b2f-compare-leaf qemu-img compare -U -q "dst1/leaf.qcow2" "dst2/leaf.qcow2"
check b2f-compare-old-top qemu-img compare -U -q "$top1" "dst2/$(basename "$top1")"
for f in dst1/*; do
    if out=$(qemu-img check -U "$f" 2>&1); then pass "b2f-src-check-$f"; else fail "b2f-src-check-$f" "$out"; fi
done
check b2f-vdb-untouched test "$(sha256sum <src/vdb.raw)" = "$sum_vdb"

lvenv_virsh resume "$DOM" >/dev/null

# step NAME OPTION DIR: migrate vda to DIR (OPTION --dst-dir or --dst-loop)
# with the checks of parts 1 and 2; the guest resumed at the end; sets $top.
# STEP_EXTRA: more options for migrate.
STEP_EXTRA=()
STEP_AFTER=()
step() {
    local n=$1 opt=$2 dir=$3 rc=0 t0 prev ovl p f
    prev=$(source_of vda)
    t0=$(date +%s)
    "${MIG[@]}" "$DOM" --disk vda "$opt" "$dir" "${STEP_EXTRA[@]}" --progress=json --output=json \
        >"$n.json" 2>"$n.err" || rc=$?
    log "$n: migrate $prev -> $dir took $(($(date +%s) - t0)) s"
    # STEP_AFTER: run right after the migration (part 7: the monitor)
    [[ ${#STEP_AFTER[@]} == 0 ]] || "${STEP_AFTER[@]}"
    check "$n-exit-0" test "$rc" = 0
    [[ $rc == 0 ]] || { log "$(grep -v '^{' "$n.err" | tail -n 3)"; return; }
    top=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["disks"][0]["destination"])' "$n.json")
    ovl=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["disks"][0]["overlay"])' "$n.json")
    check "$n-runs-on-dst" test "$(source_of vda)" = "$top" -a "$(dirname "$top")" = "$dir"
    if [[ $opt == --dst-loop ]]; then check "$n-top-block" test -b "$top" -a -L "$top"; fi
    if [[ -b $prev ]]; then check "$n-overlay-loop" test -b "$ovl" -a -L "$ovl"; fi
    # a file overlay names the old leaf beside it; a block one its path
    local want=$prev
    [[ -b $prev ]] || want=$(basename "$prev")
    check "$n-overlay-backing" test "$(qemu-img info -U --output=json "$ovl" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["backing-filename"])')" = "$want"
    check "$n-vdb-not-moved" test "$(source_of vdb)" = "$T/src/vdb.raw"
    check "$n-journal-removed" no_journal
    check "$n-no-pause" test "$(jq -r '.pauses // 0' "$n.json")" = 0
    check "$n-all-phases" test "$(phases_seen "$n.err")" = "snapshot clone replicate sync pivot done"
    check "$n-no-job" no_job
    p=$(last_pass)
    check "$n-writes-after-pivot" wait_pass $((p + 1)) 60
    lvenv_virsh suspend "$DOM" >/dev/null
    check "$n-blocks-verify" verify "$top"
    for f in "$dir"/*; do
        if out=$(qemu-img check -U "$f" 2>&1); then pass "$n-check-$f"; else fail "$n-check-$f" "$out"; fi
    done
    check "$n-compare-old-top" qemu-img compare -U -q "$prev" "$dir/$(basename "$prev")"
    # the block hash migrate verified before the pivot is the old top's
    check "$n-checksum-verified" test "$(jq -r '.disks[0].checksum' "$n.json")" = \
        "$("$LSM_SYNC" checksum -U "$dir/$(basename "$prev")" | cut -d' ' -f1)"
    check "$n-compare-base" qemu-img compare -U -q src/base.qcow2 "$dir/base.qcow2"
    check "$n-compare-mid" qemu-img compare -U -q src/mid.qcow2 "$dir/mid.qcow2"
    check "$n-vdb-untouched" test "$(sha256sum <src/vdb.raw)" = "$sum_vdb"
    lvenv_virsh resume "$DOM" >/dev/null
}

# ---- 3. file (dst2) -> loop domain dst3, then 4. loop dst3 -> loop dst4
# (block to block) ----
mkdir -p dst3/.lsm-loop dst4/.lsm-loop
step f2b --dst-loop "$T/dst3"
step b2b --dst-loop "$T/dst4"

# ---- 5. SIGKILL in the sync phase, loop -> loop, then --rollback: the
# destination domain empty (loops detached), the VM on its source side;
# then SIGKILL again and --resume finishes ----
# A detached loop device that QEMU still held (the aborted mirror's
# target) is cleared by the kernel at its last close, which can come a
# moment after the rollback returned: allow 5 s.
no_loop_in() {
    local i
    for ((i = 0; i < 50; i++)); do
        losetup -a | grep -q "$1/" || return 0
        sleep 0.1
    done
    return 1
}
mkdir -p dst5/.lsm-loop dst6/.lsm-loop
before=$(source_of vda)
"${MIG[@]}" "$DOM" --disk vda --dst-loop "$T/dst5" --rate 256K --progress=json >k1.out 2>k1.err &
pid=$!
PIDS+=("$pid")
check kill-reached-sync wait_phase k1.err sync 60
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
check kill-dst5-has-volumes test -n "$(ls -A dst5 | grep -v '^.lsm-loop$')"
rc=0
"${MIG[@]}" "$DOM" --rollback >k1r.out 2>k1r.err || rc=$?
check kill-rollback-exit-0 test "$rc" = 0
[[ $rc == 0 ]] || log "$(cat k1r.err)"
check kill-rollback-dst5-empty test "$(ls -A dst5)" = .lsm-loop -a -z "$(ls -A dst5/.lsm-loop)"
check kill-rollback-no-loop no_loop_in "$T/dst5"
check kill-rollback-on-source test "$(dirname "$(source_of vda)")" = "$(dirname "$before")"
check kill-rollback-no-job no_job
check kill-rollback-journal-removed no_journal
check kill-rollback-no-sync-journal test -z "$(ls "$STATE" | grep sync)"
"${MIG[@]}" "$DOM" --disk vda --dst-loop "$T/dst6" --rate 256K --progress=json >k2.out 2>k2.err &
pid=$!
PIDS+=("$pid")
check kill2-reached-sync wait_phase k2.err sync 60
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
rc=0
"${MIG[@]}" "$DOM" --resume --progress=json --output=json >k2r.json 2>k2r.err || rc=$?
check kill-resume-exit-0 test "$rc" = 0
[[ $rc == 0 ]] || log "$(cat k2r.err)"
top=$(source_of vda)
check kill-resume-on-dst6 test "$(dirname "$top")" = "$T/dst6" -a -b "$top"
check kill-resume-no-job no_job
check kill-resume-journal-removed no_journal
# the killed run's loop volumes and mirror kept, its sync continued
check kill-resume-kept-clone grep -q "resuming from the replicate phase" k2r.err
check kill-resume-mirror-kept grep -q "mirror onto .* already running" k2r.err
check kill-resume-no-sync-journal test -z "$(ls "$STATE" | grep sync)"
p=$(last_pass)
check kill-resume-writes wait_pass $((p + 1)) 60
lvenv_virsh suspend "$DOM" >/dev/null
check kill-resume-blocks-verify verify "$top"
for f in dst6/*; do
    if out=$(qemu-img check -U "$f" 2>&1); then pass "kill-resume-check-$f"; else fail "kill-resume-check-$f" "$out"; fi
done
check kill-resume-compare-base qemu-img compare -U -q src/base.qcow2 dst6/base.qcow2
check kill-resume-vdb-untouched test "$(sha256sum <src/vdb.raw)" = "$sum_vdb"
lvenv_virsh resume "$DOM" >/dev/null

# ---- 6. SIGKILL at the first progress line of each other phase, loop ->
# loop; then --rollback (snapshot, clone) or --resume (replicate, pivot).
# A run that finished before the kill landed (no journal) is counted and
# must have the VM on its destination. ----
# in-pivot: the run kills itself right after asking libvirtd for the
# pivot (LSM_TEST_PIVOT_KILL), so the resume starts while it may still be
# carried out: the state a kill during the pivot call leaves.
i=0
for ph in snapshot clone replicate pivot in-pivot; do
    i=$((i + 1))
    d=$T/dstk$i
    mkdir -p "$d/.lsm-loop"
    before=$(source_of vda)
    rate=(--rate 256K)
    if [[ $ph == in-pivot ]]; then
        rc=0
        LSM_TEST_PIVOT_KILL=1 "${MIG[@]}" "$DOM" --disk vda --dst-loop "$d" --progress=json \
            >"kp$i.out" 2>"kp$i.err" || rc=$?
        check "kill-$ph-killed" test "$rc" = 137
        [[ $rc == 137 ]] || log "$(grep -v '^{' "kp$i.err" | tail -n 3)"
        check "kill-$ph-journal-kept" test -s "$STATE/$DOM.json"
    else
        "${MIG[@]}" "$DOM" --disk vda --dst-loop "$d" "${rate[@]}" --progress=json >"kp$i.out" 2>"kp$i.err" &
        pid=$!
        PIDS+=("$pid")
        check "kill-$ph-reached" wait_phase "kp$i.err" "$ph" 60
        if ! kill -9 "$pid" 2>/dev/null; then
            rc=0
            wait "$pid" || rc=$?
            log "the run had ended before the kill (exit $rc): $(grep -v '^{' "kp$i.err" | tail -n 3)"
        fi
        wait "$pid" 2>/dev/null || true
    fi
    if no_journal; then
        log "kill at $ph: the run had finished"
        check "kill-$ph-finished-on-dst" test "$(dirname "$(source_of vda)")" = "$d"
        continue
    fi
    rc=0
    if [[ $ph == snapshot || $ph == clone ]]; then
        "${MIG[@]}" "$DOM" --rollback >"kp$i.r" 2>"kp$i.rerr" || rc=$?
        check "kill-$ph-rollback-exit-0" test "$rc" = 0
        [[ $rc == 0 ]] || log "$(cat "kp$i.rerr")"
        check "kill-$ph-rollback-dst-empty" test "$(ls -A "$d")" = .lsm-loop -a -z "$(ls -A "$d/.lsm-loop")"
        check "kill-$ph-rollback-no-loop" no_loop_in "$d"
        check "kill-$ph-rollback-on-source" test "$(dirname "$(source_of vda)")" = "$(dirname "$before")"
    else
        "${MIG[@]}" "$DOM" --resume >"kp$i.r" 2>"kp$i.rerr" || rc=$?
        check "kill-$ph-resume-exit-0" test "$rc" = 0
        [[ $rc == 0 ]] || log "$(cat "kp$i.rerr")"
        check "kill-$ph-resume-on-dst" test "$(dirname "$(source_of vda)")" = "$d" -a -b "$(source_of vda)"
    fi
    check "kill-$ph-no-job" no_job
    check "kill-$ph-no-journal" no_journal
    p=$(last_pass)
    check "kill-$ph-writes" wait_pass $((p + 1)) 60
    lvenv_virsh suspend "$DOM" >/dev/null
    check "kill-$ph-blocks-verify" verify "$(source_of vda)"
    lvenv_virsh resume "$DOM" >/dev/null
done
check kill-vdb-untouched test "$(sha256sum <src/vdb.raw)" = "$sum_vdb"

# ---- 7. the extender grows both leaves while mirroring, driven by what
# the guest writes: loop -> loop with a 1 MiB extent and chunk and a 2 MiB
# watermark, the headroom planned with a 0.2 s latency until three are
# measured (loop extensions take 17-56 ms here; the default 6 s is LVM's),
# the guest switched to grow mode first (each pass a new 2 MiB window, 46
# MiB of them: clusters no layer holds, about 2 MiB/s).  The snapshot's
# overlay is made 3 MiB (0 + watermark + chunk), the destination leaf, just
# before its mirror starts, the overlay's allocation + headroom + chunk;
# the guest's new clusters take both past their thresholds, so the
# extender must extend the source and the mirror at least once each; the
# VM must never pause. ----
mkdir -p dstx/.lsm-loop
check grow-started grow_writes
g0=$(grow_info | cut -d' ' -f1)
STEP_EXTRA=(--extent 1M --chunk 1M --chunk-replicating 1M --watermark 2M --watermark-replicating 2M
    --latency 0.2)
t7=$SECONDS
# migrate's extender stops at the pivot; the guest goes on growing its new
# leaf, so a monitor (as a management system would run) takes over then:
# it extends the leaf (and resumes the VM if it paused in between)
start_monitor() {
    "$LSM_SYNC" monitor "${STEP_EXTRA[@]}" --disk vda "$DOM" >ext-mon.out 2>ext-mon.err &
    MON_PID=$!
    PIDS+=("$MON_PID")
}
STEP_AFTER=(start_monitor)
step ext --dst-loop "$T/dstx"
STEP_EXTRA=() STEP_AFTER=()
# running at the end: migrate's own extender never let it pause (pauses
# below); between migrate's end and the monitor's first check the guest
# goes on writing into 1 MiB of headroom, and on a starved machine (two
# busy loops on two cores) it filled once: the monitor extends and resumes
# it then, so it gets a few seconds before it is stopped
ext_running() {
    local i
    for ((i = 0; i < 100; i++)); do
        [[ $(lvenv_virsh domstate "$DOM" | head -n 1) == running ]] && return 0
        sleep 0.2
    done
    return 1
}
check ext-running ext_running
kill "$MON_PID" 2>/dev/null
wait "$MON_PID" 2>/dev/null || true
log "ext: lines of the monitor after migrate naming a resume: $(cat ext-mon.out ext-mon.err | grep -ci resum)"
jq_ext() { jq -r "$1" ext.json; }
check ext-source-extended test "$(jq_ext '.disks[0].extensions.source')" -ge 1
check ext-mirror-extended test "$(jq_ext '.disks[0].extensions.mirror')" -ge 1
check ext-no-pause test "$(jq_ext '.pauses')" = 0
# pre-sizing capped the destination leaf by the overlay's measured full
# size (qcow2 header), not by 1.1 x the virtual size
presize_cap_measured() {
    python3 - ext.err "$(qemu-img info -U --output=json "$top" | jq '.["virtual-size"]')" <<'PY2'
import json, re, sys
units = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
virt = int(sys.argv[2])
caps = []
for line in open(sys.argv[1]):
    try:
        m = re.search(r"grown to at least .* cap ([0-9.]+) (\w+)\)", json.loads(line).get("message", ""))
    except ValueError:
        continue
    if m:
        caps.append(float(m.group(1)) * units[m.group(2)])
print("pre-size caps", caps, "virtual size", virt, file=sys.stderr)
sys.exit(0 if caps and all(virt < c < 1.1 * virt for c in caps) else 1)
PY2
}
check ext-presize-measured-cap presize_cap_measured
# the guest did write new clusters during the migration: passes from g0 on
# ended while it ran (the step waited for one more after the pivot)
check ext-guest-grew test "$(last_pass)" -gt "$g0"
log "ext: extensions $(jq_ext '.disks[0].extensions | "source \(.source), mirror \(.mirror)"'), pauses $(jq_ext .pauses), grow from pass $g0 to $(last_pass), $((SECONDS - t7)) s"

lvenv_virsh destroy "$DOM" >/dev/null
finish
