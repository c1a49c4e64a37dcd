# LVM helpers for scripts running inside the test VM (tests/vm/vm-run.sh).
# Source this file, then:
#
#   vm_make_vg NAME SIZE [EXTENT]   backing file on the guest tmpfs, a loop
#                                   device, pvcreate, vgcreate; sets VM_LOOP
#   vm_make_loop NAME SIZE          a bare loop device over a tmpfs file;
#                                   sets VM_LOOP
#   vm_lvm CMD ARGS...              lvm CMD --config "$LSM_LVM_CONFIG" ARGS
#   vm_cleanup                      remove what the above made (trap it)
#
# The guest runs no udev, so every LVM command needs a configuration that
# does not wait for udev and makes /dev nodes itself.  It is exported as
# LSM_LVM_CONFIG, which lsm-sync's LVM backend (domains/domain-lvm.c)
# passes to lvm with --config.  It also keeps LVM from writing metadata
# backups into the host's /etc/lvm (shared over 9p) and from starting
# dmeventd.
# Call the vm_make_* functions directly, not in $(...): they record what to
# clean up in this shell.
# Works under set -euo pipefail.
# shellcheck shell=bash

export LSM_LVM_CONFIG='activation{udev_sync=0 udev_rules=0 monitoring=0} devices{obtain_device_list_from_udev=0 use_devicesfile=0} backup{backup=0 archive=0}'

_vm_scratch=${LSM_VM_SCRATCH:-/run/lsm-vm/scratch}
_vm_vgs=()
_vm_loops=()
_vm_files=()

vm_lvm() {
    local cmd=$1
    shift
    lvm "$cmd" --config "$LSM_LVM_CONFIG" "$@"
}

_vm_require_guest() {
    if [ "${LSM_VM:-}" != 1 ]; then
        echo "lvm-helpers: refusing to touch LVM outside the test VM (LSM_VM is not 1)" >&2
        return 1
    fi
}

vm_make_loop() {
    local name=$1 size=$2 file loop
    _vm_require_guest || return 1
    mkdir -p "$_vm_scratch" || return 1
    file=$_vm_scratch/$name.img
    truncate -s "$size" "$file" || return 1
    _vm_files+=("$file")
    loop=$(losetup -f --show "$file") || {
        echo "lvm-helpers: losetup of $file failed" >&2
        return 1
    }
    _vm_loops+=("$loop")
    VM_LOOP=$loop
}

vm_make_vg() {
    local name=$1 size=$2 extent=${3:-} loop out
    vm_make_loop "pv-$name" "$size" || return 1
    loop=$VM_LOOP
    if ! out=$(vm_lvm pvcreate -q -y "$loop" 2>&1); then
        echo "lvm-helpers: pvcreate $loop failed: $out" >&2
        return 1
    fi
    if ! out=$(vm_lvm vgcreate -q ${extent:+-s "$extent"} "$name" "$loop" 2>&1); then
        echo "lvm-helpers: vgcreate $name $loop failed: $out" >&2
        return 1
    fi
    _vm_vgs+=("$name")
    VM_LOOP=$loop
}

vm_cleanup() {
    # Best effort, and safe under set -e (callers trap it on EXIT).
    local vg loop file i
    for vg in "${_vm_vgs[@]}"; do
        vm_lvm vgchange -q -an "$vg" >/dev/null 2>&1 || :
        vm_lvm vgremove -q -f "$vg" >/dev/null 2>&1 || :
    done
    _vm_vgs=()
    for ((i = ${#_vm_loops[@]} - 1; i >= 0; i--)); do
        loop=${_vm_loops[i]}
        vm_lvm pvremove -q -ff -y "$loop" >/dev/null 2>&1 || :
        losetup -d "$loop" 2>/dev/null || :
    done
    _vm_loops=()
    for file in "${_vm_files[@]}"; do
        rm -f "$file" || :
    done
    _vm_files=()
}
