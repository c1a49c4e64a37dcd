#!/bin/bash
# lsm-sync serve, driven through its socket by a python3 client (socket and
# json only; serve_test.py, scenario 'security'), images checked with qemu-img.
. "$(dirname "$0")/lib.sh"
need_cmd qemu-img qemu-io python3
need_cmd setpriv
[[ $(id -u) == 0 ]] || skip "needs root: a client is run as uid nobody (setpriv)"
id nobody >/dev/null 2>&1 || skip "no user nobody"
LSM_SYNC=$LSM_SYNC python3 "$TESTS_DIR/serve_test.py" security "$T"
