#!/bin/bash
# Inside the booted distribution kernel (tests/vm/test-xcopy.sh): a real
# SCSI target (LIO: target_core_mod, target_core_file, target_core_iblock,
# tcm_loop) configured through configfs, whose LUNs appear as local SCSI
# disks, and copies between them that the target itself serves with
# EXTENDED COPY.  Prints one "ok"/"FAIL" line per check; exit 1 on any
# failure, 77 if the target cannot be set up here.
set -u
: "${LSM_SYNC:?}" "${LSM_VM_SCRATCH:?}"
[ "${LSM_VM:-}" = 1 ] || { echo "xcopy-inner: only inside the test VM" >&2; exit 2; }

T=/sys/kernel/config/target
S=$LSM_VM_SCRATCH
fails=0
skip() { echo "SKIP: $*" >&2; exit 77; }
ok() { echo "ok [${SECONDS}s] $*"; }
fail() { echo "FAIL [${SECONDS}s] $*"; fails=$((fails + 1)); }

out=$(modprobe -a configfs target_core_mod target_core_file target_core_iblock tcm_loop sd_mod 2>&1) ||
    skip "cannot load the LIO modules: $out"
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config ||
    skip "cannot mount configfs"
[ -d $T/core ] || skip "no $T/core after loading target_core_mod"
mount -t tmpfs -o size=700m tmpfs "$S" || skip "cannot mount a tmpfs on $S"

cleanup() {
    # The volume group on LUN 10 first (its LVs hold the disk open), then
    # LUN links, then targets, then backstores (configfs refuses otherwise).
    local l
    if [ -n "${sanvg:-}" ]; then
        lvm vgremove -q -f --config "$LSM_LVM_CONFIG" "$sanvg" >/dev/null 2>&1
        lvm pvremove -q -ff -y --config "$LSM_LVM_CONFIG" "$sanpv" >/dev/null 2>&1
    fi
    for l in $T/loopback/naa.*/tpgt_1/lun/lun_*/*; do [ -L "$l" ] && rm -f "$l"; done
    for l in $T/loopback/naa.*/tpgt_1/lun/lun_*; do [ -d "$l" ] && rmdir "$l"; done
    for l in $T/loopback/naa.*/tpgt_1; do [ -d "$l" ] && { echo 0 >/dev/null; rmdir "$l"; }; done
    for l in $T/loopback/naa.*; do [ -d "$l" ] && rmdir "$l"; done
    for l in $T/core/*_*/d*; do [ -d "$l" ] && rmdir "$l"; done
    for l in $T/core/fileio_* $T/core/iblock_*; do [ -d "$l" ] && rmdir "$l"; done
    dmsetup remove lsm-xcopy-fail >/dev/null 2>&1
    dmsetup remove lsm-xcopy-part >/dev/null 2>&1
    [ -n "${failloop:-}" ] && losetup -d "$failloop"
} 2>/dev/null
trap cleanup EXIT

# Serials are hex digits only: LIO derives the LU's NAA designator from the
# hex digits of the serial, so they must differ there.
serial() { printf 'feedf00d%08x' "$1"; }

# attach N TARGET: export backstore directory $bs as lun N of tcm_loop
# target TARGET (a, b: two targets, two I_T nexuses), wait for its disk.
# Sets dev.
attach() {
    local n=$1 tgt=$2 wwn tp
    case $tgt in a) wwn=naa.60014050000000a1 ;; b) wwn=naa.60014050000000b1 ;; esac
    tp=$T/loopback/$wwn/tpgt_1
    if [ ! -d "$tp" ]; then
        mkdir -p "$tp" || return 1
        echo "naa.6001405000000${tgt}ff" >"$tp/nexus" || return 1
    fi
    mkdir -p "$tp/lun/lun_$n" && ln -s "$bs" "$tp/lun/lun_$n/x$n" || return 1
    local want i b
    want=$(serial "$n")
    dev=
    for i in $(seq 100); do
        for b in /sys/block/sd*; do
            [ -e "$b/device/vpd_pg80" ] || continue
            if tr -dc '[:alnum:]' <"$b/device/vpd_pg80" | grep -q "$want"; then
                dev=/dev/${b##*/}
                [ -b "$dev" ] && return 0
            fi
        done
        sleep 0.1
    done
    echo "no disk with serial $want appeared" >&2
    return 1
}

# fileio N SIZE TARGET [3PC]: a fileio backstore on a tmpfs file.
fileio() {
    local n=$1 size=$2 tgt=$3 tpc=${4:-1}
    bs=$T/core/fileio_$n/d$n
    truncate -s "$size" "$S/lun$n.img"
    mkdir -p "$bs" &&
        echo "fd_dev_name=$S/lun$n.img,fd_dev_size=$(stat -c %s "$S/lun$n.img")" >"$bs/control" &&
        serial "$n" >"$bs/wwn/vpd_unit_serial" &&
        echo 1 >"$bs/enable" &&
        echo "$tpc" >"$bs/attrib/emulate_3pc" &&
        attach "$n" "$tgt"
}

json_field() {   # json_field FILE FILTER (jq: cheaper to start than python under TCG)
    jq -r "$2" "$1"
}

# copy NAME ARGS...: run lsm-sync copy --output=json; sets rc, leaves
# $NAME.json and $NAME.err.
copy() {
    local name=$1
    shift
    timeout -k 5 60 "$LSM_SYNC" copy --output=json "$@" >"$S/$name.json" 2>"$S/$name.err"
    rc=$?
    [ "$rc" != 124 ] || echo "lsm-sync copy $* timed out" >>"$S/$name.err"
}

# Three LUNs on target a (3PC on), one with 3PC off, one on target b.
fileio 1 16M a || skip "cannot configure LIO LUN 1 through configfs"
src=$dev
fileio 2 16M a || skip "cannot configure LIO LUN 2"
dst=$dev
fileio 3 16M a 0 || skip "cannot configure LIO LUN 3"
no3pc=$dev
fileio 4 16M b || skip "cannot configure LIO LUN 4 on a second target"
other=$dev
echo "LUNs: src $src, dst $dst, no-3pc $no3pc, other target $other"

# Data on the source through the disk (O_DIRECT: not in the page cache),
# with a zero range in the middle.
dd if=/dev/urandom of="$src" bs=1M count=16 oflag=direct status=none || fail "cannot fill $src"
dd if=/dev/zero of="$src" bs=1M seek=6 count=2 oflag=direct status=none

# 1. raw LUN to raw LUN on one target: offloaded, identical.
copy raw -f raw "$src" "$dst"
if [ "$rc" != 0 ]; then
    fail "raw: exit $rc: $(cat "$S/raw.err")"
else
    plugin=$(json_field "$S/raw.json" '.offload_paths.plugin')
    name=$(json_field "$S/raw.json" '.offload_paths.plugin_name')
    total=$(json_field "$S/raw.json" '.bytes_total')
    sw=$(json_field "$S/raw.json" '.offload_paths.software')
    if ! qemu-img compare -q -f raw -F raw "$src" "$dst"; then
        fail "raw: $src and $dst differ after the copy"
    elif [ "$name" != xcopy ] || [ "$plugin" != "$total" ] || [ "$sw" != 0 ]; then
        fail "raw: expected all $total bytes by xcopy, got plugin=$plugin ($name), software=$sw: $(cat "$S/raw.json")"
    else
        ok "raw LUN to raw LUN: $plugin bytes by EXTENDED COPY (of $total data bytes), identical"
    fi
fi

# 1b. More than one EXTENDED COPY command (LIO: one segment of at most
#     65535 blocks per command): 40 MiB is two commands.
fileio 8 40M a || skip "cannot configure LIO LUN 8"
big=$dev
fileio 9 40M a || skip "cannot configure LIO LUN 9"
bigdst=$dev
dd if=/dev/urandom of="$big" bs=1M count=40 oflag=direct status=none
copy big -f raw "$big" "$bigdst"
if [ "$rc" != 0 ] || ! cmp -s "$big" "$bigdst" ||
    [ "$(json_field "$S/big.json" '.offload_paths.plugin')" != $((40 << 20)) ]; then
    fail "40 MiB: exit $rc: $(cat "$S/big.json" "$S/big.err")"
else
    ok "40 MiB in two EXTENDED COPY commands: all offloaded, identical"
fi

# 2. -C on the same pair: the same, and nothing through the host.
dd if=/dev/zero of="$dst" bs=1M count=16 oflag=direct status=none
copy rawC -C --offload=xcopy -f raw "$src" "$dst"
if [ "$rc" != 0 ]; then
    fail "raw -C: exit $rc: $(cat "$S/rawC.err")"
elif ! qemu-img compare -q -f raw -F raw "$src" "$dst"; then
    fail "raw -C: differ"
elif [ "$(json_field "$S/rawC.json" '.bytes_read')" != 0 ]; then
    fail "raw -C: bytes went through the host: $(cat "$S/rawC.json")"
else
    ok "-C --offload=xcopy: everything offloaded, nothing read by the host"
fi

# 3. qcow2 data clusters on a LUN to a raw LUN.
fileio 5 16M a || skip "cannot configure LIO LUN 5"
qsrc=$dev
fileio 6 16M a || skip "cannot configure LIO LUN 6"
qdst=$dev
if qemu-img create -q -f qcow2 "$qsrc" 16M &&
    qemu-io -f qcow2 -c "write -P 0x11 0 4M" -c "write -P 0x22 8M 3M" -c "write -P 0x33 15M 64k" \
        -c "write -z 6M 1M" "$qsrc" >/dev/null; then
    data=$(qemu-img map -f qcow2 --output=json "$qsrc" | jq '[.[] | select(.data) | .length] | add')
    # the destination starts out non-zero: the copy must write its zeroes
    dd if=/dev/urandom of="$qdst" bs=1M count=16 oflag=direct status=none
    copy qcow -f qcow2 "$qsrc" "$qdst"
    if [ "$rc" != 0 ]; then
        fail "qcow2: exit $rc: $(cat "$S/qcow.err")"
    else
        plugin=$(json_field "$S/qcow.json" '.offload_paths.plugin')
        if ! qemu-img compare -q -f qcow2 -F raw "$qsrc" "$qdst"; then
            fail "qcow2: $qsrc and $qdst differ"
        elif [ "$plugin" != "$data" ]; then
            fail "qcow2: $data data bytes in the map, $plugin offloaded"
        else
            ok "qcow2 data clusters to a raw LUN: $plugin bytes by EXTENDED COPY (= the map's data), identical"
        fi
    fi
else
    fail "cannot make a qcow2 image on $qsrc"
fi

# 4. Fallback: 3PC off on the destination, and a destination on another target.
for case in no3pc other; do
    d=${!case}
    dd if=/dev/zero of="$d" bs=1M count=16 oflag=direct status=none
    copy "$case" -v -f raw "$src" "$d"
    if [ "$rc" != 0 ]; then
        fail "$case: exit $rc: $(cat "$S/$case.err")"
    elif ! qemu-img compare -q -f raw -F raw "$src" "$d"; then
        fail "$case: differ after the fallback"
    elif [ "$(json_field "$S/$case.json" '.offload_paths.plugin')" != 0 ]; then
        fail "$case: bytes reported offloaded: $(cat "$S/$case.json")"
    else
        ok "$case: fell back to the software copy, identical"
    fi
    copy "${case}C" -C -f raw "$src" "$d"
    lines=$(wc -l <"$S/${case}C.err")
    if [ "$rc" != 1 ] || [ "$lines" != 1 ]; then
        fail "$case -C: exit $rc with $lines lines: $(cat "$S/${case}C.err")"
    else
        ok "$case -C: exit 1: $(cat "$S/${case}C.err")"
    fi
done
if ! grep -q "3PC" "$S/no3pcC.err"; then
    fail "no3pc -C: the message does not say 3PC: $(cat "$S/no3pcC.err")"
fi
if ! grep -qi "not reachable" "$S/otherC.err"; then
    fail "other -C: the message does not give the target's reason: $(cat "$S/otherC.err")"
fi

# 5. 3PC off on the source's backstore: the target cannot reach it.
echo 0 >$T/core/fileio_1/d1/attrib/emulate_3pc
dd if=/dev/zero of="$dst" bs=1M count=16 oflag=direct status=none
copy srcoff -f raw "$src" "$dst"
if [ "$rc" != 0 ] || ! qemu-img compare -q -f raw -F raw "$src" "$dst" ||
    [ "$(json_field "$S/srcoff.json" '.offload_paths.plugin')" != 0 ]; then
    fail "source 3PC off: exit $rc, $(cat "$S/srcoff.json" "$S/srcoff.err")"
else
    ok "source backstore with emulate_3pc=0: fell back, identical"
fi
echo 1 >$T/core/fileio_1/d1/attrib/emulate_3pc

# 6. A destination backstore that fails half-way (iblock on a dm device
#    whose second half is the error target): exit 1 and one line.
truncate -s 16M "$S/fail.img"
failloop=$(losetup -f --show "$S/fail.img") || fail "losetup"
if [ -n "$failloop" ] &&
    dmsetup create lsm-xcopy-fail --table "0 16384 linear $failloop 0
16384 16384 error" 2>/dev/null; then
    dmdev=/dev/$(dmsetup info -c --noheadings -o blkdevname lsm-xcopy-fail)
    bs=$T/core/iblock_7/d7
    if mkdir -p "$bs" && echo "udev_path=$dmdev" >"$bs/control" &&
        serial 7 >"$bs/wwn/vpd_unit_serial" && echo 1 >"$bs/enable" && attach 7 a; then
        bad=$dev
        copy bad -f raw "$src" "$bad"
        lines=$(wc -l <"$S/bad.err")
        if [ "$rc" != 1 ] || [ "$lines" != 1 ]; then
            fail "failing backstore: exit $rc, $lines lines: $(cat "$S/bad.err")"
        else
            ok "failing backstore: exit 1: $(cat "$S/bad.err")"
        fi
        # the good half was written (by whichever path)
        if ! cmp -n $((8 << 20)) "$src" "$dmdev"; then
            fail "failing backstore: the first 8 MiB differ: $(cat "$S/bad.json")"
        fi
    else
        fail "cannot configure an iblock backstore on $dmdev"
    fi
else
    fail "cannot make the failing device-mapper device"
fi

# 7. Part of a LUN (a device-mapper linear table at an offset, as an LV
#    is): SG_IO would reach the whole LUN, so no EXTENDED COPY; identical.
if dmsetup create lsm-xcopy-part --table "0 16384 linear $src 2048" 2>/dev/null; then
    part=/dev/$(dmsetup info -c --noheadings -o blkdevname lsm-xcopy-part)
    dd if=/dev/zero of="$dst" bs=1M count=16 oflag=direct status=none
    copy part -f raw "$part" "$dst"
    if [ "$rc" != 0 ] || ! cmp -s -n $((8 << 20)) "$part" "$dst" ||
        [ "$(json_field "$S/part.json" '.offload_paths.plugin')" != 0 ] ||
        ! grep -q "not a SCSI disk itself" "$S/part.json"; then
        fail "part of a LUN: exit $rc, $(cat "$S/part.json" "$S/part.err")"
    else
        ok "part of a LUN (dm linear at an offset): not offloaded, identical"
    fi
    dmsetup remove lsm-xcopy-part
else
    fail "cannot make a dm linear device over $src"
fi

# 8. A SAN block domain: an LVM volume group on a LUN (10) of the target.  A
#    backing chain is cloned into it and synced layer by layer; the LVs
#    are parts of the LUN, so nothing is offloaded, and the chain reads
#    back identical.  (The guest runs no udev: lvm-helpers.sh's config.)
. "$(dirname "${BASH_SOURCE[0]}")/lvm-helpers.sh"
if fileio 10 4G a; then
    sanpv=$dev
    mkdir -p "$S/san/d1"
    { qemu-img create -q -f raw "$S/san/d1/base.raw" 64M &&
        qemu-io -f raw -c "write -P 0x5a 0 8M" "$S/san/d1/base.raw" &&
        qemu-img create -q -f qcow2 -b d1/base.raw -F raw "$S/san/top.qcow2" &&
        qemu-io -f qcow2 -c "write -P 0xa5 4M 1M" "$S/san/top.qcow2"; } >"$S/san-mk.log" 2>&1 ||
        fail "cannot make the chain for the SAN domain: $(cat "$S/san-mk.log")"
    if out=$(vm_lvm pvcreate -q -y "$sanpv" 2>&1 && vm_lvm vgcreate -q sanvg "$sanpv" 2>&1); then
        sanvg=sanvg
        if top=$("$LSM_SYNC" clone-structure "$S/san/top.qcow2" --dst-vg sanvg 2>"$S/san.err") &&
            "$LSM_SYNC" sync --type=ALL --output=json "$S/san/top.qcow2" "$top" >"$S/san.json" 2>>"$S/san.err" &&
            qemu-img compare -q "$S/san/top.qcow2" "$top" &&
            qemu-img check -q "$top" &&
            cmp -s "$S/san/d1/base.raw" /dev/sanvg/base.raw; then
            ok "LVM volume group on a LUN: clone-structure + sync of a 2-layer chain, identical, check clean"
        else
            fail "LVM on a LUN: $(cat "$S/san.err" "$S/san.json" 2>/dev/null)"
        fi
    else
        fail "cannot make a volume group on LUN $sanpv: $out"
    fi
else
    fail "cannot configure LIO LUN 10 for the volume group"
fi

[ "$fails" = 0 ] || { echo "$fails check(s) failed" >&2; exit 1; }
echo "all xcopy checks passed"
