#!/bin/bash
# `lsm-sync bench` on NBD exports (docs/bench-harness.md, "NBD exports"),
# against nbdkit: read, write, randread and randwrite of 32 MiB in 64 KiB
# blocks at iodepth 16 into nbdkit memory (exit 0, ioengine "nbd", every
# request counted, bytes and bandwidth in the JSON result, latencies
# positive); write with verify=pattern reads every block back; the
# requests really are in flight together (nbdkit's delay filter: 20 ms per
# read, 64 reads at iodepth 16 take well under half the time of iodepth
# 1); fio's spelling (ioengine=nbd, uri=) in a job file; bad jobs refused
# with one line (ioengine=nbd on a file, verify on a read-only job, size
# past the export, a socket nobody listens on).
. "$(dirname "$0")/../tests/functional/lib.sh"
need_cmd nbdkit jq
. "$TESTS_DIR/nbd-netns-lib.sh"   # the server helpers

"$LSM_SYNC" --help | grep -q '^  bench ' || skip "lsm-sync was built without the bench command"
rc=0
"$LSM_SYNC" bench --name=p --filename="$(uri none.sock)" --rw=read 2>probe.log || rc=$?
if grep -q "built without libnbd" probe.log; then
    skip "lsm-sync was built without libnbd"
fi
((rc == 1)) || die "a socket nobody listens on: exit $rc, want 1: $(cat probe.log)"
(($(wc -l <probe.log) == 1)) || die "a socket nobody listens on: not one line: $(cat probe.log)"
trap 'stop_servers; cleanup' EXIT

nbdkit_on "$T/m.sock" memory 64M
M=$(uri m.sock)
B=(--bs=64k --iodepth=16 --size=32m --output-format=json)

# 1. the four patterns
for rw in write read randwrite randread; do
    "$LSM_SYNC" bench --name="$rw" --filename="$M" --rw="$rw" "${B[@]}" >"$rw.json" 2>"$rw.err" ||
        die "$rw: exit $?: $(cat "$rw.err")"
    dir=read
    [[ $rw == *write ]] && dir=write
    j=".jobs[0]"
    [[ $(jq -r "$j.ioengine" "$rw.json") == nbd ]] || die "$rw: ioengine is not nbd"
    [[ $(jq -r "$j.error" "$rw.json") == 0 ]] || die "$rw: error $(jq "$j.error" "$rw.json")"
    ios=$(jq "$j.$dir.total_ios" "$rw.json")
    bytes=$(jq "$j.$dir.io_bytes" "$rw.json")
    bw=$(jq "$j.$dir.bw_bytes" "$rw.json")
    clat=$(jq "$j.$dir.clat_ns.mean" "$rw.json")
    ((ios == 512)) || die "$rw: $ios requests, want 512"
    ((bytes == 32 * 1048576)) || die "$rw: $bytes bytes, want 32 MiB"
    [[ $(jq "$bw > 0 and $clat > 0" -n) == true ]] || die "$rw: bandwidth $bw, clat $clat"
    log "$rw: $((bw / 1048576)) MiB/s, $(jq "$j.$dir.iops | floor" "$rw.json") IOPS," \
        "clat mean $(jq -n "$clat / 1000 | floor") us"
done

# 2. verify=pattern: every block written is read back and checked
"$LSM_SYNC" bench --name=v --filename="$M" --rw=write --verify=pattern "${B[@]}" >v.json 2>v.err ||
    die "verify: exit $?: $(cat v.err)"
(($(jq '.jobs[0].verified_blocks' v.json) == 512)) ||
    die "verify: $(jq '.jobs[0].verified_blocks' v.json) blocks verified"

# 3. requests in flight together: 20 ms per read
nbdkit_on "$T/d.sock" --filter=delay memory 64M rdelay=20ms
for depth in 1 16; do
    "$LSM_SYNC" bench --name=d --filename="$(uri d.sock)" --rw=randread --bs=64k \
        --iodepth=$depth --size=4m --output-format=json >d$depth.json 2>d.err ||
        die "delay, iodepth=$depth: exit $?: $(cat d.err)"
    (($(jq '.jobs[0].read.total_ios' d$depth.json) == 64)) || die "delay, iodepth=$depth: not 64 reads"
done
ms1=$(jq '.jobs[0].job_runtime' d1.json)
ms16=$(jq '.jobs[0].job_runtime' d16.json)
((ms1 >= 1200)) || die "iodepth=1: 64 reads of 20 ms in $ms1 ms"
((ms16 * 2 < ms1)) || die "iodepth=16 took $ms16 ms, iodepth=1 $ms1 ms: not in flight together"
log "delay 20 ms: 64 reads in $ms1 ms at iodepth 1, $ms16 ms at iodepth 16"

# 4. fio's spelling in a job file
cat >nbd.fio <<EOF
[global]
ioengine=nbd
uri=$M
bs=64k
iodepth=8
size=16m
[seqwrite]
rw=write
[seqread]
stonewall
rw=read
EOF
"$LSM_SYNC" bench --output-format=json nbd.fio >f.json 2>f.err || die "job file: exit $?: $(cat f.err)"
[[ $(jq -c '[.jobs[] | [.jobname, .ioengine, .write.total_ios, .read.total_ios]]' f.json) == \
   '[["seqwrite","nbd",256,0],["seqread","nbd",0,256]]' ]] ||
    die "job file: $(jq -c '[.jobs[] | [.jobname, .ioengine, .write.total_ios, .read.total_ios]]' f.json)"

# 5. bad jobs: one line each
bad() {
    local want=$1 what=$2; shift 2
    local rc=0
    "$LSM_SYNC" bench "$@" 2>bad.err >/dev/null || rc=$?
    ((rc == want)) || die "$what: exit $rc, want $want: $(cat bad.err)"
    (($(wc -l <bad.err) == 1)) || die "$what: not one line: $(cat bad.err)"
    log "$what: $(cat bad.err)"
}
bad 2 "ioengine=nbd on a file" --name=x --ioengine=nbd --filename="$T/x.raw" --rw=read
bad 2 "verify on a read-only job" --name=x --filename="$M" --rw=read --verify=pattern
bad 2 "rw=copy with an export" --name=x --rw=copy --src="$M" --dst="$T/y.raw"
bad 1 "size past the export" --name=x --filename="$M" --rw=read --size=1g
log "ok"
