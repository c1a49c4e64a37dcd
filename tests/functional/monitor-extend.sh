#!/bin/bash
# lsm-sync monitor (the watermark extender) against a real libvirtd and a
# QEMU (TCG) guest that writes without pause to a qcow2 (virtual 1 GiB) on a
# loop device far smaller than that (tests/libvirt/writer-guest.sh).
#   1. loop backend: the guest writes 640 MiB onto a 64 MiB loop device
#      while `monitor` runs: it finishes without ever pausing, every
#      extension is reported, the device grows in whole chunks, the image
#      checks clean; its first threshold set fails (LSM_TEST_ARM_FAIL=1) and
#      is armed again at the next check.
#   2. out of space: the loop device's file on a 160 MiB tmpfs; the first
#      extension past it fails with ENOSPC: monitor exits 1 at once with one
#      clear message, the file is not shrunk, the VM is not resumed.
#   3. --extend-cmd and resume: the guest pauses for ENOSPC before monitor
#      runs; monitor extends through a script (called with the volume and
#      the new size) and resumes the VM, which then finishes.
#   4. a block copy (virsh blockcopy) onto a second thin loop device while
#      the guest writes: both the source and the mirror's destination are
#      extended (each on its own threshold, together), no pause.
. "$(dirname "$0")/lib.sh"
. "$SOURCE_DIR/tests/libvirt/libvirt-env.sh"
. "$SOURCE_DIR/tests/libvirt/writer-guest.sh"

need_cmd qemu-img losetup python3 mount
"$LSM_SYNC" monitor --help >/dev/null 2>&1 || skip "this lsm-sync has no monitor command (built without libvirt)"
[[ $(id -u) == 0 ]] || skip "needs root (loop devices, libvirtd)"
[[ -e /dev/loop-control ]] || skip "no loop devices here"
wg_initrd
lvenv_start

PREFIX=lsm-mon-$$
LOOPS=()
MOUNTS=()
MONPIDS=()
at_exit() {
    local p
    for p in "${MONPIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${LOOPS[@]}"; do losetup -d "$p" 2>/dev/null; done
    for p in "${MOUNTS[@]}"; do umount "$p" 2>/dev/null; done
}
lvenv_at_exit at_exit

# new_loop FILE SIZE: LOOP = a loop device over FILE (created SIZE), a
# qcow2 of 1 GiB on it.  (Not through $(...): LOOPS must see it.)
new_loop() {
    local file=$1 size=$2
    truncate -s "$size" "$file"
    LOOP=$(losetup -f --show "$file") || die "losetup $file failed"
    LOOPS+=("$LOOP")
    qemu-img create -q -f qcow2 "$LOOP" 1G || die "qemu-img create on $LOOP failed"
}

start_writer() {
    local name=$1 dev=$2 mib=$3 hold=${4:-0} err
    lvenv_at_exit "virsh -q -c $LVENV_URI destroy $name"
    # WG_EXTRA_DISK: more <disk> XML after the writer's (part 1: a raw vdb)
    wg_domain_xml "$name" "$dev" "$mib" "$T/$name.console" "$hold" |
        sed "s|</disk>|</disk>${WG_EXTRA_DISK:-}|" >"$name.xml"
    : >"$T/$name.console"
    err=$(lvenv_virsh create "$name.xml" 2>&1) || die "cannot start $name: $err"
}

domstate() { lvenv_virsh domstate --reason "$1" 2>/dev/null | head -n 1; }

# wait_console NAME TEXT SECONDS: TEXT on NAME's console (no waiting
# once the domain is gone).
wait_console() {
    local i
    for ((i = 0; i < $3 * 5; i++)); do
        grep -q "$2" "$T/$1.console" 2>/dev/null && return 0
        lvenv_virsh domstate "$1" >/dev/null 2>&1 || break
        sleep 0.2
    done
    grep -q "$2" "$T/$1.console" 2>/dev/null && return 0
    log "console of $1 ends with: $(tail -n 3 "$T/$1.console" 2>/dev/null | tr '\n' '|')"
    return 1
}

wait_gone() {
    local i
    for ((i = 0; i < $2 * 5; i++)); do
        lvenv_virsh domstate "$1" >/dev/null 2>&1 || return 0
        sleep 0.2
    done
    return 1
}

check() {
    local name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name" "$*"; fi
}

size_of() { blockdev --getsize64 "$1"; }

count_events() {
    python3 -c 'import json, sys; print(sum(json.loads(l)["event"] == sys.argv[2] for l in open(sys.argv[1])))' "$1" "$2"
}

MON_OPTS=(--chunk 256M --extent 4M --watermark 128M --poll-interval 500 --output=json)

# ---- 1. loop backend, the guest never pauses ----
D1=$PREFIX-1
new_loop "$T/d1.img" 64M
dev1=$LOOP
# and a raw 8 MiB vdb on a loop device, which must never be extended (its
# free space is under the headroom: the extender did extend it once)
truncate -s 8M "$T/raw1.img"
raw1=$(losetup -f --show "$T/raw1.img") || die "losetup $T/raw1.img failed"
LOOPS+=("$raw1")
WG_EXTRA_DISK="<disk type='block' device='disk'><driver name='qemu' type='raw' cache='none'/><source dev='$raw1'/><target dev='vdb' bus='virtio'/></disk>" \
    start_writer "$D1" "$dev1" 640 1
# The first threshold set fails (as a refusing libvirt's would): the next
# check arms it again.
LSM_TEST_ARM_FAIL=1 "$LSM_SYNC" monitor "${MON_OPTS[@]}" --disk vda --disk vdb "$D1" >mon1.json 2>mon1.err &
MONPIDS+=($!)
mon1=$!
check writer-started wait_console "$D1" WRITER-START 120
# The guest powers off when done; watch its state meanwhile.
paused=0
for ((i = 0; i < 900; i++)); do
    st=$(domstate "$D1") || break
    [[ -z $st ]] && break
    [[ $st == paused* ]] && { paused=1; log "domain paused: $st"; break; }
    grep -q WRITER-DONE "$T/$D1.console" && break
    sleep 0.2
done
check writer-done wait_console "$D1" "WRITER-DONE rc=0 blocks=640" 300
check never-paused test "$paused" = 0
check no-suspend-event test "$(python3 -c 'import json, sys; print(sum(str(json.loads(l).get("reason", "")).startswith("suspended") for l in open(sys.argv[1])))' mon1.json)" = 0
# The guest idles (hold): SIGINT stops the monitor.
check monitor-still-running kill -0 "$mon1"
kill -INT "$mon1"
t0=$(date +%s%N)
rc=0
wait "$mon1" || rc=$?
t1=$(date +%s%N)
check monitor-exit-0 test "$rc" = 0
check monitor-stops-within-1s test $(((t1 - t0) / 1000000)) -lt 1000
lvenv_virsh destroy "$D1" >/dev/null 2>&1
n_ext=$(count_events mon1.json extended)
log "$n_ext extensions; final size $(size_of "$dev1")"
check extensions-reported test "$n_ext" -ge 2
check no-failure test "$(count_events mon1.json failed)" = 0
# The raw disk: state raw, capped at its size, never armed or extended.
check raw-never-extended python3 - mon1.json "$raw1" <<'EOF'
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
st = [e for e in ev if e["event"] == "status"][-1]
vdb = [d for d in st["drives"] if d["disk"] == "vdb"][0]["source"]
assert vdb["state"] == "raw" and vdb["path"] == sys.argv[2], vdb
assert vdb["max_size"] == vdb["physical"] == 8 << 20 and vdb["extensions"] == 0, vdb
assert not vdb["armed"], vdb
assert not [e for e in ev if e.get("disk") == "vdb" and e["event"] in ("armed", "extending", "extended")], "vdb touched"
EOF
check raw-size-unchanged test "$(size_of "$raw1")" = $((8 << 20))
# Armed after every extension but one that reached the maximum size
# (1.1 x 1 GiB); at start only if no extension was needed at once.
max_size=$(python3 -c 'import json, sys; print([e for e in map(json.loads, open(sys.argv[1])) if e["event"] == "status"][-1]["drives"][0]["source"]["max_size"])' mon1.json)
# The cap is the full image's size (qemu-img measure, plus capacity/256,
# rounded to the 4 MiB extent), not 1.1 x capacity.
full=$(qemu-img measure --size 1G -O qcow2 --output=json | python3 -c 'import json, sys; print(json.load(sys.stdin)["fully-allocated"])')
check max-size-at-least-full test "$max_size" -ge "$full"
check max-size-full-plus-margin test "$max_size" -eq $(( (full + (4 << 20) + (4 << 20) - 1) / (4 << 20) * (4 << 20) ))
at_max=0
[[ $(size_of "$dev1") == "$max_size" ]] && at_max=1
check thresholds-armed test "$(count_events mon1.json armed)" -ge $((n_ext - at_max))
# The failed set was reported, then armed again, the same side.
check rearmed-after-failed-set python3 - mon1.json <<'EOF'
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
i = next(k for k, e in enumerate(ev) if e["event"] == "arm-failed")
assert "LSM_TEST_ARM_FAIL" in ev[i].get("message", ""), ev[i]
assert any(e["event"] == "armed" and e.get("side") == ev[i].get("side") for e in ev[i + 1:]), ev[i:]
EOF
# Every extension is reported, and the device ends at the last reported size.
last_new=$(python3 -c '
import json, sys
ext = [e for e in map(json.loads, open(sys.argv[1])) if e["event"] == "extended"]
print(ext[-1]["new_size"] if ext else "none")' mon1.json)
check final-size-reported test "$last_new" = "$(size_of "$dev1")"
# The sizes: each extension at least one chunk, multiples of the extent.
if python3 - mon1.json <<'EOF'
import json, sys
ext = [e for e in map(json.loads, open(sys.argv[1])) if e["event"] == "extended"]
st = [e for e in map(json.loads, open(sys.argv[1])) if e["event"] == "status"][-1]
max_size = st["drives"][0]["source"]["max_size"]
prev = None
for e in ext:
    assert e["new_size"] % (4 << 20) == 0, e
    # At least a chunk, unless the step reached the maximum size.
    assert e["new_size"] - e["old_size"] >= 256 << 20 or e["new_size"] == max_size, e
    if prev is not None:
        assert e["old_size"] == prev, (prev, e)
    prev = e["new_size"]
    assert e["phases"]["total"] > 0, e
st = [e for e in map(json.loads, open(sys.argv[1])) if e["event"] == "status"][-1]
assert st["phases"]["total"]["count"] == len(ext), st
assert st["drives"][0]["source"]["extensions"] == len(ext), st
print("extensions", [(e["old_size"] >> 20, e["new_size"] >> 20, round(e["phases"]["total"], 3)) for e in ext])
EOF
then pass chunked-growth; else fail chunked-growth; fi
if out=$(qemu-img check -f qcow2 "$dev1" 2>&1); then pass image-checks; else fail image-checks "$out"; fi
alloc=$(qemu-img map -f qcow2 --output=json "$dev1" | python3 -c '
import json, sys
print(sum(e["length"] for e in json.load(sys.stdin) if e["data"]))')
check all-written test "$alloc" -ge $((640 << 20))

# ---- 2. out of space in the backing file system: fail fast ----
D2=$PREFIX-2
mkdir -p small
mount -t tmpfs -o size=160M tmpfs small || die "cannot mount a tmpfs"
MOUNTS+=("$T/small")
new_loop "$T/small/d2.img" 64M
dev2=$LOOP
fallocate -l 64M "$T/small/d2.img"
start_writer "$D2" "$dev2" 320
check writer2-started wait_console "$D2" WRITER-START 120
t0=$(date +%s)
rc=0
timeout 120 "$LSM_SYNC" monitor "${MON_OPTS[@]}" --chunk 512M --disk vda "$D2" >mon2.json 2>mon2.err || rc=$?
t1=$(date +%s)
check enospc-exit-1 test "$rc" = 1
check enospc-one-line test "$(wc -l <mon2.err)" = 1
check enospc-message grep -q "No space left on device" mon2.err
check enospc-names-file grep -q "small/d2.img" mon2.err
check enospc-fast test $((t1 - t0)) -lt 20
check enospc-failed-event test "$(count_events mon2.json failed)" = 1
check enospc-classified grep -q '"failure":"no-space"' mon2.json
check enospc-file-not-shrunk test "$(stat -c %s "$T/small/d2.img")" -ge $((64 << 20))
log "$(cat mon2.err)"
# The guest then fills the device and pauses; nothing resumes it.
for ((i = 0; i < 300; i++)); do
    [[ $(domstate "$D2") == paused* ]] && break
    sleep 0.2
done
check enospc-vm-paused test "$(domstate "$D2" | cut -d' ' -f1)" = paused
lvenv_virsh destroy "$D2" >/dev/null 2>&1

# ---- 3. --extend-cmd, and resuming a VM that paused for ENOSPC ----
D3=$PREFIX-3
new_loop "$T/d3.img" 64M
dev3=$LOOP
cat >extend.sh <<EOF
#!/bin/bash
# extend.sh VOLUME SIZE: grow the loop device's file and tell the kernel.
echo "\$@" >>"$T/extend.log"
[[ \$1 == "$dev3" ]] || { echo "unexpected volume \$1"; exit 1; }
truncate -s "\$2" "$T/d3.img" && losetup -c "\$1"
EOF
chmod +x extend.sh
start_writer "$D3" "$dev3" 200
check writer3-started wait_console "$D3" WRITER-START 120
for ((i = 0; i < 600; i++)); do
    [[ $(domstate "$D3") == paused* ]] && break
    sleep 0.2
done
st=$(domstate "$D3")
check paused-before-monitor test "$st" = "paused (I/O error)"
"$LSM_SYNC" monitor "${MON_OPTS[@]}" --extend-cmd "$T/extend.sh" --disk vda "$D3" \
    >mon3.json 2>mon3.err &
MONPIDS+=($!)
mon3=$!
check writer3-done wait_console "$D3" "WRITER-DONE rc=0 blocks=200" 300
check resumed-event test "$(count_events mon3.json resumed)" -ge 1
check extend-cmd-called test -s extend.log
check extend-cmd-args grep -qE "^$dev3 [0-9]+\$" extend.log
# The guest powers off: the monitor sees the domain stop and exits 0.
check domain3-gone wait_gone "$D3" 60
rc=0
wait "$mon3" || rc=$?
check monitor3-exit-0 test "$rc" = 0
check monitor3-says-stopped grep -q "domain '$D3' stopped" mon3.err
check extend-cmd-final-size test "$(tail -n 1 extend.log | cut -d' ' -f2)" = "$(size_of "$dev3")"
if out=$(qemu-img check -f qcow2 "$dev3" 2>&1); then pass image3-checks; else fail image3-checks "$out"; fi

# ---- 4. a running block copy onto a thin destination: both sides ----
D4=$PREFIX-4
new_loop "$T/s4.img" 64M
src4=$LOOP
new_loop "$T/d4.img" 64M
dst4=$LOOP
start_writer "$D4" "$src4" 640
err=$(lvenv_virsh blockcopy "$D4" vda --dest "$dst4" --format qcow2 --reuse-external \
      --transient-job --shallow --blockdev 2>&1) || die "blockcopy: $err"
"$LSM_SYNC" monitor "${MON_OPTS[@]}" --chunk-replicating 256M --watermark-replicating 128M \
    --status-interval 1 --disk vda "$D4" >mon4.json 2>mon4.err &
MONPIDS+=($!)
mon4=$!
check writer4-done wait_console "$D4" "WRITER-DONE rc=0 blocks=640" 300
check domain4-gone wait_gone "$D4" 60
rc=0
wait "$mon4" || rc=$?
check monitor4-exit-0 test "$rc" = 0
if out=$(python3 - mon4.json "$src4" "$dst4" <<'EOF4'
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
ext = [e for e in ev if e["event"] == "extended"]
src = [e for e in ext if e["side"] == "source"]
dst = [e for e in ext if e["side"] == "mirror"]
assert src and dst, "extensions: %d source, %d mirror" % (len(src), len(dst))
assert all(e["path"] == sys.argv[2] for e in src), src
assert all(e["path"] == sys.argv[3] for e in dst), dst
# The mirror's own threshold (its own index) fired at least once.
th = [e for e in ev if e["event"] == "threshold" and e.get("side") == "mirror"]
assert th, "no threshold event on the mirror"
# Extended together: one extension with both phases.
both = [e for e in ext if e["phases"]["extend_destination"] > 0 and e["phases"]["extend_source"] > 0]
assert both, "never extended both at once"
assert not [e for e in ev if str(e.get("reason", "")).startswith("suspended")], "paused"
# While the copy ran (the last status comes after the domain stopped,
# when the mirror is gone).
assert any(e["replicating"] for e in ev if e["event"] == "status"), "never replicating"

print("%d source and %d mirror extensions, %d together" % (len(src), len(dst), len(both)))
EOF4
); then pass mirror-both-sides; log "$out"; else fail mirror-both-sides "$out"; fi
check mirror-dst-size test "$(size_of "$dst4")" -gt $((64 << 20))
if out=$(qemu-img check -f qcow2 "$dst4" 2>&1); then pass mirror-dst-checks; else fail mirror-dst-checks "$out"; fi

finish
