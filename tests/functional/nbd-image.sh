#!/bin/bash
# NBD URIs as the IMAGE of map, info, compare and checksum (docs/nbd.md,
# formats/nbd.c), against qemu-img through the same URI, real servers only:
# qemu-nbd serving a qcow2 chain read-only (with and without
# qemu:allocation-depth offered), nbdkit's memory plugin written through
# NBD, its sparse-random plugin, and a server without block status
# (nbdkit --no-sr).  map --output=json and info --output=json (but the
# filename, which qemu-img rewrites) are byte-identical to qemu-img's, the
# human map in every column but File; checksum equals lsm-sync checksum of
# the local file; compare agrees with qemu-img compare, identical or not.
# Bad input: -f qcow2, a socket nobody listens on, an export that does not
# exist: one line, exit 1 (2 for compare, whose 1 means "different").
. "$(dirname "$0")/lib.sh"
need_cmd nbdkit qemu-nbd qemu-img qemu-io jq
. "$TESTS_DIR/nbd-netns-lib.sh"   # alive

rc=0
"$LSM_SYNC" map "nbd+unix:///?socket=$T/none.sock" 2>probe.log || rc=$?
if grep -q "built without libnbd" probe.log; then
    skip "lsm-sync was built without libnbd"
fi

# the servers: nbdkit_on, qemu_nbd_on, uri, stop_servers (nbd-netns-lib.sh)
trap 'stop_servers; cleanup' EXIT

# same_as_qemu NAME URI: map (json, human but File, ranges) and info (json
# but filename, human but the image line) equal qemu-img's.
same_as_qemu() {
    local name=$1 u=$2 ok=1
    qemu-img map --output=json "$u" >q.map
    if ! "$LSM_SYNC" map --output=json "$u" >l.map 2>err.log; then
        fail "$name: map" "$(head -n2 err.log)"; return 0
    fi
    cmp -s q.map l.map || { fail "$name: map json" "$(diff q.map l.map | head -n4)"; ok=0; }
    qemu-img map --start-offset=1536k --max-length=9m --output=json "$u" >q.map
    "$LSM_SYNC" map --start-offset=1536k --max-length=9m --output=json "$u" >l.map
    cmp -s q.map l.map || { fail "$name: map range" "$(diff q.map l.map | head -n4)"; ok=0; }
    qemu-img map "$u" | awk '{print $1, $2, $3}' >q.map
    "$LSM_SYNC" map "$u" | awk '{print $1, $2, $3}' >l.map
    cmp -s q.map l.map || { fail "$name: map human" "$(diff q.map l.map | head -n4)"; ok=0; }
    qemu-img info --output=json "$u" | jq -S 'del(.filename)' >q.info
    "$LSM_SYNC" info --output=json "$u" | jq -S 'del(.filename)' >l.info
    cmp -s q.info l.info || { fail "$name: info json" "$(diff q.info l.info | head -n4)"; ok=0; }
    qemu-img info "$u" | tail -n +2 >q.info
    "$LSM_SYNC" info "$u" | tail -n +2 >l.info
    cmp -s q.info l.info || { fail "$name: info human" "$(diff q.info l.info | head -n4)"; ok=0; }
    ((ok)) && pass "$name: map and info as qemu-img"
    return 0
}
# same_data NAME URI LOCAL FMT: checksum and compare agree with the local file.
same_data() {
    local name=$1 u=$2 f=$3 fmt=$4 a b
    a=$("$LSM_SYNC" checksum "$u" | cut -d' ' -f1)
    b=$("$LSM_SYNC" checksum "$f" | cut -d' ' -f1)
    if [[ -z $a || $a != "$b" ]]; then
        fail "$name: checksum" "'$a' (export) != '$b' ($f)"
    else
        pass "$name: checksum"
    fi
    rc=0
    "$LSM_SYNC" compare -F "$fmt" "$u" "$f" >cmp.out 2>&1 || rc=$?
    if ((rc != 0)) || ! qemu-img compare -q -F "$fmt" "$u" "$f"; then
        fail "$name: compare" "exit $rc: $(head -n2 cmp.out)"
    else
        pass "$name: compare identical"
    fi
}

# The chain: data, zeroes, a discard, clusters from every layer.
qemu-img create -q -f qcow2 base.qcow2 48M
qio base.qcow2 -- "write -P 0x61 0 3M" "write -P 0x62 20M 1M" "write -z 30M 2M" "write -P 0x63 47M 1M"
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2
qio mid.qcow2 -- "write -P 0x64 1M 2M" "write -z 20M 256k"
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2
qio top.qcow2 -- "write -P 0x65 10M 3M" "discard 47M 64k" "write -P 0x66 5M 4k"

# 1. qemu-nbd serving the chain read-only; 2. the same with
# qemu:allocation-depth offered (-A: map must not change, as qemu-img's does not).
qemu_nbd_on "$T/q.sock" -r -e 4 -f qcow2 top.qcow2
qemu_nbd_on "$T/a.sock" -r -e 4 -A -f qcow2 top.qcow2
same_as_qemu "qemu-nbd chain" "$(uri q.sock)"
same_as_qemu "qemu-nbd -A chain" "$(uri a.sock)"
same_data "qemu-nbd chain" "$(uri q.sock)" top.qcow2 qcow2
# two exports of one chain; then an export against a changed copy
rc=0
"$LSM_SYNC" compare "$(uri q.sock)" "$(uri a.sock)" >cmp.out 2>&1 || rc=$?
((rc == 0)) && pass "compare export with export" || fail "compare export with export" "exit $rc: $(head -n2 cmp.out)"
qemu-img convert -O raw top.qcow2 changed.raw
qio changed.raw raw -- "write -P 0x01 33M 512"
rc=0
"$LSM_SYNC" compare "$(uri q.sock)" changed.raw >cmp.out 2>&1 || rc=$?
qrc=0
qemu-img compare "$(uri q.sock)" changed.raw >qcmp.out 2>&1 || qrc=$?
if ((rc == 1 && qrc == 1)) && cmp -s cmp.out qcmp.out; then
    pass "compare finds the changed sector"
else
    fail "compare finds the changed sector" "exit $rc/$qrc: $(head -n1 cmp.out) / $(head -n1 qcmp.out)"
fi
stop_servers

# 3. nbdkit memory, written through NBD (data, zeroes, trimmed data).
nbdkit_on "$T/m.sock" memory 48M
qemu-io -f raw -c "write -P 0x71 0 1M" -c "write -P 0x72 16M 4M" -c "write -z 17M 1M" \
    -c "write -P 0x73 40M 64k" "$(uri m.sock)" >/dev/null
qemu-img convert -O raw "$(uri m.sock)" mem.raw
same_as_qemu "nbdkit memory" "$(uri m.sock)"
same_data "nbdkit memory" "$(uri m.sock)" mem.raw raw
stop_servers

# 4. nbdkit sparse-random: many extents (more than one status window's
# reply is not needed; several hundred runs are).
nbdkit_on "$T/s.sock" sparse-random 256M seed=4242 percent=30 runlength=131072
qemu-img convert -O raw "$(uri s.sock)" sr.raw
same_as_qemu "nbdkit sparse-random" "$(uri s.sock)"
same_data "nbdkit sparse-random" "$(uri s.sock)" sr.raw raw
n=$("$LSM_SYNC" map --output=json "$(uri s.sock)" | wc -l)
((n > 100)) && pass "sparse-random map has many extents" ||
    fail "sparse-random map has many extents" "only $n"
stop_servers

# 5. A server without block status (no structured replies, so no
# base:allocation): all data, as qemu-img says.
nbdkit_on "$T/n.sock" --no-sr memory 8M
qemu-io -f raw -c "write -P 0x74 1M 1M" "$(uri n.sock)" >/dev/null
qemu-img convert -O raw "$(uri n.sock)" nosr.raw
same_as_qemu "nbdkit --no-sr" "$(uri n.sock)"
same_data "nbdkit --no-sr" "$(uri n.sock)" nosr.raw raw
stop_servers

# 6. Bad input: one line, exit 1 (compare: 2), never a crash or a hang.
qemu_nbd_on "$T/q.sock" -r -e 4 -x disk -f qcow2 top.qcow2
bad() {
    local name=$1 code=$2 want=$3; shift 3
    rc=0
    timeout 20 "$LSM_SYNC" "$@" >out.log 2>err.log || rc=$?
    if ((rc != code)); then
        fail "$name" "exit $rc: $(head -n2 err.log)"
    elif (($(wc -l <err.log) != 1)) || ! grep -q -- "$want" err.log; then
        fail "$name" "message: $(cat err.log)"
    else
        pass "$name"
    fi
}
bad "-f qcow2 on an export" 1 "read as raw" info -f qcow2 "nbd+unix:///disk?socket=$T/q.sock"
bad "no server" 1 "cannot connect" map "nbd+unix:///disk?socket=$T/nobody.sock"
bad "no such export" 1 "cannot connect" checksum "nbd+unix:///other?socket=$T/q.sock"
bad "compare with no server" 2 "cannot connect" compare top.qcow2 "nbd+unix:///?socket=$T/nobody.sock"
stop_servers

finish
