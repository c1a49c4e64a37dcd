#!/usr/bin/env python3
"""Seed corpus of fuzz-scsi: device answers as the Linux LIO target gives
them (INQUIRY, VPD 0x00/0x83, RECEIVE COPY RESULTS operating parameters),
a Third-party Copy VPD page as SPC-4 lays it out, and sense data.
    python3 tests/fuzz/gen-corpus-scsi.py [OUTDIR]   (default tests/fuzz/corpus-scsi)
The outputs are committed; rerun after changing this file."""
import os
import struct
import sys

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), 'corpus-scsi')
os.makedirs(out, exist_ok=True)


def w(name, data):
    with open(os.path.join(out, name), 'wb') as f:
        f.write(bytes(data))


inq = bytearray(36)
inq[2], inq[3], inq[4], inq[5] = 6, 2, 31, 0x08
inq[8:16] = b'LIO-ORG '
inq[16:32] = b'FILEIO          '
w('inquiry-3pc.bin', inq)

w('vpd00.bin', [0, 0, 0, 6, 0x00, 0x80, 0x83, 0x86, 0x8f, 0xb0])

naa = bytes([0x60, 0x01, 0x40, 0x5a]) + bytes(range(12))
desc = bytes([2, 1, 0, 8]) + b'LIO-ORG ' + bytes([1, 3, 0, 16]) + naa + \
    bytes([0x61, 0x94, 0, 4, 0, 0, 0, 1]) + bytes([1, 2, 0, 8]) + bytes(range(8))
w('vpd83-lio.bin', bytes([0, 0x83]) + struct.pack('>H', len(desc)) + desc)

op = bytearray(54)
struct.pack_into('>I', op, 0, 42)
op[4] = 1
struct.pack_into('>HHII', op, 8, 2, 1, 1024, 256 << 20)
op[37] = 9
op[43] = 2
op[44], op[45] = 0x02, 0xe4
w('rcr-opparams-lio.bin', op)

rod = struct.pack('>HH', 0x0000, 0x20) + bytes(6) + struct.pack('>HIIQQ', 1, 30, 20, 1 << 30, 1 << 20)
par = struct.pack('>HH', 0x0004, 0x1c) + bytes(4) + struct.pack('>HHII', 2, 16, 1024, 0) + bytes(12)
sup = struct.pack('>HH', 0x0008, 4) + bytes([2, 0x02, 0xe4, 0])
gen = struct.pack('>HH', 0x8001, 0x20) + struct.pack('>III', 1, 1, 32 << 20) + bytes([16, 0]) + bytes(18)
body = rod + par + sup + gen
w('vpd8f.bin', bytes([0, 0x8f]) + struct.pack('>H', len(body)) + body)

w('sense-fixed-copy-aborted.bin', [0xf0, 0, 0x0a, 0, 0, 0, 5, 10, 0, 0, 0, 1, 0x0d, 0x02, 0, 0, 0, 0])
w('sense-desc-illegal.bin', [0x72, 0x05, 0x20, 0x00, 0, 0, 0, 12,
                             0x00, 0x0a, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34])
w('copy-status.bin', [0, 0, 0, 8, 0x02, 0, 3, 2, 0, 0, 0, 5])
