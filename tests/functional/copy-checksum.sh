#!/bin/bash
# `copy --checksum[=ALGO]`: the block checksum computed while copying equals
# `lsm-sync checksum` of the source and of the destination and a reference
# written here in Python (hashlib) over `qemu-img convert -O raw` of the
# source: raw full and sparse, qcow2 sparse (zero clusters, a size that is
# not a multiple of the block), qcow2 written in random order, a 3-layer
# chain; raw and qcow2 destinations; sha256 and blake2b; large and small
# requests (small ones assemble each 4 MiB block from many pieces, out of
# order).  -B, --physical and a bad algorithm are refused with one message.
. "$(dirname "$0")/lib.sh"
need_cmd qemu-img qemu-io python3 jq
"$LSM_SYNC" --help | grep -q '^  checksum ' || skip "lsm-sync was built without libsodium (no checksum command)"

cat >ref.py <<'PY'
import hashlib, sys
path, alg, bs = sys.argv[1], sys.argv[2], 4 << 20
def H():
    return hashlib.sha256() if alg == "sha256" else hashlib.blake2b(digest_size=32)
outer = H()
with open(path, "rb") as f:
    while True:
        b = f.read(bs)
        if not b:
            break
        h = H()
        h.update(b)
        outer.update(h.digest())
print(outer.hexdigest())
PY

# images
head -c 24M /dev/urandom > full.raw
truncate -s 40M sparse.raw
dd if=/dev/urandom of=sparse.raw bs=1M seek=5 count=3 conv=notrunc status=none
dd if=/dev/urandom of=sparse.raw bs=64K seek=500 count=7 conv=notrunc status=none
qcow2 sparse.qcow2 $((30 * 1048576 + 12345 * 512))
qio sparse.qcow2 -- 'write -P 0x11 1M 3M' 'write -z 6M 2M' 'write -P 0x22 9M 100K' \
    'write -P 0x33 29M 1M'
qcow2 random.qcow2 16M
for off in 13 2 7 0 11 5 14 9 3; do qio random.qcow2 -- "write -P $((off + 1)) ${off}M 1M"; done
qemu-img create -q -f raw base.raw 32M
dd if=/dev/urandom of=base.raw bs=1M seek=2 count=10 conv=notrunc status=none
qemu-img create -q -f qcow2 -b base.raw -F raw mid.qcow2
qio mid.qcow2 -- 'write -P 0x44 4M 4M' 'write -z 10M 1M'
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
qio top.qcow2 -- 'write -P 0x55 20M 2M' 'discard 2M 1M'

fmt_of() { [[ $1 == *.qcow2 ]] && echo qcow2 || echo raw; }

n=0
for src in full.raw sparse.raw sparse.qcow2 random.qcow2 top.qcow2; do
    qemu-img convert -O raw "$src" ref.raw
    for alg in sha256 blake2b; do
        want=$(python3 ref.py ref.raw $alg)
        for dfmt in raw qcow2; do
            n=$((n + 1))
            name="$src-$alg-$dfmt"
            dst=d$n.$dfmt
            small=()
            ((n % 2)) && small=(--request-size=64K -m 4)   # every other copy: 64 KiB requests
            if ! out=$("$LSM_SYNC" copy -q -O $dfmt "${small[@]}" --checksum=$alg "$src" "$dst" 2>err.log); then
                fail "$name" "copy failed: $(cat err.log)"
                continue
            fi
            got=${out%%  *}
            [[ $out == "$got  $dst" ]] || { fail "$name" "output: $out"; continue; }
            [[ $got == "$want" ]] && pass "$name" || fail "$name" "copy --checksum $got, reference $want"
            s=$("$LSM_SYNC" checksum --algorithm=$alg "$src") && s=${s%%  *}
            d=$("$LSM_SYNC" checksum --algorithm=$alg "$dst") && d=${d%%  *}
            [[ $s == "$want" && $d == "$want" ]] && pass "$name-checksum" \
                || fail "$name-checksum" "checksum of source $s, of destination $d, reference $want"
            qemu-img compare -q -f "$(fmt_of "$src")" -F $dfmt "$src" "$dst" && pass "$name-compare" \
                || fail "$name-compare"
        done
    done
done

# JSON summary: the fields of `checksum --output=json`
rm -f j.qcow2
if out=$("$LSM_SYNC" copy -O qcow2 --checksum --output=json sparse.qcow2 j.qcow2); then
    c=$(jq -c '.checksum' <<<"$out")
    want=$("$LSM_SYNC" checksum --output=json sparse.qcow2 | jq -c .)
    [[ $c == "$want" ]] && pass json || fail json "$c vs $want"
else
    fail json "copy failed"
fi

# refused: one line, exit 1 (2 for a usage error), nothing created
expect_refusal() {
    local name=$1 want_rc=$2 dst=$3; shift 3
    local rc=0
    "$LSM_SYNC" copy "$@" 2>err.log >/dev/null || rc=$?
    if [[ $rc == "$want_rc" && $(wc -l <err.log) -le 2 && ! -e $dst ]]; then
        pass "$name"
    else
        fail "$name" "exit $rc, $(cat err.log)"
    fi
}
expect_refusal refuse-backing 1 b.qcow2 -O qcow2 -B mid.qcow2 -F qcow2 --checksum top.qcow2 b.qcow2
grep -q -- '--checksum needs a copy of the whole guest view' err.log && pass refuse-backing-msg || fail refuse-backing-msg "$(cat err.log)"
expect_refusal refuse-physical 1 p.qcow2 -O qcow2 --physical --checksum sparse.qcow2 p.qcow2
grep -q -- 'guest-order' err.log && pass refuse-physical-msg || fail refuse-physical-msg "$(cat err.log)"
expect_refusal refuse-alg 2 m.raw --checksum=md5 full.raw m.raw
finish
