#!/bin/bash
# Smoke test of the device-mapper mirror target, the building block of a dm
# replication backend: a linear device on SRC is swapped (load, suspend,
# resume) to a core-log mirror of SRC onto DST, written to while it syncs,
# waited for until in sync, swapped to linear on DST, and the two backing
# files are compared.  Runs itself in the VM (tests/vm/vm-run.sh); exit 77
# when the VM cannot run here.
set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [ "${LSM_VM:-}" != 1 ]; then
    exec "$here/vm-run.sh" --timeout "${LSM_VM_TIMEOUT:-600}" "$0" "$@"
fi

# ---- in the guest -------------------------------------------------------
# shellcheck source=tests/vm/lvm-helpers.sh
. "$here/lvm-helpers.sh"
name=lsm-mirror-test
size_mib=32
sectors=$((size_mib * 2048))
cleanup() {
    dmsetup remove "$name" >/dev/null 2>&1
    vm_cleanup
}
trap cleanup EXIT
fail() {
    echo "FAIL: $*" >&2
    dmsetup table "$name" 2>/dev/null | sed 's/^/    table:  /' >&2
    dmsetup status "$name" 2>/dev/null | sed 's/^/    status: /' >&2
    exit 1
}

vm_make_loop src "${size_mib}M" || fail "cannot make the source loop device"
src=$VM_LOOP
vm_make_loop dst "${size_mib}M" || fail "cannot make the destination loop device"
dst=$VM_LOOP
srcf=$LSM_VM_SCRATCH/src.img
dstf=$LSM_VM_SCRATCH/dst.img
# Data written through the loop device (not into the file behind its back).
dd if=/dev/urandom of="$src" bs=1M count="$size_mib" conv=fsync status=none ||
    fail "cannot fill $src"

dmsetup create "$name" --table "0 $sectors linear $src 0" || fail "dmsetup create (linear on $src)"
# Without udev, dmsetup makes no /dev/mapper node (and a write to the
# missing path would create a regular file on /dev): use the kernel's dm-N.
dev=/dev/$(dmsetup info -c --noheadings -o blkdevname "$name")
[ -b "$dev" ] || fail "no block device $dev for $name"
echo "ok linear device on $src"

# Swap to a mirror: region size 1024 sectors (512 KiB), log in memory.
dmsetup load "$name" --table "0 $sectors mirror core 1 1024 2 $src 0 $dst 0 1 handle_errors" ||
    fail "dmsetup load (mirror)"
dmsetup suspend "$name" && dmsetup resume "$name" || fail "cannot switch to the mirror table"
echo "ok switched to mirror $src -> $dst"

# A write through the device while it resyncs must reach both legs.
dd if=/dev/urandom of="$dev" bs=1M seek=3 count=2 conv=fsync status=none ||
    fail "write through the mirror"

deadline=$((SECONDS + 120))
while :; do
    # "0 SECTORS mirror 2 MAJ:MIN MAJ:MIN IN_SYNC/TOTAL 1 AA 1 core"
    ratio=$(dmsetup status "$name" | awk '{ print $7 }')
    case $ratio in
    */*) [ "${ratio%/*}" = "${ratio#*/}" ] && break ;;
    *) fail "unexpected mirror status: $(dmsetup status "$name")" ;;
    esac
    [ "$SECONDS" -lt "$deadline" ] || fail "mirror not in sync after 120 s ($ratio regions)"
    sleep 0.5
done
health=$(dmsetup status "$name" | awk '{ print $9 }')
[ "$health" = AA ] || fail "mirror legs not healthy: $health"
echo "ok in sync ($ratio regions, legs $health)"

# Pivot: the device now maps DST only.
dmsetup load "$name" --table "0 $sectors linear $dst 0" || fail "dmsetup load (linear on $dst)"
dmsetup suspend "$name" && dmsetup resume "$name" || fail "cannot switch to linear on $dst"
dd if=/dev/urandom of="$dev" bs=1M seek=7 count=1 conv=fsync status=none ||
    fail "write after the pivot"
dmsetup remove "$name" || fail "dmsetup remove"
echo "ok pivoted to $dst"

# The loop devices write into the tmpfs files' page cache: compare the
# files.  Before the last write they were equal; after it, only the
# megabyte at 7 MiB may differ.
cmp -n $((7 * 1048576)) "$srcf" "$dstf" || fail "source and destination differ before 7 MiB"
cmp -i $((8 * 1048576)) "$srcf" "$dstf" || fail "source and destination differ after 8 MiB"
if cmp -s -i $((7 * 1048576)) -n 1048576 "$srcf" "$dstf"; then
    fail "the write after the pivot reached the source"
fi
echo "ok destination equals source, later writes only on the destination"
