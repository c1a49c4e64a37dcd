#!/bin/bash
# Runs inside the test VM (tests/vm/vm-run.sh): a volume group on a loop
# device over the guest's tmpfs, then the serve checks of
# serve-lvm-inner.py against it.
set -euo pipefail
: "${LSM_SYNC:?}"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/vm/lvm-helpers.sh
. "$here/lvm-helpers.sh"
trap vm_cleanup EXIT

W=$LSM_VM_SCRATCH/serve-lvm
rm -rf "$W"
mkdir -p "$W"
vm_make_vg lsmsv 256M
pv=$VM_LOOP
vm_lvm lvcreate -q -y -Wn -Zn -n gen -L 32M lsmsv >/dev/null
vm_lvm lvcreate -q -y -Wn -Zn -n plain -L 32M lsmsv >/dev/null
for lv in gen plain; do
    if [ ! -b /dev/lsmsv/$lv ] || [ ! -b /dev/mapper/lsmsv-$lv ]; then
        echo "not ok - no device nodes for lsmsv/$lv"
        exit 1
    fi
done
echo "info: the VG and its LVs ready in ${SECONDS} s"
python3 "$here/serve-lvm-inner.py" "$W" lsmsv "$pv"
echo "info: in the guest ${SECONDS} s in all"
