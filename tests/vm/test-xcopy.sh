#!/bin/bash
# SCSI EXTENDED COPY offload against a real LIO target inside the booted
# distribution kernel (tests/vm/xcopy-inner.sh does the work).  Exit 77
# when the VM or the target cannot run here.
set -u
: "${LSM_SYNC:?}"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for c in qemu-img qemu-io jq; do
    command -v "$c" >/dev/null || { echo "SKIP: $c not installed"; exit 77; }
done
export LSM_SYNC
exec "$here/vm-run.sh" --timeout "${LSM_VM_TIMEOUT:-480}" --mem 1536 "$here/xcopy-inner.sh"
