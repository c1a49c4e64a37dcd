#!/bin/bash
# lsm-sync replicate --backend=dm against the kernel's dm-mirror.
#
# This machine's kernel has no device-mapper, so the checks run inside the
# distribution kernel booted under QEMU (tests/vm/vm-run.sh), which shares
# the host's root: the binary under test ($LSM_SYNC, from the build
# directory) runs there as it is.  dm-replicate-inner.sh is the body: loop
# devices on a guest tmpfs, a dm linear device over the source, writes while
# the mirror copies and once it is ready, pivot, abort, a failing
# destination leg, and the error cases.
#
# Exit 0 pass, 1 fail, 77 skip (with the reason: no dm backend in this
# build, or the harness cannot boot a kernel here).
set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${SOURCE_DIR:=$(cd "$here/../.." && pwd)}"
: "${BUILD_DIR:=$SOURCE_DIR/build}"
: "${LSM_SYNC:=$BUILD_DIR/lsm-sync}"
export LSM_SYNC

skip() {
    echo "test-dm-replicate: SKIP: $*"
    exit 77
}

[ -x "$LSM_SYNC" ] || { echo "test-dm-replicate: LSM_SYNC=$LSM_SYNC is not an executable" >&2; exit 1; }
"$LSM_SYNC" replicate --help 2>/dev/null | grep -q 'built in:.* dm\b' ||
    skip "$LSM_SYNC was built without the dm backend (libdevmapper-dev missing?)"
[ -x "$here/vm-run.sh" ] || skip "no VM harness ($here/vm-run.sh)"

# The initramfs cache goes with the build, not into the source tree.
export LSM_VM_CACHE=${LSM_VM_CACHE:-$BUILD_DIR/cache/vm}

"$here/vm-run.sh" --timeout "${LSM_DM_TEST_TIMEOUT:-780}" --mem 1536 "$here/dm-replicate-inner.sh"
rc=$?
case $rc in
0 | 77) exit "$rc" ;;
124) echo "test-dm-replicate: the test did not finish in the VM in time" >&2; exit 1 ;;
*) exit 1 ;;
esac
