#!/bin/bash
# Regenerate the seed corpus of the fuzz targets: small qcow2 and raw images
# covering the format's features, made with qemu-img and qemu-io, and the texts
# the other targets parse (journals, service requests, job files).
#   bash tests/fuzz/gen-corpus.sh [OUTDIR]     (default tests/fuzz/corpus)
# Images stay small (512 B - 4 KiB clusters, small virtual sizes) so that the
# fuzzer mutates metadata, not padding: every file is under 64 KiB except the
# extended-L2 one (its 16 KiB minimum cluster size makes it 96 KiB; the
# fuzzer runs with -max_len=131072).  The outputs are committed; rerun this
# after changing it and commit the result.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/corpus}
for c in qemu-img qemu-io; do
    command -v "$c" >/dev/null || { echo "gen-corpus: $c not found" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

img() {  # img NAME SIZE OPTIONS [qemu-io commands...]
    local name=$1 size=$2 opts=$3
    shift 3
    qemu-img create -q -f qcow2 ${opts:+-o "$opts"} "$name" "$size"
    local args=() c
    for c in "$@"; do args+=(-c "$c"); done
    ((${#args[@]} == 0)) || qemu-io -f qcow2 "${args[@]}" "$name" >/dev/null
}

img v2-512.qcow2 64k compat=0.10,cluster_size=512 \
    "write -P 1 0 1k" "write -P 2 8k 512" "write -z 16k 1k" "discard 0 512"
img v3-512.qcow2 64k cluster_size=512 \
    "write -P 1 0 1k" "write -z 4k 1k" "write -z -u 8k 512" "write -P 3 12k 2k" "discard 12k 512"
img v3-4k.qcow2 1M cluster_size=4096 \
    "write -P 1 0 8k" "write -z 64k 4k" "write -P 2 1020k 4k"
img v3-4k-odd-size.qcow2 100000 cluster_size=4096 "write -P 1 98304 1024"
img zero-clusters.qcow2 256k cluster_size=4096 \
    "write -P 1 0 16k" "write -z 0 8k" "write -z -u 8k 4k" "write -z 64k 16k"
img zlib.qcow2 256k cluster_size=4096 \
    "write -c -P 1 0 8k" "write -P 2 8k 4k" "write -c -z 16k 4k"
img zlib-512.qcow2 32k compat=0.10,cluster_size=512 "write -c -P 1 0 2k"
if qemu-img create -q -f qcow2 -o compression_type=zstd probe.qcow2 1M 2>/dev/null; then
    img zstd.qcow2 256k compression_type=zstd,cluster_size=4096 \
        "write -c -P 1 0 8k" "write -P 2 8k 4k"
fi
img refcount-1.qcow2 64k refcount_bits=1,cluster_size=512 "write -P 1 0 2k"
img refcount-64.qcow2 64k refcount_bits=64,cluster_size=512 "write -P 1 0 2k"
img lazy-refcounts.qcow2 64k lazy_refcounts=on,cluster_size=512 "write -P 1 0 1k"
img prealloc-metadata.qcow2 32k preallocation=metadata,cluster_size=512 "write -P 1 1k 1k"
img snapshot.qcow2 32k cluster_size=512 "write -P 1 0 2k"
qemu-img snapshot -c first snapshot.qcow2
qemu-io -f qcow2 -c "write -P 2 512 1k" -c "discard 1536 512" snapshot.qcow2 >/dev/null
qemu-img snapshot -c second snapshot.qcow2
img el2.qcow2 64k extended_l2=on,cluster_size=16k \
    "write -P 1 0 1k" "write -z 2k 1k" "write -P 2 8k 512" "write -z -u 20k 2k"
img bitmap.qcow2 64k cluster_size=512 "write -P 1 0 1k"
qemu-img bitmap --add bitmap.qcow2 b0 2>/dev/null || rm -f bitmap.qcow2
# Backing names: a missing file, the fuzz target's own input name (a loop),
# a relative path upwards, and a json: name.
qemu-img create -q -u -f qcow2 -o cluster_size=512 -b base.raw -F raw backing-missing.qcow2 64k
# A version 2 layer with a backing name and format (what the writer opens
# for copy -n into old compat=0.10 volumes).
qemu-img create -q -u -f qcow2 -o compat=0.10,cluster_size=512 -b base.raw -F raw writer-v2-backing.qcow2 64k
truncate -s 64k v2base.raw
qemu-img rebase -q -u -b v2base.raw -F raw writer-v2-backing.qcow2
qemu-io -f qcow2 -c "write -P 5 1k 1k" writer-v2-backing.qcow2 >/dev/null
qemu-img rebase -q -u -b base.raw -F raw writer-v2-backing.qcow2
rm v2base.raw
qemu-img create -q -u -f qcow2 -o cluster_size=512 -b input -F qcow2 backing-self.qcow2 64k
qemu-img create -q -u -f qcow2 -o cluster_size=512 -b ../x/base.qcow2 -F qcow2 backing-up.qcow2 64k
qemu-img create -q -u -f qcow2 -o cluster_size=512 \
    -b 'json:{"driver":"raw","file":{"driver":"file","filename":"/dev/null"}}' -F raw backing-json.qcow2 64k
qemu-img create -q -f raw data.raw 64k
img data-file.qcow2 64k data_file=data.raw,cluster_size=512 "write -P 1 0 1k"
rm -f data.raw
# Writer seeds (fuzz-writer): an empty image, one whose header an
# interrupted lsm-sync writer marked incomplete (incompatible bit 63), and
# a header whose backing name lies past the first cluster (the writer's old
# parser overflowed on it).
img writer-empty.qcow2 64k cluster_size=512
img writer-incomplete.qcow2 64k cluster_size=512 "write -P 1 0 2k" "write -z 4k 1k"
printf '\x80' | dd of=writer-incomplete.qcow2 bs=1 seek=72 conv=notrunc status=none
img writer-bad-backing.qcow2 64k cluster_size=512 "write -P 1 0 1k"
# backing_file_offset 0x1f0, backing_file_size 1000
printf '\0\0\0\0\0\0\x01\xf0\0\0\x03\xe8' | dd of=writer-bad-backing.qcow2 bs=1 seek=8 conv=notrunc status=none
# Journal seeds (fuzz-journal): a copy journal as lsm-sync writes it, with
# "reached" lines and a torn last line, and one whose done ranges overlap.
j='{"lsm-sync-journal":1,"size":1048576,"granule":65536,"frontier":262144,'
j+='"options":{"format":"qcow2","size":1048576,"granule":65536,"cluster_size":65536,'
j+='"one_layer":false,"backing":null,"backing_format":null,"reads_zero":true},'
j+='"files":[{"role":"source","path":"src.qcow2","dev":"fe00","ino":"a7236f","size":196608,'
j+='"mtime_ns":1796172781021212772,"hash":"e7e1a335ceac54f9"},{"role":"destination",'
j+='"path":"d.qcow2","dev":"fe00","ino":"a72375","size":0,"hash":"43924d091a30045b"}],'
j+='"done":[[0,4],[6,2]]}'
printf '%s\nreached 0000000000050000 96e25839\nreached 00000000000' "$j" >journal-valid.json
printf '%s\n' "${j/\[6,2\]/[3,2]}" >journal-overlap.json
# Raw inputs.
head -c 4096 /dev/urandom >raw-random.img
printf 'QFI\xfb\0\0\0\3' >qfi-header-only.img
: >empty.img
# Formats we refuse by name (formats/image.c, lsm_probe_format): a VMDK text
# descriptor, a VHDX magic and a DMG trailer, for the fuzzer to mutate near
# the probe's tests.
printf '# Disk DescriptorFile\r\n  \r\nversion=1\r\nCID=fffffffe\r\n' >vmdk-descriptor.img
{ printf 'vhdxfile'; head -c 1016 /dev/zero; } >vhdx-magic.img
{ head -c 512 /dev/zero; printf 'koly\0\0\0\4\0\0\2\0'; head -c 500 /dev/zero; } >dmg-trailer.img
rm -f probe.qcow2
# The worker service's parsers (fuzz-serve): a request, a task record, a
# generation file.
printf '%s\n' '{"jsonrpc":"2.0","id":1,"method":"syncImageData","params":{"source":"/srv/top.qcow2","destination":"/dst/top.qcow2","syncType":"ALL","format":"qcow2","bandwidth":1048576,"create":true,"taskId":"s-1"}}' >serve-request.json
printf '%s\n' '{"version":1,"taskId":"kill-new","method":"copyVolume","params":{"source":"/srv/a.qcow2","sourceFormat":"qcow2","destination":"/srv/b.raw","destinationFormat":"raw","bandwidth":50331648,"taskId":"kill-new"},"state":"running","created":1796173507,"started":1796173507,"finished":0,"runs":1,"bandwidth":50331648,"error":0,"message":"","createdFile":{"dev":2049,"ino":1835013,"btime_ns":1796173507123456789}}' >serve-record.json
printf '7\n' >serve-generation.txt
# Job files (fuzz-jobfile): a chain job as docs/chains.md shows it, and an
# fio job file with a global section, two jobs and the keys fio users bring.
cat >jobfile-chain.json <<'JOB'
{
  "volumes": [
    { "source":      { "path": "/rhev/sd1/img/leaf.qcow2", "format": "qcow2" },
      "destination": { "path": "/dev/vg2/leaf",  "format": "qcow2", "type": "block" } },
    { "source":      { "path": "/rhev/sd1/img/base.raw",   "format": "raw" },
      "destination": { "path": "/srv/d/base.raw",  "format": "raw",   "type": "file" } }
  ]
}
JOB
cat >jobfile-fio.fio <<'JOB'
; two sections, the second after the first
[global]
ioengine=io_uring
direct=1
size=4M
bs=4k
runtime=1
time_based
ramp_time=100ms
description="a job"

[first]
rw=randread
verify=md5
filename=a.dat
iodepth=16
numjobs=2
norandommap
randrepeat=0
group_reporting

[second]
stonewall
new_group
rw=write
filename=b.dat
bssplit=4k/50:64k/50
rate_iops=100
fsync=8
end_fsync=1
JOB
# migrate's journal (fuzz-migrate-journal): two disks, one block and one
# file, as a run killed in the sync phase leaves it.
printf '%s\n' '{"version":1,"domain":"vm1","uri":"qemu:///system","run":"20261203T120000-4242","phase":"sync","committed":false,"dst_kind":"block","dst_domain":"/dev/vg1","disks":[{"disk":"vda","old_leaf":"/dev/vg0/leaf","overlay":"/dev/vg0/leaf.mig-20261203T120000-4242","overlay_block":true,"overlay_made":true,"destination":["/dev/vg1/leaf.mig-20261203T120000-4242","/dev/vg1/mid","/dev/vg1/base"],"dst_planned":true,"synced":false,"sync_writes":false,"pivoted":false},{"disk":"vdb","old_leaf":"/srv/a/b.qcow2","overlay":"/srv/a/b.qcow2.mig-x","overlay_block":false,"overlay_made":false,"destination":[],"dst_planned":false,"synced":true,"sync_writes":true,"pivoted":true}]}' >migrate-journal.json

mkdir -p "$out"
rm -f "$out"/*
for f in *; do
    size=$(stat -c %s "$f")
    if ((size > 98304)); then
        echo "gen-corpus: $f is $size bytes, too big for a seed" >&2
        exit 1
    fi
    cp "$f" "$out/$f"
done
echo "gen-corpus: $(ls "$out" | wc -l) files in $out ($(du -sk "$out" | cut -f1) KiB)"
