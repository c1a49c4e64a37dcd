#!/bin/bash
# lsm-sync serve, driven through its socket by a python3 client (socket and
# json only; serve_test.py, scenario 'restart'), images checked with qemu-img.
. "$(dirname "$0")/lib.sh"
need_cmd qemu-img qemu-io python3
LSM_SYNC=$LSM_SYNC python3 "$TESTS_DIR/serve_test.py" restart "$T"
