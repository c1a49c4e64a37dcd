# Shared by migrate.sh and migrate-block.sh, sourced after lib.sh,
# libvirt-env.sh and writer-guest.sh with DOM and STATE set: the
# source chain in src/ (vda: base <- mid <- leaf; vdb raw, vdc a one-layer
# qcow2), the domain booted with the writing guest, and the helpers both
# tests check with (passes of the writer, where each disk runs, verify,
# the progress phases seen, wait_phase).
# shellcheck shell=bash

check() {  # check NAME CMD...: pass if CMD succeeds
    local name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name" "$*"; fi
}

# layer_map FILE: the data runs of one qcow2 layer alone (no backing)
layer_map() {
    qemu-img map -U --output=json "json:{\"driver\":\"qcow2\",\"backing\":null,\"file\":{\"driver\":\"file\",\"filename\":\"$1\"}}" |
        python3 -c 'import json, sys; print([(e["start"], e["length"], e["zero"]) for e in json.load(sys.stdin) if e["data"]])'
}

qemu-img create -q -f qcow2 src/base.qcow2 64M
qemu-io -f qcow2 -c "write -P 0x11 0 4M" src/base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 src/mid.qcow2
qemu-io -f qcow2 -c "write -P 0x22 4M 4M" src/mid.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 src/leaf.qcow2
qemu-io -f qcow2 -c "write -P 0x33 8M 4M" -c "write -z 1M 512K" src/leaf.qcow2 >/dev/null
qemu-img create -q -f qcow2 src/vdc.qcow2 16M
qemu-io -f qcow2 -c "write -P 0x55 0 1M" src/vdc.qcow2 >/dev/null
truncate -s 16M src/vdb.raw
qemu-io -f raw -c "write -P 0x44 0 2M" src/vdb.raw >/dev/null
sum_base=$(sha256sum <src/base.qcow2)
sum_mid=$(sha256sum <src/mid.qcow2)
sum_vdb=$(sha256sum <src/vdb.raw)

# The guest writes blocks 256..287 (16 MiB..18 MiB) of vda, pass after pass.
# MIG_GROW=1 (before sourcing): vdd is a raw control disk (src/ctl.raw),
# and grow_writes makes the guest write a new 2 MiB window each pass from
# then on (writer-guest.sh, wg_grow), clusters that no layer holds yet.
SEQOFF=256 SEQN=32
CTL= CTL_XML=
if [[ ${MIG_GROW:-0} == 1 ]]; then
    CTL=vdd
    truncate -s 1M src/ctl.raw
    CTL_XML="<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='$T/src/ctl.raw'/><target dev='vdd' bus='virtio'/><readonly/></disk>"
fi
cat >dom.xml <<EOF
<domain type='qemu'>
  <name>$DOM</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>$WG_KERNEL</kernel>
    <initrd>$WG_INITRD</initrd>
    <cmdline>$(wg_seq_cmdline $SEQOFF $SEQN $CTL)</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='custom'><model>qemu64</model></cpu>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$T/src/leaf.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='$T/src/vdb.raw'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$T/src/vdc.qcow2'/>
      <target dev='vdc' bus='virtio'/>
    </disk>
    $CTL_XML
    <serial type='file'><source path='$T/console'/><target port='0'/></serial>
    <console type='file'><source path='$T/console'/><target type='serial' port='0'/></console>
  </devices>
</domain>
EOF
: >console
err=$(lvenv_virsh create dom.xml 2>&1) || die "cannot start $DOM: $err"

last_pass() { sed -n 's/^WRITER-PASS \([0-9]*\).*/\1/p' console | tail -n 1; }
# wait_pass N SECONDS: the guest finished pass N
wait_pass() {
    local i p
    for ((i = 0; i < $2 * 5; i++)); do
        p=$(last_pass)
        [[ -n $p && $p -ge $1 ]] && return 0
        sleep 0.2
    done
    log "console ends with: $(tail -n 3 console | tr '\n' '|')"
    return 1
}
# grow_writes: from the next pass on, the guest writes new clusters (MIG_GROW=1)
grow_writes() { wg_grow src/ctl.raw console 30; }
grow_info() { sed -n 's/^WRITER-GROW pass=\([0-9]*\) first=\([0-9]*\) nwin=\([0-9]*\).*/\1 \2 \3/p' console | head -n 1; }
source_of() { lvenv_virsh domblklist "$DOM" | awk -v d="$1" '$1 == d { print $2 }'; }
no_journal() { [[ ! -e $STATE/$DOM.json ]]; }
# has_job DISK: DISK has a block job (virsh prints its progress,
# "Block Copy: [100 %]", on stderr, and exits 0 without a job too)
has_job() { lvenv_virsh blockjob "$DOM" "$1" --info 2>&1 | grep -q '[0-9] *%'; }
no_job() { ! has_job "${1:-vda}"; }   # no_job [DISK]: vda by default

# verify TOP: the guest paused, every block it wrote is in TOP's chain, and
# the layers' data below is what the test wrote.  The writer's schedule is
# known (pass P writes SEQN blocks at its window, in order, each waited
# for): the disk must hold exactly passes 1..L-1 and the first k blocks of
# pass L, L the highest pass on it and at least the console's last.
verify() {
    local top=$1 out
    qemu-img convert -U -O raw "$top" view.raw || return 1
    out=$(python3 - view.raw "$SEQOFF" "$SEQN" "$(last_pass)" $(grow_info) <<'EOF'
import sys
data = open(sys.argv[1], "rb").read()
seqoff, seqn, console = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4] or 0)
grow, gfirst, nwin = (int(a) for a in sys.argv[5:8]) if len(sys.argv) > 7 else (0, 0, 1)
M, B = 1 << 20, 65536
def same(a, b, byte):
    assert data[a:b] == bytes([byte]) * (b - a), "bytes %d..%d are not 0x%02x" % (a, b, byte)
same(0, 1 * M, 0x11); same(1 * M, 1 * M + 512 * 1024, 0); same(1 * M + 512 * 1024, 4 * M, 0x11)
same(4 * M, 8 * M, 0x22); same(8 * M, 12 * M, 0x33); same(12 * M, seqoff * B, 0)
def base(p):
    return seqoff if not grow or p < grow else gfirst + (p - grow) % nwin * seqn
found = {}
for blk in range(seqoff, len(data) // B):
    d = data[blk * B:(blk + 1) * B]
    if d == bytes(B):
        continue
    p, b = int(d[10:18]), int(d[23:31])
    head = b"LSMW pass=%08d blk=%08d\n" % (p, b)
    assert d == head + bytes(B - len(head)), "block %d: %r" % (blk, d[:40])
    assert base(p) + b == blk, "block %d holds pass %d's block %d (its place: %d)" % (blk, p, b, base(p) + b)
    found[blk] = p
assert found, "no block of the writer"
last = max(found.values())
k = sum(1 for p in found.values() if p == last)
want = {}
for p in range(1, last + 1):
    for b in range(seqn if p < last else k):
        want[base(p) + b] = p
bad = sorted(b for b in set(want) | set(found) if want.get(b) != found.get(b))
assert not bad, "%d blocks are not what passes 1..%d wrote, from block %d: has pass %s, wants %s" % (
    len(bad), last, bad[0], found.get(bad[0]), want.get(bad[0]))
assert last >= console, "the console says pass %d ended, the disk has %d" % (console, last)
grown = len([b for b in found if b >= gfirst]) if grow else 0
print("passes up to %d (console: %d), %d blocks%s" % (last, console, len(found),
      ", %d of them grown from pass %d" % (grown, grow) if grow else ""))
EOF
) || { log "$out"; return 1; }
    log "$top: $out"
}

phases_seen() {
    python3 -c '
import json, sys
seen = []
for l in open(sys.argv[1]):
    try:
        p = json.loads(l)["phase"]
    except Exception:
        continue
    if p not in seen:
        seen.append(p)
print(" ".join(seen))' "$1"
}

# wait_phase FILE PHASE SECONDS: a progress line of PHASE in FILE
wait_phase() {
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        grep -q "\"phase\":\"$2\"" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
