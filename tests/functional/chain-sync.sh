#!/bin/bash
# clone-structure + sync + compare on file domains: the storage pool
# manager's half of live storage migration, checked against QEMU.
set -euo pipefail
: "${LSM_SYNC:?}"
command -v qemu-img >/dev/null || { echo "SKIP: qemu-img not installed"; exit 77; }
command -v python3 >/dev/null || { echo "SKIP: python3 not installed"; exit 77; }

T=$(mktemp -d /var/tmp/lsm-chain.XXXXXX)
immutable=0
cleanup() { if [ $immutable = 1 ]; then chattr -R -i "$T/src"; fi; rm -rf "$T"; }
trap cleanup EXIT
cd "$T"
pass=0
ok() { pass=$((pass + 1)); echo "ok $pass - $*"; }
fail() { echo "not ok - $*"; exit 1; }

qio() { local f=$1; shift; local a=(); for c in "$@"; do a+=(-c "$c"); done; qemu-io "${a[@]}" "$f" >/dev/null; }

# own-layer map of a volume: (start, length, data, zero) of depth-0 entries
layer() {
    qemu-img map --output=json "$1" | python3 -c '
import json, sys
print([(e["start"], e["length"], e["data"], e["zero"]) for e in json.load(sys.stdin) if e["depth"] == 0])'
}

# one-line error, exit 1
expect_fail() {
    local what=$1; shift
    set +e
    "$@" >out.txt 2>err.txt
    local rc=$?
    set -e
    [ "$rc" = 1 ] || { cat err.txt; fail "$what: exit $rc, expected 1"; }
    [ "$(wc -l <err.txt)" = 1 ] || { cat err.txt; fail "$what: expected one line on stderr"; }
    grep -q '^lsm-sync: ' err.txt || fail "$what: message does not start with lsm-sync:"
    ok "$what fails cleanly: $(cat err.txt)"
}

make_chain() {   # $1 = directory; raw base <- qcow2 <- qcow2 across directories
    local d=$1
    mkdir -p "$d/d1" "$d/d2"
    qemu-img create -q -f raw "$d/d1/base.raw" 64M
    qemu-io -f raw -c 'write -P 1 0 4M' -c 'write -P 2 30M 1M' "$d/d1/base.raw" >/dev/null
    qemu-img create -q -f qcow2 -b ../d1/base.raw -F raw "$d/d2/mid.qcow2"
    qio "$d/d2/mid.qcow2" 'write -P 3 1M 2M' 'write -z 30M 512k' 'write -c -P 9 40M 64k' 'write -P 5 63M 1M'
    qemu-img create -q -f qcow2 -b d2/mid.qcow2 -F qcow2 -o cluster_size=128k "$d/top.qcow2"
    qio "$d/top.qcow2" 'write -P 4 2M 256k' 'discard 1M 128k' 'write -z 60M 1M'
}

check_volumes() {   # $1 src top dir, $2 dst dir
    local s=$1 d=$2
    [ "$(layer "$s/top.qcow2")" = "$(layer "$d/top.qcow2")" ] || fail "top layer maps differ"
    [ "$(layer "$s/d2/mid.qcow2")" = "$(layer "$d/mid.qcow2")" ] || fail "mid layer maps differ"
    cmp -s "$s/d1/base.raw" "$d/base.raw" || fail "raw base differs"
    qemu-img check -q "$d/top.qcow2" || fail "qemu-img check top"
    qemu-img check -q "$d/mid.qcow2" || fail "qemu-img check mid"
    qemu-img compare -q "$s/top.qcow2" "$d/top.qcow2" || fail "qemu-img compare of the chains"
    ok "every destination volume maps like its source volume; chains identical; check clean"
}

# 1. clone-structure into a directory, sync ALL with progress, compare
make_chain src
mkdir dst
src_sums=$(find src -type f | sort | xargs sha256sum)
chattr -R +i src 2>/dev/null && immutable=1   # sources must be opened read-only
top=$("$LSM_SYNC" clone-structure src/top.qcow2 --dst-dir dst)
[ "$top" = "dst/top.qcow2" ] || fail "clone-structure printed '$top'"
[ "$(qemu-img info --output=json dst/top.qcow2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["backing-filename"])')" = mid.qcow2 ] ||
    fail "destination top does not name mid.qcow2"
[ "$(qemu-img info --output=json dst/mid.qcow2 | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["backing-filename"], d["cluster-size"], d["virtual-size"])')" = "base.raw 65536 67108864" ] ||
    fail "destination mid has the wrong structure"
[ "$(qemu-img info --output=json dst/top.qcow2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["cluster-size"])')" = 131072 ] ||
    fail "destination top lost its cluster size"
qemu-img check -q dst/top.qcow2 && qemu-img check -q dst/mid.qcow2 || fail "cloned images do not check clean"
ok "clone-structure made an empty chain of the same structure"
"$LSM_SYNC" sync --type=ALL --progress=json src/top.qcow2 dst/top.qcow2 >progress.txt
python3 - progress.txt <<'EOF'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
assert lines, "no progress lines"
last = lines[-1]
assert last["bytes_done"] == last["bytes_total"] > 0, last
EOF
ok "sync ALL progress reached 100% ($(wc -l <progress.txt) JSON lines)"
check_volumes src dst
"$LSM_SYNC" compare src/top.qcow2 dst/top.qcow2 | grep -q 'Images are identical' || fail "compare"
ok "lsm-sync compare: identical"
# compare says what qemu-img compare says (sector of the first difference)
qemu-img create -q -f qcow2 cmp1.qcow2 64M
qemu-io -c 'write -P 0x11 0 8M' cmp1.qcow2 >/dev/null
cp cmp1.qcow2 cmp2.qcow2 && qemu-io -c 'write -P 0x22 5000123 1' cmp2.qcow2 >/dev/null
cp cmp1.qcow2 cmp3.qcow2 && qemu-io -c 'write -P 0x33 40000001 3' cmp3.qcow2 >/dev/null
qemu-img create -q -f qcow2 cmp4.qcow2 65M
qemu-io -c 'write -P 0x11 0 8M' -c 'write -P 0x44 67109000 1' cmp4.qcow2 >/dev/null
for pair in "cmp1 cmp2" "cmp2 cmp1" "cmp1 cmp3" "cmp3 cmp1" "cmp1 cmp4" "cmp1 cmp1"; do
    set -- $pair
    want=$(qemu-img compare $1.qcow2 $2.qcow2; echo "rc=$?")
    got=$("$LSM_SYNC" compare $1.qcow2 $2.qcow2; echo "rc=$?")
    [ "$got" = "$want" ] || fail "compare $1 $2: lsm-sync '$got', qemu-img '$want'"
done
ok "compare: same message and exit status as qemu-img compare ($(qemu-img compare cmp1.qcow2 cmp2.qcow2 | head -1))"
[ "$(find src -type f | sort | xargs sha256sum)" = "$src_sums" ] || fail "a source file changed"
if [ $immutable = 1 ]; then
    ok "sources were immutable (chattr +i), so opened read-only, and are unchanged"
else
    ok "sources unchanged (sha256); chattr +i is not supported here, so read-only opening is not proven"
fi

# 2. INTERNAL then LEAF into a fresh clone, in parallel
mkdir dst2
"$LSM_SYNC" clone-structure src/top.qcow2 --dst-dir dst2 >/dev/null
"$LSM_SYNC" sync --type=INTERNAL --parallel 2 src/top.qcow2 dst2/top.qcow2 >/dev/null
[ "$(layer src/d2/mid.qcow2)" = "$(layer dst2/mid.qcow2)" ] || fail "INTERNAL: mid layer maps differ"
cmp -s src/d1/base.raw dst2/base.raw || fail "INTERNAL: raw base differs"
ok "sync INTERNAL copied every volume below the leaf"
qemu-img map --output=json dst2/top.qcow2 | python3 -c '
import json, sys
assert not [e for e in json.load(sys.stdin) if e["depth"] == 0 and e["present"]], "INTERNAL wrote the leaf"'
ok "sync INTERNAL left the leaf untouched"
"$LSM_SYNC" sync --type=LEAF src/top.qcow2 dst2/top.qcow2 >/dev/null
check_volumes src dst2

# 3. a job file with explicit destinations in two directories
mkdir -p j1 j2
cat >job.json <<EOF
{ "volumes": [
  { "source": { "path": "src/top.qcow2", "format": "qcow2" },
    "destination": { "path": "j2/leaf.qcow2", "format": "qcow2", "type": "file" } },
  { "source": { "path": "src/d2/mid.qcow2", "format": "qcow2" },
    "destination": { "path": "j1/mid.qcow2", "format": "qcow2", "type": "file" } },
  { "source": { "path": "src/d1/base.raw", "format": "raw" },
    "destination": { "path": "j1/base.raw", "format": "raw", "type": "file" } } ] }
EOF
"$LSM_SYNC" clone-structure --job job.json >/dev/null
"$LSM_SYNC" sync --type=ALL --job job.json >/dev/null
qemu-img compare -q src/top.qcow2 j2/leaf.qcow2 || fail "job file sync differs"
qemu-img check -q j2/leaf.qcow2 || fail "job leaf check"
ok "job file: clone-structure and sync across two directories"

# 4. bad input
expect_fail "existing destination without --reuse" "$LSM_SYNC" clone-structure src/top.qcow2 --dst-dir dst
"$LSM_SYNC" clone-structure --reuse src/top.qcow2 --dst-dir dst2 >/dev/null
qemu-img map --output=json dst2/top.qcow2 | python3 -c '
import json, sys
assert not [e for e in json.load(sys.stdin) if e["depth"] < 2 and e["data"]], "reuse did not empty the volumes"'
ok "--reuse re-created empty volumes"
expect_fail "missing destination directory" "$LSM_SYNC" clone-structure src/top.qcow2 --dst-dir nowhere
expect_fail "missing source" "$LSM_SYNC" sync --type=ALL src/nothing.qcow2 dst/top.qcow2
qemu-img create -q -f qcow2 short.qcow2 64M
expect_fail "mismatched structure (chain length)" "$LSM_SYNC" sync --type=ALL src/top.qcow2 short.qcow2
mkdir dst3 && "$LSM_SYNC" clone-structure src/top.qcow2 --dst-dir dst3 >/dev/null
qemu-img create -q -f qcow2 -b base.raw -F raw dst3/mid.qcow2 32M
expect_fail "mismatched structure (virtual size)" "$LSM_SYNC" sync --type=ALL src/top.qcow2 dst3/top.qcow2
set +e; "$LSM_SYNC" sync --type=BOGUS a b 2>/dev/null; rc=$?; set -e
[ $rc = 2 ] || fail "bad --type gave $rc"; ok "bad --type is a usage error (exit 2)"
expect_fail "sync onto the source itself" "$LSM_SYNC" sync --type=ALL src/top.qcow2 src/top.qcow2

# 5. SIGTERM during a sync: exit 1, says incomplete
mkdir big bigdst
qemu-img create -q -f raw big/base.raw 1G
dd if=/dev/urandom of=big/base.raw bs=1M count=600 conv=notrunc status=none
qemu-img create -q -f qcow2 -b base.raw -F raw big/top.qcow2
"$LSM_SYNC" clone-structure big/top.qcow2 --dst-dir bigdst >/dev/null
set +e
"$LSM_SYNC" sync --type=ALL --rate=50M big/top.qcow2 bigdst/top.qcow2 2>err.txt &
pid=$!
sleep 1
kill -TERM $pid
wait $pid
rc=$?
set -e
[ $rc = 1 ] || { cat err.txt; fail "SIGTERM gave exit $rc"; }
grep -q incomplete err.txt || { cat err.txt; fail "no 'incomplete' in the message"; }
ok "SIGTERM: exit 1 and the destination is reported incomplete"

echo "$pass passed, 0 failed"
