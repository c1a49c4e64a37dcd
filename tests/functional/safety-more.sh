#!/bin/bash
# Data-safety variants beyond safety-alias.sh: a -B that names the
# destination itself while the destination does not exist yet (spelt the
# same, relative, absolute, through ./) is refused with exit 1 and nothing
# is created; an image whose backing is itself would hang QEMU's readers.
. "$(dirname "$0")/lib.sh"
need_cmd qemu-img qemu-io

qemu-img create -q -f qcow2 src.qcow2 16M
qemu-io -c 'write -P 0xab 0 4M' src.qcow2 >/dev/null
before=$(sha256sum <src.qcow2)

for spell in "out.qcow2 out.qcow2" "./out.qcow2 out.qcow2" "out.qcow2 $PWD/out.qcow2" \
             "$PWD/out.qcow2 ./out.qcow2"; do
    read -r b d <<<"$spell"
    rc=0
    "$LSM_SYNC" copy -O qcow2 -B "$b" -F qcow2 src.qcow2 "$d" 2>err.log || rc=$?
    if ((rc != 1)); then
        fail "-B $b DST $d" "exit $rc, want 1: $(head -c 300 err.log)"
    elif [[ -e out.qcow2 ]]; then
        fail "-B $b DST $d" "out.qcow2 was created"
        rm -f out.qcow2
    elif ! grep -q 'its own backing file' err.log; then
        fail "-B $b DST $d" "unclear message: $(head -c 300 err.log)"
    else
        pass "-B $b DST $d refused"
    fi
done

# A -B naming another (existing) file still works.
qemu-img create -q -f qcow2 base.qcow2 16M
if "$LSM_SYNC" copy -O qcow2 -B base.qcow2 -F qcow2 src.qcow2 top.qcow2 2>err.log &&
   qemu-img check -q top.qcow2 && qemu-img compare -q src.qcow2 top.qcow2; then
    pass "-B another file still copies"
else
    fail "-B another file" "$(head -c 300 err.log)"
fi
[[ $(sha256sum <src.qcow2) == "$before" ]] && pass "source unchanged" || fail "source" "changed"
finish
