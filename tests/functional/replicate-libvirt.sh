#!/bin/bash
# lsm-sync replicate --backend=libvirt against a real libvirtd and QEMU.
#
# Transient domains without a guest OS (64 MiB, type kvm when /dev/kvm works,
# else qemu/TCG), one virtio qcow2 disk whose chain is base <- leaf with data.
# The destination chain is prepared like a migration does: a copy of the base
# plus an empty leaf backed by it.  While the copy runs and once it is ready,
# we write into the disk through the monitor (HMP qemu-io on the virtio
# device's block backend: those writes go through the mirror like guest
# writes) and apply the same writes to an expected raw image.  After pivot the
# destination chain, and after abort the source chain, must equal it.
# Destinations: a qcow2 file and a qcow2 written on a loop block device.
. "$(dirname "$0")/lib.sh"
. "$SOURCE_DIR/tests/libvirt/libvirt-env.sh"

need_cmd qemu-img qemu-io losetup
"$LSM_SYNC" replicate --help >/dev/null 2>&1 || skip "this lsm-sync has no replicate command"
"$LSM_SYNC" replicate --help | grep -q 'built in:.* libvirt' ||
    skip "lsm-sync was built without the libvirt backend"
lvenv_start

SIZE=128M
DOMTYPE=qemu
lvenv_kvm_works && DOMTYPE=kvm
PREFIX=lsm-repl-$$
HMP_DEV=/machine/peripheral/virtio-disk0/virtio-backend

rep() { "$LSM_SYNC" replicate "$@"; }

# make_source N: chain N-base.qcow2 <- N-leaf.qcow2 with data in both layers
# (and a zero cluster in the leaf), and N-expected.raw, what the guest sees.
make_source() {
    local n=$1
    qcow2 "$n-base.qcow2" $SIZE
    qio "$n-base.qcow2" -- "write -P 0x11 0 32M" "write -P 0x12 96M 8M"
    qemu-img create -q -f qcow2 -b "$T/$n-base.qcow2" -F qcow2 "$n-leaf.qcow2" $SIZE
    qio "$n-leaf.qcow2" -- "write -P 0x22 16M 32M" "write -z 100M 1M"
    qemu-img convert -O raw "$n-leaf.qcow2" "$n-expected.raw"
}

# make_dst N D [DEVICE]: D-base.qcow2 (copy of N's base) and an empty leaf
# backed by it, as D-leaf.qcow2 or written on DEVICE.
make_dst() {
    local n=$1 d=$2 dev=${3:-}
    cp "$n-base.qcow2" "$d-base.qcow2"
    qemu-img create -q -f qcow2 -b "$T/$d-base.qcow2" -F qcow2 "${dev:-$d-leaf.qcow2}" $SIZE
}

domain_xml() {
    local name=$1 disk=$2 type=file attr=file cpu=
    [[ -b $disk ]] && type=block attr=dev
    [[ $DOMTYPE == qemu ]] && cpu="<cpu mode='custom'><model>qemu64</model></cpu>"
    cat <<EOF
<domain type='$DOMTYPE'>
  <name>$name</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  $cpu
  <devices>
    <disk type='$type' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source $attr='$disk'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
EOF
}

# start_domain NAME DISK: a transient domain on DISK (destroyed on exit).
start_domain() {
    local name=$1 disk=$2 err
    lvenv_at_exit "virsh -q -c $LVENV_URI destroy $name"
    domain_xml "$name" "$disk" > "$name.xml"
    if ! err=$(lvenv_virsh create "$name.xml" 2>&1); then
        if [[ $DOMTYPE == kvm ]]; then
            log "a kvm domain did not start ($err); using qemu (TCG)"
            DOMTYPE=qemu
            domain_xml "$name" "$disk" > "$name.xml"
            err=$(lvenv_virsh create "$name.xml" 2>&1) || die "cannot start $name: $err"
        else
            die "cannot start $name: $err"
        fi
    fi
}

stop_domain() { lvenv_virsh destroy "$1" >/dev/null 2>&1 || true; }

# hmp_write DOM PATTERN OFFSET LENGTH EXPECTED: write into DOM's vda through
# the monitor, and the same into the expected raw image.
hmp_write() {
    local dom=$1 pat=$2 off=$3 len=$4 exp=$5
    lvenv_virsh qemu-monitor-command "$dom" --hmp \
        "qemu-io -d $HMP_DEV \"write -P $pat $off $len\"" >/dev/null
    qemu-io -f raw -c "write -P $pat $off $len" "$exp" >/dev/null
}

disk_source() { lvenv_virsh domblklist "$1" | awk '$1 == "vda" { print $2 }'; }

json_field() { sed -n "s/.*\"$2\":\"\\{0,1\\}\\([^\",}]*\\).*/\\1/p" <<<"$1"; }

# expect_fail NAME TEXT CMD...: CMD exits 1 with one line on stderr that
# contains TEXT.
expect_fail() {
    local name=$1 text=$2 out rc=0
    shift 2
    out=$("$@" 2>&1 >/dev/null) || rc=$?
    if [[ $rc != 1 ]]; then
        fail "$name" "exit $rc, not 1: $out"
    elif [[ $(printf '%s\n' "$out" | wc -l) != 1 ]]; then
        fail "$name" "more than one line: $out"
    elif [[ $out != *"$text"* ]]; then
        fail "$name" "'$out' does not say '$text'"
    else
        log "ok   $name: $out"
        pass "$name"
    fi
}

# wait_phase DOM PHASE SECONDS: poll `status` (a new process each time, so
# polling, not events) until PHASE.
wait_phase() {
    local dom=$1 want=$2 i out phase=
    for ((i = 0; i < $3 * 5; i++)); do
        out=$(rep status --output=json "$dom" vda) || return 1
        phase=$(json_field "$out" phase)
        [[ $phase == "$want" ]] && return 0
        sleep 0.2
    done
    log "still $phase after $3 s: $out"
    return 1
}

# same_image NAME A FMT_A B FMT_B: qemu-img compare says identical.
same_image() {
    local name=$1 out
    if out=$(qemu-img compare -f "$3" -F "$5" "$2" "$4" 2>&1); then
        pass "$name"
    else
        fail "$name" "$out"
    fi
}

# check NAME CONDITION-COMMAND...
check() {
    local name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name" "$*"; fi
}

log "domains of type $DOMTYPE"

# ---- 1. File destination: errors first, then a slow copy with writes while
#         copying and while ready, status until ready, finish --wait. ----
make_source s1
make_dst s1 d1
D1=$PREFIX-1
start_domain "$D1" "$T/s1-leaf.qcow2"

expect_fail unknown-domain "no domain '$PREFIX-nosuch'" rep status "$PREFIX-nosuch" vda
expect_fail unknown-disk "has no disk 'vdz'" rep start "$D1" vdz "$T/d1-leaf.qcow2"
expect_fail dst-missing "does not exist" rep start "$D1" vda "$T/nosuch.qcow2"
qemu-img create -q -f qcow2 -b "$T/d1-base.qcow2" -F qcow2 small.qcow2 64M
expect_fail dst-wrong-size "virtual size" rep start "$D1" vda "$T/small.qcow2"
truncate -s $SIZE raw.img
expect_fail dst-wrong-format "is raw" rep start --format qcow2 "$D1" vda "$T/raw.img"
qemu-img create -q -f qcow2 nobacking.qcow2 $SIZE
expect_fail dst-no-backing "no backing file" rep start "$D1" vda "$T/nobacking.qcow2"
expect_fail dst-is-source "is the source" rep start "$D1" vda "$T/s1-leaf.qcow2"
expect_fail no-libvirtd-socket "is libvirtd running?" \
    rep status --connect "qemu+unix:///system?socket=$T/no-such-sock" "$D1" vda
expect_fail bogus-uri "cannot connect to libvirt at bogus:///x" \
    rep status --connect bogus:///x "$D1" vda
expect_fail backend-not-built "mirroring backend 'nosuch' is not available" \
    rep status --backend=nosuch /dev/nosuch
expect_fail finish-without-job "has no mirror" rep finish "$D1" vda
expect_fail abort-without-job "has no mirror" rep abort "$D1" vda
out=$(rep status "$D1" vda)
check status-no-job grep -q "no mirror; source $T/s1-leaf.qcow2" <<<"$out"

if out=$(rep start --bandwidth 4 --granularity 64K --buf-size 8M \
        "$D1" vda "$T/d1-leaf.qcow2"); then
    pass start-file
    log "$out"
else
    fail start-file
fi
expect_fail job-already-running "already has a block job" \
    rep start "$D1" vda "$T/d1-leaf.qcow2"
out=$(rep status --output=json "$D1" vda)
check status-copying test "$(json_field "$out" phase)" = copying
check status-progress test "$(json_field "$out" percent)" -lt 100
check status-destination test "$(json_field "$out" destination)" = "$T/d1-leaf.qcow2"
expect_fail pivot-before-ready "% copied); retry with --wait" rep finish "$D1" vda
hmp_write "$D1" 0x33 0 1M s1-expected.raw            # base-only range
hmp_write "$D1" 0x34 40M 2M s1-expected.raw          # leaf data
hmp_write "$D1" 0x35 60M 512K s1-expected.raw        # base-only, unallocated in leaf
hmp_write "$D1" 0x36 127M 1M s1-expected.raw         # the last MiB
check status-until-ready wait_phase "$D1" ready 120
hmp_write "$D1" 0x37 8M 3M s1-expected.raw
hmp_write "$D1" 0x38 100M 64K s1-expected.raw        # the zero cluster
if out=$(rep finish --wait --timeout 120 --output=json "$D1" vda); then
    pass finish-file
    log "$out"
    check finish-file-result test "$(json_field "$out" result)" = pivoted
else
    fail finish-file
fi
check pivoted-file-xml test "$(disk_source "$D1")" = "$T/d1-leaf.qcow2"
expect_fail finish-after-pivot "has no mirror" rep finish "$D1" vda
cp --sparse=always s1-expected.raw s1-expected-at-pivot.raw
hmp_write "$D1" 0x39 50M 1M s1-expected.raw          # after pivot: destination only
stop_domain "$D1"
same_image pivot-file-dst-equals-writes d1-leaf.qcow2 qcow2 s1-expected.raw raw
same_image pivot-file-src-equals-writes s1-leaf.qcow2 qcow2 s1-expected-at-pivot.raw raw

# ---- 2. Block destination (qcow2 on a loop device), --sync-writes,
#         finish --wait while still copying: READY learned from the event. ----
truncate -s 256M loop2.img
if LOOP2=$(losetup -f --show "$T/loop2.img" 2>/dev/null); then
    lvenv_at_exit "losetup -d $LOOP2"
    make_source s2
    make_dst s2 d2 "$LOOP2"
    D2=$PREFIX-2
    start_domain "$D2" "$T/s2-leaf.qcow2"
    if out=$(rep start --sync-writes --bandwidth 4194304 --bytes "$D2" vda "$LOOP2"); then
        pass start-block
        log "$out"
    else
        fail start-block
    fi
    check block-xml-mirror grep -q "<mirror type='block'" <(lvenv_virsh dumpxml "$D2")
    hmp_write "$D2" 0x43 0 1M s2-expected.raw
    hmp_write "$D2" 0x44 20M 4M s2-expected.raw
    hmp_write "$D2" 0x45 70M 1M s2-expected.raw
    out=$(rep status --output=json "$D2" vda)
    log "$out"
    check block-status-copying test "$(json_field "$out" phase)" = copying
    if out=$(rep finish --wait --timeout 120 --output=json "$D2" vda); then
        pass finish-block
        log "$out"
        check block-ready-from-event test "$(json_field "$out" ready_from_event)" = true
    else
        fail finish-block
    fi
    check pivoted-block-xml test "$(disk_source "$D2")" = "$LOOP2"
    hmp_write "$D2" 0x46 90M 2M s2-expected.raw
    stop_domain "$D2"
    same_image pivot-block-dst-equals-writes "$LOOP2" qcow2 s2-expected.raw raw
else
    log "SKIP block destination cases: no loop device here (losetup -f failed)"
fi

# ---- 3. Abort while copying: the VM stays on its source, nothing lost. ----
make_source s3
make_dst s3 d3
D3=$PREFIX-3
start_domain "$D3" "$T/s3-leaf.qcow2"
rep start --bandwidth 1 "$D3" vda "$T/d3-leaf.qcow2" >/dev/null || fail start-abort-case
hmp_write "$D3" 0x53 4M 1M s3-expected.raw
expect_fail finish-wait-timeout "not ready after 1 s" rep finish --wait --timeout 1 "$D3" vda
hmp_write "$D3" 0x54 30M 2M s3-expected.raw
if out=$(rep abort "$D3" vda); then
    pass abort-copying
    log "$out"
else
    fail abort-copying
fi
check abort-xml-source test "$(disk_source "$D3")" = "$T/s3-leaf.qcow2"
check abort-no-mirror bash -c "! virsh -c $LVENV_URI dumpxml $D3 | grep -q '<mirror'"
hmp_write "$D3" 0x55 64M 1M s3-expected.raw
stop_domain "$D3"
same_image abort-src-equals-writes s3-leaf.qcow2 qcow2 s3-expected.raw raw

# ---- 4. finish with the source as DST once ready: cancels, stays. ----
make_source s4
make_dst s4 d4
D4=$PREFIX-4
start_domain "$D4" "$T/s4-leaf.qcow2"
rep start "$D4" vda "$T/d4-leaf.qcow2" >/dev/null || fail start-finish-src-case
check finish-src-ready wait_phase "$D4" ready 120
hmp_write "$D4" 0x63 2M 1M s4-expected.raw
expect_fail finish-other-dst "is neither the source" rep finish "$D4" vda "$T/s1-leaf.qcow2"
if out=$(rep finish --output=json "$D4" vda "$T/s4-leaf.qcow2"); then
    pass finish-with-source
    log "$out"
    check finish-with-source-result test "$(json_field "$out" result)" = aborted
else
    fail finish-with-source
fi
check finish-src-xml test "$(disk_source "$D4")" = "$T/s4-leaf.qcow2"
stop_domain "$D4"
same_image finish-src-equals-writes s4-leaf.qcow2 qcow2 s4-expected.raw raw

# ---- 5. libvirtd stopped (only if we started it). ----
if ((LVENV_STARTED_LIBVIRTD)); then
    lvenv_stop
    expect_fail libvirtd-stopped "cannot connect to libvirt at qemu:///system: is libvirtd running?" \
        rep status "$D1" vda
else
    log "SKIP libvirtd-stopped: libvirtd was already running, not ours to stop"
fi

finish
