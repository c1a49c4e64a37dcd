#!/bin/bash
# `lsm-sync checksum` against a reference written here in Python (hashlib)
# from the construction in docs/checksum.md, computed over `qemu-img convert
# -O raw` of each image: raw sparse and full, qcow2 sparse and fragmented
# (host order unlike guest order, zero clusters, discards, compressed
# clusters), a 3-layer chain, sizes that are not a multiple of the block
# size, empty images; sha256 and blake2b, several block sizes.  Copies made
# by `lsm-sync copy` (raw and qcow2) have their source's checksum.  A 100 GiB
# empty image is answered from the map (its reference needs no reading
# either).  The JSON parses; bad input and bad options fail cleanly.
. "$(dirname "$0")/lib.sh"
need_cmd qemu-img qemu-io python3 jq
"$LSM_SYNC" --help | grep -q '^  checksum ' || skip "lsm-sync was built without libsodium (no checksum command)"

# The reference: blocks of BS bytes read from FILE (a raw file), the last one
# shorter; H(H(b0) || H(b1) || ...), the same H outside and inside.
cat >ref.py <<'EOF'
import hashlib, sys

def H(alg):
    if alg == "sha256":
        return hashlib.sha256()
    if alg == "blake2b":
        return hashlib.blake2b(digest_size=32)
    raise SystemExit("unknown algorithm " + alg)

def file_digest(path, alg, bs):
    outer = H(alg)
    with open(path, "rb") as f:
        while True:
            block = f.read(bs)
            if not block:
                break
            inner = H(alg)
            inner.update(block)
            outer.update(inner.digest())
    return outer.hexdigest()

def zero_digest(size, alg, bs):
    """The digest of `size` zero bytes, without any zero buffer but one block."""
    inner = H(alg)
    inner.update(bytes(bs))
    zd = inner.digest()
    outer = H(alg)
    for _ in range(size // bs):
        outer.update(zd)
    if size % bs:
        last = H(alg)
        last.update(bytes(size % bs))
        outer.update(last.digest())
    return outer.hexdigest()

mode, arg, alg, bs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
print(file_digest(arg, alg, bs) if mode == "file" else zero_digest(int(arg), alg, bs))
EOF

ALGS=(sha256 blake2b)
BLOCKS=(4194304 65536 1048576)

# digest IMAGE ALG BS: lsm-sync's checksum (human output), checked for form.
digest() {
    local out
    out=$("$LSM_SYNC" checksum --algorithm="$2" --block-size="$3" "$1")
    local sum=${out%%  *}
    [[ $out == "$sum  $1" && $sum =~ ^[0-9a-f]{64}$ ]] || { echo "bad output: $out" >&2; return 1; }
    echo "$sum"
}

# check NAME IMAGE: every algorithm and block size against the reference
# over the raw conversion.
check() {
    local name=$1 img=$2 alg bs want got
    qemu-img convert -O raw "$img" "$name.ref.raw"
    for alg in "${ALGS[@]}"; do
        for bs in "${BLOCKS[@]}"; do
            want=$(python3 ref.py file "$name.ref.raw" "$alg" "$bs")
            if ! got=$(digest "$img" "$alg" "$bs" 2>err.log); then
                fail "$name/$alg/$bs" "checksum failed: $(cat err.log)"
                continue
            fi
            if [[ $got == "$want" ]]; then
                pass "$name/$alg/$bs"
            else
                fail "$name/$alg/$bs" "got $got, reference $want"
            fi
        done
    done
    rm -f "$name.ref.raw"
}

# random FILE OFFSET_MiB COUNT_KiB: random data into FILE at an offset.
random() {
    dd if=/dev/urandom of="$1" bs=1K count="$3" seek=$(($2 * 1024)) conv=notrunc status=none
}

# raw, sparse: holes, data crossing 64K and 4M block ends, a block of real
# zeroes on disk (allocated, read and hashed as data).
truncate -s 24M sparse.raw
random sparse.raw 0 100
random sparse.raw 3 1536
random sparse.raw 11 64
dd if=/dev/zero of=sparse.raw bs=1M count=1 seek=16 conv=notrunc status=none
random sparse.raw 23 1024
check raw-sparse sparse.raw

# raw, full of data, and one whose size is not a multiple of any block size.
head -c $((10 << 20)) /dev/urandom >full.raw
check raw-full full.raw
head -c $(((5 << 20) + 1234)) /dev/urandom >odd.raw
check raw-odd-size odd.raw

# qcow2, sparse and fragmented: 64K clusters written backwards (host order
# unlike guest order), zero clusters over data, a discard, compressed data,
# a size not a multiple of the block size.
qcow2 frag.qcow2 $(((20 << 20) + 512))
cmds=()
for i in 15 13 11 9 7 5 3 1; do cmds+=("write -P $((i + 16)) $((i * 64))k 64k"); done
qio frag.qcow2 -- "${cmds[@]}" \
    "write -P 0x61 5M 3M" "write -z 6M 512k" "discard 7M 256k" \
    "write -c -P 0x77 12M 128k" "write -P 0x42 $(((20 << 20) - 4096)) 4608"
check qcow2-frag frag.qcow2

# qcow2 with 2M clusters and subclusters (extended L2), a partly written cluster.
qcow2 ext.qcow2 16M cluster_size=2M,extended_l2=on
qio ext.qcow2 -- "write -P 0x33 2M 32k" "write -P 0x34 4200k 70k" "write -z 4224k 64k"
check qcow2-extl2 ext.qcow2

# A 3-layer chain: raw base, qcow2 middle, qcow2 top larger than its backing;
# the top hides some base data with zeroes, the middle overwrites some.
truncate -s 12M base.raw
random base.raw 0 2048
random base.raw 8 1024
qemu-img create -q -f qcow2 -b base.raw -F raw mid.qcow2 12M
qio mid.qcow2 -- "write -P 0x11 1M 64k" "write -P 0x12 9M 2M"
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 18M
qio top.qcow2 -- "write -z 0 512k" "write -P 0x21 10M 64k" "write -P 0x22 17M 64k"
check chain-3 top.qcow2

# Empty images: no block at all gives H("").
: >empty.raw
qcow2 empty.qcow2 0
check empty-raw empty.raw
check empty-qcow2 empty.qcow2
sha_empty=$(python3 -c 'import hashlib; print(hashlib.sha256().hexdigest())')
if [[ $(digest empty.qcow2 sha256 4194304) == "$sha_empty" ]]; then
    pass empty-is-H-of-nothing
else
    fail empty-is-H-of-nothing
fi

# The defaults are sha256 and 4 MiB.
if [[ $("$LSM_SYNC" checksum top.qcow2) == "$(digest top.qcow2 sha256 4194304)  top.qcow2" ]]; then
    pass defaults
else
    fail defaults
fi

# Copies made by lsm-sync copy have their source's checksum: raw and qcow2
# destinations, from a chain and from a fragmented qcow2.
for src in top.qcow2 frag.qcow2 sparse.raw; do
    for fmt in raw qcow2; do
        dst=copy-${src%%.*}.$fmt
        if ! "$LSM_SYNC" copy -O "$fmt" "$src" "$dst" >/dev/null 2>err.log; then
            fail "copy/$src/$fmt" "copy failed: $(cat err.log)"
            continue
        fi
        for alg in "${ALGS[@]}"; do
            a=$(digest "$src" "$alg" 65536)
            b=$(digest "$dst" "$alg" 65536)
            if [[ $a == "$b" ]]; then pass "copy/$src/$fmt/$alg"; else fail "copy/$src/$fmt/$alg" "$a != $b"; fi
        done
    done
done

# 100 GiB with nothing allocated, raw and qcow2: the map answers, nothing is
# read, so it takes far less than reading 100 GiB of zeroes would.
truncate -s 100G huge.raw
qcow2 huge.qcow2 100G
for img in huge.raw huge.qcow2; do
    want=$(python3 ref.py zero $((100 << 30)) sha256 4194304)
    elapsed_ms "$LSM_SYNC" checksum "$img" >out.log 2>err.log
    if ((RC != 0)); then
        fail "zero-map/$img" "exit $RC: $(cat err.log)"
    elif [[ $(cat out.log) != "$want  $img" ]]; then
        fail "zero-map/$img" "got $(cat out.log), reference $want"
    elif ((MS > 10000)); then
        fail "zero-map/$img" "took $MS ms: zero blocks were read?"
    else
        pass "zero-map/$img"
        log "checksum of an empty 100 GiB $img: $MS ms"
    fi
done

# JSON: ovirt-imageio's fields, and the same checksum as the human output.
json=$("$LSM_SYNC" checksum --output=json --algorithm=blake2b --block-size=1M top.qcow2)
if [[ $(jq -r '.algorithm' <<<"$json") == blake2b && $(jq -r '.block_size' <<<"$json") == 1048576 &&
      $(jq -r '.checksum' <<<"$json") == "$(digest top.qcow2 blake2b 1048576)" &&
      $(jq -r 'keys_unsorted | join(",")' <<<"$json") == "algorithm,block_size,checksum" ]]; then
    pass json
else
    fail json "$json"
fi
if python3 -c 'import json, sys; d = json.loads(sys.argv[1]); assert d["block_size"] == 1048576' "$json"; then
    pass json-python
else
    fail json-python "$json"
fi

# Memory: 160 MiB of data, more than the 64 MiB budget of block buffers,
# and with 64 MiB blocks (two buffers): the peak RSS stays within the
# buffers plus a fixed allowance (asserted, except in sanitizer builds).
if [[ -x /usr/bin/time ]]; then
    head -c $((160 << 20)) /dev/urandom >mem.raw
    sanitized=0
    if nm "$LSM_SYNC" 2>/dev/null | grep -q '__asan_init\|__ubsan_handle'; then sanitized=1; fi
    for bs_mib in 4 64; do
        limit_kib=$(( ((bs_mib == 64 ? 128 : 64) + 48) * 1024 ))
        rc=0
        /usr/bin/time -f '%M' -o rss.txt "$LSM_SYNC" checksum --block-size=${bs_mib}M mem.raw \
            >out.log 2>err.log || rc=$?
        rss=$(tail -n1 rss.txt)
        want=$(python3 ref.py file mem.raw sha256 $((bs_mib << 20)))
        if ((rc != 0)) || [[ $(cat out.log) != "$want  mem.raw" ]]; then
            fail "memory/${bs_mib}M" "exit $rc: $(cat out.log err.log)"
        elif ((!sanitized && rss > limit_kib)); then
            fail "memory/${bs_mib}M" "peak RSS $rss KiB > $limit_kib KiB"
        else
            pass "memory/${bs_mib}M"
            log "checksum of 160 MiB of data with ${bs_mib} MiB blocks: peak RSS $rss KiB"
        fi
    done
    rm -f mem.raw
else
    log "/usr/bin/time not found: memory not measured"
fi

# Corrupt and hostile qcow2 images (tests/tools/mkbad.py, as bad-input.sh
# makes them): never a signal or a hang; exit 1 with one line, or exit 0
# with the reference checksum wherever qemu-img reads the image too.
MKBAD=$SOURCE_DIR/tests/tools/mkbad.py
mkdir v e
qemu-img create -q -f qcow2 -o cluster_size=4096 good.qcow2 1M
qio good.qcow2 -- "write -P 1 0 64k" "write -c -P 2 128k 4k" "write -z 256k 4k"
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=65536 good-el2.qcow2 1M
qio good-el2.qcow2 -- "write -P 1 0 8k" "write -z 16k 4k"
python3 "$MKBAD" variants good.qcow2 v | sed 's|^|v/|' >variants.txt
python3 "$MKBAD" el2-variants good-el2.qcow2 e | sed 's|^|e/|' >>variants.txt
while read -r img; do
    rc=0
    timeout 5 "$LSM_SYNC" checksum --block-size=64K "$img" >out.log 2>err.log || rc=$?
    if ((rc == 124)); then
        fail "mkbad/$img" "hangs"
    elif ((rc > 128)); then
        fail "mkbad/$img" "killed by signal $((rc - 128)): $(head -n3 err.log)"
    elif ((rc == 1)); then
        if [[ $(wc -l <err.log) == 1 ]] && grep -q '^lsm-sync: checksum: ' err.log; then
            pass "mkbad/$img"
        else
            fail "mkbad/$img" "want one line on stderr: $(head -n3 err.log)"
        fi
    elif ((rc != 0)); then
        fail "mkbad/$img" "exit $rc: $(head -n3 err.log)"
    elif timeout 5 qemu-img convert -U -O raw "$img" ref.raw 2>/dev/null; then
        want=$(python3 ref.py file ref.raw sha256 65536)
        if [[ $(cat out.log) == "$want  $img" ]]; then
            pass "mkbad/$img"
        else
            fail "mkbad/$img" "got $(cat out.log), reference $want"
        fi
    else
        pass "mkbad/$img"     # read by us, refused by qemu-img: bad-input.sh judges that
    fi
done <variants.txt
[[ -s variants.txt ]] || fail mkbad "mkbad.py wrote no variant"

# Bad input: exit 1, one line; bad options: exit 2.
printf 'QFI\xfb\0\0\0\3garbage' >bad.qcow2
mkdir adir
for args in "missing.img" "adir" "bad.qcow2" "-f qcow2 sparse.raw"; do
    rc=0
    # shellcheck disable=SC2086
    timeout 10 "$LSM_SYNC" checksum $args >out.log 2>err.log || rc=$?
    if ((rc == 1)) && [[ $(wc -l <err.log) == 1 ]] && grep -q '^lsm-sync: ' err.log && [[ ! -s out.log ]]; then
        pass "bad-input/$args"
    else
        fail "bad-input/$args" "exit $rc: $(head -n3 err.log)"
    fi
done
for args in "--algorithm=md5 sparse.raw" "--block-size=1000 sparse.raw" "--block-size=32K sparse.raw" \
            "--block-size=128M sparse.raw" "--block-size=x sparse.raw" "--output=xml sparse.raw" \
            "" "sparse.raw full.raw" "--bogus sparse.raw"; do
    rc=0
    # shellcheck disable=SC2086
    "$LSM_SYNC" checksum $args >out.log 2>err.log || rc=$?
    if ((rc == 2)) && [[ ! -s out.log ]]; then
        pass "usage/$args"
    else
        fail "usage/$args" "exit $rc: $(head -n3 err.log)"
    fi
done

finish
