#!/bin/bash
# copy --salvage (qemu-img convert's): a source range that cannot be read
# is copied as zeroes and named in a warning; everything else is copied.
# The source is a real NBD server (nbdkit's eval plugin over a raw file)
# that answers EIO for reads touching [1M, 1M+8K) and [5M+4K, 5M+8K):
#   - without --salvage: exit 1, one line, the destination removed;
#   - with it: exit 0, one warning per bad range (offset and length), the
#     JSON result counts the bytes, and the destination equals the source
#     with exactly those ranges zeroed (what qemu-img convert --salvage
#     makes of the same server; it is not run here: it reads a failed
#     chunk again 512 bytes at a time, a process each in this plugin, and
#     took a minute for one bad range);
#   - a server that goes away is not salvaged: the copy fails.
. "$(dirname "$0")/lib.sh"
need_cmd nbdkit qemu-img python3 cmp
nbdkit --dump-plugins 2>/dev/null | grep -q '^name=eval' ||
    nbdkit eval --version >/dev/null 2>&1 || skip "nbdkit has no eval plugin"

PIDS=()
stop_servers() {
    local p
    for p in "${PIDS[@]}"; do
        if kill -0 "$p" 2>/dev/null; then kill "$p" 2>/dev/null || :; fi   # (it may exit meanwhile)
    done
    return 0
}
trap 'stop_servers; cleanup' EXIT
wait_sock() {
    local i
    for i in $(seq 100); do [[ -S $1 ]] && return 0; sleep 0.05; done
    die "server did not start: $1 missing"
}

python3 - <<'PY'
import os
with open("src.raw", "wb") as f:
    for i in range(8):
        f.write(os.urandom(1 << 20))
PY
BAD="1048576:8192 5246976:4096"   # offset:length
cat > pread.sh <<SH
off=\$4; cnt=\$3
for r in $BAD; do
    b=\${r%:*}; l=\${r#*:}
    if (( off < b + l && off + cnt > b )); then echo "EIO unreadable" >&2; exit 1; fi
done
exec dd if=$T/src.raw iflag=skip_bytes,count_bytes skip=\$off count=\$cnt bs=64k status=none
SH
serve() {   # serve SOCK: the failing server
    nbdkit --exit-with-parent -f -U "$1" eval get_size='echo 8388608' \
        pread="bash $T/pread.sh \"\$@\"" 2>>server.log &
    PIDS+=($!)
    wait_sock "$1"
}
serve "$T/s.sock"
URI="nbd+unix:///?socket=$T/s.sock"

# The expected result: the source with the bad ranges zeroed.
cp src.raw want.raw
for r in $BAD; do
    dd if=/dev/zero of=want.raw bs=1 seek="${r%:*}" count="${r#*:}" conv=notrunc status=none
done

rc=0
"$LSM_SYNC" copy -f raw "$URI" -O raw nosalvage.raw >/dev/null 2>err || rc=$?
if ((rc == 1)) && [[ $(wc -l <err) == 1 ]] && [[ ! -e nosalvage.raw ]]; then pass "no --salvage: fails"
else fail "no --salvage: fails" "exit $rc, $(ls nosalvage.raw 2>/dev/null) $(cat err)"; fi

for fmt in raw qcow2; do
    rc=0
    "$LSM_SYNC" copy --salvage -f raw "$URI" -O $fmt --output=json "out.$fmt" >res.json 2>err || rc=$?
    if ((rc != 0)); then
        fail "salvage -O $fmt" "exit $rc: $(cat err)"
        continue
    fi
    qemu-img compare -q -f raw -F $fmt want.raw "out.$fmt" && pass "salvage -O $fmt: contents" ||
        fail "salvage -O $fmt: contents" "not the source with the bad ranges zeroed"
    [[ $fmt == qcow2 ]] && { qemu-img check -q "out.$fmt" && pass "salvage -O qcow2: check" ||
        fail "salvage -O qcow2: check"; }
    got=$(grep -c 'copied as zeroes (--salvage)' err || true)
    if [[ $got == 2 ]] && grep -q 'at offset 1048576 (8192 bytes)' err &&
       grep -q 'at offset 5246976 (4096 bytes)' err; then pass "salvage -O $fmt: warnings"
    else fail "salvage -O $fmt: warnings" "$(cat err)"; fi
    b=$(python3 -c 'import json,sys; d=json.load(open("res.json")); print(d["bytes_salvaged"], d["salvaged_ranges"])')
    [[ $b == "12288 2" ]] && pass "salvage -O $fmt: JSON" || fail "salvage -O $fmt: JSON" "got '$b'"
done

# A server that dies mid-copy: a lost connection is not salvaged.
cat > slow.sh <<SH
sleep 0.2
exec dd if=$T/src.raw iflag=skip_bytes,count_bytes skip=\$4 count=\$3 bs=64k status=none
SH
nbdkit --exit-with-parent -f -U "$T/d.sock" eval get_size='echo 8388608' \
    pread="bash $T/slow.sh \"\$@\"" 2>>server.log &
dpid=$!
PIDS+=($dpid)
wait_sock "$T/d.sock"
( sleep 0.5; kill -9 $dpid ) 2>/dev/null &
killer=$!
rc=0
"$LSM_SYNC" copy --salvage -f raw "nbd+unix:///?socket=$T/d.sock" -O raw dead.raw >/dev/null 2>err || rc=$?
if ((rc == 1)) && [[ ! -e dead.raw ]]; then pass "dead server: not salvaged"
else fail "dead server: not salvaged" "exit $rc: $(tail -n2 err)"; fi
wait "$killer"

finish
