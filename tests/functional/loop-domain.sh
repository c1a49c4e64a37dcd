#!/bin/bash
# Loop block domains (domains/domain-loop.c): clone-structure + sync of a
# 3-layer chain into a directory of loop devices, checked with qemu-img;
# a loop that is gone is attached again, a reused loop number is refused;
# removal detaches and removes only what the domain made.
set -euo pipefail
: "${LSM_SYNC:?}"
command -v qemu-img >/dev/null || { echo "SKIP: qemu-img not installed"; exit 77; }
command -v losetup >/dev/null || { echo "SKIP: losetup not installed"; exit 77; }
[ "$(id -u)" = 0 ] || { echo "SKIP: loop devices need root"; exit 77; }
[ -c /dev/loop-control ] || { echo "SKIP: no /dev/loop-control"; exit 77; }

T=$(mktemp -d /var/tmp/lsm-loopdom.XXXXXX)

cleanup() {
    for f in "$T"/dom/.lsm-loop/* "$T/other.img"; do
        [ -e "$f" ] || continue
        for dev in $(losetup -j "$f" -O NAME -n); do losetup -d "$dev"; done
    done
    rm -rf "$T"
}
trap cleanup EXIT
cd "$T"
pass=0
ok() { pass=$((pass + 1)); echo "ok $pass - $*"; }
fail() { echo "not ok - $*"; exit 1; }

mkdir -p src dom
qemu-img create -q -f raw src/base.raw 64M
qemu-io -f raw -c "write -P 1 0 4M" -c "write -P 4 60M 1M" src/base.raw >/dev/null
qemu-img create -q -f qcow2 -b base.raw -F raw src/mid.qcow2
qemu-io -c "write -P 2 8M 2M" -c "write -z 0 64k" src/mid.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 src/top.qcow2
qemu-io -c "write -P 3 1M 1M" -c "write -P 5 63M 512k" src/top.qcow2 >/dev/null
src_sum=$(md5sum src/* | md5sum)

# 1. an unmarked directory is refused with one line
set +e
"$LSM_SYNC" clone-structure --dst-loop dom src/top.qcow2 >out.txt 2>err.txt
rc=$?
set -e
[ $rc = 1 ] && [ "$(wc -l <err.txt)" = 1 ] && grep -q "not a loop domain" err.txt ||
    { cat err.txt; fail "unmarked directory: exit $rc"; }
[ -z "$(ls dom)" ] || fail "unmarked directory: something was created"
ok "unmarked directory refused: $(cat err.txt)"

# 2. clone-structure + sync into the domain, compare and check
mkdir dom/.lsm-loop
top=$("$LSM_SYNC" clone-structure --dst-loop dom src/top.qcow2)
[ "$top" = "$T/dom/top.qcow2" ] || fail "clone-structure printed '$top'"
for v in base.raw mid.qcow2 top.qcow2; do
    [ -L dom/$v ] && [ -b dom/$v ] || fail "dom/$v is not a link to a block device"
    [ "$(losetup -n -O BACK-FILE "$(readlink dom/$v)")" = "$T/dom/.lsm-loop/$v" ] ||
        fail "dom/$v: its loop device does not back dom/.lsm-loop/$v"
    sz=$(blockdev --getsize64 dom/$v)
    [ $((sz % (4 << 20))) = 0 ] || fail "dom/$v: $sz bytes, not whole 4 MiB extents"
done
[ "$(blockdev --getsize64 dom/base.raw)" = $((64 << 20)) ] || fail "base.raw is not 64 MiB"
ok "clone-structure made 3 loop volumes linked as DIR/NAME, whole extents"
"$LSM_SYNC" sync --type=ALL src/top.qcow2 dom/top.qcow2 >/dev/null
qemu-img compare -q src/top.qcow2 dom/top.qcow2 || fail "qemu-img compare: differ"
for v in mid.qcow2 top.qcow2; do qemu-img check -q dom/$v || fail "qemu-img check dom/$v"; done
[ "$(qemu-img info --output=json dom/top.qcow2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["backing-filename"])')" = "$T/dom/mid.qcow2" ] ||
    fail "top's backing name is not the stable link"
[ "$(md5sum src/* | md5sum)" = "$src_sum" ] || fail "the source changed"
ok "sync ALL: qemu-img compare identical, check clean, backing names are the links"

# 3. a loop that is gone is attached again (and the link fixed)
m=$(readlink dom/mid.qcow2)
losetup -d "$m"
# take the freed number with another file, so the volume must move
qemu-img create -q -f raw other.img 8M
losetup "$m" other.img
set +e
"$LSM_SYNC" sync --type=ALL src/top.qcow2 dom/top.qcow2 >out.txt 2>err.txt
rc=$?
set -e
[ $rc = 1 ] && [ "$(wc -l <err.txt)" = 1 ] && grep -q "backs another file" err.txt ||
    { cat err.txt; fail "reused loop number: exit $rc"; }
[ "$(losetup -n -O BACK-FILE "$m")" = "$T/other.img" ] || fail "the other file's loop device was touched"
cmp -s other.img <(head -c 8M /dev/zero) || fail "the other file was written"
ok "reused loop number refused, other file untouched: $(cat err.txt)"
rm dom/mid.qcow2     # the operator's answer: the link goes, the volume stays
"$LSM_SYNC" sync --type=ALL src/top.qcow2 dom/top.qcow2 >/dev/null 2>err.txt ||
    { cat err.txt; fail "sync after removing the stale link"; }
n=$(readlink dom/mid.qcow2)
[ "$n" != "$m" ] || fail "mid.qcow2 still links to $m"
[ "$(losetup -n -O BACK-FILE "$n")" = "$T/dom/.lsm-loop/mid.qcow2" ] || fail "mid's new loop does not back its file"
qemu-img compare -q src/top.qcow2 dom/top.qcow2 || fail "compare after re-attach"
ok "link removed by the operator: volume attached again as $n, compare identical"
losetup -d "$n"      # gone, number left free: attached again through the same link
"$LSM_SYNC" sync --type=ALL src/top.qcow2 dom/top.qcow2 >/dev/null 2>err.txt ||
    { cat err.txt; fail "sync after detaching mid"; }
[ "$(losetup -n -O BACK-FILE "$(readlink dom/mid.qcow2)")" = "$T/dom/.lsm-loop/mid.qcow2" ] ||
    fail "mid was not attached again"
qemu-img compare -q src/top.qcow2 dom/top.qcow2 || fail "compare after detach"
ok "detached loop attached again by sync, compare identical"

# 3b. the same through a job file (clone-structure --output=json): a loop
# gone is attached again before sync --job reads the destination chain
"$LSM_SYNC" clone-structure --reuse --output=json --dst-loop dom src/top.qcow2 >job.json
losetup -d "$(readlink dom/top.qcow2)"
"$LSM_SYNC" sync --type=ALL --job job.json >/dev/null 2>err.txt || { cat err.txt; fail "sync --job after detaching top"; }
[ "$(losetup -n -O BACK-FILE "$(readlink dom/top.qcow2)")" = "$T/dom/.lsm-loop/top.qcow2" ] ||
    fail "top was not attached again"
qemu-img compare -q src/top.qcow2 dom/top.qcow2 || fail "compare after clone --reuse + sync --job"
for v in mid.qcow2 top.qcow2; do qemu-img check -q dom/$v || fail "qemu-img check dom/$v after --reuse"; done
ok "clone-structure --reuse + sync --job with a detached top: attached again, compare identical, check clean"

# 4. identity: the loop device is also its backing file, so a clone into
# the domain whose source is that domain's own volume is refused
set +e
"$LSM_SYNC" sync --type=ALL dom/top.qcow2 "$T/dom/.lsm-loop/top.qcow2" >out.txt 2>err.txt
rc=$?
set -e
[ $rc != 0 ] || fail "sync onto a loop volume's own backing file succeeded"
ok "a loop volume's backing file is the volume: refused ($(head -1 err.txt))"

# 5. removal: a clone that fails on its last volume removes the two it
# made (remove_volume: detach, unlink link and backing file) and nothing
# else.  The failure: a file size limit between the needed sizes of the
# two qcow2 volumes (the top one has more metadata, 4 PiB virtual).
mkdir -p s2 dom2/.lsm-loop
echo operator >dom2/.lsm-loop/keep.txt
qemu-img create -q -f raw s2/b.raw 1M
qemu-img create -q -f qcow2 -b b.raw -F raw s2/m.qcow2 1M
qemu-img create -q -f qcow2 -o cluster_size=2M -b m.qcow2 -F qcow2 s2/t.qcow2 4P
set +e
(trap '' XFSZ; ulimit -f 1054720; exec "$LSM_SYNC" clone-structure --dst-loop dom2 s2/t.qcow2) >out.txt 2>err.txt
rc=$?
set -e
[ $rc = 1 ] && [ "$(wc -l <err.txt)" = 1 ] && grep -q "removed the 2 volumes" err.txt ||
    { cat err.txt; fail "failed clone: exit $rc"; }
[ "$(ls -A dom2)" = .lsm-loop ] || fail "dom2 holds: $(ls -A dom2)"
[ "$(ls -A dom2/.lsm-loop)" = keep.txt ] || fail "dom2/.lsm-loop holds: $(ls -A dom2/.lsm-loop)"
[ "$(cat dom2/.lsm-loop/keep.txt)" = operator ] || fail "the operator's file changed"
if losetup -a | grep -q "$T/dom2/"; then fail "a loop device still backs a file of dom2"; fi
ok "failed clone removed its 2 volumes (loops detached), kept the operator's file: $(cat err.txt)"
echo "1..$pass"
