#!/bin/bash
# Functional test of 'lsm-sync bench': short real runs on each engine with
# verify=pattern, a corrupted block caught and named, JSON fields, the plot,
# rw=copy, SIGINT, bad job files/options (exit 2 naming line and key), and a
# mounted or held loop device refused before any write (allow_mounted_write;
# that case is skipped, with its reason, where losetup or mount cannot run).
# Env: LSM_SYNC (the binary).  Exit 0 pass, 1 fail, 77 skipped.
set -uo pipefail
export LC_ALL=C

: "${LSM_SYNC:=$(dirname "$0")/../build/lsm-sync}"
[[ -x $LSM_SYNC ]] || { echo "bench-engines: LSM_SYNC=$LSM_SYNC is not executable" >&2; exit 1; }
if ! "$LSM_SYNC" --help | grep -q '^  bench '; then
    echo "bench-engines: SKIP: this lsm-sync was built without the bench command"
    exit 77
fi
if command -v jq >/dev/null; then
    jget() { jq -r "$1" "$2"; }
elif command -v python3 >/dev/null; then
    jget() { python3 -c 'import json,sys
d=json.load(open(sys.argv[2]))
for k in sys.argv[1].lstrip(".").replace("[",".").replace("]","").split("."):
    if k == "": continue
    if k.startswith("\"") and k.endswith("\""): k = k[1:-1]
    d = d[int(k)] if isinstance(d, list) else d[k]
print(d)' "$1" "$2"; }
else
    echo "bench-engines: SKIP: neither jq nor python3 to read JSON"
    exit 77
fi

T=$(mktemp -d "${TMPDIR:-/var/tmp}/lsm-bench-test.XXXXXX")
# The mounted-device case sets MNT, LOOPDEV and HOLDER; undo them first.
MNT= LOOPDEV= HOLDER=
cleanup() {
    [[ -n $HOLDER ]] && kill "$HOLDER" 2>/dev/null && wait "$HOLDER" 2>/dev/null
    [[ -n $MNT ]] && mountpoint -q "$MNT" && umount "$MNT"
    [[ -n $LOOPDEV ]] && losetup -d "$LOOPDEV"
    rm -rf "$T"
}
trap cleanup EXIT
cd "$T" || exit 1

FAILED=0
ok() { echo "ok   - $*"; }
bad() { echo "FAIL - $*"; FAILED=1; }
bench() { "$LSM_SYNC" bench --eta=never "$@"; }

# O_DIRECT where the scratch file system has it, buffered otherwise.
DIRECT=1
if ! dd if=/dev/zero of=probe bs=4096 count=1 oflag=direct status=none 2>/dev/null; then
    DIRECT=0
    echo "note: O_DIRECT refused in $T; running buffered"
fi
rm -f probe

# ---- every engine: write with verify, read back with verify ----
for engine in uring aio psync; do
    f=data-$engine
    if ! bench --name=w --rw=write --bs=4k --iodepth=16 --ioengine=$engine --direct=$DIRECT \
            --size=16M --verify=pattern --filename=$f >w-$engine.out 2>w-$engine.err; then
        if grep -q -e "built without" -e "Function not implemented" -e "Operation not permitted" \
                w-$engine.err; then
            echo "skip - $engine: not available here: $(head -1 w-$engine.err)"
            continue
        fi
        bad "$engine: write+verify failed: $(cat w-$engine.err)"
        continue
    fi
    grep -q "verify       : 4096 blocks checked" w-$engine.out &&
        grep -q "ioengine=$engine" w-$engine.out &&
        ok "$engine: sequential write of 16M with verify=pattern" ||
        bad "$engine: unexpected report: $(cat w-$engine.out)"
    if bench --name=r --rw=randread --bs=4k --iodepth=8 --ioengine=$engine --direct=$DIRECT \
            --verify=pattern --filename=$f --output-format=json >r-$engine.json 2>r-$engine.err; then
        [[ $(jget '.jobs[0].ioengine' r-$engine.json) == "$engine" &&
           $(jget '.jobs[0].read.total_ios' r-$engine.json) == 4096 &&
           $(jget '.jobs[0].verified_blocks' r-$engine.json) == 4096 ]] &&
            ok "$engine: 4096 random 4k reads, each verified" ||
            bad "$engine: read report: $(cat r-$engine.json)"
    else
        bad "$engine: verify read failed: $(cat r-$engine.err)"
    fi
done

# ---- a corrupted block is caught, and its offset named ----
bench --name=w --rw=write --bs=4k --iodepth=8 --direct=$DIRECT --size=16M --filename=corrupt \
    --verify=pattern >/dev/null 2>&1 || bad "write for the corruption test"
# block 1234 gets another block's contents (a misplaced write), block 2000 a flipped byte
dd if=corrupt of=corrupt bs=4096 skip=7 seek=1234 count=1 conv=notrunc status=none
printf '\x55' | dd of=corrupt bs=1 seek=$((2000 * 4096 + 100)) conv=notrunc status=none
sync corrupt
bench --name=check --rw=read --bs=4k --iodepth=4 --direct=$DIRECT --filename=corrupt \
    --verify=pattern >check.out 2>check.err
rc=$?
if [[ $rc -ne 0 ]] && grep -q "verify failed at offset $((1234 * 4096)) of corrupt: found the block written for offset $((7 * 4096))" check.err; then
    ok "misplaced block: exit $rc, $(grep -o 'verify failed.*' check.err | head -1)"
else
    bad "misplaced block not reported (rc=$rc): $(cat check.err); block 1234 starts:" \
        "$(od -A d -t x1 -j $((1234 * 4096)) -N 32 corrupt)"
fi
bench --name=w --rw=write --bs=4k --size=8M --filename=corrupt2 --verify=pattern >/dev/null 2>&1
printf '\x55' | dd of=corrupt2 bs=1 seek=$((1000 * 4096 + 100)) conv=notrunc status=none
sync corrupt2
bench --name=check --rw=randread --bs=4k --iodepth=1 --filename=corrupt2 --size=8M \
    --verify=pattern --time_based --runtime=20 >check2.out 2>check2.err
rc=$?
if [[ $rc -eq 1 ]] && grep -q "verify failed at offset $((1000 * 4096)) of corrupt2: data differs at byte 100 of the block (offset $((1000 * 4096 + 100)))" check2.err; then
    ok "flipped byte: exit 1, offset named"
else
    bad "flipped byte not reported (rc=$rc): $(cat check2.err)"
fi

# ---- scramble_buffers, mem, iodepth_batch_submit ----
distinct() { python3 -c 'import sys
d=open(sys.argv[1],"rb").read()
s=[d[i:i+512] for i in range(0,len(d),512)]
print(len(set(s)), len(s))' "$1"; }
bench --name=s --rw=write --bs=64k --iodepth=1 --direct=$DIRECT --size=4M --filename=scr \
    >/dev/null 2>scr.err || bad "scramble write: $(cat scr.err)"
read -r nd ns < <(distinct scr)
bench --name=s --rw=write --bs=64k --iodepth=1 --direct=$DIRECT --size=4M --filename=noscr \
    --scramble_buffers=0 >/dev/null 2>scr.err || bad "plain write: $(cat scr.err)"
read -r pd ps < <(distinct noscr)
[[ $nd -eq $ns && $pd -le 128 ]] &&
    ok "scramble_buffers: $nd distinct sectors of $ns (without: $pd of $ps)" ||
    bad "scramble_buffers: $nd distinct of $ns; without: $pd of $ps"
if bench --name=m --rw=randrw --bs=16k --iodepth=8 --iodepth_batch_submit=4 --mem=malloc \
        --direct=$DIRECT --size=8M --filename=memf --verify=pattern --output-format=json \
        >mem.json 2>mem.err; then
    [[ $(jget '.jobs[0]."job options".mem' mem.json) == malloc &&
       $(jget '.jobs[0]."job options".iodepth_batch_submit' mem.json) == 4 &&
       $(jget '.jobs[0].read.total_ios' mem.json) -gt 0 ]] &&
        ok "mem=malloc, iodepth_batch_submit=4: randrw verified" ||
        bad "mem/batch report: $(cat mem.json)"
else
    bad "mem=malloc iodepth_batch_submit=4: $(cat mem.err)"
fi

# ---- JSON: fio's field names ----
if bench --name=j1 --rw=randrw --rwmixread=70 --bs=4k --iodepth=8 --direct=$DIRECT --size=16M \
        --filename=data-json --runtime=1 --time_based --numjobs=2 --output-format=json \
        --plot=plot.svg >out.json 2>json.err; then
    fails=()
    [[ $(jget '."lsm-sync version"' out.json) == lsm-sync-* ]] || fails+=(version)
    [[ $(jget '.jobs | length' out.json 2>/dev/null || echo 2) == 2 ]] || fails+=(two-jobs)
    for d in read write; do
        for k in io_bytes bw_bytes bw iops runtime; do
            v=$(jget ".jobs[0].$d.$k" out.json)
            [[ $v =~ ^[0-9.]+$ ]] || fails+=("$d.$k=$v")
        done
        for p in 50.000000 90.000000 99.000000 99.900000 99.990000; do
            v=$(jget ".jobs[0].$d.clat_ns.percentile.\"$p\"" out.json)
            [[ $v =~ ^[0-9]+$ && $v -gt 0 ]] || fails+=("$d.p$p=$v")
        done
        mn=$(jget ".jobs[0].$d.clat_ns.min" out.json)
        mx=$(jget ".jobs[0].$d.clat_ns.max" out.json)
        p50=$(jget ".jobs[0].$d.clat_ns.percentile.\"50.000000\"" out.json)
        [[ $mn -le $p50 && $p50 -le $mx ]] || fails+=("$d: min $mn <= p50 $p50 <= max $mx")
    done
    rt=$(jget '.jobs[0].read.runtime' out.json)
    [[ $rt -ge 900 && $rt -le 3000 ]] || fails+=("runtime=$rt ms for runtime=1")
    rb=$(jget '.jobs[0].read.io_bytes' out.json)
    wb=$(jget '.jobs[0].write.io_bytes' out.json)
    [[ $rb -gt $wb ]] || fails+=("rwmixread=70 but read $rb <= write $wb bytes")
    for k in usr_cpu sys_cpu; do
        v=$(jget ".jobs[0].$k" out.json)
        [[ $v =~ ^[0-9.e-]+$ ]] || fails+=("$k=$v")
    done
    [[ $(jget '.groups[0].numjobs' out.json) == 2 ]] || fails+=(group)
    gb=$(jget '.groups[0].read.io_bytes' out.json)
    b0=$(jget '.jobs[0].read.io_bytes' out.json)
    b1=$(jget '.jobs[1].read.io_bytes' out.json)
    [[ $gb -eq $((b0 + b1)) ]] || fails+=("group read bytes $gb != $b0 + $b1")
    [[ ${#fails[@]} -eq 0 ]] && ok "JSON fields (randrw, numjobs=2, group total)" ||
        bad "JSON: ${fails[*]}"
    if command -v python3 >/dev/null; then
        python3 -c 'import sys, xml.etree.ElementTree as E
r = E.parse(sys.argv[1]).getroot()
lines = [e for e in r.iter() if e.tag.endswith("polyline")]
texts = " ".join(e.text or "" for e in r.iter() if e.tag.endswith("text"))
assert len(lines) >= 3, "polylines"
assert "j1" in texts and "time (s)" in texts and "MiB/s" in texts, texts' plot.svg &&
            ok "plot.svg is well-formed SVG with labelled axes" || bad "plot.svg"
    else
        [[ -s plot.svg ]] && ok "plot.svg written" || bad "plot.svg missing"
    fi
else
    bad "JSON run failed: $(cat json.err)"
fi

# ---- rw=copy: the destination ends up identical ----
if bench --name=cp --rw=copy --bs=1M --iodepth=4 --direct=$DIRECT --size=16M \
        --filename=copy-src:copy-dst >copy.out 2>copy.err && cmp -s copy-src copy-dst; then
    ok "rw=copy: destination identical to source"
else
    bad "rw=copy: $(cat copy.err)"
fi

# ---- SIGINT: report of what was done, exit 1 ----
"$LSM_SYNC" bench --eta=never --name=long --rw=randread --bs=4k --iodepth=4 --size=16M --filename=data-json \
    --time_based --runtime=60 --output-format=json >int.json 2>int.err &
pid=$!
sleep 1.5
kill -INT $pid
wait $pid
rc=$?
if [[ $rc -eq 1 && $(jget '.jobs[0].interrupted' int.json) == true &&
      $(jget '.jobs[0].read.total_ios' int.json) -gt 0 ]] && grep -q interrupted int.err; then
    ok "SIGINT: report printed, exit 1"
else
    bad "SIGINT: rc=$rc $(cat int.err)"
fi

# ---- an I/O error (io.h's LSM_IO_FAULT injector): offset named, exit 1 ----
LSM_IO_FAULT=read:5:EIO "$LSM_SYNC" bench --eta=never --name=eio --rw=read --bs=4k \
    --iodepth=4 --filename=data-json >eio.out 2>eio.err
rc=$?
if [[ $rc -eq 1 ]] && grep -q "read of 4096 bytes at offset [0-9]* of data-json: Input/output error" eio.err; then
    ok "I/O error: exit 1, $(tail -1 eio.err)"
else
    bad "I/O error: rc=$rc $(cat eio.err)"
fi

# ---- bad input: exit 2, naming the line and the key ----
cat >job.fio <<'JOB'
[global]
ioengine=psync
bs=4k

; the job
[j1]
blocksize2=8k
JOB
bench job.fio >/dev/null 2>bad.err
rc=$?
[[ $rc -eq 2 ]] && grep -qx "lsm-sync: bench: job.fio:7: unknown key 'blocksize2'" bad.err &&
    ok "unknown key: exit 2, $(cat bad.err)" || bad "unknown key: rc=$rc $(cat bad.err)"
printf '[j]\nfilename=x\nbs=4q\n' >bad2.fio
bench bad2.fio >/dev/null 2>bad2.err
rc=$?
[[ $rc -eq 2 ]] && grep -q "bad2.fio:3: bad value for 'bs': '4q'" bad2.err &&
    ok "bad size: exit 2" || bad "bad size: rc=$rc $(cat bad2.err)"
bench --name=x --filename=x --iodepth=zero >/dev/null 2>bad3.err
rc=$?
[[ $rc -eq 2 ]] && grep -q "iodepth" bad3.err && ok "bad option: exit 2" ||
    bad "bad option: rc=$rc $(cat bad3.err)"
bench missing.fio >/dev/null 2>bad4.err
rc=$?
[[ $rc -ne 0 ]] && grep -q "missing.fio" bad4.err && ok "missing job file: exit $rc" ||
    bad "missing job file: rc=$rc"

# ---- a job file run ----
cat >good.fio <<JOB
# two jobs, one after the other
[global]
bs=64k
size=8M
direct=$DIRECT
filename=data-jobfile
[seq-write]
rw=write
iodepth=4
[rand-read]
rw=randread
iodepth=8
stonewall
JOB
if bench good.fio >good.out 2>good.err && grep -q '^seq-write: (groupid=0' good.out &&
        grep -q '^rand-read: (groupid=1' good.out && grep -q 'Run status group 1' good.out; then
    ok "job file with two jobs"
else
    bad "job file: $(cat good.err good.out)"
fi

# ---- a block device that is mounted or held: refused before any write ----
# (fio's allow_mounted_write).  A loop device with ext4 mounted on it.
mounted_device_case() {
    local why=
    if [[ $(id -u) != 0 ]]; then why="not root"
    else
        for c in losetup mkfs.ext4 mount umount mountpoint e2fsck python3; do
            command -v $c >/dev/null || { why="'$c' not found"; break; }
        done
    fi
    if [[ -z $why ]]; then
        truncate -s 64M "$T/fs.img"
        if ! LOOPDEV=$(losetup -f --show "$T/fs.img" 2>"$T/losetup.err"); then
            LOOPDEV=
            why="losetup: $(head -1 "$T/losetup.err")"
        elif ! mkfs.ext4 -q -F "$LOOPDEV" 2>"$T/mkfs.err"; then
            why="mkfs.ext4: $(head -1 "$T/mkfs.err")"
        else
            MNT=$T/mnt
            mkdir -p "$MNT"
            if ! mount "$LOOPDEV" "$MNT" 2>"$T/mount.err"; then
                MNT=
                why="mount: $(head -1 "$T/mount.err")"
            fi
        fi
    fi
    if [[ -n $why ]]; then
        echo "skip - mounted block device: $why"
        return 0
    fi
    head -c 1M /dev/urandom >"$MNT/keep"
    local sum
    sum=$(sha256sum <"$MNT/keep")
    sync
    ln -s "$LOOPDEV" "$T/dev-link"

    # refused: write, randrw, copy into it, through a symlink, from a job file
    local name args rc
    for name in write randwrite randrw copy link jobfile; do
        case $name in
        copy) args=(--name=$name --rw=copy --bs=4k --size=1M --src=data-json --dst="$LOOPDEV") ;;
        link) args=(--name=$name --rw=write --bs=4k --size=1M --filename="$T/dev-link") ;;
        jobfile) printf '[jobfile]\nrw=write\nbs=4k\nsize=1M\nfilename=%s\n' "$LOOPDEV" >mnt.fio
                 args=(mnt.fio) ;;
        *) args=(--name=$name --rw=$name --bs=4k --size=1M --filename="$LOOPDEV") ;;
        esac
        bench "${args[@]}" >mnt-$name.out 2>mnt-$name.err
        rc=$?
        if [[ $rc -eq 1 && $(wc -l <mnt-$name.err) -eq 1 ]] &&
           grep -q "is mounted or held by another program" mnt-$name.err &&
           grep -qF -e "$LOOPDEV" -e "$T/dev-link" mnt-$name.err; then
            ok "mounted device, $name: refused, $(cat mnt-$name.err)"
        else
            bad "mounted device, $name: rc=$rc, want 1 and one line: $(cat mnt-$name.err)"
        fi
    done
    # reading is never refused; allow_mounted_write=1 is accepted (read job:
    # nothing of the mounted file system is destroyed)
    for args in "" "--allow_mounted_write=1"; do
        if bench --name=r --rw=read --bs=4k --size=1M --filename="$LOOPDEV" $args \
                >mnt-r.out 2>mnt-r.err && grep -q "READ: bw=" mnt-r.out; then
            ok "mounted device, read job ${args:-without allow_mounted_write}: accepted"
        else
            bad "mounted device, read job $args: $(cat mnt-r.err)"
        fi
    done
    # the file system is intact
    if umount "$MNT" && e2fsck -fn "$LOOPDEV" >fsck.out 2>&1 && mount "$LOOPDEV" "$MNT" &&
       [[ $(sha256sum <"$MNT/keep") == "$sum" ]] && umount "$MNT"; then
        ok "mounted device: file system clean and its file unchanged after the refusals"
    else
        bad "mounted device: file system damaged: $(tail -5 fsck.out)"
    fi

    # held by another program (O_EXCL): refused; allowed with the key, and
    # then really written (the file system on it is not needed any more)
    python3 -c 'import os, sys, time
os.open(sys.argv[1], os.O_RDONLY | os.O_EXCL)
open(sys.argv[2], "w").close()
time.sleep(60)' "$LOOPDEV" "$T/held" &
    HOLDER=$!
    for _ in $(seq 100); do [[ -e $T/held ]] && break; sleep 0.05; done
    bench --name=w --rw=write --bs=4k --size=1M --filename="$LOOPDEV" >held.out 2>held.err
    rc=$?
    [[ $rc -eq 1 ]] && grep -q "is mounted or held" held.err &&
        ok "held device: refused" || bad "held device: rc=$rc $(cat held.err)"
    printf '[w]\nrw=write\nbs=4k\nsize=1M\nverify=pattern\nallow_mounted_write=1\nfilename=%s\n' \
        "$LOOPDEV" >allow.fio
    if bench allow.fio >allow.out 2>allow.err && grep -q "verify       : 256 blocks checked" allow.out; then
        ok "held device, allow_mounted_write=1 in a job file: written and verified"
    else
        bad "held device, allow_mounted_write=1: $(cat allow.err)"
    fi
    kill $HOLDER && wait $HOLDER 2>/dev/null
    HOLDER=

    # while a job writes the device, the device stays claimed
    "$LSM_SYNC" bench --eta=never --name=w --rw=write --bs=4k --size=1M --filename="$LOOPDEV" \
        --time_based --runtime=2 >claim.out 2>claim.err &
    local pid=$!
    sleep 0.7
    local excl
    excl=$(python3 -c 'import os, sys
try:
    os.open(sys.argv[1], os.O_RDONLY | os.O_EXCL)
    print("opened")
except OSError as e:
    print(e.strerror)' "$LOOPDEV")
    wait $pid
    rc=$?
    [[ $rc -eq 0 && $excl == "Device or resource busy" ]] &&
        ok "a writing job holds its device: an exclusive open during it gets EBUSY" ||
        bad "claim during the job: rc=$rc, exclusive open: $excl $(cat claim.err)"
}
mounted_device_case

exit $FAILED
