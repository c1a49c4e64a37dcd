#!/bin/bash
# copy -c: compressed qcow2 output (formats/qcow2/qcow2-writer.c, docs/copy.md).
# For clusters of 64K and 2M, zlib and zstd, from a qcow2 with compressible
# data, random data, zero clusters, holes and a partial last cluster, from a
# raw file of random data (nothing compresses: data clusters) and from a
# sparse 4G image:
#  - qemu-img check: no errors, no leaks, and the compressed clusters counted;
#  - qemu-img compare: identical to the source;
#  - qemu-img map and info agree with lsm-sync map and info on the output;
#  - the file is smaller than the uncompressed copy (random data: no larger
#    than it but for a cluster);
#  - qemu-img convert -c's output and ours are read by each other's reader
#    (lsm-sync copy to raw, qemu-img compare) and compare equal.
# The sources are checksummed before and after.
. "$(dirname "$0")/lib.sh"
need_cmd qemu-img qemu-io python3 sha256sum

L=$LSM_SYNC
sum() { sha256sum "$@" | awk '{print $1}' | tr '\n' ' '; }

# Compressible data: text repeated with variations (about 1:4 with zlib).
python3 - <<'EOF'
import random
r = random.Random(7)
words = [b"migration", b"qcow2", b"cluster", b"refcount", b"volume", b"lsm-sync", b"block", b"\n"]
out = bytearray()
while len(out) < 24 << 20:
    out += b" ".join(r.choice(words) for _ in range(16))
open("text.bin", "wb").write(out[:24 << 20])
EOF
head -c 8M /dev/urandom >rand8.bin
# mixed.qcow2: 64M + 1K (a partial last cluster holding data), text,
# random data, a zero-cluster range, holes.
qemu-img create -q -f qcow2 mixed.qcow2 $((64 * 1024 * 1024 + 1024))
qemu-io -f qcow2 -c 'write -s text.bin 0 24M' -c 'write -s rand8.bin 30M 8M' -c 'write -z 40M 4M' \
    -c 'write -P 0x5c 50M 3M' -c 'write -P 0x61 64M 1K' mixed.qcow2 >/dev/null
head -c 16M /dev/urandom >random.raw
qemu-img create -q -f qcow2 sparse.qcow2 4G
qemu-io -f qcow2 -c 'write -s text.bin 1G 1M' -c 'write -P 0x33 3G 64k' sparse.qcow2 >/dev/null
src_sums=$(sum mixed.qcow2 random.raw sparse.qcow2)

# info_same A B: the qemu-img info fields of A as lsm-sync info prints them for B.
info_same() {
    python3 - <(qemu-img info --output=json "$1") <("$L" info --output=json "$2") <<'EOF'
import json, sys
q, l = (json.load(open(f)) for f in sys.argv[1:3])
for k in ("format", "virtual-size", "cluster-size", "dirty-flag"):
    assert q.get(k) == l.get(k), "%s: qemu-img %r, lsm-sync %r" % (k, q.get(k), l.get(k))
qd, ld = q["format-specific"]["data"], l["format-specific"]["data"]
for k in ld:
    assert qd.get(k) == ld[k], "format-specific %s: qemu-img %r, lsm-sync %r" % (k, qd.get(k), ld[k])
EOF
}

# compressed_clusters IMG: qemu-img check's count.
compressed_clusters() {
    qemu-img check --output=json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("compressed-clusters", 0))'
}

# check_out CASE SRC DST [UNCOMPRESSED]: the checks every output gets.
check_out() {
    local case=$1 src=$2 dst=$3 plain=${4:-} why="" d
    qemu-img check -q "$dst" >/dev/null 2>&1 || why+="qemu-img check: $(qemu-img check "$dst" 2>&1 | head -3 | tr '\n' ' '); "
    qemu-img compare -q "$src" "$dst" 2>/dev/null || why+="differs from $src (qemu-img compare); "
    d=$(diff <(qemu-img map --output=json "$dst") <("$L" map --output=json "$dst")) ||
        why+="lsm-sync map differs from qemu-img map: $(echo "$d" | head -4 | tr '\n' ' '); "
    d=$(info_same "$dst" "$dst" 2>&1) || why+="info: ${d##*Error: }; "
    if [[ -n $plain ]]; then
        local sz psz
        sz=$(stat -c %s "$dst")
        psz=$(stat -c %s "$plain")
        ((sz < psz)) || why+="not smaller than the uncompressed copy ($sz >= $psz bytes); "
    fi
    if [[ -n $why ]]; then fail "$case" "$why"; else pass "$case"; fi
}

lsm_zstd=1
"$L" copy -q -c -O qcow2 -o compression_type=zstd random.raw probe.qcow2 2>probe.err || {
    grep -q "without zstd" probe.err || die "zstd probe: $(cat probe.err)"
    lsm_zstd=0
}
rm -f probe.qcow2

for cs in 64k 2M; do
    "$L" copy -q -O qcow2 -o cluster_size=$cs mixed.qcow2 "plain-$cs.qcow2"
    for type in zlib zstd; do
        name="$cs-$type"
        if [[ $type == zstd ]] && ! qemu_has_zstd; then skip_case "$name" "this qemu-img has no zstd"; continue; fi
        if [[ $type == zstd ]] && ((lsm_zstd == 0)); then skip_case "$name" "lsm-sync built without zstd"; continue; fi
        o="cluster_size=$cs,compression_type=$type"
        "$L" copy -q -c -O qcow2 -o "$o" mixed.qcow2 "l-$name.qcow2" 2>err.log ||
            { fail "$name" "copy -c failed: $(cat err.log)"; continue; }
        check_out "$name" mixed.qcow2 "l-$name.qcow2" "plain-$cs.qcow2"
        n=$(compressed_clusters "l-$name.qcow2")
        # text, the 0x5c pattern and the partial last cluster compress
        ((n > 0)) && pass "$name-compressed-count" || fail "$name-compressed-count" "$n compressed clusters"

        # qemu-img's -c output and ours: each reader reads the other's
        qemu-img convert -c -O qcow2 -o "$o" mixed.qcow2 "q-$name.qcow2"
        "$L" copy -q -O raw "q-$name.qcow2" "q-$name.raw" 2>err.log &&
            qemu-img compare -q -F raw mixed.qcow2 "q-$name.raw" 2>/dev/null &&
            "$L" compare "q-$name.qcow2" "l-$name.qcow2" >/dev/null 2>err.log &&
            qemu-img compare -q "q-$name.qcow2" "l-$name.qcow2" 2>/dev/null &&
            pass "$name-cross-read" || fail "$name-cross-read" "$(cat err.log; qemu-img compare "q-$name.qcow2" "l-$name.qcow2" 2>&1)"
        # the same size as qemu-img's, within a cluster per 64 clusters
        # (packing and the sparse detection unit may differ)
        qs=$(stat -c %s "q-$name.qcow2") ls=$(stat -c %s "l-$name.qcow2")
        csb=$(numfmt --from=iec "${cs^^}")
        ((ls <= qs + qs / 64 + csb)) && pass "$name-size" ||
            fail "$name-size" "lsm-sync's output $ls bytes, qemu-img's $qs"
        log "$name: plain $(stat -c %s "plain-$cs.qcow2"), lsm-sync -c $ls, qemu-img -c $qs bytes, $n compressed clusters"
        rm -f "q-$name.raw"
    done
done

# Random data: nothing compresses below a cluster, every cluster is stored as data.
"$L" copy -q -O qcow2 random.raw plain-random.qcow2
if "$L" copy -q -c -O qcow2 random.raw l-random.qcow2 2>err.log; then
    check_out random random.raw l-random.qcow2
    n=$(compressed_clusters l-random.qcow2)
    ls=$(stat -c %s l-random.qcow2) ps=$(stat -c %s plain-random.qcow2)
    ((n == 0 && ls <= ps + 65536)) && pass random-stored ||
        fail random-stored "$n compressed clusters, $ls bytes (uncompressed copy $ps)"
else
    fail random "copy -c failed: $(cat err.log)"
fi

# Sparse: 4G with 1M + 64K of data stays small, holes stay holes.
if "$L" copy -q -c -O qcow2 sparse.qcow2 l-sparse.qcow2 2>err.log; then
    check_out sparse sparse.qcow2 l-sparse.qcow2
    ls=$(stat -c %s l-sparse.qcow2)
    ((ls < 2 * 1024 * 1024)) && pass sparse-small || fail sparse-small "$ls bytes"
else
    fail sparse "copy -c failed: $(cat err.log)"
fi

# Version 2 (compat=0.10) and a backing file (zero clusters as the zero flag).
if "$L" copy -q -c -O qcow2 -o compat=0.10 mixed.qcow2 l-v2.qcow2 2>err.log; then
    check_out compat-0.10 mixed.qcow2 l-v2.qcow2
else
    fail compat-0.10 "copy -c failed: $(cat err.log)"
fi

# Refusals: one message (containing MSG), non-zero, no destination left.
refuse() {
    local case=$1 msg=$2 dst=$3
    shift 3
    set +e
    "$L" copy "$@" "$dst" >/dev/null 2>err.log
    local rc=$?
    set -e
    if ((rc == 0)); then fail "$case" "accepted"
    elif [[ -e $dst ]]; then fail "$case" "left $dst"
    elif [[ $(grep -c '^lsm-sync' err.log) != 1 ]] || ! grep -qF -- "$msg" err.log; then fail "$case" "$(cat err.log)"
    else pass "$case"; fi
}
refuse refuse-raw "Compression not supported for this file format" r1.raw -c -O raw mixed.qcow2
refuse refuse-journal "-c with --journal" r2.qcow2 -c -O qcow2 --journal=j.json mixed.qcow2
refuse refuse-prealloc "Compression and preallocation not supported at the same time" r3.qcow2 \
    -c -O qcow2 -o preallocation=metadata mixed.qcow2
refuse refuse-physical "not with -c" r4.qcow2 -c -O qcow2 --physical mixed.qcow2

[[ $(sum mixed.qcow2 random.raw sparse.qcow2) == "$src_sums" ]] && pass sources-unchanged ||
    fail sources-unchanged "a source changed"
finish
