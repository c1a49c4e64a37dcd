#!/bin/bash
# Offload: a raw to raw copy inside an XFS with reflink (on a loop mount) is
# cloned; --offload=never goes through the pipeline.  The whole test skips
# (exit 77, with the reason) where mkfs.xfs, loop devices or the mount are
# unavailable.
. "$(dirname "$0")/lib.sh"
. "$TESTS_DIR/copy-lib.sh"
need_cmd qemu-img qemu-io mkfs.xfs python3 jq

truncate -s 512M xfs.img
mkfs.xfs -q -m reflink=1 xfs.img >mkfs.log 2>&1 || skip "mkfs.xfs -m reflink=1 failed: $(head -n2 mkfs.log)"
mkdir -p xfs
mount -o loop xfs.img xfs >mount.log 2>&1 || skip "cannot loop-mount an XFS image: $(head -n2 mount.log)"
unmount() {
    local i
    for i in $(seq 50); do umount xfs 2>/dev/null && return 0; sleep 0.1; done
    umount -l xfs
}
cleanup_xfs() { mountpoint -q "$T/xfs" && (cd / && umount -l "$T/xfs"); cleanup; }
trap cleanup_xfs EXIT

truncate -s 64M xfs/src.raw
qio xfs/src.raw raw -- "write -P 0x61 0 4M" "write -P 0x62 20M 1M" "write -P 0x63 63M 1M"
for off in auto never; do
    if run "xfs-offload=$off" -v --offload=$off xfs/src.raw xfs/dst.raw; then
        if ! same "xfs-offload=$off" xfs/src.raw xfs/dst.raw; then :
        elif [[ $off == auto ]] && ! grep -q offloaded err.log; then
            fail "xfs-offload=$off" "reflink not used: $(cat err.log)"
        elif [[ $off == never ]] && grep -q offloaded err.log; then
            fail "xfs-offload=$off" "offload used: $(cat err.log)"
        else
            pass "xfs-offload=$off"
        fi
    fi
    rm -f xfs/dst.raw
done
# A qcow2 source (64K clusters, on the same XFS): its data clusters are
# cloned from their host offsets; bytes reflinked = qemu-img map's data.
qemu-img create -q -f qcow2 xfs/src.qcow2 64M
qio xfs/src.qcow2 -- "write -P 0x71 0 2M" "write -P 0x72 30M 1M" "write -z 40M 1M" "write -P 0x73 63M 64k"
want=$(data_bytes xfs/src.qcow2)
if run xfs-qcow2 --output=json xfs/src.qcow2 xfs/dst.raw && same xfs-qcow2 xfs/src.qcow2 xfs/dst.raw -F raw; then
    got=$(jq -r .offload_paths.reflink out.log)
    [[ $got == "$want" ]] && pass xfs-qcow2 || fail xfs-qcow2 "reflinked $got bytes, the map has $want: $(cat out.log)"
fi
rm -f xfs/dst.raw
unmount

finish
