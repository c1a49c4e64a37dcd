# A guest that really writes, for libvirt tests (sourced; needs
# libvirt-env.sh's lvenv_* and lib.sh's skip/log).
#
#     . "$SOURCE_DIR/tests/libvirt/writer-guest.sh"
#     wg_initrd                         # builds (cached) $WG_INITRD and $WG_KERNEL, or skips
#     wg_domain_xml NAME DISK MIB CONSOLE [HOLD] >dom.xml
#
# The guest is the distribution kernel with a busybox initramfs (as
# ../shared/ENVIRONMENT.md describes): init loads the virtio block modules,
# prints WRITER-START, (lsmw.mode=seq: see wg_seq_cmdline and wg_grow) writes MIB MiB of 1 MiB blocks (zeros) to /dev/vda
# with O_DIRECT in one dd, prints
# "WRITER-DONE rc=N" and powers off (or, with HOLD=1, idles).  The domain is of type qemu (TCG),
# its disk a qcow2 on a block device with error_policy='stop', so a
# write that finds no space pauses the VM (paused, I/O error) instead of
# failing in the guest.

WG_KERNEL=
WG_INITRD=

wg_initrd() {
    local kernel kver moddir cache key stage m p b
    kernel=$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1)
    [[ -n $kernel && -r $kernel ]] || skip "no kernel image /boot/vmlinuz-* (install linux-image-amd64)"
    kver=${kernel##*/vmlinuz-}
    moddir=/lib/modules/$kver
    [[ -r $moddir/modules.dep ]] || skip "kernel $kernel has no modules in $moddir"
    local lddout
    lddout=$(LC_ALL=C ldd /bin/busybox 2>&1) || true
    [[ -x /bin/busybox && $lddout == *"not a dynamic executable"* ]] ||
        skip "no static /bin/busybox (install busybox-static)"
    local mods=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk)
    local paths=()
    for m in "${mods[@]}"; do
        p=$(grep -E "(^|/)${m}\.ko(\.[a-z]+)?:" "$moddir/modules.dep" | head -n 1 | cut -d: -f1)
        if [[ -z $p ]]; then
            grep -qE "/${m}\.ko\$" "$moddir/modules.builtin" 2>/dev/null && continue
            skip "module $m is neither in $moddir/modules.dep nor built in"
        fi
        paths+=("$p")
    done
    cache=${BUILD_DIR:-/tmp}/cache/writer-guest
    mkdir -p "$cache" || skip "cannot create $cache"
    key=$( { declare -f wg_init_text; printf '%s\n' "${paths[@]}"; stat -c '%s %Y' /bin/busybox "$kernel"; } |
        sha256sum | cut -c1-12)
    WG_KERNEL=$kernel
    WG_INITRD=$cache/writer-$kver-$key.cpio
    [[ -s $WG_INITRD ]] && return 0
    stage=$(mktemp -d "$cache/stage.XXXXXX")
    (
        set -e
        mkdir -p "$stage/bin" "$stage/modules" "$stage/proc" "$stage/sys" "$stage/dev"
        cp /bin/busybox "$stage/bin/busybox"
        wg_init_text >"$stage/init"
        chmod 755 "$stage/init"
        : >"$stage/modules.order"
        for p in "${paths[@]}"; do
            b=${p##*/}
            case $b in
            *.ko) cp "$moddir/$p" "$stage/modules/$b" ;;
            *.ko.xz) xz -dc "$moddir/$p" >"$stage/modules/${b%.xz}" ;;
            *.ko.zst) zstd -qdc "$moddir/$p" >"$stage/modules/${b%.zst}" ;;
            *.ko.gz) gzip -dc "$moddir/$p" >"$stage/modules/${b%.gz}" ;;
            esac
            echo "${b%.ko*}.ko" >>"$stage/modules.order"
        done
        mknod -m 600 "$stage/dev/console" c 5 1
        mknod -m 666 "$stage/dev/null" c 1 3
        cd "$stage"
        find . -mindepth 1 | /bin/busybox cpio -o -H newc >"$WG_INITRD.tmp.$$" 2>/dev/null
        mv -f "$WG_INITRD.tmp.$$" "$WG_INITRD"
    ) || { rm -rf "$stage" "$WG_INITRD.tmp.$$"; skip "cannot build the writer initramfs in $cache"; }
    rm -rf "$stage"
}

wg_init_text() {
    cat <<'INIT'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
export PATH=/bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /tmp
for m in $(cat /modules.order); do
    insmod "/modules/$m" || echo "WRITER-ENV-FAIL: insmod $m"
done
mib=64 hold=0 mode=zero seqoff=256 seqn=64 ctl=
for w in $(cat /proc/cmdline); do
    case $w in
    lsmw.mib=*) mib=${w#*=} ;; lsmw.hold=1) hold=1 ;; lsmw.mode=*) mode=${w#*=} ;;
    lsmw.seqoff=*) seqoff=${w#*=} ;; lsmw.seqn=*) seqn=${w#*=} ;; lsmw.ctl=*) ctl=${w#*=} ;;
    esac
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ -b /dev/vda ] || echo "WRITER-ENV-FAIL: no /dev/vda"
if [ "$mode" = seq ]; then
    # Sequence-numbered blocks, without end: pass P writes the 64 KiB
    # blocks seqoff..seqoff+seqn-1 in order, each "LSMW pass=P blk=B"
    # padded with zeros, O_DIRECT, one block at a time.  A reader of the
    # disk (the guest paused) sees blocks < k of pass P+1 and the rest of
    # pass P: anything else is a lost or misplaced write.
    # lsmw.ctl=DEV (grow mode): before each pass the writer reads the
    # control disk /dev/DEV; once it says LSMW-GROW, it prints
    # "WRITER-GROW pass=G first=F nwin=N" and from pass G on each pass
    # writes the next window of SEQN blocks from block F = seqoff+seqn to the
    # end of the disk (pass P: F + ((P-G) mod N) x SEQN), so that the
    # guest's writes reach clusters it never wrote.
    echo "WRITER-START mode=seq seqoff=$seqoff seqn=$seqn${ctl:+ ctl=$ctl}"
    pass=1 grow=0 base=$seqoff
    gfirst=$((seqoff + seqn))
    nwin=$(( ($(cat /sys/block/vda/size) / 128 - gfirst) / seqn ))
    while :; do
        if [ -n "$ctl" ] && [ $grow = 0 ] &&
           [ "$(dd if=/dev/$ctl bs=512 count=1 iflag=direct 2>/dev/null | tr -dc 'A-Z-')" = LSMW-GROW ]; then
            if [ $nwin -ge 1 ]; then
                grow=$pass
                echo "WRITER-GROW pass=$pass first=$gfirst nwin=$nwin"
            else
                echo "WRITER-ENV-FAIL: no room to grow past block $gfirst"
                ctl=
            fi
        fi
        [ $grow = 0 ] || base=$((gfirst + (pass - grow) % nwin * seqn))
        b=0
        while [ $b -lt $seqn ]; do
            printf 'LSMW pass=%08d blk=%08d\n' $pass $b |
                dd of=/dev/vda bs=65536 seek=$((base + b)) count=1 conv=sync,notrunc \
                   oflag=direct 2>/dev/null || echo "WRITER-ERROR pass=$pass blk=$b"
            b=$((b + 1))
        done
        echo "WRITER-PASS $pass"
        pass=$((pass + 1))
    done
fi
echo "WRITER-START mib=$mib"
# 1 MiB blocks, one dd, O_DIRECT: as fast as the guest can.
rc=0
dd if=/dev/zero of=/dev/vda bs=1M count=$mib oflag=direct 2>/tmp/dd.err || rc=1
n=$(sed -n 's/^\([0-9]*\)+[0-9]* records out.*/\1/p' /tmp/dd.err)
echo "WRITER-DONE rc=$rc blocks=$n"
# lsmw.hold=1: stay up (idle) until the test destroys the domain.
while [ "$hold" = 1 ]; do sleep 1000; done
poweroff -f
sleep 10
INIT
}

# wg_seq_cmdline SEQOFF SEQN [CTL]: the kernel command line of the sequence
# writer (lsmw.mode=seq): endless passes over SEQN 64 KiB blocks from
# block SEQOFF of /dev/vda; each pass ends with "WRITER-PASS P" on the
# console.  With CTL (a disk target, vdd), the guest reads /dev/CTL before
# each pass and switches to grow mode once it holds LSMW-GROW (wg_grow).
# tests/functional/migrate-lib.sh verifies the blocks.
wg_seq_cmdline() {
    echo "console=ttyS0 panic=-1 quiet lsmw.mode=seq lsmw.seqoff=$1 lsmw.seqn=$2${3:+ lsmw.ctl=$3}"
}

# wg_grow CTLFILE CONSOLE SECONDS: tell a sequence writer started with a
# control disk (CTLFILE, the raw file behind it) to grow, and wait for its
# WRITER-GROW line on CONSOLE.
wg_grow() {
    local i
    printf 'LSMW-GROW' | dd of="$1" bs=512 conv=notrunc status=none || return 1
    for ((i = 0; i < $3 * 10; i++)); do
        grep -q '^WRITER-GROW ' "$2" && return 0
        sleep 0.1
    done
    return 1
}

# wg_domain_xml NAME DISK MIB CONSOLE_FILE [HOLD]: HOLD=1 keeps the guest
# running (idle) after it wrote, instead of powering off.
wg_domain_xml() {
    local name=$1 disk=$2 mib=$3 console=$4 hold=${5:-0}
    cat <<EOF
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>$WG_KERNEL</kernel>
    <initrd>$WG_INITRD</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet lsmw.mib=$mib lsmw.hold=$hold</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='custom'><model>qemu64</model></cpu>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <devices>
    <disk type='block' device='disk'>
      <driver name='qemu' type='qcow2' cache='none' io='native' error_policy='stop'/>
      <source dev='$disk'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='$console'/><target port='0'/></serial>
    <console type='file'><source path='$console'/><target type='serial' port='0'/></console>
  </devices>
</domain>
EOF
}
