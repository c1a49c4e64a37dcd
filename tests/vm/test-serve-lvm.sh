#!/bin/bash
# lsm-sync serve onto real LVM, inside the distribution kernel booted under
# qemu (this host kernel has no device-mapper): volume generations kept in
# LV tags, and copies onto LVs named by /dev/VG/LV and /dev/mapper paths.
# The checks are in tests/vm/serve-lvm-inner.py.
set -u
: "${LSM_SYNC:?}"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
command -v qemu-img >/dev/null || { echo "SKIP: qemu-img not installed"; exit 77; }
command -v python3 >/dev/null || { echo "SKIP: python3 not installed"; exit 77; }
export LSM_SYNC
exec "$here/vm-run.sh" --timeout "${LSM_VM_TIMEOUT:-300}" "$here/serve-lvm-inner.sh"
