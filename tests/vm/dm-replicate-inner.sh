#!/bin/bash
# shellcheck disable=SC2015  # `check && pass || fail`: pass always succeeds
# The body of test-dm-replicate.sh: runs inside the test VM (vm-run.sh),
# where device-mapper and loop devices exist.  Everything lives on the
# guest's tmpfs ($LSM_VM_SCRATCH) and in dm/loop devices that die with the VM.
#
# Devices: lsmsrc, a dm linear device over a window of the source loop (at
# 8 MiB, so the leg offset is exercised), is what "the VM" writes to.
# Destinations are dm-delay devices over loop devices where the test needs
# the copy to take a while (writes while COPYING are the point), so the
# timing does not depend on how fast TCG runs, or a plain loop device.
# Expected contents are kept as files and compared with the backing files
# of the loop devices (no block-device page cache in the way).
set -u
export LC_ALL=C

LSM=${LSM_SYNC:?LSM_SYNC not set}
cd "${LSM_VM_SCRATCH:?not in the test VM}" || exit 1

CASES=0
FAILED=0
log() { echo "dm-replicate: $*"; }
pass() { CASES=$((CASES + 1)); }
fail() { CASES=$((CASES + 1)); FAILED=$((FAILED + 1)); log "FAIL $1${2:+: $2}"; }
die() { log "ERROR: $*"; exit 1; }

MiB=1048576
LEN_MIB=64                  # size of lsmsrc
SECTORS=$((LEN_MIB * 2048))
SRC_OFF_MIB=8               # where lsmsrc starts on the source loop

# rep NAME RC ARGS...: run `lsm-sync replicate ARGS`, expect exit status RC;
# output in out/NAME.{out,err}.  An expected failure must say one line on
# stderr and nothing on stdout.
mkdir -p out
rep() {
    local name=$1 want=$2
    shift 2
    "$LSM" replicate "$@" >"out/$name.out" 2>"out/$name.err"
    local rc=$?
    if [ "$rc" != "$want" ]; then
        fail "$name" "exit $rc, expected $want: $(cat "out/$name.out" "out/$name.err")"
        return 1
    fi
    if [ "$want" != 0 ]; then
        local lines
        lines=$(wc -l <"out/$name.err")
        if [ "$lines" != 1 ] || [ -s "out/$name.out" ]; then
            fail "$name" "expected one line on stderr, got: $(cat "out/$name.out" "out/$name.err")"
            return 1
        fi
    fi
    pass
    return 0
}
# expect_in NAME FILE TEXT: FILE (out/NAME.out or .err) contains TEXT.
expect_in() {
    if grep -qF -- "$3" "$2"; then pass; else fail "$1" "'$3' not in: $(cat "$2")"; fi
}

# phase DEV: the phase `replicate status` reports.
phase() {
    "$LSM" replicate status --backend=dm --output=json "$1" 2>/dev/null |
        sed -n 's/.*"phase":"\([a-z]*\)".*/\1/p'
}

# wait_phase NAME DEV PHASE SECONDS: poll status (as a caller would).
wait_phase() {
    local i p
    for ((i = 0; i < $4 * 2; i++)); do
        p=$(phase "$2")
        [ "$p" = "$3" ] && { pass; return 0; }
        sleep 0.5
    done
    fail "$1" "$2 still '$p' after $4 s, expected $3"
    return 1
}

# write_both TAG OFFSET LENGTH: write LENGTH bytes of the pattern file
# (from byte OFFSET of it) to lsmsrc at OFFSET, buffered with fsync (O_DIRECT
# on dm over loop over tmpfs fails with EINVAL), and the same into the
# expected image FILE ($EXP).
write_both() {
    local off=$2 len=$3
    dd if="pat.$1" of=/dev/mapper/lsmsrc bs=64k iflag=count_bytes count="$len" \
        oflag=seek_bytes seek="$off" conv=fsync status=none || die "write to lsmsrc failed"
    dd if="pat.$1" of="$EXP" bs=64k iflag=count_bytes count="$len" \
        oflag=seek_bytes seek="$off" conv=notrunc status=none || die "write to $EXP failed"
}

# table DEV: the live table without the name.
table() { dmsetup table "$1" 2>&1; }
devnum() { printf '%d:%d' "$(stat -L -c '0x%t' "$1")" "$(stat -L -c '0x%T' "$1")"; }

# ---- set up --------------------------------------------------------------
# Random data made once (urandom is slow under TCG), other images are
# rotations of it so every MiB differs from the source's.
head -c $(((LEN_MIB + SRC_OFF_MIB) * MiB)) /dev/urandom >src.img || die "no room on the tmpfs"
rotate() { # rotate IN OUT MIB: OUT = IN rotated by MIB MiB
    { tail -c +$(($3 * MiB + 1)) "$1"; head -c $(($3 * MiB)) "$1"; } >"$2"
}
rotate src.img dst.img 3
rotate src.img dst2.img 5
truncate -s $((LEN_MIB * MiB)) dst2.img
truncate -s 32M small.img
head -c 4M /dev/urandom >pat.a
rotate pat.a pat.b 1
rotate pat.a pat.c 2

SL=$(losetup -f --show src.img) || die "losetup src.img failed"
DL=$(losetup -f --show dst.img) || die "losetup dst.img failed"
D2L=$(losetup -f --show dst2.img) || die "losetup dst2.img failed"
SML=$(losetup -f --show small.img) || die "losetup small.img failed"

modprobe dm-delay || die "modprobe dm-delay failed"
ORIG="0 $SECTORS linear $(devnum "$SL") $((SRC_OFF_MIB * 2048))"
mkdev() { # mkdev NAME TABLE: dmsetup create without udev, then the node
    dmsetup create "$1" --table "$2" && dmsetup mknodes "$1" ||
        die "cannot create dm device $1"
}
# set_dst TABLE: swap lsmdst's table under whatever uses it.
set_dst() {
    dmsetup suspend lsmdst && dmsetup reload lsmdst --table "$1" && dmsetup resume lsmdst ||
        die "cannot load '$1' on lsmdst"
}
# A slow destination: every I/O waits 1 s and dm-mirror copies one region at
# a time, so the 128 regions would take two minutes or more: the writes
# while COPYING are done well within that, then the delay is dropped.
mkdev lsmdst "0 $(((LEN_MIB + 8) * 2048)) delay $DL 0 1000"
mkdev lsmsrc "$ORIG"

# expected content of lsmsrc: the window of the source
dd if=src.img of=exp.img bs=1M skip=$SRC_OFF_MIB count=$LEN_MIB status=none
EXP=exp.img

DEV=/dev/mapper/lsmsrc

# ---- errors before anything runs ----------------------------------------
rep unknown-device 1 status --backend=dm /dev/mapper/lsmnosuch &&
    expect_in unknown-device out/unknown-device.err "/dev/mapper/lsmnosuch"
rep unknown-name 1 start --backend=dm lsmnosuch "$DL" &&
    expect_in unknown-name out/unknown-name.err "no device-mapper device 'lsmnosuch'"
rep not-dm 1 status --backend=dm "$SL" &&
    expect_in not-dm out/not-dm.err "not a device-mapper device"
rep dst-too-small 1 start --backend=dm "$DEV" "$SML" &&
    expect_in dst-too-small out/dst-too-small.err "too small"
rep dst-is-source 1 start --backend=dm "$DEV" "$SL" &&
    expect_in dst-is-source out/dst-is-source.err "already reads and writes"
rep dst-not-blk 1 start --backend=dm "$DEV" dst.img &&
    expect_in dst-not-blk out/dst-not-blk.err "not a block device"
rep finish-no-mirror 1 finish --backend=dm "$DEV" &&
    expect_in finish-no-mirror out/finish-no-mirror.err "no mirror"
rep status-none 0 status --backend=dm "$DEV" &&
    expect_in status-none out/status-none.out "no mirror; source $SL"
[ "$(table lsmsrc)" = "$ORIG" ] && pass || fail untouched "table now $(table lsmsrc)"

# ---- pivot: writes while copying and once ready --------------------------
if rep start 0 start --backend=dm "$DEV" /dev/mapper/lsmdst; then
    expect_in start out/start.out "mirroring lsmsrc to /dev/mapper/lsmdst: copying"
    want="0 $SECTORS mirror core 1 1024 2 $(devnum "$SL") $((SRC_OFF_MIB * 2048)) $(devnum /dev/mapper/lsmdst) 0 1 handle_errors"
    [ "$(table lsmsrc)" = "$want" ] && pass || fail mirror-table "$(table lsmsrc), expected $want"
    rep start-twice 1 start --backend=dm "$DEV" "$D2L" &&
        expect_in start-twice out/start-twice.err "already being mirrored"
    rep finish-early 1 finish --backend=dm "$DEV" &&
        expect_in finish-early out/finish-early.err "retry with --wait"
    # Writes while copying: the first region, one across a region boundary
    # (512 KiB regions), one in the middle, the last MiB.
    write_both a 0 $((256 * 1024))
    write_both b $((512 * 1024 - 4096)) 8192
    write_both c $((30 * MiB + 12345)) $((1 * MiB))
    write_both a $(((LEN_MIB - 1) * MiB)) $MiB
    p=$(phase "$DEV")
    [ "$p" = copying ] && pass || fail copying-after-writes "phase '$p', expected copying"
    rep status-copying 0 status --backend=dm "$DEV" &&
        expect_in status-copying out/status-copying.out "destination /dev/dm-"
    # Let it finish: the destination at full speed.
    set_dst "0 $(((LEN_MIB + 8) * 2048)) delay $DL 0 0"
    wait_phase ready "$DEV" ready 120
    # Writes once ready go to both legs too.
    write_both b $((10 * MiB)) $((2 * MiB))
    write_both c $((LEN_MIB * MiB - 4096)) 4096
    p=$(phase "$DEV")
    [ "$p" = ready ] && pass || fail ready-after-writes "phase '$p', expected ready"
    if rep finish 0 finish --backend=dm --wait "$DEV"; then
        expect_in finish out/finish.out "pivoted: lsmsrc now uses /dev/dm-"
        want="0 $SECTORS linear $(devnum /dev/mapper/lsmdst) 0"
        [ "$(table lsmsrc)" = "$want" ] && pass || fail pivot-table "$(table lsmsrc), expected $want"
        cmp -n $((LEN_MIB * MiB)) dst.img "$EXP" && pass || fail pivot-dst-content
        # the mirror wrote the source as well
        cmp -n $((LEN_MIB * MiB)) -i $((SRC_OFF_MIB * MiB)):0 src.img "$EXP" && pass ||
            fail pivot-src-content
        blockdev --flushbufs "$DEV"
        cmp "$DEV" "$EXP" && pass || fail pivot-device-content
        rep status-after-pivot 0 status --backend=dm "$DEV" &&
            expect_in status-after-pivot out/status-after-pivot.out "no mirror; source /dev/dm-"
    fi
fi

# ---- abort while copying: back on the source with every write ------------
dmsetup remove lsmsrc || die "cannot remove lsmsrc"
mkdev lsmsrc "$ORIG"
dd if=src.img of=exp.img bs=1M skip=$SRC_OFF_MIB count=$LEN_MIB status=none
set_dst "0 $SECTORS delay $D2L 0 1000"
# The destination exactly as large as the device, given as /dev/dm-N.
dmname() { echo "/dev/dm-$(dmsetup info -c --noheadings -o minor "$1" | tr -d ' ')"; }
if rep start-2 0 start --backend=dm --granularity=64k "$(dmname lsmsrc)" "$(dmname lsmdst)"; then
    expect_in start-2 out/start-2.out "mirroring lsmsrc to $(dmname lsmdst): copying"
    want="0 $SECTORS mirror core 1 128 2 $(devnum "$SL") $((SRC_OFF_MIB * 2048)) $(devnum /dev/mapper/lsmdst) 0 1 handle_errors"
    [ "$(table lsmsrc)" = "$want" ] && pass || fail granularity-table "$(table lsmsrc), expected $want"
    write_both a $((5 * MiB)) $((3 * MiB))
    write_both b $((40 * MiB + 100)) 5000
    p=$(phase "$DEV")
    [ "$p" = copying ] && pass || fail copying-before-abort "phase '$p', expected copying"
    if rep abort 0 abort --backend=dm "$DEV"; then
        expect_in abort out/abort.out "aborted: lsmsrc stays on $SL"
        [ "$(table lsmsrc)" = "$ORIG" ] && pass || fail abort-table "$(table lsmsrc), expected $ORIG"
        cmp -n $((LEN_MIB * MiB)) -i $((SRC_OFF_MIB * MiB)):0 src.img "$EXP" && pass ||
            fail abort-src-content
        rep abort-again 1 abort --backend=dm "$DEV" &&
            expect_in abort-again out/abort-again.err "no mirror"
    fi
fi

# ---- a failing destination leg: FAILED, no pivot, abort keeps the writes --
set_dst "0 $SECTORS delay $D2L 0 0"
if rep start-3 0 start --backend=dm "$DEV" /dev/mapper/lsmdst; then
    wait_phase ready-3 "$DEV" ready 120
    # The destination dies.
    set_dst "0 $SECTORS error"
    # dm-mirror (handle_errors) holds a write that failed on one leg until
    # its table is replaced: this writer waits for the abort below.
    dd if=pat.c of="$DEV" bs=64k count=16 seek=16 conv=fsync status=none 2>out/held.err &
    writer=$!
    dd if=pat.c of="$EXP" bs=64k count=16 seek=16 conv=notrunc status=none
    wait_phase failed "$DEV" failed 60
    dmsetup status lsmsrc >out/failed-dm-status.out 2>&1
    rep status-failed 0 status --backend=dm "$DEV" &&
        expect_in status-failed out/status-failed.out "lsmsrc: failed"
    rep finish-failed 1 finish --backend=dm --wait "$DEV" &&
        expect_in finish-failed out/finish-failed.err "failed"
    if rep abort-failed 0 abort --backend=dm "$DEV"; then
        expect_in abort-failed out/abort-failed.out "aborted: lsmsrc stays on $SL"
        [ "$(table lsmsrc)" = "$ORIG" ] && pass || fail abort-failed-table "$(table lsmsrc)"
    fi
    # The held write was requeued to the source, not failed.
    if wait "$writer"; then pass; else fail held-write "the write held by the mirror failed: $(cat out/held.err)"; fi
    cmp -n $((LEN_MIB * MiB)) -i $((SRC_OFF_MIB * MiB)):0 src.img "$EXP" && pass ||
        fail abort-failed-src-content
fi

dmsetup remove lsmsrc
dmsetup remove lsmdst
for l in "$SL" "$DL" "$D2L" "$SML"; do losetup -d "$l"; done

if [ "${LSM_DM_TEST_VERBOSE:-0}" = 1 ]; then
    for f in out/*; do [ -s "$f" ] && echo "  $f: $(cat "$f")"; done
fi
if [ "$FAILED" != 0 ]; then
    log "$FAILED of $CASES checks failed"
    for f in out/*.err; do [ -s "$f" ] && echo "  $f: $(head -c 300 "$f")"; done
    exit 1
fi
log "all $CASES checks passed"
exit 0
