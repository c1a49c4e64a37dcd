#!/bin/bash
# Data safety of sync and clone-structure: a destination that is a source
# volume (same path, symlink, hard link, relative, absolute and /proc/self
# spellings), job files whose entries do not form one destination chain or
# point into the source chain, clone-structure --reuse in the source's own
# directory, and SIGTERM during clone-structure.  Every refusal: exit 1, one
# line on stderr, every source file byte-identical (sha256) and every
# destination unchanged.
. "$(dirname "$0")/lib.sh"
need_cmd qemu-img qemu-io sha256sum

# raw base <- qcow2 mid <- qcow2 top, with data in every layer
mkdir src
qemu-img create -q -f raw src/base.raw 16M
qio src/base.raw raw -- 'write -P 1 0 2M' 'write -P 2 10M 1M'
qemu-img create -q -f qcow2 -b base.raw -F raw src/mid.qcow2
qio src/mid.qcow2 -- 'write -P 3 1M 2M' 'write -z 10M 512k'
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 -o cluster_size=128k src/top.qcow2
qio src/top.qcow2 -- 'write -P 4 2M 256k'
sums() { sha256sum "$T"/src/base.raw "$T"/src/mid.qcow2 "$T"/src/top.qcow2; }
SUMS=$(sums)

# refused CASE WANT CMD...: exit 1, one "lsm-sync: " line containing WANT,
# sources unchanged.
refused() {
    local case=$1 want=$2; shift 2
    local rc=0
    "$@" >out.log 2>err.log || rc=$?
    if ((rc != 1)); then
        fail "$case" "exit $rc, want 1: $(head -n3 err.log)"
    elif [[ $(wc -l <err.log) != 1 ]] || ! grep -q '^lsm-sync: ' err.log; then
        fail "$case" "want one lsm-sync: line on stderr, got: $(head -n5 err.log)"
    elif ! grep -q -- "$want" err.log; then
        fail "$case" "message lacks '$want': $(cat err.log)"
    elif [[ $(sums) != "$SUMS" ]]; then
        fail "$case" "a source file changed"
    else
        [[ ${VERBOSE:-0} == 1 ]] && log "$case: $(cat err.log)"
        pass "$case"
    fi
}

# a destination chain of the right structure, and its checksums
"$LSM_SYNC" clone-structure src/top.qcow2 --dst-dir "$(mkdir dA && echo dA)" >/dev/null
"$LSM_SYNC" clone-structure src/top.qcow2 --dst-dir "$(mkdir dB && echo dB)" >/dev/null
dsums() { sha256sum dA/* dB/*; }
DSUMS=$(dsums)
unchanged() {   # CASE: the destination chains were not written
    if [[ $(dsums) == "$DSUMS" ]]; then pass "$1: destinations unchanged"; else fail "$1" "a destination changed"; fi
}

# 1. sync onto a source volume, spelled every way
ln -s top.qcow2 src/sym.qcow2
ln src/top.qcow2 hard.qcow2
ln -s src srcdir
for dst in src/top.qcow2 src/sym.qcow2 hard.qcow2 ./src/../src/top.qcow2 srcdir/top.qcow2 \
           "$T/src/top.qcow2" /proc/self/cwd/src/top.qcow2; do
    refused "sync onto the source top as $dst" 'is source volume 0' "$LSM_SYNC" sync --type=ALL src/top.qcow2 "$dst"
done
refused "sync, source spelled through a symlink" 'is source volume 0' "$LSM_SYNC" sync --type=ALL srcdir/sym.qcow2 hard.qcow2
cd src
refused "sync in the source directory, relative" 'is source volume 0' "$LSM_SYNC" sync --type=ALL top.qcow2 ../hard.qcow2
cd "$T"

# 2. a destination chain that runs into the source chain below its top
mkdir dC
"$LSM_SYNC" clone-structure src/top.qcow2 --dst-dir dC >/dev/null
qemu-img rebase -u -f qcow2 -b ../src/mid.qcow2 -F qcow2 dC/top.qcow2
refused "sync: destination top backed by the source mid" 'is source volume 1' "$LSM_SYNC" sync --type=ALL src/top.qcow2 dC/top.qcow2
rm dC/base.raw && ln src/base.raw dC/base.raw
qemu-img rebase -u -f qcow2 -b mid.qcow2 -F qcow2 dC/top.qcow2
refused "sync: destination base a hard link of the source base" 'is source volume 2' "$LSM_SYNC" sync --type=INTERNAL src/top.qcow2 dC/top.qcow2
refused "sync LEAF still checks the whole destination chain" 'is source volume 2' "$LSM_SYNC" sync --type=LEAF src/top.qcow2 dC/top.qcow2

# 3. job files
job() {   # job FILE SRC0 DST0 SRC1 DST1 ...
    local f=$1; shift
    {
        echo '{ "volumes": ['
        local sep=''
        while (($#)); do
            printf '%s{ "source": { "path": "%s" }, "destination": { "path": "%s" } }\n' "$sep" "$1" "$2"
            sep=','
            shift 2
        done
        echo '] }'
    } >"$f"
}
job mixed.json src/top.qcow2 dA/top.qcow2 src/mid.qcow2 dB/mid.qcow2 src/base.raw dB/base.raw
refused "sync --job: entries from two destination chains" 'is not the backing file of' "$LSM_SYNC" sync --type=ALL --job mixed.json
unchanged "mixed job"
qemu-img create -q -f qcow2 lone.qcow2 16M
LONE=$(sha256sum lone.qcow2)
job lone.json src/top.qcow2 lone.qcow2 src/mid.qcow2 dB/mid.qcow2 src/base.raw dB/base.raw
refused "sync --job: a top destination that backs onto nothing" 'has no backing file' "$LSM_SYNC" sync --type=ALL --job lone.json
[[ $(sha256sum lone.qcow2) == "$LONE" ]] && pass "lone destination unchanged" || fail "lone destination changed"
unchanged "lone job"
job short.json src/top.qcow2 dA/top.qcow2 src/mid.qcow2 dA/mid.qcow2
refused "sync --job: fewer entries than the chain" 'the job lists 2 volumes' "$LSM_SYNC" sync --type=ALL --job short.json
for spelling in src/mid.qcow2 srcdir/mid.qcow2 "$T/src/../src/mid.qcow2"; do
    job intosrc.json src/top.qcow2 dA/top.qcow2 src/mid.qcow2 "$spelling" src/base.raw dA/base.raw
    refused "sync --job: an entry's destination is the source mid as $spelling" 'is source volume 1' \
        "$LSM_SYNC" sync --type=ALL --job intosrc.json
done
unchanged "job into the source"
job twice.json src/top.qcow2 dA/top.qcow2 src/mid.qcow2 dA/mid.qcow2 src/base.raw dA/../dA/mid.qcow2
refused "sync --job: two entries with one destination" 'have the same destination' "$LSM_SYNC" sync --type=ALL --job twice.json
job order.json src/top.qcow2 dA/top.qcow2 src/base.raw dA/mid.qcow2 src/mid.qcow2 dA/base.raw
refused "sync --job: sources out of order" 'is volume 2 of the chain' "$LSM_SYNC" sync --type=ALL --job order.json
unchanged "bad jobs"
job good.json src/top.qcow2 dA/top.qcow2 srcdir/mid.qcow2 ./dA/mid.qcow2 src/base.raw "$T/dA/base.raw"
if "$LSM_SYNC" sync --type=ALL --job good.json >out.log 2>err.log &&
   qemu-img compare -q src/top.qcow2 dA/top.qcow2 && qemu-img check -q dA/top.qcow2 && qemu-img check -q dA/mid.qcow2; then
    pass "sync --job of one chain, spelled every way, is complete"
else
    fail "good job" "$(cat err.log)"
fi
[[ $(sums) == "$SUMS" ]] && pass "sources unchanged by the good job" || fail "good job changed a source"

# 4. clone-structure onto the source chain
cd src
refused "clone-structure --reuse in the source directory" 'is source volume 0' "$LSM_SYNC" clone-structure --reuse top.qcow2 --dst-dir .
cd "$T"
refused "clone-structure --reuse, the source directory through a symlink" 'is source volume 0' \
    "$LSM_SYNC" clone-structure --reuse src/top.qcow2 --dst-dir srcdir
refused "clone-structure --reuse, absolute" 'is source volume 0' "$LSM_SYNC" clone-structure --reuse src/top.qcow2 --dst-dir "$T/src"
refused "clone-structure in the source directory, no --reuse" 'is source volume 0' "$LSM_SYNC" clone-structure src/top.qcow2 --dst-dir src
mkdir dJ
job cjob.json src/top.qcow2 dJ/top.qcow2 src/mid.qcow2 dJ/mid.qcow2 src/base.raw hard-base.raw
ln src/base.raw hard-base.raw
refused "clone-structure --reuse --job: the base destination a hard link of the source base" 'is source volume 2' \
    "$LSM_SYNC" clone-structure --reuse --job cjob.json
[[ -z $(ls dJ) ]] && pass "nothing created for the refused job" || fail "refused clone job created $(ls dJ)"
job cjob2.json src/top.qcow2 dJ/top.qcow2 src/mid.qcow2 dJ/x.qcow2 src/base.raw dJ/./x.qcow2
refused "clone-structure --job: two volumes with one (new) destination" 'have the same destination' "$LSM_SYNC" clone-structure --job cjob2.json
[[ -z $(ls dJ) ]] && pass "nothing created for the second refused job" || fail "refused clone job created $(ls dJ)"
job cjob3.json srcdir/top.qcow2 dJ/top.qcow2 src/base.raw dJ/mid.qcow2 src/mid.qcow2 dJ/base.raw
refused "clone-structure --job: sources out of order" 'is volume 2 of the chain' "$LSM_SYNC" clone-structure --job cjob3.json
ln -s nowhere dJ/top.qcow2
job cjob4.json src/top.qcow2 dJ/top.qcow2 src/mid.qcow2 dJ/mid.qcow2 src/base.raw dJ/base.raw
refused "clone-structure: a dangling symlink is an existing volume" 'already exists' "$LSM_SYNC" clone-structure --job cjob4.json
[[ $(ls dJ) == top.qcow2 && ! -e nowhere ]] && pass "dangling symlink left alone, nothing created" ||
    fail "dangling symlink case left $(ls dJ)"

# FIFOs and device nodes are never written, waited on or removed
mkdir dF
mkfifo dF/top.qcow2
job fifo.json src/top.qcow2 dF/top.qcow2 src/mid.qcow2 dF/mid.qcow2 src/base.raw dF/base.raw
refused "clone-structure --reuse --job: the top destination a FIFO" 'is not a regular file or a block device' \
    timeout 10 "$LSM_SYNC" clone-structure --reuse --job fifo.json
[[ -p dF/top.qcow2 && $(ls dF) == top.qcow2 ]] && pass "FIFO left alone, nothing created" ||
    fail "FIFO case left $(ls -l dF)"
refused "sync: the destination top a FIFO" 'is not a regular file or a block device' \
    timeout 10 "$LSM_SYNC" sync --type=ALL src/top.qcow2 dF/top.qcow2
refused "sync --job: the top destination a FIFO" 'is not a regular file or a block device' \
    timeout 10 "$LSM_SYNC" sync --type=ALL --job fifo.json
if [[ $(id -u) == 0 ]]; then
    rm dF/top.qcow2
    mknod dF/top.qcow2 c 1 3
    refused "clone-structure --reuse --job: the top destination a character device" 'is not a regular file or a block device' \
        timeout 10 "$LSM_SYNC" clone-structure --reuse --job fifo.json
    [[ -c dF/top.qcow2 && $(ls dF) == top.qcow2 ]] && pass "device node left alone" ||
        fail "device node case left $(ls -l dF)"
fi

# 5. SIGTERM during clone-structure: exactly what it created is removed.
# Volumes with 512-byte clusters and 64 GiB each have a 16 MiB L1 table
# to write: about 0.1 s a volume, enough to land a signal in the middle.
mkdir big bigdst
qemu-img create -q -f qcow2 -o cluster_size=512 big/v0.qcow2 64G
for i in $(seq 1 11); do
    cp --sparse=always big/v0.qcow2 big/v$i.qcow2
    qemu-img rebase -u -f qcow2 -b v$((i - 1)).qcow2 -F qcow2 big/v$i.qcow2
done
echo keep >bigdst/keep.txt
cp --sparse=always big/v11.qcow2 bigdst/v11.qcow2   # a volume that exists: reused, never removed
PRE=$(sha256sum bigdst/keep.txt)
BIGSUMS=$(sha256sum big/*)
rc=0
"$LSM_SYNC" clone-structure --reuse big/v11.qcow2 --dst-dir bigdst >out.log 2>err.log &
pid=$!
for _ in $(seq 1 2000); do [[ -e bigdst/v0.qcow2 ]] && break; sleep 0.005; done
kill -TERM $pid
wait $pid || rc=$?
if ((rc != 1)); then
    fail "SIGTERM during clone-structure" "exit $rc, want 1: $(cat err.log)"
elif ! grep -q 'interrupted' err.log || [[ $(wc -l <err.log) != 1 ]]; then
    fail "SIGTERM during clone-structure" "message: $(cat err.log)"
else
    pass "SIGTERM during clone-structure: exit 1"
    [[ ${VERBOSE:-0} == 1 ]] && log "$(cat err.log)"
fi
left=$(cd bigdst && ls | tr '\n' ' ')
[[ $left == "keep.txt v11.qcow2 " ]] && pass "only pre-existing files remain" || fail "after SIGTERM" "left: $left"
[[ $(sha256sum bigdst/keep.txt) == "$PRE" ]] && pass "pre-existing file untouched" || fail "keep.txt changed"
[[ $(sha256sum big/*) == "$BIGSUMS" ]] && pass "sources untouched by the interrupted clone" || fail "a big source changed"
if "$LSM_SYNC" clone-structure --reuse big/v11.qcow2 --dst-dir bigdst >out.log 2>err.log &&
   [[ $(qemu-img info --backing-chain bigdst/v11.qcow2 | grep -c '^image:') == 12 ]] &&
   qemu-img check -q bigdst/v11.qcow2 && qemu-img check -q bigdst/v0.qcow2; then
    pass "clone-structure again after SIGTERM: complete chain"
else
    fail "second clone-structure" "$(cat err.log)"
fi
[[ $(sha256sum bigdst/keep.txt) == "$PRE" ]] && pass "pre-existing file untouched by the second run" ||
    fail "keep.txt changed by the second run"

# 6. a loop device over a source file is that file
LOOP=
detach() { if [[ -n $LOOP ]]; then losetup -d "$LOOP"; LOOP=; fi; }
trap 'detach; cleanup' EXIT
if [[ $(id -u) == 0 ]] && command -v losetup >/dev/null && LOOP=$(losetup -f --show src/base.raw 2>/dev/null); then
    cat >loopjob.json <<EOF
{ "volumes": [
  { "source": { "path": "src/top.qcow2" }, "destination": { "path": "dA/top.qcow2" } },
  { "source": { "path": "src/mid.qcow2" }, "destination": { "path": "dA/mid.qcow2" } },
  { "source": { "path": "src/base.raw" },
    "destination": { "path": "$LOOP", "format": "raw" } } ] }
EOF
    refused "sync --job: the base destination a loop device over the source base" 'is source volume 2' \
        "$LSM_SYNC" sync --type=ALL --job loopjob.json
    refused "clone-structure --reuse --job: a loop device over the source base" 'is source volume 2' \
        "$LSM_SYNC" clone-structure --reuse --job loopjob.json
    mkdir dL
    "$LSM_SYNC" clone-structure src/top.qcow2 --dst-dir dL >/dev/null
    qemu-img rebase -u -f qcow2 -b "$LOOP" -F raw dL/mid.qcow2
    refused "sync: destination mid backed by a loop device over the source base" 'is source volume 2' \
        "$LSM_SYNC" sync --type=ALL src/top.qcow2 dL/top.qcow2
    detach
    # a block destination that is not an LV cannot be extended: refused before any write
    mkdir dN
    "$LSM_SYNC" clone-structure src/top.qcow2 --dst-dir dN >/dev/null
    LOOP=$(losetup -f --show dN/base.raw)
    qemu-img rebase -u -f qcow2 -b "$LOOP" -F raw dN/mid.qcow2
    NSUMS=$(sha256sum dN/*)
    job loopjob2.json src/top.qcow2 dN/top.qcow2 src/mid.qcow2 dN/mid.qcow2 src/base.raw "$LOOP"
    refused "sync --job: a block destination that is not an LV" 'not of the form /dev/VG/LV' \
        "$LSM_SYNC" sync --type=ALL --job loopjob2.json
    refused "sync: a destination chain on a block device that is not an LV" 'not of the form /dev/VG/LV' \
        "$LSM_SYNC" sync --type=ALL src/top.qcow2 dN/top.qcow2
    [[ $(sha256sum dN/*) == "$NSUMS" ]] && pass "non-LV destination chain unchanged" || fail "non-LV destination changed"
    detach
else
    ((FAILED == 0)) && skip "no loop device (needs root and losetup); the $CASES other cases passed"
fi

finish
