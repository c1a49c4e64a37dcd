#!/usr/bin/env python3
"""Craft corrupt and odd qcow2 images for tests/functional/bad-input.sh.

  mkbad.py variants GOOD OUTDIR   write one file per variant of GOOD (a small
                                  qcow2 v3 with 4 KiB clusters, some data
                                  clusters and one compressed cluster) into
                                  OUTDIR and print their names, one a line
  mkbad.py el2-variants GOOD OUTDIR
                                  the same for subcluster bitmaps of GOOD, a
                                  qcow2 with extended_l2=on and its first
                                  cluster allocated
  mkbad.py chain TEMPLATE OUTDIR N
                                  TEMPLATE is a qcow2 whose backing name is
                                  'c000.qcow2'; write c000.qcow2 .. cN-1.qcow2
                                  where c{i} names c{i+1} (the last one names a
                                  missing file): a chain N deep
  mkbad.py set-backing IMG NAME   rewrite IMG's backing name in place (NAME no
                                  longer than the current one)

Only the struct module: offsets follow the qcow2 specification (QEMU's
docs/interop/qcow2.txt).  Every variant changes one thing.
"""
import os
import random
import struct
import sys

HDR = struct.Struct('>IIQIIQIIQQIIQ')   # v2 header, 72 bytes
F = dict(magic=0, version=4, backing_file_offset=8, backing_file_size=16,
         cluster_bits=20, size=24, crypt_method=32, l1_size=36,
         l1_table_offset=40, refcount_table_offset=48,
         refcount_table_clusters=56, nb_snapshots=60, snapshots_offset=64,
         incompatible_features=72, compatible_features=80,
         autoclear_features=88, refcount_order=96, header_length=100)
WIDTH = dict(backing_file_offset=8, size=8, l1_table_offset=8,
             refcount_table_offset=8, snapshots_offset=8,
             incompatible_features=8, compatible_features=8,
             autoclear_features=8)
OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
L2E_OFFSET_MASK = 0x00fffffffffffe00


def get(buf, field):
    off, w = F[field], WIDTH.get(field, 4)
    return struct.unpack_from('>Q' if w == 8 else '>I', buf, off)[0]


def put(buf, field, value):
    off, w = F[field], WIDTH.get(field, 4)
    struct.pack_into('>Q' if w == 8 else '>I', buf, off, value & ((1 << (8 * w)) - 1))


class Image:
    def __init__(self, data):
        self.data = bytearray(data)
        self.cluster_bits = get(self.data, 'cluster_bits')
        self.cluster_size = 1 << self.cluster_bits
        self.l1_off = get(self.data, 'l1_table_offset')
        self.l1_size = get(self.data, 'l1_size')

    def l1(self, i):
        return struct.unpack_from('>Q', self.data, self.l1_off + 8 * i)[0]

    def l2_offset(self):
        for i in range(self.l1_size):
            e = self.l1(i) & L2E_OFFSET_MASK
            if e:
                return e
        raise SystemExit('mkbad: no L2 table in the good image')

    def l2_entries(self):
        """(file offset of the entry, entry) for every non-zero L2 entry."""
        l2 = self.l2_offset()
        out = []
        for i in range(self.cluster_size // 8):
            e = struct.unpack_from('>Q', self.data, l2 + 8 * i)[0]
            if e:
                out.append((l2 + 8 * i, e))
        return out


def variants(good, outdir):
    base = Image(open(good, 'rb').read())
    cs = base.cluster_size
    made = []

    def emit(name, data):
        with open(os.path.join(outdir, name), 'wb') as f:
            f.write(data)
        made.append(name)

    def with_field(name, field, value):
        d = bytearray(base.data)
        put(d, field, value)
        emit(name, d)

    def with_u64(name, offset, value):
        d = bytearray(base.data)
        struct.pack_into('>Q', d, offset, value)
        emit(name, d)

    # Truncations.
    for n in (0, 50, 100):
        emit('trunc-%d.qcow2' % n, base.data[:n])
    l2 = base.l2_offset()
    emit('trunc-mid-l2.qcow2', base.data[:l2 + cs // 2])
    emit('trunc-mid-l1.qcow2', base.data[:base.l1_off + 4])
    emit('trunc-after-header.qcow2', base.data[:cs])

    # Header fields out of range.
    with_field('cluster-bits-8.qcow2', 'cluster_bits', 8)
    with_field('cluster-bits-22.qcow2', 'cluster_bits', 22)
    with_field('cluster-bits-63.qcow2', 'cluster_bits', 63)
    with_field('l1-size-huge.qcow2', 'l1_size', 0x7fffffff)
    with_field('l1-size-too-small.qcow2', 'l1_size', 0)
    with_field('l1-offset-unaligned.qcow2', 'l1_table_offset', base.l1_off + 8)
    with_field('l1-offset-past-eof.qcow2', 'l1_table_offset', 1 << 50)
    with_field('l1-offset-zero.qcow2', 'l1_table_offset', 0)
    with_field('l1-offset-wraps.qcow2', 'l1_table_offset', (1 << 64) - cs)
    with_field('reftable-offset-unaligned.qcow2', 'refcount_table_offset',
               get(base.data, 'refcount_table_offset') + 8)
    with_field('reftable-offset-past-eof.qcow2', 'refcount_table_offset', 1 << 55)
    with_field('reftable-clusters-huge.qcow2', 'refcount_table_clusters', 0x7fffffff)
    with_field('refcount-order-7.qcow2', 'refcount_order', 7)
    with_field('header-length-100.qcow2', 'header_length', 100)
    with_field('header-length-past-cluster.qcow2', 'header_length', cs + 8)
    with_field('header-length-unaligned.qcow2', 'header_length', 105)
    with_field('virtual-size-2e63.qcow2', 'size', 1 << 63)
    with_field('virtual-size-max.qcow2', 'size', (1 << 64) - 512)
    with_field('version-1.qcow2', 'version', 1)
    with_field('version-4.qcow2', 'version', 4)
    with_field('crypt-method-1.qcow2', 'crypt_method', 1)
    with_field('crypt-method-2.qcow2', 'crypt_method', 2)
    with_field('crypt-method-3.qcow2', 'crypt_method', 3)
    with_field('incompat-unknown-bit.qcow2', 'incompatible_features', 1 << 20)
    with_field('incompat-data-file-no-ext.qcow2', 'incompatible_features', 1 << 2)
    with_field('incompat-corrupt.qcow2', 'incompatible_features', 1 << 1)
    with_field('incompat-dirty.qcow2', 'incompatible_features', 1 << 0)
    with_field('compat-unknown-bit.qcow2', 'compatible_features', 1 << 40)
    with_field('autoclear-unknown-bit.qcow2', 'autoclear_features', 1 << 40)
    with_field('snapshots-past-eof.qcow2', 'nb_snapshots', 1)
    d = bytearray(base.data)
    put(d, 'nb_snapshots', 1)
    put(d, 'snapshots_offset', 1 << 50)
    emit('snapshot-table-past-eof.qcow2', d)
    d = bytearray(base.data)
    put(d, 'nb_snapshots', 0x7fffffff)
    put(d, 'snapshots_offset', cs * 2)
    emit('snapshots-too-many.qcow2', d)

    # Backing name fields.
    d = bytearray(base.data)
    put(d, 'backing_file_offset', cs + 16)
    put(d, 'backing_file_size', 10)
    emit('backing-offset-past-cluster.qcow2', d)
    d = bytearray(base.data)
    put(d, 'backing_file_offset', cs - 200)
    put(d, 'backing_file_size', 2000)
    emit('backing-name-2000.qcow2', d)
    d = bytearray(base.data)
    put(d, 'backing_file_offset', 1 << 62)
    put(d, 'backing_file_size', 8)
    emit('backing-offset-huge.qcow2', d)

    # L1 and L2 entries.
    l1e = base.l1(0)
    with_u64('l1-entry-unaligned.qcow2', base.l1_off, l1e + 512)
    with_u64('l1-entry-past-eof.qcow2', base.l1_off, OFLAG_COPIED | (1 << 40))
    with_u64('l1-entry-points-at-header.qcow2', base.l1_off, OFLAG_COPIED)
    entries = base.l2_entries()
    plain = [(o, e) for o, e in entries if not e & OFLAG_COMPRESSED and e & L2E_OFFSET_MASK]
    comp = [(o, e) for o, e in entries if e & OFLAG_COMPRESSED]
    if not plain or not comp:
        raise SystemExit('mkbad: the good image needs plain and compressed clusters')
    o, e = plain[0]
    with_u64('l2-entry-unaligned.qcow2', o, e + 512)
    with_u64('l2-entry-past-eof.qcow2', o, OFLAG_COPIED | (1 << 40))
    with_u64('l2-entry-max-offset.qcow2', o, OFLAG_COPIED | L2E_OFFSET_MASK)
    with_u64('l2-entry-reserved-bits.qcow2', o, e | 0x7e)
    with_u64('l2-entry-points-at-l2.qcow2', o, OFLAG_COPIED | l2)
    # Compressed descriptor: offset in the low (62 - (cluster_bits - 8)) bits.
    x = 62 - (base.cluster_bits - 8)
    o, e = comp[0]
    sectors = e & ~((1 << x) - 1) & ~(OFLAG_COPIED | OFLAG_COMPRESSED)
    with_u64('compressed-past-eof.qcow2', o, OFLAG_COMPRESSED | sectors | (1 << 45))
    with_u64('compressed-straddles-eof.qcow2', o,
             OFLAG_COMPRESSED | sectors | (len(base.data) - 100))
    with_u64('compressed-max-sectors.qcow2', o,
             OFLAG_COMPRESSED | (((1 << 62) - 1) & ~((1 << x) - 1)) | (e & ((1 << x) - 1)))

    # Probing.
    rnd = random.Random(4242)
    emit('random-bytes.img', bytes(rnd.getrandbits(8) for _ in range(12345)))
    emit('qfi-garbage.qcow2', b'QFI\xfb' + struct.pack('>I', 3) +
         bytes(rnd.getrandbits(8) for _ in range(4088)))
    emit('qfi-version-0.img', b'QFI\xfb' + struct.pack('>I', 0) + bytes(4088))
    emit('qfi-magic-only.qcow2', b'QFI\xfb')
    emit('header-only-no-tables.qcow2', base.data[:104] + bytes(cs - 104))
    for name in made:
        print(name)


def el2_variants(good, outdir):
    """Corrupt subcluster bitmaps of GOOD, a qcow2 with extended_l2=on whose
    first cluster is allocated (16-byte L2 entries: the standard entry, then
    32 allocation bits and 32 zero bits)."""
    base = Image(open(good, 'rb').read())
    if not get(base.data, 'incompatible_features') & (1 << 4):
        raise SystemExit('mkbad: %s has no extended L2 entries' % good)
    l2 = base.l2_offset()
    entry, bitmap = struct.unpack_from('>QQ', base.data, l2)
    if not entry & L2E_OFFSET_MASK:
        raise SystemExit('mkbad: the first cluster of %s must be allocated' % good)
    made = []

    def emit(name, e, b, index=0):
        d = bytearray(base.data)
        struct.pack_into('>QQ', d, l2 + 16 * index, e, b)
        with open(os.path.join(outdir, name), 'wb') as f:
            f.write(d)
        made.append(name)

    # A subcluster both allocated and zero.
    emit('el2-alloc-and-zero.qcow2', entry, bitmap | ((bitmap & 0xffffffff) << 32) | 1 | (1 << 32))
    # Allocation bits on an unallocated cluster (second entry, offset 0).
    emit('el2-alloc-bits-no-offset.qcow2', 0, 0xffff, index=1)
    # A compressed cluster must have an all-zero bitmap.
    x = 62 - (base.cluster_bits - 8)
    emit('el2-compressed-with-bitmap.qcow2',
         OFLAG_COMPRESSED | (1 << x) | (entry & L2E_OFFSET_MASK), 0x1)
    for name in made:
        print(name)


def set_backing(path, name):
    d = bytearray(open(path, 'rb').read())
    off, size = get(d, 'backing_file_offset'), get(d, 'backing_file_size')
    raw = name.encode()
    if not off or len(raw) > size:
        raise SystemExit('mkbad: %s: no room for backing name %r' % (path, name))
    d[off:off + size] = raw + bytes(size - len(raw))
    put(d, 'backing_file_size', len(raw))
    open(path, 'wb').write(d)


def chain(template, outdir, n):
    t = bytearray(open(template, 'rb').read())
    off, size = get(t, 'backing_file_offset'), get(t, 'backing_file_size')
    if bytes(t[off:off + size]) != b'c000.qcow2':
        raise SystemExit('mkbad: template must name c000.qcow2')
    for i in range(n):
        d = bytearray(t)
        d[off:off + size] = b'c%03d.qcow2' % (i + 1)
        with open(os.path.join(outdir, 'c%03d.qcow2' % i), 'wb') as f:
            f.write(d)


def main(argv):
    if len(argv) == 4 and argv[1] == 'variants':
        variants(argv[2], argv[3])
    elif len(argv) == 4 and argv[1] == 'el2-variants':
        el2_variants(argv[2], argv[3])
    elif len(argv) == 5 and argv[1] == 'chain':
        chain(argv[2], argv[3], int(argv[4]))
    elif len(argv) == 4 and argv[1] == 'set-backing':
        set_backing(argv[2], argv[3])
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
