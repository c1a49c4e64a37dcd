#!/bin/bash
# Run a script inside the distribution kernel under QEMU (TCG), with the
# host's root file system shared over 9p, so that device-mapper, LVM and
# loop devices are available on a host kernel that has none of them.
#
#   tests/vm/vm-run.sh [--timeout S] [--mem M] [--verbose] [--keep] SCRIPT [ARGS...]
#
# SCRIPT runs as root in the guest, chrooted into the host's root, with the
# same path, the caller's working directory, and stdin on /dev/null.  Its
# stdout and stderr come back on this script's stdout and stderr (after the
# guest has stopped) and its exit status is ours.  Exit 77 (skip) when the
# harness cannot run here: no qemu-system-x86_64, no kernel image with its
# modules, no static busybox, or the guest did not reach SCRIPT.  124 when
# SCRIPT did not finish within the timeout.  See docs/vm-harness.md.
#
# Environment passed into the guest: PATH, LANG, LC_*, LSM_*, MESON_*,
# ASAN_/UBSAN_/LSAN_OPTIONS and the names listed in LSM_VM_ENV.  The guest
# adds LSM_VM=1 and LSM_VM_SCRATCH (a tmpfs directory for scratch data).
# LSM_VM_KERNEL picks a kernel image, LSM_VM_QEMU the qemu binary,
# LSM_VM_SMP the guest's vCPUs (default 1: the suite runs two VM tests at once),
# LSM_VM_CACHE the initramfs cache directory, LSM_VM_9P_CACHE the 9p cache
# mode of the root (loose; none is slower), LSM_VM_TIMING=1 prints timings.
set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

timeout_s=300
mem=1024
verbose=0
keep=0

usage() {
    echo "usage: $0 [--timeout S] [--mem M] [--verbose] [--keep] SCRIPT [ARGS...]" >&2
    exit 2
}
skip() {
    echo "vm-run: SKIP: $*" >&2
    exit 77
}

while [ $# -gt 0 ]; do
    case $1 in
    --timeout) [ $# -ge 2 ] || usage; timeout_s=$2; shift 2 ;;
    --timeout=*) timeout_s=${1#*=}; shift ;;
    --mem) [ $# -ge 2 ] || usage; mem=$2; shift 2 ;;
    --mem=*) mem=${1#*=}; shift ;;
    --verbose) verbose=1; shift ;;
    --keep) keep=1; shift ;;
    --) shift; break ;;
    -*) usage ;;
    *) break ;;
    esac
done
[ $# -ge 1 ] || usage
case $timeout_s in '' | *[!0-9]*) usage ;; esac
case $mem in '' | *[!0-9]*) usage ;; esac

script=$(realpath -e -- "$1" 2>/dev/null) || { echo "vm-run: $1: no such file" >&2; exit 2; }
shift
[ -x "$script" ] || { echo "vm-run: $script is not executable" >&2; exit 2; }
cwd=$(pwd -P)

# ---- what we need on the host ----------------------------------------
qemu=${LSM_VM_QEMU:-qemu-system-x86_64}
command -v "$qemu" >/dev/null ||
    skip "$qemu not found (install qemu-system-x86)"
command -v timeout >/dev/null || skip "timeout(1) not found"
[ -r /dev/null ] || skip "no /dev/null"

if [ -n "${LSM_VM_KERNEL:-}" ]; then
    kernel=$LSM_VM_KERNEL
else
    kernel=$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1)
fi
[ -n "$kernel" ] && [ -r "$kernel" ] ||
    skip "no readable kernel image /boot/vmlinuz-* (install linux-image-amd64)"
kver=${kernel##*/vmlinuz-}
moddir=/lib/modules/$kver
[ -r "$moddir/modules.dep" ] || skip "kernel $kernel has no modules in $moddir"

busybox=/bin/busybox
[ -x "$busybox" ] || skip "no $busybox (install busybox-static)"
LC_ALL=C ldd "$busybox" 2>&1 | grep -q "not a dynamic executable" ||
    skip "$busybox is not statically linked (install busybox-static)"

case "$repo$script" in *[[:space:]]*)
    skip "paths with white space cannot go on the kernel command line: $repo, $script" ;;
esac

# ---- the initramfs (cached per kernel build and version of this script) --
cache=${LSM_VM_CACHE:-$repo/build/cache/vm}
mkdir -p "$cache" || skip "cannot create the cache directory $cache"

# The modules that mount the 9p share, and device-mapper and loop (loading
# them from the initramfs is faster than modprobe over 9p): these and their
# dependencies, each dependency before the module that needs it (from
# modules.dep).
want_modules="virtio_pci 9pnet_virtio 9p dm-mod dm-log dm-region-hash dm-mirror loop"

declare -A mod_path mod_deps mod_done
while IFS= read -r line; do
    p=${line%%:*}
    n=${p##*/}
    n=${n%%.ko*}
    n=${n//-/_}
    mod_path[$n]=$p
    mod_deps[$n]=${line#*:}
done <"$moddir/modules.dep"

mod_order=()
add_module() {
    local n=${1//-/_} d
    [ -n "${mod_done[$n]:-}" ] && return 0
    if [ -z "${mod_path[$n]:-}" ]; then
        # Built into this kernel: nothing to load.
        grep -q -e "/${1//-/_}.ko\$" -e "/${1//_/-}.ko\$" "$moddir/modules.builtin" 2>/dev/null && return 0
        skip "module $1 is neither in $moddir/modules.dep nor built in"
    fi
    mod_done[$n]=1
    for d in ${mod_deps[$n]}; do
        d=${d##*/}
        add_module "${d%%.ko*}"
    done
    mod_order+=("${mod_path[$n]}")
}
for m in $want_modules; do
    add_module "$m"
done

init_text=$(cat <<'INIT'
#!/bin/busybox sh
# lsm-sync VM harness init: mount the host's root over 9p, run the guest
# runner chrooted into it, power off.
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
export PATH=/bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
envfail() {
    echo "LSMVM-ENV-FAIL: $*"
    poweroff -f
    sleep 10
}
for m in $(cat /modules.order); do
    insmod "/modules/${m##*/}" || envfail "cannot load module $m"
done
job= run= cache=none
for w in $(cat /proc/cmdline); do
    case $w in
    lsmvm.job=*) job=${w#*=} ;;
    lsmvm.run=*) run=${w#*=} ;;
    lsmvm.cache=*) cache=${w#*=} ;;
    esac
done
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=$cache hostroot /host ||
    envfail "cannot mount the host's root over 9p (mount_tag hostroot)"
if [ "$cache" != none ]; then
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none hosttmp /host/tmp ||
        envfail "cannot mount the host's /tmp over 9p (mount_tag hosttmp)"
fi
[ -n "$job" ] && [ -n "$run" ] || envfail "no lsmvm.job= or lsmvm.run= on the kernel command line"
[ -x /host/bin/bash ] || envfail "the host's root has no /bin/bash"
chroot /host /bin/bash "$run" "$job" </dev/null
echo "LSMVM-RUNNER-EXIT: $?"
poweroff -f
sleep 10
INIT
)

key=$( { printf '%s\n' "$init_text" "${mod_order[@]}"; stat -c '%s %Y' "$busybox" "$kernel" "$moddir/modules.dep"; } | sha256sum | cut -c1-12)
initrd=$cache/initrd-$kver-$key.cpio
if [ ! -s "$initrd" ]; then
    stage=$(mktemp -d "$cache/stage.XXXXXX") || skip "cannot create a staging directory in $cache"
    (
        set -e
        mkdir -p "$stage/bin" "$stage/modules" "$stage/proc" "$stage/sys" "$stage/dev" "$stage/host"
        cp "$busybox" "$stage/bin/busybox"
        printf '%s\n' "$init_text" >"$stage/init"
        chmod 755 "$stage/init"
        : >"$stage/modules.order"
        for p in "${mod_order[@]}"; do
            b=${p##*/}
            case $b in
            *.ko) cp "$moddir/$p" "$stage/modules/$b" ;;
            *.ko.xz) xz -dc "$moddir/$p" >"$stage/modules/${b%.xz}" ;;
            *.ko.zst) zstd -qdc "$moddir/$p" >"$stage/modules/${b%.zst}" ;;
            *.ko.gz) gzip -dc "$moddir/$p" >"$stage/modules/${b%.gz}" ;;
            *) echo "unknown module format $b" >&2; exit 1 ;;
            esac
            echo "${b%.ko*}.ko" >>"$stage/modules.order"
        done
        mknod -m 600 "$stage/dev/console" c 5 1
        mknod -m 666 "$stage/dev/null" c 1 3
        cd "$stage"
        find . -mindepth 1 | "$busybox" cpio -o -H newc >"$initrd.tmp.$$" 2>/dev/null
        mv -f "$initrd.tmp.$$" "$initrd"
    ) || { rm -rf "$stage" "$initrd.tmp.$$"; skip "cannot build the initramfs in $cache"; }
    rm -rf "$stage"
    # Older builds for this kernel (another version of this script).
    for old in "$cache/initrd-$kver-"*.cpio; do
        [ "$old" = "$initrd" ] || rm -f "$old"
    done
fi

# ---- the job directory: arguments in, output and status out ------------
# It lives on the host (under /tmp) and the guest sees the same path over
# 9p.  Scratch data does not go here: see LSM_VM_SCRATCH.
job=$(mktemp -d /tmp/lsm-vm.XXXXXX) || skip "cannot create a job directory in /tmp"
cleanup() {
    if [ "$keep" = 1 ]; then
        echo "vm-run: job directory kept: $job" >&2
    else
        rm -rf "$job"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

{
    printf 'script=%q\n' "$script"
    printf 'cwd=%q\n' "$cwd"
    printf 'args=('
    for a in "$@"; do printf ' %q' "$a"; done
    printf ' )\n'
    while IFS= read -r name; do
        case $name in
        PATH | LANG | LC_* | LSM_* | MESON_* | ASAN_OPTIONS | UBSAN_OPTIONS | LSAN_OPTIONS) ;;
        *) case " ${LSM_VM_ENV:-} " in *" $name "*) ;; *) continue ;; esac ;;
        esac
        printf 'export %s=%q\n' "$name" "${!name}"
    done < <(compgen -e)
} >"$job/job.sh"

loglevel=1
[ "$verbose" = 1 ] && loglevel=7
start=$(date +%s.%N)
timeout -k 5 "$timeout_s" "$qemu" \
    -accel tcg -cpu max -smp "${LSM_VM_SMP:-1}" -m "$mem" -nographic -no-reboot -no-user-config \
    -net none \
    -kernel "$kernel" -initrd "$initrd" \
    -append "console=ttyS0 quiet loglevel=$loglevel panic=-1 lsmvm.job=$job lsmvm.run=$here/guest-run.sh lsmvm.cache=${LSM_VM_9P_CACHE:-loose}" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=passthrough,id=hostroot,multidevs=remap \
    -virtfs local,path=/tmp,mount_tag=hosttmp,security_model=passthrough,id=hosttmp,multidevs=remap \
    </dev/null >"$job/console" 2>"$job/qemu.err"
qrc=$?
end=$(date +%s.%N)

console_tail() {
    echo "vm-run: last lines of the guest console and qemu's messages:" >&2
    tr -d '\r' <"$job/console" | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g; s/\x1bc//g' |
        grep -v '^$' | tail -n 25 | sed 's/^/  | /' >&2
    tail -n 10 "$job/qemu.err" | sed 's/^/  | /' >&2
}
dump_output() {
    [ -f "$job/stdout" ] && cat "$job/stdout"
    [ -f "$job/stderr" ] && cat "$job/stderr" >&2
}

if [ "$verbose" = 1 ]; then
    tr -d '\r' <"$job/console" | sed 's/^/console| /' >&2
fi

if [ -s "$job/envfail" ]; then
    skip "in the guest: $(cat "$job/envfail")"
fi
envfail=$(tr -d '\r' <"$job/console" | sed -n 's/^LSMVM-ENV-FAIL: //p' | head -n 1)
[ -n "$envfail" ] && skip "in the guest: $envfail"

if [ ! -e "$job/booted" ]; then
    if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
        console_tail
        skip "the guest did not reach the script within ${timeout_s} s (boot hang?)"
    fi
    console_tail
    skip "the guest did not boot (qemu exit status $qrc)"
fi

if [ "$verbose" = 1 ] || [ -n "${LSM_VM_TIMING:-}" ]; then
    booted=$(stat -c %.9Y "$job/booted")
    awk -v s="$start" -v b="$booted" -v e="$end" -v u="$(cat "$job/booted")" \
        'BEGIN { printf "vm-run: boot to script %.1f s (guest uptime %s s), total %.1f s\n", b - s, u, e - s }' >&2
fi

if [ ! -f "$job/status" ]; then
    dump_output
    if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
        echo "vm-run: $script did not finish within ${timeout_s} s" >&2
        exit 124
    fi
    console_tail
    echo "vm-run: the guest stopped while $script was running (qemu exit status $qrc)" >&2
    exit 1
fi
status=$(cat "$job/status")
dump_output
if [ "$status" != 0 ] && [ -s "$job/dmesg" ]; then
    echo "vm-run: $script exited with status $status; last guest kernel messages:" >&2
    tail -n 15 "$job/dmesg" | sed 's/^/  | /' >&2
fi
exit "$status"
