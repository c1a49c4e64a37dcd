#!/bin/bash
# clone-structure/sync between file domains and real LVM, inside the
# distribution kernel (this host kernel has no device-mapper).
set -u
: "${LSM_SYNC:?}"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
command -v qemu-img >/dev/null || { echo "SKIP: qemu-img not installed"; exit 77; }
export LSM_SYNC
exec "$here/vm-run.sh" --timeout 900 "$here/chain-lvm-inner.sh"
