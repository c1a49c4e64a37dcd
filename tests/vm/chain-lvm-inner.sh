#!/bin/bash
# Runs inside the test VM (tests/vm/vm-run.sh): chains from a file domain to
# an LVM volume group and back, on real LVM.
set -euo pipefail
: "${LSM_SYNC:?}"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lvm-helpers.sh
. "$here/lvm-helpers.sh"
trap vm_cleanup EXIT
pass=0
ok() { pass=$((pass + 1)); echo "ok $pass - $*"; }
fail() { echo "not ok - $*"; exit 1; }
# layer IMG FMT: the image's own extents (depth 0) as start, length, data,
# zero.  jq, not python3: a python3 start costs 6-7 s under TCG, jq's a
# fraction of a second.
layer() {
    qemu-img map --output=json -f "$2" "$1" |
        jq -c '[.[] | select(.depth == 0) | [.start, .length, .data, .zero]]'
}

W=$LSM_VM_SCRATCH/chain
mkdir -p "$W/src/d1" "$W/src/d2" "$W/back"
cd "$W"
qemu-img create -q -f raw src/d1/base.raw 64M
qemu-io -f raw -c 'write -P 1 0 4M' -c 'write -P 2 30M 1M' src/d1/base.raw >/dev/null
qemu-img create -q -f qcow2 -b ../d1/base.raw -F raw src/d2/mid.qcow2
qemu-io -c 'write -P 3 1M 2M' -c 'write -z 30M 512k' -c 'write -c -P 9 40M 64k' src/d2/mid.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b d2/mid.qcow2 -F qcow2 src/top.qcow2
qemu-io -c 'write -P 4 2M 256k' -c 'discard 1M 64k' src/top.qcow2 >/dev/null

vm_make_vg lsmvg 4G
# The source images sit on the guest's tmpfs, which (kernel 6.1) refuses
# O_DIRECT: --direct=auto must fall back to buffered reads there, while the
# LVs themselves take O_DIRECT (docs/vm-harness.md).
D=--direct=auto

# file -> block
top=$("$LSM_SYNC" clone-structure src/top.qcow2 --dst-vg lsmvg)
[ "$top" = /dev/lsmvg/top.qcow2 ] || fail "clone-structure printed $top"
for lv in top.qcow2 mid.qcow2 base.raw; do [ -b /dev/lsmvg/$lv ] || fail "no LV $lv"; done
[ "$(qemu-img info --output=json /dev/lsmvg/top.qcow2 | jq -r '.["backing-filename"]')" = /dev/lsmvg/mid.qcow2 ] ||
    fail "LV top does not name /dev/lsmvg/mid.qcow2"
base_size=$(blockdev --getsize64 /dev/lsmvg/base.raw)
[ "$base_size" = $((64 << 20)) ] || fail "raw LV sized $base_size, want the virtual size"
mid_size=$(blockdev --getsize64 /dev/lsmvg/mid.qcow2)
[ "$mid_size" -ge $((1 << 30)) ] 2>/dev/null || [ "$mid_size" -ge $((512 << 20)) ] || fail "qcow2 LV too small: $mid_size"
ok "clone-structure onto LVM: LVs created, sized, backing by /dev/VG/LV"
"$LSM_SYNC" sync --type=ALL $D src/top.qcow2 /dev/lsmvg/top.qcow2 >/dev/null
qemu-img compare -q src/top.qcow2 /dev/lsmvg/top.qcow2 || fail "file->block: chains differ"
"$LSM_SYNC" compare src/top.qcow2 /dev/lsmvg/top.qcow2 >/dev/null || fail "lsm-sync compare file->block"
qemu-img check -q -f qcow2 /dev/lsmvg/top.qcow2 || fail "check top LV"
qemu-img check -q -f qcow2 /dev/lsmvg/mid.qcow2 || fail "check mid LV"
[ "$(layer src/d2/mid.qcow2 qcow2)" = "$(layer /dev/lsmvg/mid.qcow2 qcow2)" ] || fail "mid layer map differs on LVM"
[ "$(layer src/top.qcow2 qcow2)" = "$(layer /dev/lsmvg/top.qcow2 qcow2)" ] || fail "top layer map differs on LVM"
ok "file -> block: sync ALL, chains identical, each LV maps like its source volume, check clean"

# block -> file
"$LSM_SYNC" clone-structure /dev/lsmvg/top.qcow2 --dst-dir back >/dev/null
"$LSM_SYNC" sync --type=ALL $D /dev/lsmvg/top.qcow2 back/top.qcow2 >/dev/null
qemu-img compare -q src/top.qcow2 back/top.qcow2 || fail "block->file: chains differ"
qemu-img check -q back/top.qcow2 && qemu-img check -q back/mid.qcow2 || fail "check file copies"
[ "$(layer src/top.qcow2 qcow2)" = "$(layer back/top.qcow2 qcow2)" ] || fail "top layer map differs after block->file"
ok "block -> file: sync ALL, identical to the original chain"

# INTERNAL + LEAF onto LVM with --reuse
"$LSM_SYNC" clone-structure --reuse src/top.qcow2 --dst-vg lsmvg >/dev/null
"$LSM_SYNC" sync --type=INTERNAL $D src/top.qcow2 /dev/lsmvg/top.qcow2 >/dev/null
"$LSM_SYNC" sync --type=LEAF $D src/top.qcow2 /dev/lsmvg/top.qcow2 >/dev/null
qemu-img compare -q src/top.qcow2 /dev/lsmvg/top.qcow2 || fail "INTERNAL+LEAF differs"
ok "INTERNAL then LEAF onto reused LVs"

# a volume group without space: one clear error, nothing left behind
vm_make_vg tinyvg 48M
set +e
"$LSM_SYNC" clone-structure src/top.qcow2 --dst-vg tinyvg >out.txt 2>err.txt
rc=$?
set -e
[ $rc = 1 ] || { cat err.txt; fail "no-space clone exit $rc"; }
[ "$(wc -l <err.txt)" = 1 ] || { cat err.txt; fail "no-space: more than one line"; }
left=$(vm_lvm lvs --noheadings -o lv_name tinyvg | tr -d ' ')
[ -z "$left" ] || fail "LVs left behind in tinyvg: $left"
ok "VG without space: $(cat err.txt); nothing left behind"
set +e
"$LSM_SYNC" clone-structure src/top.qcow2 --dst-vg novg >/dev/null 2>err.txt
rc=$?
set -e
[ $rc = 1 ] && [ "$(wc -l <err.txt)" = 1 ] || { cat err.txt; fail "missing VG gave $rc"; }
ok "missing VG: $(cat err.txt)"
echo "$pass passed, 0 failed"
