#!/bin/bash
# Runs inside the VM, chrooted into the host's root (see vm-run.sh): set up
# the guest's own /proc, /sys, /dev, /run, load device-mapper and loop, run
# the job's script and leave its output and exit status in the job
# directory (on the host, over 9p).  Called by the initramfs init as
#   guest-run.sh JOBDIR
set -u
job=$1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

envfail() {
    echo "$*" >"$job/envfail"
    exit 1
}

mount -t proc proc /proc || envfail "cannot mount /proc"
mount -t sysfs sysfs /sys || envfail "cannot mount /sys"
mount -t devtmpfs devtmpfs /dev || envfail "cannot mount devtmpfs on /dev"
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmpfs /dev/shm 2>/dev/null
mount -t tmpfs -o mode=755 tmpfs /run || envfail "cannot mount a tmpfs on /run"
mkdir -p /run/lock /run/lsm-vm/scratch

# The initramfs loaded dm-mod, dm-log, dm-region-hash, dm-mirror and loop;
# modprobe (over 9p, slower) only if it could not.
if [ ! -e /dev/mapper/control ] || [ ! -e /dev/loop-control ]; then
    out=$(modprobe -a dm-mod dm-log dm-region-hash dm-mirror loop 2>&1) ||
        envfail "modprobe dm-mod dm-log dm-region-hash dm-mirror loop failed: $out"
fi
[ -e /dev/mapper/control ] || envfail "no /dev/mapper/control after loading dm-mod"
[ -e /dev/loop-control ] || envfail "no /dev/loop-control after loading loop"

# job.sh sets script, cwd, args and exports the caller's environment.
script='' cwd='' args=()
# shellcheck source=/dev/null
. "$job/job.sh" || envfail "cannot read $job/job.sh"
export LSM_VM=1 LSM_VM_SCRATCH=/run/lsm-vm/scratch HOME=/root
unset TMPDIR

cut -d' ' -f1 /proc/uptime >"$job/booted"

cd "$cwd" || envfail "cannot change to $cwd in the guest"
"$script" "${args[@]}" </dev/null >"$job/stdout" 2>"$job/stderr"
status=$?
[ "$status" = 0 ] || dmesg >"$job/dmesg" 2>/dev/null
echo "$status" >"$job/status.tmp" && mv "$job/status.tmp" "$job/status"
sync
exit 0
